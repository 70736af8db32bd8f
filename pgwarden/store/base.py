"""The audit store interface: one shape for the SQLite and PostgreSQL backends.

The store is deliberately dumb: it keeps rows, in one transaction per group
commit, and answers range queries. Sequence numbers, the hash chain, signing
and verification live above it (``writer.py``, ``signing.py``, ``verify.py``),
so both backends are checked by the same code and an attacker who edits the
database directly is caught the same way on either.

Tables (both backends; types differ only in spelling):

``records``      seq (primary key), at, session, type, hash (32 bytes), body (bytes);
                 the SQLite backend packs each group commit into one ``blocks`` row
``checkpoints``  id, seq, at, body (canonical JSON, bytes), signature (64 bytes)
``sessions``     one summary row per session (an index for ``sessions list``;
                 derived from the records, not part of the chain)
``meta``         key/value: format version, store id, the signing public key

All methods are coroutines; the SQLite backend runs them synchronously inside
(it is fast and local), the PostgreSQL one awaits the network.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .records import PendingRecord

__all__ = [
    "AuditStore",
    "AuditStoreError",
    "StoredRecord",
    "StoredCheckpoint",
    "SessionSummary",
    "SessionFilter",
]


class AuditStoreError(Exception):
    """The store could not do what was asked (unwritable, unreachable, corrupt schema)."""


@dataclass(frozen=True, slots=True)
class StoredRecord:
    seq: int
    at: str  # ISO 8601 UTC, as in the body
    session: str | None
    type: str
    hash: bytes  # hash(seq), 32 bytes, as stored (verification recomputes it)
    body: bytes


@dataclass(frozen=True, slots=True)
class StoredCheckpoint:
    id: int
    seq: int
    at: str
    body: bytes  # canonical JSON (sorted keys, compact) that was signed
    signature: bytes  # Ed25519, 64 bytes


@dataclass(slots=True)
class SessionSummary:
    """One row of ``sessions``: written at connect, completed at disconnect."""

    id: str
    started_at: str
    gateway: str = ""
    ended_at: str | None = None
    first_seq: int | None = None
    last_seq: int | None = None
    user: str = ""
    subject: str | None = None
    roles: list[str] = field(default_factory=list)
    target: str = ""
    client: str = ""
    application_name: str = ""
    statements: int = 0
    refused: int = 0
    errors: int = 0
    masked: int = 0
    end_reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}  # type: ignore[attr-defined]


@dataclass(frozen=True, slots=True)
class SessionFilter:
    identity: str | None = None  # glob on subject or user
    role: str | None = None
    target: str | None = None
    since: str | None = None  # ISO 8601; sessions that started at or after
    until: str | None = None  # ISO 8601; sessions that started before
    only_refused: bool = False
    only_masked: bool = False
    limit: int = 100

    def matches(self, summary: "SessionSummary") -> bool:
        """The filters a store cannot express in SQL (globs on identity and roles)."""
        if self.identity and not (
            fnmatchcase(summary.subject or "", self.identity) or fnmatchcase(summary.user, self.identity)
        ):
            return False
        return not self.role or any(fnmatchcase(r, self.role) for r in summary.roles)


class AuditStore:
    """Abstract base; see the module docstring. Subclasses: SqliteAuditStore, PostgresAuditStore."""

    kind = "abstract"

    async def open(self, *, create: bool = True) -> None:
        """Connect and create the schema if missing. ``create=False`` (readers) raises if absent."""
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    # -- meta
    async def get_meta(self, key: str) -> str | None:
        raise NotImplementedError

    async def set_meta(self, key: str, value: str) -> None:
        raise NotImplementedError

    # -- writing (the writer is the only caller; one transaction per call)
    async def head(self) -> tuple[int, bytes]:
        """(last seq, its hash), or (0, GENESIS) when empty; after retention, the anchor."""
        raise NotImplementedError

    async def append(
        self,
        pending: "Sequence[PendingRecord]",
        sessions_started: Sequence[SessionSummary] = (),
        sessions_ended: Sequence[SessionSummary] = (),
    ) -> tuple[int, bytes]:
        """Write a group commit in one transaction and return the new head (seq, hash).

        Inside the transaction, under the store's write lock, the store reads its
        head and calls ``records.build_rows(seq, hash, pending)``, which numbers
        and chains the records (setting each ``PendingRecord.seq``), then
        ``records.fill_session_seqs`` for the summaries: ``sessions_started`` rows
        are inserted (ignored if present), ``sessions_ended`` rows replace the row
        of the same id. Reading the head under the lock is what lets several
        gateways share one store without forking the chain.

        Raises AuditStoreError on any failure; nothing of the call is then kept
        and no ``seq`` is to be trusted.
        """
        raise NotImplementedError

    async def add_checkpoint(self, checkpoint: StoredCheckpoint) -> None:
        raise NotImplementedError

    # -- reading
    def records(
        self, start: int = 1, end: int | None = None, *, session: str | None = None, batch: int = 1000
    ) -> AsyncIterator[StoredRecord]:
        """Records with start <= seq <= end in seq order (optionally of one session)."""
        raise NotImplementedError

    async def checkpoints(self, start: int = 0, end: int | None = None) -> list[StoredCheckpoint]:
        """Checkpoints with start <= seq <= end, in (seq, id) order."""
        raise NotImplementedError

    async def bounds(self) -> tuple[int, int, int]:
        """(first seq, last seq, count) of the records present; (0, 0, 0) when empty."""
        raise NotImplementedError

    async def sessions(self, filters: SessionFilter = SessionFilter()) -> list[SessionSummary]:
        """Newest first."""
        raise NotImplementedError

    async def session(self, session_id: str) -> SessionSummary | None:
        """A session by its full id or a unique prefix of at least 6 characters."""
        raise NotImplementedError

    # -- retention
    async def last_seq_before(self, at: str) -> int:
        """The highest seq whose record is older than ``at`` (ISO 8601), or 0."""
        raise NotImplementedError

    async def delete_through(self, seq: int, checkpoint: StoredCheckpoint) -> int:
        """Delete records with seq <= ``seq`` (and sessions that ended by then) and add
        ``checkpoint`` (the signed note of what was removed) in one transaction; returns the count."""
        raise NotImplementedError
