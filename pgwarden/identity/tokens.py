"""Validate OIDC access tokens (JWTs) that clients present as their password.

A PostgreSQL client can only send a password, so pgwarden lets it send an
OIDC access token there instead and checks it here. The token is the whole
credential, so everything that is not positively verified is refused:

* Only asymmetric algorithms on an allow-list are accepted. ``none`` and the
  HMAC family (``HS*``) are refused by name *before* any key is looked up: an
  HMAC "signature" made with the issuer's *public* key is the classic JWT
  algorithm-confusion attack, and no issuer we trust signs access tokens with
  a shared secret anyway.
* The issuer is picked from the unverified ``iss`` claim only to choose which
  keys to check against. Unknown issuers are refused before any network
  request, so a client cannot make the gateway fetch arbitrary URLs.
* The key comes from the issuer's JWKS (see :mod:`pgwarden.identity.jwks`) by
  ``kid`` and must suit the header's ``alg``; PyJWT then verifies the
  signature with exactly that one algorithm and checks ``iss``, ``aud``,
  ``exp``, ``nbf`` and ``iat`` with a small leeway for clock skew.
* Tokens over :data:`MAX_TOKEN_BYTES` are refused before they are parsed at
  all, which bounds the work an unauthenticated client can cause.

Every refusal is a :class:`TokenRejected` with a stable machine-readable
``reason`` (for metrics and tests) and a human ``detail`` for the audit log.
Neither is meant for the client: it is only ever told authentication failed,
so a prober learns nothing about which check it tripped.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import jwt

if TYPE_CHECKING:  # pragma: no cover - imports only for annotations
    from pgwarden.identity.dev_issuer import DevIssuer
    from pgwarden.identity.jwks import JwksCache

__all__ = [
    "DEFAULT_ALGORITHMS",
    "MAX_TOKEN_BYTES",
    "REASONS",
    "Identity",
    "IssuerSettings",
    "TokenRejected",
    "TokenValidator",
]

#: Every algorithm pgwarden is willing to verify. Asymmetric only.
DEFAULT_ALGORITHMS: tuple[str, ...] = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "EdDSA",
)

#: Tokens longer than this (in bytes) are refused unparsed. Real access tokens
#: are a few KiB at most even with many group claims.
MAX_TOKEN_BYTES = 16 * 1024

#: Claims every token must carry, whatever the issuer settings say.
ALWAYS_REQUIRED_CLAIMS: tuple[str, ...] = ("exp", "iat", "iss", "sub")

#: ``typ`` header values accepted when RFC 9068 access tokens are required.
_AT_JWT_TYPES = frozenset({"at+jwt", "application/at+jwt"})

#: Every ``TokenRejected.reason`` this package produces, with its meaning.
REASONS: Mapping[str, str] = {
    "malformed": "not a well-formed JWS compact token, or a claim has the wrong type",
    "too_large": f"token longer than {MAX_TOKEN_BYTES} bytes",
    "alg_not_allowed": "header alg is none, HMAC, or not on the issuer's allow-list",
    "unknown_issuer": "iss is not a trusted issuer",
    "unknown_kid": "the issuer publishes no key with this kid",
    "bad_key": "the key named by kid cannot verify this alg (wrong type, curve or too weak)",
    "bad_signature": "signature does not verify",
    "expired": "exp is in the past (beyond the leeway)",
    "not_yet_valid": "nbf or iat is in the future (beyond the leeway)",
    "wrong_audience": "aud does not name this gateway",
    "missing_claim": "a required claim is absent",
    "wrong_typ": "typ header is not at+jwt although the issuer requires it",
    "issuer_unreachable": "the issuer's keys could not be fetched and none cached fit",
}


class TokenRejected(Exception):
    """The token was refused.

    ``reason`` is one of :data:`REASONS`; ``detail`` is a human sentence for
    the audit log. Never send either to the client.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown rejection reason {reason!r}")
        self.reason = reason
        self.detail = detail or REASONS[reason]
        super().__init__(f"{reason}: {self.detail}")


def _check_algorithms(algorithms: tuple[str, ...]) -> None:
    if not algorithms:
        raise ValueError("algorithms must not be empty")
    for alg in algorithms:
        if alg not in DEFAULT_ALGORITHMS:
            raise ValueError(
                f"algorithm {alg!r} is not supported; choose from {', '.join(DEFAULT_ALGORITHMS)}"
            )


