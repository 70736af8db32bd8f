"""Guardrail rules: compile the config once, decide per statement.

Order of evaluation for one SQL statement:

1. the built-in packs of the session's role (``dangerous``, ``read-only``),
   minus the role's exemptions — the first pack rule that objects refuses it;
2. the config's ``guardrails.rules`` in order: an ``alert`` rule flags the
   statement and evaluation goes on; the first ``allow`` / ``deny`` / ``review``
   rule that matches decides (and flags an alert if it has ``alert: true``);
3. the role's ``default`` (else ``guardrails.default``).

A simple Query may carry several statements: each is decided, and the request
gets the most severe outcome (deny > review > allow), so nothing of it runs
when any part is refused.

Unqualified names are resolved against every ``search_path`` the session may
be using (see :class:`SessionContext`): a ``deny`` matches when any candidate
matches, an ``allow`` only when every candidate does, so uncertainty about the
path always makes the decision stricter, never looser.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from zoneinfo import ZoneInfo

from ..config import Config, RoleConfig
from ..config_guardrails import GuardrailsConfig, RuleConfig, RuleMatch, TimeWindow
from .analysis.facts import Column, Name, StatementFacts
from .functions import dangerous_functions, safe_functions
from .packs import PACK_CHECKS

__all__ = ["Decision", "Policy", "SessionContext", "RoleRules", "ALLOW", "DENY", "REVIEW"]

ALLOW = "allow"
DENY = "deny"
REVIEW = "review"
_SEVERITY = {ALLOW: 0, REVIEW: 1, DENY: 2}
_ALWAYS_DEFAULT_ALLOW = frozenset({"transaction", "session"})
_DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
ANY_SCHEMA = "*"  # the search_path is unknown: an unqualified name may be in any schema


@dataclass(slots=True)
class SessionContext:
    """What the rules need to know about the session (mutable: the search_path may change)."""

    target: str
    role: str | None = None  # the role the session acts as (token/API-key sessions)
    roles: tuple[str, ...] = ()
    identities: tuple[str, ...] = ()  # subject, user name, API key name: what `identities` globs see
    user: str = ""  # the upstream user, for "$user" in search_path
    # Every search_path the session may currently have (over-approximated); None: unknown.
    search_paths: list[tuple[str, ...]] | None = field(default_factory=lambda: [('"$user"', "public")])

    def relation_schemas(self, name: str) -> tuple[str, ...]:
        return self._schemas(name.startswith("pg_"))

    def function_schemas(self, name: str) -> tuple[str, ...]:
        builtin = name in safe_functions() or name in dangerous_functions()
        return self._schemas(builtin and self.builtins_first)

    def _schemas(self, catalog_first: bool) -> tuple[str, ...]:
        if self.search_paths is None:
            return (ANY_SCHEMA,)
        out: list[str] = ["pg_catalog"] if catalog_first else []
        for path in self.search_paths:
            for entry in path:
                schema = self.user if entry.strip('"') == "$user" else entry
                if schema and schema not in out:
                    out.append(schema)
        return tuple(out) or ("public",)

    @property
    def builtins_first(self) -> bool:
        """pg_catalog is searched first in every possible path (implicitly, or listed first)."""
        if self.search_paths is None:
            return False
        for path in self.search_paths:
            if "pg_catalog" in path and path[0] != "pg_catalog":
                return False
        return True

    def add_search_path(self, path: tuple[str, ...] | None) -> None:
        if path is None or self.search_paths is None:
            self.search_paths = None
            return
        if path not in self.search_paths:
            self.search_paths.append(path)
            if len(self.search_paths) > 8:
                self.search_paths = None


def parse_search_path(value: str) -> tuple[str, ...]:
    """A search_path setting as PostgreSQL reports it (``"$user", public``)."""
    out = []
    for part in value.split(","):
        part = part.strip()
        if part.startswith('"') and part.endswith('"') and len(part) > 1 and part != '"$user"':
            part = part[1:-1]
        if part:
            out.append(part)
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome for one request (one or more SQL statements)."""

    action: str  # allow | deny | review
    rule: str | None  # the rule that decided; None: the default
    message: str = ""
    hint: str | None = None
    alerts: tuple[str, ...] = ()  # rules that asked for an alert
    statement: int = 0  # index of the deciding statement (0-based)
    facts: tuple[StatementFacts, ...] = ()
    time_dependent: bool = False

    def describe(self) -> dict[str, object]:
        out: dict[str, object] = {"action": self.action, "rule": self.rule or "default"}
        if self.message:
            out["message"] = self.message
        if self.alerts:
            out["alerts"] = list(self.alerts)
        out["statements"] = [f.describe() for f in self.facts]
        return out


