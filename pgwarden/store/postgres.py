"""The PostgreSQL audit store: the trail in a separate database that several gateways share.

Why a separate database that is never a protected target: the trail must stay
out of reach of the people it records. If the audit database were reachable
through a gateway, a session could edit the evidence of itself, and every
append would produce records about appends. Point ``audit.store.dsn`` at a
database the gateways' clients cannot reach, with a role that only needs
CONNECT, and CREATE once (or pre-created tables with INSERT/SELECT/DELETE).

Why an advisory lock: sequence numbers are gap-free across all gateways that
share a trail and each record's hash covers its predecessor, so two gateways
must never both append after the same head (that would fork the chain).
``append`` takes ``pg_advisory_xact_lock`` first thing in its transaction and
only then reads the head; the lock is released by COMMIT/ROLLBACK, so a crashed
gateway cannot leave it held. The transaction is READ COMMITTED on purpose: each
statement sees what committed before it started, so the head read *after* the
lock was granted includes the other gateway's last commit (under REPEATABLE
READ the snapshot would predate the wait). Plain readers never take the lock.

Why ``at`` and ``started_at`` are text with COLLATE "C": they are the exact ISO
strings of the bodies, so both backends return identical values, and ISO 8601
UTC strings order correctly byte by byte; a linguistic collation (en_US) may
ignore punctuation and compare them differently from SQLite.

Connections: one for writes (group commits, checkpoints, retention, meta) and
one for reads, so a long ``records()`` scan never delays a group commit. Each is
re-opened when found closed: after the store restarts, the writer's next retry
reconnects and recording resumes. A transaction whose connection is lost
before COMMIT was sent is retried once on a new connection (the server rolled
it back). A connection lost *during* COMMIT leaves the outcome unknown; the store
remembers that batch, checks under the lock on the next append whether its last
hash was stored, and if so does not write again the records the writer retries
(matched by identity), so a retried batch is never stored twice.
"""

from __future__ import annotations

import asyncio
import re
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

import asyncpg

from .base import AuditStore, AuditStoreError, SessionFilter, SessionSummary, StoredCheckpoint, StoredRecord
from .records import GENESIS, PendingRecord, build_rows, fill_session_seqs

__all__ = ["PostgresAuditStore"]

#: First key of the two-int advisory lock ("pgwd"); the second is derived from
#: the schema, so unrelated trails in one database do not wait for each other.
LOCK_CLASS = 0x70677764

_SCHEMA = (
    "CREATE SCHEMA IF NOT EXISTS {s}",
    """CREATE TABLE IF NOT EXISTS {s}.records (
        seq bigint PRIMARY KEY, at text COLLATE "C" NOT NULL, session text COLLATE "C",
        type text NOT NULL, hash bytea NOT NULL, body bytea NOT NULL)""",
    # Reading one session's records (sessions show) must not scan the whole trail.
    "CREATE INDEX IF NOT EXISTS records_session ON {s}.records (session, seq)",
    """CREATE TABLE IF NOT EXISTS {s}.checkpoints (
        id bigserial PRIMARY KEY, seq bigint NOT NULL, at text COLLATE "C" NOT NULL,
        body bytea NOT NULL, signature bytea NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS {s}.sessions (
        id text COLLATE "C" PRIMARY KEY, gateway text, started_at text COLLATE "C" NOT NULL,
        ended_at text COLLATE "C", first_seq bigint, last_seq bigint, "user" text, subject text,
        roles text[], target text, client text, application_name text, statements bigint DEFAULT 0,
        refused bigint DEFAULT 0, errors bigint DEFAULT 0, masked bigint DEFAULT 0, end_reason text)""",
    "CREATE INDEX IF NOT EXISTS sessions_started ON {s}.sessions (started_at)",
    "CREATE TABLE IF NOT EXISTS {s}.meta (key text PRIMARY KEY, value text NOT NULL)",
)
_TABLES = ("records", "checkpoints", "sessions", "meta")

_SESSION_COLUMNS = (
    'id, gateway, started_at, ended_at, first_seq, last_seq, "user", subject, roles, target, client, '
    "application_name, statements, refused, errors, masked, end_reason"
)
_SESSION_PARAMS = ", ".join(f"${i}" for i in range(1, 18))
_SESSION_UPDATE = ", ".join(
    f"{c.strip()} = EXCLUDED.{c.strip()}" for c in _SESSION_COLUMNS.split(",")[1:]
)

#: Errors that mean "the connection is gone", as opposed to "the store said no".
_LOST = (OSError, asyncpg.PostgresConnectionError, asyncpg.OperatorInterventionError)


