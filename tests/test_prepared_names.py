"""What a prepared-statement name means is the same to pgwarden and to PostgreSQL, whatever the client sends.

An Execute is decided on the text its statement name stands for. If pgwarden's
idea of a name could differ from PostgreSQL's, an Execute would be checked as
one statement and run as another. Each test below is a sequence that once did
exactly that (from red-team rounds): it tries to run an UPDATE of
``ap.hold_items``, whose rule is ``review``, without a request, while the
checked text is ``SELECT 1``. The assertion is what a security engineer
checks: the row is unchanged and the client got a proper refusal.
"""

from __future__ import annotations

import asyncio
import struct

import pytest

from pgwarden.wire import encode

from approvals_env import SETUP_SQL, alice, start_env, value
from conftest import GW_PASSWORD, GW_USER
from rawclient import Closed, RawClient

UPDATE = "UPDATE ap.hold_items SET name = '{}' WHERE id = 1"


@pytest.fixture(scope="module")
def env(pg, gw_users, tmp_path_factory):
    pg.psql(SETUP_SQL, database="appdb")
    gw, environment = start_env(pg, tmp_path_factory.mktemp("names"), gw_users)
    try:
        yield environment
    finally:
        gw.__exit__(None, None, None)


def _cstr(s: str) -> bytes:
    return s.encode() + b"\x00"


def bind(portal: str, statement: str) -> bytes:
    return encode.message(b"B", _cstr(portal) + _cstr(statement) + b"\x00\x00" + struct.pack("!h", 0) + b"\x00\x00")


def execute(portal: str = "") -> bytes:
    return encode.message(b"E", _cstr(portal) + b"\x00\x00\x00\x00")


def close(kind: bytes, name: str) -> bytes:
    return encode.message(b"C", kind + _cstr(name))


def exchange(raw: RawClient, data: bytes, readies: int = 1) -> list[tuple[bytes, bytes]]:
    raw.send(data)
    out: list[tuple[bytes, bytes]] = []
    for _ in range(readies):
        out += raw.read_until(b"Z")
    return out


def sqlstates(messages) -> list[str]:
    out = []
    for t, body in messages:
        if t == b"E":
            fields = dict((f[:1], f[1:]) for f in body.split(b"\x00") if f)
            out.append(fields[b"C"].decode())
    return out


def untouched(env, pg, marker: str) -> bool:
    return value(pg, "hold_items", 1) != marker and not [r for r in env.requests() if marker in r.statement]


# ---------------------------------------------------------------- names PostgreSQL cuts to 63 bytes


@pytest.mark.parametrize("sequence", ["statement", "portal"])
def test_names_longer_than_postgres_keeps_are_refused(env, pg, sequence):
    """PostgreSQL keeps 63 bytes of a name: "a"*63+"1" and "a"*63+"2" are one statement to it."""
    with RawClient(env.gw.host, env.gw.port) as raw:
        raw.login(GW_USER, GW_PASSWORD)
        if sequence == "statement":
            n1, n2 = "a" * 63 + "1", "a" * 63 + "2"
            data = (encode.parse(n2, "SELECT 1") + close(b"S", n1) + encode.parse(n1, UPDATE.format("long"))
                    + bind("", n2) + execute() + encode.sync())
        else:
            p1, p2 = "p" * 63 + "1", "p" * 63 + "2"
            data = (encode.parse("lp_sel", "SELECT 1") + encode.parse("lp_upd", UPDATE.format("long"))
                    + bind(p2, "lp_sel") + close(b"P", p1) + bind(p1, "lp_upd") + execute(p2) + encode.sync())
        raw.send(data)
        messages, closed = raw.read_until_closed()
    assert closed and "08P01" in sqlstates(messages)
    assert any(b"longer than 63 bytes" in body for t, body in messages if t == b"E")
    assert untouched(env, pg, "long")


# ---------------------------------------------------------------- SQL PREPARE / DEALLOCATE


