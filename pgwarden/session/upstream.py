"""The upstream startup exchange, as a sans-IO state machine.

pgwarden logs in to the target with the credential from the config, whichever
method the server asks for: SCRAM-SHA-256 (with the server's signature checked,
so a fake upstream cannot pretend to know the password), MD5, cleartext or
trust. It collects the server's ParameterStatus values, its BackendKeyData (kept
private: clients get pgwarden's own key) and the initial transaction status.

Errors are :class:`UpstreamError` with the full upstream message for the log; the
client only ever hears that the target could not be reached, because upstream
messages name the upstream role.
"""

from __future__ import annotations

import hashlib

import scramp

from ..wire import encode
from ..wire.constants import Auth, B
from ..wire.frames import FrameBuffer, ProtocolViolation, unpack_int32, unpack_uint32
from ..wire.messages import decode_auth_sasl_mechanisms, decode_error_fields, decode_parameter_status

__all__ = ["UpstreamError", "UpstreamHandshake"]


class UpstreamError(Exception):
    """The upstream could not be logged in to; the message is for the log."""

    def __init__(self, message: str, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


class UpstreamHandshake:
    def __init__(
        self, user: str, database: str, password: str | None, params: dict[str, str], sslmode: str = "disable"
    ) -> None:
        self.user = user
        self.database = database
        self.password = password
        self.params = params
        self.sslmode = sslmode
        self.to_server: list[bytes] = []
        self.server_params: dict[str, str] = {}
        self.backend_key: tuple[int, int] | None = None
        self.txn_status = "I"
        self.auth_method = "unknown"
        self.done = False
        self.leftover = b""
        self._frames = FrameBuffer(16 * 1024 * 1024)
        self._scram: scramp.ScramClient | None = None
        self._awaiting_ssl = False
        self._scram_verified = False

    def start(self) -> bytes:
        """The first bytes to send: an SSLRequest, or the StartupMessage."""
        if self.sslmode != "disable":
            self._awaiting_ssl = True
            return encode.ssl_request()
        return self._startup()

    def _startup(self) -> bytes:
        params = {"user": self.user, "database": self.database}
        params.update(self.params)
        return encode.startup_message(params)

    def ssl_answer(self, answer: bytes) -> bool:
        """Handle the one-byte SSLRequest answer; True means: start TLS now, then call :meth:`after_tls`."""
        self._awaiting_ssl = False
        if answer == b"S":
            return True
        if answer == b"N":
            raise UpstreamError(f"upstream does not offer TLS but sslmode is {self.sslmode}")
        raise UpstreamError(f"upstream answered the SSLRequest with {answer!r}")

    def after_tls(self) -> bytes:
        return self._startup()

    def data(self, data: bytes) -> None:
        """Process upstream bytes; outgoing messages accumulate in ``to_server``."""
        try:
            buf, frames = self._frames.feed(data)
        except ProtocolViolation as exc:
            raise UpstreamError(f"upstream is not speaking the PostgreSQL protocol: {exc}") from None
        for t, start, end in frames:
            if self.done:
                self.leftover += buf[start:end]
                continue
            body = buf[start + 5 : end]
            if t == B.AUTHENTICATION:
                self._on_auth(body)
            elif t == B.PARAMETER_STATUS:
                name, value = decode_parameter_status(body)
                self.server_params[name] = value
            elif t == B.BACKEND_KEY_DATA:
                if len(body) != 8:
                    raise UpstreamError("upstream sent a BackendKeyData of unexpected size")
                self.backend_key = (unpack_int32(body, 0)[0], unpack_uint32(body, 4)[0])
            elif t == B.READY_FOR_QUERY:
                self.txn_status = chr(body[0])
                self.done = True
            elif t == B.ERROR_RESPONSE:
                fields = decode_error_fields(body)
                raise UpstreamError(f"upstream refused the login: {fields.message}", fields.sqlstate)
            elif t == B.NOTICE_RESPONSE or t == B.NEGOTIATE_PROTOCOL_VERSION:
                continue
            else:
                raise UpstreamError(f"upstream sent unexpected message {chr(t)!r} during startup")
        if self.done and self._frames.buffered:
            self.leftover += self._frames.take_tail()

    def _need_password(self) -> str:
        if self.password is None:
            raise UpstreamError("upstream asks for a password but the target has none configured")
        return self.password

    def _on_auth(self, body: bytes) -> None:
        code = unpack_int32(body, 0)[0]
        if code == Auth.OK:
            if self._scram is not None and not self._scram_verified:
                raise UpstreamError("upstream skipped the SCRAM server signature")
            if self.auth_method == "unknown":
                self.auth_method = "trust"
            return
        if code == Auth.CLEARTEXT_PASSWORD:
            self.auth_method = "password"
            self.to_server.append(encode.password_message(self._need_password()))
        elif code == Auth.MD5_PASSWORD:
            self.auth_method = "md5"
            salt = bytes(body[4:8])
            inner = hashlib.md5((self._need_password() + self.user).encode("utf-8")).hexdigest()
            digest = "md5" + hashlib.md5(inner.encode("ascii") + salt).hexdigest()
            self.to_server.append(encode.password_message(digest))
        elif code == Auth.SASL:
            mechanisms = decode_auth_sasl_mechanisms(body)
            if "SCRAM-SHA-256" not in mechanisms:
                raise UpstreamError(f"upstream offers only unsupported SASL mechanisms {mechanisms}")
            self.auth_method = "scram-sha-256"
            self._scram = scramp.ScramClient(["SCRAM-SHA-256"], self.user, self._need_password())
            first = self._scram.get_client_first().encode("utf-8")
            self.to_server.append(encode.sasl_initial_response("SCRAM-SHA-256", first))
        elif code == Auth.SASL_CONTINUE:
            if self._scram is None:
                raise UpstreamError("upstream sent SASLContinue without SASL")
            try:
                self._scram.set_server_first(bytes(body[4:]).decode("utf-8"))
                final = self._scram.get_client_final().encode("utf-8")
            except scramp.ScramException as exc:
                raise UpstreamError(f"upstream SCRAM exchange failed: {exc}") from None
            self.to_server.append(encode.sasl_response(final))
        elif code == Auth.SASL_FINAL:
            if self._scram is None:
                raise UpstreamError("upstream sent SASLFinal without SASL")
            try:
                self._scram.set_server_final(bytes(body[4:]).decode("utf-8"))
            except scramp.ScramException as exc:
                raise UpstreamError(f"upstream SCRAM server signature is invalid: {exc}") from None
            self._scram_verified = True
        else:
            raise UpstreamError(f"upstream asks for an unsupported authentication method (code {code})")
