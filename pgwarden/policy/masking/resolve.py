"""From lineage and catalog to decisions: which rule masks which result column, for one session.

:class:`SessionRules` is one session's view of the masking rules (its role
decides each rule's strategy). It turns the parser's lineage (``lineage.py``:
references to columns *as written*) into :class:`Hit` s on concrete columns,
through the catalog (``catalog.py``): unqualified names resolve against the
session's search paths, views resolve through their own definitions (a view
column is direct when the view passes the base column through unchanged).

:class:`Expect` is what masking expects of one result column before the
server has answered: clean, masked (the value *is* a masked column: the rule's
strategy applies), derived (computed from a masked column: masked as a whole,
or refused), or unknown (content detection runs). The RowDescription later
confirms or overrides it (``plan.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..analysis.facts import Name
from .catalog import Catalog, Relation
from .lineage import Output, Ref, lineage

__all__ = ["Expect", "Hit", "SessionRules", "CLEAN", "UNKNOWN", "MAX_VIEW_DEPTH", "merge_expects"]

MAX_VIEW_DEPTH = 8


@dataclass(frozen=True, slots=True)
class Hit:
    """A masked source column behind a result value."""

    rule: object  # a MaskRuleConfig
    strategy: str
    column: str  # schema.table.column of the base column
    direct: bool  # the result value is that column's value, unchanged


@dataclass(frozen=True, slots=True)
class Expect:
    kind: str  # clean | masked | derived | unknown
    hits: tuple[Hit, ...] = ()
    type_oid: int = 0  # the column's type when it is a known base column (for COPY)
    # (relation OID, attnum) when the column is one known base or view column: the
    # RowDescription must name the same origin, else the expectations are not this result's.
    origin: tuple[int, int] | None = None


CLEAN = Expect("clean")
UNKNOWN = Expect("unknown")
_UNRESOLVED = object()


class SessionRules:
    """The masking rules as one session sees them (role, static user, target, search path)."""

    def __init__(self, rules: list[tuple[object, str]], role: str | None, user: str, target: str) -> None:
        self.rules = rules  # (MaskRuleConfig, strategy) with strategy != "none", in config order
        self.role = role
        self.user = user
        self.target = target
        self._columns: dict[tuple[int, int, int], tuple[Hit, ...] | None] = {}
        self._catalog_id = 0

    # ------------------------------------------------------------ base columns

    def _cache_for(self, catalog: Catalog) -> dict:
        if id(catalog) != self._catalog_id:
            self._columns.clear()
            self._catalog_id = id(catalog)
        return self._columns

    def column_hits(self, catalog: Catalog, rel: Relation, attnum: int, paths, depth: int = 0) -> tuple[Hit, ...] | None:
        """The hits of one column of ``rel`` (attnum 0: the whole row); None when unknown."""
        cache = self._cache_for(catalog)
        key = (rel.oid, attnum, 0)
        if key in cache:
            return cache[key]
        if attnum == 0:
            hits: list[Hit] = []
            unknown = False
            for column in rel.columns:
                found = self.column_hits(catalog, rel, column[0], paths, depth)
                if found is None:
                    unknown = True
                else:
                    hits.extend(Hit(h.rule, h.strategy, h.column, False) for h in found)
            result: tuple[Hit, ...] | None = tuple(hits) if hits or not unknown else None
        elif rel.kind in ("v", "m"):
            # A view's columns are what its definition makes them (unknown without one).
            result = self._view_column(catalog, rel, attnum, paths, depth) if rel.definition else None
        else:
            column = rel.column(attnum)
            if column is None:
                result = None
            else:
                result = ()
                for rule, strategy in self.rules:
                    if rule.targets and self.target not in rule.targets:
                        continue
                    if rule.matches(rel.schema, rel.name, column[1]):
                        result = (Hit(rule, strategy, f"{rel.schema}.{rel.name}.{column[1]}", True),)
                        break
        cache[key] = result
        return result

    def _view_column(self, catalog: Catalog, rel: Relation, attnum: int, paths, depth: int) -> tuple[Hit, ...] | None:
        if depth >= MAX_VIEW_DEPTH:
            return None
        analysis = lineage(rel.definition or "")
        if analysis.error is not None or len(analysis.statements) != 1:
            return None
        expects = self.expect_outputs(catalog, analysis.statements[0].outputs, paths, depth + 1)
        if expects is None or attnum - 1 >= len(expects):
            return None
        expect = expects[attnum - 1]
        if expect.kind == "unknown":
            return None
        if expect.kind == "derived":
            return tuple(Hit(h.rule, h.strategy, h.column, False) for h in expect.hits)
        return expect.hits

    # ------------------------------------------------------------ references

    def relations_of(self, catalog: Catalog, ref: Ref, paths) -> list[Relation] | None | bool:
        """The relations a reference's column may belong to: those of the first candidate that has
        the column, every one the session's possible search paths may mean (masking takes the
        strictest); False when every candidate is known and none has the column; None when unknown."""
        known = bool(ref.candidates)
        for name in ref.candidates:
            rels = catalog.resolve(name, paths, self.user)
            if not rels:
                known = False
            found = [rel for rel in rels if ref.column == "*" or rel.named(ref.column) is not None]
            if found:
                return found
        return False if known else None

    def relation_of(self, catalog: Catalog, ref: Ref, paths) -> Relation | None | bool:
        rels = self.relations_of(catalog, ref, paths)
        return rels[0] if rels else rels

    def ref_hits(self, catalog: Catalog, ref: Ref, paths, depth: int = 0) -> tuple[Hit, ...] | None:
        rels = self.relations_of(catalog, ref, paths)
        if rels is False:
            # No candidate has such a column: the lineage's other reading of the name applies
            # (``o`` as the whole row of alias o, a GROUP BY output alias), which it also recorded.
            return ()
        if rels is None:
            return None
        hits: list[Hit] = []
        for rel in rels:
            if ref.column == "*":
                found = self.column_hits(catalog, rel, 0, paths, depth)
            else:
                column = rel.named(ref.column)
                found = self.column_hits(catalog, rel, column[0], paths, depth) if column is not None else None
            if found is None:
                return None
            hits.extend(found)
        return tuple(hits)

    def refs_hits(self, catalog: Catalog, refs, paths) -> tuple[list[Hit], bool]:
        """All hits of ``refs`` and whether some reference could not be resolved."""
        hits: list[Hit] = []
        unknown = False
        for ref in refs:
            found = self.ref_hits(catalog, ref, paths)
            if found is None:
                unknown = True
            else:
                hits.extend(found)
        return hits, unknown

    # ------------------------------------------------------------ outputs

    def expect_outputs(
        self, catalog: Catalog, outputs: tuple[Output, ...] | None, paths, depth: int = 0, opaque_calls: bool = False
    ) -> list[Expect] | None:
        """One Expect per result column (stars expanded), or None when the positions are unknown.

        ``opaque_calls``: the statement calls functions whose bodies pgwarden cannot see;
        a computed column's origin is then unknown even when its arguments are clean."""
        if outputs is None:
            return None
        result: list[Expect] = []
        for out in outputs:
            if out.star is not None:
                rels = catalog.resolve(out.star, paths, self.user)
                if len(rels) != 1:
                    return None  # unknown, or several relations of that name: the width is not known
                rel = rels[0]
                for column in rel.columns:
                    hits = self.column_hits(catalog, rel, column[0], paths, depth)
                    result.append(_expect(hits, True, False, column[2], (rel.oid, column[0])))
                continue
            hits: list[Hit] = []
            unknown = False
            type_oid = 0
            origin = None
            for ref in out.sources:
                found = self.ref_hits(catalog, ref, paths, depth)
                if found is None:
                    unknown = True
                else:
                    hits.extend(found)
                if out.direct and len(out.sources) == 1 and ref.column != "*":
                    rels = self.relations_of(catalog, ref, paths)
                    if rels and len(rels) == 1:
                        column = rels[0].named(ref.column)
                        if column is not None:
                            type_oid = column[2]
                            origin = (rels[0].oid, column[0])
            result.append(_expect(tuple(hits), out.direct, out.opaque or unknown or (opaque_calls and not out.direct),
                                  type_oid, origin))
        return result

    def names_statistics(self, catalog: Catalog, relations) -> Name | None:
        """A planner-statistics view among ``relations`` (its most common values are data)."""
        for name in relations:
            if name.name in _STATISTICS and name.schema in (None, "pg_catalog"):
                return name
        return None


