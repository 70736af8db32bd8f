"""The embedded audit store: one SQLite file in WAL mode.

Why these settings: WAL lets ``pgwarden sessions`` and ``pgwarden audit
verify`` read while the gateway writes. ``synchronous=NORMAL`` makes a commit
a ``write()`` into the WAL file, which the OS keeps when the gateway is killed
(kill -9 loses nothing committed); ``sync: full`` adds an fsync per group commit
for power loss. The WAL is checkpointed from a background thread so the
occasional fsync of a checkpoint never blocks the event loop (automatic
checkpoints are off on the writer's connection).

Records are packed one group commit per row (``blocks.py``): about 12 µs per
commit whatever its size, where a row per record cost 2.5 µs more per record.

The writer's connection is used only from the event loop thread (``append``
runs synchronously: a group commit of a few dozen records takes tens of
microseconds, less than handing it to a thread would). Readers open their own
connection.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import mmap
import os
import sqlite3
import threading
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from .base import AuditStore, AuditStoreError, SessionFilter, SessionSummary, StoredCheckpoint, StoredRecord
from .blocks import chain_block, decode_block, encode_block
from .records import GENESIS, PendingRecord, build_rows, chain_hash, fill_session_seqs

__all__ = ["SqliteAuditStore"]

#: Bytes of write-ahead journal mapped in memory (preallocated on disk).
JOURNAL_SIZE = 32 * 1024 * 1024
_ENTRY_HEADER = 44  # blocks.py: seq (8) + hash (32) + length (4)
_END_MARK = bytes(_ENTRY_HEADER)  # seq 0: nothing follows


class _JournalFull(Exception):
    pass


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


class SqliteAuditStore(AuditStore):
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

    # ------------------------------------------------------------ journal

    def _take_writer_lock(self) -> None:
        """One gateway writes an SQLite trail (several gateways share the postgres store)."""
        lock_path = Path(str(self.path) + ".lock")
        fd = os.open(lock_path, os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise AuditStoreError(
                f"another gateway is writing the audit trail {self.path}; gateways that share a trail "
                "need the postgres audit store"
            ) from None
        self._lock_fd = fd

    def _open_journal(self) -> None:
        """Map the journal: a preallocated file, so appending is a memory copy, not a system call.

        A write into a shared mapping is in the page cache the moment the copy
        ends, so it survives a kill -9 of the gateway exactly like ``write()``
        would, at a tenth of the cost. The file is preallocated (fallocate) so a
        full disk can never turn a copy into SIGBUS; when the journal fills up
        before the next load, the load runs at once.
        """
        fd = os.open(self.journal_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size < JOURNAL_SIZE:
                os.posix_fallocate(fd, 0, JOURNAL_SIZE)
            self._journal_map = mmap.mmap(fd, JOURNAL_SIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError as exc:
            os.close(fd)
            raise AuditStoreError(f"cannot create the audit journal {self.journal_path}: {exc.strerror or exc}") from exc
        self._journal_map[:_ENTRY_HEADER] = bytes(_ENTRY_HEADER)  # an empty journal
        self._journal_fd = fd
        self._journal_size = 0

    def _close_journal(self) -> None:
        if self._journal_map is not None:
            self._journal_map.close()
            self._journal_map = None
        if self._journal_fd is not None:
            os.close(self._journal_fd)
            self._journal_fd = None

    def _journal_write(self, data: bytes) -> None:
        """Append ``data`` (whole entries) to the journal, then mark its new end."""
        mm = self._journal_map
        start = self._journal_size
        end = start + len(data)
        if end + _ENTRY_HEADER > JOURNAL_SIZE:
            raise _JournalFull
        mm[start:end] = data
        mm[end : end + _ENTRY_HEADER] = _END_MARK
        if self.sync == "full":
            page = start - start % mmap.PAGESIZE
            mm.flush(page, end + _ENTRY_HEADER - page)
        self._journal_size = end

    def _read_journal(self) -> list[tuple]:
        """The journal's valid entries: they run until the end mark, a gap in seq, or a bad hash."""
        try:
            data = self.journal_path.read_bytes()
        except FileNotFoundError:
            return []
        out: list[tuple] = []
        for r in decode_block(data):
            if r.seq == 0 or (out and (r.seq != out[-1][0] + 1 or r.hash != chain_hash(out[-1][4], r.body))):
                break
            out.append((r.seq, r.at, r.session, r.type, r.hash, r.body))
        return out

    def _recover_journal(self) -> None:
        """After a crash: load what the journal has beyond SQLite (and rebuild session rows)."""
        rows = self._read_journal()
        seq, _ = self._head_locked()
        rows = [r for r in rows if r[0] > seq]
        if rows:
            self._insert(rows, (), summaries_from_rows(rows, self))
        self.journal_path.unlink(missing_ok=True)

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

    def _catch_up(self) -> None:
        """Readers on the writer's own store object see everything it appended."""
        if self._journal_fd is not None and (self._unloaded or self._unloaded_sessions):
            self.load_journal()

    def load_journal(self) -> None:
        """Move the journal's records into SQLite (one block) and empty it.

        Called by the writer every few milliseconds, and before anything that
        reads or rewrites SQLite (checkpoints, retention, close)."""
        with self._jlock:
            blocks, sessions = self._unloaded, self._unloaded_sessions
            if not blocks and not sessions:
                return
            block = None
            if blocks:
                block = (blocks[0][0], blocks[-1][1], blocks[0][2], blocks[-1][3], b"".join(b[4] for b in blocks))
            try:
                self._insert_block(
                    block, [s for kind, s in sessions if kind == "start"], [s for kind, s in sessions if kind == "end"]
                )
            except sqlite3.Error as exc:
                raise AuditStoreError(f"cannot write the audit trail {self.path}: {exc}") from exc
            self._unloaded, self._unloaded_sessions = [], []
            if self._journal_map is not None:
                self._journal_map[:_ENTRY_HEADER] = _END_MARK
            self._journal_size = 0

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

    async def append(self, pending, sessions_started=(), sessions_ended=()) -> tuple[int, bytes]:
        if self.sync == "full":  # an fdatasync per group commit: off the event loop
            return await asyncio.to_thread(self.append_sync, pending, sessions_started, sessions_ended)
        return self.append_sync(pending, sessions_started, sessions_ended)

    def append_sync(
        self,
        pending: Sequence[PendingRecord],
        sessions_started: Sequence[SessionSummary] = (),
        sessions_ended: Sequence[SessionSummary] = (),
    ) -> tuple[int, bytes]:
        """One group commit: chain the records and append them to the journal with one
        ``write()`` (durable against a crash of the gateway; with ``sync: full`` also
        ``fdatasync``). They reach SQLite with the next :meth:`load_journal`."""
        fd = self._journal_fd
        if fd is None:
            raise AuditStoreError("the audit store is not open for writing")
        with self._jlock:
            head = self._head
            if head is None:
                head = self._head = self._current_head()
            if pending:
                data, seq, previous = chain_block(head[0], head[1], pending)
                entry = (head[0] + 1, seq, pending[0].at, previous, data)
                try:
                    self._journal_write(data)
                except _JournalFull:
                    # Make room: load what the journal holds into SQLite; a commit larger
                    # than the whole journal goes straight to SQLite.
                    self.load_journal()
                    try:
                        self._journal_write(data)
                    except _JournalFull:
                        self._unloaded.append(entry)
                        try:
                            self.load_journal()
                        except BaseException:
                            # Stored nowhere (not in the journal, not in SQLite): forget it, or
                            # the writer's retry of this batch would be loaded next to it with
                            # the same seqs.
                            self._unloaded.pop()
                            raise
                        entry = None
                except (OSError, ValueError) as exc:
                    raise AuditStoreError(f"cannot write the audit trail {self.journal_path}: {exc}") from exc
                if entry is not None:
                    self._unloaded.append(entry)
                self._head = (seq, previous)
                if sessions_started or sessions_ended:
                    fill_session_seqs(pending, sessions_started, sessions_ended)
            if sessions_started or sessions_ended:
                self._unloaded_sessions.extend(("start", s) for s in sessions_started)
                self._unloaded_sessions.extend(("end", s) for s in sessions_ended)
            return self._head

    def _current_head(self) -> tuple[int, bytes]:
        if self._unloaded:
            last = self._unloaded[-1]
            return last[1], last[3]
        return self._head_locked()

    def _append_locked(self, pending, sessions_started, sessions_ended, checkpoint) -> tuple[int, bytes]:
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            seq, previous = self._head_locked()
            if pending:
                rows, seq, previous = build_rows(seq, previous, pending)
                conn.execute(
                    "INSERT INTO blocks VALUES (?, ?, ?, ?, ?)",
                    (rows[0][0], seq, rows[0][1], previous, encode_block(rows)),
                )
                fill_session_seqs(pending, sessions_started, sessions_ended)
            if sessions_started:
                conn.executemany(
                    f"INSERT OR IGNORE INTO sessions ({_SESSION_COLUMNS}) VALUES ({','.join('?' * 17)})",
                    [_session_row(s) for s in sessions_started],
                )
            if sessions_ended:
                conn.executemany(
                    f"INSERT OR REPLACE INTO sessions ({_SESSION_COLUMNS}) VALUES ({','.join('?' * 17)})",
                    [_session_row(s) for s in sessions_ended],
                )
            if checkpoint is not None:
                conn.execute(
                    "INSERT INTO checkpoints(seq, at, body, signature) VALUES (?, ?, ?, ?)",
                    (checkpoint.seq, checkpoint.at, checkpoint.body, checkpoint.signature),
                )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        self._head = (seq, previous)
        return seq, previous

    async def add_checkpoint(self, checkpoint: StoredCheckpoint) -> None:
        try:
            self.load_journal()
            self._append_locked((), (), (), checkpoint)
        except sqlite3.Error as exc:
            raise AuditStoreError(f"cannot write the audit trail {self.path}: {exc}") from exc

    # ------------------------------------------------------------ reading

    async def records(self, start: int = 1, end: int | None = None, *, session: str | None = None, batch: int = 1000) -> AsyncIterator[StoredRecord]:  # type: ignore[override]
        stop = end if end is not None else 2**62
        # The block holding ``start`` may begin before it.
        row = self._query("SELECT max(first_seq) FROM blocks WHERE first_seq <= ?", (start,)).fetchone()
        cursor = row[0] if row and row[0] is not None else start
        while True:
            rows = self._query(
                "SELECT first_seq, data FROM blocks WHERE first_seq >= ? AND first_seq <= ? ORDER BY first_seq LIMIT ?",
                (cursor, stop, max(1, batch // 16)),
            ).fetchall()
            if not rows:
                break
            for _first, data in rows:
                for record in decode_block(bytes(data)):
                    if record.seq < start or record.seq > stop:
                        continue
                    if session is not None and record.session != session:
                        continue
                    yield record
            cursor = rows[-1][0] + 1
        # Records not in SQLite yet: this writer's, or a (crashed) gateway's journal.
        if self._journal_fd is not None:
            extra = [(r.seq, r.at, r.session, r.type, r.hash, r.body) for b in list(self._unloaded) for r in decode_block(b[4])]
        else:
            extra = self._read_journal()
        last_loaded = (self._head_locked())[0]
        for row in extra:
            if row[0] <= last_loaded or row[0] < start or row[0] > stop:
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