def _session_row(s: SessionSummary) -> tuple:
    return (
        s.id, s.gateway, s.started_at, s.ended_at, s.first_seq, s.last_seq, s.user, s.subject,
        list(s.roles), s.target, s.client, s.application_name, s.statements, s.refused,
        s.errors, s.masked, s.end_reason,
    )


def _summary(row: Any) -> SessionSummary:
    return SessionSummary(
        id=row[0], gateway=row[1] or "", started_at=row[2], ended_at=row[3], first_seq=row[4], last_seq=row[5],
        user=row[6] or "", subject=row[7], roles=list(row[8] or ()), target=row[9] or "", client=row[10] or "",
        application_name=row[11] or "", statements=row[12] or 0, refused=row[13] or 0, errors=row[14] or 0,
        masked=row[15] or 0, end_reason=row[16],
    )


_KV = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*('(?:[^'\\]|\\.)*'|(?:[^\s'\\]|\\.)+)\s*")


def parse_dsn(dsn: str) -> tuple[str, dict[str, str]]:
    """(URI for asyncpg, parameters) from a libpq URI or keyword/value string.

    asyncpg only understands URIs; operators and the test helpers write both.
    """
    dsn = dsn.strip()
    if dsn.startswith(("postgresql://", "postgres://")):
        parts = urlsplit(dsn)
        try:
            port = str(parts.port or "")
        except ValueError:  # several hosts, or a bad port: asyncpg reports it when connecting
            port = ""
        params = {
            "user": unquote(parts.username or ""), "password": unquote(parts.password or ""),
            "host": parts.hostname or "", "port": port, "dbname": unquote(parts.path[1:]),
        }
        params.update(parse_qsl(parts.query))
        return dsn, {k: v for k, v in params.items() if v}
    params, pos = {}, 0
    while pos < len(dsn):
        m = _KV.match(dsn, pos)
        if m is None:
            raise AuditStoreError(f"invalid audit store dsn (near character {pos})")
        value = m.group(2)
        if value.startswith("'"):
            value = value[1:-1]
        params[m.group(1)] = re.sub(r"\\(.)", r"\1", value)
        pos = m.end()
    query = {k: v for k, v in params.items() if k != "connect_timeout"}
    return "postgresql://?" + urlencode(query, quote_via=quote), params


