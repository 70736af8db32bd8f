#!/usr/bin/env python3
"""Generate ``pgwarden/policy/data/safe_functions.txt`` from a real PostgreSQL.

The ``read-only`` guardrail pack refuses every function call whose name is not
on the safe list (default deny), so the list has to be generous for ordinary
read queries and must not contain anything with a side effect. It is built
from ``pg_catalog.pg_proc`` of a real server:

1. Start from the built-in (oid < 16384) functions, aggregates and window
   functions in ``pg_catalog``.
2. Drop overloads nobody can call meaningfully from SQL (type I/O, planner
   support, selectivity estimators, handlers, trigger functions, ...). Such an
   overload does not decide anything about its name; other overloads of the
   same name still can.
3. A name is safe only when *every* remaining overload is immutable or stable,
   or the name is on the hand-vetted list of volatile-but-side-effect-free
   functions (``VETTED_VOLATILE``). One volatile overload poisons the name,
   because the guardrail matches names, not signatures (``ts_rewrite`` has an
   immutable overload and a volatile one that runs a query given as text).
4. Names matching ``DENY_PATTERNS`` are removed whatever their volatility:
   some dangerous functions are stable (``txid_current``, ``table_to_xml``,
   ``pg_config``), and a future release may relabel others.
5. Every name in ``dangerous_functions.txt`` is removed as well.

Usage::

    python tools/gen_safe_functions.py                 # starts a TestPostgres
    python tools/gen_safe_functions.py --dsn "host=... dbname=postgres"
    python tools/gen_safe_functions.py --out /tmp/safe.txt --explain

Regenerate after a PostgreSQL major upgrade of the server you test against,
and review the diff: new functions appear automatically only when they are
immutable/stable and match no deny rule.
"""

from __future__ import annotations

import argparse
import re
import sys
import textwrap
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from pgwarden.policy.functions import parse_dangerous  # noqa: E402

DATA_DIR = REPO_ROOT / "pgwarden" / "policy" / "data"
DEFAULT_OUT = DATA_DIR / "safe_functions.txt"
DANGEROUS_FILE = DATA_DIR / "dangerous_functions.txt"

#: Built-in objects have oids below FirstNormalObjectId; anything above was
#: created later (extensions such as adminpack install into pg_catalog too).
FIRST_NORMAL_OBJECT_ID = 16384

# --------------------------------------------------------------------------- rules

#: Volatile functions that read, but change no state. Included although
#: volatile. Names missing on the server (random_normal is PG 16+, uuidv4 and
#: uuidv7 are PG 18+) are simply not emitted.
VETTED_VOLATILE: dict[str, str] = {
    # Randomness: no state except the session's PRNG position (setseed, which
    # sets it, is excluded below).
    "random": "pseudo-random number",
    "random_normal": "pseudo-random number, normal distribution (PG 16+)",
    "gen_random_uuid": "random UUID",
    "uuidv4": "random UUID (PG 18+)",
    "uuidv7": "time-ordered UUID (PG 18+)",
    # Wall-clock reads (now/statement_timestamp are stable and need no vetting).
    "clock_timestamp": "current wall-clock time",
    "timeofday": "current wall-clock time as text",
    # Session information; volatile only because it changes inside a function.
    "current_query": "text of the current top-level query",
    # Object sizes: stat() of relation files, no writes. Common in read-only
    # dashboards; pg_database_size checks CONNECT privilege itself.
    "pg_relation_size": "disk space of one relation fork",
    "pg_table_size": "disk space of a table without indexes",
    "pg_indexes_size": "disk space of a table's indexes",
    "pg_total_relation_size": "disk space of a table with indexes and TOAST",
    "pg_database_size": "disk space of a database",
    "pg_tablespace_size": "disk space of a tablespace",
    # Partition catalog walks.
    "pg_partition_tree": "partitions of a partitioned table",
    "pg_partition_ancestors": "ancestors of a partition",
    # Replication/recovery status reads used by health checks and lag queries.
    "pg_is_in_recovery": "whether the server is a standby",
    "pg_current_wal_lsn": "current WAL write location",
    "pg_current_wal_insert_lsn": "current WAL insert location",
    "pg_current_wal_flush_lsn": "current WAL flush location",
    "pg_last_wal_receive_lsn": "last WAL location received by a standby",
    "pg_last_wal_replay_lsn": "last WAL location replayed by a standby",
    "pg_last_xact_replay_timestamp": "time of the last replayed transaction",
}

