"""Hostile and broken clients against a real gateway, with raw sockets.

Each test plays one misbehaving client (bad startup packets, protocol games,
forbidden parameters, wrong credentials, malformed messages after login, a
client that stops reading, forged cancel keys) and checks the gateway's exact
answer. After every test an autouse fixture checks that the gateway let go of
the bad session and that a fresh psycopg connection still works.
"""

from __future__ import annotations

import gc
import json
import secrets
import socket
import struct
import subprocess
import sys
import threading
import time

import psutil
import psycopg
import pytest

from pgwarden.wire import encode
from pgwarden.wire.constants import PROTOCOL_3_0, Auth
from pgwarden.wire.messages import decode_error_fields

try:  # tests/ as a package, or as plain rootdir modules
    from .conftest import GW_PASSWORD, GW_USER
    from .rawclient import RawClient, ServerError, auth_code, gssenc_request, startup_packet
except ImportError:
    from conftest import GW_PASSWORD, GW_USER  # type: ignore[no-redef]
    from rawclient import RawClient, ServerError, auth_code, gssenc_request, startup_packet  # type: ignore[no-redef]

pytestmark = pytest.mark.timeout(120)

STARTUP = {"user": GW_USER, "database": "app"}


# ---------------------------------------------------------------- helpers & fixtures


def session_count(gateway) -> int:
    return gateway.call(lambda: len(gateway.gateway.sessions))


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


@pytest.fixture(autouse=True)
def gateway_survives(gateway, gw_dsn):
    """After each bad client: the session is gone and a fresh psycopg connection works."""
    before = session_count(gateway)
    yield
    assert wait_for(lambda: session_count(gateway) <= before, timeout=10), (
        f"gateway still tracks {session_count(gateway)} session(s), had {before} before the test"
    )
    with psycopg.connect(gw_dsn, connect_timeout=10) as conn:
        assert conn.execute("select 'still works'").fetchone() == ("still works",)


@pytest.fixture()
def raw(gateway):
    clients: list[RawClient] = []

    def make() -> RawClient:
        client = RawClient(gateway.host, gateway.port)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def expect_fatal(client: RawClient, sqlstate: str, contains: str | None = None):
    """The gateway sends exactly one FATAL ErrorResponse (with ``sqlstate``) and closes."""
    messages, closed = client.read_until_closed(timeout=10)
    assert closed, f"gateway kept the connection open after {messages!r}"
    assert [t for t, _ in messages] == [b"E"], messages
    fields = decode_error_fields(messages[0][1])
    assert fields.severity == "FATAL", fields.fields
    assert fields.sqlstate == sqlstate, fields.fields
    if contains is not None:
        assert contains in fields.message, fields.fields
    return fields


def logged_in(make) -> RawClient:
    client = make()
    messages = client.login(GW_USER, GW_PASSWORD)
    assert messages[-1] == (b"Z", b"I")
    return client


# ---------------------------------------------------------------- startup packet framing


@pytest.mark.parametrize(
    "length",
    [0xFFFFFFF0, 0x80000000, 1 << 30, 0, 4, 7, 10001],
    ids=["negative", "int-min", "1GiB", "zero", "four", "seven", "over-limit"],
)
def test_startup_packet_with_invalid_length(raw, length):
    client = raw()
    client.send(struct.pack("!I", length) + struct.pack("!I", PROTOCOL_3_0) + b"user\x00alice\x00\x00")
    expect_fatal(client, "08P01", "invalid startup packet")


def test_startup_packet_length_alone_is_judged(raw):
    """A hostile length is refused as soon as the 4 length bytes arrive, not after 1 GiB."""
    client = raw()
    client.send(struct.pack("!I", 1 << 30))
    expect_fatal(client, "08P01", "invalid startup packet length")


def test_truncated_startup_then_close(raw):
    client = raw()
    packet = startup_packet(STARTUP)
    client.send(packet[:10])
    time.sleep(0.1)
    client.sock.shutdown(socket.SHUT_WR)  # the client is done sending
    data, closed = client.drain(timeout=10)
    assert closed and data == b""


