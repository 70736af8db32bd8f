"""Turn recorded result sets back into rows a person can read.

The recorder keeps result rows exactly as PostgreSQL sent them (the DataRow
wire messages, base64 in a ``result`` record's ``data``) so the trail proves
what the client received, byte for byte (see docs/audit.md). Readers
(``pgwarden sessions show|replay``) need values instead; this module is the
one place that knows the wire encodings.

Why it never raises: a trail is evidence. A half-written, truncated or
tampered ``data`` field must still show everything that can be read, plus a
note saying where decoding stopped, rather than hide the whole session behind
a traceback. Every function here returns what it could decode and records
problems in ``DecodedSet.problems`` (or falls back to ``\\x<hex>`` for a
single value).

Values come back as Python objects (``decode_value``) and as the text psql
would print for them (``pg_text``): the transcript model uses the text, so a
text-format and a binary-format result of the same query read the same.
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
import uuid
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

__all__ = [
    "Column",
    "DecodedSet",
    "decode_result_set",
    "decode_value",
    "iter_datarows",
    "pg_text",
    "param_texts",
    "RIGHT_ALIGNED",
    "MARKER",
]

#: Shown (and kept in ``problems``) where decoding stopped.
MARKER = "[undecodable]"

#: Type OIDs psql right-aligns (numbers), as in its print.c.
RIGHT_ALIGNED = frozenset({20, 21, 23, 26, 700, 701, 790, 1700, 28, 29})

_PG_EPOCH = datetime(2000, 1, 1)
_PG_EPOCH_DATE = date(2000, 1, 1)
_INT64_MAX, _INT64_MIN = 2**63 - 1, -(2**63)
_INT32_MAX, _INT32_MIN = 2**31 - 1, -(2**31)


class _Infinity(str):
    """``infinity`` / ``-infinity`` for dates and timestamps (no Python equivalent)."""


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    type: int | None  # type OID; None when no RowDescription was recorded
    format: int  # 0 text, 1 binary


@dataclass(slots=True)
class DecodedSet:
    """One result set: its columns and rows as psql text (``None`` for NULL)."""

    columns: list[Column]
    rows: list[list[str | None]] = field(default_factory=list)
    described: bool = True  # False when the record had no ``columns`` (names are made up)
    problems: list[str] = field(default_factory=list)


def iter_datarows(data: bytes) -> tuple[list[list[bytes | None]], str | None]:
    """Split DataRow messages into rows of raw column values.

    Returns (rows, problem): ``problem`` is None when every byte was consumed
    as well-formed DataRow messages, else says at which offset and why parsing
    stopped (the rows before it are still returned).
    """
    rows: list[list[bytes | None]] = []
    pos, end = 0, len(data)
    while pos < end:
        if end - pos < 5:
            return rows, f"{MARKER} {end - pos} stray byte(s) at offset {pos}"
        kind = data[pos : pos + 1]
        (length,) = struct.unpack_from("!i", data, pos + 1)
        if kind != b"D":
            return rows, f"{MARKER} message {kind!r} is not a DataRow at offset {pos}"
        if length < 6 or pos + 1 + length > end:
            return rows, f"{MARKER} DataRow at offset {pos} has a bad length {length}"
        body = data[pos + 5 : pos + 1 + length]
        row, problem = _split_row(body)
        if problem is not None:
            return rows, f"{MARKER} DataRow at offset {pos}: {problem}"
        rows.append(row)
        pos += 1 + length
    return rows, None


def _split_row(body: bytes) -> tuple[list[bytes | None], str | None]:
    (count,) = struct.unpack_from("!h", body, 0)
    if count < 0:
        return [], f"negative column count {count}"
    values: list[bytes | None] = []
    pos = 2
    for index in range(count):
        if pos + 4 > len(body):
            return values, f"column {index + 1} is cut off"
        (size,) = struct.unpack_from("!i", body, pos)
        pos += 4
        if size == -1:
            values.append(None)
            continue
        if size < 0 or pos + size > len(body):
            return values, f"column {index + 1} has a bad length {size}"
        values.append(body[pos : pos + size])
        pos += size
    if pos != len(body):
        return values, f"{len(body) - pos} byte(s) after the last column"
    return values, None


def _columns(result_set: dict[str, Any], width: int) -> tuple[list[Column], bool]:
    """Columns from ``columns`` or, without a description, from ``formats`` (Bind rules)."""
    described = result_set.get("columns")
    if isinstance(described, list):
        cols = []
        for i, c in enumerate(described):
            c = c if isinstance(c, dict) else {}
            oid = c.get("type")
            cols.append(Column(str(c.get("name", f"column{i + 1}")), oid if isinstance(oid, int) else None,
                               1 if c.get("format") == 1 else 0))
        return cols, True
    formats = result_set.get("formats") or []
    if not isinstance(formats, list):
        formats = []
    # Bind: no codes = all text, one code = applies to every column, else one per column.
    def fmt(i: int) -> int:
        if len(formats) == 1:
            return 1 if formats[0] == 1 else 0
        return 1 if i < len(formats) and formats[i] == 1 else 0

    return [Column(f"column{i + 1}", None, fmt(i)) for i in range(width)], False


def decode_result_set(result_set: dict[str, Any]) -> DecodedSet:
    """Decode one entry of a ``result`` record's ``results`` list."""
    problems: list[str] = []
    raw = result_set.get("data") or ""
    try:
        data = base64.b64decode(raw, validate=True) if isinstance(raw, str) else b""
    except (binascii.Error, ValueError) as exc:
        data = b""
        problems.append(f"{MARKER} data is not base64: {exc}")
    rows, problem = iter_datarows(data)
    if problem:
        problems.append(problem)
    width = max((len(r) for r in rows), default=0)
    columns, described = _columns(result_set, width)
    if described and len(columns) < width:
        columns += [Column(f"column{i + 1}", None, 0) for i in range(len(columns), width)]
        problems.append(f"{MARKER} rows have {width} columns, the description {len(columns)}")
    out: list[list[str | None]] = []
    for row in rows:
        cells: list[str | None] = []
        for col, value in zip(columns, row):
            cells.append(None if value is None else pg_text(decode_value(value, col.type, col.format), col.type))
        cells += [None] * (len(columns) - len(cells))
        out.append(cells)
    captured = result_set.get("captured_rows")
    if isinstance(captured, int) and captured != len(out) and not problem:
        problems.append(f"{MARKER} {captured} rows recorded as captured, {len(out)} found in data")
    return DecodedSet(columns, out, described, problems)


