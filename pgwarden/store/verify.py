"""Verification of the audit trail: is it the chain pgwarden wrote, and if not, where not?

Why a streaming state machine (:class:`ChainVerifier`) with two small drivers
(:func:`verify_records` for any iterable, e.g. an export, and
:func:`verify_store` for a live store): a trail holds millions of records, so
memory must not grow with it, and the same code must judge a live store and a
third party's export, or the two could disagree.

What is checked (docs/audit.md, "Verifying the trail"):

* every body's embedded ``"seq"`` equals its row's seq; a block of rows whose
  bodies are shifted is one problem (``inserted`` or ``deleted`` when later rows
  were renumbered, ``reordered`` when records swapped places);
* rows are gap-free (``deleted``), except the prefix a signed *retention*
  checkpoint says was removed;
* ``hash(n) == SHA-256(hash(n-1) || body(n))``; a failing link is ``changed``
  and verification resyncs, so one edit is reported once. Two chains are kept:
  the stored hashes, and a "signed" chain recomputed from bodies only, anchored
  at the last good checkpoint. The second is what makes a rewrite that also
  recomputed every later stored hash visible at the next checkpoint
  (``checkpoint_mismatch`` for the range since the previous good one);
* every checkpoint's Ed25519 signature and ``key_id`` (``bad_signature``,
  ``wrong_key``); a signed checkpoint past the last record means the tail was
  cut (``truncated``). Records after the last checkpoint are an *unsigned tail*:
  a warning, since nothing signs them yet.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections import deque
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .base import AuditStore, StoredCheckpoint, StoredRecord
from .records import GENESIS
from .signing import key_id, public_key_from_pem, public_path, verify_signature
from .sinks import record_header

__all__ = [
    "KINDS",
    "Problem",
    "VerifyReport",
    "VerifyError",
    "ChainVerifier",
    "verify_records",
    "verify_store",
    "store_public_key",
    "iter_checkpoints",
    "first_record",
]

#: Problem kinds, in the order a report lists them.
KINDS = ("changed", "deleted", "inserted", "reordered", "truncated", "bad_signature", "wrong_key", "checkpoint_mismatch")

_PREFIX = b'{"v":1,"seq":'
_WINDOW = 1024  # how far back (in records) a shifted or swapped record is still matched
_MAX_PROBLEMS = 1000  # kept in the report; beyond that only counted
_MAX_RUNS = 500  # misplaced blocks classified precisely; beyond that all are "reordered"


class VerifyError(Exception):
    """Verification could not start (no public key, unreadable store)."""


@dataclass(frozen=True, slots=True)
class Problem:
    kind: str
    seq: int
    end: int  # == seq for a single record
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "seq": self.seq, "end": self.end, "detail": self.detail}

    @property
    def seqs(self) -> str:
        return str(self.seq) if self.end == self.seq else f"{self.seq}..{self.end}"


@dataclass
class VerifyReport:
    records: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    checkpoints: int = 0  # seen in the range
    checkpoints_checked: int = 0  # with a good signature by the expected key
    last_checkpoint_seq: int | None = None  # highest good checkpoint in the range
    unsigned_tail: tuple[int, int] | None = None
    retention: list[dict[str, Any]] = field(default_factory=list)
    key_id: str | None = None
    key_source: str | None = None
    anchor: dict[str, Any] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)  # problems by kind (all, even those not kept)
    omitted: int = 0
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.counts

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"ok": self.ok}
        for name in ("records", "first_seq", "last_seq", "checkpoints", "checkpoints_checked",
                     "last_checkpoint_seq", "retention", "key_id", "key_source", "anchor", "counts"):
            out[name] = getattr(self, name)
        out["unsigned_tail"] = list(self.unsigned_tail) if self.unsigned_tail else None
        out["problems"] = [p.as_dict() for p in self.problems]
        out["problems_omitted"] = self.omitted
        out["warnings"] = self.warnings
        return out

    def add(self, kind: str, seq: int, end: int | None, detail: str) -> None:
        end = seq if end is None else end
        self.counts[kind] = self.counts.get(kind, 0) + 1
        last = self.problems[-1] if self.problems else None
        if last is not None and kind == "changed" == last.kind and seq == last.end + 1:
            self.problems[-1] = Problem(kind, last.seq, end, "consecutive records do not chain")
        elif len(self.problems) < _MAX_PROBLEMS:
            self.problems.append(Problem(kind, seq, end, detail))
        else:
            self.omitted += 1


def body_seq(body: bytes) -> int | None:
    """The ``"seq"`` a body claims (cheap for pgwarden's own prefix, JSON otherwise)."""
    if body.startswith(_PREFIX):
        comma = body.find(b",", len(_PREFIX))
        digits = body[len(_PREFIX) : comma]
        if comma > 0 and digits.isdigit():
            return int(digits)
    try:
        value = json.loads(body).get("seq")
    except (ValueError, AttributeError, UnicodeDecodeError):
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class ChainVerifier:
    """Push records and checkpoints in seq order; :meth:`finish` returns the report.

    Order contract: every checkpoint with ``seq < r`` is added before the record
    with row seq ``r`` (so a checkpoint arrives just after the record it signs).
    ``expect_from`` is the first seq of the range; ``anchor`` is hash(expect_from - 1)
    when known (GENESIS for a whole trail, the stored hash of the record before a
    partial range); ``None`` leaves the first link unchecked.
    """

    def __init__(
        self,
        public_key: Ed25519PublicKey,
        *,
        expect_from: int = 1,
        anchor: bytes | None = GENESIS,
        key_source: str = "given",
        anchor_source: str | None = None,
    ) -> None:
        self.key = public_key
        self.kid = key_id(public_key)
        self.report = VerifyReport(key_id=self.kid, key_source=key_source)
        self._from = expect_from
        self._last_row = expect_from - 1
        self._max_body = 0
        self._recent: dict[int, tuple[bytes, bytes]] = {}  # body seq -> (stored hash, signed-chain hash)
        self._order: deque[int] = deque()
        self._pending: deque[tuple[int, bytes]] = deque()  # good checkpoints whose record is not seen yet
        self._retained = 0  # records 1..this were removed by a signed retention checkpoint
        self._last_good = expect_from - 1  # seq up to which the chain matched a signature (or the anchor)
        self._max_cp = 0  # highest good non-retention checkpoint
        self._run: list[int] | None = None  # the block of misplaced rows being read
        self._runs: list[tuple[int, int, int, bool]] = []
        self._prev_offset = 0
        self._appended_after = 0
        if anchor is not None:
            self._remember(expect_from - 1, anchor, anchor)
        src = anchor_source or ("genesis" if expect_from == 1 else "record")
        self.report.anchor = {"seq": expect_from - 1, "hash": anchor.hex() if anchor else None, "source": src}

    # ------------------------------------------------------------------ input

    def add_checkpoint(self, cp: StoredCheckpoint) -> None:
        rep = self.report
        try:
            data = json.loads(cp.body)
            seq = int(data["seq"])
            signed = bytes.fromhex(data["hash"])
            reason = data.get("reason")
            kid = data.get("key_id")
        except (ValueError, KeyError, TypeError, AttributeError):
            if cp.seq >= self._from - 1:
                rep.checkpoints += 1
                rep.add("bad_signature", cp.seq, None, "checkpoint body is not a readable checkpoint")
            return
        in_range = seq >= self._from - 1 or cp.seq >= self._from - 1
        if in_range:
            rep.checkpoints += 1
        if kid != self.kid:
            if in_range:
                rep.add("wrong_key", seq, None, f"checkpoint signed by key {kid}, expected {self.kid}")
            return
        if not verify_signature(self.key, cp.body, cp.signature):
            if in_range:
                rep.add("bad_signature", seq, None, "checkpoint signature does not verify")
            return
        if reason == "retention":
            removed = data.get("removed") if isinstance(data.get("removed"), dict) else {}
            through = removed.get("through_seq", seq)
            self._retained = max(self._retained, through if isinstance(through, int) else seq)
            rep.retention.append({"seq": seq, "at": data.get("at"), **removed})
        if not in_range:
            return
        rep.checkpoints_checked += 1
        if seq != cp.seq:
            rep.add("checkpoint_mismatch", seq, None, f"stored under seq {cp.seq} but signs seq {seq}")
        if reason != "retention":
            self._max_cp = max(self._max_cp, seq)
        entry = self._recent.get(seq)
        if entry is not None:
            self._compare(seq, signed, entry)
        else:
            # The record is absent (removed, or further on when rows were shifted):
            # the signed hash still anchors the record after it.
            self._remember(seq, signed, signed)
            self._pending.append((seq, signed))

    def add_record(self, seq: int, stored: bytes, body: bytes) -> None:
        rep = self.report
        if seq <= self._last_row:
            rep.add("reordered", seq, None, f"row {seq} is out of order (after row {self._last_row})")
            return
        if seq > self._last_row + 1:
            lo = max(self._last_row + 1, self._retained + 1)
            if lo <= seq - 1:
                rep.add("deleted", lo, seq - 1, "rows missing from the sequence")
        self._last_row = seq
        rep.records += 1
        if rep.first_seq is None:
            rep.first_seq = seq
        rep.last_seq = seq
        b = body_seq(body)
        if b is None:
            rep.add("changed", seq, None, "body has no readable seq")
            b = seq
        self._max_body = max(self._max_body, b)
        self._track_run(seq, b)
        pred = self._recent.get(b - 1)
        if pred is None:
            chain = stored  # nothing to chain from (after a gap or a moved record): resync
        else:
            ps, pc = pred
            h = hashlib.sha256(ps)
            h.update(body)
            h1 = h.digest()
            if pc == ps:
                chain = h1
            else:
                h = hashlib.sha256(pc)
                h.update(body)
                chain = h.digest()
            if stored != h1 and stored != chain and seq == b:
                rep.add("changed", seq, None, f"hash({seq}) != SHA-256(hash({seq - 1}) || body({seq}))")
        self._remember(b, stored, chain)
        if self._pending:
            self._resolve(seq, b)

    def note_appended(self, through: int) -> None:
        """Records up to ``through`` exist but were appended after verification began."""
        self._appended_after = max(self._appended_after, through)

    # ------------------------------------------------------------------ internals

    def _remember(self, b: int, stored: bytes, chain: bytes) -> None:
        if b not in self._recent:
            self._order.append(b)
            if len(self._order) > _WINDOW:
                self._recent.pop(self._order.popleft(), None)
        self._recent[b] = (stored, chain)

    def _compare(self, seq: int, signed: bytes, entry: tuple[bytes, bytes]) -> None:
        stored, chain = entry
        if signed != chain and signed != stored:
            self.report.add(
                "checkpoint_mismatch",
                min(self._last_good + 1, seq),
                seq,
                f"the signed hash({seq}) differs from the chain: records in this range were rewritten",
            )
        self._last_good = seq
        rep = self.report
        rep.last_checkpoint_seq = max(rep.last_checkpoint_seq or 0, seq)
        self._recent[seq] = (stored, signed)  # later records are judged against what was signed

    def _resolve(self, row: int, b: int) -> None:
        pending = self._pending
        while pending and pending[0][0] < row - _WINDOW:
            pending.popleft()  # its record never came: the gap or shift was reported already
        for item in list(pending):
            if item[0] == b:
                pending.remove(item)
                self._compare(b, item[1], self._recent[b])

    def _track_run(self, row: int, b: int) -> None:
        offset = row - b
        run = self._run
        if run is not None and run[2] == offset and run[1] == row - 1:
            run[1] = row
        else:
            if run is not None:
                self._close_run(offset == 0)
            # [first row, last row, offset, whether the row before the block was in place]
            self._run = [row, row, offset, self._prev_offset == 0] if offset else None
        self._prev_offset = offset

    def _close_run(self, next_in_place: bool) -> None:
        run, self._run = self._run, None
        if run is None:
            return
        bounded = bool(run[3]) and next_in_place
        if len(self._runs) < _MAX_RUNS:
            self._runs.append((run[0], run[1], run[2], bounded))
        else:
            self.report.add("reordered", run[0], run[1], "rows hold records of other positions")

    def _classify_runs(self) -> None:
        """A block of rows whose bodies are shifted by d: records swapped places when the
        bodies belong to rows another block occupies; a lone row between rows in place
        had its body's seq edited; else rows were inserted (d > 0) or removed (d < 0)
        before the block and the later rows renumbered."""
        runs = self._runs
        for r1, r2, d, bounded in runs:
            b1, b2 = r1 - d, r2 - d
            detail = f"rows {r1}..{r2} hold records {b1}..{b2}"
            swapped = any(o1 <= b2 and b1 <= o2 for o1, o2, od, _ in runs if (o1, o2, od) != (r1, r2, d))
            if swapped or len(runs) >= _MAX_RUNS or (bounded and r1 != r2):
                self.report.add("reordered", r1, r2, detail)
            elif bounded:
                self.report.add("changed", r1, r2, f"row {r1}'s body claims seq {b1}")
            elif d > 0:
                self.report.add("inserted", max(r1 - d, self._from), r1 - 1, f"{d} row(s) inserted; {detail}")
            else:
                self.report.add("deleted", r1, r1 - d - 1, f"records removed and later rows renumbered; {detail}")

    # ------------------------------------------------------------------ result

    def finish(self) -> VerifyReport:
        rep = self.report
        self._close_run(False)
        self._classify_runs()
        present = max(self._last_row, self._max_body, self._appended_after, self._retained)
        beyond = [seq for seq, _ in self._pending if seq > present]
        top = max([seq for seq in beyond if seq <= self._max_cp], default=0)
        if top:
            rep.add("truncated", present + 1, top, f"a signed checkpoint covers seq {top}; the records are gone")
        if rep.records:
            signed_to = rep.last_checkpoint_seq or 0
            if rep.last_seq is not None and rep.last_seq > signed_to:
                rep.unsigned_tail = (max(signed_to + 1, rep.first_seq or 1), rep.last_seq)
                rep.warnings.append(
                    f"records {rep.unsigned_tail[0]}..{rep.unsigned_tail[1]} are after the last checkpoint "
                    "(consistent, but not signed yet)"
                )
        if self._appended_after > self._last_row:
            rep.warnings.append(
                f"records {self._last_row + 1}..{self._appended_after} were appended during verification (not checked)"
            )
        rep.problems.sort(key=lambda p: (p.seq, KINDS.index(p.kind) if p.kind in KINDS else 99))
        return rep


# ---------------------------------------------------------------------- drivers


def verify_records(
    records: Iterable[StoredRecord | tuple[int, bytes, bytes]],
    checkpoints: Iterable[StoredCheckpoint],
    public_key: Ed25519PublicKey,
    *,
    expect_from: int = 1,
    anchor: bytes | None = GENESIS,
    key_source: str = "given",
    anchor_source: str | None = None,
) -> VerifyReport:
    """Verify records (seq order; ``StoredRecord`` or ``(seq, hash, body)``) and their
    checkpoints (seq order). Pure: reads only what it is given, holds O(1) state."""
    v = ChainVerifier(public_key, expect_from=expect_from, anchor=anchor, key_source=key_source,
                      anchor_source=anchor_source)
    cps = iter(checkpoints)
    nxt = next(cps, None)
    for rec in records:
        seq, stored, body = (rec.seq, rec.hash, rec.body) if isinstance(rec, StoredRecord) else rec
        while nxt is not None and nxt.seq < seq:
            v.add_checkpoint(nxt)
            nxt = next(cps, None)
        v.add_record(seq, stored, body)
    while nxt is not None:
        v.add_checkpoint(nxt)
        nxt = next(cps, None)
    return v.finish()


async def iter_checkpoints(
    store: AuditStore, start: int, end: int | None, *, window: int = 100_000
) -> AsyncIterator[StoredCheckpoint]:
    """Checkpoints with start <= seq <= end, fetched a seq window at a time (bounded memory)."""
    lo = max(start, 0)
    if end is None:
        for cp in await store.checkpoints(lo, None):
            yield cp
        return
    while lo <= end:
        hi = min(lo + window - 1, end)
        for cp in await store.checkpoints(lo, hi):
            yield cp
        lo = hi + 1


async def first_record(store: AuditStore, start: int = 1, end: int | None = None) -> StoredRecord | None:
    """The first record with start <= seq <= end (``bounds()`` may scan the whole trail)."""
    found = None
    gen = store.records(start, end)
    try:
        async for rec in gen:
            found = rec
            break
    finally:
        await gen.aclose()  # type: ignore[attr-defined]
    return found


class _CheckpointFeed:
    """Feeds checkpoints to a verifier just before the record they precede, fetching
    them a seq window at a time, so neither side is ever held in memory whole."""

    def __init__(self, store: AuditStore, verifier: ChainVerifier, window: int = 100_000) -> None:
        self.store, self.verifier, self.window = store, verifier, window
        self.lo = 0  # next seq not fetched yet
        self.fed_below = 0  # every checkpoint with a lower seq was fed
        self.buffer: deque[StoredCheckpoint] = deque()

    async def before(self, limit: int) -> None:
        """Every checkpoint with seq < limit."""
        buf = self.buffer
        while True:
            while buf and buf[0].seq < limit:
                self.verifier.add_checkpoint(buf.popleft())
            if buf or self.lo >= limit:
                break
            hi = self.lo + self.window - 1
            buf.extend(await self.store.checkpoints(self.lo, hi))
            self.lo = hi + 1
        self.fed_below = max(self.fed_below, limit)

    async def rest(self, end: int | None) -> list[StoredCheckpoint]:
        """The checkpoints not fed yet, up to end (all when None), read afresh: a live
        writer may have added some since their window was fetched."""
        self.buffer.clear()
        return await self.store.checkpoints(self.fed_below, end)


async def store_public_key(store: AuditStore, key_file: Path | None = None) -> tuple[Ed25519PublicKey, str]:
    """The key to verify with when none is given: the store's ``meta.public_key_pem``,
    else ``<key_file>.pub``. Raises VerifyError when neither exists."""
    pem = await store.get_meta("public_key_pem")
    if pem:
        try:
            return public_key_from_pem(pem), "store meta"
        except ValueError as exc:
            raise VerifyError(f"the store's public_key_pem is not an Ed25519 public key: {exc}") from exc
    if key_file is not None:
        pub = public_path(Path(key_file))
        if pub.is_file():
            try:
                return public_key_from_pem(pub.read_bytes()), str(pub)
            except ValueError as exc:
                raise VerifyError(f"{pub} is not an Ed25519 public key: {exc}") from exc
    raise VerifyError("no public key: the store has none in meta and no .pub file was found (give one explicitly)")


def _check_row_columns(report: VerifyReport, rec: StoredRecord) -> None:
    """A row's ``at``, ``type`` and ``session`` columns (the indexes that period queries, session
    listings and replays use) are outside the hash chain: only the body is hashed. Someone who
    can write the store could move a record out of a time range or retype it without touching
    the chain, so each column must say what the hashed body says."""
    at, rtype, session = record_header(rec.body)
    for name, stored, hashed in (("at", rec.at, at), ("type", rec.type, rtype), ("session", rec.session, session)):
        if stored != hashed:
            report.add("changed", rec.seq, None,
                       f"the stored {name} column ({str(stored)[:40]!r}) differs from the hashed body's "
                       f"({str(hashed)[:40]!r})")


async def verify_store(
    store: AuditStore,
    public_key: Ed25519PublicKey | None = None,
    *,
    start: int | None = None,
    end: int | None = None,
    key_file: Path | None = None,
    key_source: str | None = None,
) -> VerifyReport:
    """Verify an open store (all of it, or seqs ``start..end``), in one pass.

    Safe while a gateway appends: checkpoints past the last record read count as
    evidence of a cut tail only when the store's head is still below them
    afterwards (a checkpoint is committed with or after its records, so a live
    writer never looks like a truncation).
    """
    if public_key is None:
        public_key, key_source = await store_public_key(store, key_file)
    s = max(start or 1, 1)
    anchor: bytes | None = GENESIS
    anchor_source = "genesis"
    if s > 1:
        rec = await first_record(store, s - 1, s - 1)
        anchor, anchor_source = (rec.hash, "record") if rec is not None else (None, "none")
    v = ChainVerifier(public_key, expect_from=s, anchor=anchor, key_source=key_source or "given",
                      anchor_source=anchor_source)
    feed = _CheckpointFeed(store, v)
    last = s - 1
    n = 0
    async for rec in store.records(s, end):
        await feed.before(rec.seq)
        v.add_record(rec.seq, rec.hash, rec.body)
        _check_row_columns(v.report, rec)
        last = rec.seq
        n += 1
        if n % 5000 == 0:
            await asyncio.sleep(0)  # a gateway running retention keeps serving
    rest = await feed.rest(end)
    for cp in rest:
        if cp.seq <= last or end is not None:
            v.add_checkpoint(cp)
    beyond = [cp for cp in rest if cp.seq > last] if end is None else []
    if beyond:
        head = (await store.head())[0]
        v.note_appended(head)
        for cp in beyond:
            # Up to the head: records appended since we began (their checkpoints are only
            # signature-checked); past it: the records they sign are gone.
            v.add_checkpoint(cp)
    return v.finish()
