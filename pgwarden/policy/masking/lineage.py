"""Column lineage: which base columns each result column of a statement is computed from.

Inline masking must mask (or refuse) a result column whose value comes from a
masked column, however it got there: through an alias, a subquery, a CTE, a
function, a UNION, ``row_to_json(c)``. And a masked column used to *choose* rows
(WHERE, JOIN, ORDER BY, DISTINCT, a sublink) leaks its values through the row
set even when it is never returned, so those uses are reported apart
(``filters``) for the policy to refuse if it wants. :func:`lineage` answers both
for a statement text, with the PostgreSQL parser itself (pglast/libpg_query), so
what is a column, an alias or a subquery here is exactly what the server sees.

Names are kept as written (``Name.schema`` None when unqualified), and a column
whose relation needs the catalog to settle (an unqualified name with two tables
in scope) lists every candidate relation in order: the analysis is shared
between sessions and cached by text, and resolving against a session's
``search_path`` and catalog is the caller's job. ``*`` over a base relation is
one entry (``Output.star``) for the same reason: only the catalog knows its
width.

Whatever cannot be followed is marked ``opaque``, never silently dropped, so a
masking decision can always fail closed. The walk itself is in
``lineage_scope`` (names, expressions) and ``lineage_walk`` (queries).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from pglast import parser as _pg

from ..analysis.facts import Name
from ..analysis.statement import command_of
from ..analysis.utility import _defelems, _strings
from .lineage_scope import Col, Item, Level, Ref, BASE, TooComplex
from .lineage_walk import LineageWalker

__all__ = ["Copy", "Lineage", "LineageAnalysis", "Name", "Output", "Ref", "lineage"]

CACHE_SIZE = 4096


@dataclass(frozen=True, slots=True)
class Output:
    """One result column, by position.

    ``direct``: the value IS one base column unchanged (a plain reference, through
    aliases, subqueries and CTEs; in a set operation only if direct in every
    branch), so that column's own masker applies. ``opaque``: lineage not fully
    known (a function in FROM, a column of an unknown relation, ...). ``star``:
    this entry stands for ``*``/``t.*`` over that base relation -- all of its
    columns, which the caller expands with the catalog.
    """

    name: str
    sources: frozenset[Ref]
    direct: bool
    opaque: bool
    star: Name | None = None


@dataclass(frozen=True, slots=True)
class Copy:
    """A COPY statement: what it copies, where, and in which format (to rewrite its data stream)."""

    relation: Name | None
    columns: tuple[str, ...] | None  # the column list; None: all columns
    query: Lineage | None  # COPY (query): the query's lineage
    direction: str  # "to" | "from"
    target: str  # "stdout" | "stdin" | "file" | "program"
    format: str  # "text" | "csv" | "binary"
    options: dict[str, object]  # as given, both syntaxes; header is a bool or "match". Shared: do not mutate.


@dataclass(frozen=True, slots=True)
class Lineage:
    """One SQL statement (see the module docstring; fields as in issue 6)."""

    command: str
    returns_rows: bool  # the server answers with a RowDescription
    outputs: tuple[Output, ...] | None  # None: resolved elsewhere (FETCH, EXECUTE, CALL)
    referenced: frozenset[Ref]  # every column reference anywhere, whole rows and stars as "*"
    filters: frozenset[Ref]  # references that choose, order or group rows, at any level
    written_from: frozenset[Ref]  # references whose values flow into written data
    relations: frozenset[Name]  # every relation named anywhere
    cursor: str | None = None  # DECLARE/FETCH/MOVE/CLOSE name ("*": CLOSE ALL, DISCARD ALL)
    prepared: str | None = None  # PREPARE/EXECUTE/DEALLOCATE name ("*": DEALLOCATE ALL, DISCARD ALL)
    copy: Copy | None = None
    explain_analyze: bool = False
    opaque_functions: bool = False  # calls a function that could read data on its own (best effort)


@dataclass(frozen=True, slots=True)
class LineageAnalysis:
    statements: tuple[Lineage, ...]
    error: str | None = None  # why the text could not be analysed (then statements is empty)


class _Result:
    """What one statement node says beyond the walker's sets (filled by :func:`_run`)."""

    __slots__ = ("command", "returns_rows", "cols", "cursor", "prepared", "copy", "explain_analyze")

    def __init__(self) -> None:
        self.command, self.returns_rows = "UNKNOWN", False
        self.cols: list[Col] | None = []
        self.cursor = self.prepared = None
        self.copy: Copy | None = None
        self.explain_analyze = False


