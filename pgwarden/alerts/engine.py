"""The alert engine: turns what the gateway observes into alerts, and alerts into messages.

It is an :class:`~pgwarden.observe.Observer`, so its hooks run on the data
path, in the gateway's loop: each one compares, counts and at most builds an
alert and hands it to sinks that only queue. Nothing here awaits or does I/O
on that path; delivery, the de-duplication clock, the rate-limit summaries
and the periodic chain verification run in background tasks.

Every alert that leaves the engine (a first occurrence, a de-duplication
summary, a rate-limit summary) is also written to the audit trail as an
``alert`` record, naming the sinks it was queued to, so the trail says what
humans were told. What the sinks then could not deliver is reported in the
log and, batched, as an ``audit`` record with event ``alerts_dropped``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from ..identity.reasons import REVOKED, refusal_code
from ..observe import Observer
from ..session.verdict import Deny
from ..store.records import make_record
from .limits import Deduper, FailureCounter, Suppressed
from .model import Alert, one_line, short_name
from .sinks import AlertSink, build_sinks
from .verifier import run_verification, spec_for

__all__ = ["AlertEngine", "ExfiltrationAlertEngine", "make_engine"]

log = logging.getLogger("pgwarden.alerts")

TICK = 0.25  # seconds between de-duplication / rate-limit checks
STATEMENT_CHARS = 300
#: Refusals that are not failed credentials (a scanner, a client that went away, the throttle itself).
_NOT_CREDENTIALS = frozenset({"client_gone", "bad_startup", "tls_required", "protocol_violation", "throttled"})
_ROW_TAGS = ("SELECT ", "FETCH ", "COPY ")
#: Refusals the pipeline reported to ``decided``, per session, until they complete (bounded).
_DENIED = "_alerts_denied"
_MAX_DENIED = 10000
REASON_CHARS = 500


def _clip(text: str | None, limit: int = STATEMENT_CHARS) -> str:
    text = (text or "").strip()
    return text if len(text) <= limit else text[:limit].rstrip() + "…"


def _host(client: str | None) -> str:
    """``ip:port`` without the port (IPv6 addresses keep their colons)."""
    if not client or ":" not in client or client == "local socket":
        return client or "?"
    return client.rsplit(":", 1)[0]


class _Exfil:
    """A session's thresholds and what it has read so far (in ``SessionInfo.extra``)."""

    __slots__ = ("rows_limit", "bytes_limit", "rows", "rows_alerted", "bytes_alerted")

    def __init__(self, rows_limit: int | None, bytes_limit: int | None) -> None:
        self.rows_limit = rows_limit
        self.bytes_limit = bytes_limit
        self.rows = 0
        self.rows_alerted = self.bytes_alerted = False


