"""Real PostgreSQL clients running their normal workloads through the gateway.

Each client (psql, psycopg 3, asyncpg, pgbench, node-postgres) talks to the
shared ``gateway`` fixture (target ``app`` -> database ``appdb``) exactly as it
would talk to PostgreSQL, and the tests assert what a user of that client would
check: results and their types, row counts and command tags, errors with their
SQLSTATE, the transaction status, notices, notifications and cancellation.

Every test creates its own uniquely named (or temporary) tables. Nothing here
may contain the deny/hold markers of the test stages; an autouse fixture checks
that no statement of these tests was denied or held.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from ipaddress import IPv4Address
from pathlib import Path
from urllib.parse import unquote, urlsplit

import psycopg
import pytest
from psycopg import errors
from psycopg.pq import Format, TransactionStatus
from psycopg.types.json import Json, Jsonb

try:
    import asyncpg
    import asyncpg.exceptions
except ImportError:  # pragma: no cover - asyncpg is a test dependency
    asyncpg = None

NODE_DIR = Path(__file__).parent / "node"
SUBPROCESS_TIMEOUT = 120

needs_asyncpg = pytest.mark.skipif(asyncpg is None, reason="asyncpg is not installed (pip install -e .[test])")


# ---------------------------------------------------------------- helpers


def _name(prefix: str) -> str:
    """A table/channel/cursor name no other test (or run) uses."""
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def _credentials(gw_url: str) -> dict[str, str]:
    parts = urlsplit(gw_url)
    return {
        "host": parts.hostname or "127.0.0.1",
        "port": str(parts.port),
        "user": unquote(parts.username or ""),
        "password": unquote(parts.password or ""),
        "dbname": parts.path.lstrip("/"),
    }


def _client_env(password: str, **extra: str) -> dict[str, str]:
    """The environment for libpq programs: no stray PG* settings, password via PGPASSWORD."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(PGPASSWORD=password, PGCONNECT_TIMEOUT="10", PGCLIENTENCODING="UTF8", **extra)
    return env


def _program(name: str, pg) -> str:
    found = shutil.which(name)
    if found:
        return found
    candidate = Path(pg.bindir) / name
    if os.access(candidate, os.X_OK):
        return str(candidate)
    pytest.fail(f"{name} is neither on PATH nor in {pg.bindir}; .ci/run installs it (apt package postgresql)")


