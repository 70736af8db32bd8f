"""Approval requests in the PostgreSQL audit database (``{schema}.approval_requests``, ``approval_events``).

The tables sit in the audit trail's schema, so every gateway sharing the trail
shares the requests. Each method is one READ COMMITTED transaction on the
store's connection: the request row is read ``FOR UPDATE``, the rules of
``approvals.py`` are applied in Python and the row is written back, so two
reviewers deciding at once, two gateways consuming one ticket, or a decision
racing the expiry sweep serialise on the row (the second one re-reads the row
the first committed; a consumed ticket is no longer ``approved`` for it).

``expire_due`` and ``claim_unchained`` use ``SKIP LOCKED``: gateways sweep and
claim side by side, each row is taken by one of them, and a row that another
transaction holds is left for the next round instead of waited for.

Every change also sends ``NOTIFY pgwarden_approvals, '<request id>'`` inside
its transaction (delivered only if it commits), so a gateway that LISTENs learns
of a decision made elsewhere at once.

Connections: one per store, opened lazily and re-opened when found closed. A
transaction whose connection turns out to be gone before COMMIT was sent is
retried once on a new connection (the server rolled it back); otherwise a lost
connection is an AuditStoreError and the next call reconnects.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import asyncpg

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
from .postgres import PostgresAuditStore

__all__ = ["PostgresApprovalStore", "CHANNEL"]

T = TypeVar("T")

#: The LISTEN/NOTIFY channel; the payload is the request id.
CHANNEL = "pgwarden_approvals"

_TABLES = ("approval_requests", "approval_events")

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS {s}.approval_requests (
        id text COLLATE "C" PRIMARY KEY, created_at double precision NOT NULL,
        expires_at double precision NOT NULL, valid_until double precision, status text NOT NULL,
        mode text NOT NULL, requester text NOT NULL, fingerprint text NOT NULL, body text NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS approval_requests_ticket ON {s}.approval_requests (requester, fingerprint, status)",
    "CREATE INDEX IF NOT EXISTS approval_requests_status ON {s}.approval_requests (status, created_at)",
    "CREATE INDEX IF NOT EXISTS approval_requests_created ON {s}.approval_requests (created_at)",
    """CREATE TABLE IF NOT EXISTS {s}.approval_events (
        id bigserial PRIMARY KEY, request text COLLATE "C" NOT NULL, at double precision NOT NULL,
        kind text NOT NULL, fields text NOT NULL, chained boolean NOT NULL DEFAULT false)""",
    "CREATE INDEX IF NOT EXISTS approval_events_unchained ON {s}.approval_events (id) WHERE NOT chained",
)

_ORDER = " ORDER BY created_at DESC, id DESC"


class PostgresApprovalStore(ApprovalStore):
    kind = "postgres"

    def __init__(self, dsn: str, schema: str = "pgwarden_audit", *, timeout: float = 30.0) -> None:
        # The audit store's DSN parsing, schema check, lock key and error messages
        # (it is never opened: only its helpers are used).
        self._audit = PostgresAuditStore(dsn, schema=schema, timeout=timeout)
        self.schema = schema
        self.timeout = self._audit.timeout
        self.where = self._audit.where
        self._s = self._audit._s
        self._conn: asyncpg.Connection | None = None
        self._lock = asyncio.Lock()
        self._listener: asyncpg.Connection | None = None

    # ------------------------------------------------------------ connections and transactions

    def _error(self, what: str, exc: BaseException) -> AuditStoreError:
        return self._audit._error(what, exc)

    async def _connection(self) -> asyncpg.Connection:
        if self._conn is None or self._conn.is_closed():
            try:
                self._conn = await asyncpg.connect(
                    self._audit._uri, timeout=self.timeout, command_timeout=self.timeout,
                    server_settings={"application_name": "pgwarden-approvals"},
                )
            except Exception as exc:
                self._conn = None
                raise self._error("cannot connect to the audit store", exc) from None
        return self._conn

    async def _abandon(self, conn: asyncpg.Connection, exc: BaseException, in_tx: bool) -> bool:
        """After a failure: roll back, or drop the connection. True if the connection is gone."""
        if isinstance(exc, Exception) and not conn.is_closed():
            if not in_tx:
                return False
            try:
                await conn.execute("ROLLBACK")
                return False
            except Exception:
                pass
        conn.terminate()  # cancelled mid-transaction too: the server rolls back when we hang up
        if self._conn is conn:
            self._conn = None
        return True

    async def _run(self, what: str, body: Callable[[asyncpg.Connection], Awaitable[T]], *, tx: bool = True) -> T:
        """``body`` on the store's connection, in one transaction if ``tx``.

        ApprovalError passes through (after ROLLBACK); anything else becomes an
        AuditStoreError. Retried once on a new connection when the old one is
        found gone before COMMIT was sent.
        """
        async with self._lock:
            for attempt in (0, 1):
                conn = await self._connection()
                committing = False
                try:
                    if tx:
                        await conn.execute("BEGIN ISOLATION LEVEL READ COMMITTED")
                    result = await body(conn)
                    if tx:
                        committing = True
                        await conn.execute("COMMIT")
                    return result
                except BaseException as exc:
                    lost = await self._abandon(conn, exc, tx)
                    if not isinstance(exc, Exception) or isinstance(exc, ApprovalError):
                        raise
                    if lost and not committing and attempt == 0:
                        continue
                    raise self._error(what, exc) from None
        raise AssertionError("unreachable")

    async def _notify(self, conn: asyncpg.Connection, ids: Sequence[str]) -> None:
        if ids:
            await conn.execute("SELECT pg_notify($1, id) FROM unnest($2::text[]) AS id", CHANNEL, list(ids))

    async def _load(self, conn: asyncpg.Connection, request_id: str) -> ApprovalRequest:
        body = await conn.fetchval(f"SELECT body FROM {self._s}.approval_requests WHERE id = $1 FOR UPDATE", request_id)
        if body is None:
            raise ApprovalError("not_found", f"no approval request {request_id!r}")
        return request_from_body(body)

    async def _save(self, conn: asyncpg.Connection, request: ApprovalRequest) -> None:
        await conn.execute(
            f"UPDATE {self._s}.approval_requests SET expires_at = $2, valid_until = $3, status = $4, body = $5 "
            "WHERE id = $1",
            request.id, float(request.expires_at), _float(request.valid_until), request.status, request.body(),
        )

    async def _event(self, conn: asyncpg.Connection, request_id: str, at: float, kind: str, fields: dict[str, Any],
                     chained: bool) -> ApprovalEvent:
        text = compact_json(fields)
        event_id = await conn.fetchval(
            f"INSERT INTO {self._s}.approval_events (request, at, kind, fields, chained) "
            "VALUES ($1, $2, $3, $4, $5) RETURNING id",
            request_id, float(at), kind, text, chained,
        )
        return ApprovalEvent(int(event_id), request_id, at, kind, json.loads(text))

    async def _close(self, conn: asyncpg.Connection, updated: ApprovalRequest, now: float,
                     chained: bool) -> tuple[ApprovalRequest, ApprovalEvent]:
        await self._save(conn, updated)
        event = await self._event(conn, updated.id, now, updated.status, event_fields(updated.status, updated), chained)
        return updated, event

    # ------------------------------------------------------------ lifecycle

    async def open(self, *, create: bool = True) -> None:
        async with self._lock:
            conn = await self._connection()
            try:
                found = await conn.fetchval(
                    "SELECT count(to_regclass(n)) FROM unnest($1::text[]) AS n",
                    [f"{self._s}.{t}" for t in _TABLES],
                )
                if found == len(_TABLES):
                    return  # also lets an administrator pre-create the tables for a role without CREATE
                has_schema = await conn.fetchval("SELECT EXISTS (SELECT FROM pg_namespace WHERE nspname = $1)",
                                                 self.schema)
                if not create and not has_schema:
                    raise AuditStoreError(f"no pgwarden audit trail in schema {self.schema} of {self.where}")
                # Readers create the tables too once the trail exists: the CLI may be the first to use them.
                async with conn.transaction():
                    await conn.execute(self._audit._lock_sql)  # gateways starting together create it once
                    if not has_schema:
                        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {self._s}")
                    for statement in _SCHEMA:
                        await conn.execute(statement.format(s=self._s))
            except BaseException as exc:
                conn.terminate()
                self._conn = None
                if not isinstance(exc, Exception):
                    raise
                raise self._error("cannot open the approvals", exc) from None

    async def listen(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(request id)`` on every change any process makes (LISTEN on its own
        connection). Best effort: a gateway still polls, this only makes it prompt."""
        await self.unlisten()
        try:
            conn = await asyncpg.connect(
                self._audit._uri, timeout=self.timeout,
                server_settings={"application_name": "pgwarden-approvals-listen"},
            )
            await conn.add_listener(CHANNEL, lambda _c, _pid, _channel, payload: callback(payload))
        except Exception as exc:
            raise self._error("cannot listen for approval changes", exc) from None
        self._listener = conn

    @property
    def listening(self) -> bool:
        return self._listener is not None and not self._listener.is_closed()

    async def unlisten(self) -> None:
        conn, self._listener = self._listener, None
        if conn is not None and not conn.is_closed():
            try:
                await conn.close(timeout=5)
            except Exception:
                conn.terminate()

    async def close(self) -> None:
        await self.unlisten()
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            try:
                await conn.close(timeout=5)
            except Exception:
                conn.terminate()

    # ------------------------------------------------------------ reading

    async def get(self, request_id: str) -> ApprovalRequest | None:
        table = f"{self._s}.approval_requests"

        async def body(conn: asyncpg.Connection) -> ApprovalRequest | None:
            found = await conn.fetchval(f"SELECT body FROM {table} WHERE id = $1", request_id)
            if found is None and len(request_id) >= 4:
                bounds = prefix_bounds(request_id)
                if bounds is None:
                    return None
                rows = await conn.fetch(f"SELECT id, body FROM {table} WHERE id >= $1 AND id < $2 ORDER BY id LIMIT 2",
                                        *bounds)
                bodies = [r[1] for r in rows if r[0].startswith(request_id)]
                # An ambiguous prefix finds nothing (as AuditStore.session does).
                return request_from_body(bodies[0]) if len(bodies) == 1 else None
            return None if found is None else request_from_body(found)

        return await self._run("cannot read the approvals", body, tx=False)

    async def list(self, status: str | None = None, limit: int = 100) -> list[ApprovalRequest]:
        table = f"{self._s}.approval_requests"

        async def body(conn: asyncpg.Connection) -> list[ApprovalRequest]:
            if status is None:
                rows = await conn.fetch(f"SELECT body FROM {table}{_ORDER} LIMIT $1", int(limit))
            else:
                rows = await conn.fetch(f"SELECT body FROM {table} WHERE status = $1{_ORDER} LIMIT $2", status,
                                        int(limit))
            return [request_from_body(r[0]) for r in rows]

        return await self._run("cannot read the approvals", body, tx=False)

    async def get_many(self, ids: Sequence[str]) -> dict[str, ApprovalRequest]:
        wanted = list(dict.fromkeys(ids))
        if not wanted:
            return {}

        async def body(conn: asyncpg.Connection) -> dict[str, ApprovalRequest]:
            rows = await conn.fetch(f"SELECT body FROM {self._s}.approval_requests WHERE id = ANY($1::text[])", wanted)
            found = [request_from_body(r[0]) for r in rows]
            return {r.id: r for r in found}

        return await self._run("cannot read the approvals", body, tx=False)

    async def find_pending(self, requester: str, fingerprint: str, now: float) -> ApprovalRequest | None:
        async def body(conn: asyncpg.Connection) -> ApprovalRequest | None:
            found = await conn.fetchval(
                f"SELECT body FROM {self._s}.approval_requests WHERE requester = $1 AND fingerprint = $2 "
                f"AND status = 'pending' AND mode = 'ticket' AND expires_at > $3{_ORDER} LIMIT 1",
                requester, fingerprint, float(now),
            )
            return None if found is None else request_from_body(found)

        return await self._run("cannot read the approvals", body, tx=False)

    # ------------------------------------------------------------ writing

    async def create(self, request: ApprovalRequest, *, chained: bool) -> ApprovalEvent:
        if request.status != "pending":
            raise ValueError(f"a new approval request is pending, not {request.status}")

        async def body(conn: asyncpg.Connection) -> ApprovalEvent:
            try:
                await conn.execute(
                    f"INSERT INTO {self._s}.approval_requests (id, created_at, expires_at, valid_until, status, mode, "
                    "requester, fingerprint, body) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                    request.id, float(request.created_at), float(request.expires_at), _float(request.valid_until),
                    request.status, request.mode, request.requester, request.fingerprint, request.body(),
                )
            except asyncpg.UniqueViolationError:
                raise AuditStoreError(f"approval request {request.id} exists already") from None
            event = await self._event(conn, request.id, request.created_at, "requested",
                                      event_fields("requested", request), chained)
            await self._notify(conn, [request.id])
            return event

        return await self._run("cannot write the approvals", body)

    async def decide(self, request_id: str, reviewer: Reviewer, action: str, comment: str, now: float, *,
                     chained: bool) -> tuple[ApprovalRequest, list[ApprovalEvent]]:
        async def body(conn: asyncpg.Connection) -> tuple[ApprovalRequest, list[ApprovalEvent]]:
            updated, events = apply_decision(await self._load(conn, request_id), reviewer, action, comment, now)
            await self._save(conn, updated)
            written = [await self._event(conn, updated.id, now, kind, fields, chained) for kind, fields in events]
            await self._notify(conn, [updated.id])
            return updated, written

        return await self._run("cannot write the approvals", body)

    async def consume(self, requester: str, fingerprint: str, now: float, session: str, *,
                      chained: bool) -> tuple[ApprovalRequest, ApprovalEvent] | None:
        async def body(conn: asyncpg.Connection) -> tuple[ApprovalRequest, ApprovalEvent] | None:
            # FOR UPDATE without SKIP LOCKED: a second consumer waits for the first and
            # then re-checks the row (no longer approved once used), instead of passing
            # over a ticket whose first taker might still roll back.
            rows = await conn.fetch(
                f"SELECT body FROM {self._s}.approval_requests WHERE requester = $1 AND fingerprint = $2 "
                "AND status = 'approved' AND mode = 'ticket' AND valid_until > $3 ORDER BY valid_until, id FOR UPDATE",
                requester, fingerprint, float(now),
            )
            for row in rows:
                request = request_from_body(row[0])
                if usable_ticket(request, requester, fingerprint, now):
                    updated = close_request(request, "executed", session, "approved ticket used", now, session)
                    result = await self._close(conn, updated, now, chained)
                    await self._notify(conn, [updated.id])
                    return result
            return None

        return await self._run("cannot write the approvals", body)

    async def close_request(self, request_id: str, status: str, by: str, reason: str, now: float, *,
                            from_statuses: Sequence[str] = OPEN_STATUSES, session: str | None = None,
                            chained: bool) -> tuple[ApprovalRequest, ApprovalEvent] | None:
        allowed = closable_from(status, from_statuses)

        async def body(conn: asyncpg.Connection) -> tuple[ApprovalRequest, ApprovalEvent] | None:
            request = await self._load(conn, request_id)
            if request.status not in allowed:
                return None
            result = await self._close(conn, close_request(request, status, by, reason, now, session), now, chained)
            await self._notify(conn, [request.id])
            return result

        return await self._run("cannot write the approvals", body)

    async def expire_due(self, now: float, *, chained: bool) -> list[tuple[ApprovalRequest, ApprovalEvent]]:
        async def body(conn: asyncpg.Connection) -> list[tuple[ApprovalRequest, ApprovalEvent]]:
            rows = await conn.fetch(
                f"SELECT body FROM {self._s}.approval_requests WHERE (status = 'pending' AND expires_at <= $1) "
                "OR (status = 'approved' AND valid_until <= $1) ORDER BY created_at, id "
                "FOR UPDATE SKIP LOCKED",
                float(now),
            )
            done = []
            for row in rows:
                updated = due_expiry(request_from_body(row[0]), now)
                if updated is not None:
                    done.append(await self._close(conn, updated, now, chained))
            await self._notify(conn, [r.id for r, _ in done])
            return done

        return await self._run("cannot write the approvals", body)

    async def claim_unchained(self, limit: int = 200) -> list[ApprovalEvent]:
        table = f"{self._s}.approval_events"

        async def body(conn: asyncpg.Connection) -> list[ApprovalEvent]:
            rows = await conn.fetch(
                f"WITH claim AS (SELECT id FROM {table} WHERE NOT chained ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED) "
                f"UPDATE {table} AS e SET chained = true FROM claim WHERE e.id = claim.id "
                "RETURNING e.id, e.request, e.at, e.kind, e.fields",
                int(limit),
            )
            events = [ApprovalEvent(r[0], r[1], r[2], r[3], json.loads(r[4])) for r in rows]
            return sorted(events, key=lambda e: e.id)

        return await self._run("cannot write the approvals", body)


def _float(value: float | None) -> float | None:
    return None if value is None else float(value)
