"""The gateway's HTTP API (its admin port), served by uvicorn inside the gateway's loop.

``build_app(service, metrics=, health=)`` is the Starlette application (``api``):
the reviewer routes over :class:`pgwarden.services.approvals.ApprovalService`
(bearer authentication, JSON in and out, error codes to statuses), ``/metrics``
and ``/health`` (``health``). ``ApiServer`` runs it (``server``), ``OPENAPI``
describes it (``openapi``). The rules live in the services; this package only
maps HTTP to them.
"""

from __future__ import annotations

from .api import build_app
from .health import HealthChecker
from .server import ApiServer

__all__ = ["build_app", "ApiServer", "HealthChecker"]
