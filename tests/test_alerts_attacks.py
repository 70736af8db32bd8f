"""Alerts, metrics and health against a hostile database client (and hostile sinks).

The client controls SQL text, user names in startup packets, the protocol
messages it sends and how many it sends. Each test states the attack and
asserts the safe outcome, on a real gateway in front of the test PostgreSQL
where the question is what a client can do, and on the delivery parts alone
where the attacker is the receiver of the alerts. Waits are deadlines for
something to happen, never assertions of speed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import struct
import threading
import time

import httpx
import psycopg
import pytest

from pgwarden.alerts.limits import RateLimiter
from pgwarden.alerts.model import Alert
from pgwarden.alerts.sinks import SyslogAlertSink, slack_payload
from pgwarden.config_alerts import SyslogAlertSink as SyslogAlertSinkConfig
from pgwarden.identity.apikeys import ApiKeyStore
from pgwarden.services.webhooks import WebhookDelivery, WebhookItem
from pgwarden.store.sinks import syslog_message
from pgwarden.testing.gateway import RunningGateway, gateway_config
from pgwarden.wire import encode

from conftest import GW_PASSWORD, GW_USER
from rawclient import RawClient, ServerError
from test_alerts import Hanging, Receiver, wait_for

HOSTILE = ("SELECT * FROM aa_h -- <!channel> @here [click here](https://evil.example) <https://evil|x>\n"
           "-- ALERT [critical] forged")


@pytest.fixture(scope="module")
def env(pg, gw_users, tls_files, tmp_path_factory):
    pg.psql(
        "drop table if exists aa_items, aa_s1, aa_s2, aa_s3, aa_s4, aa_h;"
        "create table aa_items (id int); insert into aa_items values (1);"
        "create table aa_s1 (id int); create table aa_s2 (id int); create table aa_s3 (id int);"
        "create table aa_s4 (id int); create table aa_h (id int);"
        "grant all on aa_items, aa_s1, aa_s2, aa_s3, aa_s4, aa_h to app",
        database="appdb",
    )
    data_dir = tmp_path_factory.mktemp("alerts-attacks")
    receiver = Receiver()
    rules = [{"name": f"secret-{i}", "match": {"tables": f"public.aa_s{i}"}, "action": "deny"} for i in range(1, 5)]
    rules.append({"name": "hostile", "match": {"tables": "public.aa_h"}, "action": "deny"})
    config = gateway_config(
        pg, users=gw_users, data_dir=str(data_dir),
        tls={"mode": "prefer", "cert": str(tls_files["cert"]), "key": str(tls_files["key"])},
        listen={"login_throttle": {"after": 100000}},
        logging={"statements": False},
        roles={"agent": {"targets": ["app"], "access": "read"}},
        api={"enabled": True, "port": 0},
        guardrails={"packs": ["dangerous"], "rules": rules},
        alerts={
            "auth_failures": {"threshold": 3, "window": "1h"},
            "sinks": [
                # A tight limit with a long period: without per-severity budgets the flood below
                # would hold every later alert back for an hour.
                {"name": "json", "type": "webhook", "url": receiver.url("/json"),
                 "rate_limit": {"max": 2, "per": "1h"}},
                {"name": "slack", "type": "webhook", "url": receiver.url("/slack"), "format": "slack",
                 "rate_limit": None},
                {"name": "log", "type": "log", "rate_limit": None},
            ],
        },
    )
    with RunningGateway(config) as gw:
        yield gw, receiver, ApiKeyStore(config.identity.api_keys_file)


def connect(gw, user=GW_USER, password=GW_PASSWORD):
    return psycopg.connect(host=gw.host, port=gw.port, user=user, password=password, dbname="app",
                           sslmode="require", autocommit=True)


def alerts(receiver, path="/slack", **match):
    return [body for body, _ in receiver.alerts(path, **match)]


def slack_texts(receiver, needle: str) -> list[str]:
    return [b["text"] for b in alerts(receiver, "/slack") if needle in b["text"]]


# ---------------------------------------------------------------- suppression


def test_a_refused_function_call_raises_an_alert(env):
    """The relay refuses a fast-path FunctionCall itself; the pipeline's ``decided`` never
    sees it, so it used to raise no alert at all."""
    gw, receiver, _ = env
    with RawClient(gw.host, gw.port) as client:
        client.login(GW_USER, GW_PASSWORD)
        client.send(encode.message(b"F", struct.pack("!Ihhh", 1598, 0, 0, 0)))
        replies = client.read_until(b"Z")
        assert any(t == b"E" for t, _ in replies)
    texts = wait_for(lambda: slack_texts(receiver, "protocol.function_call"), "the FunctionCall alert")
    assert "Statement blocked" in texts[0]


def test_refusals_in_pipelines_and_multi_statement_strings_raise_alerts(env):
    gw, receiver, _ = env
    with connect(gw) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT 1; TRUNCATE aa_items")  # a multi-statement simple Query
        with pytest.raises(psycopg.Error):
            with conn.pipeline():
                conn.execute("SELECT * FROM aa_s3 WHERE id = %s", (1,))  # extended protocol, pipelined
                conn.execute("SELECT * FROM aa_s4 WHERE id = %s", (1,))
    wait_for(lambda: slack_texts(receiver, "TRUNCATE aa_items"), "the multi-statement refusal")
    wait_for(lambda: slack_texts(receiver, "(secret-3)"), "the pipelined refusal")


def test_a_flood_of_warnings_never_holds_back_high_or_critical_alerts(env):
    """Distinct refused statements exhaust the JSON sink's budget (2 per hour); a revoked API
    key (high) and an unwritable trail (critical) must still go out at once, each itself."""
    gw, receiver, keys = env
    with connect(gw) as conn:
        for table in ("aa_s1", "aa_s2", "aa_s1", "aa_s2"):
            for _ in range(3):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute(f"SELECT * FROM {table}")
        for statement in ("DELETE FROM aa_items", "DROP TABLE aa_s1", "TRUNCATE aa_s2"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
    wait_for(lambda: gw.call(lambda: gw.gateway.alerts.stats())["rate_limited"]["json"] >= 1,
             "the flood to reach the rate limit")
    key = keys.create("attacks-revoked", ["agent"])
    assert keys.revoke("attacks-revoked")
    with pytest.raises(psycopg.OperationalError):
        connect(gw, "svc", key)
    revoked = wait_for(lambda: alerts(receiver, "/json", kind="revoked_identity"), "revoked_identity on the JSON sink")
    assert revoked[0]["severity"] == "high" and not revoked[0]["summary"]
    gw.call(lambda: gw.gateway.alerts.audit_failed("disk full"))  # the writer's hook
    critical = wait_for(lambda: alerts(receiver, "/json", kind="audit_store_unavailable"), "the critical alert")
    assert critical[0]["severity"] == "critical"
    assert not alerts(receiver, "/json", kind="alerts_suppressed")  # the hour has not passed


# ---------------------------------------------------------------- client-chosen text


def test_user_names_cannot_forge_revoked_identity_alerts_or_metric_labels(env):
    """A user name containing the words of a revocation used to make a failed password login
    a high-severity revoked_identity alert (one per distinct name) and a `revoked` label."""
    gw, receiver, _ = env
    names = ["x was revoked", "token rejected (revoked)", "api key rejected (revoked) y"]
    revoked_before = revoked_label(gw)
    for name in names:
        with pytest.raises(psycopg.OperationalError):
            connect(gw, user=name, password="wrong")
    found = wait_for(lambda: [t for t in slack_texts(receiver, "failed logins") if "127.0.0.1" in t],
                     "the auth_failures alert")
    assert found
    assert not [b for b in alerts(receiver, "/slack") if "Revoked credential used by" in b["text"]
                and any(n in b["text"] for n in names)]
    metrics = httpx.get(f"{gw.gateway.api.url}/metrics", timeout=10).text
    assert revoked_label(gw) == revoked_before  # counted as other, not as revocations
    for name in names:
        assert name not in metrics  # no label carries a user name


def revoked_label(gw) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{gw.gateway.api.url}/metrics", timeout=10).text
    return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
               if sample.name == "pgwarden_auth_failures_total" and sample.labels.get("reason") == "revoked")


def test_huge_distinct_user_names_keep_alert_state_bounded(env):
    """Startup packets carry up to 10 kB of user name; failure tracking keys them bounded."""
    gw, _, _ = env
    for i in range(30):
        name = f"{i:04d}" + "u" * 9000
        with pytest.raises(psycopg.OperationalError):
            connect(gw, user=name, password="wrong")
    counter = gw.gateway.alerts.failures
    keys = gw.call(lambda: list(counter._keys))
    assert len(keys) >= 30 and max(map(len, keys)) <= 100
    windows = gw.call(lambda: [(k, w.alert) for k, w in gw.gateway.alerts.deduper._open.items()])
    assert all(len(key) <= 200 and len(a.title) <= 300 and len(a.user or "") <= 256 for key, a in windows)


def test_hostile_sql_is_inert_in_slack_and_the_log(env, caplog):
    gw, receiver, _ = env
    with caplog.at_level(logging.WARNING, logger="pgwarden.alerts"):
        with connect(gw) as conn:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(HOSTILE)
        text = wait_for(lambda: slack_texts(receiver, "aa_h -- "), "the Slack message")[0]
    assert "<!channel>" not in text and "&lt;!channel&gt;" in text and "<https://evil" not in text
    assert "@here" not in text and "@\u200bhere" in text  # Mattermost/Teams: no mention
    assert "](https://evil" not in text and "]\u200b(https://evil" in text  # no disguised link
    assert text.count("\n") == 2  # head, text, facts: the SQL's newline forges no line
    logged = [r.getMessage() for r in caplog.records if "aa_h -- " in r.getMessage()]
    assert logged and all("\n" not in m for m in logged)
    body = alerts(receiver, "/json", kind="statement_blocked")
    raw = [b for b in body if "aa_h -- " in (b["details"].get("statement") or "")]
    # The JSON keeps the statement as it was (JSON escapes it); the one-line title/text do not break.
    assert not raw or "\n" in raw[0]["details"]["statement"]


def test_syslog_structured_data_escapes_hostile_values():
    message = syslog_message(4 + 13 * 8, None, "alert", [("session", 'a"] [evil x="1\\')], b"{}", "h", "app", "1")
    head = message.split(b"\xef\xbb\xbf")[0].decode()
    assert head.endswith('session="a\\"\\] [evil x=\\"1\\\\"] ')
    assert "\n" not in message.decode()


def test_slack_payload_escapes_every_client_field():
    alert = Alert("auth_failures", "high", "3+ failed logins for user <!here>", "latest as <!channel>\nx",
                  user="<@U123>", client="1.2.3.4:5", target="app")
    text = slack_payload(alert, "gw")["text"]
    assert "<!here>" not in text and "<!channel>" not in text and "<@U123>" not in text


# ---------------------------------------------------------------- metrics and health


def test_concurrent_scrapes_share_one_pending_count():
    from types import SimpleNamespace

    from pgwarden.server.metrics import GatewayMetrics

    calls = []

    class Store:
        async def list(self, status, limit):
            calls.append(status)
            await asyncio.sleep(0.05)
            return [1, 2]

    broker = SimpleNamespace(service=object(), store=Store(), _waiters=())
    gateway = SimpleNamespace(approvals=broker, audit_writer=None, alerts=None)
    config = SimpleNamespace(targets={})
    metrics = GatewayMetrics(config, gateway)

    async def main():
        await asyncio.gather(*(metrics.refresh() for _ in range(50)))

    asyncio.run(main())
    assert calls == ["pending"] and metrics._pending == 2


def test_concurrent_health_requests_share_one_round_of_probes(env):
    gw, _, _ = env
    from pgwarden.web import health as health_module

    probes = []
    real = health_module._probe

    async def counting(host, port, timeout):
        probes.append(host)
        return await real(host, port, timeout)

    checker = health_module.HealthChecker(gw.gateway, cache_seconds=60)

    async def main():
        health_module._probe = counting
        try:
            return await asyncio.gather(*(checker.check() for _ in range(100)))
        finally:
            health_module._probe = real

    results = gw.call(main)
    assert len(probes) == len(gw.gateway.config.targets) and all(ok for ok, _ in results)
    body = results[0][1]
    assert set(body["checks"]["upstreams"]["app"]) <= {"ok", "seconds", "error"}  # no host names


# ---------------------------------------------------------------- hostile receivers


class Target:
    def __init__(self, url: str, timeout: float = 5.0, max_attempts: int = 1) -> None:
        self.url, self.headers, self.timeout, self.max_attempts = url, {}, timeout, max_attempts


class Evil:
    """A raw HTTP receiver: ``endless`` (200, then a body that never ends) or ``trickle``
    (one byte of the status line at a time, never complete)."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.sent = 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}/hook"

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            conn.recv(65536)
            if self.mode == "endless":
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n")
                chunk = b"%x\r\n%s\r\n" % (65536, b"x" * 65536)
                while not self.stop.is_set() and self.sent < (256 << 20):
                    conn.sendall(chunk)
                    self.sent += 65536
            else:
                for byte in b"HTTP/1.1 200 OK\r\n":
                    if self.stop.is_set():
                        break
                    conn.sendall(bytes([byte]))
                    time.sleep(0.15)
                self.stop.wait()
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self.stop.set()
        self.sock.close()