@dataclass(frozen=True)
class IssuerSettings:
    """One trusted token issuer.

    ``issuer`` must equal the tokens' ``iss`` claim exactly (OIDC compares
    it as a string, trailing slash included). ``audience`` is the ``aud``
    value (or any of several) that marks a token as meant for this gateway;
    a list is stored as a tuple so the settings stay hashable. ``jwks_uri``
    skips OIDC discovery when given. ``leeway`` is the clock skew, in
    seconds, tolerated on ``exp``/``nbf``/``iat``.
    """

    issuer: str
    audience: str | list[str]
    jwks_uri: str | None = None
    algorithms: tuple = DEFAULT_ALGORITHMS
    require_typ_at_jwt: bool = False
    required_claims: tuple[str, ...] = ()
    leeway: float = 30.0

    def __post_init__(self) -> None:
        if not isinstance(self.issuer, str) or not self.issuer:
            raise ValueError("issuer must be a non-empty string")
        audience = self.audience
        if isinstance(audience, str):
            if not audience:
                raise ValueError("audience must not be empty")
        else:
            audience = tuple(audience)
            if not audience or not all(isinstance(a, str) and a for a in audience):
                raise ValueError("audience must be a non-empty string or list of strings")
            object.__setattr__(self, "audience", audience)
        algorithms = tuple(self.algorithms)
        _check_algorithms(algorithms)
        object.__setattr__(self, "algorithms", algorithms)
        object.__setattr__(self, "required_claims", tuple(self.required_claims))
        if not all(isinstance(c, str) and c for c in self.required_claims):
            raise ValueError("required_claims must be non-empty strings")
        if not (isinstance(self.leeway, int | float) and math.isfinite(self.leeway)):
            raise ValueError("leeway must be a number of seconds")
        if not 0 <= self.leeway <= 300:
            raise ValueError("leeway must be between 0 and 300 seconds")
        if self.jwks_uri is not None and not self.jwks_uri:
            raise ValueError("jwks_uri must be None or a URL")


@dataclass(frozen=True)
class Identity:
    """Who a validated token says the client is.

    ``claims`` is the full verified payload (groups, scopes, email, ...) for
    policy to look at; ``expires_at`` is ``exp`` as a Unix timestamp so the
    session can be ended when the token runs out.
    """

    subject: str
    issuer: str
    claims: dict[str, Any] = field(repr=False)
    expires_at: float | None
    token_id: str | None


def _malformed(detail: str) -> TokenRejected:
    return TokenRejected("malformed", detail)


