"""End to end with a real OIDC provider: the npm package ``oidc-provider``.

tests/node/oidc_issuer.js runs it on loopback; its client ``mcp-agent`` gets a
JWT access token (audience ``urn:pgwarden``) with the client-credentials grant,
and psql, psycopg and asyncpg log in through pgwarden with that token as the
password. ``.ci/run`` installs oidc-provider (``npm install --prefix tests/node``).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import selectors
import shutil
import socket
import subprocess
import time
from pathlib import Path

import asyncpg
import httpx
import psycopg
import pytest
from psycopg import errors

from pgwarden.config import parse_config
from pgwarden.testing.gateway import RunningGateway

NODE_DIR = Path(__file__).parent / "node"
ISSUER_JS = NODE_DIR / "oidc_issuer.js"
CLIENT_ID = "mcp-agent"
CLIENT_SECRET = "mcp-agent-secret"
AUDIENCE = "urn:pgwarden"

if shutil.which("node") is None:
    pytest.skip("node (Node.js) is not on PATH", allow_module_level=True)
if not (NODE_DIR / "node_modules" / "oidc-provider").is_dir():
    pytest.skip("npm package oidc-provider is missing (npm install --prefix tests/node)", allow_module_level=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_issuer(log_path: Path) -> tuple[subprocess.Popen, int]:
    """Start oidc_issuer.js on a free port and wait for READY (a few tries: port races)."""
    last = ""
    for _ in range(3):
        port = _free_port()
        log = open(log_path, "w")
        proc = subprocess.Popen(["node", str(ISSUER_JS), str(port)], cwd=NODE_DIR,
                                stdout=subprocess.PIPE, stderr=log, text=True)
        log.close()
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + 30
        line = ""
        while time.monotonic() < deadline and proc.poll() is None:
            if sel.select(timeout=0.5):
                line = proc.stdout.readline()
                break
        sel.close()
        if line.strip() == "READY":
            return proc, port
        proc.kill()
        proc.wait(timeout=10)
        last = log_path.read_text()
    raise RuntimeError(f"oidc_issuer.js did not start:\n{last}")


@pytest.fixture(scope="module")
def issuer(tmp_path_factory):
    log_path = tmp_path_factory.mktemp("oidc") / "issuer.log"
    proc, port = _start_issuer(log_path)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        proc.stdout.close()


def _get_token(issuer_url: str, resource: str = AUDIENCE) -> str:
    with httpx.Client(timeout=15) as http:
        meta = http.get(f"{issuer_url}/.well-known/openid-configuration")
        meta.raise_for_status()
        resp = http.post(
            meta.json()["token_endpoint"],
            auth=(CLIENT_ID, CLIENT_SECRET),  # client_secret_basic
            data={"grant_type": "client_credentials", "resource": resource, "scope": "db:read"},
        )
        assert resp.status_code == 200, resp.text
        body = resp.json()
    assert body["token_type"].lower() == "bearer"
    return body["access_token"]


def _claims(token: str) -> dict:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


@pytest.fixture(scope="module")
def oidc_env(issuer, pg, tls_files):
    data = {
        "listen": {"host": "127.0.0.1", "port": 0,
                   "tls": {"mode": "prefer", "cert": str(tls_files["cert"]), "key": str(tls_files["key"])}},
        "targets": {
            "app": {"host": pg.host, "port": pg.port, "database": "appdb", "user": "app",
                    "password": pg.passwords["app"]},
        },
        "identity": {"issuers": [{"issuer": issuer, "audience": AUDIENCE, "allow_insecure_http": True}]},
        "roles": {"agent": {"targets": ["app"], "access": "read"}},
        "role_bindings": [{"role": "agent", "match": {"client_id": CLIENT_ID}}],
    }
    config = parse_config(data)
    pg.psql("create table if not exists oidc_probe(x int); grant all on oidc_probe to app", database="appdb")
    with RunningGateway(config, []) as gw:
        yield gw, issuer


def test_provider_issues_a_jwt_access_token(oidc_env):
    _, issuer = oidc_env
    token = _get_token(issuer)
    claims = _claims(token)
    assert claims["iss"] == issuer
    assert claims["aud"] == AUDIENCE
    assert claims["client_id"] == CLIENT_ID and claims["sub"] == CLIENT_ID
    assert "db:read" in claims["scope"].split()
    assert 0 < claims["exp"] - claims["iat"] <= 300


def test_psql_with_a_provider_token(oidc_env):
    gw, issuer = oidc_env
    token = _get_token(issuer)
    env = {**os.environ, "PGPASSWORD": token, "PGSSLMODE": "require", "PGCONNECT_TIMEOUT": "15"}
    env.pop("PGSERVICE", None)
    base = ["psql", "-X", "-h", gw.host, "-p", str(gw.port), "-U", CLIENT_ID, "-d", "app",
            "-v", "ON_ERROR_STOP=1", "-At"]
    read = subprocess.run([*base, "-c", "select count(*) >= 0 from oidc_probe"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert read.returncode == 0, read.stderr
    assert read.stdout.strip() == "t"
    write = subprocess.run([*base, "-c", "insert into oidc_probe values (1)"],
                           env=env, capture_output=True, text=True, timeout=60)
    assert write.returncode != 0
    assert "read-only transaction" in write.stderr


def test_psycopg_with_a_provider_token(oidc_env):
    gw, issuer = oidc_env
    token = _get_token(issuer)
    with psycopg.connect(gw.dsn(CLIENT_ID, token, sslmode="require"), autocommit=True) as conn:
        assert conn.info.pgconn.ssl_in_use
        assert conn.execute("select count(*) >= 0 from oidc_probe").fetchone() == (True,)
        assert conn.execute("show default_transaction_read_only").fetchone() == ("on",)
        with pytest.raises(errors.ReadOnlySqlTransaction):
            conn.execute("insert into oidc_probe values (2)")


def test_asyncpg_with_a_provider_token(oidc_env):
    gw, issuer = oidc_env
    token = _get_token(issuer)

    async def main():
        conn = await asyncpg.connect(host=gw.host, port=gw.port, user=CLIENT_ID, password=token,
                                     database="app", ssl="require", timeout=15)
        try:
            assert await conn.fetchval("select 40 + 2") == 42
            with pytest.raises(asyncpg.exceptions.ReadOnlySQLTransactionError):
                await conn.execute("insert into oidc_probe values (3)")
        finally:
            await conn.close()

    asyncio.run(main())


def test_wrong_audience_and_tampered_tokens_are_refused(oidc_env, caplog):
    gw, issuer = oidc_env
    other = _get_token(issuer, resource="urn:other-api")
    assert _claims(other)["aud"] == "urn:other-api"
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(gw.dsn(CLIENT_ID, other, sslmode="require"))

    head, payload, sig = _get_token(issuer).split(".")
    claims = _claims(f"{head}.{payload}.{sig}")
    claims["client_id"] = claims["sub"] = "someone-else"  # keep the original signature
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(gw.dsn(CLIENT_ID, ".".join([head, forged, sig]), sslmode="require"))
    deadline = time.monotonic() + 10  # the gateway logs from its own thread
    while True:
        reasons = " ".join(r.getMessage() for r in caplog.records)
        if ("wrong_audience" in reasons and "bad_signature" in reasons) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert "wrong_audience" in reasons and "bad_signature" in reasons
