"""Masking on the wire, with real clients: every result path, exact masked values, clients parse them.

The database (tests/masking_env.py) holds three customers with known emails,
SSNs and card numbers. ``agent`` sees them redacted (cards tokenized),
``developer`` partially, ``dba`` in clear. Each test asserts what the client
received, byte for byte where it matters, and that it parsed.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time

import psycopg
import pytest
from psycopg import errors

from masking_env import CUSTOMERS, leaks, masking_gateway
from pgwarden.policy.masking.detectors import luhn_valid


@pytest.fixture(scope="module")
def env(pg, tmp_path_factory):
    with masking_gateway(pg, tmp_path_factory.mktemp("masking"), audit=True) as env:
        yield env


def rows(env, role: str, sql: str, params=None, **kw):
    with env.connect(role) as conn:
        with conn.cursor(**kw) as cur:
            cur.execute(sql, params)
            return cur.fetchall()


# ---------------------------------------------------------------- columns, roles, strategies


def test_agent_sees_redacted_and_tokenized_values(env):
    got = rows(env, "agent", "SELECT id, full_name, email, ssn, card_number, phone FROM customers ORDER BY id")
    assert [r[:4] for r in got] == [(1, "Alice Archer", "****", "****"), (2, "Bob Brown", "****", "****"),
                                     (3, "Carol Chen", "****", "****")]
    cards = [r[4] for r in got]
    for token, original in zip(cards, [c[5] for c in CUSTOMERS]):
        assert token != original and len(token) == len(original) and token.isdigit() and luhn_valid(token)
    # Deterministic: the same value gives the same token in the next session.
    again = rows(env, "agent", "SELECT card_number FROM customers ORDER BY id")
    assert [r[0] for r in again] == cards
    assert [r[5] for r in got] == ["+* ***-***-0101", "+* ***-***-0199", "+** ** **** 0958"]
    assert not leaks(got)


def test_developer_sees_partial_values_and_dba_sees_everything(env):
    dev = rows(env, "developer", "SELECT email, ssn, card_number, balance FROM customers ORDER BY id")
    assert dev[0][:3] == ("****@example.com", "***-**-6789", "************1111")
    assert dev[1][0] == "****@corp.example.org"
    assert str(dev[0][3]) == "1200.50"  # rule "money" says none for developer
    assert not leaks(dev)
    dba = rows(env, "dba", "SELECT email, ssn, card_number FROM customers ORDER BY id")
    assert dba == [(c[2], c[4], c[5]) for c in CUSTOMERS]


def test_aliases_and_views_are_masked_like_the_column(env):
    got = rows(env, "agent", "SELECT email AS e, c.ssn AS \"Who\" FROM customers c ORDER BY id")
    assert got[0] == ("****", "****")
    view = rows(env, "agent", "SELECT id, email, email_lower, full_name FROM customer_contacts ORDER BY id")
    assert view[0] == (1, "****", "****", "Alice Archer")
    star = rows(env, "agent", "SELECT * FROM customer_contacts ORDER BY id")
    assert star[0] == (1, "****", "****", "Alice Archer")
    sub = rows(env, "agent", "SELECT s.e FROM (SELECT email AS e FROM customers) s")
    assert {r[0] for r in sub} == {"****"}


def test_non_text_columns_get_type_valid_values_text_and_binary(env):
    text = rows(env, "agent", "SELECT balance, age FROM customers ORDER BY id")
    binary = rows(env, "agent", "SELECT balance, age FROM customers ORDER BY id", binary=True)
    assert [tuple(map(int, r)) for r in text] == [(0, 0)] * 3
    assert [tuple(map(int, r)) for r in binary] == [(0, 0)] * 3
    b = rows(env, "agent", "SELECT email, ssn, card_number FROM customers ORDER BY id", binary=True)
    assert b[0][:2] == ("****", "****") and luhn_valid(b[0][2])


# ---------------------------------------------------------------- lineage


def test_values_computed_from_masked_columns_are_masked_whole(env):
    got = rows(env, "agent", "SELECT lower(email), email || '', substr(ssn, 1, 3), upper(ssn) FROM customers")
    assert {r for r in got} == {("****", "****", "****", "****")}
    agg = rows(env, "agent", "SELECT string_agg(ssn, ','), array_agg(email), count(*) FROM customers")
    assert agg[0][0] == "****" and agg[0][1] is None and agg[0][2] == 3
    js = rows(env, "agent", "SELECT json_build_object('e', email), to_jsonb(o) FROM customers c JOIN orders o "
                            "ON o.customer_id = c.id")
    assert js[0] == ("****", {"id": 1, "total": 10.0, "customer_id": 1})  # a JSON string: valid JSON, parsed
    assert not leaks(got + agg + js)
    # The whole row includes the card number, whose rule refuses derived values.
    with env.connect("agent") as conn:
        with pytest.raises(errors.InsufficientPrivilege) as info:
            conn.execute("SELECT row_to_json(c) FROM customers c")
        assert "masking.card" in info.value.diag.message_primary


def test_derived_and_filter_rules_refuse(env):
    with env.connect("agent") as conn:
        with pytest.raises(errors.InsufficientPrivilege) as info:
            conn.execute("SELECT substr(card_number, 1, 6) FROM customers")
        assert "masking.card" in info.value.diag.message_primary
        with pytest.raises(errors.InsufficientPrivilege) as info:
            conn.execute("SELECT id FROM customers WHERE ssn LIKE '123%'")
        assert "masked column public.customers.ssn" in info.value.diag.message_primary
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute("SELECT id FROM customers ORDER BY ssn")
        # The session is still usable and a filter on an unmasked column works.
        assert conn.execute("SELECT email FROM customers WHERE id = 2").fetchone() == ("****",)
    # Each refusal is a masking_refused alert (docs/alerts.md), recorded in the trail.
    deadline = time.monotonic() + 10
    while True:
        alerts = [r for r in trail_records(env) if r["type"] == "alert" and r["kind"] == "masking_refused"]
        if alerts or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert alerts and alerts[0]["severity"] == "warning" and alerts[0]["rule"].startswith("masking.")


def test_writes_of_masked_values_and_statistics_are_refused(env):
    with env.connect("developer") as conn:
        with pytest.raises(errors.InsufficientPrivilege) as info:
            conn.execute("CREATE TABLE stolen AS SELECT email FROM customers")
        assert "masking.email" in info.value.diag.message_primary
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute("INSERT INTO orders SELECT 100 + id, id, length(ssn) FROM customers")
        with pytest.raises(errors.InsufficientPrivilege) as info:
            conn.execute("SELECT most_common_vals FROM pg_stats WHERE tablename = 'customers'")
        assert "masking.statistics" in info.value.diag.message_primary


def test_unknown_lineage_runs_detectors(env):
    # (The agent's read-only pack refuses user functions; the developer may call them.)
    got = rows(env, "developer", "SELECT * FROM notes_with_contact()")
    assert got[0][0] == "prefers email (****)"
    assert not leaks(got)


# ---------------------------------------------------------------- result paths


def test_extended_protocol_prepared_statements_and_binary(env):
    with env.connect("agent", prepare_threshold=0) as conn:
        for _ in range(3):  # prepared server-side after the first
            cur = conn.execute("SELECT email, ssn, age FROM customers WHERE id = %s", (1,), binary=True)
            assert cur.fetchone() == ("****", "****", 0)


def test_asyncpg_binary_results(env):
    asyncpg = pytest.importorskip("asyncpg")

    async def run():
        conn = await asyncpg.connect(**env.asyncpg_args("agent"))
        try:
            stmt = await conn.prepare("SELECT id, email, ssn, card_number, balance, age FROM customers ORDER BY id")
            first = await stmt.fetch()
            second = await stmt.fetch()
            one = await conn.fetchrow("SELECT lower(email) AS l, phone FROM customers WHERE id = $1", 2)
            return first, second, one
        finally:
            await conn.close()

    first, second, one = asyncio.run(run())
    assert [tuple(r) for r in first] == [tuple(r) for r in second]
    assert first[0]["email"] == "****" and first[0]["ssn"] == "****" and first[0]["age"] == 0
    assert int(first[0]["balance"]) == 0 and luhn_valid(first[0]["card_number"])
    assert one["l"] == "****" and one["phone"] == "+* ***-***-0199"
    assert not leaks([tuple(r) for r in first] + [tuple(one)])


def test_cursors_fetch_masked_rows(env):
    with env.connect("agent", autocommit=False) as conn:
        conn.execute("DECLARE c CURSOR FOR SELECT id, lower(email) AS e, ssn FROM customers ORDER BY id")
        assert conn.execute("FETCH 2 FROM c").fetchall() == [(1, "****", "****"), (2, "****", "****")]
        assert conn.execute("FETCH NEXT FROM c").fetchall() == [(3, "****", "****")]
        conn.execute("CLOSE c")
        conn.execute("DECLARE b BINARY CURSOR FOR SELECT email FROM customers")
        got = conn.execute("FETCH ALL FROM b").fetchall()
        assert {bytes(r[0]) if isinstance(r[0], (bytes, memoryview)) else r[0] for r in got} <= {"****", b"****"}
    with env.connect("agent") as conn:  # a named server-side cursor (psycopg)
        with conn.transaction():
            with conn.cursor(name="srv") as cur:
                cur.execute("SELECT ssn FROM customers")
                assert {r[0] for r in cur.fetchall()} == {"****"}


def test_returning_is_masked(env):
    with env.connect("developer") as conn:
        got = conn.execute("UPDATE customers SET note = note WHERE id = 1 RETURNING ssn, email").fetchone()
        assert got == ("***-**-6789", "****@example.com")


def test_copy_to_stdout_text_csv_binary(env):
    with env.connect("agent") as conn:
        with conn.cursor() as cur:
            with cur.copy("COPY customers (id, email, ssn) TO STDOUT") as copy:
                text = b"".join(bytes(b) for b in copy)
            assert sorted(text.decode().splitlines()) == ["1\t****\t****", "2\t****\t****", "3\t****\t****"]
            with cur.copy("COPY (SELECT id, lower(email) FROM customers ORDER BY id) TO STDOUT WITH (FORMAT csv, HEADER)") as copy:
                csv = b"".join(bytes(b) for b in copy).decode()
            assert csv.splitlines() == ["id,lower", "1,****", "2,****", "3,****"]
            with cur.copy("COPY customers (id, ssn, age) TO STDOUT (FORMAT binary)") as copy:
                copy.set_types(["int4", "text", "int4"])
                got = list(copy.rows())
            assert sorted(got) == [(1, "****", 0), (2, "****", 0), (3, "****", 0)]
        with pytest.raises(errors.InsufficientPrivilege) as info:
            conn.execute("COPY customers TO STDOUT")
        assert "masking.card" in info.value.diag.message_primary


def test_errors_and_notices_do_not_echo_values(env):
    with env.connect("agent") as conn:
        with pytest.raises(errors.InvalidTextRepresentation) as info:
            conn.execute("SELECT ssn::int FROM customers")
        assert not leaks([str(info.value), info.value.diag.message_primary, info.value.diag.message_detail])
        assert conn.execute("SELECT 1").fetchone() == (1,)
    with env.connect("developer") as conn:
        notices = []
        conn.add_notice_handler(lambda d: notices.append(d.message_primary))
        # A function of the database raises a notice with an email in it: detectors scrub it.
        conn.execute("SELECT shout('write to alice.archer@example.com')")
        assert notices == ["value: write to ****"]
        # Masked values may not be handed to such a function at all.
        with pytest.raises(errors.InsufficientPrivilege) as info:
            conn.execute("SELECT shout(email) FROM customers WHERE id = 1")
        assert "masking.functions" in info.value.diag.message_primary


def test_multi_statement_simple_query_and_union(env):
    with env.connect("agent") as conn:
        cur = conn.execute("SELECT 1 AS one; SELECT email FROM customers WHERE id = 1")
        # A string of several statements that reads masked columns is planned from each
        # RowDescription alone (counting results can be fooled): columns without an origin
        # are masked whole, even the constant. Sent on its own, it is not.
        assert cur.fetchall() == [(0,)]
        assert cur.nextset() and cur.fetchall() == [("****",)]
        assert conn.execute("SELECT 1 AS one").fetchall() == [(1,)]
        cur = conn.execute("SELECT 1 AS one; SELECT full_name FROM customers WHERE id = 1")
        assert cur.fetchall() == [(1,)] and cur.nextset() and cur.fetchall() == [("Alice Archer",)]
        # A column that is a masked column in one branch only is not "the column": masked whole.
        got = conn.execute("SELECT email FROM customers UNION ALL SELECT 'plain'").fetchall()
        assert [r[0] for r in got] == ["****"] * 4
        got = conn.execute("SELECT email FROM customers UNION SELECT email FROM customers").fetchall()
        assert [r[0] for r in got] == ["****"] * len(got)


def test_psql_output_is_masked(env, pg):
    psql = pg._psql_program()
    out = subprocess.run(
        [str(psql), "-X", "-A", "-t", "-c", "SELECT email, ssn FROM customers ORDER BY id", env.dsn("agent")],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["****|****"] * 3


# ---------------------------------------------------------------- catalog changes and evidence


def test_new_view_is_masked_after_ddl(env, pg):
    pg.psql("CREATE OR REPLACE VIEW public.fresh AS SELECT ssn AS x FROM customers", user="app", database="maskdb")
    try:
        got = rows(env, "agent", "SELECT x FROM fresh")
        assert {r[0] for r in got} == {"****"}
    finally:
        pg.psql("DROP VIEW public.fresh", user="app", database="maskdb")


def trail_records(env) -> list[dict]:
    from pgwarden.store.sqlite import SqliteAuditStore

    env.gw.call(env.gw.gateway.audit_writer.flush)
    store = SqliteAuditStore(env.config.audit.store.path)
    store.open_sync(create=False)

    async def collect():
        try:
            return [r.body async for r in store.records()]
        finally:
            await store.close()

    return [json.loads(body) for body in asyncio.run(collect())]


def test_recording_keeps_what_the_client_saw_and_names_the_rules(env):
    from pgwarden.store.decode import decode_result_set

    with env.connect("agent", application_name="evidence") as conn:
        conn.execute("SELECT id, email, ssn FROM customers ORDER BY id").fetchall()
    deadline = time.monotonic() + 10
    while True:  # the trail's reader sees the journal's records once loaded (every 50 ms)
        records = trail_records(env)
        ids = [r["session"] for r in records if r["type"] == "connect" and r.get("application_name") == "evidence"]
        if ids and records[-1]["type"] == "disconnect" and any(r["session"] == ids[0] for r in records[-1:]):
            break
        assert time.monotonic() < deadline, "the evidence session did not reach the trail"
        time.sleep(0.05)
    records = [r for r in records if r["session"] == ids[0]]
    results = [r for r in records if r.get("type") == "result" and r.get("masked")]
    record = next(r for r in reversed(results) if any(m.get("rule") == "ssn" for m in r["masked"]))
    by_column = {m["column"]: m for m in record["masked"]}
    assert by_column["email"]["rule"] == "email" and by_column["email"]["values"] == 3
    assert by_column["ssn"]["source"] == "public.customers.ssn" and by_column["ssn"]["strategy"] == "redact"
    decoded = decode_result_set(record["results"][0])
    assert decoded.rows == [["1", "****", "****"], ["2", "****", "****"], ["3", "****", "****"]]
    assert not leaks(json.dumps(records))
    # The replay shows the client's view and says what was masked.
    import pgwarden.cli.main  # noqa: F401 - the CLI package in its import order
    from pgwarden.cli.sessions import replay_lines
    from pgwarden.services.sessions import load_transcript, open_reader

    from pgwarden.services.sessions import SessionsError

    async def transcript():
        while True:  # the session index is written when the journal is loaded (every 50 ms)
            try:
                async with open_reader(env.config) as store:
                    return await load_transcript(store, ids[0])
            except SessionsError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)

    deadline = time.monotonic() + 10
    text = "\n".join(line for _, lines in replay_lines(asyncio.run(transcript())) for line in lines)
    assert " 1 | ****  | ****" in text
    assert "-- masked by pgwarden: email (redact, rule email, 3 values); ssn (redact, rule ssn, 3 values)" in text


def test_sql_execute_of_a_protocol_prepared_statement(env):
    """Parse names share PREPARE's namespace, but what a protocol name means is the relay's (corrected
    from PostgreSQL's answers), not the SQL policy's: SQL EXECUTE of a Parse'd statement is refused, so
    nothing unmasked can come of it."""
    with env.connect("agent", prepare_threshold=0) as conn:
        conn.execute("SELECT substr(ssn, 1, 3) AS p, email FROM customers WHERE id = %s", (1,)).fetchall()
        names = [r[0] for r in conn.execute("SELECT name FROM pg_prepared_statements WHERE statement LIKE '%substr%'")]
        assert names, "psycopg did not prepare the statement"
        with pytest.raises(psycopg.errors.InvalidSqlStatementName) as info:
            conn.execute(f'EXECUTE "{names[0]}"(1)').fetchall()
        assert "unknown to pgwarden" in info.value.diag.message_primary


def test_a_name_that_may_mean_several_relations_takes_the_strictest(env):
    """The session may be using either search_path: masking assumes the one with masked columns."""
    with env.connect("dba") as dba:  # DDL through pgwarden: the catalog is reloaded
        dba.execute("CREATE SCHEMA app AUTHORIZATION app; CREATE TABLE app.customers (id int, email text);"
                    "INSERT INTO app.customers VALUES (1, 'nobody@app.example')")
    try:
        with env.connect("developer") as conn:
            # "$user" (app) is first in the default search_path: app.customers; after the SET, public's.
            conn.execute("SET search_path = public")
            got = conn.execute("SELECT email FROM customers ORDER BY id").fetchall()
            assert got[0][0] == "****@example.com" and not leaks(got)
    finally:
        with env.connect("dba") as dba:
            dba.execute("DROP SCHEMA app CASCADE")


def test_node_postgres_reads_masked_rows(env):
    import os
    import shutil
    from pathlib import Path

    node = shutil.which("node")
    node_dir = Path(__file__).parent / "node"
    if node is None or not (node_dir / "node_modules" / "pg" / "package.json").is_file():
        pytest.skip("node and the npm package 'pg' (npm install --prefix tests/node) are needed")
    proc = subprocess.run(
        [node, str(node_dir / "masking_check.js")], capture_output=True, text=True, timeout=60,
        env={**os.environ, "PGHOST": "127.0.0.1", "PGPORT": str(env.gw.port), "PGUSER": "mask-agent",
             "PGPASSWORD": env.token("agent"), "PGDATABASE": "mask", "PGSSLMODE": "disable"},
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["simple"] == [{"id": 1, "email": "****", "ssn": "****"}, {"id": 2, "email": "****", "ssn": "****"},
                             {"id": 3, "email": "****", "ssn": "****"}]
    assert out["prepared"] == [{"email": "****", "l": "****", "age": 0}] * 2
    assert luhn_valid(out["array"][0][0]) and out["array"][0][0] != CUSTOMERS[2][5]
    assert out["refused"]["code"] == "42501" and "masking.ssn" in out["refused"]["message"]
    assert out["after"] == [{"one": 1}]


def test_standard_conforming_strings_cannot_be_turned_off(env, pg):
    """With it off, 'a\\'' is one literal to PostgreSQL but a literal and more SQL to the parser."""
    with env.connect("developer") as conn:
        for sql in ("SET standard_conforming_strings = off", "SELECT set_config('standard_conforming_strings', 'off', false)",
                    "SELECT set_config(lower('X.Y'), 'off', false)"):
            with pytest.raises(errors.InsufficientPrivilege) as info:
                conn.execute(sql)
            assert "guardrails.parser_settings" in info.value.diag.message_primary
        got = conn.execute("SELECT 'a\\'' AS a, email FROM customers --'").fetchall()
        assert not leaks(got)
    # Turned off behind pgwarden's back (for the database): sessions are refused, not inspected wrongly.
    pg.psql("ALTER DATABASE maskdb SET standard_conforming_strings = off")
    try:
        with pytest.raises(psycopg.OperationalError) as info:
            env.connect("agent")
        assert "standard_conforming_strings" in str(info.value)
    finally:
        pg.psql("ALTER DATABASE maskdb RESET standard_conforming_strings")
    with env.connect("agent") as conn:
        assert conn.execute("SELECT email FROM customers WHERE id = 1").fetchone() == ("****",)


@pytest.mark.parametrize("meta", ["\\d customers", "\\d+ customers", "\\dt", "\\dv", "\\dp customers", "\\df"])
def test_psql_meta_commands_work_for_a_read_only_masked_role(env, pg, meta):
    """psql's catalog queries (OPERATOR(pg_catalog.~) included) are reads the agent may run."""
    out = subprocess.run([str(pg._psql_program()), "-X", "-c", meta, env.dsn("agent")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "ERROR" not in out.stderr, out.stderr


def test_asyncpg_type_introspection_works_for_a_read_only_masked_role(env):
    asyncpg = pytest.importorskip("asyncpg")

    async def run():
        conn = await asyncpg.connect(**env.asyncpg_args("agent"))
        try:
            return await conn.fetchrow("SELECT ARRAY[id] AS a, int4range(1, id + 1) AS r, interval '1 day' AS i, "
                                       "ARRAY[email] AS e FROM customers WHERE id = 1")
        finally:
            await conn.close()

    row = asyncio.run(run())
    assert row["a"] == [1] and row["r"].upper == 2 and row["e"] is None  # an array of a masked value: NULL
