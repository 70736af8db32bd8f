"""What the analyser knows about a statement: plain frozen data, shared by every stage.

An :class:`Analysis` is the result for one statement text (a simple Query may
hold several SQL statements; each gets its own :class:`StatementFacts`). It is
cached and shared between sessions, so it holds nothing session-specific: names
are kept as written (``schema`` is None when the statement did not qualify
them), and resolving them against a session's ``search_path`` is the rule
matcher's job.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "Analysis",
    "Column",
    "Name",
    "StatementFacts",
    "CLASSIFICATIONS",
    "READ",
    "WRITE",
    "DDL",
    "DCL",
    "TRANSACTION",
    "SESSION",
    "UTILITY",
]

READ = "read"
WRITE = "write"
DDL = "ddl"
DCL = "dcl"
TRANSACTION = "transaction"
SESSION = "session"
UTILITY = "utility"
CLASSIFICATIONS = (READ, WRITE, DDL, DCL, TRANSACTION, SESSION, UTILITY)

# How strong an effect is, for "the classification of the whole statement is its
# strongest part" (a SELECT whose CTE deletes is a write).
RANK = {READ: 0, SESSION: 1, TRANSACTION: 1, UTILITY: 2, WRITE: 3, DDL: 4, DCL: 5}


@dataclass(frozen=True, slots=True, order=True)
class Name:
    """A schema-qualified object name as the statement wrote it (schema None: unqualified)."""

    schema: str | None
    name: str

    def __str__(self) -> str:
        return self.name if self.schema is None else f"{self.schema}.{self.name}"


@dataclass(frozen=True, slots=True, order=True)
class Column:
    """A column reference tied to the relation it reads (``name`` ``*``: every column).

    ``table`` is None when the column could not be tied to a relation (it came
    from a subquery or function in FROM, or the statement was ambiguous); the
    source columns of a subquery are recorded where the subquery reads them.
    """

    table: Name | None
    name: str

    def __str__(self) -> str:
        return self.name if self.table is None else f"{self.table}.{self.name}"


@dataclass(frozen=True, slots=True)
class StatementFacts:
    """One SQL statement, everything in it included (CTEs, subqueries, EXPLAIN'd queries)."""

    command: str  # e.g. SELECT, DELETE, DROP TABLE, EXPLAIN ANALYZE, BEGIN
    classification: str  # the strongest effect: read < session/transaction < utility < write < ddl < dcl
    tables: frozenset[Name] = frozenset()  # every relation read or written (views, sequences included)
    written: frozenset[Name] = frozenset()  # relations written or changed (DML targets, DDL objects)
    columns: frozenset[Column] = frozenset()
    functions: frozenset[Name] = frozenset()
    schemas: frozenset[str] = frozenset()  # schemas named explicitly (qualifiers, schema DDL)
    # For UPDATE/DELETE anywhere in the statement: False if any of them lacks a WHERE.
    has_where: bool | None = None
    flags: frozenset[str] = frozenset()
    settings: frozenset[str] = frozenset()  # run-time settings changed (SET, RESET, set_config); "?" unknown
    languages: frozenset[str] = frozenset()  # procedural languages used or created (DO, CREATE FUNCTION)
    prepare: str | None = None  # PREPARE name (the facts include the prepared statement's)
    execute: str | None = None  # EXECUTE name (resolved per session by the guardrails stage)
    deallocate: str | None = None  # DEALLOCATE name; "*" for DEALLOCATE ALL / DISCARD ALL
    search_path: tuple[str, ...] | None = None  # the value of SET search_path; () for RESET/DEFAULT
    # Every command the statement runs, nested ones included: a SELECT whose CTE
    # deletes has {"SELECT", "DELETE"}; rules on ``command`` look at all of them.
    commands: frozenset[str] = frozenset()
    inner_command: str | None = None  # PREPARE: the prepared statement's command

    def describe(self) -> dict[str, object]:
        """A JSON-friendly summary, for logs, audit records and ``policy check``."""
        out: dict[str, object] = {"command": self.command, "classification": self.classification}
        if self.tables:
            out["tables"] = sorted(str(t) for t in self.tables)
        if self.written:
            out["written"] = sorted(str(t) for t in self.written)
        if self.columns:
            out["columns"] = sorted(str(c) for c in self.columns)
        if self.functions:
            out["functions"] = sorted(str(f) for f in self.functions)
        if self.schemas:
            out["schemas"] = sorted(self.schemas)
        if self.has_where is not None:
            out["has_where"] = self.has_where
        if self.flags:
            out["flags"] = sorted(self.flags)
        if self.settings:
            out["settings"] = sorted(self.settings)
        if self.languages:
            out["languages"] = sorted(self.languages)
        if len(self.commands) > 1:
            out["commands"] = sorted(self.commands)
        for key in ("prepare", "execute", "deallocate"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        return out


@dataclass(frozen=True, slots=True, eq=False)
class Analysis:
    """The analysis of one statement text.

    ``error`` is set (and ``statements`` empty) when the text could not be
    analysed: ``error_sqlstate`` says why (42601 the parser rejected it, 54001
    too complex, 54000 too long). ``literal_dependent`` marks an analysis that
    read a constant's value (a ``SET`` value, ``set_config('role', …)``), so it
    may only be reused for the identical text, never for the same statement with
    other literals.
    """

    statements: tuple[StatementFacts, ...]
    literal_dependent: bool = False
    error: str | None = None
    error_sqlstate: str | None = None
    error_position: int | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def classification(self) -> str:
        if not self.statements:
            return UTILITY
        return max((s.classification for s in self.statements), key=RANK.__getitem__)
