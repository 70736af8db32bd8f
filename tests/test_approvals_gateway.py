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
import threading
import time

import psycopg
import pytest
from psycopg import errors
from psycopg.pq import TransactionStatus

from pgwarden.store.approvals import ApprovalError, Reviewer

from approvals_env import SETUP_SQL, start_env
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


def alice(env, **kw):
    return psycopg.connect(env.gw.dsn(GW_USER, GW_PASSWORD, sslmode="disable"), autocommit=True, **kw)


def as_key(env, key: str, **kw):
    return psycopg.connect(env.gw.dsn("svc", key, sslmode="disable"), autocommit=True, **kw)


def value(pg, table: str, row: int) -> str:
    return pg.psql(f"select name from ap.{table} where id = {row}", database="appdb").strip()


class Client(threading.Thread):
    """Runs ``fn`` in a thread, keeping its result or exception (the client blocks while held)."""

    def __init__(self, fn) -> None:
        super().__init__(daemon=True)
        self.fn = fn
        self.result = None
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            self.result = self.fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            self.error = exc

    def outcome(self, timeout: float = 30.0):
        self.join(timeout)
        assert not self.is_alive(), "the client is still blocked"
        return self.result, self.error


def wait_until(predicate, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


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
    assert (request.requester, request.mode, request.rule, request.target) == ("alice", "hold", "review-hold_items", "app")
    assert "need a second pair of eyes" in request.reason
    wait_until(lambda: notices, "the hold notice")  # the client is told at once, before any decision
    assert request.id in notices[0] and "pgwarden approvals approve" in notices[0]
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


# ---------------------------------------------------------------- ticket mode


def _ticket_refusal(conn, sql, params=None) -> str:
    with pytest.raises(psycopg.Error) as info:
        conn.execute(sql, params)
    assert info.value.sqlstate == "PW001", info.value
    return info.value.diag.message_primary


def _request_id(message: str) -> str:
    return message.split("request ", 1)[1].split()[0]


def test_ticket_runs_once_for_exactly_the_approved_parameters(env, pg):
    sql = "UPDATE ap.ticket_items SET name = %s WHERE id = %s"
    with alice(env) as conn:
        first = _request_id(_ticket_refusal(conn, sql, ("t1", 1)))
        again = _ticket_refusal(conn, sql, ("t1", 1))
        assert _request_id(again) == first and "still waiting" in again  # no duplicate request
        assert conn.execute("select 1").fetchone() == (1,)
        env.decide(first, "approve")
        assert conn.execute(sql, ("t1", 1)).rowcount == 1  # the exact retry runs ...
        assert value(pg, "ticket_items", 1) == "t1"
        second = _request_id(_ticket_refusal(conn, sql, ("t1", 1)))  # ... once
        assert second != first
        env.decide(second, "approve")
        changed = _request_id(_ticket_refusal(conn, sql, ("t2", 1)))  # other parameters: a new approval
        assert changed not in (first, second)
        assert value(pg, "ticket_items", 1) == "t1"
        assert env.get(second).status == "approved"
    # Another identity cannot use alice's ticket.
    other = env.key("ticket-thief", ["developer"])
    with as_key(env, other) as conn:
        _ticket_refusal(conn, sql, ("t1", 1))
    assert env.get(second).status == "approved"
    records = env.wait_records(
        lambda r: r["type"] == "statement" and (r.get("approval") or {}).get("request") == first
        and r["decision"]["action"] == "allow", "the ticket's statement")
    assert records[0]["approval"]["mode"] == "ticket"


def test_ticket_after_its_validity_is_refused(env, pg):
    sql = "UPDATE ap.expiry_items SET name = %s WHERE id = %s"
    with alice(env) as conn:
        request = _request_id(_ticket_refusal(conn, sql, ("late", 1)))
        env.decide(request, "approve")
        time.sleep(1.2)  # the policy's validity is one second
        fresh = _request_id(_ticket_refusal(conn, sql, ("late", 1)))
        assert fresh != request
    assert value(pg, "expiry_items", 1) == "a"


def test_ticket_survives_a_gateway_restart_and_webhooks_and_api(pg, gw_users, tmp_path):
    import http.server
    import json as jsonlib

    import httpx

    received: list[dict] = []

    class Receiver(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            received.append(jsonlib.loads(body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    hooks = [{"url": f"http://127.0.0.1:{server.server_port}/hook", "format": "json"}]
    sql = "UPDATE ap.ticket_items SET name = %s WHERE id = %s"
    try:
        gw, env = start_env(pg, tmp_path, gw_users, webhooks=hooks)
        try:
            with alice(env) as conn:
                request = _request_id(_ticket_refusal(conn, sql, ("restart", 2)))
            wait_until(lambda: any(m["event"] == "requested" for m in received), "the webhook")
            sent = next(m for m in received if m["event"] == "requested")
            assert sent["request"]["id"] == request and sent["links"]["approve"].endswith(f"/{request}/approve")
        finally:
            gw.__exit__(None, None, None)
        env.decide(request, "approve", comment="while the gateway was down")
        gw, env = start_env(pg, tmp_path, gw_users, webhooks=hooks)
        try:
            with alice(env) as conn:
                assert conn.execute(sql, ("restart", 2)).rowcount == 1
                assert value(pg, "ticket_items", 2) == "restart"
                _ticket_refusal(conn, sql, ("restart", 2))
            # The CLI's decision (made while no gateway ran) is now in the chain.
            env.wait_records(lambda r: r["type"] == "approval" and r["request"] == request and r["event"] == "approve",
                             "the CLI decision")
        finally:
            gw.__exit__(None, None, None)
    finally:
        server.shutdown()


def test_prepared_statements_are_reviewed_where_they_run(env, pg):
    with alice(env) as conn:
        conn.execute("PREPARE zap(int) AS DELETE FROM ap.hold_items WHERE id = $1")  # runs nothing: passes
        seen = {r.id for r in env.requests()}
        c = Client(lambda: conn.execute("EXECUTE zap(1)"))
        request = env.wait_for(lambda r: r.status == "pending" and r.id not in seen, "for EXECUTE zap(1)")
        assert request.statement == "EXECUTE zap(1)" and "prepared statement zap" in request.reason
        env.decide(request.id, "deny")
        _, error = c.outcome()
        assert isinstance(error, errors.InsufficientPrivilege)
        # A ticket pins the text, and EXECUTE's text does not say what runs: refused outright.
        conn.execute("PREPARE tz(text) AS UPDATE ap.ticket_items SET name = $1 WHERE id = 1")
        with pytest.raises(errors.InsufficientPrivilege) as info:
            conn.execute("EXECUTE tz('x')")
        assert "a ticket cannot be issued for EXECUTE" in info.value.diag.message_primary
        # Protocol-level prepared statements carry their text: a ticket works.
        sql = "UPDATE ap.ticket_items SET name = %s WHERE id = 2"
        with pytest.raises(psycopg.Error) as info:
            conn.execute(sql, ("proto",), prepare=True)
        assert info.value.sqlstate == "PW001"
        request_id = _request_id(info.value.diag.message_primary)
        assert env.get(request_id).statement == "UPDATE ap.ticket_items SET name = $1 WHERE id = 2"
        env.decide(request_id, "approve")
        assert conn.execute(sql, ("proto",), prepare=True).rowcount == 1
    assert value(pg, "hold_items", 1) != "" and value(pg, "ticket_items", 2) == "proto"  # the denied DELETE left row 1


def test_postgres_store_a_decision_through_one_gateway_releases_a_hold_on_another(env, pg, gw_users, tmp_path):
    import secrets

    import httpx

    database = f"approvals_{secrets.token_hex(3)}"
    pg.psql(f"CREATE DATABASE {database} OWNER app")
    store = {"audit": {"store": {"type": "postgres", "dsn": pg.dsn("app", database)},
                       "checkpoints": {"key_file": str(tmp_path / "signing.key")}}}  # one trail, one key
    keys_file = str(tmp_path / "shared-keys.sqlite")
    identity = {"identity": {"api_keys_file": keys_file}}
    gw_a, env_a = start_env(pg, tmp_path / "a", gw_users, {**store, **identity, "api": {"enabled": True, "port": 0}})
    try:
        gw_b, env_b = start_env(pg, tmp_path / "b", gw_users, {**store, **identity})
        try:
            dba = env_a.key("dba-api", ["dba"])
            c = Client(lambda: alice(env_b).execute("UPDATE ap.hold_items SET name = 'cross' WHERE id = 2").rowcount)
            api = f"http://127.0.0.1:{gw_a.gateway.approvals.api.port}/api/v1/approvals"
            headers = {"Authorization": f"Bearer {dba}"}
            wait_until(lambda: any("ap.hold_items" in r["statement"]
                                   for r in httpx.get(api, headers=headers).json()["approvals"]), "the request via the API")
            request = next(r for r in httpx.get(api, headers=headers).json()["approvals"] if "ap.hold_items" in r["statement"])
            assert request["gateway"] == gw_b.gateway.gateway_id
            assert httpx.post(f"{api}/{request['id']}/approve", headers=headers, json={"comment": "via A"}).status_code == 200
            rowcount, error = c.outcome()
            assert error is None and rowcount == 1 and value(pg, "hold_items", 2) == "cross"
            assert env_a.get(request["id"]).status == "executed"
            assert httpx.post(f"{api}/{request['id']}/approve", headers=headers).status_code == 409
        finally:
            gw_b.__exit__(None, None, None)
    finally:
        gw_a.__exit__(None, None, None)
        pg.psql("insert into ap.hold_items values (2, 'b') on conflict (id) do update set name = 'b'", database="appdb")
        pg.psql(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")


def _cli(env, *args):
    import sys

    return subprocess.run([sys.executable, "-m", "pgwarden", "approvals", *args, "--config", str(env.config_file)],
                          capture_output=True, text=True, timeout=60)


def test_cli_list_show_approve_deny(env, pg):
    import json

    sql = "UPDATE ap.ticket_items SET name = %s WHERE id = %s"
    with alice(env) as conn:
        first = _request_id(_ticket_refusal(conn, sql, ("cli", 1)))
        second = _request_id(_ticket_refusal(conn, sql, ("cli-deny", 1)))
    listed = _cli(env, "list")
    assert listed.returncode == 0, listed.stderr
    assert first in listed.stdout and second in listed.stdout and "review-ticket_items" in listed.stdout
    shown = _cli(env, "show", first[:6])  # a unique prefix is enough to look at
    assert shown.returncode == 0 and "UPDATE ap.ticket_items" in shown.stdout and "'cli'" in shown.stdout
    approved = _cli(env, "approve", first, "--comment", "cli ok")
    assert approved.returncode == 0 and "approved by local:" in approved.stdout
    again = _cli(env, "approve", first)
    assert again.returncode == 1 and "already approved" in again.stderr
    denied = _cli(env, "deny", second, "-m", "no")
    assert denied.returncode == 0 and "denied" in denied.stdout
    as_json = json.loads(_cli(env, "show", second, "--json").stdout)
    assert as_json["status"] == "denied" and as_json["decisions"][0]["comment"] == "no"
    missing = _cli(env, "approve", "ffffffffffff")
    assert missing.returncode == 1 and "no approval request" in missing.stderr
    with alice(env) as conn:
        assert conn.execute(sql, ("cli", 1)).rowcount == 1
    env.wait_records(lambda r: r["type"] == "approval" and r["request"] == first and r["event"] == "approve"
                     and r["comment"] == "cli ok", "the CLI decision, chained by the gateway")


@pytest.mark.skipif(asyncpg is None, reason="asyncpg is not installed")
def test_asyncpg_ticket_with_binary_parameters(env, pg):
    async def run():
        conn = await asyncpg.connect(host=env.gw.host, port=env.gw.port, user=GW_USER, password=GW_PASSWORD,
                                     database="app", ssl=False)
        sql = "UPDATE ap.ticket_items SET name = $1 WHERE id = $2"
        try:
            with pytest.raises(asyncpg.PostgresError) as info:
                await conn.execute(sql, "binary", 2)
            assert info.value.sqlstate == "PW001"
            request_id = _request_id(info.value.args[0])
            await asyncio.to_thread(env.decide, request_id, "approve")
            with pytest.raises(asyncpg.PostgresError) as info:
                await conn.execute(sql, "binary", 1)  # other parameters: not approved
            assert info.value.sqlstate == "PW001"
            assert await conn.execute(sql, "binary", 2) == "UPDATE 1"
            return request_id
        finally:
            await conn.close()

    request_id = asyncio.run(run())
    assert env.get(request_id).status == "executed" and value(pg, "ticket_items", 2) == "binary"
