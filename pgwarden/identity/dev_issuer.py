"""A built-in token issuer for demos and local development.

Trying token login should not require running Keycloak first. The dev
issuer is a single Ed25519 key kept in pgwarden's data directory;
:meth:`DevIssuer.mint` signs RFC 9068-shaped access tokens with it, and the
:class:`~pgwarden.identity.tokens.TokenValidator` trusts it directly (no
HTTP) - but only when configuration enables it, because anybody who can read
the key file can mint a token for any user.

Ed25519 because keys are tiny, generation is instant and signatures are
deterministic. The key file is created with mode 0600 and created atomically,
so two processes starting together end up sharing one key instead of each
overwriting the other's.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from pgwarden.identity.tokens import IssuerSettings

__all__ = ["DEFAULT_AUDIENCE", "DEFAULT_ISSUER", "DevIssuer", "jwk_thumbprint"]

DEFAULT_ISSUER = "pgwarden-dev"
DEFAULT_AUDIENCE = "pgwarden"

#: Longest lifetime :meth:`DevIssuer.mint` will put in a token (one day).
MAX_TTL = 24 * 3600


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def jwk_thumbprint(jwk: Mapping[str, Any]) -> str:
    """RFC 7638 SHA-256 thumbprint of a public JWK (RSA, EC or OKP)."""
    members = {
        "RSA": ("e", "kty", "n"),
        "EC": ("crv", "kty", "x", "y"),
        "OKP": ("crv", "kty", "x"),
    }[jwk["kty"]]
    canonical = json.dumps({m: jwk[m] for m in members}, separators=(",", ":"), sort_keys=True)
    return _b64url(hashlib.sha256(canonical.encode("utf-8")).digest())


class DevIssuer:
    """Mints and vouches for demo access tokens signed with a local key.

    The key is loaded (or created) on first use, not in the constructor, so
    building a ``DevIssuer`` never touches the disk.
    """

    def __init__(
        self,
        key_path: Path,
        issuer: str = DEFAULT_ISSUER,
        audience: str = DEFAULT_AUDIENCE,
    ) -> None:
        self.key_path = Path(key_path)
        self.issuer = issuer
        self.audience = audience
        self._lock = threading.Lock()
        self._private: Ed25519PrivateKey | None = None
        self._jwk: dict[str, str] | None = None
        self._verify_key: jwt.PyJWK | None = None

    # ---------------------------------------------------------------- keys

    def _load(self) -> Ed25519PrivateKey:
        with self._lock:
            if self._private is None:
                private = self._read_or_create()
                raw = private.public_key().public_bytes(
                    serialization.Encoding.Raw, serialization.PublicFormat.Raw
                )
                public = {"kty": "OKP", "crv": "Ed25519", "x": _b64url(raw)}
                public["kid"] = jwk_thumbprint(public)
                public.update(alg="EdDSA", use="sig")
                self._jwk = public
                self._verify_key = jwt.PyJWK(public, algorithm="EdDSA")
                self._private = private
            return self._private

    def _read_or_create(self) -> Ed25519PrivateKey:
        try:
            return self._read()
        except FileNotFoundError:
            pass
        self.key_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        pem = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        # Write a private temp file, then hard-link it into place: the link
        # fails if another process got there first, and nobody ever sees a
        # half-written key.
        tmp = self.key_path.with_name(f".{self.key_path.name}.{secrets.token_hex(8)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(pem)
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, self.key_path)
            except FileExistsError:
                pass  # lost the race: use the winner's key
        finally:
            tmp.unlink(missing_ok=True)
        return self._read()

    def _read(self) -> Ed25519PrivateKey:
        data = self.key_path.read_bytes()
        key = serialization.load_pem_private_key(data, password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{self.key_path} does not hold an Ed25519 private key")
        return key

    @property
    def kid(self) -> str:
        """The key's RFC 7638 thumbprint, used as ``kid``."""
        self._load()
        assert self._jwk is not None
        return self._jwk["kid"]

    def public_jwk(self) -> dict[str, str]:
        """The public key as a JWK (with ``kid``, ``alg`` and ``use``)."""
        self._load()
        assert self._jwk is not None
        return dict(self._jwk)

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        """The public key as a JWK Set document."""
        return {"keys": [self.public_jwk()]}

    def key_for(self, kid: str | None) -> jwt.PyJWK | None:
        """The verification key if ``kid`` names the dev key, else ``None``."""
        self._load()
        if kid is None or self._jwk is None or kid != self._jwk["kid"]:
            return None
        return self._verify_key

    def settings(self, leeway: float = 30.0) -> IssuerSettings:
        """How the validator should check this issuer's tokens."""
        return IssuerSettings(
            issuer=self.issuer,
            audience=self.audience,
            algorithms=("EdDSA",),
            require_typ_at_jwt=True,
            leeway=leeway,
        )

    # ---------------------------------------------------------------- mint

    def mint(
        self,
        sub: str,
        groups: Iterable[str] = (),
        ttl: int = 900,
        extra_claims: Mapping[str, Any] | None = None,
        *,
        now: float | None = None,
    ) -> str:
        """A signed access token for ``sub``, valid for ``ttl`` seconds.

        ``extra_claims`` are added last and may override the standard ones
        (tests use that to mint expired or mis-addressed tokens). ``now``
        replaces the current time, for the same reason.
        """
        if not isinstance(sub, str) or not sub:
            raise ValueError("sub must be a non-empty string")
        if isinstance(groups, str):
            raise TypeError("groups must be an iterable of strings, not a string")
        if not 0 < ttl <= MAX_TTL:
            raise ValueError(f"ttl must be between 1 and {MAX_TTL} seconds")
        private = self._load()
        issued = int(time.time() if now is None else now)
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": sub,
            "client_id": self.issuer,
            "groups": list(groups),
            "iat": issued,
            "nbf": issued,
            "exp": issued + int(ttl),
            "jti": secrets.token_urlsafe(16),
        }
        if extra_claims:
            claims.update(extra_claims)
        return jwt.encode(
            claims,
            private,
            algorithm="EdDSA",
            headers={"typ": "at+jwt", "kid": self.kid},
        )
