"""Policy operations: what would the guardrails decide for this statement?

``check_statement`` runs exactly the code the gateway runs for a statement
(the same analyser, packs and rules), for a session described by role, target,
identity and search_path instead of a live connection. It is what ``pgwarden
policy check`` prints and what a CI job for a policy repository asserts on.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from ..config import Config
from ..policy.analysis import Analysis, Analyzer
from ..policy.rules import DENY, Decision, Policy, SessionContext, parse_search_path

__all__ = ["PolicyCheck", "check_statement", "PolicyInputError"]


class PolicyInputError(ValueError):
    """The question itself is wrong (unknown role or target)."""


@dataclass(frozen=True)
class PolicyCheck:
    decision: Decision
    analysis: Analysis
    role: str | None
    target: str

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"role": self.role, "target": self.target}
        out.update(self.decision.describe())
        if self.analysis.error is not None:
            out["error"] = self.analysis.error
            out["sqlstate"] = self.analysis.error_sqlstate
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
    policy: Policy | None = None,
    analyzer: Analyzer | None = None,
) -> PolicyCheck:
    """The guardrails' decision for ``sql`` in a session with this role and target."""
    if role is not None and role not in config.roles:
        raise PolicyInputError(f"unknown role {role!r} (configured: {', '.join(config.roles) or 'none'})")
    if target is None:
        if role is not None and config.roles[role].targets:
            target = config.roles[role].targets[0]
        else:
            target = next(iter(config.targets))
    if target not in config.targets:
        raise PolicyInputError(f"unknown target {target!r} (configured: {', '.join(config.targets)})")
    policy = policy or Policy(config)
    analyzer = analyzer or Analyzer(max_length=config.guardrails.max_statement_length)
    target_config = config.targets[target]
    user = target_config.user
    if role is not None and config.roles[role].set_role:
        user = config.roles[role].set_role or user
    ctx = SessionContext(
        target=target,
        role=role,
        roles=(role,) if role else (),
        identities=tuple(i for i in (identity,) if i),
        user=user,
        search_paths=[parse_search_path(search_path)] if search_path else [('"$user"', "public")],
    )
    analysis = analyzer.analyze(sql)
    if analysis.error is not None:
        rule = "guardrails.syntax" if analysis.error_sqlstate == "42601" else "guardrails.unparseable"
        return PolicyCheck(Decision(DENY, rule, analysis.error), analysis, role, target)
    statements = analysis.statements
    decision = policy.decide(statements, ctx, at)
    return PolicyCheck(decision, analysis, role, target)
