"""Audit trail operations shared by the CLI and the HTTP API: verify, export, retention.

Why here and not in the CLI: the same questions ("is the trail intact?", "give
me sessions X..Y for the auditor", "what would retention remove?") are asked
from a terminal and over HTTP, and must get the same answer. Every function
opens the configured store as a reader (never creating it) and closes it.

Which public key verifies, when none is given: the store's ``meta``
``public_key_pem``, else ``<audit.checkpoints.key_file>.pub``. When both exist
and differ, that is itself reported (``wrong_key``): someone who can write the
store could replace the key in ``meta`` and re-sign everything with their own,
so an auditor should pin the key (``--public-key``) or its fingerprint.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from pathlib import Path

from ..config import Config
from ..config_audit import parse_duration_seconds
from ..store import AuditStore, AuditStoreError, store_for
from ..store.export import ExportError, ExportResult, export_trail, open_export, read_export
from ..store.records import GENESIS, iso_time
from ..store.retention import RetentionError, RetentionResult, apply_retention, plan_retention
from ..store.signing import Signer, key_id, load_or_create_signer, public_key_from_pem, public_path, public_pem
from ..store.verify import VerifyError, VerifyReport, store_public_key, verify_records, verify_store

__all__ = [
    "AuditServiceError",
    "reader",
    "verify",
    "verify_export",
    "export",
    "public_key_text",
    "retention",
    "parse_time",
    "key_for",
]


class AuditServiceError(Exception):
    """The request cannot be served. ``code`` 2: bad input or config; 1: the store failed."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def parse_time(text: str) -> str:
    """An ISO 8601 time (a date alone means midnight; no zone means UTC) as the trail writes it."""
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise AuditServiceError(f"not an ISO 8601 date-time: {text!r}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return iso_time(when.timestamp())


@asynccontextmanager
async def reader(config: Config) -> AsyncIterator[AuditStore]:
    """The configured store, opened without creating anything; closed afterwards."""
    if not config.audit_enabled:
        raise AuditServiceError("session recording is not enabled in this config (set data_dir or audit.store)")
    store = store_for(config)
    try:
        await store.open(create=False)
    except AuditStoreError as exc:
        raise AuditServiceError(str(exc)) from exc
    try:
        yield store
    finally:
        await store.close()


def _load_key_file(path: Path):
    try:
        return public_key_from_pem(Path(path).read_bytes())
    except (OSError, ValueError) as exc:
        raise AuditServiceError(f"{path}: not a readable Ed25519 public key ({exc})") from exc


async def key_for(config: Config, store: AuditStore, given: Path | None):
    """(key, where it came from, a warning when the store's and the key file's keys differ)."""
    if given is not None:
        return _load_key_file(given), str(given), None
    try:
        key, source = await store_public_key(store, config.audit.checkpoints.key_file)
    except VerifyError as exc:
        raise AuditServiceError(f"{exc} (use --public-key PEM)") from exc
    except AuditStoreError as exc:
        raise AuditServiceError(str(exc), 1) from exc
    pub = public_path(config.audit.checkpoints.key_file)
    mismatch = None
    if source == "store meta" and pub.is_file():
        try:
            file_key = public_key_from_pem(pub.read_bytes())
        except ValueError:
            file_key = None
        if file_key is not None and key_id(file_key) != key_id(key):
            mismatch = (
                f"the store's public key ({key_id(key)}) differs from {pub} ({key_id(file_key)}): "
                "the key in the store may have been replaced; verify with --public-key"
            )
    return key, source, mismatch


async def verify(
    config: Config, *, public_key: Path | None = None, start: int | None = None, end: int | None = None
) -> VerifyReport:
    if start is not None and end is not None and end < start:
        raise AuditServiceError("--to must not be less than --from")
    async with reader(config) as store:
        key, source, mismatch = await key_for(config, store, public_key)
        try:
            report = await verify_store(store, key, start=start, end=end, key_source=source)
        except AuditStoreError as exc:
            raise AuditServiceError(str(exc), 1) from exc
    if mismatch:
        report.add("wrong_key", 0, None, mismatch)
    return report


def verify_export(path: Path, *, public_key: Path | None = None) -> VerifyReport:
    """Verify an export directory or archive (the key defaults to the one inside it,
    which proves only consistency: pin the key with ``public_key``)."""
    try:
        with open_export(Path(path)) as directory:
            anchor, records, checkpoints, pem = read_export(directory)
            key = _load_key_file(public_key) if public_key else public_key_from_pem(pem)
            source = str(public_key) if public_key else "the export's public_key.pem"
            anchor_hash = bytes.fromhex(anchor["hash"]) if anchor.get("hash") else None
            seq = int(anchor.get("seq", 0))
            if seq == 0 and anchor_hash != GENESIS:
                anchor_hash = GENESIS  # the chain starts at 32 zero bytes, whatever the file says
            return verify_records(records, checkpoints, key, expect_from=seq + 1, anchor=anchor_hash,
                                  key_source=source, anchor_source=anchor.get("source"))
    except (ExportError, ValueError, KeyError, TypeError) as exc:
        raise AuditServiceError(str(exc), 1) from exc


async def _store_id(store: AuditStore) -> str | None:
    for name in ("store_id", "store"):
        value = await store.get_meta(name)
        if value:
            return value
    last = (await store.head())[0]
    checkpoints = await store.checkpoints(max(last - 100_000, 0), None)
    if checkpoints:
        import json

        try:
            return json.loads(checkpoints[-1].body).get("store")
        except ValueError:
            return None
    return None


async def export(
    config: Config,
    out: Path,
    *,
    start: int | None = None,
    end: int | None = None,
    since: str | None = None,
    until: str | None = None,
) -> ExportResult:
    since_at = parse_time(since) if since else None
    until_at = parse_time(until) if until else None
    async with reader(config) as store:
        pem = await public_key_text(config, store)
        try:
            return await export_trail(store, out, public_pem=pem, start=start, end=end, since=since_at,
                                      until=until_at, store_id=await _store_id(store))
        except ExportError as exc:
            raise AuditServiceError(str(exc)) from exc
        except (AuditStoreError, OSError) as exc:
            raise AuditServiceError(f"export failed: {exc}", 1) from exc


async def public_key_text(config: Config, store: AuditStore | None = None) -> str:
    """The signing public key (PEM): the store's, else the key file's ``.pub``."""
    if store is None:
        try:
            async with reader(config) as opened:
                return await public_key_text(config, opened)
        except AuditServiceError:
            pub = public_path(config.audit.checkpoints.key_file)
            if not pub.is_file():
                raise
            return public_pem(_load_key_file(pub))  # no trail yet: the gateway's key file
    key, _source, _ = await key_for(config, store, None)
    return public_pem(key)


def _signer(config: Config) -> Signer:
    path = config.audit.checkpoints.key_file
    if not path.is_file():
        raise AuditServiceError(f"the signing key {path} does not exist (retention signs its checkpoint with it)")
    try:
        return load_or_create_signer(path)
    except (OSError, ValueError) as exc:
        raise AuditServiceError(f"cannot read the signing key {path}: {exc}", 1) from exc


async def retention(
    config: Config,
    *,
    apply: bool = False,
    max_age: str | None = None,
    why: str | None = None,
    force: bool = False,
    now: float | None = None,
) -> RetentionResult:
    """Dry run by default: what would be removed. ``apply`` removes it (``force``: even if
    the records to remove do not verify)."""
    text = max_age or config.audit.retention.max_age
    if text is None:
        raise AuditServiceError("no retention period: set audit.retention.max_age or pass --max-age")
    try:
        seconds = parse_duration_seconds(text)
    except ValueError as exc:
        raise AuditServiceError(f"--max-age: {exc}") from exc
    now = time.time() if now is None else now
    async with reader(config) as store:
        try:
            if not apply:
                key = None
                try:
                    key, _source, _ = await key_for(config, store, None)
                except AuditServiceError:
                    pass  # a plan without a key counts any checkpoint
                return await plan_retention(store, max_age_seconds=seconds, now=now, public_key=key)
            signer = _signer(config)
            try:
                key, source, _ = await key_for(config, store, None)
            except AuditServiceError:
                key, source = None, None
            if key is not None and key_id(key) != signer.key_id:
                raise AuditServiceError(
                    f"the signing key {config.audit.checkpoints.key_file} ({signer.key_id}) is not the trail's key "
                    f"({key_id(key)}, from {source}); refusing to sign a retention checkpoint with it"
                )
            store_id = await _store_id(store) or "unknown"
            return await apply_retention(
                store, signer, max_age_seconds=seconds, now=now, store_id=store_id,
                why=why or f"audit.retention.max_age={text}", verify_first=not force,
            )
        except RetentionError:
            raise
        except AuditStoreError as exc:
            raise AuditServiceError(str(exc), 1) from exc
