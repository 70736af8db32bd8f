"""Session recording end to end: real clients through a recording gateway, and what the trail says.

One gateway (module scope) records into an SQLite trail in a temporary
``data_dir``; each test runs a real client (psql, psycopg 3, asyncpg) under its
own ``application_name``, then reads that session's records back from the store
the way an auditor would (docs/audit.md, record format v1) and checks them
against what the client itself saw: statement texts, parameters, command tags,
the rows (decoded from the recorded DataRow messages), errors, notices, COPY
volumes, refusals, cancels, connect/auth/disconnect details. The last test stops
the gateway and runs ``pgwarden audit verify`` (over the trail all the tests
produced), ``pgwarden sessions replay`` and ``sessions list``.

``audit.results.max_rows`` is 5 on this gateway, so every result here stays
under the cap except in the two tests about the cap.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import psycopg
import pytest
import yaml
from psycopg import errors

from pgwarden.identity.login import dev_issuer_for
from pgwarden.store.decode import decode_result_set
from pgwarden.store.sqlite import SqliteAuditStore
from pgwarden.testing.gateway import RunningGateway, gateway_config

from conftest import GW_PASSWORD, GW_USER

try:
    import asyncpg
except ImportError:  # pragma: no cover - a test dependency
    asyncpg = None

MAX_ROWS = 5
TIMEOUT = 60


# ---------------------------------------------------------------- the gateway and its trail


class Trail:
    """The running gateway and a reader of its trail."""

    def __init__(self, gw: RunningGateway, data_dir: Path, config: dict) -> None:
        self.gw = gw
        self.data_dir = data_dir
        self.config = config  # the config as YAML data (for the CLI)
        self.issuer = None

    def dsn(self, app: str, **extra: str) -> str:
        extra.setdefault("sslmode", "disable")
        return self.gw.dsn(GW_USER, GW_PASSWORD, application_name=app, **extra)

    def records(self) -> list[dict]:
        """Every record in the trail (flushed first), as dicts with ``seq``."""
        if self.gw.loop is not None and not self.gw.loop.is_closed():
            self.gw.call(self.gw.gateway.audit_writer.flush)
        store = SqliteAuditStore(self.data_dir / "audit.sqlite")
        store.open_sync(create=False)

        async def collect():
            try:
                return [(r.seq, r.type, r.body) async for r in store.records()]
            finally:
                await store.close()

        out = []
        for seq, rtype, body in asyncio.run(collect()):
            data = json.loads(body)
            assert data["seq"] == seq and data["type"] == rtype
            out.append(data)
        return out

    def session(self, app: str, *, ended: bool = True) -> list[dict]:
        """The records of the (one) session whose connect record has ``application_name`` ``app``."""
        deadline = time.monotonic() + 10
        while True:
            found = self.records()
            ids = [r["session"] for r in found if r["type"] == "connect" and r["application_name"] == app]
            assert len(ids) <= 1, f"several sessions named {app}"
            if ids:
                mine = [r for r in found if r["session"] == ids[0]]
                if not ended or mine[-1]["type"] == "disconnect":
                    return mine
            if time.monotonic() > deadline:
                pytest.fail(f"no {'ended ' if ended else ''}session {app!r} in the trail")
            time.sleep(0.05)


@pytest.fixture(scope="module")
def trail(pg, gw_users, tls_files, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("recording")
    overrides = {
        "data_dir": str(data_dir),
        "audit": {"results": {"max_rows": MAX_ROWS}},
        "identity": {"dev_issuer": {"enabled": True}},
        "roles": {"agent": {"targets": ["app"], "access": "read"}},
        "role_bindings": [{"role": "agent", "match": {"groups": "agents"}}],
    }
    tls = {"mode": "prefer", "cert": str(tls_files["cert"]), "key": str(tls_files["key"])}
    config = gateway_config(pg, users=gw_users, tls=tls, **overrides)
    cli_config = {
        "targets": {"app": {"host": pg.host, "port": pg.port, "database": "appdb", "user": "app",
                            "password": pg.passwords["app"]}},
        **overrides,
    }
    with RunningGateway(config) as gw:  # the default pipeline: guardrails (dangerous pack) and the recorder
        t = Trail(gw, data_dir, cli_config)
        t.issuer = dev_issuer_for(config)
        yield t


@pytest.fixture(autouse=True)
def _no_recorder_errors(caplog):
    """A recorder that raises only logs (the pipeline catches it) and loses a record: fail instead."""
    yield
    errors_logged = [r for r in caplog.get_records("call") if r.levelno >= 40 and r.name.startswith("pgwarden")]
    assert errors_logged == [], [r.getMessage() for r in errors_logged]


# ---------------------------------------------------------------- reading records


def pairs(records: list[dict]) -> list[tuple[dict, dict | None]]:
    """(statement, result) in statement order, paired by ``n``."""
    results = {r["n"]: r for r in records if r["type"] == "result"}
    found = [(s, results.get(s["n"])) for s in records if s["type"] == "statement"]
    for s, r in found:  # write-ahead: a statement's record comes before its result's
        assert r is None or r["seq"] > s["seq"]
    return found


def by_text(records: list[dict], text: str, kind: str | None = None) -> list[tuple[dict, dict | None]]:
    return [(s, r) for s, r in pairs(records) if s["text"] == text and (kind is None or s["kind"] == kind)]


def one(records: list[dict], text: str, kind: str | None = None) -> tuple[dict, dict]:
    found = by_text(records, text, kind)
    assert len(found) == 1, (text, kind, [s["text"] for s, _ in pairs(records)])
    assert found[0][1] is not None, f"no result record for {text!r}"
    return found[0]  # type: ignore[return-value]


def rows_of(result: dict) -> list[list[list[str | None]]]:
    """Each result set's rows, decoded from the recorded DataRows (as psql would print them)."""
    sets = []
    for raw in result.get("results") or []:
        decoded = decode_result_set(raw)
        assert decoded.problems == [], decoded.problems
        sets.append(decoded.rows)
    return sets


