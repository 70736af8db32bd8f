"""The file-based control plane: revocations, live sessions and kill requests.

``pgwarden revoke`` and ``pgwarden sessions`` run in another process than the
gateway, so they meet in a SQLite file in the data dir (WAL, mode 0600, created
on first write), like the API key store:

* ``revocations``: subjects whose logins are refused and whose live sessions
  are ended. They persist until removed; API keys are revoked as ``key:NAME``.
* ``live_sessions``: one row per session in RELAY, written by the gateway that
  serves it (``gateway_pid`` plus a per-gateway ``gateway_id``) and removed
  when it ends or when that gateway stops. Rows of gateway processes that no
  longer exist are ignored and pruned.
* ``kill_requests``: append-only; each gateway polls for new rows and ends the
  named session if it is one of its own.

Every call opens its own short-lived connection; reading a store whose file does
not exist yet returns "nothing" and never creates it.
"""

from __future__ import annotations

import os
from contextlib import closing
from dataclasses import asdict, dataclass
from pathlib import Path

from .sqlitefile import SqliteFile
from typing import Any

__all__ = ["ControlStore", "LiveSession", "control_store_for"]

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS revocations (
        subject    TEXT PRIMARY KEY,
        reason     TEXT,
        revoked_at REAL
    )""",
    """CREATE TABLE IF NOT EXISTS live_sessions (
        id          TEXT PRIMARY KEY,
        gateway_pid INT,
        gateway_id  TEXT,
        subject     TEXT,
        user        TEXT,
        target      TEXT,
        client      TEXT,
        auth        TEXT,
        since       REAL
    )""",
    """CREATE TABLE IF NOT EXISTS kill_requests (
        id           INTEGER PRIMARY KEY AUTOINCREMENT,
        session_id   TEXT,
        requested_at REAL
    )""",
)


@dataclass(frozen=True)
class LiveSession:
    id: str
    gateway_pid: int
    subject: str
    user: str
    target: str
    client: str
    auth: str
    since: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


class ControlStore(SqliteFile):
    """Revocations, live sessions and kill requests in the SQLite file at ``path``."""

    schema = tuple(_SCHEMA)

    def _read(self, sql: str, params: tuple = ()) -> list[tuple]:
        if not self.path.exists():
            return []
        with closing(self._connect(create=False)) as conn:
            return conn.execute(sql, params).fetchall()

    # ------------------------------------------------------------ revocations

    def revoke(self, subject: str, reason: str = "") -> bool:
        """Revoke ``subject``; False when it was already revoked."""
        if not subject:
            raise ValueError("a revocation needs a subject")
        with closing(self._connect(create=True)) as conn:
            cur = conn.execute(
                "INSERT OR IGNORE INTO revocations (subject, reason, revoked_at) VALUES (?, ?, ?)",
                (subject, reason or "", self.clock()),
            )
            return cur.rowcount > 0

    def unrevoke(self, subject: str) -> bool:
        """Lift the revocation of ``subject``; False when it was not revoked."""
        if not self.path.exists():
            return False
        with closing(self._connect(create=False)) as conn:
            return conn.execute("DELETE FROM revocations WHERE subject = ?", (subject,)).rowcount > 0

    def is_revoked(self, subject: str) -> bool:
        return bool(self._read("SELECT 1 FROM revocations WHERE subject = ?", (subject,)))

    def revoked_subjects(self) -> set[str]:
        return {row[0] for row in self._read("SELECT subject FROM revocations")}

    def revocations(self) -> list[tuple[str, str, float]]:
        return [tuple(r) for r in self._read("SELECT subject, reason, revoked_at FROM revocations ORDER BY revoked_at")]

    # ------------------------------------------------------------ live sessions

    def session_started(
        self,
        session_id: str,
        *,
        gateway_pid: int,
        gateway_id: str = "",
        subject: str,
        user: str,
        target: str,
        client: str,
        auth: str,
        since: float | None = None,
    ) -> None:
        with closing(self._connect(create=True)) as conn:
            conn.execute(
                "INSERT OR REPLACE INTO live_sessions"
                " (id, gateway_pid, gateway_id, subject, user, target, client, auth, since)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (session_id, gateway_pid, gateway_id, subject, user, target, client, auth,
                 self.clock() if since is None else since),
            )

    def session_ended(self, session_id: str) -> None:
        if not self.path.exists():
            return
        with closing(self._connect(create=False)) as conn:
            conn.execute("DELETE FROM live_sessions WHERE id = ?", (session_id,))

    def live_sessions(self) -> list[LiveSession]:
        """Sessions of gateway processes that are still running, oldest first."""
        rows = self._read(
            "SELECT id, gateway_pid, subject, user, target, client, auth, since FROM live_sessions ORDER BY since, id"
        )
        return [LiveSession(*row) for row in rows if _alive(row[1])]

    def clear_gateway(self, pid: int, gateway_id: str | None = None) -> None:
        """Forget the live sessions of gateway ``pid`` (only ``gateway_id``'s when given)."""
        if not self.path.exists():
            return
        with closing(self._connect(create=False)) as conn:
            if gateway_id is None:
                conn.execute("DELETE FROM live_sessions WHERE gateway_pid = ?", (pid,))
            else:
                conn.execute("DELETE FROM live_sessions WHERE gateway_pid = ? AND gateway_id = ?", (pid, gateway_id))

    def prune_dead(self) -> None:
        """Forget the live sessions of gateway processes that no longer exist (a crash leaves them)."""
        pids = {row[0] for row in self._read("SELECT DISTINCT gateway_pid FROM live_sessions")}
        for pid in pids:
            if not _alive(pid):
                self.clear_gateway(pid)

    # ------------------------------------------------------------ kill requests

    def request_kill(self, session_id: str) -> bool:
        """Ask the gateway serving ``session_id`` to end it; False if there is no such live session."""
        if not any(s.id == session_id for s in self.live_sessions()):
            return False
        with closing(self._connect(create=True)) as conn:
            conn.execute(
                "INSERT INTO kill_requests (session_id, requested_at) VALUES (?, ?)", (session_id, self.clock())
            )
        return True

    def last_kill_id(self) -> int:
        rows = self._read("SELECT COALESCE(MAX(id), 0) FROM kill_requests")
        return int(rows[0][0]) if rows else 0

    def pending_kills(self, after_id: int) -> list[tuple[int, str]]:
        """Kill requests newer than ``after_id``, as (request id, session id), oldest first."""
        return [
            (int(r[0]), r[1])
            for r in self._read("SELECT id, session_id FROM kill_requests WHERE id > ? ORDER BY id", (after_id,))
        ]


def control_store_for(config: Any) -> ControlStore | None:
    """The config's control store, or None when its path was never resolved (a config
    built in code without a base directory): the gateway then runs without one rather
    than writing a file into the current directory."""
    path = Path(config.identity.control_file)
    return ControlStore(path) if path.is_absolute() else None
