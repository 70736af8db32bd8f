"""Streaming audit records to a SIEM: RFC 5424 syslog and/or a JSON-lines file.

The audit store is the record of truth; sinks are copies for whoever watches
in real time. So the rule is the opposite of the store's: a sink may lose
records, but it may never slow the data path. The writer hands every group
commit to :meth:`AuditSinks.submit`, which only appends to a bounded deque per
sink (no await, no I/O, no formatting); one background task per sink formats
and delivers. When a sink falls behind its deque fills and further records
are dropped and counted; while a sink is down (connection refused, receiver
gone) records are dropped at once instead of piling up. The writer turns the
count from :meth:`AuditSinks.take_drop_report` into an ``audit`` record with
event ``dropped``, so the trail itself says what the SIEM did not get.

Formatting happens in the delivery task from the body alone: the common
header (``{"v":1,"seq":N,"at":...,"type":...,"session":...``) has a fixed
layout (records.py), so a regular expression over its first bytes gives the
timestamp, type and session without decoding the (possibly 1 MiB) body.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import queue
import re
import socket
import threading
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..config_audit import JsonlSinkConfig, SinksConfig, SyslogSinkConfig

__all__ = ["AuditSinks", "format_syslog", "syslog_message", "header_field", "record_header", "SD_ID"]

log = logging.getLogger("pgwarden.audit")

#: Structured-data id; 32473 is the enterprise number RFC 5612 reserves for examples.
SD_ID = "pgwarden@32473"
BOM = b"\xef\xbb\xbf"
#: Largest syslog message sent as one datagram (UDP's payload limit is 65,507).
DATAGRAM_MAX = 60_000
BATCH_RECORDS = 512  # records per delivery batch: amortises thread hops and syscalls
BATCH_BYTES = 1 << 20
CONNECT_TIMEOUT = 5.0
BACKOFF_MIN = 0.2  # seconds before the second reconnect attempt (the first is immediate)
BACKOFF_MAX = 30.0
STREAM_HIGH_WATER = 256 * 1024  # bytes buffered in a stream transport before drain() waits
DATAGRAM_HIGH_WATER = 1 << 20  # same for datagram transports, which buffer without limit
#: A receiver that keeps the connection open but stops reading gets this long to take a batch;
#: then the connection is dropped (the batch counted as dropped) and opened again.
STALL_TIMEOUT = 30.0

_HEAD = re.compile(
    rb'\{"v":1,"seq":\d+,"at":"([^"]{1,40})","type":"([a-z_]{1,32})","session":(null|"(?:[^"\\]|\\.){0,256}")'
)


def record_header(body: bytes) -> tuple[str | None, str | None, str | None]:
    """``(at, type, session)`` of a body, cheaply (a match on its first bytes)."""
    m = _HEAD.match(body)
    if m is not None:
        raw = m.group(3)
        return m.group(1).decode(), m.group(2).decode(), None if raw == b"null" else json.loads(raw)
    try:  # not the v1 layout: decode once, it is rare
        data = json.loads(body)
        session = data.get("session")
        return data.get("at"), data.get("type"), None if session is None else str(session)
    except (ValueError, AttributeError):
        return None, None, None


def _severity(record_type: str | None, body: bytes) -> int:
    """6 informational; 4 warning for what a SOC wants to see first (refusals, trail events)."""
    if (
        record_type == "audit"
        or (record_type == "result" and b'"status":"denied"' in body)
        or (record_type == "auth" and b'"outcome":"refused"' in body)
    ):
        return 4
    return 6


def _sd_escape(value: str) -> str:
    """RFC 5424 6.3.3: ``"``, ``\\`` and ``]`` inside PARAM-VALUE are escaped with a backslash."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def header_field(value: str | None, limit: int) -> str:
    """A header field: printable US-ASCII without spaces, at most ``limit`` characters, or ``-``."""
    text = "".join(c for c in (value or "") if "!" <= c <= "~")[:limit]
    return text or "-"


def _cut_utf8(data: bytes, size: int) -> bytes:
    """``data`` shortened to at most ``size`` bytes without splitting a UTF-8 sequence."""
    if len(data) <= size:
        return data
    while size > 0 and (data[size] & 0xC0) == 0x80:
        size -= 1
    return data[: max(size, 0)]


