"""The admin HTTP API: approvals for reviewers, plus metrics and health for operators.

``GET /metrics`` (Prometheus text format) and ``GET /health`` (readiness: 200 or
503, see :mod:`pgwarden.web.health`) are unauthenticated, like most exporters:
they reveal counts, target names and failure codes, never SQL, users or
credentials. The approval routes exist whether approvals are on or not (so the
OpenAPI document describes one API); with approvals off they answer 404
``approvals_off``.

Every ``/api/v1/approvals`` route needs ``Authorization: Bearer <token>``: an
access token of a trusted issuer or a pgwarden API key (``pgw_...``), checked
by :meth:`ApprovalService.reviewer_for_token` exactly as a database login
would check it. Reading needs one of the configured reviewer roles (the
defaults' and every policy's); deciding is then judged by the service, in the
store's transaction (reviewer roles of *that* request, no self-approval, N
distinct reviewers), and its stable :class:`ApprovalError` codes become HTTP
statuses here. Errors are always ``{"error": {"code": ..., "message": ...}}``;
an unexpected failure is logged and answered with a generic 500, never with
a traceback.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from prometheus_client.exposition import CONTENT_TYPE_LATEST as PROMETHEUS_CONTENT_TYPE

from ..services.approvals import ApprovalService
from ..store.approvals import STATUSES, ApprovalError, ApprovalRequest, Reviewer
from .openapi import openapi_document

__all__ = ["build_app", "MAX_BODY", "STATUS_FOR_CODE", "reviewer_roles"]

log = logging.getLogger("pgwarden.api")

MAX_BODY = 64 * 1024
STATUS_FOR_CODE = {
    "not_found": 404,
    "not_pending": 409,
    "expired": 409,
    "already_decided": 409,
    "self_approval": 403,
    "not_reviewer": 403,
    "unauthenticated": 401,
    "bad_action": 400,
    "bad_comment": 400,
    "bad_status": 400,
}
_ID = re.compile(r"[0-9a-f]{4,64}")
_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="pgwarden"'}


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


class _TooLarge(Exception):
    pass


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(body, status_code=status, headers={**_HEADERS, **(headers or {})})


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return _json({"error": {"code": code, "message": message}}, status, headers)


def reviewer_roles(service: ApprovalService) -> set[str]:
    """The roles that may read requests: the default reviewer roles and every policy's."""
    approvals = service.config.approvals
    roles = set(approvals.reviewer_roles)
    for policy in approvals.policies:
        roles.update(policy.reviewer_roles or ())
    return roles


class _BodyLimit:
    """413 for a request body over ``limit``: at once by Content-Length, else while it is read."""

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers") or ():
            if name == b"content-length":
                try:
                    too_large = int(value) > self.limit
                except ValueError:
                    too_large = False  # the server rejects a malformed length itself
                if too_large:
                    await _too_large(self.limit)(scope, receive, send)
                    return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge()
            return message

        await self.app(scope, limited, send)


def _too_large(limit: int) -> Response:
    return _error(413, "too_large", f"the request body is larger than {limit // 1024} KiB")


Handler = Callable[[Request], Awaitable[Response]]


def _endpoint(fn: Handler) -> Handler:
    """Every failure as the error body; ApprovalError codes mapped to statuses."""

    async def wrapper(request: Request) -> Response:
        try:
            return await fn(request)
        except ApiError as exc:
            return _error(exc.status, exc.code, exc.message, exc.headers)
        except ApprovalError as exc:
            status = STATUS_FOR_CODE.get(exc.code, 400)
            return _error(status, exc.code, exc.message, _CHALLENGE if status == 401 else None)
        except _TooLarge:
            return _too_large(MAX_BODY)
        except Exception:
            log.exception("API %s %s failed", request.method, request.url.path, extra={"event": "api_error"})
            return _error(500, "internal", "internal error (the gateway log has the details)")

    wrapper.__name__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    return wrapper


def _client(request: Request) -> str:
    return request.client.host if request.client else "?"


async def _reviewer(service: ApprovalService, request: Request) -> Reviewer:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise ApiError(401, "unauthenticated", "an Authorization: Bearer <token> header is needed", _CHALLENGE)
    try:
        reviewer = await service.reviewer_for_token(token, via="api")
    except ApprovalError as exc:
        log.info("API: token rejected from %s: %s", _client(request), exc.message,
                 extra={"event": "api_auth_failed"})
        if exc.code == "unauthenticated":
            # The reason (unknown key id, bad secret, expired, wrong audience) goes to the
            # log only: telling the caller would let it probe keys and issuers.
            raise ApiError(401, "unauthenticated", "the bearer token was not accepted", _CHALLENGE) from None
        raise
    return reviewer


def _require_reviewer(service: ApprovalService, reviewer: Reviewer) -> None:
    roles = reviewer_roles(service)
    if reviewer.admin or set(reviewer.roles) & roles:
        return
    raise ApiError(
        403, "not_reviewer",
        f"{reviewer.identity} holds none of the reviewer roles ({', '.join(sorted(roles)) or 'none configured'})",
    )


