"""Attacks on masking found by red-teaming it, each a regression test.

Every test is an attempt by a masked role to read the secrets of
tests/masking_env.py; each must end with nothing leaked (values masked, or the
statement refused) and the gateway serving everyone else.
"""

from __future__ import annotations

import asyncio

import psycopg
import pytest
from psycopg import errors

from masking_env import leaks, masking_gateway


@pytest.fixture(scope="module")
def env(pg, tmp_path_factory):
    with masking_gateway(pg, tmp_path_factory.mktemp("masking-attacks")) as env:
        yield env


def received(conn: psycopg.Connection, sql: str) -> list:
    """Everything the client got for ``sql``: rows of every result, or the error's texts."""
    try:
        cur = conn.execute(sql)
        out = []
        while True:
            if cur.description is not None:
                out.append(cur.fetchall())
            if not cur.nextset():
                return out
    except psycopg.Error as exc:
        if conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR:
            conn.execute("ROLLBACK")
        return [str(exc), exc.diag.message_detail, exc.diag.context]


def test_a_failed_prepare_or_declare_does_not_redefine_the_name(env):
    with env.connect("developer") as conn:
        conn.execute("PREPARE q AS SELECT id, email, ssn FROM customers")
        with pytest.raises(errors.DuplicatePreparedStatement):
            conn.execute("PREPARE q AS SELECT 1, 2, 3")
        got = received(conn, "EXECUTE q")
        assert got and not leaks(got)
        conn.execute("DEALLOCATE q")
        conn.execute("PREPARE q AS SELECT 1, 'two', 3")  # now it succeeds: exactly the new meaning
        assert received(conn, "EXECUTE q") == [[(1, "two", 3)]]
    with env.connect("developer") as conn:
        conn.execute("DECLARE h CURSOR WITH HOLD FOR SELECT id, email, ssn FROM customers")
        with pytest.raises(errors.DuplicateCursor):
            conn.execute("DECLARE h CURSOR WITH HOLD FOR SELECT 1, 2, 3")
        got = received(conn, "FETCH ALL FROM h")
        assert len(got[0]) == 3 and not leaks(got)


def test_protocol_execute_of_a_statement_sql_prepared(env):
    with env.connect("agent") as conn:
        conn.execute("PREPARE sq AS SELECT id, email, ssn FROM customers ORDER BY id")
        for fmt in (0, 1):
            result = conn.pgconn.exec_prepared(b"sq", [], result_format=fmt)
            values = [result.get_value(r, c) for r in range(result.ntuples) for c in range(result.nfields)]
            assert result.ntuples == 3 and not leaks(values)


def test_results_of_a_multi_statement_string_keep_their_own_plans(env):
    with env.connect("developer") as conn:
        conn.execute("PREPARE p AS UPDATE orders SET total = total WHERE id = -1")
        got = received(conn, "EXECUTE p; SELECT 'x'::text a, 'y'::text b; SELECT lower(email), ssn || '' FROM customers")
        assert not leaks(got)


def test_copy_with_an_encoding_option_is_refused(env):
    with env.connect("agent") as conn:
        with pytest.raises(errors.InsufficientPrivilege) as info:
            with conn.cursor().copy("COPY (SELECT email FROM customers) TO STDOUT WITH (FORMAT csv, ENCODING 'SJIS')"):
                pass
        assert "masking.copy_encoding" in info.value.diag.message_primary


def test_client_encoding_change_between_two_copies(env):
    with env.connect("agent") as conn:
        with conn.cursor().copy("COPY (SELECT email FROM customers) TO STDOUT") as copy:
            assert not leaks([bytes(b) for b in copy])
        conn.execute("SET client_encoding = 'SJIS'")
        with pytest.raises(errors.InsufficientPrivilege) as info:
            with conn.cursor().copy("COPY (SELECT email FROM customers) TO STDOUT"):
                pass
        assert "masking.copy_encoding" in info.value.diag.message_primary
        conn.execute("SET client_encoding = 'UTF8'")
        assert conn.execute("SELECT 1").fetchone() == (1,)  # the session survived


def test_search_path_and_shadowing_tables(env, pg):
    with env.connect("dba") as dba:
        dba.execute("CREATE SCHEMA app AUTHORIZATION app; CREATE TABLE app.customers (id int, email text, full_name text);"
                    "INSERT INTO app.customers VALUES (1, 'decoy@app.example', 'x')")
    try:
        with env.connect("developer") as conn:
            first = received(conn, "SELECT id, email FROM customers")
            conn.execute("SET search_path = public")
            second = received(conn, "SELECT id, email FROM customers")  # the same text, another table
            view = received(conn, "SELECT * FROM customer_contacts")
            assert not leaks(first + second + view)
        with env.connect("dba") as dba:  # a rename inside a transaction: the catalog is reloaded at COMMIT too
            dba.execute("BEGIN; ALTER TABLE app.customers RENAME TO parked; SELECT 1")
            dba.execute("COMMIT")
        with env.connect("agent") as conn:
            assert not leaks(received(conn, "SELECT id, email, ssn, card_number FROM customers"))
    finally:
        with env.connect("dba") as dba:
            dba.execute("DROP SCHEMA app CASCADE")


