"""Policy operations: what would the guardrails decide for this statement?

``check_statement`` runs the gateway's own stages (the identity guard for a
role's token session, then the guardrails stage) on a statement for a session
described by role, target, identity and search_path instead of a live
connection, so it answers exactly what the gateway would. It is what
``pgwarden policy check`` prints and what a CI job for a policy repository
asserts on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from ..config import Config
from ..policy.analysis import Analysis, Analyzer
from ..policy.rules import ALLOW, DENY, REVIEW, Decision, Policy
from ..policy.stages.guardrails import GuardrailsStage
from ..policy.stages.identity_guard import IdentityGuardStage
from ..session.statement import Kind, Protocol, SessionInfo, Statement
from ..session.verdict import Allow, Deny, Hold

__all__ = ["PolicyCheck", "check_statement", "PolicyInputError"]


class PolicyInputError(ValueError):
    """The question itself is wrong (unknown role or target)."""


@dataclass(frozen=True)
class _Identity:
    """Stands in for a token identity: what the stages read from it."""

    subject: str
    roles: tuple[str, ...]
    issuer: str = "policy-check"
    access: dict = field(default_factory=dict)


@dataclass(frozen=True)
class PolicyCheck:
    decision: Decision
    analysis: Analysis
    role: str | None
    target: str
    sqlstate: str | None = None  # what the client would see on a refusal
    message: str | None = None
    # Masking: one entry per result column (see masking_columns), None when masking does not
    # apply to the session; masking_note says why it could not be decided (catalog unreadable).
    masking: list[dict[str, object]] | None = None
    masking_note: str | None = None
    # For a review decision with approvals on: how the request would be handled (mode, reviewers, ...).
    approval: dict[str, object] | None = None

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"role": self.role, "target": self.target}
        out.update(self.decision.describe())
        if self.sqlstate is not None:
            out["sqlstate"] = self.sqlstate
            out["client_message"] = self.message
        if self.analysis.error is not None:
            out["error"] = self.analysis.error
        if self.masking is not None:
            out["masking"] = self.masking
        if self.masking_note is not None:
            out["masking_note"] = self.masking_note
        if self.approval is not None:
            out["approval"] = self.approval
        return out


def check_statement(
    config: Config,
    sql: str,
    *,
    role: str | None = None,
    target: str | None = None,
    identity: str | None = None,
    search_path: str | None = None,
    at: datetime | None = None,
    analyzer: Analyzer | None = None,
    policy: Policy | None = None,
) -> PolicyCheck:
    """The gateway's decision for ``sql`` in a session with this role and target."""
    if role is not None and role not in config.roles:
        raise PolicyInputError(f"unknown role {role!r} (configured: {', '.join(config.roles) or 'none'})")
    if target is None:
        if role is not None and config.roles[role].targets:
            target = config.roles[role].targets[0]
        else:
            target = next(iter(config.targets))
    if target not in config.targets:
        raise PolicyInputError(f"unknown target {target!r} (configured: {', '.join(config.targets)})")
    analyzer = analyzer or Analyzer(max_length=config.guardrails.max_statement_length)
    info = SessionInfo(
        id="policy-check",
        user=identity or "policy-check",
        target=target,
        client_addr="-",
        startup_params={"search_path": search_path} if search_path else {},
    )
    if role is not None:
        access = config.roles[role].access
        info.extra["identity"] = _Identity(identity or "policy-check", (role,), access={target: access})
        info.extra["access"] = access
    statement = Statement(Kind.QUERY, Protocol.SIMPLE, sql, info, 1)
    analysis = analyzer.analyze(sql)
    # Without the guardrails stage the gateway runs the identity guard on its own.
    verdict = IdentityGuardStage(analyzer).check(statement) if role is not None and not config.guardrails.enabled \
        else None
    if verdict is None and config.guardrails.enabled:
        stage = GuardrailsStage(config, analyzer, policy, defer_review=config.approvals.enabled)
        stage.now = at
        stage.session_started(info)
        verdict = stage.check(statement)
        if isinstance(verdict, Hold):
            # A large statement is analysed off the event loop in the gateway; here, just wait.
            import asyncio

            verdict = asyncio.run(verdict.wait())
            verdict = None if isinstance(verdict, Allow) else verdict
    masking = note = None
    if verdict is None and config.masking.active:
        verdict, masking, note = _masking(config, info, statement)
        if verdict is not None:
            statement.decision = None
    decision = statement.decision
    if verdict is not None and (decision is None or decision.action == ALLOW):
        # Refused before the guardrails decided (identity guard, unknown EXECUTE).
        decision = Decision(DENY, verdict.rule, verdict.message.removeprefix("pgwarden: "),
                            verdict.hint, facts=analysis.statements)
    if decision is None:
        decision = Decision(ALLOW, None, facts=analysis.statements)
    approval = None
    if verdict is None and decision.action == REVIEW and config.approvals.enabled:
        settings = config.approvals.settings_for(decision.rule or "default", role, identity or "policy-check")
        approval = {
            "policy": settings.policy, "mode": settings.mode, "approvals": settings.approvals,
            "reviewer_roles": list(settings.reviewer_roles) or ["local admin"],
            "timeout_seconds": settings.timeout, "validity_seconds": settings.validity,
        }
        if settings.mode == "ticket":
            verdict = Deny(f"pgwarden: approval required (rule {decision.rule or 'default'}): request <id>",
                           "PW001", rule="approvals.required")
    return PolicyCheck(
        decision,
        analysis,
        role,
        target,
        sqlstate=verdict.sqlstate if verdict is not None else None,
        message=verdict.message if verdict is not None else None,
        masking=masking,
        masking_note=note,
        approval=approval,
    )


