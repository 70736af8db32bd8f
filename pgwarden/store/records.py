"""The audit record format (version 1) and its hash chain.

A record is one JSON object, stored as the exact UTF-8 bytes that were hashed
(its *body*); nothing re-serialises it, so verification never depends on a
JSON library's choices. Every body starts with the same fields, in this order::

    {"v":1,"seq":42,"at":"2026-11-24T05:33:12.123456Z","type":"statement","session":"5f2a9c0e1b7d", ...}

``seq`` numbers are gap-free from 1 across the whole store (all sessions, all
gateways sharing it). The chain: ``hash(n) = SHA-256(hash(n-1) || body(n))``
with ``hash(0) = GENESIS`` (32 zero bytes). A *checkpoint* signs
``{"seq": n, "hash": hex(hash(n)), ...}`` with the gateway's Ed25519 key (see
``signing.py``), which turns "the chain is consistent" into "the chain is the
one pgwarden wrote".

The record types and their fields are documented in docs/audit.md (``TYPES``
lists them); this module only builds bodies cheaply. The recorder builds the
*tail* of a body (everything after ``"seq":N,``) when the event happens, and
the writer prepends ``{"v":1,"seq":N,`` when it assigns the sequence number in
the group commit, so the hot path never re-encodes a record.
"""

from __future__ import annotations

import hashlib
import json
import time
from json.encoder import encode_basestring as _json_str  # C-accelerated
from typing import Any

__all__ = [
    "FORMAT_VERSION",
    "GENESIS",
    "TYPES",
    "chain_hash",
    "body_for",
    "make_record",
    "fill_session_seqs",
    "json_str",
    "iso_time",
    "parse_body",
    "PendingRecord",
    "build_rows",
]

FORMAT_VERSION = 1
GENESIS = bytes(32)

#: Every record type a v1 trail may contain (docs/audit.md describes each).
TYPES = (
    "connect",  # a session reached the relay: client, TLS, target, application_name, identity
    "auth",  # an authentication outcome, ok or refused (with the exact reason)
    "statement",  # write-ahead: a statement and the policy's decision, before it is forwarded
    "result",  # the outcome of a statement: tags, rows, duration, error, captured rows, digest
    "notice",  # a NoticeResponse not tied to a statement
    "cancel",  # a CancelRequest for the session
    "disconnect",  # the session ended, with the reason and counters
    "approval",  # a just-in-time approval request, a reviewer's decision, its expiry, withdrawal or execution
    "alert",  # an alert raised for a human (a blocked statement, login failures, ...), as sent to the sinks
    "audit",  # the trail itself: writer started/stopped, failures, drops, retention
)

_PREFIX = b'{"v":1,"seq":'


def json_str(value: str) -> str:
    """A JSON string literal (quotes included); non-ASCII kept as UTF-8."""
    return _json_str(value)


def chain_hash(previous: bytes, body: bytes) -> bytes:
    """hash(n) = SHA-256(hash(n-1) || body(n))."""
    h = hashlib.sha256(previous)
    h.update(body)
    return h.digest()


def body_for(seq: int, record_tail: bytes) -> bytes:
    """The full body of a record once its sequence number is known."""
    return _PREFIX + str(seq).encode() + b"," + record_tail


_iso_second = -1
_iso_prefix = ""


def iso_time(t: float | None = None) -> str:
    """UTC ISO 8601 with microseconds (``2026-11-24T05:33:12.123456Z``); cheap when called often."""
    global _iso_second, _iso_prefix
    if t is None:
        t = _now()
    second = int(t)
    if second != _iso_second:
        _iso_prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _iso_second = second
    return "%s.%06dZ" % (_iso_prefix, (t - second) * 1_000_000)  # %d truncates: never 1000000


_now = time.time


def make_record(record_type: str, session: str | None, fields: dict[str, Any], at: float | None = None) -> PendingRecord:
    """Build a record from a dict (the general, slower way; the hottest records use templates).

    ``fields`` must not contain the common keys; their order is kept.
    """
    stamp = iso_time(at)
    head = f'"at":"{stamp}","type":"{record_type}","session":{json_str(session) if session else "null"}'
    if fields:
        rest = json.dumps(fields, ensure_ascii=False, separators=(",", ":"), default=_default)
        data = (head + "," + rest[1:]).encode("utf-8", "surrogatepass")
    else:
        data = (head + "}").encode()
    return PendingRecord(session, record_type, stamp, data)


def _default(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "\\x" + bytes(value).hex()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)


def parse_body(body: bytes) -> dict[str, Any]:
    """Decode a body for reading (verification hashes the bytes, never this)."""
    return json.loads(body)


class PendingRecord:
    """A record waiting for the group commit.

    ``ticket`` is its position in the writer's queue (assigned on submit); a
    session's output to PostgreSQL waits until the writer reports every ticket
    up to its own as durable. ``seq`` is set by the store when it is written.
    """

    __slots__ = ("session", "type", "at", "tail", "ticket", "seq")

    def __init__(self, session: str | None, record_type: str, at: str, record_tail: bytes) -> None:
        self.session = session
        self.type = record_type
        self.at = at
        self.tail = record_tail
        self.ticket = 0
        self.seq = 0


def build_rows(
    seq: int, previous: bytes, pending: "list[PendingRecord] | tuple[PendingRecord, ...]"
) -> tuple[list[tuple], int, bytes]:
    """Number and chain ``pending`` after the head (seq, hash): the store calls this inside
    its write transaction, after reading the head under the write lock, so gateways sharing
    one store interleave without a fork in the chain.

    Returns the rows ``(seq, at, session, type, hash, body)`` and the new head.
    """
    rows = []
    sha = hashlib.sha256
    for rec in pending:
        seq += 1
        body = _PREFIX + str(seq).encode() + b"," + rec.tail
        h = sha(previous)
        h.update(body)
        previous = h.digest()
        rec.seq = seq
        rows.append((seq, rec.at, rec.session, rec.type, previous, body))
    return rows, seq, previous


def fill_session_seqs(pending, started, ended) -> None:
    """Set first_seq/last_seq of session summaries from their connect/disconnect records."""
    if not started and not ended:
        return
    firsts = {s.id: s for s in started}
    lasts = {s.id: s for s in ended}
    for rec in pending:
        if rec.type == "connect" and rec.session in firsts:
            firsts[rec.session].first_seq = rec.seq
        elif rec.type == "disconnect" and rec.session in lasts:
            lasts[rec.session].last_seq = rec.seq
