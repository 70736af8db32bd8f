"""Alerts end to end: a real gateway, a real PostgreSQL, psycopg, and local receivers.

One module-scoped gateway (SQLite trail) sends alerts to a local HTTP receiver
(JSON and Slack formats), a UDP syslog socket, a receiver that accepts and
never answers, and a port that refuses connections. The audit-store failure
uses a second gateway whose trail is a PostgreSQL database the test stops.
The only timed assertion is the issue's: the blocked-statement alert reaches
the webhook within one second of the client getting its error.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sqlite3
import time
from pathlib import Path

import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from pgwarden.identity.apikeys import ApiKeyStore
from pgwarden.store.records import parse_body
from pgwarden.store.signing import Signer
from pgwarden.store.sqlite import SqliteAuditStore
from pgwarden.testing.gateway import RunningGateway, gateway_config
from pgwarden.testing.receivers import HungReceiver, WebhookReceiver, closed_port_url

from conftest import GW_PASSWORD, GW_USER


class Receiver(WebhookReceiver):
    """Records every POST; :meth:`alerts` picks them by path and fields."""

    def alerts(self, path: str = "/json", **match) -> list[tuple[dict, float]]:
        return [(body, at) for p, body, at in list(self.posts)
                if p == path and all(body.get(k) == v for k, v in match.items())]


Hanging = HungReceiver
refused_url = closed_port_url


def wait_for(predicate, what: str, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def read_trail(path: Path) -> list[dict]:
    async def read() -> list[dict]:
        store = SqliteAuditStore(path)
        await store.open(create=False)
        try:
            return [parse_body(r.body) async for r in store.records()]
        finally:
            await store.close()

    return asyncio.run(read())


@pytest.fixture(scope="module")
def env(pg, gw_users, tls_files, tmp_path_factory):
    pg.psql(
        "drop table if exists al_items, al_secret, al_flag1, al_flag2, al_flag3, al_flag4;"
        "create table al_items (id int); insert into al_items values (1);"
        "create table al_secret (id int);"
        "create table al_flag1 (id int); create table al_flag2 (id int);"
        "create table al_flag3 (id int); create table al_flag4 (id int);"
        "grant all on al_items, al_secret, al_flag1, al_flag2, al_flag3, al_flag4 to app",
        database="appdb",
    )
    data_dir = tmp_path_factory.mktemp("alerts")
    receiver, hanging = Receiver(), Hanging()
    syslog = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    syslog.bind(("127.0.0.1", 0))
    syslog.settimeout(5)
    flags = [{"name": f"flag-{i}", "match": {"tables": f"public.al_flag{i}"}, "action": "alert"} for i in range(1, 5)]
    config = gateway_config(
        pg, users=gw_users, data_dir=str(data_dir),
        tls={"mode": "prefer", "cert": str(tls_files["cert"]), "key": str(tls_files["key"])},
        listen={"login_throttle": {"after": 1000}},
        logging={"statements": False},
        roles={"agent": {"targets": ["app"], "access": "read"}},
        guardrails={"packs": ["dangerous"], "rules": [
            {"name": "no-secret", "match": {"tables": "public.al_secret"}, "action": "deny"}, *flags]},
        alerts={
            "dedupe_window": "1s",
            "auth_failures": {"threshold": 3, "window": "1m"},
            "exfiltration": {"roles": {f"user:{GW_USER}": {"rows": 500}}},
            "sinks": [
                {"name": "json", "type": "webhook", "url": receiver.url("/json"), "rate_limit": None},
                {"name": "slack", "type": "webhook", "url": receiver.url("/slack"), "format": "slack",
                 "kinds": ["rule_alert"], "rate_limit": {"max": 2, "per": "2s"}},
                {"name": "hung", "type": "webhook", "url": hanging.url(), "timeout": "30s", "max_attempts": 1,
                 "queue_size": 3, "rate_limit": None},
                {"name": "refused", "type": "webhook", "url": refused_url(), "max_attempts": 1, "rate_limit": None},
                {"name": "siem", "type": "syslog", "address": "127.0.0.1", "port": syslog.getsockname()[1],
                 "min_severity": "high", "rate_limit": None},
                {"name": "log", "type": "log"},
            ],
        },
    )
    with RunningGateway(config) as gw:
        gw.gateway.alerts.drop_report_every = 0.5
        yield gw, receiver, syslog, ApiKeyStore(config.identity.api_keys_file), data_dir / "audit.sqlite"
    syslog.close()


def connect(gw, user=GW_USER, password=GW_PASSWORD):
    return psycopg.connect(gw.dsn(user, password, sslmode="require"), autocommit=True)


def test_a_blocked_statement_reaches_the_webhook_within_one_second(env):
    gw, receiver, *_ = env
    with connect(gw) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("DROP TABLE al_items")
        refused_at = time.monotonic()  # the client has its error
        found = wait_for(lambda: receiver.alerts(kind="statement_blocked", rule="dangerous.drop"), "the alert")
        body, arrived = found[0]
        assert arrived - refused_at < 1.0
        assert body["severity"] == "warning" and body["count"] == 1 and body["user"] == GW_USER
        assert "DROP TABLE al_items" in body["text"] and body["type"] == "pgwarden.alert"
        assert conn.execute("SELECT count(*) FROM al_items").fetchone() == (1,)  # the session goes on


def test_a_burst_of_identical_blocked_statements_is_one_alert_and_one_summary(env):
    gw, receiver, _, _, trail = env
    with connect(gw) as conn:
        for _ in range(50):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("SELECT * FROM al_secret")
    wait_for(lambda: receiver.alerts(rule="no-secret", summary=True), "the summary", timeout=5)
    alerts = [b for b, _ in receiver.alerts(rule="no-secret")]
    assert [(a["count"], a["summary"]) for a in alerts] == [(1, False), (49, True)]
    records = wait_for(lambda: [r for r in read_trail(trail) if r["type"] == "alert" and r["rule"] == "no-secret"][1:]
                       and [r for r in read_trail(trail) if r["type"] == "alert" and r["rule"] == "no-secret"],
                       "both alert records")
    assert [(r["kind"], r["severity"], r["count"]) for r in records] == [
        ("statement_blocked", "warning", 1), ("statement_blocked", "warning", 49)]
    assert records[0]["session"] and "json" in records[0]["sinks"] and records[1]["id"] == alerts[1]["id"]


def test_a_sinks_rate_limit_collapses_distinct_alerts_into_a_summary(env):
    gw, receiver, *_ = env
    with connect(gw) as conn:
        for i in range(1, 5):
            conn.execute(f"SELECT * FROM al_flag{i}")  # action: alert flags, the statements run
    wait_for(lambda: receiver.alerts("/slack"), "slack messages")
    summary = wait_for(lambda: [b for b, _ in receiver.alerts("/json", kind="alerts_suppressed")] or
                       [b for b, _ in receiver.alerts("/slack") if "held back" in b["text"]], "the summary", 6)
    texts = [b["text"] for b, _ in receiver.alerts("/slack")]
    assert len(texts) == 3 and sum("flagged a statement" in t for t in texts) == 2, texts
    assert "2 alert(s) held back" in texts[2] and "rule_alert ×2" in texts[2]
    assert summary and not receiver.alerts("/json", kind="alerts_suppressed")  # only to the sink that held back
    assert len(receiver.alerts("/json", kind="rule_alert")) == 4  # the JSON sink has no limit


def test_failing_sinks_do_not_hold_queries_and_drops_are_recorded(env):
    gw, receiver, _, _, trail = env
    with connect(gw) as conn:
        for i in range(200):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("DELETE FROM al_items")
            if i % 40 == 0:
                conn.execute("SELECT 1")
    wait_for(lambda: receiver.alerts(rule="dangerous.no_where", summary=True), "the healthy sink's summary")
    stats = gw.gateway.alerts.stats()["sinks"]
    assert stats["json"]["delivered"] >= 2 and stats["json"]["failed"] == 0
    wait_for(lambda: gw.gateway.alerts.stats()["sinks"]["refused"]["failed"] >= 2, "the refused sink to give up")
    dropped = wait_for(lambda: [r for r in read_trail(trail) if r["type"] == "audit"
                                and r["event"] == "alerts_dropped" and "refused" in r["sinks"]], "alerts_dropped")
    assert dropped[0]["dropped"] >= 1


def test_auth_failures_over_the_threshold_raise_one_alert(env):
    gw, receiver, syslog, *_ = env
    before = len(receiver.alerts(kind="auth_failures"))
    for _ in range(4):
        with pytest.raises(psycopg.OperationalError):
            connect(gw, password="wrong")
    alerts = wait_for(lambda: receiver.alerts(kind="auth_failures")[before:], "the auth_failures alert")
    assert [(b["severity"], b["count"], b["summary"]) for b, _ in alerts[:1]] == [("high", 1, False)]
    assert "127.0.0.1" in alerts[0][0]["title"]
    time.sleep(1.3)  # the de-duplication window closes: the fourth failure is a summary, not a new alert
    assert [b["summary"] for b, _ in receiver.alerts(kind="auth_failures")[before:]] == [False, True]
    # The syslog sink (high and above) got it as an RFC 5424 message.
    while True:
        data = syslog.recv(65536)
        if b'kind="auth_failures"' in data:
            break
    head, _, body = data.partition(b"] \xef\xbb\xbf")
    assert head.startswith(b"<107>1 ") and b" pgwarden " in head and b" alert [pgwarden@32473 id=" in head
    assert json.loads(body)["kind"] == "auth_failures"


def test_a_revoked_api_key_raises_revoked_identity(env):
    gw, receiver, _, keys, _ = env
    key = keys.create("alerts-revoked", ["agent"])
    with psycopg.connect(gw.dsn("svc", key, sslmode="require")) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
    assert keys.revoke("alerts-revoked")
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(gw.dsn("svc", key, sslmode="require"))
    body, _ = wait_for(lambda: receiver.alerts(kind="revoked_identity"), "revoked_identity")[0]
    assert body["severity"] == "high" and body["user"] == "svc" and "revoked" in body["details"]["reason"]


def test_a_big_select_raises_exfiltration_once(env):
    gw, receiver, *_ = env
    with connect(gw) as conn:
        assert len(conn.execute("SELECT generate_series(1, 400)").fetchall()) == 400
        assert not receiver.alerts(kind="exfiltration")
        conn.execute("SELECT generate_series(1, 200)").fetchall()  # 600 > 500
        conn.execute("SELECT generate_series(1, 200)").fetchall()
    body, _ = wait_for(lambda: receiver.alerts(kind="exfiltration"), "exfiltration")[0]
    assert body["severity"] == "high" and body["details"]["read"] == 600 and body["details"]["threshold"] == 500
    time.sleep(0.3)
    assert len(receiver.alerts(kind="exfiltration")) == 1


def test_periodic_verification_alerts_on_a_tampered_trail(env):
    """Last in the module: it breaks the trail on purpose."""
    gw, receiver, _, _, trail = env
    assert gw.call(gw.gateway.alerts.verify_now)["ok"]
    with connect(gw) as conn:
        conn.execute("SELECT 1")
    with sqlite3.connect(trail) as db:  # a forger replaces the public key the store pins
        forged = Signer(Ed25519PrivateKey.generate()).public_pem
        db.execute("UPDATE meta SET value = ? WHERE key = 'public_key_pem'", (forged,))
    gw.call(gw.gateway.audit_writer.checkpoint, "interval")
    report = gw.call(gw.gateway.alerts.verify_now)
    assert not report["ok"]
    body, _ = wait_for(lambda: receiver.alerts(kind="audit_verification_failed"), "the verification alert")[0]
    assert body["severity"] == "critical" and body["details"]["counts"]


def test_audit_store_failure_alerts(pg, gw_users, tmp_path):
    from pgwarden.store.postgres import PostgresAuditStore
    from pgwarden.testing.postgres import TestPostgres

    receiver = Receiver()
    with TestPostgres() as audit_pg:
        dsn = audit_pg.dsn("app", "appdb")
        config = gateway_config(
            pg, users=gw_users, data_dir=str(tmp_path), logging={"statements": False},
            audit={"store": {"type": "postgres", "dsn": dsn}},
            alerts={"sinks": [{"name": "json", "type": "webhook", "url": receiver.url("/json")}]},
        )
        with RunningGateway(config) as gw:
            with psycopg.connect(gw.dsn(GW_USER, GW_PASSWORD), autocommit=True) as conn:
                conn.execute("SELECT 1")
                audit_pg.stop_server()
                with pytest.raises(psycopg.Error):
                    conn.execute("SELECT 2")
                body, _ = wait_for(lambda: receiver.alerts(kind="audit_store_unavailable"), "the alert")[0]
                assert body["severity"] == "critical" and "refused" in body["text"]
                audit_pg.start_server()
                wait_for(lambda: receiver.alerts(kind="audit_store_recovered"), "the recovery alert", 15)

        async def read() -> list[dict]:
            store = PostgresAuditStore(dsn)
            await store.open(create=False)
            try:
                return [parse_body(r.body) async for r in store.records()]
            finally:
                await store.close()

        records = asyncio.run(read())
    kinds = [(r["kind"], r["severity"]) for r in records if r["type"] == "alert"]
    assert ("audit_store_unavailable", "critical") in kinds and ("audit_store_recovered", "info") in kinds
