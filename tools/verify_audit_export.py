#!/usr/bin/env python3
"""Verify a pgwarden audit export with nothing but the public key.

Why a separate script: an auditor should not have to trust (or install) the
software whose output they are checking. This file needs only Python 3.9+ and
the ``cryptography`` package, and is short enough to read before running it.

    python3 verify_audit_export.py EXPORT [--public-key KEY.pem] [--key-id HEX16]

EXPORT is the directory (or .tar / .tar.gz) made by ``pgwarden audit export``.
Pin the key: pass the PEM you got from the operator out of band with
``--public-key``, or check its fingerprint with ``--key-id``; the copy inside
the export only proves that the export is consistent with itself.

The procedure (docs/audit.md, "Exporting for a third party"):

1. key_id = first 16 hex digits of SHA-256(raw 32-byte Ed25519 public key).
2. Every line of checkpoints.jsonl: the Ed25519 signature (hex) verifies over
   the UTF-8 bytes of ``body``, and the body's ``key_id`` is the key's.
3. h = anchor.json's ``hash`` (32 zero bytes when its seq is 0). For each line
   of records.jsonl in order: ``seq`` is the previous seq + 1, the body's own
   ``"seq"`` equals it, and ``hash == SHA-256(h || body)``; then h = hash.
4. At every checkpoint's seq, h equals the checkpoint's ``hash``. A checkpoint
   at the anchor's seq (if any) must sign the anchor's hash.
5. A checkpoint past the last record means records were cut off; records after
   the last checkpoint are consistent but not signed (a warning).

Exit status: 0 when the export verifies, 1 with the problems listed, 2 when it
cannot be read.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import sys
import tarfile
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

NAMES = ("records.jsonl", "checkpoints.jsonl", "anchor.json", "public_key.pem")


def read_files(path: Path) -> dict:
    """name -> bytes for the export's files (from a directory or an archive)."""
    files = {}
    if path.is_dir():
        for name in NAMES:
            if (path / name).is_file():
                files[name] = (path / name).read_bytes()
    else:
        with tarfile.open(path) as tar:
            for member in tar.getmembers():
                if member.name in NAMES and member.isfile():
                    files[member.name] = tar.extractfile(member).read()
    missing = [n for n in NAMES if n not in files]
    if missing:
        raise ValueError(f"missing {', '.join(missing)}")
    return files


def key_id_of(key: Ed25519PublicKey) -> str:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def load_key(pem: bytes) -> Ed25519PublicKey:
    key = serialization.load_pem_public_key(pem)
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("the public key is not Ed25519")
    return key


def verify(files: dict, key: Ed25519PublicKey) -> tuple[list, list, dict]:
    """(problems, warnings, summary) for an export's files."""
    problems, warnings = [], []
    kid = key_id_of(key)

    signed = {}  # seq -> hash hex, from checkpoints that verify
    for number, line in enumerate(files["checkpoints.jsonl"].decode("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        item = json.loads(line)
        body = item["body"].encode("utf-8")
        data = json.loads(body)
        seq = data.get("seq")
        if data.get("key_id") != kid:
            problems.append(f"checkpoint {seq}: wrong_key (signed by {data.get('key_id')}, expected {kid})")
            continue
        try:
            key.verify(bytes.fromhex(item["signature"]), body)
        except InvalidSignature:
            problems.append(f"checkpoint {seq}: bad_signature")
            continue
        if seq != item.get("seq"):
            problems.append(f"checkpoint {seq}: listed as seq {item.get('seq')}")
        signed[seq] = data["hash"]

    anchor = json.loads(files["anchor.json"])
    seq = int(anchor["seq"])
    h = bytes(32) if seq == 0 else bytes.fromhex(anchor["hash"] or "")
    if seq and len(h) != 32:
        problems.append(f"record {seq} (the anchor): deleted (its hash is unknown)")
    if seq in signed and signed[seq] != h.hex():
        problems.append(f"anchor {seq}: checkpoint_mismatch (the checkpoint signs another hash)")
    first, count = seq + 1, 0
    last_good = seq
    for line in files["records.jsonl"].decode("utf-8").splitlines():
        if not line.strip():
            continue
        item = json.loads(line)
        n = int(item["seq"])
        body = item["body"].encode("utf-8") if "body" in item else base64.b64decode(item["body_b64"])
        stored = bytes.fromhex(item["hash"])
        if n != seq + 1:
            problems.append(f"records {seq + 1}..{n - 1}: deleted" if n > seq + 1 else f"record {n}: reordered")
        try:
            claimed = json.loads(body).get("seq")
        except ValueError:
            claimed = None
        if claimed != n:
            problems.append(f"record {n}: reordered/changed (its body says seq {claimed})")
        if hashlib.sha256(h + body).digest() != stored and n == seq + 1:
            problems.append(f"record {n}: changed (hash does not chain from record {n - 1})")
        h, seq, count = stored, n, count + 1
        if n in signed:
            if signed[n] != h.hex():
                problems.append(f"records {last_good + 1}..{n}: checkpoint_mismatch (checkpoint {n} signs another hash)")
            last_good = n
    beyond = [s for s in signed if s > seq]
    if beyond:
        problems.append(f"records {seq + 1}..{max(beyond)}: truncated (checkpoint {max(beyond)} signs them)")
    if count and last_good < seq:
        warnings.append(f"records {max(last_good + 1, first)}..{seq} follow the last checkpoint: consistent but unsigned")
    summary = {"records": count, "first": first if count else None, "last": seq if count else None,
               "checkpoints": len(signed), "key_id": kid}
    return problems, warnings, summary


def main(argv: list | None = None) -> int:
    parser = argparse.ArgumentParser(description="Verify a pgwarden audit export with only the public key.")
    parser.add_argument("export", type=Path, help="export directory or .tar/.tar.gz")
    parser.add_argument("--public-key", type=Path, help="the PEM public key you trust (default: the export's)")
    parser.add_argument("--key-id", help="the 16-hex-digit key fingerprint you expect")
    args = parser.parse_args(argv)
    try:
        files = read_files(args.export)
        key = load_key(args.public_key.read_bytes() if args.public_key else files["public_key.pem"])
        if args.key_id and key_id_of(key) != args.key_id.lower():
            print(f"key_id {key_id_of(key)} is not the expected {args.key_id}", file=sys.stderr)
            return 1
        problems, warnings, summary = verify(files, key)
    except (OSError, ValueError, KeyError, TypeError, tarfile.TarError) as exc:
        print(f"error: cannot read {args.export}: {exc}", file=sys.stderr)
        return 2
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if not args.public_key and not args.key_id:
        print("warning: verified with the export's own key; pin it with --public-key or --key-id", file=sys.stderr)
    span = f"{summary['first']}..{summary['last']}" if summary["records"] else "none"
    print(f"records {span} ({summary['records']}), {summary['checkpoints']} signed checkpoint(s), key {summary['key_id']}")
    if problems:
        print(f"FAILED: {len(problems)} problem(s)")
        for problem in problems:
            print(f"  {problem}")
        return 1
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