def _request_id(request: Request) -> str:
    raw = str(request.path_params.get("id", "")).strip().lower()
    if not _ID.fullmatch(raw):
        raise ApprovalError("not_found", f"no approval request {raw[:64]!r}")
    return raw


def _with_links(service: ApprovalService, approval: ApprovalRequest) -> dict[str, Any]:
    out = approval.as_dict()
    out["links"] = service.links(approval.id)
    return out


async def _comment(request: Request) -> str:
    body = b""
    async for chunk in request.stream():
        body += chunk
    if not body.strip():
        return ""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: "[[[[…" nested past Python's limit
        raise ApiError(400, "bad_request", "the body must be JSON: {\"comment\": \"...\"}") from None
    if not isinstance(data, dict):
        raise ApiError(400, "bad_request", "the body must be a JSON object: {\"comment\": \"...\"}")
    comment = data.get("comment", "")
    if not isinstance(comment, str):
        raise ApiError(400, "bad_comment", "comment must be a string")
    return comment


def build_app(service: ApprovalService | None = None, *, metrics: Any = None, health: Any = None) -> Starlette:
    """The Starlette application of the gateway's HTTP API.

    ``service``: the approvals (None: approvals are off); ``metrics``: something with
    ``async render() -> bytes`` (:class:`~pgwarden.server.metrics.GatewayMetrics`; None:
    ``/metrics`` answers 404); ``health``: something with ``async check() -> (ok, body)``
    (:class:`~pgwarden.web.health.HealthChecker`; None: ``/health`` is a plain liveness answer).
    """

    def approvals() -> ApprovalService:
        if service is None:
            raise ApiError(404, "approvals_off", "approvals are not enabled on this gateway")
        return service

    @_endpoint
    async def liveness(request: Request) -> Response:
        return _json({"status": "ok"})

    @_endpoint
    async def readiness(request: Request) -> Response:
        if health is None:
            return _json({"status": "ok", "checks": {}})
        ok, body = await health.check()
        return _json(body, 200 if ok else 503)

    @_endpoint
    async def prometheus(request: Request) -> Response:
        if metrics is None:
            raise ApiError(404, "metrics_off", "metrics are off (api.metrics: false)")
        body = await metrics.render()
        return Response(body, headers={**_HEADERS, "Content-Type": PROMETHEUS_CONTENT_TYPE})

    @_endpoint
    async def openapi(request: Request) -> Response:
        return _json(openapi_document())

    @_endpoint
    async def list_approvals(request: Request) -> Response:
        service = approvals()
        reviewer = await _reviewer(service, request)
        _require_reviewer(service, reviewer)
        status = request.query_params.get("status", "pending").strip().lower() or "pending"
        if status != "all" and status not in STATUSES:
            raise ApprovalError("bad_status", f"unknown status {status!r} (all, {', '.join(STATUSES)})")
        raw_limit = request.query_params.get("limit", "100")
        try:
            limit = int(raw_limit)
        except ValueError:
            raise ApiError(400, "bad_limit", f"limit must be a whole number, not {raw_limit[:32]!r}") from None
        found = await service.list(None if status == "all" else status, limit)
        return _json({"approvals": [r.as_dict() for r in found]})

    @_endpoint
    async def show(request: Request) -> Response:
        service = approvals()
        reviewer = await _reviewer(service, request)
        _require_reviewer(service, reviewer)
        return _json(_with_links(service, await service.get(_request_id(request))))

    def decider(action: str) -> Handler:
        async def decide(request: Request) -> Response:
            service = approvals()
            reviewer = await _reviewer(service, request)
            _require_reviewer(service, reviewer)
            request_id = _request_id(request)
            comment = await _comment(request)
            try:
                updated = await service.decide(request_id, reviewer, action, comment)
            except ApprovalError as exc:
                log.info("API: %s of %s by %s refused: %s", action, request_id, reviewer.identity, exc.code,
                         extra={"event": "api_decision_refused", "request": request_id})
                raise
            return _json(_with_links(service, updated))

        decide.__name__ = action
        return _endpoint(decide)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return _error(exc.status_code, code, str(exc.detail), dict(exc.headers or {}))

    async def server_error(request: Request, exc: Exception) -> Response:
        # Only reached by a failure outside an endpoint (they catch their own).
        return _error(500, "internal", "internal error (the gateway log has the details)")

    prefix = "/api/v1/approvals"
    routes = [
        Route("/api/v1/health", liveness, methods=["GET"]),
        Route("/health", readiness, methods=["GET"]),
        Route("/metrics", prometheus, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        Route(prefix, list_approvals, methods=["GET"]),
        Route(prefix + "/{id}", show, methods=["GET"]),
        Route(prefix + "/{id}/approve", decider("approve"), methods=["POST"]),
        Route(prefix + "/{id}/deny", decider("deny"), methods=["POST"]),
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: http_error, Exception: server_error})
    app.add_middleware(_BodyLimit, limit=MAX_BODY)
    return app