def test_truncated_startup_then_silence_keeps_waiting(raw):
    client = raw()
    client.send(startup_packet(STARTUP)[:10])
    data, closed = client.drain(timeout=0.5)
    assert (data, closed) == (b"", False)
    client.send(startup_packet(STARTUP)[10:])  # the rest arrives: the login proceeds
    assert client.authenticate(GW_USER, GW_PASSWORD)[-1] == (b"Z", b"I")
    assert client.query("select 7")[-2:] == [(b"C", b"SELECT 1\x00"), (b"Z", b"I")]


def test_startup_packet_with_garbage_inside(raw):
    client = raw()
    body = struct.pack("!I", PROTOCOL_3_0) + b"user\x00alice\x00database"  # no terminators
    client.send(struct.pack("!I", len(body) + 4) + body)
    expect_fatal(client, "08P01")


# ---------------------------------------------------------------- SSLRequest / GSSENCRequest


@pytest.mark.parametrize(
    "injected",
    [startup_packet(STARTUP), b"GET / HTTP/1.1\r\n\r\n", b"\x00"],
    ids=["startup-packet", "http", "one-byte"],
)
def test_data_after_ssl_request_in_the_same_packet_is_refused(raw, injected):
    """CVE-2021-23214: bytes buffered before the TLS handshake must not be trusted."""
    client = raw()
    client.send(encode.ssl_request() + injected)
    data, closed = client.drain(timeout=10)
    assert closed
    assert data[:1] == b"E", f"gateway answered {data[:20]!r} instead of refusing"
    length = struct.unpack_from("!I", data, 1)[0]
    assert len(data) == 1 + length, "nothing may follow the FATAL error"
    fields = decode_error_fields(data[5:])
    assert (fields.severity, fields.sqlstate) == ("FATAL", "08P01")
    assert fields.message == "received unencrypted data after SSLRequest"


def test_ssl_request_then_tls_login_works(raw):
    client = raw()
    client.start_tls()
    assert client.login(GW_USER, GW_PASSWORD)[-1] == (b"Z", b"I")
    assert client.query("select 1")[-1] == (b"Z", b"I")


def test_gssenc_request_is_declined_then_startup_continues(raw):
    client = raw()
    client.send(gssenc_request())
    assert client.recv_exactly(1) == b"N"
    assert client.login(GW_USER, GW_PASSWORD)[-1] == (b"Z", b"I")
    rows = [body for t, body in client.query("select 40 + 2") if t == b"D"]
    assert rows == [struct.pack("!hi", 1, 2) + b"42"]


def test_gssenc_request_then_ssl_request(raw):
    """libpq with gssencmode=prefer and sslmode=prefer: 'N' to GSS, then TLS."""
    client = raw()
    client.send(gssenc_request())
    assert client.recv_exactly(1) == b"N"
    client.start_tls()
    assert client.login(GW_USER, GW_PASSWORD)[-1] == (b"Z", b"I")


def test_data_after_gssenc_request_is_refused(raw):
    client = raw()
    client.send(gssenc_request() + startup_packet(STARTUP))
    fields = expect_fatal(client, "08P01")
    assert fields.message == "received unencrypted data after GSSENCRequest"


# ---------------------------------------------------------------- protocol versions


def negotiate(body: bytes) -> tuple[int, list[str]]:
    newest, count = struct.unpack_from("!ii", body, 0)
    names = body[8:].split(b"\x00")
    assert names[-1] == b"" and len(names) == count + 1, body
    return newest, [n.decode() for n in names[:-1]]


@pytest.mark.parametrize(
    "version,extra,unrecognized",
    [
        (PROTOCOL_3_0 + 2, {"_pq_.foo": "bar"}, ["_pq_.foo"]),
        (PROTOCOL_3_0 + 2, {}, []),
        (PROTOCOL_3_0, {"_pq_.foo": "1", "_pq_.bar": "2"}, ["_pq_.foo", "_pq_.bar"]),
        (PROTOCOL_3_0 + 9999, {}, []),
    ],
    ids=["3.2+_pq_.foo", "3.2", "3.0+two-options", "3.9999"],
)
def test_newer_protocol_gets_negotiate_protocol_version(raw, version, extra, unrecognized):
    client = raw()
    client.startup({**STARTUP, **extra}, version=version)
    t, body = client.read_message()
    assert t == b"v", (t, body)
    assert negotiate(body) == (0, unrecognized)
    t, body = client.read_message()
    assert t == b"R" and auth_code(body) == Auth.SASL
    # the session then continues at 3.0 with the _pq_ options dropped
    assert client.authenticate(GW_USER, GW_PASSWORD, sasl_request=body)[-1] == (b"Z", b"I")
    assert client.query("select 1")[-1] == (b"Z", b"I")


