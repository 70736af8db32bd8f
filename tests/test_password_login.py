"""Password login for users that are not static SCRAM users (the token path).

The gateway asks for a cleartext password only inside TLS (or on loopback with
an explicit switch) and checks it asynchronously through ``password_checker``;
the Identity milestone plugs OIDC token validation into this hook. A checker
that is slow, wrong or broken must never let anyone in.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import psycopg
import pytest

from pgwarden.testing.gateway import RunningGateway, gateway_config


@dataclass(frozen=True)
class FakeIdentity:
    subject: str
    targets: tuple[str, ...]


class FakeChecker:
    """Accepts 'good-token' (targets app) and 'no-targets-token' (no targets)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, bool]] = []

    async def __call__(self, event):
        self.seen.append((event.user, event.password, event.tls))
        await asyncio.sleep(0.01)  # asynchronous, like a JWKS fetch
        if event.password == "good-token":
            return FakeIdentity(event.user, ("app",)), ""
        if event.password == "no-targets-token":
            return FakeIdentity(event.user, ()), ""
        if event.password == "boom":
            raise RuntimeError("checker bug")
        return None, "token signature invalid"


@pytest.fixture(scope="module")
def token_gateway(pg, gw_users, tls_files):
    checker = FakeChecker()
    config = gateway_config(
        pg,
        users=gw_users,
        tls={"mode": "prefer", "cert": str(tls_files["cert"]), "key": str(tls_files["key"])},
    )
    with RunningGateway(config, [], password_checker=checker) as gw:
        yield gw, checker


def _dsn(gw, user, password, sslmode="require"):
    return gw.dsn(user, password, sslmode=sslmode)


def test_token_login_over_tls(token_gateway):
    gw, checker = token_gateway
    with psycopg.connect(_dsn(gw, "agent-1", "good-token")) as conn:
        assert conn.execute("select current_user").fetchone() == ("app",)
        assert conn.info.parameter_status("session_authorization") == "agent-1"
    assert ("agent-1", "good-token", True) in checker.seen


def test_rejected_token_gets_a_generic_error(token_gateway, caplog):
    gw, _ = token_gateway
    with pytest.raises(psycopg.OperationalError) as info:
        psycopg.connect(_dsn(gw, "agent-1", "forged"))
    assert 'password authentication failed for user "agent-1"' in str(info.value)
    assert "signature" not in str(info.value)
    assert any("token signature invalid" in r.getMessage() for r in caplog.records)


def test_password_is_never_asked_for_without_tls(token_gateway):
    gw, checker = token_gateway
    before = len(checker.seen)
    with pytest.raises(psycopg.OperationalError, match="only over an encrypted connection"):
        psycopg.connect(_dsn(gw, "agent-1", "good-token", sslmode="disable"))
    assert len(checker.seen) == before  # the secret was never even requested


def test_checker_bug_fails_closed(token_gateway):
    gw, _ = token_gateway
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(_dsn(gw, "agent-1", "boom"))
    with psycopg.connect(_dsn(gw, "agent-1", "good-token")) as conn:  # still serving
        assert conn.execute("select 1").fetchone() == (1,)


def test_identity_without_the_target_gets_no_access(token_gateway):
    gw, _ = token_gateway
    with pytest.raises(psycopg.OperationalError, match='may not connect to target "app"'):
        psycopg.connect(_dsn(gw, "agent-1", "no-targets-token"))


def test_static_scram_users_still_use_scram(token_gateway):
    gw, checker = token_gateway
    before = len(checker.seen)
    with psycopg.connect(_dsn(gw, "alice", "alice-secret-pw", sslmode="disable")) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
    assert len(checker.seen) == before


def test_cleartext_on_loopback_needs_the_explicit_switch(pg, gw_users):
    config = gateway_config(pg, users=gw_users, listen={"allow_cleartext_password_loopback": True})
    with RunningGateway(config, [], password_checker=FakeChecker()) as gw:
        with psycopg.connect(_dsn(gw, "agent-2", "good-token", sslmode="disable")) as conn:
            assert conn.execute("select 1").fetchone() == (1,)
