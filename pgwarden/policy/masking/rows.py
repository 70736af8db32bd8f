"""DataRow rewriting: replace the values of some columns, byte for byte.

Why it looks like this
----------------------
This is the hot path of inline masking: every row of a masked result passes
through :meth:`RowMasker.data_rows`, so the gateway's throughput on masked
results is set by this loop (target: 250,000 rows/s through the whole relay
for 8-column rows with 2 masked columns; ``bench/masking_rows.py`` measures
the loop alone). Hence:

- The loop works on offsets into the buffer the relay received; it never
  decodes a value and slices only the values it hands to a masker.
- Unmasked columns are only *walked* (one ``unpack_from`` each, to find where
  the next column starts); the unmasked bytes between two masked columns are
  copied as a single slice, and each new message is built by one
  ``b"".join``.
- The row loop is inlined in :meth:`RowMasker.data_rows` (a Python call per
  row is a visible share of the budget); :meth:`RowMasker.data_row` reuses it
  on a single message.
- A row in which no masker changed anything (content detectors return the
  very object they were given) is copied as it arrived.

Malformed rows raise :class:`ValueError`: a row we cannot parse cannot be
masked, and the caller refuses the whole result rather than forward it.

A *masker* is ``Callable[[bytes], bytes | None]``: it receives one non-NULL
value exactly as it is on the wire (text or binary format, in the client
encoding) and returns the value to send instead (``None``: SQL NULL). Returning
the same object means "unchanged"; only ``out is not value`` counts as masked.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence

__all__ = ["Masker", "RowMasker", "NULL_LENGTH", "length_word"]

#: One column value on the wire -> its replacement (None: SQL NULL).
Masker = Callable[[bytes], "bytes | None"]

_I32 = struct.Struct("!i")
_HDR = struct.Struct("!ci")
_LEN_COUNT = struct.Struct("!ih")  # a DataRow's length word and column count, read at once

#: The length word of a NULL value.
NULL_LENGTH = b"\xff\xff\xff\xff"

# Length words of short values, prebuilt: indexing a tuple is several times
# cheaper than ``Struct.pack`` and masked values are almost always short.
_SHORT_WORDS = tuple(_I32.pack(n) for n in range(256))


def length_word(n: int) -> bytes:
    """The int32 length prefix of a value of ``n`` bytes (shared with COPY binary)."""
    return _SHORT_WORDS[n] if n < 256 else _I32.pack(n)


def plan_steps(columns: Sequence[tuple[int, Masker]], ncolumns: int) -> tuple[tuple, range]:
    """Validate ``columns`` and turn them into a walk plan.

    Returns ``(steps, tail)``: ``steps`` is one ``(gap, masker, entry)`` per
    masked column in column order, where ``gap`` is a ``range`` as long as the
    run of unmasked columns to skip before it and ``entry`` is its position in
    ``columns`` (the index into ``counts``); ``tail`` is the range of unmasked
    columns after the last one. Precomputed ranges let the row loop skip
    columns without testing each for a masker (``for _ in range`` is also a
    third cheaper than a ``while`` countdown).
    """
    if ncolumns < 0:
        raise ValueError(f"invalid column count {ncolumns}")
    order = sorted(((index, entry, masker) for entry, (index, masker) in enumerate(columns)), key=lambda t: t[:2])
    steps = []
    previous = -1
    for index, entry, masker in order:
        if not 0 <= index < ncolumns:
            raise ValueError(f"masked column {index} out of range (the result has {ncolumns} columns)")
        if index == previous:
            raise ValueError(f"column {index} has more than one masker")
        steps.append((range(index - previous - 1), masker, entry))
        previous = index
    return tuple(steps), range(ncolumns - previous - 1)


class RowMasker:
    """Rewrites the DataRows of one result set; see the module docstring.

    ``columns``: ``(column index, masker)`` pairs, 0-based indexes into the
    RowDescription's ``ncolumns`` columns. ``counts[i]`` counts the values the
    masker of ``columns[i]`` changed; ``rows`` counts the DataRows seen.
    """

    __slots__ = ("ncolumns", "counts", "rows", "_steps", "_tail")

    def __init__(self, columns: Sequence[tuple[int, Masker]], ncolumns: int) -> None:
        self._steps, self._tail = plan_steps(columns, ncolumns)
        self.ncolumns = ncolumns
        self.counts = [0] * len(columns)
        self.rows = 0

    def data_row(self, buf: bytes, pos: int, size: int) -> bytes:
        """Rewrite the one complete DataRow ``buf[pos:pos + size]``; return the new message.

        Raises ValueError if it is not a DataRow of exactly ``size`` bytes, has
        another column count than the RowDescription, or is malformed.
        """
        stop = pos + size
        if size < 7 or stop > len(buf) or buf[pos] != 68 or _I32.unpack_from(buf, pos + 1)[0] != size - 1:
            raise ValueError("not a complete DataRow message")
        out: list[bytes] = []
        self.data_rows(buf, pos, stop, out)
        return out[0]

    def data_rows(self, buf: bytes, pos: int, end: int, out: list) -> int:
        """Rewrite the consecutive complete DataRows in ``buf[pos:end]``, appending each to ``out``.

        Stops at the first message that is not a DataRow or is not complete
        within ``end`` and returns its position (``end`` when all were rows).
        Raises ValueError on a malformed row (rows before it are in ``out``).
        """
        unpack = _I32.unpack_from
        length_count = _LEN_COUNT.unpack_from
        short = _SHORT_WORDS
        pack = _I32.pack
        header = _HDR.pack
        null = NULL_LENGTH
        append = out.append
        steps = self._steps
        tail = self._tail
        counts = self.counts
        ncolumns = self.ncolumns
        nrows = 0
        try:
            while pos + 7 <= end and buf[pos] == 68:
                length, count = length_count(buf, pos + 1)
                stop = pos + 1 + length
                if stop > end:
                    break
                if length < 6:
                    raise ValueError("DataRow too short")
                if count != ncolumns:
                    raise ValueError(f"DataRow has {count} columns, the RowDescription {ncolumns}")
                p = pos + 7  # the length word of the current column
                start = pos + 5  # unmasked bytes not yet copied (the count word first)
                pieces: list = [None]  # [0]: the new header, known once the lengths are
                delta = 0  # new length - old length
                for gap, masker, entry in steps:
                    for _ in gap:
                        n = unpack(buf, p)[0]
                        if n >= 0:
                            p += 4 + n
                        elif n == -1:
                            p += 4
                        else:
                            raise ValueError(f"invalid value length {n} in DataRow")
                    n = unpack(buf, p)[0]
                    if n >= 0:
                        vend = p + 4 + n
                        if vend > stop:
                            raise ValueError("DataRow value runs past the end of the message")
                        value = buf[p + 4 : vend]
                        new = masker(value)
                        if new is not value:
                            counts[entry] += 1
                            if new is None:
                                pieces += (buf[start:p], null)
                                delta -= n
                            else:
                                k = len(new)
                                pieces += (buf[start:p], short[k] if k < 256 else pack(k), new)
                                delta += k - n
                            start = vend
                        p = vend
                    elif n == -1:
                        p += 4
                    else:
                        raise ValueError(f"invalid value length {n} in DataRow")
                for _ in tail:
                    n = unpack(buf, p)[0]
                    if n >= 0:
                        p += 4 + n
                    elif n == -1:
                        p += 4
                    else:
                        raise ValueError(f"invalid value length {n} in DataRow")
                if p != stop:
                    raise ValueError("DataRow length does not match its values")
                if start == pos + 5:
                    append(buf[pos:stop])
                else:
                    pieces.append(buf[start:stop])
                    pieces[0] = header(b"D", stop - pos - 1 + delta)
                    append(b"".join(pieces))
                pos = stop
                nrows += 1
            if pos + 5 <= end and pos + 7 > end and buf[pos] == 68 and pos + 1 + unpack(buf, pos + 1)[0] <= end:
                raise ValueError("DataRow too short")  # a complete message too short for its column count
        except struct.error as exc:  # a length word past the end of the buffer
            raise ValueError("DataRow value runs past the end of the buffer") from exc
        finally:
            self.rows += nrows
        return pos
