"""Maskers for one result column's wire values, valid for the column's type.

A masker takes one value exactly as PostgreSQL sent it in a ``DataRow`` (text
format, or the binary format of the column's type) and returns the masked
value in the same format, or ``None`` for SQL NULL. The gateway rewrites rows
in flight without telling the client, so every masked value must still parse
with the client's loader for the column's type (psycopg 3, asyncpg, JDBC):
a masked ``int4`` is an ``int4``, a masked ``uuid`` a ``uuid``.

What each strategy gives per type:

=================  ===============  ================  ===================  ==========
type               redact           partial           tokenize             constant
=================  ===============  ================  ===================  ==========
text-like          redaction text   ``mask_string``   ``mask_string``      constant
json, jsonb        ``"****"``       JSON string       JSON string          JSON string
int2/4/8           0                abs(v) % 10000    integer token        int or 0
numeric            0                last 4 digits of  integer token        number or 0
                                    the integer part
float4/8           0                0                 0                    float or 0
uuid               all zeros        last 4 hex kept   uuid v4 from digest  uuid or 0s
bytea              empty            empty             16 digest bytes      UTF-8 bytes
inet/cidr          0.0.0.0(/32)     first octet or    address of the same  address
                                    group, rest 0     family               or 0.0.0.0
anything else      NULL             NULL              NULL                 NULL
=================  ===============  ================  ===================  ==========

``null`` is NULL for every type. Every other type (dates, timestamps, bool,
arrays, composites, ranges, enums, unknown OIDs, ...) is masked as NULL: there
is no redacted value that is both valid for it and free of the original, and
a constant given for such a type is emitted as NULL too (constants are text).

Why closures: a masker runs once per value per row (the gateway aims at
250,000 rows/s), so everything (strategy, type, format, constant) is decided
when the masker is built and the returned function does only the per-value
work. Tokens and partial masks are cached by wire bytes in the tokenizer's
bounded ``memo``. A masker never raises: input it cannot decode falls back to
:func:`whole_masker`'s value for the type.
"""

from __future__ import annotations

import ipaddress
import json
import re
import struct
import uuid
from collections.abc import Callable, Sequence

from .detectors import DETECTABLE, Detector, find
from .strategies import STRATEGIES, Tokenizer, mask_detected, string_masker

__all__ = ["JSON_TYPES", "TEXT_LIKE", "Masker", "detect_masker", "value_masker", "whole_masker"]

Masker = Callable[[bytes], "bytes | None"]

TEXT, VARCHAR, BPCHAR, NAME, CHAR, UNKNOWN = 25, 1043, 1042, 19, 18, 705
JSON, JSONB = 114, 3802
INT2, INT4, INT8 = 21, 23, 20
NUMERIC, FLOAT4, FLOAT8 = 1700, 700, 701
UUID, BYTEA, INET, CIDR = 2950, 17, 869, 650

TEXT_LIKE = frozenset({TEXT, VARCHAR, BPCHAR, NAME, CHAR, UNKNOWN})
JSON_TYPES = frozenset({JSON, JSONB})
_INT_SIZE = {INT2: 2, INT4: 4, INT8: 8}

#: Wire values longer than this are not memoized.
_MEMO_MAX_LEN = 256
_MISS = object()


def _const(value: bytes | None) -> Masker:
    return lambda raw: value


_null = _const(None)


def _check_format(fmt: int) -> None:
    if fmt not in (0, 1):
        raise ValueError(f"format code must be 0 (text) or 1 (binary), not {fmt!r}")


#: Full redaction per type: (text format, binary format).
_ZERO = {
    INT2: (b"0", bytes(2)), INT4: (b"0", bytes(4)), INT8: (b"0", bytes(8)),
    NUMERIC: (b"0", bytes(8)),  # ndigits=0, weight=0, sign=0, dscale=0
    FLOAT4: (b"0", bytes(4)), FLOAT8: (b"0", bytes(8)),  # +0.0
    UUID: (b"00000000-0000-0000-0000-000000000000", bytes(16)),
    BYTEA: (b"\\x", b""),
    INET: (b"0.0.0.0", bytes((2, 32, 0, 4, 0, 0, 0, 0))),
    CIDR: (b"0.0.0.0/32", bytes((2, 32, 1, 4, 0, 0, 0, 0))),
}


