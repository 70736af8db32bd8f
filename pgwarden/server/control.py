"""The gateway's part in the file-based control plane (:mod:`pgwarden.identity.control`).

When token or API-key login is configured, the gateway records its live
sessions in the control store, and one background poller ends sessions whose
subject was revoked (``pgwarden revoke``) or that an administrator killed
(``pgwarden sessions kill``). Store calls run on one worker thread, in order,
so the event loop never waits on SQLite; a failing store is logged, never fatal.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import secrets
from collections.abc import Callable, Coroutine, Iterable
from typing import TYPE_CHECKING, Any

from ..identity.control import ControlStore
from ..wire.constants import SQLState

if TYPE_CHECKING:
    from .client import ClientConnection

__all__ = ["ControlPlane"]

log = logging.getLogger("pgwarden.gateway")


class ControlPlane:
    def __init__(
        self,
        store: ControlStore,
        sessions: Callable[[], Iterable["ClientConnection"]],
        spawn: Callable[[Coroutine[Any, Any, None], str], asyncio.Task],
    ) -> None:
        self.store = store
        self._sessions = sessions
        self._spawn = spawn
        self.poll_interval = 0.5
        self._id = secrets.token_hex(8)
        self._worker: concurrent.futures.ThreadPoolExecutor | None = None
        self._poller: asyncio.Task | None = None
        self._kills_seen = 0

    def _submit(self, fn, *args, **kwargs) -> concurrent.futures.Future | None:
        """Run a store call on the control worker thread (in submission order); errors are logged."""
        if self._worker is None:
            return None
        try:
            future = self._worker.submit(fn, *args, **kwargs)
        except RuntimeError:  # the worker was shut down
            return None

        def done(f: concurrent.futures.Future) -> None:
            if not f.cancelled() and f.exception() is not None:
                log.warning("control store %s failed: %s", getattr(fn, "__name__", fn), f.exception(),
                            extra={"event": "control_error"})

        future.add_done_callback(done)
        return future

    def session_started(self, conn: ClientConnection) -> None:
        """Record a session that reached RELAY in the control store."""
        info = conn.info
        if info is None:
            return
        identity = info.extra.get("identity")
        if identity is not None:
            from ..identity.login import API_KEY_ISSUER

            subject = identity.subject
            auth = "key" if getattr(identity, "issuer", None) == API_KEY_ISSUER else "token"
        else:
            subject, auth = info.user, str(info.extra.get("auth_method", "scram"))
            if auth.startswith("scram"):
                auth = "scram"
        self._submit(
            self.store.session_started,
            conn.id,
            gateway_pid=os.getpid(),
            gateway_id=self._id,
            subject=subject,
            user=info.user,
            target=info.target,
            client=info.client_addr,
            auth=auth,
        )

    def session_ended(self, conn: ClientConnection) -> None:
        self._submit(self.store.session_ended, conn.id)

    def _poll(self) -> tuple[set[str], list[tuple[int, str]]]:
        return self.store.revoked_subjects(), self.store.pending_kills(self._kills_seen)

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.poll_interval)
            try:
                revoked, kills = await loop.run_in_executor(self._worker, self._poll)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("control store poll failed: %s", exc, extra={"event": "control_error"})
                continue
            self.apply(revoked, kills)

    def apply(self, revoked: set[str], kills: list[tuple[int, str]]) -> None:
        """End sessions whose subject is in ``revoked`` and those named by ``kills``."""
        if kills:
            self._kills_seen = max(self._kills_seen, max(k[0] for k in kills))
        doomed = {session_id for _, session_id in kills}
        for conn in list(self._sessions()):
            if conn.phase != "RELAY" or conn.info is None:
                continue
            identity = conn.info.extra.get("identity")
            subject = getattr(identity, "subject", None) if identity is not None else None
            if subject is not None and subject in revoked:
                conn.terminate(
                    SQLState.INVALID_AUTHORIZATION,
                    f'pgwarden: access for "{subject}" was revoked',
                    f"subject {subject!r} revoked",
                )
            elif conn.id in doomed:
                conn.terminate(
                    SQLState.ADMIN_SHUTDOWN,
                    "pgwarden: session terminated by an administrator",
                    "killed by an administrator",
                )

    async def start(self) -> None:
        self._worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="pgwarden-control")
        loop = asyncio.get_running_loop()
        try:
            # Kill requests from before this start are not ours to apply.
            self._kills_seen = await loop.run_in_executor(self._worker, self.store.last_kill_id)
        except Exception as exc:
            log.warning("control store %s unreadable: %s", self.store.path, exc, extra={"event": "control_error"})
        self._submit(self.store.prune_dead)
        self._poller = self._spawn(self._loop(), "control-poller")

    async def stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            self._poller = None
        if self._worker is None:
            return
        future = self._submit(self.store.clear_gateway, os.getpid(), self._id)
        if future is not None:
            try:
                await asyncio.wait_for(asyncio.wrap_future(future), timeout=5)
            except Exception:
                pass  # logged by the done callback, or the store is slow: the rows are pruned later
        self._worker.shutdown(wait=False)
