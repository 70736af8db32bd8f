"""pgwarden-issued API keys: the store, key login end to end, and `pgwarden keys`."""

from __future__ import annotations

import asyncio
import logging
import stat
import subprocess
import sys
from types import SimpleNamespace

import psycopg
import pytest
import yaml
from psycopg import errors

from pgwarden.config import parse_config
from pgwarden.identity.apikeys import ApiKeyRejected, ApiKeyStore
from pgwarden.identity.login import build_token_login
from pgwarden.testing.gateway import RunningGateway


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _reason(store: ApiKeyStore, key: str) -> str:
    with pytest.raises(ApiKeyRejected) as info:
        store.check(key)
    return info.value.reason


# ---------------------------------------------------------------- store


def test_create_check_and_only_the_hash_on_disk(tmp_path):
    path = tmp_path / "sub" / "keys.sqlite"
    store = ApiKeyStore(path)
    key = store.create("ci", ["agent", "developer"])
    prefix, key_id, secret = key.split("_", 2)
    assert prefix == "pgw" and len(key_id) == 8 and len(secret) >= 43
    info = store.check(key)
    assert (info.name, info.roles, info.key_id, info.expires_at, info.revoked_at) == (
        "ci", ("agent", "developer"), key_id, None, None)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    on_disk = b"".join(p.read_bytes() for p in path.parent.iterdir())
    assert key_id.encode() in on_disk  # the lookup id is stored ...
    assert secret.encode() not in on_disk and key.encode() not in on_disk  # ... the secret never
    listed = store.list()
    assert [k.name for k in listed] == ["ci"] and not hasattr(listed[0], "secret")


def test_every_rejection_reason(tmp_path):
    clock = Clock()
    store = ApiKeyStore(tmp_path / "keys.sqlite", clock=clock)
    assert _reason(store, "pgw_abcdefgh_" + "x" * 43) == "unknown"  # no store file yet
    assert not (tmp_path / "keys.sqlite").exists()  # checking never creates it
    key = store.create("svc", ["agent"], ttl_seconds=60)
    _, key_id, secret = key.split("_", 2)
    for bad in ("", "pgw_", "eyJhbGciOi.x.y", "pgw_short_" + secret, "pgw_" + key_id + "_tiny", key + "\n"):
        assert _reason(store, bad) == "malformed", bad
    assert _reason(store, "pgw_zzzzzzzz_" + secret) == "unknown"
    assert _reason(store, f"pgw_{key_id}_" + ("A" if secret[0] != "A" else "B") + secret[1:]) == "bad_secret"
    clock.now += 59
    assert store.check(key).name == "svc"
    clock.now += 1
    assert _reason(store, key) == "expired"
    other = store.create("svc2", ["agent"])
    assert store.revoke("svc2") is True
    assert store.revoke("svc2") is False and store.revoke("nobody") is False
    assert _reason(store, other) == "revoked"
    assert store.list()[1].revoked_at == clock.now


def test_create_validates(tmp_path):
    store = ApiKeyStore(tmp_path / "keys.sqlite")
    store.create("dup", ["agent"])
    with pytest.raises(ValueError, match="already exists"):
        store.create("dup", ["agent"])
    with pytest.raises(ValueError):
        store.create("", ["agent"])
    with pytest.raises(ValueError):
        store.create("x", [])
    with pytest.raises(ValueError):
        store.create("y", ["agent"], ttl_seconds=0)
    assert [k.name for k in store.list()] == ["dup"]


def test_login_grants_only_roles_that_still_exist(tmp_path):
    path = tmp_path / "keys.sqlite"
    config = parse_config({
        "targets": {"app": {"database": "appdb", "user": "app"}, "other": {"database": "o", "user": "o"}},
        "identity": {"api_keys_file": str(path)},
        "roles": {"agent": {"targets": ["app"]}, "dba": {"targets": ["app", "other"], "access": "admin"}},
    })
    login = build_token_login(config)
    assert login is not None and login.validator is None  # no issuers: API keys only
    store = ApiKeyStore(path)
    some = store.create("some", ["gone", "agent"])
    none = store.create("none", ["gone"])
    both = store.create("both", ["agent", "dba"])

    def call(password):
        return asyncio.run(login(SimpleNamespace(password=password)))

    ident, _ = call(some)
    assert ident.roles == ("agent",) and ident.access == {"app": "read"}
    assert (ident.subject, ident.issuer) == ("key:some", "pgwarden-api-key")
    ident, _ = call(both)
    assert ident.access == {"app": "admin", "other": "admin"}
    assert call(none) == (None, "api key 'none' grants no configured role (gone)")
    ident, reason = call("pgw_nope")
    assert ident is None and reason.startswith("api key rejected (malformed)")
    ident, reason = call("eyJ.not.a.token")
    assert ident is None and "not enabled" in reason


