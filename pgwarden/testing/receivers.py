"""Webhook receivers for tests and benchmarks: one that records every POST, one that hangs.

Alert and approval webhooks are tested against real HTTP servers on
127.0.0.1 (the gateway's own delivery code, real sockets), not mocks:
:class:`WebhookReceiver` answers every POST and keeps ``(path, JSON body,
monotonic arrival time)``; :class:`HungReceiver` accepts connections and
never answers, the receiver that must not slow the gateway down.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

__all__ = ["WebhookReceiver", "HungReceiver", "closed_port_url"]


class WebhookReceiver:
    """Records every POST as ``(path, JSON body or {}, time.monotonic() at arrival)``."""

    def __init__(self, status: int = 200) -> None:
        self.posts: list[tuple[str, dict, float]] = []
        self.arrived = threading.Event()  # set at every POST (clear it to wait for the next one)
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                at = time.monotonic()
                try:
                    data = json.loads(body)
                except ValueError:
                    data = {}
                receiver.posts.append((self.path, data, at))
                receiver.arrived.set()
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class HungReceiver:
    """Accepts connections and never answers (a hung webhook receiver)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0), backlog=1024)
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


def closed_port_url(path: str = "/refused") -> str:
    """An http:// URL on 127.0.0.1 where nothing listens (connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}{path}"