def data_of(result: dict) -> bytes:
    return b"".join(base64.b64decode(s["data"]) for s in result.get("results") or [])


def check_digest(result: dict) -> None:
    """Nothing truncated: the digest and size cover exactly the recorded data."""
    assert not any(s["truncated"] for s in result["results"])
    data = data_of(result)
    assert result["sha256"] == hashlib.sha256(data).hexdigest()
    assert result["result_bytes"] == len(data)
    for s in result["results"]:
        assert s["kept_bytes"] == len(base64.b64decode(s["data"]))


def datarow(*values: bytes | None) -> bytes:
    body = struct.pack("!h", len(values))
    for v in values:
        body += struct.pack("!i", -1) if v is None else struct.pack("!i", len(v)) + v
    return b"D" + struct.pack("!i", len(body) + 4) + body


ALLOW = {"action": "allow", "rule": None, "message": None, "alerts": []}


def psql(pg, dsn: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    program = Path(pg.bindir) / "psql"
    return subprocess.run([str(program) if program.exists() else "psql", "-X", "-d", dsn, *args], input=stdin,
                          capture_output=True, text=True, timeout=TIMEOUT, env=client_env())


def client_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(PGPASSWORD=GW_PASSWORD, PGCONNECT_TIMEOUT="10", PGCLIENTENCODING="UTF8", **extra)
    return env


# ---------------------------------------------------------------- psql


def test_psql_statements_rows_and_notices(trail, pg):
    app = "rec-psql"
    table = f"rec_psql_{uuid.uuid4().hex[:8]}"
    statements = [
        f"create temp table if not exists {table} (id int primary key, name text, ok boolean);",
        f"create temp table if not exists {table} (id int primary key, name text, ok boolean);",
        f"insert into {table} values (1, 'ada', true), (2, null, false), (3, 'grace | hopper', null);",
        f"select id, name, ok from {table} order by id;",
        f"select id from {table} where id > 100;",
        "select 'a' as x, 1 as y \\; select 'b' where false \\; select 'c' union all select 'd';",
        f"update {table} set ok = true where id = 2;",
        "select 'before' as b \\; select 1/0 \\; select 'never';",
        "select 1/0;",
        "select 42 as answer;",
    ]
    r = psql(pg, trail.dsn(app), "-q", "-At", "-f", "-", stdin="\n".join(statements) + "\n")
    assert r.returncode == 0, r.stderr  # no ON_ERROR_STOP: psql goes on after the error
    assert "NOTICE:  relation" in r.stderr and "already exists, skipping" in r.stderr
    assert "ERROR:  division by zero" in r.stderr
    printed = r.stdout.splitlines()

    records = trail.session(app)
    sent = [s["text"] for s, _ in pairs(records)]
    # Each statement exactly as psql sent it (\; joins statements into one Query).
    assert sent == [s.replace("\\;", ";") for s in statements], sent
    for stmt, result in pairs(records):
        assert stmt["kind"] == "query" and stmt["protocol"] == "simple" and stmt["decision"] == ALLOW
        assert result is not None and result["n"] == stmt["n"]

    # Everything psql printed is in the recorded rows, in order (-A: '|' between columns, '' for NULL).
    shown = []
    for _, result in pairs(records):
        for rows in rows_of(result):
            shown += ["|".join("" if v is None else v for v in row) for row in rows]
    assert shown == printed

    created, again = by_text(records, statements[0])
    assert created[1]["status"] == "ok" and created[1]["tags"] == ["CREATE TABLE"] and "notices" not in created[1]
    assert again[1]["notices"] == [{"severity": "NOTICE", "sqlstate": "42P07",
                                    "message": f'relation "{table}" already exists, skipping'}]

    _, insert = one(records, statements[2])
    assert insert["tags"] == ["INSERT 0 3"] and insert["rows"] == 3 and "results" not in insert

    _, select = one(records, statements[3])
    assert select["tags"] == ["SELECT 3"] and select["rows"] == 3
    (rset,) = select["results"]
    assert [(c["name"], c["type"], c["format"]) for c in rset["columns"]] == [("id", 23, 0), ("name", 25, 0),
                                                                               ("ok", 16, 0)]
    assert rset["tag"] == "SELECT 3" and rset["captured_rows"] == 3 and rset["truncated"] is False
    assert rows_of(select) == [[["1", "ada", "t"], ["2", None, "f"], ["3", "grace | hopper", None]]]
    check_digest(select)

    # No row at all: the set is there, with its columns and nothing in it (the digest of nothing).
    _, empty = one(records, statements[4])
    assert empty["tags"] == ["SELECT 0"] and empty["rows"] == 0 and rows_of(empty) == [[]]
    assert [c["name"] for c in empty["results"][0]["columns"]] == ["id"]
    check_digest(empty)

    _, multi = one(records, statements[5].replace("\\;", ";"))
    assert multi["status"] == "ok" and multi["tags"] == ["SELECT 1", "SELECT 0", "SELECT 2"] and multi["rows"] == 3
    assert [s["tag"] for s in multi["results"]] == ["SELECT 1", "SELECT 0", "SELECT 2"]
    assert [[c["name"] for c in s["columns"]] for s in multi["results"]] == [["x", "y"], ["?column?"], ["?column?"]]
    assert rows_of(multi) == [[["a", "1"]], [], [["c"], ["d"]]]
    check_digest(multi)

    _, update = one(records, statements[6])
    assert update["tags"] == ["UPDATE 1"] and update["rows"] == 1

    # An error in the middle of a Query: what ran before it is recorded, the rest never ran.
    _, broken = one(records, "select 'before' as b ; select 1/0 ; select 'never';")
    assert broken["status"] == "error" and broken["tags"] == ["SELECT 1"] and broken["error"]["sqlstate"] == "22012"
    assert rows_of(broken)[0] == [["before"]]

    _, failed = one(records, "select 1/0;")
    assert failed["status"] == "error" and failed["tags"] == []
    assert failed["error"] == {"sqlstate": "22012", "message": "division by zero", "detail": None}

    _, answer = one(records, "select 42 as answer;")
    assert rows_of(answer) == [[["42"]]]

    end = records[-1]
    assert end["type"] == "disconnect" and end["statements"] == len(statements) and end["errors"] == 2
    assert end["refused"] == 0


# ---------------------------------------------------------------- psycopg 3


def test_psycopg_params_prepared_pipeline_copy_cursor_and_errors(trail):
    app = "rec-psycopg"
    table = f"rec_pg3_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(trail.dsn(app), autocommit=True) as conn:
        conn.execute(f"create temp table {table} (id int primary key, name text)")
        # Text parameters and text results.
        text_row = conn.execute("select %s::int + 1 as n, %s::text as t", (41, "x")).fetchone()
        assert text_row == (42, "x")
        # Binary parameters (%b) and binary results.
        cur = conn.cursor(binary=True)
        bin_row = cur.execute("select %b::int4 * 2 as n, %b::text || '!' as t, %b as u",
                              (21, "bin", uuid.UUID(int=7))).fetchone()
        assert bin_row == (42, "bin!", uuid.UUID(int=7))
        # A server-side prepared statement, run twice.
        for i in (1, 2):
            assert conn.execute("select %s::int * 10 as p", (i,), prepare=True).fetchone() == (i * 10,)
        # executemany (a pipeline inside) and an explicit pipeline.
        conn.cursor().executemany(f"insert into {table} values (%s, %s)", [(1, "one"), (2, "two"), (3, None)])
        with conn.pipeline():
            conn.execute(f"insert into {table} values (%s, %s)", (4, "four"))
            piped = conn.execute(f"select count(*) from {table}")
        assert piped.fetchone() == (4,)
        # COPY FROM STDIN and COPY TO STDOUT.
        copy_rows = [(10, "ten"), (11, "eleven\ttab"), (12, None)]
        with conn.cursor().copy(f"copy {table} (id, name) from stdin") as copy:
            for row in copy_rows:
                copy.write_row(row)
        out_blocks = []
        with conn.cursor().copy(f"copy (select id, name from {table} where id >= 10 order by id) to stdout") as copy:
            for block in copy:
                out_blocks.append(bytes(block))
        assert b"".join(out_blocks) == b"10\tten\n11\televen\\ttab\n12\t\\N\n"
        # A named (server-side) cursor: DECLARE, then FETCH.
        with conn.transaction():
            with conn.cursor("rec_cursor") as named:
                named.execute(f"select id, name from {table} order by id")
                assert named.fetchmany(2) == [(1, "one"), (2, "two")]
        with pytest.raises(errors.DivisionByZero):
            conn.execute("select 1 / %s::int", (0,))
        with pytest.raises(errors.InvalidTextRepresentation):
            conn.execute("select %s::int as bad", ("abc",))
        # In a pipeline, what follows an error in the same request is discarded by PostgreSQL.
        with pytest.raises(errors.DivisionByZero):
            with conn.pipeline():
                conn.execute("select %s::text as fine", ("fine",))
                conn.execute("select %s::int / (g - 1) from generate_series(1, 1) g", (1,))
                conn.execute("select %s::text as never", ("never",))
        assert conn.execute("select 'still usable'").fetchone() == ("still usable",)

    records = trail.session(app)
    for stmt, result in pairs(records):
        assert result is not None, stmt
        # psycopg sends a statement without parameters as a simple Query.
        assert (stmt["protocol"], stmt["kind"]) in (("simple", "query"), ("extended", "parse"),
                                                    ("extended", "execute")), stmt

    # Text parameters: recorded as text, the result's columns described in the same request.
    (parse, _), (ex, res) = by_text(records, "select $1::int + 1 as n, $2::text as t")
    assert parse["kind"] == "parse" and ex["kind"] == "execute" and ex["n"] > parse["n"]
    assert parse["request"] == ex["request"] and ex["portal_name"] == "" and parse["param_types"]
    assert ex["params"] == ["41", "x"]
    assert res["status"] == "ok" and res["tags"] == ["SELECT 1"] and rows_of(res) == [[["42", "x"]]]
    assert [c["name"] for c in res["results"][0]["columns"]] == ["n", "t"]
    check_digest(res)

    # Binary parameters decoded to text; binary results decoded with their types.
    (_, _), (ex, res) = by_text(records, "select $1::int4 * 2 as n, $2::text || '!' as t, $3 as u")
    assert ex["params"] == ["21", "bin", str(uuid.UUID(int=7))]
    (rset,) = res["results"]
    assert [c["format"] for c in rset["columns"]] == [1, 1, 1]
    assert rows_of(res) == [[["42", "bin!", str(uuid.UUID(int=7))]]]
    check_digest(res)

    # Prepared: one Parse of a named statement, two Executes of it.
    prepared = by_text(records, "select $1::int * 10 as p")
    assert [s["kind"] for s, _ in prepared] == ["parse", "execute", "execute"]
    name = prepared[0][0]["statement_name"]
    assert name and all(s["statement_name"] == name for s, _ in prepared)
    assert [s["params"] for s, _ in prepared[1:]] == [["1"], ["2"]]
    assert [rows_of(r) for _, r in prepared[1:]] == [[[["10"]]], [[["20"]]]]

    # executemany and the pipeline: every row inserted is an Execute with its parameters.
    inserts = [(s, r) for s, r in by_text(records, f"insert into {table} values ($1, $2)") if s["kind"] == "execute"]
    assert [s["params"] for s, _ in inserts] == [["1", "one"], ["2", "two"], ["3", None], ["4", "four"]]
    assert all(r["status"] == "ok" and r["tags"] == ["INSERT 0 1"] for _, r in inserts)
    (_, _), (_, count) = by_text(records, f"select count(*) from {table}")
    assert rows_of(count) == [[["4"]]]

    # COPY volumes: what went each way, in CopyData messages (5-byte headers included).
    copy_in = one(records, f"copy {table} (id, name) from stdin")[1]
    assert copy_in["tags"] == ["COPY 3"] and copy_in["rows"] == 3
    assert copy_in["copy"]["direction"] == "in"
    payload = b"10\tten\n11\televen\\ttab\n12\t\\N\n"
    messages = copy_in["copy"]["messages"]
    assert messages >= 1 and copy_in["copy"]["bytes"] == len(payload) + 5 * messages
    copy_out = one(records, f"copy (select id, name from {table} where id >= 10 order by id) to stdout")[1]
    assert copy_out["tags"] == ["COPY 3"] and copy_out["copy"]["direction"] == "out"
    assert copy_out["copy"]["bytes"] == sum(len(b) + 5 for b in out_blocks)
    assert copy_out["copy"]["messages"] == len(out_blocks)
    assert copy_out["result_bytes"] == copy_out["copy"]["bytes"]
    expected = b"".join(b"d" + struct.pack("!i", len(b) + 4) + b for b in out_blocks)
    assert copy_out["sha256"] == hashlib.sha256(expected).hexdigest()

    # The named cursor: DECLARE (extended, in a transaction), then a FETCH whose rows are recorded.
    texts = [s["text"] for s, _ in pairs(records)]
    declare = f'DECLARE "rec_cursor" CURSOR FOR select id, name from {table} order by id'
    begin = texts.index("BEGIN")
    assert texts[begin : begin + 6] == [
        "BEGIN", declare, declare, 'FETCH FORWARD 2 FROM "rec_cursor"', 'CLOSE "rec_cursor"', "COMMIT"]
    assert one(records, declare, "execute")[1]["tags"] == ["DECLARE CURSOR"]
    _, fetch = one(records, 'FETCH FORWARD 2 FROM "rec_cursor"')
    assert fetch["tags"] == ["FETCH 2"] and fetch["txn"] == "T"
    assert rows_of(fetch) == [[["1", "one"], ["2", "two"]]]
    check_digest(fetch)

    # Errors, with SQLSTATE and message. PostgreSQL raises these two while binding (planning
    # folds 1/$1; 'abc' does not convert to int4): the error belongs to the Execute of that
    # portal, not "skipped" with no SQLSTATE anywhere.
    (_, _), (ex, err) = by_text(records, "select 1 / $1::int")
    assert ex["params"] == ["0"]
    assert err["status"] == "error" and err["error"]["sqlstate"] == "22012"
    assert err["error"]["message"] == "division by zero" and "results" not in err
    (_, _), (ex, err) = by_text(records, "select $1::int as bad")
    assert ex["params"] == ["abc"]
    assert err["status"] == "error" and err["error"]["sqlstate"] == "22P02"
    assert err["error"]["message"] == 'invalid input syntax for type integer: "abc"'
    (_, _), (_, fine) = by_text(records, "select $1::text as fine")
    (_, _), (_, failing) = by_text(records, "select $1::int / (g - 1) from generate_series(1, 1) g")
    (_, _), (_, never) = by_text(records, "select $1::text as never")
    assert fine["status"] == "ok" and rows_of(fine) == [[["fine"]]]
    assert failing["status"] == "error" and failing["error"]["sqlstate"] == "22012"
    assert never["status"] == "skipped" and never["tags"] == [] and "error" not in never
    assert records[-1]["type"] == "disconnect" and records[-1]["errors"] == 3


# ---------------------------------------------------------------- asyncpg


@pytest.mark.skipif(asyncpg is None, reason="asyncpg is not installed")
def test_asyncpg_binary_params_and_results(trail):
    app = "rec-asyncpg"
    value = uuid.UUID("12345678-1234-5678-1234-567812345678")

    async def main():
        conn = await asyncpg.connect(host=trail.gw.host, port=trail.gw.port, user=GW_USER, password=GW_PASSWORD,
                                     database="app", ssl=False, server_settings={"application_name": app})
        try:
            rows = await conn.fetch("select $1::int4 + 1 as a, upper($2::text) as b, $3::uuid as c, null::int as d",
                                    41, "hi", value)
            row = rows[0]
            again = await conn.fetchrow("select $1::int4 + 1 as a, upper($2::text) as b, $3::uuid as c, null::int as d",
                                        1, "again", value)
            return tuple(row), tuple(again)
        finally:
            await conn.close()

    row, again = asyncio.run(main())
    assert row == (42, "HI", value, None) and again == (2, "AGAIN", value, None)

    records = trail.session(app)
    text = "select $1::int4 + 1 as a, upper($2::text) as b, $3::uuid as c, null::int as d"
    found = by_text(records, text)
    # asyncpg prepares once (Parse without parameter types, Describe), then binds and executes.
    assert [s["kind"] for s, _ in found] == ["parse", "execute", "execute"]
    assert found[0][0]["statement_name"] and found[0][0]["statement_name"] == found[1][0]["statement_name"]
    executes = found[1:]
    # Binary parameters, decoded with the types PostgreSQL described (the Parse gave none).
    assert [s["params"] for s, _ in executes] == [["41", "hi", str(value)], ["1", "again", str(value)]]
    assert [s["param_types"] for s, _ in executes] == [[23, 25, 2950]] * 2
    (_, fetched), (_, fetched_row) = executes
    assert fetched["status"] == "ok" and fetched["tags"] == ["SELECT 1"] and fetched["rows"] == 1
    # fetchrow() executes with a row limit of 1: PortalSuspended, no command tag.
    assert fetched_row["status"] == "ok" and fetched_row["tags"] == []
    for res in (fetched, fetched_row):
        (rset,) = res["results"]
        assert rset["captured_rows"] == 1 and rset["truncated"] is False
        check_digest(res)
    # The first run's request held the Describe (Parse, Describe, Flush, Bind, Execute, Sync):
    # columns with the Bind's binary formats (the Describe of a statement says text), decoded.
    (rset,) = fetched["results"]
    assert [(c["name"], c["type"], c["format"]) for c in rset["columns"]] == [
        ("a", 23, 1), ("b", 25, 1), ("c", 2950, 1), ("d", 23, 1)]
    assert rset["formats"] == [1, 1, 1, 1]
    assert rows_of(fetched) == [[["42", "HI", str(value), None]]]
    # The second run is Bind, Execute, Sync: no columns, the Bind's result formats; binary
    # values without their types are shown as hex (the bytes are still exactly those sent).
    (rset,) = fetched_row["results"]
    assert rset["columns"] is None and rset["formats"] == [1]
    decoded = decode_result_set(rset)
    assert decoded.problems == [] and not decoded.described
    a, b, c, d = decoded.rows[0]
    assert a == "\\x" + struct.pack("!i", 2).hex() and b == "\\x" + b"AGAIN".hex()
    assert c == "\\x" + value.hex and d is None


# ---------------------------------------------------------------- refusals


def test_refused_statement_is_recorded_and_session_stays_usable(trail):
    app = "rec-refusal"
    with psycopg.connect(trail.dsn(app), autocommit=True) as conn:
        with pytest.raises(errors.InsufficientPrivilege) as info:
            conn.execute("DROP TABLE rec_not_there")
        assert "dangerous.drop" in info.value.diag.message_primary
        assert conn.execute("select 'after'").fetchone() == ("after",)
        with pytest.raises(errors.InsufficientPrivilege) as info2:  # the extended protocol: a refused Parse
            conn.execute("TRUNCATE rec_not_there", prepare=True)
        assert "dangerous.truncate" in info2.value.diag.message_primary
        assert conn.execute("select %s::text as again", ("again",)).fetchone() == ("again",)

    records = trail.session(app)
    refused = by_text(records, "DROP TABLE rec_not_there")
    assert refused
    stmt, res = refused[0]
    assert stmt["decision"]["action"] == "deny" and stmt["decision"]["rule"] == "dangerous.drop"
    assert stmt["decision"]["message"] == info.value.diag.message_primary
    assert res["status"] == "denied" and res["error"]["rule"] == "dangerous.drop"
    assert res["error"]["sqlstate"] == "42501" and res["error"]["message"] == info.value.diag.message_primary
    _, after = one(records, "select 'after'")
    assert after["status"] == "ok" and rows_of(after) == [[["after"]]]
    found = by_text(records, "TRUNCATE rec_not_there")
    assert [s["kind"] for s, _ in found] == ["parse"]  # PostgreSQL discards the rest of the request
    stmt, res = found[0]
    assert stmt["protocol"] == "extended" and stmt["statement_name"]
    assert stmt["decision"]["action"] == "deny" and stmt["decision"]["rule"] == "dangerous.truncate"
    assert res["status"] == "denied" and res["error"]["rule"] == "dangerous.truncate"
    (_, _), (_, again) = by_text(records, "select $1::text as again")
    assert again["status"] == "ok" and rows_of(again) == [[["again"]]]
    end = records[-1]
    assert end["type"] == "disconnect" and end["refused"] == 2 and end["errors"] == 0
    assert end["statements"] == 5


# ---------------------------------------------------------------- the result cap


def test_result_cap_keeps_max_rows_and_digests_everything(trail, pg):
    app = "rec-cap"
    query = "select g, repeat('x', g) as pad from generate_series(1, 100) g"
    r = psql(pg, trail.dsn(app), "-At", "-c", query)
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.splitlines()) == 100

    records = trail.session(app)
    _, res = one(records, query)
    assert res["tags"] == ["SELECT 100"] and res["rows"] == 100
    (rset,) = res["results"]
    assert rset["captured_rows"] == MAX_ROWS and rset["truncated"] is True
    assert rows_of(res) == [[[str(g), "x" * g] for g in range(1, MAX_ROWS + 1)]]
    kept = base64.b64decode(rset["data"])
    assert rset["kept_bytes"] == len(kept)
    # The digest and size cover all 100 rows the client received, not only the kept ones.
    every = b"".join(datarow(str(g).encode(), b"x" * g) for g in range(1, 101))
    assert kept == every[: len(kept)]
    assert res["result_bytes"] == len(every) > len(kept)
    assert res["sha256"] == hashlib.sha256(every).hexdigest() != hashlib.sha256(kept).hexdigest()