def test_no_roles_means_no_key_login(tmp_path):
    config = parse_config({"targets": {"app": {"database": "appdb", "user": "app"}}})
    assert build_token_login(config) is None


def test_relative_file_resolves_against_data_dir(tmp_path):
    config = parse_config({"targets": {"app": {"database": "d", "user": "u"}}, "data_dir": "state"}, base_dir=tmp_path)
    assert config.identity.api_keys_file == tmp_path / "state" / "api-keys.sqlite"


# ---------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def key_env(pg, tls_files, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("apikeys")
    data = {
        "listen": {"host": "127.0.0.1", "port": 0,
                   "tls": {"mode": "prefer", "cert": str(tls_files["cert"]), "key": str(tls_files["key"])}},
        "targets": {"app": {"host": pg.host, "port": pg.port, "database": "appdb", "user": "app",
                            "password": pg.passwords["app"]}},
        "data_dir": str(data_dir),
        "roles": {"agent": {"targets": ["app"], "access": "read"},
                  "developer": {"targets": ["app"], "access": "write"}},
    }
    config_file = data_dir / "pgwarden.yaml"
    config_file.write_text(yaml.safe_dump(data))
    config = parse_config(data, base_dir=data_dir)
    pg.psql("create table if not exists apikey_probe(x int); grant all on apikey_probe to app", database="appdb")
    with RunningGateway(config, []) as gw:
        yield gw, ApiKeyStore(config.identity.api_keys_file), config_file


def _connect(gw, key, user="svc"):
    return psycopg.connect(gw.dsn(user, key, sslmode="require"), autocommit=True)


def test_key_logs_in_over_tls_with_its_roles(key_env):
    gw, store, _ = key_env
    reader = store.create("e2e-reader", ["agent"])
    writer = store.create("e2e-writer", ["developer"])
    with _connect(gw, reader) as conn:
        assert conn.execute("select count(*) >= 0 from apikey_probe").fetchone() == (True,)
        with pytest.raises(errors.ReadOnlySqlTransaction):
            conn.execute("insert into apikey_probe values (1)")
    with _connect(gw, writer) as conn:
        conn.execute("insert into apikey_probe values (2)")


def test_revoked_and_bad_keys_are_refused(key_env, caplog):
    gw, store, _ = key_env
    key = store.create("e2e-revoked", ["agent"])
    with _connect(gw, key) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
    assert store.revoke("e2e-revoked")
    caplog.set_level(logging.INFO)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        _connect(gw, key)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        _connect(gw, key[:-2] + ("aa" if not key.endswith("aa") else "bb"))
    reasons = " ".join(r.getMessage() for r in caplog.records)
    assert "revoked" in reasons and "bad_secret" in reasons


def _cli(*args, config_file):
    return subprocess.run([sys.executable, "-m", "pgwarden", "keys", *args, "--config", str(config_file)],
                          capture_output=True, text=True, timeout=60)


def test_cli_create_list_revoke(key_env):
    gw, _, config_file = key_env
    created = _cli("create", "--name", "cli-key", "--roles", "agent,developer", "--ttl", "30d",
                   config_file=config_file)
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert key.startswith("pgw_") and "not shown again" in created.stderr
    with _connect(gw, key) as conn:
        assert conn.execute("show default_transaction_read_only").fetchone() == ("off",)

    listed = _cli("list", config_file=config_file)
    assert listed.returncode == 0, listed.stderr
    assert "cli-key" in listed.stdout and "agent, developer" in listed.stdout
    assert key.split("_", 2)[2] not in listed.stdout

    bad = _cli("create", "--name", "x", "--roles", "agent,wizard", config_file=config_file)
    assert bad.returncode == 2 and "unknown role(s) wizard" in bad.stderr
    dup = _cli("create", "--name", "cli-key", "--roles", "agent", config_file=config_file)
    assert dup.returncode == 2 and "already exists" in dup.stderr

    revoked = _cli("revoke", "cli-key", config_file=config_file)
    assert revoked.returncode == 0, revoked.stderr
    again = _cli("revoke", "cli-key", config_file=config_file)
    assert again.returncode == 2 and "no active API key" in again.stderr
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        _connect(gw, key)
