"""What an alert is: its kind, severity and the facts a responder needs.

Kept free of I/O and of the config so the config, the engine, the sinks and
readers of the trail can all share one vocabulary (docs/alerts.md lists the
kinds and what raises each). ``SEVERITIES`` is ordered: a sink's
``min_severity`` keeps an alert when its index is at least the minimum's.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field, replace
from typing import Any

from ..store.records import iso_time

__all__ = ["Alert", "KINDS", "SEVERITIES", "SYSLOG_SEVERITY", "severity_rank", "MAX_SESSIONS",
           "one_line", "short_name"]

SEVERITIES = ("info", "warning", "high", "critical")

#: Every alert kind and its default severity (``alerts.severity`` overrides it per kind).
KINDS: dict[str, str] = {
    "statement_blocked": "warning",  # a policy stage refused a statement
    "masking_refused": "warning",  # masking refused a statement (rule masking.*)
    "rule_alert": "warning",  # a guardrail rule with action: alert (or alert: true) matched
    "auth_failures": "high",  # failed logins from one client address or for one user over the threshold
    "revoked_identity": "high",  # a revoked token or API key tried to log in
    "approval_requested": "info",  # a statement waits for a reviewer
    "approval_denied": "warning",  # a reviewer denied a request
    "exfiltration": "high",  # a session read more rows or bytes than its role's threshold
    "audit_store_unavailable": "critical",  # the audit trail cannot be written
    "audit_store_recovered": "info",  # it can again
    "audit_verification_failed": "critical",  # the periodic verification found a problem in the chain
    "alerts_suppressed": "warning",  # a sink's rate limit held alerts back: their count, per kind
}

#: RFC 5424 severities: critical 2, error 3, warning 4, informational 6.
SYSLOG_SEVERITY = {"critical": 2, "high": 3, "warning": 4, "info": 6}

#: Session ids kept on a summary alert (the count covers all of them).
MAX_SESSIONS = 20


#: Characters that could break a line-based format or disguise text (C0/C1 controls, DEL,
#: line/paragraph separators, bidirectional overrides): shown as escapes in titles and texts.
_UNSAFE = {c: f"\\u{c:04x}" for c in (*range(0x20), 0x7F, *range(0x80, 0xA0), 0x2028, 0x2029,
                                      *range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x200E, 0x200F)}
_UNSAFE.update({ord("\n"): " ", ord("\r"): " ", ord("\t"): " "})

NAME_CHARS = 64


def one_line(text: str) -> str:
    """``text`` on one line, without control or direction-override characters (escaped instead).

    Titles and texts carry SQL, user names and application names a database client chose;
    they go into log lines, Slack messages and syslog, where a raw newline forges a line."""
    return text.translate(_UNSAFE)


def short_name(name: str | None, limit: int = NAME_CHARS) -> str:
    """A client-chosen name (a startup packet's user: up to 10 kB) bounded for keys and titles:
    longer ones keep a prefix and a hash, so distinct names stay distinct."""
    name = name or ""
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    return f"{name[: limit - 14]}…{digest}"


def severity_rank(severity: str) -> int:
    return SEVERITIES.index(severity)


def new_alert_id() -> str:
    return secrets.token_hex(6)


@dataclass(slots=True)
class Alert:
    """One alert as it leaves the engine: the first occurrence, or a summary with ``count`` > 1.

    ``key`` groups occurrences for de-duplication (with ``kind``); it is not sent.
    ``count`` is how many occurrences this alert stands for: 1 for a first
    occurrence, the number of repeats for a de-duplication summary.
    """

    kind: str
    severity: str
    title: str
    text: str
    key: str = ""
    session: str | None = None
    subject: str | None = None
    user: str | None = None
    client: str | None = None
    target: str | None = None
    rule: str | None = None
    count: int = 1
    first_at: float = 0.0
    last_at: float = 0.0
    sessions: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    summary: bool = False  # a de-duplication or rate-limit summary
    id: str = field(default_factory=new_alert_id)

    def as_dict(self, gateway: str | None = None) -> dict[str, Any]:
        """The public shape: the JSON webhook payload's ``alert`` and the ``alert`` record's fields."""
        return {
            "id": self.id,
            "kind": self.kind,
            "severity": self.severity,
            "title": self.title,
            "text": self.text,
            "count": self.count,
            "summary": self.summary,
            "first_at": iso_time(self.first_at),
            "last_at": iso_time(self.last_at),
            "rule": self.rule,
            "session": self.session,
            "sessions": list(self.sessions),
            "subject": self.subject,
            "user": self.user,
            "client": self.client,
            "target": self.target,
            "gateway": gateway,
            "details": self.details,
        }

    def repeated(self, count: int, first_at: float, last_at: float, sessions: list[str]) -> "Alert":
        """The summary of ``count`` repeats of this alert within a de-duplication window."""
        return replace(
            self, id=new_alert_id(), count=count, first_at=first_at, last_at=last_at, summary=True,
            sessions=list(sessions), session=sessions[0] if len(sessions) == 1 else None,
            title=f"{self.title} (repeated {count}×)",
            text=f"{count} more occurrence(s) between {iso_time(first_at)} and {iso_time(last_at)}: {self.text}",
            details=dict(self.details),
        )
