"""The relay: the authenticated phase of one session, as a sans-IO state machine.

Theory of operation
-------------------
The driver feeds bytes from the client (:meth:`Relay.client_data`) and from the
upstream server (:meth:`Relay.server_data`) and, after each call, sends what the
relay put in :attr:`to_server` and :attr:`to_client` (one write each) and acts
on :attr:`commands` (hold, close). Nothing here knows about sockets or asyncio.

Client -> server. Every complete client message is handled in arrival order.
Query, Parse and Execute become :class:`Statement` objects and pass the policy
(``evaluate``); other messages are forwarded as the bytes they arrived in.
The common requests take an inline fast path (``fastpath.py``); the methods
here are the general path and the specification it follows.
Statements are evaluated as their message arrives rather than after the Sync
that ends the request, so a pipelined batch of any size streams through with
bounded memory; each Statement still records which request (Query, or
Parse..Sync/Flush) it belongs to.

Deny without lying about the transaction. A denied message is replaced by a
*poison* message: a Query, or a Parse of a named statement, whose text can only
fail in the parser. PostgreSQL then does exactly what it would do had the real
statement failed: it aborts an open transaction block, discards extended-protocol
messages until Sync, and reports the true transaction status in ReadyForQuery.
The relay swaps the poison's ErrorResponse for the policy's own. A poison has no
side effects (the parser rejects it before any prepared statement is touched),
so a hostile client cannot turn it into anything else.

Expected replies (``replies.py``). Every forwarded message that the server answers leaves a
pending entry; server messages are matched against the head of that
queue. That is how the relay knows which statement a CommandComplete or error
belongs to, which ErrorResponse is a poison's, and when a speculative change to
the prepared-statement map must be undone because the server discarded the
message. DataRow and CopyData, the bulk of the traffic, are skipped by reading
their 5-byte header only.

Hold. When a stage holds a statement, processing of this client's input stops
(later messages queue up, and the driver pauses reading); the upstream side keeps
flowing. :meth:`resume` continues with the final verdict.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from ..wire import encode
from ..wire.constants import F, SQLState
from ..wire.frames import FrameBuffer, ProtocolViolation
from ..wire.messages import decode_cstring, decode_parse
from .fastpath import ClientFastPath, _name_at, _query_text, check_name
from .replies import (
    _BIND,
    _CLOSE,
    _DESCRIBE_ENTRY,
    _EXECUTE,
    _MASK_DESCRIBE,
    _MISSING,
    _PARSE,
    _POISON_PARSE,
    _POISON_QUERY,
    _QUERY,
    _SYNC,
    _SYNC_ENTRY,
    STMT,
    ReplyTracker,
    describe_entry,
)
from .statement import Kind, Protocol, SessionInfo, Statement
from .verdict import Allow, Deny, Hold, Rewrite, Verdict

__all__ = ["Relay", "HoldRequested", "CloseRequested", "StageFailed", "Evaluate", "POISON_TEXT"]

POISON_TEXT = "pgwarden denied this statement"
POISON_STATEMENT = "pgwarden_denied"
POISON_QUERY_BYTES = encode.query(POISON_TEXT)
POISON_PARSE_BYTES = encode.parse(POISON_STATEMENT, POISON_TEXT)

#: evaluate(statement, first_stage) -> Verdict
Evaluate = Callable[[Statement, int], Verdict]



# The relay's view of portals and prepared statements holds plain tuples (one
# is built per Bind and per Parse; a tuple is much cheaper than an object):
#   portal:   (text or None, statement_name, param_types, bind_body)
#   prepared: (text, param_types)
# where bind_body is (buf, start, stop), the Bind body's place in the received bytes.


@dataclass(frozen=True, slots=True)
class HoldRequested:
    """The driver must await ``hold.wait()`` and call :meth:`Relay.resume` with the result."""

    hold: Hold
    statement: Statement


@dataclass(frozen=True, slots=True)
class StageFailed:
    """A policy stage raised: the statement was refused; the driver logs the bug."""

    error: BaseException
    statement: Statement


@dataclass(frozen=True, slots=True)
class CloseRequested:
    reason: str
    error: bytes | None = None  # a FATAL ErrorResponse to send first, if any


class Relay(ClientFastPath, ReplyTracker):
    def __init__(
        self,
        session: SessionInfo,
        evaluate: Evaluate,
        completed: Callable[[Statement], None] | None = None,
        *,
        max_message_size: int = 64 * 1024 * 1024,
        rewrite_parameter: Callable[[str, str], str | None] | None = None,
        capturing: bool = False,
    ) -> None:
        self.session = session
        session.extra["on_prepared_change"] = self._prepared_changing
        self._evaluate = evaluate
        self._completed = completed
        self._rewrite_parameter = rewrite_parameter
        self._client = FrameBuffer(max_message_size)
        self._server_tail = b""
        self._server_skip = 0  # bytes of a bulk message already partly forwarded
        self._queue: deque[tuple[int, bytes, int, int]] = deque()
        self._span_buf: bytes | None = None
        self._span_start = 0
        self._span_stop = 0
        self._pending: deque[tuple] = deque()  # (kind, stmt, deny, undo); see replies.py
        self._prepared: dict[str, tuple[str, tuple[int, ...]]] = {}
        self._portals: dict[str, tuple] = {}
        self._discarding = False
        # Statement names whose meaning is uncertain until PostgreSQL answers the statement
        # that changes them (name -> that statement; "*" for all): a named Parse of a name
        # the relay still has, and SQL PREPARE / DEALLOCATE / DISCARD ALL (which the
        # guardrails stage reports through ``on_prepared_change``). See _on_execute.
        self._replacing: dict[str, Statement] = {}
        self._sql_changes: list[tuple[Statement, list[tuple[str, str]]]] = []
        # Named portals bound again while the relay still had them (PostgreSQL refuses
        # that with 42P03 unless the old one is gone): portal -> (request, the Bind's
        # pending entry), until PostgreSQL answers the Bind. See _on_execute.
        self._rebinding: dict[str, tuple[int, tuple]] = {}
        # The last Bind's "portal\0statement\0" bytes and their decoded names
        # (a Bind whose body starts with the key has exactly those names).
        self._bind_key = b"\x00\x00"
        self._bind_names = ("", "")
        self._held: tuple[Statement, Hold, int, tuple[bytes, int, int]] | None = None
        self.held = False  # mirrors ``_held is not None`` (a plain attribute: read on every chunk)
        # Timing is only worth a clock read when a stage will look at it.
        self._timing = completed is not None
        self._request = 0
        self._request_open = False
        # Result capture for the recorder (see capture.py): on when a stage sets
        # ``Statement.capture``; the loops then hand it runs of row bytes.
        self._capturing = capturing
        self._described: bytes | None = None  # the last Describe's RowDescription in this request
        # Masking (see replies.py, "Masking"): on once a statement with a mask was
        # sent; the rewriters of the result now arriving, if it is masked.
        self._masking = False
        self._rewriter = None
        self._copy_rewriter = None
        self._mask_partial: bytearray | None = None  # a large masked row still arriving (replies.py)
        self._mask_need = 0
        self.notice_hook: Callable[[bytes], None] | None = None  # notices with no statement running
        self.to_server: list[bytes | memoryview] = []
        self.to_client: list[bytes | memoryview] = []
        self.commands: list[HoldRequested | CloseRequested | StageFailed] = []
        self.closed = False

    # ------------------------------------------------------------------ state

    @property
    def txn_status(self) -> str:
        return self.session.txn_status


    @property
    def idle(self) -> bool:
        """Nothing in flight, nothing queued, not in a transaction: safe to close."""
        return not self._pending and not self._queue and self._held is None and self.session.txn_status == "I"

    @property
    def queued_bytes(self) -> int:
        """Bytes of complete messages waiting behind a hold (a partial message is
        bounded by max_message_size and must be allowed to finish arriving)."""
        if not self._queue:
            return 0
        return sum(e - s for _, _, s, e in self._queue)

    # --------------------------------------------------------- client -> server

    def _client_data_general(self, data: bytes) -> None:
        if self._replacing:
            self._settle_names()
        if self._rebinding:
            self._rebinding = {k: v for k, v in self._rebinding.items() if _still_pending(self._pending, v[1])}
        buf, frames = self._client.feed(data)
        if not frames:
            return
        if self._queue or self._held is not None:
            self._queue.extend((t, buf, s, e) for t, s, e in frames)
            if self._held is None:
                self._drain_queue()
            return
        self._client_frames(buf, frames)

    def _client_frames(self, buf: bytes, frames: list[tuple[int, int, int]]) -> None:
        # Handle frames in place; unchanged runs go out as one span.
        for index, (t, start, stop) in enumerate(frames):
            if self._held is not None or self.closed:
                self._queue.extend((t2, buf, s2, e2) for t2, s2, e2 in frames[index:])
                break
            self._client_message(t, buf, start, stop)
        self._end_span()

    def _prepared_changing(self, stmt: Statement, changes: list[tuple[str, str]]) -> None:
        """The guardrails stage allowed SQL that prepares or deallocates ``changes`` names."""
        self._sql_changes.append((stmt, changes))
        for _action, name in changes:
            self._replacing[name] = stmt

    def _settle_names(self) -> None:
        """Apply what answered statements did to statement names; keep the rest uncertain.

        An SQL PREPARE makes a name exist with a text only the guardrails stage
        knows (the relay keeps no text, so an Execute of it is decided on those
        facts); DEALLOCATE drops it. They are applied once PostgreSQL answered,
        also when it failed (a failed string may have run part of itself: a name
        without a text is decided strictly or refused, never guessed), but not
        when nothing of it ran (refused by pgwarden, or skipped after an error).
        """
        if self._sql_changes:
            keep = []
            settled = self.session.extra.get("on_prepared_settled")
            for stmt, changes in self._sql_changes:
                if stmt.status == "pending":
                    keep.append((stmt, changes))
                    continue
                if settled is not None:
                    settled(stmt)  # the guardrails stage applies it to its own view
                if stmt.status in ("denied", "skipped"):
                    continue  # nothing of it ran
                for action, name in changes:
                    if name == "*":
                        unnamed = self._prepared.get("")
                        self._prepared.clear()
                        if unnamed is not None:
                            self._prepared[""] = unnamed
                    elif action == "prepare":
                        self._prepared[name] = (None, ())
                    else:
                        self._prepared.pop(name, None)
            self._sql_changes = keep
        self._replacing = {k: v for k, v in self._replacing.items() if v.status == "pending"}

    def _drain_queue(self) -> None:
        queue = self._queue
        while queue and self._held is None and not self.closed:
            t, buf, start, stop = queue.popleft()
            self._client_message(t, buf, start, stop)
        self._end_span()

    # Output spans: consecutive messages forwarded unchanged from the same
    # buffer are sent as one slice (usually the whole chunk, without a copy).

    def _pass(self, buf: bytes, start: int, stop: int) -> None:
        if self._span_buf is buf and self._span_stop == start:
            self._span_stop = stop
            return
        self._end_span()
        self._span_buf, self._span_start, self._span_stop = buf, start, stop

    def _end_span(self) -> None:
        buf = self._span_buf
        if buf is not None:
            start, stop = self._span_start, self._span_stop
            self.to_server.append(buf if start == 0 and stop == len(buf) else buf[start:stop])
            self._span_buf = None

    def _emit(self, data: bytes) -> None:
        self._end_span()
        self.to_server.append(data)

    def _client_message(self, t: int, buf: bytes, start: int, stop: int) -> None:
        if self._discarding and t != F.SYNC:
            # After a poison in the extended protocol the server discards until
            # Sync; so do we, without evaluating what would never run.
            return
        if t == F.QUERY:
            self._on_query(buf, start, stop)
        elif t == F.EXECUTE:
            self._on_execute(buf, start, stop)
        elif t == F.BIND:
            self._on_bind(buf, start, stop)
        elif t == F.PARSE:
            self._on_parse(buf, start, stop)
        elif t == F.SYNC:
            self._open_request()
            self._request_open = False
            self._discarding = False
            self._pass(buf, start, stop)
            self._pending.append(_SYNC_ENTRY)
        elif t == F.DESCRIBE:
            self._open_request()
            self._pass(buf, start, stop)
            # A prepared statement's Describe carries its name (replies.describe_entry).
            self._pending.append(
                _DESCRIBE_ENTRY if stop - start < 7 or buf[start + 5] != 83 else describe_entry(buf, start, stop)
            )
        elif t == F.CLOSE:
            self._on_close(buf, start, stop)
        elif t == F.FLUSH:
            self._request_open = False
            self._pass(buf, start, stop)
        elif t in (F.COPY_DATA, F.COPY_DONE, F.COPY_FAIL):
            # Data of a COPY the policy already allowed; outside COPY the server ignores it.
            self._pass(buf, start, stop)
            if t == F.COPY_DATA and self._capturing:
                capture = self._head_capture()
                if capture is not None:
                    capture.copy_in_data(stop - start)
        elif t == F.FUNCTION_CALL:
            self._on_function_call()
        elif t == F.TERMINATE:
            self._pass(buf, start, stop)
            self.closed = True
            self.commands.append(CloseRequested("client sent Terminate"))
        else:
            shown = repr(chr(t)) if 32 < t < 127 else f"0x{t:02x}"
            raise ProtocolViolation(f"unexpected client message type {shown}")

    def _open_request(self) -> int:
        if not self._request_open:
            self._request += 1
            self._request_open = True
        return self._request

    def _on_query(self, buf: bytes, start: int, stop: int) -> None:
        self._request_open = False
        self._request += 1
        stmt = Statement(Kind.QUERY, Protocol.SIMPLE, _query_text(buf, start, stop), self.session, self._request)
        self._decide(stmt, (buf, start, stop), 0)

    def _on_parse(self, buf: bytes, start: int, stop: int) -> None:
        parse = decode_parse(buf[start + 5 : stop])
        check_name(parse.name)
        stmt = Statement(
            Kind.PARSE,
            Protocol.EXTENDED,
            parse.query,
            self.session,
            self._open_request(),
            statement_name=parse.name,
            param_types=parse.param_types,
        )
        self._decide(stmt, (buf, start, stop), 0)

    def _on_bind(self, buf: bytes, start: int, stop: int) -> None:
        request = self._open_request()
        portal, pos = _name_at(buf, start + 5, stop)
        name, _ = _name_at(buf, pos, stop)
        prepared = self._prepared.get(name)
        entry = (
            (prepared[0], name, prepared[1], (buf, start + 5, stop))
            if prepared is not None
            else (None, name, (), (buf, start + 5, stop))
        )
        portals = self._portals
        undo = (portals, portal, portals.get(portal, _MISSING))
        portals[portal] = entry
        self._pass(buf, start, stop)
        pending_entry = (_BIND, None, None, undo)
        self._pending.append(pending_entry)
        if portal and undo[2] is not _MISSING:
            self._rebinding[portal] = (request, pending_entry)

    def _on_execute(self, buf: bytes, start: int, stop: int) -> None:
        portal_name, _ = _name_at(buf, start + 5, stop)
        portal = self._portals.get(portal_name)
        if portal is None:
            stmt = Statement(
                Kind.EXECUTE, Protocol.EXTENDED, None, self.session, self._open_request(), portal_name=portal_name
            )
        else:
            text, statement_name, param_types, bind_body = portal
            stmt = Statement(
                Kind.EXECUTE,
                Protocol.EXTENDED,
                text,
                self.session,
                self._open_request(),
                statement_name=statement_name,
                portal_name=portal_name,
                param_types=param_types,
                bind_body=bind_body,
            )
            refusal = self._uncertain_name(stmt)
            if refusal is not None:
                stmt.verdict = refusal
                self._send_poison(stmt, refusal)
                return
        self._decide(stmt, (buf, start, stop), 0)

    def _uncertain_name(self, stmt: Statement) -> Deny | None:
        """A refusal if ``stmt`` executes a portal or statement whose meaning PostgreSQL has not
        settled yet (re-bound / re-prepared in an earlier batch, or PREPARE/DEALLOCATE run
        through Execute): checked as the relay sees it, it could run as the old one."""
        portal, name = stmt.portal_name or "", stmt.statement_name or ""
        rebinding = self._rebinding.get(portal) if self._rebinding else None
        if rebinding is not None and rebinding[0] != stmt.request and _still_pending(self._pending, rebinding[1]):
            what, rule = f'portal "{portal}" is being bound again', "protocol.portal_replaced"
        else:
            for key in (name, "*") if self._replacing else ():
                entry = self._replacing.get(key)
                # After a protocol Parse the same batch is safe (PostgreSQL skips it if the Parse
                # fails); after an Execute of PREPARE/DEALLOCATE it is not: that ran.
                if entry is not None and entry.status == "pending" and (
                    entry.request != stmt.request or entry.kind == Kind.EXECUTE
                ):
                    break
            else:
                return None
            what, rule = f'prepared statement "{name}" is being replaced', "protocol.statement_replaced"
        return Deny(
            f"pgwarden: {what} and PostgreSQL has not answered yet; this Execute was not run",
            SQLState.OBJECT_NOT_IN_PREREQUISITE_STATE,
            rule=rule,
            hint="Wait for PostgreSQL's answer (a Sync) before executing it.",
        )

    def _on_close(self, buf: bytes, start: int, stop: int) -> None:
        self._open_request()
        if stop - start < 7 or buf[start + 5] not in (ord("S"), ord("P")):
            raise ProtocolViolation("Close message must name 'S' or 'P'")
        kind = buf[start + 5]
        name, _ = decode_cstring(buf, start + 6, stop)
        check_name(name)
        table: dict = self._prepared if kind == ord("S") else self._portals
        if kind == ord("P"):
            hook = self.session.extra.get("on_portal_close")
            if hook is not None:
                hook(name)  # e.g. masking: a SQL cursor of that name is gone, the name is free
        undo = (table, name, table.pop(name, _MISSING))
        self._pass(buf, start, stop)
        self._pending.append((_CLOSE, None, None, undo))

    def _on_function_call(self) -> None:
        self._request_open = False
        self._request += 1
        stmt = Statement(Kind.FUNCTION_CALL, Protocol.SIMPLE, None, self.session, self._request)
        deny = Deny(
            "pgwarden: fast-path function calls are refused because they bypass SQL inspection",
            SQLState.FEATURE_NOT_SUPPORTED,
            rule="protocol.function_call",
            hint="Call the function with SELECT instead.",
        )
        stmt.verdict = deny
        self._send_poison(stmt, deny)

    # ------------------------------------------------------------ the decision

    def _decide(self, stmt: Statement, msg: tuple[bytes, int, int], first_stage: int) -> None:
        try:
            verdict = self._evaluate(stmt, first_stage)
        except Exception as exc:  # a stage's bug must fail closed, not open
            verdict = self._stage_failed(stmt, exc)
        self._decided(stmt, msg, verdict, first_stage)

    def _stage_failed(self, stmt: Statement, exc: Exception) -> Deny:
        self.commands.append(StageFailed(exc, stmt))
        return Deny(
            f"pgwarden: policy evaluation failed ({type(exc).__name__}); statement refused",
            SQLState.INTERNAL_ERROR,
            rule="pipeline.error",
        )

    def _decided(self, stmt: Statement, msg: tuple[bytes, int, int], verdict: Verdict, first_stage: int) -> None:
        if isinstance(verdict, Hold):
            self._held = (stmt, verdict, first_stage, msg)
            self.held = True
            self.commands.append(HoldRequested(verdict, stmt))
            return
        self._apply(stmt, msg, verdict)

    def _apply(self, stmt: Statement, msg: tuple[bytes, int, int], verdict: Verdict) -> None:
        stmt.verdict = verdict
        if isinstance(verdict, Deny):
            self._send_poison(stmt, verdict)
            return
        if isinstance(verdict, Rewrite):
            if stmt.kind == Kind.EXECUTE:
                deny = Deny(
                    "pgwarden: a statement cannot be rewritten at Execute", SQLState.INTERNAL_ERROR, rule=verdict.rule
                )
                stmt.verdict = deny
                self._send_poison(stmt, deny)
                return
            stmt.text = verdict.text
            self._emit(
                encode.query(verdict.text)
                if stmt.kind == Kind.QUERY
                else encode.parse(stmt.statement_name or "", verdict.text, stmt.param_types)
            )
        elif stmt.mask is not None:
            if stmt.kind == Kind.EXECUTE:
                # Masking needs the portal's columns and result formats, which only a
                # Describe of the portal gives (a Describe of the statement reports
                # text formats; asyncpg describes once and binds binary many times).
                # The answer is the relay's own and never reaches the client.
                self._emit(encode.describe_portal(stmt.portal_name or ""))
                self._pending.append((_MASK_DESCRIBE, None, None, None, stmt))
            self._pass(*msg)
        else:
            self._pass(*msg)
        if stmt.mask is not None:
            self._masking = True
        if self._timing:
            stmt.mark_started()
        kind = stmt.kind
        if kind == Kind.QUERY:
            self._pending.append((_QUERY, stmt, None, None))
        elif kind == Kind.EXECUTE:
            self._pending.append((_EXECUTE, stmt, None, None))
        else:  # PARSE
            # Speculative: the server may still fail this Parse (a syntax error, or
            # a name that exists, perhaps unknown to us after an SQL DEALLOCATE);
            # the undo entry restores the previous view when it does.
            name = stmt.statement_name or ""
            undo = (self._prepared, name, self._prepared.get(name, _MISSING))
            if name and undo[2] is not _MISSING:
                # PostgreSQL refuses a Parse of a name it still has (42P05), unless an SQL
                # DEALLOCATE the relay cannot see dropped it: until the answer arrives the
                # name means one of two texts, and an Execute after a Sync could run the
                # old one while being checked as the new one (_on_execute refuses that).
                self._replacing[name] = stmt
            self._prepared[name] = (stmt.text or "", stmt.param_types)
            self._pending.append((_PARSE, stmt, None, undo))

    def _send_poison(self, stmt: Statement, deny: Deny) -> None:
        if self._timing:
            stmt.mark_started()
        if stmt.protocol == Protocol.SIMPLE:
            self._emit(POISON_QUERY_BYTES)
            self._pending.append((_POISON_QUERY, stmt, deny, None))
        else:
            self._emit(POISON_PARSE_BYTES)
            self._pending.append((_POISON_PARSE, stmt, deny, None))
            self._discarding = True

    def notice_to_client(self, message: bytes) -> bool:
        """Queue an asynchronous message (a NoticeResponse) for the client.

        Only at a message boundary: while a bulk DataRow is partly forwarded
        (``_server_skip``) the bytes would land inside it, so the caller tries
        again after the next upstream chunk (returns False).
        """
        if self._server_skip:
            return False
        self.to_client.append(message)
        return True

    def resume(self, verdict: Verdict) -> None:
        """Continue after a hold with the verdict its ``wait()`` produced."""
        if self._held is None:
            return
        stmt, hold, first_stage, msg = self._held
        self._held = None
        self.held = False
        if isinstance(verdict, Allow):
            # Continue with the stages after the one that held (the pipeline noted it).
            self._decide(stmt, msg, stmt.next_stage)
        elif isinstance(verdict, Hold):
            self._held = (stmt, verdict, first_stage, msg)
            self.held = True
            self.commands.append(HoldRequested(verdict, stmt))
            return
        else:
            self._apply(stmt, msg, verdict)
        if self._held is None:
            self._drain_queue()
        self._end_span()

    # ------------------------------------------------- refusing unsent output

    def refuse_unsent(self, count: int, deny: Deny) -> bytes:
        """Replace the messages behind the last ``count`` pending entries, which the
        driver has not sent yet, with poisons that refuse them: the bytes to send instead.

        Why: the driver holds a session's output until the audit records of its
        statements are durable (write-ahead). When the audit store fails, those
        statements must not run, but the relay has already tracked them. Every
        simple Query becomes a poison Query; each extended-protocol request
        becomes one poison Parse (PostgreSQL then discards the rest of the
        request up to its Sync, exactly as for a policy refusal) followed by its
        Sync. Speculative prepared-statement and portal changes are undone.
        Statements that are dropped, not poisoned, finish as denied at once.
        """
        pending = self._pending
        if count <= 0:
            return b""
        count = min(count, len(pending))
        tail = [pending.pop() for _ in range(count)]  # newest first: undo in reverse order
        for entry in tail:
            self._undo(entry)
        tail.reverse()
        out: list[bytes] = []
        in_request = False  # an extended request already poisoned, waiting for its Sync
        for entry in tail:
            kind, stmt = entry[0], entry[1]
            if kind == _QUERY or kind == _POISON_QUERY:
                out.append(POISON_QUERY_BYTES)
                own = entry[2] if kind == _POISON_QUERY else deny
                if kind == _QUERY and stmt is not None:
                    stmt.verdict = deny
                pending.append((_POISON_QUERY, stmt, own, None))
            elif kind == _SYNC:
                out.append(encode.sync())
                pending.append(_SYNC_ENTRY)
                in_request = False
            elif not in_request:
                out.append(POISON_PARSE_BYTES)
                own = entry[2] if kind == _POISON_PARSE else deny
                if kind != _POISON_PARSE and stmt is not None:
                    stmt.verdict = deny
                pending.append((_POISON_PARSE, stmt, own, None))
                in_request = True
            else:
                if stmt is not None:
                    if kind != _POISON_PARSE:
                        stmt.verdict = deny
                    self._finish(entry, "denied")
        # A request still open: PostgreSQL discards its further messages until Sync; so do we.
        self._discarding = self._discarding or in_request
        return b"".join(out)

    # --------------------------------------------------------- server -> client

    # ------------------------------------------------------------------ misc

    def take_output(self) -> tuple[list, list, list]:
        """Hand the accumulated output to the driver and start fresh lists."""
        out = (self.to_server, self.to_client, self.commands)
        self.to_server, self.to_client, self.commands = [], [], []
        return out

    def pending_statements(self) -> list[Statement]:
        return [e[STMT] for e in self._pending if e[STMT] is not None]


# ------------------------------------------------------- compiled accelerator
#
# ``_speedups`` (optional, Cython) holds compiled twins of the two hottest loops,
# ClientFastPath.client_data and ReplyTracker.server_data. When it is built they
# replace those methods on Relay; the mixins keep the pure-Python methods, which
# remain the specification (tests/test_speedups.py checks the two agree).
# PGWARDEN_PURE_PYTHON=1 (any value but "" or "0") forces the Python loops.


def _load_speedups():
    import os

    if os.environ.get("PGWARDEN_PURE_PYTHON", "") not in ("", "0"):
        return None
    try:
        from . import _speedups
    except ImportError:  # not built (no C compiler), or out of step with replies.py
        return None
    return _speedups


_speedups = _load_speedups()
#: True when Relay uses the compiled loops (pgwarden.session._speedups).
ACCELERATED = _speedups is not None
if _speedups is not None:
    Relay.client_data = _speedups.client_data  # type: ignore[method-assign]
    Relay.server_data = _speedups.server_data  # type: ignore[method-assign]


def _still_pending(pending, entry: tuple) -> bool:
    """Whether ``entry`` (a pending reply expectation) is still waiting for PostgreSQL's answer."""
    for queued in pending:
        if queued is entry:
            return True
    return False
