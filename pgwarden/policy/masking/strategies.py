"""What a masked string becomes: the masking strategies and the keyed tokenizer.

Strategies (``STRATEGIES``):

``redact``
    The whole value becomes the redaction text (``"****"`` by default).
``partial``
    Enough is kept to recognise the value, never enough to use it: the last
    four digits of a card, SSN or phone number, the domain of an e-mail
    address, the country code and last four characters of an IBAN, the first
    octet of an IP address, the first four characters of a token, the last four
    characters of other text. The only digits a card or SSN keeps are its last
    four, and only when it has at least eight (a short value is fully starred);
    tokens shorter than 12 characters and texts of 4 or fewer are fully
    redacted, so a short value is never mostly revealed.
``tokenize``
    A deterministic keyed pseudonym (:class:`Tokenizer`): equal values give
    equal tokens, so equality, ``GROUP BY``, ``DISTINCT`` and joins on masked
    columns still work, while the value cannot be recovered without the key.
``null``
    SQL NULL (``None``).
``constant``
    A fixed text given by the policy (the redaction text when none is given).

Why HMAC-SHA256 with the semantic type as namespace: the namespace makes
tokens of one type comparable across every column of that type (the e-mail
in ``users.email`` and ``orders.contact`` tokenize alike) but unrelated across
types. Why format-preserving tokens: applications and drivers that validate a
card number, an SSN or an e-mail address must keep working on masked data, so
a card token has the same length, separators and a valid Luhn digit, an SSN
token a valid area/group/serial, an IBAN token valid check digits. Tokens are
built from the MAC only, never from the input's digits; only separators and
the IBAN country code are carried over. Values that are not of the expected
shape get a generic ``tok_<16 hex>`` token rather than a half-preserved one.

:func:`mask_detected` applies the strategies to the spans that ``detectors``
finds inside free text, for columns whose origin is unknown.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Callable, Sequence
from typing import Any

from .detectors import _LUHN_DOUBLE, Detector, _mod97, find, merge_spans

__all__ = ["STRATEGIES", "Tokenizer", "mask_detected", "mask_string", "string_masker"]

STRATEGIES = ("redact", "partial", "tokenize", "null", "constant")

#: Values longer than this are tokenized but not cached (bounds cache memory).
_CACHE_MAX_LEN = 1024

_CARD_SHAPE = re.compile(r"[0-9](?:[ -]?[0-9]){11,18}")
_SSN_SHAPE = re.compile(r"[0-9]{3}([ -]?)[0-9]{2}\1[0-9]{4}")
_PHONE_SHAPE = re.compile(r"\+?[0-9 ().\-/]*[0-9][0-9 ().\-/]*")
_IBAN_SHAPE = re.compile(r"[A-Z]{2}[0-9]{2}[A-Z0-9 ]{11,40}")


class Tokenizer:
    """Keyed, deterministic, format-preserving pseudonyms (HMAC-SHA256).

    ``key`` must be secret and at least 16 bytes; a different key gives
    unrelated tokens. Results are cached in bounded dicts that are cleared
    when full. ``memo`` is a further bounded cache shared by the wire-level
    maskers of ``typed`` (keys there are ``(masker tag, wire bytes)``).
    """

    __slots__ = ("_inner", "_outer", "cache_size", "_text", "_int", "_digest", "memo")

    def __init__(self, key: bytes, cache_size: int = 65536) -> None:
        if not isinstance(key, (bytes, bytearray)) or len(key) < 16:
            raise ValueError("tokenizer key must be at least 16 bytes")
        # HMAC-SHA256 (RFC 2104) with the padded-key states computed once:
        # the same result as hmac.digest(key, msg, "sha256"), at a third of the cost.
        k = hashlib.sha256(key).digest() if len(key) > 64 else bytes(key)
        k = k.ljust(64, b"\0")
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in k))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in k))
        self.cache_size = max(1, int(cache_size))
        self._text: dict[tuple[str, str], str] = {}
        self._int: dict[tuple[int, bytes], int] = {}
        self._digest: dict[tuple[int, bytes], bytes] = {}
        self.memo: dict[Any, Any] = {}

    # -- primitives -------------------------------------------------------

    def _hmac(self, msg: bytes) -> bytes:
        inner = self._inner.copy()
        inner.update(msg)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()

    def _mac(self, namespace: str, value: bytes) -> bytes:
        """HMAC-SHA256(key, namespace + NUL + value)."""
        return self._hmac(namespace.encode("utf-8", "surrogatepass") + b"\0" + value)

    def _stream(self, namespace: str, value: bytes, n: int, attempt: int = 0) -> bytes:
        """``n`` pseudo-random bytes bound to (namespace, value, attempt)."""
        block = self._mac(namespace, value)
        if attempt:
            block = self._hmac(block + b"\xffretry" + attempt.to_bytes(4, "big"))
        out = block
        i = 1
        while len(out) < n:
            out += self._hmac(block + i.to_bytes(4, "big"))
            i += 1
        return out[:n]

    def _digits(self, namespace: str, value: bytes, k: int, attempt: int) -> str:
        """``k`` uniformly distributed decimal digits."""
        if k <= 0:
            return ""
        n = int.from_bytes(self._stream(namespace, value, k // 2 + 16, attempt), "big")
        return str(n % 10**k).zfill(k)

    # -- public -----------------------------------------------------------

    def text(self, value: str, semantic: str) -> str:
        """The token of ``value`` for ``semantic`` (format-preserving where the type needs it)."""
        key = (semantic, value)
        tok = self._text.get(key)
        if tok is None:
            tok = self._make(value, semantic)
            if len(value) <= _CACHE_MAX_LEN:
                if len(self._text) >= self.cache_size:
                    self._text.clear()
                self._text[key] = tok
        return tok

    def integer(self, value: bytes, bits: int) -> int:
        """A non-negative integer token that fits a signed ``bits``-bit integer.

        Callers put their namespace into ``value`` (``typed`` uses the semantic type).
        """
        key = (bits, value)
        tok = self._int.get(key)
        if tok is None:
            tok = int.from_bytes(self._mac("integer", value)[:8], "big") & ((1 << (bits - 1)) - 1)
            if len(self._int) >= self.cache_size:
                self._int.clear()
            self._int[key] = tok
        return tok

    def digest(self, value: bytes, n: int) -> bytes:
        """``n`` deterministic bytes for ``value`` (uuid, bytea tokens)."""
        key = (n, value)
        tok = self._digest.get(key)
        if tok is None:
            tok = self._stream("digest", value, n)
            if len(self._digest) >= self.cache_size:
                self._digest.clear()
            self._digest[key] = tok
        return tok

    # -- format-preserving tokens -------------------------------------------

    def _make(self, value: str, semantic: str) -> str:
        raw = value.encode("utf-8", "surrogatepass")
        maker = _MAKERS.get(semantic)
        if maker is not None:
            tok = maker(self, value, raw, semantic)
            if tok is not None:
                return tok
        return "tok_" + self._mac(semantic, raw)[:8].hex()

    def _fill(self, value: str, new_digits: str) -> str:
        """``value`` with its ASCII digits replaced, in order, by ``new_digits``."""
        if len(new_digits) == len(value):
            return new_digits
        it = iter(new_digits)
        return "".join(next(it) if "0" <= ch <= "9" else ch for ch in value)

    def _card(self, value: str, raw: bytes, semantic: str) -> str | None:
        if _CARD_SHAPE.fullmatch(value) is None:
            return None
        old = value.replace(" ", "").replace("-", "")
        for attempt in range(16):
            body = self._digits(semantic, raw, len(old) - 1, attempt)
            new = body + _luhn_digit(body)
            if new != old:
                return self._fill(value, new)
        return None

    def _ssn(self, value: str, raw: bytes, semantic: str) -> str | None:
        if _SSN_SHAPE.fullmatch(value) is None:
            return None
        old = _ascii_digits(value)
        for attempt in range(16):
            n = int.from_bytes(self._stream(semantic, raw, 16, attempt), "big")
            area = 1 + n % 898  # 001..898, then skip 666: 001..899 without 666
            if area >= 666:
                area += 1
            n //= 898
            group = 1 + n % 99
            n //= 99
            serial = 1 + n % 9999
            new = f"{area:03d}{group:02d}{serial:04d}"
            if new != old:
                return self._fill(value, new)
        return None

    def _phone(self, value: str, raw: bytes, semantic: str) -> str | None:
        if _PHONE_SHAPE.fullmatch(value) is None:
            return None
        old = _ascii_digits(value)
        for attempt in range(16):
            new = self._digits(semantic, raw, len(old), attempt)
            if new[0] == "0":  # a leading zero is not valid after "+"
                new = str(1 + int(self._digits(semantic, raw + b"\0", 1, attempt)) % 9) + new[1:]
            if new != old:
                return self._fill(value, new)
        return None

    def _iban(self, value: str, raw: bytes, semantic: str) -> str | None:
        if _IBAN_SHAPE.fullmatch(value) is None:
            return None
        compact = value.replace(" ", "")
        if not 15 <= len(compact) <= 34:
            return None
        country, bban = compact[:2], compact[4:]
        for attempt in range(16):
            stream = self._stream(semantic, raw, len(bban), attempt)
            new_bban = "".join(
                chr(48 + b % 10) if ch <= "9" else chr(65 + b % 26) for ch, b in zip(bban, stream)
            )
            check = 98 - _mod97(new_bban + country + "00")
            new = f"{country}{check:02d}{new_bban}"
            if new != compact:
                it = iter(new)
                return "".join(ch if ch == " " else next(it) for ch in value)
        return None

    def _email(self, value: str, raw: bytes, semantic: str) -> str:
        domain = value.rpartition("@")[2].lower()
        local = self._mac(semantic, raw)[:5].hex()
        dom = self._mac(semantic, b"@" + domain.encode("utf-8", "surrogatepass"))[:4].hex()
        return f"{local}@{dom}.invalid"

    def _ipv4(self, value: str, raw: bytes, semantic: str) -> str:
        a, b, c, d = self._mac(semantic, raw)[:4]
        return f"{a}.{b}.{c}.{d}"

    def _ipv6(self, value: str, raw: bytes, semantic: str) -> str:
        return str(ipaddress.IPv6Address(self._mac(semantic, raw)[:16]))


_MAKERS: dict[str, Callable[..., str | None]] = {
    "credit_card": Tokenizer._card,
    "us_ssn": Tokenizer._ssn,
    "phone": Tokenizer._phone,
    "iban": Tokenizer._iban,
    "email": Tokenizer._email,
    "ipv4": Tokenizer._ipv4,
    "ipv6": Tokenizer._ipv6,
}


def _ascii_digits(value: str) -> str:
    return "".join(ch for ch in value if "0" <= ch <= "9")


def _luhn_digit(body: str) -> str:
    """The check digit that makes ``body + digit`` Luhn-valid."""
    rev = body[::-1]  # the last body digit is doubled once the check digit follows
    total = sum(map(_LUHN_DOUBLE.__getitem__, rev[0::2])) + sum(map(int, rev[1::2]))
    return str(-total % 10)


# ---------------------------------------------------------------------------
# Partial masks. Each takes (value, redaction) and returns the masked text.

_DIGIT_TO_STAR = bytes.maketrans(b"0123456789", b"**********")
# Every byte except space and dash becomes "*".
_STAR_BUT_SEPS = bytes(c if c in b" -" else 42 for c in range(256))
_NOT_SEP = re.compile(r"[^ -]")


def _last4_start(value: str) -> tuple[int, int]:
    """(index where the last four ASCII digits begin, digits seen, up to 8)."""
    i = len(value)
    seen = 0
    start = -1
    while i:
        i -= 1
        ch = value[i]
        if "0" <= ch <= "9":
            seen += 1
            if seen == 4:
                start = i
            elif seen == 8:
                break
    return start, seen


def _partial_card(value: str, redaction: str) -> str:
    """Everything but spaces, dashes and the last four digits becomes ``*``."""
    start, seen = _last4_start(value)
    if seen < 8:
        return _star_but_seps(value)
    tail = value[start:]
    if not tail.isdigit() or not tail.isascii():
        # Stars for anything in the tail that is neither a digit nor a separator.
        tail = "".join(ch if ("0" <= ch <= "9" or ch in " -") else "*" for ch in tail)
    return _star_but_seps(value[:start]) + tail


def _star_but_seps(s: str) -> str:
    if s.isascii():
        return s.encode().translate(_STAR_BUT_SEPS).decode()
    return _NOT_SEP.sub("*", s)


def _partial_phone(value: str, redaction: str) -> str:
    """Digits but the last four become ``*``; punctuation and ``+`` are kept."""
    start, seen = _last4_start(value)
    if seen < 8:
        start = len(value)
    head, tail = value[:start], value[start:]
    if head.isascii():
        head = head.encode().translate(_DIGIT_TO_STAR).decode()
    else:
        head = re.sub(r"[0-9]", "*", head)
    return head + tail


def _partial_email(value: str, redaction: str) -> str:
    local, at, domain = value.rpartition("@")
    if not at or not domain:
        return redaction
    return "****@" + domain


def _partial_iban(value: str, redaction: str) -> str:
    """Country code and last four characters kept, stars between, spaces kept."""
    n = sum(1 for ch in value if ch != " ")
    if n < 10:
        return redaction
    out = []
    seen = 0
    for ch in value:
        if ch == " ":
            out.append(ch)
            continue
        out.append(ch if seen < 2 or seen >= n - 4 else "*")
        seen += 1
    return "".join(out)


def _partial_ipv4(value: str, redaction: str) -> str:
    first = value.split(".", 1)[0]
    if value.count(".") >= 3 and 1 <= len(first) <= 3 and first.isascii() and first.isdigit():
        return first + ".*.*.*"
    return redaction


def _partial_ipv6(value: str, redaction: str) -> str:
    try:
        addr = ipaddress.IPv6Address(value.split("/", 1)[0].split("%", 1)[0])
    except ValueError:
        return redaction
    return (addr.exploded.split(":", 1)[0].lstrip("0") or "0") + ":*" * 7


def _partial_token(value: str, redaction: str) -> str:
    return redaction if len(value) < 12 else value[:4] + "****"


def _partial_text(value: str, redaction: str) -> str:
    return redaction if len(value) <= 4 else "****" + value[-4:]


_PARTIAL: dict[str, Callable[[str, str], str]] = {
    "credit_card": _partial_card,
    "us_ssn": _partial_card,
    "phone": _partial_phone,
    "email": _partial_email,
    "iban": _partial_iban,
    "ipv4": _partial_ipv4,
    "ipv6": _partial_ipv6,
    "jwt": _partial_token,
    "api_key": _partial_token,
}


# ---------------------------------------------------------------------------


def string_masker(
    strategy: str,
    semantic: str,
    *,
    tokenizer: Tokenizer,
    constant: str | None = None,
    redaction: str = "****",
) -> Callable[[str], str | None]:
    """``mask_string`` with everything bound up front (for per-row use). Unknown strategy: ValueError."""
    if strategy == "redact":
        return lambda value: redaction
    if strategy == "null":
        return lambda value: None
    if strategy == "constant":
        fixed = redaction if constant is None else constant
        return lambda value: fixed
    if strategy == "tokenize":
        text = tokenizer.text
        return lambda value: text(value, semantic)
    if strategy == "partial":
        fn = _PARTIAL.get(semantic, _partial_text)
        return lambda value: fn(value, redaction)
    raise ValueError(f"unknown masking strategy {strategy!r} (known: {', '.join(STRATEGIES)})")


def mask_string(
    value: str,
    strategy: str,
    semantic: str,
    *,
    tokenizer: Tokenizer,
    constant: str | None = None,
    redaction: str = "****",
) -> str | None:
    """The masked form of ``value``; ``None`` means SQL NULL. Unknown strategy: ValueError."""
    if strategy == "redact":
        return redaction
    if strategy == "null":
        return None
    if strategy == "constant":
        return redaction if constant is None else constant
    if strategy == "tokenize":
        return tokenizer.text(value, semantic)
    if strategy == "partial":
        return _PARTIAL.get(semantic, _partial_text)(value, redaction)
    raise ValueError(f"unknown masking strategy {strategy!r} (known: {', '.join(STRATEGIES)})")


def mask_detected(
    text: str,
    types: frozenset[str],
    strategy_for: Callable[[str], str],
    *,
    tokenizer: Tokenizer,
    redaction: str = "****",
    detectors: Sequence[Detector] = (),
) -> tuple[str, int]:
    """Mask every value of ``types`` found in ``text``; returns ``(new_text, count)``.

    Built-in detectors and the plug-in ``detectors`` are combined (only their
    matches of ``types`` count; overlapping matches are merged). Each match is
    replaced by ``mask_string`` with ``strategy_for(type)``; inside text,
    ``null`` and ``constant`` become the redaction text. When nothing matched,
    the very same ``text`` object is returned (callers test identity).
    """
    matches = find(text, types)
    if detectors:
        spans = [(m.start, m.end, m.type) for m in matches]
        for det in detectors:
            if det.types & types:
                spans.extend((m.start, m.end, m.type) for m in det.find(text) if m.type in types)
        if not spans:
            return text, 0
        merged = merge_spans(spans)
    elif not matches:
        return text, 0
    else:
        merged = [(m.start, m.end, m.type) for m in matches]
    out = []
    pos = 0
    for start, end, typ in merged:
        strategy = strategy_for(typ)
        if strategy == "null" or strategy == "constant":
            strategy = "redact"
        out.append(text[pos:start])
        masked = mask_string(text[start:end], strategy, typ, tokenizer=tokenizer, redaction=redaction)
        out.append(redaction if masked is None else masked)
        pos = end
    out.append(text[pos:])
    return "".join(out), len(merged)