def test_protocol_3_0_without_options_gets_no_negotiation(raw):
    client = raw()
    client.startup(STARTUP)
    t, body = client.read_message()
    assert t == b"R" and auth_code(body) == Auth.SASL


def v2_startup_packet(database: str, user: str) -> bytes:
    """A protocol 2.0 StartupPacket: fixed-size fields, as pre-7.4 clients send it."""

    def field(value: str, size: int) -> bytes:
        return value.encode().ljust(size, b"\x00")

    body = struct.pack("!I", 2 << 16) + field(database, 64) + field(user, 32) + field("", 64) * 3
    return struct.pack("!I", len(body) + 4) + body


@pytest.mark.parametrize(
    "packet",
    [
        v2_startup_packet("app", GW_USER),
        startup_packet(STARTUP, version=2 << 16),
        startup_packet(STARTUP, version=4 << 16),
        startup_packet(STARTUP, version=1 << 16),
    ],
    ids=["2.0-layout", "2.0-version-3.0-layout", "4.0", "1.0"],
)
def test_unsupported_protocol_versions(raw, packet):
    client = raw()
    client.send(packet)
    fields = expect_fatal(client, "0A000", "unsupported frontend protocol")
    assert "3.0" in fields.message


# ---------------------------------------------------------------- startup parameters


