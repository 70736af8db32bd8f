"""IdentityGuardStage: a token session can never change who it is or lift read-only.

For sessions that logged in with a token or API key (``session.extra["identity"]``):

* always refused: ``SET ROLE``, ``RESET ROLE``, ``SET SESSION AUTHORIZATION``
  (and their RESETs), and ``set_config()`` of ``role`` or
  ``session_authorization`` — or of a name pgwarden cannot see (a parameter or
  expression), since it could be either;
* for ``read`` access, also refused: ``SET``/``RESET`` of
  ``default_transaction_read_only`` or ``transaction_read_only``,
  ``SET TRANSACTION`` / ``SET SESSION CHARACTERISTICS`` / ``BEGIN`` /
  ``START TRANSACTION`` with ``READ WRITE``, ``set_config()`` of those
  settings, and ``DO`` / ``CALL`` (opaque code could do any of the above).

Statements are analysed by the shared analyser (``policy.analysis``: the
PostgreSQL parser, every node walked), so a ``set_config`` inside a CTE, a
subquery, ``EXPLAIN ANALYZE``, ``COPY (…)`` or ``PREPARE`` is found too. A
statement the parser rejects is refused for these sessions (PostgreSQL would
reject it as well).

This is defense in depth on top of the database: the upstream session of a read
role starts with ``default_transaction_read_only = on``, and the target's upstream
login should be a member of no privileged role. The Guardrails milestone adds the
general statement analysis this stage will then share.
"""

from __future__ import annotations

from ...session.statement import Kind, Statement
from ...session.verdict import Deny
from ...wire.constants import SQLState
from ..analysis import Analyzer, default_analyzer, error_rule

__all__ = ["IdentityGuardStage"]

_ROLE_SETTINGS = frozenset({"role", "session_authorization", "?"})
_READ_ONLY_SETTINGS = frozenset({"default_transaction_read_only", "transaction_read_only"})


def identity_refusal(statements, read_only: bool) -> tuple[str, str, str | None] | None:
    """(rule, message, hint) when a token session may not run these statements, else None.

    Shared with ``pgwarden policy check`` so it answers what the gateway does.
    """
    for facts in statements:
        if facts.settings & _ROLE_SETTINGS:
            return (
                "identity.role_fixed",
                "this session cannot change its role or session authorization",
                "The role comes from your identity; connect with another token to act as someone else.",
            )
        if read_only:
            if facts.settings & _READ_ONLY_SETTINGS or "read_write" in facts.flags:
                return "identity.read_only", "this session is read-only and cannot be made read-write", None
            if "opaque_code" in facts.flags:
                return "identity.read_only", "DO and CALL are not allowed in a read-only session", None
    return None


class IdentityGuardStage:
    name = "identity.guard"

    def __init__(self, analyzer: Analyzer | None = None) -> None:
        self.analyzer = analyzer or default_analyzer

    def check(self, statement: Statement) -> Deny | None:
        extra = statement.session.extra
        if "identity" not in extra or statement.text is None or statement.kind == Kind.FUNCTION_CALL:
            return None
        analysis = self.analyzer.analyze(statement.text)
        if analysis.error is not None:
            # Same refusal as the guardrails stage gives (which may be switched off).
            rule = error_rule(analysis)
            return Deny(
                f"pgwarden: {analysis.error} (rule {rule})",
                analysis.error_sqlstate or SQLState.SYNTAX_ERROR,
                rule=rule,
                hint="pgwarden parses every statement with the PostgreSQL parser and refuses what it cannot parse.",
            )
        refusal = identity_refusal(analysis.statements, extra.get("access") == "read")
        if refusal is None:
            return None
        rule, message, hint = refusal
        return Deny(f"pgwarden: {message}", SQLState.INSUFFICIENT_PRIVILEGE, rule=rule, hint=hint)
