"""The gateway's HTTP API for reviewers (approvals), served by uvicorn inside the gateway's loop.

``build_app(service)`` is the Starlette application (``api``), ``ApiServer``
runs it (``server``), ``OPENAPI`` describes it (``openapi``). The rules live in
:class:`pgwarden.services.approvals.ApprovalService`; this package only maps
HTTP to it: bearer authentication, JSON in and out, error codes to statuses.
"""

from __future__ import annotations

from .api import build_app
from .server import ApiServer

__all__ = ["build_app", "ApiServer"]