@pytest.mark.parametrize(
    "params,name",
    [
        ({"options": "-c role=x"}, "options"),
        ({"options": "-c default_transaction_read_only=off"}, "options"),
        ({"replication": "database"}, "replication"),
        ({"replication": "true"}, "replication"),
        ({"role": "postgres"}, "role"),
        ({"session_authorization": "postgres"}, "session_authorization"),
        ({"OPTIONS": "-c role=x"}, "OPTIONS"),
        ({"default_transaction_read_only": "off"}, "default_transaction_read_only"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_control_startup_parameters_are_refused(raw, params, name):
    client = raw()
    client.startup({**STARTUP, **params})
    fields = expect_fatal(client, "42501")
    assert fields.message.startswith(f'pgwarden: startup parameter "{name}" is not allowed: '), fields.message


@pytest.mark.parametrize("name", ["foo", "pgwarden.anything", "session_preload_libraries"])
def test_unknown_startup_parameter_is_refused(raw, name):
    client = raw()
    client.startup({**STARTUP, name: "x"})
    fields = expect_fatal(client, "42501", f'startup parameter "{name}" is not allowed')
    assert fields.fields.get("H") == "An administrator can add it to forward_startup_parameters."


def test_safe_startup_parameters_are_forwarded(raw):
    client = raw()
    messages = client.login(GW_USER, GW_PASSWORD, application_name="raw-test", timezone="Asia/Tokyo")
    params = dict(body.rstrip(b"\x00").split(b"\x00") for t, body in messages if t == b"S")
    assert params[b"application_name"] == b"raw-test"
    assert params[b"TimeZone"] == b"Asia/Tokyo"


def test_missing_user_is_refused(raw):
    client = raw()
    client.startup({"database": "app"})
    expect_fatal(client, "28000", "no PostgreSQL user name")


def test_psycopg_options_are_refused(gw_dsn):
    with pytest.raises(psycopg.OperationalError) as info:
        psycopg.connect(gw_dsn, options="-c default_transaction_read_only=off", connect_timeout=10)
    assert 'startup parameter "options" is not allowed' in str(info.value)


def test_psycopg_replication_is_refused(gw_dsn):
    with pytest.raises(psycopg.OperationalError) as info:
        psycopg.connect(gw_dsn, replication="database", connect_timeout=10)
    assert 'startup parameter "replication" is not allowed' in str(info.value)


# ---------------------------------------------------------------- authentication


def failed_login(make, user: str, password: str) -> tuple[list[bytes], ServerError]:
    client = make()
    with pytest.raises(ServerError) as info:
        client.login(user, password)
    data, closed = client.drain(timeout=10)
    assert closed and data == b""
    return [t for t, _ in info.value.messages], info.value


def test_bad_password_and_unknown_user_look_the_same(raw):
    types_bad, bad = failed_login(raw, GW_USER, "not-the-password")
    types_unknown, unknown = failed_login(raw, "nobody_here", GW_PASSWORD)
    for err, user in ((bad, GW_USER), (unknown, "nobody_here")):
        assert (err.fields.severity, err.fields.sqlstate) == ("FATAL", "28P01")
        assert err.fields.message == f'password authentication failed for user "{user}"'
    # the same exchange up to the failure: SASL, SASLContinue, then the error
    assert types_bad == types_unknown == [b"R", b"R", b"E"]
    assert set(bad.fields.fields) == set(unknown.fields.fields)


def test_psycopg_bad_password(gateway):
    with pytest.raises(psycopg.OperationalError) as info:
        psycopg.connect(gateway.dsn(GW_USER, "wrong"), connect_timeout=10)
    assert f'password authentication failed for user "{GW_USER}"' in str(info.value)


def test_unknown_target_after_login(raw):
    client = raw()
    client.startup({"user": GW_USER, "database": "no_such_target"})
    with pytest.raises(ServerError) as info:
        client.authenticate(GW_USER, GW_PASSWORD)
    assert info.value.fields.sqlstate == "3D000"


def test_non_sasl_message_during_authentication(raw):
    client = raw()
    client.startup(STARTUP)
    assert client.read_message()[0] == b"R"
    client.send(encode.query("select 1"))
    expect_fatal(client, "08P01", "expected SASL response")


def test_oversized_message_during_authentication(raw):
    client = raw()
    client.startup(STARTUP)
    assert client.read_message()[0] == b"R"
    client.send(b"p" + struct.pack("!I", 1 << 30) + b"SCRAM")
    expect_fatal(client, "08P01")


# ---------------------------------------------------------------- malformed messages after login


@pytest.mark.parametrize(
    "data",
    [
        b"Q" + struct.pack("!I", 1 << 30) + b"select 1",
        b"Q" + struct.pack("!I", 0xFFFFFFFF),
        b"Q" + struct.pack("!I", 0x80000000) + b"x",
        b"Q" + struct.pack("!I", 64 * 1024 * 1024 + 1),
        b"Q" + struct.pack("!I", 2),
        encode.message(b"?", b""),
        encode.message(b"\x00", b"abc"),
        encode.message(b"p", b"secret\x00"),
        encode.message(b"Q", b"no terminator"),
        encode.message(b"C", b""),
        encode.message(b"B", b""),
        encode.message(b"E", b""),
    ],
    ids=[
        "1GiB",
        "negative",
        "int-min",
        "limit+1",
        "length-2",
        "unknown-type",
        "nul-type",
        "password-after-login",
        "unterminated-query",
        "close-without-body",
        "bind-without-body",
        "execute-without-body",
    ],
)
def test_malformed_message_after_login(raw, data):
    client = logged_in(raw)
    client.send(data)
    expect_fatal(client, "08P01", "invalid frontend message")


def test_malformed_message_after_valid_ones_in_the_same_packet(raw):
    client = logged_in(raw)
    client.send(encode.query("select 1") + b"Q" + struct.pack("!I", 0xFFFFFFFF))
    messages, closed = client.read_until_closed(timeout=10)
    assert closed
    assert messages[-1][0] == b"E"
    fields = decode_error_fields(messages[-1][1])
    assert (fields.severity, fields.sqlstate) == ("FATAL", "08P01")


# ---------------------------------------------------------------- a client that stops reading


BIG_QUERY = "SELECT repeat('x', 1000) FROM generate_series(1, 200000)"


def backends_running(conn, text: str) -> int:
    return conn.execute(
        "select count(*) from pg_stat_activity where query = %s and pid <> pg_backend_pid()", (text,)
    ).fetchone()[0]


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_client_that_stops_reading_is_not_buffered_without_bound(raw, gw_dsn, tls):
    proc = psutil.Process()
    client = raw()
    if tls:
        client.start_tls()
    client.login(GW_USER, GW_PASSWORD)
    gc.collect()
    base = proc.memory_info().rss
    peak = base
    client.send(encode.query(BIG_QUERY))  # about 200 MB of DataRows, never read

    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        peak = max(peak, proc.memory_info().rss)
        time.sleep(0.05)
    # meanwhile other sessions are served
    with psycopg.connect(gw_dsn, connect_timeout=10, autocommit=True) as other:
        assert other.execute("select 42").fetchone() == (42,)
        assert backends_running(other, BIG_QUERY) == 1  # still stuck, not finished or buffered away
    peak = max(peak, proc.memory_info().rss)
    assert peak - base < 100 * 1024 * 1024, f"gateway grew by {(peak - base) >> 20} MiB for one stalled client"

    # the stalled stream is intact: it starts with the row description and rows
    t, _ = client.read_message()
    assert t == b"T"
    assert client.read_message()[0] == b"D"
    client.close()
    # closing the client ends the upstream backend too (autocommit: pg_stat_activity
    # is a snapshot taken once per transaction)
    with psycopg.connect(gw_dsn, connect_timeout=10, autocommit=True) as other:
        assert wait_for(lambda: backends_running(other, BIG_QUERY) == 0, timeout=15)


# ---------------------------------------------------------------- cancel requests


def send_cancel(gateway, pid: int, secret: int) -> tuple[bytes, bool]:
    with RawClient(gateway.host, gateway.port) as client:
        client.send(encode.cancel_request(pid, secret))
        return client.drain(timeout=10)


def test_forged_cancel_request_does_nothing(gateway, gw_dsn):
    with psycopg.connect(gw_dsn, connect_timeout=10) as conn:
        pid = conn.info.backend_pid
        result: dict = {}

        def run() -> None:
            start = time.monotonic()
            try:
                result["row"] = conn.execute("select 'done' from pg_sleep(1)").fetchone()
            except Exception as exc:  # noqa: BLE001 - reported below
                result["error"] = exc
            result["elapsed"] = time.monotonic() - start

        worker = threading.Thread(target=run)
        worker.start()
        time.sleep(0.3)
        for forged_pid, secret in ((pid, secrets.randbits(32)), (secrets.randbits(31), secrets.randbits(32)), (0, 0)):
            assert send_cancel(gateway, forged_pid, secret) == (b"", True)
        worker.join(30)
        assert "error" not in result, result
        assert result["row"] == ("done",)
        assert result["elapsed"] >= 0.9


def test_cancel_request_with_wrong_length_is_refused(raw):
    client = raw()
    client.send(struct.pack("!ii", 12, 80877102) + b"\x00\x00\x00\x01")  # no secret
    expect_fatal(client, "08P01")


CANCEL_SCRIPT = """
import json, sys, threading, time
import psycopg

with psycopg.connect(sys.argv[1], connect_timeout=10) as conn:
    timer = threading.Timer(0.5, getattr(conn, sys.argv[2]))
    timer.start()
    start = time.monotonic()
    outcome = {}
    try:
        conn.execute("select pg_sleep(30)")
        outcome["error"] = None
    except psycopg.Error as exc:
        outcome["error"] = type(exc).__name__
        outcome["sqlstate"] = exc.sqlstate
    outcome["elapsed"] = time.monotonic() - start
    timer.join()
    conn.rollback()
    outcome["after"] = conn.execute("select 'after cancel'").fetchone()[0]
print(json.dumps(outcome))
"""


@pytest.mark.parametrize("method", ["cancel", "cancel_safe"])
def test_valid_cancel_cancels_a_running_statement(gw_dsn, method):
    """psycopg's cancel() (libpq PQcancel) and cancel_safe() (PQcancelCreate, over TLS here).

    The client runs in a subprocess: psycopg's C implementation keeps the GIL
    during the blocking PQcancel call, which would deadlock with the gateway
    running in a thread of this process.
    """
    proc = subprocess.run(
        [sys.executable, "-c", CANCEL_SCRIPT, gw_dsn, method], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    outcome = json.loads(proc.stdout)
    assert outcome["error"] == "QueryCanceled" and outcome["sqlstate"] == "57014", outcome
    assert outcome["elapsed"] < 10, outcome
    assert outcome["after"] == "after cancel"


def test_client_closing_mid_message_releases_its_session(raw):
    """A client that dies halfway through a message: the autouse fixture checks the
    gateway dropped the session (and so its upstream connection)."""
    client = logged_in(raw)
    client.send(encode.query("select 1")[:7])
    client.close()
