# cython: language_level=3, boundscheck=False, wraparound=False, binding=True
"""Optional compiled twins of the relay's two hottest loops.

- :func:`client_data` mirrors ``ClientFastPath.client_data`` (fastpath.py);
- :func:`server_data` mirrors ``ReplyTracker.server_data`` (replies.py).

The pure-Python methods are the specification and the fallback: this module is
only an accelerator. ``relay.py`` installs these two functions on ``Relay`` at
import time when the extension is built and ``PGWARDEN_PURE_PYTHON`` is not
set. Behaviour must stay identical (tests/test_speedups.py feeds both the same
randomized streams): every branch below names the Python code it mirrors, and
any change to those loops must be made here too (or this file deleted).

What makes this faster than the Python loop: frame headers are read from the
bytes object's buffer with C arithmetic (no ``struct.unpack_from`` call and
result tuple per message), offsets and lengths are C integers, deque and list
operations go straight to their C implementations, and the message-type
dispatch is a C switch. Everything else (Statement construction, the policy
call, the general path, the ``_finish`` hooks) calls the very same Python code.

Both functions check, once per call, that the state they use has the types
``Relay.__init__`` gives it (``_pending`` a deque, the framer's limit an int);
otherwise they hand the call to the Python implementation unchanged.
"""

from collections import deque

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.long cimport PyLong_AsLongLongAndOverflow
from cpython.unicode cimport PyUnicode_DecodeUTF8, PyUnicode_FromOrdinal
from libc.string cimport memchr, memcmp

from ..wire.frames import ProtocolViolation, invalid_length
from ..wire.messages import decode_cstring, decode_parse, decode_query
from . import replies as _replies
from .fastpath import ClientFastPath, check_name
from .replies import _DESCRIBE_ENTRY, _MISSING, _SYNC_ENTRY, ReplyTracker, describe_entry
from .statement import Kind, Protocol, Statement
from .verdict import ALLOW

__all__ = ["client_data", "server_data"]

# Pending reply kinds, as C constants (replies.py: _PARSE, _BIND, ...); checked below.
cdef enum:
    K_PARSE = 0
    K_BIND = 1
    K_DESCRIBE = 2
    K_EXECUTE = 3
    K_CLOSE = 4
    K_SYNC = 5
    K_QUERY = 6
    K_POISON_PARSE = 7
    K_POISON_QUERY = 8

if (
    _replies._PARSE, _replies._BIND, _replies._DESCRIBE, _replies._EXECUTE, _replies._CLOSE,
    _replies._SYNC, _replies._QUERY, _replies._POISON_PARSE, _replies._POISON_QUERY,
) != (K_PARSE, K_BIND, K_DESCRIBE, K_EXECUTE, K_CLOSE, K_SYNC, K_QUERY, K_POISON_PARSE, K_POISON_QUERY):
    # The import fails and relay.py falls back to the pure-Python loops.
    raise ImportError("pgwarden.session._speedups is out of step with replies.py (pending kinds)")

# The build (setup.py) records a digest of the Python files this module mirrors.
# An editable install keeps the compiled module across edits of those files,
# so a stale build would silently run the old loops: refuse to load instead
# (relay.py then uses the Python loops until `pip install -e .` rebuilds).
cdef extern from *:
    """
    #ifndef PGWARDEN_MIRRORED_DIGEST
    #define PGWARDEN_MIRRORED_DIGEST ""
    #endif
    """
    const char* PGWARDEN_MIRRORED_DIGEST


def _check_mirrored_digest():
    import hashlib
    from . import fastpath

    try:
        with open(fastpath.__file__, "rb") as f1, open(_replies.__file__, "rb") as f2:
            digest = hashlib.sha256(f1.read() + f2.read()).hexdigest()
    except OSError as exc:
        raise ImportError(f"pgwarden.session._speedups: cannot read the Python loops it mirrors ({exc})") from None
    if digest != (<bytes>PGWARDEN_MIRRORED_DIGEST).decode("ascii"):
        raise ImportError(
            "pgwarden.session._speedups was built from another version of fastpath.py/replies.py: "
            "rebuild it (pip install -e .) after checking _speedups.pyx still mirrors them"
        )


_check_mirrored_digest()

_QUERY_KIND, _PARSE_KIND, _EXECUTE_KIND = Kind.QUERY, Kind.PARSE, Kind.EXECUTE
_SIMPLE, _EXTENDED = Protocol.SIMPLE, Protocol.EXTENDED

