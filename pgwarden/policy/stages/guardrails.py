"""GuardrailsStage: every statement parsed, classified and decided before it reaches PostgreSQL.

Per statement: the shared, cached analysis (``policy.analysis``), then the
compiled policy (``policy.rules``). What the stage adds is the session's view:

* **Prepared statements.** ``PREPARE name AS …`` is remembered (name ->
  facts) when allowed, so ``EXECUTE name`` (and a protocol Execute of that
  name, which carries no text) is decided on what it actually runs;
  ``DEALLOCATE`` and ``DISCARD ALL`` forget, and the relay is told
  (``on_prepared_change``) so it treats those names as uncertain until
  PostgreSQL answers. Protocol-level Parse texts are the relay's alone (it
  corrects them from PostgreSQL's answers; an Execute carries its text), so an
  SQL ``EXECUTE`` of a Parse'd name, like one of a name pgwarden never saw, is
  refused (26000): pgwarden cannot vouch for it.
* **search_path.** Every path the session may be using (startup parameter,
  each ``SET search_path``) is kept; rules resolve unqualified names against
  all of them (see ``rules.SessionContext``). It only ever grows, because a
  ``SET`` can be undone by a ROLLBACK pgwarden would otherwise have to model.
* **Decision cache.** A session's decision for an analysis is reused while
  nothing it depends on changes (no time windows, no EXECUTE, same
  search_path set), so a repeated statement costs two dict lookups.

Refusals are ErrorResponses with SQLSTATE 42501 (42601 for what the parser
rejects, 26000 for an unknown prepared statement, 54000/54001 for input too
long or too deeply nested) and a message that names the rule. The decision is
attached to the statement (``statement.decision``) for the recorder and logs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Any

from ...config import Config
from ...session.statement import Kind, SessionInfo, Statement
from ...session.verdict import ALLOW as ALLOW_VERDICT
from ...session.verdict import Deny, Hold
from ...wire.constants import SQLState
from ..analysis import Analyzer, StatementFacts, analyze_uncached, error_rule
from ..rules import ALLOW, DENY, REVIEW, Decision, Policy, SessionContext, parse_search_path
from .identity_guard import identity_refusal

__all__ = ["GuardrailsStage", "session_context"]

log = logging.getLogger("pgwarden.guardrails")

_STATE_KEY = "guardrails"
# Statements at least this long (and not cached) are analysed in a worker thread.
BACKGROUND_ANALYSIS_LENGTH = 32 * 1024
_UNDEFINED_PREPARED = "26000"


class _SessionState:
    __slots__ = ("ctx", "prepared", "decisions", "pending")

    def __init__(self, ctx: SessionContext) -> None:
        self.ctx = ctx
        # SQL-prepared names PostgreSQL confirmed (name -> facts); None: a change to the
        # name failed part-way, so what it means is unknown (EXECUTE of it is refused).
        self.prepared: dict[str, StatementFacts | None] = {}
        self.decisions: dict[int, tuple[Any, Decision]] = {}
        # Allowed statements that prepare or deallocate, not answered yet: (statement,
        # [(action, name, facts)]). Until settled, a name may mean its old or new statement.
        self.pending: list[tuple[Statement, list[tuple[str, str, StatementFacts | None]]]] = []

    def candidates(self, name: str) -> list[StatementFacts] | None:
        """Every statement ``name`` may run now (confirmed and pending); None: unknown."""
        out: list[StatementFacts] = []
        if name in self.prepared:
            confirmed = self.prepared[name]
            if confirmed is None:
                return None
            out.append(confirmed)
        for _stmt, changes in self.pending:
            for action, changed, facts in changes:
                if action == "prepare" and changed == name and facts is not None:
                    out.append(facts)
        return out or None

    def protocol_name(self, name: str) -> None:
        """A protocol Parse of ``name``: if PostgreSQL takes it, ``name`` is a protocol text (which
        SQL EXECUTE must not run on SQL facts); if it refuses, the old one stays. Either way an
        SQL-prepared meaning can no longer be vouched for."""
        if name in self.prepared or self.pending:
            self.prepared[name] = None

    def settle(self, statement: Statement) -> None:
        """PostgreSQL answered ``statement``: apply what it did to prepared names."""
        for index, (stmt, changes) in enumerate(self.pending):
            if stmt is statement:
                del self.pending[index]
                break
        else:
            return
        status = statement.status
        if status in ("denied", "skipped", "pending"):
            return  # nothing of it ran
        for action, name, facts in changes:
            if status == "ok":
                if action == "prepare":
                    self.prepared[name] = facts
                elif name == "*":
                    self.prepared.clear()
                else:
                    self.prepared.pop(name, None)
            elif name == "*":
                for known in list(self.prepared):  # failed part-way: each may or may not be gone
                    self.prepared[known] = None
            else:
                self.prepared[name] = None  # failed part-way: it may or may not exist, and as what


def acting_role(config: Config, identity: Any, target: str, access: str | None) -> str | None:
    """The role that gives a token session its access to ``target`` (first in binding order)."""
    if identity is None:
        return None
    roles = getattr(identity, "roles", ())
    for name in roles:
        role = config.roles.get(name)
        if role is not None and target in role.targets and (access is None or role.access == access):
            return name
    for name in roles:
        if name in config.roles:
            return name
    return None


def session_context(config: Config, info: SessionInfo) -> SessionContext:
    """The rules' view of a session: its target, role, identities and search_path."""
    identity = info.extra.get("identity")
    role = acting_role(config, identity, info.target, info.extra.get("access"))
    identities = [info.user]
    if identity is not None:
        identities.insert(0, getattr(identity, "subject", ""))
    target = config.targets.get(info.target)
    user = target.user if target is not None else info.user
    if role is not None and config.roles[role].set_role:
        user = config.roles[role].set_role or user
    path_value = info.startup_params.get("search_path")
    paths = [parse_search_path(path_value)] if path_value else [('"$user"', "public")]
    return SessionContext(
        target=info.target,
        role=role,
        roles=tuple(getattr(identity, "roles", ()) or ()),
        identities=tuple(i for i in identities if i),
        user=user,
        search_paths=paths,
    )