#: Return types that make a function uncallable from a query (handlers and
#: trigger functions) or a planner/executor-internal helper.
UNCALLABLE_RETURN_TYPES = frozenset({
    "trigger", "event_trigger", "internal", "language_handler", "fdw_handler",
    "index_am_handler", "tsm_handler", "table_am_handler",
})

#: Name patterns removed whatever the volatility, each with the reason.
DENY_PATTERNS: list[tuple[str, str]] = [
    # --- writes or changes state -------------------------------------------
    # Sequences: nextval/setval advance or set a sequence. currval/lastval only
    # read, but they read per-session sequence state, are volatile, and are
    # only meaningful after a nextval that this pack refuses; excluded to keep
    # the rule "no sequence functions" simple.
    (r"^(nextval|setval|currval|lastval)$", "sequence state"),
    (r"^setseed$", "changes the session's random seed"),
    (r"^set_config$", "changes a setting"),
    (r"^pg_(try_)?advisory_", "advisory locks (take or release)"),
    (r"^pg_notify$", "sends a notification"),
    # txid_current / pg_current_xact_id assign a transaction id (a write to
    # shared state); the *_if_assigned variants only read and stay allowed.
    (r"^(txid_current|pg_current_xact_id)$", "assigns a transaction id"),
    (r"^pg_sleep", "resource abuse: holds a connection and snapshot"),
    (r"^pg_export_snapshot$", "exports a snapshot"),
    (r"^lo_|^lo(read|write)$", "large objects (import/export/create/write)"),
    (r"^binary_upgrade_", "pg_upgrade internals"),
    (r"^pg_stop_making_pinned_objects$|^pg_nextoid$|^pg_extension_config_dump$",
     "initdb/extension internals"),
    (r"^brin_(de)?summarize|^gin_clean_pending_list$", "index maintenance writes"),
    (r"^pg_stat_(clear_snapshot|force_next_flush)$", "changes statistics state"),
    # --- backend / server control ------------------------------------------
    (r"^pg_(cancel|terminate)_backend$", "signals another backend"),
    (r"^pg_reload_conf$|^pg_rotate_logfile", "server control"),
    (r"^pg_switch_wal$|^pg_promote$|^pg_create_restore_point$", "server control"),
    (r"^pg_wal_replay_(pause|resume)$", "recovery control"),
    (r"^pg_(create|copy)_\w*_slot$|^pg_drop_replication_slot$", "replication slots"),
    (r"^pg_replication_", "replication origins/slots"),
    (r"^pg_logical_", "logical decoding (consumes slot changes, emits WAL)"),
    (r"^pg_(start|stop)_backup$|^pg_backup_", "base backup control"),
    (r"^pg_stat_reset", "resets statistics"),
    (r"^pg_log_backend_memory_contexts$", "makes a backend write to the log"),
    (r"^pg_import_", "imports catalog entries (e.g. system collations)"),
    # --- server files and configuration ------------------------------------
    (r"^pg_file_|^pg_read_file|^pg_read_binary_file|^pg_ls_|^pg_stat_file$|^pg_logdir_ls$",
     "server file access"),
    (r"^pg_current_logfile$", "reveals server log file location"),
    (r"^pg_hba_file_rules$|^pg_ident_file_mappings$|^pg_show_all_file_settings$",
     "reads server configuration files"),
    (r"^pg_config$", "reveals build configuration and paths"),
    # --- network access / exfiltration ---------------------------------------
    (r"^dblink", "opens connections to other servers"),
    (r"^postgres_fdw_", "foreign-server connections"),
    # --- executes SQL given as a string, or reads a table named by a string --
    (r"^(query|cursor|table|schema|database)_to_xml", "runs a query / reads tables by name"),
    (r"^ts_stat$", "runs a query given as text"),
    (r"^ts_rewrite$", "ts_rewrite(tsquery, text) runs a query given as text"),
]
_DENY = [(re.compile(p), why) for p, why in DENY_PATTERNS]