@lru_cache(maxsize=CACHE_SIZE)
def lineage(text: str) -> LineageAnalysis:
    """The lineage of every statement in ``text``; never raises for bad input (the error is in the result).

    Cached by exact text (LRU): a hit is one C-level dict lookup. The result is
    shared between callers and immutable (``Copy.options`` excepted: do not mutate).
    ``text`` must be hashable (the cache sees it first); any other non-str gives an error.
    """
    if not isinstance(text, str):
        return LineageAnalysis((), error="statement text must be a string")
    try:
        tree = json.loads(_pg.parse_sql_json(text))
    except _pg.ParseError as exc:
        return LineageAnalysis((), error=str(exc.args[0]) if exc.args else str(exc))
    except RecursionError:
        return LineageAnalysis((), error="statement is nested too deeply to analyse")
    except Exception as exc:  # e.g. text that is not valid Unicode
        return LineageAnalysis((), error=f"statement could not be parsed: {exc}")
    try:
        return LineageAnalysis(tuple(_statement(raw.get("stmt") or {}) for raw in tree.get("stmts", ())))
    except RecursionError:
        return LineageAnalysis((), error="statement is nested too deeply to analyse")
    except TooComplex:
        return LineageAnalysis((), error="statement is too complex to analyse (nested recursive queries)")
    except Exception as exc:  # a node shape this code does not expect: fail closed, never crash the caller
        return LineageAnalysis((), error=f"lineage analysis failed ({type(exc).__name__}: {exc})")


def _statement(node: dict) -> Lineage:
    walker, result = LineageWalker(), _Result()
    _run(walker, node, result)
    return _build(walker, result)


def _build(w: LineageWalker, r: _Result) -> Lineage:
    outputs = None if r.cols is None else tuple(
        Output(c.name, c.sources, c.direct and not (c.opaque or c.wide), c.opaque or c.wide, c.star) for c in r.cols)
    return Lineage(r.command, r.returns_rows, outputs, frozenset(w.referenced), frozenset(w.filters),
                   frozenset(w.written), frozenset(w.relations), r.cursor, r.prepared, r.copy, r.explain_analyze,
                   w.opaque_functions)


def _has_returning(body: dict) -> bool:
    return bool((body.get("returningClause") or {}).get("exprs") or body.get("returningList"))


def _truthy(arg: Any) -> bool | str:
    """A DefElem argument as a boolean (no argument: true), or the string itself if it is not one."""
    if arg is None:
        return True
    key = next(iter(arg)) if isinstance(arg, dict) and len(arg) == 1 else ""
    body = arg.get(key) if key else {}
    if key == "Boolean":
        return bool(body.get("boolval", False))
    if key == "Integer":
        return bool(body.get("ival", 0))
    if key == "String":
        value = body.get("sval", "").lower()
        if value in ("true", "on", "yes", "1", "t", "y"):
            return True
        if value in ("false", "off", "no", "0", "f", "n"):
            return False
        return value
    return True


def _value(arg: Any) -> object:
    """A DefElem argument as given: string, number, bool, list of names, ``*``; no argument: True."""
    if not isinstance(arg, dict) or len(arg) != 1:
        return True
    key, body = next(iter(arg.items()))
    if key == "String":
        return body.get("sval", "")
    if key == "Integer":
        return body.get("ival", 0)
    if key == "Float":
        return body.get("fval", "")
    if key == "Boolean":
        return bool(body.get("boolval", False))
    if key == "A_Star":
        return "*"
    if key == "List":
        return _strings(body.get("items"))
    return str(body)


_DML = {"InsertStmt": "INSERT", "UpdateStmt": "UPDATE", "DeleteStmt": "DELETE", "MergeStmt": "MERGE"}


def _run(w: LineageWalker, node: dict, r: _Result) -> None:
    """Fill ``r`` for one statement node, walking what it contains with ``w``."""
    key = next(iter(node)) if isinstance(node, dict) and len(node) == 1 else ""
    body = node.get(key) or {} if key else {}
    root = Level(None, {})
    if key == "SelectStmt":
        r.cols = w.select(body, None, {})
        r.returns_rows = True
        r.command = "VALUES" if body.get("valuesLists") else "SELECT"
        into = body.get("intoClause")
        if into:  # SELECT ... INTO t: the rows are written, not returned
            r.command, r.returns_rows = "SELECT INTO", False
            _write_into(w, into, r.cols)
    elif key in _DML:
        cols = w.dml(key, body, None, {})
        r.command, r.returns_rows = _DML[key], _has_returning(body)
        r.cols = cols if r.returns_rows else []
    elif key == "DeclareCursorStmt":
        inner = _Result()
        _run(w, body.get("query") or {}, inner)
        r.command, r.cursor, r.cols = "DECLARE", body.get("portalname", ""), inner.cols
    elif key == "FetchStmt":
        move = bool(body.get("ismove"))
        r.command, r.returns_rows, r.cursor = ("MOVE" if move else "FETCH"), not move, body.get("portalname", "")
        r.cols = None  # the cursor's columns: known where it was declared
    elif key == "ClosePortalStmt":
        r.command, r.cursor = "CLOSE", body.get("portalname") or "*"
    elif key == "PrepareStmt":
        inner = _Result()
        _run(w, body.get("query") or {}, inner)
        r.command, r.prepared, r.cols = "PREPARE", body.get("name", ""), inner.cols
    elif key == "ExecuteStmt":
        r.command, r.returns_rows, r.prepared, r.cols = "EXECUTE", True, body.get("name", ""), None
        w.expr(body.get("params"), root, set())
    elif key == "DeallocateStmt":
        r.command, r.prepared = "DEALLOCATE", "*" if body.get("isall") or not body.get("name") else body["name"]
    elif key == "DiscardStmt":
        r.command = "DISCARD"
        if body.get("target") == "DISCARD_ALL":  # closes every cursor and deallocates every prepared statement
            r.cursor = r.prepared = "*"
    elif key == "ExplainStmt":
        inner = _Result()
        _run(w, body.get("query") or {}, inner)
        analyze = _defelems(body.get("options"))
        r.command, r.returns_rows, r.cols = "EXPLAIN", True, [Col("QUERY PLAN")]
        r.explain_analyze = "analyze" in analyze and _truthy(analyze["analyze"]) is True
        r.prepared = inner.prepared if inner.command == "EXECUTE" else None
    elif key == "CopyStmt":
        _copy(w, body, r)
    elif key == "VariableShowStmt":
        name = body.get("name", "")
        r.command, r.returns_rows = "SHOW", True
        r.cols = [Col(n) for n in ("name", "setting", "description")] if name == "all" else [Col(name)]
    elif key == "CreateTableAsStmt":
        _create_table_as(w, body, r)
    elif key == "CallStmt":
        w.opaque_functions = True
        w.expr(body.get("funccall"), root, set())
        r.command, r.returns_rows, r.cols = "CALL", True, None
    else:
        r.command = command_of(key, body, None)[0] if key else "UNKNOWN"  # type: ignore[arg-type]
        if key == "DoStmt":
            w.opaque_functions = True
        _utility(w, body)


