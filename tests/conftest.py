"""Shared pytest fixtures.

``pg`` is a real PostgreSQL started once per session (about a second) because
starting one per test would dominate the run time; tests must not change its
roles or pg_hba.conf in ways other tests would notice.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest

from pgwarden.testing.postgres import TestPostgres


def pytest_configure(config) -> None:
    """SIGTERM (CI timeouts, ``timeout``) unwinds like Ctrl-C, so fixtures stop
    the test PostgreSQL instead of leaving it running (atexit does not run on a
    signal)."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)


@pytest.fixture(scope="session")
def pg() -> Iterator[TestPostgres]:
    """A running :class:`TestPostgres`, stopped and deleted after the session."""
    with TestPostgres() as server:
        yield server


# ---------------------------------------------------------------- gateway

import os  # noqa: E402

from pgwarden.session.scram import make_verifier  # noqa: E402
from pgwarden.testing.gateway import RunningGateway, gateway_config  # noqa: E402
from pgwarden.testing.stages import DenyMarkerStage, HoldMarkerStage, RecordingStage  # noqa: E402

GW_USER = "alice"
GW_PASSWORD = "alice-secret-pw"
_VERIFIER = make_verifier(GW_PASSWORD)


@pytest.fixture(scope="session")
def gw_users() -> list[dict]:
    return [{"name": GW_USER, "scram_verifier": _VERIFIER}]


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory) -> dict:
    from pgwarden.certs import write_ca_signed

    return write_ca_signed(tmp_path_factory.mktemp("gwtls"), ("localhost", "127.0.0.1"))


@pytest.fixture(scope="session")
def stages() -> dict:
    """The test stages the shared gateway runs: deny ``/*deny*/``, hold ``/*hold*/``, record all."""
    return {"deny": DenyMarkerStage(), "hold": HoldMarkerStage(), "record": RecordingStage()}


@pytest.fixture(scope="session")
def gateway(pg, gw_users, tls_files, stages) -> Iterator[RunningGateway]:
    """A gateway in front of ``pg`` (target ``app``), TLS preferred, with the test stages."""
    from pgwarden.policy.stages import StatementLogStage

    config = gateway_config(
        pg,
        users=gw_users,
        tls={"mode": "prefer", "cert": str(tls_files["cert"]), "key": str(tls_files["key"])},
    )
    with RunningGateway(config, [StatementLogStage(), stages["deny"], stages["hold"], stages["record"]]) as gw:
        yield gw


@pytest.fixture()
def gw_dsn(gateway) -> str:
    """libpq DSN for the shared gateway as the static user ``alice``."""
    return gateway.dsn(GW_USER, GW_PASSWORD)


@pytest.fixture()
def gw_url(gateway) -> str:
    return f"postgresql://{GW_USER}:{GW_PASSWORD}@{gateway.host}:{gateway.port}/app"