def test_a_refused_sql_prepare_leaves_the_name_unusable_not_swapped(env, pg):
    with RawClient(env.gw.host, env.gw.port) as raw:
        raw.login(GW_USER, GW_PASSWORD)
        exchange(raw, encode.query("PREPARE fy AS " + UPDATE.format("failprep")))
        assert sqlstates(exchange(raw, encode.query("PREPARE fy AS SELECT 1"))) == ["42P05"]
        assert sqlstates(exchange(raw, encode.query("EXECUTE fy"))) == ["26000"]  # unknown now, not SELECT 1
        assert sqlstates(exchange(raw, encode.query("SELECT 1"))) == []  # the session goes on
    assert untouched(env, pg, "failprep")


def test_a_prepare_that_never_ran_changes_nothing(env, pg):
    with RawClient(env.gw.host, env.gw.port) as raw:
        raw.login(GW_USER, GW_PASSWORD)
        exchange(raw, encode.query("PREPARE py AS " + UPDATE.format("parseprep")))
        # Parsed, never executed: nothing ran, so py still means the UPDATE (held for review).
        exchange(raw, encode.parse("", "PREPARE py AS SELECT 1") + encode.sync())
        # A string that fails before its PREPARE: py's meaning becomes unknown, never SELECT 1.
        assert sqlstates(exchange(raw, encode.query("SELECT 1/0; PREPARE py AS SELECT 1"))) == ["22012"]
        assert sqlstates(exchange(raw, bind("", "py") + execute() + encode.sync())) == ["26000"]
    assert untouched(env, pg, "parseprep")


def test_prepare_and_deallocate_through_the_extended_protocol(env, pg):
    with RawClient(env.gw.host, env.gw.port) as raw:
        raw.login(GW_USER, GW_PASSWORD)
        exchange(raw, encode.parse("xp", "SELECT 1") + encode.sync())
        exchange(raw, encode.parse("", "DEALLOCATE xp") + bind("", "") + execute() + encode.sync())
        exchange(raw, encode.parse("", "PREPARE xp AS " + UPDATE.format("extprep")) + bind("", "") + execute()
                 + encode.sync())
        raw.send(bind("", "xp") + execute() + encode.sync())
        raw.sock.settimeout(1.0)
        with pytest.raises((TimeoutError, OSError)):
            raw.read_until(b"Z")  # held for review: decided as the UPDATE it is
    request = env.wait_for(lambda r: r.status in ("pending", "withdrawn") and "'xp'" in r.statement, "the request")
    assert "prepared statement xp" in request.reason
    assert value(pg, "hold_items", 1) != "extprep"


def test_the_same_batch_cannot_use_a_name_an_execute_just_prepared(env, pg):
    """Parse/Bind/Execute(PREPARE s AS UPDATE) then Bind s/Execute in one batch: that PREPARE ran before
    the second Bind, so s is the UPDATE; pgwarden refuses rather than decide on an old text."""
    with RawClient(env.gw.host, env.gw.port) as raw:
        raw.login(GW_USER, GW_PASSWORD)
        exchange(raw, encode.parse("sb", "SELECT 1") + encode.sync())
        states = sqlstates(exchange(raw, encode.parse("", "DEALLOCATE sb") + bind("", "") + execute()
                                    + encode.parse("", "PREPARE sb AS " + UPDATE.format("samebatch"))
                                    + bind("", "") + execute() + bind("", "sb") + execute() + encode.sync()))
    assert states == ["55000"]
    assert untouched(env, pg, "samebatch")


# ---------------------------------------------------------------- what clients do keeps working


def test_drivers_prepare_and_deallocate_as_usual(env, pg):
    import asyncpg

    with alice(env, prepare_threshold=0) as conn:
        for i in range(3):
            assert conn.execute("SELECT %s::int + 1", (i,)).fetchone() == (i + 1,)
        conn.execute("PREPARE legit(int) AS SELECT $1 + 1")
        assert conn.execute("EXECUTE legit(41)").fetchone() == (42,)
        conn.execute("DEALLOCATE legit")
        conn.execute("PREPARE legit(int) AS SELECT $1 + 2")  # the name again, once answered
        assert conn.execute("EXECUTE legit(40)").fetchone() == (42,)
        conn.execute("DEALLOCATE ALL")
        assert conn.execute("SELECT %s::text", ("x",)).fetchone() == ("x",)

    async def run():
        c = await asyncpg.connect(host=env.gw.host, port=env.gw.port, user=GW_USER, password=GW_PASSWORD,
                                  database="app", ssl=False)
        try:
            for i in range(3):
                assert await c.fetchval("SELECT $1::int + 1", i) == i + 1
            statement = await c.prepare("SELECT $1::text")
            assert await statement.fetchval("a") == "a"
            async with c.transaction():
                cursor = await c.cursor("SELECT generate_series(1, 10)")
                assert len(await cursor.fetch(3)) == 3
        finally:
            await c.close()

    asyncio.run(run())


