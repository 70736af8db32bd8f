"""The recorder: turns session events into audit records (docs/audit.md).

It is not an ordinary stage: it must see the *final* verdict of every
statement, including refusals (evaluation stops at the first Deny), so the
pipeline calls :meth:`Recorder.decided` after all stages have run. It writes the
``statement`` record there, before the statement is forwarded, and notes the
record's ticket on the session so the driver holds the statement's bytes until
the record is durable (write-ahead, see ``store/writer.py``). While the store
is failing, and ``on_audit_failure`` is ``refuse``, it turns allowed verdicts
into refusals itself.

Records on the per-statement path are built from string templates, not
``json.dumps`` of a dict: two records per statement are written under load,
and the template costs a fraction of the generic encoder.
"""

from __future__ import annotations

import hashlib
import json
import struct
from base64 import b64encode
import time
from typing import Any

from ...config_audit import AuditConfig
from ...session.capture import ResultCapture, whole_messages
from ...session.statement import AuthEvent, SessionInfo, Statement
from ...session.verdict import Allow, Deny, Rewrite, Verdict
from ...store.base import SessionSummary
from ...store.records import PendingRecord, iso_time, json_str, make_record
from ...store.writer import AuditWriter
from ...wire.messages import decode_error_fields
from .params import decode_params, read_bind

__all__ = ["Recorder", "AUDIT_UNAVAILABLE", "AUDIT_DENY"]

AUDIT_UNAVAILABLE = "58030"  # io_error: the closest standard class for "the trail cannot be written"

AUDIT_DENY = Deny(
    "pgwarden: the audit trail is unavailable; statement refused",
    AUDIT_UNAVAILABLE,
    rule="audit.unavailable",
    hint="Statements run again as soon as the audit store can be written.",
)
_EMPTY_SHA256 = hashlib.sha256().hexdigest()
_PLAIN_ALLOW = b',"decision":{"action":"allow","rule":null,"message":null,"alerts":[]}}'
_PLAIN_ALLOW_TEXT = _PLAIN_ALLOW.decode()


class _SessionState:
    __slots__ = ("n", "statements", "refused", "errors", "masked", "started", "summary")

    def __init__(self, summary: SessionSummary) -> None:
        self.n = 0
        self.statements = 0
        self.refused = 0
        self.errors = 0
        self.masked = 0
        self.started = time.time()
        self.summary = summary


_tag_cache: dict[str, tuple[str, int]] = {}


def _tag(tag: str) -> tuple[str, int]:
    """A command tag as JSON and the rows it reports (cached: tags repeat)."""
    found = _tag_cache.get(tag)
    if found is None:
        last = tag.rpartition(" ")[2]
        rows = int(last) if last.isdigit() and not tag.startswith(("BEGIN", "START")) else 0
        found = (json_str(tag), rows)
        if len(_tag_cache) > 4096:
            _tag_cache.clear()
        _tag_cache[tag] = found
    return found


_describe_cache: dict[tuple[bytes, tuple[int, ...] | None], str] = {}


def _columns_json(description: bytes, formats: tuple[int, ...] | None = None) -> str:
    """``{"columns":[...]`` for a RowDescription message (cached: clients repeat shapes).

    ``formats``: the Bind's result format codes, when the rows came from an
    Execute. They override the description's, because a RowDescription answering
    a Describe of a *statement* always says text (0): the formats are only chosen
    at Bind. (asyncpg describes its statement in the same request as the Execute,
    and binds binary results: recorded as text, those columns were undecodable.)
    """
    key = (description, formats)
    cached = _describe_cache.get(key)
    if cached is not None:
        return cached
    columns = []
    fmts = []
    try:
        count = struct.unpack_from("!h", description, 5)[0]
        pos = 7
        for i in range(count):
            stop = description.index(b"\x00", pos)
            name = description[pos:stop].decode("utf-8", "replace")
            _table, _attr, type_oid, _size, _mod, fmt = struct.unpack_from("!IhIhih", description, stop + 1)
            pos = stop + 19
            if formats is not None:  # the Bind's rule: none = text, one = all columns, else one each
                fmt = (formats[0] if len(formats) == 1 else formats[i] if i < len(formats) else 0) if formats else 0
            columns.append(f'{{"name":{json_str(name)},"type":{type_oid},"format":{fmt}}}')
            fmts.append(str(fmt))
    except (struct.error, ValueError):
        return '{"columns":null,"formats":[' + ",".join(map(str, formats or ())) + "]"
    # "formats" as in docs/audit.md's example: there whether or not columns are known.
    text = '{"columns":[' + ",".join(columns) + '],"formats":[' + ",".join(fmts) + "]"
    if len(_describe_cache) > 4096:
        _describe_cache.clear()
    _describe_cache[key] = text
    return text


