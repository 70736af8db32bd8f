"""Metrics and health on the gateway's HTTP port (docs/metrics.md), end to end.

A real gateway (api.enabled, port 0) in front of the test PostgreSQL runs a
known workload with real clients (psycopg): a static SCRAM user's allowed and
refused statements, a wrong password, a ticket-mode approval request, a masked
read by a token role and a large result. ``/metrics`` is scraped with httpx and
parsed with prometheus_client's own parser, and every count the workload
produced is asserted exactly (asynchronous ones are polled for, with a
deadline that is never an assertion of speed).

Health runs on a second gateway whose second target points at a closed port
and whose audit trail is a PostgreSQL database the test can close to
connections (``ALLOW_CONNECTIONS false``), which the writer then cannot reach.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pgwarden.config import parse_config
from pgwarden.testing.gateway import RunningGateway, gateway_config

from conftest import GW_PASSWORD, GW_USER
from masking_env import CUSTOMERS, TARGET, config_data, reset_database
from masking_env import Env as MaskEnv

ALLOWED = 4  # SELECTs alice runs
DENIED = 2  # DELETEs the guardrail rule refuses
BIG = 100_000  # bytes of one value in a large result


# ---------------------------------------------------------------- helpers


def scrape(url: str) -> dict[tuple[str, frozenset], float]:
    response = httpx.get(f"{url}/metrics", timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples: dict[tuple[str, frozenset], float] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[sample.name, frozenset(sample.labels.items())] = sample.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    """The sum of the samples called ``name`` whose labels include ``labels`` (0 when none)."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


def present(samples: dict, name: str) -> bool:
    return any(n == name for n, _ in samples)


def eventually(url: str, check, what: str, timeout: float = 20.0) -> dict:
    """Scrape until ``check(samples)`` holds; the last scrape. (For counts written asynchronously.)"""
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(url)
        if check(samples):
            return samples
        if time.monotonic() > deadline:
            pytest.fail(f"metrics never showed {what}")
        time.sleep(0.05)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---------------------------------------------------------------- the main gateway


@dataclass
class Main:
    gw: RunningGateway
    env: MaskEnv
    url: str

    def alice(self, password: str = GW_PASSWORD) -> psycopg.Connection:
        return psycopg.connect(self.gw.dsn(GW_USER, password, database=TARGET, sslmode="disable"), autocommit=True)


@pytest.fixture(scope="module")
def main(pg, gw_users, tmp_path_factory) -> Iterator[Main]:
    base = tmp_path_factory.mktemp("metrics")
    reset_database(pg)
    data = config_data(pg, base, audit=True)
    data["users"] = gw_users
    data["api"] = {"enabled": True, "port": 0}
    data["guardrails"] = {"rules": [
        {"name": "no-order-deletes", "match": {"tables": "orders", "command": ["DELETE"]}, "action": "deny"},
        {"name": "review-order-updates", "match": {"tables": "orders", "command": ["UPDATE"]}, "action": "review"},
    ]}
    data["approvals"] = {"enabled": True, "mode": "ticket", "reviewer_roles": ["dba"]}
    config = parse_config(data)
    with RunningGateway(config) as gw:
        yield Main(gw, MaskEnv(gw, config), gw.gateway.api.url)