class GuardrailsStage:
    name = "guardrails"

    def __init__(
        self, config: Config, analyzer: Analyzer | None = None, policy: Policy | None = None, defer_review: bool = False
    ) -> None:
        self.config = config
        # True when an ApprovalsStage follows: a ``review`` decision is passed on
        # (on ``statement.decision``) for it to hold or ticket. Off, review is refused.
        self.defer_review = defer_review
        self.policy = policy or Policy(config)
        guard = config.guardrails
        self.analyzer = analyzer or Analyzer(cache_size=guard.cache_size, max_length=guard.max_statement_length)
        # Decide as of this time instead of now (``pgwarden policy check --at``).
        self.now = None

    # ------------------------------------------------------------ session hooks

    def session_started(self, info: SessionInfo) -> None:
        self._new_state(info)

    def _new_state(self, info: SessionInfo) -> _SessionState:
        state = info.extra[_STATE_KEY] = _SessionState(session_context(self.config, info))
        info.extra["on_prepared_settled"] = state.settle  # called by the relay (see _apply_effects)
        return state

    def _state(self, info: SessionInfo) -> _SessionState:
        state = info.extra.get(_STATE_KEY)
        if state is None:
            state = self._new_state(info)
        return state

    # ------------------------------------------------------------ the decision

    def check(self, statement: Statement) -> Deny | None:
        # The hot path first: a statement this session already decided (its
        # shape is cached) costs a normalisation and two dict lookups.
        text = statement.text
        state = statement.session.extra.get(_STATE_KEY)
        if text is not None and state is not None:
            analyzer = self.analyzer
            analysis = analyzer.analyze(text) if len(text) < BACKGROUND_ANALYSIS_LENGTH else analyzer.known(text)
            cached = state.decisions.get(id(analysis)) if analysis is not None else None
            if cached is not None and cached[0] is analysis:
                decision = cached[1]
                statement.decision = decision
                if decision.action == ALLOW:
                    if statement.kind == Kind.PARSE and state.prepared and statement.statement_name:
                        state.protocol_name(statement.statement_name)
                    return None
                return self._verdict(statement, decision)
        if statement.kind == Kind.FUNCTION_CALL:
            return None  # refused by the relay itself
        state = self._state(statement.session)
        if text is None:
            candidates = state.candidates(statement.statement_name or "") if statement.statement_name else None
            if candidates is None:
                return Deny(
                    "pgwarden: this portal's statement is unknown to pgwarden, so it cannot be checked",
                    _UNDEFINED_PREPARED,
                    rule="guardrails.unknown_statement",
                    hint="Prepare statements with Parse or PREPARE through pgwarden.",
                )
            return self._verdict(statement, self.policy.decide(tuple(candidates), state.ctx, self.now))
        if len(text) >= BACKGROUND_ANALYSIS_LENGTH and self.analyzer.known(text) is None \
                and len(text) <= self.analyzer.max_length:
            return self._hold_for_analysis(statement, text)
        analysis = self.analyzer.analyze(text)
        if analysis.error is not None:
            return self._analysis_error(statement, analysis)
        cached = state.decisions.get(id(analysis))
        if cached is not None and cached[0] is analysis:
            decision = cached[1]
        else:
            statements = analysis.statements
            cacheable = not self.policy.time_dependent
            if len(statements) > 1 and _has_session_effects(statements[:-1]):
                # SET search_path earlier in the string applies to what follows:
                # the candidate paths only grow, so applying them first is safe.
                self._apply_search_paths(state, statements)
            if any(s.execute is not None for s in statements):
                resolved = []
                overlay: dict[str, StatementFacts | None] = {}
                for facts in statements:
                    if facts.prepare is not None:
                        overlay[facts.prepare] = _prepared_facts(facts)
                    if facts.deallocate is not None and facts.deallocate != "*":
                        overlay[facts.deallocate] = None
                    if facts.execute is None:
                        resolved.append(facts)
                        continue
                    if facts.execute in overlay:
                        prepared = [overlay[facts.execute]] if overlay[facts.execute] is not None else None
                    else:
                        prepared = state.candidates(facts.execute)
                    if prepared is None:
                        return Deny(
                            f'pgwarden: prepared statement "{facts.execute}" is unknown to pgwarden, '
                            "so it cannot be checked",
                            _UNDEFINED_PREPARED,
                            rule="guardrails.unknown_statement",
                        )
                    if facts.command != "EXECUTE":
                        # CREATE TABLE ... AS EXECUTE name: the statement's own effect (a new,
                        # perhaps temporary, table) is decided too, not only what it runs.
                        resolved.append(facts)
                    resolved.extend(prepared)  # old and new while a change is unanswered: the strictest
                statements = tuple(resolved)
                cacheable = False
            decision = _parser_settings_refusal(analysis.statements) or self._identity_decision(
                statement, analysis.statements, statements
            )
            if decision is None:
                decision = self.policy.decide(statements, state.ctx, self.now)
            if cacheable and not _has_session_effects(analysis.statements):
                decisions = state.decisions
                if len(decisions) >= 1024:
                    decisions.clear()
                decisions[id(analysis)] = (analysis, decision)
        if decision.action == ALLOW or (decision.action == REVIEW and self.defer_review):
            self._apply_effects(state, statement, analysis.statements)
        return self._verdict(statement, decision)

    @staticmethod
    def _identity_decision(statement: Statement, written, resolved) -> Decision | None:
        """The identity guard's refusal for token sessions (role fixed, read-only kept), if any."""
        extra = statement.session.extra
        if "identity" not in extra:
            return None
        read_only = extra.get("access") == "read"
        refusal = identity_refusal(written, read_only) or identity_refusal(resolved, read_only)
        if refusal is None:
            return None
        rule, message, hint = refusal
        return Decision(DENY, rule, message, hint, facts=tuple(written))

    def _hold_for_analysis(self, statement: Statement, text: str) -> Hold:
        """Analyse a large statement off the event loop; only this session waits.

        Parsing and walking hundreds of kilobytes of SQL takes long enough to
        stall every other session; a worker thread does it (the caches are
        updated back on the event loop), then the statement is decided as usual.
        """

        async def wait():
            analysis = await asyncio.to_thread(analyze_uncached, text)
            self.analyzer.remember(text, analysis)
            verdict = self.check(statement)
            return ALLOW_VERDICT if verdict is None else verdict

        return Hold(wait, reason="analysing a large statement", rule="guardrails.analysis")

    def _verdict(self, statement: Statement, decision: Decision) -> Deny | None:
        statement.decision = decision
        if decision.action == ALLOW:
            return None
        where = ""
        if len(decision.facts) > 1:
            where = f"statement {decision.statement + 1} of {len(decision.facts)}: "
        if decision.action == REVIEW:
            if self.defer_review:
                return None  # the approvals stage decides (statement.decision says review)
            return Deny(
                f"pgwarden: {where}{decision.message} (rule {decision.rule}); approvals are not configured, "
                "so it is refused",
                SQLState.INSUFFICIENT_PRIVILEGE,
                rule=decision.rule,
                hint=decision.hint,
            )
        hint = decision.hint
        if hint is None and len(decision.facts) > 1:
            hint = "Nothing in this query string was run."
        return Deny(
            f"pgwarden: {where}{decision.message} (rule {decision.rule or 'default'})",
            SQLState.INSUFFICIENT_PRIVILEGE,
            rule=decision.rule or "guardrails.default",
            hint=hint,
        )

    def _analysis_error(self, statement: Statement, analysis) -> Deny:
        sqlstate = analysis.error_sqlstate or SQLState.SYNTAX_ERROR
        rule = error_rule(analysis)
        statement.decision = Decision("deny", rule, analysis.error or "")
        return Deny(
            f"pgwarden: {analysis.error} (rule {rule})",
            sqlstate,
            rule=rule,
            hint="pgwarden parses every statement with the PostgreSQL parser and refuses what it cannot parse.",
        )

    # ------------------------------------------------------------ session effects

    def _apply_effects(self, state: _SessionState, statement: Statement, statements) -> None:
        # Protocol-level Parse is not remembered here: the relay keeps those texts (and
        # corrects them from PostgreSQL's answers), and an Execute carries its text. This
        # map holds what only SQL names: PREPARE, for SQL EXECUTE and for protocol
        # Executes of SQL-prepared names (which reach the policy without a text).
        # Nothing runs at Parse; at Query/Execute the change is pending until PostgreSQL
        # answers (state.settle, called by the relay), and the relay is told, so neither
        # side assumes an outcome it has not seen.
        if statement.kind == Kind.PARSE:
            if statement.statement_name:
                state.protocol_name(statement.statement_name)
        else:
            changes: list[tuple[str, str, StatementFacts | None]] = []
            for facts in statements:
                if facts.deallocate is not None:
                    changes.append(("deallocate", facts.deallocate, None))
                if facts.prepare is not None:
                    changes.append(("prepare", facts.prepare, _prepared_facts(facts)))
            if changes:
                state.pending.append((statement, changes))
                hook = statement.session.extra.get("on_prepared_change")
                if hook is not None:
                    hook(statement, [(action, name) for action, name, _ in changes])
        self._apply_search_paths(state, statements)

    @staticmethod
    def _apply_search_paths(state: _SessionState, statements) -> None:
        for facts in statements:
            if "search_path" in facts.settings or "?" in facts.settings:
                path = facts.search_path if "?" not in facts.settings else None
                if path == ():
                    continue  # back to the startup value, already among the candidates
                state.ctx.add_search_path(path)
                state.decisions.clear()


