"""Ticket-mode approvals, prepared statements, the CLI and shared stores, end to end.

What a user checks: a refused statement carries a request id (PW001); once
approved, exactly that statement with exactly those parameters runs once for
the same requester, also after a gateway restart; SQL EXECUTE cannot carry a
ticket; the CLI lists, shows and decides; and with the PostgreSQL store a
decision made through one gateway's API releases a hold on another.
"""

from __future__ import annotations

import asyncio
import subprocess
import threading
import time

import psycopg
import pytest
from psycopg import errors

from approvals_env import (
    SETUP_SQL, Client, alice, as_key, request_id_of, start_env, ticket_refusal, value, wait_until,
)
from conftest import GW_PASSWORD, GW_USER

try:
    import asyncpg
except ImportError:  # pragma: no cover - a test dependency
    asyncpg = None


@pytest.fixture(scope="module")
def env(pg, gw_users, tmp_path_factory):
    pg.psql(SETUP_SQL, database="appdb")
    from pgwarden.session.scram import make_verifier

    users = gw_users + [{"name": "key:victim", "scram_verifier": make_verifier("impostor-pw")}]
    gw, environment = start_env(pg, tmp_path_factory.mktemp("approvals"), users)
    try:
        yield environment
    finally:
        gw.__exit__(None, None, None)


# ---------------------------------------------------------------- ticket mode


def test_ticket_runs_once_for_exactly_the_approved_parameters(env, pg):
    sql = "UPDATE ap.ticket_items SET name = %s WHERE id = %s"
    with alice(env) as conn:
        first = request_id_of(ticket_refusal(conn, sql, ("t1", 1)))
        again = ticket_refusal(conn, sql, ("t1", 1))
        assert request_id_of(again) == first and "still waiting" in again  # no duplicate request
        assert conn.execute("select 1").fetchone() == (1,)
        env.decide(first, "approve")
        assert conn.execute(sql, ("t1", 1)).rowcount == 1  # the exact retry runs ...
        assert value(pg, "ticket_items", 1) == "t1"
        second = request_id_of(ticket_refusal(conn, sql, ("t1", 1)))  # ... once
        assert second != first
        env.decide(second, "approve")
        changed = request_id_of(ticket_refusal(conn, sql, ("t2", 1)))  # other parameters: a new approval
        assert changed not in (first, second)
        assert value(pg, "ticket_items", 1) == "t1"
        assert env.get(second).status == "approved"
    # Another identity cannot use alice's ticket.
    other = env.key("ticket-thief", ["developer"])
    with as_key(env, other) as conn:
        ticket_refusal(conn, sql, ("t1", 1))
    assert env.get(second).status == "approved"
    records = env.wait_records(
        lambda r: r["type"] == "statement" and (r.get("approval") or {}).get("request") == first
        and r["decision"]["action"] == "allow", "the ticket's statement")
    assert records[0]["approval"]["mode"] == "ticket"


def test_ticket_after_its_validity_is_refused(env, pg):
    sql = "UPDATE ap.expiry_items SET name = %s WHERE id = %s"
    with alice(env) as conn:
        request = request_id_of(ticket_refusal(conn, sql, ("late", 1)))
        env.decide(request, "approve")
        time.sleep(1.2)  # the policy's validity is one second
        fresh = request_id_of(ticket_refusal(conn, sql, ("late", 1)))
        assert fresh != request
    assert value(pg, "expiry_items", 1) == "a"


def test_ticket_survives_a_gateway_restart_and_webhooks_announce_it(env, pg, gw_users, tmp_path):
    import http.server
    import json as jsonlib

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
                request = request_id_of(ticket_refusal(conn, sql, ("restart", 2)))
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
                ticket_refusal(conn, sql, ("restart", 2))
            # The CLI's decision (made while no gateway ran) is now in the chain.
            env.wait_records(lambda r: r["type"] == "approval" and r["request"] == request and r["event"] == "approve",
                             "the CLI decision")
            # ... and announced by the gateway that chained it.
            wait_until(lambda: any(m["event"] == "approved" and m["request"]["id"] == request for m in received),
                       "the approved webhook")
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
        request_id = request_id_of(info.value.diag.message_primary)
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
        # Gateway B learns of the decision through LISTEN (its polls are 10 s apart).
        gw_b, env_b = start_env(pg, tmp_path / "b", gw_users, {**store, **identity}, poll_interval=10)
        assert gw_b.gateway.approvals.store.listening
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
        first = request_id_of(ticket_refusal(conn, sql, ("cli", 1)))
        second = request_id_of(ticket_refusal(conn, sql, ("cli-deny", 1)))
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
            request_id = request_id_of(info.value.args[0])
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


