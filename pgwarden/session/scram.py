"""SCRAM-SHA-256 for clients that log in to pgwarden with a static user.

Verifiers use PostgreSQL's format (``SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>``)
so an existing ``pg_authid`` hash can be reused. Verifiers are made with scramp.

Why the server exchange is written here and not taken from scramp: libpq (and so
psql, psycopg, pgbench) sends an empty user name in client-first (``n=,r=…``),
which RFC 5802 and PostgreSQL accept because the user comes from the startup
packet, but scramp's server rejects it. The check itself is a few lines of
RFC 5802 §3 arithmetic over ``hmac``/``hashlib``, with a constant-time compare.

Unknown users get a *mock* exchange with a salt derived from the user name and a
per-process secret, so the client cannot tell an unknown user from a wrong
password (the exact reason goes to the log, never to the client).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass

import scramp

__all__ = ["AuthFailed", "ScramServerExchange", "ScramVerifier", "make_verifier", "parse_verifier"]

_MOCK_SECRET = secrets.token_bytes(32)


class AuthFailed(Exception):
    """Authentication failed; the message is for the log, not for the client."""


@dataclass(frozen=True, slots=True)
class ScramVerifier:
    iterations: int
    salt: bytes
    stored_key: bytes
    server_key: bytes


def parse_verifier(text: str) -> ScramVerifier:
    try:
        mech, rest = text.split("$", 1)
        iter_salt, keys = rest.split("$", 1)
        iterations, salt = iter_salt.split(":", 1)
        stored, server = keys.split(":", 1)
        if mech != "SCRAM-SHA-256":
            raise ValueError(mech)
        return ScramVerifier(
            int(iterations), base64.b64decode(salt, validate=True), base64.b64decode(stored), base64.b64decode(server)
        )
    except (ValueError, TypeError) as exc:
        raise ValueError(f"not a SCRAM-SHA-256 verifier: {exc}") from None


def make_verifier(password: str, iterations: int = 4096) -> str:
    salt, stored_key, server_key, iterations = scramp.ScramMechanism("SCRAM-SHA-256").make_auth_info(
        password, iteration_count=iterations
    )
    b64 = lambda b: base64.b64encode(b).decode("ascii")  # noqa: E731
    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def _mock_verifier(user: str) -> ScramVerifier:
    digest = hmac.new(_MOCK_SECRET, user.encode("utf-8"), hashlib.sha256).digest()
    return ScramVerifier(4096, digest[:16], secrets.token_bytes(32), secrets.token_bytes(32))


def _attrs(message: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in message.split(","):
        if len(part) < 2 or part[1] != "=":
            raise AuthFailed(f"malformed SCRAM attribute {part[:20]!r}")
        out.setdefault(part[0], part[2:])
    return out


class ScramServerExchange:
    """One SCRAM-SHA-256 exchange (no channel binding is advertised)."""

    mechanism = "SCRAM-SHA-256"

    def __init__(self, user: str, verifier: ScramVerifier | None) -> None:
        self.user = user
        self.known = verifier is not None
        self.verifier = verifier or _mock_verifier(user)
        self._server_nonce = base64.b64encode(secrets.token_bytes(18)).decode("ascii")
        self._client_first_bare = ""
        self._server_first = ""
        self._gs2_header = ""
        self._nonce = ""

    def first(self, client_first: bytes) -> bytes:
        try:
            text = client_first.decode("utf-8")
        except UnicodeDecodeError:
            raise AuthFailed("SCRAM client-first is not UTF-8") from None
        parts = text.split(",", 2)
        if len(parts) != 3:
            raise AuthFailed("malformed SCRAM client-first message")
        cbind, authzid, bare = parts
        if cbind.startswith("p="):
            raise AuthFailed("client requires channel binding, which was not offered")
        if cbind not in ("n", "y"):
            raise AuthFailed("malformed SCRAM gs2 header")
        attrs = _attrs(bare)
        if "r" not in attrs or not attrs["r"]:
            raise AuthFailed("SCRAM client-first has no nonce")
        if "m" in attrs:
            raise AuthFailed("SCRAM extensions are not supported")
        self._gs2_header = f"{cbind},{authzid},"
        self._client_first_bare = bare
        self._nonce = attrs["r"] + self._server_nonce
        salt = base64.b64encode(self.verifier.salt).decode("ascii")
        self._server_first = f"r={self._nonce},s={salt},i={self.verifier.iterations}"
        return self._server_first.encode("ascii")

    def final(self, client_final: bytes) -> bytes:
        try:
            text = client_final.decode("utf-8")
        except UnicodeDecodeError:
            raise AuthFailed("SCRAM client-final is not UTF-8") from None
        without_proof, sep, proof_part = text.rpartition(",p=")
        if not sep:
            raise AuthFailed("SCRAM client-final has no proof")
        attrs = _attrs(without_proof)
        try:
            channel = base64.b64decode(attrs.get("c", ""), validate=True).decode("utf-8")
            proof = base64.b64decode(proof_part, validate=True)
        except (ValueError, UnicodeDecodeError):
            raise AuthFailed("SCRAM client-final has invalid base64") from None
        if channel != self._gs2_header:
            raise AuthFailed("SCRAM channel binding data does not match")
        if attrs.get("r") != self._nonce:
            raise AuthFailed("SCRAM nonce mismatch")
        auth_message = f"{self._client_first_bare},{self._server_first},{without_proof}".encode("utf-8")
        client_signature = hmac.new(self.verifier.stored_key, auth_message, hashlib.sha256).digest()
        if len(proof) != len(client_signature):
            raise AuthFailed("SCRAM proof has the wrong length")
        client_key = bytes(a ^ b for a, b in zip(client_signature, proof))
        if not hmac.compare_digest(hashlib.sha256(client_key).digest(), self.verifier.stored_key) or not self.known:
            raise AuthFailed("wrong password" if self.known else "unknown user")
        server_signature = hmac.new(self.verifier.server_key, auth_message, hashlib.sha256).digest()
        return b"v=" + base64.b64encode(server_signature)
