"""Masking of single values: detectors, strategies, tokenizer and typed wire maskers.

Every typed output is decoded by hand (struct, ipaddress, uuid) and also
loaded with psycopg 3's own loaders, which parse exactly what a client would.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import re
import struct
import uuid

import pytest
from psycopg.adapt import Transformer
from psycopg.pq import Format

from pgwarden.policy.masking.detectors import (
    DETECTABLE,
    SEMANTIC_TYPES,
    Match,
    find,
    iban_valid,
    load_plugin,
    luhn_valid,
)
from pgwarden.policy.masking.strategies import STRATEGIES, Tokenizer, mask_detected, mask_string
from pgwarden.policy.masking.typed import TEXT_LIKE, detect_masker, value_masker, whole_masker

KEY = b"k" * 32
TOK = Tokenizer(KEY)
CARD = "4111 1111 1111 1111"
IBAN = "DE89 3704 0044 0532 0130 00"


def found(text: str, types=DETECTABLE) -> list[tuple[str, str]]:
    return [(text[m.start : m.end], m.type) for m in find(text, frozenset(types))]


def load(oid: int, fmt: int, data: bytes | None):
    """What psycopg 3 makes of a wire value (raises if a client could not parse it)."""
    assert data is not None
    return Transformer().get_loader(oid, Format(fmt)).load(data)


# ---------------------------------------------------------------- detectors


def test_semantic_types():
    assert DETECTABLE == frozenset(SEMANTIC_TYPES) - {"person", "text"}
    assert Match(1, 2, "email").type == "email"


@pytest.mark.parametrize(
    "text, value, typ",
    [
        ("mail alice.smith+tag@example.co.uk now", "alice.smith+tag@example.co.uk", "email"),
        ("<bob@sub.example.org>", "bob@sub.example.org", "email"),
        ("call +1 (415) 555-0123 today", "+1 (415) 555-0123", "phone"),
        ("tel: +442079460958", "+442079460958", "phone"), ("office 415-555-0123.", "415-555-0123", "phone"),
        ("(415) 555-0123", "(415) 555-0123", "phone"), ("London 020 7946 0958", "020 7946 0958", "phone"),
        ("card 4111 1111 1111 1111.", CARD, "credit_card"),
        ("4111-1111-1111-1111", "4111-1111-1111-1111", "credit_card"),
        ("amex 378282246310005", "378282246310005", "credit_card"),
        ("ref 12 4111 1111 1111 1111 x", CARD, "credit_card"), ("ssn 123-45-6789", "123-45-6789", "us_ssn"),
        ("ssn 123 45 6789", "123 45 6789", "us_ssn"), ("ssn=123456789;", "123456789", "us_ssn"),
        (f"IBAN {IBAN} EUR", IBAN, "iban"), ("GB82WEST12345698765432", "GB82WEST12345698765432", "iban"),
        ("from 10.0.0.1:5432", "10.0.0.1", "ipv4"), ("255.255.255.255", "255.255.255.255", "ipv4"),
        ("host fe80::1 up", "fe80::1", "ipv6"),
        ("2001:db8:85a3::8a2e:370:7334", "2001:db8:85a3::8a2e:370:7334", "ipv6"),
        ("::ffff:10.0.0.1", "::ffff:10.0.0.1", "ipv6"),
        ("t=eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln-_x", "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln-_x", "jwt"),
        ("key AKIAIOSFODNN7EXAMPLE", "AKIAIOSFODNN7EXAMPLE", "api_key"),
        ("ghp_" + "a1" * 18, "ghp_" + "a1" * 18, "api_key"),
        ("github_pat_11ABCDEFG0123456789abcdef_xyz", "github_pat_11ABCDEFG0123456789abcdef_xyz", "api_key"),
        ("xoxb-1234-5678-abcdefghij", "xoxb-1234-5678-abcdefghij", "api_key"),
        ("sk_live_" + "4eC39HqLyjWDarjtT1zdp7dc", "sk_live_4eC39HqLyjWDarjtT1zdp7dc", "api_key"),
        ("AIza" + "B" * 35, "AIza" + "B" * 35, "api_key"),
        ("Authorization: Bearer abc123def456ghi789jkl", "abc123def456ghi789jkl", "api_key"),
    ],
)
def test_detector_positives(text, value, typ):
    assert found(text) == [(value, typ)]


def test_pem_private_key_is_masked_whole():
    pem = "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA\n-----END RSA PRIVATE KEY-----"
    assert found(f"key:\n{pem}\nafter") == [(pem, "api_key")]
    truncated = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBg"
    assert found(truncated) == [(truncated, "api_key")]


@pytest.mark.parametrize(
    "text",
    [
        "Lorem ipsum dolor sit amet, consectetur.",
        "not an email: a@b, x@localhost",
        "4111-1111-1111-1112",  # Luhn-invalid
        "order 1234567890123456",  # Luhn-invalid order number
        "0000 0000 0000 0000",
        "x4111111111111111",  # glued to a word
        "pi 3.14111111111111111",  # decimals
        "000-12-3456", "666-12-3456", "923-12-3456", "123-00-4567", "123-45-0000",
        "1234567890",  # 10 bare digits: neither SSN nor phone
        "12345678901",
        "12 123 45 6789", "123 45 6789 12", "123-45-6789-1", "0.123456789",
        "2024-01-02", "2024-01-02 12:30:45", "01.02.2024 12:30",
        "DE89 3704 0044 0532 0130 01",  # bad IBAN checksum
        "256.1.1.1", "1.2.3.4.5", "10.0.0", "01.02.03.04",
        "a::b", "std::vector", "12:30:45", "00:1a:2b:3c:4d:5e",
        "eyJhbGci", "AKIA123", "Bearer of bad news", "bearer instrumentalities",
    ],
)
def test_detector_negatives(text):
    assert found(text) == []


def test_find_only_given_types_sorted_and_merged():
    text = "bob@x.com 123-45-6789 4111111111111111"
    assert found("4111111111111111 123-45-6789") == [("4111111111111111", "credit_card"), ("123-45-6789", "us_ssn")]
    assert found(text, {"us_ssn"}) == [("123-45-6789", "us_ssn")]
    assert [t for _, t in found(text)] == ["email", "us_ssn", "credit_card"]
    # An e-mail whose local part looks like an SSN is one e-mail match.
    assert found("john.123456789@x.com") == [("john.123456789@x.com", "email")]
    assert find("", DETECTABLE) == [] and find("abc", frozenset()) == []
    assert find("bob@x.com", frozenset({"person", "text"})) == []


def test_find_never_raises_on_odd_input():
    for text in ["\ud800@\udfff.com", "\0" * 100, "1" * 100_000, "@" * 50_000 + ".com", "+" + "1 " * 10_000]:
        find(text, DETECTABLE)


def test_checksums():
    assert luhn_valid("4111111111111111") and luhn_valid("378282246310005")
    assert not luhn_valid("4111111111111112") and not luhn_valid("41a1") and not luhn_valid("")
    assert iban_valid(IBAN) and iban_valid(IBAN.replace(" ", "")) and iban_valid("gb82west12345698765432")
    assert not iban_valid("DE89 3704 0044 0532 0130 01") and not iban_valid("DE89") and not iban_valid("")


def test_plugins():
    with pytest.raises(ValueError, match="pip install presidio-analyzer"):
        load_plugin("presidio", {})
    with pytest.raises(ValueError, match="unknown detector"):
        load_plugin("nope", {})


def test_presidio_wrapper_maps_entities_and_fails_closed():
    from types import SimpleNamespace as R

    from pgwarden.policy.masking.detectors import _PresidioDetector

    class Engine:
        def analyze(self, text, language, entities, score_threshold):
            if "boom" in text:
                raise RuntimeError("model failed")
            return [R(entity_type="PERSON", start=0, end=5), R(entity_type="IP_ADDRESS", start=6, end=9)]

    det = _PresidioDetector(Engine(), {"types": ["person", "ipv6"]})
    assert det.find("Alice ::1") == [Match(0, 5, "person"), Match(6, 9, "ipv6")]
    assert [(m.start, m.end) for m in det.find("boom")] == [(0, 4)]  # the whole value
    with pytest.raises(ValueError):
        _PresidioDetector(Engine(), {"types": ["jwt"]})


# ---------------------------------------------------------------- tokenizer


def test_tokenizer_is_keyed_hmac_and_deterministic():
    assert TOK._mac("email", b"x") == hmac.digest(KEY, b"email\0x", "sha256")
    long_key = bytes(range(100))
    assert Tokenizer(long_key)._mac("a", b"b") == hmac.digest(long_key, b"a\0b", "sha256")
    other = Tokenizer(b"o" * 32)
    for sem in SEMANTIC_TYPES:
        value = {"credit_card": CARD, "us_ssn": "123-45-6789", "iban": IBAN}.get(sem, "value-1@example.com")
        assert TOK.text(value, sem) == Tokenizer(KEY).text(value, sem)
        assert TOK.text(value, sem) != other.text(value, sem)
    assert TOK.integer(b"1", 32) == Tokenizer(KEY).integer(b"1", 32) != other.integer(b"1", 32)
    assert TOK.digest(b"1", 40) == Tokenizer(KEY).digest(b"1", 40) and len(TOK.digest(b"1", 40)) == 40
    for bits in (16, 32, 64):
        assert all(0 <= TOK.integer(bytes([i]), bits) < 2 ** (bits - 1) for i in range(50))
    with pytest.raises(ValueError):
        Tokenizer(b"short")


def test_tokenizer_cache_is_bounded():
    tok = Tokenizer(KEY, cache_size=10)
    first = tok.text("v0", "text")
    for i in range(25):
        tok.text(f"v{i}", "text")
    assert len(tok._text) <= 10 and tok.text("v0", "text") == first


def test_tokens_are_format_preserving():
    for card in [CARD, "4111-1111-1111-1111", "378282246310005", "5555555555554444"]:
        tok = TOK.text(card, "credit_card")
        assert len(tok) == len(card) and re.sub(r"\d", "9", tok) == re.sub(r"\d", "9", card)
        assert luhn_valid(tok.replace(" ", "").replace("-", "")) and tok != card
    for ssn in ["123-45-6789", "123 45 6789", "123456789"]:
        tok = TOK.text(ssn, "us_ssn")
        assert re.sub(r"\d", "9", tok) == re.sub(r"\d", "9", ssn)
        digits = tok.replace("-", "").replace(" ", "")
        assert digits[:3] not in ("000", "666") and digits[0] != "9"
        assert digits[3:5] != "00" and digits[5:] != "0000"
    phone = TOK.text("+1 (415) 555-0123", "phone")
    assert re.fullmatch(r"\+[1-9] \(\d{3}\) \d{3}-\d{4}", phone) and phone != "+1 (415) 555-0123"
    iban = TOK.text(IBAN, "iban")
    assert iban.startswith("DE") and len(iban) == len(IBAN) and iban_valid(iban) and iban != IBAN
    assert [m.type for m in find(iban, DETECTABLE)] == ["iban"]
    email = TOK.text("Alice@Example.com", "email")
    assert re.fullmatch(r"[0-9a-f]{10}@[0-9a-f]{8}\.invalid", email)
    assert found(email) == [(email, "email")]
    # The domain part is shared by addresses of one domain (analytics by domain still work).
    assert TOK.text("bob@example.com", "email").split("@")[1] == email.split("@")[1]
    ipaddress.IPv4Address(TOK.text("10.1.2.3", "ipv4"))
    ipaddress.IPv6Address(TOK.text("2001:db8::1", "ipv6"))
    for sem in ("jwt", "api_key", "person", "text", "whatever"):
        assert re.fullmatch(r"tok_[0-9a-f]{16}", TOK.text("secret value 123456789", sem))
    # Values of the wrong shape get a generic token, copying nothing.
    assert re.fullmatch(r"tok_[0-9a-f]{16}", TOK.text("card 4111 1111 1111 1111", "credit_card"))
    assert re.fullmatch(r"tok_[0-9a-f]{16}", TOK.text("12-345-6789", "us_ssn"))


def test_equal_values_equal_tokens_across_columns():
    a = value_masker("tokenize", "email", 25, 0, tokenizer=TOK)
    b = value_masker("tokenize", "email", 1043, 1, tokenizer=TOK)
    c = value_masker("tokenize", "email", 3802, 1, tokenizer=TOK)
    assert a(b"x@y.com") == b(b"x@y.com") and c(b'\x01"x@y.com"') == b'\x01"' + a(b"x@y.com") + b'"'
    assert a(b"x@y.com") != value_masker("tokenize", "text", 25, 0, tokenizer=TOK)(b"x@y.com")
    i4 = value_masker("tokenize", "customer", 23, 0, tokenizer=TOK)
    assert i4(b"42") == i4(b"42") == str(struct.unpack("!i", value_masker(
        "tokenize", "customer", 23, 1, tokenizer=TOK)(struct.pack("!i", 42)))[0]).encode()


# ---------------------------------------------------------------- strings


@pytest.mark.parametrize(
    "semantic, value, partial",
    [
        ("credit_card", CARD, "**** **** **** 1111"), ("credit_card", "4111-1111-1111-1111", "****-****-****-1111"),
        ("credit_card", "4111111111111111", "************1111"), ("credit_card", "12345", "*****"),
        ("us_ssn", "123-45-6789", "***-**-6789"), ("us_ssn", "123456789", "*****6789"),
        ("phone", "+1 (415) 555-0123", "+* (***) ***-0123"), ("email", "alice@example.com", "****@example.com"),
        ("email", "no-at-sign", "####"),
        ("iban", IBAN, "DE** **** **** **** **30 00"), ("ipv4", "10.1.2.3", "10.*.*.*"),
        ("ipv4", "nonsense", "####"),
        ("ipv6", "2001:db8::1", "2001:*:*:*:*:*:*:*"), ("jwt", "eyJhbGciOiJIUzI1NiJ9.e30.x", "eyJh****"),
        ("api_key", "AKIAIOSFODNN7EXAMPLE", "AKIA****"),
        ("api_key", "short", "####"),
        ("person", "Alice Smith", "****mith"),
        ("text", "abcd", "####"),
        ("other", "hello world", "****orld"),
    ],
)
def test_partial(semantic, value, partial):
    assert mask_string(value, "partial", semantic, tokenizer=TOK, redaction="####") == partial


def test_other_strategies():
    for sem in SEMANTIC_TYPES:
        assert mask_string("v@x.com", "redact", sem, tokenizer=TOK) == "****"
        assert mask_string("v@x.com", "redact", sem, tokenizer=TOK, redaction="[x]") == "[x]"
        assert mask_string("v@x.com", "null", sem, tokenizer=TOK) is None
        assert mask_string("v@x.com", "constant", sem, tokenizer=TOK, constant="C") == "C"
        assert mask_string("v@x.com", "constant", sem, tokenizer=TOK) == "****"
    with pytest.raises(ValueError):
        mask_string("v", "scramble", "text", tokenizer=TOK)


def test_mask_detected():
    text = "mail bob@x.com card 4111111111111111 ssn 123-45-6789."
    strategies = {"email": "partial", "credit_card": "tokenize", "us_ssn": "null"}
    new, n = mask_detected(text, DETECTABLE, strategies.__getitem__, tokenizer=TOK)
    card_tok = TOK.text("4111111111111111", "credit_card")
    assert (new, n) == (f"mail ****@x.com card {card_tok} ssn ****.", 3)
    new, n = mask_detected(text, frozenset({"us_ssn"}), lambda t: "constant", tokenizer=TOK, redaction="X")
    assert (new, n) == ("mail bob@x.com card 4111111111111111 ssn X.", 1)
    plain = "nothing to see here 12345"
    assert mask_detected(plain, DETECTABLE, lambda t: "redact", tokenizer=TOK)[0] is plain


class _Names:
    """A plug-in detector stand-in (the real one wraps Presidio)."""

    types = frozenset({"person"})

    def find(self, text):
        i = text.find("Alice Smith")
        return [] if i < 0 else [Match(i, i + 11, "person")]


def test_mask_detected_with_plugin_detectors():
    text = "Alice Smith <alice@x.com>"
    both = frozenset({"person", "email"})
    new, n = mask_detected(text, both, lambda t: "redact", tokenizer=TOK, detectors=[_Names()])
    assert (new, n) == ("**** <****>", 2)
    # Only the requested types count.
    new, n = mask_detected(text, frozenset({"email"}), lambda t: "redact", tokenizer=TOK, detectors=[_Names()])
    assert (new, n) == ("Alice Smith <****>", 1)


# ---------------------------------------------------------------- typed


def vm(strategy, oid, fmt, semantic="text", constant=None):
    return value_masker(strategy, semantic, oid, fmt, tokenizer=TOK, constant=constant)


def test_text_like_types():
    assert TEXT_LIKE == {25, 1043, 1042, 19, 18, 705}
    for oid in TEXT_LIKE:
        for fmt in (0, 1):
            assert vm("redact", oid, fmt)(b"x") == b"****"
            assert vm("partial", oid, fmt, "email")(b"al@ex.com") == b"****@ex.com"
            assert vm("tokenize", oid, fmt, "email")(b"al@ex.com") == TOK.text("al@ex.com", "email").encode()
            assert vm("null", oid, fmt)(b"x") is None
            assert vm("constant", oid, fmt, constant="n/a")(b"x") == b"n/a"
            assert vm("partial", oid, fmt)(b"\xff\xfe") == b"****"  # not UTF-8
    assert vm("tokenize", 1042, 0)(b"ab  ") == vm("tokenize", 25, 0)(b"ab")  # char(n) padding


def test_json_types():
    for oid, fmt, pre in [(114, 0, b""), (114, 1, b""), (3802, 0, b""), (3802, 1, b"\x01")]:
        assert vm("redact", oid, fmt)(pre + b'{"a": 1}') == pre + b'"****"'
        assert vm("partial", oid, fmt, "email")(pre + b'"al@ex.com"') == pre + b'"****@ex.com"'
        tok = vm("tokenize", oid, fmt, "email")(pre + b'"al@ex.com"')
        assert json.loads(tok[len(pre) :]) == TOK.text("al@ex.com", "email")
        assert vm("constant", oid, fmt, constant='say "hi"')(pre + b"1") == pre + b'"say \\"hi\\""'
        assert vm("partial", oid, fmt)(pre + b"{bad") == pre + b'"****"'
        assert vm("null", oid, fmt)(pre + b"1") is None
        for s in STRATEGIES:
            out = vm(s, oid, fmt, constant="c")(pre + b'[1, "x"]')
            assert out is None or load(oid, fmt, out) is not None


def test_integer_types():
    for oid, size in [(21, 2), (23, 4), (20, 8)]:
        code = {2: "!h", 4: "!i", 8: "!q"}[size]
        for fmt in (0, 1):
            def enc(n, fmt=fmt, code=code):
                return str(n).encode() if fmt == 0 else struct.pack(code, n)

            raw = enc(-12345)
            assert vm("redact", oid, fmt)(raw) == enc(0)
            assert vm("partial", oid, fmt)(raw) == enc(2345)
            assert vm("null", oid, fmt)(raw) is None
            assert vm("constant", oid, fmt, constant="7")(raw) == enc(7)
            assert vm("constant", oid, fmt, constant="99999999999999999999")(raw) == enc(0)
            assert vm("constant", oid, fmt, constant="abc")(raw) == enc(0)
            tok = load(oid, fmt, vm("tokenize", oid, fmt, "id")(raw))
            assert 0 <= tok < 2 ** (size * 8 - 1) and tok != -12345
            assert vm("partial", oid, fmt)(b"garbage!!") == enc(0)
        assert vm("tokenize", oid, 1, "id")(struct.pack(code, 5)) == struct.pack(
            code, int(vm("tokenize", oid, 0, "id")(b"5"))
        )


def numeric_binary(ndigits, weight, sign, dscale, *digits):
    return struct.pack(f"!HhHH{len(digits)}H", ndigits, weight, sign, dscale, *digits)


def test_numeric():
    text, binary = b"-12345678.90", numeric_binary(3, 1, 0x4000, 2, 1234, 5678, 9000)
    assert load(1700, 1, binary) == load(1700, 0, text)
    assert vm("redact", 1700, 0)(text) == b"0"
    assert vm("redact", 1700, 1)(binary) == bytes(8) == numeric_binary(0, 0, 0, 0)
    assert vm("partial", 1700, 0)(text) == b"5678"
    assert vm("partial", 1700, 1)(binary) == numeric_binary(1, 0, 0, 0, 5678)
    tok_text = vm("tokenize", 1700, 0)(text)
    assert load(1700, 1, vm("tokenize", 1700, 1)(binary)) == int(tok_text) >= 0
    assert vm("tokenize", 1700, 0)(b"1.50") == vm("tokenize", 1700, 0)(b"1.5")
    assert vm("constant", 1700, 1, constant="-0.05")(binary) == numeric_binary(1, -1, 0x4000, 2, 500)
    assert vm("constant", 1700, 0, constant="x")(text) == b"0"
    assert vm("partial", 1700, 1)(b"\x00\x01") == bytes(8)  # garbage
    assert vm("partial", 1700, 1)(numeric_binary(0, 0, 0xC000, 0)) == bytes(8)  # NaN


def test_floats():
    for oid, code in [(700, "!f"), (701, "!d")]:
        for s in ("redact", "partial", "tokenize"):
            assert vm(s, oid, 0)(b"3.25") == b"0"
            assert vm(s, oid, 1)(struct.pack(code, 3.25)) == struct.pack(code, 0.0)
        assert vm("null", oid, 0)(b"1") is None
        assert struct.unpack(code, vm("constant", oid, 1, constant="2.5")(b""))[0] == 2.5


def test_uuid():
    u = uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")
    assert vm("redact", 2950, 0)(str(u).encode()) == b"00000000-0000-0000-0000-000000000000"
    assert vm("redact", 2950, 1)(u.bytes) == bytes(16)
    assert vm("partial", 2950, 0)(str(u).encode()) == b"00000000-0000-0000-0000-000000000a11"
    tok = uuid.UUID(vm("tokenize", 2950, 0)(str(u).encode()).decode())
    assert tok.version == 4 and tok.variant == uuid.RFC_4122 and tok != u
    assert vm("tokenize", 2950, 1)(u.bytes) == tok.bytes
    assert load(2950, 0, vm("constant", 2950, 0, constant=str(u))(b"x")) == u
    assert vm("tokenize", 2950, 0)(b"not-a-uuid") == b"00000000-0000-0000-0000-000000000000"


def test_bytea():
    assert vm("redact", 17, 0)(b"\\xdeadbeef") == b"\\x" and vm("partial", 17, 1)(b"\xde") == b""
    tok = vm("tokenize", 17, 0)(b"\\xdeadbeef")
    assert re.fullmatch(rb"\\x[0-9a-f]{32}", tok)
    assert vm("tokenize", 17, 1)(b"\xde\xad\xbe\xef") == load(17, 0, tok)
    assert vm("constant", 17, 0, constant="hi")(b"") == b"\\x6869"


def inet_bin(addr: str, prefix: int, is_cidr: int) -> bytes:
    ip = ipaddress.ip_address(addr)
    return bytes((2 if ip.version == 4 else 3, prefix, is_cidr, len(ip.packed))) + ip.packed


def test_inet_cidr():
    assert vm("redact", 869, 0)(b"10.1.2.3") == b"0.0.0.0" and vm("redact", 650, 0)(b"10.0.0.0/8") == b"0.0.0.0/32"
    assert vm("redact", 869, 1)(inet_bin("10.1.2.3", 32, 0)) == inet_bin("0.0.0.0", 32, 0)
    assert vm("redact", 650, 1)(inet_bin("10.0.0.0", 8, 1)) == inet_bin("0.0.0.0", 32, 1)
    assert vm("partial", 869, 0)(b"10.1.2.3") == b"10.0.0.0"
    assert vm("partial", 869, 0)(b"192.168.1.5/24") == b"192.0.0.0/24"
    assert vm("partial", 869, 0)(b"2001:db8::1") == b"2001::"
    assert vm("partial", 869, 1)(inet_bin("10.1.2.3", 32, 0)) == inet_bin("10.0.0.0", 32, 0)
    assert vm("partial", 650, 0)(b"172.16.0.0/4") == b"160.0.0.0/4"  # no host bits in a cidr
    tok4 = vm("tokenize", 869, 0)(b"10.1.2.3")
    assert ipaddress.ip_address(tok4.decode()).version == 4 and tok4 != b"10.1.2.3"
    assert tok4.decode() == TOK.text("10.1.2.3", "ipv4")  # joins with text columns of IPs
    assert vm("tokenize", 869, 1)(inet_bin("10.1.2.3", 32, 0)) == inet_bin(tok4.decode(), 32, 0)
    assert ipaddress.ip_address(vm("tokenize", 869, 0)(b"::1").decode()).version == 6
    net = vm("tokenize", 650, 0)(b"10.20.0.0/16").decode()
    assert ipaddress.ip_network(net).prefixlen == 16  # strict: host bits are zero
    assert vm("constant", 869, 0, constant="1.2.3.4")(b"") == b"1.2.3.4"
    assert vm("constant", 650, 0, constant="1.2.3.4/8")(b"") == b"0.0.0.0/32"  # not a valid cidr
    assert vm("partial", 869, 1)(b"\x07\x00") == inet_bin("0.0.0.0", 32, 0)


def test_other_types_are_null():
    for oid in (16, 1082, 1114, 1184, 1007, 3904, 2249, 99999):
        for fmt in (0, 1):
            for s in STRATEGIES:
                assert vm(s, oid, fmt, constant="c")(b"anything") is None
            assert whole_masker(oid, fmt)(b"x") is None
            assert detect_masker(DETECTABLE, lambda t: "redact", oid, fmt, tokenizer=TOK) is None


ALL_TYPES = [25, 1043, 1042, 19, 18, 705, 114, 3802, 21, 23, 20, 1700, 700, 701, 2950, 17, 869, 650]


@pytest.mark.parametrize("oid", ALL_TYPES)
@pytest.mark.parametrize("fmt", [0, 1])
def test_whole_masker_is_valid_for_the_type(oid, fmt):
    out = whole_masker(oid, fmt, redaction="[hidden]")(b"whatever")
    value = load(oid, fmt, out)
    zeros = (0, b"", ipaddress.ip_address("0.0.0.0"), ipaddress.ip_network("0.0.0.0/32"), uuid.UUID(int=0))
    assert value in ("[hidden]", b"[hidden]", *zeros)


SAMPLES = {
    (21, 1): struct.pack("!h", -7), (23, 1): struct.pack("!i", 123456), (20, 1): struct.pack("!q", -(2**40)),
    (1700, 1): numeric_binary(2, 0, 0, 4, 12, 3400), (700, 1): struct.pack("!f", 1.5),
    (701, 1): struct.pack("!d", 1.5), (2950, 1): uuid.uuid4().bytes, (17, 1): b"\x00\xff",
    (869, 1): inet_bin("2001:db8::1", 64, 0), (650, 1): inet_bin("10.0.0.0", 8, 1), (3802, 1): b'\x01{"a": [1]}',
    (21, 0): b"-7", (23, 0): b"123456", (20, 0): b"-1099511627776", (1700, 0): b"12.3400", (700, 0): b"1.5",
    (701, 0): b"1.5", (2950, 0): b"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", (17, 0): b"\\x00ff",
    (869, 0): b"2001:db8::1/64", (650, 0): b"10.0.0.0/8", (3802, 0): b'{"a": [1]}', (114, 0): b"[1]",
    (114, 1): b"[1]",
}


@pytest.mark.parametrize("key", sorted(SAMPLES))
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_masked_value_loads_in_psycopg(key, strategy):
    oid, fmt = key
    out = vm(strategy, oid, fmt, "text", constant="12")(SAMPLES[key])
    if strategy == "null":
        assert out is None
    else:
        load(oid, fmt, out)


def test_detect_masker_text():
    m = detect_masker(DETECTABLE, lambda t: "partial", 25, 0, tokenizer=TOK)
    raw = b"nothing here 2024-01-02"
    assert m(raw) is raw
    assert m(b"card 4111111111111111 ok") == b"card ************1111 ok"
    assert m(b"\xff bob@x.com") == b"****"
    assert detect_masker(frozenset({"text"}), lambda t: "redact", 25, 0, tokenizer=TOK)(raw) is raw
    binary = detect_masker(DETECTABLE, lambda t: "redact", 1043, 1, tokenizer=TOK)
    assert binary(b"mail bob@x.com") == b"mail ****"


def test_detect_masker_json():
    m = detect_masker(DETECTABLE, lambda t: "partial", 3802, 1, tokenizer=TOK)
    raw = b'\x01{"a": 1.10, "b": "plain"}'
    assert m(raw) is raw
    doc = b'\x01{"email": "bob@x.com", "n": 123456789, "f": 1.10, "l": [true, null, "4111 1111 1111 1111"]}'
    out = m(doc)
    assert out == b'\x01{"email": "****@x.com", "n": "*****6789", "f": 1.10, "l": [true, null, "**** **** **** 1111"]}'
    assert load(3802, 1, out)["n"] == "*****6789"
    j = detect_masker(DETECTABLE, lambda t: "redact", 114, 0, tokenizer=TOK)
    assert j(b'{"x": "123-45-6789", "x": 1}') == b'{"x": "****", "x": 1}'  # duplicate keys kept
    assert j(b'{"bob@x.com": 1}') == b'{"****": 1}'  # keys too
    assert j(b"{bad 123-45-6789") == b'"****"'
    assert j(b"[" * 100_000 + b"123-45-6789") == b'"****"'


def test_maskers_accept_any_bytes_like():
    for raw in (bytearray(b"al@ex.com"), memoryview(b"al@ex.com")):
        assert vm("partial", 25, 0, "email")(raw) == b"****@ex.com"
        assert detect_masker(DETECTABLE, lambda t: "redact", 25, 0, tokenizer=TOK)(raw) == b"****"
    assert vm("partial", 23, 1)(bytearray(struct.pack("!i", 12345))) == struct.pack("!i", 2345)


def test_builders_validate_up_front():
    with pytest.raises(ValueError):
        vm("scramble", 25, 0)
    with pytest.raises(ValueError):
        vm("redact", 25, 2)
    with pytest.raises(ValueError):
        whole_masker(25, 7)
