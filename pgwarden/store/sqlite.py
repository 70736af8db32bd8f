"""The embedded audit store: one SQLite file in WAL mode, behind a write-ahead journal.

Group commits go to a preallocated, memory-mapped journal next to the database
(``audit.sqlite.journal``): a record copied into a shared mapping is in the
page cache as soon as the copy ends, so it survives kill -9 of the gateway,
and the event loop pays a memory copy instead of a system call and an SQLite
transaction per commit. ``sync: full`` adds an msync (power loss). Every 50 ms
(and before checkpoints, retention and close) the journal's records move into
SQLite as one ``blocks`` row (``blocks.py``); a gateway that crashed loads what
its journal holds when it opens the store again, and readers read the journal
too. One gateway writes a file (an flock on ``audit.sqlite.lock``); gateways
sharing a trail use the PostgreSQL store.

WAL lets ``pgwarden sessions`` and ``pgwarden audit verify`` read while the
gateway writes. The WAL is checkpointed from a background thread so the
occasional fsync of a checkpoint never blocks the event loop (automatic
checkpoints are off on the writer's connection).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from .base import AuditStore, AuditStoreError, SessionFilter, SessionSummary, StoredCheckpoint, StoredRecord
from .blocks import decode_block, encode_block
from .journal import JournalMixin
from .records import GENESIS

__all__ = ["SqliteAuditStore"]

SCHEMA = (
    # One row per group commit (see blocks.py); last_hash makes reading the head cheap.
    """CREATE TABLE IF NOT EXISTS blocks (
        first_seq INTEGER PRIMARY KEY, last_seq INTEGER NOT NULL, first_at TEXT NOT NULL,
        last_hash BLOB NOT NULL, data BLOB NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS checkpoints (
        id INTEGER PRIMARY KEY AUTOINCREMENT, seq INTEGER NOT NULL, at TEXT NOT NULL,
        body BLOB NOT NULL, signature BLOB NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS sessions (
        id TEXT PRIMARY KEY, gateway TEXT, started_at TEXT NOT NULL, ended_at TEXT,
        first_seq INTEGER, last_seq INTEGER, user TEXT, subject TEXT, roles TEXT,
        target TEXT, client TEXT, application_name TEXT, statements INTEGER DEFAULT 0,
        refused INTEGER DEFAULT 0, errors INTEGER DEFAULT 0, masked INTEGER DEFAULT 0,
        end_reason TEXT)""",
    "CREATE INDEX IF NOT EXISTS sessions_started ON sessions(started_at)",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
)

_SESSION_COLUMNS = (
    "id, gateway, started_at, ended_at, first_seq, last_seq, user, subject, roles, target, client, "
    "application_name, statements, refused, errors, masked, end_reason"
)


def _session_row(s: SessionSummary) -> tuple:
    return (
        s.id, s.gateway, s.started_at, s.ended_at, s.first_seq, s.last_seq, s.user, s.subject,
        "\x1f".join(s.roles), s.target, s.client, s.application_name, s.statements, s.refused,
        s.errors, s.masked, s.end_reason,
    )


def _summary(row: tuple) -> SessionSummary:
    return SessionSummary(
        id=row[0], gateway=row[1] or "", started_at=row[2], ended_at=row[3], first_seq=row[4], last_seq=row[5],
        user=row[6] or "", subject=row[7], roles=[r for r in (row[8] or "").split("\x1f") if r],
        target=row[9] or "", client=row[10] or "", application_name=row[11] or "", statements=row[12] or 0,
        refused=row[13] or 0, errors=row[14] or 0, masked=row[15] or 0, end_reason=row[16],
    )


class SqliteAuditStore(JournalMixin, AuditStore):
    kind = "sqlite"

    def __init__(self, path: str | os.PathLike[str], *, sync: str = "normal") -> None:
        self.path = Path(path)
        self.sync = sync
        self._conn: sqlite3.Connection | None = None
        self._head: tuple[int, bytes] | None = None  # the chain's head, journal included
        self._lock = threading.Lock()  # the checkpoint thread vs close()
        # The write-ahead journal (writer only): see the module docstring.
        self.journal_path = Path(str(self.path) + ".journal")
        self._journal_fd: int | None = None
        self._lock_fd: int | None = None
        self._jlock = threading.RLock()
        # Blocks in the journal, not yet in SQLite: (first seq, last seq, first at, last hash, bytes).
        self._unloaded: list[tuple[int, int, str, bytes, bytes]] = []
        self._unloaded_sessions: list[tuple[str, SessionSummary]] = []
        self._journal_size = 0

    # ------------------------------------------------------------ lifecycle

    def _connect(self, create: bool) -> sqlite3.Connection:
        if not self.path.exists():
            if not create:
                raise AuditStoreError(f"no audit trail at {self.path}")
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
        conn = sqlite3.connect(self.path, timeout=10.0, isolation_level=None, check_same_thread=False)
        return conn

    async def open(self, *, create: bool = True) -> None:
        self.open_sync(create=create)

    def open_sync(self, *, create: bool = True) -> None:
        try:
            conn = self._connect(create)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={'FULL' if self.sync == 'full' else 'NORMAL'}")
            if create:
                # Blocks are large (a load is ~50 ms of records): big pages mean fewer
                # overflow pages per block. Only takes effect on a new file.
                conn.execute("PRAGMA page_size=65536")
                conn.execute("PRAGMA wal_autocheckpoint=0")  # checkpoints run off the event loop
                for statement in SCHEMA:
                    conn.execute(statement)
                self._conn = conn
                self._take_writer_lock()
                self._recover_journal()
                self._open_journal()
            else:
                found = conn.execute("SELECT 1 FROM sqlite_master WHERE name='blocks'").fetchone()
                if found is None:
                    conn.close()
                    raise AuditStoreError(f"{self.path} is not a pgwarden audit trail")
        except sqlite3.Error as exc:
            raise AuditStoreError(f"cannot open the audit trail {self.path}: {exc}") from exc
        self._conn = conn

    async def close(self) -> None:
        unloaded: AuditStoreError | None = None
        if self._journal_fd is not None:
            try:
                self.load_journal()
            except AuditStoreError as exc:
                # SQLite is still unwritable (full disk, ...): the journal keeps these
                # records and the next open loads them, as after a crash. Close
                # everything anyway, then say so.
                unloaded = exc
            self._close_journal()
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None
        with self._lock:
            if self._conn is not None:
                try:
                    if self._writable():
                        self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except sqlite3.Error:
                    pass
                self._conn.close()
                self._conn = None
        if unloaded is not None:
            raise AuditStoreError(f"{unloaded}; {len(self._unloaded)} group commit(s) left in the journal "
                                  f"{self.journal_path}, loaded when the trail is opened for writing again")

    def _writable(self) -> bool:
        return os.access(self.path, os.W_OK)

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise AuditStoreError("the audit store is not open")
        return self._conn

    def _insert(self, rows: list[tuple], started: Sequence[SessionSummary], ended: Sequence[SessionSummary] = ()) -> None:
        """Rows recovered from a journal, as one block."""
        block = (rows[0][0], rows[-1][0], rows[0][1], rows[-1][4], encode_block(rows)) if rows else None
        self._insert_block(block, started, ended)

    def _insert_block(self, block: tuple | None, started: Sequence[SessionSummary], ended: Sequence[SessionSummary]) -> None:
        """One transaction: a block (first seq, last seq, first at, last hash, data) and session rows."""
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            if block is not None:
                conn.execute("INSERT INTO blocks VALUES (?, ?, ?, ?, ?)", block)
            if started:
                conn.executemany(
                    f"INSERT OR IGNORE INTO sessions ({_SESSION_COLUMNS}) VALUES ({','.join('?' * 17)})",
                    [_session_row(s) for s in started],
                )
            if ended:
                conn.executemany(
                    f"INSERT OR REPLACE INTO sessions ({_SESSION_COLUMNS}) VALUES ({','.join('?' * 17)})",
                    [_session_row(s) for s in ended],
                )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def checkpoint_wal(self) -> None:
        """Copy the WAL into the database file (called from a background thread)."""
        path = self.path
        try:
            conn = sqlite3.connect(path, timeout=1.0, isolation_level=None)
            try:
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
            finally:
                conn.close()
        except sqlite3.Error:
            pass  # busy or unwritable: the next round tries again

    def _recovered_sessions(self, rows: list[tuple]) -> list[SessionSummary]:
        return summaries_from_rows(rows, self)

    # ------------------------------------------------------------ meta

    async def get_meta(self, key: str) -> str | None:
        row = self._query("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    async def set_meta(self, key: str, value: str) -> None:
        try:
            self.conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))
        except sqlite3.Error as exc:
            raise AuditStoreError(f"cannot write the audit trail {self.path}: {exc}") from exc

    def _query(self, sql: str, args: tuple = ()) -> sqlite3.Cursor:
        try:
            return self.conn.execute(sql, args)
        except sqlite3.Error as exc:
            raise AuditStoreError(f"cannot read the audit trail {self.path}: {exc}") from exc

    # ------------------------------------------------------------ writing

    async def head(self) -> tuple[int, bytes]:
        if self._journal_fd is not None:
            return self._current_head()
        rows = self._read_journal()
        seq, digest = self._head_locked()
        if rows and rows[-1][0] > seq:
            return rows[-1][0], rows[-1][4]
        return seq, digest

    def _head_locked(self) -> tuple[int, bytes]:
        row = self._query("SELECT last_seq, last_hash FROM blocks ORDER BY first_seq DESC LIMIT 1").fetchone()
        if row is not None:
            return row[0], bytes(row[1])
        # Empty: either new, or everything was removed by retention (the anchor is signed).
        row = self._query(
            # instr on bytes: LIKE does not match a BLOB operand (SQLite 3.40), so the anchor was never found.
            "SELECT seq, body FROM checkpoints WHERE instr(body, CAST('\"reason\":\"retention\"' AS BLOB)) > 0 "
            "ORDER BY seq DESC LIMIT 1"
        ).fetchone()
        if row is not None:
            return row[0], bytes.fromhex(json.loads(row[1])["hash"])
        return 0, GENESIS

    async def add_checkpoint(self, checkpoint: StoredCheckpoint) -> None:
        try:
            self.load_journal()  # the records it signs are in SQLite before it is
            self.conn.execute(
                "INSERT INTO checkpoints(seq, at, body, signature) VALUES (?, ?, ?, ?)",
                (checkpoint.seq, checkpoint.at, checkpoint.body, checkpoint.signature),
            )
        except sqlite3.Error as exc:
            raise AuditStoreError(f"cannot write the audit trail {self.path}: {exc}") from exc

    # ------------------------------------------------------------ reading

    async def records(self, start: int = 1, end: int | None = None, *, session: str | None = None, batch: int = 1000) -> AsyncIterator[StoredRecord]:  # type: ignore[override]
        stop = end if end is not None else 2**62
        # Records not in SQLite yet (this writer's, or a gateway's journal), taken *before*
        # the blocks are read: a writer that moves its journal into a new block in
        # between then only makes a record appear twice (skipped below), never vanish.
        if self._journal_fd is not None:
            extra = [(r.seq, r.at, r.session, r.type, r.hash, r.body) for b in list(self._unloaded) for r in decode_block(b[4])]
        else:
            extra = self._read_journal()
        # The block holding ``start`` may begin before it.
        row = self._query("SELECT max(first_seq) FROM blocks WHERE first_seq <= ?", (start,)).fetchone()
        cursor = row[0] if row and row[0] is not None else start
        covered = 0  # the last seq of the blocks read (what the journal snapshot may repeat)
        while True:
            rows = self._query(
                "SELECT first_seq, data FROM blocks WHERE first_seq >= ? AND first_seq <= ? ORDER BY first_seq LIMIT ?",
                (cursor, stop, max(1, batch // 16)),
            ).fetchall()
            if not rows:
                break
            for _first, data in rows:
                for record in decode_block(bytes(data)):
                    covered = record.seq
                    if record.seq < start or record.seq > stop:
                        continue
                    if session is not None and record.session != session:
                        continue
                    yield record
            cursor = rows[-1][0] + 1
        for row in extra:
            if row[0] <= covered or row[0] < start or row[0] > stop:
                continue
            if session is not None and row[2] != session:
                continue
            yield StoredRecord(row[0], row[1], row[2], row[3], row[4], row[5])

    async def checkpoints(self, start: int = 0, end: int | None = None) -> list[StoredCheckpoint]:
        self._catch_up()
        rows = self._query(
            "SELECT id, seq, at, body, signature FROM checkpoints WHERE seq >= ? AND seq <= ? ORDER BY seq, id",
            (start, end if end is not None else 2**62),
        ).fetchall()
        return [StoredCheckpoint(r[0], r[1], r[2], bytes(r[3]), bytes(r[4])) for r in rows]

    async def bounds(self) -> tuple[int, int, int]:
        self._catch_up()
        row = self._query("SELECT min(first_seq), max(last_seq), sum(last_seq - first_seq + 1) FROM blocks").fetchone()
        first, last, count = (row[0] or 0, row[1] or 0, row[2] or 0) if row else (0, 0, 0)
        extra = [r for r in self._read_journal() if r[0] > last] if self._journal_fd is None else []
        if extra:
            first = first or extra[0][0]
            last = extra[-1][0]
            count += len(extra)
        return first, last, count

    async def sessions(self, filters: SessionFilter = SessionFilter()) -> list[SessionSummary]:
        self._catch_up()
        where, args = [], []
        if filters.target:
            where.append("target = ?")
            args.append(filters.target)
        if filters.since:
            where.append("started_at >= ?")
            args.append(filters.since)
        if filters.until:
            where.append("started_at < ?")
            args.append(filters.until)
        if filters.only_refused:
            where.append("refused > 0")
        if filters.only_masked:
            where.append("masked > 0")
        sql = f"SELECT {_SESSION_COLUMNS} FROM sessions"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY started_at DESC"
        found = []
        for row in self._query(sql, tuple(args)):
            summary = _summary(row)
            if not filters.matches(summary):
                continue
            found.append(summary)
            if len(found) >= filters.limit:
                break
        return found

    async def session(self, session_id: str) -> SessionSummary | None:
        self._catch_up()
        row = self._query(f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE id = ?", (session_id,)).fetchone()
        if row is None and len(session_id) >= 6:
            rows = self._query(
                f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE id LIKE ? ESCAPE '\\' LIMIT 2",
                (session_id.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%",),
            ).fetchall()
            row = rows[0] if len(rows) == 1 else None
        return None if row is None else _summary(row)

    # ------------------------------------------------------------ retention

    async def last_seq_before(self, at: str) -> int:
        self._catch_up()
        last = 0
        rows = self._query("SELECT first_seq, data FROM blocks WHERE first_at < ? ORDER BY first_seq", (at,)).fetchall()
        for _first, data in rows:
            for record in decode_block(bytes(data)):
                if record.at < at:
                    last = max(last, record.seq)
        return last

    async def delete_through(self, seq: int, checkpoint: StoredCheckpoint) -> int:
        if self._journal_fd is not None:
            self.load_journal()
        conn = self.conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                count = 0
                rows = conn.execute("SELECT first_seq, last_seq, data FROM blocks WHERE first_seq <= ?", (seq,)).fetchall()
                for first, last, data in rows:
                    records = decode_block(bytes(data))
                    if last <= seq:
                        count += len(records)
                        conn.execute("DELETE FROM blocks WHERE first_seq = ?", (first,))
                        continue
                    # A block straddling the cut keeps its newer records.
                    keep = [r for r in records if r.seq > seq]
                    count += len(records) - len(keep)
                    conn.execute("DELETE FROM blocks WHERE first_seq = ?", (first,))
                    kept_rows = [(r.seq, r.at, r.session, r.type, r.hash, r.body) for r in keep]
                    conn.execute(
                        "INSERT INTO blocks VALUES (?, ?, ?, ?, ?)",
                        (keep[0].seq, last, keep[0].at, keep[-1].hash, encode_block(kept_rows)),
                    )
                conn.execute("DELETE FROM sessions WHERE last_seq IS NOT NULL AND last_seq <= ?", (seq,))
                conn.execute(
                    "INSERT INTO checkpoints(seq, at, body, signature) VALUES (?, ?, ?, ?)",
                    (checkpoint.seq, checkpoint.at, checkpoint.body, checkpoint.signature),
                )
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise AuditStoreError(f"cannot apply retention to {self.path}: {exc}") from exc
        return count


def open_store_sync_reader(path: Path) -> SqliteAuditStore:
    store = SqliteAuditStore(path)
    store.open_sync(create=False)
    return store



def summaries_from_rows(rows: list[tuple], store: "SqliteAuditStore") -> list[SessionSummary]:
    """Session rows rebuilt from connect/disconnect records (journal recovery after a crash)."""
    found: dict[str, SessionSummary] = {}
    for seq, at, session, record_type, _hash, body in rows:
        if session is None or record_type not in ("connect", "disconnect"):
            continue
        try:
            fields = json.loads(body)
        except ValueError:
            continue
        if record_type == "connect":
            identity = fields.get("identity") or {}
            found[session] = SessionSummary(
                id=session, started_at=at, gateway=fields.get("gateway", ""), first_seq=seq,
                user=fields.get("user", ""), subject=identity.get("subject"), roles=list(identity.get("roles") or []),
                target=fields.get("target", ""), client=fields.get("client", ""),
                application_name=fields.get("application_name", ""),
            )
        else:
            summary = found.get(session)
            if summary is None:
                row = store.conn.execute(f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE id = ?", (session,)).fetchone()
                if row is None:
                    continue
                summary = found[session] = _summary(row)
            summary.ended_at = at
            summary.last_seq = seq
            summary.statements = fields.get("statements", 0)
            summary.refused = fields.get("refused", 0)
            summary.errors = fields.get("errors", 0)
            summary.end_reason = fields.get("reason")
    return list(found.values())