class TokenValidator:
    """Checks access tokens against a set of trusted issuers.

    ``issuers`` are fetched from over HTTP through ``jwks``; ``dev_issuer``,
    when given, is trusted too, with its key taken straight from it (pass it
    only when configuration enables the dev issuer).
    """

    def __init__(
        self,
        issuers: list[IssuerSettings],
        jwks: JwksCache,
        dev_issuer: DevIssuer | None = None,
    ) -> None:
        self._issuers: dict[str, IssuerSettings] = {}
        for settings in issuers:
            if settings.issuer in self._issuers:
                raise ValueError(f"issuer {settings.issuer!r} is configured twice")
            self._issuers[settings.issuer] = settings
        self._dev_issuer = dev_issuer
        self._dev_settings: IssuerSettings | None = None
        if dev_issuer is not None:
            self._dev_settings = dev_issuer.settings()
            if self._dev_settings.issuer in self._issuers:
                raise ValueError(
                    f"dev issuer {self._dev_settings.issuer!r} clashes with a configured issuer"
                )
        if not self._issuers and dev_issuer is None:
            raise ValueError("no trusted issuers configured")
        self._jwks = jwks

    @property
    def issuers(self) -> tuple[str, ...]:
        """The ``iss`` values this validator trusts."""
        names = tuple(self._issuers)
        if self._dev_settings is not None:
            names += (self._dev_settings.issuer,)
        return names

    async def validate(self, token: str) -> Identity:
        """Return the :class:`Identity` in ``token`` or raise :class:`TokenRejected`.

        Only key fetches await; parsing and signature checks run inline
        (well under a millisecond for the allowed algorithms).
        """
        header, unverified = self._peek(token)
        alg = header["alg"]
        iss = unverified.get("iss")
        if iss is None:
            raise TokenRejected("missing_claim", "token has no iss claim")
        if not isinstance(iss, str):
            raise _malformed("iss claim is not a string")

        settings = self._settings_for(iss)
        if alg not in settings.algorithms:
            raise TokenRejected(
                "alg_not_allowed", f"alg {alg!r} is not allowed for issuer {iss!r}"
            )
        if settings.require_typ_at_jwt:
            typ = header.get("typ")
            if not isinstance(typ, str) or typ.lower() not in _AT_JWT_TYPES:
                raise TokenRejected(
                    "wrong_typ", f"typ header is {typ!r}, issuer {iss!r} requires at+jwt"
                )
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise _malformed("kid header is not a string")

        key = await self._key_for(settings, kid, alg)
        claims = self._verify(token, key, alg, settings)

        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            raise _malformed("sub claim is empty or not a string")
        exp = claims.get("exp")
        jti = claims.get("jti")
        return Identity(
            subject=subject,
            issuer=settings.issuer,
            claims=claims,
            expires_at=float(exp) if isinstance(exp, int | float) else None,
            token_id=jti if isinstance(jti, str) else None,
        )

    # ------------------------------------------------------------ internals

    @staticmethod
    def _peek(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """Unverified header and payload, after the cheap refusals."""
        if not isinstance(token, str):
            raise _malformed(f"token is a {type(token).__name__}, not a string")
        # len() counts characters; a character is at least one byte, so this
        # refuses the obvious cases without encoding anything.
        if len(token) > MAX_TOKEN_BYTES or len(token.encode("utf-8", "replace")) > MAX_TOKEN_BYTES:
            raise TokenRejected(
                "too_large", f"token is {len(token)} characters, limit {MAX_TOKEN_BYTES} bytes"
            )
        if not token.isascii() or token.count(".") != 2:
            raise _malformed("not a JWS compact serialization (header.payload.signature)")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise _malformed(f"unreadable header: {exc}") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or not alg:
            raise _malformed("header has no alg")
        # Refused by name, before anything else, whatever the settings say.
        if alg.lower() == "none" or alg.upper().startswith("HS"):
            raise TokenRejected("alg_not_allowed", f"alg {alg!r} is never accepted")
        if alg not in DEFAULT_ALGORITHMS:
            raise TokenRejected("alg_not_allowed", f"alg {alg!r} is not supported")
        if "crit" in header:
            # No JWS extension is understood here, so any critical one must fail.
            raise _malformed(f"unsupported critical header parameters {header['crit']!r}")
        if header.get("b64", True) is not True:
            raise _malformed("unencoded payloads (b64=false) are not accepted")
        try:
            payload = jwt.decode(
                token,
                options={"verify_signature": False},
                algorithms=list(DEFAULT_ALGORITHMS),
            )
        except jwt.PyJWTError as exc:
            raise _malformed(f"unreadable payload: {exc}") from None
        if not isinstance(payload, dict):  # pragma: no cover - PyJWT enforces
            raise _malformed("payload is not a JSON object")
        return header, payload

    def _settings_for(self, iss: str) -> IssuerSettings:
        settings = self._issuers.get(iss)
        if settings is None and self._dev_settings is not None and iss == self._dev_settings.issuer:
            settings = self._dev_settings
        if settings is None:
            raise TokenRejected("unknown_issuer", f"issuer {iss[:200]!r} is not trusted")
        return settings

    async def _key_for(self, settings: IssuerSettings, kid: str | None, alg: str) -> jwt.PyJWK:
        if settings is self._dev_settings:
            assert self._dev_issuer is not None
            key = self._dev_issuer.key_for(kid)
            if key is None:
                raise TokenRejected("unknown_kid", f"dev issuer has no key {kid!r}")
            return key
        return await self._jwks.get_key(settings, kid, alg)

    @staticmethod
    def _verify(
        token: str, key: jwt.PyJWK, alg: str, settings: IssuerSettings
    ) -> dict[str, Any]:
        required = list(dict.fromkeys((*ALWAYS_REQUIRED_CLAIMS, *settings.required_claims)))
        audience = settings.audience
        try:
            return jwt.decode(
                token,
                # The bare key, not the PyJWK: older PyJWT (2.8) does not take
                # a PyJWK here, and the alg is pinned by ``algorithms`` anyway
                # after the key was checked to suit it.
                key=key.key,
                algorithms=[alg],
                audience=audience if isinstance(audience, str) else list(audience),
                issuer=settings.issuer,
                leeway=settings.leeway,
                options={
                    "require": required,
                    "verify_signature": True,
                    "verify_exp": True,
                    "verify_nbf": True,
                    "verify_iat": True,
                    "verify_aud": True,
                    "verify_iss": True,
                    "enforce_minimum_key_length": True,
                },
            )
        except jwt.InvalidSignatureError:
            raise TokenRejected("bad_signature", "signature verification failed") from None
        except jwt.ExpiredSignatureError:
            raise TokenRejected("expired", "token has expired") from None
        except jwt.ImmatureSignatureError as exc:
            raise TokenRejected("not_yet_valid", str(exc)) from None
        except jwt.InvalidAudienceError as exc:
            raise TokenRejected("wrong_audience", f"{exc}; expected {audience!r}") from None
        except jwt.InvalidIssuerError as exc:  # pragma: no cover - iss picked the settings
            raise TokenRejected("unknown_issuer", str(exc)) from None
        except jwt.MissingRequiredClaimError as exc:
            raise TokenRejected("missing_claim", f"token has no {exc.claim!r} claim") from None
        except jwt.InvalidAlgorithmError as exc:
            raise TokenRejected("alg_not_allowed", str(exc)) from None
        except jwt.InvalidKeyError as exc:
            raise TokenRejected("bad_key", str(exc)) from None
        except jwt.PyJWTError as exc:
            raise _malformed(f"{type(exc).__name__}: {exc}") from None
        except (ValueError, TypeError) as exc:  # defensive: odd claim types
            raise _malformed(f"{type(exc).__name__}: {exc}") from None
