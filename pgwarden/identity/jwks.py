"""Fetch and cache issuers' signing keys (JWKS) without stalling logins.

Every token check needs the issuer's public key, but fetching it per login
would make authentication as slow and as fragile as the identity provider.
So :class:`JwksCache` keeps each issuer's key set in memory:

* Keys are found through OIDC discovery (``{issuer}/.well-known/
  openid-configuration`` names the ``jwks_uri``) unless the issuer settings
  give ``jwks_uri`` directly, and are reused for ``ttl`` seconds.
* A token naming a ``kid`` the cache does not know usually means the issuer
  rotated keys, so the set is fetched again at once - but at most once per
  ``min_refetch_interval`` per issuer, so a client spraying random ``kid``
  values cannot turn the gateway into a load generator against the issuer.
* When the issuer cannot be reached the last good keys stay in use: an
  identity-provider outage should not log everybody out of the database.
  Only tokens whose key is not cached fail, as ``issuer_unreachable``.
* Concurrent callers share one in-flight fetch per issuer (a login storm after
  a restart costs one request, not hundreds), and the fetch is shielded so a
  client hanging up mid-login does not cancel it for the others.

Fetches are async (httpx) and bounded by ``http_timeout`` per request and a
response size limit. The time source is injectable (``clock``) so tests can
move through TTLs and rate limits without sleeping.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from pgwarden.identity.tokens import IssuerSettings, TokenRejected

__all__ = ["MAX_DOCUMENT_BYTES", "MIN_RSA_BITS", "JwksCache", "key_suits_alg"]

log = logging.getLogger("pgwarden.identity")

#: Discovery and JWKS documents larger than this are refused.
MAX_DOCUMENT_BYTES = 512 * 1024

#: RSA keys shorter than this are refused (NIST SP 800-131A).
MIN_RSA_BITS = 2048

_DISCOVERY_PATH = "/.well-known/openid-configuration"

# alg -> (kty, allowed crv values or None when the key type has no curve)
_KEY_TYPES: dict[str, tuple[str, frozenset[str] | None]] = {
    "RS256": ("RSA", None),
    "RS384": ("RSA", None),
    "RS512": ("RSA", None),
    "PS256": ("RSA", None),
    "PS384": ("RSA", None),
    "PS512": ("RSA", None),
    "ES256": ("EC", frozenset({"P-256"})),
    "ES384": ("EC", frozenset({"P-384"})),
    "EdDSA": ("OKP", frozenset({"Ed25519", "Ed448"})),
}


def key_suits_alg(jwk: dict[str, Any], alg: str) -> str | None:
    """Why the JWK ``jwk`` cannot verify ``alg``, or ``None`` if it can.

    Checks the key type and curve against the algorithm, and honours the
    key's own ``alg`` and ``use`` if it states them.
    """
    expected = _KEY_TYPES.get(alg)
    if expected is None:
        return f"alg {alg!r} is not supported"
    kty, curves = expected
    if jwk.get("kty") != kty:
        return f"key type {jwk.get('kty')!r} cannot verify {alg}"
    if curves is not None and jwk.get("crv") not in curves:
        return f"curve {jwk.get('crv')!r} cannot verify {alg}"
    if "alg" in jwk and jwk["alg"] != alg:
        return f"key is for {jwk['alg']!r}, token uses {alg!r}"
    if "use" in jwk and jwk["use"] != "sig":
        return f"key use is {jwk['use']!r}, not 'sig'"
    ops = jwk.get("key_ops")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        return f"key_ops {ops!r} do not include 'verify'"
    return None


class _FetchError(Exception):
    """A discovery or JWKS fetch failed; the message goes to the log."""


@dataclass
class _IssuerKeys:
    """Cache state for one issuer."""

    jwks_uri: str | None = None  # configured, or learnt through discovery
    keys: list[dict[str, Any]] | None = None  # last good key set
    fetched_at: float | None = None  # clock() of the last good fetch
    attempted_at: float | None = None  # clock() of the last attempt, good or bad
    last_error: str | None = None  # why the last attempt failed, if it did
    parsed: dict[tuple[str | None, str], jwt.PyJWK] = field(default_factory=dict)
    inflight: asyncio.Future[bool] | None = None


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class JwksCache:
    """Per-issuer cache of signing keys; see the module docstring.

    ``client`` is an httpx client to use (its settings - proxies, CA bundle -
    apply); without one a short-lived client is made per fetch, which keeps
    the cache usable from any event loop. Plain ``http://`` URLs are refused
    except on loopback unless ``allow_insecure_http`` is set: keys fetched in
    clear text could be swapped by anyone on the path.
    """

    def __init__(
        self,
        ttl: float = 300,
        min_refetch_interval: float = 30,
        http_timeout: float = 5,
        client: httpx.AsyncClient | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        allow_insecure_http: bool = False,
    ) -> None:
        if ttl <= 0 or min_refetch_interval < 0 or http_timeout <= 0:
            raise ValueError("ttl and http_timeout must be positive, min_refetch_interval >= 0")
        self.ttl = float(ttl)
        self.min_refetch_interval = float(min_refetch_interval)
        self.http_timeout = float(http_timeout)
        self._client = client
        self._clock = clock
        self._allow_insecure_http = allow_insecure_http
        self._state: dict[str, _IssuerKeys] = {}

    async def get_key(self, settings: IssuerSettings, kid: str | None, alg: str) -> jwt.PyJWK:
        """The issuer's key ``kid`` for ``alg``, fetching keys if needed.

        Raises :class:`TokenRejected` with ``unknown_kid``, ``bad_key`` or
        ``issuer_unreachable``.
        """
        state = self._state_for(settings)
        if state.keys is None or self._clock() - (state.fetched_at or 0.0) >= self.ttl:
            if self._may_fetch(state):
                await self._refresh(settings, state)
            if state.keys is None:
                raise TokenRejected(
                    "issuer_unreachable",
                    f"no keys for {settings.issuer!r}: {state.last_error or 'not fetched yet'}",
                )

        key = self._lookup(state, kid, alg)
        if key is not None:
            return key

        # Unknown kid: probably a key rotation, so look once more (rate-limited).
        if self._may_fetch(state):
            await self._refresh(settings, state)
            key = self._lookup(state, kid, alg)
            if key is not None:
                return key
        if state.last_error is not None:
            raise TokenRejected(
                "issuer_unreachable",
                f"key {kid!r} not cached and {settings.issuer!r} unreachable: {state.last_error}",
            )
        raise TokenRejected("unknown_kid", f"issuer {settings.issuer!r} has no key {kid!r}")

    def forget(self, issuer: str) -> None:
        """Drop everything cached for ``issuer`` (e.g. after a config reload)."""
        self._state.pop(issuer, None)

    # ------------------------------------------------------------ internals

    def _state_for(self, settings: IssuerSettings) -> _IssuerKeys:
        state = self._state.get(settings.issuer)
        if state is None:
            state = self._state[settings.issuer] = _IssuerKeys(jwks_uri=settings.jwks_uri)
        return state

    def _may_fetch(self, state: _IssuerKeys) -> bool:
        if state.inflight is not None:
            return True  # joining a fetch costs the issuer nothing
        if state.attempted_at is None:
            return True
        return self._clock() - state.attempted_at >= self.min_refetch_interval

    def _lookup(self, state: _IssuerKeys, kid: str | None, alg: str) -> jwt.PyJWK | None:
        cached = state.parsed.get((kid, alg))
        if cached is not None:
            return cached
        if kid is None:
            # No kid: usable only if exactly one published key suits the alg.
            candidates = [k for k in state.keys or () if key_suits_alg(k, alg) is None]
            if len(candidates) != 1:
                return None
        else:
            candidates = [k for k in state.keys or () if k.get("kid") == kid]
            if not candidates:
                return None
        problems = []
        for jwk in candidates:
            problem = key_suits_alg(jwk, alg)
            if problem is None:
                try:
                    key = jwt.PyJWK(jwk, algorithm=alg)
                except jwt.PyJWTError as exc:
                    problems.append(f"unusable key: {exc}")
                    continue
                if isinstance(key.key, RSAPublicKey) and key.key.key_size < MIN_RSA_BITS:
                    problems.append(f"RSA key of {key.key.key_size} bits (< {MIN_RSA_BITS})")
                    continue
                state.parsed[(kid, alg)] = key
                return key
            problems.append(problem)
        raise TokenRejected("bad_key", f"key {kid!r}: {'; '.join(problems)}")

    async def _refresh(self, settings: IssuerSettings, state: _IssuerKeys) -> bool:
        """Fetch the key set (or join the fetch under way); True if it worked."""
        if state.inflight is None:
            state.attempted_at = self._clock()
            task = asyncio.ensure_future(self._fetch(settings, state))
            state.inflight = task

            def _done(t: asyncio.Future[bool]) -> None:
                if state.inflight is t:
                    state.inflight = None

            task.add_done_callback(_done)
        return await asyncio.shield(state.inflight)

    async def _fetch(self, settings: IssuerSettings, state: _IssuerKeys) -> bool:
        try:
            if self._client is not None:
                keys = await self._fetch_with(self._client, settings, state)
            else:
                async with httpx.AsyncClient(follow_redirects=False) as client:
                    keys = await self._fetch_with(client, settings, state)
        except _FetchError as exc:
            state.last_error = str(exc)
            log.warning(
                "fetching keys for issuer %s failed: %s%s",
                settings.issuer,
                exc,
                "; keeping the last good keys" if state.keys is not None else "",
            )
            return False
        except Exception as exc:  # never let a fetch bug escape as a crash
            state.last_error = f"{type(exc).__name__}: {exc}"
            log.exception("fetching keys for issuer %s failed", settings.issuer)
            return False
        state.keys = keys
        state.parsed = {}
        state.fetched_at = self._clock()
        state.last_error = None
        log.info("fetched %d key(s) for issuer %s", len(keys), settings.issuer)
        return True

    async def _fetch_with(
        self, client: httpx.AsyncClient, settings: IssuerSettings, state: _IssuerKeys
    ) -> list[dict[str, Any]]:
        discovered = False
        if state.jwks_uri is None:
            url = settings.issuer.rstrip("/") + _DISCOVERY_PATH
            doc = await self._get_json(client, url)
            if doc.get("issuer") != settings.issuer:
                raise _FetchError(
                    f"discovery document at {url} names issuer {doc.get('issuer')!r}, "
                    f"expected {settings.issuer!r}"
                )
            jwks_uri = doc.get("jwks_uri")
            if not isinstance(jwks_uri, str) or not jwks_uri:
                raise _FetchError(f"discovery document at {url} has no jwks_uri")
            state.jwks_uri = jwks_uri
            discovered = True
        try:
            doc = await self._get_json(client, state.jwks_uri)
        except _FetchError:
            if not discovered and settings.jwks_uri is None:
                state.jwks_uri = None  # it may have moved: discover again next time
            raise
        raw = doc.get("keys")
        if not isinstance(raw, list):
            raise _FetchError(f"JWKS at {state.jwks_uri} has no 'keys' list")
        keys = [k for k in raw if isinstance(k, dict) and isinstance(k.get("kty"), str)]
        if not keys:
            # An empty set is far likelier an IdP fault than "trust nobody";
            # keep what we had rather than lock every user out.
            raise _FetchError(f"JWKS at {state.jwks_uri} contains no keys")
        return keys

    async def _get_json(self, client: httpx.AsyncClient, url: str) -> dict[str, Any]:
        parts = urlsplit(url)
        if parts.scheme != "https" and not (
            parts.scheme == "http" and (self._allow_insecure_http or _is_loopback(parts.hostname))
        ):
            raise _FetchError(f"refusing to fetch keys from non-https URL {url}")
        try:
            async with asyncio.timeout(self.http_timeout):
                async with client.stream(
                    "GET", url, headers={"Accept": "application/json"}, timeout=self.http_timeout
                ) as response:
                    if response.status_code != 200:
                        raise _FetchError(f"GET {url}: HTTP {response.status_code}")
                    body = bytearray()
                    async for chunk in response.aiter_bytes():
                        body += chunk
                        if len(body) > MAX_DOCUMENT_BYTES:
                            raise _FetchError(f"GET {url}: response over {MAX_DOCUMENT_BYTES} bytes")
        except TimeoutError:
            raise _FetchError(f"GET {url}: no answer within {self.http_timeout:g}s") from None
        except httpx.HTTPError as exc:
            raise _FetchError(f"GET {url}: {type(exc).__name__}: {exc}") from None
        try:
            doc = json.loads(body)
        except ValueError as exc:
            raise _FetchError(f"GET {url}: not JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise _FetchError(f"GET {url}: not a JSON object")
        return doc
