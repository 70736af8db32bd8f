"""Recorded sessions: find them in the audit store and rebuild what happened.

The trail is a flat, chained list of records (docs/audit.md); people ask
questions about *sessions*: "who ran what yesterday on shop", "what did this
agent see". This module answers them for every front end (CLI today, the HTTP
API and MCP later) with one model, :class:`Transcript`, which the rich table,
the psql-style replay and ``--json`` all render, so they cannot disagree.

It only reads: the store is opened with ``create=False`` so a typo in a
config never creates an empty trail, and nothing here verifies the chain
(``pgwarden audit verify`` does; a transcript is a view, not a proof).
"""

from __future__ import annotations

import json
import time
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, AsyncIterator

from ..config import Config
from ..config_audit import parse_duration_seconds
from ..store import AuditStoreError, SessionFilter, SessionSummary, store_for
from ..store.base import AuditStore
from ..store.decode import DecodedSet, decode_result_set, param_texts
from ..store.records import parse_body

__all__ = [
    "SessionsError",
    "ResultView",
    "Event",
    "Transcript",
    "parse_when",
    "open_reader",
    "list_sessions",
    "load_transcript",
    "at_seconds",
]

_COMMON = ("v", "seq", "at", "type", "session")


class SessionsError(Exception):
    """A question the store cannot answer as asked (no trail, unknown session, bad time)."""


def at_seconds(at: str | None) -> float | None:
    """A record's ``at`` (ISO 8601 UTC) as epoch seconds; None if absent or unreadable."""
    if not at:
        return None
    try:
        value = datetime.fromisoformat(at)
    except ValueError:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.timestamp()


def parse_when(text: str, now: float | None = None) -> str:
    """``1h``/``2d``/``30m`` (or plain seconds) ago, or an ISO date/date-time (UTC unless it says otherwise),
    in the store's own ``at`` format so string comparison in the store is correct."""
    text = text.strip()
    try:
        seconds = parse_duration_seconds(text)
    except ValueError:
        seconds = None
    if seconds is not None:
        moment = datetime.fromtimestamp((time.time() if now is None else now) - seconds, timezone.utc)
    else:
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise SessionsError(f"not a time: {text!r} (use e.g. 1h, 2d or 2026-11-24T05:00)") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=timezone.utc)
        moment = moment.astimezone(timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@asynccontextmanager
async def open_reader(config: Config) -> AsyncIterator[AuditStore]:
    """The configured audit store, opened for reading (never created)."""
    from .audit import AuditServiceError, reader

    try:
        async with reader(config) as store:
            yield store
    except AuditServiceError as exc:
        raise SessionsError(str(exc)) from exc


async def list_sessions(store: AuditStore, filters: SessionFilter) -> list[SessionSummary]:
    try:
        return await store.sessions(filters)
    except AuditStoreError as exc:
        raise SessionsError(str(exc)) from exc


# ---------------------------------------------------------------- the model


@dataclass(slots=True)
class ResultView:
    """A ``result`` record, with its row sets decoded."""

    seq: int
    at: str
    status: str | None
    tags: list[str]
    rows: int | None
    duration_ms: float | None
    error: dict[str, Any] | None
    notices: list[dict[str, Any]]
    copy: dict[str, Any] | None
    sets: list[DecodedSet]
    set_info: list[dict[str, Any]]  # per set: captured_rows, truncated, row_bytes, tag (when recorded)
    sha256: str | None = None
    result_bytes: int | None = None
    masked: list[dict[str, Any]] = field(default_factory=list)  # what masking replaced (docs/masking.md)

    def as_dict(self) -> dict[str, Any]:
        sets = []
        for decoded, info in zip(self.sets, self.set_info):
            sets.append({
                "columns": [asdict(c) for c in decoded.columns] if decoded.described else None,
                "rows": decoded.rows,
                **info,
                "problems": decoded.problems,
            })
        return {
            "seq": self.seq, "at": self.at, "status": self.status, "tags": self.tags, "rows": self.rows,
            "duration_ms": self.duration_ms, "error": self.error, "notices": self.notices, "copy": self.copy,
            "sets": sets, "sha256": self.sha256, "result_bytes": self.result_bytes, "masked": self.masked,
        }


@dataclass(slots=True)
class Event:
    """One line of the session: a statement (with its result, when one was recorded) or another record.

    ``type`` is the record type; for a statement, ``kind`` says query/parse/execute.
    A statement whose ``result`` is None never completed in the trail (the
    session is still open, or the gateway stopped before writing it).
    """

    seq: int
    at: str
    type: str
    n: int | None = None
    kind: str | None = None
    protocol: str | None = None
    text: str | None = None
    params: list[str | None] | None = None
    param_types: list[int] | None = None
    statement_name: str | None = None
    portal_name: str | None = None
    decision: dict[str, Any] | None = None
    approval: dict[str, Any] | None = None  # the approval request that let it run or refused it
    result: ResultView | None = None
    text_from: int | None = None  # an Execute's text was taken from the Parse record with this seq
    detail: str = ""
    fields: dict[str, Any] = field(default_factory=dict)  # the record's own fields (non-statement events)

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"seq": self.seq, "at": self.at, "type": self.type}
        if self.type == "statement":
            data.update(
                n=self.n, kind=self.kind, protocol=self.protocol, text=self.text, params=self.params,
                param_types=self.param_types, statement_name=self.statement_name, portal_name=self.portal_name,
                text_from=self.text_from, decision=self.decision, approval=self.approval, result=self.result.as_dict() if self.result else None,
            )
        else:
            data.update(n=self.n, detail=self.detail, fields=self.fields)
        return data