class _Globs:
    """A compiled, case-insensitive list of glob patterns."""

    __slots__ = ("regex", "patterns")

    def __init__(self, patterns: Iterable[str]) -> None:
        self.patterns = tuple(p.lower() for p in patterns)
        self.regex = re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in self.patterns) or "(?!)")

    def match(self, text: str) -> bool:
        return self.regex.match(text.lower()) is not None


def _candidates_relation(name: Name, ctx: SessionContext) -> tuple[str, ...]:
    if name.schema is not None:
        return (f"{name.schema}.{name.name}",)
    return tuple(f"{s}.{name.name}" for s in ctx.relation_schemas(name.name))


def _candidates_function(name: Name, ctx: SessionContext) -> tuple[str, ...]:
    if name.schema is not None:
        return (f"{name.schema}.{name.name}",)
    return tuple(f"{s}.{name.name}" for s in ctx.function_schemas(name.name.lower()))


def _object_matches(globs: _Globs, candidates: tuple[str, ...], bare: str, strict: bool) -> bool:
    """Does an object (its qualified candidates) match a pattern list?

    A pattern without a dot names the object in any schema. ``*`` as a
    candidate's schema (unknown search_path) matches a pattern's schema part
    only in the permissive direction.
    """
    results = []
    for candidate in candidates:
        if candidate.partition(".")[0] == ANY_SCHEMA:
            hit = globs.match(bare) or (not strict and _schema_wildcard_match(globs, bare))
        else:
            hit = globs.match(candidate) or globs.match(bare)
        results.append(hit)
    return all(results) if strict else any(results)


def _schema_wildcard_match(globs: _Globs, bare: str) -> bool:
    """Any pattern whose last part matches ``bare`` (the schema could be anything)."""
    for pattern in globs.patterns:
        if fnmatch.fnmatchcase(bare.lower(), pattern.rsplit(".", 1)[-1]):
            return True
    return False


