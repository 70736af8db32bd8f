"""One streaming pass over the period's records: counters, daily totals and bounded samples.

Why counters and not records: a trail may hold millions of records, and the
report must be built on the gateway's host without growing with it. The
collector keeps only named counters (a ``Counter``), one row per day of the
period, a few sets capped at ``_MAX_DISTINCT`` and at most ``max_samples``
example records per category. Result bodies can be large (captured rows), so
they are only parsed as JSON when they carry something the report reads.

Counter names are ``<area>.<what>`` (``auth.ok``, ``deny.guardrails``,
``disconnect.expired``...); :mod:`controls` picks the ones each control shows.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import Any

__all__ = ["Collector", "deny_source", "end_reason", "VERDICTS"]

VERDICTS = ("allow", "deny", "rewrite", "held")
_MAX_DISTINCT = 10_000  # distinct subjects / users / gateways remembered
_SUMMARY = 240  # characters of a sample's summary
_AT = re.compile(rb"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
_STATUS = re.compile(rb'"status":"([a-z_]+)"')
# Leading keywords of statements that change schema, permissions or server state: at the start
# of the text or of any statement after a ';' (``COMMIT; DROP TABLE t`` is privileged too).
# Quoted strings and identifiers are blanked first (see _privileged), so a ';' inside one
# starts nothing.
_PRIVILEGED = re.compile(
    r"(?:^|;)\s*(?:/\*.*?\*/\s*)*(create|alter|drop|truncate|grant|revoke|comment|reindex|cluster|vacuum|security\s+label|"
    r"reassign|refresh\s+materialized)\b",
    re.IGNORECASE | re.DOTALL,
)
# Refusals of input pgwarden could not analyse (pgwarden.policy.analysis.error_rule and friends).
_INVALID_INPUT = frozenset({"guardrails.syntax", "guardrails.too_complex", "guardrails.too_long", "guardrails.encoding",
                            "guardrails.unparseable", "masking.unparsed"})
_QUOTED = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"")
_LINE_COMMENT = re.compile(r"--[^\n]*")
_LOOPBACK = ("127.", "::1", "[::1]", "local socket", "localhost")

#: Fields a record of each type must carry to say who, what, when, where and outcome (AU-3).
REQUIRED = {
    "connect": ("gateway", "user", "target", "client"),
    "auth": ("outcome", "user", "client", "method"),
    "statement": ("n", "kind", "text", "decision"),
    "result": ("n", "status"),
    "disconnect": ("reason",),
    "approval": ("request", "event"),
    "alert": ("kind", "severity"),
}


def deny_source(rule: str | None) -> str:
    """Which part of pgwarden refused a statement, from its rule name."""
    rule = rule or ""
    for prefix, source in (("masking", "masking"), ("approvals", "approvals"), ("audit", "audit"),
                           ("identity", "identity"), ("pipeline", "pipeline")):
        if rule.startswith(prefix + ".") or rule == prefix:
            return source
    return "guardrails"  # pack rules (dangerous.*, read-only.*), guardrails.*, and the config's own rules


def end_reason(reason: str | None) -> str:
    """A disconnect reason (free text from the gateway) as a category AC-12 can count.

    Quoted parts are dropped first: they are names from outside (``subject 'x' revoked``), and
    a subject called "maximum session" must not turn a revocation into a session limit."""
    text = _QUOTED.sub("''", reason or "").lower()
    if "maximum session" in text:
        return "max_session"
    if "expired" in text:
        return "expired"
    if "revoked" in text:
        return "revoked"
    if "killed" in text or "administrator" in text:
        return "killed"
    if "idle" in text:
        return "idle"
    if "shut" in text or "drain" in text:
        return "shutdown"
    return "client"


# Characters that change how the text around them is displayed without showing themselves: bidi
# embeddings/overrides/isolates (U+202E can make "DROP" read as "PORD"), zero-width and invisible
# characters, C0/C1 controls. In a sample they are shown as <U+XXXX> so what an auditor reads is
# what the client sent.
INVISIBLE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f"
                       "\u200b-\u200f\u202a-\u202e\u2060-\u206f\u3164\ufe00-\ufe0f\ufeff\uffa0\ufff9-\ufffb]")


def visible(text: str) -> str:
    """``text`` with invisible and direction-changing characters spelled out as ``<U+XXXX>``."""
    return INVISIBLE.sub(lambda m: f"<U+{ord(m.group()):04X}>", text)


def _clip(text: object, limit: int = _SUMMARY) -> str:
    s = str(text) if text is not None else ""
    if len(s) > 4 * limit:
        s = s[: 4 * limit]  # a 1 MB statement is not split and joined whole to keep 240 characters of it
    s = visible(" ".join(s.split()))
    return s if len(s) <= limit else s[: limit - 1] + "\u2026"


def _name(value: object, limit: int = 64) -> str:
    """A record value used inside a counter name: one visible line, bounded."""
    return _clip(value, limit).replace(" ", "_") or "none"



def _privileged(text: str) -> bool:
    """Whether any statement of ``text`` starts with a privileged keyword (quotes and ``--``
    comments blanked)."""
    return _PRIVILEGED.search(_LINE_COMMENT.sub("", _QUOTED.sub("''", text))) is not None

class Collector:
    """Feed records (in seq order) with :meth:`add`; read ``counts``, ``daily``, ``samples``."""

    def __init__(self, max_samples: int = 5) -> None:
        self.max_samples = max_samples
        self.counts: Counter[str] = Counter()
        self.by_type: Counter[str] = Counter()
        self.daily: dict[str, list[int]] = {}
        self.samples: dict[str, list[dict[str, Any]]] = {}
        self.subjects: set[str] = set()
        self.static_users: set[str] = set()
        self.gateways: set[str] = set()
        self.first_seq: int | None = None
        self.last_seq: int | None = None
        self.first_at: str | None = None
        self.last_at: str | None = None

    # ------------------------------------------------------------------ helpers

    def _sample(self, category: str, seq: int, at: str, rtype: str, session: str | None, summary: str) -> None:
        found = self.samples.setdefault(category, [])
        if len(found) < self.max_samples:
            found.append({"seq": seq, "at": at, "type": rtype, "session": session, "summary": _clip(summary)})

    def _remember(self, bucket: set[str], value: object) -> None:
        if isinstance(value, str) and value and len(bucket) < _MAX_DISTINCT:
            bucket.add(_clip(value, 128))

    # ------------------------------------------------------------------ input

    def add(self, seq: int, at: str, rtype: str, session: str | None, body: bytes) -> None:
        c = self.counts
        self.by_type[rtype] += 1
        if self.first_seq is None:
            self.first_seq, self.first_at = seq, at
        self.last_seq, self.last_at = seq, at
        if not _AT.match(at.encode()):
            c["time.nonconforming"] += 1
        if rtype == "result" and b'"masked":' not in body and b'"error":' not in body:
            m = _STATUS.search(body, 0, 400)
            c["result." + (m.group(1).decode() if m else "unknown")] += 1
            self._sample("result", seq, at, rtype, session, f"result {m.group(1).decode() if m else '?'}")
            return
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            c["records.unreadable"] += 1
            return
        if not isinstance(data, dict):
            c["records.unreadable"] += 1
            return
        missing = [k for k in REQUIRED.get(rtype, ()) if k not in data]
        if missing:
            c["content.incomplete"] += 1
            self._sample("incomplete", seq, at, rtype, session, f"{rtype} record lacks {', '.join(missing)}")
        handler = getattr(self, "_" + rtype, None)
        if handler is not None:
            handler(data, seq, at, session)

    # ------------------------------------------------------------------ per type

    def _connect(self, d: dict, seq: int, at: str, session: str | None) -> None:
        c = self.counts
        c["sessions"] += 1
        self._remember(self.gateways, d.get("gateway"))
        client = str(d.get("client") or "")
        loopback = client.startswith(_LOOPBACK)
        if d.get("tls"):
            c["tls.sessions"] += 1
            c["tls.version." + _name(str(d["tls"]).split()[0] if str(d["tls"]).split() else d["tls"])] += 1
            self._sample("tls", seq, at, "connect", session, f"{d.get('user')}@{d.get('target')} from {client} over {d['tls']}")
        else:
            c["tls.plaintext"] += 1
            c["tls.plaintext_loopback" if loopback else "tls.plaintext_remote"] += 1
            self._sample("plaintext", seq, at, "connect", session, f"{d.get('user')}@{d.get('target')} from {client} without TLS")
        ident = d.get("identity")
        if isinstance(ident, dict):
            c["sessions.identity"] += 1
            c["sessions.access." + _name(ident.get("access") or "none")] += 1
            self._remember(self.subjects, ident.get("subject"))
            who = f"{ident.get('subject')} ({', '.join(map(str, ident.get('roles') or [])) or 'no role'})"
        else:
            c["sessions.static"] += 1
            c["sessions.access.static"] += 1
            self._remember(self.static_users, d.get("user"))
            who = f"static user {d.get('user')}"
        self._sample("connect", seq, at, "connect", session,
                     f"{who} -> target {d.get('target')} from {client} via gateway {d.get('gateway')}")

    def _auth(self, d: dict, seq: int, at: str, session: str | None) -> None:
        c = self.counts
        outcome = "ok" if d.get("outcome") == "ok" else "refused"
        method = _name(d.get("method") or "unknown")
        c["auth." + outcome] += 1
        c[f"auth.{outcome}.{method}"] += 1
        who = d.get("subject") or d.get("user")
        text = f"{outcome}: {who} by {method} for {d.get('target')} from {d.get('client')}"
        if outcome == "refused":
            text += f" ({d.get('reason')})"
            if "not granted" in str(d.get("reason") or ""):
                c["auth.refused.not_granted"] += 1
            if "revoked" in str(d.get("reason") or ""):
                c["auth.refused.revoked"] += 1
        self._sample("auth_" + outcome, seq, at, "auth", session, text)

    def _statement(self, d: dict, seq: int, at: str, session: str | None) -> None:
        c = self.counts
        decision = d.get("decision") if isinstance(d.get("decision"), dict) else {}
        action = str(decision.get("action") or "allow")
        rule = decision.get("rule")
        text = d.get("text")
        verdict = "held" if isinstance(d.get("approval"), dict) else action if action in VERDICTS else "allow"
        c["statements"] += 1
        c["statements." + verdict] += 1
        day = self.daily.setdefault(at[:10], [0, 0, 0, 0])
        day[VERDICTS.index(verdict)] += 1
        kind = _name(d.get("kind") or "query")
        c["statements.kind." + kind] += 1
        # The extended protocol records a Parse and then each Execute of the same text: a DDL
        # statement is counted once, at its Execute (or at its Parse when the Parse was refused).
        privileged = (isinstance(text, str) and not (kind == "parse" and action != "deny")
                      and _privileged(text))
        if privileged:
            c["privileged"] += 1
            c["privileged." + ("deny" if action == "deny" else "allow")] += 1
            self._sample("privileged", seq, at, "statement", session, f"{action}: {text}")
        if decision.get("alerts"):
            c["statements.alerted"] += 1
        if verdict == "held":
            approval = d["approval"]
            c["held." + _name(approval.get("status") or "unknown")] += 1
            self._sample("held", seq, at, "statement", session,
                         f"approval {approval.get('request')} ({approval.get('status')}): {text}")
        elif action == "deny":
            source = deny_source(rule)
            c["deny." + source] += 1
            if str(rule or "") in _INVALID_INPUT or str(rule or "").startswith("guardrails.unknown"):
                c["deny.unparsable"] += 1
            if str(rule or "") in ("dangerous.exfiltration", "dangerous.copy_program", "dangerous.server_files"):
                c["deny.exfiltration"] += 1
            self._sample("deny_" + source, seq, at, "statement", session, f"deny by {rule}: {text}")
        elif action == "rewrite":
            self._sample("rewrite", seq, at, "statement", session, f"rewrite by {rule}: {text}")
        else:
            self._sample("allow", seq, at, "statement", session, f"allow: {text}")

    def _result(self, d: dict, seq: int, at: str, session: str | None) -> None:
        c = self.counts
        status = str(d.get("status") or "unknown")
        c["result." + _name(status)] += 1
        masked = d.get("masked")
        if isinstance(masked, list) and masked:
            c["masked.results"] += 1
            values = sum(int(m.get("values") or 0) for m in masked if isinstance(m, dict))
            c["masked.values"] += values
            cols = ", ".join(f"{m.get('column')} ({m.get('strategy')}{', rule ' + str(m['rule']) if m.get('rule') else ''})"
                             for m in masked if isinstance(m, dict))
            self._sample("masked", seq, at, "result", session, f"statement {d.get('n')}: masked {cols}")
        error = d.get("error")
        if isinstance(error, dict) and status == "error":
            self._sample("error", seq, at, "result", session, f"error {error.get('sqlstate')}: {error.get('message')}")

    def _disconnect(self, d: dict, seq: int, at: str, session: str | None) -> None:
        kind = end_reason(d.get("reason"))
        self.counts["disconnect." + kind] += 1
        if kind not in ("client", "shutdown"):
            self._sample("ended", seq, at, "disconnect", session, f"{kind}: {d.get('reason')}")

    def _cancel(self, d: dict, seq: int, at: str, session: str | None) -> None:
        self.counts["cancel"] += 1

    def _approval(self, d: dict, seq: int, at: str, session: str | None) -> None:
        event = _name(d.get("event") or "unknown")
        self.counts["approval." + event] += 1
        who = d.get("requester") or d.get("reviewer") or d.get("by") or ""
        what = d.get("statement") or d.get("comment") or d.get("reason") or ""
        self._sample("approval", seq, at, "approval", session, f"{event} {d.get('request')} {who}: {what}")

    def _alert(self, d: dict, seq: int, at: str, session: str | None) -> None:
        c = self.counts
        c["alerts"] += 1
        c["alerts.kind." + _name(d.get("kind") or "unknown")] += 1
        c["alerts.severity." + _name(d.get("severity") or "unknown")] += 1
        count = d.get("count")
        c["alerts.events"] += count if isinstance(count, int) and count > 0 else 1
        self._sample("alert", seq, at, "alert", session,
                     f"[{d.get('severity')}] {d.get('kind')}: {d.get('title') or ''}")

    def _audit(self, d: dict, seq: int, at: str, session: str | None) -> None:
        c = self.counts
        event = _name(d.get("event") or "unknown")
        c["audit." + event] += 1
        self._remember(self.gateways, d.get("gateway"))
        dropped = d.get("dropped")
        if isinstance(dropped, int) and dropped > 0:
            c[f"audit.{event}.dropped"] += dropped
        summary = f"{event}" + (f": {d.get('error')}" if d.get("error") else "") + (f" ({dropped} dropped)" if dropped else "")
        self._sample("audit", seq, at, "audit", session, summary)

    # ------------------------------------------------------------------ output

    def statements(self) -> dict[str, int]:
        return {v: self.counts["statements." + v] for v in VERDICTS}

    def daily_rows(self, first_day: str, last_day: str, max_days: int = 3700) -> list[dict[str, Any]]:
        """One row per day of the period (days without statements included, so a chart shows gaps)."""
        from datetime import date, timedelta

        rows: list[dict[str, Any]] = []
        try:
            day, last = date.fromisoformat(first_day), date.fromisoformat(last_day)
        except ValueError:
            day, last = None, None
        if day is not None and last is not None and (last - day).days < max_days:
            while day <= last:
                key = day.isoformat()
                counts = self.daily.get(key, [0, 0, 0, 0])
                rows.append({"date": key, **dict(zip(VERDICTS, counts))})
                day += timedelta(days=1)
            return rows
        return [{"date": k, **dict(zip(VERDICTS, v))} for k, v in sorted(self.daily.items())]
