"""Values echoed by ErrorResponse and NoticeResponse, scrubbed.

Why it exists
-------------
Masking DataRows is not enough: PostgreSQL quotes the offending data in its
error reports. A client that reads a masked column can make the server say the
value back, e.g. ``SELECT ssn::int FROM customers`` fails with
``invalid input syntax for type integer: "123-45-6789"``, a duplicate insert
is answered with ``Key (email)=(alice@example.com) already exists.``, and a
``RAISE NOTICE`` in a function prints whatever it is given.

Two mechanisms, both applied to the message (M), detail (D), context (W) and
hint (H) fields; every other field (severity, SQLSTATE, positions, the
internal query ``q``, schema/table/column names) passes unchanged:

- *echo* (the statement read masked columns): the places where PostgreSQL's
  own messages quote data are replaced by ``****``, keeping the sentence:
  quoted input values in class 22 (data exception) messages, the value lists
  of ``Key (cols)=(values)``, ``(cols) = (values)`` and ``Failing row
  contains (values)`` in details, the values quoted by COPY's context
  lines, and the input echoed by json's details and context. Where a
  value's end is ambiguous (values may contain quotes and parentheses) the
  widest reading is masked: too much hidden beats a leak.
- *detect* (optional): the content detectors, on every message, for data the
  server cannot label (``RAISE`` text, application messages).

Error reports are rare and small, but the function is called for each one on
masked sessions, so the usual case (nothing to change) is a scan of the field
codes and a few substring tests, returning None. Malformed bodies return None
too: the relay forwards them as they are (the client rejects them) rather than
fail the session here.

Fields are decoded as UTF-8 with ``surrogateescape``, so bytes in another
client encoding round-trip unchanged; ASCII-based patterns still match.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from ...wire import encode

__all__ = ["MASK", "scrub_fields", "scrub_message"]

#: What replaces an echoed value.
MASK = "****"

_M, _D, _W, _H, _C = b"MDWHC"
_SCRUBBED = (_M, _D, _W, _H)

Detect = Callable[[str], tuple[str, int]]

_OUT_OF_RANGE = re.compile(r'(value ")(.*)(" is out of range)', re.S)  # 22003
_JSON_TOKEN = re.compile(r'((?:Token|found) ")(.*)(")', re.S)  # 22P02 details of json input
_EXCLUSION = re.compile(r"(Key \(.*?\)=\()(.*)(\) conflicts with (?:existing )?key \(.*?\)=\()(.*)(\)\.?)", re.S)
_COPY_CONTEXT = re.compile(r'COPY [^\n]*?, line \d+(?:, column [^\n]*?)?: "')
_JSON_CONTEXT = re.compile(r"(JSON data, line \d+: )([^\n]+)")


def scrub_fields(body: bytes, *, echo: bool, detect: Detect | None) -> tuple[bytes, int] | None:
    """Scrub the fields of an ErrorResponse/NoticeResponse body (after the 5-byte header).

    Returns ``(new body, number of replacements)``, or None when nothing
    changed or the body is malformed.
    """
    if not echo and detect is None:
        return None
    return _scrub(body, 0, len(body), echo, detect)


def scrub_message(message: bytes, *, echo: bool, detect: Detect | None) -> tuple[bytes, int] | None:
    """:func:`scrub_fields` on a whole 'E' or 'N' message; the new message has a correct length."""
    if not echo and detect is None:
        return None
    if len(message) < 6 or message[0] not in (0x45, 0x4E):
        return None
    if int.from_bytes(message[1:5], "big") != len(message) - 1:
        return None
    result = _scrub(message, 5, len(message), echo, detect)
    if result is None:
        return None
    body, count = result
    return encode.message(message[:1], body), count


def _scrub(buf: bytes, start: int, end: int, echo: bool, detect: Detect | None) -> tuple[bytes, int] | None:
    fields = []  # (code, value start, value end) of the fields we may rewrite
    klass = -1  # where the SQLSTATE's class (its first two characters) is
    pos = start
    while True:
        if pos >= end:
            return None  # no terminator
        code = buf[pos]
        if code == 0:
            break
        stop = buf.find(b"\x00", pos + 1, end)
        if stop < 0:
            return None
        if code in _SCRUBBED:
            fields.append((code, pos + 1, stop))
        elif code == _C:
            klass = pos + 1
        pos = stop + 1
    if pos + 1 != end:
        return None  # bytes after the terminator
    pieces = []
    copied = start
    total = 0
    for code, vstart, vend in fields:
        text = None
        count = 0
        if echo and _may_echo(code, buf, vstart, vend, klass):
            text = buf[vstart:vend].decode("utf-8", "surrogateescape")
            text, count = _ECHO[code](text, buf[klass : klass + 2] if klass >= 0 else b"")
        if echo and not count and buf.find(b'"', vstart, vend) >= 0 and (klass < 0 or buf[klass : klass + 2] != b"23"):
            # Any other double-quoted text of a statement that read masked columns may be a
            # value too (``translate(ssn, ...)::regclass``: relation "..." does not exist).
            # Integrity errors (class 23) quote only schema names; their values are in the
            # detail, handled above.
            if text is None:
                text = buf[vstart:vend].decode("utf-8", "surrogateescape")
            text, quoted = _quoted(text)
            count += quoted
        if detect is not None:
            if text is None:
                text = buf[vstart:vend].decode("utf-8", "surrogateescape")
            text, found = detect(text)
            count += found
        if not count:
            continue
        new = text.replace("\x00", "").encode("utf-8", "surrogateescape")
        if new == buf[vstart:vend]:
            continue
        pieces.append(buf[copied:vstart])
        pieces.append(new)
        copied = vend
        total += count
    if not pieces:
        return None
    pieces.append(buf[copied:end])
    return b"".join(pieces), total


def _may_echo(code: int, buf: bytes, start: int, end: int, klass: int) -> bool:
    """A cheap test without copying: can the field ``buf[start:end]`` hold an echoed value at all?"""
    find = buf.find
    if code == _M:
        return klass >= 0 and buf.startswith(b"22", klass) and (
            find(b': "', start, end) >= 0 or find(b'value "', start, end) >= 0
        )
    if code == _D:
        return (
            find(b")=(", start, end) >= 0
            or find(b") = (", start, end) >= 0
            or find(b"contains (", start, end) >= 0
            or (klass >= 0 and buf.startswith(b"23", klass) and find(b"(", start, end) >= 0)
            or (klass >= 0 and buf.startswith(b"22", klass) and (find(b'Token "', start, end) >= 0
                                                                   or find(b'found "', start, end) >= 0))
        )
    if code == _W:
        return find(b"COPY ", start, end) >= 0 or find(b"JSON data, line ", start, end) >= 0
    return False


def _message(text: str, sqlstate: bytes) -> tuple[str, int]:
    """Class 22: ``...: "value"`` (to the last quote: values may contain quotes) and ``value "v" is out of range``."""
    i = text.find(': "')
    if i >= 0:
        j = text.rfind('"')
        if j == i + 2:  # no closing quote (a truncated message): everything after it
            return text[: i + 3] + MASK, 1
        if j > i + 3:
            return text[: i + 3] + MASK + text[j:], 1
        return text, 0
    return _OUT_OF_RANGE.subn(lambda m: m[1] + MASK + m[3], text, count=1)


def _detail(text: str, sqlstate: bytes) -> tuple[str, int]:
    """Value lists in details: exclusion conflicts (two lists), ``(cols)=(values)``,
    ``(cols) = (values)``, ``contains (values)``; class 23 details in other
    languages: everything between the first ``(`` and the last ``)``."""
    m = _EXCLUSION.fullmatch(text) if " conflicts with " in text else None
    if m is not None:
        return m[1] + MASK + m[3] + MASK + m[5], 2
    for marker in (")=(", ") = ("):
        i = text.find(marker)
        if i >= 0:
            return _mask_to_last_paren(text, i + len(marker))
    i = text.find("contains (")
    if i >= 0:
        return _mask_to_last_paren(text, i + 10)
    if sqlstate[:2] == b"23":
        i = text.find("(")
        if i >= 0:
            return _mask_to_last_paren(text, i + 1)
    return _JSON_TOKEN.subn(lambda m: m[1] + MASK + m[3], text)


def _mask_to_last_paren(text: str, i: int) -> tuple[str, int]:
    j = text.rfind(")")
    if j < i:  # no closing parenthesis: everything after the opening one
        return text[:i] + MASK, 1
    if j == i:  # an empty list
        return text, 0
    return text[:i] + MASK + text[j:], 1


def _context(text: str, sqlstate: bytes) -> tuple[str, int]:
    """COPY FROM's context (``COPY t, line 1, column ssn: "value"`` or ``COPY t, line 1: "whole line"``):
    to the last quote (the COPY line is the outermost context, so the last
    line); json input's ``JSON data, line 1: text``: to the end of that line."""
    count = 0
    m = _COPY_CONTEXT.search(text)
    if m is not None:
        i = m.end()
        j = text.rfind('"')
        if j < i:
            text, count = text[:i] + MASK, 1
        elif j > i:
            text, count = text[:i] + MASK + text[j:], 1
    text, n = _JSON_CONTEXT.subn(lambda m: m[1] + MASK, text)
    return text, count + n


_ECHO = {_M: _message, _D: _detail, _W: _context}
_QUOTED = re.compile(r'"(?:[^"]|"")+"')


def _quoted(text: str) -> tuple[str, int]:
    """Every double-quoted text replaced by ``"****"``, with the count of replacements."""
    count = 0

    def replace(match: re.Match[str]) -> str:
        nonlocal count
        if match.group(0) == f'"{MASK}"':
            return match.group(0)
        count += 1
        return f'"{MASK}"'

    return _QUOTED.sub(replace, text), count
