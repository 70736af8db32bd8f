"""The relay's fast path for client input: the common requests, handled inline.

Why it exists: every client request passes through here, and in CPython the
cost of the general path (split the chunk into a list of frame tuples, then a
method call, a dispatch chain and an entry object per message) was most of
pgwarden's own CPU per transaction. This loop does the same work for the
common case without those: when nothing is buffered, queued, held or being
discarded, it walks the chunk's headers once and handles Query, Parse, Bind,
Describe, Execute and Sync inline; when every message goes through unchanged
(all allowed, none rewritten), the chunk is forwarded as the very object
received.

At the first message it does not handle (any other type, or a verdict other
than ALLOW) it hands that message and the rest of the chunk to the general
path in ``relay.py`` (``_client_message`` and friends), which is the
specification: each inline branch names the handler it must stay in step with.
The relay tests exercise both, as they feed every exchange whole and split at
every byte (a split chunk takes the general path).

:class:`ClientFastPath` is a mixin of :class:`~pgwarden.session.relay.Relay`,
which owns the state it uses.
"""

from __future__ import annotations

from ..wire.frames import ProtocolViolation, invalid_length, unpack_uint32
from ..wire.messages import decode_cstring, decode_parse, decode_query
from .replies import _BIND, _DESCRIBE_ENTRY, _EXECUTE, _MISSING, _PARSE, _QUERY, _SYNC_ENTRY, describe_entry
from .statement import Kind, Protocol, Statement
from .verdict import ALLOW

__all__ = ["ClientFastPath"]

_QUERY_KIND, _PARSE_KIND, _EXECUTE_KIND = Kind.QUERY, Kind.PARSE, Kind.EXECUTE
_SIMPLE, _EXTENDED = Protocol.SIMPLE, Protocol.EXTENDED