QUERY = """
SELECT p.oid::int AS oid,
       p.proname,
       p.prokind,
       p.provolatile,
       p.prorettype::regtype::text AS rettype,
       'internal'::regtype = ANY (p.proargtypes::oid[]) AS internal_arg,
       'cstring'::regtype = ANY (p.proargtypes::oid[])
         OR p.prorettype = 'cstring'::regtype AS cstring_io,
       EXISTS (SELECT 1 FROM pg_type t
               WHERE p.oid IN (t.typinput, t.typoutput, t.typreceive, t.typsend,
                               t.typmodin, t.typmodout, t.typanalyze, t.typsubscript))
         AS type_support,
       EXISTS (SELECT 1 FROM pg_proc q WHERE q.prosupport = p.oid) AS planner_support,
       EXISTS (SELECT 1 FROM pg_operator o WHERE p.oid IN (o.oprrest, o.oprjoin))
         AS selectivity,
       EXISTS (SELECT 1 FROM pg_language l
               WHERE p.oid IN (l.lanplcallfoid, l.laninline, l.lanvalidator)) AS lang_support
FROM pg_catalog.pg_proc p
JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname = 'pg_catalog'
  AND p.prokind IN ('f', 'a', 'w')
  AND p.oid < %(first_normal)s
ORDER BY p.proname, p.oid
"""


@dataclass
class Result:
    safe: list[str]
    #: name -> reason it was left out
    excluded: dict[str, str]
    version: str
    version_num: int


def uncallable_reason(row: dict) -> str | None:
    """Why an overload cannot be meaningfully called from a query, or None."""
    # Handlers and trigger functions: PostgreSQL refuses direct calls, and
    # `internal` results cannot be used by SQL.
    if row["rettype"] in UNCALLABLE_RETURN_TYPES:
        return f"returns {row['rettype']}"
    # An `internal` argument cannot be supplied from SQL: planner support
    # (*_support), selectivity estimators (eqsel...), index AM support,
    # aggregate internals, encoding conversions, text search parser hooks.
    if row["internal_arg"]:
        return "takes internal"
    # Type input/output/receive/send/typmod/analyze/subscript functions.
    if row["type_support"] or row["cstring_io"]:
        return "type I/O or support function"
    # Binary send functions that no type in a fresh cluster references
    # (enum_send serves user-defined enum types).
    if row["rettype"] == "bytea" and row["proname"].endswith("send"):
        return "binary send function"
    # Explicitly, though all of these also take `internal` today.
    if row["planner_support"]:
        return "planner support function"
    if row["selectivity"]:
        return "selectivity estimator"
    # Procedural-language call handlers, inline handlers, validators
    # (fmgr_sql_validator and friends: stable, return void, useless in a query).
    if row["lang_support"]:
        return "language handler/validator"
    # Foreign-data-wrapper option validators (postgresql_fdw_validator).
    if row["proname"].endswith("_validator"):
        return "validator function"
    return None


def deny_reason(name: str) -> str | None:
    for pattern, why in _DENY:
        if pattern.search(name):
            return why
    return None