@dataclass(slots=True)
class Transcript:
    """A session as one object: who (``header``), what (``events``), and read problems."""

    header: dict[str, Any]
    events: list[Event]
    problems: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"session": self.header, "events": [e.as_dict() for e in self.events], "problems": self.problems}


# ---------------------------------------------------------------- loading


async def load_transcript(store: AuditStore, session_id: str) -> Transcript:
    """The session by id or unique prefix (at least 6 characters), with every record it has."""
    try:
        summary = await store.session(session_id)
    except AuditStoreError as exc:
        raise SessionsError(str(exc)) from exc
    if summary is None:
        raise SessionsError(
            f"no recorded session {session_id!r} (give the full id, or a unique prefix of at least 6 characters)"
        )
    bodies: list[tuple[int, str, str, dict[str, Any] | None]] = []
    try:
        async for rec in store.records(summary.first_seq or 1, summary.last_seq, session=summary.id):
            try:
                body = parse_body(rec.body)
                if not isinstance(body, dict):
                    body = None
            except ValueError:
                body = None
            bodies.append((rec.seq, rec.at, rec.type, body))
    except AuditStoreError as exc:
        raise SessionsError(str(exc)) from exc
    return build_transcript(summary, bodies)


def build_transcript(summary: SessionSummary, bodies: list[tuple[int, str, str, dict[str, Any] | None]]) -> Transcript:
    """Pair statements with results by ``n`` and describe the other records (no I/O; tested directly)."""
    header = _header(summary)
    events: list[Event] = []
    problems: list[str] = []
    by_n: dict[int, Event] = {}
    parsed: dict[str, Event] = {}  # statement name -> its latest Parse (an Execute names it, not its text)
    for seq, at, rtype, body in bodies:
        if body is None:
            problems.append(f"record {seq} ({rtype}) is not valid JSON")
            events.append(Event(seq, at, rtype, detail="[unreadable record]"))
            continue
        fields = {k: v for k, v in body.items() if k not in _COMMON}
        n = fields.get("n") if isinstance(fields.get("n"), int) else None
        if rtype == "statement":
            event = Event(
                seq, at, rtype, n=n, kind=fields.get("kind"), protocol=fields.get("protocol"),
                text=fields.get("text"), params=param_texts(fields["params"]) if "params" in fields else None,
                param_types=fields.get("param_types"), statement_name=fields.get("statement_name"),
                portal_name=fields.get("portal_name"), decision=fields.get("decision") or None,
                approval=fields.get("approval") if isinstance(fields.get("approval"), dict) else None,
            )
            if event.kind == "parse":
                parsed[event.statement_name or ""] = event
            elif event.kind == "execute" and event.text is None and (event.statement_name or "") in parsed:
                source = parsed[event.statement_name or ""]
                event.text, event.text_from = source.text, source.seq
            events.append(event)
            if n is not None:
                by_n[n] = event
        elif rtype == "result":
            view = _result_view(seq, at, fields)
            owner = by_n.get(n) if n is not None else None
            if owner is not None and owner.result is None:
                owner.result = view
            else:
                problems.append(f"result {seq} (n={n}) has no statement record in this session")
                events.append(Event(seq, at, "statement", n=n, result=view))
        else:
            if rtype == "connect":
                _merge_connect(header, fields)
            elif rtype == "auth":
                header.setdefault("auth", fields)
                if fields.get("method"):
                    header["method"] = header.get("method") or fields.get("method")
            events.append(Event(seq, at, rtype, n=n, detail=_detail(rtype, fields), fields=fields))
    if header["open"]:  # the summary's counters are only final at disconnect: count what is there
        results = [e.result for e in events if e.type == "statement"]
        header.update(statements=sum(1 for e in events if e.type == "statement" and e.kind != "parse"),
                      refused=sum(1 for r in results if r and r.status == "denied"),
                      errors=sum(1 for r in results if r and r.status == "error"))
    return Transcript(header, events, problems)