def format_syslog(
    seq: int, body: bytes, facility: int, hostname: str, app_name: str, procid: str, limit: int | None = None
) -> bytes:
    """One RFC 5424 message for an audit record: ``<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID [SD] BOM body``.

    ``hostname``, ``app_name`` and ``procid`` must already be valid header
    fields (:class:`AuditSinks` sanitises them once). With ``limit`` (datagram
    transports) a longer message has its body cut at a character boundary and
    the SD element gains ``truncated="<original body bytes>"``: the full
    record stays in the store, and the SIEM sees that it got only a part.
    """
    at, record_type, session = record_header(body)
    params = [("seq", str(seq))] + ([("session", session)] if session is not None else [])
    return syslog_message(facility * 8 + _severity(record_type, body), at, record_type, params, body,
                          hostname, app_name, procid, limit)


def syslog_message(
    pri: int, at: str | None, msgid: str | None, params: Sequence[tuple[str, str]], body: bytes,
    hostname: str, app_name: str, procid: str, limit: int | None = None,
) -> bytes:
    """The RFC 5424 framing shared by audit records and alerts (pgwarden/alerts/sinks.py).

    ``params`` become the ``pgwarden@32473`` SD element's PARAM-VALUEs (escaped here).
    """
    sd = f"[{SD_ID}" + "".join(f' {name}="{_sd_escape(value)}"' for name, value in params)
    head = f"<{pri}>1 {header_field(at, 64)} {hostname} {app_name} {procid} {header_field(msgid, 32)} {sd}"
    prefix = (head + "] ").encode() + BOM
    if limit is not None and len(prefix) + len(body) > limit:
        prefix = (head + f' truncated="{len(body)}"] ').encode() + BOM
        body = _cut_utf8(body, limit - len(prefix))
    return prefix + body


class Sink:
    """A bounded queue plus a delivery task; subclasses open, deliver and close.

    ``down`` means the last connect failed: records are then dropped in
    :meth:`offer` (counted) until a reconnect succeeds, so an outage costs
    no memory and a recovered sink does not replay stale records for minutes.
    """

    name = "sink"
    what = "audit sink"  # for the log

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.queue: deque[tuple[int, bytes]] = deque()
        self.sent = self.dropped = self.errors = 0
        self.last_error: str | None = None
        # broken: set by transport callbacks, reconnect before the next batch
        self.down = self.stopping = self.connected = self.broken = False
        self.wake = asyncio.Event()

    # ---------------------------------------------------------- loop thread, hot
    def offer(self, records: Sequence[tuple[int, bytes]]) -> None:
        if self.down or self.stopping:
            self.dropped += len(records)
            return
        room = self.limit - len(self.queue)
        if room < len(records):  # full: keep the oldest, drop the rest (counted)
            room = max(room, 0)
            self.dropped += len(records) - room
            records = records[:room]
        self.queue.extend(records)
        self.wake.set()

    # ---------------------------------------------------------- delivery task
    async def run(self) -> None:
        backoff = 0.0
        batch: list[tuple[int, bytes]] = []
        try:
            while True:
                if self.connected and not self.alive():
                    self.close(abort=True)  # e.g. the receiver closed the connection while idle
                if not self.connected:
                    if self.stopping and not self.queue:
                        return
                    try:
                        await self.open()
                    except Exception as exc:  # noqa: BLE001 - any failure means "down"
                        self._failed(exc, "cannot open")
                        self.close(abort=True)
                        if self.stopping:
                            return
                        self.dropped += len(self.queue)
                        self.queue.clear()
                        self.down = True
                        backoff = min(max(backoff * 2, BACKOFF_MIN), BACKOFF_MAX)
                        try:
                            await asyncio.wait_for(self.wake.wait(), backoff)
                        except asyncio.TimeoutError:
                            pass
                        self.wake.clear()
                        continue
                    if self.down:
                        log.info("%s %s: delivering again", self.what, self.name)
                    self.connected, self.down, backoff = True, False, 0.0
                if not self.queue:
                    if self.stopping:
                        try:
                            await self.flush()
                        except Exception as exc:  # noqa: BLE001
                            self._failed(exc, "flush failed")
                        self.close()
                        return
                    self.wake.clear()
                    await self.wake.wait()
                    continue
                batch = self._take()
                try:
                    await self.deliver(batch)
                except Exception as exc:  # noqa: BLE001
                    self.dropped += len(batch)
                    self._failed(exc, "delivery failed")
                    self.close(abort=True)
                else:
                    self.sent += len(batch)
                batch = []
                await asyncio.sleep(0)  # a long backlog must not starve the sessions
        finally:  # stopped or cancelled: what was not delivered is dropped
            self.dropped += len(batch) + len(self.queue)
            self.queue.clear()
            self.close(abort=True)

    def _take(self) -> list[tuple[int, bytes]]:
        queue, batch, size = self.queue, [], 0
        while queue and len(batch) < BATCH_RECORDS and size < BATCH_BYTES:
            record = queue.popleft()
            batch.append(record)
            size += len(record[1])
        return batch

    def _failed(self, exc: BaseException, what: str) -> None:
        self.errors += 1
        self.last_error = f"{what}: {exc!r}" if not str(exc) else f"{what}: {exc}"
        if not self.down:
            log.warning("%s %s: %s; dropping records until it recovers", self.what, self.name, self.last_error)

    def note_error(self, exc: BaseException) -> None:
        """An asynchronous transport error (ICMP unreachable, daemon gone): reconnect before the next batch."""
        self.errors += 1
        self.last_error = f"send failed: {exc}"
        self.broken = True

    # subclass hooks: ``async open()``, ``async deliver(batch)`` and these
    def alive(self) -> bool:
        return True

    async def flush(self) -> None:  # graceful stop: wait until delivered data left our buffers
        pass

    def close(self, abort: bool = False) -> None:
        self.connected = False