# The reference implementations (used when the state has unexpected types).
_client_data_py = ClientFastPath.client_data
_server_data_py = ReplyTracker.server_data

# Unbound deque methods: calling these skips a method lookup per operation.
# Only used once ``type(pending) is deque`` has been checked.
_deque = deque
_deque_append = deque.append
_deque_popleft = deque.popleft


cdef inline Py_ssize_t _u32(const unsigned char* p) noexcept nogil:
    """A big-endian uint32 (frames.unpack_uint32(buf, pos)[0])."""
    return (<Py_ssize_t>p[0] << 24) | (<Py_ssize_t>p[1] << 16) | (<Py_ssize_t>p[2] << 8) | <Py_ssize_t>p[3]


# ---------------------------------------------------------------- server -> client


def server_data(self, data):
    """Mirrors ``ReplyTracker.server_data`` (replies.py) line by line."""
    cdef bytes buf
    cdef const unsigned char* p
    cdef Py_ssize_t pos = 0, end, span = 0, size, skip, n, run = -1
    cdef unsigned char t
    cdef long kind
    if type(data) is not bytes:
        data = bytes(data)
    pending = self._pending
    if type(pending) is not _deque or self._masking:
        # Sessions with masked results take the Python loop (replies.py), which rewrites them.
        return _server_data_py(self, data)
    out = self.to_client
    skip = self._server_skip
    if skip:
        n = PyBytes_GET_SIZE(data)
        if skip >= n:
            self._server_skip = skip - n
            out.append(data)
            if self._capturing:
                self._capture_run(data, 0, n)
            return
        self._server_skip = 0
        pos = skip
        if self._capturing:
            self._capture_run(data, 0, skip)
    tail = self._server_tail
    if tail:
        buf = tail + data[pos:]
        self._server_tail = b""
        pos = 0
    else:
        buf = data
    end = PyBytes_GET_SIZE(buf)
    p = <const unsigned char*>PyBytes_AS_STRING(buf)
    while end - pos >= 5:
        t = p[pos]
        size = _u32(p + pos + 1) + 1
        if size < 5:
            raise ProtocolViolation(f"upstream sent a message with invalid length {size - 1}")
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
            if pending:
                head = pending[0]
                stmt = head[1]
                if stmt is not None:
                    # buf[pos + 5 : pos + size - 1].decode("utf-8", "replace")
                    n = size - 6 if size > 6 else 0
                    stmt.tags.append(PyUnicode_DecodeUTF8(<const char*>p + pos + 5, n, "replace"))
                    if head[0] == K_EXECUTE:
                        _deque_popleft(pending)
                        if self._completed is None:
                            stmt.status = "ok"
                        else:
                            self._finish(head, "ok")
            pos += size
            continue
        if t == 90:  # ReadyForQuery
            if pos + 5 >= end:
                raise IndexError("index out of range")  # what buf[pos + 5] raises
            status = PyUnicode_FromOrdinal(p[pos + 5])  # chr(buf[pos + 5])
            self.session.txn_status = status
            self._described = None
            while pending:
                entry = _deque_popleft(pending)
                kind = entry[0]
                if kind == K_SYNC or kind == K_QUERY or kind == K_POISON_QUERY:
                    stmt = entry[1]
                    if stmt is not None:
                        if kind == K_QUERY and self._completed is None:
                            if stmt.status == "pending":
                                stmt.status = "ok"
                        else:
                            self._finish_ready(entry)
                    break
                self._finish(entry, "skipped")  # out of step: never let the queue wedge
            if p[pos + 5] == 73 and not pending:  # status == "I"
                portals = self._portals
                if portals:
                    portals.clear()  # portals die with the transaction
            pos += size
            continue
        if t == 50 or t == 49 or t == 51 or t == 110:  # Bind/Parse/CloseComplete, NoData
            if pending:
                head = _deque_popleft(pending)
                if head[0] == K_PARSE:
                    self._finish(head, "ok")
            pos += size
            continue
        if t == 84:  # RowDescription
            if pending and pending[0][0] == K_DESCRIBE:
                _deque_popleft(pending)
                if self._capturing:
                    self._described = buf[pos : pos + size]
            elif self._capturing:
                self._capture_description(buf[pos : pos + size])
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