def test_large_results_and_copy_span_many_reads(trail):
    """Results far larger than one read: rows and CopyData cut across chunks, past max_bytes too."""
    app = "rec-large"
    count = 40000
    query = "select g, repeat('y', 20 + mod(g, 17)) as pad from generate_series(1, %s) g"
    with psycopg.connect(trail.dsn(app), autocommit=True) as conn:
        assert len(conn.execute(query, (count,)).fetchall()) == count
        with conn.cursor().copy(f"copy ({query.replace('%s', str(count))}) to stdout") as copy:
            blocks = [bytes(b) for b in copy]

    values = [(str(g).encode(), b"y" * (20 + g % 17)) for g in range(1, count + 1)]
    records = trail.session(app)
    (_, _), (_, res) = by_text(records, query.replace("%s", "$1"))
    every = b"".join(datarow(*v) for v in values)
    assert len(every) > 1024 * 1024  # beyond audit.results.max_bytes as well
    assert res["tags"] == [f"SELECT {count}"] and res["result_bytes"] == len(every)
    assert res["sha256"] == hashlib.sha256(every).hexdigest()
    (rset,) = res["results"]
    assert rset["captured_rows"] == MAX_ROWS and rset["truncated"] is True
    assert base64.b64decode(rset["data"]) == b"".join(datarow(*v) for v in values[:MAX_ROWS])

    _, copied = one(records, f"copy ({query.replace('%s', str(count))}) to stdout")
    sent = b"".join(b"d" + struct.pack("!i", len(b) + 4) + b for b in blocks)
    assert b"".join(blocks) == b"".join(b"%s\t%s\n" % v for v in values)
    assert copied["copy"] == {"direction": "out", "bytes": len(sent), "messages": len(blocks)}
    assert copied["result_bytes"] == len(sent) and copied["sha256"] == hashlib.sha256(sent).hexdigest()
    assert "results" not in copied


