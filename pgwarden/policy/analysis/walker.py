"""Walk libpg_query's parse tree (as JSON) and collect :class:`StatementFacts`.

Why JSON rather than pglast's Python AST: ``pglast.parser.parse_sql_json`` plus
``json.loads`` costs a few microseconds for a typical statement, building the
AST objects tens to hundreds; on a cache miss that difference is the gateway's
latency. The tree is the PostgreSQL parser's own (libpg_query), so what is a
statement, a function call or a table here is exactly what the server sees.

The walk is complete: every child of every node is visited, so a function call
or a write hidden anywhere (a CTE, a subquery in any clause, a FROM-clause
function, a default expression, ``EXPLAIN``, ``COPY (…)``, ``PREPARE``,
``CREATE TABLE AS``, ``DECLARE``) is found. Node types with special meaning have
handlers; anything else is walked generically, so a node type this code does
not know about still has its tables and function calls recorded.

Scopes: each query level knows its relations (for tying column references to
tables) and the CTE names visible to it, with PostgreSQL's rules: a
non-recursive CTE sees only the CTEs before it, a ``WITH RECURSIVE`` one sees
all of them, so ``WITH customers AS (SELECT * FROM customers)`` reads the real
table.

Constants: whenever a decision could depend on a constant's value (the name in
``set_config('role', …)``, ``SET`` values, ``nextval('seq')``), the walker
marks the analysis literal-dependent; the cache then never reuses it for a text
with different constants.
"""

from __future__ import annotations

import re
from typing import Any

from .facts import DCL, DDL, RANK, READ, SESSION, TRANSACTION, UTILITY, WRITE, Column, Name, StatementFacts

__all__ = ["walk_statement"]

# Statement node type -> (command, classification) for the fixed cases.
_FIXED: dict[str, tuple[str, str]] = {
    "InsertStmt": ("INSERT", WRITE),
    "UpdateStmt": ("UPDATE", WRITE),
    "DeleteStmt": ("DELETE", WRITE),
    "MergeStmt": ("MERGE", WRITE),
    "TruncateStmt": ("TRUNCATE", WRITE),
    "CopyStmt": ("COPY", READ),
    "ExplainStmt": ("EXPLAIN", READ),
    "VariableShowStmt": ("SHOW", READ),
    "FetchStmt": ("FETCH", READ),
    "ClosePortalStmt": ("CLOSE", READ),
    "DeclareCursorStmt": ("DECLARE CURSOR", READ),
    "PrepareStmt": ("PREPARE", READ),
    "ExecuteStmt": ("EXECUTE", READ),
    "DeallocateStmt": ("DEALLOCATE", SESSION),
    "DiscardStmt": ("DISCARD", SESSION),
    "VariableSetStmt": ("SET", SESSION),
    "ListenStmt": ("LISTEN", SESSION),
    "UnlistenStmt": ("UNLISTEN", SESSION),
    "NotifyStmt": ("NOTIFY", WRITE),
    "DoStmt": ("DO", WRITE),
    "CallStmt": ("CALL", WRITE),
    "LockStmt": ("LOCK TABLE", UTILITY),
    "LoadStmt": ("LOAD", UTILITY),
    "AlterSystemStmt": ("ALTER SYSTEM", UTILITY),
    "CheckPointStmt": ("CHECKPOINT", UTILITY),
    "ClusterStmt": ("CLUSTER", UTILITY),
    "ReindexStmt": ("REINDEX", UTILITY),
    "CreatedbStmt": ("CREATE DATABASE", DDL),
    "DropdbStmt": ("DROP DATABASE", DDL),
    "CreateRoleStmt": ("CREATE ROLE", DCL),
    "AlterRoleStmt": ("ALTER ROLE", DCL),
    "AlterRoleSetStmt": ("ALTER ROLE", DCL),
    "DropRoleStmt": ("DROP ROLE", DCL),
    "GrantStmt": ("GRANT", DCL),
    "GrantRoleStmt": ("GRANT", DCL),
    "AlterDefaultPrivilegesStmt": ("ALTER DEFAULT PRIVILEGES", DCL),
    "ReassignOwnedStmt": ("REASSIGN OWNED", DCL),
    "DropOwnedStmt": ("DROP OWNED", DCL),
    "AlterOwnerStmt": ("ALTER OWNER", DCL),
    "CreatePLangStmt": ("CREATE LANGUAGE", DDL),
    "CreateExtensionStmt": ("CREATE EXTENSION", DDL),
    "AlterExtensionStmt": ("ALTER EXTENSION", DDL),
    "AlterExtensionContentsStmt": ("ALTER EXTENSION", DDL),
    "CreateFdwStmt": ("CREATE FOREIGN DATA WRAPPER", DDL),
    "CreateForeignServerStmt": ("CREATE SERVER", DDL),
    "CreateUserMappingStmt": ("CREATE USER MAPPING", DDL),
    "ImportForeignSchemaStmt": ("IMPORT FOREIGN SCHEMA", DDL),
    "CreateForeignTableStmt": ("CREATE FOREIGN TABLE", DDL),
    "CreateStmt": ("CREATE TABLE", DDL),
    "ViewStmt": ("CREATE VIEW", DDL),
    "IndexStmt": ("CREATE INDEX", DDL),
    "CreateSchemaStmt": ("CREATE SCHEMA", DDL),
    "CreateFunctionStmt": ("CREATE FUNCTION", DDL),
    "CreateTrigStmt": ("CREATE TRIGGER", DDL),
    "CreateEventTrigStmt": ("CREATE EVENT TRIGGER", DDL),
    "CreateSeqStmt": ("CREATE SEQUENCE", DDL),
    "AlterSeqStmt": ("ALTER SEQUENCE", DDL),
    "RenameStmt": ("RENAME", DDL),
    "CommentStmt": ("COMMENT", DDL),
    "SecLabelStmt": ("SECURITY LABEL", DDL),
    "RuleStmt": ("CREATE RULE", DDL),
    "CreatePolicyStmt": ("CREATE POLICY", DDL),
    "AlterPolicyStmt": ("ALTER POLICY", DDL),
    "CreateSubscriptionStmt": ("CREATE SUBSCRIPTION", DDL),
    "CreatePublicationStmt": ("CREATE PUBLICATION", DDL),
}

