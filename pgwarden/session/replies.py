"""Expected-reply tracking: the server -> client half of the relay.

Every message the relay forwards that PostgreSQL answers leaves an entry
(a ``(kind, stmt, deny, undo)`` tuple) in ``self._pending``; each server message is matched
against the head of that queue. That is how the relay knows which statement a
CommandComplete or an error belongs to, which ErrorResponse is a poison's (and
must be replaced by the policy's error), and when a speculative change to the
prepared-statement or portal map must be undone because PostgreSQL discarded
the message. DataRow and CopyData, the bulk of the traffic, are skipped by
reading their 5-byte header only; one that continues past a chunk is forwarded
as far as it goes and the rest skipped when it arrives.

:class:`ReplyTracker` is the base class of :class:`~pgwarden.session.relay.Relay`,
which owns the state it uses (``_pending``, ``_prepared``, ``_portals``,
``session``, ``to_client``, ``_completed`` and the rewrite hook).
"""

from __future__ import annotations

from typing import Any

from ..wire import encode
from ..wire.constants import B, SQLState
from ..wire.frames import ProtocolViolation, unpack_uint32
from ..wire.messages import decode_cstring, decode_error_fields, decode_parameter_status
from .verdict import Deny

__all__ = ["ReplyTracker", "deny_error", "describe_entry"]

_MISSING: Any = object()

# Pending reply kinds.
_PARSE, _BIND, _DESCRIBE, _EXECUTE, _CLOSE, _SYNC, _QUERY, _POISON_PARSE, _POISON_QUERY = range(9)
# The relay's own Describe of a masked Execute's portal: ``(kind, None, None, None, stmt)``;
# its answer (RowDescription or NoData) is consumed, never forwarded.
_MASK_DESCRIBE = 9
# A masked DataRow/CopyData larger than this that is still arriving is collected apart.
_PARTIAL_THRESHOLD = 64 * 1024
_ENDS_WITH_READY = (_SYNC, _QUERY, _POISON_QUERY)

# A pending entry is a plain tuple ``(kind, stmt, deny, undo)`` (a Describe of a
# prepared statement adds its name, see describe_entry): building a
# tuple costs a fraction of an object with an ``__init__``, and one is built
# for every message the server answers. ``undo`` is ``(dict, key, previous
# value or _MISSING)``: how to revert a speculative map change if the server
# discards the message. Entries without a statement are shared constants.
KIND, STMT, DENY, UNDO = range(4)
_SYNC_ENTRY = (_SYNC, None, None, None)
_DESCRIBE_ENTRY = (_DESCRIBE, None, None, None)


def describe_entry(buf: bytes, pos: int, stop: int) -> tuple:
    """The pending entry of the Describe ``buf[pos:stop]`` of a prepared statement ('S'):
    ``_DESCRIBE_ENTRY`` plus the statement's name, so its ParameterDescription can
    be matched to it (see ``_on_parameter_description``). The client paths call
    this only when the body starts with 'S'; a malformed name gets the plain entry
    (PostgreSQL rejects the message itself)."""
    try:
        return (_DESCRIBE, None, None, None, decode_cstring(buf, pos + 6, stop)[0])
    except ProtocolViolation:
        return _DESCRIBE_ENTRY