class _DatagramProtocol(asyncio.DatagramProtocol):
    def __init__(self, sink: Sink) -> None:
        self.sink = sink

    def error_received(self, exc: Exception) -> None:
        self.sink.note_error(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            self.sink.note_error(exc)


class SyslogSink(Sink):
    """RFC 5424 over UDP (one datagram per record), TCP (RFC 6587 octet counting) or a Unix socket.

    A Unix path is tried as a datagram socket first (/dev/log); if it is a
    stream socket (EPROTOTYPE) the stream is used, with LF-terminated frames
    as local daemons expect (safe: a JSON body never contains a raw LF).
    """

    name = "syslog"

    def __init__(self, config: SyslogSinkConfig, hostname: str, limit: int) -> None:
        super().__init__(limit)
        self.config = config
        self.hostname = header_field(hostname, 255)
        self.app_name = header_field(config.app_name, 48)
        self.procid = str(os.getpid())
        self.mode = "datagram" if config.protocol in ("udp", "unix") else "octets"
        self.transport: asyncio.BaseTransport | None = None
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        cfg = self.config
        self.broken = False
        if cfg.protocol == "tcp":
            self.reader, self.writer = await asyncio.wait_for(
                asyncio.open_connection(cfg.address, cfg.port), CONNECT_TIMEOUT
            )
        elif cfg.protocol == "udp":
            self.transport, _ = await asyncio.wait_for(  # resolves the name: bound the wait
                loop.create_datagram_endpoint(lambda: _DatagramProtocol(self), remote_addr=(cfg.address, cfg.port)),
                CONNECT_TIMEOUT,
            )
        else:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            try:
                sock.setblocking(False)
                sock.connect(cfg.address)  # local: never blocks
            except OSError as exc:
                sock.close()
                if exc.errno != errno.EPROTOTYPE:
                    raise
                self.mode = "lines"
                self.reader, self.writer = await asyncio.wait_for(
                    asyncio.open_unix_connection(cfg.address), CONNECT_TIMEOUT
                )
            else:
                self.mode = "datagram"
                self.transport, _ = await loop.create_datagram_endpoint(lambda: _DatagramProtocol(self), sock=sock)
        if self.writer is not None:
            self.writer.transport.set_write_buffer_limits(high=STREAM_HIGH_WATER)

    def alive(self) -> bool:
        if self.broken:
            return False
        if self.writer is not None:
            return not (self.writer.is_closing() or (self.reader is not None and self.reader.at_eof()))
        return self.transport is not None and not self.transport.is_closing()

    def format(self, seq: int, body: bytes, limit: int | None) -> bytes:
        """One message (alert sinks override this to frame alerts instead of records)."""
        return format_syslog(seq, body, self.config.facility, self.hostname, self.app_name, self.procid, limit)

    async def deliver(self, batch: list[tuple[int, bytes]]) -> None:
        if self.mode == "datagram":
            transport: Any = self.transport
            assert transport is not None
            for seq, body in batch:
                transport.sendto(self.format(seq, body, DATAGRAM_MAX))
            # Datagram transports buffer without limit when the socket is full: wait here instead,
            # so the backlog stays in the bounded queue (and overflows there, counted).
            deadline = asyncio.get_running_loop().time() + STALL_TIMEOUT
            while transport.get_write_buffer_size() > DATAGRAM_HIGH_WATER and not transport.is_closing():
                if asyncio.get_running_loop().time() > deadline:
                    raise TimeoutError(f"the socket took nothing for {STALL_TIMEOUT:g} s")
                await asyncio.sleep(0.01)
            return
        writer = self.writer
        assert writer is not None
        frames = []
        for seq, body in batch:
            msg = self.format(seq, body, None)
            if self.mode == "octets":
                frames.append(b"%d " % len(msg))
                frames.append(msg)
            else:
                frames.append(msg + b"\n")
        writer.write(b"".join(frames))
        try:
            await asyncio.wait_for(writer.drain(), STALL_TIMEOUT)
        except asyncio.TimeoutError:
            raise TimeoutError(f"the receiver read nothing for {STALL_TIMEOUT:g} s") from None

    async def flush(self) -> None:
        if self.writer is not None and not self.writer.is_closing():
            self.writer.transport.set_write_buffer_limits(high=0)
            await self.writer.drain()
        elif self.transport is not None:
            transport: Any = self.transport
            while transport.get_write_buffer_size() and not transport.is_closing():
                await asyncio.sleep(0.01)

    def close(self, abort: bool = False) -> None:
        self.connected = False
        if self.writer is not None:
            self.writer.transport.abort() if abort else self.writer.close()
        if self.transport is not None:
            self.transport.abort() if abort else self.transport.close()  # type: ignore[attr-defined]
        self.reader = self.writer = self.transport = None


def _write_all(fd: int, data: bytes) -> None:
    """Append ``data`` to ``fd`` (on the worker thread; tests replace it to simulate a slow disk)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _settle(future: asyncio.Future, ok: bool, result: object) -> None:
    if not future.cancelled():
        future.set_result(result) if ok else future.set_exception(result)  # type: ignore[arg-type]


class _FileWorker:
    """One daemon thread per JSONL sink doing all its file I/O, in order, one batch per job.

    Not ``asyncio.to_thread``: a write stuck on a dead disk or NFS mount would
    then hold a thread of the loop's default executor, which ``asyncio.run``
    and the interpreter join at exit, so the gateway could never stop. A
    daemon thread is abandoned instead. Because jobs run in order, ``close``
    is simply queued behind a running write: the descriptor is never closed
    under it.
    """

    def __init__(self) -> None:
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=self._main, name="pgwarden-audit-jsonl", daemon=True).start()

    def _main(self) -> None:
        while (job := self.jobs.get()) is not None:
            loop, future, fn, args = job
            try:
                ok, result = True, fn(*args)
            except BaseException as exc:  # noqa: BLE001 - handed to the awaiting task
                ok, result = False, exc
            if future is not None:
                try:
                    loop.call_soon_threadsafe(_settle, future, ok, result)
                except RuntimeError:  # the loop is closed: nobody is waiting any more
                    pass

    def run(self, fn, *args) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self.jobs.put((loop, future, fn, args))
        return future

    def post(self, fn, *args) -> None:
        self.jobs.put((None, None, fn, args))

    def stop(self) -> None:
        self.jobs.put(None)


class _JsonlFile:
    """The appended file (used on the worker thread only); reopened when rotated away."""

    def __init__(self, path: os.PathLike | str) -> None:
        self.path = os.fspath(path)
        self.fd: int | None = None
        self.ident: tuple[int, int] | None = None

    def write(self, data: bytes) -> None:
        """Reopen if the file was renamed or deleted (one stat per batch), then append."""
        try:
            st = os.stat(self.path)
            rotated = (st.st_dev, st.st_ino) != self.ident
        except FileNotFoundError:
            rotated = True
        if rotated or self.fd is None:
            self.close()
            self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            st = os.fstat(self.fd)
            self.ident = (st.st_dev, st.st_ino)
        _write_all(self.fd, data)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class _JsonlSink(Sink):
    """Each body plus ``\\n`` appended to a file (created 0600), one worker job per batch."""

    name = "jsonl"

    def __init__(self, config: JsonlSinkConfig, limit: int) -> None:
        super().__init__(limit)
        self.path = config.path
        self.file: _JsonlFile | None = None
        self.worker: _FileWorker | None = None

    async def open(self) -> None:
        if self.worker is None:
            self.worker = _FileWorker()
        self.file = _JsonlFile(self.path)
        await self.worker.run(self.file.write, b"")  # opens (creates) it now, to report errors early

    async def deliver(self, batch: list[tuple[int, bytes]]) -> None:
        assert self.worker is not None and self.file is not None
        await self.worker.run(self.file.write, b"\n".join([body for _, body in batch]) + b"\n")

    def close(self, abort: bool = False) -> None:
        self.connected = False
        if self.worker is not None:
            if self.file is not None:
                self.worker.post(self.file.close)
            if self.stopping:
                self.worker.stop()
                self.worker = None
        self.file = None


class AuditSinks:
    """The configured sinks (none, syslog, jsonl or both) behind one non-blocking ``submit``.

    Counters are cumulative per sink (``sent``, ``dropped``, ``errors``,
    ``last_error`` as dicts by sink name); ``take_drop_report`` gives the
    drops (all sinks) since it was last called.
    """

    def __init__(self, config: SinksConfig, hostname: str | None = None) -> None:
        self._sinks: list[Sink] = []
        host = hostname or socket.gethostname()
        if config.syslog is not None:
            self._sinks.append(SyslogSink(config.syslog, host, config.queue_size))
        if config.jsonl is not None:
            self._sinks.append(_JsonlSink(config.jsonl, config.queue_size))
        self._tasks: list[asyncio.Task] = []
        self._reported = 0

    @property
    def enabled(self) -> bool:
        return bool(self._sinks)

    async def start(self) -> None:
        """Start one delivery task per sink; never fails for an unreachable sink (it retries)."""
        if not self._tasks:
            self._tasks = [asyncio.create_task(s.run(), name=f"audit-sink-{s.name}") for s in self._sinks]

    def submit(self, records: Sequence[tuple[int, bytes]]) -> None:
        """Queue ``(seq, body)`` records that were just committed; never blocks, drops when full.

        Called on the event loop after each group commit; costs one deque
        extend per sink.
        """
        for sink in self._sinks:
            sink.offer(records)

    async def stop(self, timeout: float = 5.0) -> None:
        """Deliver what is queued within ``timeout`` seconds, then close; the rest counts as dropped."""
        for sink in self._sinks:
            sink.stopping = True
            sink.wake.set()
        tasks, self._tasks = self._tasks, []
        if not tasks:
            for sink in self._sinks:
                sink.dropped += len(sink.queue)
                sink.queue.clear()
            return
        _, pending = await asyncio.wait(tasks, timeout=timeout)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=1.0)
        for task in tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                log.error("audit sink task failed", exc_info=task.exception())

    def take_drop_report(self) -> int:
        """Records dropped by any sink since the previous call (the writer records them)."""
        total = sum(s.dropped for s in self._sinks)
        new, self._reported = total - self._reported, total
        return new

    sent = property(lambda self: {s.name: s.sent for s in self._sinks}, doc="records delivered, by sink")
    dropped = property(lambda self: {s.name: s.dropped for s in self._sinks}, doc="records lost, by sink")
    errors = property(lambda self: {s.name: s.errors for s in self._sinks}, doc="I/O failures, by sink")
    last_error = property(lambda self: {s.name: s.last_error for s in self._sinks}, doc="latest failure text")

    def stats(self) -> dict[str, dict]:
        """Everything above plus the queue depth and state, per sink (for metrics and status)."""
        keys = ("sent", "dropped", "errors", "down", "last_error")
        return {s.name: {"queued": len(s.queue), **{k: getattr(s, k) for k in keys}} for s in self._sinks}