_STATISTICS = frozenset({"pg_stats", "pg_statistic", "pg_stats_ext", "pg_stats_ext_exprs", "pg_statistic_ext_data"})


def _expect(hits: tuple[Hit, ...] | None, direct: bool, opaque: bool, type_oid: int,
            origin: tuple[int, int] | None = None) -> Expect:
    if hits is None:
        return UNKNOWN
    if hits:
        if direct and all(h.direct for h in hits):
            return Expect("masked", hits, type_oid, origin)
        return Expect("derived", hits, type_oid, origin if direct else None)
    if opaque:
        return UNKNOWN
    return Expect("clean", (), type_oid, origin) if type_oid or origin else CLEAN


_STRICTNESS = {"clean": 0, "unknown": 1, "masked": 2, "derived": 3}


def merge_expects(old: list[Expect] | None, new: list[Expect] | None) -> list[Expect] | None:
    """The stricter of two expectations for the same name (a PREPARE or DECLARE whose
    success is not known yet: the name means one or the other)."""
    if old is None or new is None or len(old) != len(new):
        return None
    merged = []
    for a, b in zip(old, new):
        if a == b:
            merged.append(a)
            continue
        seen: set = set()
        hits = tuple(h for h in a.hits + b.hits
                     if (key := (h.rule.name, h.strategy, h.column, h.direct)) not in seen and not seen.add(key))
        kind = max(a.kind, b.kind, key=_STRICTNESS.__getitem__)
        if kind == "masked" and len({(h.rule.name, h.strategy) for h in hits}) > 1:
            kind = "derived"
        merged.append(Expect(kind, hits, a.type_oid if a.type_oid == b.type_oid else 0,
                             a.origin if a.origin == b.origin else None))
    return merged
