"""TLS contexts for the client side (pgwarden as server) and the upstream side."""

from __future__ import annotations

import ssl
from pathlib import Path

__all__ = ["client_facing_context", "upstream_context", "describe_tls"]


def client_facing_context(cert: Path, key: Path, min_version: str = "TLSv1.2") -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3 if min_version == "TLSv1.3" else ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cert), str(key))
    ctx.options |= ssl.OP_NO_COMPRESSION
    return ctx


def upstream_context(sslmode: str, rootcert: Path | None) -> ssl.SSLContext:
    """``require`` encrypts without checking the certificate (libpq semantics); ``verify-full`` checks CA and host."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if sslmode == "verify-full":
        ctx.check_hostname = True
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cafile=str(rootcert))
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def describe_tls(ssl_object: ssl.SSLObject | None) -> str | None:
    if ssl_object is None:
        return None
    cipher = ssl_object.cipher()
    return f"{ssl_object.version()} {cipher[0] if cipher else ''}".strip()
