"""Access-token validation against a real (local) OIDC issuer.

The issuer is an ``http.server`` on 127.0.0.1 serving discovery and JWKS
documents the tests can change (key rotation) and stop (outage), and it
counts requests so caching and rate limiting are asserted, not assumed.
Cache time is a fake clock; token times use the wall clock because PyJWT
checks ``exp``/``nbf`` against it.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import threading
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from pgwarden.identity import (
    MAX_TOKEN_BYTES,
    DevIssuer,
    Identity,
    IssuerSettings,
    JwksCache,
    TokenRejected,
    TokenValidator,
)
from pgwarden.identity.dev_issuer import jwk_thumbprint

AUD = "pgwarden-gw"

# ------------------------------------------------------------------ keys


def _public_jwk(private: Any, kid: str) -> dict[str, Any]:
    if isinstance(private, rsa.RSAPrivateKey):
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key()))
    else:
        jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(private.public_key()))
    jwk["kid"] = kid
    return jwk


@pytest.fixture(scope="module")
def keys() -> dict[str, Any]:
    return {
        "rsa1": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "rsa2": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "ec1": ec.generate_private_key(ec.SECP256R1()),
        "ec_other": ec.generate_private_key(ec.SECP256R1()),
    }


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(iss: str, **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {"iss": iss, "aud": AUD, "sub": "alice", "iat": now, "nbf": now, "exp": now + 600}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def sign(private: Any, alg: str, kid: str | None, payload: dict[str, Any], **headers: Any) -> str:
    if kid is not None:
        headers["kid"] = kid
    return jwt.encode(payload, private, algorithm=alg, headers=headers or None)


# ------------------------------------------------------------------ issuer


class FakeIdP:
    """A tiny OIDC issuer: serves ``docs`` by path and counts the requests."""

    def __init__(self) -> None:
        self.docs: dict[str, Any] = {}
        self.hits: Counter[str] = Counter()
        self._lock = threading.Lock()
        idp = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server API
                with idp._lock:
                    idp.hits[self.path] += 1
                    doc = idp.docs.get(self.path)
                body = json.dumps(doc).encode() if doc is not None else b"{}"
                self.send_response(200 if doc is not None else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        # A short poll interval keeps shutdown() (every test teardown) fast.
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )
        self._thread.start()
        self.running = True

    def add_issuer(self, name: str, jwks: list[dict[str, Any]], discovery: bool = True) -> str:
        issuer = f"{self.url}/realms/{name}"
        if discovery:
            self.docs[f"/realms/{name}/.well-known/openid-configuration"] = {
                "issuer": issuer,
                "jwks_uri": f"{issuer}/certs",
            }
        self.set_keys(name, jwks)
        return issuer

    def set_keys(self, name: str, jwks: list[dict[str, Any]]) -> None:
        self.docs[f"/realms/{name}/certs"] = {"keys": jwks}

    def discovery_hits(self, name: str) -> int:
        return self.hits[f"/realms/{name}/.well-known/openid-configuration"]

    def jwks_hits(self, name: str) -> int:
        return self.hits[f"/realms/{name}/certs"]

    def total_hits(self) -> int:
        return sum(self.hits.values())

    def stop(self) -> None:
        if self.running:
            self.running = False
            self.server.shutdown()
            self.server.server_close()


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    # httpx honours proxy variables even for 127.0.0.1; the fake issuer is local.
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def idp() -> Iterator[FakeIdP]:
    server = FakeIdP()
    try:
        yield server
    finally:
        server.stop()


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def cache(clock: FakeClock) -> JwksCache:
    return JwksCache(ttl=300, min_refetch_interval=30, http_timeout=2, clock=clock)


@pytest.fixture
def realm(idp: FakeIdP, keys: dict[str, Any]) -> str:
    """Issuer ``a``: found through discovery, one RSA and one EC key."""
    return idp.add_issuer("a", [_public_jwk(keys["rsa1"], "rsa1"), _public_jwk(keys["ec1"], "ec1")])


def make_validator(cache: JwksCache, *settings: IssuerSettings, dev: DevIssuer | None = None) -> TokenValidator:
    return TokenValidator(list(settings), cache, dev_issuer=dev)


def run(validator: TokenValidator, token: str) -> Identity:
    return asyncio.run(validator.validate(token))


def rejected(validator: TokenValidator, token: str) -> TokenRejected:
    with pytest.raises(TokenRejected) as info:
        run(validator, token)
    return info.value


# ------------------------------------------------------------------ happy paths


def test_valid_rs256_token_and_caching(idp: FakeIdP, realm: str, keys, cache, clock) -> None:
    v = make_validator(cache, IssuerSettings(realm, AUD))
    token = sign(keys["rsa1"], "RS256", "rsa1", claims(realm, jti="t-1", groups=["dba"]))
    ident = run(v, token)
    assert ident.subject == "alice"
    assert ident.issuer == realm
    assert ident.token_id == "t-1"
    assert ident.claims["groups"] == ["dba"]
    assert ident.expires_at is not None and ident.expires_at > time.time()
    assert (idp.discovery_hits("a"), idp.jwks_hits("a")) == (1, 1)

    # Cached: no more requests within the TTL, even for another key in the set.
    run(v, token)
    run(v, sign(keys["ec1"], "ES256", "ec1", claims(realm)))
    assert (idp.discovery_hits("a"), idp.jwks_hits("a")) == (1, 1)

    # After the TTL the key set is fetched again (the jwks_uri stays known).
    clock.advance(301)
    run(v, token)
    assert (idp.discovery_hits("a"), idp.jwks_hits("a")) == (1, 2)


def test_valid_es256_token(idp: FakeIdP, realm: str, keys, cache) -> None:
    v = make_validator(cache, IssuerSettings(realm, [AUD, "other"]))
    ident = run(v, sign(keys["ec1"], "ES256", "ec1", claims(realm, sub="bob")))
    assert ident.subject == "bob"


def test_valid_dev_issuer_token_needs_no_http(idp: FakeIdP, tmp_path: Path, cache) -> None:
    key_path = tmp_path / "data" / "dev-issuer.pem"
    dev = DevIssuer(key_path)
    assert not key_path.exists()  # created on first use only
    v = make_validator(cache, dev=dev)
    token = dev.mint("carol", groups=["analysts"], ttl=120)
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "EdDSA" and header["typ"] == "at+jwt"
    assert header["kid"] == jwk_thumbprint(dev.public_jwk()) == dev.kid

    ident = run(v, token)
    assert ident.subject == "carol"
    assert ident.issuer == "pgwarden-dev"
    assert ident.claims["groups"] == ["analysts"]
    assert ident.claims["aud"] == "pgwarden"
    assert ident.token_id
    assert ident.expires_at == ident.claims["iat"] + 120
    assert idp.total_hits() == 0
    assert key_path.stat().st_mode & 0o777 == 0o600

    # A second instance (e.g. after a restart) reuses the same key.
    again = DevIssuer(key_path)
    assert again.kid == dev.kid
    assert run(make_validator(cache, dev=again), token).subject == "carol"


def test_dev_issuer_tokens_refused_unless_enabled(realm: str, tmp_path: Path, cache) -> None:
    dev = DevIssuer(tmp_path / "dev.pem")
    v = make_validator(cache, IssuerSettings(realm, AUD))
    assert rejected(v, dev.mint("mallory")).reason == "unknown_issuer"


def test_dev_issuer_expired_and_foreign_key(tmp_path: Path, cache) -> None:
    dev = DevIssuer(tmp_path / "dev.pem")
    v = make_validator(cache, dev=dev)
    assert rejected(v, dev.mint("x", now=time.time() - 7200)).reason == "expired"
    impostor = DevIssuer(tmp_path / "other.pem")  # same iss, different key
    assert rejected(v, impostor.mint("x")).reason == "unknown_kid"


# ------------------------------------------------------------------ algorithms


def test_alg_none_refused(idp: FakeIdP, realm: str, cache) -> None:
    v = make_validator(cache, IssuerSettings(realm, AUD))
    for alg in ("none", "None", "NONE"):
        header = _b64(json.dumps({"alg": alg, "typ": "JWT", "kid": "rsa1"}).encode())
        payload = _b64(json.dumps(claims(realm)).encode())
        err = rejected(v, f"{header}.{payload}.")
        assert err.reason == "alg_not_allowed", alg
    assert idp.total_hits() == 0


def test_hs256_signed_with_public_key_refused_before_verify(
    idp: FakeIdP, realm: str, keys, cache, monkeypatch: pytest.MonkeyPatch
) -> None:
    v = make_validator(cache, IssuerSettings(realm, AUD))
    run(v, sign(keys["rsa1"], "RS256", "rsa1", claims(realm)))  # warm the cache
    hits = idp.total_hits()

    def no_verify(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("signature verification must not be attempted")

    monkeypatch.setattr(TokenValidator, "_verify", staticmethod(no_verify))
    pem = keys["rsa1"].public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    for alg, digest in (("HS256", hashlib.sha256), ("HS512", hashlib.sha512)):
        signing_input = (
            _b64(json.dumps({"alg": alg, "typ": "JWT", "kid": "rsa1"}).encode())
            + "."
            + _b64(json.dumps(claims(realm)).encode())
        )
        mac = hmac.new(pem, signing_input.encode(), digest).digest()
        err = rejected(v, f"{signing_input}.{_b64(mac)}")
        assert err.reason == "alg_not_allowed"
    assert idp.total_hits() == hits


def test_alg_outside_issuer_allow_list(realm: str, keys, cache) -> None:
    v = make_validator(cache, IssuerSettings(realm, AUD, algorithms=("ES256",)))
    assert rejected(v, sign(keys["rsa1"], "RS256", "rsa1", claims(realm))).reason == "alg_not_allowed"
    assert run(v, sign(keys["ec1"], "ES256", "ec1", claims(realm))).subject == "alice"


def test_key_type_must_match_alg(realm: str, keys, cache) -> None:
    v = make_validator(cache, IssuerSettings(realm, AUD))
    # Signed with the EC key but names the RSA key's kid.
    err = rejected(v, sign(keys["ec1"], "ES256", "rsa1", claims(realm)))
    assert err.reason == "bad_key"
    # PS256 with an RSA key is fine (same key, different padding).
    assert run(v, sign(keys["rsa1"], "PS256", "rsa1", claims(realm))).subject == "alice"


def test_settings_refuse_unsafe_algorithms() -> None:
    for algs in (("HS256",), ("none",), ("RS256", "HS512"), ()):
        with pytest.raises(ValueError):
            IssuerSettings("https://idp.example", AUD, algorithms=algs)
    with pytest.raises(ValueError):
        IssuerSettings("https://idp.example", [])
    assert IssuerSettings("https://idp.example", ["a", "b"]).audience == ("a", "b")


# ------------------------------------------------------------------ time claims


def test_expired_token(realm: str, keys, cache) -> None:
    v = make_validator(cache, IssuerSettings(realm, AUD))
    now = int(time.time())
    token = sign(keys["rsa1"], "RS256", "rsa1", claims(realm, iat=now - 7200, nbf=now - 7200, exp=now - 3600))
    assert rejected(v, token).reason == "expired"


def test_not_yet_valid_token(realm: str, keys, cache) -> None:
    v = make_validator(cache, IssuerSettings(realm, AUD))
    now = int(time.time())
    assert rejected(v, sign(keys["rsa1"], "RS256", "rsa1", claims(realm, nbf=now + 3600))).reason == (
        "not_yet_valid"
    )
    assert rejected(v, sign(keys["rsa1"], "RS256", "rsa1", claims(realm, iat=now + 3600))).reason == (
        "not_yet_valid"
    )


def test_leeway_honoured(realm: str, keys, cache) -> None:
    now = int(time.time())
    late = sign(keys["rsa1"], "RS256", "rsa1", claims(realm, iat=now - 600, nbf=now - 600, exp=now - 10))
    early = sign(keys["rsa1"], "RS256", "rsa1", claims(realm, iat=now + 10, nbf=now + 10))
    lenient = make_validator(cache, IssuerSettings(realm, AUD, leeway=30))
    strict = make_validator(cache, IssuerSettings(realm, AUD, leeway=0))
    assert run(lenient, late).subject == "alice"
    assert run(lenient, early).subject == "alice"
    assert rejected(strict, late).reason == "expired"
    assert rejected(strict, early).reason == "not_yet_valid"


# ------------------------------------------------------------------ iss / aud / claims / typ


def test_unknown_issuer_refused_without_any_request(idp: FakeIdP, realm: str, keys, cache) -> None:
    v = make_validator(cache, IssuerSettings(realm, AUD))
    for iss in (f"{idp.url}/realms/evil", realm + "/", "https://attacker.example"):
        token = sign(keys["rsa1"], "RS256", "rsa1", claims(iss))
        assert rejected(v, token).reason == "unknown_issuer"
    assert idp.total_hits() == 0
    no_iss = sign(keys["rsa1"], "RS256", "rsa1", {k: v for k, v in claims(realm).items() if k != "iss"})
    assert rejected(v, no_iss).reason == "missing_claim"


def test_wrong_audience(realm: str, keys, cache) -> None:
    v = make_validator(cache, IssuerSettings(realm, [AUD, "reporting"]))
    assert rejected(v, sign(keys["rsa1"], "RS256", "rsa1", claims(realm, aud="some-api"))).reason == (
        "wrong_audience"
    )
    assert run(v, sign(keys["rsa1"], "RS256", "rsa1", claims(realm, aud=["x", "reporting"]))).subject == "alice"


def test_required_claims(realm: str, keys, cache) -> None:
    v = make_validator(cache, IssuerSettings(realm, AUD, required_claims=("groups",)))
    err = rejected(v, sign(keys["rsa1"], "RS256", "rsa1", claims(realm)))
    assert err.reason == "missing_claim" and "groups" in err.detail
    assert run(v, sign(keys["rsa1"], "RS256", "rsa1", claims(realm, groups=["a"]))).subject == "alice"
    # exp, iat and sub are always required.
    for absent in ("exp", "iat", "sub"):
        token = sign(keys["rsa1"], "RS256", "rsa1", claims(realm, groups=["a"], **{absent: None}))
        assert rejected(v, token).reason == "missing_claim", absent


def test_typ_at_jwt_required(realm: str, keys, cache) -> None:
    v = make_validator(cache, IssuerSettings(realm, AUD, require_typ_at_jwt=True))
    body = claims(realm)
    assert jwt.get_unverified_header(sign(keys["rsa1"], "RS256", "rsa1", body)).get("typ") == "JWT"
    assert rejected(v, sign(keys["rsa1"], "RS256", "rsa1", body)).reason == "wrong_typ"
    # PyJWT adds typ=JWT by default; remove it entirely too.
    no_typ = sign(keys["rsa1"], "RS256", "rsa1", body, typ=None)
    assert "typ" not in jwt.get_unverified_header(no_typ)
    assert rejected(v, no_typ).reason == "wrong_typ"
    assert run(v, sign(keys["rsa1"], "RS256", "rsa1", body, typ="at+jwt")).subject == "alice"
    assert run(v, sign(keys["rsa1"], "RS256", "rsa1", body, typ="application/at+JWT")).subject == "alice"


# ------------------------------------------------------------------ integrity / shape


def test_tampered_payload(realm: str, keys, cache) -> None:
    v = make_validator(cache, IssuerSettings(realm, AUD))
    for key, alg, kid in ((keys["rsa1"], "RS256", "rsa1"), (keys["ec1"], "ES256", "ec1")):
        header, _, signature = sign(key, alg, kid, claims(realm)).split(".")
        forged = _b64(json.dumps(claims(realm, sub="postgres")).encode())
        assert rejected(v, f"{header}.{forged}.{signature}").reason == "bad_signature"
    # Right kid, signed by somebody else's key.
    assert rejected(v, sign(keys["ec_other"], "ES256", "ec1", claims(realm))).reason == "bad_signature"


def test_token_over_16_kib_refused_before_parsing(
    idp: FakeIdP, realm: str, keys, cache, monkeypatch: pytest.MonkeyPatch
) -> None:
    v = make_validator(cache, IssuerSettings(realm, AUD))
    big = sign(keys["rsa1"], "RS256", "rsa1", claims(realm, pad="x" * MAX_TOKEN_BYTES))
    assert len(big) > MAX_TOKEN_BYTES

    def no_parse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("oversized token was parsed")

    monkeypatch.setattr(jwt, "get_unverified_header", no_parse)
    monkeypatch.setattr(jwt, "decode", no_parse)
    assert rejected(v, big).reason == "too_large"
    assert rejected(v, "a" * (MAX_TOKEN_BYTES + 1)).reason == "too_large"
    # Multi-byte characters count as bytes.
    assert rejected(v, "é" * (MAX_TOKEN_BYTES // 2 + 1)).reason == "too_large"
    assert idp.total_hits() == 0


def test_garbage_is_malformed(idp: FakeIdP, realm: str, cache) -> None:
    v = make_validator(cache, IssuerSettings(realm, AUD))
    header = _b64(json.dumps({"alg": "RS256", "kid": "rsa1"}).encode())
    for junk in (
        "",
        "hunter2",
        "a.b.c",
        "....",
        "a.b",
        "é.é.é",
        f"{header}.!!!.sig",
        f"{header}.{_b64(b'[1,2]')}.sig",
        f"{_b64(b'not json')}.{_b64(b'{}')}.sig",
        f"{_b64(b'{}')}.{_b64(b'{}')}.sig",  # no alg
        f"{_b64(json.dumps({'alg': 'RS256', 'crit': ['exp']}).encode())}.{_b64(b'{}')}.sig",
    ):
        err = rejected(v, junk)
        assert err.reason == "malformed", junk
    err = rejected(v, b"bytes.are.refused")  # type: ignore[arg-type]
    assert err.reason == "malformed"
    assert idp.total_hits() == 0


def test_rejection_is_machine_readable() -> None:
    err = TokenRejected("expired", "token expired 3s ago")
    assert (err.reason, err.detail) == ("expired", "token expired 3s ago")
    with pytest.raises(ValueError):
        TokenRejected("because")


# ------------------------------------------------------------------ key set behaviour


def test_unknown_kid_refetches_once_then_is_rate_limited(
    idp: FakeIdP, realm: str, keys, cache, clock: FakeClock
) -> None:
    v = make_validator(cache, IssuerSettings(realm, AUD))
    run(v, sign(keys["rsa1"], "RS256", "rsa1", claims(realm)))
    assert idp.jwks_hits("a") == 1

    # Right after a fetch an unknown kid does not trigger another.
    stranger = sign(keys["rsa2"], "RS256", "k-unknown", claims(realm))
    assert rejected(v, stranger).reason == "unknown_kid"
    assert idp.jwks_hits("a") == 1

    clock.advance(31)
    assert rejected(v, stranger).reason == "unknown_kid"
    assert idp.jwks_hits("a") == 2  # exactly one refetch

    clock.advance(5)  # still within min_refetch_interval
    other = sign(keys["rsa2"], "RS256", "k-unknown-2", claims(realm))
    assert rejected(v, other).reason == "unknown_kid"
    assert idp.jwks_hits("a") == 2
    assert idp.discovery_hits("a") == 1


def test_key_rotation(idp: FakeIdP, realm: str, keys, cache, clock: FakeClock) -> None:
    v = make_validator(cache, IssuerSettings(realm, AUD))
    old = sign(keys["rsa1"], "RS256", "rsa1", claims(realm))
    run(v, old)

    idp.set_keys("a", [_public_jwk(keys["rsa2"], "rsa2")])  # rsa1 retired
    clock.advance(31)
    new = sign(keys["rsa2"], "RS256", "rsa2", claims(realm))
    assert run(v, new).subject == "alice"
    assert idp.jwks_hits("a") == 2
    assert rejected(v, old).reason == "unknown_kid"  # the fresh set no longer has it
    assert idp.jwks_hits("a") == 2


def test_concurrent_callers_share_one_fetch(idp: FakeIdP, realm: str, keys, cache) -> None:
    v = make_validator(cache, IssuerSettings(realm, AUD))
    tokens = [sign(keys["rsa1"], "RS256", "rsa1", claims(realm, sub=f"u{i}")) for i in range(20)]

    async def all_at_once() -> list[Identity]:
        return await asyncio.gather(*(v.validate(t) for t in tokens))

    idents = asyncio.run(all_at_once())
    assert [i.subject for i in idents] == [f"u{i}" for i in range(20)]
    assert (idp.discovery_hits("a"), idp.jwks_hits("a")) == (1, 1)


def test_issuer_unreachable_keeps_last_good_keys(
    idp: FakeIdP, realm: str, keys, cache, clock: FakeClock
) -> None:
    v = make_validator(cache, IssuerSettings(realm, AUD))
    good = sign(keys["rsa1"], "RS256", "rsa1", claims(realm))
    run(v, good)
    idp.stop()

    clock.advance(301)  # keys are stale; the refresh fails; the old ones serve
    assert run(v, good).subject == "alice"
    assert run(v, sign(keys["ec1"], "ES256", "ec1", claims(realm))).subject == "alice"
    err = rejected(v, sign(keys["rsa2"], "RS256", "rsa2", claims(realm)))
    assert err.reason == "issuer_unreachable"

    clock.advance(31)  # a later attempt (rate limit passed) fails the same way
    err = rejected(v, sign(keys["rsa2"], "RS256", "rsa2", claims(realm)))
    assert err.reason == "issuer_unreachable"
    assert run(v, good).subject == "alice"


def test_issuer_unreachable_without_cached_keys(idp: FakeIdP, realm: str, keys, cache) -> None:
    v = make_validator(cache, IssuerSettings(realm, AUD))
    idp.stop()
    err = rejected(v, sign(keys["rsa1"], "RS256", "rsa1", claims(realm)))
    assert err.reason == "issuer_unreachable"


def test_discovery_must_name_the_same_issuer(idp: FakeIdP, realm: str, keys, cache) -> None:
    idp.docs["/realms/a/.well-known/openid-configuration"]["issuer"] = f"{idp.url}/realms/evil"
    v = make_validator(cache, IssuerSettings(realm, AUD))
    err = rejected(v, sign(keys["rsa1"], "RS256", "rsa1", claims(realm)))
    assert err.reason == "issuer_unreachable"
    assert "evil" in err.detail
    assert idp.jwks_hits("a") == 0


def test_two_issuers_trusted_at_once(idp: FakeIdP, realm: str, keys, cache, tmp_path: Path) -> None:
    # Issuer b is configured with its jwks_uri directly (no discovery).
    b = idp.add_issuer("b", [_public_jwk(keys["ec_other"], "b-ec")], discovery=False)
    dev = DevIssuer(tmp_path / "dev.pem")
    v = make_validator(
        cache,
        IssuerSettings(realm, AUD),
        IssuerSettings(b, "warehouse", jwks_uri=f"{b}/certs", algorithms=("ES256",)),
        dev=dev,
    )
    ia = run(v, sign(keys["rsa1"], "RS256", "rsa1", claims(realm, sub="from-a")))
    ib = run(v, sign(keys["ec_other"], "ES256", "b-ec", claims(b, sub="from-b", aud="warehouse")))
    idev = run(v, dev.mint("from-dev"))
    assert (ia.issuer, ia.subject) == (realm, "from-a")
    assert (ib.issuer, ib.subject) == (b, "from-b")
    assert (idev.issuer, idev.subject) == ("pgwarden-dev", "from-dev")
    assert idp.discovery_hits("b") == 0 and idp.jwks_hits("b") == 1

    # Keys do not leak across issuers: a's key is unknown to b, and a's
    # audience does not open b.
    assert rejected(v, sign(keys["ec1"], "ES256", "ec1", claims(b, aud="warehouse"))).reason == "unknown_kid"
    assert rejected(v, sign(keys["ec_other"], "ES256", "b-ec", claims(b))).reason == "wrong_audience"


def test_token_without_kid_uses_the_only_suitable_key(idp: FakeIdP, keys, cache) -> None:
    iss = idp.add_issuer("solo", [_public_jwk(keys["rsa1"], "only")])
    v = make_validator(cache, IssuerSettings(iss, AUD))
    assert run(v, sign(keys["rsa1"], "RS256", None, claims(iss))).subject == "alice"


def test_validator_configuration_errors(tmp_path: Path, cache) -> None:
    with pytest.raises(ValueError):
        TokenValidator([], cache)
    s = IssuerSettings("https://idp.example", AUD)
    with pytest.raises(ValueError):
        TokenValidator([s, s], cache)
    dev = DevIssuer(tmp_path / "dev.pem")
    with pytest.raises(ValueError):
        TokenValidator([IssuerSettings("pgwarden-dev", AUD)], cache, dev_issuer=dev)
    assert not (tmp_path / "dev.pem").exists() or os.stat(tmp_path / "dev.pem").st_mode & 0o077 == 0


def test_weak_rsa_key_refused(idp: FakeIdP, cache) -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    iss = idp.add_issuer("weak", [_public_jwk(weak, "weak")])
    v = make_validator(cache, IssuerSettings(iss, AUD))
    with warnings.catch_warnings():  # recent PyJWT warns about signing with it
        warnings.simplefilter("ignore")
        token = sign(weak, "RS256", "weak", claims(iss))
    err = rejected(v, token)
    assert err.reason == "bad_key" and "1024" in err.detail
