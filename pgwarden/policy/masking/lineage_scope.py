"""Column lineage, part 1: the data model, scopes, name resolution and expressions.

See ``lineage.py`` for the API and ``lineage_walk.py`` for queries (SELECT, FROM,
joins, CTEs, DML), which subclasses :class:`ScopeWalker`.

Why a walk of its own beside the guardrails analyser: that one answers "which
objects does this statement touch" (sets of names); masking needs, for every
result column *by position*, the base columns its value flows from, whether it is
one of them unchanged (then that column's own masker applies), and which columns
choose, order or group rows (a masked column in WHERE leaks through the row set
even when its values never appear). That needs scopes which carry the *columns*
of subqueries, CTEs and joins, not only relation names.

Name resolution follows PostgreSQL: a qualified name finds its FROM item by
alias (innermost level first; a join alias hides the names inside the join); an
unqualified one is looked up in every item of the innermost level, then the
outer levels, stopping at the first level where a derived table (subquery, CTE,
function with known columns) certainly has it. Base relations cannot be asked
without the catalog, so they become *candidates* of a :class:`Ref`, in order,
for the caller to settle. If nothing certainly has the name, PostgreSQL would try
it as a whole-row reference to an alias, so that is added too.

Expressions add their source references to a set and return two flag bits:
DIRECT (the value is one base column unchanged) and OPAQUE (lineage not fully
known). Whatever cannot be followed is marked opaque, never dropped: a masking
decision must be able to fail closed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..analysis.facts import Name
from ..analysis.utility import _strings

__all__ = ["Ref", "Col", "Item", "Level", "ScopeWalker", "label", "rename", "setop"]

DIRECT, OPAQUE = 1, 2
BASE, DERIVED, FUNC, JOIN = range(4)
_SAFE_SCHEMAS = (None, "pg_catalog", "information_schema")
# Expression node types walked generically without making the value opaque.
_TRANSPARENT = frozenset({
    "JsonValueExpr", "JsonKeyValue", "JsonObjectConstructor", "JsonArrayConstructor", "JsonArrayQueryConstructor",
    "JsonObjectAgg", "JsonArrayAgg", "JsonAggConstructor", "JsonFuncExpr", "JsonParseExpr", "JsonScalarExpr",
    "JsonSerializeExpr", "JsonIsPredicate", "JsonOutput", "JsonFormat", "JsonReturning", "JsonBehavior",
    "JsonTablePathSpec", "JsonArgument", "XmlExpr", "XmlSerialize", "NamedArgExpr", "A_Indices", "CaseWhen", "SortBy"})


@dataclass(frozen=True, slots=True, order=True)
class Ref:
    """A reference to a column of a base relation (table or view) as written, aliases resolved.

    ``candidates``: the relations it may belong to -- one when qualified or when
    only one relation is in scope; for an unqualified column with several in
    scope, every base relation at that level and then the outer levels, in order
    (the caller picks the first whose catalog has the column). ``column`` ``*``
    means the whole row.
    """

    candidates: tuple[Name, ...]
    column: str


class Col:
    """One column of a query level while walking (becomes an ``Output`` at the top).

    ``star``: a ``*`` over that base relation, width known only to the catalog;
    ``wide``: a stand-in of unknown width (a function's columns), always opaque.
    """

    __slots__ = ("name", "sources", "direct", "opaque", "star", "wide")

    def __init__(self, name: str, sources: frozenset = frozenset(), direct: bool = False, opaque: bool = False,
                 star: Name | None = None, wide: bool = False) -> None:
        self.name, self.sources, self.direct, self.opaque, self.star, self.wide = name, sources, direct, opaque, star, wide

    def fixed(self) -> bool:
        return self.star is None and not self.wide

    def key(self) -> tuple:
        return self.name, self.sources, self.direct, self.opaque, self.star, self.wide

    def murky(self) -> Col:
        return Col(self.name, self.sources, False, True, self.star, self.wide)


class Item:
    """A FROM item: a base relation, a derived table (subquery, CTE, known function columns), an opaque function, a join."""

    __slots__ = ("kind", "name", "cols", "sources", "label", "left", "right", "using", "natural", "full", "unknown")

    def __init__(self, kind: int, name: Name | None = None, cols: list[Col] | None = None, sources: frozenset = frozenset(),
                 label: str = "?column?", unknown: frozenset = frozenset()) -> None:
        self.kind, self.name, self.cols, self.sources, self.label, self.unknown = kind, name, cols, sources, label, unknown
        self.left = self.right = None
        self.using: tuple[str, ...] = ()
        self.natural = self.full = False


class Level:
    """One query level: FROM items (in order, for ``*`` and unqualified names), aliases, visible CTEs."""

    __slots__ = ("parent", "ctes", "items", "aliases")

    def __init__(self, parent: Level | None, ctes: dict) -> None:
        self.parent, self.ctes = parent, ctes
        self.items: list[Item] = []
        self.aliases: list[tuple[str, Item]] = []


class _Cte:
    """A WITH item, evaluated once (on demand for forward references inside WITH RECURSIVE)."""

    __slots__ = ("body", "outer", "scope", "state", "cols", "unknown", "binding", "hit")

    def __init__(self, body: dict, outer: Level | None) -> None:
        self.body, self.outer, self.scope, self.state = body, outer, {}, 0
        self.cols: list[Col] | None = None
        self.unknown: frozenset = frozenset()
        self.binding: list[Col] | None = None  # the self-reference while being computed (None: neutral)
        self.hit = False


def rename(cols: list[Col], names: list[str]) -> tuple[list[Col], frozenset]:
    """Apply column aliases by position; names that fall after a ``*`` cannot be placed and are returned as unknown."""
    if not names:
        return cols, frozenset()
    out, unknown = list(cols), set()
    for i, n in enumerate(names):
        if i < len(out) and all(c.fixed() for c in out[: i + 1]):
            c = out[i]
            out[i] = Col(n, c.sources, c.direct, c.opaque)
        else:
            unknown.add(n)
    return out, frozenset(unknown)


def setop(left: list[Col], right: list[Col]) -> list[Col]:
    """Columns of a UNION/INTERSECT/EXCEPT: per position, both branches; opaque when positions cannot be aligned."""
    if len(left) == len(right) and all(a.star == b.star and not a.wide and not b.wide for a, b in zip(left, right)):
        return [Col(a.name, a.sources | b.sources, a.direct and b.direct, a.opaque or b.opaque, a.star)
                for a, b in zip(left, right)]
    every = frozenset().union(*(c.sources for c in left + right))
    return [Col(c.name, c.sources | every, False, True, c.star, c.wide) for c in left]


def _one(node: Any) -> tuple[str, Any]:
    if type(node) is dict and len(node) == 1:
        for key, body in node.items():
            return key, body
    return "", None


def _int(node: Any) -> int | None:
    key, body = _one(node)
    if key == "A_Const" and "ival" in body:
        return body["ival"].get("ival", 0)
    return None


#: Set-returning functions (by name): their arguments decide the number of rows.
SET_RETURNING = frozenset({
    "generate_series", "generate_subscripts", "unnest", "regexp_matches", "regexp_split_to_table",
    "string_to_table", "json_array_elements", "json_array_elements_text", "jsonb_array_elements",
    "jsonb_array_elements_text", "json_each", "json_each_text", "jsonb_each", "jsonb_each_text",
    "json_object_keys", "jsonb_object_keys", "json_populate_recordset", "jsonb_populate_recordset",
    "json_to_recordset", "jsonb_to_recordset", "jsonb_path_query", "ts_stat", "ts_token_type",
    "ts_parse", "ts_debug", "pg_options_to_table", "aclexplode", "json_table", "xpath_table",
})

#: Expressions and query levels one statement may take to analyse (a 200 KB statement takes far fewer).
MAX_STEPS = 100_000


class TooComplex(Exception):
    """The statement needs more analysis than MAX_STEPS."""


class ScopeWalker:
    """Name resolution and expressions, and the statement-wide sets they fill.

    Subqueries in expressions need ``query``/``select``, which the subclass
    ``LineageWalker`` (lineage_walk) provides; this class is never used alone.
    """

    def __init__(self) -> None:
        # Work done so far (expressions and query levels walked): nested recursive CTEs make
        # the fixpoint iterate inside itself, exponentially; past the budget the statement is
        # refused as too complex rather than stalling the event loop.
        self.steps = 0
        self.referenced: set[Ref] = set()
        self.filters: set[Ref] = set()
        self.written: set[Ref] = set()
        self.relations: set[Name] = set()
        self.opaque_functions = False

    def absorb(self, other: ScopeWalker) -> None:
        self.referenced |= other.referenced
        self.filters |= other.filters
        self.written |= other.written
        self.relations |= other.relations
        self.opaque_functions |= other.opaque_functions

    def ref(self, cands: tuple, col: str, out: set) -> None:
        r = Ref(cands, col)
        out.add(r)
        self.referenced.add(r)

    # ------------------------------------------------------------ clauses that choose rows

    def filter(self, node: Any, level: Level) -> None:
        if node is not None:
            tmp: set = set()
            self.expr(node, level, tmp)
            self.filters |= tmp

    def window(self, wdef: dict, level: Level) -> None:
        self.filter(wdef.get("partitionClause"), level)
        for s in wdef.get("orderClause") or ():
            self.filter((s.get("SortBy") or {}).get("node"), level)

    # ------------------------------------------------------------ names

    def find(self, level: Level, qual: list[str]) -> Item | None:
        """The FROM item a qualifier names (alias, or schema.table of an unaliased relation), innermost level first."""
        lvl: Level | None = level
        while lvl is not None:
            for alias, item in lvl.aliases:
                if len(qual) == 1:
                    if alias == qual[0]:
                        return item
                elif item.kind == BASE and alias == qual[-1] == item.name.name and item.name.schema in (None, qual[-2]):
                    return item
            lvl = lvl.parent
        return None

    def lookup(self, item: Item, col: str, cands: list, out: set) -> tuple[bool, bool, bool]:
        """Look ``col`` up in one FROM item: (found for certain, direct, opaque); base relations only add candidates."""
        kind = item.kind
        if kind == BASE:
            if col in item.unknown:  # FROM t AS a(x, y): which column x is needs the catalog
                self.ref((item.name,), "*", out)
                return True, False, True
            cands.append(item.name)
            return False, True, False
        if kind == DERIVED:
            cols = item.cols
            if cols is None:
                return True, True, False
            if col in item.unknown:  # a column alias that lands after a *: any of the columns
                for c in cols:
                    out |= c.sources
                return True, False, True
            found, direct, opaque = False, True, False
            for c in cols:
                if c.name == col and c.fixed():
                    out |= c.sources
                    found, direct, opaque = True, direct and c.direct, opaque or c.opaque
            if found:
                return True, direct, opaque
            for c in cols:
                if c.star is not None:
                    cands.append(c.star)
                elif c.wide:
                    out |= c.sources
                    opaque = True
            return False, True, opaque
        if kind == FUNC:
            out |= item.sources
            return False, False, True
        if col in item.using:
            dl, ol = self.resolve_in(item.left, col, out)
            dr, orr = self.resolve_in(item.right, col, out)
            return True, dl and dr and not item.full, ol or orr
        fl, dl, ol = self.lookup(item.left, col, cands, out)
        fr, dr, orr = self.lookup(item.right, col, cands, out)
        return fl or fr, dl and dr, ol or orr

    def resolve_in(self, item: Item, col: str, out: set) -> tuple[bool, bool]:
        cands: list = []
        found, direct, opaque = self.lookup(item, col, cands, out)
        if cands:
            self.ref(tuple(dict.fromkeys(cands)), col, out)
        elif not found:
            opaque = True
        return direct and not opaque, opaque

    def whole(self, item: Item, out: set) -> bool:
        """Every column of a FROM item (a whole-row reference); True when that is opaque."""
        if item.kind == BASE:
            self.ref((item.name,), "*", out)
            return False
        if item.kind == DERIVED:
            opaque = False
            for c in item.cols or ():
                out |= c.sources
                opaque = opaque or c.opaque or c.wide
            return opaque
        if item.kind == FUNC:
            out |= item.sources
            return True
        return self.whole(item.left, out) | self.whole(item.right, out)

    def column(self, fields: list[str], level: Level, out: set) -> int:
        """A ColumnRef in an expression."""
        col = fields[-1]
        if len(fields) > 1:
            item, direct = self.find(level, fields[:-1]), True
            if item is None and len(fields) == 3:  # alias.column.field of a composite column
                item, col, direct = self.find(level, fields[:1]), fields[1], False
            if item is None:
                self.ref((Name(fields[-3] if len(fields) > 2 else None, fields[-2]),), col, out)
                return OPAQUE
            if col == "*":
                return OPAQUE if self.whole(item, out) else 0
            d, o = self.resolve_in(item, col, out)
            return (DIRECT if d and direct else 0) | (OPAQUE if o else 0)
        cands: list = []
        found, direct, opaque = False, True, False
        lvl: Level | None = level
        while lvl is not None and not found:
            mark = len(cands)
            for item in lvl.items:
                f, d, o = self.lookup(item, col, cands, out)
                found, direct, opaque = found or f, direct and d, opaque or o
            if found:  # a base relation of this level with the column too would make it ambiguous (an error)
                del cands[mark:]
            lvl = lvl.parent
        item = None if found else self.find(level, [col])
        if item is not None:  # PostgreSQL falls back to a whole-row reference to an alias of that name
            opaque = self.whole(item, out) or opaque
            direct = False
            if item.kind == BASE:  # its whole row covers its column of that name
                cands = [c for c in cands if c != item.name]
        elif not found and not cands:
            opaque = True
        if cands:
            self.ref(tuple(dict.fromkeys(cands)), col, out)
        return (DIRECT if direct and not opaque else 0) | (OPAQUE if opaque else 0)

    # ------------------------------------------------------------ expressions

    def expr(self, node: Any, level: Level, out: set) -> int:
        """Add the sources of an expression to ``out``; return DIRECT/OPAQUE bits."""
        self.steps += 1
        if self.steps > MAX_STEPS:
            raise TooComplex
        if type(node) is list:
            flags = 0
            for n in node:
                flags |= self.expr(n, level, out)
            return flags & OPAQUE
        if type(node) is not dict:
            return 0
        for key, body in node.items():
            handler = _EXPR.get(key)
            if handler is not None:
                return handler(self, body, level, out)
            if not key[:1].isupper() or len(node) != 1:  # an unwrapped struct
                return self.walk(node, level, out) & OPAQUE
            return (self.walk(body, level, out) & OPAQUE) | (0 if key in _TRANSPARENT else OPAQUE)
        return 0

    def walk(self, node: Any, level: Level, out: set) -> int:
        """Walk every child generically (nodes without a dedicated handler)."""
        flags = 0
        values = node if type(node) is list else node.values() if type(node) is dict else ()
        for v in values:
            if type(v) is dict:
                flags |= self.expr(v, level, out) if len(v) == 1 and next(iter(v))[:1].isupper() else self.walk(v, level, out)
            elif type(v) is list:
                flags |= self.walk(v, level, out)
        return flags & OPAQUE

    def x_colref(self, body: dict, level: Level, out: set) -> int:
        return self.column(_strings(body.get("fields")), level, out)

    def x_args(self, body: dict, level: Level, out: set) -> int:
        flags = 0
        for key in ("arg", "args", "elements", "items", "val", "source", "expr", "xpr"):
            if key in body:
                flags |= self.expr(body[key], level, out)
        return flags & OPAQUE

    def x_const(self, body: Any, level: Level, out: set) -> int:
        return 0

    def x_func(self, body: dict, level: Level, out: set) -> int:
        parts = _strings(body.get("funcname"))
        if len(parts) > 1 and parts[-2] not in _SAFE_SCHEMAS:
            self.opaque_functions = True
        args = body.get("args") or ()
        flags = 0
        if parts and parts[-1].lower() in SET_RETURNING:
            # In the select list too, a set-returning function's arguments decide how many
            # rows come out: they choose rows (and are the values it returns).
            found: set = set()
            for a in args:
                flags |= self.expr(a, level, found)
            self.filters |= found
            out |= found
            args = ()
        for a in args:
            flags |= self.expr(a, level, out)
        self.filter(body.get("agg_order"), level)  # ORDER BY / FILTER (WHERE) inside an aggregate choose rows
        self.filter(body.get("agg_filter"), level)
        if body.get("agg_within_group"):  # percentile_disc(0.5) WITHIN GROUP (ORDER BY x) returns one of the x
            flags |= self.expr(body.get("agg_order"), level, out)
        if body.get("over"):
            self.window(body["over"], level)
        return flags & OPAQUE

    def x_aexpr(self, body: dict, level: Level, out: set) -> int:
        flags = 0
        while True:  # a left-deep chain (a || b || c ...) iteratively, not recursively
            name = _strings(body.get("name"))
            if len(name) > 1 and name[-2] not in _SAFE_SCHEMAS:
                self.opaque_functions = True
            flags |= self.expr(body.get("rexpr"), level, out)
            key, left = _one(body.get("lexpr"))
            if key != "A_Expr":
                return (flags | self.expr(body.get("lexpr"), level, out)) & OPAQUE
            body = left

    def x_case(self, body: dict, level: Level, out: set) -> int:
        flags, tmp = 0, set()  # the conditions both choose the value and decide it
        flags |= self.expr(body.get("arg"), level, tmp)
        for w in body.get("args") or ():
            cw = w.get("CaseWhen") or {}
            flags |= self.expr(cw.get("expr"), level, tmp)
            flags |= self.expr(cw.get("result"), level, out)
        self.filters |= tmp
        out |= tmp
        return (flags | self.expr(body.get("defresult"), level, out)) & OPAQUE

    def x_indirection(self, body: dict, level: Level, out: set) -> int:
        flags = self.expr(body.get("arg"), level, out)
        return (flags | self.walk(body.get("indirection") or [], level, out)) & OPAQUE

    def x_sublink(self, body: dict, level: Level, out: set) -> int:
        kind = body.get("subLinkType", "")
        cols = self.query(body.get("subselect"), level, level.ctes)
        if kind == "EXISTS_SUBLINK":  # its WHERE is recorded as filters by the subquery itself
            return 0
        tmp: set = set()
        opaque = any(c.opaque or c.wide for c in cols)
        for c in cols:
            tmp |= c.sources
        if kind not in ("EXPR_SUBLINK", "ARRAY_SUBLINK", "MULTIEXPR_SUBLINK"):  # IN/ANY/ALL/row comparison
            opaque = bool(self.expr(body.get("testexpr"), level, tmp) & OPAQUE) or opaque
            self.filters |= tmp
        out |= tmp
        return OPAQUE if opaque else 0

    def x_query(self, body: dict, level: Level, out: set) -> int:
        cols = self.select(body, level, level.ctes)
        for c in cols:
            out |= c.sources
        return OPAQUE if any(c.opaque or c.wide for c in cols) else 0


_EXPR = {
    "ColumnRef": ScopeWalker.x_colref, "FuncCall": ScopeWalker.x_func, "A_Expr": ScopeWalker.x_aexpr,
    "CaseExpr": ScopeWalker.x_case, "A_Indirection": ScopeWalker.x_indirection, "SubLink": ScopeWalker.x_sublink,
    "SelectStmt": ScopeWalker.x_query,
    **dict.fromkeys(("A_Const", "ParamRef", "SQLValueFunction", "MergeSupportFunc", "CurrentOfExpr", "SetToDefault",
                     "String", "Integer", "Float", "Boolean", "BitString", "A_Star", "TypeName"), ScopeWalker.x_const),
    **dict.fromkeys(("TypeCast", "CollateClause", "BoolExpr", "NullTest", "BooleanTest", "CoalesceExpr", "MinMaxExpr",
                     "RowExpr", "A_ArrayExpr", "GroupingFunc", "List", "ResTarget", "MultiAssignRef", "NamedArgExpr"),
                    ScopeWalker.x_args),
}

_LABELS = {"A_ArrayExpr": "array", "RowExpr": "row", "CoalesceExpr": "coalesce", "GroupingFunc": "grouping",
           "MergeSupportFunc": "merge_action", "XmlSerialize": "xmlserialize", "JsonParseExpr": "json",
           "JsonScalarExpr": "json_scalar", "JsonSerializeExpr": "json_serialize", "JsonObjectConstructor": "json_object",
           "JsonArrayConstructor": "json_array", "JsonArrayQueryConstructor": "json_array",
           "JsonObjectAgg": "json_objectagg", "JsonArrayAgg": "json_arrayagg"}


def label(node: Any) -> str:
    """The column name PostgreSQL gives an unaliased expression (FigureColname)."""
    return _label(node)[0] or "?column?"


def _label(node: Any) -> tuple[str | None, int]:
    key, body = _one(node)
    if key == "ColumnRef":
        fields = _strings(body.get("fields"))
        return (fields[-1], 2) if fields and fields[-1] != "*" else (None, 0)
    if key == "A_Indirection":
        names = _strings(body.get("indirection"))
        return (names[-1], 2) if names and names[-1] != "*" else _label(body.get("arg"))
    if key == "FuncCall":
        parts = _strings(body.get("funcname"))
        return (parts[-1], 2) if parts else (None, 0)
    if key in ("TypeCast", "CollateClause"):
        name, strength = _label(body.get("arg"))
        if strength <= 1 and key == "TypeCast":
            names = _strings((body.get("typeName") or {}).get("names"))
            return (names[-1], 1) if names else (name, strength)
        return name, strength
    if key == "CaseExpr":
        name, strength = _label(body.get("defresult"))
        return (name, 2) if strength == 2 else ("case", 1)
    if key == "SubLink":
        kind = body.get("subLinkType")
        if kind == "EXISTS_SUBLINK":
            return "exists", 2
        if kind == "ARRAY_SUBLINK":
            return "array", 2
        if kind == "EXPR_SUBLINK":
            sel = (body.get("subselect") or {}).get("SelectStmt") or {}
            while sel.get("larg"):
                sel = sel["larg"]
            res = ((sel.get("targetList") or [{}])[0]).get("ResTarget") or {}
            name = res.get("name") or _label(res.get("val"))[0]
            return (name, 2) if name else (None, 0)
        return None, 0
    if key == "MinMaxExpr":
        return ("greatest" if body.get("op") == "IS_GREATEST" else "least"), 2
    if key == "SQLValueFunction":
        return body.get("op", "SVFOP_?")[6:].lower().removesuffix("_n"), 2
    if key == "XmlExpr":
        op = body.get("op", "")
        return (op[3:].lower(), 2) if op != "IS_DOCUMENT" else (None, 0)
    if key == "JsonFuncExpr":
        return body.get("op", "JSON_?_OP")[:-3].lower(), 2
    return (_LABELS[key], 2) if key in _LABELS else (None, 0)