# ---------------------------------------------------------------- client -> server


cdef int _check_headers(const unsigned char* p, Py_ssize_t pos, Py_ssize_t end, long long climit, object limit) except -1:
    """Mirrors fastpath._check_headers (``climit`` is ``limit`` clamped to a C integer)."""
    cdef Py_ssize_t length
    while end - pos >= 5:
        length = _u32(p + pos + 1)
        if length < 4 or length > climit:
            raise invalid_length(p[pos], length, limit)
        pos += 1 + length
    return 0


cdef object _query_text(bytes buf, const unsigned char* p, Py_ssize_t start, Py_ssize_t stop):
    """Mirrors fastpath._query_text: the common case (one NUL, at the end) is one
    decode; anything else takes decode_query's checks, in its order.

    A NUL inside the decoded text is a 0 byte in the UTF-8 input, so the NUL
    scan is done on the bytes, before decoding."""
    cdef Py_ssize_t n = stop - 1 - (start + 5)
    if n >= 0 and p[stop - 1] == 0 and memchr(p + start + 5, 0, <size_t>n) == NULL:
        try:
            return PyUnicode_DecodeUTF8(<const char*>p + start + 5, n, NULL)
        except UnicodeDecodeError:
            pass
    return decode_query(buf[start + 5 : stop])


def client_data(self, data):
    """Mirrors ``ClientFastPath.client_data`` (fastpath.py) branch by branch."""
    cdef bytes buf, key
    cdef const unsigned char* p
    cdef Py_ssize_t pos = 0, end, stop, length, klen
    cdef unsigned char t
    cdef long long climit
    cdef int overflow
    cdef bint checked = False
    framer = self._client
    if framer._chunks or self._queue or self._held is not None or self._discarding or self.closed \
            or self._replacing or self._rebinding:
        self._client_data_general(data)
        return
    limit = framer.max_size
    pending = self._pending
    if type(limit) is not int or type(pending) is not _deque:
        return _client_data_py(self, data)
    # ``length > limit`` for a uint32 length, with limit clamped to a C integer.
    climit = PyLong_AsLongLongAndOverflow(limit, &overflow)
    if overflow > 0:
        climit = 0x7FFFFFFFFFFFFFFF
    elif overflow < 0:
        climit = -1
    buf = data if type(data) is bytes else bytes(data)
    end = PyBytes_GET_SIZE(buf)
    p = <const unsigned char*>PyBytes_AS_STRING(buf)
    # Like FrameBuffer.feed, refuse a chunk with a malformed header before any
    # statement in it reaches the policy (see fastpath.py: ``checked``).
    try:
        while end - pos >= 5:
            length = _u32(p + pos + 1)
            if length < 4 or length > climit:
                raise invalid_length(p[pos], length, limit)
            stop = pos + 1 + length
            if stop > end:
                break
            t = p[pos]
            if t == 66:  # Bind (fastpath: t == 66; see relay._on_bind)
                if not self._request_open:
                    self._request += 1
                    self._request_open = True
                # buf.startswith(self._bind_key, pos + 5, stop)
                key_obj = self._bind_key
                if type(key_obj) is bytes:
                    key = <bytes>key_obj
                    klen = PyBytes_GET_SIZE(key)
                    same = stop - (pos + 5) >= klen and memcmp(p + pos + 5, PyBytes_AS_STRING(key), <size_t>klen) == 0
                else:
                    same = buf.startswith(key_obj, pos + 5, stop)
                if same:
                    portal, name = self._bind_names
                else:
                    portal, name = self._bind_names = self._bind_names_at(buf, pos, stop)
                portals = self._portals
                if portal and portal in portals:
                    # Binding a named portal again: the general path tracks it (see relay._on_bind).
                    self._fast_exit(buf, pos, stop)
                    return
                prepared = self._prepared.get(name)
                _deque_append(pending, (K_BIND, None, None, (portals, portal, portals.get(portal, _MISSING))))
                portals[portal] = (
                    (prepared[0], name, prepared[1], (buf, pos + 5, stop))
                    if prepared is not None
                    else (None, name, (), (buf, pos + 5, stop))
                )
            elif t == 69:  # Execute (fastpath: t == 69; see relay._on_execute)
                if pos + 5 >= stop:
                    raise ProtocolViolation("message is shorter than its contents")
                portal_name = "" if p[pos + 5] == 0 else check_name(decode_cstring(buf, pos + 5, stop)[0])
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
                    )
                if not checked and end - stop >= 5:
                    _check_headers(p, stop, end, climit, limit)
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
                _deque_append(pending, (K_EXECUTE, stmt, None, None))
            elif t == 83:  # Sync (fastpath: t == 83)
                if not self._request_open:
                    self._request += 1
                self._request_open = False
                _deque_append(pending, _SYNC_ENTRY)
            elif t == 68:  # Describe (fastpath: t == 68)
                if not self._request_open:
                    self._request += 1
                    self._request_open = True
                if stop - pos < 7 or p[pos + 5] != 83:
                    _deque_append(pending, _DESCRIBE_ENTRY)
                else:
                    _deque_append(pending, describe_entry(buf, pos, stop))
            elif t == 81:  # Query (fastpath: t == 81; see relay._on_query)
                self._request_open = False
                self._request += 1
                stmt = Statement(_QUERY_KIND, _SIMPLE, _query_text(buf, p, pos, stop), self.session, self._request)
                if not checked and end - stop >= 5:
                    _check_headers(p, stop, end, climit, limit)
                    checked = True
                try:
                    verdict = self._evaluate(stmt, 0)
                except Exception as exc:
                    verdict = self._stage_failed(stmt, exc)
                if verdict is not ALLOW or self._replacing:
                    # (an allowed PREPARE/DEALLOCATE makes names uncertain: see fastpath.py)
                    self._fast_exit(buf, pos, stop, stmt, verdict)
                    return
                stmt.verdict = verdict
                if stmt.mask is not None:
                    self._masking = True
                if self._timing:
                    stmt.mark_started()
                _deque_append(pending, (K_QUERY, stmt, None, None))
            elif t == 80:  # Parse (fastpath: t == 80; see relay._on_parse and _apply)
                parse = decode_parse(buf[pos + 5 : stop])
                check_name(parse.name)
                if not self._request_open:
                    self._request += 1
                    self._request_open = True
                stmt = Statement(
                    _PARSE_KIND, _EXTENDED, parse.query, self.session, self._request, parse.name, None, parse.param_types
                )
                if not checked and end - stop >= 5:
                    _check_headers(p, stop, end, climit, limit)
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
                    # Re-using a name: the general path tracks the replacement (see relay._apply).
                    self._fast_exit(buf, pos, stop, stmt, verdict)
                    return
                stmt.verdict = verdict
                if self._timing:
                    stmt.mark_started()
                _deque_append(pending, (K_PARSE, stmt, None, (prepared, name, prepared.get(name, _MISSING))))
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
            _check_headers(p, pos, end, climit, limit)
        raise


