"""Readiness for ``GET /health``: can this gateway do its job right now?

Two things make a gateway useless even though its process answers: an audit
store it cannot write (every statement is refused, or forwarded unrecorded)
and an upstream it cannot reach (every login to that target fails). So the
check is:

* **audit**: the audit writer's own state (``writer.failed``), no extra I/O: the
  writer finds out on its next write and retries on its own. An idle gateway
  whose store went away is reported once a write fails.
* **upstreams**: a TCP (or Unix socket) connect to every target at once, with a
  short timeout, then closed at once: no PostgreSQL login, so no credential is
  used and no connection slot is held. Results are cached for a few seconds and
  concurrent requests share one round of checks, so frequent probes from a load
  balancer cost the upstreams nothing to speak of.

The body names every check, so a 503 says what is wrong. Errors are reduced to
short codes (``refused``, ``timeout``, ``store_failed``, ...), never the text of
an error (it can name hosts, users or paths): the endpoint is unauthenticated.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import time
from typing import Any

__all__ = ["HealthChecker", "CONNECT_TIMEOUT", "CACHE_SECONDS"]

CONNECT_TIMEOUT = 1.0
CACHE_SECONDS = 3.0


def _error_code(exc: BaseException) -> str:
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, FileNotFoundError):
        return "no_socket"
    if isinstance(exc, socket.gaierror):
        return "dns"
    if isinstance(exc, OSError):
        if exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
            return "unreachable"
        return errno.errorcode.get(exc.errno or 0, "os_error").lower()
    return "error"


async def _probe(host: str, port: int, timeout: float) -> dict[str, Any]:
    began = time.perf_counter()
    try:
        if host.startswith("/"):
            opening = asyncio.open_unix_connection(os.path.join(host, f".s.PGSQL.{port}"))
        else:
            opening = asyncio.open_connection(host, port)
        _reader, writer = await asyncio.wait_for(opening, timeout)
    except Exception as exc:
        return {"ok": False, "error": _error_code(exc)}
    writer.close()
    try:
        await asyncio.wait_for(writer.wait_closed(), timeout)
    except Exception:
        pass
    return {"ok": True, "seconds": round(time.perf_counter() - began, 4)}


class HealthChecker:
    """``await check()`` -> ``(healthy, body)`` for ``GET /health``."""

    def __init__(self, gateway: Any, *, timeout: float = CONNECT_TIMEOUT, cache_seconds: float = CACHE_SECONDS) -> None:
        self.gateway = gateway
        self.timeout = timeout
        self.cache_seconds = cache_seconds
        self._upstreams: dict[str, dict[str, Any]] | None = None
        self._checked_at = float("-inf")
        self._round: asyncio.Future | None = None

    def audit(self) -> dict[str, Any]:
        writer = getattr(self.gateway, "audit_writer", None)
        if writer is None:
            return {"ok": True, "enabled": False}
        status = writer.status()
        out: dict[str, Any] = {"ok": status["failed"] is None, "enabled": True, "store": status["store"],
                               "queued": status["queued"]}
        if status["failed"] is not None:
            # Not the store's error text: it can name the audit database's host, user or path,
            # and this endpoint is unauthenticated. The gateway log has the text.
            out["error"] = "store_failed"
            since = getattr(writer, "failed_since", None)
            if since is not None:
                out["failing_for_s"] = round(max(0.0, time.time() - since), 1)
        return out

    async def upstreams(self) -> dict[str, dict[str, Any]]:
        """Every target's reachability (cached for ``cache_seconds``; one round at a time)."""
        if self._upstreams is not None and time.monotonic() - self._checked_at < self.cache_seconds:
            return self._upstreams
        if self._round is None or self._round.done():
            self._round = asyncio.ensure_future(self._check_all())
        return await asyncio.shield(self._round)

    async def _check_all(self) -> dict[str, dict[str, Any]]:
        targets = self.gateway.config.targets
        names = sorted(targets)
        results = await asyncio.gather(*(_probe(targets[n].host, targets[n].port, self.timeout) for n in names))
        self._upstreams = dict(zip(names, results))
        self._checked_at = time.monotonic()
        return self._upstreams

    async def check(self) -> tuple[bool, dict[str, Any]]:
        audit = self.audit()
        upstreams = await self.upstreams()
        failing = (["audit"] if not audit["ok"] else []) + [
            f"upstream:{name}" for name, result in upstreams.items() if not result["ok"]]
        body: dict[str, Any] = {"status": "unhealthy" if failing else "ok",
                                "checks": {"audit": audit, "upstreams": upstreams}}
        if failing:
            body["failing"] = failing
        return not failing, body
