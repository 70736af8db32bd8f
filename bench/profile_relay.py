#!/usr/bin/env python3
"""In-process micro-benchmark of pgwarden's pass-through path: µs per transaction.

    python bench/profile_relay.py                 # all cases, 200k transactions each
    python bench/profile_relay.py -n 50000 --case simple --profile

Why it exists: on a small machine, pgbench through a proxy is noisy (the proxy,
PostgreSQL and pgbench share the cores), but throughput at ``-c 8`` follows the
proxy's CPU per transaction almost one to one. This script measures that CPU
without sockets, so a change to the hot path can be judged in seconds:

- ``relay``: the sans-IO :class:`~pgwarden.session.relay.Relay` alone, fed the
  exact byte streams pgbench ``-S`` produces (one chunk per direction, as the
  kernel delivers them), with an empty pipeline (``Pipeline([]).evaluate``) and
  no ``completed`` hook, as in ``pgwarden serve`` with statement logging off.
- ``driver``: the same through :class:`~pgwarden.server.client.ClientConnection`'s
  ``data_received`` / ``server_data`` with transports whose ``write`` is a no-op,
  i.e. everything pgwarden's own Python does per transaction except the event
  loop and the system calls (which the bare forwarder pays too).

Cases: ``simple`` (``-M simple``: Query; RowDescription, DataRow,
CommandComplete, ReadyForQuery), ``prepared`` (``-M prepared`` as libpq sends
it: Bind, Describe portal, Execute, Sync; BindComplete, RowDescription,
DataRow, CommandComplete, ReadyForQuery) and ``prepared-nodescribe`` (Bind,
Execute, Sync). ``--completed`` adds a no-op ``completed`` hook (timing on).
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pgwarden.policy.pipeline import Pipeline  # noqa: E402
from pgwarden.session.relay import Relay  # noqa: E402
from pgwarden.session.statement import SessionInfo  # noqa: E402
from pgwarden.wire import encode  # noqa: E402


def msg(t: bytes, body: bytes) -> bytes:
    return t + struct.pack("!I", len(body) + 4) + body


def row_description() -> bytes:
    field = b"abalance\x00" + struct.pack("!IhIhih", 16397, 3, 23, 4, -1, 0)
    return msg(b"T", struct.pack("!h", 1) + field)


def data_row() -> bytes:
    value = b"-2817"
    return msg(b"D", struct.pack("!hi", 1, len(value)) + value)


COMPLETE = msg(b"C", b"SELECT 1\x00")
READY = encode.ready_for_query(b"I")
SQL = "SELECT abalance FROM pgbench_accounts WHERE aid = 123457;"
STMT = "P0_1"


def bind() -> bytes:
    param = b"123457"
    body = b"\x00" + STMT.encode() + b"\x00" + struct.pack("!hh", 0, 1) + struct.pack("!i", len(param)) + param
    return msg(b"B", body + struct.pack("!h", 0))


DESCRIBE = msg(b"D", b"P\x00")
EXECUTE = msg(b"E", b"\x00" + struct.pack("!i", 0))
SYNC = encode.sync()

CASES = {
    "simple": (encode.query(SQL), row_description() + data_row() + COMPLETE + READY),
    "prepared": (bind() + DESCRIBE + EXECUTE + SYNC, msg(b"2", b"") + row_description() + data_row() + COMPLETE + READY),
    "prepared-nodescribe": (bind() + EXECUTE + SYNC, msg(b"2", b"") + data_row() + COMPLETE + READY),
}
SETUP = encode.parse(STMT, SQL.replace("123457", "$1"), (23,)) + SYNC
SETUP_REPLY = msg(b"1", b"") + READY


def new_relay(completed: bool) -> Relay:
    session = SessionInfo(id="bench", user="app", target="bench", client_addr="127.0.0.1:1")
    relay = Relay(session, Pipeline([]).evaluate, (lambda stmt: None) if completed else None)
    relay.client_data(SETUP)
    relay.server_data(SETUP_REPLY)
    relay.take_output()
    return relay


def relay_loop(relay: Relay, request: bytes, reply: bytes, n: int) -> int:
    """Drive the relay the way ClientConnection does; return elapsed ns."""
    client_data, server_data = relay.client_data, relay.server_data
    sent = 0
    t0 = time.perf_counter_ns()
    for _ in range(n):
        client_data(request)
        out = relay.to_server
        if out:
            sent += len(out)
            out.clear()
        server_data(reply)
        out = relay.to_client
        if out:
            sent += len(out)
            out.clear()
    elapsed = time.perf_counter_ns() - t0
    assert sent == 2 * n, f"expected one write per direction, got {sent / n:.2f} per transaction"
    return elapsed


class _NullTransport:
    def write(self, data) -> None:
        pass

    def is_closing(self) -> bool:
        return False


def new_driver(completed: bool):
    """A ClientConnection in RELAY phase with no-op transports (no event loop needed)."""
    from pgwarden.server.client import ClientConnection
    from pgwarden.server.upstream import UpstreamProtocol

    conn = ClientConnection.__new__(ClientConnection)
    relay = new_relay(completed)
    upstream = UpstreamProtocol.__new__(UpstreamProtocol)
    upstream.owner, upstream.transport, upstream.closed, upstream.relaying = conn, _NullTransport(), False, False
    conn.relay, conn.phase, conn.upstream, conn.transport = relay, "RELAY", upstream, _NullTransport()
    conn._pauses, conn.draining = set(), False
    conn._audit, conn._parked, conn._parked_entries = None, [], 0
    # As ClientConnection._connect_upstream wires them up when the session starts.
    conn._client_write = conn.transport.write
    conn._upstream_write = upstream.transport.write
    upstream.start_relaying(relay, conn._client_write)
    return conn, upstream


def new_audited_driver(completed: bool):
    """The driver with session recording on: a real writer and SQLite store in a temporary directory."""
    import asyncio
    import tempfile

    from pgwarden.config import parse_config
    from pgwarden.server.gateway import build_recorder
    from pgwarden.server.client import ClientConnection
    from pgwarden.server.upstream import UpstreamProtocol

    data_dir = tempfile.mkdtemp(prefix="pgwarden-profile-")
    config = parse_config({"targets": {"bench": {"database": "bench", "user": "app"}}, "data_dir": data_dir})
    writer, recorder = build_recorder(config, "bench")
    loop = asyncio.new_event_loop()
    loop.run_until_complete(writer.start())
    session = SessionInfo(id="bench0123456789ab", user="app", target="bench", client_addr="127.0.0.1:1")
    recorder.session_started(session)
    pipeline = Pipeline([], recorder)
    relay = Relay(session, pipeline.evaluate, pipeline.completed, capturing=True)
    relay.client_data(SETUP)
    relay.server_data(SETUP_REPLY)
    relay.take_output()
    writer.flush_now()
    conn = ClientConnection.__new__(ClientConnection)
    upstream = UpstreamProtocol.__new__(UpstreamProtocol)
    upstream.owner, upstream.transport, upstream.closed, upstream.relaying = conn, _NullTransport(), False, False
    conn.relay, conn.phase, conn.upstream, conn.transport = relay, "RELAY", upstream, _NullTransport()
    conn._pauses, conn.draining, conn.info = set(), False, session
    conn._audit, conn._parked, conn._parked_entries = writer, [], 0
    conn._client_write = conn.transport.write
    conn._upstream_write = upstream.transport.write
    upstream.start_relaying(relay, conn._client_write)
    return conn, upstream


def driver_loop(pair, request: bytes, reply: bytes, n: int) -> int:
    conn, upstream = pair
    client_in, server_in = conn.data_received, upstream.data_received
    audit = getattr(conn, "_audit", None)
    # Recording: the journal is loaded into SQLite every 50 ms in the gateway (about 1,000 transactions).
    load = audit.store.load_journal if audit is not None else None
    t0 = time.perf_counter_ns()
    for i in range(n):
        client_in(request)
        server_in(reply)
        if load is not None and i % 1000 == 999:
            load()
    elapsed = time.perf_counter_ns() - t0
    assert not conn.relay._pending and conn.phase == "RELAY"
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=200_000, help="transactions per measurement")
    ap.add_argument("--repeat", type=int, default=5, help="measurements per case; the best is shown")
    ap.add_argument("--case", action="append", choices=sorted(CASES), help="default: all")
    ap.add_argument("--level", action="append", choices=("relay", "driver", "audited"),
                    help="default: relay and driver; audited = driver with session recording (SQLite)")
    ap.add_argument("--completed", action="store_true", help="with a no-op completed hook")
    ap.add_argument("--profile", action="store_true", help="cProfile one run per case and print the top entries")
    args = ap.parse_args()
    for level in args.level or ("relay", "driver"):
        for case in args.case or sorted(CASES):
            request, reply = CASES[case]
            make, loop = {"relay": (new_relay, relay_loop), "driver": (new_driver, driver_loop),
                          "audited": (new_audited_driver, driver_loop)}[level]
            target = make(args.completed)
            loop(target, request, reply, min(args.n, 20_000))  # warm up
            best = min(loop(target, request, reply, args.n) for _ in range(args.repeat))
            print(f"{level:6} {case:20} {best / args.n / 1000:6.2f} µs/txn")
            if args.profile:
                prof = cProfile.Profile()
                prof.runcall(loop, target, request, reply, args.n)
                pstats.Stats(prof).sort_stats("tottime").print_stats(12)


if __name__ == "__main__":
    main()