# ---------------------------------------------------------------- analysis key

cdef inline bint _word_char(unsigned char c) noexcept nogil:
    # What may precede a digit inside an identifier or a $n parameter.
    return (c >= 48 and c <= 57) or (c >= 65 and c <= 90) or (c >= 97 and c <= 122) or c == 95 or c == 36 or c >= 128


def mask_numbers(str text):
    """Compiled twin of ``policy.analysis._NUMBER_RUN.sub("0", text)`` for ASCII text.

    Returns None for text that is not ASCII (the caller then uses the regular
    expression). Runs of 1-9 ASCII digits not preceded by a word character,
    ``$`` or a non-ASCII character become ``0``; longer runs, and runs inside
    words, are kept. tests/test_speedups.py checks it against the regex.
    """
    if not text.isascii():
        return None
    cdef bytes raw = text.encode("ascii")
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(raw)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(raw)
    cdef bytearray out = bytearray(n)
    cdef unsigned char* o = <unsigned char*>(<char*>out)
    cdef Py_ssize_t i = 0, j, k = 0
    cdef unsigned char c, prev = 0
    while i < n:
        c = p[i]
        if c >= 48 and c <= 57 and not _word_char(prev):
            j = i
            while j < n and p[j] >= 48 and p[j] <= 57:
                j += 1
            if j - i <= 9:
                o[k] = 48
                k += 1
            else:
                while i < j:
                    o[k] = p[i]
                    k += 1
                    i += 1
            prev = p[j - 1]
            i = j
            continue
        o[k] = c
        k += 1
        prev = c
        i += 1
    return (<char*>o)[:k].decode("ascii")