_DROP_OBJECT = {
    "OBJECT_TABLE": "TABLE",
    "OBJECT_SCHEMA": "SCHEMA",
    "OBJECT_VIEW": "VIEW",
    "OBJECT_MATVIEW": "MATERIALIZED VIEW",
    "OBJECT_FOREIGN_TABLE": "FOREIGN TABLE",
    "OBJECT_INDEX": "INDEX",
    "OBJECT_SEQUENCE": "SEQUENCE",
    "OBJECT_FUNCTION": "FUNCTION",
    "OBJECT_PROCEDURE": "PROCEDURE",
    "OBJECT_ROUTINE": "ROUTINE",
    "OBJECT_TYPE": "TYPE",
    "OBJECT_DOMAIN": "DOMAIN",
    "OBJECT_EXTENSION": "EXTENSION",
    "OBJECT_TRIGGER": "TRIGGER",
    "OBJECT_RULE": "RULE",
    "OBJECT_POLICY": "POLICY",
    "OBJECT_FOREIGN_SERVER": "SERVER",
    "OBJECT_FDW": "FOREIGN DATA WRAPPER",
    "OBJECT_LANGUAGE": "LANGUAGE",
    "OBJECT_EVENT_TRIGGER": "EVENT TRIGGER",
    "OBJECT_PUBLICATION": "PUBLICATION",
}
_RELATION_OBJECTS = {"OBJECT_TABLE", "OBJECT_VIEW", "OBJECT_MATVIEW", "OBJECT_FOREIGN_TABLE", "OBJECT_INDEX", "OBJECT_SEQUENCE"}
_ROUTINE_OBJECTS = {"OBJECT_FUNCTION", "OBJECT_PROCEDURE", "OBJECT_ROUTINE", "OBJECT_AGGREGATE"}

_TRANSACTION_COMMANDS = {
    "TRANS_STMT_BEGIN": "BEGIN",
    "TRANS_STMT_START": "START TRANSACTION",
    "TRANS_STMT_COMMIT": "COMMIT",
    "TRANS_STMT_ROLLBACK": "ROLLBACK",
    "TRANS_STMT_SAVEPOINT": "SAVEPOINT",
    "TRANS_STMT_RELEASE": "RELEASE",
    "TRANS_STMT_ROLLBACK_TO": "ROLLBACK TO SAVEPOINT",
    "TRANS_STMT_PREPARE": "PREPARE TRANSACTION",
    "TRANS_STMT_COMMIT_PREPARED": "COMMIT PREPARED",
    "TRANS_STMT_ROLLBACK_PREPARED": "ROLLBACK PREPARED",
}

# Functions whose first argument names a setting or a sequence: the decision
# depends on that constant.
_SETTING_FUNCTIONS = {"set_config"}
_SEQUENCE_FUNCTIONS = {"nextval", "setval", "currval"}

_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")


