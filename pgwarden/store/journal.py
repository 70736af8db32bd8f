"""The SQLite store's write-ahead journal (see sqlite.py's docstring for why it exists).

:class:`JournalMixin` is a mixin of :class:`~pgwarden.store.sqlite.SqliteAuditStore`,
which owns the state it uses (``path``, ``sync``, ``conn``, ``_head``, the
journal fields) and provides ``_insert``, ``_insert_block``, ``_head_locked`` and
``_recovered_sessions``.
"""

from __future__ import annotations

import asyncio
import fcntl
import mmap
import os
import sqlite3
from collections.abc import Sequence
from pathlib import Path

from .base import AuditStoreError, SessionSummary
from .blocks import chain_block, decode_block
from .records import PendingRecord, chain_hash, fill_session_seqs

__all__ = ["JournalMixin", "JOURNAL_SIZE"]

#: Bytes of write-ahead journal mapped in memory (preallocated on disk).
JOURNAL_SIZE = 32 * 1024 * 1024
_ENTRY_HEADER = 44  # blocks.py: seq (8) + hash (32) + length (4)
_END_MARK = bytes(_ENTRY_HEADER)  # seq 0: nothing follows


class _JournalFull(Exception):
    pass


class JournalMixin:

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
            self._insert(rows, (), self._recovered_sessions(rows))
        self.journal_path.unlink(missing_ok=True)

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

