"""Decoders for the message bodies pgwarden inspects.

Each decoder takes a body (bytes or memoryview, without the 5-byte header) and
returns a frozen, slotted dataclass. Decoders validate what they read and raise
:class:`~pgwarden.wire.frames.ProtocolViolation` on malformed input: a message is
the peer's fault and is answered on the wire, never a crash.

Bodies of messages nobody inspects are never decoded (see ``frames``).
"""

from __future__ import annotations

from dataclasses import dataclass

from .frames import ProtocolViolation, unpack_int16, unpack_int32

__all__ = [
    "Bind",
    "Close",
    "Describe",
    "ErrorFields",
    "Execute",
    "Parse",
    "StartupPacket",
    "decode_bind",
    "decode_close",
    "decode_cstring",
    "decode_describe",
    "decode_error_fields",
    "decode_execute",
    "decode_parameter_status",
    "decode_parse",
    "decode_query",
    "decode_startup",
    "decode_sasl_initial",
    "decode_auth_sasl_mechanisms",
]


def decode_cstring(body: bytes, pos: int, end: int | None = None) -> tuple[str, int]:
    """Read a NUL-terminated UTF-8 string at ``pos`` (before ``end``); return it and the next offset."""
    if isinstance(body, memoryview):
        body = body.tobytes()
    stop = body.find(b"\x00", pos) if end is None else body.find(b"\x00", pos, end)
    if stop < 0:
        raise ProtocolViolation("unterminated string in message")
    try:
        return body[pos:stop].decode("utf-8"), stop + 1
    except UnicodeDecodeError:
        raise ProtocolViolation("invalid UTF-8 in message string") from None


def decode_query(body: bytes) -> str:
    body = _as_bytes(body)
    text, pos = decode_cstring(body, 0)
    if pos != len(body):
        raise ProtocolViolation("trailing bytes after Query string")
    return text


@dataclass(frozen=True, slots=True)
class StartupPacket:
    major: int
    minor: int
    params: dict[str, str]


def decode_startup(payload: bytes) -> StartupPacket:
    """Decode a StartupMessage payload (after the length word, including the version)."""
    payload = _as_bytes(payload)
    _need(payload, 0, 4)
    version = unpack_int32(payload, 0)[0]
    params: dict[str, str] = {}
    pos = 4
    end = len(payload)
    while True:
        if pos >= end:
            raise ProtocolViolation("startup packet is missing its terminator")
        if payload[pos] == 0:
            if pos + 1 != end:
                raise ProtocolViolation("trailing bytes after startup packet terminator")
            break
        key, pos = decode_cstring(payload, pos)
        value, pos = decode_cstring(payload, pos)
        if key in params:
            raise ProtocolViolation(f"startup parameter {key!r} given twice")
        params[key] = value
    return StartupPacket(major=version >> 16, minor=version & 0xFFFF, params=params)


@dataclass(frozen=True, slots=True)
class Parse:
    name: str
    query: str
    param_types: tuple[int, ...]


def decode_parse(body: bytes) -> Parse:
    body = _as_bytes(body)
    name, pos = decode_cstring(body, 0)
    query, pos = decode_cstring(body, pos)
    _need(body, pos, 2)
    count = unpack_int16(body, pos)[0]
    pos += 2
    if count < 0 or len(body) != pos + 4 * count:
        raise ProtocolViolation("Parse message has a wrong parameter type count")
    types = tuple(int.from_bytes(body[pos + 4 * i : pos + 4 * i + 4], "big") for i in range(count))
    return Parse(name, query, types)


@dataclass(frozen=True, slots=True)
class Bind:
    portal: str
    statement: str
    param_formats: tuple[int, ...]
    params: tuple[bytes | None, ...]
    result_formats: tuple[int, ...]


def decode_bind(body: bytes) -> Bind:
    body = _as_bytes(body)
    portal, pos = decode_cstring(body, 0)
    statement, pos = decode_cstring(body, pos)
    formats, pos = _int16_array(body, pos)
    _need(body, pos, 2)
    count = unpack_int16(body, pos)[0]
    pos += 2
    if count < 0:
        raise ProtocolViolation("Bind message has a negative parameter count")
    params: list[bytes | None] = []
    for _ in range(count):
        _need(body, pos, 4)
        size = unpack_int32(body, pos)[0]
        pos += 4
        if size == -1:
            params.append(None)
            continue
        if size < 0:
            raise ProtocolViolation("Bind parameter has a negative length")
        _need(body, pos, size)
        params.append(bytes(body[pos : pos + size]))
        pos += size
    result_formats, pos = _int16_array(body, pos)
    if pos != len(body):
        raise ProtocolViolation("trailing bytes after Bind message")
    if len(formats) not in (0, 1, count):
        raise ProtocolViolation("Bind message has a wrong parameter format count")
    return Bind(portal, statement, formats, tuple(params), result_formats)


