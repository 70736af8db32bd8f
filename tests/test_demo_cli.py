"""`pgwarden demo` as a new user runs it: start, connect with psql, Ctrl-C, run again."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from test_cli import _free_port


def _free_port_pair() -> int:
    """A free port whose next port is free too (the demo's reviewer API listens on port + 1)."""
    import socket

    for _ in range(50):
        port = _free_port()
        if port >= 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise AssertionError("no two consecutive free ports")


def _start_demo(data_dir: str, port: int) -> tuple[subprocess.Popen, str, list[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "pgwarden", "demo", "--data-dir", data_dir, "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith("postgresql://"):
            uri = line.strip()
            # The rest of the banner (hints, the replay command) ends with "Press Ctrl-C".
            while time.monotonic() < deadline:
                line = proc.stdout.readline()
                if not line:
                    break
                lines.append(line)
                if "Press Ctrl-C" in line:
                    break
            return proc, uri, lines
    proc.kill()
    raise AssertionError("demo printed no URI:\n" + "".join(lines))


def _stop(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    return out


@pytest.mark.skipif(shutil.which("psql") is None, reason="psql (PostgreSQL client) is not installed")
def test_demo_runs_serves_psql_and_reuses_its_data():
    data_dir = tempfile.mkdtemp(prefix="pgwarden-demo-test-")
    os.chmod(data_dir, 0o755)
    port = _free_port_pair()
    try:
        proc, uri, lines = _start_demo(data_dir, port)
        try:
            assert uri.startswith(f"postgresql://demo:") and f"@127.0.0.1:{port}/shop?sslmode=require" in uri
            assert any("Config:" in line and "pgwarden.yaml" in line for line in lines)
            result = subprocess.run(
                ["psql", uri, "-X", "-At", "-c", "select count(*) > 100 from customers",
                 "-c", "select email, ssn from customers limit 1"],
                capture_output=True, text=True, timeout=30,
            )
            assert result.returncode == 0, result.stderr
            assert result.stdout.split() == ["t", "****|****"]  # the static demo user sees PII masked
            tls = subprocess.run(
                ["psql", uri, "-X", "-At", "-c", "select 1"], capture_output=True, text=True, timeout=30,
                env={**os.environ, "PGSSLMODE": "disable"},
            )
            # the URI's sslmode=require wins over the environment; TLS is used
            assert tls.returncode == 0
            _check_demo_guardrails(lines, port)
            _check_demo_monitoring(port)
        finally:
            out = _stop(proc)
        assert proc.returncode == 0, out
        assert "Stopped." in out
        _check_demo_recording("".join(lines), data_dir)
        # A second run reuses the data and the password.
        proc2, uri2, lines2 = _start_demo(data_dir, port)
        try:
            assert uri2 == uri
            assert any("reused existing data" in line for line in lines2)
        finally:
            _stop(proc2)
        assert proc2.returncode == 0
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


def _token(config: str, sub: str, group: str) -> str:
    minted = subprocess.run(
        [sys.executable, "-m", "pgwarden", "token", "mint", "--config", config, "--sub", sub, "--groups", group],
        capture_output=True, text=True, timeout=30,
    )
    assert minted.returncode == 0, minted.stderr
    return minted.stdout.strip()


def _check_demo_guardrails(lines: list[str], port: int) -> None:
    """What the demo promises: the agent cannot drop through the MCP bypass; the developer writes but never drops."""
    config = next(line.split("Config:", 1)[1].strip() for line in lines if "Config:" in line)

    def psql(sub: str, group: str, sql: str) -> subprocess.CompletedProcess:
        dsn = f"host=127.0.0.1 port={port} dbname=shop user={sub} sslmode=require"
        env = {**os.environ, "PGPASSWORD": _token(config, sub, group)}
        return subprocess.run(["psql", dsn, "-X", "-At", "-c", sql], capture_output=True, text=True, timeout=30,
                              env=env)

    exploit = psql("mcp-agent", "agents", "COMMIT; DROP TABLE customers;")
    assert exploit.returncode != 0 and "dangerous.drop" in exploit.stderr
    assert psql("mcp-agent", "agents", "select count(*) > 0 from customers").stdout.strip() == "t"
    drop = psql("dev", "developers", "DROP TABLE orders")
    assert drop.returncode != 0 and "dangerous.drop" in drop.stderr
    # The developer inserts without asking; UPDATE waits for a dba (below).
    insert = psql("dev", "developers", "BEGIN; INSERT INTO orders (customer_id, ordered_at, status, total)"
                                       " VALUES (1, now(), 'pending', 1); ROLLBACK")
    assert insert.returncode == 0, insert.stderr
    _check_demo_approvals(lines, config, port)
    # Masking: PII redacted for agent and analyst, partial for developer, clear for dba.
    sql = "SELECT email, ssn, card_number FROM customers ORDER BY id LIMIT 1"
    agent = psql("mcp-agent", "agents", sql).stdout.strip().split("|")
    analyst = psql("ana", "analysts", sql).stdout.strip().split("|")
    developer = psql("dev", "developers", sql).stdout.strip().split("|")
    dba = psql("dba", "dbas", sql).stdout.strip().split("|")
    assert agent[:2] == ["****", "****"] and analyst[:2] == ["****", "****"]
    assert agent[2].isdigit() and agent[2] != dba[2] and agent[2] == analyst[2]  # a token, the same for both
    assert re.fullmatch(r"\*\*\*\*@.+", developer[0]) and re.fullmatch(r"\*\*\*-\*\*-\d{4}", developer[1])
    assert "@" in dba[0] and dba[0] != developer[0] and re.fullmatch(r"\d{3}-\d{2}-\d{4}", dba[1])
    assert developer[1].endswith(dba[1][-4:]) and developer[0].endswith(dba[0].split("@")[1])
    check = subprocess.run(
        [sys.executable, "-m", "pgwarden", "policy", "check", "--config", config, "--role", "agent", "--json",
         "SELECT lower(email), ssn FROM customers"], capture_output=True, text=True, timeout=60,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    masking = json.loads(check.stdout)["masking"]
    assert [(m["column"], m["masking"], m.get("rule")) for m in masking] == [
        ("lower", "whole value", "email"), ("ssn", "redact", "ssn")]


def _check_demo_approvals(lines: list[str], config: str, port: int) -> None:
    """The banner's approval cycle: the developer's UPDATE waits with a NOTICE, a dba approves, it completes."""
    import httpx

    banner = "".join(lines)
    assert "UPDATE orders SET status = 'refunded' WHERE id = 1;" in banner
    assert f"pgwarden approvals approve <id> --config {config} --token $(pgwarden token mint" in banner
    assert f"http://127.0.0.1:{port + 1}/api/v1/approvals" in banner
    dsn = f"host=127.0.0.1 port={port} dbname=shop user=dev sslmode=require"
    env = {**os.environ, "PGPASSWORD": _token(config, "dev", "developers")}
    held = subprocess.Popen(["psql", dsn, "-X", "-c", "UPDATE orders SET status = status WHERE id = 1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        notice = held.stderr.readline()  # printed while the statement is held
        assert notice.startswith("NOTICE:") and "review-developer-changes" in notice, notice
        request_id = re.search(r"request ([0-9a-f]{12})", notice).group(1)
        pgw = [sys.executable, "-m", "pgwarden", "approvals"]
        listed = subprocess.run([*pgw, "list", "--config", config, "--json"], capture_output=True, text=True,
                                timeout=60)
        assert listed.returncode == 0, listed.stderr
        assert request_id in [r["id"] for r in json.loads(listed.stdout)]
        assert held.poll() is None  # still waiting
        dba = _token(config, "dba", "dbas")
        approved = subprocess.run([*pgw, "approve", request_id, "--config", config, "--token", dba],
                                  capture_output=True, text=True, timeout=60)
        assert approved.returncode == 0, approved.stdout + approved.stderr
        assert f"request {request_id} approved by dba" in approved.stdout
        out, err = held.communicate(timeout=30)
    finally:
        if held.poll() is None:
            held.kill()
    assert held.returncode == 0 and "UPDATE 1" in out, err
    shown = httpx.get(f"http://127.0.0.1:{port + 1}/api/v1/approvals/{request_id}",
                      headers={"Authorization": f"Bearer {dba}"}, timeout=10)
    assert shown.status_code == 200 and shown.json()["status"] == "executed"
    assert [d["reviewer"] for d in shown.json()["decisions"]] == ["dba"]


def test_demo_config_reviews_developer_changes(tmp_path):
    """The demo's config validates; a developer's UPDATE, DELETE and DDL are reviewed by a dba."""
    from pgwarden.cli.demo import write_demo_config
    from pgwarden.config import load_config
    from pgwarden.services.policy import check_statement

    target = {"host": "127.0.0.1", "port": 5432, "database": "shop", "user": "postgres"}
    cfg = load_config(write_demo_config(tmp_path, target, 16432, "demo-password"))
    assert cfg.approvals.enabled and cfg.approvals.mode == "hold" and cfg.approvals.reviewer_roles == ["dba"]
    assert cfg.api.enabled and (cfg.api.host, cfg.api.port) == ("127.0.0.1", 16433)

    def decide(role: str, sql: str) -> tuple[str, str | None]:
        decision = check_statement(cfg, sql, role=role).decision
        return decision.action, decision.rule

    update = "UPDATE orders SET status = 'refunded' WHERE id = 1"
    assert decide("developer", update) == ("review", "review-developer-changes")
    assert decide("developer", "DELETE FROM order_items WHERE order_id = 1") == ("review", "review-developer-changes")
    assert decide("developer", "CREATE INDEX ON orders (status)") == ("review", "review-developer-ddl")
    assert decide("developer", "ALTER TABLE orders ADD COLUMN note text") == ("review", "review-developer-ddl")
    insert = "INSERT INTO orders (customer_id, ordered_at, status, total) VALUES (1, now(), 'pending', 1)"
    assert decide("developer", insert) == ("allow", None)
    assert decide("developer", "SELECT status FROM orders WHERE id = 1") == ("allow", None)
    # The dangerous pack comes first: refused outright, never sent for review.
    assert decide("developer", "DROP TABLE orders") == ("deny", "dangerous.drop")
    assert decide("developer", "DELETE FROM orders") == ("deny", "dangerous.no_where")
    # The reviewer's own changes run; the read-only agent is refused, not reviewed.
    assert decide("dba", update) == ("allow", None)
    assert decide("dba", "CREATE INDEX ON orders (status)") == ("allow", None)
    assert decide("agent", update) == ("deny", "read-only.write")
    # At the top of the port range the API takes the port below.
    top = load_config(write_demo_config(tmp_path, target, 65535, "demo-password"))
    assert top.api.port == 65534


def _check_demo_monitoring(port: int) -> None:
    """The banner's monitoring URLs: /metrics counts what the checks above did, /health is green."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    api = f"http://127.0.0.1:{port + 1}"
    health = httpx.get(f"{api}/health", timeout=10)
    assert health.status_code == 200 and health.json()["status"] == "ok", health.text
    scraped = httpx.get(f"{api}/metrics", timeout=10)
    assert scraped.status_code == 200
    denied = {s.labels["rule"]: s.value for f in text_string_to_metric_families(scraped.text)
              for s in f.samples if s.name == "pgwarden_statements_denied_total"}
    assert denied.get("dangerous.drop", 0) >= 2, denied  # the agent's and the developer's DROP


def _check_demo_recording(out: str, data_dir: str) -> None:
    """The demo records to SQLite in its data dir and says how to replay; the trail verifies."""
    config = os.path.join(data_dir, "pgwarden.yaml")
    assert f"pgwarden sessions replay --config {config}" in out
    pgw = [sys.executable, "-m", "pgwarden"]
    verify = subprocess.run([*pgw, "audit", "verify", "--config", config], capture_output=True, text=True, timeout=60)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    listed = subprocess.run([*pgw, "sessions", "list", "--config", config, "--identity", "mcp-agent", "--json"],
                            capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr
    sessions = json.loads(listed.stdout)
    assert sessions, "the agent's sessions were not recorded"
    replays = [
        subprocess.run([*pgw, "sessions", "replay", s["id"], "--config", config], capture_output=True, text=True,
                       timeout=60).stdout
        for s in sessions
    ]
    assert any("DROP TABLE customers" in r and "dangerous.drop" in r for r in replays), replays
    # The evidence report the banner offers: one HTML file, the trail verified, the refusals counted.
    assert f"pgwarden evidence --config {config}" in out
    report = os.path.join(data_dir, "evidence.html")
    evidence = subprocess.run([*pgw, "evidence", "--config", config, "--out", report], capture_output=True,
                              text=True, timeout=120)
    assert evidence.returncode == 0, evidence.stdout + evidence.stderr
    page = open(report, encoding="utf-8").read()
    assert page.startswith("<!DOCTYPE html>") and "VERIFICATION FAILED" not in page
    for label in ("AU-2", "AU-9(3)", "IA-2", "SI-4", "SC-8", "CM-5"):
        assert label in page
    as_json = subprocess.run([*pgw, "evidence", "--config", config, "--format", "json", "--out", "-"],
                             capture_output=True, text=True, timeout=120)
    assert as_json.returncode == 0, as_json.stderr
    report_data = json.loads(as_json.stdout)
    assert report_data["verification"]["status"] == "verified"
    assert report_data["totals"]["statements"]["deny"] >= 2
