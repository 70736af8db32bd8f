"""A small SQLite file shared by the CLI and a running gateway.

The API-key store and the control store both keep state in one SQLite file in
the data directory: created on the first write (never by a reader), mode 0600
from the start (SQLite gives its -wal and -shm files the same mode), WAL so the
gateway can read while the CLI writes, one short-lived connection per call.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["SqliteFile"]


class SqliteFile:
    """Base for stores kept in one SQLite file; subclasses set ``schema``."""

    schema: Sequence[str] = ()

    def __init__(self, path: str | os.PathLike[str], *, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.clock = clock
        self._ready = False
        self._lock = threading.Lock()

    def _connect(self, create: bool) -> sqlite3.Connection:
        """Open the file; without ``create`` a missing file raises FileNotFoundError."""
        if not self.path.exists():
            if not create:
                raise FileNotFoundError(self.path)
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
        conn = sqlite3.connect(self.path, timeout=5.0, isolation_level=None)
        try:
            with self._lock:
                if not self._ready:
                    conn.execute("PRAGMA journal_mode=WAL")
                    for statement in self.schema:
                        conn.execute(statement)
                    self._ready = True
        except BaseException:
            conn.close()
            raise
        return conn