def classify(rows: list[dict], dangerous: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """Apply the rules to pg_proc rows; return (safe names, excluded name -> reason)."""
    overloads: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        overloads[row["proname"].lower()].append(row)

    safe: list[str] = []
    excluded: dict[str, str] = {}
    for name in sorted(overloads):
        if name in dangerous:
            excluded[name] = f"dangerous_functions.txt ({dangerous[name]})"
            continue
        why = deny_reason(name)
        if why:
            excluded[name] = f"deny rule: {why}"
            continue
        callable_ = [r for r in overloads[name] if uncallable_reason(r) is None]
        if not callable_:
            excluded[name] = "not callable: " + uncallable_reason(overloads[name][0])
            continue
        # A function that returns void is called only for its side effect.
        if any(r["rettype"] == "void" for r in callable_):
            excluded[name] = "returns void (side effect only)"
            continue
        volatile = [r for r in callable_ if r["provolatile"] == "v"]
        if volatile and name not in VETTED_VOLATILE:
            excluded[name] = "volatile" + (
                " overload" if len(volatile) < len(callable_) else ""
            )
            continue
        safe.append(name)
    return safe, excluded


def fetch(conn) -> tuple[list[dict], str, int]:
    from psycopg.rows import dict_row

    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(QUERY, {"first_normal": FIRST_NORMAL_OBJECT_ID})
        rows = cur.fetchall()
        cur.execute("SELECT current_setting('server_version') AS version, "
                    "current_setting('server_version_num')::int AS version_num")
        info = cur.fetchone()
    return rows, info["version"], info["version_num"]


def generate(dsn: str, dangerous: dict[str, str]) -> Result:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        rows, version, version_num = fetch(conn)
    safe, excluded = classify(rows, dangerous)
    return Result(safe=safe, excluded=excluded, version=version, version_num=version_num)


def render(result: Result) -> str:
    vetted = sorted(n for n in VETTED_VOLATILE if n in set(result.safe))
    vetted_lines = textwrap.fill(", ".join(vetted) + ";", width=78,
                                 initial_indent="# ", subsequent_indent="# ")
    header = f"""\
# Side-effect-free PostgreSQL built-in functions for the read-only guardrail pack.
# GENERATED by tools/gen_safe_functions.py -- do not edit by hand; regenerate:
#     python tools/gen_safe_functions.py [--dsn DSN] [--out PATH]
# Source: pg_catalog.pg_proc of PostgreSQL {result.version}
# server_version_num: {result.version_num}
# Rule: built-in functions/aggregates/window functions in pg_catalog whose every
# callable overload is immutable or stable, plus these hand-vetted volatile reads:
{vetted_lines}
# minus uncallable overloads (type I/O, support functions, handlers, trigger
# functions, internal arguments), void-returning functions, the deny patterns in
# the generator (sequences, set_config, advisory locks, notify, xid assignment,
# sleep, large objects, server control, replication, file access, dblink, SQL
# executed from strings) and every name in dangerous_functions.txt.
# One lowercase name per line (schema pg_catalog implied); {len(result.safe)} names.
"""
    return header + "".join(f"{name}\n" for name in result.safe)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", help="libpq connection string (default: start a TestPostgres)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"default: {DEFAULT_OUT}")
    parser.add_argument("--explain", action="store_true",
                        help="print every excluded name with the reason to stderr")
    args = parser.parse_args(argv)

    dangerous = parse_dangerous(DANGEROUS_FILE.read_text(encoding="utf-8"))

    if args.dsn:
        result = generate(args.dsn, dangerous)
    else:
        from pgwarden.testing.postgres import TestPostgres

        with TestPostgres() as pg:
            result = generate(pg.dsn(), dangerous)

    if args.explain:
        for name, why in sorted(result.excluded.items()):
            print(f"{name}: {why}", file=sys.stderr)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(result), encoding="utf-8")
    print(f"wrote {len(result.safe)} names ({len(result.excluded)} excluded) from "
          f"PostgreSQL {result.version} to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