def _redacted(type_oid: int, fmt: int, redaction: str) -> bytes | None:
    """The fully redacted wire value of the type, or None (NULL) when it has none."""
    if type_oid in TEXT_LIKE:
        return redaction.encode("utf-8", "replace")
    if type_oid in JSON_TYPES:
        return _json_prefix(type_oid, fmt) + _json_str(redaction)
    zero = _ZERO.get(type_oid)
    return None if zero is None else zero[fmt]


def whole_masker(type_oid: int, fmt: int, *, redaction: str = "****") -> Masker:
    """A masker for values derived from masked columns: full redaction valid for the type, else NULL."""
    _check_format(fmt)
    return _const(_redacted(type_oid, fmt, redaction))


def _memoized(fn: Callable[[bytes], bytes | None], fallback: bytes | None, tokenizer: Tokenizer, tag: str) -> Masker:
    """``fn`` cached by wire bytes in ``tokenizer.memo``; any exception gives ``fallback``."""
    cache = tokenizer.memo
    limit = tokenizer.cache_size

    def masker(raw: bytes) -> bytes | None:
        try:
            if raw.__class__ is not bytes:  # bytearray, memoryview: not hashable
                raw = bytes(raw)
            key = (tag, raw)
            out = cache.get(key, _MISS)
            if out is _MISS:
                out = fn(raw)
                if len(raw) <= _MEMO_MAX_LEN:
                    if len(cache) >= limit:
                        cache.clear()
                    cache[key] = out
            return out
        except Exception:
            return fallback

    return masker


def value_masker(
    strategy: str,
    semantic: str,
    type_oid: int,
    fmt: int,
    *,
    tokenizer: Tokenizer,
    constant: str | None = None,
    redaction: str = "****",
) -> Masker:
    """The masker for a column of ``type_oid`` in format ``fmt`` classified as ``semantic``.

    See the module docstring for what each strategy gives per type. Raises
    ValueError for an unknown strategy or format code (at build time only).
    """
    _check_format(fmt)
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown masking strategy {strategy!r} (known: {', '.join(STRATEGIES)})")
    fallback = _redacted(type_oid, fmt, redaction)
    if strategy == "null" or fallback is None:
        return _null
    if strategy == "redact":
        return _const(fallback)
    tag = f"{strategy}\0{semantic}\0{type_oid}\0{fmt}\0{redaction}\0{constant}"
    ns = semantic.encode("utf-8", "replace") + b"\0"

    if type_oid in TEXT_LIKE:
        if strategy == "constant":
            return _const((redaction if constant is None else constant).encode("utf-8", "replace"))
        sm = string_masker(strategy, semantic, tokenizer=tokenizer, constant=constant, redaction=redaction)
        strip = type_oid == BPCHAR  # char(n) padding is not part of the value

        def text_like(raw: bytes) -> bytes | None:
            s = raw.decode()
            out = sm(s.rstrip(" ") if strip else s)
            return None if out is None else out.encode()

        return _memoized(text_like, fallback, tokenizer, tag)

    if type_oid in JSON_TYPES:
        prefix = _json_prefix(type_oid, fmt)
        if strategy == "constant":
            return _const(prefix + _json_str(redaction if constant is None else constant))
        sm = string_masker(strategy, semantic, tokenizer=tokenizer, constant=constant, redaction=redaction)

        def json_value(raw: bytes) -> bytes | None:
            s = _json_text(raw, prefix)
            t = s.strip()
            if t.startswith('"'):
                inner = json.loads(t)
                s = inner if isinstance(inner, str) else s
            else:
                json.loads(t)  # invalid JSON -> fallback
            out = sm(s)
            return None if out is None else prefix + _json_str(out)

        return _memoized(json_value, fallback, tokenizer, tag)

    if type_oid in _INT_SIZE:
        return _int_masker(strategy, type_oid, fmt, tokenizer, constant, fallback, ns, tag)
    if type_oid == NUMERIC:
        return _numeric_masker(strategy, fmt, tokenizer, constant, fallback, ns, tag)
    if type_oid in (FLOAT4, FLOAT8):
        try:  # a finite float constant, else 0
            f = float(constant if strategy == "constant" else "x")
            if f - f == 0:
                return _const(repr(f).encode() if fmt == 0 else struct.pack("!f" if type_oid == FLOAT4 else "!d", f))
        except (TypeError, ValueError, OverflowError):
            pass
        return _const(fallback)
    if type_oid == UUID:
        return _uuid_masker(strategy, fmt, tokenizer, constant, fallback, ns, tag)
    if type_oid == BYTEA:
        return _bytea_masker(strategy, fmt, tokenizer, constant, fallback, ns, tag)
    return _inet_masker(strategy, type_oid, fmt, tokenizer, constant, fallback, tag)


