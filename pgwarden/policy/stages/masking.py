"""MaskingStage: decides, per statement, which result values a session sees masked.

Runs after the guardrails (a refused statement needs no masking). For a
session whose role sees every value, it costs one dict lookup. Otherwise, per
statement:

1. the statement's lineage (``masking/lineage.py``, parsed once per text) and
   the target's catalog (loaded on first need, and again after DDL or when a
   statement names a relation the catalog lacks: the session holds meanwhile);
2. refusals, before anything reaches PostgreSQL: a masked column used to
   filter/sort/group (rules with ``filter: refuse``), a result computed from
   one (``derived: refuse``), ``COPY … TO STDOUT`` of one (``copy: refuse``),
   masked values flowing into written data (``INSERT … SELECT``, ``CREATE
   TABLE AS``: always refused, it would launder them), planner statistics;
3. otherwise a :class:`~pgwarden.policy.masking.plan.StatementMask` on the
   statement: the relay asks it for a row rewriter at each RowDescription.

Cursors (``DECLARE``/``FETCH``) and SQL prepared statements
(``PREPARE``/``EXECUTE``) carry their query's expectations to the statement
that returns the rows.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
from pathlib import Path
from typing import Any

from ...config import Config, ConfigError
from ...session.statement import Kind, SessionInfo, Statement
from ...session.verdict import ALLOW, Deny, Hold
from ...wire.constants import SQLState
from ..functions import safe_functions
from ..masking.catalog import CatalogCache
from ..masking.lineage import lineage
from ..masking.plan import MaskTools, StatementMask
from ..masking.resolve import Expect, SessionRules, merge_expects
from ..masking.strategies import Tokenizer
from .guardrails import acting_role, session_context

__all__ = ["MaskingStage", "load_masking_key"]

log = logging.getLogger("pgwarden.masking")

_STATE_KEY = "masking"
# Statements at least this long are analysed in a worker thread (guardrails.BACKGROUND_ANALYSIS_LENGTH).
BACKGROUND_ANALYSIS_LENGTH = 32 * 1024
_DDL_PENDING = "masking_ddl_pending"  # DDL ran inside a transaction block that has not ended yet
_DDL_PREFIXES = ("CREATE", "ALTER", "DROP", "COMMENT", "GRANT", "REVOKE", "REFRESH", "IMPORT", "SECURITY")
# Statements that create code pgwarden cannot look into (a function may read masked columns).
_OPAQUE_CODE = frozenset({
    "CREATE FUNCTION", "CREATE PROCEDURE", "CREATE AGGREGATE", "CREATE OPERATOR", "CREATE CAST",
    "CREATE EVENT TRIGGER", "CREATE LANGUAGE", "CREATE TRANSFORM", "ALTER FUNCTION", "ALTER PROCEDURE",
})
# First words of DDL commands: refused on relations with masked columns.
_DDL_WORDS = frozenset({"CREATE", "ALTER", "DROP", "RENAME", "COMMENT", "SECURITY", "GRANT", "REVOKE"})
# DDL that renames, moves or drops what holds relations (schemas, databases) or re-owns objects.
_CONTAINER_DDL = frozenset({"RENAME", "DROP SCHEMA", "ALTER OWNER", "ALTER SCHEMA", "ALTER OBJECT SCHEMA",
                            "ALTER DATABASE", "DROP DATABASE", "DROP OWNED", "REASSIGN OWNED"})
# DDL that stores a query's rows: decided by where masked values flow (written_from), not refused outright.
_COPIES_DATA = frozenset({"CREATE TABLE AS", "SELECT INTO", "CREATE MATERIALIZED VIEW"})
# Client encodings in which a multibyte character may contain an ASCII delimiter or backslash.
_UNSAFE_COPY_ENCODINGS = frozenset({"SJIS", "SHIFTJIS", "BIG5", "GBK", "UHC", "GB18030", "JOHAB", "SHIFTJIS2004"})
_RELOAD_AFTER = 2.0  # seconds: a catalog older than this is reloaded for a relation it lacks


def load_masking_key(config: Config) -> bytes:
    """The tokenization key: from ``key_env``, else ``key_file`` (created with 32 random bytes, 0600)."""
    masking = config.masking
    if masking.key_env:
        value = os.environ.get(masking.key_env)
        if value is None or len(value.encode()) < 16:
            raise ConfigError(f"masking.key_env: environment variable {masking.key_env} must hold at least 16 bytes")
        return value.encode()
    path = Path(masking.key_file)
    try:
        if path.exists():
            key = path.read_bytes()
            if len(key) < 16:
                raise ConfigError(f"masking.key_file {path}: the key is shorter than 16 bytes")
            return key
        path.parent.mkdir(parents=True, exist_ok=True)
        key = secrets.token_bytes(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key)
        return key
    except OSError as exc:
        raise ConfigError(f"masking.key_file {path}: {exc.strerror or exc}") from None


#: Cursors one session may have open (masking remembers each until an answered CLOSE).
MAX_CURSORS = 10_000


class _State:
    """One masked session's view: its rules, and what the names of its prepared statements
    and cursors (SQL and protocol level share them) may return.

    A PREPARE or DECLARE may fail (the name exists) or be rolled back: until the
    statement is known to have succeeded, a name means the stricter of its old and
    new meaning (``merge_expects``); on success it means exactly the new one.
    DEALLOCATE, CLOSE and DISCARD forget only once they succeeded.
    """

    __slots__ = ("rules", "cursors", "prepared", "cache", "effects", "encoding_changes")

    def __init__(self, rules: SessionRules) -> None:
        self.rules = rules
        # name -> (expectations or None, echo, returns rows: True/False/None unknown)
        self.cursors: dict[str, tuple[list[Expect] | None, bool, bool | None]] = {}
        self.prepared: dict[str, tuple[list[Expect] | None, bool, bool | None]] = {}
        self.cache: dict[str, tuple[Any, Any, Any]] = {}  # text -> (analysis, catalog, outcome)
        # id(statement) -> (statement, [(table name, name, entry or None to forget)]): applied on success
        self.effects: dict[int, tuple[Statement, list]] = {}
        # Statements sent that change client_encoding and have not completed: until they have,
        # the encoding COPY data will be in is not known (id -> statement).
        self.encoding_changes: dict[int, Statement] = {}


class MaskingStage:
    name = "masking"

    def __init__(self, config: Config, catalogs: CatalogCache | None = None, loader=None, key: bytes | None = None):
        self.config = config
        masking = config.masking
        if catalogs is None:
            if loader is None:
                raise ValueError("MaskingStage needs a catalog loader (pgwarden.server.catalog.catalog_loader)")
            catalogs = CatalogCache(loader, masking.catalog_ttl)
        self.catalogs = catalogs
        if key is None:
            key = load_masking_key(config) if masking.uses_tokens else secrets.token_bytes(32)
        self.tokenizer = Tokenizer(key)
        plugins = []
        for plugin in masking.detect.plugins:
            from ..masking.detectors import load_plugin

            options = dict(plugin)
            name = str(options.pop("name", ""))
            try:
                plugins.append(load_plugin(name, options))
            except ValueError as exc:
                raise ConfigError(f"masking.detect.plugins: {exc}") from None
        self._plugins = tuple(plugins)
        self._tools: dict[str | None, MaskTools] = {}
        self._large: dict[str, Any] = {}  # lineage of statements analysed in a worker thread

    # ------------------------------------------------------------ sessions

    def _session_rules(self, info: SessionInfo) -> tuple[SessionRules, Any] | None:
        masking = self.config.masking
        if not masking.active:
            return None
        identity = info.extra.get("identity")
        role = acting_role(self.config, identity, info.target, info.extra.get("access"))
        if role is not None and role in masking.unmasked_roles:
            return None
        user = None if identity is not None else info.user
        rules = []
        for rule in masking.rules:
            if rule.targets and info.target not in rule.targets:
                continue
            strategy = rule.strategy_for(role, user)
            if strategy != "none":
                rules.append((rule, strategy))
        tools = self._tools_for(role, user)
        if not rules and tools.detect_strategy is None:
            return None
        ctx = session_context(self.config, info)
        return SessionRules(rules, role, ctx.user, info.target), tools

    def _tools_for(self, role: str | None, user: str | None) -> MaskTools:
        detect = self.config.masking.detect
        key = role if role is not None else f"user:{user}"
        tools = self._tools.get(key)
        if tools is None:
            strategy = detect.roles.get(role, detect.strategy) if role is not None else detect.strategy
            if role is None and user is not None and user in detect.unmasked_users:
                strategy = "none"
            strategy_for = None
            if detect.enabled and strategy != "none" and detect.types:
                per_type = dict(detect.strategies)
                default = strategy

                def strategy_for(semantic: str, _per=per_type, _default=default) -> str:
                    return _per.get(semantic, _default)

            # A plug-in's types (Presidio: person) are detected whenever the plug-in is configured.
            types = frozenset(detect.types).union(*(getattr(p, "types", ()) for p in self._plugins))
            if role is not None:
                types = types - frozenset(detect.visible.get(role, ()))
            if not types:
                strategy_for = None
            tools = MaskTools(self.tokenizer, self.config.masking.redaction, types, strategy_for, self._plugins,
                              detect_all=detect.scope == "all")
            self._tools[key] = tools
        return tools

    def session_started(self, info: SessionInfo) -> None:
        found = self._session_rules(info)
        if found is None:
            info.extra.pop(_STATE_KEY, None)
            return
        rules, tools = found
        state = _State(rules)
        info.extra[_STATE_KEY] = state
        info.extra["masking_tools"] = tools
        # Cursors are not forgotten on a protocol Close or at a transaction's end: a Close
        # PostgreSQL skipped (after an error) leaves the cursor, a WITH HOLD cursor outlives
        # COMMIT, and a status seen before a Flushed BEGIN's answer is stale. Only an answered
        # SQL CLOSE forgets one (completed); a stale entry only makes a portal of the same
        # name masked more strictly, never less.

    # ------------------------------------------------------------ statements

    def check(self, statement: Statement, _reloaded: bool = False) -> Deny | Hold | None:
        session = statement.session
        state = session.extra.get(_STATE_KEY)
        if state is None or statement.kind == Kind.FUNCTION_CALL:
            return None
        catalog = self.catalogs.get(session.target)
        if catalog is None:
            return self._hold_for_catalog(statement)
        text = statement.text
        if text is None:
            # An Execute of a portal whose statement only SQL PREPARE or DECLARE made.
            return self._attach(statement, state, catalog, _NOTHING)
        if len(text) >= BACKGROUND_ANALYSIS_LENGTH:
            analysis = self._large.get(text)
            if analysis is None:
                return self._hold_for_lineage(statement, text)
        else:
            analysis = lineage(text)
        if analysis.error is not None:
            return Deny(
                f"pgwarden: masking cannot analyse this statement ({analysis.error}), so it is refused",
                "54001" if "complex" in analysis.error else SQLState.SYNTAX_ERROR,
                rule="masking.unparsed",
            )
        cached = state.cache.get(text)
        if cached is not None and cached[0] is analysis and cached[1] is catalog:
            outcome = cached[2]
        else:
            outcome, cacheable = self._decide(state, analysis, catalog, statement, _reloaded)
            if outcome == "reload":
                self.catalogs.stale(session.target)
                return self._hold_for_catalog(statement)
            if cacheable:
                if len(state.cache) >= 512:
                    state.cache.clear()
                state.cache[text] = (analysis, catalog, outcome)
        if isinstance(outcome, Deny):
            return outcome
        return self._attach(statement, state, catalog, outcome)

    def _attach(self, statement: Statement, state: _State, catalog, outcome) -> Deny | None:
        """Apply the decision's effects on names and give the statement its mask, if it needs one."""
        session = statement.session
        expected, echo, copy, effects, needs = outcome
        if effects:
            self._stage_effects(state, statement, effects)
        if statement.text is not None and any(
            "client_encoding" in f.settings or "all" in f.settings for f in _statement_facts(statement)
        ):
            state.encoding_changes[id(statement)] = statement
        kind = statement.kind
        if kind == Kind.PARSE:
            return None
        if kind == Kind.EXECUTE:
            # The portal may be a prepared statement or cursor SQL made (the relay's text for
            # the name may be stale): its expectations count too, the stricter wins.
            extra = []
            if statement.statement_name and statement.statement_name in state.prepared:
                extra.append(state.prepared[statement.statement_name])
            if statement.portal_name and statement.portal_name in state.cursors:
                extra.append(state.cursors[statement.portal_name])
            if statement.text is None and not extra:
                extra.append((None, True, None))  # unknown to masking: decide by the RowDescription alone
            for stored in extra:
                expected = [merge_expects(expected[0], stored[0]) if expected else stored[0]]
                echo = echo or stored[1]
                needs = needs or _needs(expected, stored[1], session.extra["masking_tools"])
        if copy is not None and state.encoding_changes:
            return _deny(
                "COPY cannot be masked while a change of client_encoding is under way (in this query string or "
                "not yet answered; rule masking.copy_encoding)", "masking.copy_encoding",
            )
        if copy is not None and _unsafe_encoding(session.server_params.get("client_encoding", "UTF8")):
            return _deny(
                "COPY cannot be masked safely in client_encoding "
                f"{session.server_params.get('client_encoding')} (a multibyte character may contain a delimiter "
                "byte; rule masking.copy_encoding)", "masking.copy_encoding",
            )
        if needs:
            statement.mask = StatementMask(
                state.rules, catalog, None, session.extra["masking_tools"], expected, echo, copy,
                session.server_params.get("client_encoding", "UTF8"),
            )
        return None

    @staticmethod
    def _stage_effects(state: _State, statement: Statement, effects: list) -> None:
        """Names defined now mean the stricter of old and new until the statement succeeds."""
        for table_name, name, entry in effects:
            if entry is None:
                continue  # forgetting waits for success
            table = state.prepared if table_name == "prepared" else state.cursors
            old = table.get(name)
            table[name] = entry if old is None else (
                merge_expects(old[0], entry[0]), old[1] or entry[1],
                None if old[2] is None or entry[2] is None else old[2] or entry[2],
            )
        if len(state.effects) > 256:
            state.effects.clear()
        state.effects[id(statement)] = (statement, effects)

    def _decide(self, state: _State, analysis, catalog, statement: Statement, reloaded: bool):
        """(outcome, cacheable): outcome is a Deny, "reload", or (expected per result set or
        None when their order is unknown, echo, copy plan, effects on names)."""
        rules = state.rules
        paths = None  # names resolve in every schema: the strictest meaning wins (docs/masking.md)
        session = statement.session
        unsafe = _unsafe_functions(statement)
        expected: list | None = []
        echo = False
        copy = None
        cacheable = True
        effects: list = []
        tools = session.extra["masking_tools"]
        needs_mask = False
        for index, lin in enumerate(analysis.statements):
            where = f"statement {index + 1} of {len(analysis.statements)}: " if len(analysis.statements) > 1 else ""
            stats = rules.names_statistics(catalog, lin.relations)
            if stats is not None:
                return _deny(
                    f"{where}planner statistics ({stats}) hold sample values of masked columns and are refused "
                    "for this session (rule masking.statistics)", "masking.statistics",
                ), True
            if not reloaded and self._lacks_relation(catalog, lin.relations, paths, rules.user):
                return "reload", False
            if lin.command in _OPAQUE_CODE:
                return _deny(
                    f"{where}{lin.command} is refused while masking applies to this session: a function body "
                    "could read masked columns where pgwarden cannot see it (rule masking.functions)",
                    "masking.functions",
                ), True
            referenced, _unknown = rules.refs_hits(catalog, lin.referenced, paths)
            if referenced:
                echo = True
                if unsafe:
                    return _deny(
                        f"{where}this statement reads masked column {referenced[0].column} and calls "
                        f"{unsafe[0]}, a function pgwarden cannot vouch for: it could keep or reveal masked values "
                        "(rule masking.functions)", "masking.functions",
                    ), True
            written, _ = rules.refs_hits(catalog, lin.written_from, paths)
            if written:
                hit = written[0]
                return _deny(
                    f"{where}values of masked column {hit.column} would be written into a table or file, "
                    f"which would unmask them (rule masking.{hit.rule.name})", f"masking.{hit.rule.name}",
                ), True
            if lin.command in _CONTAINER_DDL and not lin.relations:
                # ALTER SCHEMA public RENAME TO x: every rule naming public.* would stop matching.
                return _deny(
                    f"{where}{lin.command} of a schema or other object is refused while masking applies to this "
                    "session: masking rules name schemas and tables (rule masking.ddl)", "masking.ddl",
                ), True
            if lin.command.split(" ", 1)[0] in _DDL_WORDS and lin.command not in _COPIES_DATA:
                masked_rel = self._masked_relation(rules, catalog, lin.relations, paths)
                if masked_rel is not None:
                    return _deny(
                        f"{where}{lin.command} on {masked_rel}, which has masked columns, is refused: renaming, "
                        "altering or building on it could unmask them (rule masking.ddl)", "masking.ddl",
                    ), True
            filtered, _ = rules.refs_hits(catalog, lin.filters, paths)
            for hit in filtered:
                if hit.rule.filter == "refuse":
                    return _deny(
                        f"{where}masked column {hit.column} may not be used to filter, sort or group rows "
                        f"(rule masking.{hit.rule.name})", f"masking.{hit.rule.name}",
                    ), True
            outputs = lin.outputs
            returns_rows: bool | None = lin.returns_rows
            if lin.cursor is not None and lin.command in ("FETCH", "MOVE"):
                cacheable = False
                outputs_expect, stored_echo, _ = state.cursors.get(lin.cursor, (None, True, True))
                echo = echo or stored_echo
                # The name may now be a protocol portal (cursors and portals share names) and the
                # remembered DECLARE stale: the RowDescription's origins are always checked too.
                needs_mask = True
            elif lin.prepared is not None and lin.command in ("EXECUTE", *_COPIES_DATA):
                cacheable = False
                outputs_expect, stored_echo, stored_rows = state.prepared.get(lin.prepared, (None, True, None))
                echo = echo or stored_echo
                if lin.command == "EXECUTE":
                    returns_rows = stored_rows
                if lin.command in _COPIES_DATA and (stored_echo or any(e.hits for e in outputs_expect or ())
                                                    or outputs_expect is None):
                    return _deny(
                        f"{where}the values of prepared statement {lin.prepared} would be written into a table, "
                        "which could unmask them (rule masking.write)", "masking.write",
                    ), True
            else:
                outputs_expect = rules.expect_outputs(catalog, outputs, paths, opaque_calls=bool(unsafe))
            if lin.returns_rows and (
                tools.detect_all or self._masked_relation(rules, catalog, lin.relations, paths) is not None
            ):
                needs_mask = True  # the RowDescription's origins are checked too (a second line of defence)
            if outputs_expect is not None:
                for position, expect in enumerate(outputs_expect):
                    if expect.kind == "derived":
                        for hit in expect.hits:
                            if hit.rule.derived == "refuse":
                                label = outputs[position].name if outputs and position < len(outputs) else position + 1
                                return _deny(
                                    f"{where}result column {label!r} is computed from masked column {hit.column} "
                                    f"(rule masking.{hit.rule.name})", f"masking.{hit.rule.name}",
                                ), True
                    if expect.kind in ("derived", "masked"):
                        needs_mask = True
                    elif expect.kind == "unknown" and tools.detect_strategy is not None:
                        needs_mask = True
            elif lin.returns_rows:
                needs_mask = True  # positions unknown: the RowDescription decides
            entry = (outputs_expect, bool(referenced) or (outputs_expect is None), _inner_returns_rows(lin))
            if lin.command == "DECLARE" and lin.cursor is not None:
                if len(state.cursors) >= MAX_CURSORS and lin.cursor not in state.cursors:
                    return _deny(
                        f"{where}this session has declared {MAX_CURSORS} cursors that were never closed "
                        "(CLOSE them, or CLOSE ALL)", "masking.cursors",
                    ), True
                cacheable = False
                effects.append(("cursors", lin.cursor, entry))
            elif lin.command == "PREPARE" and lin.prepared is not None:
                cacheable = False
                effects.append(("prepared", lin.prepared, entry))
            elif lin.command in ("CLOSE", "DEALLOCATE", "DISCARD"):
                cacheable = False
                if lin.cursor is not None:
                    effects.append(("cursors", lin.cursor, None))
                if lin.prepared is not None:
                    effects.append(("prepared", lin.prepared, None))
            if lin.copy is not None and lin.copy.direction == "to":
                copy_plan = self._copy_plan(rules, catalog, lin.copy, paths)
                hits = [h for e in (copy_plan or ()) for h in e.hits]
                for hit in hits:
                    if hit.rule.copy_out == "refuse":
                        return _deny(f"{where}COPY of masked column {hit.column} is refused (rule masking.{hit.rule.name})",
                                     f"masking.{hit.rule.name}"), True
                if hits or copy_plan is None or tools.detect_strategy is not None or tools.detect_all:
                    encoding = lin.copy.options.get("encoding")
                    if encoding is not None and str(encoding).upper().replace("-", "").replace("_", "") not in (
                        "UTF8", "UNICODE"
                    ):
                        return _deny(f"{where}COPY with ENCODING {encoding} cannot be masked safely "
                                     "(rule masking.copy_encoding)", "masking.copy_encoding"), True
                    copy = (copy or []) + [(lin.copy, copy_plan)]  # one per COPY, in order
                    needs_mask = True
            if returns_rows is None:
                expected = None  # a result may or may not come: the plans cannot be lined up
            elif returns_rows and lin.command not in ("DECLARE", "PREPARE") and expected is not None:
                expected.append(outputs_expect)
        if statement.kind == Kind.PARSE and statement.statement_name and len(analysis.statements) == 1:
            # A protocol-level prepared statement is also what SQL ``EXECUTE name`` runs.
            lin = analysis.statements[0]
            entry = (rules.expect_outputs(catalog, lin.outputs, paths, opaque_calls=bool(unsafe)), echo,
                     lin.returns_rows)
            effects.append(("prepared", statement.statement_name, entry))
            cacheable = False
        if echo and len(analysis.statements) > 1:
            # Which result belongs to which statement of a string is only counted, and counts can be
            # wrong (a zero-column PREPARE, an INSTEAD rule returning rows): a string that reads
            # masked columns is planned from each RowDescription alone, and its COPYs mask every field.
            expected = None
            if copy is not None:
                copy = [(info, None) for info, _plan in copy]
        if not needs_mask and not echo and expected is not None:
            # Nothing to mask: no plan, the rows pass untouched (effects on names still apply).
            return ([], False, None, effects, False) if effects else _NOTHING, cacheable
        return (expected, echo, copy, effects, True), cacheable

    def _copy_plan(self, rules: SessionRules, catalog, info, paths) -> list[Expect] | None:
        if info.query is not None:
            return rules.expect_outputs(catalog, info.query.outputs, paths)
        if info.relation is None:
            return None
        rels = catalog.resolve(info.relation, paths, rules.user)
        if len(rels) != 1:
            return None
        rel = rels[0]
        columns = [c for c in rel.columns if not c[3]] if info.columns is None else [rel.named(n) for n in info.columns]
        if any(c is None for c in columns):
            return None
        from ..masking.resolve import _expect

        return [_expect(rules.column_hits(catalog, rel, c[0], paths), True, False, c[2]) for c in columns]

    @staticmethod
    def _masked_relation(rules: SessionRules, catalog, relations, paths):
        """The first of ``relations`` with a column masked for this session (views: through them)."""
        for name in relations:
            for rel in catalog.resolve(name, paths, rules.user):
                if rules.column_hits(catalog, rel, 0, paths):
                    return rel
        return None

    @staticmethod
    def _lacks_relation(catalog, relations, paths, user) -> bool:
        """Whether a relation the statement names is missing and the catalog is old enough to reload."""
        import time

        if time.monotonic() - catalog.loaded_at < _RELOAD_AFTER:
            return False
        for name in relations:
            if name.schema in ("pg_catalog", "information_schema") or name.name.startswith("pg_"):
                continue
            if not catalog.resolve(name, paths, user):
                return True
        return False

    def _hold_for_lineage(self, statement: Statement, text: str) -> Hold:
        """Analyse a large statement in a worker thread; only this session waits (as the guardrails do)."""

        async def wait():
            analysis = await asyncio.to_thread(lineage, text)
            if len(self._large) >= 64:
                self._large.clear()
            self._large[text] = analysis
            verdict = self.check(statement)
            if isinstance(verdict, Hold) and verdict.rule == "masking.catalog":
                return await verdict.wait()  # the catalog changed meanwhile
            if isinstance(verdict, Hold):
                return Deny("pgwarden: masking could not decide this statement", SQLState.INTERNAL_ERROR,
                            rule="masking.analysis")
            return ALLOW if verdict is None else verdict

        return Hold(wait, reason="analysing a large statement for masking", rule="masking.analysis")

    def _hold_for_catalog(self, statement: Statement) -> Hold:
        target = statement.session.target

        async def wait():
            try:
                await self.catalogs.load(target)
            except Exception as exc:  # noqa: BLE001 - no catalog, no decision: refuse
                log.warning("masking: %s", exc, extra={"session": statement.session.id})
                return Deny(
                    f'pgwarden: masking could not read the catalog of target "{target}", so the statement is refused',
                    SQLState.CONNECTION_FAILURE,
                    rule="masking.catalog",
                    hint="The gateway log has the reason.",
                )
            verdict = self.check(statement, _reloaded=True)
            if isinstance(verdict, Hold) and verdict.rule == "masking.analysis":
                return await verdict.wait()  # a large statement: analysed in a thread next
            if isinstance(verdict, Hold):  # never wait twice for the catalog
                return Deny("pgwarden: masking could not decide this statement", SQLState.INTERNAL_ERROR,
                            rule="masking.catalog")
            return ALLOW if verdict is None else verdict

        return Hold(wait, reason="reading the target's catalog for masking", rule="masking.catalog")

    # ------------------------------------------------------------ after the reply

    def completed(self, statement: Statement) -> None:
        """After the reply: names defined or forgotten for good, and the catalog after DDL."""
        session = statement.session
        state = session.extra.get(_STATE_KEY)
        if state is not None and state.encoding_changes:
            state.encoding_changes.pop(id(statement), None)
        if state is not None and state.effects:
            staged = state.effects.pop(id(statement), None)
            if staged is not None and staged[0] is statement and statement.status == "ok":
                for table_name, name, entry in staged[1]:
                    table = state.prepared if table_name == "prepared" else state.cursors
                    if entry is not None:
                        table[name] = entry  # it succeeded: the name means exactly this now
                    elif name == "*":
                        table.clear()
                    else:
                        table.pop(name, None)
        if statement.status != "ok":
            return
        extra = session.extra
        if _is_ddl(statement):
            # DDL that succeeded (in any session) may change what a name or OID means; inside
            # a transaction block, other sessions see it only at COMMIT: reload again then.
            self.catalogs.stale(session.target)
            if session.txn_status != "I":
                extra[_DDL_PENDING] = True
        elif extra.get(_DDL_PENDING) and session.txn_status == "I":
            extra.pop(_DDL_PENDING, None)
            self.catalogs.stale(session.target)

    def session_ended(self, info: SessionInfo, reason: str) -> None:
        if info.extra.pop(_DDL_PENDING, None):
            self.catalogs.stale(info.target)


