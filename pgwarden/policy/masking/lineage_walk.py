"""Column lineage, part 2: queries -- SELECT, set operations, VALUES, FROM, joins, CTEs and DML.

:class:`LineageWalker` extends the scopes and expressions of ``lineage_scope``
with the query levels. Each query returns its columns (:class:`Col`, by
position); a ``*`` over a base relation stays one entry (``star``) whose width
only the catalog knows, and is carried through subqueries, CTEs and set
operations so the top level can still say which relation it expands.

CTE visibility is PostgreSQL's (the same as the guardrails walker): a
non-recursive CTE sees only the CTEs before it, a ``WITH RECURSIVE`` one all of
them, so ``WITH customers AS (SELECT * FROM customers)`` reads the table. A CTE
is evaluated once; a recursive one is iterated until the union of its rounds is
stable (its self-reference starts as a neutral element: no sources, direct).

A non-LATERAL subquery in FROM sees the outer query levels but not its sibling
FROM items; functions in FROM and LATERAL items see the items before them.
"""

from __future__ import annotations

from typing import Any

from ..analysis.facts import Name
from ..analysis.utility import _strings
from .lineage_scope import (BASE, DERIVED, DIRECT, FUNC, JOIN, MAX_STEPS, OPAQUE, Col, Item, Level, ScopeWalker, TooComplex, _Cte, _int, _one,
                            label, rename, setop)

__all__ = ["LineageWalker"]

_BUILTIN_SCHEMAS = (None, "pg_catalog")
# Set-returning builtins whose single column is computed from their arguments only.
_SCALAR_SRF = frozenset({
    "generate_series", "generate_subscripts", "unnest", "regexp_split_to_table", "regexp_matches", "string_to_table",
    "json_array_elements", "jsonb_array_elements", "json_array_elements_text", "jsonb_array_elements_text",
    "json_object_keys", "jsonb_object_keys", "jsonb_path_query"})
_RECORD_SRF = {"json_each": ("key", "value"), "jsonb_each": ("key", "value"), "json_each_text": ("key", "value"),
               "jsonb_each_text": ("key", "value")}
_COLDEF_SRF = frozenset({"json_to_record", "json_to_recordset", "jsonb_to_record", "jsonb_to_recordset"})
_MAX_ROUNDS = 8  # fixpoint rounds for a recursive CTE


