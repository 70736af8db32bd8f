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
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from .. import __version__ as _version
from ..services import audit as audit_service
from ..store import AuditStore, AuditStoreError
from ..store.verify import first_record, iter_checkpoints, verify_store
from . import FORMAT
from .collect import Collector
from .controls import Context, evaluate

__all__ = ["EvidenceError", "build_report", "collect_report", "period_bounds", "iso"]

_SLACK = timedelta(minutes=5)


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


async def _collect(store: AuditStore, frm: str, to: str, col: Collector) -> None:
    start = await store.last_seq_before(_shift(frm, -_SLACK)) + 1
    stop_at = _shift(to, _SLACK)
    gen = store.records(start, None)
    n = 0
    try:
        async for rec in gen:
            if rec.at > stop_at:
                break
            if frm <= rec.at <= to:
                col.add(rec.seq, rec.at, rec.type, rec.session, rec.body)
            n += 1
            if n % 5000 == 0:
                await asyncio.sleep(0)
    finally:
        await gen.aclose()  # type: ignore[attr-defined]


async def _verify(config: Any, store: AuditStore, col: Collector, public_key: Path | None) -> tuple[dict[str, Any], list]:
    """The verification section, and the signed retention checkpoints verification saw."""
    empty = {"status": "no_records", "first_seq": None, "last_seq": None, "records": 0, "checkpoints": 0,
             "problems": [], "key_id": None, "warnings": [], "key_source": None, "last_checkpoint_seq": None,
             "unsigned_tail": None, "range": None, "period_seqs": None}
    try:
        # The same key choice (and the same warning when the store's key and the key file differ)
        # as `pgwarden audit verify`.
        key, source, mismatch = await audit_service._key_for(config, store, public_key)
    except audit_service.AuditServiceError as exc:
        if col.first_seq is None:
            return empty, []
        return {**empty, "status": "failed", "first_seq": col.first_seq, "last_seq": col.last_seq,
                "period_seqs": [col.first_seq, col.last_seq],
                "problems": [{"kind": "no_key", "seq": None, "end": None, "detail": str(exc)}]}, []
    from ..store.signing import key_id

    if col.first_seq is None:
        return {**empty, "key_id": key_id(key), "key_source": source}, []
    last = col.last_seq or col.first_seq
    end = last
    _first, top, _count = await store.bounds()
    async for cp in iter_checkpoints(store, last, max(top, last)):
        end = max(cp.seq, last)  # the first signature at or after the period's last record
        break
    report = await verify_store(store, key, start=col.first_seq, end=end, key_source=source)
    if mismatch:
        report.add("wrong_key", 0, None, mismatch)
    problems = [{"kind": p.kind, "seq": p.seq or None, "end": p.end or None, "detail": p.detail} for p in report.problems]
    if report.omitted:
        problems.append({"kind": "omitted", "seq": None, "end": None, "detail": f"{report.omitted} more problem(s)"})
    tail = report.unsigned_tail
    if tail and tail[0] > last:
        tail = None  # only records after the period are unsigned
    elif tail:
        tail = (tail[0], min(tail[1], last))
    return {
        "status": "verified" if report.ok else "failed",
        # The range verified: the period's records, up to the first checkpoint that signs them.
        "first_seq": report.first_seq if report.first_seq is not None else col.first_seq,
        "last_seq": report.last_seq if report.last_seq is not None else last,
        "records": report.records,
        "checkpoints": report.checkpoints_checked,
        "problems": problems,
        "key_id": report.key_id,
        "warnings": list(report.warnings),
        "key_source": report.key_source,
        "last_checkpoint_seq": report.last_checkpoint_seq,
        "unsigned_tail": list(tail) if tail else None,
        "range": [col.first_seq, end],
        "period_seqs": [col.first_seq, last],
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
    try:
        async with audit_service.reader(config) as store:
            try:
                await _collect(store, frm, to, col)
                verification, retention = await _verify(config, store, col, public_key)
                oldest = await first_record(store, 1, None)
            except AuditStoreError as exc:
                raise EvidenceError(f"reading the audit trail failed: {exc}", 1) from exc
    except audit_service.AuditServiceError as exc:
        raise EvidenceError(str(exc), exc.code) from exc
    now = time.time()
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
