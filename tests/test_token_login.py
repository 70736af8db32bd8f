"""Token login end to end: dev-issuer tokens as the Postgres password, roles from claims.

(The external-issuer cases, JWKS and every bad token shape are covered against
a local HTTP issuer in test_identity_tokens.py; the real oidc-provider end-to-end
test comes with the rest of the Identity milestone.)
"""

from __future__ import annotations

import os
import subprocess
import sys

import asyncpg
import asyncio
import psycopg
import pytest
import yaml
from psycopg import errors

from pgwarden.config import parse_config
from pgwarden.identity.login import claim_matches, dev_issuer_for
from pgwarden.testing.gateway import RunningGateway


def _config_dict(pg, tls_files, key_file) -> dict:
    return {
        "listen": {"host": "127.0.0.1", "port": 0,
                   "tls": {"mode": "prefer", "cert": str(tls_files["cert"]), "key": str(tls_files["key"])}},
        "targets": {
            "app": {"host": pg.host, "port": pg.port, "database": "appdb", "user": "app",
                    "password": pg.passwords["app"]},
        },
        "identity": {"dev_issuer": {"enabled": True, "key_file": str(key_file)}},
        "roles": {
            "agent": {"targets": ["app"], "access": "read"},
            "developer": {"targets": ["app"], "access": "write"},
        },
        "role_bindings": [
            {"role": "agent", "match": {"groups": "agents"}},
            {"role": "developer", "match": {"groups": "developers"}},
        ],
    }


@pytest.fixture(scope="module")
def token_env(pg, tls_files, tmp_path_factory):
    key_file = tmp_path_factory.mktemp("devissuer") / "dev-issuer.key"
    data = _config_dict(pg, tls_files, key_file)
    config = parse_config(data)
    pg.psql("create table if not exists token_probe(x int); grant all on token_probe to app", database="appdb")
    with RunningGateway(config, []) as gw:
        yield gw, dev_issuer_for(config), data


def _dsn(gw, user, token, **extra):
    return gw.dsn(user, token, sslmode="require", **extra)


def test_read_role_token_reads_but_cannot_write(token_env):
    gw, issuer, _ = token_env
    token = issuer.mint("mcp-agent", groups=("agents",), ttl=300)
    with psycopg.connect(_dsn(gw, "mcp-agent", token), autocommit=True) as conn:
        assert conn.execute("select count(*) >= 0 from token_probe").fetchone() == (True,)
        assert conn.info.parameter_status("session_authorization") == "mcp-agent"
        with pytest.raises(errors.ReadOnlySqlTransaction):
            conn.execute("insert into token_probe values (1)")


def test_write_role_token_can_write(token_env):
    gw, issuer, _ = token_env
    token = issuer.mint("dev-1", groups=("developers",), ttl=300)
    with psycopg.connect(_dsn(gw, "dev-1", token), autocommit=True) as conn:
        conn.execute("insert into token_probe values (2)")


def test_asyncpg_with_a_token(token_env):
    gw, issuer, _ = token_env
    token = issuer.mint("dev-2", groups=("developers", "agents"), ttl=300)

    async def main():
        conn = await asyncpg.connect(host=gw.host, port=gw.port, user="dev-2", password=token,
                                     database="app", ssl="require")
        try:
            assert await conn.fetchval("select 40 + 2") == 42
            # developers wins over agents: the higher access level is granted
            assert await conn.fetchval("show default_transaction_read_only") == "off"
        finally:
            await conn.close()

    asyncio.run(main())


def test_token_without_a_matching_role_gets_no_access(token_env):
    gw, issuer, _ = token_env
    token = issuer.mint("stranger", groups=("visitors",), ttl=300)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(_dsn(gw, "stranger", token))


def test_expired_and_tampered_tokens_are_refused(token_env, caplog):
    gw, issuer, _ = token_env
    import time

    expired = issuer.mint("mcp-agent", groups=("agents",), ttl=60, now=time.time() - 3600)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(_dsn(gw, "mcp-agent", expired))
    good = issuer.mint("mcp-agent", groups=("agents",), ttl=300)
    import base64
    import json

    head, payload, sig = good.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["groups"] = ["developers"]  # escalate, keep the original signature
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    tampered = ".".join([head, forged, sig])
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(_dsn(gw, "mcp-agent", tampered))
    reasons = " ".join(r.getMessage() for r in caplog.records)
    assert "expired" in reasons and "bad_signature" in reasons


