"""Audit storage: the record format, the hash chain, signed checkpoints and two backends.

``open_store(config)`` returns the configured backend (not yet opened).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import AuditStore, AuditStoreError, SessionFilter, SessionSummary, StoredCheckpoint, StoredRecord

if TYPE_CHECKING:
    from ..config import Config

__all__ = [
    "AuditStore",
    "AuditStoreError",
    "SessionFilter",
    "SessionSummary",
    "StoredCheckpoint",
    "StoredRecord",
    "store_for",
]


def store_for(config: "Config") -> AuditStore:
    """The audit store the config names (SQLite file or PostgreSQL database), not yet opened."""
    store = config.audit.store
    if store.type == "postgres":
        from .postgres import PostgresAuditStore

        return PostgresAuditStore(store.dsn or "")
    from .sqlite import SqliteAuditStore

    return SqliteAuditStore(store.path, sync=store.sync)
