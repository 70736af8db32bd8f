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

from typing import Any

from .facts import DDL, READ, WRITE, Column, Name
from .utility import UtilityMixin, _name, _strings
from .where import filters_rows

__all__ = ["Walker", "Scope"]

# Functions whose first argument names a setting or a sequence: the decision
# depends on that constant.
_SETTING_FUNCTIONS = {"set_config"}
_SEQUENCE_FUNCTIONS = {"nextval", "setval", "currval"}


class Scope:
    """One query level: its relations (alias -> Name or None for derived) and visible CTEs."""

    __slots__ = ("relations", "ctes", "parent")

    def __init__(self, parent: Scope | None, ctes: frozenset[str]):
        self.parent = parent
        self.ctes = ctes
        self.relations: list[tuple[str, Name | None]] = []

    def find(self, alias: str) -> tuple[bool, Name | None]:
        scope: Scope | None = self
        while scope is not None:
            for name, rel in scope.relations:
                if name == alias:
                    return True, rel
            scope = scope.parent
        return False, None










class Walker(UtilityMixin):
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

    def visit(self, node: Any, scope: Scope) -> None:
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

    def children(self, body: dict, scope: Scope) -> None:
        for value in body.values():
            if isinstance(value, (dict, list)):
                self.visit(value, scope)

    def effect(self, classification: str) -> None:
        self.effects.add(classification)

    # ------------------------------------------------------------ queries

    def _with(self, with_clause: dict | None, scope: Scope) -> frozenset[str]:
        """Walk a WITH clause; return the CTE names visible to the main query."""
        if not with_clause:
            return scope.ctes
        ctes = [c.get("CommonTableExpr", {}) for c in with_clause.get("ctes", ())]
        names = [c.get("ctename", "") for c in ctes]
        recursive = bool(with_clause.get("recursive"))
        visible = scope.ctes | set(names) if recursive else scope.ctes
        for cte in ctes:
            inner = Scope(scope, frozenset(visible))
            self.visit(cte.get("ctequery"), inner)
            if not recursive:
                visible = visible | {cte.get("ctename", "")}
        return frozenset(scope.ctes | set(names))

    def n_SelectStmt(self, body: dict, scope: Scope) -> None:
        self.effect(READ)
        self.commands.add("SELECT")
        level = Scope(scope, self._with(body.get("withClause"), scope))
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

    def _into(self, into: dict, scope: Scope) -> None:
        rel = into.get("rel") or {}
        if rel.get("relpersistence") == "t":
            self.flags.add("temp_object")
        self.effect(DDL)
        self._relation(rel, scope, write=True)

    def _relation(self, rv: dict, scope: Scope, *, write: bool, add_to_scope: Scope | None = None) -> Name | None:
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

    def n_RangeVar(self, body: dict, scope: Scope) -> None:
        # A relation in FROM (or anywhere a relation is named and read).
        self._relation(body, scope, write=False, add_to_scope=scope)

    def _derived(self, body: dict, scope: Scope) -> None:
        alias = (body.get("alias") or {}).get("aliasname")
        if alias:
            scope.relations.append((alias, None))

    def n_RangeSubselect(self, body: dict, scope: Scope) -> None:
        self.visit(body.get("subquery"), scope)
        self._derived(body, scope)

    def n_RangeFunction(self, body: dict, scope: Scope) -> None:
        self.children(body, scope)
        self._derived(body, scope)

    def n_RangeTableFunc(self, body: dict, scope: Scope) -> None:
        self.children(body, scope)
        self._derived(body, scope)

    def n_JsonTable(self, body: dict, scope: Scope) -> None:
        self.children(body, scope)
        self._derived(body, scope)

    def n_JoinExpr(self, body: dict, scope: Scope) -> None:
        self.visit(body.get("larg"), scope)
        self.visit(body.get("rarg"), scope)
        self.visit(body.get("quals"), scope)
        alias = (body.get("alias") or {}).get("aliasname")
        if alias:
            scope.relations.append((alias, None))

    def n_ColumnRef(self, body: dict, scope: Scope) -> None:
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

    def _unqualified_column(self, col: str, scope: Scope) -> None:
        level: Scope | None = scope
        while level is not None:
            rels = [rel for _, rel in level.relations]
            if rels:
                for rel in rels:
                    self.columns.add(Column(rel, col))
                return
            level = level.parent
        self.columns.add(Column(None, col))

    def n_FuncCall(self, body: dict, scope: Scope) -> None:
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

    def n_A_Expr(self, body: dict, scope: Scope) -> None:
        # OPERATOR(schema.op) runs whatever function that operator is bound to:
        # record it like a function call, so only pg_catalog operators are vetted.
        parts = _strings(body.get("name"))
        if len(parts) > 1:
            self.functions.add(Name(parts[-2], parts[-1]))
            self.schemas.add(parts[-2])
            self.flags.add("qualified_operator")
        self.children(body, scope)

    def n_TypeCast(self, body: dict, scope: Scope) -> None:
        type_parts = _strings((body.get("typeName") or {}).get("names"))
        if type_parts and type_parts[-1].lower() in ("regclass", "regproc", "regprocedure", "regnamespace"):
            self.flags.add("object_literal")
        self.children(body, scope)

    def n_InsertStmt(self, body: dict, scope: Scope) -> None:
        self.effect(WRITE)
        self.commands.add("INSERT")
        level = Scope(scope, self._with(body.get("withClause"), scope))
        target = self._relation(body.get("relation") or {}, level, write=True)
        for col in body.get("cols") or ():
            res = col.get("ResTarget", {})
            if res.get("name") and target is not None:
                self.columns.add(Column(target, res["name"]))
        self.visit(body.get("selectStmt"), level)
        ret = Scope(level, level.ctes)
        if target is not None:
            alias = (body.get("relation") or {}).get("alias") or {}
            ret.relations.append((alias.get("aliasname") or target.name, target))
            ret.relations.append(("excluded", target))
        self.visit(body.get("onConflictClause"), ret)
        self.visit(body.get("returningClause") or body.get("returningList"), ret)

    def _dml_target(self, body: dict, scope: Scope) -> tuple[Scope, Name | None]:
        level = Scope(scope, self._with(body.get("withClause"), scope))
        rv = body.get("relation") or {}
        target = self._relation(rv, level, write=True)
        alias = (rv.get("alias") or {}).get("aliasname") or rv.get("relname", "")
        level.relations.append((alias, target))
        return level, target

    def _where(self, body: dict) -> None:
        # A condition that never looks at the row (WHERE true, WHERE 0 = 0 OR true, WHERE id = id)
        # touches every row like no WHERE at all (where.py).
        has = filters_rows(body.get("whereClause"))
        self.has_where = has if self.has_where is None else (self.has_where and has)

    def n_UpdateStmt(self, body: dict, scope: Scope) -> None:
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

    def n_DeleteStmt(self, body: dict, scope: Scope) -> None:
        self.effect(WRITE)
        self.commands.add("DELETE")
        level, _ = self._dml_target(body, scope)
        self._where(body)
        self.visit(body.get("usingClause"), level)
        for key in ("whereClause", "returningClause", "returningList"):
            self.visit(body.get(key), level)

    def n_MergeStmt(self, body: dict, scope: Scope) -> None:
        self.effect(WRITE)
        self.commands.add("MERGE")
        level, _ = self._dml_target(body, scope)
        for clause in body.get("mergeWhenClauses") or ():
            kind = (clause.get("MergeWhenClause") or {}).get("commandType", "")
            if kind in ("CMD_DELETE", "CMD_UPDATE", "CMD_INSERT"):
                self.commands.add(kind[4:])
        for key in ("sourceRelation", "joinCondition", "mergeWhenClauses", "returningClause", "returningList"):
            self.visit(body.get(key), level)