class ClientFastPath:
    """Mixin: :meth:`client_data`; see the module docstring."""

    def client_data(self, data: bytes) -> None:
        """Bytes from the client. Raises ProtocolViolation for a malformed stream.

        Common requests are handled inline (see the module docstring); anything
        else goes to the general path from the first message the loop does not handle.
        """
        framer = self._client
        if framer._chunks or self._queue or self._held is not None or self._discarding or self.closed \
                or self._replacing or self._rebinding:
            self._client_data_general(data)
            return
        buf = data if data.__class__ is bytes else bytes(data)
        end = len(buf)
        pos = 0
        limit = framer.max_size
        unpack = unpack_uint32
        pending = self._pending
        # Like FrameBuffer.feed, refuse a chunk with a malformed header before
        # any statement in it reaches the policy: headers are checked as the
        # loop goes, and all the remaining ones before the first statement that
        # is not the chunk's last message is evaluated (``checked``).
        checked = False
        try:
            while end - pos >= 5:
                length = unpack(buf, pos + 1)[0]
                if length < 4 or length > limit:
                    raise invalid_length(buf[pos], length, limit)
                stop = pos + 1 + length
                if stop > end:
                    break
                t = buf[pos]
                if t == 66:  # Bind (see _on_bind)
                    if not self._request_open:
                        self._request += 1
                        self._request_open = True
                    # Clients bind the same statement to the same portal again and
                    # again: one prefix comparison replaces decoding both names.
                    if buf.startswith(self._bind_key, pos + 5, stop):
                        portal, name = self._bind_names
                    else:
                        portal, name = self._bind_names = self._bind_names_at(buf, pos, stop)
                    portals = self._portals
                    if portal and portal in portals:
                        # Binding a named portal again: the general path tracks it (see _on_bind).
                        self._fast_exit(buf, pos, stop)
                        return
                    prepared = self._prepared.get(name)
                    pending.append((_BIND, None, None, (portals, portal, portals.get(portal, _MISSING))))
                    portals[portal] = (
                        (prepared[0], name, prepared[1], (buf, pos + 5, stop))
                        if prepared is not None
                        else (None, name, (), (buf, pos + 5, stop))
                    )
                elif t == 69:  # Execute (see _on_execute)
                    p = pos + 5
                    if p >= stop:
                        raise ProtocolViolation("message is shorter than its contents")
                    portal_name = "" if buf[p] == 0 else check_name(decode_cstring(buf, p, stop)[0])
                    portal = self._portals.get(portal_name)
                    if not self._request_open:
                        self._request += 1
                        self._request_open = True
                    if portal is None:
                        stmt = Statement(_EXECUTE_KIND, _EXTENDED, None, self.session, self._request, None, portal_name)
                    else:
                        stmt = Statement(
                            _EXECUTE_KIND, _EXTENDED, portal[0], self.session, self._request,
                            portal[1], portal_name, portal[2], portal[3],
                        )  # fmt: skip
                    if not checked and end - stop >= 5:
                        _check_headers(buf, stop, end, limit)
                        checked = True
                    try:
                        verdict = self._evaluate(stmt, 0)
                    except Exception as exc:  # a stage's bug must fail closed, not open
                        verdict = self._stage_failed(stmt, exc)
                    if verdict is not ALLOW or stmt.mask is not None or self._replacing:
                        # A masked Execute needs a Describe of its portal first (see _apply);
                        # one that prepares or deallocates makes names uncertain (_on_execute).
                        self._fast_exit(buf, pos, stop, stmt, verdict)
                        return
                    stmt.verdict = verdict
                    if self._timing:
                        stmt.mark_started()
                    pending.append((_EXECUTE, stmt, None, None))
                elif t == 83:  # Sync
                    if not self._request_open:
                        self._request += 1
                    self._request_open = False
                    pending.append(_SYNC_ENTRY)
                elif t == 68:  # Describe (see _client_message)
                    if not self._request_open:
                        self._request += 1
                        self._request_open = True
                    pending.append(
                        _DESCRIBE_ENTRY if stop - pos < 7 or buf[pos + 5] != 83 else describe_entry(buf, pos, stop)
                    )
                elif t == 81:  # Query (see _on_query)
                    self._request_open = False
                    self._request += 1
                    stmt = Statement(_QUERY_KIND, _SIMPLE, _query_text(buf, pos, stop), self.session, self._request)
                    if not checked and end - stop >= 5:
                        _check_headers(buf, stop, end, limit)
                        checked = True
                    try:
                        verdict = self._evaluate(stmt, 0)
                    except Exception as exc:
                        verdict = self._stage_failed(stmt, exc)
                    if verdict is not ALLOW or self._replacing:
                        # (An allowed PREPARE/DEALLOCATE makes names uncertain: the rest of
                        # the chunk takes the general path, which checks Executes.)
                        self._fast_exit(buf, pos, stop, stmt, verdict)
                        return
                    stmt.verdict = verdict
                    if stmt.mask is not None:
                        self._masking = True
                    if self._timing:
                        stmt.mark_started()
                    pending.append((_QUERY, stmt, None, None))
                elif t == 80:  # Parse (see _on_parse and _apply)
                    parse = decode_parse(buf[pos + 5 : stop])
                    check_name(parse.name)
                    if not self._request_open:
                        self._request += 1
                        self._request_open = True
                    stmt = Statement(
                        _PARSE_KIND, _EXTENDED, parse.query, self.session, self._request, parse.name, None, parse.param_types
                    )
                    if not checked and end - stop >= 5:
                        _check_headers(buf, stop, end, limit)
                        checked = True
                    try:
                        verdict = self._evaluate(stmt, 0)
                    except Exception as exc:
                        verdict = self._stage_failed(stmt, exc)
                    if verdict is not ALLOW:
                        self._fast_exit(buf, pos, stop, stmt, verdict)
                        return
                    name = stmt.statement_name or ""
                    prepared = self._prepared
                    if name and name in prepared:
                        # Re-using a name: the general path tracks the replacement (see _apply).
                        self._fast_exit(buf, pos, stop, stmt, verdict)
                        return
                    stmt.verdict = verdict
                    if self._timing:
                        stmt.mark_started()
                    pending.append((_PARSE, stmt, None, (prepared, name, prepared.get(name, _MISSING))))
                    prepared[name] = (stmt.text or "", stmt.param_types)
                else:
                    self._fast_exit(buf, pos, stop)
                    return
                pos = stop
            if pos:
                self.to_server.append(buf if pos == end else buf[:pos])
            if pos < end:
                framer.feed(buf, pos)  # keep the unfinished message
        except ProtocolViolation:
            if not checked:
                # FrameBuffer.feed would have refused a malformed header later in
                # the chunk before reading any message: report that one first.
                _check_headers(buf, pos, end, limit)
            raise

    def _bind_names_at(self, buf: bytes, pos: int, stop: int) -> tuple[str, str]:
        """The portal and statement names of the Bind at ``pos``; remembers their bytes."""
        portal, p = _name_at(buf, pos + 5, stop)
        name, p = _name_at(buf, p, stop)
        self._bind_key = buf[pos + 5 : p]
        return portal, name

    def _fast_exit(self, buf: bytes, pos: int, stop: int, stmt: Statement | None = None, verdict=None) -> None:
        """Leave the fast path at the message ``buf[pos:stop]``: what came before it
        went through unchanged; this message (already evaluated when ``stmt`` is
        given) and the rest of the chunk take the general path."""
        if pos:
            self._span_buf, self._span_start, self._span_stop = buf, 0, pos
        if stmt is None:
            self._client_message(buf[pos], buf, pos, stop)
        else:
            self._decided(stmt, (buf, pos, stop), verdict, 0)
        _, frames = self._client.feed(buf, stop)
        self._client_frames(buf, frames)


def _check_headers(buf: bytes, pos: int, end: int, limit: int) -> None:
    """Raise ProtocolViolation if a frame header in ``buf[pos:end]`` announces an impossible length."""
    while end - pos >= 5:
        length = unpack_uint32(buf, pos + 1)[0]
        if length < 4 or length > limit:
            raise invalid_length(buf[pos], length, limit)
        pos += 1 + length


def _query_text(buf: bytes, start: int, stop: int) -> str:
    """The text of the Query message ``buf[start:stop]``: decode_query without the body copy.

    The common case (one NUL, at the end) costs a decode and a scan of the
    decoded text; anything else takes decode_query's checks, in its order.
    """
    try:
        text = buf[start + 5 : stop - 1].decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and buf[stop - 1] == 0 and "\x00" not in text:
        return text
    return decode_query(buf[start + 5 : stop])


#: PostgreSQL keeps only NAMEDATALEN - 1 bytes of a statement or portal name, so two longer
#: names that share those bytes are one name to it and two to a dict keyed by the full name.
MAX_NAME_BYTES = 63


def check_name(name: str) -> str:
    """``name`` if PostgreSQL keeps all of it; a longer one is refused (it would alias another)."""
    if len(name) > 15 and len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        raise ProtocolViolation(f"statement or portal name longer than {MAX_NAME_BYTES} bytes")
    return name


def _name_at(buf: bytes, pos: int, stop: int) -> tuple[str, int]:
    """A statement or portal name: like decode_cstring, with the common empty name free."""
    if pos >= stop:
        raise ProtocolViolation("message is shorter than its contents")
    if buf[pos] == 0:
        return "", pos + 1
    name, end = decode_cstring(buf, pos, stop)
    return check_name(name), end

