"""What the recorder keeps of one statement's reply: result rows, notices, COPY volumes.

The relay hands each *run* of consecutive DataRow/CopyData messages to the
statement's capture as one span of the received bytes (``data``), never one
call per row: a 1,000,000-row result costs one SHA-256 update per received
chunk. The capture hashes everything (the digest in the ``result`` record covers
every row sent, kept or not) and keeps the raw wire bytes only up to the byte
cap; decoding into values is left to whoever reads the trail (the bytes are
exactly what the client received, which is the point of the record).

A span may end inside a message (a DataRow split across chunks): the kept bytes
are then cut at a message boundary when the record is built
(:func:`whole_messages`).
"""

from __future__ import annotations

import hashlib

__all__ = ["ResultCapture", "whole_messages"]


class ResultCapture:
    __slots__ = ("max_bytes", "sha", "total", "sets", "kept", "notices", "copy", "copy_in", "copy_in_messages",
                 "copy_out", "copy_out_messages", "_copy_rest", "_copy_rest_row", "formats")

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.sha = None  # hashlib object, created with the first row
        self.total = 0  # bytes of DataRow/CopyData messages sent to the client
        # One [RowDescription bytes or None, bytearray of kept DataRow messages, truncated,
        # index of the command tag that ends the set] per result set.
        self.sets: list[list] = []
        self.kept = 0
        self.notices: list[bytes] | None = None
        self.copy: str | None = None  # "in" | "out" once a Copy*Response was seen
        self.copy_in = 0
        self.copy_in_messages = 0
        self.copy_out = 0  # bytes of CopyData messages sent to the client (COPY TO STDOUT)
        self.copy_out_messages = 0
        self._copy_rest = 0  # bytes of a message that continues into the next span (COPY out only)
        self._copy_rest_row = False  # ... and whether it is a DataRow
        self.formats: tuple[int, ...] | None = None  # the Bind's result formats (extended protocol)

    def describe(self, description: bytes | None, tag_index: int = 0) -> None:
        """A RowDescription (or None when unknown): a new result set starts; ``tag_index``
        is how many command tags the statement had so far (its own tag comes next)."""
        self.sets.append([description, bytearray(), False, tag_index])

    def data(self, buf: bytes, start: int, stop: int) -> None:
        """Bytes ``buf[start:stop]`` of DataRow/CopyData messages were sent to the client.

        Hashing is lazy: while every byte sent is also kept (the common, small
        result) the digest is computed once, over the kept bytes, when the record
        is built (:meth:`hexdigest`); from the first byte that is not kept on, a
        running SHA-256 (seeded with what was kept) takes over.
        """
        n = stop - start
        self.total += n
        sha = self.sha
        room = self.max_bytes - self.kept
        if sha is None and n <= room and self.copy is None:
            current = self.sets[-1] if self.sets else self._new_set()
            current[1] += buf[start:stop] if n < 4096 else memoryview(buf)[start:stop]
            self.kept += n
            return
        view = memoryview(buf)[start:stop]
        if sha is None:
            sha = self.sha = hashlib.sha256()
            for kept in self.sets:
                sha.update(kept[1])
        sha.update(view)
        if self.copy == "out":
            self._copy_out_data(buf, start, stop)
            return
        current = self.sets[-1] if self.sets else self._new_set()
        if room <= 0:
            current[2] = True
            return
        if n > room:
            current[1] += view[:room]
            current[2] = True
            self.kept += room
        else:
            current[1] += view
            self.kept += n

    def _new_set(self) -> list:
        current = [None, bytearray(), False, 0]
        self.sets.append(current)
        return current

    def hexdigest(self) -> str | None:
        """SHA-256 of everything sent (None when nothing was)."""
        if self.sha is not None:
            return self.sha.hexdigest()
        if not self.total:
            return None
        sets = self.sets
        if len(sets) == 1:
            return hashlib.sha256(sets[0][1]).hexdigest()
        return hashlib.sha256(b"".join(kept[1] for kept in sets)).hexdigest()

    def _keep(self, view: memoryview) -> None:
        """Keep DataRow bytes under the byte cap (as :meth:`data` does inline)."""
        sets = self.sets
        if not sets:
            sets.append([None, bytearray(), False, 0])
        current = sets[-1]
        room = self.max_bytes - self.kept
        if room <= 0:
            current[2] = True
        elif len(view) > room:
            current[1] += view[:room]
            current[2] = True
            self.kept += room
        else:
            current[1] += view
            self.kept += len(view)

    def _copy_out_data(self, buf: bytes, pos: int, stop: int) -> None:
        """After a CopyOutResponse: CopyData is counted (docs/audit.md ``copy``), not kept.

        Why: ``results[].data`` holds DataRow messages only (readers decode it as
        rows); CopyData kept there made every COPY TO STDOUT an undecodable result
        set and left ``copy.messages`` unknown. A DataRow in the same span (another
        statement of the same Query) is still kept. The relay hands over runs that
        start at a message boundary (or continue the message the previous run cut).
        """
        view = memoryview(buf)
        rest = self._copy_rest
        if rest:
            take = min(rest, stop - pos)
            if self._copy_rest_row:
                self._keep(view[pos : pos + take])
            else:
                self.copy_out += take
            self._copy_rest = rest - take
            pos += take
        while pos < stop:
            if stop - pos < 5:  # cannot happen (headers are whole); count it rather than misread it
                self.copy_out += stop - pos
                return
            t = buf[pos]
            size = int.from_bytes(buf[pos + 1 : pos + 5], "big") + 1
            piece = min(size, stop - pos)
            if t == 100:  # CopyData
                self.copy_out += piece
                self.copy_out_messages += 1
            else:
                self._keep(view[pos : pos + piece])
            if piece < size:
                self._copy_rest = size - piece
                self._copy_rest_row = t != 100
            pos += piece

    def notice(self, body: bytes) -> None:
        if self.notices is None:
            self.notices = []
        if len(self.notices) < 100:
            self.notices.append(body)

    def copy_in_data(self, size: int) -> None:
        self.copy_in += size
        self.copy_in_messages += 1



def whole_messages(raw: bytes | bytearray, max_messages: int) -> tuple[bytes, int, bool]:
    """The first complete messages of ``raw`` (at most ``max_messages``): (bytes, count, cut).

    ``cut`` is True when anything was left out (a partial message or the count cap).
    """
    pos = 0
    end = len(raw)
    count = 0
    while end - pos >= 5 and count < max_messages:
        size = int.from_bytes(raw[pos + 1 : pos + 5], "big") + 1
        if size < 5 or pos + size > end:
            break
        pos += size
        count += 1
    return bytes(raw[:pos]), count, pos < end