def _hex(raw: bytes) -> str:
    return "\\x" + raw.hex()


def decode_value(raw: bytes | None, oid: int | None, fmt: int = 0) -> Any:
    """One column value: text format -> str; binary -> a Python value for known OIDs, else ``\\x<hex>``."""
    if raw is None:
        return None
    if fmt != 1:
        return raw.decode("utf-8", "replace")
    try:
        decoder = _BINARY.get(oid) if oid is not None else None
        if decoder is None:
            return _hex(raw)
        return decoder(raw)
    except (struct.error, ValueError, OverflowError, UnicodeDecodeError, IndexError):
        return _hex(raw)


def _fixed(fmt: str):
    size = struct.calcsize(fmt)

    def unpack(raw: bytes):
        if len(raw) != size:
            raise ValueError("wrong size")
        return struct.unpack(fmt, raw)[0]

    return unpack


def _bool(raw: bytes) -> bool:
    if len(raw) != 1:
        raise ValueError("wrong size")
    return raw != b"\x00"


def _text(raw: bytes) -> str:
    return raw.decode("utf-8")


def _date(raw: bytes) -> Any:
    days = _fixed("!i")(raw)
    if days in (_INT32_MAX, _INT32_MIN):
        return _Infinity("infinity" if days > 0 else "-infinity")
    return _PG_EPOCH_DATE + timedelta(days=days)


def _timestamp(raw: bytes, tz: bool = False) -> Any:
    micros = _fixed("!q")(raw)
    if micros in (_INT64_MAX, _INT64_MIN):
        return _Infinity("infinity" if micros > 0 else "-infinity")
    value = _PG_EPOCH + timedelta(microseconds=micros)
    return value.replace(tzinfo=timezone.utc) if tz else value


