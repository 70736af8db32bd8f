"""pgwarden-issued API keys, for systems with no identity provider.

A key reads ``pgw_<id>_<secret>``: ``id`` (8 lower-case letters and digits) finds
the row, ``secret`` (32 random bytes, url-safe base64) proves possession. Only
``sha256(secret)`` is stored, next to the key's name, the roles it grants and
its lifetime; the full key is shown once, by ``create``.

The store is a SQLite file (WAL, mode 0600) so ``pgwarden keys`` can write while
a running gateway reads: every call opens its own connection and keeps its
transaction short, and ``check`` is a single primary-key SELECT.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import sqlite3
import string
from collections.abc import Iterable
from contextlib import closing
from dataclasses import dataclass

from .sqlitefile import SqliteFile

__all__ = ["API_KEY_PREFIX", "ApiKeyInfo", "ApiKeyRejected", "ApiKeyStore"]

API_KEY_PREFIX = "pgw_"
_ID_ALPHABET = string.ascii_lowercase + string.digits
_ID_LEN = 8
_KEY_RE = re.compile(r"pgw_([a-z0-9]{8})_([A-Za-z0-9_-]{40,64})")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    key_id        TEXT PRIMARY KEY,
    name          TEXT NOT NULL UNIQUE,
    secret_sha256 BLOB NOT NULL,
    roles         TEXT NOT NULL,
    created_at    REAL NOT NULL,
    expires_at    REAL,
    revoked_at    REAL
)
"""


class ApiKeyRejected(Exception):
    """A presented key is not valid; ``reason`` is one of
    ``malformed``, ``unknown``, ``bad_secret``, ``expired``, ``revoked``."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class ApiKeyInfo:
    """Everything about a key except its secret."""

    key_id: str
    name: str
    roles: tuple[str, ...]
    created_at: float
    expires_at: float | None = None
    revoked_at: float | None = None

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and now >= self.expires_at


def _hash(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("ascii")).digest()


class ApiKeyStore(SqliteFile):
    """API keys in the SQLite file at ``path`` (created, with its directory, on first write)."""

    schema = (_SCHEMA,)

    @staticmethod
    def _info(row: tuple) -> ApiKeyInfo:
        key_id, name, roles, created_at, expires_at, revoked_at = row
        return ApiKeyInfo(key_id, name, tuple(json.loads(roles)), created_at, expires_at, revoked_at)

    # ------------------------------------------------------------ operations

    def create(self, name: str, roles: Iterable[str], ttl_seconds: float | None = None) -> str:
        """Store a new key and return it in full; it cannot be shown again."""
        name = name.strip()
        roles = list(dict.fromkeys(r for r in roles))
        if not name:
            raise ValueError("a key needs a name")
        if not roles or not all(isinstance(r, str) and r for r in roles):
            raise ValueError("a key needs at least one role")
        if ttl_seconds is not None and ttl_seconds <= 0:
            raise ValueError("the lifetime must be positive")
        now = self.clock()
        expires = None if ttl_seconds is None else now + ttl_seconds
        secret = secrets.token_urlsafe(32)
        with closing(self._connect(create=True)) as conn:
            for _ in range(5):
                key_id = "".join(secrets.choice(_ID_ALPHABET) for _ in range(_ID_LEN))
                try:
                    conn.execute(
                        "INSERT INTO api_keys (key_id, name, secret_sha256, roles, created_at, expires_at)"
                        " VALUES (?, ?, ?, ?, ?, ?)",
                        (key_id, name, _hash(secret), json.dumps(roles), now, expires),
                    )
                except sqlite3.IntegrityError:
                    if conn.execute("SELECT 1 FROM api_keys WHERE name = ?", (name,)).fetchone():
                        raise ValueError(f"an API key named {name!r} already exists") from None
                    continue  # id collision: draw another
                return f"{API_KEY_PREFIX}{key_id}_{secret}"
        raise RuntimeError("could not allocate a key id")

    def list(self) -> list[ApiKeyInfo]:
        if not self.path.exists():
            return []
        with closing(self._connect(create=False)) as conn:
            rows = conn.execute(
                "SELECT key_id, name, roles, created_at, expires_at, revoked_at FROM api_keys ORDER BY created_at, name"
            ).fetchall()
        return [self._info(r) for r in rows]

    def revoke(self, name: str) -> bool:
        """Revoke the key called ``name``; False when there is no such unrevoked key."""
        if not self.path.exists():
            return False
        with closing(self._connect(create=False)) as conn:
            cur = conn.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL", (self.clock(), name)
            )
            return cur.rowcount > 0

    def check(self, key: str) -> ApiKeyInfo:
        """The key's record when ``key`` is valid now, else :class:`ApiKeyRejected`."""
        match = _KEY_RE.fullmatch(key)
        if match is None:
            raise ApiKeyRejected("malformed", "not of the form pgw_<id>_<secret>")
        key_id, secret = match.groups()
        try:
            conn = self._connect(create=False)
        except FileNotFoundError:
            raise ApiKeyRejected("unknown", f"no key with id {key_id!r}") from None
        with closing(conn):
            row = conn.execute(
                "SELECT key_id, name, roles, created_at, expires_at, revoked_at, secret_sha256"
                " FROM api_keys WHERE key_id = ?",
                (key_id,),
            ).fetchone()
        if row is None:
            raise ApiKeyRejected("unknown", f"no key with id {key_id!r}")
        info = self._info(row[:6])
        if not hmac.compare_digest(_hash(secret), row[6]):
            raise ApiKeyRejected("bad_secret", f"wrong secret for key {info.name!r}")
        if info.revoked_at is not None:
            raise ApiKeyRejected("revoked", f"key {info.name!r} was revoked")
        if info.expired(self.clock()):
            raise ApiKeyRejected("expired", f"key {info.name!r} has expired")
        return info
