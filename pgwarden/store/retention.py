"""Retention (AU-11): remove the oldest records, leaving a signed note of what went.

Why only a prefix, and why a checkpoint: the chain must stay verifiable after
records are removed. Removing records 1..n and signing hash(n) in a *retention*
checkpoint (``removed: {"through_seq", "records", "before", "why"}``) gives the
remaining chain a signed starting point, and tells a verifier that 1..n are
gone on purpose rather than deleted by someone else.

Why never past the latest signed checkpoint, and why verify first: the
retention checkpoint signs the *stored* hash of record n. If that hash were
past the last checkpoint, or the records being removed had been tampered with,
retention would sign the tampering and then destroy the evidence. So ``through``
is capped at the latest good checkpoint, and (by default) the records from the
start through the first checkpoint at or after ``through`` are verified before
anything is deleted.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from .base import AuditStore, StoredCheckpoint
from .records import iso_time
from .signing import Signer, checkpoint_body, verify_signature
from .verify import VerifyReport, first_record, verify_store

log = logging.getLogger("pgwarden.audit")

__all__ = ["RetentionError", "RetentionResult", "plan_retention", "apply_retention", "retention_loop"]

_WINDOW = 100_000


class RetentionError(Exception):
    """Retention refused to run (the records to remove do not verify, store failure)."""

    def __init__(self, message: str, report: VerifyReport | None = None) -> None:
        super().__init__(message)
        self.report = report


@dataclass
class RetentionResult:
    cutoff: str  # records with ``at`` before this are due
    applied: bool = False
    through_seq: int = 0  # 0: nothing to remove
    records: int = 0
    due_seq: int = 0  # the last record older than the cutoff
    checkpoint_seq: int | None = None  # the latest good checkpoint (the cap)
    first_seq: int = 0
    note: str = ""
    checkpoint_body: bytes | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "cutoff": self.cutoff,
            "applied": self.applied,
            "through_seq": self.through_seq,
            "records": self.records,
            "due_seq": self.due_seq,
            "checkpoint_seq": self.checkpoint_seq,
            "first_seq": self.first_seq,
            "note": self.note,
            "checkpoint": json.loads(self.checkpoint_body) if self.checkpoint_body else None,
        }


def _good(cp: StoredCheckpoint, public_key) -> bool:
    if public_key is None:
        return True
    return verify_signature(public_key, cp.body, cp.signature)


async def _latest_checkpoint(store: AuditStore, at_most: int, floor: int, public_key) -> int | None:
    """The highest good checkpoint seq <= at_most (searching back a window at a time)."""
    hi = at_most
    while hi >= floor:
        lo = max(hi - _WINDOW + 1, floor)
        for cp in reversed(await store.checkpoints(lo, hi)):
            if _good(cp, public_key):
                return cp.seq
        hi = lo - 1
    return None


async def _first_checkpoint_from(store: AuditStore, seq: int, last: int, public_key) -> int | None:
    """The lowest good checkpoint seq >= seq (a window at a time)."""
    lo = seq
    while lo <= last:
        hi = lo + _WINDOW - 1
        for cp in await store.checkpoints(lo, hi):
            if _good(cp, public_key):
                return cp.seq
        lo = hi + 1
    return None


async def plan_retention(
    store: AuditStore, *, max_age_seconds: float, now: float | None = None, public_key=None
) -> RetentionResult:
    """What retention would remove now (nothing is changed)."""
    now = time.time() if now is None else now
    result = RetentionResult(cutoff=iso_time(now - max_age_seconds))
    oldest = await first_record(store)
    last = (await store.head())[0]
    if oldest is None:
        result.note = "the trail is empty"
        return result
    first = result.first_seq = oldest.seq
    due = await store.last_seq_before(result.cutoff)
    result.due_seq = due
    if due < first:
        result.note = "no record is older than the cutoff"
        return result
    # A checkpoint at or after `due` means every due record can go; else stop at the latest one.
    if await _first_checkpoint_from(store, due, last, public_key) is not None:
        result.checkpoint_seq = due
        through = due
    else:
        cp = await _latest_checkpoint(store, due, first, public_key)
        result.checkpoint_seq = cp
        if cp is None:
            result.note = "no signed checkpoint covers the due records yet"
            return result
        through = cp
        result.note = f"records {cp + 1}..{due} are due but wait for the next checkpoint"
    result.through_seq = through
    result.records = through - first + 1
    return result


async def apply_retention(
    store: AuditStore,
    signer: Signer,
    *,
    max_age_seconds: float,
    now: float | None = None,
    store_id: str,
    why: str,
    verify_first: bool = True,
) -> RetentionResult:
    """Remove the records older than ``max_age_seconds`` (a prefix, capped at the latest
    checkpoint) and add the signed retention checkpoint, in one store transaction.

    With ``verify_first`` (the default) the records being removed are verified first and
    RetentionError is raised, deleting nothing, if they do not verify.
    """
    now = time.time() if now is None else now
    result = await plan_retention(store, max_age_seconds=max_age_seconds, now=now, public_key=signer.public_key)
    through = result.through_seq
    if not through:
        return result
    last = (await store.head())[0]
    if verify_first:
        upto = await _first_checkpoint_from(store, through, last, signer.public_key)
        report = await verify_store(store, signer.public_key, end=upto, key_source="signing key")
        if not report.ok:
            raise RetentionError(
                f"the records to remove (through seq {through}) do not verify; nothing was deleted "
                "(export them and investigate: `pgwarden audit verify`)",
                report,
            )
    stored = None
    async for rec in store.records(through, through):
        stored = rec.hash
    if stored is None:
        raise RetentionError(f"record {through} is missing; nothing was deleted")
    at = iso_time(now)
    removed = {"through_seq": through, "records": result.records, "before": result.cutoff, "why": why}
    body = checkpoint_body(
        seq=through, chain_hash=stored, at=at, reason="retention", store=store_id, key=signer.key_id, removed=removed
    )
    checkpoint = StoredCheckpoint(0, through, at, body, signer.sign(body))
    result.records = await store.delete_through(through, checkpoint)
    result.checkpoint_body = body
    result.applied = True
    return result


async def retention_loop(writer, max_age_seconds: float, every_seconds: float, open_store, why: str) -> None:
    """The gateway's retention: every ``every_seconds``, remove what is older than ``max_age_seconds``.

    Runs in a thread on its own store connection: it verifies what it is about
    to delete first (evidence of tampering must not be destroyed), which can take
    seconds on a large trail and must not stall the relay. What was removed is
    also recorded in the trail as an ``audit`` record (event ``retention``).
    """
    from .records import make_record

    def once() -> RetentionResult:
        async def run() -> RetentionResult:
            store = open_store()
            await store.open(create=False)
            try:
                return await apply_retention(store, writer.signer, max_age_seconds=max_age_seconds,
                                             store_id=writer.store_id, why=why)
            finally:
                await store.close()

        return asyncio.run(run())

    while True:
        try:
            result = await asyncio.to_thread(once)
        except Exception as exc:
            log.error("audit retention failed: %s", exc, extra={"event": "audit_retention_failed"})
        else:
            if result.applied:
                log.info("audit retention removed %d records through seq %d", result.records, result.through_seq,
                         extra={"event": "audit_retention"})
                writer.submit(make_record("audit", None, {
                    "event": "retention", "through_seq": result.through_seq, "records": result.records,
                    "before": result.cutoff, "why": why}))
        await asyncio.sleep(every_seconds)