def test_cli_token_mint_with_the_config(token_env, tmp_path):
    gw, _, data = token_env
    path = tmp_path / "pgwarden.yaml"
    path.write_text(yaml.safe_dump(data))
    result = subprocess.run(
        [sys.executable, "-m", "pgwarden", "token", "mint", "--sub", "cli-agent", "--groups", "agents",
         "--ttl", "5m", "--config", str(path)],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    with psycopg.connect(_dsn(gw, "cli-agent", token)) as conn:
        assert conn.execute("select 1").fetchone() == (1,)


def test_cli_token_mint_refuses_without_dev_issuer(tmp_path, pg):
    path = tmp_path / "nodev.yaml"
    path.write_text(yaml.safe_dump({"targets": {"app": {"database": "appdb", "user": "app"}}}))
    result = subprocess.run([sys.executable, "-m", "pgwarden", "token", "mint", "--sub", "x", "--config", str(path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "dev issuer is not enabled" in result.stderr


def test_claim_matching_rules():
    claims = {"sub": "a", "groups": ["g1", "g2"], "scope": "db:read db:write", "realm_access": {"roles": ["dba"]}}
    assert claim_matches(claims, "groups", "g2")
    assert claim_matches(claims, "scope", "db:write") and not claim_matches(claims, "scope", "db")
    assert claim_matches(claims, "realm_access.roles", "dba")
    assert claim_matches(claims, "sub", "a") and not claim_matches(claims, "sub", "b")
    assert not claim_matches(claims, "missing.path", "x")


def test_session_ends_when_the_token_expires(token_env):
    import time

    gw, issuer, _ = token_env
    token = issuer.mint("short-lived", groups=("agents",), ttl=2)
    with psycopg.connect(_dsn(gw, "short-lived", token), autocommit=True) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
        time.sleep(3)
        with pytest.raises(psycopg.OperationalError, match="access token expired"):
            conn.execute("select 1")


def test_role_max_session_ends_the_session(pg, tls_files, tmp_path):
    import time

    data = _config_dict(pg, tls_files, tmp_path / "dev.key")
    data["roles"]["agent"]["max_session"] = 1
    config = parse_config(data)
    with RunningGateway(config, []) as gw:
        token = dev_issuer_for(config).mint("capped", groups=("agents",), ttl=600)
        with psycopg.connect(_dsn(gw, "capped", token), autocommit=True) as conn:
            assert conn.execute("select 1").fetchone() == (1,)
            time.sleep(2)
            with pytest.raises(psycopg.OperationalError, match="maximum session length"):
                conn.execute("select 1")


@pytest.mark.parametrize(
    "sql",
    [
        "SET default_transaction_read_only = off",
        "set default_transaction_read_only to default",
        "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE",
        "BEGIN READ WRITE",
        "START TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ WRITE",
        "SELECT set_config('default_transaction_read_only', 'off', false)",
        "WITH x AS (SELECT pg_catalog.set_config('transaction_read_only', 'off', true)) SELECT * FROM x",
        "DO $$ BEGIN PERFORM set_config('default_transaction_read_only', 'off', false); END $$",
        "SET ROLE postgres",
        "RESET ROLE",
        "SET SESSION AUTHORIZATION postgres",
        "SELECT set_config('role', 'postgres', false)",
        'SELECT U&"\\0073et_config"(\'role\', \'postgres\', false)',
    ],
)
def test_read_role_cannot_lift_read_only_or_change_role(token_env, sql):
    gw, issuer, _ = token_env
    token = issuer.mint("mcp-agent", groups=("agents",), ttl=300)
    with psycopg.connect(_dsn(gw, "mcp-agent", token), autocommit=True) as conn:
        with pytest.raises(errors.InsufficientPrivilege) as info:
            conn.execute(sql)
        assert "pgwarden" in str(info.value)
        # still read-only afterwards, and the session stays usable
        with pytest.raises(errors.ReadOnlySqlTransaction):
            conn.execute("insert into token_probe values (3)")
        assert conn.execute("show default_transaction_read_only").fetchone() == ("on",)


def test_read_role_cannot_lift_read_only_in_the_extended_protocol(token_env):
    gw, issuer, _ = token_env
    token = issuer.mint("mcp-agent", groups=("agents",), ttl=300)
    with psycopg.connect(_dsn(gw, "mcp-agent", token), autocommit=True) as conn:
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute("select set_config(%s, 'off', false)", ("default_transaction_read_only",))
        # an ordinary set_config stays allowed
        assert conn.execute("select set_config('application_name', 'probe', false)").fetchone() == ("probe",)


def test_write_role_may_set_read_write_but_never_change_role(token_env):
    gw, issuer, _ = token_env
    token = issuer.mint("dev-3", groups=("developers",), ttl=300)
    with psycopg.connect(_dsn(gw, "dev-3", token), autocommit=True) as conn:
        conn.execute("BEGIN READ WRITE")
        conn.execute("ROLLBACK")
        with pytest.raises(errors.InsufficientPrivilege, match="cannot change its role"):
            conn.execute("SET ROLE postgres")


def test_role_set_role_is_what_the_session_acts_as(pg, tls_files, tmp_path):
    pg.psql(
        "do $$ begin if not exists (select from pg_roles where rolname = 'app_reader') then "
        "create role app_reader nologin; end if; end $$; grant app_reader to app",
        database="appdb",
    )
    data = _config_dict(pg, tls_files, tmp_path / "dev.key")
    data["roles"]["agent"]["set_role"] = "app_reader"
    config = parse_config(data)
    with RunningGateway(config, []) as gw:
        token = dev_issuer_for(config).mint("reader", groups=("agents",), ttl=300)
        with psycopg.connect(_dsn(gw, "reader", token), autocommit=True) as conn:
            assert conn.execute("select current_user").fetchone() == ("app_reader",)
            with pytest.raises(errors.InsufficientPrivilege):
                conn.execute("RESET ROLE")
            conn.execute("DISCARD ALL")  # resets to the session's start values, which pgwarden chose
            assert conn.execute("select current_user").fetchone() == ("app_reader",)


class _AuthReasons:
    name = "test.auth-reasons"

    def __init__(self):
        self.events = []

    def check(self, statement):
        return None

    def authenticated(self, event):
        self.events.append(event)


def _bad_tokens(issuer, now):
    import base64
    import json

    good = issuer.mint("mcp-agent", groups=("agents",), ttl=300)
    head, payload, _ = good.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))

    def b64(obj) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    public_pem = json.dumps(issuer.public_jwk())
    import hashlib
    import hmac as _hmac

    hs_header = b64({"alg": "HS256", "typ": "JWT", "kid": issuer.kid})
    hs_body = b64(claims)
    hs_sig = base64.urlsafe_b64encode(
        _hmac.new(public_pem.encode(), f"{hs_header}.{hs_body}".encode(), hashlib.sha256).digest()
    ).rstrip(b"=").decode()
    return {
        "alg_none": f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(claims)}.",
        "hs256_with_public_key": f"{hs_header}.{hs_body}.{hs_sig}",
        "expired": issuer.mint("mcp-agent", groups=("agents",), ttl=60, now=now - 3600),
        "not_yet_valid": issuer.mint("mcp-agent", groups=("agents",), ttl=600, now=now + 300),
        "wrong_issuer": f"{head}.{b64({**claims, 'iss': 'https://evil.example'})}.{good.split('.')[2]}",
        "too_large": issuer.mint("mcp-agent", groups=("agents",), ttl=300, extra_claims={"pad": "x" * 17000}),
        "garbage": "this is not a token",
    }


@pytest.mark.parametrize(
    "case, reason",
    [
        ("alg_none", "alg_not_allowed"),
        ("hs256_with_public_key", "alg_not_allowed"),
        ("expired", "expired"),
        ("not_yet_valid", "not_yet_valid"),
        ("wrong_issuer", "unknown_issuer"),
        ("too_large", "too_large"),
        ("garbage", "malformed"),
    ],
)
def test_bad_tokens_are_refused_through_the_gateway_and_recorded(pg, tls_files, tmp_path, case, reason):
    import time

    data = _config_dict(pg, tls_files, tmp_path / "dev.key")
    config = parse_config(data)
    recorder = _AuthReasons()
    token = _bad_tokens(dev_issuer_for(config), time.time())[case]
    with RunningGateway(config, [recorder]) as gw:
        with pytest.raises(psycopg.OperationalError) as info:
            psycopg.connect(host=gw.host, port=gw.port, user="mcp-agent", password=token, dbname="app",
                            sslmode="require")
    assert 'password authentication failed for user "mcp-agent"' in str(info.value)  # SQLSTATE 28P01
    refused = [e for e in recorder.events if e.outcome == "refused"]
    assert refused and f"({reason})" in refused[0].reason, refused