def _write_into(w: LineageWalker, into: dict, cols: list[Col] | None) -> None:
    rel = into.get("rel") or {}
    w.relations.add(Name(rel.get("schemaname"), rel.get("relname", "")))
    for c in cols or ():
        w.written |= c.sources


def _create_table_as(w: LineageWalker, body: dict, r: _Result) -> None:
    """CREATE TABLE AS / CREATE MATERIALIZED VIEW / SELECT INTO: the query's values are written."""
    r.command = "CREATE MATERIALIZED VIEW" if body.get("objtype") == "OBJECT_MATVIEW" else "CREATE TABLE AS"
    inner = _Result()
    _run(w, body.get("query") or {}, inner)
    if inner.command == "EXECUTE":  # CREATE TABLE t AS EXECUTE p: the prepared statement's lineage
        r.prepared, r.cols = inner.prepared, None
    else:
        r.cols = inner.cols
    _write_into(w, body.get("into") or {}, inner.cols)


def _utility(w: LineageWalker, node: Any) -> None:
    """Any other statement: the relations it names, and the lineage sets of any query inside (CREATE VIEW ...)."""
    if isinstance(node, list):
        for item in node:
            _utility(w, item)
        return
    if not isinstance(node, dict):
        return
    if len(node) == 1:
        key = next(iter(node))
        if key in ("SelectStmt", *_DML):
            w.query(node, None, {})
            return
    if "relname" in node:
        w.relations.add(Name(node.get("schemaname"), node.get("relname", "")))
    for value in node.values():
        if isinstance(value, (dict, list)):
            _utility(w, value)


def _copy(w: LineageWalker, body: dict, r: _Result) -> None:
    is_from = bool(body.get("is_from"))
    rv = body.get("relation")
    relation = Name(rv.get("schemaname"), rv.get("relname", "")) if rv else None
    columns = tuple(_strings(body.get("attlist"))) or None
    query_lineage, cols = None, []
    if relation is not None:
        w.relations.add(relation)
    if body.get("query"):
        sub, inner = LineageWalker(), _Result()
        _run(sub, body["query"], inner)
        query_lineage = _build(sub, inner)
        w.absorb(sub)
        cols = inner.cols or []
    elif relation is not None and not is_from:  # COPY t [(cols)] TO: those columns, unchanged
        for col in columns or ("*",):
            out: set = set()
            w.ref((relation,), col, out)
            cols.append(Col(col, frozenset(out), True, star=relation if col == "*" else None))
    if is_from:
        level = Level(None, {})
        if relation is not None:
            level.items.append(Item(BASE, name=relation))
        w.filter(body.get("whereClause"), level)
        cols = []
    target = "program" if body.get("is_program") else "file" if body.get("filename") else \
        "stdin" if is_from else "stdout"
    if not is_from and target in ("file", "program"):  # the server writes the values out of band
        for c in cols:
            w.written |= c.sources
    options: dict[str, object] = {}
    for item in body.get("options") or ():
        d = item.get("DefElem") if isinstance(item, dict) else None
        if d is not None:
            name = d.get("defname", "")
            options[name] = _truthy(d.get("arg")) if name == "header" else _value(d.get("arg"))
    fmt = options.get("format", "text")
    r.command, r.cols = "COPY", cols
    r.copy = Copy(relation, columns, query_lineage, "from" if is_from else "to", target,
                  fmt.lower() if isinstance(fmt, str) else "text", options)