class _CompiledRule:
    __slots__ = ("name", "action", "alert", "message", "hint", "match", "strict", "globs", "time")

    def __init__(self, rule: RuleConfig) -> None:
        self.name = rule.name
        self.action = rule.action
        self.alert = rule.alert or rule.action == "alert"
        self.message = rule.message
        self.hint = rule.hint
        self.match: RuleMatch = rule.match
        self.strict = rule.action == ALLOW
        m = rule.match
        self.globs = {
            key: _Globs(getattr(m, key))
            for key in ("command", "tables", "schemas", "columns", "functions", "identities")
            if getattr(m, key) is not None
        }
        self.time = m.time

    def matches(self, facts: StatementFacts, ctx: SessionContext, now: datetime | None) -> bool:
        m = self.match
        if m.targets is not None and ctx.target not in m.targets:
            return False
        if m.roles is not None and not (set(m.roles) & set(ctx.roles or ((ctx.role,) if ctx.role else ()))):
            return False
        if m.classification is not None and facts.classification not in m.classification:
            return False
        if m.has_where is not None and facts.has_where is not m.has_where:
            return False
        if m.flags is not None and not set(m.flags) & facts.flags:
            return False
        globs = self.globs
        if "command" in globs:
            hits = [globs["command"].match(c) for c in facts.commands or (facts.command,)]
            if not (all(hits) if self.strict else any(hits)):
                return False
        if "identities" in globs and not any(globs["identities"].match(i) for i in ctx.identities):
            return False
        if "tables" in globs and not self._objects(
            globs["tables"], facts.tables, lambda n: _candidates_relation(n, ctx), lambda n: n.name
        ):
            return False
        if "functions" in globs and not self._objects(
            globs["functions"], facts.functions, lambda n: _candidates_function(n, ctx), lambda n: n.name
        ):
            return False
        if "schemas" in globs and not self._schemas(globs["schemas"], facts, ctx):
            return False
        if "columns" in globs and not self._columns(globs["columns"], facts.columns, ctx):
            return False
        if self.time is not None and not _in_window(self.time, now):
            return False
        return True

    def _objects(self, globs: _Globs, objects: frozenset[Name], candidates, bare) -> bool:
        if not objects:
            return False
        strict = self.strict
        hits = (_object_matches(globs, candidates(o), bare(o), strict) for o in objects)
        return all(hits) if strict else any(hits)

    def _schemas(self, globs: _Globs, facts: StatementFacts, ctx: SessionContext) -> bool:
        schemas: set[str] = set(facts.schemas)
        for table in facts.tables:
            if table.schema is None:
                schemas.update(ctx.relation_schemas(table.name))
        if not schemas:
            return False
        if ANY_SCHEMA in schemas:
            if self.strict:
                return False
            return True
        hits = [globs.match(s) for s in schemas]
        return all(hits) if self.strict else any(hits)

    def _columns(self, globs: _Globs, columns: frozenset[Column], ctx: SessionContext) -> bool:
        if not columns:
            return False
        strict = self.strict
        results = []
        for col in columns:
            if col.table is None:
                # Not tied to a table: only its name is known.
                hit = (not strict) and _column_name_match(globs, col.name)
            else:
                tables = _candidates_relation(col.table, ctx)
                hit_list = []
                for qualified in tables:
                    schema, _, table = qualified.partition(".")
                    if col.name == "*":
                        # Every column of the table: matches any pattern on that table (unless strict).
                        hit = (not strict) and _table_pattern_match(globs, schema, table) or globs.match(
                            f"{qualified}.*"
                        )
                    else:
                        hit = (
                            globs.match(f"{qualified}.{col.name}")
                            or globs.match(f"{table}.{col.name}")
                            or globs.match(col.name)
                            or (schema == ANY_SCHEMA and not strict and _column_name_match(globs, col.name))
                        )
                    hit_list.append(hit)
                hit = all(hit_list) if strict else any(hit_list)
            results.append(hit)
        return all(results) if strict else any(results)


def _column_name_match(globs: _Globs, column: str) -> bool:
    """A column not tied to a table, by name only. ``*`` of a derived relation (a
    subquery or CTE) matches nothing here: its source columns are recorded where
    the subquery reads them."""
    if column == "*":
        return False
    return any(fnmatch.fnmatchcase(column.lower(), p.rsplit(".", 1)[-1]) for p in globs.patterns)


def _table_pattern_match(globs: _Globs, schema: str, table: str) -> bool:
    for pattern in globs.patterns:
        parts = pattern.split(".")
        if len(parts) == 3:
            ok = (schema == ANY_SCHEMA or fnmatch.fnmatchcase(schema.lower(), parts[0])) and fnmatch.fnmatchcase(
                table.lower(), parts[1]
            )
        elif len(parts) == 2:
            ok = fnmatch.fnmatchcase(table.lower(), parts[0])
        else:
            ok = True
        if ok:
            return True
    return False


def _in_window(window: TimeWindow, now: datetime | None) -> bool:
    zone = ZoneInfo(window.timezone)
    local = (now or datetime.now(tz=zone)).astimezone(zone)
    if _DAY_NAMES[local.weekday()] not in window.days:
        return False
    hhmm = f"{local.hour:02d}:{local.minute:02d}"
    if window.start <= window.end:
        return window.start <= hhmm < window.end
    return hhmm >= window.start or hhmm < window.end  # over midnight (22:00-06:00)


