"""Property tests for masking: nothing raises, and masked output never carries
more of a card or SSN than the strategy allows."""

from __future__ import annotations

import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pgwarden.policy.masking.detectors import DETECTABLE, SEMANTIC_TYPES, find, iban_valid, luhn_valid
from pgwarden.policy.masking.strategies import STRATEGIES, Tokenizer, mask_detected, mask_string
from pgwarden.policy.masking.typed import detect_masker, value_masker, whole_masker

TOK = Tokenizer(b"p" * 32)
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Strings that look like numbers: digits with separators, the shapes detectors care about.
numberish = st.text(alphabet="0123456789 -+().", max_size=40)
mixed = st.one_of(st.text(max_size=60), numberish, st.text(alphabet="0123456789abcXYZ@.:- _", max_size=60))
any_types = st.frozensets(st.sampled_from(SEMANTIC_TYPES))

OIDS = [25, 1043, 1042, 19, 18, 705, 114, 3802, 21, 23, 20, 1700, 700, 701, 2950, 17, 869, 650, 16, 1082, 99999]


def digits(s: str) -> str:
    return re.sub(r"[^0-9]", "", s)


@FAST
@given(text=mixed, types=any_types)
def test_find_never_raises_and_is_well_formed(text, types):
    matches = find(text, types)
    last = 0
    for m in matches:
        assert last <= m.start < m.end <= len(text) and m.type in types
        last = m.end


@FAST
@given(text=mixed, types=any_types, strategy=st.sampled_from(STRATEGIES))
def test_mask_detected_never_raises(text, types, strategy):
    new, n = mask_detected(text, types, lambda t: strategy, tokenizer=TOK)
    if n == 0:
        assert new is text
    else:
        assert isinstance(new, str)


@FAST
@given(value=mixed, semantic=st.sampled_from(SEMANTIC_TYPES + ("other",)), strategy=st.sampled_from(STRATEGIES))
def test_mask_string_never_raises(value, semantic, strategy):
    out = mask_string(value, strategy, semantic, tokenizer=TOK, constant="C")
    assert out is None if strategy == "null" else isinstance(out, str)


@settings(max_examples=40, deadline=None)
@given(raw=st.binary(max_size=40), strategy=st.sampled_from(STRATEGIES), semantic=st.sampled_from(SEMANTIC_TYPES))
def test_typed_maskers_never_raise(raw, strategy, semantic):
    for oid in OIDS:
        for fmt in (0, 1):
            out = value_masker(strategy, semantic, oid, fmt, tokenizer=TOK, constant="1")(raw)
            assert out is None or isinstance(out, bytes)
            whole_masker(oid, fmt)(raw)
            m = detect_masker(DETECTABLE, lambda t: strategy, oid, fmt, tokenizer=TOK)
            if m is not None:
                res = m(raw)
                assert isinstance(res, bytes) or res is None


@FAST
@given(value=st.one_of(numberish, st.text(alphabet="0123456789", min_size=9, max_size=19)))
def test_card_and_ssn_masks_leak_nothing(value):
    d = digits(value)
    for semantic in ("credit_card", "us_ssn"):
        partial = mask_string(value, "partial", semantic, tokenizer=TOK)
        if len(d) >= 8:
            assert digits(partial) == d[-4:]
        else:
            assert digits(partial) == ""
        for strategy in ("redact", "null", "constant"):
            out = mask_string(value, strategy, semantic, tokenizer=TOK, constant="n/a")
            assert out is None or digits(out) == ""
        token = mask_string(value, "tokenize", semantic, tokenizer=TOK)
        if len(d) >= 9:
            assert d not in digits(token)


def luhn_complete(body: str) -> str:
    for check in "0123456789":
        if luhn_valid(body + check):
            return body + check
    raise AssertionError


cards = st.builds(
    lambda prefix, body: luhn_complete(prefix + body),
    st.sampled_from(["4", "51", "37", "6011"]),
    st.text(alphabet="0123456789", min_size=11, max_size=14),
).filter(lambda c: c.strip("0") != "")
ssns = st.builds(
    lambda a, g, s, sep: f"{a:03d}{sep}{g:02d}{sep}{s:04d}",
    st.integers(1, 899).filter(lambda a: a != 666),
    st.integers(1, 99),
    st.integers(1, 9999),
    st.sampled_from(["-", " ", ""]),
)
# Filler that cannot glue itself to the number: letters and punctuation, spaced off.
filler = st.text(alphabet="abcdefghij XYZ,;:!?", max_size=30).map(lambda s: f"{s} " if s else s)


@FAST
@given(card=cards, left=filler, right=filler, strategy=st.sampled_from(STRATEGIES))
def test_embedded_card_is_masked(card, left, right, strategy):
    text = f"{left}{card} {right}"
    new, n = mask_detected(text, DETECTABLE, lambda t: strategy, tokenizer=TOK)
    assert n >= 1 and card not in new and card not in digits(new)


@FAST
@given(ssn=ssns, left=filler, right=filler, strategy=st.sampled_from(STRATEGIES))
def test_embedded_ssn_is_masked(ssn, left, right, strategy):
    text = f"{left}{ssn} {right}"
    new, n = mask_detected(text, DETECTABLE, lambda t: strategy, tokenizer=TOK)
    assert n >= 1 and digits(ssn) not in digits(new)


@FAST
@given(card=cards, sep=st.sampled_from([" ", "-", ""]))
def test_card_tokens_are_luhn_valid(card, sep):
    grouped = sep.join(card[i : i + 4] for i in range(0, len(card), 4))
    token = TOK.text(grouped, "credit_card")
    assert len(token) == len(grouped) and luhn_valid(digits(token)) and digits(token) != card


@FAST
@given(country=st.sampled_from(["DE", "GB", "NO"]), bban=st.text(alphabet="0123456789ABC", min_size=11, max_size=30))
def test_iban_tokens_are_valid(country, bban):
    check = 98 - int("".join(c if c <= "9" else str(ord(c) - 55) for c in bban + country + "00")) % 97
    iban = f"{country}{check:02d}{bban}"
    assert iban_valid(iban)
    token = TOK.text(iban, "iban")
    assert iban_valid(token) and token[:2] == country and len(token) == len(iban) and token != iban