# ---------------------------------------------------------------- sessions: connect, auth, TLS, tokens, cancel


def test_connect_auth_disconnect_with_and_without_tls(trail):
    with psycopg.connect(trail.dsn("rec-plain"), autocommit=True) as conn:
        conn.execute("select 1")
        with socket.socket(fileno=os.dup(conn.fileno())) as sock:
            local = "%s:%s" % sock.getsockname()[:2]
    with psycopg.connect(trail.dsn("rec-tls", sslmode="require"), autocommit=True) as conn:
        conn.execute("select 1")

    plain = trail.session("rec-plain")
    connect = plain[0] if plain[0]["type"] == "connect" else next(r for r in plain if r["type"] == "connect")
    assert connect["user"] == GW_USER and connect["target"] == "app" and connect["tls"] is None
    assert connect["client"] == local  # the client's own address and port
    assert connect["application_name"] == "rec-plain" and connect["startup"]["application_name"] == "rec-plain"
    assert connect["identity"] is None and connect["gateway"] == trail.gw.gateway.gateway_id
    auth = [r for r in plain if r["type"] == "auth"]
    assert len(auth) == 1 and auth[0]["outcome"] == "ok" and auth[0]["user"] == GW_USER
    assert auth[0]["client"] == connect["client"] and auth[0]["tls"] is None and auth[0]["reason"] is None
    assert auth[0]["method"] == "scram-sha-256" and auth[0]["seq"] < connect["seq"]
    end = plain[-1]
    assert end["type"] == "disconnect" and end["statements"] == 1 and end["refused"] == end["errors"] == 0
    assert end["reason"] == "client sent Terminate" and end["duration_s"] >= 0

    # A client that goes away without a Terminate message.
    conn = psycopg.connect(trail.dsn("rec-drop"), autocommit=True)
    conn.execute("select 1")
    sock = socket.socket(fileno=os.dup(conn.fileno()))
    sock.shutdown(socket.SHUT_RDWR)
    sock.close()
    dropped = trail.session("rec-drop")
    assert dropped[-1]["type"] == "disconnect" and dropped[-1]["reason"] == "client disconnected"
    assert dropped[-1]["statements"] == 1
    conn.close()

    tls = trail.session("rec-tls")
    connect = next(r for r in tls if r["type"] == "connect")
    assert connect["tls"] and connect["tls"].split()[0] in ("TLSv1.2", "TLSv1.3")
    auth = next(r for r in tls if r["type"] == "auth")
    assert auth["tls"] == connect["tls"]


