"""Encoders: build complete messages (header included) as ``bytes``.

Only messages pgwarden originates are encoded here; relayed messages keep the
bytes they arrived with.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping

from .constants import (
    CANCEL_REQUEST_CODE,
    PROTOCOL_3_0,
    SSL_REQUEST_CODE,
    Auth,
)

__all__ = [
    "auth_md5",
    "auth_ok",
    "auth_sasl",
    "auth_sasl_continue",
    "auth_sasl_final",
    "auth_cleartext",
    "backend_key_data",
    "cancel_request",
    "error_response",
    "message",
    "negotiate_protocol_version",
    "notice_response",
    "parameter_status",
    "parse",
    "password_message",
    "query",
    "ready_for_query",
    "sasl_initial_response",
    "sasl_response",
    "ssl_request",
    "startup_message",
    "sync",
    "describe_portal",
    "terminate",
]

_HDR = struct.Struct("!cI")
_I32 = struct.Struct("!i")


def message(type_byte: bytes, body: bytes = b"") -> bytes:
    return _HDR.pack(type_byte, len(body) + 4) + body


def _cstr(s: str) -> bytes:
    return s.encode("utf-8") + b"\x00"


# --- backend messages (pgwarden -> client) --------------------------------


def auth_ok() -> bytes:
    return message(b"R", _I32.pack(Auth.OK))


def auth_cleartext() -> bytes:
    return message(b"R", _I32.pack(Auth.CLEARTEXT_PASSWORD))


def auth_md5(salt: bytes) -> bytes:
    return message(b"R", _I32.pack(Auth.MD5_PASSWORD) + salt)


def auth_sasl(mechanisms: Iterable[str]) -> bytes:
    return message(b"R", _I32.pack(Auth.SASL) + b"".join(_cstr(m) for m in mechanisms) + b"\x00")


def auth_sasl_continue(data: bytes) -> bytes:
    return message(b"R", _I32.pack(Auth.SASL_CONTINUE) + data)


def auth_sasl_final(data: bytes) -> bytes:
    return message(b"R", _I32.pack(Auth.SASL_FINAL) + data)


def parameter_status(name: str, value: str) -> bytes:
    return message(b"S", _cstr(name) + _cstr(value))


def backend_key_data(pid: int, secret: int) -> bytes:
    return message(b"K", struct.pack("!iI", pid, secret))


def ready_for_query(status: bytes = b"I") -> bytes:
    return message(b"Z", status)


def negotiate_protocol_version(newest_minor: int, unrecognized: Iterable[str]) -> bytes:
    names = list(unrecognized)
    body = _I32.pack(newest_minor) + _I32.pack(len(names)) + b"".join(_cstr(n) for n in names)
    return message(b"v", body)


def _fields(
    severity: str, sqlstate: str, text: str, detail: str | None, hint: str | None, extra: Mapping[str, str] | None
) -> bytes:
    parts = [b"S" + _cstr(severity), b"V" + _cstr(severity), b"C" + _cstr(sqlstate), b"M" + _cstr(text)]
    if detail:
        parts.append(b"D" + _cstr(detail))
    if hint:
        parts.append(b"H" + _cstr(hint))
    for code, value in (extra or {}).items():
        parts.append(code.encode("ascii") + _cstr(value))
    return b"".join(parts) + b"\x00"


def error_response(
    sqlstate: str,
    text: str,
    *,
    severity: str = "ERROR",
    detail: str | None = None,
    hint: str | None = None,
    extra: Mapping[str, str] | None = None,
) -> bytes:
    return message(b"E", _fields(severity, sqlstate, text, detail, hint, extra))


def notice_response(
    text: str, *, sqlstate: str = "00000", severity: str = "NOTICE", detail: str | None = None, hint: str | None = None
) -> bytes:
    return message(b"N", _fields(severity, sqlstate, text, detail, hint, None))


# --- frontend messages (pgwarden -> upstream) ------------------------------


def ssl_request() -> bytes:
    return struct.pack("!ii", 8, SSL_REQUEST_CODE)


def startup_message(params: Mapping[str, str]) -> bytes:
    body = _I32.pack(PROTOCOL_3_0) + b"".join(_cstr(k) + _cstr(v) for k, v in params.items()) + b"\x00"
    return _I32.pack(len(body) + 4) + body


def cancel_request(pid: int, secret: int) -> bytes:
    return struct.pack("!iiiI", 16, CANCEL_REQUEST_CODE, pid, secret)


def password_message(password: str | bytes) -> bytes:
    data = password.encode("utf-8") if isinstance(password, str) else password
    return message(b"p", data + b"\x00")


def sasl_initial_response(mechanism: str, data: bytes) -> bytes:
    return message(b"p", _cstr(mechanism) + _I32.pack(len(data)) + data)


def sasl_response(data: bytes) -> bytes:
    return message(b"p", data)


def query(text: str) -> bytes:
    return message(b"Q", _cstr(text))


def parse(name: str, text: str, param_types: Iterable[int] = ()) -> bytes:
    types = list(param_types)
    body = _cstr(name) + _cstr(text) + struct.pack("!h", len(types)) + b"".join(struct.pack("!I", t) for t in types)
    return message(b"P", body)


def describe_portal(name: str) -> bytes:
    return message(b"D", b"P" + _cstr(name))


def sync() -> bytes:
    return b"S\x00\x00\x00\x04"


def terminate() -> bytes:
    return b"X\x00\x00\x00\x04"
