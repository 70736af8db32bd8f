"""How the SQLite store packs one group commit into one row (a *block*).

Why blocks: inserting a row per record costs SQLite and the ``sqlite3``
module about 2.5 µs each, two records per statement, on the event loop that
also relays the traffic; one row per group commit costs about the same as one
record. The chain is per record either way, and readers see records
(``StoredRecord``), so verification is unaffected by the packing.

A block's ``data`` is the concatenation, for each record in seq order, of::

    seq (8 bytes, big-endian) | hash (32 bytes) | body length (4 bytes) | body

The seq is stored explicitly (not implied by the position) so that a record
removed from the middle of a block shows up as a gap, not as a renumbering.
"""

from __future__ import annotations

import hashlib
import json
import struct

from .base import StoredRecord

__all__ = ["encode_block", "decode_block", "prefix_fields", "chain_block"]

_ENTRY = struct.Struct("!Q32sI")


def encode_block(rows: list[tuple]) -> bytes:
    """``rows`` as built by ``records.build_rows``: (seq, at, session, type, hash, body)."""
    pack = _ENTRY.pack
    parts = []
    for seq, _at, _session, _type, digest, body in rows:
        parts.append(pack(seq, digest, len(body)))
        parts.append(body)
    return b"".join(parts)


def chain_block(seq: int, previous: bytes, pending) -> tuple[bytes, int, bytes]:
    """Number, chain and pack ``pending`` records in one pass: (block bytes, last seq, last hash).

    The same chain as ``records.build_rows`` (each ``PendingRecord.seq`` is set),
    without building a row tuple per record: this runs once per group commit on
    the event loop.
    """
    pack = _ENTRY.pack
    sha = hashlib.sha256
    prefix = b'{"v":1,"seq":'
    parts = []
    for rec in pending:
        seq += 1
        body = b"%s%d,%s" % (prefix, seq, rec.tail)
        previous = sha(previous + body).digest()
        rec.seq = seq
        parts.append(pack(seq, previous, len(body)))
        parts.append(body)
    return b"".join(parts), seq, previous


def decode_block(data: bytes) -> list[StoredRecord]:
    """The records of a block; a damaged tail is returned as far as it can be read."""
    out = []
    pos = 0
    end = len(data)
    size = _ENTRY.size
    while end - pos >= size:
        seq, digest, length = _ENTRY.unpack_from(data, pos)
        if seq == 0:
            break  # the journal's end mark (real sequence numbers start at 1)
        pos += size
        if pos + length > end:
            break  # a half-written entry (a journal read during a write, or a crash mid-write)
        body = bytes(data[pos : pos + length])
        pos += length
        at, record_type, session = prefix_fields(body)
        out.append(StoredRecord(seq, at, session, record_type, digest, body))
    return out


def prefix_fields(body: bytes) -> tuple[str, str, str | None]:
    """(at, type, session) from a body's fixed prefix, without parsing all of it."""
    try:
        i = body.index(b'"at":"') + 6
        j = body.index(b'"', i)
        at = body[i:j].decode()
        i = body.index(b'"type":"', j) + 8
        k = body.index(b'"', i)
        record_type = body[i:k].decode()
        i = body.index(b'"session":', k) + 10
        if body.startswith(b"null", i):
            session = None
        else:
            m = body.index(b'"', i + 1)
            session = body[i + 1 : m].decode()
        return at, record_type, session
    except (ValueError, UnicodeDecodeError):
        try:
            parsed = json.loads(body)
            return str(parsed.get("at", "")), str(parsed.get("type", "?")), parsed.get("session")
        except (ValueError, AttributeError):
            return "", "?", None