class LineageWalker(ScopeWalker):
    """Walks one top-level statement: every query level returns its columns; the sets collect on the way."""

    # ------------------------------------------------------------ queries

    def query(self, node: Any, outer: Level | None, ctes: dict) -> list[Col]:
        """The columns of any row-returning statement node (SELECT, or DML with RETURNING)."""
        key, body = _one(node)
        if key == "SelectStmt":
            return self.select(body, outer, ctes)
        if key in ("InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt"):
            return self.dml(key, body, outer, ctes)
        out: set = set()
        self.walk(node, Level(outer, ctes), out)
        return [Col("?column?", frozenset(out), False, True, wide=True)]

    def select(self, body: dict, outer: Level | None, ctes: dict) -> list[Col]:
        self.steps += 1
        if self.steps > MAX_STEPS:
            raise TooComplex
        ctes = self.with_(body.get("withClause"), outer, ctes)
        level = Level(outer, ctes)
        op = body.get("op", "SETOP_NONE")
        if op != "SETOP_NONE" and "larg" in body:
            left = self.select(body.get("larg") or {}, outer, ctes)
            right = self.select(body.get("rarg") or {}, outer, ctes)
            cols = setop(left, right)
            if op != "SETOP_UNION" or not body.get("all"):  # rows are compared whole
                for c in left + right:
                    self.filters |= c.sources
            level.items.append(Item(DERIVED, cols=cols))
        else:
            if body.get("valuesLists"):
                cols = self.values(body["valuesLists"], level)
            else:
                for f in body.get("fromClause") or ():
                    self.from_item(f, level)
                cols = self.targets(body.get("targetList") or (), level)
            self.filter(body.get("whereClause"), level)
            self.group(body.get("groupClause"), level, cols)
            self.filter(body.get("havingClause"), level)
            for w in body.get("windowClause") or ():
                self.window(w.get("WindowDef") or {}, level)
            distinct = body.get("distinctClause")
            if distinct and any(distinct):
                for d in distinct:
                    self.sortkey(d, level, cols)
            elif distinct:
                for c in cols:
                    self.filters |= c.sources
        for s in body.get("sortClause") or ():
            self.sortkey((s.get("SortBy") or {}).get("node"), level, cols)
        self.filter(body.get("limitOffset"), level)
        self.filter(body.get("limitCount"), level)
        return cols

    def values(self, rows: list, level: Level) -> list[Col]:
        acc: list[list] = []  # per position: sources, direct in every row, opaque in any
        for row in rows:
            items = ((row.get("List") or {}).get("items") or ()) if type(row) is dict else ()
            for i, e in enumerate(items):
                if i == len(acc):
                    acc.append([set(), True, False])
                f = self.expr(e, level, acc[i][0])
                acc[i][1] = acc[i][1] and f == DIRECT
                acc[i][2] = acc[i][2] or bool(f & OPAQUE)
        return [Col(f"column{i + 1}", frozenset(s), d, o) for i, (s, d, o) in enumerate(acc)]

    def targets(self, tlist: Any, level: Level) -> list[Col]:
        cols: list[Col] = []
        for t in tlist:
            res = t.get("ResTarget") or {} if type(t) is dict else {}
            val = res.get("val")
            key, body = _one(val)
            if key == "ColumnRef" and body.get("fields") and "A_Star" in body["fields"][-1]:
                cols.extend(self.star(_strings(body["fields"]), level))
                continue
            out: set = set()
            f = self.expr(val, level, out)
            cols.append(Col(res.get("name") or label(val), frozenset(out), f == DIRECT, bool(f & OPAQUE)))
        return cols

    def star(self, fields: list[str], level: Level) -> list[Col]:
        if len(fields) == 1:
            return [c for item in level.items for c in self.expand(item)]
        item = self.find(level, fields[:-1])
        if item is None:
            out: set = set()
            self.ref((Name(fields[-3] if len(fields) > 2 else None, fields[-2]),), "*", out)
            return [Col("*", frozenset(out), False, True, wide=True)]
        return self.expand(item)

    def expand(self, item: Item) -> list[Col]:
        """The columns ``*`` gives over a FROM item."""
        if item.kind == BASE:
            out: set = set()
            self.ref((item.name,), "*", out)
            return [Col("*", frozenset(out), True, False, star=item.name)]
        if item.kind == DERIVED:
            return list(item.cols or ())
        if item.kind == FUNC:
            return [Col(item.label, item.sources, False, True, wide=True)]
        left, right = self.expand(item.left), self.expand(item.right)
        names = list(item.using)
        if item.natural:
            if not all(c.fixed() for c in left + right):
                return [c.murky() for c in left + right]
            names = [c.name for c in left if any(r.name == c.name for r in right)]
        if not names:
            return left + right
        # USING/NATURAL: the merged columns first; a * over a base relation would repeat them, so it is opaque.
        rest = [c if c.fixed() else c.murky() for c in left + right if not (c.fixed() and c.name in names)]
        return [self.merged(item, n) for n in names] + rest

    def merged(self, join: Item, col: str) -> Col:
        out: set = set()
        dl, ol = self.resolve_in(join.left, col, out)
        dr, orr = self.resolve_in(join.right, col, out)
        return Col(col, frozenset(out), dl and dr and not join.full and not (ol or orr), ol or orr)

    # ------------------------------------------------------------ WITH

    def with_(self, wc: Any, outer: Level | None, ctes: dict) -> dict:
        if not wc:
            return ctes
        visible, made = dict(ctes), []
        for c in wc.get("ctes") or ():
            body = c.get("CommonTableExpr") or {}
            cte = _Cte(body, outer)
            if not wc.get("recursive"):
                cte.scope = dict(visible)
            visible[body.get("ctename", "")] = cte
            made.append(cte)
        if wc.get("recursive"):  # every item sees all of them (set before any is evaluated)
            for cte in made:
                cte.scope = visible
        for cte in made:
            self.cte_cols(cte)
        return visible

    def cte_cols(self, cte: _Cte) -> list[Col] | None:
        if cte.state == 2:
            return cte.cols
        if cte.state == 1:  # a self-reference while computing: the current approximation
            cte.hit = True
            return cte.binding
        cte.state = 1
        names = _strings(cte.body.get("aliascolnames"))
        cols, unknown = rename(self.query(cte.body.get("ctequery"), cte.outer, cte.scope), names)
        if cte.hit:  # recursive: iterate until the union over rounds is stable
            binding = cols
            for _ in range(_MAX_ROUNDS):
                cte.binding = binding
                cols, unknown = rename(self.query(cte.body.get("ctequery"), cte.outer, cte.scope), names)
                merged = setop(binding, cols)
                if [c.key() for c in merged] == [c.key() for c in binding]:
                    break
                binding = merged
            else:
                binding = [c.murky() for c in binding]
            cols = binding
        for key, seqs in (("search_clause", ("search_seq_column",)),
                          ("cycle_clause", ("cycle_mark_column", "cycle_path_column"))):
            clause = cte.body.get(key) or {}
            listed = set(_strings(clause.get("search_col_list") or clause.get("cycle_col_list")))
            used = frozenset().union(*(c.sources for c in cols if c.name in listed))
            if listed:
                self.filters |= used  # CYCLE compares the listed columns' values; SEARCH orders by them
            for s in seqs:
                if clause.get(s):
                    cols = cols + [Col(clause[s], used, False, True)]
        cte.cols, cte.unknown, cte.state = cols, unknown, 2
        return cols

    # ------------------------------------------------------------ FROM

    def from_item(self, node: Any, level: Level) -> None:
        key, body = _one(node)
        alias = None
        if key == "RangeVar":
            item, alias = self.rangevar(body, level)
        elif key == "RangeSubselect":
            cols = self.query(body.get("subquery"), level if body.get("lateral") else level.parent, level.ctes)
            cols, unknown = rename(cols, _strings((body.get("alias") or {}).get("colnames")))
            item = Item(DERIVED, cols=cols, unknown=unknown)
        elif key == "JoinExpr":
            return self.join(body, level)
        elif key == "RangeFunction":
            item, alias = self.rangefunction(body, level)
        elif key == "RangeTableSample":
            self.from_item(body.get("relation"), level)
            self.filter(body.get("args"), level)
            self.filter(body.get("repeatable"), level)
            return None
        elif key in ("RangeTableFunc", "JsonTable"):
            out: set = set()
            self.walk(body, level, out)
            names = self._tablefunc_names(body.get("columns"))
            cols, unknown = rename([Col(n, frozenset(out), False, True) for n in names],
                                   _strings((body.get("alias") or {}).get("colnames")))
            item = Item(DERIVED, cols=cols, unknown=unknown)
        else:
            out = set()
            self.walk(node, level, out)
            item = Item(FUNC, sources=frozenset(out))
        level.items.append(item)
        alias = (body.get("alias") or {}).get("aliasname") if isinstance(body, dict) and body.get("alias") else alias
        if alias:
            level.aliases.append((alias, item))
        return None

    def rangevar(self, rv: dict, level: Level) -> tuple[Item, str]:
        schema, relname = rv.get("schemaname"), rv.get("relname", "")
        colnames = _strings((rv.get("alias") or {}).get("colnames"))
        if schema is None and relname in level.ctes:
            cte = level.ctes[relname]
            cols, unknown = self.cte_cols(cte), cte.unknown
            if colnames and cols is not None:
                cols, unknown = rename(cols, colnames)
            return Item(DERIVED, cols=cols, unknown=unknown), relname
        name = Name(schema, relname)
        self.relations.add(name)
        return Item(BASE, name=name, unknown=frozenset(colnames)), relname

    def rangefunction(self, body: dict, level: Level) -> tuple[Item, str | None]:
        funcs = body.get("functions") or []
        out: set = set()
        alias = body.get("alias") or {}
        aname, cols, fname = alias.get("aliasname"), None, None
        if len(funcs) == 1 and not body.get("is_rowsfrom"):
            items = (funcs[0].get("List") or {}).get("items") or [None]
            flags = self.expr(items[0], level, out)
            coldef = (items[1] if len(items) > 1 else None) or body.get("coldeflist")
            key, fc = _one(items[0])
            parts = _strings(fc.get("funcname")) if key == "FuncCall" else []
            fname = parts[-1].lower() if parts else None
            builtin = len(parts) < 3 and (parts[:-1] or [None])[0] in _BUILTIN_SCHEMAS
            src, murky = frozenset(out), bool(flags & OPAQUE)
            if builtin and fname in _SCALAR_SRF and (fname != "unnest" or len(fc.get("args") or ()) == 1):
                cols = [Col(aname or fname, src, False, murky)]
            elif builtin and fname in _RECORD_SRF:
                cols = [Col(n, src, False, murky) for n in _RECORD_SRF[fname]]
            elif builtin and fname in _COLDEF_SRF and coldef:
                cols = [Col((c.get("ColumnDef") or {}).get("colname", "?column?"), src, False, murky) for c in coldef]
            else:
                self.opaque_functions = True
                if coldef:
                    cols = [Col((c.get("ColumnDef") or {}).get("colname", "?column?"), src, False, True) for c in coldef]
        else:
            self.opaque_functions = True
            self.walk(funcs, level, out)
        # A set-returning function's arguments decide how many rows it returns (generate_series(1,
        # ascii(ssn)) counts out a value): they choose rows, like a WHERE clause.
        self.filters |= out
        if cols is None:
            return Item(FUNC, sources=frozenset(out), label=aname or fname or "?column?"), aname or fname
        if body.get("ordinality"):
            cols.append(Col("ordinality"))
        cols, unknown = rename(cols, _strings(alias.get("colnames")))
        return Item(DERIVED, cols=cols, unknown=unknown), aname or fname

    def _tablefunc_names(self, columns: Any) -> list[str]:
        names = []
        for c in columns or ():
            key, body = _one(c)
            if key == "JsonTableColumn" and body.get("coltype") == "JTC_NESTED":
                names += self._tablefunc_names(body.get("columns"))
            elif body:
                names.append(body.get("colname") or body.get("name") or "?column?")
        return names

    def join(self, body: dict, level: Level) -> None:
        mark, amark = len(level.items), len(level.aliases)
        self.from_item(body.get("larg"), level)
        self.from_item(body.get("rarg"), level)
        pair = level.items[mark:]
        self.filter(body.get("quals"), level)  # the ON clause sees both sides
        del level.items[mark:]
        if len(pair) != 2:
            level.items.append(Item(FUNC))
            return
        item = Item(JOIN)
        item.left, item.right = pair
        item.using = tuple(_strings(body.get("usingClause")))
        item.natural, item.full = bool(body.get("isNatural")), body.get("jointype") == "JOIN_FULL"
        tmp: set = set()
        for col in item.using:
            self.resolve_in(item.left, col, tmp)
            self.resolve_in(item.right, col, tmp)
        if item.natural:  # the compared columns are unknown without the catalog: the whole rows choose
            self.whole(item.left, tmp)
            self.whole(item.right, tmp)
        self.filters |= tmp
        jua = (body.get("join_using_alias") or {}).get("aliasname")
        merged = Item(DERIVED, cols=[self.merged(item, c) for c in item.using]) if jua else None
        alias = body.get("alias")
        if alias:  # a join alias hides the names inside the join
            del level.aliases[amark:]
            colnames = _strings(alias.get("colnames"))
            if colnames:
                cols, unknown = rename(self.expand(item), colnames)
                item = Item(DERIVED, cols=cols, unknown=unknown)
            level.aliases.append((alias.get("aliasname", ""), item))
        level.items.append(item)
        if merged is not None:  # JOIN ... USING (id) AS j: j.id is the merged column
            level.aliases.append((jua, merged))

    # ------------------------------------------------------------ DML

    def target(self, rv: dict, level: Level) -> Item:
        name = Name(rv.get("schemaname"), rv.get("relname", ""))
        self.relations.add(name)
        item = Item(BASE, name=name)
        level.items.append(item)
        level.aliases.append(((rv.get("alias") or {}).get("aliasname") or name.name, item))
        return item

    def dml(self, key: str, body: dict, outer: Level | None, ctes: dict) -> list[Col]:
        """INSERT/UPDATE/DELETE/MERGE: records writes and filters; returns the RETURNING columns."""
        ctes = self.with_(body.get("withClause"), outer, ctes)
        level = Level(outer, ctes)
        target = self.target(body.get("relation") or {}, level)
        if key == "InsertStmt":
            if body.get("selectStmt"):
                for c in self.query(body["selectStmt"], outer, ctes):
                    self.written |= c.sources
            occ = body.get("onConflictClause")
            if occ:
                lvl = Level(outer, ctes)
                self.target(body.get("relation") or {}, lvl)
                # EXCLUDED is the row the INSERT proposed (its values are the client's, or the
                # SELECT's, already counted as written above), not the stored row.
                lvl.aliases.append(("excluded", Item(DERIVED, cols=[])))
                self.assign(occ.get("targetList"), lvl)
                self.filter(occ.get("whereClause"), lvl)
        else:
            for f in body.get("fromClause") or body.get("usingClause") or ():
                self.from_item(f, level)
            if key == "MergeStmt":
                self.from_item(body.get("sourceRelation"), level)
                self.filter(body.get("joinCondition"), level)
                for wc in body.get("mergeWhenClauses") or ():
                    m = wc.get("MergeWhenClause") or {}
                    self.filter(m.get("condition"), level)
                    if m.get("commandType") == "CMD_UPDATE":
                        self.assign(m.get("targetList"), level)
                    tmp: set = set()
                    self.expr(m.get("values"), level, tmp)
                    self.written |= tmp
            self.assign(body.get("targetList"), level)
            self.filter(body.get("whereClause"), level)
        rc = body.get("returningClause") or {}
        exprs = rc.get("exprs") or body.get("returningList")
        if not exprs:
            return []
        names = {"RETURNING_OPTION_OLD": "old", "RETURNING_OPTION_NEW": "new"}
        for opt in rc.get("options") or ():
            o = opt.get("ReturningOption") or {}
            level.aliases.append((o.get("value", ""), target))
            names.pop(o.get("option"), None)
        level.aliases += [(n, target) for n in names.values()]
        return self.targets(exprs, level)

    def assign(self, tlist: Any, level: Level) -> None:
        for t in tlist or ():
            tmp: set = set()
            self.expr((t.get("ResTarget") or {}).get("val"), level, tmp)
            self.written |= tmp

    def sortkey(self, node: Any, level: Level, cols: list[Col]) -> None:
        """ORDER BY / DISTINCT ON / GROUP BY item: an output position or name, else an expression."""
        n = _int(node)
        if n is not None:
            for i, c in enumerate(cols):
                if not c.fixed():  # position after a * of unknown width: any later column
                    for d in cols[i:]:
                        self.filters |= d.sources
                    return
                if i + 1 == n:
                    self.filters |= c.sources
                    return
            return
        key, body = _one(node)
        if key == "ColumnRef" and len(body.get("fields") or ()) == 1:
            named = [c for c in cols if c.fixed() and c.name == _strings(body["fields"])[0]]
            for c in named:
                self.filters |= c.sources
            if named:
                return
        self.filter(node, level)

    def group(self, items: Any, level: Level, cols: list[Col]) -> None:
        for g in items or ():
            key, body = _one(g)
            if key == "GroupingSet":
                self.group(body.get("content"), level, cols)
            elif key == "ColumnRef":  # GROUP BY prefers an input column, then an output name: both
                self.filter(g, level)
                self.sortkey(g, level, cols)
            else:
                self.sortkey(g, level, cols)
