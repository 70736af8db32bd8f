#!/usr/bin/env python3
"""Bare TCP byte forwarder: the reference path of bench/pgbench_compare.py.

    python bench/forwarder.py UPSTREAM_HOST UPSTREAM_PORT LISTEN_PORT [--no-uvloop]

Why it exists: part of what pgwarden costs is not pgwarden's own work but the
price of any proxy written in Python on this machine (one more hop, two more
socket reads and writes per message, the event loop's per-callback overhead).
This script pays only that price: it copies bytes between a client and its own
upstream connection with no protocol parsing at all, on the same event loop as
pgwarden (uvloop when installed). No Python proxy can do less, so it is the
floor, and pgwarden's own overhead is pgwarden versus this, not versus direct.

One upstream connection per client; client bytes that arrive before the
upstream connect completes are buffered; when either side closes, both close;
flow control: when one side's socket buffer fills (pause_writing), reading
from the other side pauses until it drains. Listens on 127.0.0.1 only.
"""

import asyncio
import sys


class Pipe(asyncio.Protocol):
    """One side of a forwarded connection; ``peer`` is the Pipe of the other side."""

    def __init__(self, peer=None):
        self.peer, self.transport = peer, None

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.peer.transport.write(data)

    def connection_lost(self, exc):
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()  # close() still flushes what is buffered

    def pause_writing(self):  # our socket is full: stop reading the side that fills it
        if not self.peer.transport.is_closing():
            self.peer.transport.pause_reading()

    def resume_writing(self):
        if not self.peer.transport.is_closing():
            self.peer.transport.resume_reading()


class Client(Pipe):
    """The accepted side: opens the upstream connection and buffers until it is up."""

    def connection_made(self, transport):
        super().connection_made(transport)
        self.pending = []
        self.task = asyncio.get_running_loop().create_task(self.connect())

    async def connect(self):
        try:
            _, up = await asyncio.get_running_loop().create_connection(lambda: Pipe(self), *UPSTREAM)
        except OSError:
            self.transport.close()
            return
        if self.transport.is_closing():  # the client left while we were connecting
            up.transport.close()
            return
        up.transport.write(b"".join(self.pending))
        self.peer, self.pending = up, None

    def data_received(self, data):
        if self.peer is None:
            self.pending.append(data)
        else:
            self.peer.transport.write(data)


async def serve(listen_port):
    server = await asyncio.get_running_loop().create_server(Client, "127.0.0.1", listen_port)
    await server.serve_forever()


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--no-uvloop"]
    if len(args) != 3:
        sys.exit(__doc__.split("\n\n")[1])
    UPSTREAM = (args[0], int(args[1]))
    if "--no-uvloop" not in sys.argv:
        try:
            import uvloop  # same choice as pgwarden's install_uvloop()
            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        except ImportError:
            pass
    try:
        asyncio.run(serve(int(args[2])))
    except KeyboardInterrupt:
        pass
