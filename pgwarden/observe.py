"""Observers: what metrics and alerts learn from the gateway, as hooks.

pgwarden's layers already announce what happens to a session: the pipeline
calls its stages' ``authenticated`` / ``session_started`` / ``session_ended`` /
``completed`` hooks and the recorder's ``decided``; the audit writer knows when
a batch is durable or the store fails; the client connection knows how long an
upstream login took. An :class:`Observer` receives the same moments (as
mitmproxy's addons receive hooks) without being a stage: it cannot change a
verdict, and a failing observer is logged, never fatal.

Observers run on the data path, in the gateway's loop, so a hook must be cheap
(count, compare, append to a queue) and must not await or do I/O. Only the
hooks a subclass overrides are called (see :func:`overridden`), so an observer
that only watches logins costs nothing per statement.

Hooks, and who calls them:

* ``authenticated(event)``: every login outcome (:class:`~pgwarden.session.statement.AuthEvent`), from the pipeline.
* ``session_started(info)`` / ``session_ended(info, reason)``: sessions in RELAY, from the pipeline.
* ``decided(stmt, verdict)``: a statement's final verdict (after the recorder, which may turn an
  allow into a refusal while the trail is down), from the pipeline. Holds are reported once resolved.
* ``completed(stmt)``: the statement's reply is complete (``stmt.tags``, ``stmt.status``, ``stmt.mask``), from the pipeline.
* ``approval_event(request, event)``: an approval request changed (requested, approve, deny, ...), from the recorder.
* ``audit_written(records, seconds, backlog)``: a group commit is durable, from the audit writer.
* ``audit_failed(error)`` / ``audit_recovered(down_seconds)``: the audit store stopped / resumed, from the writer.
* ``upstream_connected(target, seconds, error)``: an upstream login finished (``error`` None on success), from the client connection.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

__all__ = ["Observer", "Observers", "HOOKS", "overridden"]

log = logging.getLogger("pgwarden.observe")

HOOKS = (
    "authenticated",
    "session_started",
    "session_ended",
    "decided",
    "completed",
    "approval_event",
    "audit_written",
    "audit_failed",
    "audit_recovered",
    "upstream_connected",
)


class Observer:
    """Base class: every hook does nothing. Override the ones you need."""

    def authenticated(self, event: Any) -> None: ...

    def session_started(self, info: Any) -> None: ...

    def session_ended(self, info: Any, reason: str) -> None: ...

    def decided(self, stmt: Any, verdict: Any) -> None: ...

    def completed(self, stmt: Any) -> None: ...

    def approval_event(self, request: Any, event: Any) -> None: ...

    def audit_written(self, records: int, seconds: float, backlog: int) -> None: ...

    def audit_failed(self, error: str) -> None: ...

    def audit_recovered(self, down_seconds: float) -> None: ...

    def upstream_connected(self, target: str, seconds: float, error: str | None) -> None: ...


def overridden(observer: object, hook: str) -> bool:
    """Whether ``observer`` really implements ``hook`` (not :class:`Observer`'s no-op)."""
    method = getattr(type(observer), hook, None)
    if method is None:
        return False
    return method is not getattr(Observer, hook, None)


def _guarded(observer: object, hook: str):
    bound = getattr(observer, hook)

    def call(*args: Any) -> None:
        try:
            bound(*args)
        except Exception:
            log.exception("observer %s failed in %s", type(observer).__name__, hook)

    return call


class Observers(Observer):
    """Fans each hook out to the observers that implement it, each call guarded.

    Per hook, the list of callees is computed once, so a hook nobody implements
    is an empty loop. ``wants(hook)`` lets callers skip building arguments.
    """

    def __init__(self, observers: Iterable[object] = ()) -> None:
        self.members: list[object] = []
        self._calls: dict[str, tuple] = {h: () for h in HOOKS}
        for observer in observers:
            self.add(observer)

    def add(self, observer: object) -> None:
        self.members.append(observer)
        for hook in HOOKS:
            if overridden(observer, hook):
                self._calls[hook] = self._calls[hook] + (_guarded(observer, hook),)

    def wants(self, hook: str) -> bool:
        return bool(self._calls.get(hook))

    def __bool__(self) -> bool:
        return bool(self.members)

    def authenticated(self, event: Any) -> None:
        for call in self._calls["authenticated"]:
            call(event)

    def session_started(self, info: Any) -> None:
        for call in self._calls["session_started"]:
            call(info)

    def session_ended(self, info: Any, reason: str) -> None:
        for call in self._calls["session_ended"]:
            call(info, reason)

    def decided(self, stmt: Any, verdict: Any) -> None:
        for call in self._calls["decided"]:
            call(stmt, verdict)

    def completed(self, stmt: Any) -> None:
        for call in self._calls["completed"]:
            call(stmt)

    def approval_event(self, request: Any, event: Any) -> None:
        for call in self._calls["approval_event"]:
            call(request, event)

    def audit_written(self, records: int, seconds: float, backlog: int) -> None:
        for call in self._calls["audit_written"]:
            call(records, seconds, backlog)

    def audit_failed(self, error: str) -> None:
        for call in self._calls["audit_failed"]:
            call(error)

    def audit_recovered(self, down_seconds: float) -> None:
        for call in self._calls["audit_recovered"]:
            call(down_seconds)

    def upstream_connected(self, target: str, seconds: float, error: str | None) -> None:
        for call in self._calls["upstream_connected"]:
            call(target, seconds, error)