def test_metrics_show_the_counts_of_a_workload(main):
    url = main.url
    before = scrape(url)
    assert value(before, "pgwarden_build_info") == 1
    # A fresh gateway: nothing counted yet, but the families exist (targets pre-labelled).
    assert value(before, "pgwarden_sessions_total") == 0
    assert value(before, "pgwarden_sessions_live", target=TARGET) == 0
    assert value(before, "pgwarden_upstream_connect_seconds_count", target=TARGET) == 0
    assert value(before, "pgwarden_audit_store_up") == 1

    # A wrong password: refused in the SCRAM exchange.
    with pytest.raises(psycopg.OperationalError):
        main.alice("not-the-password")

    alice = main.alice()
    for _ in range(ALLOWED):
        assert len(alice.execute("SELECT id FROM orders ORDER BY id").fetchall()) == 3
    assert alice.execute("SELECT id FROM orders WHERE id = %s", (1,)).fetchall() == [(1,)]
    for _ in range(DENIED):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            alice.execute("DELETE FROM orders WHERE id = 99")
    with pytest.raises(psycopg.Error) as ticket:  # ticket mode: refused at once with a request
        alice.execute("UPDATE orders SET total = total WHERE id = 1")
    assert ticket.value.sqlstate == "PW001"
    (big,) = alice.execute(f"SELECT repeat('x', {BIG})").fetchone()
    assert len(big) == BIG

    analyst = main.env.connect("analyst")
    emails = [row[0] for row in analyst.execute("SELECT email FROM customers ORDER BY id")]
    assert len(emails) == len(CUSTOMERS) and not set(emails) & {c[2] for c in CUSTOMERS}

    during = scrape(url)
    assert value(during, "pgwarden_sessions_live", target=TARGET) == 2
    assert value(during, "pgwarden_sessions_total", target=TARGET, role="user:alice") == 1
    assert value(during, "pgwarden_sessions_total", target=TARGET, role="analyst") == 1
    # Bytes of live sessions count at once.
    assert value(during, "pgwarden_bytes_total", direction="from_upstream") >= BIG
    analyst.close()
    alice.close()

    after = eventually(url, lambda s: value(s, "pgwarden_sessions_live", target=TARGET) == 0, "no live sessions")
    # Logins: two accepted (SCRAM and a token as password), one refused for its password.
    assert value(after, "pgwarden_auth_attempts_total", outcome="ok", method="scram-sha-256") == 1
    assert value(after, "pgwarden_auth_attempts_total", outcome="ok", method="password") == 1
    assert value(after, "pgwarden_auth_attempts_total", outcome="refused") == 1
    assert value(after, "pgwarden_auth_failures_total") == 1
    assert value(after, "pgwarden_auth_failures_total", reason="bad_password") == 1
    assert value(after, "pgwarden_sessions_total") == 2
    assert value(after, "pgwarden_upstream_connect_seconds_count", target=TARGET) == 2
    assert value(after, "pgwarden_upstream_connect_failures_total", target=TARGET) == 0

    # Statements: psycopg runs each execute() as Parse + Bind + Execute; the policy decides
    # the Parse and the Execute. A refused Parse ends the request (its Execute is never decided).
    # Statements: psycopg sends a statement without parameters as a simple Query, one with
    # parameters as Parse + Bind + Execute (the policy decides the Parse and the Execute).
    queries = ALLOWED + 1 + 1  # alice's SELECTs, the big SELECT, the analyst's SELECT
    assert value(after, "pgwarden_statements_total", verdict="allow", kind="query") == queries
    assert value(after, "pgwarden_statements_total", verdict="allow", kind="parse") == 1
    assert value(after, "pgwarden_statements_total", verdict="allow", kind="execute") == 1
    assert value(after, "pgwarden_statements_total", verdict="deny", kind="query") == DENIED + 1
    assert value(after, "pgwarden_statements_total", verdict="deny") == DENIED + 1
    assert value(after, "pgwarden_statements_total", verdict="rewrite") == 0
    assert value(after, "pgwarden_statements_denied_total", rule="no-order-deletes") == DENIED
    assert value(after, "pgwarden_statements_denied_total", rule="approvals.required") == 1
    assert value(after, "pgwarden_statements_denied_total") == DENIED + 1
    # Rows from the command tags: 3 per orders SELECT, 1 by id, 1 big row, 3 customers.
    assert value(after, "pgwarden_rows_total", command="SELECT") == ALLOWED * 3 + 1 + 1 + len(CUSTOMERS)
    # Masking: the analyst's three emails, in one statement.
    assert value(after, "pgwarden_masked_values_total") == len(CUSTOMERS)
    assert value(after, "pgwarden_masked_statements_total") == 1
    # Approvals: the ticket's request, still pending.
    assert value(after, "pgwarden_approval_events_total", event="requested") == 1
    assert value(after, "pgwarden_approval_events_total") == 1
    assert value(after, "pgwarden_approvals_pending") == 1
    assert value(after, "pgwarden_approvals_held") == 0
    # Bytes: the big value came from the upstream; the clients sent at least their SQL.
    assert value(after, "pgwarden_bytes_total", direction="from_upstream") >= BIG
    assert value(after, "pgwarden_bytes_total", direction="from_client") >= (
        ALLOWED * len("SELECT id FROM orders ORDER BY id") + DENIED * len("DELETE FROM orders WHERE id = 99"))
    # The audit trail: every record made durable and counted, the store up, nothing queued.
    writer = main.gw.gateway.audit_writer
    main.gw.call(writer.flush)
    audit = eventually(url, lambda s: value(s, "pgwarden_audit_records_written_total") == writer.written,
                       "every audit record counted")
    assert value(audit, "pgwarden_audit_records_written_total") > 0
    assert value(audit, "pgwarden_audit_write_seconds_count") >= 1
    assert value(audit, "pgwarden_audit_store_up") == 1
    assert value(audit, "pgwarden_audit_queue_depth") == 0
    assert value(audit, "pgwarden_audit_failures_total") == 0
    # No label carries SQL or a session.
    sessions = {conn.id for conn in list(main.gw.gateway.sessions)} | {"FROM", "orders", "customers"}
    for (_name, labels) in audit:
        for _key, label in labels:
            assert not any(s in label for s in sessions), label
    # Alerts (the guardrail refusals raise some): the engine's own counts, as metrics.
    stats = main.gw.call(lambda: main.gw.gateway.alerts.stats()) if main.gw.gateway.alerts is not None else None
    if stats is not None:
        samples = scrape(url)
        # (scraped after stats(): deliveries still under way can only have added)
        assert value(samples, "pgwarden_alerts_raised_total") >= sum(stats["raised"].values()) > 0
        for sink, counts in stats["sinks"].items():
            delivered = value(samples, "pgwarden_alert_deliveries_total", sink=sink, outcome="delivered")
            assert delivered >= counts["delivered"]