def test_a_statement_name_reparsed_across_a_sync_cannot_smuggle_the_old_text(env, pg):
    """Parse s = <review text> (passes: nothing runs at Parse), then pipelined: Parse s = SELECT 1 (PostgreSQL
    refuses it: s exists), Sync, Bind s, Execute, Sync. Checked as SELECT 1, the Execute would run the UPDATE."""
    from pgwarden.wire import encode

    from rawclient import RawClient

    bind = encode.message(b"B", b"\x00s1\x00" + b"\x00\x00" + b"\x00\x00" + b"\x00\x00")
    execute = encode.message(b"E", b"\x00" + b"\x00\x00\x00\x00")
    with RawClient(env.gw.host, env.gw.port) as raw:
        raw.login(GW_USER, GW_PASSWORD)
        raw.send(encode.parse("s1", "UPDATE ap.hold_items SET name = 'smuggled' WHERE id = 1") + encode.sync())
        assert [t for t, _ in raw.read_until(b"Z")] == [b"1", b"Z"]
        raw.send(encode.parse("s1", "SELECT 1") + encode.sync() + bind + execute + encode.sync())
        replies = raw.read_until(b"Z") + raw.read_until(b"Z")
    errors_seen = [body for t, body in replies if t == b"E"]
    assert len(errors_seen) == 2, replies  # 42P05 from PostgreSQL, then pgwarden's refusal of the Execute
    assert b"55000" in errors_seen[1] and b"being replaced" in errors_seen[1]
    assert value(pg, "hold_items", 1) != "smuggled"
    assert not [r for r in env.requests() if "smuggled" in r.statement]