def test_token_login_records_the_identity(trail):
    token = trail.issuer.mint("rec-agent", groups=("agents",), ttl=300)
    dsn = trail.gw.dsn("rec-agent", token, sslmode="require", application_name="rec-token")
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute("select current_setting('transaction_read_only')").fetchone() == ("on",)

    records = trail.session("rec-token")
    connect = next(r for r in records if r["type"] == "connect")
    assert connect["user"] == "rec-agent"
    identity = connect["identity"]
    assert identity["subject"] == "rec-agent" and identity["roles"] == ["agent"]
    assert identity["issuer"] == trail.issuer.issuer and identity["access"] == "read" and identity["method"]
    auth = next(r for r in records if r["type"] == "auth")
    assert auth["outcome"] == "ok" and auth["subject"] == "rec-agent" and auth["roles"] == ["agent"]
    assert auth["method"] == identity["method"] and auth["access"] == "read"

    # A refused token login: an auth record with the reason (the client only learns that it failed).
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(trail.gw.dsn("rec-agent", "not-a-token", sslmode="require", application_name="rec-badtoken"))
    deadline = time.monotonic() + 10
    while True:
        refused = [r for r in trail.records() if r["type"] == "auth" and r["outcome"] == "refused"
                   and r["user"] == "rec-agent"]
        if refused or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert refused and refused[-1]["reason"]