def _fallback_command(node_type: str) -> tuple[str, str]:
    """ALTER FOO / CREATE FOO for node types without an entry (``AlterCollationStmt``...)."""
    words = _CAMEL.sub(" ", node_type.removesuffix("Stmt")).upper()
    first = words.split(" ", 1)[0]
    if first in ("CREATE", "ALTER", "DROP", "DEFINE", "RENAME", "COMMENT", "REFRESH"):
        return words, DDL
    return words, UTILITY


class _Scope:
    """One query level: its relations (alias -> Name or None for derived) and visible CTEs."""

    __slots__ = ("relations", "ctes", "parent")

    def __init__(self, parent: _Scope | None, ctes: frozenset[str]):
        self.parent = parent
        self.ctes = ctes
        self.relations: list[tuple[str, Name | None]] = []

    def find(self, alias: str) -> tuple[bool, Name | None]:
        scope: _Scope | None = self
        while scope is not None:
            for name, rel in scope.relations:
                if name == alias:
                    return True, rel
            scope = scope.parent
        return False, None


_ROOT = _Scope(None, frozenset())


def _strings(items: Any) -> list[str]:
    """The svals of a list of String nodes (a qualified name)."""
    out = []
    for item in items or ():
        if isinstance(item, dict):
            s = item.get("String")
            if s is not None:
                out.append(s.get("sval", ""))
            elif "A_Star" in item:
                out.append("*")
    return out


def _name(parts: list[str]) -> Name:
    if not parts:
        return Name(None, "")
    if len(parts) == 1:
        return Name(None, parts[0])
    return Name(parts[-2], parts[-1])


def _defelems(options: Any) -> dict[str, Any]:
    out = {}
    for item in options or ():
        d = item.get("DefElem") if isinstance(item, dict) else None
        if d is not None:
            out[d.get("defname", "")] = d.get("arg")
    return out


