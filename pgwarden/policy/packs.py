"""The built-in guardrail packs: ``dangerous`` and ``read-only``.

Each pack rule is a named check over one statement's facts that returns the
reason it refuses the statement, or None. Pack rules run before the config's
own rules (they are a floor a policy author cannot undercut by an ``allow``
rule placed too early); a role switches a pack off with ``guardrails.packs``
or one of its rules with ``guardrails.exempt``.

Function names are matched without their schema here, on purpose: a call to
``pg_read_file`` is refused whether it is written qualified or not, and a user
function that shadows a dangerous built-in's name is refused too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from .analysis.facts import READ, SESSION, TRANSACTION, StatementFacts
from .functions import dangerous_functions, safe_functions

if TYPE_CHECKING:
    from .rules import SessionContext

__all__ = ["PACK_CHECKS", "PackCheck", "UNTRUSTED_LANGUAGES"]

PackCheck = Callable[[StatementFacts, "SessionContext"], str | None]

UNTRUSTED_LANGUAGES = frozenset({"plpython3u", "plpythonu", "plpython2u", "plperlu", "pltclu", "plsh", "c", "internal",
                                  "plv8u", "pljavau", "plr"})
_DROPS = frozenset({"DROP TABLE", "DROP SCHEMA", "DROP DATABASE", "DROP FOREIGN TABLE", "DROP MATERIALIZED VIEW",
                    "DROP OWNED"})
_ROLE_COMMANDS = frozenset({"CREATE ROLE", "ALTER ROLE", "DROP ROLE", "GRANT", "ALTER DEFAULT PRIVILEGES",
                            "REASSIGN OWNED", "ALTER OWNER"})
_FOREIGN_DATA = frozenset({"CREATE FOREIGN DATA WRAPPER", "CREATE SERVER", "CREATE USER MAPPING",
                           "IMPORT FOREIGN SCHEMA", "CREATE FOREIGN TABLE", "ALTER SERVER", "ALTER USER MAPPING",
                           "ALTER FOREIGN DATA WRAPPER", "CREATE SUBSCRIPTION", "CREATE PUBLICATION"})
_SECURITY_SETTINGS = frozenset({"role", "session_authorization", "transaction_read_only",
                                "default_transaction_read_only", "session_replication_role", "?", "all"})
_READ_CLASSES = frozenset({READ, SESSION, TRANSACTION})
# System views that read server files (pg_hba.conf, postgresql.conf...).
_FILE_VIEWS = frozenset({"pg_hba_file_rules", "pg_ident_file_mappings", "pg_file_settings", "pg_config"})


def _function_group(facts: StatementFacts, group: str) -> list[str]:
    table = dangerous_functions()
    return sorted({f.name.lower() for f in facts.functions if table.get(f.name.lower()) == group})


# --------------------------------------------------------------- dangerous


def _drop(f: StatementFacts, ctx: SessionContext) -> str | None:
    return f"{f.command} is not allowed" if f.command in _DROPS else None


def _truncate(f: StatementFacts, ctx: SessionContext) -> str | None:
    return "TRUNCATE is not allowed" if f.command == "TRUNCATE" else None


def _no_where(f: StatementFacts, ctx: SessionContext) -> str | None:
    if f.has_where is False:
        return "UPDATE and DELETE need a WHERE clause that filters rows"
    return None


def _alter_system(f: StatementFacts, ctx: SessionContext) -> str | None:
    return "ALTER SYSTEM is not allowed" if "alter_system" in f.flags else None


def _copy_program(f: StatementFacts, ctx: SessionContext) -> str | None:
    return "COPY ... PROGRAM runs a shell command on the database server" if "copy_program" in f.flags else None


def _server_files(f: StatementFacts, ctx: SessionContext) -> str | None:
    if "copy_file" in f.flags:
        return "COPY to or from a file on the database server is not allowed (use STDIN/STDOUT)"
    names = _function_group(f, "file_access")
    names += sorted(
        str(t) for t in f.tables if t.name in _FILE_VIEWS and (t.schema is None or t.schema == "pg_catalog")
    )
    return f"server file access ({', '.join(names)}) is not allowed" if names else None


def _exfiltration(f: StatementFacts, ctx: SessionContext) -> str | None:
    names = _function_group(f, "exfiltration")
    if names:
        return f"connections to other servers ({', '.join(names)}) are not allowed"
    if f.command in _FOREIGN_DATA:
        return f"{f.command} (foreign data access) is not allowed"
    return None


def _hidden_sql(f: StatementFacts, ctx: SessionContext) -> str | None:
    names = _function_group(f, "sql_from_string")
    return f"{', '.join(names)} runs SQL that pgwarden cannot inspect" if names else None


def _roles(f: StatementFacts, ctx: SessionContext) -> str | None:
    if f.command in _ROLE_COMMANDS:
        return f"role and privilege changes ({f.command}) are not allowed"
    if "owner_change" in f.flags:
        return "changing an object's owner is not allowed"
    return None


def _load(f: StatementFacts, ctx: SessionContext) -> str | None:
    return "LOAD is not allowed" if "load" in f.flags else None


def _extension(f: StatementFacts, ctx: SessionContext) -> str | None:
    return f"{f.command} is not allowed" if f.command in ("CREATE EXTENSION", "ALTER EXTENSION") else None


def _untrusted_language(f: StatementFacts, ctx: SessionContext) -> str | None:
    bad = sorted(f.languages & UNTRUSTED_LANGUAGES)
    if bad:
        return f"untrusted language {', '.join(bad)} is not allowed"
    if f.command == "CREATE LANGUAGE":
        return "CREATE LANGUAGE is not allowed"
    return None


def _anonymous_code(f: StatementFacts, ctx: SessionContext) -> str | None:
    if f.command == "DO":
        return "DO blocks run code pgwarden cannot inspect (EXECUTE of any string)"
    return None


def _backend_control(f: StatementFacts, ctx: SessionContext) -> str | None:
    names = _function_group(f, "backend_control")
    return f"server and backend control ({', '.join(names)}) is not allowed" if names else None


# --------------------------------------------------------------- read-only


def _read_write(f: StatementFacts, ctx: SessionContext) -> str | None:
    return "this session is read-only and cannot be made read-write" if "read_write" in f.flags else None


def _write(f: StatementFacts, ctx: SessionContext) -> str | None:
    if "two_phase" in f.flags:
        return f"{f.command} (two-phase commit) is not allowed; this session may only read"
    if f.classification in _READ_CLASSES or "row_lock" in f.flags or "opaque_code" in f.flags:
        return None
    if "sequence" in f.flags and f.classification == "write" and f.command == "SELECT":
        return None  # the sequences rule says it better
    return f"{f.command} is not a read ({f.classification}); this session may only read"


def _row_lock(f: StatementFacts, ctx: SessionContext) -> str | None:
    return "row-locking clauses (FOR UPDATE/SHARE) take write locks" if "row_lock" in f.flags else None


def _sequences(f: StatementFacts, ctx: SessionContext) -> str | None:
    names = sorted({x.name.lower() for x in f.functions if x.name.lower() in ("nextval", "setval", "currval", "lastval")})
    return f"sequence functions ({', '.join(names)}) are not allowed" if names else None


def _settings(f: StatementFacts, ctx: SessionContext) -> str | None:
    # set_config() of a named, harmless setting is a SET (asyncpg turns jit off that way to
    # introspect types); a computed name is refused (also by guardrails.parser_settings).
    if "?" in f.settings:
        return "set_config() with a computed setting name is not allowed"
    bad = sorted(f.settings & _SECURITY_SETTINGS - {"all"})
    return f"changing {', '.join(bad)} is not allowed" if bad else None


def _listen_notify(f: StatementFacts, ctx: SessionContext) -> str | None:
    if "listen" in f.flags or "notify" in f.flags or any(x.name.lower() == "pg_notify" for x in f.functions):
        return "LISTEN/NOTIFY is not allowed"
    return None


def _lock(f: StatementFacts, ctx: SessionContext) -> str | None:
    return "LOCK TABLE is not allowed" if "lock" in f.flags else None


def _temp_objects(f: StatementFacts, ctx: SessionContext) -> str | None:
    if "temp_object" in f.flags and f.command != "DISCARD":
        return "temporary tables are not allowed"
    return None


def _opaque_code(f: StatementFacts, ctx: SessionContext) -> str | None:
    return f"{f.command} runs code pgwarden cannot inspect" if "opaque_code" in f.flags else None


_OPERATOR_CHARS = frozenset("+-*/<>=~!@#%^&|`?")


def _is_operator(name: str) -> bool:
    return bool(name) and all(c in _OPERATOR_CHARS for c in name)


def _functions(f: StatementFacts, ctx: SessionContext) -> str | None:
    safe = safe_functions()
    unknown = []
    for fn in f.functions:
        # Names arrive folded by the parser: an unquoted NOW is "now", a quoted
        # "NOW" is another function, so the comparison is exact.
        name = fn.name
        if fn.schema is None:
            if name in safe and ctx.builtins_first:
                continue
        elif fn.schema == "pg_catalog" and (name in safe or _is_operator(name)):
            # OPERATOR(pg_catalog.~), as psql's \d writes it: built-in operators are
            # backed by built-in functions without side effects.
            continue
        if name == "set_config" and fn.schema in (None, "pg_catalog") and "?" not in f.settings:
            # A named setting: what it changes is the settings rule's to judge.
            continue
        unknown.append(str(fn))
    if unknown:
        return f"function(s) {', '.join(sorted(unknown))} are not on the list of side-effect-free functions"
    return None


PACK_CHECKS: dict[str, tuple[tuple[str, PackCheck], ...]] = {
    "dangerous": (
        ("dangerous.drop", _drop),
        ("dangerous.truncate", _truncate),
        ("dangerous.no_where", _no_where),
        ("dangerous.alter_system", _alter_system),
        ("dangerous.copy_program", _copy_program),
        ("dangerous.server_files", _server_files),
        ("dangerous.exfiltration", _exfiltration),
        ("dangerous.hidden_sql", _hidden_sql),
        ("dangerous.roles", _roles),
        ("dangerous.load", _load),
        ("dangerous.extension", _extension),
        ("dangerous.untrusted_language", _untrusted_language),
        ("dangerous.backend_control", _backend_control),
        ("dangerous.anonymous_code", _anonymous_code),
    ),
    "read-only": (
        ("read-only.read_write", _read_write),
        ("read-only.opaque_code", _opaque_code),
        ("read-only.row_lock", _row_lock),
        ("read-only.sequences", _sequences),
        ("read-only.settings", _settings),
        ("read-only.listen_notify", _listen_notify),
        ("read-only.lock", _lock),
        ("read-only.temp_objects", _temp_objects),
        ("read-only.write", _write),
        ("read-only.functions", _functions),
    ),
}
