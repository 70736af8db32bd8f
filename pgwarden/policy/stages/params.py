"""Bind parameters as text for the audit record: what actually ran, readably.

A text-format parameter is recorded as its text. A binary-format parameter is
decoded when its type is known from the Parse (the common scalar types) and
recorded as ``\\x<hex>`` otherwise, so the record never guesses.
"""

from __future__ import annotations

import struct
import uuid

from ...store.records import json_str

__all__ = ["decode_params", "binary_to_text", "read_bind"]

_H = struct.Struct("!h").unpack_from
_I = struct.Struct("!i").unpack_from


def read_bind(stmt):
    """(param formats, params, result formats) of an Execute's Bind, read in place.

    The recorder needs these for every Execute; reading them straight from the
    received bytes, without the slice and the general decoder, halves the cost.
    Returns None when there is no Bind; raises ValueError when it is malformed.
    """
    body = stmt._bind_body
    if body is None:
        return None
    buf, pos, stop = body
    try:
        pos = buf.index(b"\x00", pos, stop) + 1  # portal
        pos = buf.index(b"\x00", pos, stop) + 1  # statement
        n = _H(buf, pos)[0]
        formats = struct.unpack_from(f"!{n}h", buf, pos + 2) if n else ()
        pos += 2 + 2 * n
        n = _H(buf, pos)[0]
        pos += 2
        params = []
        for _ in range(n):
            size = _I(buf, pos)[0]
            pos += 4
            if size < 0:
                params.append(None)
            else:
                params.append(buf[pos : pos + size])
                pos += size
        n = _H(buf, pos)[0]
        results = struct.unpack_from(f"!{n}h", buf, pos + 2) if n else ()
    except struct.error as exc:
        raise ValueError(str(exc)) from None
    if pos > stop:
        raise ValueError("Bind is shorter than its contents")
    return formats, params, results


def _int(fmt: str):
    return lambda b: str(struct.unpack("!" + fmt, b)[0])


_DECODERS = {
    16: lambda b: "t" if b == b"\x01" else "f",  # bool
    20: _int("q"),  # int8
    21: _int("h"),  # int2
    23: _int("i"),  # int4
    26: _int("I"),  # oid
    700: lambda b: repr(struct.unpack("!f", b)[0]),  # float4
    701: lambda b: repr(struct.unpack("!d", b)[0]),  # float8
    25: lambda b: b.decode("utf-8"),  # text
    1043: lambda b: b.decode("utf-8"),  # varchar
    1042: lambda b: b.decode("utf-8"),  # bpchar
    19: lambda b: b.decode("utf-8"),  # name
    114: lambda b: b.decode("utf-8"),  # json
    3802: lambda b: b[1:].decode("utf-8") if b[:1] == b"\x01" else "\\x" + b.hex(),  # jsonb v1
    2950: lambda b: str(uuid.UUID(bytes=b)),  # uuid
}


def binary_to_text(type_oid: int, value: bytes) -> str:
    decoder = _DECODERS.get(type_oid)
    if decoder is not None:
        try:
            return decoder(value)
        except (struct.error, ValueError, UnicodeDecodeError):
            pass
    return "\\x" + value.hex()


def decode_params(stmt, bind) -> str:
    """The Bind parameters (``read_bind``'s result) as a JSON array (text)."""
    formats, params, _results = bind
    if not params:
        return "[]"
    types = stmt.param_types
    out = []
    for i, value in enumerate(params):
        if value is None:
            out.append("null")
            continue
        fmt = formats[0] if len(formats) == 1 else (formats[i] if i < len(formats) else 0)
        if fmt == 0:
            text = value.decode("utf-8", "replace")
        else:
            text = binary_to_text(types[i] if i < len(types) else 0, value)
        out.append(json_str(text))
    return "[" + ",".join(out) + "]"