def test_masked_values_never_reach_functions_anywhere_in_the_statement(env):
    with env.connect("developer") as conn:
        for sql in (
            "SELECT c.id FROM customers c, LATERAL set_config('my.x', c.ssn, false) s WHERE c.id = 1",
            "SELECT count(*) FROM (SELECT set_config('my.y', string_agg(email, ','), false) FROM customers) t",
            "SELECT id FROM customers WHERE pg_notify('ch', email) IS NULL",
        ):
            with pytest.raises(errors.InsufficientPrivilege) as info:
                conn.execute(sql)
            assert "masking.functions" in info.value.diag.message_primary
        assert not leaks(received(conn, "SELECT current_setting('my.x', true), current_setting('my.y', true)"))


def test_errors_of_statements_that_read_masked_columns_are_withheld(env):
    with env.connect("agent") as conn:
        for sql, state in (
            ("SELECT get_byte('\\x00'::bytea, 1000000000 + replace(ssn, '-', '')::int) FROM customers WHERE id = 2",
             errors.ArraySubscriptError),
            ("SELECT make_time(split_part(ssn, '-', 1)::int, split_part(ssn, '-', 2)::int, "
             "split_part(ssn, '-', 3)::float8) FROM customers WHERE id = 3", errors.DatetimeFieldOverflow),
            ("SELECT translate(ssn, '-', '')::regclass FROM customers", errors.UndefinedTable),
        ):
            try:
                conn.execute(sql).fetchall()
            except psycopg.Error as exc:
                assert isinstance(exc, state), type(exc)
                assert "withheld" in exc.diag.message_primary
                assert not leaks([str(exc), exc.diag.message_detail, exc.diag.context])
            else:
                pytest.fail(f"no error for {sql}")


def test_nested_recursive_queries_do_not_stall_the_gateway(env):
    inner = "SELECT 1"
    for i in range(7):
        inner = (f"WITH RECURSIVE r{i}(c0,c1,c2,c3,c4,c5,c6,c7,c8) AS (SELECT ssn,NULL,NULL,NULL,NULL,NULL,NULL,NULL,NULL "
                 f"FROM customers UNION ALL SELECT c1,c2,c3,c4,c5,c6,c7,c8,c0 FROM r{i} WHERE EXISTS ({inner})) "
                 f"SELECT c0 FROM r{i} LIMIT 0")
    with env.connect("agent") as conn:
        with pytest.raises(errors.StatementTooComplex) as info:
            conn.execute(inner)
        assert "masking.unparsed" in str(info.value.diag.message_detail)


def test_asyncpg_cursor_and_prepared_reuse(env):
    asyncpg = pytest.importorskip("asyncpg")

    async def run():
        conn = await asyncpg.connect(**env.asyncpg_args("agent"))
        try:
            async with conn.transaction():
                rows = [r async for r in conn.cursor("SELECT email, ssn FROM customers", prefetch=1)]
            stmt = await conn.prepare("SELECT ssn FROM customers WHERE id = $1")
            more = [await stmt.fetchval(i) for i in (1, 2, 3)]
            return [tuple(r) for r in rows], more
        finally:
            await conn.close()

    rows, more = asyncio.run(run())
    assert rows == [("****", "****")] * 3 and more == ["****"] * 3


def test_a_sql_cursor_reusing_a_protocol_portal_name(env):
    """CLOSE/DECLARE in SQL can give a protocol portal name a new query the relay never saw."""
    import struct

    from pgwarden.wire import encode
    from rawclient import RawClient

    def message(t: bytes, body: bytes) -> bytes:
        return t + struct.pack("!I", len(body) + 4) + body

    bind = message(b"B", b"c\x00sc\x00" + struct.pack("!hhh", 0, 0, 0))
    execute = message(b"E", b"c\x00" + struct.pack("!I", 0))
    with RawClient("127.0.0.1", env.gw.port) as raw:
        raw.startup({"user": "mask-agent", "database": "mask"})
        assert raw.read_message()[0] == b"R"  # cleartext password request: the token
        raw.send(encode.password_message(env.token("agent")))
        raw.read_until(b"Z")
        raw.query("BEGIN")
        raw.send(encode.parse("sc", "SELECT 1::int, 'x'::text, 'y'::text") + bind + encode.sync())
        raw.read_until(b"Z")
        raw.query("CLOSE c; DECLARE c CURSOR FOR SELECT id, email, ssn FROM customers")
        raw.send(execute + encode.sync())
        replies = raw.read_until(b"Z")
    assert not leaks([body for _, body in replies])


