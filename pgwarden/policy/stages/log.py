"""StatementLogStage: one structured log line per statement, with its session.

It logs when the statement's reply is complete, so the line carries the outcome
(command tag, SQLSTATE, duration) and not just the text. Parse messages are not
logged on their own: the Execute that runs the prepared text is.
"""

from __future__ import annotations

import logging

from ...session.statement import Kind, Statement
from ...session.verdict import Deny

__all__ = ["StatementLogStage"]

log = logging.getLogger("pgwarden.statement")


class StatementLogStage:
    name = "log"

    def __init__(self, max_text: int = 2000) -> None:
        self.max_text = max_text

    def check(self, statement: Statement) -> None:
        return None

    def completed(self, statement: Statement) -> None:
        if statement.kind == Kind.PARSE and statement.status in ("ok", "skipped"):
            return
        if not log.isEnabledFor(logging.INFO) and statement.status != "denied" and not (
            statement.decision is not None and statement.decision.alerts
        ):
            return
        text = statement.text
        if text is not None and len(text) > self.max_text:
            text = text[: self.max_text] + "…"
        fields = {
            "session": statement.session.id,
            "event": "statement",
            "user": statement.session.user,
            "target": statement.session.target,
            "kind": statement.kind,
            "protocol": statement.protocol,
            "status": statement.status,
            "text": text,
            "duration_ms": round(statement.duration_ns / 1e6, 3),
        }
        if statement.tags:
            fields["tag"] = statement.tags[-1] if len(statement.tags) == 1 else statement.tags
        if statement.portal_name:
            fields["portal"] = statement.portal_name
        if statement.statement_name:
            fields["prepared"] = statement.statement_name
        if statement.error is not None:
            fields["sqlstate"] = statement.error.sqlstate
            fields["error"] = statement.error.message
        decision = statement.decision
        if decision is not None:
            # What the guardrails saw and decided (docs/guardrails.md).
            fields["decision"] = decision.action
            fields["rule"] = decision.rule or "default"
            if decision.facts:
                fields["classification"] = [f.classification for f in decision.facts] \
                    if len(decision.facts) > 1 else decision.facts[0].classification
                tables = sorted({str(t) for f in decision.facts for t in f.tables})
                if tables:
                    fields["tables"] = tables
            if decision.alerts:
                fields["alerts"] = list(decision.alerts)
        verdict = statement.verdict
        if isinstance(verdict, Deny):
            fields["sqlstate"] = verdict.sqlstate
            fields["rule"] = verdict.rule
            fields["error"] = verdict.message
        level = logging.WARNING if statement.status == "denied" or fields.get("alerts") else logging.INFO
        log.log(level, "%s %s", statement.status, text if text is not None else f"<{statement.kind}>", extra=fields)