class Recorder:
    name = "recorder"

    def __init__(self, writer: AuditWriter, config: AuditConfig) -> None:
        self.writer = writer
        self.refuse = config.on_audit_failure == "refuse"
        self.results = config.results.enabled
        self.max_rows = config.results.max_rows
        self.max_bytes = config.results.max_bytes
        self.gateway_id = writer.gateway_id
        self.observer: Any = None  # pgwarden/observe.py: told of approval events after they are recorded

    # ------------------------------------------------------------ session events

    def authenticated(self, event: AuthEvent) -> None:
        self.writer.submit(
            make_record(
                "auth",
                event.session_id,
                {
                    "outcome": event.outcome,
                    "user": event.user,
                    "target": event.target,
                    "client": event.client_addr,
                    "tls": event.tls,
                    "method": event.method,
                    "subject": event.subject,
                    "issuer": event.issuer,
                    "roles": list(event.roles),
                    "access": event.access,
                    "reason": event.reason or None,
                },
                at=event.at,
            )
        )

    def session_started(self, info: SessionInfo) -> None:
        identity = info.extra.get("identity")
        ident: dict[str, Any] | None = None
        if identity is not None:
            ident = {
                "subject": getattr(identity, "subject", None),
                "issuer": getattr(identity, "issuer", None),
                "roles": list(getattr(identity, "roles", ()) or ()),
                "method": info.extra.get("auth_method"),
                "access": info.extra.get("access"),
            }
        record = make_record(
            "connect",
            info.id,
            {
                "gateway": self.gateway_id,
                "user": info.user,
                "target": info.target,
                "client": info.client_addr,
                "tls": info.tls,
                "application_name": info.application_name,
                "startup": info.startup_params,
                "identity": ident,
            },
        )
        summary = SessionSummary(
            id=info.id,
            started_at=record.at,
            gateway=self.gateway_id,
            user=info.user,
            subject=ident["subject"] if ident else None,
            roles=ident["roles"] if ident else [],
            target=info.target,
            client=info.client_addr,
            application_name=info.application_name,
        )
        info.extra["_recorder"] = _SessionState(summary)
        self.writer.submit(record)
        self.writer.session_started(summary)

    def session_ended(self, info: SessionInfo, reason: str) -> None:
        state: _SessionState | None = info.extra.get("_recorder")
        if state is None:
            return
        record = make_record(
            "disconnect",
            info.id,
            {
                "reason": reason,
                "statements": state.statements,
                "refused": state.refused,
                "errors": state.errors,
                "duration_s": round(time.time() - state.started, 3),
            },
        )
        summary = state.summary
        summary.ended_at = record.at
        summary.statements = state.statements
        summary.refused = state.refused
        summary.errors = state.errors
        summary.masked = state.masked
        summary.end_reason = reason
        self.writer.submit(record)
        self.writer.session_ended(summary)

    def cancelled(self, session_id: str, client: str | None, held: bool) -> None:
        self.writer.submit(make_record("cancel", session_id, {"client": client, "held": held}))

    def approval_event(self, request: Any, event: Any) -> None:
        """An approval request's event (requested, a decision, expiry, ...) as an ``approval`` record."""
        from ...store.approvals import iso

        fields = {"request": event.request, "event": event.kind, "event_at": iso(event.at)}
        fields.update(event.fields)
        self.writer.submit(make_record("approval", getattr(request, "session", None), fields))
        if self.observer is not None:
            self.observer.approval_event(request, event)

    def notice(self, session_id: str, body: bytes) -> None:
        fields = decode_error_fields(body)
        self.writer.submit(
            make_record("notice", session_id, {"severity": fields.severity, "sqlstate": fields.sqlstate,
                                               "message": fields.message})
        )

    # ------------------------------------------------------------ statements

    def decided(self, stmt: Statement, verdict: Verdict) -> Verdict:
        """The final verdict for ``stmt``: write its statement record (write-ahead)."""
        writer = self.writer
        cls = verdict.__class__
        decision = stmt.decision
        if (
            cls is Allow
            and writer.failed is None
            and (decision is None or (decision.rule is None and not decision.alerts))
            and stmt.approval is None
            and stmt.kind == "execute"
            and stmt.text is not None
        ):
            # An allowed Execute (prepared statements: the common extended case) in one template.
            info = stmt.session
            state = info.extra.get("_recorder")
            try:
                bind = read_bind(stmt)
            except ValueError:
                bind = None
            if state is not None and bind is not None:
                n = state.n = state.n + 1
                state.statements += 1
                stmt.number = n
                at = iso_time()
                types = stmt.param_types
                typed = ',"param_types":[' + ",".join(map(str, types)) + "]" if types else ""
                tail = (
                    f'"at":"{at}","type":"statement","session":"{info.id}","n":{n},"request":{stmt.request},'
                    f'"kind":"execute","protocol":"extended","text":{json_str(stmt.text)},'
                    f'"statement_name":{json_str(stmt.statement_name or "")},'
                    f'"portal_name":{json_str(stmt.portal_name or "")},"params":{decode_params(stmt, bind)}'
                    f"{typed}{_PLAIN_ALLOW_TEXT}"
                )
                info.audit_ticket = writer.submit(
                    PendingRecord(info.id, "statement", at, tail.encode("utf-8", "surrogatepass")), True
                )
                if self.results:
                    capture = stmt.capture = ResultCapture(self.max_bytes)
                    capture.formats = bind[2]
                return verdict
        if (
            cls is Allow
            and stmt.protocol == "simple"
            and writer.failed is None
            and (decision is None or (decision.rule is None and not decision.alerts))
            and stmt.approval is None
        ):
            # The common case in one template (the general path below builds the same record).
            info = stmt.session
            state = info.extra.get("_recorder")
            if state is not None and stmt.text is not None:
                n = state.n = state.n + 1
                state.statements += 1
                stmt.number = n
                at = iso_time()
                tail = (
                    f'"at":"{at}","type":"statement","session":"{info.id}","n":{n},"request":{stmt.request},'
                    f'"kind":"{stmt.kind}","protocol":"simple","text":{json_str(stmt.text)}{_PLAIN_ALLOW_TEXT}'
                )
                info.audit_ticket = writer.submit(
                    PendingRecord(info.id, "statement", at, tail.encode("utf-8", "surrogatepass")), True
                )
                if self.results:
                    stmt.capture = ResultCapture(self.max_bytes)
                return verdict
        bind = None
        if writer.failed is not None and cls is not Deny and self.refuse:
            verdict = AUDIT_DENY
            cls = Deny
        info = stmt.session
        state: _SessionState | None = info.extra.get("_recorder")
        if state is None:  # a session the recorder never saw start (a test harness)
            state = info.extra["_recorder"] = _SessionState(SessionSummary(id=info.id, started_at=iso_time()))
        state.n += 1
        state.statements += 1
        stmt.number = state.n
        at = iso_time()
        text = stmt.text
        parts = [
            f'"at":"{at}","type":"statement","session":"{info.id}","n":{state.n},"request":{stmt.request},'
            f'"kind":"{stmt.kind}","protocol":"{stmt.protocol}","text":{"null" if text is None else json_str(text)}'
        ]
        if stmt.protocol == "extended":
            parts.append(f',"statement_name":{json_str(stmt.statement_name or "")}')
            if stmt.kind == "execute":
                parts.append(f',"portal_name":{json_str(stmt.portal_name or "")}')
                try:
                    bind = read_bind(stmt)
                except ValueError:
                    bind = None
                parts.append(',"params":' + (decode_params(stmt, bind) if bind is not None else '"unreadable"'))
            if stmt.param_types:
                parts.append(',"param_types":[' + ",".join(map(str, stmt.param_types)) + "]")
        if stmt.approval is not None:
            parts.append(',"approval":' + json.dumps(stmt.approval, ensure_ascii=False, separators=(",", ":")))
        if cls is Deny:
            state.refused += 1
            parts.append(
                f',"decision":{{"action":"deny","rule":{json_str(verdict.rule or "")},'  # type: ignore[union-attr]
                f'"message":{json_str(verdict.message)},"alerts":{self._alerts(stmt)}}}}}'  # type: ignore[union-attr]
            )
        else:
            decision = stmt.decision
            action = "rewrite" if cls is Rewrite else "allow"
            rule = verdict.rule if cls is Rewrite else (decision.rule if decision is not None else None)  # type: ignore[union-attr]
            if rule is None and action == "allow" and (decision is None or not decision.alerts):
                parts.append(_PLAIN_ALLOW.decode())
            else:
                parts.append(
                    f',"decision":{{"action":"{action}","rule":{"null" if rule is None else json_str(rule)},'
                    f'"message":null,"alerts":{self._alerts(stmt)}}}}}'
                )
        record = PendingRecord(info.id, "statement", at, "".join(parts).encode("utf-8", "surrogatepass"))
        gated = cls is not Deny and writer.failed is None
        ticket = writer.submit(record, gated)
        if cls is not Deny:
            if writer.failed is None:
                info.audit_ticket = ticket
            if self.results:
                capture = stmt.capture = ResultCapture(self.max_bytes)
                if stmt.kind == "execute" and bind is not None:
                    capture.formats = bind[2]
        return verdict

    @staticmethod
    def _alerts(stmt: Statement) -> str:
        decision = stmt.decision
        if decision is None or not decision.alerts:
            return "[]"
        return "[" + ",".join(json_str(a) for a in decision.alerts) + "]"

    def completed(self, stmt: Statement) -> None:
        """The reply to ``stmt`` is complete (or it was refused or skipped): its result record."""
        info = stmt.session
        state: _SessionState | None = info.extra.get("_recorder")
        if state is None:
            return
        if stmt.number == 0:
            # Refused without evaluation (a fast-path FunctionCall): its statement record first.
            self.decided(stmt, stmt.verdict or AUDIT_DENY)
        status = stmt.status
        at = iso_time()
        tags = stmt.tags
        capture = stmt.capture
        if (
            status == "ok"
            and len(tags) == 1
            and capture is not None
            and len(capture.sets) == 1
            and capture.sha is None
            and capture.notices is None
            and capture.copy is None
            and stmt.mask is None
        ):
            # The common case (one result set, all of it kept) in one template.
            tag_json, rows = _tag(tags[0])
            description, raw, _truncated, tag_index = capture.sets[0]
            if tag_index == 0 and 0 < rows <= self.max_rows:
                head = (_columns_json(description, capture.formats) if description is not None else
                        '{"columns":null,"formats":[' + ",".join(map(str, capture.formats or ())) + "]")
                tail = (
                    f'"at":"{at}","type":"result","session":"{info.id}","n":{stmt.number},"status":"ok",'
                    f'"tags":[{tag_json}],"rows":{rows},"duration_ms":{stmt.duration_ns / 1e6:.3f},'
                    f'"txn":"{info.txn_status}","results":[{head},"tag":{tag_json},"kept_bytes":{len(raw)},'
                    f'"captured_rows":{rows},"truncated":false,"data":"{b64encode(raw).decode("ascii")}"}}],'
                    f'"sha256":"{capture.hexdigest()}","result_bytes":{capture.total}}}'
                )
                self.writer.submit(PendingRecord(info.id, "result", at, tail.encode("utf-8", "surrogatepass")))
                return
        if len(tags) == 1:
            tags_json, rows = _tag(tags[0])
        else:
            found = [_tag(t) for t in tags]
            tags_json = ",".join(f[0] for f in found)
            rows = sum(f[1] for f in found)
        parts = [
            f'"at":"{at}","type":"result","session":"{info.id}","n":{stmt.number},"status":"{status}",'
            f'"tags":[{tags_json}],"rows":{rows},"duration_ms":{stmt.duration_ns / 1e6:.3f},"txn":"{info.txn_status}"'
        ]
        if status == "denied":
            deny = stmt.verdict if isinstance(stmt.verdict, Deny) else None
            if deny is not None:
                parts.append(
                    f',"error":{{"sqlstate":"{deny.sqlstate}","message":{json_str(deny.message)},'
                    f'"rule":{json_str(deny.rule or "")}}}'
                )
        elif stmt.error is not None:
            error = stmt.error
            state.errors += 1
            detail = error.fields.get("D")
            parts.append(
                f',"error":{{"sqlstate":"{error.sqlstate}","message":{json_str(error.message)},'
                f'"detail":{"null" if detail is None else json_str(detail)}}}'
            )
        if stmt.mask is not None:
            # Evidence of masking (AC-3, SI-19): which result columns, by which rule, how many values.
            report = stmt.mask.report()
            if report:
                state.masked += 1
                parts.append(',"masked":' + json.dumps(report, separators=(",", ":"), ensure_ascii=False))
        capture = stmt.capture
        if capture is not None:
            if capture.sets:
                parts.append(self._results_json(stmt, capture, tags))
            elif capture.total:
                # COPY TO STDOUT: no result set (CopyData is not kept as rows), but the
                # digest and size of what was sent are still due (docs/audit.md).
                parts.append(f',"sha256":"{capture.hexdigest()}","result_bytes":{capture.total}')
            if capture.notices or capture.copy is not None:
                self._other_fields(capture, parts)
        parts.append("}")
        self.writer.submit(PendingRecord(info.id, "result", at, "".join(parts).encode("utf-8", "surrogatepass")))

    def _results_json(self, stmt: Statement, capture: ResultCapture, tags: list[str]) -> str:
        sets = []
        budget = self.max_rows
        for description, raw, truncated, tag_index in capture.sets:
            rows = _tag(tags[tag_index])[1] if tag_index < len(tags) else -1
            if not truncated and 0 < rows <= budget and len(capture.sets) == 1 and capture.copy is None:
                # The reply completed and nothing was cut: every message is whole, one per row.
                data, count, cut = raw, rows, False
            else:
                data, count, cut = whole_messages(raw, budget)
            budget -= count
            if description is not None:
                head = _columns_json(description, capture.formats)
            else:
                formats = capture.formats
                head = '{"columns":null,"formats":[' + ",".join(map(str, formats or ())) + "]"
            tag = json_str(tags[tag_index]) if tag_index < len(tags) else "null"
            # kept_bytes is the size of ``data``, not of the raw bytes held: those can
            # run past max_rows (up to max_bytes), so len(raw) overstated what was kept.
            sets.append(
                f'{head},"tag":{tag},"kept_bytes":{len(data)},"captured_rows":{count},'
                f'"truncated":{"true" if (truncated or cut) else "false"},'
                f'"data":"{b64encode(data).decode("ascii")}"}}'
            )
        # No row at all (a SELECT returning nothing, or one that failed after its
        # RowDescription) leaves ``sha`` unset: the digest of nothing, not an
        # AttributeError that lost the whole result record.
        digest = capture.hexdigest() or _EMPTY_SHA256
        return f',"results":[{",".join(sets)}],"sha256":"{digest}","result_bytes":{capture.total}'

    @staticmethod
    def _other_fields(capture: ResultCapture, parts: list[str]) -> None:
        if capture.notices:
            notices = []
            for body in capture.notices:
                fields = decode_error_fields(body)
                notices.append(
                    f'{{"severity":{json_str(fields.severity)},"sqlstate":"{fields.sqlstate}",'
                    f'"message":{json_str(fields.message)}}}'
                )
            parts.append(',"notices":[' + ",".join(notices) + "]")
        if capture.copy == "in":
            parts.append(f',"copy":{{"direction":"in","bytes":{capture.copy_in},"messages":{capture.copy_in_messages}}}')
        elif capture.copy == "out":
            parts.append(
                f',"copy":{{"direction":"out","bytes":{capture.copy_out},"messages":{capture.copy_out_messages}}}'
            )
