"""Revocation and live sessions: the control store, `pgwarden revoke`, `pgwarden sessions`."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time

import psycopg
import pytest
import yaml

from pgwarden.config import load_config, parse_config
from pgwarden.identity.apikeys import ApiKeyStore
from pgwarden.identity.control import ControlStore
from pgwarden.identity.login import dev_issuer_for
from pgwarden.session.scram import make_verifier
from pgwarden.testing.gateway import RunningGateway

# ---------------------------------------------------------------- store


def test_store_revocations_sessions_and_kills(tmp_path):
    path = tmp_path / "state" / "control.sqlite"
    store = ControlStore(path)
    assert not store.is_revoked("alice") and store.revoked_subjects() == set()
    assert store.live_sessions() == [] and store.pending_kills(0) == []
    assert store.request_kill("nope") is False
    assert not path.exists()  # reading never creates the file
    assert store.revoke("alice", "left the company") is True
    assert store.revoke("alice") is False
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert store.is_revoked("alice") and store.revoked_subjects() == {"alice"}
    assert store.revocations()[0][:2] == ("alice", "left the company")

    store.session_started("s1", gateway_pid=os.getpid(), gateway_id="g1", subject="bob", user="bob",
                          target="app", client="127.0.0.1:5", auth="token")
    store.session_started("s2", gateway_pid=2**22 + 12345, gateway_id="g2", subject="x", user="x",
                          target="app", client="c", auth="key")  # no such process
    assert [s.id for s in store.live_sessions()] == ["s1"]
    assert store.request_kill("s2") is False
    before = store.last_kill_id()
    assert store.request_kill("s1") is True
    assert [k[1] for k in store.pending_kills(before)] == ["s1"]
    assert store.pending_kills(store.last_kill_id()) == []
    store.prune_dead()
    store.clear_gateway(os.getpid(), "other")
    assert [s.id for s in store.live_sessions()] == ["s1"]
    store.session_ended("s1")
    assert store.live_sessions() == []
    assert store.unrevoke("alice") is True and not store.is_revoked("alice")


def test_control_file_resolves_against_data_dir(tmp_path):
    config = parse_config({"targets": {"app": {"database": "d", "user": "u"}}, "data_dir": "state"}, base_dir=tmp_path)
    assert config.identity.control_file == tmp_path / "state" / "control.sqlite"


# ---------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def rev_env(pg, tls_files, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("revocation")
    data = {
        "listen": {"host": "127.0.0.1", "port": 0, "shutdown_grace": 2,
                   "tls": {"mode": "prefer", "cert": str(tls_files["cert"]), "key": str(tls_files["key"])}},
        "targets": {"app": {"host": pg.host, "port": pg.port, "database": "appdb", "user": "app",
                            "password": pg.passwords["app"]}},
        "data_dir": str(data_dir),
        "identity": {"dev_issuer": {"enabled": True}},
        "roles": {"agent": {"targets": ["app"], "access": "read"}},
        "role_bindings": [{"role": "agent", "match": {"groups": "agents"}}],
        "users": [{"name": "rev-static", "scram_verifier": make_verifier("static-pw")}],
    }
    config_file = data_dir / "pgwarden.yaml"
    config_file.write_text(yaml.safe_dump(data))
    config = load_config(config_file)
    assert config.identity.control_file == data_dir / "control.sqlite"
    with RunningGateway(config, []) as gw:
        yield gw, config, config_file


def _cli(*args, config_file):
    return subprocess.run([sys.executable, "-m", "pgwarden", *args, "--config", str(config_file)],
                          capture_output=True, text=True, timeout=60)


def _connect(gw, user, password):
    return psycopg.connect(gw.dsn(user, password, sslmode="require"), autocommit=True)


def _token(config, sub):
    return dev_issuer_for(config).mint(sub, groups=("agents",), ttl=600)


def _wait_closed(conn, match, within=3.0):
    """The session is ended with ``match`` within ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        try:
            conn.execute("select 1")
        except psycopg.OperationalError as exc:
            assert match in str(exc)
            return
        assert time.monotonic() < deadline, "the session was not ended in time"
        time.sleep(0.1)