def _wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    pytest.fail(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture(autouse=True)
def _no_policy_markers(stages) -> Iterator[None]:
    """These are client tests: none of their statements may trip the deny/hold test stages."""

    def denied() -> list[str]:
        return [s.text or "" for s in list(stages["record"].completed_statements) if s.status == "denied"]

    denied_before = len(denied())
    held_before = stages["hold"].count
    yield
    assert denied()[denied_before:] == [], "a client test statement was denied by a test stage"
    assert stages["hold"].count == held_before, "a client test statement was held by a test stage"


# ==================================================================== psql


class Psql:
    def __init__(self, pg, gw_url: str) -> None:
        self.program = _program("psql", pg)
        self.creds = _credentials(gw_url)

    def conninfo(self, sslmode: str = "prefer", **extra: str) -> str:
        c = self.creds
        params = {"host": c["host"], "port": c["port"], "user": c["user"], "dbname": c["dbname"], "sslmode": sslmode}
        params.update(extra)
        return " ".join(f"{k}={v}" for k, v in params.items())

    def run(
        self, *args: str, stdin: str | None = None, sslmode: str = "prefer", cwd: Path | None = None, **conn: str
    ) -> subprocess.CompletedProcess:
        return subprocess.run(
            [self.program, "-X", "-d", self.conninfo(sslmode, **conn), *args],
            input=stdin,
            capture_output=True,
            text=True,
            encoding="utf-8",
            timeout=SUBPROCESS_TIMEOUT,
            env=_client_env(self.creds["password"]),
            cwd=cwd,
        )


@pytest.fixture()
def psql(pg, gw_url) -> Psql:
    return Psql(pg, gw_url)


def test_psql_multi_statement_simple_query(psql):
    # psql sends the -c string as one simple Query; PG 15 psql shows every result.
    r = psql.run("-At", "-c", "select 1; select 2")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["1", "2"]

    r = psql.run("-At", "-c", "select 'a' as x, 1 as y; select 'b'; select 'c' union all select 'd'")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["a|1", "b", "c", "d"]

    # One Query is one implicit transaction: an error in the middle undoes what came before.
    table = _name("psql_multi")
    r = psql.run(
        "-At",
        "-c",
        f"create table {table} (a int); insert into {table} values (1); select 1/0; insert into {table} values (2)",
    )
    assert r.returncode == 1
    assert "ERROR:  division by zero" in r.stderr
    r = psql.run("-At", "-c", f"select to_regclass('{table}') is null")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "t"


def test_psql_copy_in_and_out_csv(psql, tmp_path):
    table = _name("psql_copy")
    rows = [[str(i), f"name {i}", f"{i * 1.25:.2f}"] for i in range(1, 501)]
    rows[6][1] = 'comma, "quote" and ünïcode'
    rows[7][1] = "two\nlines"
    rows[8][1] = ""  # unquoted empty field: NULL in CSV
    with open(tmp_path / "in.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "name", "amount"])
        writer.writerows(rows)

    script = f"""
create table {table} (id int primary key, name text, amount numeric(10, 2));
\\copy {table} from 'in.csv' with (format csv, header true)
select count(*), count(name), sum(amount) from {table};
\\copy (select id, name, amount from {table} order by id) to 'out.csv' with (format csv, header true)
\\copy {table} to stdout with (format csv)
drop table {table};
"""
    r = psql.run("-At", "-v", "ON_ERROR_STOP=1", "-f", "-", stdin=script, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert "COPY 500" in lines  # \copy in reports its row count
    total = sum(Decimal(row[2]) for row in rows)
    assert f"500|499|{total}" in lines
    # \copy ... to stdout wrote the data lines into psql's output
    assert "1,name 1,1.25" in lines
    assert "500,name 500,625.00" in lines

    with open(tmp_path / "out.csv", newline="", encoding="utf-8") as f:
        out = list(csv.reader(f))
    assert out[0] == ["id", "name", "amount"]
    assert out[1:] == rows


def test_psql_error_aborts_transaction(psql):
    script = """
BEGIN;
SELECT 1/0;
\\echo after-error :SQLSTATE
SELECT 1;
\\echo after-select :SQLSTATE
ROLLBACK;
SELECT 'after rollback' AS status;
\\echo final :SQLSTATE
"""
    r = psql.run("-At", "-f", "-", stdin=script)
    assert r.returncode == 0, r.stderr  # no ON_ERROR_STOP: errors are reported, the script goes on
    assert "ERROR:  division by zero" in r.stderr
    assert "ERROR:  current transaction is aborted, commands ignored until end of transaction block" in r.stderr
    out = r.stdout.splitlines()
    assert "after-error 22012" in out
    assert "after-select 25P02" in out
    assert "after rollback" in out
    assert "final 00000" in out

    # ON_ERROR_STOP: psql stops at the error with exit status 3.
    r = psql.run("-At", "-v", "ON_ERROR_STOP=1", "-f", "-", stdin="BEGIN;\nSELECT 1/0;\nSELECT 'not reached';\n")
    assert r.returncode == 3
    assert "not reached" not in r.stdout


def test_psql_describe_metadata(psql):
    parent = _name("psql_meta_parent")
    table = _name("psql_meta")
    setup = f"""
create table {parent} (id int primary key);
create table {table} (
    id bigint generated always as identity primary key,
    parent_id int not null references {parent} (id),
    label text default 'none',
    created timestamptz not null default now()
);
create index {table}_label_idx on {table} (label);
comment on table {table} is 'described by psql';
"""
    r = psql.run("-q", "-v", "ON_ERROR_STOP=1", "-f", "-", stdin=setup)
    assert r.returncode == 0, r.stderr
    try:
        r = psql.run("-c", f"\\d {table}")
        assert r.returncode == 0, r.stderr
        out = r.stdout
        assert f'Table "public.{table}"' in out
        for column in ("id", "parent_id", "label", "created"):
            assert f" {column} " in out
        assert "generated always as identity" in out
        assert "timestamp with time zone" in out
        assert f'"{table}_pkey" PRIMARY KEY, btree (id)' in out
        assert f'"{table}_label_idx" btree (label)' in out
        assert "Foreign-key constraints:" in out
        assert f"REFERENCES {parent}(id)" in out

        r = psql.run("-c", f"\\dt+ {table}")
        assert r.returncode == 0, r.stderr
        assert table in r.stdout and "described by psql" in r.stdout

        r = psql.run("-c", f"\\di {table}*")
        assert r.returncode == 0, r.stderr
        assert f"{table}_label_idx" in r.stdout and f"{table}_pkey" in r.stdout

        r = psql.run("-c", "\\l")
        assert r.returncode == 0, r.stderr
        assert "appdb" in r.stdout

        r = psql.run("-c", "\\dn")
        assert r.returncode == 0, r.stderr
        assert "public" in r.stdout

        r = psql.run("-c", "\\df pg_catalog.lower")
        assert r.returncode == 0, r.stderr
        assert "lower" in r.stdout

        # \gdesc: describe a query's result (an unnamed prepared statement) without running it.
        r = psql.run("-At", "-f", "-", stdin=f"SELECT id, label, 1.5::numeric AS n FROM {table} \\gdesc\n")
        assert r.returncode == 0, r.stderr
        assert r.stdout.splitlines() == ["id|bigint", "label|text", "n|numeric"]
    finally:
        psql.run("-c", f"drop table if exists {table}, {parent}")


def test_psql_sslmode(psql, tls_files):
    r = psql.run("-At", "-c", "\\conninfo", "-c", "select 'tls ok'", sslmode="require")
    assert r.returncode == 0, r.stderr
    assert "SSL connection (protocol: TLSv1." in r.stdout
    assert 'as user "alice"' in r.stdout
    assert "tls ok" in r.stdout

    r = psql.run("-At", "-c", "\\conninfo", "-c", "select 'plain ok'", sslmode="disable")
    assert r.returncode == 0, r.stderr
    assert "SSL connection" not in r.stdout
    assert "plain ok" in r.stdout

    # A client that verifies the gateway's certificate against the CA.
    r = psql.run(
        "-At",
        "-c",
        "\\conninfo",
        "-c",
        "select 'verified ok'",
        sslmode="verify-full",
        host="localhost",
        hostaddr="127.0.0.1",
        sslrootcert=str(tls_files["ca_cert"]),
    )
    assert r.returncode == 0, r.stderr
    assert "SSL connection" in r.stdout and "verified ok" in r.stdout


# ================================================================= psycopg


TYPE_COLUMNS = {
    "i4": "int4",
    "i8": "int8",
    "num": "numeric",
    "txt": "text",
    "raw": "bytea",
    "ts": "timestamptz",
    "d": "date",
    "js": "json",
    "jsb": "jsonb",
    "ai": "int4[]",
    "at": "text[]",
    "u": "uuid",
    "f8": "float8",
    "bo": "bool",
    "iv": "interval",
}

TYPE_VALUES = {
    "i4": -2147483648,
    "i8": 9223372036854775807,
    "num": Decimal("-12345678901234567890.000123456789"),
    "txt": "héllo, wörld ✓ 'single' \"double\" \\ back\nnew line\ttab",
    "raw": bytes(range(256)),
    "ts": datetime(2024, 2, 29, 23, 59, 58, 123456, tzinfo=timezone.utc),
    "d": date(1999, 12, 31),
    "js": {"a": [1, 2, {"b": None}], "c": "ü", "d": 1.5},
    "jsb": {"nested": {"list": [True, False]}, "n": 10},
    "ai": [1, None, 3],
    "at": ["a", "b,c", None, 'd"e', ""],
    "u": uuid.UUID("12345678-1234-5678-1234-567812345678"),
    "f8": -0.125,
    "bo": True,
    "iv": timedelta(days=3, seconds=7, microseconds=5),
}


def test_psycopg_text_and_binary_results_many_types(gw_dsn):
    table = _name("pg3_types")
    cols = list(TYPE_COLUMNS)
    with psycopg.connect(gw_dsn, autocommit=True) as conn:
        assert conn.pgconn.ssl_in_use  # libpq's default sslmode=prefer took the gateway's TLS
        conn.execute(
            f"CREATE TEMP TABLE {table} (id int PRIMARY KEY, "
            + ", ".join(f"{c} {t}" for c, t in TYPE_COLUMNS.items())
            + ")"
        )
        params = [Json(v) if c == "js" else Jsonb(v) if c == "jsb" else v for c, v in TYPE_VALUES.items()]
        placeholders = ", ".join(["%s"] * (len(cols) + 1))
        cur = conn.execute(f"INSERT INTO {table} (id, {', '.join(cols)}) VALUES ({placeholders})", [1, *params])
        assert cur.rowcount == 1 and cur.statusmessage == "INSERT 0 1"
        conn.execute(f"INSERT INTO {table} (id) VALUES (%s)", [2])  # all NULLs

        expected = [(1, *TYPE_VALUES.values()), (2, *([None] * len(cols)))]
        query = f"SELECT id, {', '.join(cols)} FROM {table} ORDER BY id"

        text_cur = conn.cursor()
        text_cur.execute(query)
        assert text_cur.pgresult.fformat(0) == Format.TEXT
        assert text_cur.fetchall() == expected
        assert [d.name for d in text_cur.description] == ["id", *cols]

        with conn.cursor(binary=True) as bin_cur:
            bin_cur.execute(query)
            assert all(bin_cur.pgresult.fformat(i) == Format.BINARY for i in range(len(cols) + 1))
            assert bin_cur.fetchall() == expected

        # Parameters: server-side binding, text and binary (%b) formats.
        row = conn.execute(
            "SELECT %s::int + %s::int, %s::text, %s::text IS NULL, %b::bytea = %s::bytea",
            (40, 2, "x'y", None, TYPE_VALUES["raw"], TYPE_VALUES["raw"]),
        ).fetchone()
        assert row == (42, "x'y", True, True)
        row = conn.execute(
            "SELECT count(*) FROM generate_series(1, 10) g WHERE g = ANY(%s)", ([2, 4, 99],)
        ).fetchone()
        assert row == (2,)

        # Without parameters psycopg sends a simple Query: several results, one by one.
        cur = conn.cursor()
        cur.execute("SELECT 1 AS a; SELECT 'two' AS b, 2.5::float8 AS c")
        assert cur.fetchall() == [(1,)]
        assert cur.nextset()
        assert cur.fetchall() == [("two", 2.5)]
        assert cur.nextset() is None


def test_psycopg_executemany(gw_dsn):
    table = _name("pg3_many")
    with psycopg.connect(gw_dsn) as conn:
        conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, name text NOT NULL, qty int NOT NULL)")
        with conn.cursor() as cur:
            cur.executemany(f"INSERT INTO {table} VALUES (%s, %s, %s)", [(i, f"n{i}", i * 2) for i in range(2000)])
            assert cur.rowcount == 2000
            cur.executemany(f"UPDATE {table} SET qty = qty + %s WHERE id = %s", [(1, i) for i in range(0, 2000, 2)])
            assert cur.rowcount == 1000
            cur.executemany(
                f"INSERT INTO {table} VALUES (%s, %s, %s) RETURNING id * 10",
                [(i, f"r{i}", 0) for i in range(5000, 5005)],
                returning=True,
            )
            returned = []
            while True:
                returned.extend(cur.fetchall())
                if not cur.nextset():
                    break
            assert returned == [(i * 10,) for i in range(5000, 5005)]
        conn.commit()

        # A failing row aborts the whole executemany and the transaction.
        with pytest.raises(errors.UniqueViolation) as excinfo:
            conn.cursor().executemany(
                f"INSERT INTO {table} VALUES (%s, %s, %s)", [(6000, "ok", 0), (10, "dup", 0), (6001, "ok", 0)]
            )
        assert excinfo.value.sqlstate == "23505"
        assert conn.info.transaction_status == TransactionStatus.INERROR
        conn.rollback()

        row = conn.execute(f"SELECT count(*), sum(qty) FROM {table}").fetchone()
        assert row == (2005, sum(i * 2 for i in range(2000)) + 1000)
        conn.execute(f"DROP TABLE {table}")
        conn.commit()


def test_psycopg_pipeline_mode(gw_dsn):
    table = _name("pg3_pipe")
    with psycopg.connect(gw_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE TEMP TABLE {table} (id int PRIMARY KEY, note text)")
        with conn.pipeline() as pipeline:
            inserted = conn.execute(f"INSERT INTO {table} VALUES (1, 'one'), (2, 'two') RETURNING id")
            for i in range(3, 11):
                conn.execute(f"INSERT INTO {table} VALUES (%s, %s)", (i, f"n{i}"))
            counted = conn.execute(f"SELECT count(*) FROM {table}")
            typed = conn.cursor(binary=True).execute("SELECT %s::numeric * 2, %s::text", (Decimal("1.5"), "p"))
            pipeline.sync()
            assert inserted.fetchall() == [(1,), (2,)]
            assert counted.fetchone() == (10,)
            assert typed.fetchone() == (Decimal("3.0"), "p")

            # An error inside a (nested) pipeline: the rest of that batch up to
            # its sync is skipped and the batch's implicit transaction rolls back.
            with pytest.raises(errors.UniqueViolation) as excinfo:
                with conn.pipeline():
                    conn.execute(f"INSERT INTO {table} VALUES (11, 'rolled back')")
                    conn.execute(f"INSERT INTO {table} VALUES (1, 'duplicate')")
                    conn.execute(f"INSERT INTO {table} VALUES (12, 'skipped')")
            assert excinfo.value.diag.constraint_name == f"{table}_pkey"

            # Recovery: the pipeline goes on after the failed batch.
            conn.execute(f"INSERT INTO {table} VALUES (13, 'after recovery')")
            after = conn.execute(f"SELECT array_agg(id ORDER BY id) FROM {table}")
        assert after.fetchone() == ([*range(1, 11), 13],)
        assert conn.info.transaction_status == TransactionStatus.IDLE

        # A fresh pipeline and a plain statement both work afterwards.
        with conn.pipeline():
            c = conn.execute("SELECT 'pipeline again'")
        assert c.fetchone() == ("pipeline again",)
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_psycopg_server_side_cursors(gw_dsn, stages):
    name = _name("pg3_cur")
    with psycopg.connect(gw_dsn) as conn:
        with conn.cursor(name=name) as cur:
            cur.itersize = 250
            cur.execute("SELECT g, md5(g::text) FROM generate_series(1, %s) AS g ORDER BY g", (3000,))
            assert cur.fetchone() == (1, "c4ca4238a0b923820dcc509a6f75849b")
            batch = cur.fetchmany(99)
            assert [r[0] for r in batch] == list(range(2, 101))
            rest = list(cur)  # iterates with FETCH FORWARD itersize
            assert [r[0] for r in rest] == list(range(101, 3001))
            assert conn.info.transaction_status == TransactionStatus.INTRANS
        conn.commit()
        recorded = [t for t in stages["record"].texts() if name in t]
        assert any(t.upper().startswith("DECLARE") for t in recorded)
        assert any(t.upper().startswith("FETCH FORWARD 250") for t in recorded)

        # Binary, scrollable, WITH HOLD: survives the commit and moves both ways.
        with conn.cursor(name=_name("pg3_hold"), binary=True, scrollable=True, withhold=True) as cur:
            cur.execute("SELECT g, g::numeric / 4 FROM generate_series(1, 100) AS g ORDER BY g")
            conn.commit()
            assert cur.fetchmany(3) == [(1, Decimal("0.25")), (2, Decimal("0.5")), (3, Decimal("0.75"))]
            cur.scroll(89, mode="absolute")
            assert cur.fetchone() == (90, Decimal("22.5"))
            cur.scroll(-11)
            assert cur.fetchone() == (80, Decimal("20"))
            assert len(cur.fetchall()) == 20
        assert conn.info.transaction_status == TransactionStatus.IDLE


def test_psycopg_copy(gw_dsn):
    table = _name("pg3_copy")
    table2 = _name("pg3_copy_bin")
    n = 10_000
    rows = [
        (i, f"name {i}\twith tab \\ and ü" if i % 7 == 0 else f"name {i}", Decimal(i) / 100, None if i % 10 == 0 else date(2024, 1, 1) + timedelta(days=i % 365))
        for i in range(n)
    ]
    with psycopg.connect(gw_dsn) as conn:
        for t in (table, table2):
            conn.execute(f"CREATE TABLE {t} (id int PRIMARY KEY, name text, amount numeric(12, 2), day date)")
        conn.commit()
        cur = conn.cursor()
        try:
            with cur.copy(f"COPY {table} (id, name, amount, day) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
            assert cur.rowcount == n
            conn.commit()
            assert conn.execute(f"SELECT count(*), count(day), sum(amount) FROM {table}").fetchone() == (
                n,
                n - n // 10,
                sum(r[2] for r in rows),
            )

            with cur.copy(f"COPY (SELECT id, name, amount, day FROM {table} ORDER BY id) TO STDOUT") as copy:
                copy.set_types(["int4", "text", "numeric", "date"])
                assert list(copy.rows()) == rows

            # Binary COPY in and out.
            with cur.copy(f"COPY {table2} (id, name, amount, day) FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(["int4", "text", "numeric", "date"])
                for row in rows:
                    copy.write_row(row)
            assert cur.rowcount == n
            conn.commit()
            with cur.copy(f"COPY (SELECT id, name, amount, day FROM {table2} ORDER BY id) TO STDOUT (FORMAT BINARY)") as copy:
                copy.set_types(["int4", "text", "numeric", "date"])
                assert list(copy.rows()) == rows

            # Raw blocks, CSV.
            with cur.copy(f"COPY (SELECT id, amount FROM {table} WHERE id < 3 ORDER BY id) TO STDOUT (FORMAT CSV)") as copy:
                data = b"".join(bytes(block) for block in copy)
            assert data == b"0,0.00\n1,0.01\n2,0.02\n"

            # Bad data: the server's error arrives when the COPY ends, the session survives.
            with pytest.raises(errors.InvalidTextRepresentation) as excinfo:
                with cur.copy(f"COPY {table} (id, name) FROM STDIN") as copy:
                    copy.write(b"900001\tfine\nnot-a-number\toops\n")
            assert excinfo.value.sqlstate == "22P02"
            assert conn.info.transaction_status == TransactionStatus.INERROR
            conn.rollback()

            # The client aborts the COPY itself (CopyFail): its own exception surfaces.
            class Abort(Exception):
                pass

            with pytest.raises(Abort):
                with cur.copy(f"COPY {table} (id, name) FROM STDIN") as copy:
                    copy.write_row((900002, "never stored"))
                    raise Abort()
            assert conn.info.transaction_status == TransactionStatus.INERROR
            conn.rollback()
            assert conn.execute(f"SELECT count(*) FROM {table} WHERE id >= 900000").fetchone() == (0,)
        finally:
            conn.rollback()
            conn.execute(f"DROP TABLE IF EXISTS {table}, {table2}")
            conn.commit()


def test_psycopg_notices(gw_dsn):
    notices: list[tuple] = []
    with psycopg.connect(gw_dsn, autocommit=True) as conn:
        # Copy the fields inside the handler: the Diagnostic is only valid there.
        conn.add_notice_handler(
            lambda d: notices.append((d.severity_nonlocalized, d.sqlstate, d.message_primary, d.message_hint))
        )
        conn.execute(
            "DO $$ BEGIN RAISE NOTICE 'clients notice %', 42; "
            "RAISE WARNING 'clients warning' USING HINT = 'just a test', ERRCODE = '01000'; END $$"
        )
        assert notices == [
            ("NOTICE", "00000", "clients notice 42", None),
            ("WARNING", "01000", "clients warning", "just a test"),
        ]
        notices.clear()

        table = _name("pg3_notice")
        conn.execute(f"CREATE TEMP TABLE {table} (a int)")
        conn.execute(f"CREATE TEMP TABLE IF NOT EXISTS {table} (a int)")
        assert notices == [("NOTICE", "42P07", f'relation "{table}" already exists, skipping', None)]
        notices.clear()

        # A notice raised by a statement with parameters (extended protocol) arrives too.
        conn.execute(
            "SELECT set_config('client_min_messages', %s, false)", ("notice",)
        )
        conn.execute("DROP TABLE IF EXISTS pg3_notice_never_existed")
        assert notices == [("NOTICE", "00000", 'table "pg3_notice_never_existed" does not exist, skipping', None)]


def test_psycopg_listen_notify(gw_dsn):
    channel = _name("chan")
    with psycopg.connect(gw_dsn, autocommit=True) as listener, psycopg.connect(gw_dsn, autocommit=True) as sender:
        listener.execute(f"LISTEN {channel}")
        sender_pid = sender.execute("SELECT pg_backend_pid()").fetchone()[0]

        sender.execute(f"NOTIFY {channel}, 'first'")
        sender.execute("SELECT pg_notify(%s, %s)", (channel, "second"))
        with sender.transaction():  # delivered at commit
            sender.execute(f"NOTIFY {channel}, 'third'")
        got = list(listener.notifies(timeout=5, stop_after=3))
        assert [(n.channel, n.payload, n.pid) for n in got] == [
            (channel, "first", sender_pid),
            (channel, "second", sender_pid),
            (channel, "third", sender_pid),
        ]

        # A rolled back NOTIFY is never delivered.
        sender.execute("BEGIN")
        sender.execute(f"NOTIFY {channel}, 'rolled back'")
        sender.execute("ROLLBACK")
        sender.execute(f"NOTIFY {channel}, 'fourth'")
        got = list(listener.notifies(timeout=5, stop_after=1))
        assert [n.payload for n in got] == ["fourth"]

        listener.execute(f"UNLISTEN {channel}")
        sender.execute(f"NOTIFY {channel}, 'unheard'")
        assert list(listener.notifies(timeout=0.3)) == []


def test_psycopg_parameter_status(gw_dsn):
    with psycopg.connect(gw_dsn, autocommit=True, application_name="clients-start") as conn:
        info = conn.info
        assert info.parameter_status("application_name") == "clients-start"
        assert info.parameter_status("session_authorization") == "alice"
        assert info.parameter_status("server_version").startswith("15")

        conn.execute("SET application_name = 'clients-changed'")
        assert info.parameter_status("application_name") == "clients-changed"
        assert conn.execute("SHOW application_name").fetchone() == ("clients-changed",)

        conn.execute("SET TIME ZONE 'Asia/Tokyo'")
        assert info.parameter_status("TimeZone") == "Asia/Tokyo"
        assert str(info.timezone) == "Asia/Tokyo"
        ts = conn.execute("SELECT '2024-01-01 00:00:00+00'::timestamptz").fetchone()[0]
        assert ts.utcoffset() == timedelta(hours=9)

        # A SET inside a transaction that rolls back is reverted and reported again.
        conn.execute("BEGIN")
        conn.execute("SET application_name = 'inside-txn'")
        assert info.parameter_status("application_name") == "inside-txn"
        conn.execute("ROLLBACK")
        assert info.parameter_status("application_name") == "clients-changed"

        # Through the extended protocol as well.
        conn.execute("SELECT set_config('application_name', %s, false)", ("via-set-config",))
        assert info.parameter_status("application_name") == "via-set-config"


def test_psycopg_transaction_status(gw_dsn):
    table = _name("pg3_txn")
    with psycopg.connect(gw_dsn) as conn:
        info = conn.info
        assert info.transaction_status == TransactionStatus.IDLE
        conn.execute(f"CREATE TEMP TABLE {table} (id int PRIMARY KEY)")
        assert info.transaction_status == TransactionStatus.INTRANS
        conn.commit()
        assert info.transaction_status == TransactionStatus.IDLE

        conn.execute(f"INSERT INTO {table} VALUES (1)")
        assert info.transaction_status == TransactionStatus.INTRANS
        with pytest.raises(errors.DivisionByZero) as excinfo:
            conn.execute("SELECT 1 / %s", (0,))
        assert excinfo.value.sqlstate == "22012"
        assert info.transaction_status == TransactionStatus.INERROR
        with pytest.raises(errors.InFailedSqlTransaction) as excinfo:
            conn.execute("SELECT 1")
        assert excinfo.value.sqlstate == "25P02"
        assert info.transaction_status == TransactionStatus.INERROR
        conn.rollback()
        assert info.transaction_status == TransactionStatus.IDLE
        assert conn.execute(f"SELECT count(*) FROM {table}").fetchone() == (0,)
        conn.rollback()

        # Explicit BEGIN / SAVEPOINT in autocommit mode.
        conn.autocommit = True
        conn.execute("BEGIN")
        assert info.transaction_status == TransactionStatus.INTRANS
        conn.execute(f"INSERT INTO {table} VALUES (2)")
        conn.execute("SAVEPOINT sp")
        with pytest.raises(errors.UniqueViolation):
            conn.execute(f"INSERT INTO {table} VALUES (2)")
        assert info.transaction_status == TransactionStatus.INERROR
        conn.execute("ROLLBACK TO SAVEPOINT sp")
        assert info.transaction_status == TransactionStatus.INTRANS
        conn.execute("COMMIT")
        assert info.transaction_status == TransactionStatus.IDLE
        assert conn.execute(f"SELECT array_agg(id) FROM {table}").fetchone() == ([2],)

        # An error outside a transaction leaves the session idle and usable.
        with pytest.raises(errors.UndefinedTable) as excinfo:
            conn.execute("SELECT * FROM pg3_txn_no_such_table")
        assert excinfo.value.sqlstate == "42P01"
        assert info.transaction_status == TransactionStatus.IDLE
        assert conn.execute("SELECT 'usable'").fetchone() == ("usable",)


def _wait_for_active(watcher: psycopg.Connection, query: str) -> None:
    """Wait until *query* (exact text) runs in some backend."""
    _wait_until(
        lambda: watcher.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE query = %s AND state = 'active'", (query,)
        ).fetchone()[0]
        == 1,
        timeout=10,
        what=f"{query!r} to start",
    )


def test_psycopg_cancel(gw_dsn):
    # cancel_safe(), not cancel(): psycopg's C implementation calls the blocking
    # PQcancel() without releasing the GIL, and the test gateway runs on a thread
    # of this very process, so cancel() would deadlock the test run (outside
    # tests, against a separate gateway process, it is fine). The blocking,
    # plaintext CancelRequest path is covered by test_psql_cancel_with_sigint.
    query = f"SELECT pg_sleep(10) AS {_name('sleeper')}"  # unique text, found in pg_stat_activity
    with psycopg.connect(gw_dsn, autocommit=True) as conn, psycopg.connect(gw_dsn, autocommit=True) as watcher:
        assert conn.pgconn.ssl_in_use  # so cancel_safe() negotiates TLS before its CancelRequest
        outcome: dict = {}

        def run() -> None:
            try:
                conn.execute(query)
            except BaseException as exc:  # noqa: BLE001 - handed to the main thread
                outcome["exc"] = exc

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        _wait_for_active(watcher, query)
        started = time.monotonic()
        conn.cancel_safe(timeout=5)
        thread.join(timeout=8)
        assert not thread.is_alive(), "cancel_safe() did not stop pg_sleep(10)"
        assert time.monotonic() - started < 3
        exc = outcome.get("exc")
        assert isinstance(exc, errors.QueryCanceled), repr(exc)
        assert exc.sqlstate == "57014"
        assert "canceling statement due to user request" in str(exc)
        assert conn.info.transaction_status == TransactionStatus.IDLE
        assert conn.execute("SELECT 'still usable'").fetchone() == ("still usable",)


def test_psql_cancel_with_sigint(psql, gw_dsn):
    # Ctrl-C in psql: libpq's PQcancel() sends a plaintext CancelRequest on a new connection.
    query = f"SELECT pg_sleep(10) AS {_name('psql_sleeper')}"
    proc = subprocess.Popen(
        [psql.program, "-X", "-d", psql.conninfo(), "-c", query],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_client_env(psql.creds["password"]),
    )
    try:
        with psycopg.connect(gw_dsn, autocommit=True) as watcher:
            _wait_for_active(watcher, query)
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=8)
        assert time.monotonic() - started < 3
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 1
    assert "ERROR:  canceling statement due to user request" in stderr


# ================================================================= asyncpg


async def _aconnect(gw_url: str, ssl: object = False):
    return await asyncpg.connect(dsn=gw_url, ssl=ssl, timeout=15)


def _arun(coro) -> object:
    return asyncio.run(asyncio.wait_for(coro, timeout=60))


@needs_asyncpg
def test_asyncpg_fetch_binary_types(gw_url):
    async def main():
        conn = await _aconnect(gw_url, ssl="require")
        try:
            assert conn.get_server_version().major == 15
            values = (
                9223372036854775807,
                Decimal("-12345678901234567890.000123456789"),
                "héllo ✓\n\t'\"",
                bytes(range(256)),
                datetime(2024, 2, 29, 23, 59, 58, 123456, tzinfo=timezone.utc),
                uuid.UUID("12345678-1234-5678-1234-567812345678"),
                [1, None, 3],
                json.dumps({"a": [1, 2, {"b": None}]}),
                timedelta(days=3, seconds=7, microseconds=5),
                IPv4Address("192.0.2.1"),
                -0.125,
                True,
                date(1999, 12, 31),
                None,
            )
            row = await conn.fetchrow(
                "SELECT $1::int8 AS i8, $2::numeric AS num, $3::text AS txt, $4::bytea AS raw, "
                "$5::timestamptz AS ts, $6::uuid AS u, $7::int4[] AS arr, $8::jsonb AS doc, "
                "$9::interval AS iv, $10::inet AS addr, $11::float8 AS f8, $12::bool AS bo, "
                "$13::date AS d, $14::text AS nothing",
                *values,
            )
            assert list(row.keys()) == ["i8", "num", "txt", "raw", "ts", "u", "arr", "doc", "iv", "addr", "f8", "bo", "d", "nothing"]
            got = tuple(row.values())
            assert got[:7] == values[:7]
            assert json.loads(got[7]) == json.loads(values[7])
            assert got[8:] == values[8:]
            assert row["addr"] == IPv4Address("192.0.2.1")

            rows = await conn.fetch(
                "SELECT g AS n, g::numeric / 8 AS frac, ARRAY[g, g * 2] AS pair, md5(g::text)::uuid AS id "
                "FROM generate_series(1, $1::int) AS g ORDER BY g",
                1000,
            )
            assert len(rows) == 1000
            assert rows[0]["frac"] == Decimal("0.125") and rows[-1]["pair"] == [1000, 2000]
            assert isinstance(rows[5]["id"], uuid.UUID)
            assert await conn.fetchval("SELECT $1::text || $2::text", "a", "b") == "ab"
        finally:
            await conn.close()

    _arun(main())


@needs_asyncpg
def test_asyncpg_prepared_statements(gw_url):
    table = _name("apg_prep")

    async def main():
        conn = await _aconnect(gw_url)
        try:
            stmt = await conn.prepare("SELECT $1::int4 * 2 AS doubled, $2::text || '!' AS shout")
            assert [a.name for a in stmt.get_attributes()] == ["doubled", "shout"]
            assert [t.name for t in stmt.get_parameters()] == ["int4", "text"]
            for i in range(200):
                row = await stmt.fetchrow(i, f"x{i}")
                assert (row["doubled"], row["shout"]) == (i * 2, f"x{i}!")

            await conn.execute(f"CREATE TEMP TABLE {table} (id int PRIMARY KEY, v text)")
            insert = await conn.prepare(f"INSERT INTO {table} VALUES ($1, $2)")
            for i in range(100):
                await insert.fetch(i, str(i))
                assert insert.get_statusmsg() == "INSERT 0 1"
            select = await conn.prepare(f"SELECT count(*) FROM {table} WHERE id < $1")
            assert [await select.fetchval(k) for k in (0, 10, 1000)] == [0, 10, 100]

            # An error executing a prepared statement leaves it (and the connection) usable.
            divide = await conn.prepare("SELECT 10 / $1::int")
            with pytest.raises(asyncpg.exceptions.DivisionByZeroError):
                await divide.fetchval(0)
            assert await divide.fetchval(5) == 2
        finally:
            await conn.close()

    _arun(main())


@needs_asyncpg
def test_asyncpg_executemany(gw_url):
    table = _name("apg_many")

    async def main():
        conn = await _aconnect(gw_url)
        try:
            await conn.execute(f"CREATE TEMP TABLE {table} (id int PRIMARY KEY, name text, score float8)")
            rows = [(i, f"name-{i}", i / 4) for i in range(5000)]
            await conn.executemany(f"INSERT INTO {table} VALUES ($1, $2, $3)", rows)
            assert await conn.fetchrow(f"SELECT count(*), sum(score) FROM {table}") == (5000, sum(r[2] for r in rows))

            # The batch is atomic: one bad row in the middle and nothing is inserted.
            bad = [(i, "x", 0.0) for i in range(5000, 6000)] + [(10, "dup", 0.0)] + [(i, "y", 0.0) for i in range(6000, 7000)]
            with pytest.raises(asyncpg.exceptions.UniqueViolationError) as excinfo:
                await conn.executemany(f"INSERT INTO {table} VALUES ($1, $2, $3)", bad)
            assert excinfo.value.sqlstate == "23505"
            assert not conn.is_closed() and not conn.is_in_transaction()
            assert await conn.fetchval(f"SELECT count(*) FROM {table}") == 5000
        finally:
            await conn.close()

    _arun(main())


@needs_asyncpg
def test_asyncpg_cursor_prefetch(gw_url, stages):
    alias = _name("apg_cursor_col")

    async def main():
        conn = await _aconnect(gw_url)
        try:
            query = f"SELECT g AS {alias} FROM generate_series(1, $1::int) AS g ORDER BY g"
            async with conn.transaction():
                got = [r[alias] async for r in conn.cursor(query, 1234, prefetch=50)]
                assert got == list(range(1, 1235))

                cur = await conn.cursor(query, 1000)
                assert [r[0] for r in await cur.fetch(5)] == [1, 2, 3, 4, 5]
                assert await cur.forward(10) == 10
                assert (await cur.fetchrow())[0] == 16
                assert len(await cur.fetch(2000)) == 984
                assert await cur.fetchrow() is None
                assert conn.is_in_transaction()
            assert not conn.is_in_transaction()
        finally:
            await conn.close()

    _arun(main())
    # The prefetching cursor ran its portal in batches: one Execute (row limit 50) per batch.
    executes = [s for s in list(stages["record"].completed_statements) if s.kind == "execute" and alias in (s.text or "")]
    assert len(executes) >= 1234 // 50
    assert all(s.status == "ok" for s in executes)


@needs_asyncpg
def test_asyncpg_copy(gw_url):
    table = _name("apg_copy")

    async def main():
        conn = await _aconnect(gw_url)
        try:
            await conn.execute(
                f"CREATE TEMP TABLE {table} (id int PRIMARY KEY, name text, amount numeric, ts timestamptz)"
            )
            base = datetime(2024, 1, 1, tzinfo=timezone.utc)
            records = [(i, f"rec {i}" if i % 5 else None, Decimal(i) / 4, base + timedelta(minutes=i)) for i in range(3000)]
            status = await conn.copy_records_to_table(table, records=records, columns=["id", "name", "amount", "ts"])
            assert status == "COPY 3000"
            back = await conn.fetch(f"SELECT id, name, amount, ts FROM {table} ORDER BY id")
            assert [tuple(r) for r in back] == records

            chunks: list[bytes] = []

            async def sink(data) -> None:
                chunks.append(bytes(data))

            status = await conn.copy_from_query(
                f"SELECT id, name, amount FROM {table} WHERE id < $1 ORDER BY id", 100, output=sink, format="csv"
            )
            assert status == "COPY 100"
            lines = b"".join(chunks).decode().splitlines()
            assert len(lines) == 100
            assert lines[:2] == ["0,,0", "1,rec 1,0.25"]

            # And the other direction from an async iterable of CSV bytes.
            async def source():
                for i in range(10_000, 10_500):
                    yield f"{i},from source,{i}\n".encode()

            status = await conn.copy_to_table(table, source=source(), columns=["id", "name", "amount"], format="csv")
            assert status == "COPY 500"
            assert await conn.fetchval(f"SELECT count(*) FROM {table}") == 3500
        finally:
            await conn.close()

    _arun(main())


@needs_asyncpg
def test_asyncpg_errors_and_transactions(gw_url):
    table = _name("apg_txn")

    class Boom(Exception):
        pass

    async def main():
        conn = await _aconnect(gw_url)
        try:
            with pytest.raises(asyncpg.exceptions.DivisionByZeroError) as excinfo:
                await conn.fetchval("SELECT 1 / $1::int", 0)
            assert excinfo.value.sqlstate == "22012"
            assert not conn.is_closed()
            with pytest.raises(asyncpg.exceptions.DivisionByZeroError):
                await conn.execute("SELECT 1/0")  # simple protocol too
            with pytest.raises(asyncpg.exceptions.UndefinedTableError) as excinfo:
                await conn.fetch("SELECT * FROM apg_txn_no_such_table")
            assert excinfo.value.sqlstate == "42P01"
            with pytest.raises(asyncpg.exceptions.PostgresSyntaxError):
                await conn.execute("SELEC 1")
            assert not conn.is_closed()
            assert await conn.fetchval("SELECT 1") == 1

            await conn.execute(f"CREATE TEMP TABLE {table} (id int PRIMARY KEY)")

            # The context manager rolls back on an exception.
            with pytest.raises(Boom):
                async with conn.transaction():
                    await conn.execute(f"INSERT INTO {table} VALUES (1)")
                    raise Boom()
            assert not conn.is_in_transaction()
            assert await conn.fetchval(f"SELECT count(*) FROM {table}") == 0

            # A server error inside an explicit transaction, then ROLLBACK.
            tr = conn.transaction()
            await tr.start()
            await conn.execute(f"INSERT INTO {table} VALUES (2)")
            with pytest.raises(asyncpg.exceptions.DivisionByZeroError):
                await conn.fetchval("SELECT 1 / $1::int", 0)
            assert conn.is_in_transaction()
            with pytest.raises(asyncpg.exceptions.InFailedSQLTransactionError):
                await conn.fetchval("SELECT 1")
            await tr.rollback()
            assert not conn.is_in_transaction()
            assert await conn.fetchval(f"SELECT count(*) FROM {table}") == 0

            # A nested transaction (savepoint) rolls back alone.
            async with conn.transaction():
                await conn.execute(f"INSERT INTO {table} VALUES (3)")
                with pytest.raises(asyncpg.exceptions.UniqueViolationError):
                    async with conn.transaction():
                        await conn.execute(f"INSERT INTO {table} VALUES (4)")
                        await conn.execute(f"INSERT INTO {table} VALUES (3)")
            assert await conn.fetch(f"SELECT id FROM {table} ORDER BY id") == [(3,)]
            assert not conn.is_closed()
        finally:
            await conn.close()

    _arun(main())


@needs_asyncpg
def test_asyncpg_custom_types_and_introspection(gw_url):
    # Types asyncpg does not know are introspected with its catalog queries, then decoded.
    mood = _name("apg_mood")
    pair = _name("apg_pair")
    table = _name("apg_custom")

    async def main():
        conn = await _aconnect(gw_url)
        try:
            await conn.execute(
                f"CREATE TYPE {mood} AS ENUM ('sad', 'ok', 'happy'); "
                f"CREATE TYPE {pair} AS (label text, weight numeric); "
                f"CREATE TABLE {table} (id int PRIMARY KEY, m {mood}, p {pair}, ms {mood}[])"
            )
            await conn.execute(
                f"INSERT INTO {table} VALUES ($1, $2, $3, $4)", 1, "happy", ("first", Decimal("1.5")), ["sad", "ok"]
            )
            row = await conn.fetchrow(f"SELECT m, p, ms FROM {table} WHERE id = $1", 1)
            assert row["m"] == "happy"
            assert tuple(row["p"]) == ("first", Decimal("1.5")) and row["p"]["label"] == "first"
            assert row["ms"] == ["sad", "ok"]
            with pytest.raises(asyncpg.exceptions.InvalidTextRepresentationError):
                await conn.execute(f"INSERT INTO {table} (id, m) VALUES ($1, $2)", 2, "furious")
        finally:
            await conn.execute(f"DROP TABLE IF EXISTS {table}; DROP TYPE IF EXISTS {pair}; DROP TYPE IF EXISTS {mood}")
            await conn.close()

    _arun(main())


@needs_asyncpg
def test_asyncpg_pool_listeners_and_notices(gw_url):
    channel = _name("apg_chan")

    async def main():
        pool = await asyncpg.create_pool(dsn=gw_url, ssl=False, min_size=2, max_size=3, timeout=15)
        try:
            # Concurrent queries over the pool's connections.
            results = await asyncio.gather(*(pool.fetchval("SELECT $1::int * 3", i) for i in range(30)))
            assert results == [i * 3 for i in range(30)]

            # Release resets the session (asyncpg's multi-statement reset query).
            async with asyncpg.create_pool(dsn=gw_url, ssl=False, min_size=1, max_size=1, timeout=15) as single:
                async with single.acquire() as conn:
                    await conn.execute("SET search_path = pg_catalog")
                    await conn.execute(f"LISTEN {channel}")
                    pid = await conn.fetchval("SELECT pg_backend_pid()")
                async with single.acquire() as conn:
                    assert await conn.fetchval("SELECT pg_backend_pid()") == pid  # the same session
                    assert await conn.fetchval("SHOW search_path") == '"$user", public'
                    assert await conn.fetchval("SELECT count(*) FROM pg_listening_channels()") == 0

            async with pool.acquire() as listener, pool.acquire() as sender:
                received: asyncio.Queue = asyncio.Queue()
                logs: list = []

                def on_notify(_conn, _pid, chan, payload) -> None:
                    received.put_nowait((chan, payload))

                def on_log(_conn, msg) -> None:
                    logs.append((msg.severity, msg.sqlstate, msg.message))

                await listener.add_listener(channel, on_notify)
                sender.add_log_listener(on_log)
                await sender.execute(f"NOTIFY {channel}, 'one'")
                await sender.execute("SELECT pg_notify($1, $2)", channel, "two")
                got = [await asyncio.wait_for(received.get(), 5) for _ in range(2)]
                assert got == [(channel, "one"), (channel, "two")]
                await sender.execute("DO $$ BEGIN RAISE NOTICE 'asyncpg notice %', 5; END $$")
                for _ in range(100):  # log listeners are called soon, not synchronously
                    if logs:
                        break
                    await asyncio.sleep(0.01)
                assert logs == [("NOTICE", "00000", "asyncpg notice 5")]
                await listener.remove_listener(channel, on_notify)
                sender.remove_log_listener(on_log)
        finally:
            await pool.close()

    _arun(main())


@needs_asyncpg
@pytest.mark.parametrize("ssl", [False, "require"])
def test_asyncpg_timeout_cancels_query(gw_url, ssl):
    # On a timeout asyncpg sends a CancelRequest and waits for the server to give the connection back.
    async def main():
        conn = await _aconnect(gw_url, ssl=ssl)
        try:
            started = time.monotonic()
            with pytest.raises(asyncio.TimeoutError):
                await conn.fetchval("SELECT pg_sleep(10)", timeout=0.5)
            assert time.monotonic() - started < 3
            assert not conn.is_closed() and not conn.is_in_transaction()
            assert await conn.fetchval("SELECT $1::text", "still usable") == "still usable"
        finally:
            await conn.close()

    _arun(main())


# ================================================================= pgbench


@pytest.fixture(scope="module")
def _pgbench_state() -> Iterator[dict]:
    state: dict = {}
    yield state
    if "run" in state:
        state["run"]("-i", "-I", "d")  # drop the pgbench tables


@pytest.fixture()
def pgbench(pg, gw_url, _pgbench_state) -> Callable[..., subprocess.CompletedProcess]:
    """Runs pgbench against the gateway; the module's first use initialises the tables (scale 1)."""
    if "run" not in _pgbench_state:
        program = _program("pgbench", pg)
        creds = _credentials(gw_url)
        env = _client_env(creds["password"])
        base = [program, "-h", creds["host"], "-p", creds["port"], "-U", creds["user"]]

        def run(*args: str) -> subprocess.CompletedProcess:
            return subprocess.run(
                [*base, *args, creds["dbname"]], capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT, env=env
            )

        init = run("-i", "-s", "1", "-q")
        assert init.returncode == 0, init.stderr
        assert "done in" in init.stderr
        _pgbench_state["run"] = run
    return _pgbench_state["run"]


def _assert_pgbench_ok(result: subprocess.CompletedProcess, transactions: int, mode: str) -> None:
    assert result.returncode == 0, result.stderr + result.stdout
    out = result.stdout
    assert f"query mode: {mode}" in out
    assert f"number of transactions actually processed: {transactions}/{transactions}" in out
    assert "number of failed transactions: 0 " in out
    assert "error" not in result.stderr.lower()


@pytest.mark.parametrize("mode", ["simple", "extended", "prepared"])
def test_pgbench_select_only(pgbench, mode):
    _assert_pgbench_ok(pgbench("-S", "-t", "200", "-c", "2", "-M", mode), 400, mode)


def test_pgbench_tpcb(pgbench, gw_dsn):
    with psycopg.connect(gw_dsn) as conn:
        before = conn.execute("SELECT count(*) FROM pgbench_history").fetchone()[0]
    _assert_pgbench_ok(pgbench("-t", "50", "-c", "2", "-M", "prepared"), 100, "prepared")
    with psycopg.connect(gw_dsn) as conn:
        # Each TPC-B-like transaction inserts one history row; scale 1 is 100000 accounts.
        assert conn.execute("SELECT count(*) FROM pgbench_history").fetchone()[0] == before + 100
        assert conn.execute("SELECT count(*) FROM pgbench_accounts").fetchone()[0] == 100_000
        # The balances moved by the transactions agree across the tables.
        branches, tellers, history = conn.execute(
            "SELECT (SELECT sum(bbalance) FROM pgbench_branches), (SELECT sum(tbalance) FROM pgbench_tellers),"
            " (SELECT sum(delta) FROM pgbench_history)"
        ).fetchone()
        assert branches == tellers == history


PGBENCH_PIPELINE_SCRIPT = """\\set aid random(1, 100000 * :scale)
\\set delta random(-5000, 5000)
\\startpipeline
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
SELECT bid, filler IS NOT NULL FROM pgbench_accounts WHERE aid = :aid;
SELECT count(*) FROM pgbench_branches WHERE bbalance > :delta;
\\endpipeline
"""


@pytest.mark.parametrize("mode", ["extended", "prepared"])
def test_pgbench_pipeline_script(pgbench, mode, tmp_path):
    # \startpipeline/\endpipeline: libpq pipeline mode, several statements per Sync.
    script = tmp_path / "pipeline.sql"
    script.write_text(PGBENCH_PIPELINE_SCRIPT)
    _assert_pgbench_ok(pgbench("-f", str(script), "-t", "100", "-c", "2", "-M", mode), 200, mode)


# ================================================================= node-postgres


def test_node_postgres(gw_url):
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed (needed for the node-postgres client test)")
    if not (NODE_DIR / "node_modules" / "pg" / "package.json").is_file():
        pytest.skip("node-postgres (npm package 'pg') is missing from tests/node/node_modules: "
                    "run npm install --prefix tests/node")
    table = _name("node_check")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    proc = subprocess.run(
        [node, str(NODE_DIR / "client_check.js"), gw_url, table],
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
        env=env,
        cwd=NODE_DIR,
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])

    assert summary["param"] == {"sum": 42, "greeting": "héllo wörld", "was_null": True, "command": "SELECT", "rowCount": 1}
    assert summary["multi"] == {
        "rowCount": 500,
        "rows": 500,
        "first": 1,
        "last": 500,
        "firstHash": "c4ca4238a0b923820dcc509a6f75849b",
        "fields": ["n", "h"],
    }
    assert summary["types"] == {
        "num": "12.50",
        "doc": {"a": [1, 2]},
        "raw": [0, 255],
        "arr": [1, 2, 3],
        "ts": "2024-02-29T12:34:56.000Z",
        "flag": True,
    }
    assert summary["prepared"] == [0, 1, 4, 9, 16]

    failed = summary["failedTxn"]
    assert failed["insertCommand"] == "INSERT" and failed["insertRowCount"] == 1
    assert failed["dup"]["code"] == "23505"
    assert failed["dup"]["constraint"] == f"{table}_pkey"
    assert failed["aborted"]["code"] == "25P02"
    assert failed["rollbackCommand"] == "ROLLBACK"
    assert failed["countAfterRollback"] == 0

    committed = summary["committedTxn"]
    assert committed["updateRowCount"] == 2
    assert committed["commitCommand"] == "COMMIT"
    assert committed["rows"] == [{"id": 1, "note": "note 1"}, {"id": 2, "note": "note 2!"}, {"id": 3, "note": "note 3!"}]

    assert summary["divByZero"]["code"] == "22012"
    assert summary["undefinedTable"]["code"] == "42P01"
    assert summary["alive"] == "yes"
    assert summary["notices"] == [{"severity": "NOTICE", "message": "node notice 7"}]


# ================================================================= large messages
#
# Statements and parameters of a few tens of MiB are ordinary (generated INSERTs,
# documents in bytea); they are well below listen.max_message_size (64 MiB).
# A stalled gateway must fail these tests, not hang the run, hence the timeouts.

LARGE_MIB = 20
LARGE_TIMEOUT = 12  # seconds; about 0.3 s is normal for 20 MiB


def test_psql_large_statement(psql):
    payload_len = LARGE_MIB * 1024 * 1024
    sql = f"SELECT length('{'z' * payload_len}') AS n;\n"
    try:
        r = subprocess.run(
            [psql.program, "-X", "-At", "-d", psql.conninfo("disable"), "-f", "-"],
            input=sql,
            capture_output=True,
            text=True,
            timeout=LARGE_TIMEOUT,
            env=_client_env(psql.creds["password"]),
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"a {LARGE_MIB} MiB simple Query got no answer within {LARGE_TIMEOUT}s (the session stalled)")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(payload_len)


def test_psycopg_large_bind_parameter(gw_dsn):
    payload = bytes(range(256)) * (LARGE_MIB * 4096)  # LARGE_MIB MiB
    conn = psycopg.connect(gw_dsn, autocommit=True)
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["row"] = conn.execute(
                "SELECT length(b), md5(b) FROM (SELECT %s::bytea AS b) AS s", (payload,)
            ).fetchone()
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            outcome["exc"] = exc

    thread = threading.Thread(target=run, daemon=True)
    try:
        thread.start()
        thread.join(LARGE_TIMEOUT)
        if thread.is_alive():
            # Unblock the client thread: shut the socket down under libpq's feet.
            with socket.socket(fileno=os.dup(conn.pgconn.socket)) as sock:
                sock.shutdown(socket.SHUT_RDWR)
            thread.join(10)
            pytest.fail(f"a Bind with a {LARGE_MIB} MiB parameter got no answer within {LARGE_TIMEOUT}s (the session stalled)")
        assert "exc" not in outcome, repr(outcome.get("exc"))
        assert outcome["row"] == (len(payload), hashlib.md5(payload).hexdigest())
        assert conn.execute("SELECT 'usable'").fetchone() == ("usable",)
    finally:
        conn.close()


# ================================================================= statement log accuracy


def test_statement_log_after_sql_deallocate(gw_dsn, stages):
    # libpq's PQprepare/PQexecPrepared (psycopg's pgconn API): a named statement
    # is dropped with SQL DEALLOCATE and its name prepared again for a new query.
    # The statements the gateway reports (statement log, completion hooks)
    # must show the query that actually ran.
    name = _name("stmt").encode()
    old_alias, new_alias = _name("old_query"), _name("new_query")
    with psycopg.connect(gw_dsn, autocommit=True) as conn:
        pgconn = conn.pgconn
        assert pgconn.prepare(name, f"SELECT 1 AS {old_alias}".encode()).error_message == b""
        assert pgconn.exec_prepared(name, []).get_value(0, 0) == b"1"
        conn.execute(f"DEALLOCATE {name.decode()}")
        assert pgconn.prepare(name, f"SELECT 2 AS {new_alias}".encode()).error_message == b""
        result = pgconn.exec_prepared(name, [])
        assert result.fname(0) == new_alias.encode() and result.get_value(0, 0) == b"2"

    executes = [
        s.text or ""
        for s in list(stages["record"].completed_statements)
        if s.kind == "execute" and (old_alias in (s.text or "") or new_alias in (s.text or ""))
    ]
    assert executes == [f"SELECT 1 AS {old_alias}", f"SELECT 2 AS {new_alias}"]
