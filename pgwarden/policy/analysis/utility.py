"""Handlers for utility statements (EXPLAIN, COPY, SET, DROP, …), mixed into the Walker.

Split from ``walker.py`` to keep each file readable; the handlers use the
Walker's state and its ``visit``/``const`` methods.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .facts import DDL, READ, WRITE, Column, Name

if TYPE_CHECKING:
    from .walker import Scope as _Scope

_RELATION_OBJECTS = {"OBJECT_TABLE", "OBJECT_VIEW", "OBJECT_MATVIEW", "OBJECT_FOREIGN_TABLE", "OBJECT_INDEX",
                     "OBJECT_SEQUENCE"}
_ROUTINE_OBJECTS = {"OBJECT_FUNCTION", "OBJECT_PROCEDURE", "OBJECT_ROUTINE", "OBJECT_AGGREGATE"}


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


class UtilityMixin:
    """Statement handlers beyond queries and DML (``n_<NodeType>`` methods)."""


    def n_ExplainStmt(self, body: dict, scope: _Scope) -> None:
        options = _defelems(body.get("options"))
        analyze = "analyze" in options and self._truthy(options["analyze"])
        inner = type(self)()
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

    def merge(self, other: Any, *, effects: bool = True) -> None:
        self.tables |= other.tables
        self.written |= other.written if effects else set()
        self.columns |= other.columns
        self.functions |= other.functions
        self.schemas |= other.schemas
        self.flags |= other.flags if effects else {f for f in other.flags if f in ("object_literal",)}
        self.settings |= other.settings if effects else set()
        self.languages |= other.languages
        self.literal_dependent |= other.literal_dependent
        # EXPLAIN [ANALYZE] EXECUTE name, CREATE TABLE AS EXECUTE inside EXPLAIN: the
        # prepared statement is resolved and decided as for a plain EXECUTE.
        if other.execute is not None and self.execute is None:
            self.execute = other.execute
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
        from .statement import command_of  # the command tables live with walk_statement

        self.inner_command = command_of(next(iter(query)), next(iter(query.values())), self)[0] \
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
        # The body is not executed here, but whoever calls the function runs it:
        # a SQL-standard body (BEGIN ATOMIC) is walked, and a LANGUAGE sql body
        # given as a string is parsed, so the tables and functions it uses are
        # visible to the rules (a pg_read_file inside is refused like a direct one).
        self.visit(body.get("sql_body"), scope)
        language = next(iter(self.languages), "sql") if len(self.languages) == 1 else None
        source = _defelems(body.get("options")).get("as")
        if language == "sql" and source is not None:
            self._merge_sql_body(source)

    def _merge_sql_body(self, source: Any) -> None:
        from . import analyze_uncached  # the package imports this module

        parts = source.get("List", {}).get("items", ()) if isinstance(source, dict) and "List" in source else (source,)
        for part in parts[:1]:
            text = self.const(part)
            if not isinstance(text, str):
                continue
            inner = analyze_uncached(text)
            for facts in inner.statements:
                self.tables |= facts.tables
                self.functions |= facts.functions
                self.columns |= facts.columns
                self.flags |= facts.flags & {"copy_program", "copy_file", "sequence", "alter_system", "load"}

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