# ---------------------------------------------------------------------------
# Integers


def _int_masker(strategy, type_oid, fmt, tokenizer, constant, fallback, ns, tag) -> Masker:
    size = _INT_SIZE[type_oid]
    bits = size * 8

    def enc(n: int) -> bytes:
        return str(n).encode() if fmt == 0 else n.to_bytes(size, "big", signed=True)

    def parse(raw: bytes) -> int:
        if fmt == 1 and len(raw) != size:
            raise ValueError("bad length")
        return int(raw) if fmt == 0 else int.from_bytes(raw, "big", signed=True)

    if strategy == "constant":
        try:
            n = int(constant or "0")
        except ValueError:
            n = 0
        return _const(enc(n) if -(1 << (bits - 1)) <= n < 1 << (bits - 1) else fallback)
    if strategy == "partial":
        return _memoized(lambda raw: enc(abs(parse(raw)) % 10000), fallback, tokenizer, tag)
    integer = tokenizer.integer
    return _memoized(lambda raw: enc(integer(ns + str(parse(raw)).encode(), bits)), fallback, tokenizer, tag)


# ---------------------------------------------------------------------------
# numeric

_NUMERIC_TEXT = re.compile(r"\s*([+-]?)([0-9]*)(?:\.([0-9]*))?\s*")
_NUMERIC_SPECIAL = {0xC000: "NaN", 0xD000: "Infinity", 0xF000: "-Infinity"}


def _numeric_parse(raw: bytes, fmt: int) -> tuple[str, int]:
    """(canonical text, last four digits of the integer part) of a numeric wire value.

    The canonical text (sign, significant digits, exponent) is the same for
    equal values in either format and scale, so their tokens are equal.
    """
    if fmt == 0:
        s = raw.decode("ascii").strip()
        if s.lstrip("+-") in ("NaN", "Infinity"):
            return s.lstrip("+"), 0
        m = _NUMERIC_TEXT.fullmatch(s)
        if m is None or not (m.group(2) or m.group(3)):
            raise ValueError("not a numeric")
        neg, ipart, fpart = m.group(1) == "-", m.group(2), m.group(3) or ""
        last4, digits, exp = int(ipart[-4:] or "0"), ipart + fpart, -len(fpart)
    else:
        ndigits, weight, sign, _dscale = struct.unpack_from("!HhHH", raw)
        if sign in _NUMERIC_SPECIAL:
            return _NUMERIC_SPECIAL[sign], 0
        groups = struct.unpack_from(f"!{ndigits}H", raw, 8)
        if sign not in (0, 0x4000) or len(raw) != 8 + 2 * ndigits or any(g > 9999 for g in groups):
            raise ValueError("not a numeric")
        neg, last4 = sign == 0x4000, groups[weight] if 0 <= weight < ndigits else 0
        digits, exp = "".join(f"{g:04d}" for g in groups), 4 * (weight - ndigits + 1)
    digits = digits.lstrip("0")
    stripped = digits.rstrip("0")
    if not stripped:
        return "0", last4
    return f"{'-' if neg else ''}{stripped}e{exp + len(digits) - len(stripped)}", last4


