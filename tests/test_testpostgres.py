"""The session PostgreSQL is what every integration test stands on: check that
each role really authenticates with the method the gateway tests assume, and
that TLS (including verify-full against our CA) works."""

from __future__ import annotations

import psycopg
import pytest

from pgwarden.testing.postgres import TestPostgres

# libpq >= 16 can insist on an authentication method (require_auth), which
# proves which one the server actually asked for on the wire.
HAS_REQUIRE_AUTH = psycopg.pq.version() >= 160000

AUTH_CASES = [
    # (role, pg_hba method, libpq require_auth value, stored password prefix)
    ("postgres", "scram-sha-256", "scram-sha-256", "SCRAM-SHA-256$"),
    ("app", "scram-sha-256", "scram-sha-256", "SCRAM-SHA-256$"),
    ("md5user", "md5", "md5", "md5"),
    ("clearuser", "password", "password", "SCRAM-SHA-256$"),
    ("trustuser", "trust", "none", None),
]


@pytest.mark.parametrize(("user", "method", "require_auth", "stored"), AUTH_CASES)
def test_tcp_login_per_auth_method(
    pg: TestPostgres, user: str, method: str, require_auth: str, stored: str | None
) -> None:
    extra = {"require_auth": require_auth} if HAS_REQUIRE_AUTH else {}
    with psycopg.connect(pg.dsn(user, "appdb", sslmode="disable", **extra)) as conn:
        assert conn.execute("select current_user").fetchone() == (user,)

    rules = pg.psql(
        "select distinct auth_method from pg_hba_file_rules "
        f"where type = 'host' and '{user}' = any(user_name)"
    )
    assert rules.split() == [method] or (method == "scram-sha-256" and rules == "")

    rolpassword = pg.psql(
        f"select coalesce(rolpassword, '') from pg_authid where rolname = '{user}'"
    )
    if stored is None:
        assert rolpassword == ""
    else:
        assert rolpassword.startswith(stored)


@pytest.mark.parametrize("user", ["app", "md5user", "clearuser"])
def test_wrong_password_is_rejected(pg: TestPostgres, user: str) -> None:
    with pytest.raises(psycopg.OperationalError, match="authentication failed"):
        psycopg.connect(pg.dsn(user, "appdb", password="wrong", sslmode="disable"))


def test_verify_full_with_test_ca(pg: TestPostgres) -> None:
    if not pg.ssl:
        pytest.skip(f"{pg.version} was built without OpenSSL")
    dsn = pg.dsn("app", "appdb", host="localhost", sslmode="verify-full",
                 sslrootcert=str(pg.ca_cert_path))
    with psycopg.connect(dsn) as conn:
        assert conn.pgconn.ssl_in_use
        row = conn.execute("select ssl from pg_stat_ssl where pid = pg_backend_pid()").fetchone()
        assert row == (True,)


def test_sslmode_require(pg: TestPostgres) -> None:
    if not pg.ssl:
        pytest.skip(f"{pg.version} was built without OpenSSL")
    with psycopg.connect(pg.dsn("md5user", "appdb", sslmode="require")) as conn:
        assert conn.pgconn.ssl_in_use


def test_password_encryption_is_scram(pg: TestPostgres) -> None:
    with psycopg.connect(pg.dsn()) as conn:
        assert conn.execute("show password_encryption").fetchone() == ("scram-sha-256",)
    assert pg.psql("show password_encryption") == "scram-sha-256"