def _header(summary: SessionSummary) -> dict[str, Any]:
    started, ended = at_seconds(summary.started_at), at_seconds(summary.ended_at)
    header = summary.as_dict()
    header.update(
        open=summary.ended_at is None,
        duration_s=round(ended - started, 3) if started is not None and ended is not None else None,
        identity=summary.subject or summary.user,
        issuer=None, method=None, access=None, tls=None, startup=None,
    )
    return header


def _merge_connect(header: dict[str, Any], fields: dict[str, Any]) -> None:
    for key in ("gateway", "user", "target", "client", "tls", "application_name", "startup"):
        if fields.get(key) is not None:
            header[key] = fields[key]
    identity = fields.get("identity")
    if isinstance(identity, dict):
        for key in ("subject", "issuer", "roles", "method", "access"):
            if identity.get(key) is not None:
                header[key] = identity[key]
        header["identity"] = identity.get("subject") or header.get("identity")
    elif "identity" in fields:
        header["method"] = header.get("method") or "scram (static user)"


def _result_view(seq: int, at: str, fields: dict[str, Any]) -> ResultView:
    sets, info = [], []
    raw_sets = fields.get("results") or []
    for raw in raw_sets if isinstance(raw_sets, list) else []:
        raw = raw if isinstance(raw, dict) else {}
        sets.append(decode_result_set(raw))
        info.append({k: raw.get(k) for k in ("captured_rows", "truncated", "row_bytes", "tag", "rows") if k in raw})
    error = fields.get("error")
    tags = fields.get("tags") or []
    return ResultView(
        seq, at, fields.get("status"), [str(t) for t in tags] if isinstance(tags, list) else [],
        fields.get("rows"), fields.get("duration_ms"), error if isinstance(error, dict) else None,
        [n for n in fields.get("notices") or [] if isinstance(n, dict)], fields.get("copy"), sets, info,
        fields.get("sha256"), fields.get("result_bytes"),
        [m for m in fields.get("masked") or [] if isinstance(m, dict)],
    )


def _detail(rtype: str, f: dict[str, Any]) -> str:
    """A one-line description of a non-statement record, for the event table."""
    if rtype == "connect":
        who = (f.get("identity") or {}).get("subject") if isinstance(f.get("identity"), dict) else None
        parts = [f"{who or f.get('user', '?')} -> {f.get('target', '?')} from {f.get('client', '?')}"]
        parts.append(f"TLS {f['tls']}" if f.get("tls") else "no TLS")
        if f.get("application_name"):
            parts.append(f"app {f['application_name']}")
        return ", ".join(parts)
    if rtype == "auth":
        text = f"{f.get('outcome', '?')} via {f.get('method') or '?'}"
        return text + (f": {f['reason']}" if f.get("reason") else "")
    if rtype == "notice":
        return f"{f.get('severity', 'NOTICE')}: {f.get('message', '')}"
    if rtype == "cancel":
        return f"cancel request from {f.get('client', '?')}" + (" (withdrew a held statement)" if f.get("held") else "")
    if rtype == "disconnect":
        return (f"{f.get('reason', '?')}: {f.get('statements', 0)} statements, {f.get('refused', 0)} refused, "
                f"{f.get('errors', 0)} errors, {f.get('duration_s', '?')} s")
    if rtype == "approval":
        event, rid = f.get("event", "?"), f.get("request", "?")
        if event == "requested":
            return (f"approval request {rid} ({f.get('mode', '?')} mode, rule {f.get('rule', '?')}) "
                    f"by {f.get('requester', '?')}")
        if event in ("approve", "deny"):
            comment = f": {f['comment']}" if f.get("comment") else ""
            return f"request {rid}: {event} by {f.get('reviewer', '?')} via {f.get('via', '?')}{comment} -> {f.get('status')}"
        return f"request {rid}: {event}" + (f" ({f['reason']})" if f.get("reason") else "")
    if rtype == "alert":
        count = f.get("count") or 1
        return (f"alert {f.get('kind', '?')} ({f.get('severity', '?')}): {f.get('title', '')}"
                + (f" ({count} times)" if count != 1 else ""))
    return json.dumps(f, ensure_ascii=False, sort_keys=True)[:200]

