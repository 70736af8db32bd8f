"""The command line as a user runs it: config check, serve, SIGTERM drain."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
import yaml
from psycopg import errors

from pgwarden.session.scram import make_verifier

PGWARDEN = [sys.executable, "-m", "pgwarden"]


def run_cli(*args: str, env: dict | None = None, input: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*PGWARDEN, *args], capture_output=True, text=True, env=env, input=input, timeout=60)


def write_config(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def base_config(pg, port: int = 0, **listen) -> dict:
    return {
        "listen": {"host": "127.0.0.1", "port": port, "tls": {"mode": "disable"}, **listen},
        "targets": {
            "app": {
                "host": pg.host,
                "port": pg.port,
                "database": "appdb",
                "user": "app",
                "password_env": "APP_PW",
            }
        },
        "users": [{"name": "bob", "scram_verifier": make_verifier("bob-pw")}],
    }


def test_config_check_accepts_a_good_file(tmp_path, pg):
    path = write_config(tmp_path / "ok.yaml", base_config(pg))
    result = run_cli("config", "check", str(path), env={**os.environ, "APP_PW": "x"})
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda c: c["targets"]["app"].__setitem__("port", "not-a-port"), "targets.app.port"),
        (lambda c: c["listen"].__setitem__("tls", {"mode": "require"}), "listen.tls"),
        (lambda c: c.__setitem__("tagrets", {}), "tagrets"),
        (lambda c: c["users"][0].__setitem__("scram_verifier", "plaintext"), "scram_verifier"),
        (lambda c: c["targets"]["app"].__setitem__("sslmode", "verify-full"), "sslrootcert"),
    ],
)
def test_config_check_names_the_bad_key_in_one_line(tmp_path, pg, mutate, expected):
    data = base_config(pg)
    mutate(data)
    path = write_config(tmp_path / "bad.yaml", data)
    result = run_cli("config", "check", str(path), env={**os.environ, "APP_PW": "x"})
    assert result.returncode == 2
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert expected in lines[0]
    assert "Traceback" not in result.stderr


def test_config_expands_environment_variables(tmp_path, pg):
    data = base_config(pg)
    data["targets"]["app"].pop("password_env")
    data["targets"]["app"]["password"] = "${PGW_TEST_SECRET}"
    path = write_config(tmp_path / "env.yaml", data)
    missing = run_cli("config", "check", str(path), env={k: v for k, v in os.environ.items() if k != "PGW_TEST_SECRET"})
    assert missing.returncode == 2 and "PGW_TEST_SECRET" in missing.stderr
    ok = run_cli("config", "check", str(path), env={**os.environ, "PGW_TEST_SECRET": "s3cret"})
    assert ok.returncode == 0, ok.stderr


def test_invalid_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "broken.yaml"
    bad.write_text("listen: [unclosed\n")
    result = run_cli("config", "check", str(bad))
    assert result.returncode == 2 and "invalid YAML" in result.stderr
    result = run_cli("config", "check", str(tmp_path / "nope.yaml"))
    assert result.returncode == 2 and "cannot read config file" in result.stderr


def test_user_verifier_and_tls_selfsigned(tmp_path):
    result = run_cli("user", "verifier", "--password-stdin", input="pw\n")
    assert result.returncode == 0 and result.stdout.startswith("SCRAM-SHA-256$4096:")
    result = run_cli("tls", "selfsigned", str(tmp_path / "tls"))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "tls" / "server.crt").exists() and (tmp_path / "tls" / "server.key").stat().st_mode & 0o077 == 0
    again = run_cli("tls", "selfsigned", str(tmp_path / "tls"))
    assert again.returncode == 2 and "exist" in again.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, proc: subprocess.Popen, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"gateway exited: {proc.stderr.read()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError("gateway did not start listening")


@pytest.fixture()
def served(tmp_path, pg):
    port = _free_port()
    data = base_config(pg, port=port, shutdown_grace=3)
    data["logging"] = {"format": "json"}
    path = write_config(tmp_path / "serve.yaml", data)
    proc = subprocess.Popen(
        [*PGWARDEN, "serve", "--config", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "APP_PW": pg.passwords["app"]},
    )
    try:
        _wait_port(port, proc)
        yield proc, f"host=127.0.0.1 port={port} user=bob password=bob-pw dbname=app"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def test_serve_logs_json_lines_with_session_ids(served):
    proc, dsn = served
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("select 'json-log-probe'")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=20)
    import json

    records = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    stmt = [r for r in records if r.get("event") == "statement" and "json-log-probe" in (r.get("text") or "")]
    assert stmt and stmt[0]["session"] and stmt[0]["user"] == "bob" and stmt[0]["tag"] == "SELECT 1"
    connect = [r for r in records if r.get("event") == "connect" and r.get("session") == stmt[0]["session"]]
    assert connect and connect[0]["target"] == "app"


def test_sigterm_drains_busy_sessions_and_closes_idle_ones(served, pg):
    proc, dsn = served
    pg.psql("create table if not exists drain_probe(x int); grant all on drain_probe to app; truncate drain_probe", database="appdb")
    idle = psycopg.connect(dsn, autocommit=True)
    busy = psycopg.connect(dsn)
    busy.execute("insert into drain_probe values (1)")  # transaction open
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    # New connections are refused while draining.
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(dsn, connect_timeout=2)
    # The idle session was closed with 57P01.
    with pytest.raises(psycopg.OperationalError):
        idle.execute("select 1")
    # The busy session may finish its transaction...
    busy.execute("insert into drain_probe values (2)")
    busy.commit()
    # ...and is closed once idle.
    with pytest.raises(psycopg.OperationalError):
        busy.execute("select 1")
    assert proc.wait(10) == 0
    assert pg.psql("select count(*) from drain_probe", database="appdb").strip() == "2"


def test_grace_period_closes_sessions_that_never_finish(served):
    proc, dsn = served
    stuck = psycopg.connect(dsn)
    stuck.execute("select 1")  # inside a transaction, never committed
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 0
    assert time.monotonic() - started < 10
    with pytest.raises(psycopg.OperationalError):
        stuck.execute("select 1")


def test_serve_refuses_to_start_without_its_audit_trail(tmp_path, pg):
    """Fail closed: a trail that cannot be opened (or a key that cannot be made) stops the start, in one line."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "audit.sqlite").write_text("not a database")
    config = write_config(tmp_path / "cfg.yaml", {**base_config(pg), "data_dir": str(data)})
    res = run_cli("serve", "--config", str(config))
    assert res.returncode == 1
    assert "cannot start the audit trail" in res.stderr and "audit.sqlite" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
    (data / "audit.sqlite").unlink()
    (data / "audit-signing.key").write_text("-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n")
    res = run_cli("serve", "--config", str(config))
    assert res.returncode == 1 and "signing key" in res.stderr, res.stderr