class PostgresAuditStore(AuditStore):
    kind = "postgres"

    def __init__(self, dsn: str, *, schema: str = "pgwarden_audit", timeout: float = 30.0) -> None:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,62}", schema):
            raise AuditStoreError(f"invalid audit schema name {schema!r}")
        self._uri, params = parse_dsn(dsn)
        self.schema = schema
        self.timeout = float(params.get("connect_timeout") or timeout)
        self.where = "postgresql://{}@{}:{}/{}".format(
            params.get("user", ""), params.get("host", "localhost"), params.get("port", "5432"),
            params.get("dbname", params.get("database", "")),
        )
        self._secrets = [s for s in {params.get("password", ""), quote(params.get("password", ""))} if s]
        self._s = f'"{schema}"'
        self._lock_sql = f"SELECT pg_advisory_xact_lock({LOCK_CLASS}, {zlib.crc32(schema.encode()) - 2**31})"
        self._w: asyncpg.Connection | None = None
        self._r: asyncpg.Connection | None = None
        self._wlock = asyncio.Lock()
        self._rlock = asyncio.Lock()
        # Ambiguous commits (see the module docstring): records known stored whose
        # append raised, and the batch whose COMMIT got no answer.
        self._unacked: list[tuple[PendingRecord, int]] = []
        self._doubt: tuple[list[PendingRecord], list[int], int, bytes] | None = None

    # ------------------------------------------------------------ errors and connections

    def _error(self, what: str, exc: BaseException) -> AuditStoreError:
        if isinstance(exc, AuditStoreError):
            return exc
        if isinstance(exc, asyncpg.InsufficientPrivilegeError):
            why = "permission denied"
        elif isinstance(exc, asyncpg.InvalidAuthorizationSpecificationError):
            why = "login refused"
        elif isinstance(exc, asyncpg.InvalidCatalogNameError):
            why = "no such database"
        elif isinstance(exc, TimeoutError):
            why = f"no answer within {self.timeout:g}s"
        elif isinstance(exc, _LOST):
            why = "unreachable"
        elif isinstance(exc, asyncpg.InterfaceError) and "closed" in str(exc):
            why = "connection lost"
        else:
            why = type(exc).__name__
        text = f"{what} ({self.where}): {why}: {str(exc).strip() or type(exc).__name__}"
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return AuditStoreError(text)

    async def _connect(self) -> asyncpg.Connection:
        try:
            return await asyncpg.connect(
                self._uri, timeout=self.timeout, command_timeout=self.timeout,
                server_settings={"application_name": "pgwarden-audit"},
            )
        except Exception as exc:
            raise self._error("cannot connect to the audit store", exc) from None

    async def _writer(self) -> asyncpg.Connection:
        if self._w is None or self._w.is_closed():
            self._w = await self._connect()
        return self._w

    async def _abandon(self, conn: asyncpg.Connection) -> bool:
        """After a failed transaction: roll back, or drop the connection. True if it is gone."""
        if not conn.is_closed():
            try:
                await conn.execute("ROLLBACK")
                return False
            except Exception:
                conn.terminate()
        if self._w is conn:
            self._w = None
        return True

    async def _commit(self, conn: asyncpg.Connection) -> None:
        await conn.execute("COMMIT")

    async def _transaction(
        self, what: str, body: Callable[[asyncpg.Connection], Awaitable[Any]],
        settle: Callable[[str], None] = lambda outcome: None,
    ) -> Any:
        """Run ``body`` in one locked transaction on the writer connection.

        ``settle`` learns the outcome: "ok", "failed" (nothing kept) or "doubt"
        (COMMIT was sent but no answer came back). Retried once on a new connection
        when the old one turns out to be gone before COMMIT (a restarted store).
        """
        async with self._wlock:
            for attempt in (0, 1):
                conn = await self._writer()
                committing = False
                try:
                    await conn.execute(f"BEGIN ISOLATION LEVEL READ COMMITTED; {self._lock_sql}")
                    result = await body(conn)
                    committing = True
                    await self._commit(conn)
                except BaseException as exc:
                    lost = True
                    if isinstance(exc, Exception):
                        lost = await self._abandon(conn)
                    else:  # cancelled mid-transaction: the server rolls back when we hang up
                        conn.terminate()
                        self._w = None
                    # Only the server's own answer to COMMIT (an error on a live connection)
                    # says it did not happen; a lost connection or a timeout says nothing.
                    doubt = committing and (lost or not isinstance(exc, asyncpg.PostgresError))
                    settle("doubt" if doubt else "failed")
                    if not isinstance(exc, Exception):
                        raise
                    if lost and not committing and attempt == 0:
                        continue
                    raise self._error(what, exc) from None
                settle("ok")
                return result

    async def _read(self, what: str, fn: Callable[[asyncpg.Connection], Awaitable[Any]]) -> Any:
        """Run a query on the reader connection; retried once if the connection was gone."""
        for attempt in (0, 1):
            async with self._rlock:
                if self._r is None or self._r.is_closed():
                    self._r = await self._connect()
                conn = self._r
                try:
                    return await fn(conn)
                except Exception as exc:
                    if conn.is_closed() or isinstance(exc, _LOST):
                        conn.terminate()
                        self._r = None
                        if attempt == 0:
                            continue
                    raise self._error(what, exc) from None

    async def _fetch(self, method: str, sql: str, *args: Any) -> Any:
        return await self._read("cannot read the audit trail", lambda conn: getattr(conn, method)(sql, *args))

    # ------------------------------------------------------------ lifecycle

    async def open(self, *, create: bool = True) -> None:
        async with self._wlock:
            conn = await self._writer()
            try:
                found = await conn.fetchval(
                    "SELECT count(to_regclass(n)) FROM unnest($1::text[]) AS n",
                    [f"{self._s}.{t}" for t in _TABLES],
                )
                if found == len(_TABLES):
                    return  # also lets an administrator pre-create the tables for a role without CREATE
                if not create:
                    raise AuditStoreError(f"no pgwarden audit trail in schema {self.schema} of {self.where}")
                async with conn.transaction():
                    await conn.execute(self._lock_sql)  # gateways starting together create it once
                    for statement in _SCHEMA:
                        await conn.execute(statement.format(s=self._s))
            except BaseException as exc:
                conn.terminate()
                self._w = None
                if not isinstance(exc, Exception):
                    raise
                raise self._error("cannot open the audit trail", exc) from None

    async def close(self) -> None:
        for name in ("_w", "_r"):
            conn = getattr(self, name)
            setattr(self, name, None)
            if conn is not None and not conn.is_closed():
                try:
                    await conn.close(timeout=5)
                except Exception:
                    conn.terminate()

    # ------------------------------------------------------------ meta

    async def get_meta(self, key: str) -> str | None:
        return await self._fetch("fetchval", f"SELECT value FROM {self._s}.meta WHERE key = $1", key)

    async def set_meta(self, key: str, value: str) -> None:
        sql = f"INSERT INTO {self._s}.meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = $2"
        await self._transaction("cannot write the audit trail", lambda conn: conn.execute(sql, key, value))

    # ------------------------------------------------------------ writing

    async def _head(self, conn: asyncpg.Connection) -> tuple[int, bytes]:
        row = await conn.fetchrow(f"SELECT seq, hash FROM {self._s}.records ORDER BY seq DESC LIMIT 1")
        if row is not None:
            return row[0], bytes(row[1])
        # Empty: either new, or everything was removed by retention (the anchor is signed).
        row = await conn.fetchrow(
            f"SELECT seq, body FROM {self._s}.checkpoints WHERE position('\"reason\":\"retention\"'::bytea IN body) > 0 "
            "ORDER BY seq DESC, id DESC LIMIT 1"
        )
        if row is not None:
            import json

            return row[0], bytes.fromhex(json.loads(row[1])["hash"])
        return 0, GENESIS

    async def head(self) -> tuple[int, bytes]:
        return await self._read("cannot read the audit trail", self._head)

    async def append(
        self,
        pending: Sequence[PendingRecord],
        sessions_started: Sequence[SessionSummary] = (),
        sessions_ended: Sequence[SessionSummary] = (),
    ) -> tuple[int, bytes]:
        pending = list(pending)
        note: dict[str, Any] = {}
        s = self._s

        async def body(conn: asyncpg.Connection) -> tuple[int, bytes]:
            note.clear()
            seq, previous = await self._head(conn)
            unacked = self._unacked
            if self._doubt is not None:
                records, seqs, doubt_seq, doubt_hash = self._doubt
                stored = await conn.fetchval(f"SELECT hash FROM {s}.records WHERE seq = $1", doubt_seq)
                if stored is not None and bytes(stored) == doubt_hash:
                    unacked = unacked + list(zip(records, seqs))
                note["unacked"] = unacked
            skip = 0
            while skip < min(len(pending), len(unacked)) and pending[skip] is unacked[skip][0]:
                pending[skip].seq = unacked[skip][1]  # already stored by the commit that got no answer
                skip += 1
            rest = pending[skip:]
            if rest:
                rows, seq, previous = build_rows(seq, previous, rest)
                await conn.execute(
                    f"INSERT INTO {s}.records (seq, at, session, type, hash, body) SELECT * FROM "
                    "unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::bytea[], $6::bytea[])",
                    *(list(column) for column in zip(*rows)),
                )
                note["written"] = (rest, [r.seq for r in rest], seq, previous)
            fill_session_seqs(pending, sessions_started, sessions_ended)
            if sessions_started:
                await conn.executemany(
                    f"INSERT INTO {s}.sessions ({_SESSION_COLUMNS}) VALUES ({_SESSION_PARAMS}) "
                    "ON CONFLICT (id) DO NOTHING",
                    [_session_row(x) for x in sessions_started],
                )
            if sessions_ended:
                await conn.executemany(
                    f"INSERT INTO {s}.sessions ({_SESSION_COLUMNS}) VALUES ({_SESSION_PARAMS}) "
                    f"ON CONFLICT (id) DO UPDATE SET {_SESSION_UPDATE}",
                    [_session_row(x) for x in sessions_ended],
                )
            return seq, previous

        def settle(outcome: str) -> None:
            if outcome == "ok":
                self._unacked, self._doubt = [], None
                return
            if "unacked" in note:  # the earlier doubt was resolved by this attempt
                self._unacked, self._doubt = note["unacked"], None
            if outcome == "doubt" and "written" in note:
                self._doubt = note["written"]

        return await self._transaction("cannot write the audit trail", body, settle)

    async def add_checkpoint(self, checkpoint: StoredCheckpoint) -> None:
        await self._transaction("cannot write the audit trail", lambda conn: self._insert_checkpoint(conn, checkpoint))

    async def _insert_checkpoint(self, conn: asyncpg.Connection, c: StoredCheckpoint) -> None:
        await conn.execute(
            f"INSERT INTO {self._s}.checkpoints (seq, at, body, signature) VALUES ($1, $2, $3, $4)",
            c.seq, c.at, c.body, c.signature,
        )

    # ------------------------------------------------------------ reading

    async def records(self, start: int = 1, end: int | None = None, *, session: str | None = None, batch: int = 1000) -> AsyncIterator[StoredRecord]:  # type: ignore[override]
        last = start - 1
        stop = end if end is not None else 2**62
        columns = f"SELECT seq, at, session, type, hash, body FROM {self._s}.records"
        while True:
            if session is None:
                rows = await self._fetch(
                    "fetch", f"{columns} WHERE seq > $1 AND seq <= $2 ORDER BY seq LIMIT $3", last, stop, batch
                )
            else:
                rows = await self._fetch(
                    "fetch", f"{columns} WHERE seq > $1 AND seq <= $2 AND session = $3 ORDER BY seq LIMIT $4",
                    last, stop, session, batch,
                )
            for row in rows:
                yield StoredRecord(row[0], row[1], row[2], row[3], bytes(row[4]), bytes(row[5]))
            if len(rows) < batch:
                return
            last = rows[-1][0]

    async def checkpoints(self, start: int = 0, end: int | None = None) -> list[StoredCheckpoint]:
        rows = await self._fetch(
            "fetch",
            f"SELECT id, seq, at, body, signature FROM {self._s}.checkpoints WHERE seq >= $1 AND seq <= $2 "
            "ORDER BY seq, id",
            start, end if end is not None else 2**62,
        )
        return [StoredCheckpoint(r[0], r[1], r[2], bytes(r[3]), bytes(r[4])) for r in rows]

    async def bounds(self) -> tuple[int, int, int]:
        row = await self._fetch("fetchrow", f"SELECT min(seq), max(seq), count(*) FROM {self._s}.records")
        if row is None or row[2] == 0:
            return 0, 0, 0
        return row[0], row[1], row[2]

    async def sessions(self, filters: SessionFilter = SessionFilter()) -> list[SessionSummary]:
        """Newest first. Identity and role are globs (fnmatch, as in SQLite), matched here,
        so the query pages (keyset on started_at, id) until ``limit`` summaries matched."""
        where: list[str] = []
        args: list[Any] = []
        for column, op, value in (
            ("target", "=", filters.target), ("started_at", ">=", filters.since), ("started_at", "<", filters.until)
        ):
            if value:
                args.append(value)
                where.append(f"{column} {op} ${len(args)}")
        if filters.only_refused:
            where.append("refused > 0")
        if filters.only_masked:
            where.append("masked > 0")
        post = bool(filters.identity or filters.role)
        page = max(filters.limit, 500 if post else 1)
        found: list[SessionSummary] = []
        after: tuple[str, str] | None = None
        while True:
            conds, values = list(where), list(args)
            if after is not None:
                values.extend(after)
                conds.append(f"(started_at, id) < (${len(values) - 1}, ${len(values)})")
            sql = f"SELECT {_SESSION_COLUMNS} FROM {self._s}.sessions"
            if conds:
                sql += " WHERE " + " AND ".join(conds)
            sql += f" ORDER BY started_at DESC, id DESC LIMIT {page}"
            rows = await self._fetch("fetch", sql, *values)
            for row in rows:
                summary = _summary(row)
                if not filters.matches(summary):
                    continue
                found.append(summary)
                if len(found) >= filters.limit:
                    return found
            if len(rows) < page:
                return found
            after = (rows[-1][2], rows[-1][0])

    async def session(self, session_id: str) -> SessionSummary | None:
        select = f"SELECT {_SESSION_COLUMNS} FROM {self._s}.sessions"
        row = await self._fetch("fetchrow", f"{select} WHERE id = $1", session_id)
        if row is None and len(session_id) >= 6:
            pattern = session_id.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            rows = await self._fetch("fetch", f"{select} WHERE id LIKE $1 ESCAPE '\\' LIMIT 2", pattern)
            row = rows[0] if len(rows) == 1 else None
        return None if row is None else _summary(row)

    # ------------------------------------------------------------ retention

    async def last_seq_before(self, at: str) -> int:
        return await self._fetch("fetchval", f"SELECT coalesce(max(seq), 0) FROM {self._s}.records WHERE at < $1", at)

    async def delete_through(self, seq: int, checkpoint: StoredCheckpoint) -> int:
        async def body(conn: asyncpg.Connection) -> int:
            status = await conn.execute(f"DELETE FROM {self._s}.records WHERE seq <= $1", seq)
            await conn.execute(
                f"DELETE FROM {self._s}.sessions WHERE last_seq IS NOT NULL AND last_seq <= $1", seq
            )
            await self._insert_checkpoint(conn, checkpoint)
            return int(status.split()[-1])

        return await self._transaction("cannot apply retention to the audit trail", body)