class Walker:
    """Collects the facts of one top-level statement."""

    def __init__(self) -> None:
        self.tables: set[Name] = set()
        self.written: set[Name] = set()
        self.columns: set[Column] = set()
        self.functions: set[Name] = set()
        self.schemas: set[str] = set()
        self.flags: set[str] = set()
        self.settings: set[str] = set()
        self.languages: set[str] = set()
        self.effects: set[str] = set()
        self.commands: set[str] = set()
        self.has_where: bool | None = None
        self.literal_dependent = False
        self.search_path: tuple[str, ...] | None = None
        self.prepare: str | None = None
        self.execute: str | None = None
        self.deallocate: str | None = None
        self.inner_command: str | None = None

    # ------------------------------------------------------------ constants

    def const(self, node: Any) -> Any:
        """The value of a constant node (A_Const/String/Integer/Boolean), marking the dependence."""
        # Whatever is at this position, the decision now depends on it: a
        # parameter ($1) and a constant normalise to the same text.
        self.literal_dependent = True
        if not isinstance(node, dict):
            return None
        if "A_Const" in node:
            body = node["A_Const"]
            if body.get("isnull"):
                return None
            for key in ("sval", "ival", "boolval", "fval", "bsval"):
                if key in body:
                    inner = body[key]
                    if key == "ival":
                        return inner.get("ival", 0)
                    if key == "boolval":
                        return inner.get("boolval", False)
                    return inner.get(key, "")
            return None
        if "String" in node:
            return node["String"].get("sval", "")
        if "Integer" in node:
            return node["Integer"].get("ival", 0)
        if "Boolean" in node:
            return node["Boolean"].get("boolval", False)
        if "TypeCast" in node:  # '5'::text as a SET value
            return self.const(node["TypeCast"].get("arg"))
        return None

    # ------------------------------------------------------------ generic walk

    def visit(self, node: Any, scope: _Scope) -> None:
        if isinstance(node, list):
            for item in node:
                self.visit(item, scope)
            return
        if not isinstance(node, dict):
            return
        if len(node) == 1:
            key = next(iter(node))
            if key[:1].isupper():
                handler = getattr(self, "n_" + key, None)
                body = node[key]
                if handler is not None:
                    handler(body, scope)
                elif isinstance(body, dict):
                    self.children(body, scope)
                return
        # An unwrapped struct (a typed field): recognise the ones that matter.
        if "relname" in node:
            self.n_RangeVar(node, scope)
        elif "funcname" in node and "funcformat" in node:
            self.n_FuncCall(node, scope)
        elif "limitOption" in node:
            self.n_SelectStmt(node, scope)
        else:
            self.children(node, scope)

    def children(self, body: dict, scope: _Scope) -> None:
        for value in body.values():
            if isinstance(value, (dict, list)):
                self.visit(value, scope)

    def effect(self, classification: str) -> None:
        self.effects.add(classification)

    # ------------------------------------------------------------ queries

    def _with(self, with_clause: dict | None, scope: _Scope) -> frozenset[str]:
        """Walk a WITH clause; return the CTE names visible to the main query."""
        if not with_clause:
            return scope.ctes
        ctes = [c.get("CommonTableExpr", {}) for c in with_clause.get("ctes", ())]
        names = [c.get("ctename", "") for c in ctes]
        recursive = bool(with_clause.get("recursive"))
        visible = scope.ctes | set(names) if recursive else scope.ctes
        for cte in ctes:
            inner = _Scope(scope, frozenset(visible))
            self.visit(cte.get("ctequery"), inner)
            if not recursive:
                visible = visible | {cte.get("ctename", "")}
        return frozenset(scope.ctes | set(names))

    def n_SelectStmt(self, body: dict, scope: _Scope) -> None:
        self.effect(READ)
        self.commands.add("SELECT")
        level = _Scope(scope, self._with(body.get("withClause"), scope))
        for key in ("larg", "rarg"):
            if key in body:
                self.n_SelectStmt(body[key], level)
        self.visit(body.get("fromClause"), level)
        for key, value in body.items():
            if key in ("larg", "rarg", "fromClause", "withClause", "intoClause", "lockingClause"):
                continue
            if isinstance(value, (dict, list)):
                self.visit(value, level)
        if body.get("lockingClause"):
            self.flags.add("row_lock")
            self.effect(WRITE)
        into = body.get("intoClause")
        if into:
            self.flags.add("select_into")
            self._into(into, scope)

    def _into(self, into: dict, scope: _Scope) -> None:
        rel = into.get("rel") or {}
        if rel.get("relpersistence") == "t":
            self.flags.add("temp_object")
        self.effect(DDL)
        self._relation(rel, scope, write=True)

    def _relation(self, rv: dict, scope: _Scope, *, write: bool, add_to_scope: _Scope | None = None) -> Name | None:
        schema = rv.get("schemaname")
        relname = rv.get("relname", "")
        alias = (rv.get("alias") or {}).get("aliasname") or relname
        if schema is None and relname in scope.ctes and not write:
            if add_to_scope is not None:
                add_to_scope.relations.append((alias, None))
            return None
        name = Name(schema, relname)
        if schema:
            self.schemas.add(schema)
        self.tables.add(name)
        if write:
            self.written.add(name)
        if rv.get("relpersistence") == "t":
            self.flags.add("temp_object")
        if add_to_scope is not None:
            add_to_scope.relations.append((alias, name))
        return name

    def n_RangeVar(self, body: dict, scope: _Scope) -> None:
        # A relation in FROM (or anywhere a relation is named and read).
        self._relation(body, scope, write=False, add_to_scope=scope)

    def _derived(self, body: dict, scope: _Scope) -> None:
        alias = (body.get("alias") or {}).get("aliasname")
        if alias:
            scope.relations.append((alias, None))

    def n_RangeSubselect(self, body: dict, scope: _Scope) -> None:
        self.visit(body.get("subquery"), scope)
        self._derived(body, scope)

    def n_RangeFunction(self, body: dict, scope: _Scope) -> None:
        self.children(body, scope)
        self._derived(body, scope)

    def n_RangeTableFunc(self, body: dict, scope: _Scope) -> None:
        self.children(body, scope)
        self._derived(body, scope)

    def n_JsonTable(self, body: dict, scope: _Scope) -> None:
        self.children(body, scope)
        self._derived(body, scope)

    def n_JoinExpr(self, body: dict, scope: _Scope) -> None:
        self.visit(body.get("larg"), scope)
        self.visit(body.get("rarg"), scope)
        self.visit(body.get("quals"), scope)
        alias = (body.get("alias") or {}).get("aliasname")
        if alias:
            scope.relations.append((alias, None))

    def n_ColumnRef(self, body: dict, scope: _Scope) -> None:
        parts = _strings(body.get("fields"))
        if not parts:
            return
        if len(parts) == 1:
            col = parts[0]
            if col != "*":
                found, rel = scope.find(col)
                if found and rel is not None:
                    # Perhaps a whole-row reference through an alias (SELECT c FROM customers c).
                    self.columns.add(Column(rel, "*"))
            self._unqualified_column(col, scope)
            return
        qualifier, col = parts[-2], parts[-1]
        found, rel = scope.find(qualifier) if len(parts) == 2 else (False, None)
        if len(parts) >= 3:
            rel = Name(parts[-3], parts[-2])
            self.schemas.add(parts[-3])
            found = True
        if found:
            self.columns.add(Column(rel, col) if rel is not None else Column(None, col))
        else:
            # t.col where t is a relation name visible only as written (no alias match):
            # tie to the unqualified name.
            self.columns.add(Column(Name(None, qualifier), col))

    def _unqualified_column(self, col: str, scope: _Scope) -> None:
        level: _Scope | None = scope
        while level is not None:
            rels = [rel for _, rel in level.relations]
            if rels:
                for rel in rels:
                    self.columns.add(Column(rel, col))
                return
            level = level.parent
        self.columns.add(Column(None, col))

    def n_FuncCall(self, body: dict, scope: _Scope) -> None:
        parts = _strings(body.get("funcname"))
        name = _name(parts)
        if name.schema:
            self.schemas.add(name.schema)
        self.functions.add(name)
        args = body.get("args") or []
        lname = name.name.lower()
        if name.schema in (None, "pg_catalog"):
            if lname in _SETTING_FUNCTIONS:
                value = self.const(args[0]) if args else None
                self.settings.add(value.lower() if isinstance(value, str) else "?")
            elif lname in _SEQUENCE_FUNCTIONS:
                value = self.const(args[0]) if args else None
                if isinstance(value, str):
                    seq = _name([p.strip('"') for p in value.split(".")])
                    self.tables.add(seq)
                    if lname != "currval":
                        self.written.add(seq)
                self.flags.add("sequence")
                if lname != "currval":
                    self.effect(WRITE)
        # Attribute notation: ssn(c) reads column ssn of the relation aliased c.
        if len(parts) == 1 and len(args) == 1 and isinstance(args[0], dict) and "ColumnRef" in args[0]:
            fields = _strings(args[0]["ColumnRef"].get("fields"))
            if len(fields) == 1:
                found, rel = scope.find(fields[0])
                if found and rel is not None:
                    self.columns.add(Column(rel, parts[0]))
        self.children(body, scope)

    def n_TypeCast(self, body: dict, scope: _Scope) -> None:
        type_parts = _strings((body.get("typeName") or {}).get("names"))
        if type_parts and type_parts[-1].lower() in ("regclass", "regproc", "regprocedure", "regnamespace"):
            self.flags.add("object_literal")
        self.children(body, scope)

    def n_InsertStmt(self, body: dict, scope: _Scope) -> None:
        self.effect(WRITE)
        self.commands.add("INSERT")
        level = _Scope(scope, self._with(body.get("withClause"), scope))
        target = self._relation(body.get("relation") or {}, level, write=True)
        for col in body.get("cols") or ():
            res = col.get("ResTarget", {})
            if res.get("name") and target is not None:
                self.columns.add(Column(target, res["name"]))
        self.visit(body.get("selectStmt"), level)
        ret = _Scope(level, level.ctes)
        if target is not None:
            alias = (body.get("relation") or {}).get("alias") or {}
            ret.relations.append((alias.get("aliasname") or target.name, target))
            ret.relations.append(("excluded", target))
        self.visit(body.get("onConflictClause"), ret)
        self.visit(body.get("returningClause") or body.get("returningList"), ret)

    def _dml_target(self, body: dict, scope: _Scope) -> tuple[_Scope, Name | None]:
        level = _Scope(scope, self._with(body.get("withClause"), scope))
        rv = body.get("relation") or {}
        target = self._relation(rv, level, write=True)
        alias = (rv.get("alias") or {}).get("aliasname") or rv.get("relname", "")
        level.relations.append((alias, target))
        return level, target

    def _where(self, body: dict) -> None:
        has = body.get("whereClause") is not None
        self.has_where = has if self.has_where is None else (self.has_where and has)

    def n_UpdateStmt(self, body: dict, scope: _Scope) -> None:
        self.effect(WRITE)
        self.commands.add("UPDATE")
        level, target = self._dml_target(body, scope)
        self._where(body)
        self.visit(body.get("fromClause"), level)
        for item in body.get("targetList") or ():
            res = item.get("ResTarget", {})
            if res.get("name") and target is not None:
                self.columns.add(Column(target, res["name"]))
            self.visit(res.get("val"), level)
        for key in ("whereClause", "returningClause", "returningList"):
            self.visit(body.get(key), level)

    def n_DeleteStmt(self, body: dict, scope: _Scope) -> None:
        self.effect(WRITE)
        self.commands.add("DELETE")
        level, _ = self._dml_target(body, scope)
        self._where(body)
        self.visit(body.get("usingClause"), level)
        for key in ("whereClause", "returningClause", "returningList"):
            self.visit(body.get(key), level)

    def n_MergeStmt(self, body: dict, scope: _Scope) -> None:
        self.effect(WRITE)
        self.commands.add("MERGE")
        level, _ = self._dml_target(body, scope)
        for key in ("sourceRelation", "joinCondition", "mergeWhenClauses", "returningClause", "returningList"):
            self.visit(body.get(key), level)

    # ------------------------------------------------------------ utility statements

    def n_ExplainStmt(self, body: dict, scope: _Scope) -> None:
        options = _defelems(body.get("options"))
        analyze = "analyze" in options and self._truthy(options["analyze"])
        inner = Walker()
        inner.visit(body.get("query"), scope)
        self.merge(inner, effects=analyze)
        self.flags.add("explain_analyze" if analyze else "explain")
        self.effect(READ)

    def _truthy(self, arg: Any) -> bool:
        if arg is None:
            return True
        value = self.const(arg)
        if isinstance(value, str):
            return value.lower() in ("true", "on", "1", "yes", "t", "y")
        return bool(value)

    def merge(self, other: Walker, *, effects: bool = True) -> None:
        self.tables |= other.tables
        self.written |= other.written if effects else set()
        self.columns |= other.columns
        self.functions |= other.functions
        self.schemas |= other.schemas
        self.flags |= other.flags if effects else {f for f in other.flags if f in ("object_literal",)}
        self.settings |= other.settings if effects else set()
        self.languages |= other.languages
        self.literal_dependent |= other.literal_dependent
        if effects:
            self.commands |= other.commands
            self.effects |= other.effects
            if other.has_where is not None:
                self.has_where = other.has_where if self.has_where is None else (self.has_where and other.has_where)

    def n_CopyStmt(self, body: dict, scope: _Scope) -> None:
        is_from = bool(body.get("is_from"))
        if body.get("relation"):
            self._relation(body["relation"], scope, write=is_from)
        for col in _strings(body.get("attlist")):
            rv = body.get("relation") or {}
            self.columns.add(Column(Name(rv.get("schemaname"), rv.get("relname", "")), col))
        if not body.get("attlist") and body.get("relation"):
            rv = body["relation"]
            self.columns.add(Column(Name(rv.get("schemaname"), rv.get("relname", "")), "*"))
        self.visit(body.get("query"), scope)
        self.visit(body.get("whereClause"), scope)
        self.effect(WRITE if is_from else READ)
        self.flags.add("copy_from" if is_from else "copy_to")
        if body.get("is_program"):
            self.flags.add("copy_program")
        elif body.get("filename"):
            self.flags.add("copy_file")

    def n_CreateTableAsStmt(self, body: dict, scope: _Scope) -> None:
        self.effect(DDL)
        self.visit(body.get("query"), scope)
        self._into(body.get("into") or {}, scope)

    def n_DeclareCursorStmt(self, body: dict, scope: _Scope) -> None:
        self.visit(body.get("query"), scope)

    def n_PrepareStmt(self, body: dict, scope: _Scope) -> None:
        self.prepare = body.get("name", "")
        query = body.get("query") or {}
        self.inner_command = _command(next(iter(query), ""), next(iter(query.values()), {}), self)[0] \
            if len(query) == 1 else None
        self.visit(query, scope)

    def n_ExecuteStmt(self, body: dict, scope: _Scope) -> None:
        self.execute = body.get("name", "")
        self.visit(body.get("params"), scope)

    def n_DeallocateStmt(self, body: dict, scope: _Scope) -> None:
        self.deallocate = "*" if body.get("isall") else body.get("name", "")

    def n_DiscardStmt(self, body: dict, scope: _Scope) -> None:
        target = body.get("target", "")
        if target in ("DISCARD_ALL", "DISCARD_PLANS"):
            self.deallocate = "*" if target == "DISCARD_ALL" else None
        if target == "DISCARD_ALL":
            self.search_path = ()
            self.settings.add("all")
        if target == "DISCARD_TEMP":
            self.flags.add("temp_object")

    def n_VariableSetStmt(self, body: dict, scope: _Scope) -> None:
        name = (body.get("name") or "").lower()
        kind = body.get("kind", "")
        self.literal_dependent = True
        if name in ("transaction", "session characteristics"):
            if self._read_write(body.get("args")):
                self.flags.add("read_write")
            return
        if kind == "VAR_RESET_ALL":
            self.settings.add("all")
            self.search_path = ()
            return
        if not name:
            return
        self.settings.add(name)
        if body.get("is_local"):
            self.flags.add("set_local")
        if name == "search_path":
            if kind in ("VAR_SET_DEFAULT", "VAR_RESET"):
                self.search_path = ()
            elif kind == "VAR_SET_VALUE":
                values = [self.const(a) for a in body.get("args") or ()]
                self.search_path = tuple(str(v) for v in values if v is not None)
        elif name in ("transaction_read_only", "default_transaction_read_only"):
            values = [self.const(a) for a in body.get("args") or ()]
            if kind in ("VAR_SET_DEFAULT", "VAR_RESET") or any(not self._truthy_value(v) for v in values):
                self.flags.add("read_write")
        self.visit(body.get("args"), scope)

    @staticmethod
    def _truthy_value(value: Any) -> bool:
        if isinstance(value, str):
            return value.lower() in ("true", "on", "1", "yes", "t", "y")
        return bool(value)

    def _read_write(self, options: Any) -> bool:
        for key, arg in _defelems(options).items():
            if key == "transaction_read_only" and not self._truthy_value(self.const(arg)):
                return True
        return False

    def n_TransactionStmt(self, body: dict, scope: _Scope) -> None:
        if self._read_write(body.get("options")):
            self.flags.add("read_write")
        if body.get("kind") in ("TRANS_STMT_PREPARE", "TRANS_STMT_COMMIT_PREPARED", "TRANS_STMT_ROLLBACK_PREPARED"):
            self.flags.add("two_phase")

    def n_DoStmt(self, body: dict, scope: _Scope) -> None:
        self.flags.add("opaque_code")
        lang = _defelems(body.get("args")).get("language")
        self.languages.add(str(self.const(lang)).lower() if lang is not None else "plpgsql")

    def n_CallStmt(self, body: dict, scope: _Scope) -> None:
        self.flags.add("opaque_code")
        self.visit(body.get("funccall"), scope)

    def n_CreateFunctionStmt(self, body: dict, scope: _Scope) -> None:
        name = _name(_strings(body.get("funcname")))
        self.functions.add(name)
        lang = _defelems(body.get("options")).get("language")
        self.languages.add(str(self.const(lang)).lower() if lang is not None else "sql")
        if name.schema:
            self.schemas.add(name.schema)
        # The body is not executed here; a SQL-standard body (BEGIN ATOMIC) is
        # walked so its table references are visible.
        self.visit(body.get("sql_body"), scope)

    def n_CreatePLangStmt(self, body: dict, scope: _Scope) -> None:
        self.languages.add((body.get("plname") or "").lower())

    def n_DropStmt(self, body: dict, scope: _Scope) -> None:
        remove = body.get("removeType", "")
        for obj in body.get("objects") or ():
            if not isinstance(obj, dict):
                continue
            if "List" in obj:
                name = _name(_strings(obj["List"].get("items")))
            elif "String" in obj:
                name = Name(None, obj["String"].get("sval", ""))
            elif "ObjectWithArgs" in obj:
                name = _name(_strings(obj["ObjectWithArgs"].get("objname")))
            elif "TypeName" in obj:
                name = _name(_strings(obj["TypeName"].get("names")))
            else:
                continue
            if remove == "OBJECT_SCHEMA":
                self.schemas.add(name.name)
                continue
            if name.schema:
                self.schemas.add(name.schema)
            if remove in _RELATION_OBJECTS:
                self.tables.add(name)
                self.written.add(name)
            elif remove in _ROUTINE_OBJECTS:
                self.functions.add(name)

    def n_CreateSchemaStmt(self, body: dict, scope: _Scope) -> None:
        if body.get("schemaname"):
            self.schemas.add(body["schemaname"])
        self.children(body, scope)

    def n_LockStmt(self, body: dict, scope: _Scope) -> None:
        for rel in body.get("relations") or ():
            self._relation(rel.get("RangeVar", {}), scope, write=False)
        self.flags.add("lock")

    def n_TruncateStmt(self, body: dict, scope: _Scope) -> None:
        for rel in body.get("relations") or ():
            self._relation(rel.get("RangeVar", {}), scope, write=True)

    def n_ListenStmt(self, body: dict, scope: _Scope) -> None:
        self.flags.add("listen")

    def n_UnlistenStmt(self, body: dict, scope: _Scope) -> None:
        self.flags.add("listen")

    def n_NotifyStmt(self, body: dict, scope: _Scope) -> None:
        self.flags.add("notify")

    def n_AlterSystemStmt(self, body: dict, scope: _Scope) -> None:
        self.flags.add("alter_system")

    def n_LoadStmt(self, body: dict, scope: _Scope) -> None:
        self.flags.add("load")


