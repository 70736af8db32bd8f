"""Audit sinks (pgwarden/store/sinks.py): RFC 5424 syslog over real UDP, TCP and
Unix sockets, the JSON-lines file with rotation, and the promise that a slow or
dead sink never slows ``submit`` (drops are counted and reported instead)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import stat
import threading
import time
from pathlib import Path

import pytest
import uvloop

from pgwarden.config_audit import SinksConfig
from pgwarden.store import sinks as sinks_mod
from pgwarden.store.records import body_for, make_record
from pgwarden.store.sinks import AuditSinks, format_syslog

HOST = "gw-1.example"
LOOPS = ["asyncio", "uvloop"]


def run(coro, loop: str = "asyncio"):
    return uvloop.run(coro) if loop == "uvloop" else asyncio.run(coro)


def rec(seq: int, rtype: str = "statement", session: str | None = "5f2a9c0e1b7d", **fields) -> tuple[int, bytes]:
    fields = fields or {"n": seq, "text": f"SELECT {seq}"}
    pending = make_record(rtype, session, fields)
    return seq, body_for(seq, pending.tail)


def many(n: int, start: int = 1, pad: int = 0) -> list[tuple[int, bytes]]:
    return [rec(s, text="x" * pad) if pad else rec(s) for s in range(start, start + n)]


async def until(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        await asyncio.sleep(0.01)


# ---------------------------------------------------------------- RFC 5424 parsing

_MSG = re.compile(rb"<(\d{1,3})>1 (\S+) (\S+) (\S+) (\S+) (\S+) ")


def parse_5424(msg: bytes) -> dict:
    """A strict-enough RFC 5424 parser: header fields, one SD element (escapes honoured), BOM + MSG."""
    m = _MSG.match(msg)
    assert m, msg[:120]
    pri = int(m.group(1))
    pos = m.end()
    assert msg[pos : pos + 1] == b"["
    end = pos + 1
    while msg[end : end + 1] != b"]":
        end += 2 if msg[end : end + 1] == b"\\" else 1
    sd = msg[pos + 1 : end].decode()
    sd_id, _, rest = sd.partition(" ")
    params = {
        k: re.sub(r"\\([\"\\\]])", r"\1", v) for k, v in re.findall(r'([^ =]+)="((?:[^"\\]|\\.)*)"', rest)
    }
    assert msg[end + 1 : end + 2] == b" "
    body = msg[end + 2 :]
    assert body.startswith(b"\xef\xbb\xbf")
    return {
        "facility": pri // 8,
        "severity": pri % 8,
        "timestamp": m.group(2).decode(),
        "hostname": m.group(3).decode(),
        "app": m.group(4).decode(),
        "procid": m.group(5).decode(),
        "msgid": m.group(6).decode(),
        "sd_id": sd_id,
        "params": params,
        "body": body[3:],
    }


def split_octet_frames(stream: bytes) -> tuple[list[bytes], bytes]:
    """RFC 6587 octet counting: ``MSG-LEN SP SYSLOG-MSG``; returns the frames and the incomplete rest."""
    frames, pos = [], 0
    while True:
        space = stream.find(b" ", pos)
        if space < 0:
            break
        size = int(stream[pos:space])
        if len(stream) < space + 1 + size:
            break
        frames.append(stream[space + 1 : space + 1 + size])
        pos = space + 1 + size
    return frames, stream[pos:]


# ---------------------------------------------------------------- receivers


class UdpReceiver(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.messages: list[bytes] = []

    def datagram_received(self, data, addr) -> None:
        self.messages.append(data)

    @classmethod
    async def start(cls) -> tuple["UdpReceiver", asyncio.DatagramTransport, int]:
        transport, proto = await asyncio.get_running_loop().create_datagram_endpoint(
            cls, local_addr=("127.0.0.1", 0)
        )
        return proto, transport, transport.get_extra_info("sockname")[1]


class TcpReceiver:
    """Collects octet-counted frames; ``read=False`` accepts but never reads (a stuck SIEM)."""

    def __init__(self, port: int = 0, read: bool = True) -> None:
        self.port, self.read = port, read
        self.frames: list[bytes] = []
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> "TcpReceiver":
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if not self.read:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.bind(("127.0.0.1", self.port))
        self.server = await asyncio.start_server(self._handle, sock=sock)
        self.port = sock.getsockname()[1]
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        if not self.read:
            await asyncio.sleep(3600)
        buf = b""
        while chunk := await reader.read(65536):
            buf += chunk
            frames, buf = split_octet_frames(buf)
            self.frames.extend(frames)
        assert buf == b"", "a partial frame at EOF"

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self.writers:
            writer.transport.abort()
        await self.server.wait_closed()


def syslog_config(protocol: str, address: str, port: int = 514, queue_size: int = 10000) -> SinksConfig:
    return SinksConfig.model_validate(
        {"syslog": {"protocol": protocol, "address": address, "port": port}, "queue_size": queue_size}
    )


# ---------------------------------------------------------------- format


def test_format_priority_sd_escaping_and_truncation() -> None:
    pid = "77"
    parsed = parse_5424(format_syslog(*rec(5), 13, HOST, "pgwarden", pid))
    assert (parsed["facility"], parsed["severity"], parsed["msgid"]) == (13, 6, "statement")
    denied = rec(6, "result", n=1, status="denied", error={"message": "no"})
    assert parse_5424(format_syslog(*denied, 13, HOST, "pgwarden", pid))["severity"] == 4
    ok = rec(7, "result", n=1, status="ok", text='"status":"denied"')  # escaped inside a string: no match
    assert parse_5424(format_syslog(*ok, 13, HOST, "pgwarden", pid))["severity"] == 6
    audit = rec(8, "audit", None, event="dropped", dropped=3)
    parsed = parse_5424(format_syslog(*audit, 4, HOST, "pgwarden", pid))
    assert (parsed["facility"], parsed["severity"], parsed["msgid"]) == (4, 4, "audit")
    assert parsed["params"] == {"seq": "8"}  # no session for records about the trail

    odd = rec(9, session='a"b\\c]d')
    msg = format_syslog(*odd, 13, HOST, "pgwarden", pid)
    assert b'session="a\\"b\\\\c\\]d"' in msg
    assert parse_5424(msg)["params"]["session"] == 'a"b\\c]d'

    big = rec(10, text="é" * 40_000)  # 80 KB of two-byte characters
    msg = format_syslog(*big, 13, HOST, "pgwarden", pid, limit=60_000)
    assert len(msg) <= 60_000
    parsed = parse_5424(msg)
    assert parsed["params"]["truncated"] == str(len(big[1]))
    parsed["body"].decode("utf-8")  # cut on a character boundary
    assert big[1].startswith(parsed["body"])
    assert b"truncated" not in format_syslog(*rec(11), 13, HOST, "pgwarden", pid, limit=60_000)


# ---------------------------------------------------------------- UDP


@pytest.mark.parametrize("loop", LOOPS)
def test_udp_syslog_rfc5424(loop: str) -> None:
    async def main() -> None:
        receiver, transport, port = await UdpReceiver.start()
        sinks = AuditSinks(syslog_config("udp", "127.0.0.1", port), hostname=HOST)
        await sinks.start()
        records = [rec(1), rec(2, "result", n=1, status="denied"), rec(3, "audit", None, event="started")]
        records.append(rec(4, text="y" * 100_000))
        sinks.submit(records)
        await until(lambda: len(receiver.messages) == 4)
        await sinks.stop(2)
        transport.close()
        assert sinks.sent == {"syslog": 4} and sinks.dropped == {"syslog": 0}
        for (seq, body), msg in zip(records, receiver.messages):
            p = parse_5424(msg)
            head = json.loads(body) if seq != 4 else None
            assert p["facility"] == 13 and p["hostname"] == HOST and p["app"] == "pgwarden"
            assert p["procid"] == str(os.getpid())
            assert p["sd_id"] == "pgwarden@32473" and p["params"]["seq"] == str(seq)
            if head is not None:
                assert p["timestamp"] == head["at"]
                assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", p["timestamp"])
                assert p["msgid"] == head["type"]
                assert p["params"].get("session") == head["session"]
                assert p["body"] == body and json.loads(p["body"])["seq"] == seq
        assert [parse_5424(m)["severity"] for m in receiver.messages] == [6, 4, 4, 6]
        assert len(receiver.messages[3]) <= 60_000
        assert parse_5424(receiver.messages[3])["params"]["truncated"] == str(len(records[3][1]))

    run(main(), loop)


# ---------------------------------------------------------------- TCP


@pytest.mark.parametrize("loop", LOOPS)
def test_tcp_octet_counting(loop: str) -> None:
    async def main() -> None:
        receiver = await TcpReceiver().start()
        sinks = AuditSinks(syslog_config("tcp", "127.0.0.1", receiver.port), hostname=HOST)
        await sinks.start()
        records = many(1500, pad=300)
        for i in range(0, len(records), 100):
            sinks.submit(records[i : i + 100])
            await asyncio.sleep(0)
        await until(lambda: len(receiver.frames) == 1500)
        await sinks.stop(2)
        await receiver.stop()
        assert [parse_5424(f)["body"] for f in receiver.frames] == [b for _, b in records]
        assert sinks.sent == {"syslog": 1500} and sinks.take_drop_report() == 0

    run(main(), loop)


def test_tcp_reconnects_after_receiver_restart_and_drops_during_outage(monkeypatch) -> None:
    monkeypatch.setattr(sinks_mod, "BACKOFF_MAX", 0.3)

    async def main() -> None:
        first = await TcpReceiver().start()
        port = first.port
        sinks = AuditSinks(syslog_config("tcp", "127.0.0.1", port), hostname=HOST)
        await sinks.start()
        sinks.submit(many(5))
        await until(lambda: len(first.frames) == 5)

        # Restarted while idle: the next batch goes to the new receiver, nothing lost.
        await first.stop()
        second = await TcpReceiver(port).start()
        await asyncio.sleep(0.05)  # the EOF reaches the sink
        sinks.submit(many(5, start=6))
        await until(lambda: len(second.frames) == 5)
        assert sinks.take_drop_report() == 0

        # Receiver gone: the sink goes down; records are dropped and counted, not buffered.
        await second.stop()
        await asyncio.sleep(0.05)
        sinks.submit(many(10, start=11))
        await until(lambda: sinks.stats()["syslog"]["down"])
        sinks.submit(many(10, start=21))
        assert sinks.stats()["syslog"]["queued"] == 0
        assert sinks.take_drop_report() == 20 and sinks.dropped == {"syslog": 20}
        assert sinks.errors["syslog"] >= 1 and sinks.last_error["syslog"].startswith("cannot open")

        # Back: reconnect with backoff, then delivery resumes.
        third = await TcpReceiver(port).start()
        await until(lambda: not sinks.stats()["syslog"]["down"])
        sinks.submit(many(5, start=31))
        await until(lambda: len(third.frames) == 5)
        assert [json.loads(parse_5424(f)["body"])["seq"] for f in third.frames] == [31, 32, 33, 34, 35]
        await sinks.stop(2)
        await third.stop()
        assert sinks.sent == {"syslog": 15} and sinks.take_drop_report() == 0

    run(main())


def test_unreachable_at_start_never_raises() -> None:
    async def main() -> None:
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()  # nothing listens there
        sinks = AuditSinks(syslog_config("tcp", "127.0.0.1", port), hostname=HOST)
        await sinks.start()
        sinks.submit(many(3))
        await until(lambda: sinks.stats()["syslog"]["down"])
        sinks.submit(many(2, start=4))
        await sinks.stop(1)
        assert sinks.take_drop_report() == 5 and sinks.sent == {"syslog": 0}
        assert sinks.last_error["syslog"]

    run(main())


@pytest.mark.parametrize("loop", LOOPS)
def test_stuck_tcp_receiver_never_blocks_submit(loop: str) -> None:
    async def main() -> None:
        receiver = await TcpReceiver(read=False).start()
        sinks = AuditSinks(syslog_config("tcp", "127.0.0.1", receiver.port, queue_size=1000), hostname=HOST)
        await sinks.start()
        one = rec(1, text="z" * 8000)
        spent = 0.0
        for _ in range(100):  # 10,000 submits of an 8 KB record: far more than socket buffers hold
            t0 = time.perf_counter()
            for _ in range(100):
                sinks.submit([one])
            spent += time.perf_counter() - t0
            await asyncio.sleep(0.001)  # let the delivery task run (and block on drain)
        assert spent < 0.5, spent
        dropped = sinks.take_drop_report()
        assert dropped > 0 and sinks.take_drop_report() == 0
        t0 = time.monotonic()
        await sinks.stop(0.3)
        assert time.monotonic() - t0 < 2
        assert sinks.sent["syslog"] + sinks.dropped["syslog"] == 10_000
        assert sinks.take_drop_report() == sinks.dropped["syslog"] - dropped
        await receiver.stop()

    run(main(), loop)


def test_a_receiver_that_stops_reading_is_dropped_and_reconnected(monkeypatch) -> None:
    """A SIEM that keeps the TCP connection open but reads nothing must not wedge the sink forever:
    after STALL_TIMEOUT the batch is dropped (counted), the connection closed and opened again."""
    monkeypatch.setattr(sinks_mod, "STALL_TIMEOUT", 0.3)

    async def main() -> None:
        receiver = await TcpReceiver(read=False).start()
        sinks = AuditSinks(syslog_config("tcp", "127.0.0.1", receiver.port, queue_size=1000), hostname=HOST)
        await sinks.start()
        one = rec(1, text="z" * 8000)
        for _ in range(50):
            for _ in range(100):
                sinks.submit([one])
            await asyncio.sleep(0.02)
            if len(receiver.writers) >= 2:
                break
        assert len(receiver.writers) >= 2, "the stalled connection was never replaced"
        assert sinks.take_drop_report() > 0
        await sinks.stop(0.3)
        await receiver.stop()

    run(main(), "asyncio")


# ---------------------------------------------------------------- Unix sockets


def test_unix_datagram_and_stream_fallback(tmp_path: Path) -> None:
    async def main() -> None:
        path = str(tmp_path / "log")
        server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        server.bind(path)
        server.setblocking(False)
        sinks = AuditSinks(syslog_config("unix", path), hostname=HOST)
        await sinks.start()
        sinks.submit(many(3))
        await until(lambda: sinks.sent["syslog"] == 3)
        await sinks.stop(1)
        got = [server.recv(65536) for _ in range(3)]
        server.close()
        assert [json.loads(parse_5424(m)["body"])["seq"] for m in got] == [1, 2, 3]

        lines: list[bytes] = []

        async def handle(reader, writer):
            while line := await reader.readline():
                lines.append(line)
            writer.close()

        spath = str(tmp_path / "stream")
        stream_server = await asyncio.start_unix_server(handle, spath)
        sinks = AuditSinks(syslog_config("unix", spath), hostname=HOST)
        await sinks.start()
        sinks.submit(many(3))
        await sinks.stop(1)
        await until(lambda: len(lines) == 3)
        stream_server.close()
        await stream_server.wait_closed()
        assert all(line.endswith(b"\n") for line in lines)
        assert [json.loads(parse_5424(line[:-1])["body"])["seq"] for line in lines] == [1, 2, 3]

    run(main())


# ---------------------------------------------------------------- JSONL


def jsonl_config(path: Path, queue_size: int = 10000) -> SinksConfig:
    return SinksConfig.model_validate({"jsonl": {"path": str(path)}, "queue_size": queue_size})


@pytest.mark.parametrize("loop", LOOPS)
def test_jsonl_lines_mode_and_rotation(tmp_path: Path, loop: str) -> None:
    path = tmp_path / "audit.jsonl"

    async def main() -> None:
        sinks = AuditSinks(jsonl_config(path))
        await sinks.start()
        first = many(100)
        sinks.submit(first)
        await until(lambda: sinks.sent["jsonl"] == 100)
        assert path.read_bytes() == b"".join(b + b"\n" for _, b in first)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600

        path.rename(tmp_path / "audit.jsonl.1")  # logrotate's "create" mode
        second = many(50, start=101)
        sinks.submit(second)
        await until(lambda: sinks.sent["jsonl"] == 150)
        assert (tmp_path / "audit.jsonl.1").read_bytes() == b"".join(b + b"\n" for _, b in first)
        assert path.read_bytes() == b"".join(b + b"\n" for _, b in second)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600

        path.unlink()  # deleted outright
        third = many(5, start=151)
        sinks.submit(third)
        await sinks.stop(2)
        assert path.read_bytes() == b"".join(b + b"\n" for _, b in third)
        for line in path.read_bytes().splitlines():
            json.loads(line)
        assert sinks.take_drop_report() == 0 and sinks.errors == {"jsonl": 0}

    run(main(), loop)


@pytest.mark.parametrize("loop", LOOPS)
def test_slow_jsonl_writer_never_blocks_submit(tmp_path: Path, monkeypatch, loop: str) -> None:
    path = tmp_path / "audit.jsonl"
    real = sinks_mod._write_all

    def slow(fd: int, data: bytes) -> None:
        time.sleep(0.2)  # a hanging disk or NFS mount
        real(fd, data)

    monkeypatch.setattr(sinks_mod, "_write_all", slow)

    async def main() -> None:
        sinks = AuditSinks(jsonl_config(path, queue_size=500))
        await sinks.start()
        spent = 0.0
        records = many(10_000)
        for i in range(0, 10_000, 100):  # 10,000 submits, the loop free between each 100
            t0 = time.perf_counter()
            for record in records[i : i + 100]:
                sinks.submit([record])
            spent += time.perf_counter() - t0
            await asyncio.sleep(0.001)
        assert spent < 0.5, spent
        reported = sinks.take_drop_report()
        assert reported > 0
        await sinks.stop(3)  # flushes what is still queued
        assert sinks.sent["jsonl"] + sinks.dropped["jsonl"] == 10_000
        assert reported + sinks.take_drop_report() == sinks.dropped["jsonl"]
        lines = path.read_bytes().splitlines()
        assert len(lines) == sinks.sent["jsonl"]
        seqs = [json.loads(line)["seq"] for line in lines]
        assert seqs == sorted(seqs) and lines[0] == records[0][1]

    run(main(), loop)


def test_hung_jsonl_disk_does_not_hang_stop(tmp_path: Path, monkeypatch) -> None:
    release = threading.Event()
    real = sinks_mod._write_all

    def hang(fd: int, data: bytes) -> None:
        if data:
            release.wait(30)  # a dead NFS mount
        real(fd, data)

    monkeypatch.setattr(sinks_mod, "_write_all", hang)

    async def main() -> None:
        sinks = AuditSinks(jsonl_config(tmp_path / "audit.jsonl", queue_size=100))
        await sinks.start()
        for i in range(1, 1001, 10):
            sinks.submit(many(10, start=i))
            await asyncio.sleep(0)
        t0 = time.monotonic()
        await sinks.stop(0.3)
        assert time.monotonic() - t0 < 2
        assert sinks.sent == {"jsonl": 0} and sinks.take_drop_report() == 1000

    t0 = time.monotonic()
    run(main())  # the stuck write runs on a daemon thread: the loop (and the process) can still exit
    assert time.monotonic() - t0 < 3
    release.set()


def test_jsonl_unwritable_path_is_down_not_fatal(tmp_path: Path) -> None:
    async def main() -> None:
        sinks = AuditSinks(jsonl_config(tmp_path / "missing" / "audit.jsonl"))
        await sinks.start()
        sinks.submit(many(3))
        await until(lambda: sinks.stats()["jsonl"]["down"])
        sinks.submit(many(2, start=4))
        await sinks.stop(1)
        assert sinks.take_drop_report() == 5 and sinks.errors["jsonl"] >= 1
        assert "No such file" in sinks.last_error["jsonl"]

    run(main())


def test_stop_flushes_everything_queued(tmp_path: Path) -> None:
    async def main() -> None:
        receiver = await TcpReceiver().start()
        config = SinksConfig.model_validate(
            {
                "syslog": {"protocol": "tcp", "address": "127.0.0.1", "port": receiver.port},
                "jsonl": {"path": str(tmp_path / "a.jsonl")},
            }
        )
        sinks = AuditSinks(config, hostname=HOST)
        await sinks.start()
        records = many(3000, pad=200)
        sinks.submit(records)
        await sinks.stop(5)  # nothing delivered yet: stop must deliver all of it
        assert sinks.sent == {"syslog": 3000, "jsonl": 3000}
        assert sinks.take_drop_report() == 0
        await until(lambda: len(receiver.frames) == 3000)
        await receiver.stop()
        assert (tmp_path / "a.jsonl").read_bytes() == b"".join(b + b"\n" for _, b in records)
        sinks.submit(many(2))  # after stop: dropped, counted
        assert sinks.take_drop_report() == 4

    run(main())


def test_no_sinks_configured() -> None:
    sinks = AuditSinks(SinksConfig())
    assert not sinks.enabled
    sinks.submit(many(3))
    assert sinks.take_drop_report() == 0 and sinks.stats() == {}