def _numeric_binary(text: str) -> bytes | None:
    """Binary numeric for a plain decimal text ("-12.50"), None if it is not one."""
    m = _NUMERIC_TEXT.fullmatch(text)
    if m is None or not (m.group(2) or m.group(3)):
        return None
    neg, ipart, fpart = m.group(1) == "-", m.group(2).lstrip("0"), m.group(3) or ""
    dscale = len(fpart)
    ipart = ipart.zfill(-(-len(ipart) // 4) * 4)  # whole base-10000 digits
    fpart += "0" * (-len(fpart) % 4)
    both = ipart + fpart
    groups = [int(both[i : i + 4]) for i in range(0, len(both), 4)]
    weight = len(ipart) // 4 - 1
    while groups and groups[0] == 0:
        groups.pop(0)
        weight -= 1
    while groups and groups[-1] == 0:
        groups.pop()
    if not groups:
        return struct.pack("!HhHH", 0, 0, 0, dscale)
    return struct.pack(f"!HhHH{len(groups)}H", len(groups), weight, 0x4000 if neg else 0, dscale, *groups)


def _numeric_masker(strategy, fmt, tokenizer, constant, fallback, ns, tag) -> Masker:
    def enc(n: int) -> bytes:
        return str(n).encode() if fmt == 0 else _numeric_binary(str(n))  # type: ignore[return-value]

    if strategy == "constant":
        c = (constant or "").strip()
        binary = _numeric_binary(c) if c else None
        return _const(fallback if binary is None else c.encode() if fmt == 0 else binary)
    if strategy == "partial":
        return _memoized(lambda raw: enc(_numeric_parse(raw, fmt)[1]), fallback, tokenizer, tag)
    integer = tokenizer.integer
    return _memoized(lambda raw: enc(integer(ns + _numeric_parse(raw, fmt)[0].encode(), 64)), fallback, tokenizer, tag)


# ---------------------------------------------------------------------------
# uuid, bytea


def _uuid_out(b: bytes, fmt: int) -> bytes:
    h = b.hex()
    return b if fmt == 1 else f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}".encode()


def _uuid_masker(strategy, fmt, tokenizer, constant, fallback, ns, tag) -> Masker:
    if strategy == "constant":
        try:
            return _const(_uuid_out(uuid.UUID(constant or "").bytes, fmt))
        except ValueError:
            return _const(fallback)

    def value(raw: bytes) -> bytes:
        if fmt == 1 and len(raw) != 16:
            raise ValueError("bad uuid")
        return raw if fmt == 1 else uuid.UUID(raw.decode("ascii")).bytes

    if strategy == "partial":
        return _memoized(lambda raw: _uuid_out(bytes(14) + value(raw)[14:], fmt), fallback, tokenizer, tag)
    digest = tokenizer.digest

    def tokenize(raw: bytes) -> bytes:
        d = bytearray(digest(ns + value(raw), 16))
        d[6] = (d[6] & 0x0F) | 0x40  # version 4
        d[8] = (d[8] & 0x3F) | 0x80  # RFC 4122 variant
        return _uuid_out(bytes(d), fmt)

    return _memoized(tokenize, fallback, tokenizer, tag)


def _bytea_masker(strategy, fmt, tokenizer, constant, fallback, ns, tag) -> Masker:
    def out(b: bytes) -> bytes:
        return b if fmt == 1 else b"\\x" + b.hex().encode()

    if strategy == "constant":
        return _const(out((constant or "").encode("utf-8", "replace")))
    if strategy == "partial":
        return _const(fallback)

    def value(raw: bytes) -> bytes:  # text: hex format, or raw for the old "escape" format
        return bytes.fromhex(raw[2:].decode("ascii")) if fmt == 0 and raw[:2] == b"\\x" else raw

    digest = tokenizer.digest
    return _memoized(lambda raw: out(digest(ns + value(raw), 16)), fallback, tokenizer, tag)


# ---------------------------------------------------------------------------
# inet, cidr


def _inet_parse(raw: bytes, fmt: int) -> tuple[int, int, bytes]:
    """(bits of the address: 32 or 128, prefix length, address bytes)."""
    if fmt == 1:
        family, prefix, _is_cidr, nb = raw[:4]
        size = {2: 4, 3: 16}[family]
        if nb != size or len(raw) != 4 + size or prefix > size * 8:
            raise ValueError("bad inet")
        return size * 8, prefix, raw[4:]
    host, slash, plen = raw.decode("ascii").partition("/")
    ip = ipaddress.ip_address(host)
    prefix = int(plen) if slash else ip.max_prefixlen
    if not 0 <= prefix <= ip.max_prefixlen:
        raise ValueError("bad prefix")
    return ip.max_prefixlen, prefix, ip.packed


def _inet_out(maxlen: int, prefix: int, addr: bytes, is_cidr: bool, fmt: int) -> bytes:
    if is_cidr:  # no bits right of the mask
        n = int.from_bytes(addr, "big") & (((1 << prefix) - 1) << (maxlen - prefix))
        addr = n.to_bytes(maxlen // 8, "big")
    if fmt == 1:
        return bytes((2 if maxlen == 32 else 3, prefix, int(is_cidr), maxlen // 8)) + addr
    text = str(ipaddress.ip_address(addr))
    return (text + f"/{prefix}" if is_cidr or prefix != maxlen else text).encode()


def _inet_masker(strategy, type_oid, fmt, tokenizer, constant, fallback, tag) -> Masker:
    is_cidr = type_oid == CIDR
    if strategy == "constant":
        try:
            maxlen, prefix, addr = _inet_parse((constant or "").strip().encode("ascii"), 0)
            if is_cidr:
                ipaddress.ip_network((constant or "").strip())  # strict: host bits must be zero
            return _const(_inet_out(maxlen, prefix, addr, is_cidr, fmt))
        except (ValueError, UnicodeError):
            return _const(fallback)
    if strategy == "partial":
        def partial(raw: bytes) -> bytes:
            maxlen, prefix, addr = _inet_parse(raw, fmt)
            keep = 1 if maxlen == 32 else 2  # first octet / first group
            return _inet_out(maxlen, prefix, addr[:keep] + bytes(len(addr) - keep), is_cidr, fmt)

        return _memoized(partial, fallback, tokenizer, tag)
    text = tokenizer.text

    def tokenize(raw: bytes) -> bytes:
        # The same token as the address in a text column of semantic ipv4/ipv6.
        maxlen, prefix, addr = _inet_parse(raw, fmt)
        token = text(str(ipaddress.ip_address(addr)), "ipv4" if maxlen == 32 else "ipv6")
        return _inet_out(maxlen, prefix, ipaddress.ip_address(token).packed, is_cidr, fmt)

    return _memoized(tokenize, fallback, tokenizer, tag)


# ---------------------------------------------------------------------------
# JSON


def _json_prefix(type_oid: int, fmt: int) -> bytes:
    return b"\x01" if type_oid == JSONB and fmt == 1 else b""


def _json_str(s: str) -> bytes:
    return json.dumps(s, ensure_ascii=False).encode("utf-8", "replace")


def _json_text(raw: bytes, prefix: bytes) -> str:
    if prefix:
        if raw[:1] != prefix:
            raise ValueError("unknown jsonb version")
        raw = raw[1:]
    return str(raw, "utf-8")


class _Num(str):
    """A JSON number kept as its source text (no float rounding on re-encoding)."""


class _Obj(list):
    """A JSON object as its (key, value) pairs (duplicate keys and order kept)."""


def _reencode(v, masked: Callable[[str], tuple[str, int]], count: list) -> str:
    """JSON text of a decoded document, every string and number passed through ``masked``."""
    if isinstance(v, str):  # strings, keys and numbers (_Num)
        new, n = masked(str(v))
        count[0] += n
        return v if isinstance(v, _Num) and not n else json.dumps(new, ensure_ascii=False)
    if isinstance(v, _Obj):
        return "{" + ", ".join(f"{_reencode(k, masked, count)}: {_reencode(x, masked, count)}" for k, x in v) + "}"
    if isinstance(v, list):
        return "[" + ", ".join(_reencode(x, masked, count) for x in v) + "]"
    return "true" if v is True else "false" if v is False else "null"


def detect_masker(
    types: frozenset[str],
    strategy_for: Callable[[str], str],
    type_oid: int,
    fmt: int,
    *,
    tokenizer: Tokenizer,
    redaction: str = "****",
    detectors: Sequence[Detector] = (),
) -> Masker | None:
    """Content detection for a column of unknown origin; None when the type cannot carry text.

    Text-like values are masked span by span (``mask_detected``). JSON values
    are searched as text first; only when something is found is the document
    decoded and every string (keys included) and number masked, then
    re-encoded. A number holding a detected value becomes a JSON string.
    The masker returns the very same bytes object when nothing was found;
    undecodable values become the type's full redaction.
    """
    _check_format(fmt)
    if type_oid not in TEXT_LIKE and type_oid not in JSON_TYPES:
        return None
    types = frozenset(types)
    dets = tuple(d for d in detectors if d.types & types)
    if not (types & DETECTABLE) and not dets:
        return lambda raw: raw
    fallback = _redacted(type_oid, fmt, redaction)

    def masked(s: str) -> tuple[str, int]:
        return mask_detected(
            s, types, strategy_for, tokenizer=tokenizer, redaction=redaction, detectors=dets
        )

    if type_oid in TEXT_LIKE:
        def text_like(raw: bytes) -> bytes | None:
            try:
                new, n = masked(str(raw, "utf-8"))
                return new.encode() if n else raw
            except Exception:
                return fallback

        return text_like

    prefix = _json_prefix(type_oid, fmt)

    def any_match(s: str) -> bool:
        if find(s, types):
            return True
        return any(m.type in types for d in dets for m in d.find(s))

    def json_value(raw: bytes) -> bytes | None:
        try:
            s = _json_text(raw, prefix)
            if not any_match(s):
                return raw
            doc = json.loads(s, object_pairs_hook=_Obj, parse_int=_Num, parse_float=_Num, parse_constant=_Num)
            count = [0]
            out = _reencode(doc, masked, count)
            return prefix + out.encode() if count[0] else raw
        except Exception:
            return fallback

    return json_value
