"""pgwarden logs in upstream with whatever the server asks for, over TLS when configured."""

from __future__ import annotations

import psycopg
import pytest

from pgwarden.certs import write_ca_signed
from pgwarden.testing.gateway import RunningGateway, gateway_config

ALICE = ("alice", "alice-secret-pw")


def _target(pg, **overrides) -> dict:
    target = {
        "host": pg.host,
        "port": pg.port,
        "database": "appdb",
        "user": "app",
        "password": pg.passwords["app"],
        "sslmode": "disable",
    }
    target.update(overrides)
    return {k: v for k, v in target.items() if v is not None}


@pytest.mark.parametrize(
    "user, method",
    [("app", "scram-sha-256"), ("md5user", "md5"), ("clearuser", "password"), ("trustuser", "trust")],
)
def test_upstream_auth_methods(pg, gw_users, user, method):
    target = _target(pg, user=user, password=pg.passwords.get(user))
    config = gateway_config(pg, users=gw_users, targets={"app": target})
    with RunningGateway(config, []) as gw:
        with psycopg.connect(gw.dsn(*ALICE), autocommit=True) as conn:
            assert conn.execute("select current_user").fetchone() == (user,)
            # the client sees its own identity, not the upstream login
            assert conn.info.parameter_status("session_authorization") == "alice"


def test_upstream_verify_full_with_the_right_ca(pg, gw_users):
    target = _target(pg, host="localhost", sslmode="verify-full", sslrootcert=str(pg.ca_cert_path))
    config = gateway_config(pg, users=gw_users, targets={"app": target})
    with RunningGateway(config, []) as gw:
        with psycopg.connect(gw.dsn(*ALICE), autocommit=True) as conn:
            assert conn.execute("select ssl from pg_stat_ssl where pid = pg_backend_pid()").fetchone() == (True,)


def test_upstream_verify_full_refuses_a_wrong_ca(pg, gw_users, tmp_path, caplog):
    other_ca = write_ca_signed(tmp_path / "other", ("localhost",))["ca_cert"]
    target = _target(pg, host="localhost", sslmode="verify-full", sslrootcert=str(other_ca))
    config = gateway_config(pg, users=gw_users, targets={"app": target})
    with RunningGateway(config, []) as gw:
        with pytest.raises(psycopg.OperationalError) as info:
            psycopg.connect(gw.dsn(*ALICE))
        assert 'could not connect to target "app"' in str(info.value)
        # the client is not told why; the log is
        assert "certificate" not in str(info.value).lower()
    assert any("certificate" in r.getMessage().lower() for r in caplog.records)


def test_upstream_bad_password_is_not_revealed(pg, gw_users, caplog):
    target = _target(pg, password="wrong")
    config = gateway_config(pg, users=gw_users, targets={"app": target})
    with RunningGateway(config, []) as gw:
        with pytest.raises(psycopg.OperationalError) as info:
            psycopg.connect(gw.dsn(*ALICE))
    message = str(info.value)
    assert 'could not connect to target "app"' in message
    assert "app" not in message.replace('target "app"', "")  # no upstream role name
    assert any("password authentication failed" in r.getMessage() for r in caplog.records)


def test_unknown_target_and_target_not_granted(pg, gw_users):
    users = [dict(gw_users[0], targets=["app"]), {"name": "carol", "scram_verifier": gw_users[0]["scram_verifier"], "targets": ["other"]}]
    config = gateway_config(pg, users=users, targets={"app": _target(pg), "other": _target(pg)})
    with RunningGateway(config, []) as gw:
        with pytest.raises(psycopg.OperationalError, match='target "nope" does not exist'):
            psycopg.connect(gw.dsn(*ALICE, database="nope"))
        with pytest.raises(psycopg.OperationalError, match='may not connect to target "app"'):
            psycopg.connect(gw.dsn("carol", ALICE[1], database="app"))
        with psycopg.connect(gw.dsn("carol", ALICE[1], database="other")) as conn:
            assert conn.execute("select 1").fetchone() == (1,)


def test_unreachable_upstream_gives_a_clear_error(pg, gw_users):
    target = _target(pg, port=1, connect_timeout=2)
    config = gateway_config(pg, users=gw_users, targets={"app": target})
    with RunningGateway(config, []) as gw:
        with pytest.raises(psycopg.OperationalError, match='could not connect to target "app"'):
            psycopg.connect(gw.dsn(*ALICE))