def _masking(config: Config, info: SessionInfo, statement: Statement):
    """(refusal or None, per-column masking or None, note): the masking stage on this statement.

    Masking decisions depend on the target's catalog (which relation a name
    means, a view's definition, ``*``), so this reads it from the target like
    the gateway does; when it cannot, the note says so and nothing is decided.
    """
    import asyncio

    from ..policy.masking.lineage import lineage
    from ..policy.stages.masking import MaskingStage
    from ..server.catalog import catalog_loader

    stage = MaskingStage(config, loader=catalog_loader(config), key=b"policy-check-key-not-used")
    stage.session_started(info)
    state = info.extra.get("masking")
    if state is None:
        return None, None, None
    try:
        asyncio.run(stage.catalogs.load(info.target))
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        return None, None, f"masking not decided: {exc}"
    verdict = stage.check(statement, _reloaded=True)  # just loaded: no second load
    if isinstance(verdict, Hold):  # a large statement: analysed in a thread by the gateway
        verdict = asyncio.run(verdict.wait())
        verdict = None if isinstance(verdict, Allow) else verdict
    if verdict is not None:
        return verdict, None, None
    columns: list[dict[str, object]] = []
    mask = statement.mask
    if mask is not None:
        analysis = lineage(statement.text or "")
        catalog = stage.catalogs.current(info.target)
        labels = [_labels(s, catalog, state, mask.paths) for s in analysis.statements if s.returns_rows]
        for index, expected in enumerate(mask.expected):
            names = labels[index] if index < len(labels) else None
            if expected is None:
                columns.append({"result": index + 1, "column": "*", "masking": "decided by the result's columns"})
                continue
            for position, expect in enumerate(expected):
                entry: dict[str, object] = {
                    "result": index + 1,
                    "column": names[position] if names and position < len(names) else str(position + 1),
                    "masking": {"clean": "none", "derived": "whole value",
                                "unknown": "whole value" if mask.echo else
                                ("detect" if mask.tools.detect_strategy is not None else "none")}.get(expect.kind, "")
                    or expect.hits[0].strategy,
                }
                if expect.hits:
                    entry["rule"] = expect.hits[0].rule.name
                    entry["source"] = expect.hits[0].column
                columns.append(entry)
    return None, columns, None


def _labels(lin, catalog, state, paths) -> list[str] | None:
    if lin.outputs is None:
        return None
    names: list[str] = []
    for out in lin.outputs:
        if out.star is not None:
            rels = catalog.resolve(out.star, paths, state.rules.user)
            if not rels:
                return None
            names.extend(c[1] for c in rels[0].columns)
        else:
            names.append(out.name)
    return names
