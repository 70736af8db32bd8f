"""Semantic types and the detectors that find them inside text.

A *semantic type* names what a value is (an e-mail address, a card number,
...) independently of its SQL type; policies say which semantic types are
masked and how. When the gateway knows a result column comes from a column
classified as, say, ``email``, it masks the whole value (see ``typed``). When
it does not know where a text value comes from (an expression, a view it
cannot see through, a JSON document), it looks for regulated values *inside*
the text with :func:`find` and masks only those spans (see
``strategies.mask_detected``).

Why precise rather than broad: masking a false positive corrupts data the
client legitimately asked for, so every detector checks a structure that
random text rarely has (Luhn for cards, mod-97 for IBANs, valid SSN areas,
octet ranges, ``ipaddress`` for IPv6) and refuses matches glued to longer
digit or word runs (an order number inside a longer reference is not a card).

Why so much attention to the no-match case: :func:`find` runs once per value
of every result column whose origin is unknown, and nearly all such values
contain nothing. Each detector is guarded by a test that costs tens of
nanoseconds (``'@' in text``, "at least 9 digits", "three dots", a literal
prefix) before any real regular expression runs.

:func:`find` never raises. If a detector fails on some input (it should not),
the whole text is reported as one match, so the value is masked rather than
leaked (fail closed).

Plug-in detectors (:func:`load_plugin`) add types the built-in patterns
cannot find, such as person names via Microsoft Presidio.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

__all__ = [
    "DETECTABLE",
    "SEMANTIC_TYPES",
    "Detector",
    "Match",
    "find",
    "iban_valid",
    "load_plugin",
    "luhn_valid",
]

SEMANTIC_TYPES = (
    "email", "phone", "credit_card", "us_ssn", "iban", "ipv4", "ipv6", "jwt", "api_key", "person", "text",
)

#: Types with a built-in detector ("person" needs a plug-in, "text" is not detectable).
DETECTABLE = frozenset(SEMANTIC_TYPES) - {"person", "text"}


@dataclass(frozen=True, slots=True)
class Match:
    """A detected value: ``text[start:end]`` is of semantic type ``type``."""

    start: int
    end: int
    type: str


@runtime_checkable
class Detector(Protocol):
    """A content detector: ``types`` it can report, ``find`` returns its matches."""

    types: frozenset[str]

    def find(self, text: str) -> list[Match]: ...


# ---------------------------------------------------------------------------
# Checksums


def luhn_valid(digits: str) -> bool:
    """True when ``digits`` (ASCII digits only, at least 2) passes the Luhn check."""
    if len(digits) < 2 or not digits.isascii() or not digits.isdigit():
        return False
    rev = digits[::-1]
    return (sum(map(int, rev[0::2])) + sum(map(_LUHN_DOUBLE.__getitem__, rev[1::2]))) % 10 == 0


#: A digit's contribution when doubled by the Luhn algorithm.
_LUHN_DOUBLE = {str(d): (2 * d if d < 5 else 2 * d - 9) for d in range(10)}


_IBAN_SHAPE = re.compile(r"[A-Z]{2}[0-9]{2}[A-Z0-9]{11,30}")


def iban_valid(text: str) -> bool:
    """True when ``text`` is an IBAN with valid mod-97 check digits (spaces allowed)."""
    try:
        compact = text.replace(" ", "").upper()
    except Exception:
        return False
    if not compact.isascii() or _IBAN_SHAPE.fullmatch(compact) is None:
        return False
    if compact[2:4] in ("00", "01", "99"):  # never produced by the algorithm
        return False
    return _mod97(compact[4:] + compact[:4]) == 1


def _mod97(s: str) -> int:
    # Letters count as two digits: A=10 ... Z=35.
    return int("".join(ch if ch <= "9" else str(ord(ch) - 55) for ch in s)) % 97


# ---------------------------------------------------------------------------
# Patterns. A value glued to a word character, or continuing a longer number
# ("12.4111...", "123-45-6789-1"), is part of something else and not reported.

_B = r"(?<![0-9A-Za-z_])"  # not glued on the left to a word character
_E = r"(?![0-9A-Za-z_])"  # not glued on the right
_NOT_AFTER_NUM = r"(?<![0-9][.,-])"  # not the continuation of a number
_NOT_BEFORE_NUM = r"(?![.,-][0-9])"  # not continued by a number

_EMAIL = re.compile(
    r"(?<![\w%+.-])[\w%+-]+(?:\.[\w%+-]+)*@"
    r"(?:[^\W_](?:[\w-]{0,61}[^\W_])?\.)+(?:[^\W\d_]{2,63}|xn--[A-Za-z0-9-]{1,59})(?![\w-])"
)

# A maximal run of 13+ digits with single spaces or dashes between them.
_DIGIT_RUN = re.compile(_B + r"(?<![0-9][.,\ -])[0-9](?:[ -]?[0-9]){12,}+")
# Digits and phone punctuation, at least 9 characters: "1 (415) 555-0123".
_NUMBER_RUN = re.compile(r"[0-9][0-9 ().-]{8,}")
_SEP_SPLIT = re.compile(r"[ -]")

_SSN = re.compile(
    _B + _NOT_AFTER_NUM
    + r"([0-9]{3})(?:([ -])([0-9]{2})\2|([0-9]{2}))([0-9]{4})"
    + _E + _NOT_BEFORE_NUM
)

_PHONE = re.compile(
    # International: "+" or "00", then digits with single separators and one
    # optional parenthesised group. Possessive: the run is taken whole.
    r"(?<![0-9A-Za-z_+])(?:\+|(?<![0-9][.,\ -])00(?=[1-9][0-9]*+[ .(-]))[1-9]"
    r"(?:[0-9]|[ .-](?=[0-9(])|\((?=[0-9])|(?<=[0-9])\)(?=[ .-]?[0-9]))++" + _E
    # North American: (415) 555-0123, 415-555-0123, 1 415 555 0123 ...
    + r"|" + _B + r"(?<![0-9+][.,-])(?:1[ .-]?)?(?:\([2-9][0-9]{2}\)[ .-]?|[2-9][0-9]{2}[ .-])"
    r"[2-9][0-9]{2}[ .-][0-9]{4}" + _E + _NOT_BEFORE_NUM
    # National with trunk prefix 0: 020 7946 0958, (030) 1234-5678, 01 23 45 67 89
    + r"|" + _B + r"(?<![0-9+][.,\ -])(?:\(0[1-9][0-9]{0,3}\)|0[1-9][0-9]{0,3})([ -])[0-9]{2,4}"
    r"(?:\1[0-9]{2,4}){1,3}" + _E + r"(?![.,\ -][0-9])"
)

_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = re.compile(r"(?<![0-9A-Za-z_.])" + _OCTET + r"(?:\." + _OCTET + r"){3}" + _E + r"(?!\.[0-9])")

_IPV6 = re.compile(
    r"(?<![0-9A-Za-z_:.])(?>(?:[0-9A-Fa-f]{0,4}:){2,7}"
    r"(?:[0-9]{1,3}(?:\.[0-9]{1,3}){3}|[0-9A-Fa-f]{0,4}))(?![0-9A-Za-z_:])"
)

_JWT = re.compile(
    r"(?<![A-Za-z0-9_-])eyJ[A-Za-z0-9_-]{5,}+\.[A-Za-z0-9_-]++\.[A-Za-z0-9_-]*+(?:\.[A-Za-z0-9_-]*+){0,2}"
)

_API_KEY = re.compile(
    r"(?<![A-Za-z0-9])(?:AKIA|ASIA)[A-Z0-9]{16}(?![A-Za-z0-9])"
    r"|(?<![A-Za-z0-9_])gh[pousr]_[A-Za-z0-9]{36,251}+(?![A-Za-z0-9_])"
    r"|(?<![A-Za-z0-9_])github_pat_[A-Za-z0-9_]{22,255}+"
    r"|(?<![A-Za-z0-9_-])xox[abprs]-[A-Za-z0-9-]{10,}+"
    r"|(?<![A-Za-z0-9_])[sr]k_live_[A-Za-z0-9]{10,}+"
    r"|(?<![A-Za-z0-9_-])AIza[0-9A-Za-z_-]{35}(?![0-9A-Za-z_-])"
    # A PEM private key: header to END line, or to the end of the text.
    r"|-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----(?s:.*?-----END (?:[A-Z0-9]+ )*PRIVATE KEY-----|.*)"
    # Only the token after "Bearer" is the secret.
    r"|(?<![A-Za-z0-9_])(?:[Bb]earer|BEARER)[ \t]+(?P<bearer>[A-Za-z0-9._~+/-]{16,}+=*+)"
)
_TOKEN_SYMBOLS = re.compile(r"[0-9._~+/=-]")

# The left boundary is checked after the country code: a pattern that starts
# with a character class lets the regex engine skip ahead quickly.
_IBAN = re.compile(r"[A-Z]{2}(?<![0-9A-Za-z_][A-Z]{2})[0-9]{2}(?:[ ]?[A-Z0-9]{4}){2,7}(?:[ ]?[A-Z0-9]{1,4})?" + _E)

_AT_LEAST_9_DIGITS = re.compile(r"(?:[^0-9]*+[0-9]){9}")

#: Order in which overlapping matches are resolved: the first type wins the span.
_PRIORITY = ("api_key", "jwt", "email", "iban", "credit_card", "us_ssn", "ipv6", "ipv4", "phone")
_RANK = {t: i for i, t in enumerate(_PRIORITY)}
_RANK_OTHER = len(_PRIORITY)


# ---------------------------------------------------------------------------
# One scanner per type; each appends (start, end, type) to ``out``.


def _scan_email(text: str, out: list) -> None:
    for m in _EMAIL.finditer(text):
        out.append((m.start(), m.end(), "email"))


def _number_regions(text: str) -> list[tuple[int, int]]:
    """Where cards, SSNs and phone numbers can be: stretches of digits and
    punctuation holding 9+ digits.

    Each region starts two characters early (a ``+`` or ``(`` may open a phone
    number) and ends two characters late, so that the boundary checks of the
    scanners see what follows.
    """
    n = len(text)
    return [
        (max(0, m.start() - 2), min(n, m.end() + 2))
        for m in _NUMBER_RUN.finditer(text)
        if _AT_LEAST_9_DIGITS.match(m.group()) is not None
    ]


def _scan_cards(text: str, pos: int, endpos: int, out: list) -> None:
    n = len(text)
    for m in _DIGIT_RUN.finditer(text, pos, endpos):
        start, end = m.span()
        run = m.group()
        start_ok = not (start >= 2 and text[start - 1] in ".," and text[start - 2].isdigit())
        end_ok = end >= n or not (
            text[end].isalnum() or text[end] == "_" or (text[end] in ".," and end + 1 < n and text[end + 1] in _DIGITS)
        )
        digits = run.replace(" ", "").replace("-", "")
        if len(digits) < 13:
            continue
        if start_ok and end_ok and len(digits) <= 19 and _card_ok(digits):
            out.append((start, end, "credit_card"))
            continue
        if len(digits) == len(run):  # no separators: no groups to try
            continue
        for s, e in _card_groups(run, start_ok, end_ok):
            out.append((start + s, start + e, "credit_card"))


def _card_groups(run: str, start_ok: bool, end_ok: bool) -> list[tuple[int, int]]:
    """Cards inside a longer run of digit groups ("ref 12 4111 1111 1111 1111").

    Left to right, the longest Luhn-valid span of whole groups of 3+ digits
    (cards are printed in groups of 3 to 6) with 13 to 19 digits. Requiring
    such groups bounds the work on long runs like "1 2 3 4 ...".
    """
    groups = []  # (start offset, end offset, digit count)
    off = 0
    for g in _SEP_SPLIT.split(run):
        groups.append((off, off + len(g), len(g)))
        off += len(g) + 1
    last = len(groups) - 1
    spans = []
    i = 0
    while i <= last:
        if groups[i][2] < 3:
            i += 1
            continue
        ends = []  # candidate last groups, with 13..19 digits in all
        count = 0
        j = i
        while j <= last and groups[j][2] >= 3 and count + groups[j][2] <= 19:
            count += groups[j][2]
            if count >= 13:
                ends.append(j)
            j += 1
        hit = None
        for k in reversed(ends):
            if (i > 0 or start_ok) and (k < last or end_ok):
                d = run[groups[i][0] : groups[k][1]].replace(" ", "").replace("-", "")
                if _card_ok(d):
                    hit = k
                    break
        if hit is None:
            i += 1
        else:
            spans.append((groups[i][0], groups[hit][1]))
            i = hit + 1
    return spans


def _card_ok(digits: str) -> bool:
    return digits.strip("0") != "" and luhn_valid(digits)


_DIGITS = frozenset("0123456789")


def _scan_ssn(text: str, pos: int, endpos: int, out: list) -> None:
    for m in _SSN.finditer(text, pos, endpos):
        area, group, serial = m.group(1), m.group(3) or m.group(4), m.group(5)
        if area == "000" or area == "666" or area[0] == "9" or group == "00" or serial == "0000":
            continue
        start, end = m.span()
        if m.group(2) == " " and (
            (start >= 2 and text[start - 1] == " " and text[start - 2] in _DIGITS)
            or (end + 1 < len(text) and text[end] == " " and text[end + 1] in _DIGITS)
        ):
            continue  # "12 123 45 6789": groups of a longer space-separated number
        out.append((m.start(), m.end(), "us_ssn"))


def _scan_phone(text: str, pos: int, endpos: int, out: list) -> None:
    for m in _PHONE.finditer(text, pos, endpos):
        s = m.group()
        nd = sum(1 for ch in s if ch in _DIGITS)
        if s[0] == "+" or s.startswith("00"):
            if s.startswith("00"):
                nd -= 2
            if not 10 <= nd <= 15 or s.count("(") != s.count(")") or s.count("(") > 1:
                continue
        elif s[0] == "(" or s[0] == "0":
            if not 10 <= nd <= 11:
                continue
        out.append((m.start(), m.end(), "phone"))


def _scan_ipv4(text: str, out: list) -> None:
    for m in _IPV4.finditer(text):
        out.append((m.start(), m.end(), "ipv4"))


def _scan_ipv6(text: str, out: list) -> None:
    for m in _IPV6.finditer(text):
        s = m.group()
        colons = s.count(":")
        if "::" not in s and colons < (6 if "." in s else 7):
            continue  # too few groups: a time "12:34:56", a MAC address
        if colons < 3 and not any(ch in _DIGITS for ch in s):
            continue  # "a::b", "dead::beef": more likely code than an address
        try:
            ipaddress.IPv6Address(s)
        except ValueError:
            continue
        out.append((m.start(), m.end(), "ipv6"))


def _scan_jwt(text: str, out: list) -> None:
    for m in _JWT.finditer(text):
        out.append((m.start(), m.end(), "jwt"))


def _scan_api_key(text: str, out: list) -> None:
    for m in _API_KEY.finditer(text):
        if m.group("bearer") is not None:
            token = m.group("bearer")
            if _TOKEN_SYMBOLS.search(token) is None:
                continue  # "Bearer" followed by a plain long word
            out.append((m.start("bearer"), m.end("bearer"), "api_key"))
        else:
            out.append((m.start(), m.end(), "api_key"))


def _scan_iban(text: str, out: list) -> None:
    for m in _IBAN.finditer(text):
        cand = m.group()
        # A following word in capitals may have been taken as a last group:
        # drop trailing space-separated groups until the checksum holds.
        while True:
            if iban_valid(cand):
                out.append((m.start(), m.start() + len(cand), "iban"))
                break
            cut = cand.rfind(" ")
            if cut < 15:
                break
            cand = cand[:cut]


# ---------------------------------------------------------------------------


def find(text: str, types: frozenset[str]) -> list[Match]:
    """Matches of the given semantic types in ``text``: non-overlapping, sorted by start.

    Where matches of different types overlap, they are merged into one span
    whose type is the one earliest in ``_PRIORITY`` (an e-mail address whose
    local part looks like an SSN is one e-mail match), so no part of either
    value is left unmasked. Types without a built-in detector are ignored.
    """
    try:
        if len(text) < 3 or not types:
            return []
        found: list = []
        if "email" in types and "@" in text:
            _scan_email(text, found)
        # Cards, SSNs, phone numbers and IBANs all have at least 9 digits.
        has9 = _AT_LEAST_9_DIGITS.match(text) is not None
        if has9 and ("credit_card" in types or "us_ssn" in types or "phone" in types):
            for start, end in _number_regions(text):
                if "credit_card" in types:
                    _scan_cards(text, start, end, found)
                if "us_ssn" in types:
                    _scan_ssn(text, start, end, found)
                if "phone" in types:
                    _scan_phone(text, start, end, found)
        if "iban" in types and has9:
            _scan_iban(text, found)
        if "ipv4" in types and text.count(".") >= 3:
            _scan_ipv4(text, found)
        if "ipv6" in types and ("::" in text or text.count(":") >= 6):
            _scan_ipv6(text, found)
        if "jwt" in types and "eyJ" in text:
            _scan_jwt(text, found)
        if "api_key" in types and (
            "AKIA" in text or "ASIA" in text or "gh" in text or "github_pat_" in text
            or "xox" in text or "k_live_" in text
            or "AIza" in text or "PRIVATE KEY" in text or "earer" in text or "EARER" in text
        ):
            _scan_api_key(text, found)
        if not found:
            return []
        if len(found) == 1:
            s, e, t = found[0]
            return [Match(s, e, t)]
        return [Match(s, e, t) for s, e, t in merge_spans(found)]
    except Exception:  # a detector bug must not leak the value: mask it all
        return _fail_closed(text, types)


def merge_spans(spans: list) -> list:
    """Merge overlapping ``(start, end, type)`` spans; the highest-priority type names each merged span."""
    spans = sorted(spans, key=lambda s: (s[0], -s[1]))
    merged = [list(spans[0])]
    for s, e, t in spans[1:]:
        last = merged[-1]
        if s < last[1]:
            if e > last[1]:
                last[1] = e
            if _RANK.get(t, _RANK_OTHER) < _RANK.get(last[2], _RANK_OTHER):
                last[2] = t
        else:
            merged.append([s, e, t])
    return [tuple(m) for m in merged]


def _fail_closed(text: str, types: frozenset[str]) -> list[Match]:
    try:
        if not text or not types:
            return []
        typ = min(types, key=lambda t: (_RANK.get(t, _RANK_OTHER), t))
        return [Match(0, len(text), typ)]
    except Exception:
        return []


# ---------------------------------------------------------------------------
# Plug-ins

#: Presidio entity -> semantic type.
_PRESIDIO_ENTITIES = {
    "PERSON": "person",
    "EMAIL_ADDRESS": "email",
    "PHONE_NUMBER": "phone",
    "CREDIT_CARD": "credit_card",
    "US_SSN": "us_ssn",
    "IBAN_CODE": "iban",
    "IP_ADDRESS": "ipv4",  # refined to ipv6 when the match contains ':'
}


class _PresidioDetector:
    """Wraps a Presidio ``AnalyzerEngine``; reports only the configured ``types``.

    Options: ``types`` (list of semantic types, default ``["person"]``),
    ``language`` (default ``"en"``), ``score_threshold`` (default 0.5).
    If the analyzer fails on a value, the whole value is reported (fail closed).
    """

    def __init__(self, engine, options: dict) -> None:
        wanted = frozenset(options.get("types", ["person"]))
        known = frozenset(_PRESIDIO_ENTITIES.values()) | {"ipv6"}
        unknown = wanted - known
        if unknown:
            raise ValueError(f"presidio detector: cannot report types {sorted(unknown)}")
        self.types = wanted
        self._engine = engine
        self._language = str(options.get("language", "en"))
        self._threshold = float(options.get("score_threshold", 0.5))
        self._entities = sorted(
            e for e, t in _PRESIDIO_ENTITIES.items() if t in wanted or (e == "IP_ADDRESS" and "ipv6" in wanted)
        )

    def find(self, text: str) -> list[Match]:
        if not text or not text.strip():
            return []
        try:
            results = self._engine.analyze(
                text=text, language=self._language, entities=self._entities, score_threshold=self._threshold
            )
            spans = []
            for r in results:
                typ = _PRESIDIO_ENTITIES.get(r.entity_type)
                if typ == "ipv4" and ":" in text[r.start : r.end]:
                    typ = "ipv6"
                if typ in self.types and 0 <= r.start < r.end <= len(text):
                    spans.append((r.start, r.end, typ))
            return [Match(s, e, t) for s, e, t in merge_spans(spans)] if spans else []
        except Exception:
            return _fail_closed(text, self.types)


def load_plugin(name: str, options: dict) -> Detector:
    """A plug-in detector by name. Only ``"presidio"`` exists (needs ``presidio-analyzer``)."""
    if name != "presidio":
        raise ValueError(f"unknown detector plug-in {name!r} (known: presidio)")
    try:
        from presidio_analyzer import AnalyzerEngine  # type: ignore[import-not-found]
    except ImportError as exc:
        raise ValueError(
            "detector plug-in 'presidio' needs Presidio: pip install presidio-analyzer "
            "(and a spaCy model, e.g. python -m spacy download en_core_web_lg)"
        ) from exc
    return _PresidioDetector(AnalyzerEngine(), dict(options or {}))