def test_revoked_subject_is_cut_off_and_stays_revoked(rev_env):
    gw, config, config_file = rev_env
    conn = _connect(gw, "rev-alice", _token(config, "rev-alice"))
    with conn:
        assert conn.execute("select 1").fetchone() == (1,)
        done = _cli("revoke", "--subject", "rev-alice", "--reason", "test", config_file=config_file)
        assert done.returncode == 0, done.stderr
        assert "revoked subject 'rev-alice'" in done.stdout
        _wait_closed(conn, 'pgwarden: access for "rev-alice" was revoked')
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        _connect(gw, "rev-alice", _token(config, "rev-alice"))
    again = _cli("revoke", "--subject", "rev-alice", config_file=config_file)
    assert again.returncode == 0 and "already revoked" in again.stdout
    # Other subjects are unaffected, and the revocation survives a restart (a new gateway, same data dir).
    with _connect(gw, "rev-bob", _token(config, "rev-bob")) as other:
        assert other.execute("select 1").fetchone() == (1,)
    fresh_config = load_config(config_file)
    # Its own audit trail: an SQLite trail has one writer (gateways sharing one use the postgres store).
    audit = fresh_config.audit
    store = audit.store.model_copy(update={"path": config_file.parent / "audit-2.sqlite"})
    fresh_config = fresh_config.model_copy(update={"audit": audit.model_copy(update={"store": store})})
    with RunningGateway(fresh_config, []) as fresh:
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            _connect(fresh, "rev-alice", _token(config, "rev-alice"))
        with _connect(fresh, "rev-bob", _token(config, "rev-bob")) as conn:
            assert conn.execute("select 1").fetchone() == (1,)


def test_key_revocation_ends_the_key_session(rev_env):
    gw, config, config_file = rev_env
    key = ApiKeyStore(config.identity.api_keys_file).create("rev-key", ["agent"])
    with _connect(gw, "svc", key) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
        done = _cli("revoke", "--key", "rev-key", config_file=config_file)
        assert done.returncode == 0, done.stderr
        _wait_closed(conn, 'pgwarden: access for "key:rev-key" was revoked')
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        _connect(gw, "svc", key)
    assert ApiKeyStore(config.identity.api_keys_file).list()[0].revoked_at is not None
    missing = _cli("revoke", "--key", "no-such-key", config_file=config_file)
    assert missing.returncode == 2 and "no API key named" in missing.stderr
    both = _cli("revoke", "--key", "a", "--subject", "b", config_file=config_file)
    assert both.returncode == 2 and "exactly one" in both.stderr


def _live(config_file):
    listed = _cli("sessions", "list", "--live", "--json", config_file=config_file)
    assert listed.returncode == 0, listed.stderr
    return json.loads(listed.stdout)


def test_sessions_list_and_kill(rev_env):
    gw, config, config_file = rev_env
    with _connect(gw, "lister", _token(config, "rev-lister")) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
        deadline = time.monotonic() + 15
        while True:
            mine = [s for s in _live(config_file) if s["subject"] == "rev-lister"]
            if mine or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert len(mine) == 1, mine
        row = mine[0]
        assert (row["user"], row["target"], row["auth"]) == ("lister", "app", "token")
        assert row["client"].startswith("127.0.0.1:") and abs(row["since"] - time.time()) < 60
        table = _cli("sessions", "list", "--live", config_file=config_file)
        assert table.returncode == 0 and row["id"] in table.stdout and "rev-lister" in table.stdout

        killed = _cli("sessions", "kill", row["id"], config_file=config_file)
        assert killed.returncode == 0, killed.stderr
        _wait_closed(conn, "pgwarden: session terminated by an administrator")
    deadline = time.monotonic() + 15
    while any(s["id"] == row["id"] for s in _live(config_file)):
        assert time.monotonic() < deadline, "the ended session is still listed"
        time.sleep(0.2)
    # Static SCRAM users are listed too (subject = user name) but are never "revoked".
    with _connect(gw, "rev-static", "static-pw") as static:
        assert static.execute("select 1").fetchone() == (1,)
        deadline = time.monotonic() + 15
        while not (rows := [s for s in _live(config_file) if s["user"] == "rev-static"]):
            assert time.monotonic() < deadline, "the static session is not listed"
            time.sleep(0.2)
        assert (rows[0]["subject"], rows[0]["auth"]) == ("rev-static", "scram")
    unknown = _cli("sessions", "kill", "deadbeef", config_file=config_file)
    assert unknown.returncode == 2 and "no live session" in unknown.stderr
