"""The pipeline's contract, end to end with real clients.

A deny is a real ErrorResponse naming the rule, the session stays usable, and
the transaction status the client sees is the upstream's true one. A hold
pauses only its own session; cancel or disconnect withdraws it.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import asyncpg
import psycopg
import pytest
from psycopg import errors
from psycopg.pq import TransactionStatus

from pgwarden.session.verdict import Deny
from pgwarden.testing.gateway import RunningGateway, gateway_config
from pgwarden.testing.stages import RewriteMarkerStage


def test_denied_simple_query_names_rule_and_session_stays_usable(gw_dsn):
    with psycopg.connect(gw_dsn, autocommit=True) as conn:
        with pytest.raises(errors.InsufficientPrivilege) as info:
            conn.execute("select 1 /*deny*/")
        assert "test.deny" in str(info.value)
        assert info.value.diag.sqlstate == "42501"
        assert conn.info.transaction_status == TransactionStatus.IDLE
        assert conn.execute("select 2").fetchone() == (2,)


def test_denied_statement_fails_the_open_transaction_like_postgres(gw_dsn, pg):
    table = "deny_txn_probe"
    pg.psql(f"drop table if exists {table}; create table {table}(x int); grant all on {table} to app", database="appdb")
    with psycopg.connect(gw_dsn) as conn:  # psycopg opens a transaction implicitly
        conn.execute(f"insert into {table} values (1)")
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute(f"insert into {table} values (2) /*deny*/")
        assert conn.info.transaction_status == TransactionStatus.INERROR
        with pytest.raises(errors.InFailedSqlTransaction):
            conn.execute("select 1")
        conn.rollback()
        assert conn.info.transaction_status == TransactionStatus.IDLE
        assert conn.execute(f"select count(*) from {table}").fetchone() == (0,)


def test_denied_extended_query_and_pipeline(gw_dsn):
    with psycopg.connect(gw_dsn, autocommit=True) as conn:
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute("select %s::int /*deny*/", (1,))
        assert conn.execute("select %s::int + 1", (1,)).fetchone() == (2,)
        # In a pipeline the denied statement fails and the rest of its batch is
        # skipped, exactly as if PostgreSQL itself had raised the error.
        with pytest.raises(errors.InsufficientPrivilege):
            with conn.pipeline():
                first = conn.execute("select %s::int", (10,))
                conn.execute("select %s::int /*deny*/", (11,))
                conn.execute("select %s::int", (12,))
        assert first.fetchone() == (10,)
        with conn.pipeline():
            cur = conn.execute("select %s::int", (13,))
        assert cur.fetchone() == (13,)


def test_denied_prepare_with_asyncpg(gw_url):
    async def main():
        conn = await asyncpg.connect(gw_url, ssl=False)
        try:
            with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError):
                await conn.prepare("select 1 /*deny*/")
            stmt = await conn.prepare("select $1::int * 2")
            assert await stmt.fetchval(21) == 42
            async with conn.transaction():
                with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError):
                    await conn.fetchval("select 1 /*deny*/")
                # the transaction is now failed, as with a real error
                with pytest.raises(asyncpg.exceptions.InFailedSQLTransactionError):
                    await conn.fetchval("select 1")
        except asyncpg.exceptions.InFailedSQLTransactionError:
            raise
        finally:
            await conn.close()

    asyncio.run(main())


def _run_in_thread(fn):
    result: dict = {}

    def target():
        try:
            result["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            result["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, result


def test_hold_pauses_only_its_session_then_runs_on_release(gw_dsn, stages):
    hold = stages["hold"]
    conn = psycopg.connect(gw_dsn, autocommit=True)
    try:
        thread, result = _run_in_thread(lambda: conn.execute("select 42 /*hold*/").fetchone())
        assert hold.held.wait(10), "statement was not held"
        # Other sessions are unaffected while this one waits.
        with psycopg.connect(gw_dsn, autocommit=True) as other:
            assert other.execute("select 'still working'").fetchone() == ("still working",)
        assert thread.is_alive()
        assert hold.release() == 1
        thread.join(10)
        assert result.get("value") == (42,), result
        assert conn.execute("select 1").fetchone() == (1,)
    finally:
        conn.close()


def test_hold_resolved_as_deny_gives_error(gw_dsn, stages):
    hold = stages["hold"]
    with psycopg.connect(gw_dsn, autocommit=True) as conn:
        thread, result = _run_in_thread(lambda: conn.execute("select 1 /*hold*/"))
        assert hold.held.wait(10)
        hold.release(Deny("pgwarden: denied by reviewer bob", "42501", rule="test.review"))
        thread.join(10)
        assert isinstance(result.get("error"), errors.InsufficientPrivilege)
        assert "reviewer bob" in str(result["error"])
        assert conn.execute("select 1").fetchone() == (1,)


def test_cancel_withdraws_a_held_statement(gw_dsn, stages):
    hold = stages["hold"]
    hold.cancelled.clear()
    with psycopg.connect(gw_dsn, autocommit=True) as conn:
        thread, result = _run_in_thread(lambda: conn.execute("select 1 /*hold*/"))
        assert hold.held.wait(10)
        # cancel_safe(): psycopg's binary PQcancel holds the GIL while it waits,
        # which would stall the in-process gateway thread.
        conn.cancel_safe(timeout=10)
        thread.join(10)
        assert isinstance(result.get("error"), errors.QueryCanceled), result
        assert hold.cancelled.wait(5)
        assert conn.execute("select 7").fetchone() == (7,)
    hold.release()


def test_disconnect_withdraws_a_held_statement(gateway, gw_dsn, stages):
    hold = stages["hold"]
    hold.cancelled.clear()
    conn = psycopg.connect(gw_dsn, autocommit=True)
    thread, _ = _run_in_thread(lambda: conn.execute("select 1 /*hold*/"))
    assert hold.held.wait(10)
    # Drop the TCP connection under the client.
    sock = socket.socket(fileno=conn.pgconn.socket)
    sock.shutdown(socket.SHUT_RDWR)
    sock.detach()
    assert hold.cancelled.wait(5)
    thread.join(10)
    conn.close()
    hold.release()


def test_rewrite_stage_changes_the_statement(pg, gw_users):
    config = gateway_config(pg, users=gw_users)
    stage = RewriteMarkerStage("/*rewrite*/", "select 'rewritten'")
    with RunningGateway(config, [stage]) as gw:
        with psycopg.connect(gw.dsn("alice", "alice-secret-pw"), autocommit=True) as conn:
            assert conn.execute("select 'original' /*rewrite*/").fetchone() == ("rewritten",)
            # extended protocol (a named prepared statement), rewritten at Parse
            for _ in range(2):
                assert conn.execute("select 'original' /*rewrite*/", prepare=True).fetchone() == ("rewritten",)


def test_completed_statements_carry_outcomes(gw_dsn, stages):
    record = stages["record"]
    marker = f"outcome_probe_{time.monotonic_ns()}"
    with psycopg.connect(gw_dsn, autocommit=True) as conn:
        conn.execute(f"select 1 as {marker}")
        with pytest.raises(errors.DivisionByZero):
            conn.execute(f"select 1/0 as {marker}")
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute(f"select 1 as {marker} /*deny*/")
    seen = {s.status: s for s in record.completed_statements if s.text and marker in s.text and s.kind != "parse"}
    assert seen["ok"].tag == "SELECT 1"
    assert seen["error"].error.sqlstate == "22012"
    assert seen["denied"].verdict.rule == "test.deny"
