"""Throwaway TLS material for local use and for the test suite.

pgwarden speaks TLS on both sides: clients connect to the gateway with
``sslmode=require``/``verify-full`` and the gateway connects to PostgreSQL the
same way. Exercising that needs certificates, and asking a developer (or CI) to
run ``openssl`` by hand first is friction nobody needs. This module makes them
with the ``cryptography`` package:

* :func:`write_selfsigned` - one self-signed server certificate, enough for a
  local gateway and clients using ``sslmode=require`` (which encrypts but does
  not verify).
* :func:`write_ca_signed` - a private CA plus a server certificate it signed, so
  tests can also run ``sslmode=verify-full`` with ``sslrootcert=ca.crt``.

Keys are EC P-256 (small and fast to generate, accepted by OpenSSL, libpq,
Node and Go). None of this is meant for production: keys are written
unencrypted and the CA key is never saved, so nothing can be signed later.
"""

from __future__ import annotations

import datetime as _dt
import ipaddress
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "DEFAULT_HOSTS",
    "make_ca",
    "make_server_cert",
    "write_ca_signed",
    "write_selfsigned",
]

#: Names a local server is reached by; used when the caller does not say.
DEFAULT_HOSTS: tuple[str, ...] = ("localhost", "127.0.0.1", "::1")

# Start validity an hour in the past so a clock that is slightly behind (a VM,
# a container) does not reject a certificate made a second ago.
_BACKDATE = _dt.timedelta(hours=1)
_SERVER_VALIDITY = _dt.timedelta(days=2 * 365)
_CA_VALIDITY = _dt.timedelta(days=10 * 365)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def _san_entries(hosts: Iterable[str]) -> list[x509.GeneralName]:
    """IP literals become IPAddress entries (hostname checks against an IP only
    look there), everything else DNSName."""
    entries: list[x509.GeneralName] = []
    for host in hosts:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            entries.append(x509.DNSName(host))
    return entries


def make_ca(
    common_name: str = "pgwarden test CA",
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """Create a self-signed CA certificate and its private key (in memory)."""
    key = _new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = _now()
    public_key = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + _CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _server_cert(
    hosts: Sequence[str],
    key: ec.EllipticCurvePrivateKey,
    issuer_name: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    issuer_ski: x509.SubjectKeyIdentifier | None,
) -> x509.Certificate:
    hosts = list(hosts)
    if not hosts:
        raise ValueError("a server certificate needs at least one host name or IP address")
    public_key = key.public_key()
    now = _now()
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(issuer_name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + _SERVER_VALIDITY)
        .add_extension(x509.SubjectAlternativeName(_san_entries(hosts)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )
    if issuer_ski is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(issuer_ski),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


def make_server_cert(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    hosts: Sequence[str],
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """Create a server certificate for *hosts*, signed by the given CA.

    The first host becomes the subject CN; all hosts go into subjectAltName
    (which is what verify-full actually checks).
    """
    key = _new_key()
    try:
        ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        ca_ski = None
    return _server_cert(hosts, key, ca_cert.subject, ca_key, ca_ski), key


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _refuse_existing(paths: Iterable[Path], overwrite: bool) -> None:
    """Check every target before writing any, so a refusal leaves no half-written set."""
    if overwrite:
        return
    existing = [str(p) for p in paths if p.exists()]
    if existing:
        raise FileExistsError(
            f"refusing to overwrite existing TLS file(s): {', '.join(existing)} "
            "(pass overwrite=True to replace them)"
        )


def _write(path: Path, data: bytes, mode: int) -> None:
    # Create with the final mode so a private key is never briefly world-readable,
    # and chmod afterwards in case the file already existed with a wider mode.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
    finally:
        os.close(fd)


def write_selfsigned(
    directory: str | os.PathLike[str],
    hosts: Sequence[str] = DEFAULT_HOSTS,
    *,
    overwrite: bool = False,
) -> tuple[Path, Path]:
    """Write a self-signed ``server.crt`` and ``server.key`` into *directory*.

    Enough for clients using ``sslmode=require``. The key file is mode 0600
    (PostgreSQL and pgwarden refuse group/world-readable keys). The directory is
    created if needed; existing files are an error unless ``overwrite=True``.
    Returns ``(cert_path, key_path)``.
    """
    directory = Path(directory)
    cert_path, key_path = directory / "server.crt", directory / "server.key"
    _refuse_existing((cert_path, key_path), overwrite)
    directory.mkdir(parents=True, exist_ok=True)

    hosts = list(hosts)
    if not hosts:
        raise ValueError("a server certificate needs at least one host name or IP address")
    key = _new_key()
    # Issuer == subject makes it self-signed; no AKI since there is no separate issuer.
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])])
    cert = _server_cert(hosts, key, name, key, None)

    _write(key_path, _key_pem(key), 0o600)
    _write(cert_path, _cert_pem(cert), 0o644)
    return cert_path, key_path


def write_ca_signed(
    directory: str | os.PathLike[str],
    hosts: Sequence[str] = DEFAULT_HOSTS,
    *,
    overwrite: bool = False,
) -> dict[str, Path]:
    """Write ``ca.crt``, ``server.crt`` and ``server.key`` into *directory*.

    For ``sslmode=verify-full`` tests: give clients ``sslrootcert=ca.crt`` and
    connect by one of *hosts*. The CA key is discarded. Returns
    ``{"ca_cert": ..., "cert": ..., "key": ...}``.
    """
    directory = Path(directory)
    paths = {
        "ca_cert": directory / "ca.crt",
        "cert": directory / "server.crt",
        "key": directory / "server.key",
    }
    _refuse_existing(paths.values(), overwrite)
    directory.mkdir(parents=True, exist_ok=True)

    ca_cert, ca_key = make_ca()
    cert, key = make_server_cert(ca_cert, ca_key, hosts)

    _write(paths["key"], _key_pem(key), 0o600)
    _write(paths["cert"], _cert_pem(cert), 0o644)
    _write(paths["ca_cert"], _cert_pem(ca_cert), 0o644)
    return paths
