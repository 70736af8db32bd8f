"""One top-level statement: its command, classification and facts.

``walk_statement`` names the command (as PostgreSQL's command tags do),
classifies it, runs the Walker over it and freezes the result into
:class:`StatementFacts`.
"""

from __future__ import annotations

import re

from .facts import DCL, DDL, RANK, READ, SESSION, TRANSACTION, UTILITY, WRITE, StatementFacts
from .walker import Scope, Walker

__all__ = ["walk_statement", "command_of"]

# Statement node type -> (command, classification) for the fixed cases.
_FIXED: dict[str, tuple[str, str]] = {
    "InsertStmt": ("INSERT", WRITE),
    "UpdateStmt": ("UPDATE", WRITE),
    "DeleteStmt": ("DELETE", WRITE),
    "MergeStmt": ("MERGE", WRITE),
    "TruncateStmt": ("TRUNCATE", WRITE),
    "CopyStmt": ("COPY", READ),
    "ExplainStmt": ("EXPLAIN", READ),
    "VariableShowStmt": ("SHOW", SESSION),
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

_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")


def _fallback_command(node_type: str) -> tuple[str, str]:
    """ALTER FOO / CREATE FOO for node types without an entry (``AlterCollationStmt``...)."""
    words = _CAMEL.sub(" ", node_type.removesuffix("Stmt")).upper()
    first = words.split(" ", 1)[0]
    if first in ("CREATE", "ALTER", "DROP", "DEFINE", "RENAME", "COMMENT", "REFRESH"):
        return words, DDL
    return words, UTILITY


_DDL_WRITES_RELATION = {"CreateStmt", "AlterTableStmt", "IndexStmt", "ViewStmt", "RenameStmt", "CreateTrigStmt",
                        "RuleStmt", "CreatePolicyStmt", "AlterPolicyStmt", "CreateSeqStmt", "AlterSeqStmt",
                        "CreateForeignTableStmt", "ClusterStmt", "ReindexStmt", "VacuumStmt", "RefreshMatViewStmt"}


def walk_statement(node: dict) -> tuple[StatementFacts, bool]:
    """The facts of one top-level statement (a ``stmt`` of parse_sql_json) and literal dependence."""
    node_type = next(iter(node)) if len(node) == 1 else ""
    body = node.get(node_type, {}) if node_type else {}
    walker = Walker()
    root = Scope(None, frozenset())  # fresh per statement: scopes collect relations
    command, classification = command_of(node_type, body, walker)
    if node_type in _DDL_WRITES_RELATION:
        # The relation a DDL/maintenance statement changes is written, not read.
        rel = body.get("relation") or body.get("view") or body.get("sequence")
        if isinstance(rel, dict) and "relname" in rel:
            walker._relation(rel, root, write=True)
        for rel in body.get("rels") or ():  # VACUUM / ANALYZE
            inner = (rel.get("VacuumRelation") or {}).get("relation")
            if inner:
                walker._relation(inner, root, write=True)
        walker.children({k: v for k, v in body.items() if k not in ("relation", "view", "sequence", "rels")}, root)
    else:
        walker.visit(node, root)
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
    if node_type == "AlterTableStmt" and any(
        (c.get("AlterTableCmd") or {}).get("subtype") == "AT_ChangeOwner" for c in body.get("cmds") or ()
    ):
        walker.flags.add("owner_change")
        classification = DCL
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


def command_of(node_type: str, body: dict, walker: Walker) -> tuple[str, str]:
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