def item(priority: int = 0, label: str = "warning") -> WebhookItem:
    return WebhookItem(0, b"{}", label, {}, priority)


def test_an_endless_response_body_is_never_read():
    evil = Evil("endless")

    async def main():
        delivery = WebhookDelivery([Target(evil.url)])
        delivery.start()
        delivery.put([item()])
        while delivery.delivered + delivery.failed == 0:
            await asyncio.sleep(0.02)
        await delivery.stop(timeout=1)
        return delivery

    try:
        delivery = asyncio.run(main())
    finally:
        evil.close()
    assert delivery.delivered == 1 and delivery.failed == 0
    assert evil.sent < (64 << 20)  # it stopped streaming into the gateway long before the 256 MB


def test_a_trickling_receiver_is_bounded_by_the_timeout_per_attempt():
    """httpx's timeout bounds each read; a status line sent a byte at a time kept one attempt
    (and its delivery slot) alive as long as the receiver liked."""
    evil = Evil("trickle")

    async def main():
        delivery = WebhookDelivery([Target(evil.url, timeout=0.5)])
        delivery.start()
        delivery.put([item()])
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while delivery.failed == 0 and loop.time() < deadline:
            await asyncio.sleep(0.05)
        await delivery.stop(timeout=0.1)
        return delivery

    try:
        delivery = asyncio.run(main())
    finally:
        evil.close()
    assert delivery.failed == 1 and delivery.delivered == 0