def test_a_large_masked_row_arrives_whole_and_masked(env):
    """A DataRow of several MB spans many reads: collected once (not re-joined per read), then masked."""
    with env.connect("agent") as conn:
        got = conn.execute("SELECT email, repeat('x', 5000000) AS big, ssn FROM customers WHERE id = 1").fetchone()
        assert got[0] == "****" and got[2] == "****" and len(got[1]) == 5_000_000
        with conn.cursor().copy("COPY (SELECT email, repeat('y', 3000000) FROM customers) TO STDOUT") as copy:
            data = b"".join(bytes(b) for b in copy)
        assert data.count(b"****") == 3 and len(data) > 9_000_000 and not leaks([data])


def test_copy_after_a_client_encoding_change_in_the_same_string(env):
    with env.connect("agent") as conn:
        with pytest.raises(errors.InsufficientPrivilege) as info:
            conn.execute("SET client_encoding TO 'SJIS'; COPY (SELECT email FROM customers) TO STDOUT")
        assert "masking.copy_encoding" in info.value.diag.message_primary
        assert conn.execute("SHOW client_encoding").fetchone() == ("UTF8",)  # nothing of it ran


def test_renaming_the_schema_of_masked_tables_is_refused(env):
    with env.connect("developer") as conn:
        with pytest.raises(errors.InsufficientPrivilege) as info:
            conn.execute("ALTER SCHEMA public RENAME TO pub2")
        assert "masking.ddl" in info.value.diag.message_primary


def test_counting_out_values_is_a_filter(env):
    with env.connect("agent") as conn:
        with pytest.raises(errors.InsufficientPrivilege) as info:
            conn.execute("SELECT c.id, (SELECT count(*) FROM generate_series(1, ascii(substr(c.ssn, 1, 1)))) "
                         "FROM customers c")
        assert "masking.ssn" in info.value.diag.message_primary


def test_upsert_with_excluded_is_allowed_for_a_writer(env):
    with env.connect("developer") as conn:
        conn.execute("INSERT INTO customers (id, full_name, email, ssn, card_number) VALUES "
                     "(9, 'Eve', 'eve@x.org', '567-89-1234', '4000000000000010') "
                     "ON CONFLICT (id) DO UPDATE SET email = EXCLUDED.email")
        conn.execute("DELETE FROM customers WHERE id = 9")


def test_a_large_statement_is_analysed_off_the_event_loop_and_masked(env):
    columns = ", ".join(f"email || '{i}' AS c{i}" for i in range(1500))  # about 35 KB
    with env.connect("agent") as conn:
        row = conn.execute(f"SELECT {columns} FROM customers WHERE id = 1").fetchone()
    assert len(row) == 1500 and set(row) == {"****"}


def _raw_agent(env, role: str = "agent"):
    from pgwarden.wire import encode
    from rawclient import RawClient

    raw = RawClient("127.0.0.1", env.gw.port)
    raw.startup({"user": f"mask-{role}", "database": "mask"})
    assert raw.read_message()[0] == b"R"
    raw.send(encode.password_message(env.token(role)))
    raw.read_until(b"Z")
    return raw


def test_a_cursor_name_reused_by_a_protocol_portal_after_its_transaction(env):
    import struct

    from pgwarden.wire import encode

    bind = b"B" + struct.pack("!I", 4 + 2 + 3 + 6) + b"c\x00s1\x00" + struct.pack("!hhh", 0, 0, 0)
    with _raw_agent(env, "analyst") as raw:
        raw.query("BEGIN; DECLARE c CURSOR FOR SELECT 1 AS x; COMMIT")
        raw.query("BEGIN")
        raw.send(encode.parse("s1", "SELECT card_number FROM customers") + bind + encode.sync())
        raw.read_until(b"Z")
        replies = raw.query("FETCH ALL FROM c")
    assert not leaks([body for _, body in replies])


def test_results_of_a_string_are_not_lined_up_by_counting(env):
    with env.connect("analyst") as conn:
        conn.execute("PREPARE z0 AS SELECT FROM orders LIMIT 1")
        got = received(conn, "EXECUTE z0; SELECT card_number, ssn, email FROM customers UNION ALL "
                             "SELECT card_number, ssn, email FROM customers WHERE false; SELECT 'p'::text a, 'p'::text b")
        got += received(conn, "EXECUTE z0; SELECT translate(ssn, '0123456789', 'abcdefghij'), lower(email) "
                              "FROM customers; SELECT 'pad'::text, 'pad'::text")
        assert not leaks(got) and not any("bcd-ef-ghij" in str(v) for v in got)
    with env.connect("developer") as conn:
        conn.execute("CREATE TEMP TABLE ri (x text)")
        conn.execute("CREATE RULE ri_r AS ON INSERT TO ri DO INSTEAD SELECT 'pad'::text AS x")
        got = received(conn, "INSERT INTO ri VALUES ('a'); SELECT translate(ssn, '0123456789', 'abcdefghij') "
                             "FROM customers; SELECT 'pad'::text")
        assert not any("bcd-ef-ghij" in str(v) or "cde-fg-hijb" in str(v) for v in got)


