"""Run a real gateway in a background thread, for tests and for policy authors.

``RunningGateway`` starts :class:`~pgwarden.server.gateway.Gateway` on its own
event loop (uvloop when installed) in a daemon thread, on a free port, and
stops it with the same drain the SIGTERM path uses. Tests then talk to it with
real clients (psql, psycopg, asyncpg, pgbench, node-postgres).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Sequence
from typing import Any

from ..config import Config, parse_config
from ..policy.pipeline import Stage
from ..server.gateway import Gateway

__all__ = ["RunningGateway", "gateway_config"]


def gateway_config(pg: Any, *, users: list[dict] | None = None, tls: dict | None = None, **overrides: Any) -> Config:
    """A config whose target ``app`` is ``pg`` (a TestPostgres) as role ``app`` with SCRAM and TLS."""
    data: dict[str, Any] = {
        "listen": {"host": "127.0.0.1", "port": 0, "tls": tls or {"mode": "disable"}, "shutdown_grace": 2},
        "logging": {"level": "info", "statements": True},
        "targets": {
            "app": {
                "host": pg.host,
                "port": pg.port,
                "database": "appdb",
                "user": "app",
                "password": pg.passwords["app"],
                "sslmode": "require" if getattr(pg, "ssl", False) else "disable",
            }
        },
        "users": users or [],
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return parse_config(data)


class RunningGateway:
    def __init__(
        self, config: Config, stages: Sequence[Stage] | None = None, *, use_uvloop: bool = True, password_checker=None
    ) -> None:
        self.config = config
        self.stages = stages
        self.password_checker = password_checker
        self.use_uvloop = use_uvloop
        self.loop: asyncio.AbstractEventLoop | None = None
        self.gateway: Gateway | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._stop: asyncio.Event | None = None

    @property
    def port(self) -> int:
        assert self.gateway is not None and self.gateway.port is not None
        return self.gateway.port

    @property
    def host(self) -> str:
        return self.config.listen.host

    def start(self) -> "RunningGateway":
        self._thread = threading.Thread(target=self._main, name="pgwarden-test-gateway", daemon=True)
        self._thread.start()
        self._ready.wait(timeout=30)
        if self._error is not None:
            raise self._error
        return self

    def _main(self) -> None:
        if self.use_uvloop:
            try:
                import uvloop

                loop = uvloop.new_event_loop()
            except ImportError:
                loop = asyncio.new_event_loop()
        else:
            loop = asyncio.new_event_loop()
        self.loop = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._serve())
        except BaseException as exc:  # surfaced by start()
            self._error = exc
            self._ready.set()
        finally:
            loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        self.gateway = Gateway(self.config, self.stages, self.password_checker)
        await self.gateway.start()
        self._ready.set()
        await self._stop.wait()
        await self.gateway.shutdown()

    def call(self, fn, *args) -> Any:
        """Run ``fn(*args)`` on the gateway's loop and return its result (coroutines are awaited)."""
        assert self.loop is not None

        async def wrapper():
            result = fn(*args)
            if asyncio.iscoroutine(result):
                result = await result
            return result

        return asyncio.run_coroutine_threadsafe(wrapper(), self.loop).result(timeout=30)

    def shutdown(self, grace: float | None = None) -> None:
        """Drain like SIGTERM does (blocking until the gateway stopped)."""
        assert self.loop is not None and self.gateway is not None
        fut = asyncio.run_coroutine_threadsafe(self.gateway.shutdown(grace), self.loop)
        try:
            fut.result(timeout=(grace or self.config.listen.shutdown_grace) + 30)
        except concurrent.futures.TimeoutError:
            pass

    def stop(self) -> None:
        if self.loop is not None and self._stop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout=30)

    def dsn(self, user: str, password: str, database: str = "app", **extra: str) -> str:
        parts = {"host": self.host, "port": str(self.port), "user": user, "password": password, "dbname": database}
        parts.update(extra)
        return " ".join(f"{k}={v}" for k, v in parts.items())

    def __enter__(self) -> "RunningGateway":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