class AlertEngine(Observer):
    drop_report_every = 10.0  # seconds between alerts_dropped records (at most)

    def __init__(self, config: Any, writer: Any = None, gateway_id: str = "", *,
                 clock: Callable[[], float] = time.time, backoff: float = 1.0) -> None:
        self.config = config
        self.alerts = config.alerts
        self.writer = writer
        self.gateway_id = gateway_id
        self.clock = clock
        self.deduper = Deduper(self.alerts.dedupe_window, clock)
        af = self.alerts.auth_failures
        self.failures = FailureCounter(af.threshold, af.window, clock) if af.threshold else None
        self.exfil = self.alerts.exfiltration if self.alerts.exfiltration.active else None
        self.sinks, self._runners = build_sinks(self.alerts.effective_sinks, clock, backoff=backoff)
        self.raised: Counter[str] = Counter()
        self._reported: dict[str, int] = {}
        self._last_report = 0.0
        self._verified = 0  # the last seq the periodic verification covered
        self._tasks: list[asyncio.Task] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: int | None = None
        self._stopped = False

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        for runner in self._runners:
            await runner.start()
        self._last_report = self.clock()
        self._tasks.append(asyncio.create_task(self._ticker(), name="alerts-ticker"))
        if self.alerts.verify_every and self.writer is not None:
            self._tasks.append(asyncio.create_task(self._verify_loop(), name="alerts-verify"))
        log.info("alerts: %d sink(s): %s", len(self.sinks), ", ".join(s.name for s in self.sinks),
                 extra={"event": "alerts_started"})

    async def stop(self) -> None:
        """Send what is pending (summaries), give deliveries a moment, record what was lost."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        for alert in self.deduper.flush():
            self._dispatch(alert)
        self._limits(force=True)
        self._stopped = True
        for runner in self._runners:
            try:
                await runner.stop()
            except Exception:
                log.exception("alert sink %s did not stop cleanly", getattr(runner, "name", "?"))
        self._report_drops()

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            try:
                for alert in self.deduper.due():
                    self._dispatch(alert)
                self._limits()
                if self.clock() - self._last_report >= self.drop_report_every:
                    self._report_drops()
            except Exception:
                log.exception("alert housekeeping failed")

    # ------------------------------------------------------------ raising

    def raise_alert(self, kind: str, key: str, title: str, text: str, **facts: Any) -> None:
        """Raise an alert (any thread; hooks call it on the loop). Never raises."""
        try:
            now = self.clock()
            alert = Alert(kind, self.alerts.severity_of(kind), one_line(title), one_line(text), key=key,
                          first_at=now, last_at=now, **facts)
            if alert.session and not alert.sessions:
                alert.sessions = [alert.session]
            if self._loop is not None and threading.get_ident() != self._thread:
                self._loop.call_soon_threadsafe(self._offer, alert)
            else:
                self._offer(alert)
        except Exception:
            log.exception("alert %s not raised", kind)

    def _offer(self, alert: Alert) -> None:
        if self._stopped:
            return
        first = self.deduper.offer(alert)
        if first is not None:
            self._dispatch(first)

    def _dispatch(self, alert: Alert) -> None:
        self.raised[f"{alert.kind}/{alert.severity}"] += 1
        routed = []
        for sink in self.sinks:
            if not sink.wants(alert):
                continue
            if sink.limiter is not None and not sink.limiter.allow(alert):
                continue  # counted; summarised when the period ends
            self._send(sink, alert)
            routed.append(sink.name)
        self._record(alert, routed)

    def _send(self, sink: AlertSink, alert: Alert) -> None:
        try:
            sink.send(alert, self.gateway_id)
        except Exception:
            log.exception("alert sink %s failed to queue alert %s", sink.name, alert.id)

    def _limits(self, force: bool = False) -> None:
        for sink in self.sinks:
            held = sink.limiter.due(force) if sink.limiter is not None else None
            if held is not None:
                alert = self._suppressed(sink.name, held)
                self.raised[f"{alert.kind}/{alert.severity}"] += 1
                self._send(sink, alert)
                self._record(alert, [sink.name])

    def _suppressed(self, sink: str, held: Suppressed) -> Alert:
        kinds = ", ".join(f"{k} ×{n}" for k, n in sorted(held.kinds.items()))
        return Alert(
            "alerts_suppressed", held.severity, f"{held.count} alert(s) held back by the rate limit of {sink}",
            f"Sink {sink} reached its rate limit; not sent: {kinds}. They are in the audit trail as alert records.",
            key=sink, count=held.count, first_at=held.first, last_at=held.last, summary=True,
            details={"sink": sink, "kinds": dict(held.kinds)},
        )

    def _record(self, alert: Alert, sinks: list[str]) -> None:
        if self.writer is None:
            return
        fields = alert.as_dict(self.gateway_id)
        del fields["session"]  # the record's common key
        fields["sinks"] = sinks
        try:
            self.writer.submit(make_record("alert", alert.session, fields))
        except Exception:
            log.exception("alert %s not recorded", alert.id)

    def _report_drops(self) -> None:
        self._last_report = self.clock()
        lost: dict[str, int] = {}
        for sink in self.sinks:
            s = sink.stats()
            total = s["failed"] + s["dropped"]
            new = total - self._reported.get(sink.name, 0)
            if new > 0:
                lost[sink.name] = new
                self._reported[sink.name] = total
        if not lost:
            return
        log.warning("alerts: %d alert(s) not delivered (%s)", sum(lost.values()),
                    ", ".join(f"{k}: {v}" for k, v in lost.items()), extra={"event": "alerts_dropped"})
        if self.writer is not None:
            self.writer.submit(make_record("audit", None, {"event": "alerts_dropped", "gateway": self.gateway_id,
                                                           "dropped": sum(lost.values()), "sinks": lost}))

    def stats(self) -> dict[str, Any]:
        """``{"raised": {"kind/severity": n}, "sinks": {name: {delivered, failed, dropped, queued}}}``."""
        return {"raised": dict(self.raised), "sinks": {s.name: s.stats() for s in self.sinks},
                "deduplicated": self.deduper.suppressed,
                "rate_limited": {s.name: s.limiter.suppressed for s in self.sinks if s.limiter is not None}}

    # ------------------------------------------------------------ hooks (data path)

    @staticmethod
    def _who(info: Any) -> tuple[str | None, str]:
        identity = info.extra.get("identity")
        subject = getattr(identity, "subject", None) if identity is not None else None
        return subject, short_name(subject or info.user)

    def decided(self, stmt: Any, verdict: Any) -> None:
        if verdict.__class__ is not Deny:
            decision = stmt.decision
            if decision is not None and decision.alerts:
                self._flagged(stmt, decision)
            return
        info = stmt.session
        denied = info.extra.get(_DENIED)
        if denied is None:
            denied = info.extra[_DENIED] = set()
        elif len(denied) >= _MAX_DENIED:
            denied.clear()  # completions never came (cannot happen in a live session): stay bounded
        denied.add(stmt)  # completed() knows this refusal was seen here
        self._refused(stmt, verdict)
        decision = stmt.decision
        if decision is not None and decision.alerts:
            # A rule asked to hear of this statement and something refused it (a later rule,
            # masking, an approval denied, the trail being down): the attempt still counts. The
            # refusing rule's own flag is the statement_blocked alert above.
            self._flagged(stmt, decision, skip=verdict.rule)

    def completed(self, stmt: Any) -> None:
        """Refusals the pipeline never reported to ``decided``: the relay refuses some statements
        itself (a FunctionCall, an Execute of a portal being re-bound, a stage that raised, a
        Rewrite at Execute). The client got an error all the same, so they raise alerts too.
        Called for every statement: one class check for the ones that were not refused."""
        verdict = stmt.verdict
        if verdict is None or verdict.__class__ is not Deny:
            return
        denied = stmt.session.extra.get(_DENIED)
        if denied is not None and stmt in denied:
            denied.discard(stmt)
            return
        self._refused(stmt, verdict)

    def _refused(self, stmt: Any, verdict: Any) -> None:
        rule = verdict.rule or ""
        if rule.startswith(("audit.", "approvals.")) or rule == "client.cancel":
            # The store's and the approvals' own alerts say it better; a client that cancelled
            # its own held statement was refused nothing.
            return
        info = stmt.session
        subject, who = self._who(info)
        masking = rule.startswith("masking.")
        what = "Masking refused a statement" if masking else "Statement blocked"
        self.raise_alert(
            "masking_refused" if masking else "statement_blocked", f"{rule}|{who}|{info.target}",
            f"{what} ({rule or 'no rule'})",
            f"{who} from {_host(info.client_addr)} on {info.target}: {verdict.message} — "
            f"{_clip(stmt.text) or '(' + str(stmt.kind) + ')'}",
            session=info.id, subject=subject, user=info.user, client=info.client_addr, target=info.target,
            rule=verdict.rule, details={"statement": _clip(stmt.text), "sqlstate": verdict.sqlstate,
                                        "message": verdict.message},
        )

    def _flagged(self, stmt: Any, decision: Any, skip: str | None = None) -> None:
        info = stmt.session
        subject, who = self._who(info)
        for rule in decision.alerts:
            if rule == skip:
                continue
            self.raise_alert(
                "rule_alert", f"{rule}|{who}|{info.target}", f"Guardrail rule {rule} flagged a statement",
                f"{who} from {_host(info.client_addr)} on {info.target} ({decision.action}): {_clip(stmt.text)}",
                session=info.id, subject=subject, user=info.user, client=info.client_addr, target=info.target,
                rule=rule, details={"statement": _clip(stmt.text), "action": decision.action},
            )

    def authenticated(self, event: Any) -> None:
        if event.outcome != "refused":
            return
        # The user name comes from the startup packet (up to 10 kB, any text): bounded in keys,
        # titles and facts, and never trusted to classify the refusal.
        code = refusal_code(event.reason, event.user)
        host = _host(event.client_addr)
        user = short_name(event.user)
        reason = _clip(event.reason, REASON_CHARS)
        facts = dict(session=event.session_id, subject=event.subject, user=short_name(event.user, 256),
                     client=event.client_addr, target=event.target)
        if code == REVOKED:
            who = short_name(event.subject) or user
            self.raise_alert("revoked_identity", f"{who}|{host}", f"Revoked credential used by {who}",
                             f"A revoked token or API key tried to log in as {user} from {host}: {reason}",
                             details={"reason": reason, "code": code}, **facts)
        if self.failures is None or code in _NOT_CREDENTIALS:
            return
        threshold, window = self.failures.threshold, self.failures.window
        by_client = self.failures.add(f"client:{host}")
        by_user = self.failures.add(f"user:{user}")
        if by_client >= threshold:
            key, what = f"client:{host}", f"from {host}"
        elif by_user >= threshold:
            key, what = f"user:{user}", f"for user {user}"
        else:
            return
        self.raise_alert("auth_failures", key, f"{threshold}+ failed logins {what}",
                         f"At least {threshold} failed logins {what} within {window:g} s; latest as {user} "
                         f"from {host}: {reason}",
                         details={"threshold": threshold, "window_s": window, "code": code, "reason": reason},
                         **facts)

    def approval_event(self, request: Any, event: Any) -> None:
        if event.kind == "requested":
            self.raise_alert(
                "approval_requested", request.id, f"Approval requested by {request.requester} on {request.target}",
                f"{request.requester} asks to run on {request.target} (rule {request.rule}): "
                f"{_clip(request.statement)} — request {request.id}",
                session=request.session, subject=request.requester, target=request.target, rule=request.rule,
                details={"request": request.id, "mode": request.mode, "statement": _clip(request.statement)},
            )
        elif event.kind == "deny":
            reviewer = event.fields.get("reviewer") or "?"
            comment = event.fields.get("comment") or ""
            self.raise_alert(
                "approval_denied", request.id, f"Approval request {request.id} denied by {reviewer}",
                f"{reviewer} denied {request.requester}'s request on {request.target}"
                + (f" (“{_clip(comment, 200)}”)" if comment else "") + f": {_clip(request.statement)}",
                session=request.session, subject=request.requester, target=request.target, rule=request.rule,
                details={"request": request.id, "reviewer": reviewer, "comment": comment},
            )

    def audit_failed(self, error: str) -> None:
        refusing = self.writer is None or getattr(self.writer, "refuse_on_failure", True)
        self.raise_alert(
            "audit_store_unavailable", "store", "The audit trail cannot be written",
            f"The audit store failed ({error}); new statements are "
            + ("refused until it is writable again." if refusing else "forwarded UNRECORDED (allow_and_alert)."),
            details={"error": error, "statements": "refused" if refusing else "forwarded"},
        )

    def audit_recovered(self, down_seconds: float) -> None:
        self.raise_alert("audit_store_recovered", "store", "The audit trail is writable again",
                         f"Recording resumed after {down_seconds:.1f} s.", details={"down_s": round(down_seconds, 3)})

    # ------------------------------------------------------------ verification

    async def _verify_loop(self) -> None:
        while True:
            await asyncio.sleep(self.alerts.verify_every)
            await self.verify_now()

    async def verify_now(self) -> dict[str, Any] | None:
        """Verify the records appended since the last run (in a child process); alert on problems."""
        if self.writer is None:
            return None
        start = self._verified + 1
        try:
            report = await run_verification(spec_for(self.config, start))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("alerts: the audit verification could not run: %s", exc, extra={"event": "verify_failed"})
            return None
        if not report.get("ok", False):
            counts = report.get("counts") or {}
            summary = ", ".join(f"{k} ×{n}" for k, n in counts.items()) or "problems"
            problems = report.get("problems") or []
            first = "; ".join(f"{p['kind']} at {p['seq']}: {p['detail']}" for p in problems[:3])
            self.raise_alert(
                "audit_verification_failed", f"from:{start}", f"Audit trail verification failed: {summary}",
                f"Verifying records {start}..{report.get('last_seq')} found {summary}. {first}. "
                "Run `pgwarden audit verify` for the full report.",
                details={"from_seq": start, "to_seq": report.get("last_seq"), "counts": counts,
                         "problems": problems[:10]},
            )
        else:
            log.info("alerts: audit records %d..%s verify", start, report.get("last_seq"),
                     extra={"event": "verify_ok"})
        if report.get("last_seq"):
            self._verified = max(self._verified, int(report["last_seq"]))
        return report


class ExfiltrationAlertEngine(AlertEngine):
    """The engine plus the per-session row and byte accounting, used only when thresholds are set."""

    def session_started(self, info: Any) -> None:
        if self.exfil is None:
            return
        ex = self.exfil
        identity = info.extra.get("identity")
        names = list(getattr(identity, "roles", ()) or ()) if identity is not None else [f"user:{info.user}"]
        entries = [ex.roles[n] for n in names if n in ex.roles]
        rows = [t.rows for t in entries if t.rows]
        size = [t.bytes for t in entries if t.bytes]
        limits = _Exfil(min(rows) if rows else ex.rows, min(size) if size else ex.bytes)
        if limits.rows_limit or limits.bytes_limit:
            info.extra["_alerts_exfil"] = limits

    def completed(self, stmt: Any) -> None:
        AlertEngine.completed(self, stmt)
        info = stmt.session
        state: _Exfil | None = info.extra.get("_alerts_exfil")
        if state is None:
            return
        for tag in stmt.tags:
            if tag.startswith(_ROW_TAGS):
                try:
                    state.rows += int(tag.rsplit(" ", 1)[1])
                except ValueError:
                    pass
        if state.rows_limit and not state.rows_alerted and state.rows > state.rows_limit:
            state.rows_alerted = True
            self._exfiltration(stmt, "rows", state.rows, state.rows_limit)
        if state.bytes_limit and not state.bytes_alerted and info.bytes_from_server > state.bytes_limit:
            state.bytes_alerted = True
            self._exfiltration(stmt, "bytes", info.bytes_from_server, state.bytes_limit)

    def _exfiltration(self, stmt: Any, unit: str, seen: int, limit: int) -> None:
        info = stmt.session
        subject, who = self._who(info)
        self.raise_alert(
            "exfiltration", f"{info.id}|{unit}", f"Possible exfiltration: {who} read {seen} {unit}",
            f"Session {info.id} of {who} from {_host(info.client_addr)} on {info.target} has read {seen} {unit}, "
            f"over its threshold of {limit}; latest statement: {_clip(stmt.text)}",
            session=info.id, subject=subject, user=info.user, client=info.client_addr, target=info.target,
            details={"unit": unit, "read": seen, "threshold": limit, "statement": _clip(stmt.text)},
        )


def make_engine(config: Any, writer: Any = None, gateway_id: str = "", **kw: Any) -> AlertEngine:
    """The engine for ``config`` (with the exfiltration hooks only when thresholds are configured)."""
    cls = ExfiltrationAlertEngine if config.alerts.exfiltration.active else AlertEngine
    return cls(config, writer, gateway_id, **kw)