def test_retry_after_is_capped():
    delivery = WebhookDelivery([Target("http://127.0.0.1:9/")], max_backoff=60)
    for header in ("1e9", "inf", "nan", "-5", "soon"):
        response = httpx.Response(429, headers={"Retry-After": header})
        assert 0 < delivery._delay(1, response) <= 60


def test_a_full_webhook_queue_makes_room_for_a_critical_alert_and_sends_it_first():
    hanging = Hanging()

    async def main():
        delivery = WebhookDelivery([Target(hanging.url(), timeout=60)], queue_size=5, per_target=1)
        delivery.start()
        delivery.put([item(1, f"warning {n}") for n in range(20)])  # one in flight, four waiting, 15 dropped
        await asyncio.sleep(0)
        delivery.put([item(3, "critical")])
        waiting = [entry[3].label for entry in sorted(delivery._waiting[0])]
        queued = delivery.queued(0)
        await delivery.stop(timeout=0.1)
        return waiting, queued, delivery

    waiting, queued, delivery = asyncio.run(main())
    assert waiting[0] == "critical"  # next in line, ahead of the warnings
    assert queued == 5 and delivery.stats[0]["dropped"] >= 16


def test_a_syslog_receiver_that_never_reads_bounds_memory_and_keeps_critical_alerts():
    server = socket.create_server(("127.0.0.1", 0))
    held = []
    threading.Thread(target=lambda: held.append(server.accept()), daemon=True).start()
    config = SyslogAlertSinkConfig(type="syslog", name="siem", address="127.0.0.1",
                                   port=server.getsockname()[1], protocol="tcp", queue_size=50)

    def alert(severity: str, n: int) -> Alert:
        return Alert("statement_blocked" if severity == "warning" else "audit_store_unavailable", severity,
                     "t", "x" * 4000, key=str(n))

    async def main():
        sink = SyslogAlertSink(config, time.time, "host")
        await sink.start()
        for n in range(5000):
            sink.send(alert("warning", n), "gw")
            if n % 100 == 0:
                await asyncio.sleep(0.01)
        sink.send(alert("critical", -1), "gw")
        queue = list(sink.transport.queue)
        await sink.stop(timeout=0.5)  # bounded although the receiver reads nothing
        return queue, sink

    try:
        queue, sink = asyncio.run(main())
    finally:
        server.close()
        for conn, _ in held:
            conn.close()
    assert len(queue) <= 50 and sink.stats()["dropped"] > 1000
    assert any(json.loads(body)["severity"] == "critical" for _, body in queue)


def test_rate_limits_are_per_kind_and_critical_is_never_held():
    now = [1000.0]
    limiter = RateLimiter(2, 60, lambda: now[0])
    warn = Alert("statement_blocked", "warning", "t", "x")
    high = Alert("exfiltration", "high", "t", "x")
    crit = Alert("audit_store_unavailable", "critical", "t", "x")
    flood = Alert("auth_failures", "high", "t", "x")  # failed logins with made-up user names
    revoked = Alert("revoked_identity", "high", "t", "x")
    assert [limiter.allow(warn) for _ in range(50)].count(True) == 2
    assert [limiter.allow(flood) for _ in range(50)].count(True) == 2
    assert limiter.allow(revoked)  # same severity as the flood, its own budget
    assert [limiter.allow(high) for _ in range(2)] == [True, True]
    assert all(limiter.allow(crit) for _ in range(100))
    assert not limiter.allow(high)
    now[0] += 60
    held = limiter.due()
    assert held.count == 97 and held.severity == "high"
    assert held.kinds == {"statement_blocked": 48, "auth_failures": 48, "exfiltration": 1}