class ReplyTracker:
    """Mixin: server -> client processing; see the module docstring."""

    def server_data(self, data: bytes) -> None:
        """Bytes from the upstream server. Raises ProtocolViolation if it is not speaking the protocol.

        A DataRow or CopyData that continues past the end of a chunk is forwarded
        as far as it goes and the rest is skipped when it arrives, so bulk
        results stream through without being re-buffered or copied.

        The messages of an ordinary reply (RowDescription, BindComplete,
        CommandComplete, ReadyForQuery, ...) are tracked inline in this loop
        rather than through a method call each: this loop runs for every reply,
        and per-message calls were a large share of the relay's cost per
        transaction. Everything else goes through :meth:`_server_message`.
        """
        if data.__class__ is not bytes:
            data = bytes(data)
        if self._mask_partial is not None:
            data = self._continue_partial(data)  # a large masked row still arriving
            if data is None:
                return
        out = self.to_client
        pos = 0
        skip = self._server_skip
        if skip:
            if skip >= len(data):
                self._server_skip = skip - len(data)
                out.append(data)
                if self._capturing:
                    self._capture_run(data, 0, len(data))
                return
            self._server_skip = 0
            pos = skip
            if self._capturing:
                self._capture_run(data, 0, skip)
        if self._server_tail:
            buf = self._server_tail + data[pos:]
            self._server_tail = b""
            pos = 0
        else:
            buf = data
        end = len(buf)
        span = 0
        run = -1  # start of the current run of DataRow/CopyData messages
        unpack = unpack_uint32
        pending = self._pending
        masking = self._masking
        while end - pos >= 5:
            t = buf[pos]
            size = unpack(buf, pos + 1)[0] + 1
            if size < 5:
                raise ProtocolViolation(f"upstream sent a message with invalid length {size - 1}")
            if masking and (
                (t == 68 and self._rewriter is not None) or (t == 100 and self._copy_rewriter is not None)
            ):
                # Rows of a masked result: rewritten whole (never streamed in part).
                if run >= 0:
                    if self._capturing:
                        self._capture_run(buf, run, pos)
                    run = -1
                if pos > span:
                    out.append(buf[span:pos])
                pos = self._rewrite_rows(t, buf, pos, end)
                span = pos
                if end - pos >= 5 and buf[pos] == t:
                    # An incomplete message: wait for the rest. A large one is collected in a
                    # bytearray (appending), not re-joined to every chunk (quadratic).
                    need = unpack(buf, pos + 1)[0] + 1
                    if need > _PARTIAL_THRESHOLD:
                        self._mask_partial = bytearray(buf[pos:end])
                        self._mask_need = need
                        pos = span = end
                    break
                continue
            if size > end - pos:
                if t == 68 or t == 100:
                    self._server_skip = size - (end - pos)
                    if run < 0:
                        run = pos
                    pos = end
                break
            if t == 68 or t == 100:  # DataRow, CopyData: the bulk, untouched
                if run < 0:
                    run = pos
                pos += size
                continue
            if run >= 0:
                if self._capturing:
                    self._capture_run(buf, run, pos)
                run = -1
            if t == 67:  # CommandComplete
                if masking:
                    self._rewriter = None
                if pending:
                    head = pending[0]
                    stmt = head[1]
                    if stmt is not None:
                        stmt.tags.append(buf[pos + 5 : pos + size - 1].decode("utf-8", "replace"))
                        if head[0] == _EXECUTE:
                            pending.popleft()
                            if self._completed is None:
                                stmt.status = "ok"
                            else:
                                self._finish(head, "ok")
                pos += size
                continue
            if t == 90:  # ReadyForQuery
                if masking:
                    self._rewriter = self._copy_rewriter = None
                status = chr(buf[pos + 5])
                self.session.txn_status = status
                self._described = None
                while pending:
                    entry = pending.popleft()
                    kind = entry[0]
                    if kind == _SYNC or kind == _QUERY or kind == _POISON_QUERY:
                        stmt = entry[1]
                        if stmt is not None:
                            if kind == _QUERY and self._completed is None:
                                if stmt.status == "pending":
                                    stmt.status = "ok"
                            else:
                                self._finish_ready(entry)
                        break
                    self._finish(entry, "skipped")  # out of step: never let the queue wedge
                if status == "I" and not pending and self._portals:
                    self._portals.clear()  # portals die with the transaction
                pos += size
                continue
            if masking and (t == 84 or t == 110) and pending and pending[0][0] == _MASK_DESCRIBE:
                # The answer to the relay's own Describe: the masked Execute's columns.
                self._mask_described(pending.popleft(), buf[pos : pos + size] if t == 84 else None)
                if pos > span:
                    out.append(buf[span:pos])
                pos += size
                span = pos
                continue
            if t == 50 or t == 49 or t == 51 or t == 110:  # Bind/Parse/CloseComplete, NoData
                if pending:
                    head = pending.popleft()
                    if head[0] == _PARSE:
                        self._finish(head, "ok")
                pos += size
                continue
            if t == 84:  # RowDescription
                if pending and pending[0][0] == _DESCRIBE:
                    pending.popleft()
                    if self._capturing:
                        self._described = buf[pos : pos + size]
                else:
                    if self._capturing:
                        self._capture_description(buf[pos : pos + size])
                    if masking:
                        self._mask_result(buf[pos : pos + size])
                pos += size
                continue
            replacement = self._server_message(t, buf, pos, size)
            if replacement is not None:
                if pos > span:
                    out.append(buf[span:pos])
                if replacement:
                    out.append(replacement)
                span = pos + size
            pos += size
        if run >= 0 and self._capturing:
            self._capture_run(buf, run, pos)
        if span == 0 and pos == end:
            out.append(buf)
        elif pos > span:
            out.append(buf[span:pos])
        if pos < end:
            self._server_tail = buf[pos:]

    def _server_message(self, t: int, buf: bytes, pos: int, size: int) -> bytes | None:
        """Track one server message the loop above does not handle inline;
        return replacement bytes, b"" to drop, None to pass."""
        pending = self._pending
        head = pending[0] if pending else None
        if self._masking:
            masked = self._mask_message(t, buf, pos, size)
            if masked is not None:
                return masked
        if t == B.PORTAL_SUSPENDED or t == B.EMPTY_QUERY_RESPONSE:
            if head is not None and head[KIND] == _EXECUTE:
                pending.popleft()
                self._finish(head, "ok")
            return None
        if t == B.ERROR_RESPONSE:
            return self._on_server_error(buf, pos, size)
        if self._capturing and (t == B.NOTICE_RESPONSE or t == B.COPY_OUT_RESPONSE or t == B.COPY_IN_RESPONSE):
            self._capture_other(t, buf[pos : pos + size])
            return None
        if t == B.PARAMETER_DESCRIPTION:
            self._on_parameter_description(buf, pos, size)
            return None
        if t == B.PARAMETER_STATUS:
            name, value = decode_parameter_status(buf[pos + 5 : pos + size])
            if name == "standard_conforming_strings" and value != "on":
                # pgwarden's parser reads string literals as PostgreSQL does only with this on;
                # off, 'a\'' hides SQL from every check. The guardrails refuse changing it, so
                # this is something else (ALTER ROLE ... SET by another path): end the session.
                raise ProtocolViolation("upstream turned standard_conforming_strings off")
            self.session.server_params[name] = value
            if self._rewrite_parameter is not None:
                new = self._rewrite_parameter(name, value)
                if new is not None and new != value:
                    return encode.parameter_status(name, new)
            return None
        if t in (B.AUTHENTICATION, B.BACKEND_KEY_DATA, B.NEGOTIATE_PROTOCOL_VERSION):
            raise ProtocolViolation(f"upstream sent startup message {chr(t)!r} after startup")
        # ParameterDescription, NoticeResponse, NotificationResponse, Copy*Response,
        # CopyDone, FunctionCallResponse: relayed untouched.
        return None

    def _on_parameter_description(self, buf: bytes, pos: int, size: int) -> None:
        """PostgreSQL's parameter types for a Describe of a prepared statement.

        Why: clients such as asyncpg send Parse without parameter types and learn
        them from this reply before they Bind; with only the Parse's (none), every
        binary Bind parameter was recorded as ``\\x<hex>``. The prepared
        statement's types become the resolved ones, so the Executes bound to it
        carry them (a later Parse or Close of the name replaces or drops them).
        """
        pending = self._pending
        if not pending:
            return
        head = pending[0]
        if head[KIND] != _DESCRIBE or len(head) < 5:
            return
        prepared = self._prepared.get(head[4])
        if prepared is None:
            return
        count = int.from_bytes(buf[pos + 5 : pos + 7], "big")
        if size != 7 + 4 * count:
            return  # malformed: PostgreSQL never sends that; keep what the Parse said
        types = tuple(int.from_bytes(buf[i : i + 4], "big") for i in range(pos + 7, pos + size, 4))
        self._prepared[head[4]] = (prepared[0], types)

    def _on_server_error(self, buf: bytes, pos: int, size: int) -> bytes | None:
        pending = self._pending
        if not pending:
            return None  # e.g. FATAL on admin shutdown: relay as is
        head = pending[0]
        kind = head[KIND]
        if kind == _POISON_QUERY:
            head[STMT].status = "denied"
            return deny_error(head[DENY])
        if kind == _QUERY:
            head[STMT].error = decode_error_fields(buf[pos + 5 : pos + size])
            head[STMT].status = "error"
            return None
        if kind == _SYNC:
            return None  # the implicit transaction failed at commit; ReadyForQuery follows
        # Extended protocol: the failing message is at the head; the server now
        # discards everything up to the next Sync.
        failed = pending.popleft()
        replacement = None
        stmt = failed[STMT]
        error = None
        if kind == _POISON_PARSE:
            self._finish(failed, "denied")
            replacement = deny_error(failed[DENY])
        else:
            error = decode_error_fields(buf[pos + 5 : pos + size])
            if stmt is not None:
                stmt.error = error
            self._undo(failed)
            if kind == _PARSE and stmt is not None and not stmt.statement_name:
                # PostgreSQL drops the unnamed statement before parsing the new one.
                self._prepared.pop("", None)
            self._finish(failed, "error")
        discarded = []
        while pending and pending[0][KIND] != _SYNC:
            discarded.append(pending.popleft())
        blamed = None
        if kind == _MASK_DESCRIBE:
            # The relay's own Describe failed (no such portal): that is the Execute's failure.
            for entry in discarded:
                if entry[KIND] == _EXECUTE and entry[STMT] is not None:
                    blamed = entry
                    entry[STMT].error = error
                    break
        if kind == _BIND:
            # A failed Bind (a parameter that does not convert, or an error while
            # planning with the values, e.g. 1/$1 with 0) is the failure of the
            # Execute of its portal: that one gets the error, not "skipped" with
            # the SQLSTATE nowhere in its record.
            portal = failed[UNDO][1]
            for entry in discarded:
                if entry[KIND] == _EXECUTE and entry[STMT] is not None and entry[STMT].portal_name == portal:
                    blamed = entry
                    entry[STMT].error = error
                    break
        for entry in reversed(discarded):
            self._undo(entry)
        for entry in discarded:
            self._finish(entry, "error" if entry is blamed else "skipped")
        return replacement

    # ------------------------------------------------------------ masking
    # Only called when ``self._masking`` (a statement with a mask was sent).
    # The statement's mask (pgwarden.policy.masking.StatementMask) turns each
    # RowDescription into a row rewriter (or None: that result passes as is), a
    # CopyOutResponse into a COPY rewriter, and scrubs values that errors and
    # notices echo. The rewriters live from their description to the end of
    # that result (CommandComplete, PortalSuspended, an error, ReadyForQuery).

    def _head_mask(self):
        pending = self._pending
        if pending:
            head = pending[0]
            stmt = head[STMT] if head[KIND] != _MASK_DESCRIBE else head[4]
            if stmt is not None:
                return stmt.mask
        return None

    def _mask_result(self, description: bytes) -> None:
        """A RowDescription of the head statement (simple query, FETCH): its rows' rewriter."""
        mask = self._head_mask()
        self._rewriter = mask.result(description) if mask is not None else None

    def _mask_described(self, entry: tuple, description: bytes | None) -> None:
        """The answer to the relay's Describe of a masked Execute's portal."""
        stmt = entry[4]
        if description is None:
            self._rewriter = None
            return
        if self._capturing:
            self._described = description  # the recorder decodes rows with it (true formats)
        self._rewriter = stmt.mask.result(description)

    def _continue_partial(self, data: bytes) -> bytes | None:
        """Bytes of a large masked DataRow/CopyData being collected: None until it is whole,
        then the whole message followed by the rest of ``data``."""
        part = self._mask_partial
        need = self._mask_need - len(part)
        if len(data) < need:
            part += data
            return None
        part += data
        self._mask_partial = None
        return bytes(part)

    def _rewrite_rows(self, t: int, buf: bytes, pos: int, end: int) -> int:
        """Rewrite the complete DataRow (or CopyData) messages from ``pos``; return where it stopped."""
        out: list = []
        if t == 68:
            stop = self._rewriter.data_rows(buf, pos, end, out)
        else:
            stop = pos
            rewriter = self._copy_rewriter
            while end - stop >= 5 and buf[stop] == 100:
                size = unpack_uint32(buf, stop + 1)[0] + 1
                if size > end - stop:
                    break
                data = rewriter.data(buf[stop + 5 : stop + size])
                if data:
                    out.append(encode.message(b"d", data))
                stop += size
        if out:
            chunk = b"".join(out)
            self.to_client.append(chunk)
            if self._capturing:
                self._capture_run(chunk, 0, len(chunk))
        return stop

    def _mask_message(self, t: int, buf: bytes, pos: int, size: int) -> bytes | None:
        """Masking's part in a server message the loop does not handle inline:
        replacement bytes, or None to carry on as usual."""
        if t == B.PORTAL_SUSPENDED or t == B.EMPTY_QUERY_RESPONSE:
            self._rewriter = None
            return None
        if t == B.COPY_OUT_RESPONSE:
            mask = self._head_mask()
            self._copy_rewriter = mask.copy_out(buf[pos : pos + size]) if mask is not None else None
            return None
        if t == B.COPY_DONE and self._copy_rewriter is not None:
            rewriter, self._copy_rewriter = self._copy_rewriter, None
            rest = rewriter.finish()
            if rest:
                data = encode.message(b"d", rest)
                if self._capturing:
                    self._capture_run(data, 0, len(data))
                return data + buf[pos : pos + size]
            return None
        if t == B.ERROR_RESPONSE or t == B.NOTICE_RESPONSE:
            if t == B.ERROR_RESPONSE:
                self._rewriter = self._copy_rewriter = None
            mask = self._head_mask()
            if mask is None:
                return None
            scrubbed = mask.scrub(buf[pos : pos + size])
            if scrubbed is None:
                return None
            if t == B.ERROR_RESPONSE:
                replacement = self._on_server_error(scrubbed, 0, len(scrubbed))
                return scrubbed if replacement is None else replacement
            if self._capturing:
                self._capture_other(t, scrubbed)
            return scrubbed
        return None

    # ------------------------------------------------------------ capture
    # Only called when ``self._capturing`` (the recorder keeps result rows).

    def _head_capture(self):
        pending = self._pending
        if pending:
            stmt = pending[0][STMT]
            if stmt is not None:
                return stmt.capture
        return None

    def _capture_run(self, buf: bytes, start: int, stop: int) -> None:
        """A run of DataRow/CopyData bytes went to the client: the head statement's."""
        pending = self._pending
        stmt = pending[0][STMT] if pending else None
        if stmt is not None and stmt.capture is not None:
            capture = stmt.capture
            if not capture.sets and capture.copy is None:
                # Execute: the description, if any, came with a Describe in this request.
                # (Not for COPY TO STDOUT: its CopyData is counted, not a result set.)
                capture.describe(self._described, len(stmt.tags))
                # One Describe answers for one Execute: a later Execute in the same
                # request without its own Describe must not borrow these columns.
                self._described = None
            capture.data(buf, start, stop)

    def _capture_description(self, description: bytes) -> None:
        pending = self._pending
        stmt = pending[0][STMT] if pending else None
        if stmt is not None and stmt.capture is not None:
            stmt.capture.describe(description, len(stmt.tags))

    def _capture_other(self, t: int, message: bytes) -> None:
        capture = self._head_capture()
        if t == B.NOTICE_RESPONSE:
            if capture is not None:
                capture.notice(message[5:])
            elif self.notice_hook is not None:
                self.notice_hook(message[5:])
        elif capture is not None:
            capture.copy = "out" if t == B.COPY_OUT_RESPONSE else "in"

    def _undo(self, entry: tuple) -> None:
        undo = entry[UNDO]
        if undo is not None:
            table, key, previous = undo
            if previous is _MISSING:
                table.pop(key, None)
            else:
                table[key] = previous

    def _finish_ready(self, entry: tuple) -> None:
        stmt = entry[STMT]
        if stmt is None:
            return
        if entry[KIND] == _POISON_QUERY:
            self._finish(entry, "denied")
        elif stmt.status == "pending":
            self._finish(entry, "ok")
        else:
            self._finish(entry, stmt.status)

    def _finish(self, entry: tuple, status: str) -> None:
        stmt = entry[STMT]
        if stmt is None:
            return
        if self._completed is None:
            stmt.status = status
            return
        stmt.finish(status)
        self._completed(stmt)


def deny_error(deny: Deny | None) -> bytes:
    if deny is None:
        return encode.error_response(SQLState.INSUFFICIENT_PRIVILEGE, "pgwarden: statement denied")
    detail = deny.detail
    if deny.rule and not detail:
        detail = f'Refused by pgwarden rule "{deny.rule}".'
    return encode.error_response(deny.sqlstate, deny.message, detail=detail, hint=deny.hint)