def test_health_is_ok_when_store_and_upstreams_are(main):
    response = httpx.get(f"{main.url}/health", timeout=10)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "ok" and "failing" not in body
    assert body["checks"]["audit"] == {**body["checks"]["audit"], "ok": True, "enabled": True, "store": "sqlite"}
    assert body["checks"]["upstreams"][TARGET]["ok"] is True
    # The liveness route keeps its answer.
    live = httpx.get(f"{main.url}/api/v1/health", timeout=10)
    assert (live.status_code, live.json()) == (200, {"status": "ok"})


# ---------------------------------------------------------------- health when things fail

AUDIT_DB = "pgw_metrics_audit"


def _audit_db(pg, allow: bool) -> None:
    pg.psql(f"ALTER DATABASE {AUDIT_DB} ALLOW_CONNECTIONS {'true' if allow else 'false'}")
    if not allow:
        pg.psql(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{AUDIT_DB}'")


@pytest.fixture()
def failing(pg, gw_users, tmp_path) -> Iterator[RunningGateway]:
    pg.psql(f"DROP DATABASE IF EXISTS {AUDIT_DB} WITH (FORCE)")
    pg.psql(f"CREATE DATABASE {AUDIT_DB} OWNER app")
    down = closed_port()
    config = gateway_config(
        pg, users=gw_users, data_dir=str(tmp_path), logging={"statements": False},
        api={"enabled": True, "port": 0},
        audit={"store": {"type": "postgres", "dsn": pg.dsn("app", AUDIT_DB)}},
    )
    targets = dict(config.targets)
    targets["down"] = targets["app"].model_copy(update={"host": "127.0.0.1", "port": down})
    config = config.model_copy(update={"targets": targets})
    try:
        with RunningGateway(config) as gw:
            yield gw
    finally:
        _audit_db(pg, True)
        pg.psql(f"DROP DATABASE IF EXISTS {AUDIT_DB} WITH (FORCE)")


def health(gw: RunningGateway) -> httpx.Response:
    return httpx.get(f"{gw.gateway.api.url}/health", timeout=10)


def wait_health(gw: RunningGateway, failing: list[str], timeout: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        response = health(gw)
        body = response.json()
        if body.get("failing", []) == failing:
            assert response.status_code == (503 if failing else 200)
            return body
        if time.monotonic() > deadline:
            pytest.fail(f"health never failed on {failing}: {body}")
        time.sleep(0.1)


def test_health_names_an_unreachable_upstream_and_a_failing_audit_store(failing, pg):
    gw = failing
    url = gw.gateway.api.url
    response = health(gw)
    assert response.status_code == 503, response.text
    body = response.json()
    assert body["status"] == "unhealthy" and body["failing"] == ["upstream:down"]
    assert body["checks"]["upstreams"]["down"] == {"ok": False, "error": "refused"}
    assert body["checks"]["upstreams"]["app"]["ok"] is True
    assert body["checks"]["audit"]["ok"] is True and body["checks"]["audit"]["store"] == "postgres"

    # A login to the unreachable target fails upstream, and is counted per target.
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(gw.dsn(GW_USER, GW_PASSWORD, database="down", sslmode="disable"))
    samples = scrape(url)
    assert value(samples, "pgwarden_upstream_connect_failures_total", target="down") == 1
    assert value(samples, "pgwarden_upstream_connect_failures_total", target="app") == 0
    # Approvals are off here: their routes say so.
    off = httpx.get(f"{url}/api/v1/approvals", timeout=10)
    assert off.status_code == 404 and off.json()["error"]["code"] == "approvals_off"
    assert not present(samples, "pgwarden_approvals_pending")

    conn = psycopg.connect(gw.dsn(GW_USER, GW_PASSWORD, sslmode="disable"), autocommit=True)
    try:
        _audit_db(pg, False)
        # The statement's record cannot be written: it is refused (58030), the writer is failed.
        with pytest.raises(psycopg.Error) as refused:
            conn.execute("SELECT 1")
        assert refused.value.sqlstate == "58030"
        body = wait_health(gw, ["audit", "upstream:down"])
        assert body["checks"]["audit"]["ok"] is False and body["checks"]["audit"]["error"] == "store_failed"
        samples = scrape(url)
        assert value(samples, "pgwarden_audit_store_up") == 0
        assert value(samples, "pgwarden_audit_failures_total") == 1
        assert value(samples, "pgwarden_statements_denied_total", rule="audit.unavailable") >= 1

        _audit_db(pg, True)
        wait_health(gw, ["upstream:down"], timeout=30)  # the writer's retry reached the store again
        assert value(scrape(url), "pgwarden_audit_store_up") == 1
    finally:
        conn.close()


# ---------------------------------------------------------------- switches


def test_metrics_off_and_approvals_off_answer_404(pg):
    """``api.metrics: false`` keeps no counters; the app without them says so (no gateway needed)."""
    import asyncio

    from pgwarden.server.metrics import build_metrics
    from pgwarden.web import ApiServer, build_app

    assert build_metrics(gateway_config(pg, api={"enabled": True, "metrics": False}), None) is None
    assert build_metrics(gateway_config(pg), None) is None  # api off: nothing would serve them

    async def main() -> None:
        async with ApiServer(build_app(), "127.0.0.1", 0) as server:
            async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
                r = await http.get("/metrics")
                assert r.status_code == 404 and r.json()["error"]["code"] == "metrics_off"
                r = await http.get("/api/v1/approvals/abcd")
                assert r.status_code == 404 and r.json()["error"]["code"] == "approvals_off"
                r = await http.get("/health")
                assert (r.status_code, r.json()) == (200, {"status": "ok", "checks": {}})

    asyncio.run(main())


def test_every_exposed_family_is_documented_and_histograms_have_only_the_usual_series():
    """Offline (no gateway): the exposition names only what docs/metrics.md names, and the
    upstream histogram has _bucket/_sum/_count and nothing else (no stray ``_created`` gauge)."""
    import asyncio
    import re
    from pathlib import Path
    from types import SimpleNamespace

    from pgwarden.server.metrics import GatewayMetrics

    config = SimpleNamespace(targets={"shop": object(), "reporting": object()})
    writer = SimpleNamespace(status=lambda: {"failed": False, "queued": 0, "written": 3, "dropped": 0})
    alerts = SimpleNamespace(stats=lambda: {"raised": {"statement_blocked/warning": 1},
                                            "sinks": {"log": {"delivered": 1, "failed": 0, "dropped": 0, "queued": 0}},
                                            "deduplicated": 0, "rate_limited": {"log": 0}})
    gateway = SimpleNamespace(approvals=None, audit_writer=writer, alerts=alerts)
    metrics = GatewayMetrics(config, gateway)
    metrics.upstream_connected("shop", 0.003, None)
    metrics.upstream_connected("shop", 0.2, None)
    metrics.upstream_connected("unknown-target", 0.2, None)  # not configured: not a new series
    metrics.audit_written(1, 0.001, 0)
    text = asyncio.run(metrics.render()).decode()

    documented = set(re.findall(r"^\| `(pgwarden_[a-z_]+)` \|",
                                (Path(__file__).parent.parent / "docs" / "metrics.md").read_text(), re.M))
    families = {f.name for f in text_string_to_metric_families(text)}
    typed = set(re.findall(r"^# TYPE (\S+) ", text, re.M))
    # prometheus_client's parser drops a counter's _total; the exposition keeps it.
    exposed = {n if n in documented else n + "_total" for n in families}
    assert exposed <= documented, exposed - documented
    assert not any(n.endswith("_created") for n in typed | families), typed

    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name, frozenset(sample.labels.items())] = sample.value
    assert value(samples, "pgwarden_upstream_connect_seconds_count", target="shop") == 2
    assert value(samples, "pgwarden_upstream_connect_seconds_count", target="reporting") == 0
    assert value(samples, "pgwarden_upstream_connect_seconds_bucket", target="shop", le="0.005") == 1
    assert value(samples, "pgwarden_upstream_connect_seconds_bucket", target="shop", le="+Inf") == 2
    assert abs(value(samples, "pgwarden_upstream_connect_seconds_sum", target="shop") - 0.203) < 1e-9
    assert not any(dict(labels).get("target") == "unknown-target" for _, labels in samples)
    upstream = {n for n, _ in samples if n.startswith("pgwarden_upstream_connect_seconds")}
    assert upstream == {"pgwarden_upstream_connect_seconds_bucket", "pgwarden_upstream_connect_seconds_sum",
                        "pgwarden_upstream_connect_seconds_count"}
