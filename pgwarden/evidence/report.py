"""``build_report(config, start, end)``: the evidence report as a dict (``pgwarden-evidence/1``).

Two streaming passes over the store, never the whole trail in memory:

1. collection: from the last record before the period (``last_seq_before``,
   with a little slack because ``at`` is stamped when an event happens and
   group commits may interleave stamps by a few milliseconds) forward, until
   records are clearly past the period; only records whose ``at`` lies in the
   period are counted;
2. verification of exactly the period's seqs, extended to the first signed
   checkpoint after them, so the report can say whether a signature covers
   the period (the same ``verify_store`` that ``pgwarden audit verify`` runs).

The dict's keys are a contract (the OSCAL converter reads them); add keys,
never rename or remove one.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from .. import __version__ as _version
from ..services import audit as audit_service
from ..store import AuditStore, AuditStoreError
from ..store.base import StoredCheckpoint
from ..store.blocks import prefix_fields
from ..store.signing import key_id, verify_signature
from ..store.verify import first_record, iter_checkpoints, verify_store
from . import FORMAT
from .collect import Collector
from .controls import Context, evaluate

__all__ = ["EvidenceError", "build_report", "collect_report", "period_bounds", "iso"]

_SLACK = timedelta(minutes=5)
_NO_TRAIL = ("no audit trail", "no pgwarden audit trail", "session recording is not enabled", "invalid audit")
_WINDOW = 100_000  # seqs of checkpoints fetched at a time
_STALE_MARGIN = 300.0  # seconds past audit.checkpoints.every_seconds before an unsigned record is suspicious


class EvidenceError(Exception):
    """The report cannot be built. ``code`` 2: bad input or config; 1: the store failed."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def iso(when: datetime) -> str:
    """UTC ISO 8601 with microseconds and ``Z``: the trail's own format, so strings compare as times."""
    return when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse(text: str, end_of_day: bool) -> datetime:
    raw = text.strip()
    try:
        when = datetime.fromisoformat(raw.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise EvidenceError(f"not a date or ISO 8601 time: {text!r} (use e.g. 2026-11-24 or 2026-11-24T08:00Z)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    if end_of_day and len(raw) == 10:  # a date alone: the whole day
        when = when + timedelta(days=1) - timedelta(microseconds=1)
    return when.astimezone(timezone.utc)


def period_bounds(start: str | None, end: str | None, now: datetime | None = None) -> tuple[str, str]:
    """(from, to), both inclusive, as trail time strings. Defaults: the last 30 days up to now;
    ``end`` given as a date means the end of that day."""
    now = now or datetime.now(timezone.utc)
    to = _parse(end, True) if end else now
    frm = _parse(start, False) if start else to - timedelta(days=30)
    if frm > to:
        raise EvidenceError(f"--from ({iso(frm)}) is after --to ({iso(to)})")
    return iso(frm), iso(to)


def _shift(at: str, delta: timedelta) -> str:
    return iso(datetime.fromisoformat(at.replace("Z", "+00:00")) + delta)


def _location(config: Any) -> str:
    s = config.audit.store
    if s.type != "postgres":
        return str(s.path)
    from urllib.parse import urlsplit, urlunsplit

    dsn = s.dsn or ""
    if "://" in dsn:
        p = urlsplit(dsn)
        host = p.hostname or ""
        netloc = (f"{p.username}@" if p.username else "") + host + (f":{p.port}" if p.port else "")
        return urlunsplit((p.scheme, netloc, p.path, "", ""))
    return " ".join(part for part in dsn.split() if not part.lower().startswith("password="))


def _checkpoint_data(cp: StoredCheckpoint, key: Any) -> dict[str, Any] | None:
    """A checkpoint's body when its signature verifies with ``key`` and it signs its own row's seq."""
    if key is None:
        return None
    try:
        data = json.loads(cp.body)
        ok = (isinstance(data, dict) and data.get("key_id") == key_id(key) and data.get("seq") == cp.seq
              and isinstance(data.get("at"), str) and verify_signature(key, cp.body, cp.signature))
    except (ValueError, TypeError):
        return None
    return data if ok else None


async def _signed_start(store: AuditStore, key: Any, before: str, hint: int) -> int:
    """The first seq to read: just after the last checkpoint *signed* before ``before``.

    Why signed: the store's own time columns (``at`` of a row, which
    ``last_seq_before`` searches) are not covered by the chain, so someone who can
    write the store could move the start past records of the period. A record
    stamped after a checkpoint was signed has a higher seq than the checkpoint, so
    starting after a checkpoint signed before ``before`` misses nothing. ``hint``
    (from the time columns) only says where to start looking; the walk goes back
    until a verifying checkpoint is found (1 when there is none).
    """
    if key is None:
        return hint + 1
    hi = hint
    while hi >= 0:
        lo = max(0, hi - _WINDOW + 1)
        for cp in reversed(await store.checkpoints(lo, hi)):
            data = _checkpoint_data(cp, key)
            if data is not None and data["at"] < before:
                return cp.seq + 1
        hi = lo - 1
    return 1


async def _signed_end(store: AuditStore, key: Any, after: str, hint: int) -> int | None:
    """The seq of the first checkpoint at or after ``hint`` signed after ``after`` (every
    record stamped before ``after`` has a seq at most its seq), or None: read to the head."""
    if key is None:
        return None
    head = (await store.head())[0]
    async for cp in iter_checkpoints(store, max(hint, 0), max(head, hint), window=_WINDOW):
        data = _checkpoint_data(cp, key)
        if data is not None and data["at"] > after:
            return cp.seq
    return None


async def _collect(store: AuditStore, frm: str, to: str, col: Collector, key: Any,
                   scan: dict[str, Any]) -> None:
    """Count the period's records, reading from just after the last checkpoint signed before the
    period (less the slack) through the first checkpoint signed after it (or the head).

    Every record is judged by its body (``at``, ``type``, ``session`` from the bytes the chain
    covers), never by the store's columns: a record moved out of the period by editing a column
    is still counted where it belongs, and verification (``verify_store``) reports the edit.
    """
    before, after = _shift(frm, -_SLACK), _shift(to, _SLACK)
    start = await _signed_start(store, key, before, await store.last_seq_before(before))
    end = await _signed_end(store, key, after, max(start, await store.last_seq_before(after)))
    scan.update(start=start, end=end, last=start - 1, problems=[])
    gen = store.records(start, end)
    n = 0
    try:
        async for rec in gen:
            at, rtype, session = prefix_fields(rec.body)  # a row's columns that differ: verify_store says so
            if frm <= at <= to:
                col.add(rec.seq, at, rtype, session, rec.body)
            scan["last"] = rec.seq
            n += 1
            if n % 5000 == 0:
                await asyncio.sleep(0)
    finally:
        await gen.aclose()  # type: ignore[attr-defined]


async def _verify(store: AuditStore, col: Collector, key_info: tuple | None, key_error: str | None,
                  scan: dict[str, Any], now: float, every_seconds: float) -> tuple[dict[str, Any], list]:
    """The verification section, and the signed retention checkpoints verification saw.

    What is verified is everything the collection read (from the checkpoint signed before the
    period through the first one signed after it, or the head): tampering next to the period
    (its first or last records deleted, a record's time moved out of it, the whole period
    removed) is inside the range and fails the report, as `pgwarden audit verify` would.
    """
    empty = {"status": "no_records", "first_seq": None, "last_seq": None, "records": 0, "checkpoints": 0,
             "problems": [], "key_id": None, "warnings": [], "key_source": None, "last_checkpoint_seq": None,
             "unsigned_tail": None, "range": None, "period_seqs": None, "signed": None}
    period = [col.first_seq, col.last_seq] if col.first_seq is not None else None
    if key_info is None:
        if col.first_seq is None and scan.get("last", 0) < scan.get("start", 1):
            return {**empty, "warnings": [f"no public key to verify with: {key_error}"]}, []
        return {**empty, "status": "failed", "first_seq": col.first_seq, "last_seq": col.last_seq,
                "period_seqs": period,
                "problems": [{"kind": "no_key", "seq": None, "end": None, "detail": str(key_error)}]}, []
    key, source, mismatch = key_info
    start, end = scan["start"], scan["end"]
    report = await verify_store(store, key, start=start, end=end, key_source=source)
    if mismatch:
        report.add("wrong_key", 0, None, mismatch)
    problems = list(scan["problems"])
    problems += [{"kind": p.kind, "seq": p.seq or None, "end": p.end or None, "detail": p.detail}
                 for p in report.problems]
    if report.omitted:
        problems.append({"kind": "omitted", "seq": None, "end": None, "detail": f"{report.omitted} more problem(s)"})
    warnings = list(report.warnings)
    if source == "store meta" and not mismatch:
        warnings.append("the public key was read from the audit store itself: whoever can write the store can "
                        "replace it and re-sign the trail; verify with --public-key (a pinned copy of the key)")
    for r in report.retention:
        before = r.get("before")
        if isinstance(before, str) and before > scan.get("from", ""):
            warnings.append(f"signed retention checkpoint at seq {r.get('seq')} ({r.get('at')}) removed records "
                            f"{'1..' + str(r.get('through_seq')) if r.get('through_seq') else ''} older than {before} "
                            f"({r.get('records')} record(s)): the period's records before then are no longer in the "
                            "trail, and the counts cover only what remains")
    last = col.last_seq
    tail = report.unsigned_tail
    signed = None
    stale = False
    if period is not None:
        if tail and (tail[0] > last or tail[1] < col.first_seq):
            tail = None
        elif tail:
            tail = (max(tail[0], col.first_seq), min(tail[1], last))
        covered = report.last_checkpoint_seq is not None and report.last_checkpoint_seq >= col.first_seq
        signed = "none" if not covered else "partial" if tail else "all"
        if tail and col.last_at:
            try:
                age = now - datetime.fromisoformat(col.last_at.replace("Z", "+00:00")).timestamp()
            except ValueError:
                age = 0.0
            # A running gateway signs its head every audit.checkpoints.every_seconds; unsigned
            # records older than that (with a margin) mean it stopped without signing, or that
            # checkpoints were removed.
            stale = age > every_seconds + _STALE_MARGIN
            if stale:
                warnings.append(f"records {tail[0]}..{tail[1]} of the period are still not signed although "
                                f"{int(age)} s have passed (checkpoints every {every_seconds:g} s): the gateway "
                                "stopped without signing them, or checkpoints were removed; they could have been "
                                "altered, forged or cut off without detection")
    if not report.ok or problems:
        status = "failed"
    elif period is None:
        status = "no_records"
    elif signed == "none":
        status = "unsigned"
    else:
        status = "verified"
    return {
        "status": status,
        # The range verified: from the checkpoint signed before the period to the first signed after it.
        "first_seq": report.first_seq if report.first_seq is not None else col.first_seq,
        "last_seq": report.last_seq if report.last_seq is not None else last,
        "records": report.records,
        "checkpoints": report.checkpoints_checked,
        "problems": problems,
        "key_id": report.key_id,
        "warnings": warnings,
        "key_source": report.key_source,
        "last_checkpoint_seq": report.last_checkpoint_seq,
        "unsigned_tail": list(tail) if tail else None,
        "unsigned_stale": stale,
        "signed": signed,
        "range": [start, report.last_seq if end is None and report.last_seq is not None else end],
        "period_seqs": period,
    }, list(report.retention)


def _config_digest(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None


async def collect_report(config: Any, frm: str, to: str, *, public_key: Path | None = None,
                         config_path: Path | None = None, max_samples: int = 5) -> dict[str, Any]:
    """Build the report for the period ``frm``..``to`` (trail time strings, inclusive)."""
    col = Collector(max_samples)
    now = time.time()
    scan: dict[str, Any] = {"from": frm}
    opened = False
    try:
        async with audit_service.reader(config) as store:
            opened = True
            try:
                key_info, key_error = None, None
                try:
                    # The same key choice (and the same warning when the store's key and the key
                    # file differ) as `pgwarden audit verify`.
                    key_info = await audit_service.key_for(config, store, public_key)
                except audit_service.AuditServiceError as exc:
                    if exc.code != 2 or public_key is not None:
                        raise
                    key_error = str(exc)
                await _collect(store, frm, to, col, key_info[0] if key_info else None, scan)
                verification, retention = await _verify(store, col, key_info, key_error, scan, now,
                                                        config.audit.checkpoints.every_seconds)
                oldest = await first_record(store, 1, None)
            except AuditStoreError as exc:
                raise EvidenceError(f"reading the audit trail failed: {exc}", 1) from exc
    except audit_service.AuditServiceError as exc:
        code = exc.code
        if not opened and code == 2 and not str(exc).startswith(_NO_TRAIL):
            code = 1  # the store is there (or configured) but cannot be opened: not the caller's input
        raise EvidenceError(str(exc), code) from exc
    ctx = Context(col=col, verification=verification, retention=retention,
                  oldest_at=oldest.at if oldest is not None else None, now=now)
    by_type = dict(sorted(col.by_type.items()))
    controls = evaluate(config, ctx)
    summary = {s: sum(1 for c in controls if c["status"] == s) for s in ("satisfied", "not_satisfied", "no_events")}
    return {
        "format": FORMAT,
        "generated_at": iso(datetime.fromtimestamp(now, timezone.utc)),
        "generator": {"name": "pgwarden", "version": _version},
        "period": {"from": frm, "to": to},
        "system": {
            "name": "pgwarden",
            "gateway_ids": sorted(col.gateways),
            "targets": sorted(config.targets),
            "store": {"backend": "postgresql" if config.audit.store.type == "postgres" else "sqlite",
                      "location": _location(config)},
            "public_key_id": verification.get("key_id"),
            "config_path": str(config_path) if config_path is not None else None,
            "config_sha256": _config_digest(config_path),
        },
        "verification": verification,
        "totals": {
            "records": sum(by_type.values()),
            "by_type": by_type,
            "sessions": col.counts.get("sessions", 0),
            "statements": col.statements(),
        },
        "daily": col.daily_rows(frm[:10], to[:10]),
        "summary": summary,
        "controls": controls,
    }


def build_report(config: Any, frm: str | None = None, to: str | None = None, **kwargs: Any) -> dict[str, Any]:
    """Synchronous entry point; ``frm``/``to`` are dates or ISO times as the CLI takes them."""
    start, end = period_bounds(frm, to)
    return asyncio.run(collect_report(config, start, end, **kwargs))
