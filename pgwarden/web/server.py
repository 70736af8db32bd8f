"""Run the HTTP API with uvicorn inside the gateway's own asyncio loop.

The gateway owns the process: its loop, its signal handlers (SIGTERM drains
sessions), its logging setup. So uvicorn here installs no signal handlers,
configures no logging (its records go to the standard ``uvicorn.*`` loggers
and on to the gateway's handlers), writes no access log, and listens on a
socket bound by us, so a bind failure is an ``OSError`` from :meth:`ApiServer.start`
instead of uvicorn's ``sys.exit``, and port 0 works (:attr:`ApiServer.port`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Generator
from typing import Any

import uvicorn

__all__ = ["ApiServer"]

log = logging.getLogger("pgwarden.api")


class _QuietLifecycle(logging.Filter):
    """Drops uvicorn's process-lifecycle lines ("Started server process [pid]"): in the
    gateway they would read as if a process had started; ApiServer logs its own."""

    QUIET = ("Started server process", "Finished server process", "Waiting for application",
             "Application startup", "Application shutdown", "Shutting down")

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno <= logging.INFO and str(record.msg).startswith(self.QUIET))


def _quiet_uvicorn() -> None:
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _QuietLifecycle) for f in logger.filters):
        logger.addFilter(_QuietLifecycle())


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:  # the gateway handles signals
        yield


def _bind(host: str, port: int) -> list[socket.socket]:
    """Sockets for every address ``host`` resolves to (``localhost``: ::1 and 127.0.0.1), on one port.

    One must bind (else the first error is raised); with port 0 the others take the port the
    first got, and an address that cannot bind is skipped once one did.
    """
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    error: OSError | None = None
    seen: set[tuple[int, str]] = set()
    for family, kind, proto, _, address in infos:
        if (family, address[0]) in seen:
            continue
        seen.add((family, address[0]))
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if sockets:
                address = (address[0], sockets[0].getsockname()[1], *address[2:])
            sock.bind(address)
            sock.setblocking(False)
            sockets.append(sock)
        except OSError as exc:
            sock.close()
            if not sockets:
                error = error or exc
            else:
                log.debug("HTTP API: not listening on %s as well: %s", address[0], exc)
    if not sockets:
        raise error or OSError(f"cannot resolve {host!r}")
    return sockets


class ApiServer:
    """``await start()`` returns once listening; ``await stop()`` closes it gracefully.

    ``app`` is any ASGI app (``build_app(service)``). ``grace`` bounds how long
    :meth:`stop` waits for requests in flight before cancelling them.
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 8433, *, grace: float = 5.0,
                 ssl_certfile: str | None = None, ssl_keyfile: str | None = None) -> None:
        self.app = app
        self.ssl_certfile = ssl_certfile
        self.ssl_keyfile = ssl_keyfile
        self.host = host
        self.port = port
        self.grace = grace
        self._server: _Server | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        if host in ("0.0.0.0", "[::]", ""):
            host = "127.0.0.1"
        return f"{'https' if self.ssl_certfile else 'http'}://{host}:{self.port}"

    async def start(self) -> None:
        if self._task is not None:
            raise RuntimeError("the API server is already started")
        _quiet_uvicorn()
        sockets = _bind(self.host, self.port)
        self.port = sockets[0].getsockname()[1]
        config = uvicorn.Config(
            self.app,
            lifespan="off",
            log_config=None,
            access_log=False,
            proxy_headers=False,  # do not believe X-Forwarded-For from anyone
            server_header=False,
            timeout_graceful_shutdown=max(1, int(round(self.grace))),
            timeout_keep_alive=5,
            limit_concurrency=200,
            ssl_certfile=self.ssl_certfile,
            ssl_keyfile=self.ssl_keyfile,
        )
        server = self._server = _Server(config)
        self._task = asyncio.create_task(server.serve(sockets=sockets), name="pgwarden-api")
        while not server.started:
            if self._task.done():  # failed while starting
                task, self._task, self._server = self._task, None, None
                for sock in sockets:
                    sock.close()
                task.result()
                raise RuntimeError("the API server stopped while starting")
            await asyncio.sleep(0.01)
        log.info("HTTP API listening on %s", self.url, extra={"event": "api_listening"})

    async def stop(self) -> None:
        server, task = self._server, self._task
        if server is None or task is None:
            return
        self._server = self._task = None
        server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout=self.grace + 2.0)
        except asyncio.TimeoutError:
            server.force_exit = True
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        except Exception:
            log.exception("the API server failed while stopping")
        log.info("HTTP API stopped", extra={"event": "api_stopped"})

    async def __aenter__(self) -> "ApiServer":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