_DDL_WRITES_RELATION = {"CreateStmt", "AlterTableStmt", "IndexStmt", "ViewStmt", "RenameStmt", "CreateTrigStmt",
                        "RuleStmt", "CreatePolicyStmt", "AlterPolicyStmt", "CreateSeqStmt", "AlterSeqStmt",
                        "CreateForeignTableStmt", "ClusterStmt", "ReindexStmt", "VacuumStmt", "RefreshMatViewStmt"}


def walk_statement(node: dict) -> tuple[StatementFacts, bool]:
    """The facts of one top-level statement (a ``stmt`` of parse_sql_json) and literal dependence."""
    node_type = next(iter(node)) if len(node) == 1 else ""
    body = node.get(node_type, {}) if node_type else {}
    walker = Walker()
    command, classification = _command(node_type, body, walker)
    if node_type in _DDL_WRITES_RELATION:
        # The relation a DDL/maintenance statement changes is written, not read.
        rel = body.get("relation") or body.get("view") or body.get("sequence")
        if isinstance(rel, dict) and "relname" in rel:
            walker._relation(rel, _ROOT, write=True)
        for rel in body.get("rels") or ():  # VACUUM / ANALYZE
            inner = (rel.get("VacuumRelation") or {}).get("relation")
            if inner:
                walker._relation(inner, _ROOT, write=True)
        walker.children({k: v for k, v in body.items() if k not in ("relation", "view", "sequence", "rels")}, _ROOT)
    else:
        walker.visit(node, _ROOT)
    effects = set(walker.effects)
    effects.add(classification)
    if "opaque_code" in walker.flags:
        effects.add(WRITE)
    if node_type in ("PrepareStmt", "DeclareCursorStmt", "ExplainStmt", "ExecuteStmt"):
        effects.discard(READ)  # the placeholder; the inner statement's effects decide
        effects.add(READ)
    strongest = max(effects, key=RANK.__getitem__)
    if node_type in ("SelectStmt", "PrepareStmt", "DeclareCursorStmt", "ExplainStmt", "CopyStmt"):
        classification = strongest
    else:
        classification = max((classification, strongest), key=RANK.__getitem__)
    if node_type == "SelectStmt" and "row_lock" in walker.flags:
        command = "SELECT FOR UPDATE"
    if node_type == "SelectStmt" and "select_into" in walker.flags:
        command = "SELECT INTO"
    if node_type == "ExplainStmt" and "explain_analyze" in walker.flags:
        command = "EXPLAIN ANALYZE"
    facts = StatementFacts(
        command=command,
        classification=classification,
        tables=frozenset(walker.tables),
        written=frozenset(walker.written),
        columns=frozenset(walker.columns),
        functions=frozenset(walker.functions),
        schemas=frozenset(walker.schemas),
        has_where=walker.has_where,
        flags=frozenset(walker.flags),
        settings=frozenset(walker.settings),
        languages=frozenset(walker.languages),
        prepare=walker.prepare,
        execute=walker.execute,
        deallocate=walker.deallocate,
        search_path=walker.search_path,
        commands=frozenset(walker.commands | {command}),
        inner_command=walker.inner_command,
    )
    return facts, walker.literal_dependent


