"""Export a slice of the audit trail for a third party who has only the public key.

Why this shape: an auditor should be able to check an export with a page of
Python (``tools/verify_audit_export.py``) or by hand with ``openssl`` and
``sha256sum``, without pgwarden. So the export carries each body as the exact
string that was hashed, the signed checkpoints verbatim, and the hash the first
record chains from (the *anchor*), nothing re-encoded. Layout (a directory, or
the same files in one ``.tar`` / ``.tar.gz``):

``records.jsonl``      ``{"seq":n,"hash":"<hex>","body":"<exact body>"}`` per record
                       (``"body_b64"`` instead of ``"body"`` for a body that is not
                       valid UTF-8, which pgwarden never writes but a damaged store may hold)
``checkpoints.jsonl``  ``{"seq":n,"body":"<exact checkpoint body>","signature":"<hex>"}``
                       for checkpoints in the range, plus one at ``from - 1`` (a
                       retention or interval checkpoint) that signs the anchor
``anchor.json``        ``{"seq": from-1, "hash": "<hex>", "source": ...}``: GENESIS for
                       from = 1, else the stored hash of record from-1 (or the signed
                       hash of a retention checkpoint when that record was removed)
``public_key.pem``     the store's signing key (check its fingerprint out of band!)
``manifest.json``      what was asked for and the SHA-256 of each file (informative)
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import tarfile
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .base import AuditStore, StoredCheckpoint, StoredRecord
from .records import GENESIS, iso_time
from .verify import first_record, iter_checkpoints

__all__ = ["ExportError", "ExportResult", "export_trail", "open_export", "read_export", "FILES"]

FILES = ("records.jsonl", "checkpoints.jsonl", "anchor.json", "public_key.pem", "manifest.json")
_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")


class ExportError(Exception):
    """The export cannot be made or read (empty range, existing files, bad archive)."""


@dataclass
class ExportResult:
    path: Path
    from_seq: int
    to_seq: int
    records: int = 0
    checkpoints: int = 0
    anchor: dict[str, Any] = field(default_factory=dict)
    last_checkpoint_seq: int | None = None  # records after it are not signed in this export
    files: dict[str, str] = field(default_factory=dict)  # name -> sha256

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "from": self.from_seq,
            "to": self.to_seq,
            "records": self.records,
            "checkpoints": self.checkpoints,
            "anchor": self.anchor,
            "last_checkpoint_seq": self.last_checkpoint_seq,
            "files": self.files,
        }


def _record_line(rec: StoredRecord) -> str:
    try:
        body: dict[str, Any] = {"body": rec.body.decode("utf-8")}
    except UnicodeDecodeError:
        body = {"body_b64": base64.b64encode(rec.body).decode("ascii")}
    return json.dumps({"seq": rec.seq, "hash": rec.hash.hex(), **body}, ensure_ascii=False, separators=(",", ":"))


def _checkpoint_line(cp: StoredCheckpoint) -> str:
    return json.dumps(
        {"seq": cp.seq, "body": cp.body.decode("utf-8"), "signature": cp.signature.hex()},
        ensure_ascii=False,
        separators=(",", ":"),
    )


def _is_tar(path: Path) -> bool:
    return path.name.endswith(_TAR_SUFFIXES)


async def _seq_range(
    store: AuditStore, start: int | None, end: int | None, since: str | None, until: str | None
) -> tuple[int, int | None]:
    """The seq range to export (``None``: up to the newest); fails when it holds no record."""
    lo = max(start or 1, 1)
    hi = end
    if since is not None:
        lo = max(lo, await store.last_seq_before(since) + 1)
    if until is not None:
        before = await store.last_seq_before(until)
        hi = before if hi is None else min(hi, before)
    first = await first_record(store, lo, hi)
    if first is None:
        raise ExportError(f"no records in the range {lo}..{'' if hi is None else hi}")
    if first.seq > lo:
        # Records lo..first-1 are gone; if a retention checkpoint says so, start at `first`.
        for cp in await store.checkpoints(first.seq - 1, first.seq - 1):
            if b'"reason":"retention"' in cp.body:
                lo = first.seq
    return lo, hi


async def _anchor(store: AuditStore, lo: int) -> dict[str, Any]:
    if lo == 1:
        return {"seq": 0, "hash": GENESIS.hex(), "source": "genesis"}
    async for rec in store.records(lo - 1, lo - 1):
        return {"seq": lo - 1, "hash": rec.hash.hex(), "source": "record"}
    for cp in await store.checkpoints(lo - 1, lo - 1):
        try:
            data = json.loads(cp.body)
            if data.get("reason") == "retention":
                return {"seq": lo - 1, "hash": data["hash"], "source": "retention checkpoint"}
        except (ValueError, KeyError):
            continue
    return {"seq": lo - 1, "hash": None, "source": "missing"}


async def export_trail(
    store: AuditStore,
    out: Path,
    *,
    public_pem: str,
    start: int | None = None,
    end: int | None = None,
    since: str | None = None,
    until: str | None = None,
    store_id: str | None = None,
) -> ExportResult:
    """Write records ``start..end`` (narrowed to ``since <= at < until`` when given) to ``out``:
    a new or empty directory, or a file named ``*.tar``/``*.tar.gz``. Streams; never
    holds the records in memory."""
    out = Path(out)
    lo, hi = await _seq_range(store, start, end, since, until)
    if _is_tar(out):
        if out.exists():
            raise ExportError(f"{out} exists; not overwriting")
        work = Path(tempfile.mkdtemp(prefix=".pgwarden-export-", dir=out.parent if out.parent.exists() else None))
    else:
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise ExportError(f"{out} exists and is not an empty directory")
        out.mkdir(parents=True, exist_ok=True)
        work = out
    result = ExportResult(path=out, from_seq=lo, to_seq=lo - 1 if hi is None else hi)
    try:
        result.anchor = await _anchor(store, lo)
        with open(work / "records.jsonl", "w", encoding="utf-8", newline="\n") as f:
            async for rec in store.records(lo, hi):
                f.write(_record_line(rec) + "\n")
                result.records += 1
                if hi is None:
                    result.to_seq = rec.seq
        hi = result.to_seq  # a live store: the checkpoints of what was exported, no more
        with open(work / "checkpoints.jsonl", "w", encoding="utf-8", newline="\n") as f:
            async for cp in iter_checkpoints(store, lo - 1, hi):
                f.write(_checkpoint_line(cp) + "\n")
                result.checkpoints += 1
                if cp.seq >= lo:
                    result.last_checkpoint_seq = cp.seq
        (work / "anchor.json").write_text(json.dumps(result.anchor, indent=2) + "\n")
        (work / "public_key.pem").write_text(public_pem)
        for name in FILES[:-1]:
            result.files[name] = _sha256_file(work / name)
        manifest = {
            "format": "pgwarden-audit-export",
            "version": 1,
            "created_at": iso_time(time.time()),
            "store": store_id,
            "from": lo,
            "to": hi,
            "since": since,
            "until": until,
            "records": result.records,
            "checkpoints": result.checkpoints,
            "files": result.files,
        }
        (work / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        if work is not out:
            mode = "w:gz" if out.name.endswith(("gz", "tgz")) else "w"
            with tarfile.open(out, mode) as tar:
                for name in FILES:
                    tar.add(work / name, arcname=name)
    finally:
        if work is not out:
            shutil.rmtree(work, ignore_errors=True)
    return result


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@contextmanager
def open_export(path: Path) -> Iterator[Path]:
    """The directory of an export (a tar is unpacked to a temporary one: known names only)."""
    path = Path(path)
    if path.is_dir():
        yield path
        return
    if not path.is_file():
        raise ExportError(f"{path}: no such export")
    tmp = Path(tempfile.mkdtemp(prefix=".pgwarden-export-"))
    try:
        try:
            with tarfile.open(path) as tar:
                for member in tar.getmembers():
                    if member.name in FILES and member.isfile():
                        src = tar.extractfile(member)
                        if src is not None:
                            with open(tmp / member.name, "wb") as dst:
                                shutil.copyfileobj(src, dst)
        except (tarfile.TarError, OSError) as exc:
            raise ExportError(f"{path}: not a readable export archive: {exc}") from exc
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def read_export(directory: Path) -> tuple[dict[str, Any], Iterator[StoredRecord], list[StoredCheckpoint], str]:
    """(anchor, records iterator, checkpoints, public key PEM) of an unpacked export."""
    directory = Path(directory)
    try:
        anchor = json.loads((directory / "anchor.json").read_text())
        pem = (directory / "public_key.pem").read_text()
        checkpoints = []
        with open(directory / "checkpoints.jsonl", encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    item = json.loads(line)
                    body = item["body"].encode("utf-8")
                    at = json.loads(body).get("at", "")
                    checkpoints.append(StoredCheckpoint(0, int(item["seq"]), at, body, bytes.fromhex(item["signature"])))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ExportError(f"{directory}: not a readable export: {exc}") from exc
    checkpoints.sort(key=lambda c: c.seq)

    def records() -> Iterator[StoredRecord]:
        with open(directory / "records.jsonl", encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    item = json.loads(line)
                    body = item["body"].encode("utf-8") if "body" in item else base64.b64decode(item["body_b64"])
                    yield StoredRecord(int(item["seq"]), "", None, "", bytes.fromhex(item["hash"]), body)
                except (ValueError, KeyError, TypeError) as exc:
                    raise ExportError(f"records.jsonl line {number}: {exc}") from exc

    return anchor, records(), checkpoints, pem
