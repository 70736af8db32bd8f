"""Authentication outcomes reach the pipeline; repeated failures are slowed down."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest

from pgwarden.config import LoginThrottleConfig
from pgwarden.server.throttle import LoginThrottle
from pgwarden.testing.gateway import RunningGateway, gateway_config


class AuthRecorder:
    name = "test.auth"

    def __init__(self) -> None:
        self.events = []
        self._lock = threading.Lock()

    def check(self, statement):
        return None

    def authenticated(self, event) -> None:
        with self._lock:
            self.events.append(event)


def test_throttle_delays_grow_after_the_threshold_and_reset():
    now = [1000.0]
    throttle = LoginThrottle(LoginThrottleConfig(after=3, window=60, max_delay=2), clock=lambda: now[0])
    delays = [throttle.failed("10.0.0.1") for _ in range(7)]
    assert delays == [0.0, 0.0, 0.25, 0.5, 1.0, 2.0, 2.0]
    assert throttle.failed("10.0.0.2") == 0.0  # per source
    now[0] += 61  # the window passed
    assert throttle.failed("10.0.0.1") == 0.0
    throttle.failed("10.0.0.1")
    throttle.succeeded("10.0.0.1")
    assert throttle.failed("10.0.0.1") == 0.0


def test_login_outcomes_are_events_with_reasons(pg, gw_users):
    recorder = AuthRecorder()
    config = gateway_config(pg, users=gw_users)
    with RunningGateway(config, [recorder]) as gw:
        with psycopg.connect(gw.dsn("alice", "alice-secret-pw")) as conn:
            conn.execute("select 1")
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(gw.dsn("alice", "wrong"))
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(gw.dsn("nobody", "whatever"))
        time.sleep(0.2)
    ok = [e for e in recorder.events if e.outcome == "ok"]
    refused = [e for e in recorder.events if e.outcome == "refused"]
    assert ok and ok[0].user == "alice" and ok[0].target == "app" and ok[0].method == "scram-sha-256"
    reasons = {e.user: e.reason for e in refused}
    assert "wrong password" in reasons["alice"]
    assert "unknown user" in reasons["nobody"]


def test_repeated_failures_from_one_source_are_slowed_down(pg, gw_users):
    config = gateway_config(pg, users=gw_users, listen={"login_throttle": {"after": 2, "max_delay": 1.0}})
    with RunningGateway(config, []) as gw:
        durations = []
        for _ in range(4):
            started = time.monotonic()
            with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
                psycopg.connect(gw.dsn("alice", "wrong"))
            durations.append(time.monotonic() - started)
        # from the 2nd failure on, the answer is held back (0.25 s, 0.5 s, 1 s)
        assert durations[2] >= 0.45 and durations[3] >= 0.9
        # the right password still gets in, and clears the record
        with psycopg.connect(gw.dsn("alice", "alice-secret-pw")) as conn:
            assert conn.execute("select 1").fetchone() == (1,)
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(gw.dsn("alice", "wrong"))
        # counting restarted from zero: this is the 2nd failure (0.25 s), not the 6th (1 s)
        assert gw.call(gw.gateway.throttle.failed, "127.0.0.1") == 0.25
