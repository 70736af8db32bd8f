"""ApprovalsStage: a statement the guardrails marked ``review`` waits for a human.

The guardrails stage (built with ``defer_review=True``) leaves the decision on
``statement.decision``; this stage, after masking (so a statement masking
would refuse never bothers a reviewer), turns it into a request and a Hold:

* **hold** — the session pauses; the client gets a NoticeResponse with the
  request id at once; approval lets the statement run, denial or timeout
  refuse it with an ErrorResponse naming who or what decided.
* **ticket** — the statement is refused at once (SQLSTATE ``PW001``) with the
  request id; once approved, the same requester running the same text with the
  same parameters on the same target within the validity window runs it,
  exactly once (the store consumes the ticket atomically).

What is approved is pinned by a fingerprint of target, text and parameters
(``store.approvals.fingerprint``), so nothing but the reviewed statement can
ride on an approval. A protocol-level Parse and an SQL ``PREPARE`` run
nothing, so they pass; the Execute / ``EXECUTE`` that runs them is reviewed
with its parameters.

The waiting, the store and the notifications are the broker's
(``server.approvals.ApprovalBroker``); this stage only builds the request.
"""

from __future__ import annotations

import json
import time
from typing import Any

from ...config import Config
from ...session.statement import Kind, Statement
from ...session.verdict import Deny, Hold
from ...wire.constants import SQLState
from ...store.approvals import ApprovalRequest, fingerprint, new_request_id
from ..rules import REVIEW

__all__ = ["ApprovalsStage", "APPROVAL_REQUIRED"]

#: SQLSTATE of a ticket-mode refusal: approval required (class PW is pgwarden's own).
APPROVAL_REQUIRED = "PW001"


def _param_list(statement: Statement) -> list[tuple[int, bytes | None]]:
    if statement.kind != Kind.EXECUTE:
        return []
    try:
        params = statement.params
        formats = statement.param_formats
    except ValueError:
        return [(9, b"unreadable")]
    if not formats:
        codes = [0] * len(params)
    elif len(formats) == 1:
        codes = [formats[0]] * len(params)
    else:
        codes = list(formats)
    return [(codes[i] if i < len(codes) else 0, None if v is None else bytes(v)) for i, v in enumerate(params)]


def _param_view(params: list[tuple[int, bytes | None]]) -> tuple[dict[str, Any], ...]:
    out = []
    for fmt, value in params:
        if value is None:
            shown = None
        elif fmt == 0:
            shown = value.decode("utf-8", "replace")
        else:
            shown = "\\x" + value.hex()
        out.append({"format": fmt, "value": shown})
    return tuple(out)


def _meaning(statement: Statement, state: Any) -> str:
    """What besides text and values decides what a statement does: its declared parameter
    types (``'0001'`` as text or as int) and every search_path the session may be using
    (which ``orders`` an unqualified name is)."""
    paths = getattr(getattr(state, "ctx", None), "search_paths", None)
    return json.dumps({"types": list(statement.param_types),
                       "search_path": None if paths is None else sorted(list(p) for p in paths)})


class ApprovalsStage:
    name = "approvals"

    def __init__(self, config: Config, broker: Any, analyzer: Any = None) -> None:
        self.config = config
        self.broker = broker
        # The guardrails stage's (cached) analyzer: which statements EXECUTE a prepared one.
        self.analyzer = analyzer

    def check(self, statement: Statement) -> Hold | Deny | None:
        decision = statement.decision
        if decision is None or decision.action != REVIEW:
            return None
        if statement.kind == Kind.PARSE:
            return None  # nothing runs at Parse; the Execute is reviewed with its parameters
        if decision.facts and all(f.prepare is not None or f.deallocate is not None for f in decision.facts):
            return None  # PREPARE (and DEALLOCATE) run nothing; EXECUTE is reviewed
        info = statement.session
        identity = info.extra.get("identity")
        # Static users are "user:NAME", so no static name can pass for an API key
        # ("key:NAME") or the local admin ("local:USER") and use their tickets.
        requester = getattr(identity, "subject", None) or f"user:{info.user}"
        state = info.extra.get("guardrails")
        role = getattr(getattr(state, "ctx", None), "role", None)
        rule = decision.rule or "default"
        settings = self.config.approvals.settings_for(rule, role, requester)
        params = _param_list(statement)
        reason = decision.message or ""
        if statement.text is None:
            # A protocol Execute of a name prepared with SQL PREPARE: the client never sent
            # the text with it, so, like SQL EXECUTE, it cannot be pinned by a ticket.
            name = statement.statement_name or ""
            executes = [name]
            text = f"-- protocol Execute of {name!r}, prepared with SQL PREPARE"
        else:
            text = statement.text
            executes = self._executes(text)
        if executes:
            if settings.mode == "ticket":
                # A ticket pins the text, and "EXECUTE name" says nothing about what runs:
                # the name could be prepared again as something else before the retry.
                return Deny(
                    f"pgwarden: {reason or 'this statement needs approval'} (rule {rule}); a ticket cannot be "
                    f"issued for EXECUTE of a prepared statement ({', '.join(executes)})",
                    SQLState.INSUFFICIENT_PRIVILEGE,
                    rule="approvals.unpinned",
                    hint="Run the statement itself (not through PREPARE/EXECUTE) to ask for approval.",
                )
            reason += f" (EXECUTE of prepared statement {', '.join(executes)})"
        now = time.time()
        request = ApprovalRequest(
            id=new_request_id(),
            created_at=now,
            expires_at=now + settings.timeout,
            status="pending",
            mode=settings.mode,
            requester=requester,
            requester_roles=tuple(getattr(identity, "roles", ()) or ()),
            role=role,
            target=info.target,
            session=info.id,
            gateway=self.broker.gateway_id,
            statement=text,
            params=_param_view(params),
            fingerprint=fingerprint(info.target, text, params, _meaning(statement, state)),
            rule=rule,
            reason=reason,
            policy=settings.policy,
            required=settings.approvals,
            reviewer_roles=settings.reviewer_roles,
            validity=settings.validity,
        )
        if settings.mode == "ticket":
            return Hold(lambda: self.broker.ticket(statement, request), reason="approval ticket", rule=rule)
        return self._hold(statement, request, rule)

    def _hold(self, statement: Statement, request: ApprovalRequest, rule: str) -> Hold:
        info = statement.session
        return Hold(
            lambda: self.broker.hold(statement, request),
            reason=f"waiting for approval of request {request.id}",
            rule=rule,
            cancel=lambda: self.broker.withdraw(request.id, info.id),
            notice=self.broker.hold_notice(request),
        )

    def _executes(self, text: str) -> list[str]:
        """Names of prepared statements the SQL text EXECUTEs (empty for protocol-level Execute)."""
        if self.analyzer is None or "execute" not in text.lower():
            return []
        analysis = self.analyzer.known(text)
        if analysis is None:
            return []
        return [f.execute for f in analysis.statements if f.execute is not None]
