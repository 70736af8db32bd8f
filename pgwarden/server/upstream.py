"""Upstream connections: connect, TLS, log in, then relay bytes to the session.

One :class:`UpstreamProtocol` per session. During startup it feeds a sans-IO
:class:`~pgwarden.session.upstream.UpstreamHandshake`; afterwards every chunk goes
straight to the owning client connection (``server_data``), with flow control
in both directions: when the client cannot take more, upstream reads pause.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from ..config import ConfigError, TargetConfig
from ..session.upstream import UpstreamError, UpstreamHandshake
from ..wire import encode
from .tls import upstream_context

if TYPE_CHECKING:
    from .client import ClientConnection

__all__ = ["UpstreamProtocol", "open_upstream", "send_cancel"]

log = logging.getLogger("pgwarden.upstream")


class UpstreamProtocol(asyncio.Protocol):
    def __init__(self, owner: "ClientConnection | None") -> None:
        self.owner = owner
        self.transport: asyncio.Transport | None = None
        self.handshake: UpstreamHandshake | None = None
        self.relaying = False
        self.closed = False
        self._relay = None  # the session's Relay while relaying (see start_relaying)
        self._client_write = None
        loop = asyncio.get_running_loop()
        self._ssl_answer: asyncio.Future[bytes] = loop.create_future()
        self._ready: asyncio.Future[None] = loop.create_future()
        self._awaiting_ssl = False

    # asyncio callbacks -----------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        relay = self._relay
        if relay is not None:
            # The hot path, inline rather than through ClientConnection.server_data:
            # one relay call, one write to the client.
            relay.session.bytes_from_server += len(data)
            try:
                relay.server_data(data)
            except Exception as exc:
                self.owner.server_data_failed(exc)  # type: ignore[union-attr]
                return
            out = relay.to_client
            if out:
                self._client_write(out[0] if len(out) == 1 else b"".join(out))  # type: ignore[misc]
                out.clear()
            if self.owner.draining:  # type: ignore[union-attr]
                self.owner._flush()  # type: ignore[union-attr]
            return
        if self.relaying:
            return  # the session is over
        if self._awaiting_ssl:
            self._awaiting_ssl = False
            if len(data) != 1:
                self._fail(UpstreamError("upstream sent unexpected data after the SSLRequest answer"))
                return
            self._ssl_answer.set_result(data)
            return
        hs = self.handshake
        if hs is None:
            self._fail(UpstreamError("upstream sent data before the startup message"))
            return
        try:
            hs.data(data)
        except UpstreamError as exc:
            self._fail(exc)
            return
        if hs.to_server:
            self.transport.write(b"".join(hs.to_server))  # type: ignore[union-attr]
            hs.to_server.clear()
        if hs.done and not self._ready.done():
            self._ready.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self._ready.done():
            self._fail(UpstreamError(f"upstream closed the connection during startup{f': {exc}' if exc else ''}"))
        elif self.owner is not None and self.relaying:
            self.owner.upstream_lost(exc)

    def start_relaying(self, relay: Any, client_write: Any) -> None:
        """From now on every chunk goes to ``relay`` and its output to ``client_write``."""
        self._relay = relay
        self._client_write = client_write
        self.relaying = True

    def stop_relaying(self) -> None:
        self._relay = None
        self._client_write = None

    def pause_writing(self) -> None:
        if self.owner is not None:
            self.owner.pause_client_reading("upstream-backpressure")

    def resume_writing(self) -> None:
        if self.owner is not None:
            self.owner.resume_client_reading("upstream-backpressure")

    # helpers ----------------------------------------------------------------

    def _fail(self, exc: Exception) -> None:
        for fut in (self._ssl_answer, self._ready):
            if not fut.done():
                fut.set_exception(exc)
        if self.transport is not None:
            self.transport.close()

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()


async def _connect_transport(target: TargetConfig, factory: Any) -> tuple[asyncio.Transport, Any]:
    loop = asyncio.get_running_loop()
    if target.host.startswith("/"):
        return await loop.create_unix_connection(factory, path=f"{target.host.rstrip('/')}/.s.PGSQL.{target.port}")
    return await loop.create_connection(factory, target.host, target.port)


async def open_upstream(
    target: TargetConfig, params: dict[str, str], owner: "ClientConnection"
) -> tuple[UpstreamProtocol, UpstreamHandshake]:
    """Connect and log in to ``target``; raises UpstreamError (or OSError/timeout)."""
    try:
        password = target.resolve_password()
    except (ConfigError, OSError) as exc:
        raise UpstreamError(f"cannot read the target password: {exc}") from None
    hs = UpstreamHandshake(target.user, target.database, password, params, target.sslmode)

    async def run() -> tuple[UpstreamProtocol, UpstreamHandshake]:
        loop = asyncio.get_running_loop()
        transport, proto = await _connect_transport(target, lambda: UpstreamProtocol(owner))
        try:
            proto.handshake = hs
            first = hs.start()
            if target.sslmode != "disable":
                proto._awaiting_ssl = True
                transport.write(first)
                hs.ssl_answer(await proto._ssl_answer)
                ctx = upstream_context(target.sslmode, target.sslrootcert)
                server_hostname = None if target.host.startswith("/") else target.host
                if target.sslmode != "verify-full":
                    server_hostname = None
                new_transport = await loop.start_tls(transport, proto, ctx, server_hostname=server_hostname)
                if new_transport is None:
                    raise UpstreamError("TLS setup with the upstream failed")
                proto.transport = new_transport  # type: ignore[assignment]
                transport = new_transport  # type: ignore[assignment]
                transport.write(hs.after_tls())
            else:
                transport.write(first)
            await proto._ready
        except BaseException:
            transport.close()
            raise
        return proto, hs

    try:
        return await asyncio.wait_for(run(), timeout=target.connect_timeout)
    except asyncio.TimeoutError:
        raise UpstreamError(f"timed out after {target.connect_timeout:g}s connecting to the upstream") from None
    except OSError as exc:
        raise UpstreamError(f"cannot connect to the upstream: {exc.strerror or exc}") from None
    except ConnectionError as exc:
        raise UpstreamError(f"upstream connection failed: {exc}") from None
    except __import__("ssl").SSLError as exc:
        raise UpstreamError(f"TLS with the upstream failed: {exc.reason or exc}") from None


async def send_cancel(target: TargetConfig, pid: int, secret: int) -> None:
    """Send a CancelRequest for an upstream backend (over TLS when the target uses it)."""
    loop = asyncio.get_running_loop()

    async def run() -> None:
        if target.host.startswith("/"):
            reader, writer = await asyncio.open_unix_connection(f"{target.host.rstrip('/')}/.s.PGSQL.{target.port}")
        else:
            reader, writer = await asyncio.open_connection(target.host, target.port)
        try:
            if target.sslmode != "disable":
                writer.write(encode.ssl_request())
                await writer.drain()
                answer = await reader.readexactly(1)
                if answer == b"S":
                    hostname = target.host if target.sslmode == "verify-full" else None
                    await writer.start_tls(upstream_context(target.sslmode, target.sslrootcert), server_hostname=hostname)
            writer.write(encode.cancel_request(pid, secret))
            await writer.drain()
            await reader.read(1)  # the server closes the connection when done
        finally:
            writer.close()

    del loop
    try:
        await asyncio.wait_for(run(), timeout=target.connect_timeout)
    except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError) as exc:
        log.warning("could not deliver a cancel request upstream: %s", exc)
