"""A target's catalog as masking needs it: relations by OID and by name, their columns, view definitions.

Why: a RowDescription names a result column's origin only as (table OID,
attribute number), and masking rules name columns as ``schema.table.column``;
the catalog joins the two. Views matter too: PostgreSQL reports a view's own
OID for a view's columns, so a view's definition is kept and analysed for
lineage (``SELECT * FROM customer_view`` is masked like the table under it).

This module is sans-IO: the gateway (``pgwarden/server/catalog.py``) runs
:data:`CATALOG_QUERY` on a connection of its own and hands the rows to
:class:`CatalogCache`. A catalog is trusted for ``ttl`` seconds; DDL through
pgwarden and any relation a statement names that the catalog lacks make the
stage reload it sooner (``stale``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from ..analysis.facts import Name

__all__ = ["CATALOG_QUERY", "Catalog", "CatalogCache", "Relation", "catalog_from_rows"]

#: One row per user relation: oid, schema, name, relkind, attnums, attnames, type oids,
#: generated flags, view definition. System schemas are left out: masking rules name user data.
CATALOG_QUERY = """
SELECT c.oid::int8, n.nspname, c.relname, c.relkind::text,
       coalesce(array_agg(a.attnum ORDER BY a.attnum) FILTER (WHERE a.attnum IS NOT NULL), '{}'),
       coalesce(array_agg(a.attname::text ORDER BY a.attnum) FILTER (WHERE a.attnum IS NOT NULL), '{}'),
       coalesce(array_agg(a.atttypid::int8 ORDER BY a.attnum) FILTER (WHERE a.attnum IS NOT NULL), '{}'),
       coalesce(array_agg(a.attgenerated <> '' ORDER BY a.attnum) FILTER (WHERE a.attnum IS NOT NULL), '{}'),
       CASE WHEN c.relkind IN ('v', 'm') THEN pg_get_viewdef(c.oid) END
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
WHERE c.relkind IN ('r', 'v', 'm', 'p', 'f')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_toast%'
GROUP BY c.oid, n.nspname, c.relname, c.relkind
"""


@dataclass(frozen=True, slots=True)
class Relation:
    oid: int
    schema: str
    name: str
    kind: str  # r table, p partitioned, v view, m materialized view, f foreign table
    columns: tuple[tuple[int, str, int, bool], ...]  # (attnum, name, type oid, generated), by attnum
    definition: str | None = None  # a view's SELECT
    _by_attnum: dict = field(default_factory=dict, compare=False, repr=False)
    _by_name: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        for entry in self.columns:
            self._by_attnum[entry[0]] = entry
            self._by_name[entry[1]] = entry

    def column(self, attnum: int) -> tuple[int, str, int, bool] | None:
        return self._by_attnum.get(attnum)

    def named(self, name: str) -> tuple[int, str, int, bool] | None:
        return self._by_name.get(name)

    @property
    def is_view(self) -> bool:
        return self.kind in ("v", "m") and self.definition is not None

    def __str__(self) -> str:
        return f"{self.schema}.{self.name}"


class Catalog:
    def __init__(self, relations: Iterable[Relation], loaded_at: float | None = None) -> None:
        self.loaded_at = time.monotonic() if loaded_at is None else loaded_at
        self.by_oid: dict[int, Relation] = {}
        self.by_name: dict[tuple[str, str], Relation] = {}
        self._named: dict[str, list[Relation]] = {}
        for rel in relations:
            self.by_oid[rel.oid] = rel
            self.by_name[(rel.schema, rel.name)] = rel
            self._named.setdefault(rel.name, []).append(rel)

    def resolve(self, name: Name, search_paths: Iterable[tuple[str, ...]], user: str) -> list[Relation]:
        """Every relation ``name`` may mean for a session: qualified, itself; unqualified, the first
        match in each search_path the session may be using (temporary relations first)."""
        if name.schema is not None:
            rel = self.by_name.get((name.schema, name.name))
            return [rel] if rel is not None else []
        candidates = self._named.get(name.name)
        if not candidates:
            return []
        if search_paths is None:  # the session's search_path is unknown: any schema
            return list(candidates)
        found: list[Relation] = []
        temp = [r for r in candidates if r.schema.startswith("pg_temp")]
        found.extend(temp)
        for path in search_paths:
            for schema in path:
                schema = user if schema in ('"$user"', "$user") else schema.strip('"')
                rel = self.by_name.get((schema, name.name))
                if rel is not None:
                    if rel not in found:
                        found.append(rel)
                    break
        return found

    def __len__(self) -> int:
        return len(self.by_oid)


def catalog_from_rows(rows: Iterable[tuple]) -> Catalog:
    relations = []
    for oid, schema, name, kind, attnums, attnames, types, generated, definition in rows:
        columns = tuple(
            (int(n), str(a), int(t), bool(g)) for n, a, t, g in zip(attnums, attnames, types, generated, strict=False)
        )
        relations.append(Relation(int(oid), schema, name, kind, columns, definition))
    return Catalog(relations)


class CatalogCache:
    """Catalogs by target name, loaded on demand by ``loader`` (one load at a time per target)."""

    def __init__(self, loader: Callable[[str], Awaitable[list[tuple]]], ttl: float, clock=time.monotonic) -> None:
        self._loader = loader
        self.ttl = ttl
        self._clock = clock
        self._catalogs: dict[str, Catalog] = {}
        self._stale: set[str] = set()
        self._loading: dict[str, asyncio.Future] = {}

    def get(self, target: str) -> Catalog | None:
        """The target's catalog if it is fresh enough to decide with, else None (load it)."""
        catalog = self._catalogs.get(target)
        if catalog is None or target in self._stale or self._clock() - catalog.loaded_at > self.ttl:
            return None
        return catalog

    def current(self, target: str) -> Catalog | None:
        """The last catalog loaded, however old (for decoding a result already on its way)."""
        return self._catalogs.get(target)

    def stale(self, target: str) -> None:
        self._stale.add(target)

    def put(self, target: str, catalog: Catalog) -> None:
        self._catalogs[target] = catalog
        self._stale.discard(target)

    async def load(self, target: str) -> Catalog:
        """Load (or join the load already running for) ``target``'s catalog."""
        future = self._loading.get(target)
        if future is None:
            future = asyncio.ensure_future(self._load(target))
            self._loading[target] = future
            future.add_done_callback(lambda _f: self._loading.pop(target, None))
        return await asyncio.shield(future)

    async def _load(self, target: str) -> Catalog:
        rows = await self._loader(target)
        catalog = catalog_from_rows(rows)
        self.put(target, catalog)
        return catalog