def test_sessions_show_json_carries_the_approval(env, pg):
    import json
    import sys

    sql = "UPDATE ap.ticket_items SET name = %s WHERE id = %s"
    with alice(env, application_name="approval-json") as conn:
        request = request_id_of(ticket_refusal(conn, sql, ("json", 1)))
        env.decide(request, "approve")
        assert conn.execute(sql, ("json", 1)).rowcount == 1
    records = env.wait_records(lambda r: r["type"] == "statement" and (r.get("approval") or {}).get("request") == request
                               and r["decision"]["action"] == "allow", "the approved statement")
    session = records[0]["session"]
    env.gw.call(env.gw.gateway.audit_writer.flush)
    shown = subprocess.run([sys.executable, "-m", "pgwarden", "sessions", "show", session, "--json",
                            "--config", str(env.config_file)], capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    events = json.loads(shown.stdout)["events"]
    ran = [e for e in events if e["type"] == "statement" and (e.get("approval") or {}).get("status") == "executed"]
    assert ran and ran[0]["approval"]["request"] == request and ran[0]["approval"]["decisions"][0]["action"] == "approve"
    assert any(e["type"] == "approval" and e["fields"]["event"] == "requested" for e in events)


def _exec_prepared(conn, name: str, *params: str):
    """Bind/Execute a named statement through libpq (the protocol path drivers use)."""
    result = conn.pgconn.exec_prepared(name.encode(), [p.encode() for p in params])
    return result.status, (result.error_field(psycopg.pq.DiagnosticField.SQLSTATE) or b"").decode(), \
        result.command_tuples


def test_sql_prepare_behind_a_protocol_name_is_decided_on_what_runs(env, pg):
    """DEALLOCATE + SQL PREPARE re-use a protocol-prepared name: the Execute is decided on the new
    statement (review), not on the text the name had at its Parse."""
    with alice(env) as conn:
        assert conn.pgconn.prepare(b"swap", b"SELECT $1::int AS n", None).status == psycopg.pq.ExecStatus.COMMAND_OK
        assert _exec_prepared(conn, "swap", "1")[0] == psycopg.pq.ExecStatus.TUPLES_OK
        conn.execute("DEALLOCATE swap")
        conn.execute("PREPARE swap(int) AS UPDATE ap.hold_items SET name = 'swapped' WHERE id = $1")
        seen = {r.id for r in env.requests()}
        c = Client(lambda: _exec_prepared(conn, "swap", "1"))  # held: it is the UPDATE that is decided
        request = env.wait_for(lambda r: r.id not in seen, "a request for the swapped statement")
        assert "'swap'" in request.statement and "prepared statement swap" in request.reason
        env.decide(request.id, "deny")
        status, sqlstate, _ = c.outcome()[0]
        assert sqlstate == "42501"
    assert value(pg, "hold_items", 1) != "swapped"


def test_a_failed_protocol_parse_does_not_change_what_a_name_means(env, pg):
    """SQL PREPARE s AS <review>; protocol Parse s AS SELECT (PostgreSQL refuses: s exists); Execute s runs
    the SQL-prepared statement, never checked as the SELECT: pgwarden no longer vouches for s at all."""
    with alice(env) as conn:
        conn.execute("PREPARE keep(int) AS UPDATE ap.ticket_items SET name = 'kept' WHERE id = $1")
        failed = conn.pgconn.prepare(b"keep", b"SELECT $1::int AS n", None)
        assert failed.error_field(psycopg.pq.DiagnosticField.SQLSTATE) == b"42P05"
        status, sqlstate, _ = _exec_prepared(conn, "keep", "2")
        # A protocol Parse of the name (taken or refused) leaves its SQL meaning unknown: refused.
        assert sqlstate == "26000", (status, sqlstate)
    assert value(pg, "ticket_items", 2) != "kept"


def test_an_execute_pipelined_behind_sql_deallocate_and_prepare_is_refused(env, pg):
    """Query(DEALLOCATE s; PREPARE s AS <review>) and, before its answer, Bind s / Execute / Sync: until
    PostgreSQL answers, s may be either statement, so the Execute is refused."""
    from pgwarden.wire import encode

    from rawclient import RawClient

    bind = encode.message(b"B", b"\x00pipe\x00" + b"\x00\x00" + b"\x00\x01\x00\x00\x00\x011" + b"\x00\x00")
    execute = encode.message(b"E", b"\x00" + b"\x00\x00\x00\x00")
    with RawClient(env.gw.host, env.gw.port) as raw:
        raw.login(GW_USER, GW_PASSWORD)
        raw.send(encode.parse("pipe", "SELECT $1::int AS n") + encode.sync())
        assert [t for t, _ in raw.read_until(b"Z")] == [b"1", b"Z"]
        raw.send(encode.query("DEALLOCATE pipe; PREPARE pipe(int) AS UPDATE ap.hold_items SET name = 'piped' "
                              "WHERE id = $1") + bind + execute + encode.sync())
        replies = raw.read_until(b"Z") + raw.read_until(b"Z")
    refusals = [body for t, body in replies if t == b"E"]
    assert len(refusals) == 1 and b"55000" in refusals[0] and b"being replaced" in refusals[0], replies
    assert value(pg, "hold_items", 1) != "piped"


def test_one_requester_cannot_flood_the_reviewers(env, pg):
    sql = "UPDATE ap.ticket_items SET name = %s WHERE id = 1"
    with alice(env) as conn:
        for n in range(40):
            try:
                conn.execute(sql, (f"flood-{n}",))
            except psycopg.Error as exc:
                if exc.sqlstate == "53400":
                    assert "already has 25 approval requests waiting" in exc.diag.message_primary
                    break
                assert exc.sqlstate == "PW001", exc
        else:
            pytest.fail("the 26th pending request was accepted")
        assert conn.execute("select 1").fetchone() == (1,)
    mine = [r for r in env.requests("pending") if r.requester == "user:alice"]
    assert len(mine) == 25
    for request in mine:  # leave the queue empty for whoever runs next
        env.decide(request.id, "deny")


def test_a_ticket_pins_parameter_types_and_search_path(env, pg):
    sql = "UPDATE ap.ticket_items SET name = %s WHERE id = 1"
    with alice(env) as conn:
        request = request_id_of(ticket_refusal(conn, sql, ("typed",)))
        env.decide(request, "approve")
        # The same text and bytes, declared as another type: another statement.
        other_type = request_id_of(ticket_refusal(conn, "UPDATE ap.ticket_items SET name = %t WHERE id = 1",
                                                  (psycopg.types.json.Jsonb("typed"),)))
        assert other_type != request
    with alice(env) as conn:
        conn.execute("SET search_path = ap, public")  # an unqualified name may now mean another table
        with pytest.raises(psycopg.Error) as info:
            conn.execute(sql, ("typed",))
        assert info.value.sqlstate == "PW001"
    with alice(env) as conn:
        assert conn.execute(sql, ("typed",)).rowcount == 1  # the approved statement, as approved
    assert env.get(request).status == "executed"


def test_a_static_user_named_like_an_api_key_cannot_use_its_ticket(env, pg):
    """A static user called "key:victim" is "user:key:victim": the API key victim's ticket is not theirs."""
    key = env.key("victim", ["developer"])
    sql = "UPDATE ap.ticket_items SET name = %s WHERE id = 2"
    with as_key(env, key) as conn:
        request = request_id_of(ticket_refusal(conn, sql, ("victim",)))
    assert env.get(request).requester == "key:victim"
    env.decide(request, "approve")
    impostor = psycopg.connect(env.gw.dsn("key:victim", "impostor-pw", sslmode="disable"), autocommit=True)
    with impostor:
        other = request_id_of(ticket_refusal(impostor, sql, ("victim",)))
    assert other != request and env.get(other).requester == "user:key:victim"
    assert env.get(request).status == "approved"
    with as_key(env, key) as conn:
        assert conn.execute(sql, ("victim",)).rowcount == 1