@dataclass(frozen=True, slots=True)
class RoleRules:
    """The pack rules and default that apply to one role (or to sessions without a role)."""

    packs: tuple[str, ...]
    checks: tuple
    default: str


class Policy:
    """The compiled guardrails of one config."""

    def __init__(self, config: Config) -> None:
        guard: GuardrailsConfig = config.guardrails
        self.enabled = guard.enabled
        self.rules = tuple(_CompiledRule(r) for r in guard.rules)
        self.time_dependent = any(r.time is not None for r in self.rules)
        self._no_role = self._role_rules(guard.packs, guard.exempt, guard.default)
        self._roles: dict[str, RoleRules] = {}
        for name, role in config.roles.items():
            self._roles[name] = self._for_role(guard, role)

    @staticmethod
    def _for_role(guard: GuardrailsConfig, role: RoleConfig) -> RoleRules:
        policy = role.guardrails
        if policy.packs is not None:
            packs = policy.packs
        else:
            packs = ["dangerous", "read-only"] if role.access == "read" else ["dangerous"]
        return Policy._role_rules(packs, policy.exempt, policy.default or guard.default)

    @staticmethod
    def _role_rules(packs: Iterable[str], exempt: Iterable[str], default: str) -> RoleRules:
        skip = set(exempt)
        packs = tuple(dict.fromkeys(packs))
        checks = tuple((name, check) for pack in packs for name, check in PACK_CHECKS[pack] if name not in skip)
        return RoleRules(packs, checks, default)

    def role_rules(self, role: str | None) -> RoleRules:
        return self._roles.get(role, self._no_role) if role else self._no_role

    def decide_one(self, facts: StatementFacts, ctx: SessionContext, now: datetime | None = None) -> Decision:
        for name, check in self.role_rules(ctx.role).checks:
            reason = check(facts, ctx)
            if reason is not None:
                return Decision(DENY, name, reason, facts=(facts,))
        alerts: list[str] = []
        for rule in self.rules:
            if not rule.matches(facts, ctx, now):
                continue
            if rule.alert:
                alerts.append(rule.name)
            if rule.action == "alert":
                continue
            message = rule.message or _default_message(rule.action, facts)
            return Decision(rule.action, rule.name, message, rule.hint, tuple(alerts), facts=(facts,),
                            time_dependent=self.time_dependent)
        default = self.role_rules(ctx.role).default
        if facts.classification in _ALWAYS_DEFAULT_ALLOW:
            # Transaction control and session settings are how clients work
            # (BEGIN, SET application_name, DISCARD ALL); a default of deny
            # would break every driver. Packs and rules still apply to them.
            default = ALLOW
        message = "" if default == ALLOW else _default_message(default, facts)
        return Decision(default, None, message, None, tuple(alerts), facts=(facts,),
                        time_dependent=self.time_dependent)

    def decide(self, statements: tuple[StatementFacts, ...], ctx: SessionContext,
               now: datetime | None = None) -> Decision:
        """The decision for a request: the most severe of its statements' decisions."""
        if len(statements) == 1:
            return self.decide_one(statements[0], ctx, now)
        worst: Decision | None = None
        alerts: list[str] = []
        for index, facts in enumerate(statements):
            one = self.decide_one(facts, ctx, now)
            alerts.extend(a for a in one.alerts if a not in alerts)
            if worst is None or _SEVERITY[one.action] > _SEVERITY[worst.action]:
                worst = Decision(one.action, one.rule, one.message, one.hint, (), index, (),
                                 one.time_dependent)
        if worst is None:  # an empty query string
            return Decision(ALLOW, None, facts=statements)
        return Decision(worst.action, worst.rule, worst.message, worst.hint, tuple(alerts), worst.statement,
                        statements, worst.time_dependent)


def _default_message(action: str, facts: StatementFacts) -> str:
    what = facts.command
    others = sorted(facts.commands - {facts.command})
    if others:
        what = f"{what} (running {', '.join(others)})"
    if action == DENY:
        return f"{what} is not allowed by the guardrails policy"
    if action == REVIEW:
        return f"{what} needs a reviewer's approval"
    return ""