@dataclass(frozen=True, slots=True)
class Describe:
    kind: str  # 'S' statement or 'P' portal
    name: str


def decode_describe(body: bytes) -> Describe:
    return Describe(*_kind_and_name(body, "Describe"))


@dataclass(frozen=True, slots=True)
class Close:
    kind: str
    name: str


def decode_close(body: bytes) -> Close:
    return Close(*_kind_and_name(body, "Close"))


@dataclass(frozen=True, slots=True)
class Execute:
    portal: str
    max_rows: int


def decode_execute(body: bytes) -> Execute:
    body = _as_bytes(body)
    portal, pos = decode_cstring(body, 0)
    _need(body, pos, 4)
    max_rows = unpack_int32(body, pos)[0]
    if pos + 4 != len(body):
        raise ProtocolViolation("trailing bytes after Execute message")
    return Execute(portal, max_rows)


@dataclass(frozen=True, slots=True)
class ErrorFields:
    """Fields of an ErrorResponse or NoticeResponse, keyed by their field code."""

    fields: dict[str, str]

    @property
    def severity(self) -> str:
        return self.fields.get("V") or self.fields.get("S", "")

    @property
    def sqlstate(self) -> str:
        return self.fields.get("C", "")

    @property
    def message(self) -> str:
        return self.fields.get("M", "")


def decode_error_fields(body: bytes) -> ErrorFields:
    body = _as_bytes(body)
    fields: dict[str, str] = {}
    pos = 0
    end = len(body)
    while pos < end and body[pos] != 0:
        code = chr(body[pos])
        stop = body.find(b"\x00", pos + 1)
        if stop < 0:
            raise ProtocolViolation("unterminated error field")
        fields[code] = bytes(body[pos + 1 : stop]).decode("utf-8", "replace")
        pos = stop + 1
    return ErrorFields(fields)


def decode_parameter_status(body: bytes) -> tuple[str, str]:
    body = _as_bytes(body)
    name, pos = decode_cstring(body, 0)
    value, _ = decode_cstring(body, pos)
    return name, value


def decode_sasl_initial(body: bytes) -> tuple[str, bytes | None]:
    """SASLInitialResponse: mechanism name and the initial client response (or None)."""
    body = _as_bytes(body)
    mechanism, pos = decode_cstring(body, 0)
    _need(body, pos, 4)
    size = unpack_int32(body, pos)[0]
    pos += 4
    if size == -1:
        return mechanism, None
    if size < 0 or pos + size != len(body):
        raise ProtocolViolation("SASLInitialResponse has a wrong length")
    return mechanism, bytes(body[pos:])


def decode_auth_sasl_mechanisms(body: bytes) -> list[str]:
    """The mechanism list of an AuthenticationSASL message (body after the int32 code)."""
    body = _as_bytes(body)
    names = []
    pos = 4
    while pos < len(body) and body[pos] != 0:
        name, pos = decode_cstring(body, pos)
        names.append(name)
    return names


def _kind_and_name(body: bytes, what: str) -> tuple[str, str]:
    body = _as_bytes(body)
    if not body or body[0] not in (ord("S"), ord("P")):
        raise ProtocolViolation(f"{what} message must name 'S' or 'P'")
    name, pos = decode_cstring(body, 1)
    if pos != len(body):
        raise ProtocolViolation(f"trailing bytes after {what} message")
    return chr(body[0]), name


def _int16_array(body: bytes, pos: int) -> tuple[tuple[int, ...], int]:
    _need(body, pos, 2)
    count = unpack_int16(body, pos)[0]
    pos += 2
    if count < 0:
        raise ProtocolViolation("negative array length in message")
    _need(body, pos, 2 * count)
    values = tuple(unpack_int16(body, pos + 2 * i)[0] for i in range(count))
    return values, pos + 2 * count


def _as_bytes(body: bytes | memoryview) -> bytes:
    return body.tobytes() if isinstance(body, memoryview) else body


def _need(body: bytes, pos: int, size: int) -> None:
    if pos + size > len(body):
        raise ProtocolViolation("message is shorter than its contents")
