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
    port = _free_port()
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
    write = psql("dev", "developers", "BEGIN; UPDATE orders SET status = status WHERE id = 1; ROLLBACK")
    assert write.returncode == 0, write.stderr
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
