"""Ed25519 checkpoints: the signed statements that pin the hash chain.

Why Ed25519 and not an HMAC: whoever verifies an HMAC chain can also forge it
(Acra's weakness). With a signature the auditor needs only the public key; the
private key stays with the gateway (``audit.checkpoints.key_file``, mode 0600,
created on first start; the public key is written next to it as ``.pub`` and
into the store's ``meta`` table).

A checkpoint body is canonical JSON (sorted keys, no spaces, UTF-8)::

    {"at":"2026-11-24T05:33:12.123456Z","hash":"<hex of hash(seq)>","key_id":"<16 hex>",
     "reason":"interval","seq":1000,"store":"<store id>","type":"checkpoint","v":1}

``reason`` is ``interval``, ``shutdown``, ``startup`` or ``retention``; a
retention checkpoint also has ``removed``: ``{"through_seq": n, "records": k,
"before": "<ISO time>", "why": "..."}``, and its ``hash`` is hash(n), the anchor
the remaining chain continues from. The signature is over the body bytes.
``key_id`` is the first 16 hex digits of SHA-256 over the raw 32-byte public key.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

__all__ = [
    "Signer",
    "load_or_create_signer",
    "load_public_key",
    "public_key_from_pem",
    "key_id",
    "checkpoint_body",
    "verify_signature",
]


def key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def public_pem(public_key: Ed25519PublicKey) -> str:
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")


class Signer:
    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key
        self.public_key = private_key.public_key()
        self.key_id = key_id(self.public_key)
        self.public_pem = public_pem(self.public_key)

    def sign(self, body: bytes) -> bytes:
        return self._key.sign(body)


def load_or_create_signer(path: Path) -> Signer:
    """Load the PEM private key at ``path``, creating it (0600) and ``path.pub`` if missing."""
    path = Path(path)
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{path} is not an Ed25519 private key")
        signer = Signer(key)
    else:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        signer = Signer(key)
    pub = public_path(path)
    if not pub.exists() or pub.read_text() != signer.public_pem:
        pub.write_text(signer.public_pem)
    return signer


def public_path(private_path: Path) -> Path:
    return Path(str(private_path) + ".pub")


def public_key_from_pem(pem: str | bytes) -> Ed25519PublicKey:
    key = serialization.load_pem_public_key(pem.encode() if isinstance(pem, str) else pem)
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("not an Ed25519 public key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    return public_key_from_pem(Path(path).read_bytes())


def checkpoint_body(
    *, seq: int, chain_hash: bytes, at: str, reason: str, store: str, key: str, removed: dict[str, Any] | None = None
) -> bytes:
    fields: dict[str, Any] = {
        "v": 1,
        "type": "checkpoint",
        "seq": seq,
        "hash": chain_hash.hex(),
        "at": at,
        "reason": reason,
        "store": store,
        "key_id": key,
    }
    if removed is not None:
        fields["removed"] = removed
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def verify_signature(public_key: Ed25519PublicKey, body: bytes, signature: bytes) -> bool:
    try:
        public_key.verify(signature, body)
    except InvalidSignature:
        return False
    return True
