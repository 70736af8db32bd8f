"""Does an UPDATE's or DELETE's WHERE clause filter rows, or only look as if it does?

``dangerous.no_where`` exists to stop a statement that touches every row of a
table. A WHERE clause whose condition never looks at a row (``WHERE true``,
``WHERE 0 = 0 OR true``, ``WHERE $1``, ``WHERE current_user = 'bob'``) or
compares a column with itself (``WHERE id = id``) touches every row just the
same, so it counts as no WHERE at all. The test is syntactic and errs towards
"filters": any column reference anywhere (a correlated ``EXISTS`` is a real
filter) makes a condition count, unless it is OR-ed with one that does not.
``WHERE CURRENT OF cursor`` is a positioned update of one row, a filter.
"""

from __future__ import annotations

from typing import Any

__all__ = ["filters_rows"]

# Comparisons that are true for every row (with a non-null value) when both sides are the same.
_REFLEXIVE = frozenset({"=", ">=", "<="})


def _strip(node: Any) -> Any:
    """The node without source positions, so two spellings of one expression compare equal."""
    if isinstance(node, dict):
        return {k: _strip(v) for k, v in node.items() if k != "location"}
    if isinstance(node, list):
        return [_strip(v) for v in node]
    return node


def _mentions_column(node: Any) -> bool:
    if isinstance(node, dict):
        if "ColumnRef" in node or "CurrentOfExpr" in node:
            return True
        return any(_mentions_column(v) for v in node.values())
    if isinstance(node, list):
        return any(_mentions_column(v) for v in node)
    return False


def filters_rows(where: Any) -> bool:
    """Whether the condition ``where`` (a pglast JSON node, or None) depends on the row."""
    if not isinstance(where, dict) or not where:
        return False
    if "BoolExpr" in where:
        body = where["BoolExpr"]
        args = body.get("args") or []
        op = body.get("boolop")
        if op == "OR_EXPR":
            return bool(args) and all(filters_rows(a) for a in args)
        if op == "AND_EXPR":
            return any(filters_rows(a) for a in args)
        return any(filters_rows(a) for a in args)  # NOT_EXPR: NOT of a constant is a constant
    if "A_Expr" in where:
        body = where["A_Expr"]
        names = [n.get("String", {}).get("sval") for n in body.get("name") or [] if isinstance(n, dict)]
        if (
            body.get("kind") == "AEXPR_OP"
            and names
            and names[-1] in _REFLEXIVE
            and body.get("lexpr") is not None
            and _strip(body.get("lexpr")) == _strip(body.get("rexpr"))
        ):
            return False
    return _mentions_column(where)
