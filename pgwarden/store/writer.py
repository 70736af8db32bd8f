"""The audit writer: group commit, write-ahead gates, fail closed, signed checkpoints.

Every record (from every session) is submitted here from the event loop thread
and gets a *ticket*, its position in the queue. A batch is written as soon as
the previous write finished (at most ``audit.max_batch`` records, one
transaction): with the SQLite store in its default mode the write runs inline,
right after the current round of I/O callbacks, so a batch is everything that
arrived in one loop iteration; other stores write from a task while the next
batch accumulates. Never one transaction per statement.

Write-ahead: a session's output to PostgreSQL carrying a statement waits until
the statement's record is durable. The session notes its latest ticket
(``SessionInfo.audit_ticket``) and, if that ticket is beyond ``durable``,
parks its output and registers here (:meth:`gate`); each successful batch
releases the sessions whose tickets it covered (``audit_released``).

Fail closed: when a write fails, the batch stays queued and is retried with
backoff; gated sessions are told (``audit_failed``) and, under
``on_audit_failure: refuse``, replace their parked statements by refusals;
new statements are refused by the recorder while ``failed`` is set. The
failure is logged at error level (the alert) and recorded in the trail when the
store returns, with the number of records dropped beyond ``max_backlog``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, Protocol

from .base import AuditStore, AuditStoreError, SessionSummary, StoredCheckpoint
from .records import PendingRecord, body_for, iso_time, make_record
from .signing import Signer, checkpoint_body

__all__ = ["AuditWriter", "GatedSession"]

log = logging.getLogger("pgwarden.audit")

#: How long a record nobody waits for may stay in memory before it is written.
LAZY_DELAY = 0.005
#: How far the SQLite database may lag its journal (records are durable in the journal).
LOAD_DELAY = 0.05

_RETRY_DELAYS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0)


class GatedSession(Protocol):
    info: Any  # has .audit_ticket

    def audit_released(self) -> None: ...

    def audit_failed(self) -> None: ...


class AuditWriter:
    def __init__(
        self,
        store: AuditStore,
        signer: Signer,
        *,
        gateway_id: str,
        max_batch: int = 5000,
        max_backlog: int = 100000,
        checkpoint_records: int = 1000,
        checkpoint_seconds: float = 60.0,
        sinks: Any = None,
        refuse_on_failure: bool = True,
    ) -> None:
        self.store = store
        self.signer = signer
        self.gateway_id = gateway_id
        self.max_batch = max_batch
        self.max_backlog = max_backlog
        self.checkpoint_records = checkpoint_records
        self.checkpoint_seconds = checkpoint_seconds
        self.sinks = sinks
        self.refuse_on_failure = refuse_on_failure
        self.store_id = ""
        self.issued = 0  # last ticket handed out
        self.durable = 0  # every ticket up to this one is in the store
        self.failed: str | None = None  # why the store cannot be written, while it cannot
        self.failed_since: float | None = None
        self.dropped = 0  # records lost because the backlog was full while failing
        self.written = 0
        self.batches = 0
        self.head: tuple[int, bytes] = (0, bytes(32))
        self._queue: list[PendingRecord] = []
        self._summaries: list[tuple[int, str, SessionSummary]] = []  # (ticket, "start"|"end", row)
        self._gated: set = set()
        self._inline = bool(getattr(store, "kind", "") == "sqlite" and getattr(store, "sync", "") == "normal")
        self._append = getattr(store, "append_sync", None)
        self._scheduled = False
        self._lazy: asyncio.TimerHandle | None = None
        self._journal = hasattr(store, "load_journal")  # the SQLite store writes a journal first
        self._load_handle: asyncio.TimerHandle | None = None
        self._writing = False
        self._retry_handle: asyncio.TimerHandle | None = None
        self._attempt = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._checkpointed_seq = -1
        self._since_checkpoint = 0
        self._checkpoint_pending = False
        self._retention_task: asyncio.Task | None = None
        self._wal_thread: threading.Thread | None = None
        self._stopping = False
        self.on_failure: Callable[[str], None] | None = None
        # Metrics and alerts (pgwarden/observe.py): audit_written / audit_failed / audit_recovered.
        self.observer: Any = None

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self.store.open(create=True)
        store_id = await self.store.get_meta("store_id")
        if store_id is None:
            store_id = uuid.uuid4().hex
            await self.store.set_meta("store_id", store_id)
            await self.store.set_meta("format_version", "1")
        self.store_id = store_id
        known = await self.store.get_meta("public_key_pem")
        if known is None:
            await self.store.set_meta("public_key_pem", self.signer.public_pem)
        elif known.strip() != self.signer.public_pem.strip():
            log.warning(
                "the audit store was signed with another key than %s; `pgwarden audit verify` will report "
                "checkpoints signed by this key as wrong_key until the new public key is pinned",
                self.signer.key_id,
                extra={"event": "audit_key_changed"},
            )
        self.head = await self.store.head()
        if self.sinks is not None:
            await self.sinks.start()
        if not self._inline:
            self._wake = asyncio.Event()
            self._task = self._loop.create_task(self._run(), name="audit-writer")
        self.submit(make_record("audit", None, {"event": "started", "gateway": self.gateway_id,
                                                "store": self.store.kind, "key_id": self.signer.key_id}))
        await self.flush()
        await self.checkpoint("startup")
        self._timer = self._loop.call_later(self.checkpoint_seconds, self._checkpoint_timer)
        if getattr(self.store, "kind", "") == "sqlite":
            self._wal_thread = threading.Thread(target=self._wal_checkpointer, name="audit-wal", daemon=True)
            self._wal_thread.start()

    async def stop(self) -> None:
        """Write everything queued, record the stop, sign a final checkpoint, close."""
        if self._timer is not None:
            self._timer.cancel()
        log.info("audit: %d records in %d group commits", self.written, self.batches, extra={"event": "audit_stats"})
        self.submit(make_record("audit", None, {"event": "stopped", "gateway": self.gateway_id,
                                                "records": self.written + 1, "dropped": self.dropped}))
        try:
            await asyncio.wait_for(self.flush(), timeout=10)
            await self.checkpoint("shutdown")
        except (asyncio.TimeoutError, AuditStoreError) as exc:
            log.error("audit trail not flushed at shutdown: %s (%d records lost)", exc, len(self._queue),
                      extra={"event": "audit_lost"})
        self._stopping = True
        if self._retention_task is not None:
            self._retention_task.cancel()
        if self._retry_handle is not None:
            self._retry_handle.cancel()
        if self._load_handle is not None:
            self._load_handle.cancel()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        if self.sinks is not None:
            await self.sinks.stop(5.0)
        try:
            await self.store.close()
        except AuditStoreError as exc:
            # Shutting down while the store fails (the SQLite store keeps the records
            # in its journal): an error to log, not a traceback out of the gateway.
            log.error("audit store not closed cleanly: %s", exc, extra={"event": "audit_close_failed"})

    # ------------------------------------------------------------ submitting

    def submit(self, record: PendingRecord, urgent: bool = False) -> int:
        """Queue a record; returns its ticket. Called from the event loop thread only.

        ``urgent``: a session waits for it (a write-ahead statement record), so the
        batch is written at once; other records (results, logins, disconnects)
        ride along with the next urgent batch or go out within ``LAZY_DELAY``.
        """
        if self.failed is not None and len(self._queue) >= self.max_backlog:
            self.dropped += 1
            return self.issued
        self.issued += 1
        record.ticket = self.issued
        self._queue.append(record)
        if urgent and not self._inline:
            if not self._scheduled:
                self._schedule()
        # Inline stores: whoever waits for an urgent record calls flush_now() (one
        # write per client chunk); the rest is written by the next flush or the timer.
        elif self._lazy is None and not self._scheduled:
            self._lazy = self._loop.call_later(LAZY_DELAY, self._lazy_flush)  # type: ignore[union-attr]
        return self.issued

    @property
    def inline(self) -> bool:
        """Whether :meth:`flush_now` can make records durable synchronously."""
        return self._inline

    def flush_now(self) -> None:
        """Write everything queued now (inline stores only); on failure ``failed`` is set.

        Runs for every client read that carries statements, so the common case
        (healthy store, no session rows, one batch) is written out inline here;
        everything else takes :meth:`_flush_inline`."""
        queue = self._queue
        if not queue or self._retry_handle is not None:
            return
        if self._summaries or self.failed is not None or len(queue) > self.max_batch or self.sinks is not None:
            self._flush_inline()
            return
        self._queue = []
        began = time.perf_counter()
        try:
            head = self._append(queue)
        except Exception as exc:
            self._queue = queue + self._queue
            if not isinstance(exc, AuditStoreError):
                log.exception("audit writer failed")
            self._failure(exc)
            return
        self.head = head
        n = len(queue)
        self.written += n
        self.batches += 1
        self._since_checkpoint += n
        self.durable = queue[-1].ticket
        if self._gated:
            self._release()
        if self.observer is not None:
            self.observer.audit_written(n, time.perf_counter() - began, len(self._queue))
        if self._load_handle is None:
            self._load_handle = self._loop.call_later(LOAD_DELAY, self._load)  # type: ignore[union-attr]
        if self._since_checkpoint >= self.checkpoint_records and not self._checkpoint_pending:
            self._checkpoint_pending = True
            self._loop.create_task(self.checkpoint("interval"))  # type: ignore[union-attr]

    def _release(self) -> None:
        gated = self._gated
        durable = self.durable
        for session in [s for s in gated if s.info.audit_ticket <= durable]:
            gated.discard(session)
            session.audit_released()

    def _lazy_flush(self) -> None:
        self._lazy = None
        if self._queue and not self._scheduled:
            self._schedule()

    def session_started(self, summary: SessionSummary) -> None:
        self._summaries.append((self.issued, "start", summary))

    def session_ended(self, summary: SessionSummary) -> None:
        self._summaries.append((self.issued, "end", summary))

    def gate(self, session: GatedSession) -> None:
        """``session`` parked output behind its ``info.audit_ticket``; release it when durable."""
        self._gated.add(session)

    def ungate(self, session: GatedSession) -> None:
        self._gated.discard(session)

    def _schedule(self) -> None:
        if self._retry_handle is not None or self._writing:
            return  # a retry or a write is pending; it takes everything queued
        self._scheduled = True
        if self._inline:
            self._loop.call_soon(self._flush_inline)  # type: ignore[union-attr]
        else:
            self._wake.set()  # type: ignore[union-attr]

    # ------------------------------------------------------------ writing

    def _take(self) -> tuple[list[PendingRecord], list[SessionSummary], list[SessionSummary]]:
        batch = self._queue[: self.max_batch]
        last = batch[-1].ticket if batch else self.issued
        started, ended, rest = [], [], []
        for entry in self._summaries:
            if entry[0] <= last:
                (started if entry[1] == "start" else ended).append(entry[2])
            else:
                rest.append(entry)
        return batch, started, ended

    def _written(self, batch: list[PendingRecord], head: tuple[int, bytes], healthy: bool = True,
                 seconds: float = 0.0) -> None:
        """``batch`` is stored. ``healthy=False``: stored in the SQLite journal while SQLite
        itself still fails; the writer stays failed (see :meth:`_flush_inline`)."""
        del self._queue[: len(batch)]
        last = batch[-1].ticket if batch else self.issued
        self._summaries = [e for e in self._summaries if e[0] > last]
        self.head = head
        self.written += len(batch)
        self.batches += 1
        self._since_checkpoint += len(batch)
        if batch:
            self.durable = last
        if not healthy:
            # Only the bookkeeping: the retry that is pending loads the journal, and the
            # sessions parked behind the failure were already told by _failure().
            if self.sinks is not None and batch:
                self.sinks.submit([(r.seq, body_for(r.seq, r.tail)) for r in batch])
            return
        if self.failed is not None:
            self._recovered()
        if self._gated:
            self._release()
        if self.observer is not None and batch:
            self.observer.audit_written(len(batch), seconds, len(self._queue))
        if self.sinks is not None and batch:
            self.sinks.submit([(r.seq, body_for(r.seq, r.tail)) for r in batch])
            lost = self.sinks.take_drop_report()
            if lost:
                self.submit(make_record("audit", None, {"event": "dropped", "sink": True, "dropped": lost}))
        if self._journal and self._load_handle is None:
            self._load_handle = self._loop.call_later(LOAD_DELAY, self._load)  # type: ignore[union-attr]
        if self._since_checkpoint >= self.checkpoint_records and not self._checkpoint_pending:
            self._checkpoint_pending = True
            self._loop.create_task(self.checkpoint("interval"))  # type: ignore[union-attr]

    def _flush_inline(self) -> None:
        # The lazy timer is left to expire (cancelling and re-arming it per flush cost
        # more than the flush): it finds nothing to do, or what arrived since.
        self._scheduled = False
        if not self._queue and not self._summaries and self.failed is None:
            return
        batch, started, ended = self._take()
        began = time.perf_counter()
        try:
            head = self.store.append_sync(batch, started, ended)  # type: ignore[attr-defined]
        except AuditStoreError as exc:
            self._failure(exc)
            return
        except Exception as exc:  # a bug must fail closed too
            log.exception("audit writer failed")
            self._failure(exc)
            return
        if self.failed is not None and self._journal:
            try:
                self.store.load_journal()  # type: ignore[attr-defined]  # proves SQLite is writable again
            except Exception as exc:
                if not isinstance(exc, AuditStoreError):
                    log.exception("audit journal load failed")
                # The batch is in the journal now (chained, durable against a crash) even
                # though SQLite still fails: it must leave the queue, or the next retry
                # appends the same records again under new seqs (each stored twice).
                self._written(batch, head, healthy=False)
                self._failure(exc)
                return
        self._written(batch, head, seconds=time.perf_counter() - began)
        if self._queue and not self._scheduled:
            self._schedule()

    async def _run(self) -> None:
        wake = self._wake
        assert wake is not None
        while True:
            await wake.wait()
            wake.clear()
            self._scheduled = False
            while self._queue or self._summaries:
                batch, started, ended = self._take()
                self._writing = True
                began = time.perf_counter()
                try:
                    head = await self.store.append(batch, started, ended)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self._writing = False
                    if not isinstance(exc, AuditStoreError):
                        log.exception("audit writer failed")
                    self._failure(exc)
                    await asyncio.sleep(self._next_delay())
                    continue
                finally:
                    self._writing = False
                self._written(batch, head, seconds=time.perf_counter() - began)

    def _load(self) -> None:
        """Move the SQLite store's journal into the database (a few ms behind the journal)."""
        self._load_handle = None
        try:
            self.store.load_journal()  # type: ignore[attr-defined]
        except AuditStoreError as exc:
            self._failure(exc)
        except Exception as exc:
            log.exception("audit journal load failed")
            self._failure(exc)

    def _next_delay(self) -> float:
        delay = _RETRY_DELAYS[min(self._attempt, len(_RETRY_DELAYS) - 1)]
        self._attempt += 1
        return delay

    def _failure(self, exc: BaseException) -> None:
        first = self.failed is None
        self.failed = str(exc) or type(exc).__name__
        if first:
            self.failed_since = time.time()
            log.error(
                "ALERT: the audit trail cannot be written (%s); new statements are %s",
                self.failed,
                "refused" if self.refuse_on_failure else "forwarded unrecorded",
                extra={"event": "audit_store_failed", "error": self.failed},
            )
            if self.on_failure is not None:
                try:
                    self.on_failure(self.failed)
                except Exception:
                    log.exception("audit failure hook failed")
            if self.observer is not None:
                self.observer.audit_failed(self.failed)
        gated, self._gated = self._gated, set()
        for session in gated:
            try:
                session.audit_failed()
            except Exception:
                log.exception("releasing a session after an audit failure failed")
        # One retry chain at a time: a failing journal load (_load) while a retry is
        # pending must not start a second chain (and lose track of the first).
        if self._inline and not self._stopping and self._retry_handle is None:
            self._retry_handle = self._loop.call_later(self._next_delay(), self._retry)  # type: ignore[union-attr]

    def _retry(self) -> None:
        self._retry_handle = None
        self._flush_inline()

    def _recovered(self) -> None:
        down = time.time() - (self.failed_since or time.time())
        log.warning("audit trail writable again after %.1f s; recording resumed", down,
                    extra={"event": "audit_store_recovered"})
        fields: dict[str, Any] = {"event": "store_recovered", "gateway": self.gateway_id,
                                  "error": self.failed, "down_s": round(down, 3)}
        if self.dropped:
            fields["dropped"] = self.dropped
        self.failed = None
        self.failed_since = None
        self._attempt = 0
        self.submit(make_record("audit", None, fields))
        if self.observer is not None:
            self.observer.audit_recovered(down)

    async def flush(self) -> None:
        """Wait until everything submitted so far is durable (raises AuditStoreError if it cannot be)."""
        target = self.issued
        for _ in range(2000):
            if self.durable >= target and not self._summaries:
                return
            if self._inline and not self._scheduled and self._retry_handle is None:
                self._flush_inline()
                if self.durable >= target and not self._summaries:
                    return
            if self.failed is not None and self._retry_handle is None and self._inline:
                raise AuditStoreError(self.failed)
            await asyncio.sleep(0.005)
        raise AuditStoreError(self.failed or "the audit writer did not catch up")

    # ------------------------------------------------------------ checkpoints

    async def checkpoint(self, reason: str) -> None:
        """Sign the current head (skipped when nothing was written since the last one)."""
        self._checkpoint_pending = False
        seq, chain = self.head
        if seq == self._checkpointed_seq and reason == "interval":
            return
        at = iso_time()
        body = checkpoint_body(seq=seq, chain_hash=chain, at=at, reason=reason, store=self.store_id,
                               key=self.signer.key_id)
        checkpoint = StoredCheckpoint(0, seq, at, body, self.signer.sign(body))
        self._since_checkpoint = 0
        self._checkpointed_seq = seq
        try:
            await self.store.add_checkpoint(checkpoint)
        except AuditStoreError as exc:
            self._checkpointed_seq = -1
            log.error("could not write an audit checkpoint: %s", exc, extra={"event": "audit_checkpoint_failed"})

    def _checkpoint_timer(self) -> None:
        if self.failed is None and self.head[0] != self._checkpointed_seq:
            self._loop.create_task(self.checkpoint("interval"))  # type: ignore[union-attr]
        self._timer = self._loop.call_later(self.checkpoint_seconds, self._checkpoint_timer)  # type: ignore[union-attr]

    def _wal_checkpointer(self) -> None:
        """Fold the SQLite WAL into the database every few seconds, off the event loop."""
        while not self._stopping:
            time.sleep(10.0)
            if self._stopping:
                return
            try:
                self.store.checkpoint_wal()  # type: ignore[attr-defined]
            except Exception:
                pass

    # ------------------------------------------------------------ retention

    def start_retention(self, max_age_seconds: float, every_seconds: float, open_store: Callable[[], AuditStore],
                        why: str) -> None:
        """AU-11: remove records older than ``max_age_seconds`` every ``every_seconds`` (retention.py)."""
        from .retention import retention_loop

        self._retention_task = self._loop.create_task(  # type: ignore[union-attr]
            retention_loop(self, max_age_seconds, every_seconds, open_store, why), name="audit-retention"
        )

    # ------------------------------------------------------------ status

    def status(self) -> dict[str, Any]:
        return {
            "store": self.store.kind,
            "failed": self.failed,
            "issued": self.issued,
            "durable": self.durable,
            "queued": len(self._queue),
            "written": self.written,
            "batches": self.batches,
            "dropped": self.dropped,
            "head_seq": self.head[0],
        }
