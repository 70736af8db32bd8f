"""Approval requests in the SQLite audit file (``approval_requests``, ``approval_events``).

The tables live in the audit trail's own file so a reviewer's CLI, a gateway
and its HTTP API all see one state. The gateway's audit writer has its own
connection to that file (and an flock on ``audit.sqlite.lock``, which this
store never takes: several processes decide requests while one gateway writes
the trail); this store opens a connection of its own.

Why a dedicated worker thread: SQLite calls block, and a write may wait up to
the busy timeout for the audit writer's group commit; every call of this store
runs on one single-thread executor, so the event loop never waits on a lock
and the connection is only ever used from the thread that made it. Each method
is one function on that thread: ``BEGIN IMMEDIATE`` (the write lock first, so
the row read under it is the row written back: two reviewers, two consumers or
two processes serialise here), read, apply the rules of ``approvals.py``,
write, ``COMMIT``. Nothing awaits inside a transaction.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from .approvals import (
    compact_json,
    prefix_bounds,
    request_from_body,
    OPEN_STATUSES,
    ApprovalError,
    ApprovalEvent,
    ApprovalRequest,
    ApprovalStore,
    Reviewer,
    apply_decision,
    closable_from,
    close_request,
    due_expiry,
    event_fields,
    usable_ticket,
)
from .base import AuditStoreError

__all__ = ["SqliteApprovalStore"]

T = TypeVar("T")

_TABLES = ("approval_requests", "approval_events")

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS approval_requests (
        id TEXT PRIMARY KEY, created_at REAL NOT NULL, expires_at REAL NOT NULL, valid_until REAL,
        status TEXT NOT NULL, mode TEXT NOT NULL, requester TEXT NOT NULL, fingerprint TEXT NOT NULL,
        body TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS approval_requests_ticket ON approval_requests (requester, fingerprint, status)",
    "CREATE INDEX IF NOT EXISTS approval_requests_status ON approval_requests (status, created_at)",
    "CREATE INDEX IF NOT EXISTS approval_requests_created ON approval_requests (created_at)",
    """CREATE TABLE IF NOT EXISTS approval_events (
        id INTEGER PRIMARY KEY AUTOINCREMENT, request TEXT NOT NULL, at REAL NOT NULL, kind TEXT NOT NULL,
        fields TEXT NOT NULL, chained INTEGER NOT NULL DEFAULT 0)""",
    "CREATE INDEX IF NOT EXISTS approval_events_unchained ON approval_events (id) WHERE chained = 0",
)
_INDEXES = ("approval_requests_ticket", "approval_requests_status", "approval_requests_created",
            "approval_events_unchained")

_ORDER = " ORDER BY created_at DESC, id DESC"


class SqliteApprovalStore(ApprovalStore):
    kind = "sqlite"

    def __init__(self, path: str | os.PathLike[str], *, timeout: float = 10.0) -> None:
        self.path = Path(path)
        self.timeout = max(float(timeout), 10.0)
        self._conn: sqlite3.Connection | None = None
        self._executor: ThreadPoolExecutor | None = None

    # ------------------------------------------------------------ plumbing

    async def _run(self, what: str, fn: Callable[..., T], *args: Any) -> T:
        executor = self._executor
        if executor is None:
            raise AuditStoreError("the approval store is not open")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(executor, functools.partial(self._call, what, fn, *args))

    def _call(self, what: str, fn: Callable[..., T], *args: Any) -> T:
        """On the worker thread."""
        conn = self._conn
        if conn is None:
            raise AuditStoreError("the approval store is not open")
        try:
            return fn(conn, *args)
        except sqlite3.Error as exc:
            raise AuditStoreError(f"{what} ({self.path}): {exc}") from exc

    @staticmethod
    def _write(conn: sqlite3.Connection, fn: Callable[[], T]) -> T:
        """``fn`` inside BEGIN IMMEDIATE ... COMMIT; rolled back on any exception."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = fn()
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            raise
        return result

    @staticmethod
    def _load(conn: sqlite3.Connection, request_id: str) -> ApprovalRequest:
        row = conn.execute("SELECT body FROM approval_requests WHERE id = ?", (request_id,)).fetchone()
        if row is None:
            raise ApprovalError("not_found", f"no approval request {request_id!r}")
        return request_from_body(row[0])

    @staticmethod
    def _save(conn: sqlite3.Connection, request: ApprovalRequest) -> None:
        conn.execute(
            "UPDATE approval_requests SET expires_at = ?, valid_until = ?, status = ?, body = ? WHERE id = ?",
            (request.expires_at, request.valid_until, request.status, request.body(), request.id),
        )

    @staticmethod
    def _event(conn: sqlite3.Connection, request_id: str, at: float, kind: str, fields: dict[str, Any],
               chained: bool) -> ApprovalEvent:
        text = compact_json(fields)
        cursor = conn.execute(
            "INSERT INTO approval_events (request, at, kind, fields, chained) VALUES (?, ?, ?, ?, ?)",
            (request_id, at, kind, text, 1 if chained else 0),
        )
        return ApprovalEvent(int(cursor.lastrowid or 0), request_id, at, kind, json.loads(text))

    def _close(self, conn: sqlite3.Connection, updated: ApprovalRequest, now: float,
               chained: bool) -> tuple[ApprovalRequest, ApprovalEvent]:
        self._save(conn, updated)
        event = self._event(conn, updated.id, now, updated.status, event_fields(updated.status, updated), chained)
        return updated, event

    # ------------------------------------------------------------ lifecycle

    async def open(self, *, create: bool = True) -> None:
        if self._executor is not None:
            return
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pgwarden-approvals")
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, self._open_sync, create)
        except BaseException:
            self._executor.shutdown(wait=False)
            self._executor = None
            raise

    def _open_sync(self, create: bool) -> None:
        if not self.path.exists():
            if not create:
                raise AuditStoreError(
                    f"no audit trail at {self.path}: approval requests are kept in it "
                    "(start the gateway once, or check audit.store.path)"
                )
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
            except OSError as exc:
                raise AuditStoreError(f"cannot create the audit trail {self.path}: {exc}") from exc
        try:
            conn = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
        except sqlite3.Error as exc:
            raise AuditStoreError(f"cannot open the approvals in {self.path}: {exc}") from exc
        try:
            conn.execute(f"PRAGMA busy_timeout={int(self.timeout * 1000)}")
            if conn.execute("PRAGMA page_count").fetchone()[0] == 0:
                # A new file: the audit store's page size (only settable now), so a
                # trail whose file this store happened to create is laid out the same.
                conn.execute("PRAGMA page_size=65536")
            if str(conn.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
                conn.execute("PRAGMA journal_mode=WAL")
            names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'index')")}
            if not create and "blocks" not in names and "approval_requests" not in names:
                raise AuditStoreError(f"{self.path} is not a pgwarden audit trail")
            if not names.issuperset(_TABLES + _INDEXES):
                # Also for readers (create=False): the CLI may be the first to use the tables.
                def schema() -> None:
                    for statement in SCHEMA:
                        conn.execute(statement)

                self._write(conn, schema)
        except BaseException as exc:
            conn.close()
            if isinstance(exc, sqlite3.Error):
                raise AuditStoreError(f"cannot open the approvals in {self.path}: {exc}") from exc
            raise
        self._conn = conn

    async def close(self) -> None:
        executor = self._executor
        if executor is None:
            return

        def shut() -> None:
            conn, self._conn = self._conn, None
            if conn is not None:
                conn.close()

        try:
            await asyncio.get_running_loop().run_in_executor(executor, shut)
        finally:
            self._executor = None
            executor.shutdown(wait=False)

    # ------------------------------------------------------------ reading

    async def get(self, request_id: str) -> ApprovalRequest | None:
        def fn(conn: sqlite3.Connection) -> ApprovalRequest | None:
            row = conn.execute("SELECT body FROM approval_requests WHERE id = ?", (request_id,)).fetchone()
            if row is None and len(request_id) >= 4:
                bounds = prefix_bounds(request_id)
                if bounds is None:
                    return None
                rows = conn.execute(
                    "SELECT id, body FROM approval_requests WHERE id >= ? AND id < ? ORDER BY id LIMIT 2", bounds
                ).fetchall()
                bodies = [body for rid, body in rows if rid.startswith(request_id)]
                # An ambiguous prefix finds nothing (as AuditStore.session does).
                return request_from_body(bodies[0]) if len(bodies) == 1 else None
            return None if row is None else request_from_body(row[0])

        return await self._run("cannot read the approvals", fn)

    async def list(self, status: str | None = None, limit: int = 100) -> list[ApprovalRequest]:
        def fn(conn: sqlite3.Connection) -> list[ApprovalRequest]:
            if status is None:
                rows = conn.execute(f"SELECT body FROM approval_requests{_ORDER} LIMIT ?", (limit,))
            else:
                rows = conn.execute(
                    f"SELECT body FROM approval_requests WHERE status = ?{_ORDER} LIMIT ?", (status, limit)
                )
            return [request_from_body(r[0]) for r in rows]

        return await self._run("cannot read the approvals", fn)

    async def get_many(self, ids: Sequence[str]) -> dict[str, ApprovalRequest]:
        wanted = list(dict.fromkeys(ids))

        def fn(conn: sqlite3.Connection) -> dict[str, ApprovalRequest]:
            found: dict[str, ApprovalRequest] = {}
            for i in range(0, len(wanted), 500):
                chunk = wanted[i:i + 500]
                sql = f"SELECT body FROM approval_requests WHERE id IN ({','.join('?' * len(chunk))})"
                for (body,) in conn.execute(sql, chunk):
                    request = request_from_body(body)
                    found[request.id] = request
            return found

        return await self._run("cannot read the approvals", fn)

    async def find_pending(self, requester: str, fingerprint: str, now: float) -> ApprovalRequest | None:
        def fn(conn: sqlite3.Connection) -> ApprovalRequest | None:
            row = conn.execute(
                "SELECT body FROM approval_requests WHERE requester = ? AND fingerprint = ? AND status = 'pending' "
                f"AND mode = 'ticket' AND expires_at > ?{_ORDER} LIMIT 1",
                (requester, fingerprint, now),
            ).fetchone()
            return None if row is None else request_from_body(row[0])

        return await self._run("cannot read the approvals", fn)

    # ------------------------------------------------------------ writing

    async def create(self, request: ApprovalRequest, *, chained: bool) -> ApprovalEvent:
        if request.status != "pending":
            raise ValueError(f"a new approval request is pending, not {request.status}")

        def fn(conn: sqlite3.Connection) -> ApprovalEvent:
            def tx() -> ApprovalEvent:
                try:
                    conn.execute(
                        "INSERT INTO approval_requests (id, created_at, expires_at, valid_until, status, mode, "
                        "requester, fingerprint, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (request.id, request.created_at, request.expires_at, request.valid_until, request.status,
                         request.mode, request.requester, request.fingerprint, request.body()),
                    )
                except sqlite3.IntegrityError as exc:
                    raise AuditStoreError(f"approval request {request.id} exists already") from exc
                return self._event(conn, request.id, request.created_at, "requested",
                                   event_fields("requested", request), chained)

            return self._write(conn, tx)

        return await self._run("cannot write the approvals", fn)

    async def decide(self, request_id: str, reviewer: Reviewer, action: str, comment: str, now: float, *,
                     chained: bool) -> tuple[ApprovalRequest, list[ApprovalEvent]]:
        def fn(conn: sqlite3.Connection) -> tuple[ApprovalRequest, list[ApprovalEvent]]:
            def tx() -> tuple[ApprovalRequest, list[ApprovalEvent]]:
                updated, events = apply_decision(self._load(conn, request_id), reviewer, action, comment, now)
                self._save(conn, updated)
                return updated, [self._event(conn, updated.id, now, kind, fields, chained) for kind, fields in events]

            return self._write(conn, tx)

        return await self._run("cannot write the approvals", fn)

    async def consume(self, requester: str, fingerprint: str, now: float, session: str, *,
                      chained: bool) -> tuple[ApprovalRequest, ApprovalEvent] | None:
        def fn(conn: sqlite3.Connection) -> tuple[ApprovalRequest, ApprovalEvent] | None:
            def tx() -> tuple[ApprovalRequest, ApprovalEvent] | None:
                rows = conn.execute(
                    "SELECT body FROM approval_requests WHERE requester = ? AND fingerprint = ? "
                    "AND status = 'approved' AND mode = 'ticket' AND valid_until > ? ORDER BY valid_until, id",
                    (requester, fingerprint, now),
                ).fetchall()
                for (body,) in rows:
                    request = request_from_body(body)
                    if usable_ticket(request, requester, fingerprint, now):
                        updated = close_request(request, "executed", session, "approved ticket used", now, session)
                        return self._close(conn, updated, now, chained)
                return None

            return self._write(conn, tx)

        return await self._run("cannot write the approvals", fn)

    async def close_request(self, request_id: str, status: str, by: str, reason: str, now: float, *,
                            from_statuses: Sequence[str] = OPEN_STATUSES, session: str | None = None,
                            chained: bool) -> tuple[ApprovalRequest, ApprovalEvent] | None:
        allowed = closable_from(status, from_statuses)

        def fn(conn: sqlite3.Connection) -> tuple[ApprovalRequest, ApprovalEvent] | None:
            def tx() -> tuple[ApprovalRequest, ApprovalEvent] | None:
                request = self._load(conn, request_id)
                if request.status not in allowed:
                    return None
                updated = close_request(request, status, by, reason, now, session)
                return self._close(conn, updated, now, chained)

            return self._write(conn, tx)

        return await self._run("cannot write the approvals", fn)

    async def expire_due(self, now: float, *, chained: bool) -> list[tuple[ApprovalRequest, ApprovalEvent]]:
        def fn(conn: sqlite3.Connection) -> list[tuple[ApprovalRequest, ApprovalEvent]]:
            def tx() -> list[tuple[ApprovalRequest, ApprovalEvent]]:
                rows = conn.execute(
                    "SELECT body FROM approval_requests WHERE (status = 'pending' AND expires_at <= ?) "
                    "OR (status = 'approved' AND valid_until <= ?) ORDER BY created_at, id",
                    (now, now),
                ).fetchall()
                done = []
                for (body,) in rows:
                    request = request_from_body(body)
                    updated = due_expiry(request, now)
                    if updated is not None:
                        done.append(self._close(conn, updated, now, chained))
                return done

            return self._write(conn, tx)

        return await self._run("cannot write the approvals", fn)

    async def claim_unchained(self, limit: int = 200) -> list[ApprovalEvent]:
        def fn(conn: sqlite3.Connection) -> list[ApprovalEvent]:
            def tx() -> list[ApprovalEvent]:
                rows = conn.execute(
                    "SELECT id, request, at, kind, fields FROM approval_events WHERE chained = 0 ORDER BY id LIMIT ?",
                    (limit,),
                ).fetchall()
                if rows:
                    conn.executemany("UPDATE approval_events SET chained = 1 WHERE id = ?", [(r[0],) for r in rows])
                return [ApprovalEvent(r[0], r[1], r[2], r[3], json.loads(r[4])) for r in rows]

            return self._write(conn, tx)

        return await self._run("cannot write the approvals", fn)
