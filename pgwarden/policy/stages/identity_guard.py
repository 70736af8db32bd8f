"""IdentityGuardStage: a token session can never change who it is or lift read-only.

For sessions that logged in with a token or API key (``session.extra["identity"]``):

* always refused: ``SET ROLE``, ``RESET ROLE``, ``SET SESSION AUTHORIZATION``
  (and their RESETs), and ``set_config()`` of ``role`` or
  ``session_authorization`` — or of a name pgwarden cannot see (a parameter or
  expression), since it could be either;
* for ``read`` access, also refused: ``SET``/``RESET`` of
  ``default_transaction_read_only`` or ``transaction_read_only``,
  ``SET TRANSACTION`` / ``SET SESSION CHARACTERISTICS`` / ``BEGIN`` /
  ``START TRANSACTION`` with ``READ WRITE``, ``set_config()`` of those
  settings, and ``DO`` / ``CALL`` (opaque code could do any of the above).

Statements are parsed with pglast (the PostgreSQL parser) and every node is
walked, so a ``set_config`` inside a CTE, a subquery, ``EXPLAIN ANALYZE``,
``COPY (…)`` or ``PREPARE`` is found too. A statement pglast cannot parse is
refused for these sessions (PostgreSQL would reject it as well). Results are
cached by statement text.

This is defense in depth on top of the database: the upstream session of a read
role starts with ``default_transaction_read_only = on``, and the target's upstream
login should be a member of no privileged role. The Guardrails milestone adds the
general statement analysis this stage will then share.
"""

from __future__ import annotations

from functools import lru_cache

from pglast import ast, parse_sql
from pglast.parser import ParseError

from ...session.statement import Kind, Statement
from ...session.verdict import Deny
from ...wire.constants import SQLState

__all__ = ["IdentityGuardStage"]

_ROLE_SETTINGS = frozenset({"role", "session_authorization"})
_READ_ONLY_SETTINGS = frozenset({"default_transaction_read_only", "transaction_read_only"})
_UNKNOWN = "?"  # a set_config() whose setting name is not a constant


def _walk(node: object):
    """Yield every pglast node below ``node`` (depth first)."""
    stack = [node]
    while stack:
        current = stack.pop()
        if isinstance(current, ast.Node):
            yield current
            for slot in current.__slots__:
                value = getattr(current, slot, None)
                if isinstance(value, (ast.Node, tuple, list)):
                    stack.append(value)
        elif isinstance(current, (tuple, list)):
            stack.extend(current)


def _read_write_option(options) -> bool:
    """True when transaction options ask for READ WRITE."""
    for opt in options or ():
        if isinstance(opt, ast.DefElem) and opt.defname == "transaction_read_only":
            arg = opt.arg
            value = getattr(getattr(arg, "val", None), "ival", None)
            if value in (0, None) or value is False:
                return True
    return False


@lru_cache(maxsize=4096)
def _facts(text: str) -> tuple[frozenset[str], bool, bool] | None:
    """(settings changed, asks for READ WRITE, runs opaque code) for ``text``; None if unparseable."""
    try:
        statements = parse_sql(text)
    except ParseError:
        return None
    settings: set[str] = set()
    read_write = False
    opaque = False
    for node in _walk(statements):
        if isinstance(node, ast.VariableSetStmt):
            name = (node.name or "").lower()
            if name in ("transaction", "session characteristics"):
                read_write |= _read_write_option(node.args)
            elif name:
                settings.add(name)
            else:  # RESET ALL: back to the session's defaults, which pgwarden set
                pass
        elif isinstance(node, ast.TransactionStmt):
            read_write |= _read_write_option(node.options)
        elif isinstance(node, (ast.DoStmt, ast.CallStmt)):
            opaque = True
        elif isinstance(node, ast.FuncCall):
            name = node.funcname[-1].sval.lower() if node.funcname else ""
            if name == "set_config":
                first = node.args[0] if node.args else None
                value = getattr(getattr(first, "val", None), "sval", None)
                settings.add(value.lower() if isinstance(value, str) else _UNKNOWN)
    return frozenset(settings), read_write, opaque


class IdentityGuardStage:
    name = "identity.guard"

    def check(self, statement: Statement) -> Deny | None:
        extra = statement.session.extra
        if "identity" not in extra or statement.text is None or statement.kind == Kind.FUNCTION_CALL:
            return None
        facts = _facts(statement.text)
        if facts is None:
            return Deny(
                "pgwarden: the statement could not be parsed",
                SQLState.SYNTAX_ERROR,
                rule="identity.unparseable",
            )
        settings, read_write, opaque = facts
        if settings & _ROLE_SETTINGS or _UNKNOWN in settings:
            return Deny(
                "pgwarden: this session cannot change its role or session authorization",
                SQLState.INSUFFICIENT_PRIVILEGE,
                rule="identity.role_fixed",
                hint="The role comes from your identity; connect with another token to act as someone else.",
            )
        if extra.get("access") == "read":
            if settings & _READ_ONLY_SETTINGS or read_write:
                return Deny(
                    "pgwarden: this session is read-only and cannot be made read-write",
                    SQLState.INSUFFICIENT_PRIVILEGE,
                    rule="identity.read_only",
                )
            if opaque:
                return Deny(
                    "pgwarden: DO and CALL are not allowed in a read-only session",
                    SQLState.INSUFFICIENT_PRIVILEGE,
                    rule="identity.read_only",
                )
        return None
