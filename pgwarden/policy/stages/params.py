"""Bind parameters as text for the audit record: what actually ran, readably.

A text-format parameter is recorded as its text. A binary-format parameter is
decoded when its type is known from the Parse (the common scalar types) and
recorded as ``\\x<hex>`` otherwise, so the record never guesses.
"""

from __future__ import annotations

import struct
import uuid

from ...store.records import json_str

__all__ = ["decode_params", "binary_to_text"]


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


def decode_params(stmt) -> str:
    """The statement's Bind parameters as a JSON array (text)."""
    try:
        params = stmt.params
    except Exception:  # a malformed Bind: the server refuses it; record that it was unreadable
        return '"unreadable"'
    if not params:
        return "[]"
    formats = stmt.param_formats
    types = stmt.param_types
    out = []
    for i, value in enumerate(params):
        if value is None:
            out.append("null")
            continue
        fmt = formats[0] if len(formats) == 1 else (formats[i] if i < len(formats) else 0)
        if fmt == 0:
            text = bytes(value).decode("utf-8", "replace")
        else:
            text = binary_to_text(types[i] if i < len(types) else 0, bytes(value))
        out.append(json_str(text))
    return "[" + ",".join(out) + "]"