def _command(node_type: str, body: dict, walker: Walker) -> tuple[str, str]:
    if node_type == "SelectStmt":
        return "SELECT", READ
    if node_type in _FIXED:
        return _FIXED[node_type]
    if node_type == "TransactionStmt":
        return _TRANSACTION_COMMANDS.get(body.get("kind", ""), "TRANSACTION"), TRANSACTION
    if node_type == "DropStmt":
        return "DROP " + _DROP_OBJECT.get(body.get("removeType", ""), "OBJECT"), DDL
    if node_type == "CreateTableAsStmt":
        return ("CREATE MATERIALIZED VIEW" if body.get("objtype") == "OBJECT_MATVIEW" else "CREATE TABLE AS"), DDL
    if node_type == "AlterTableStmt":
        kind = {"OBJECT_INDEX": "INDEX", "OBJECT_VIEW": "VIEW", "OBJECT_SEQUENCE": "SEQUENCE",
                "OBJECT_MATVIEW": "MATERIALIZED VIEW", "OBJECT_FOREIGN_TABLE": "FOREIGN TABLE"}
        return "ALTER " + kind.get(body.get("objtype", ""), "TABLE"), DDL
    if node_type == "VacuumStmt":
        return ("VACUUM" if body.get("is_vacuumcmd") else "ANALYZE"), UTILITY
    if node_type == "RefreshMatViewStmt":
        return "REFRESH MATERIALIZED VIEW", WRITE
    if node_type == "FetchStmt" and body.get("ismove"):
        return "MOVE", READ
    if not node_type:
        return "UNKNOWN", UTILITY
    return _fallback_command(node_type)
