"""A tiny raw protocol 3.0 client for tests that must misbehave on purpose.

It speaks just enough of the protocol to reach the states the malformed-input
tests need: send arbitrary startup packets, negotiate TLS by hand, log in with
SCRAM-SHA-256 (mirroring what ``pgwarden.session.upstream`` does as a client,
with scramp), run simple queries, and read backend messages one at a time or
until the peer closes the connection.
"""

from __future__ import annotations

import socket
import ssl
import struct
import time
from collections.abc import Mapping

import scramp

from pgwarden.wire import encode
from pgwarden.wire.constants import GSSENC_REQUEST_CODE, PROTOCOL_3_0, Auth
from pgwarden.wire.messages import ErrorFields, decode_auth_sasl_mechanisms, decode_error_fields

__all__ = [
    "Closed",
    "RawClient",
    "ServerError",
    "auth_code",
    "error_fields",
    "gssenc_request",
    "startup_packet",
]

Message = tuple[bytes, bytes]  # (type byte, body without the 5-byte header)


class Closed(Exception):
    """The gateway closed the connection."""


class ServerError(Exception):
    """The gateway answered with an ErrorResponse where the helper expected success."""

    def __init__(self, fields: ErrorFields, messages: list[Message]) -> None:
        super().__init__(f"{fields.severity} {fields.sqlstate}: {fields.message}")
        self.fields = fields
        self.messages = messages


def startup_packet(params: Mapping[str, str], version: int = PROTOCOL_3_0) -> bytes:
    """A StartupMessage; ``encode.startup_message`` with the version word replaced when asked."""
    packet = encode.startup_message(params)
    return packet[:4] + struct.pack("!I", version) + packet[8:]


def gssenc_request() -> bytes:
    return struct.pack("!ii", 8, GSSENC_REQUEST_CODE)


def auth_code(body: bytes) -> int:
    return struct.unpack_from("!i", body, 0)[0]


def error_fields(message: Message) -> ErrorFields:
    t, body = message
    assert t in (b"E", b"N"), f"expected an ErrorResponse, got {t!r}"
    return decode_error_fields(body)


class RawClient:
    def __init__(self, host: str, port: int, timeout: float = 15.0) -> None:
        self.sock: socket.socket | ssl.SSLSocket = socket.create_connection((host, port), timeout=timeout)
        self.timeout = timeout
        self._buf = b""

    # ------------------------------------------------------------ bytes

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> None:
        try:
            chunk = self.sock.recv(65536)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            raise Closed("connection closed by the gateway")
        self._buf += chunk

    def recv_exactly(self, n: int) -> bytes:
        while len(self._buf) < n:
            self._fill()
        out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def read_message(self) -> Message:
        header = self.recv_exactly(5)
        length = struct.unpack_from("!I", header, 1)[0]
        assert 4 <= length < 1 << 30, f"gateway sent an invalid length {length}"
        return header[:1], self.recv_exactly(length - 4)

    def read_until(self, type_byte: bytes) -> list[Message]:
        out = []
        while True:
            msg = self.read_message()
            out.append(msg)
            if msg[0] == type_byte:
                return out

    def read_until_closed(self, timeout: float = 10.0) -> tuple[list[Message], bool]:
        """Every message until EOF; ``closed`` is False if the gateway kept the connection open."""
        deadline = time.monotonic() + timeout
        messages: list[Message] = []
        while True:
            self.sock.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                messages.append(self.read_message())
            except Closed:
                self.sock.settimeout(self.timeout)
                return messages, True
            except (TimeoutError, socket.timeout):
                self.sock.settimeout(self.timeout)
                return messages, False

    def drain(self, timeout: float = 10.0) -> tuple[bytes, bool]:
        """Every byte until EOF (raw, unparsed); ``closed`` is False if the connection stayed open."""
        closed = self.is_closed(timeout)
        data, self._buf = self._buf, b""
        return data, closed

    def is_closed(self, timeout: float = 10.0) -> bool:
        """True once the gateway closed the connection (any bytes still in flight are kept)."""
        deadline = time.monotonic() + timeout
        while True:
            self.sock.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                self._fill()
            except Closed:
                return True
            except (TimeoutError, socket.timeout):
                return False
            finally:
                self.sock.settimeout(self.timeout)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> "RawClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ protocol

    def start_tls(self) -> None:
        """SSLRequest, expect 'S', then a TLS handshake (the test certificate is not verified)."""
        self.send(encode.ssl_request())
        answer = self.recv_exactly(1)
        assert answer == b"S", f"gateway answered the SSLRequest with {answer!r}"
        assert not self._buf
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        self.sock = ctx.wrap_socket(self.sock)

    def startup(self, params: Mapping[str, str], version: int = PROTOCOL_3_0) -> None:
        self.send(startup_packet(params, version))

    def authenticate(self, user: str, password: str, sasl_request: bytes | None = None) -> list[Message]:
        """After a StartupMessage: run SCRAM-SHA-256 and read up to ReadyForQuery.

        ``sasl_request`` is the body of an AuthenticationSASL the caller already
        read. Raises :class:`ServerError` on an ErrorResponse. Returns every
        message read.
        """
        seen: list[Message] = []

        def expect_auth(code: int) -> bytes:
            while True:
                t, body = self.read_message()
                seen.append((t, body))
                if t == b"E":
                    raise ServerError(decode_error_fields(body), seen)
                if t == b"v":  # NegotiateProtocolVersion may precede the request
                    continue
                assert t == b"R", f"expected an authentication request, got {t!r}"
                got = auth_code(body)
                assert got == code, f"expected authentication code {code}, got {got}"
                return body

        body = expect_auth(Auth.SASL) if sasl_request is None else sasl_request
        assert "SCRAM-SHA-256" in decode_auth_sasl_mechanisms(body)
        client = scramp.ScramClient(["SCRAM-SHA-256"], user, password)
        self.send(encode.sasl_initial_response("SCRAM-SHA-256", client.get_client_first().encode("utf-8")))
        body = expect_auth(Auth.SASL_CONTINUE)
        client.set_server_first(body[4:].decode("utf-8"))
        self.send(encode.sasl_response(client.get_client_final().encode("utf-8")))
        body = expect_auth(Auth.SASL_FINAL)
        client.set_server_final(body[4:].decode("utf-8"))  # checks the server signature
        expect_auth(Auth.OK)
        while True:
            t, body = self.read_message()
            seen.append((t, body))
            if t == b"E":
                raise ServerError(decode_error_fields(body), seen)
            if t == b"Z":
                return seen

    def login(self, user: str, password: str, database: str = "app", **params: str) -> list[Message]:
        self.startup({"user": user, "database": database, **params})
        return self.authenticate(user, password)

    def query(self, text: str) -> list[Message]:
        """A simple Query; every message up to and including ReadyForQuery."""
        self.send(encode.query(text))
        return self.read_until(b"Z")
