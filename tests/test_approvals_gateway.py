"""Just-in-time approvals end to end: real clients, a real Postgres, reviewers acting like the CLI.

What a user checks: a held statement runs exactly once after approval and
the client gets its rows; denial, timeout and cancel refuse it with a proper
error and a usable session; the rules (no self-approval, one decision per
reviewer, N distinct reviewers, reviewer roles) hold; a ticket runs once for
exactly the approved statement and parameters; and the trail links the
statement to its request and decisions.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time

import psycopg
import pytest
from psycopg import errors
from psycopg.pq import TransactionStatus

from pgwarden.store.approvals import ApprovalError, Reviewer

from approvals_env import SETUP_SQL, Client, alice, as_key, start_env, value, wait_until
from conftest import GW_PASSWORD, GW_USER

try:
    import asyncpg
except ImportError:  # pragma: no cover - a test dependency
    asyncpg = None


@pytest.fixture(scope="module")
def env(pg, gw_users, tmp_path_factory):
    pg.psql(SETUP_SQL, database="appdb")
    gw, environment = start_env(pg, tmp_path_factory.mktemp("approvals"), gw_users)
    try:
        yield environment
    finally:
        gw.__exit__(None, None, None)


# ---------------------------------------------------------------- hold mode


def test_hold_then_approve_runs_once_and_the_trail_links_it(env, pg):
    notices: list[str] = []

    def client():
        with alice(env) as conn:
            conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
            rows = conn.execute("UPDATE ap.hold_items SET name = 'approved' WHERE id = 1 RETURNING id, name").fetchall()
            return rows, conn.execute("select 42").fetchone()

    c = Client(client)
    request = env.pending_on("hold_items")
    assert (request.requester, request.mode, request.rule, request.target) == ("user:alice", "hold", "review-hold_items", "app")
    assert "need a second pair of eyes" in request.reason
    wait_until(lambda: notices, "the hold notice")  # the client is told at once, before any decision
    assert request.id in notices[0] and "pgwarden approvals approve" in notices[0]
    assert "need a second pair of eyes" in notices[0]  # the rule's reason
    assert value(pg, "hold_items", 1) == "a"  # nothing ran yet
    decided = env.decide(request.id, "approve", comment="ticket OPS-1")
    assert decided.status == "approved"
    (rows, after), error = c.outcome()
    assert error is None and rows == [(1, "approved")] and after == (42,)
    assert value(pg, "hold_items", 1) == "approved"
    assert env.get(request.id).status == "executed"
    # The statement record carries the request and its decision; the chain holds every event.
    statements = env.wait_records(
        lambda r: r["type"] == "statement" and (r.get("approval") or {}).get("request") == request.id, "statement")
    assert statements[-1]["decision"]["action"] == "allow"
    approval = statements[-1]["approval"]
    assert approval["status"] == "executed" and approval["decisions"][0]["comment"] == "ticket OPS-1"
    events = env.wait_records(
        lambda r: r["type"] == "approval" and r["request"] == request.id and r["event"] == "executed", "executed")
    allrec = env.records()
    kinds = [r["event"] for r in allrec if r["type"] == "approval" and r["request"] == request.id]
    assert kinds == ["requested", "approve", "executed"] and events
    with pytest.raises(ApprovalError) as info:
        env.decide(request.id, "approve", reviewer=Reviewer("someone-else", ("dba",)))
    assert info.value.code == "not_pending"  # a second approval of the same request


def test_hold_then_deny_refuses_with_who_and_keeps_the_transaction_true(env, pg):
    def client():
        with psycopg.connect(env.gw.dsn(GW_USER, GW_PASSWORD, sslmode="disable")) as conn:
            conn.execute("select 1")
            try:
                conn.execute("DELETE FROM ap.hold_items WHERE id = 2")
            except errors.InsufficientPrivilege as exc:
                status = conn.info.transaction_status
                conn.rollback()
                return exc.diag.message_primary, status, conn.execute("select 7").fetchone()
            return None

    c = Client(client)
    request = env.pending_on("hold_items")
    env.decide(request.id, "deny", comment="not during the freeze")
    result, error = c.outcome()
    assert error is None and result is not None
    message, status, after = result
    assert f"request {request.id} was denied by local:" in message and "not during the freeze" in message
    assert status == TransactionStatus.INERROR and after == (7,)
    assert value(pg, "hold_items", 2) == "b" and env.get(request.id).status == "denied"
    # Reviewers and the security team hear of it (docs/alerts.md): both alerts, recorded in the trail.
    alerts = env.wait_records(lambda r: r["type"] == "alert" and (r.get("details") or {}).get("request") == request.id
                              and r["kind"] == "approval_denied", "approval_denied alert")
    assert "not during the freeze" in alerts[0]["text"] and alerts[0]["severity"] == "warning"
    assert env.wait_records(lambda r: r["type"] == "alert" and r["kind"] == "approval_requested"
                            and (r.get("details") or {}).get("request") == request.id, "approval_requested alert")


def test_hold_then_timeout(env, pg):
    with alice(env) as conn:
        with pytest.raises(errors.QueryCanceled) as info:
            conn.execute("UPDATE ap.short_items SET name = 'late' WHERE id = 1")
        assert "timed out" in info.value.diag.message_primary
        assert conn.execute("select 1").fetchone() == (1,)
    expired = [r for r in env.requests("expired") if "ap.short_items" in r.statement]
    assert expired and expired[0].closed_by == "timeout"
    assert value(pg, "short_items", 1) == "a"


def test_cancel_or_disconnect_withdraws_the_request(env, pg):
    conn = alice(env)
    c = Client(lambda: conn.execute("UPDATE ap.hold_items SET name = 'cancelled' WHERE id = 2"))
    request = env.pending_on("hold_items")
    conn.cancel_safe(timeout=5)
    _, error = c.outcome()
    assert isinstance(error, errors.QueryCanceled)
    assert conn.execute("select 5").fetchone() == (5,)
    wait_until(lambda: env.get(request.id).status == "withdrawn", "the withdrawal")
    conn.close()
    # Closing the connection while held withdraws too.
    conn2 = alice(env)
    Client(lambda: conn2.execute("UPDATE ap.hold_items SET name = 'gone' WHERE id = 2"))
    second = env.pending_on("hold_items", exclude={request.id})
    conn2.pgconn.finish()  # the socket closes under the blocked client
    wait_until(lambda: env.get(second.id).status == "withdrawn", "the withdrawal on disconnect")
    with pytest.raises(ApprovalError) as info:
        env.decide(second.id, "approve")
    assert info.value.code == "not_pending"
    assert value(pg, "hold_items", 2) == "b"


def test_self_approval_and_reviewer_roles(env, pg):
    dev = env.key("dev-self", ["developer"])
    other_dev = env.key("dev-other", ["developer"])
    dba = env.key("dba-self", ["dba"])
    c = Client(lambda: as_key(env, dev).execute("UPDATE ap.hold_items SET name = 'by-dev' WHERE id = 2").rowcount)
    request = env.pending_on("hold_items", requester="key:dev-self")
    assert request.role == "developer"
    with pytest.raises(ApprovalError) as info:
        env.decide(request.id, "approve", token=dev)
    assert info.value.code == "self_approval"
    with pytest.raises(ApprovalError) as info:
        env.decide(request.id, "approve", token=other_dev)
    assert info.value.code == "not_reviewer"
    assert env.get(request.id).status == "pending"
    env.decide(request.id, "approve", token=dba)
    rowcount, error = c.outcome()
    assert error is None and rowcount == 1 and value(pg, "hold_items", 2) == "by-dev"
    assert env.get(request.id).approvers == ("key:dba-self",)


def test_two_distinct_approvals_needed(env, pg):
    first, second = env.key("dba-one", ["dba"]), env.key("dba-two", ["dba"])
    c = Client(lambda: alice(env).execute("UPDATE ap.two_items SET name = 'two' WHERE id = 1").rowcount)
    request = env.pending_on("two_items")
    assert request.required == 2
    assert env.decide(request.id, "approve", token=first).status == "pending"
    with pytest.raises(ApprovalError) as info:
        env.decide(request.id, "approve", token=first)
    assert info.value.code == "already_decided"
    time.sleep(0.3)  # several polls: one approval of two releases nothing
    assert c.is_alive() and value(pg, "two_items", 1) == "a"
    assert env.decide(request.id, "approve", token=second).status == "approved"
    rowcount, error = c.outcome()
    assert error is None and rowcount == 1 and value(pg, "two_items", 1) == "two"
    assert set(env.get(request.id).approvers) == {"key:dba-one", "key:dba-two"}


def test_psql_prints_the_notice_at_once_and_gets_its_result(env, pg):
    proc = subprocess.Popen(
        ["psql", "-X", "-v", "ON_ERROR_STOP=1", "-c", "DELETE FROM ap.hold_items WHERE id = 2 RETURNING id",
         env.gw.dsn(GW_USER, GW_PASSWORD, sslmode="disable")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "PGCONNECT_TIMEOUT": "10"},
    )
    try:
        line = proc.stderr.readline()  # printed while the statement is held
        request = env.pending_on("hold_items")
        assert line.startswith("NOTICE:") and request.id in line
        env.decide(request.id, "approve")
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "DELETE 1" in out
    pg.psql("insert into ap.hold_items values (2, 'b') on conflict do nothing", database="appdb")


@pytest.mark.skipif(asyncpg is None, reason="asyncpg is not installed")
def test_asyncpg_binary_parameters_hold_then_approve(env, pg):
    logs: list[str] = []

    async def run():
        conn = await asyncpg.connect(host=env.gw.host, port=env.gw.port, user=GW_USER, password=GW_PASSWORD,
                                     database="app", ssl=False)
        conn.add_log_listener(lambda c, m: logs.append(m.message))
        try:
            return await conn.fetch("UPDATE ap.hold_items SET name = $1 WHERE id = $2 RETURNING id, name", "async", 1)
        finally:
            await conn.close()

    c = Client(lambda: asyncio.run(run()))
    request = env.pending_on("hold_items")
    assert [p["format"] for p in request.params] == [1, 1]  # asyncpg binds binary
    env.decide(request.id, "approve")
    rows, error = c.outcome()
    assert error is None and [tuple(r) for r in rows] == [(1, "async")]
    assert logs and request.id in logs[0]


def test_twenty_sessions_hold_while_others_keep_working(env, pg):
    pg.psql("insert into ap.many_items select g, 'x' from generate_series(3, 22) g on conflict do nothing",
            database="appdb")
    clients = [
        Client(lambda n=n: alice(env).execute(f"UPDATE ap.many_items SET name = 'done' WHERE id = {n}").rowcount)
        for n in range(3, 23)
    ]
    wait_until(lambda: len([r for r in env.requests("pending") if "ap.many_items" in r.statement]) == 20,
               "twenty pending requests")
    with alice(env) as conn:  # another session is not held up by twenty held ones
        for i in range(50):
            assert conn.execute("select %s::int", (i,)).fetchone() == (i,)
    assert all(c.is_alive() for c in clients)
    for request in [r for r in env.requests("pending") if "ap.many_items" in r.statement]:
        env.decide(request.id, "approve")
    results = [c.outcome() for c in clients]
    assert all(error is None and rowcount == 1 for rowcount, error in results)
    assert pg.psql("select count(*) from ap.many_items where name = 'done'", database="appdb").strip() == "20"