def _parser_settings_refusal(statements) -> Decision | None:
    """Refuse changing how PostgreSQL reads SQL text, for every session whatever its packs.

    With ``standard_conforming_strings`` off, ``'a\\''`` is one string literal to
    PostgreSQL and a literal followed by SQL to pgwarden's parser (libpg_query
    always reads standard strings), so everything after it would escape the
    guardrails and masking. A setting whose name is computed (``set_config(expr,
    …)``) could be that one.
    """
    for facts in statements:
        settings = facts.settings
        if not settings:
            continue
        if "standard_conforming_strings" in settings:
            return Decision(DENY, "guardrails.parser_settings",
                            "standard_conforming_strings may not be changed: pgwarden reads SQL as PostgreSQL does "
                            "only with it on", None, facts=tuple(statements))
        if "?" in settings:
            return Decision(DENY, "guardrails.parser_settings",
                            "a setting whose name is computed may not be changed (it could change how SQL is read)",
                            "Name the setting in SET or set_config.", facts=tuple(statements))
    return None


def _prepared_facts(facts: StatementFacts) -> StatementFacts:
    """What EXECUTE of a prepared statement runs: the PREPARE's facts under the inner command."""
    return dataclasses.replace(
        facts, command=facts.inner_command or facts.command, prepare=None, commands=facts.commands - {"PREPARE"}
    )


def _has_session_effects(statements) -> bool:
    return any(
        f.prepare is not None or f.deallocate is not None or f.settings for f in statements
    )