def test_two_copies_in_one_string_each_keep_their_plan(env):
    with _raw_agent(env) as raw:
        replies = raw.query("COPY (SELECT translate(ssn, '0123456789', 'abcdefghij'), lower(email), 'x' FROM customers) "
                            "TO STDOUT; COPY (SELECT 'y'::text, 'z'::text, ssn FROM customers LIMIT 1) TO STDOUT")
    data = [body for t, body in replies if t == b"d"]
    assert data and not leaks(data) and not any(b"bcd-ef-ghij" in d for d in data)


# ---------------------------------------------------------------- cursors outliving what a Close or a status said
#
# A protocol portal "c" is bound to a harmless SELECT, then SQL CLOSE c and DECLARE c over masked
# columns: PostgreSQL's c is now the cursor while the relay still has the portal's text, so a
# protocol Execute of c is masked by what masking remembers of the DECLARE. Each sequence below
# once made masking forget it while PostgreSQL's cursor lived on.

_HARMLESS = "SELECT 1::int, 'x'::text, 'y'::text"
_MASKED_CURSOR = "SELECT id, email, ssn FROM customers"


def _msg(kind: bytes, body: bytes) -> bytes:
    from pgwarden.wire import encode

    return encode.message(kind, body)


def _bind(portal: str, statement: str) -> bytes:
    import struct

    return _msg(b"B", portal.encode() + b"\x00" + statement.encode() + b"\x00\x00\x00" + struct.pack("!h", 0) + b"\x00\x00")


def _execute(portal: str = "") -> bytes:
    return _msg(b"E", portal.encode() + b"\x00\x00\x00\x00\x00")


def _bodies(replies):
    return [body for _, body in replies]


def test_a_close_postgres_skipped_does_not_forget_the_cursor(env):
    from pgwarden.wire import encode

    with _raw_agent(env, "analyst") as raw:
        raw.query("BEGIN")
        raw.send(encode.parse("sc", _HARMLESS) + _bind("c", "sc") + encode.sync())
        raw.read_until(b"Z")
        raw.query("CLOSE c")
        raw.query(f"DECLARE c CURSOR FOR {_MASKED_CURSOR}")
        raw.query("SAVEPOINT sp")
        raw.send(encode.parse("", "SELECT 1/0") + _bind("", "") + _execute("") + _msg(b"C", b"Pc\x00")
                 + encode.sync())  # the Close is skipped after the error: c lives on
        raw.read_until(b"Z")
        raw.query("ROLLBACK TO SAVEPOINT sp")
        raw.send(_execute("c") + encode.sync())
        replies = raw.read_until(b"Z")
    assert not leaks(_bodies(replies))


def test_a_with_hold_cursor_outlives_commit_for_masking_too(env):
    from pgwarden.wire import encode

    with _raw_agent(env, "analyst") as raw:
        raw.send(encode.query("BEGIN") + encode.parse("sc", _HARMLESS) + _bind("c", "sc") + encode.sync()
                 + encode.query("CLOSE c") + encode.query(f"DECLARE c CURSOR WITH HOLD FOR {_MASKED_CURSOR}")
                 + encode.query("COMMIT") + encode.parse("zz", "SELECT 2"))  # unanswered: keeps a reply pending
        for _ in range(5):
            raw.read_until(b"Z")
        raw.send(_execute("c") + encode.sync())
        replies = raw.read_until(b"Z")
    assert not leaks(_bodies(replies))


def test_a_status_from_before_a_flushed_begin_does_not_end_the_cursor(env):
    from pgwarden.wire import encode

    with _raw_agent(env, "analyst") as raw:
        raw.send(encode.parse("", "BEGIN") + _bind("", "") + _execute("")
                 + encode.parse("sc", _HARMLESS) + _bind("c", "sc")
                 + encode.parse("", "CLOSE c") + _bind("", "") + _execute("")
                 + encode.parse("", f"DECLARE c CURSOR FOR {_MASKED_CURSOR}") + _bind("", "") + _execute("")
                 + _msg(b"H", b""))
        completes = 0
        while completes < 3:
            kind, _ = raw.read_message()
            assert kind != b"E"
            completes += kind == b"C"
        raw.send(_execute("c") + encode.sync())
        replies = raw.read_until(b"Z")
    assert not leaks(_bodies(replies))