def _uuid(raw: bytes) -> uuid.UUID:
    if len(raw) != 16:
        raise ValueError("wrong size")
    return uuid.UUID(bytes=raw)


def _numeric(raw: bytes) -> Decimal:
    """PostgreSQL's binary numeric: ndigits, weight, sign, dscale, then base-10000 digits."""
    ndigits, weight, sign, dscale = struct.unpack_from("!hhHh", raw, 0)
    if len(raw) != 8 + 2 * ndigits or ndigits < 0 or dscale < 0:
        raise ValueError("bad numeric")
    special = {0xC000: "NaN", 0xD000: "Infinity", 0xF000: "-Infinity"}
    if sign in special:
        return Decimal(special[sign])
    if sign not in (0x0000, 0x4000):
        raise ValueError("bad numeric sign")
    groups = struct.unpack_from(f"!{ndigits}h", raw, 8)
    if any(not 0 <= g < 10000 for g in groups):
        raise ValueError("bad numeric digit")
    digits = "".join(f"{g:04d}" for g in groups) or "0"
    exponent = 4 * (weight - ndigits + 1) if groups else 0
    # Present exactly dscale fraction digits, as PostgreSQL prints it (no context rounding).
    if exponent > -dscale:
        digits += "0" * (exponent + dscale)
    elif exponent < -dscale:
        digits = digits[: len(digits) - (-dscale - exponent)] or "0"
    return Decimal((1 if sign == 0x4000 else 0, tuple(int(c) for c in digits), -dscale))


def _jsonb(raw: bytes) -> str:
    if not raw or raw[0] != 1:
        raise ValueError("unknown jsonb version")
    return raw[1:].decode("utf-8")


_BINARY = {
    16: _bool,
    17: bytes,
    18: _text,  # "char"
    19: _text,  # name
    20: _fixed("!q"),
    21: _fixed("!h"),
    23: _fixed("!i"),
    25: _text,
    26: _fixed("!I"),
    114: _text,
    700: _fixed("!f"),
    701: _fixed("!d"),
    705: _text,  # unknown
    1042: _text,
    1043: _text,
    1082: _date,
    1114: _timestamp,
    1184: lambda raw: _timestamp(raw, tz=True),
    1700: _numeric,
    2950: _uuid,
    3802: _jsonb,
}


def _float_text(value: float, oid: int | None) -> str:
    """Shortest text that reads back as the same float4/float8, like PostgreSQL 12+."""
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "Infinity" if value > 0 else "-Infinity"
    if oid == 700:
        packed = struct.pack("!f", value)
        for precision in range(1, 10):
            text = f"{value:.{precision}g}"
            if struct.pack("!f", float(text)) == packed:
                break
    else:
        text = repr(value)
    if text.endswith(".0"):
        text = text[:-2]
    if "e" in text:
        mantissa, exp = text.split("e")
        text = f"{mantissa}e{exp[0] if exp[0] in '+-' else '+'}{exp.lstrip('+-').zfill(2)}"
    return text


def pg_text(value: Any, oid: int | None = None) -> str | None:
    """A decoded value as psql shows it (UTC for timestamptz)."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, (bytes, bytearray)):
        return _hex(bytes(value))
    if isinstance(value, float):
        return _float_text(value, oid)
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, datetime):
        text = value.replace(tzinfo=None).isoformat(sep=" ")
        if "." in text:  # PostgreSQL drops trailing zeros of the fraction
            text = text.rstrip("0")
        return text + "+00" if value.tzinfo is not None else text
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


def param_texts(params: Any) -> list[str | None]:
    """Bind parameters from a ``statement`` record: already text (or NULL); anything else is shown as JSON."""
    if not isinstance(params, list):
        return []
    out: list[str | None] = []
    for value in params:
        if value is None or isinstance(value, str):
            out.append(value)
        else:
            out.append(json.dumps(value, ensure_ascii=False))
    return out
