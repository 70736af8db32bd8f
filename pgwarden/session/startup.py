"""Client startup and authentication, as a sans-IO state machine.

States (h11 style, one table of what each state accepts)::

    STARTUP      SSLRequest -> 'S' + StartTLS (or 'N'); GSSENCRequest -> 'N';
                 CancelRequest -> CancelRequested; StartupMessage -> SASL
    TLS          waiting for the driver to finish the TLS handshake
    SASL_INITIAL 'p' SASLInitialResponse -> AuthenticationSASLContinue
    SASL_FINAL   'p' SASLResponse -> AuthenticationSASLFinal, then Authenticated
    PASSWORD     'p' PasswordMessage -> CheckPassword (a token, for users that are
                 not static SCRAM users, when token login is enabled)
    CHECKING     waiting for the driver's ``password_checked`` (async validation)
    DONE         the driver connects upstream and hands the stream to the relay
    FAILED       a FATAL ErrorResponse is in ``to_client``; the driver closes

Rules that are security decisions live here, next to the protocol they guard:
bytes after an SSLRequest before the TLS handshake are refused (they would be
read as if they had come over TLS: CVE-2021-23214); plaintext sessions are
refused when TLS is required; startup parameters that could change the role
or any setting (``options``, ``replication``, ``role``...) are refused, and only
an allow-list is forwarded; the client never learns whether a user exists.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field

from ..wire import encode
from ..wire.constants import (
    CANCEL_REQUEST_CODE,
    F,
    GSSENC_REQUEST_CODE,
    MAX_PREAUTH_MESSAGE,
    SSL_REQUEST_CODE,
    SQLState,
)
from ..wire.frames import FrameBuffer, ProtocolViolation, StartupBuffer, unpack_uint32
from ..wire.messages import decode_sasl_initial, decode_startup
from .scram import AuthFailed, ScramServerExchange, ScramVerifier

__all__ = [
    "Authenticated",
    "CancelRequested",
    "CheckPassword",
    "ClientHandshake",
    "Refused",
    "StartTLS",
    "StartupSettings",
    "is_loopback",
]

# Parameters that change who the session is or what it may do: never forwarded.
_CONTROL_PARAMETERS = {
    "options": "it can change any server setting, including the role and read-only mode",
    "replication": "replication connections bypass SQL inspection",
    "role": "it sets the role",
    "session_authorization": "it sets the session authorization",
    "default_transaction_read_only": "it changes read-only enforcement",
    "transaction_read_only": "it changes read-only enforcement",
    "default_transaction_deferrable": "it changes transaction enforcement",
}


@dataclass(frozen=True, slots=True)
class StartupSettings:
    tls_mode: str  # require | prefer | disable
    allow_plaintext_loopback: bool
    safe_parameters: frozenset[str]
    lookup_verifier: Callable[[str], ScramVerifier | None]
    # Ask users that are not static SCRAM users for a password (an access token)
    # and hand it to the driver to check; only inside TLS, or on loopback when
    # ``allow_cleartext_loopback`` is set.
    password_login: bool = False
    allow_cleartext_loopback: bool = False


@dataclass(frozen=True, slots=True)
class StartTLS:
    """Reply 'S' was queued; the driver must upgrade the connection and call ``tls_established``."""


@dataclass(frozen=True, slots=True)
class CancelRequested:
    pid: int
    secret: int


@dataclass(frozen=True, slots=True)
class CheckPassword:
    """The driver must check ``password`` for ``user`` (asynchronously) and call
    :meth:`ClientHandshake.password_checked` with the outcome."""

    user: str
    password: str
    client_host: str | None
    tls: bool


@dataclass(frozen=True, slots=True)
class Authenticated:
    user: str
    database: str
    forward_params: dict[str, str] = field(default_factory=dict)
    startup_params: dict[str, str] = field(default_factory=dict)
    method: str = "scram-sha-256"
    identity: object | None = None  # what the password check returned, if any


@dataclass(frozen=True, slots=True)
class Refused:
    reason: str  # for the log; the client got a FATAL ErrorResponse
    # A credential was presented and rejected (wrong password, bad token): the
    # driver throttles repeated failures from one source.
    credential_rejected: bool = False


Event = StartTLS | CancelRequested | CheckPassword | Authenticated | Refused


def is_loopback(host: str | None) -> bool:
    if not host:
        return True  # Unix socket
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


class ClientHandshake:
    def __init__(self, settings: StartupSettings, client_host: str | None) -> None:
        self.settings = settings
        self.client_host = client_host
        self.state = "STARTUP"
        self.tls = False
        self.to_client: list[bytes] = []
        self.events: list[Event] = []
        self._startup = StartupBuffer()
        self._frames: FrameBuffer | None = None
        self._scram: ScramServerExchange | None = None
        self._user = ""
        self._database = ""
        self._forward: dict[str, str] = {}
        self._params: dict[str, str] = {}
        self.leftover = b""

    # -------------------------------------------------------------- input

    def data(self, data: bytes) -> None:
        try:
            if self.state == "STARTUP":
                self._startup.feed(data)
                self._startup_packets()
            elif self.state in ("SASL_INITIAL", "SASL_FINAL", "PASSWORD"):
                self._auth_messages(data)
            elif self.state == "CHECKING":
                self._fatal(SQLState.PROTOCOL_VIOLATION, "unexpected data during authentication", "data while checking")
            elif self.state == "TLS":
                self._fatal(SQLState.PROTOCOL_VIOLATION, "received unencrypted data during TLS setup", "data during TLS setup")
            elif self.state == "DONE":
                self.leftover += data
        except ProtocolViolation as exc:
            self._fatal(SQLState.PROTOCOL_VIOLATION, f"invalid startup packet layout: {exc}", f"protocol violation: {exc}")

    def tls_established(self) -> None:
        self.tls = True
        self.state = "STARTUP"

    # -------------------------------------------------------------- startup

    def _startup_packets(self) -> None:
        while self.state == "STARTUP":
            packet = self._startup.next_packet()
            if packet is None:
                return
            code = unpack_uint32(packet, 0)[0]
            if code == SSL_REQUEST_CODE:
                self._on_ssl_request(len(packet))
            elif code == GSSENC_REQUEST_CODE:
                if self._startup.buffered:
                    self._refuse_early_data("GSSENCRequest")
                    return
                self.to_client.append(b"N")
            elif code == CANCEL_REQUEST_CODE:
                if len(packet) != 12:
                    raise ProtocolViolation("CancelRequest has a wrong length")
                pid, secret = unpack_uint32(packet, 4)[0], unpack_uint32(packet, 8)[0]
                self.state = "DONE"
                self.events.append(CancelRequested(pid, secret))
                return
            else:
                self._on_startup_message(packet)

    def _on_ssl_request(self, size: int) -> None:
        if size != 4:
            raise ProtocolViolation("SSLRequest has a wrong length")
        if self._startup.buffered:
            self._refuse_early_data("SSLRequest")
            return
        if self.tls or self.settings.tls_mode == "disable":
            self.to_client.append(b"N")
            return
        self.to_client.append(b"S")
        self.state = "TLS"
        self.events.append(StartTLS())

    def _refuse_early_data(self, what: str) -> None:
        self._fatal(
            SQLState.PROTOCOL_VIOLATION,
            f"received unencrypted data after {what}",
            f"client sent data after {what} before the answer (possible injection)",
        )

    def _on_startup_message(self, packet: bytes) -> None:
        version = unpack_uint32(packet, 0)[0]
        major, minor = version >> 16, version & 0xFFFF
        if major != 3:
            # Checked before the parameters: protocol 2.0 packets have another layout.
            self._fatal(
                SQLState.FEATURE_NOT_SUPPORTED,
                f"unsupported frontend protocol {major}.{minor}: server supports 3.0 to 3.0",
                "unsupported protocol version",
            )
            return
        startup = decode_startup(packet)
        unrecognized = [k for k in startup.params if k.startswith("_pq_.")]
        if startup.minor > 0 or unrecognized:
            self.to_client.append(encode.negotiate_protocol_version(0, unrecognized))
        params = {k: v for k, v in startup.params.items() if not k.startswith("_pq_.")}
        user = params.get("user", "")
        if not user:
            self._fatal(SQLState.INVALID_AUTHORIZATION, "no PostgreSQL user name specified in startup packet", "no user")
            return
        if not self.tls and self.settings.tls_mode == "require":
            if not (self.settings.allow_plaintext_loopback and is_loopback(self.client_host)):
                self._fatal(
                    SQLState.INVALID_AUTHORIZATION,
                    "pgwarden requires an encrypted connection",
                    "plaintext connection refused (tls.mode=require)",
                    hint="Connect with sslmode=require (or verify-full).",
                )
                return
        forward: dict[str, str] = {}
        for key, value in params.items():
            low = key.lower()
            if low in ("user", "database"):
                continue
            if low in _CONTROL_PARAMETERS:
                self._fatal(
                    SQLState.INSUFFICIENT_PRIVILEGE,
                    f'pgwarden: startup parameter "{key}" is not allowed: {_CONTROL_PARAMETERS[low]}',
                    f"forbidden startup parameter {key}",
                )
                return
            if low not in self.settings.safe_parameters:
                self._fatal(
                    SQLState.INSUFFICIENT_PRIVILEGE,
                    f'pgwarden: startup parameter "{key}" is not allowed',
                    f"startup parameter {key} is not in the forward list",
                    hint="An administrator can add it to forward_startup_parameters.",
                )
                return
            forward[key] = value
        self._user = user
        self._database = params.get("database") or user
        self._forward = forward
        self._params = params
        verifier = self.settings.lookup_verifier(user)
        self._frames = FrameBuffer(MAX_PREAUTH_MESSAGE)
        if verifier is None and self.settings.password_login:
            if not self.tls and not (self.settings.allow_cleartext_loopback and is_loopback(self.client_host)):
                self._fatal(
                    SQLState.INVALID_AUTHORIZATION,
                    "pgwarden accepts a token as password only over an encrypted connection",
                    "password login without TLS refused",
                    hint="Connect with sslmode=require (or verify-full).",
                )
                return
            self.state = "PASSWORD"
            self.to_client.append(encode.auth_cleartext())
        else:
            self._scram = ScramServerExchange(user, verifier)
            self.state = "SASL_INITIAL"
            self.to_client.append(encode.auth_sasl([ScramServerExchange.mechanism]))
        rest = self._startup.take_rest()
        if rest:
            self._auth_messages(rest)

    # -------------------------------------------------------------- SASL

    def _auth_messages(self, data: bytes) -> None:
        assert self._frames is not None
        buf, frames = self._frames.feed(data)
        for t, start, end in frames:
            if self.state in ("DONE", "CHECKING"):
                self.leftover += buf[start:end]
                continue
            if self.state not in ("SASL_INITIAL", "SASL_FINAL", "PASSWORD"):
                return
            body = buf[start + 5 : end]
            if t == F.TERMINATE:
                self.state = "FAILED"
                self.events.append(Refused("client disconnected during authentication"))
                return
            if t != F.PASSWORD:
                self._fatal(
                    SQLState.PROTOCOL_VIOLATION,
                    f"expected SASL response, got message type {chr(t)!r}",
                    "unexpected message during authentication",
                )
                return
            if self.state == "PASSWORD":
                self._on_password(body)
                continue
            assert self._scram is not None
            try:
                if self.state == "SASL_INITIAL":
                    mechanism, initial = decode_sasl_initial(body)
                    if mechanism != ScramServerExchange.mechanism or initial is None:
                        raise AuthFailed(f"client chose unsupported SASL mechanism {mechanism!r}")
                    self.to_client.append(encode.auth_sasl_continue(self._scram.first(initial)))
                    self.state = "SASL_FINAL"
                else:
                    final = self._scram.final(bytes(body))
                    self.to_client.append(encode.auth_sasl_final(final))
                    self.state = "DONE"
                    self.events.append(Authenticated(self._user, self._database, self._forward, self._params))
            except AuthFailed as exc:
                self._fatal(
                    SQLState.INVALID_PASSWORD,
                    f'password authentication failed for user "{self._user}"',
                    f"authentication failed for user {self._user!r}: {exc}",
                )
                return
        if self.state in ("DONE", "CHECKING") and self._frames.buffered:
            self.leftover += self._frames.take_tail()

    def _on_password(self, body: bytes) -> None:
        stop = body.find(b"\x00")
        if stop != len(body) - 1:
            self._fatal(SQLState.PROTOCOL_VIOLATION, "invalid password packet", "malformed PasswordMessage")
            return
        try:
            password = body[:stop].decode("utf-8")
        except UnicodeDecodeError:
            self._fatal(SQLState.INVALID_PASSWORD, f'password authentication failed for user "{self._user}"',
                        "password is not UTF-8")
            return
        self.state = "CHECKING"
        self.events.append(CheckPassword(self._user, password, self.client_host, self.tls))

    def password_checked(self, identity: object | None, reason: str = "") -> None:
        """The driver's answer to CheckPassword: an identity, or None with the reason (for the log)."""
        if self.state != "CHECKING":
            return
        if identity is None:
            self._fatal(
                SQLState.INVALID_PASSWORD,
                f'password authentication failed for user "{self._user}"',
                f"authentication failed for user {self._user!r}: {reason or 'rejected'}",
            )
            return
        self.state = "DONE"
        self.events.append(
            Authenticated(self._user, self._database, self._forward, self._params, method="password", identity=identity)
        )

    # -------------------------------------------------------------- errors

    def _fatal(self, sqlstate: str, message: str, reason: str, hint: str | None = None) -> None:
        self.to_client.append(encode.error_response(sqlstate, message, severity="FATAL", hint=hint))
        self.state = "FAILED"
        self.events.append(Refused(reason, credential_rejected=sqlstate == SQLState.INVALID_PASSWORD))

    @property
    def user(self) -> str:
        return self._user
