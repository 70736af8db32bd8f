"""Approvals for every front end: list, show, approve, deny, and who the reviewer is.

The CLI, the HTTP API (``pgwarden.web``) and later the MCP endpoint all call
:class:`ApprovalService`, so the rules (no self-approval, N distinct
reviewers, reviewer roles, expiry) are enforced in one place: in the store's
transaction (``store.approvals.apply_decision``), which is what makes them hold
when two reviewers click at once or two gateways share a store.

A service inside a gateway writes the audit records of its changes itself
(``recorder``); the CLI has none and leaves them to the gateways, which claim
unwritten events and chain them (``server.approvals.ApprovalBroker``).
"""

from __future__ import annotations

import getpass
import logging
import time
from collections.abc import Callable, Sequence
from types import SimpleNamespace
from typing import Any

from ..config import Config
from ..store.approvals import (
    STATUSES,
    ApprovalError,
    ApprovalEvent,
    ApprovalRequest,
    ApprovalStore,
    Reviewer,
)

__all__ = ["ApprovalService", "ApprovalError", "Reviewer", "links_for", "public_url"]

log = logging.getLogger("pgwarden.approvals")


def public_url(config: Config, port: int | None = None) -> str:
    """The base URL reviewers reach the API at (notices, webhooks); ``port``: the API's bound port."""
    if config.approvals.public_url:
        return config.approvals.public_url.rstrip("/")
    api = config.api if port is None else config.api.model_copy(update={"port": port})
    return api.url.rstrip("/")


def links_for(config: Config, request_id: str, port: int | None = None) -> dict[str, str]:
    base = f"{public_url(config, port)}/api/v1/approvals/{request_id}"
    return {"show": base, "approve": f"{base}/approve", "deny": f"{base}/deny"}


class ApprovalService:
    def __init__(
        self,
        config: Config,
        store: ApprovalStore,
        *,
        recorder: Any = None,
        notifier: Any = None,
        on_change: Callable[[ApprovalRequest], None] | None = None,
        login: Any = None,
    ) -> None:
        self.config = config
        self.store = store
        # recorder.approval_event(request, event): writes the event into the audit chain.
        self.recorder = recorder
        # notifier.notify(event_name, request): webhooks (never awaited).
        self.notifier = notifier
        # Called after a decision, so a held statement on this gateway is released at once.
        self.on_change = on_change
        self._login = login
        self.api_port: int | None = None  # the API's bound port, once listening (links)

    def links(self, request_id: str) -> dict[str, str]:
        return links_for(self.config, request_id, self.api_port)

    # ------------------------------------------------------------ reading

    async def list(self, status: str | None = "pending", limit: int = 100) -> list[ApprovalRequest]:
        if status is not None and status not in STATUSES:
            raise ApprovalError("bad_status", f"unknown status {status!r} (one of {', '.join(STATUSES)})")
        return await self.store.list(status, max(1, min(int(limit), 1000)))

    async def get(self, request_id: str) -> ApprovalRequest:
        request = await self.store.get(request_id.strip().lower())
        if request is None:
            raise ApprovalError("not_found", f"no approval request {request_id!r}")
        return request

    # ------------------------------------------------------------ deciding

    async def approve(self, request_id: str, reviewer: Reviewer, comment: str = "") -> ApprovalRequest:
        return await self.decide(request_id, reviewer, "approve", comment)

    async def deny(self, request_id: str, reviewer: Reviewer, comment: str = "") -> ApprovalRequest:
        return await self.decide(request_id, reviewer, "deny", comment)

    async def decide(self, request_id: str, reviewer: Reviewer, action: str, comment: str = "") -> ApprovalRequest:
        if len(comment) > 2000:
            raise ApprovalError("bad_comment", "the comment is longer than 2000 characters")
        request = await self.get(request_id)  # accepts a unique prefix
        updated, events = await self.store.decide(
            request.id, reviewer, action, comment, time.time(), chained=self.recorder is not None
        )
        self.record(updated, events)
        log.info(
            "approval request %s: %s by %s (%s)", updated.id, action, reviewer.identity, updated.status,
            extra={"event": "approval_" + action, "request": updated.id},
        )
        if updated.status in ("approved", "denied"):
            self.notify(updated.status, updated)
        if self.on_change is not None:
            self.on_change(updated)
        return updated

    def record(self, request: ApprovalRequest, events: Sequence[ApprovalEvent]) -> None:
        if self.recorder is None:
            return
        for event in events:
            self.recorder.approval_event(request, event)

    def notify(self, event: str, request: ApprovalRequest) -> None:
        if self.notifier is not None:
            try:
                self.notifier.notify(event, request)
            except Exception:  # a notification must never fail a decision
                log.exception("webhook notification failed")

    # ------------------------------------------------------------ reviewers

    def local_admin(self) -> Reviewer:
        """The CLI's identity without a token: ``local:<unix user>``, allowed to decide anything."""
        if not self.config.approvals.local_admin:
            raise ApprovalError("not_reviewer", "approvals.local_admin is off: decide with --token")
        try:
            user = getpass.getuser()
        except Exception:
            user = "unknown"
        return Reviewer(f"local:{user}", (), admin=True, via="cli")

    async def reviewer_for_token(self, token: str, via: str = "api") -> Reviewer:
        """The identity an access token or pgwarden API key proves (raises ApprovalError 'unauthenticated')."""
        login = self._login
        if login is None:
            from ..identity.login import build_token_login

            login = self._login = build_token_login(self.config)
        if login is None:
            raise ApprovalError("unauthenticated", "token login is not configured (no issuer, no roles)")
        identity, reason = await login(SimpleNamespace(password=token.strip(), user="", target=None))
        if identity is None:
            raise ApprovalError("unauthenticated", reason or "the token was not accepted")
        return Reviewer(identity.subject, tuple(identity.roles), admin=False, via=via)
