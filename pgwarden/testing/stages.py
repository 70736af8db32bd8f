"""Policy stages for tests: deny or hold statements that carry a marker.

They prove the pipeline's contract (deny -> real ErrorResponse, session usable,
true transaction status; hold -> only this session waits) without any real
policy, and show policy authors what a stage looks like.
"""

from __future__ import annotations

import asyncio
import threading

from ..session.statement import Statement
from ..session.verdict import ALLOW, Deny, Hold, Rewrite, Verdict
from ..wire.constants import SQLState

__all__ = ["DenyMarkerStage", "HoldMarkerStage", "RewriteMarkerStage", "RecordingStage"]


class DenyMarkerStage:
    """Deny any statement whose text contains ``marker``."""

    name = "test.deny"

    def __init__(self, marker: str = "/*deny*/", sqlstate: str = SQLState.INSUFFICIENT_PRIVILEGE) -> None:
        self.marker = marker
        self.sqlstate = sqlstate

    def check(self, statement: Statement) -> Verdict | None:
        if statement.text is not None and self.marker in statement.text:
            return Deny('pgwarden: statement refused by rule "test.deny"', self.sqlstate, rule="test.deny")
        return None


class RewriteMarkerStage:
    """Replace the text of statements containing ``marker`` with ``replacement``."""

    name = "test.rewrite"

    def __init__(self, marker: str, replacement: str) -> None:
        self.marker = marker
        self.replacement = replacement

    def check(self, statement: Statement) -> Verdict | None:
        if statement.text is not None and self.marker in statement.text and statement.kind != "execute":
            return Rewrite(self.replacement, rule="test.rewrite")
        return None


class HoldMarkerStage:
    """Hold statements containing ``marker`` until the test calls :meth:`release`.

    Thread-safe: tests run clients in their own thread while the gateway runs
    in another; ``release`` may be called from either.
    """

    name = "test.hold"

    def __init__(self, marker: str = "/*hold*/") -> None:
        self.marker = marker
        self.held = threading.Event()
        self.cancelled = threading.Event()
        self._lock = threading.Lock()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future]] = []
        self.count = 0

    def check(self, statement: Statement) -> Verdict | None:
        if statement.text is None or self.marker not in statement.text or statement.kind == "parse":
            return None
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()
        with self._lock:
            self._waiters.append((loop, future))
            self.count += 1
        self.held.set()

        async def wait() -> Verdict:
            return await future

        def cancel() -> None:
            self.cancelled.set()
            if not future.done():
                future.cancel()

        return Hold(wait, reason="held by test.hold", rule="test.hold", cancel=cancel)

    def release(self, verdict: Verdict = ALLOW) -> int:
        """Resolve every waiting hold with ``verdict``; returns how many."""
        with self._lock:
            waiters, self._waiters = self._waiters, []
        self.held.clear()
        for loop, future in waiters:
            loop.call_soon_threadsafe(lambda f=future: f.done() or f.set_result(verdict))
        return len(waiters)


class RecordingStage:
    """Remember every completed statement (kind, text, status, tags) for assertions."""

    name = "test.record"

    def __init__(self) -> None:
        self.completed_statements: list[Statement] = []
        self._lock = threading.Lock()

    def check(self, statement: Statement) -> None:
        return None

    def completed(self, statement: Statement) -> None:
        with self._lock:
            self.completed_statements.append(statement)

    def texts(self, kind: str | None = None) -> list[str]:
        with self._lock:
            return [s.text or "" for s in self.completed_statements if kind is None or s.kind == kind]