def test_cancel_request_is_recorded(trail):
    app = "rec-cancel"
    with psycopg.connect(trail.dsn(app), autocommit=True) as conn:
        timer = threading.Timer(0.5, conn.cancel_safe)
        timer.start()
        started = time.monotonic()
        with pytest.raises(errors.QueryCanceled):
            conn.execute("select pg_sleep(20)")
        timer.join()
        assert time.monotonic() - started < 10
        assert conn.execute("select 1").fetchone() == (1,)

    records = trail.session(app)
    cancels = [r for r in records if r["type"] == "cancel"]
    assert len(cancels) == 1 and cancels[0]["held"] is False and cancels[0]["client"]
    stmt, res = one(records, "select pg_sleep(20)")
    assert cancels[0]["seq"] > stmt["seq"]
    assert res["status"] == "error" and res["error"]["sqlstate"] == "57014"


# ---------------------------------------------------------------- the CLI on the trail


def test_cli_verify_and_replay_after_shutdown(trail, pg, tmp_path):
    app = "rec-cli"
    script = ("select 42 as answer;\n"
              "select g, 'row ' || g as label from generate_series(1, 3) g;\n"
              "copy (select g from generate_series(1, 4) g) to stdout;\n"
              "select 1/0;\n")
    r = psql(pg, trail.dsn(app), "-f", "-", stdin=script)
    assert r.returncode == 0, r.stderr
    records = trail.session(app)
    session_id = records[0]["session"]
    trail.gw.stop()  # the last test: a shutdown checkpoint signs the whole trail
    config = tmp_path / "pgwarden.yaml"
    config.write_text(yaml.safe_dump(trail.config))
    cmd = [sys.executable, "-m", "pgwarden"]

    verify = subprocess.run([*cmd, "audit", "verify", "-c", str(config), "--json"], capture_output=True, text=True,
                            timeout=TIMEOUT)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    report = json.loads(verify.stdout)
    everything = trail.records()
    assert report["ok"] and report["problems"] == [] and report["records"] == len(everything)
    assert report["unsigned_tail"] is None and report["checkpoints_checked"] >= 2
    assert everything[-1]["type"] == "audit" and everything[-1]["event"] == "stopped"

    replay = subprocess.run([*cmd, "sessions", "replay", session_id, "-c", str(config)], capture_output=True,
                            text=True, timeout=TIMEOUT)
    assert replay.returncode == 0, replay.stderr
    shown = replay.stdout
    assert "select 42 as answer;" in shown and "(1 row)" in shown and "(3 rows)" in shown
    # psql's own tables, as the replay rebuilds them from the recorded rows
    for line in r.stdout.splitlines():
        if "|" in line or line.strip().startswith(("answer", "42", "row")):
            assert line.rstrip() in shown, line
    assert "-- COPY out: 28 bytes in 4 messages" in shown  # 4 x (5-byte header + "N\n")
    assert "ERROR:  division by zero" in shown and "[undecodable]" not in shown

    listed = subprocess.run([*cmd, "sessions", "list", "--json", "-c", str(config)], capture_output=True, text=True,
                            timeout=TIMEOUT)
    assert listed.returncode == 0, listed.stderr
    summary = {s["id"]: s for s in json.loads(listed.stdout)}
    assert set(summary) == {r["session"] for r in everything if r["type"] == "connect"}
    ended = records[-1]
    mine = summary[session_id]
    assert (mine["application_name"], mine["statements"], mine["errors"], mine["end_reason"]) == (
        app, ended["statements"], ended["errors"], ended["reason"]) == (app, 4, 1, "client sent Terminate")