def test_a_closed_connection_never_counts_as_an_answer(env, pg):
    with pytest.raises(Closed):
        with RawClient(env.gw.host, env.gw.port) as raw:
            raw.login(GW_USER, GW_PASSWORD)
            raw.send(encode.parse("c" * 64, "SELECT 1") + encode.sync())
            raw.read_until(b"Z")


# ---------------------------------------------------------------- third round: Close, failed strings, portals, wrappers


def test_a_protocol_parse_over_an_sql_prepared_name_is_not_run_on_the_old_facts(env, pg):
    with RawClient(env.gw.host, env.gw.port) as raw:
        raw.login(GW_USER, GW_PASSWORD)
        exchange(raw, encode.query("PREPARE xa AS SELECT 1"))
        exchange(raw, close(b"S", "xa") + encode.parse("xa", UPDATE.format("closeS")) + encode.sync())
        assert sqlstates(exchange(raw, encode.query("EXECUTE xa"))) == ["26000"]
        # A DEALLOCATE in a string that failed after it: the name is unknown, not the old SELECT.
        exchange(raw, encode.query("PREPARE xb AS SELECT 1"))
        assert sqlstates(exchange(raw, encode.query("DEALLOCATE xb; SELECT 1/0"))) == ["22012"]
        exchange(raw, encode.parse("xb", UPDATE.format("closeS")) + encode.sync())
        assert sqlstates(exchange(raw, encode.query("EXECUTE xb"))) == ["26000"]
    assert untouched(env, pg, "closeS")


def test_a_portal_bound_again_is_not_executed_before_postgres_answered(env, pg):
    """Bind an existing named portal to a SELECT (PostgreSQL refuses: 42P03), then after a Sync and a
    ROLLBACK TO SAVEPOINT (the portal survives) execute it: it is still the UPDATE."""
    with RawClient(env.gw.host, env.gw.port) as raw:
        raw.login(GW_USER, GW_PASSWORD)
        exchange(raw, encode.query("BEGIN"))
        exchange(raw, encode.parse("bu", UPDATE.format("rebind")) + encode.parse("bs", "SELECT 1")
                 + bind("bp", "bu") + encode.sync())
        exchange(raw, encode.query("SAVEPOINT sp"))
        states = sqlstates(exchange(raw, bind("bp", "bs") + encode.sync() + encode.query("ROLLBACK TO SAVEPOINT sp")
                                    + execute("bp") + encode.sync(), readies=3))
        assert states == ["42P03", "55000"]
        exchange(raw, encode.query("COMMIT"))
    assert untouched(env, pg, "rebind")


@pytest.mark.parametrize("wrapper", ["EXPLAIN ANALYZE EXECUTE {n}", "EXPLAIN (ANALYZE) EXECUTE {n}"])
def test_explain_analyze_execute_is_decided_on_the_prepared_statement(env, pg, wrapper):
    name = "ea" + str(len(wrapper))
    with RawClient(env.gw.host, env.gw.port) as raw:
        raw.login(GW_USER, GW_PASSWORD)
        exchange(raw, encode.query(f"PREPARE {name} AS " + UPDATE.format("explained")))
        seen = {r.id for r in env.requests()}
        raw.send(encode.query(wrapper.format(n=name)))
        request = env.wait_for(lambda r: r.id not in seen and r.status == "pending", "the held EXPLAIN ANALYZE")
        assert request.statement == wrapper.format(n=name)
        env.decide(request.id, "deny")
        assert sqlstates(raw.read_until(b"Z")) == ["42501"]
    assert value(pg, "hold_items", 1) != "explained"