def _is_ddl(statement: Statement) -> bool:
    decision = statement.decision
    if decision is not None:
        return any(facts.classification == "ddl" for facts in decision.facts)
    return bool(statement.text) and statement.text.lstrip().upper().startswith(_DDL_PREFIXES)


_NOTHING = ([], False, None, [], False)  # (expected, echo, copy, effects, needs a mask)


def _needs(expected, echo: bool, tools) -> bool:
    """Whether expectations ask for a plan at all (merged ones, for an Execute)."""
    if echo or expected is None or tools.detect_all:
        return True
    for expects in expected:
        if expects is None:
            return True
        for e in expects:
            if e.kind in ("masked", "derived") or (e.kind == "unknown" and tools.detect_strategy is not None):
                return True
    return False


def _inner_returns_rows(lin) -> bool | None:
    """Whether what a PREPARE or DECLARE names returns rows when executed (None: unknown)."""
    if lin.outputs is None:
        return None
    return len(lin.outputs) > 0


def _unsafe_encoding(encoding: str) -> bool:
    return encoding.upper().replace("-", "").replace("_", "") in _UNSAFE_COPY_ENCODINGS


def _statement_facts(statement: Statement):
    """The guardrails' facts of the statement (analysed here when the guardrails are off)."""
    facts = getattr(statement.decision, "facts", None)
    if not facts:
        from ..analysis import analyze

        facts = analyze(statement.text or "").statements
    return facts


def _unsafe_functions(statement: Statement) -> list[str]:
    """Functions the statement calls that are not side-effect-free built-ins (their bodies are opaque)."""
    facts = _statement_facts(statement)
    safe = safe_functions()
    return sorted(
        str(name) for f in facts for name in f.functions
        if name.schema not in (None, "pg_catalog") or name.name not in safe
    )


def _deny(message: str, rule: str) -> Deny:
    return Deny(
        f"pgwarden: {message}",
        SQLState.INSUFFICIENT_PRIVILEGE,
        rule=rule,
        hint="The masking rules of this role decide what it may read; see docs/masking.md.",
    )
