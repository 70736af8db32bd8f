"""COPY ... TO STDOUT rewriting: mask columns inside CopyData payloads.

Why it looks like this
----------------------
COPY OUT bypasses DataRow entirely: the server streams the table in the COPY
format (text, csv or binary) inside CopyData messages, so masking must parse
that format. PostgreSQL sends one row per CopyData message, but the protocol
does not promise it (other servers and poolers re-chunk), so
:class:`CopyMasker` keeps the unfinished tail of a row across calls and
returns, for each payload, the rewritten bytes of the rows it completed. A
payload that cannot complete a row (no newline; fewer bytes than the binary
field being read) is only stored, so a row split into many pieces is not
re-scanned for every piece.

Rows pass through as they arrived unless a masker changed one of their
values; only masked fields are decoded (escapes, quotes, encoding) and
re-encoded, as PostgreSQL's COPY TO writes them and COPY FROM reads them.

For text and csv the masker receives the column's text-format value as UTF-8
bytes (the stream is in the client encoding, converted when that is not UTF-8
or SQL_ASCII); for binary, the binary-format value exactly as sent, as for
DataRows. Anything that does not parse raises :class:`ValueError`: data we
cannot parse cannot be masked, and the caller ends the COPY instead.

Client encodings whose multibyte characters can contain ASCII bytes (SJIS,
BIG5, GBK, UHC, GB18030, JOHAB) are refused at construction: a delimiter or
backslash byte inside a character would be mistaken for syntax.
"""

from __future__ import annotations

import codecs
import functools
import re
import struct
from collections.abc import Sequence

from .rows import NULL_LENGTH, Masker, length_word, plan_steps

__all__ = ["CopyMasker", "BINARY_SIGNATURE"]

BINARY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
_I32 = struct.Struct("!i")
_I16 = struct.Struct("!h")
_U32 = struct.Struct("!I")

# Python codecs whose multibyte characters may contain bytes below 0x80.
_EMBEDS_ASCII = {"shift_jis", "cp932", "shift_jis_2004", "shift_jisx0213", "big5", "big5hkscs", "gbk", "gb18030",
                 "cp949", "johab", "cp950", "hz", "utf-7", "utf-16", "utf-32"}  # fmt: skip
# PostgreSQL encoding names Python does not know (WINnnn becomes cpnnn).
_PG_NAMES = {"koi8r": "koi8_r", "koi8u": "koi8_u", "win": "cp1251", "alt": "cp866", "tcvn": "cp1258"}

# Text format: backslash escapes (COPY FROM reads these; COPY TO writes a subset).
_UNESCAPE = re.compile(rb"\\(?:([0-7]{1,3})|x([0-9a-fA-F]{1,2})|(.))", re.S)
_SIMPLE = {ord("b"): b"\b", ord("f"): b"\f", ord("n"): b"\n", ord("r"): b"\r", ord("t"): b"\t", ord("v"): b"\v"}
_ESCAPE = {b"\\": b"\\\\", b"\b": b"\\b", b"\f": b"\\f", b"\n": b"\\n", b"\r": b"\\r", b"\t": b"\\t", b"\v": b"\\v"}


def stream_codec(encoding: str) -> str | None:
    """The Python codec of a COPY stream in ``encoding`` (a PostgreSQL or Python name).

    None means no conversion: UTF-8 already, or SQL_ASCII (bytes as stored).
    Raises ValueError for unknown encodings and those that embed ASCII bytes.
    """
    key = encoding.strip().lower().replace("-", "").replace("_", "")
    if key in ("utf8", "unicode", "sqlascii"):
        return None
    if key.startswith("win") and key[3:].isdigit():
        python_name = "cp" + key[3:]
    else:
        python_name = _PG_NAMES.get(key, encoding.strip())
    try:
        name = codecs.lookup(python_name).name
    except LookupError:
        raise ValueError(f"unknown COPY encoding {encoding!r}") from None
    if name in _EMBEDS_ASCII or name.startswith(("utf-16", "utf-32")):
        raise ValueError(f"COPY masking does not support the client encoding {encoding}")
    return None if name == "utf-8" else name


def _one_byte(what: str, value: str) -> bytes:
    data = value.encode("ascii", "strict") if value.isascii() else b""
    if len(data) != 1:
        raise ValueError(f"COPY {what} must be a single one-byte character, not {value!r}")
    return data


class CopyMasker:
    """Masks the columns ``columns`` (``(index, masker)`` pairs) of one COPY TO stream.

    Options and defaults are PostgreSQL's: text (delimiter tab, null ``\\N``),
    csv (delimiter ``,``, null the unquoted empty string, quote ``"``, escape
    the quote) or binary. ``ncolumns``, when known (CopyOutResponse), is
    checked against every row. ``counts[i]`` counts the values changed by the
    masker of ``columns[i]``; ``rows`` the data rows seen (not header/trailer).
    """

    def __init__(
        self,
        columns: Sequence[tuple[int, Masker]],
        *,
        format: str,
        ncolumns: int | None = None,
        delimiter: str | None = None,
        null: str | None = None,
        quote: str = '"',
        escape: str | None = None,
        header: bool = False,
        encoding: str = "utf-8",
    ) -> None:
        if format not in ("text", "csv", "binary"):
            raise ValueError(f"unknown COPY format {format!r}")
        self.format = format
        self.counts = [0] * len(columns)
        self.rows = 0
        self._columns = list(columns)
        self._ncolumns = ncolumns
        self._chunks: list[bytes] = []
        self._size = 0  # bytes in _chunks
        self._need = 0  # _size must reach this before parsing again
        self._header = header and format != "binary"  # a header line still to pass through
        self._cols = sorted(((i, m, entry) for entry, (i, m) in enumerate(columns)), key=lambda c: (c[0], c[2]))
        indexes = [c[0] for c in self._cols]
        if len(set(indexes)) != len(indexes) or any(i < 0 for i in indexes):
            raise ValueError("masked COPY columns must be distinct, non-negative indexes")
        self._min_fields = indexes[-1] + 1 if indexes else 0
        if ncolumns is not None and self._min_fields > ncolumns:
            raise ValueError(f"masked column {indexes[-1]} out of range (COPY has {ncolumns} columns)")
        if format == "binary":
            self._stage = 0  # 0: file header, 1: tuples, 2: after the trailer
            self._oids = False
            self._steps = plan_steps(self._columns, ncolumns) if ncolumns is not None else None
            self._need = 19
            return
        self._codec = stream_codec(encoding)
        csv = format == "csv"
        self._delim = _one_byte("delimiter", delimiter if delimiter is not None else ("," if csv else "\t"))
        null_text = null if null is not None else ("" if csv else "\\N")
        if "\n" in null_text or "\r" in null_text:
            raise ValueError("COPY null string cannot contain a newline or carriage return")
        self._null = null_text.encode(self._codec or "utf-8")
        if self._delim in b"\n\r" or (not csv and self._delim == b"\\"):
            raise ValueError(f"COPY delimiter {self._delim!r} is not allowed")
        if csv:
            self._quote = _one_byte("quote", quote)
            self._escape = _one_byte("escape", escape) if escape is not None else self._quote
            if self._quote == self._delim:
                raise ValueError("COPY delimiter and quote must differ")
            self._csv_regexes()
            self._plain_csv = re.compile(b"[" + re.escape(self._delim + self._quote) + b"\r\n]")
        else:
            specials = b"\\\b\f\n\r\t\v" + self._delim
            self._needs_escape = re.compile(b"[" + re.escape(specials) + b"]")

    # ------------------------------------------------------------------ driving

    def data(self, payload: bytes) -> bytes:
        """Rewrite one CopyData payload; return the bytes of the rows it completed."""
        if self._chunks:
            self._chunks.append(bytes(payload))
            self._size += len(payload)
            if self._size < self._need or (self.format != "binary" and b"\n" not in payload):
                return b""
            buf = b"".join(self._chunks)
        else:
            buf = bytes(payload)
        self._chunks = []
        self._size = 0
        out: list[bytes] = []
        if self.format == "binary":
            pos = self._binary(buf, out)
        else:
            pos = self._lines(buf, out, final=False)
        if pos < len(buf):
            tail = buf[pos:]
            self._chunks = [tail]
            self._size = len(tail)
        return b"".join(out)

    def finish(self) -> bytes:
        """At CopyDone: the rewrite of what is still buffered (a last line without newline).

        Raises ValueError when the stream ends inside a binary header or tuple,
        or inside a quoted csv field.
        """
        buf = b"".join(self._chunks)
        self._chunks = []
        self._size = 0
        if not buf:
            return b""
        if self.format == "binary":
            raise ValueError("binary COPY data ends in the middle of a " + ("header" if self._stage == 0 else "tuple"))
        out: list[bytes] = []
        self._lines(buf, out, final=True)
        return b"".join(out)

    # ------------------------------------------------------------ text and csv

    def _lines(self, buf: bytes, out: list, *, final: bool) -> int:
        """Rewrite the complete rows of ``buf`` into ``out``; return where the unfinished one starts.

        Unchanged rows are copied as spans: ``copied`` is where the bytes not
        yet in ``out`` begin.
        """
        csv = self.format == "csv"
        pos = copied = 0
        size = len(buf)
        quote = self._quote if csv else None
        while pos < size:
            nl = buf.find(b"\n", pos)
            if csv and buf.find(quote, pos, size if nl < 0 else nl) >= 0:
                fields, stop, nxt = self._csv_record(buf, pos, final)  # quoted fields may hold newlines
                if fields is None:
                    break
            elif nl >= 0:
                fields, stop, nxt = None, nl, nl + 1
            elif final:
                fields, stop, nxt = None, size, size
            else:
                break
            if self._header:
                self._header = False
            else:
                line = buf[pos:stop]
                if fields is None:
                    fields = line.split(self._delim)
                    if not csv and b"\\" in line:
                        fields = self._join_escaped(fields)
                new = self._row(fields, line)
                if new is not None:
                    out.append(buf[copied:pos])
                    out.append(new)
                    copied = stop
            pos = nxt
        if copied < pos:
            out.append(buf[copied:pos])
        return pos

    def _join_escaped(self, parts: list[bytes]) -> list[bytes]:
        """Rejoin pieces split at an escaped delimiter (a piece ending in an odd run of backslashes)."""
        fields: list[bytes] = []
        glue = False
        for part in parts:
            if glue:
                fields[-1] += self._delim + part
            else:
                fields.append(part)
            last = fields[-1]
            glue = (len(last) - len(last.rstrip(b"\\"))) % 2 == 1
        return fields

    def _row(self, fields: list[bytes], line: bytes) -> bytes | None:
        """Mask one row's raw fields; return the new row text, or None if nothing changed."""
        csv = self.format == "csv"
        if not csv and line == b"\\.":
            return None  # the end-of-data marker (protocol 2): never a row in text format
        if self._ncolumns is not None and len(fields) != self._ncolumns:
            raise ValueError(f"COPY row has {len(fields)} fields, expected {self._ncolumns}")
        if len(fields) < self._min_fields:
            raise ValueError(f"COPY row has {len(fields)} fields, fewer than the masked columns need")
        self.rows += 1
        codec = self._codec
        changed = False
        for index, masker, entry in self._cols:
            raw = fields[index]
            if csv:
                quoted = self._quote in raw
                if not quoted and raw == self._null:
                    continue
                value = self._csv_unquote(raw) if quoted else raw
            else:
                if raw == self._null:
                    continue
                value = _UNESCAPE.sub(_unescape_one, raw) if b"\\" in raw else raw
            if codec is not None:
                value = value.decode(codec, "surrogateescape").encode("utf-8", "surrogateescape")
            new = masker(value)
            if new is value:
                continue
            self.counts[entry] += 1
            changed = True
            if new is None:
                fields[index] = self._null
                continue
            if codec is not None:
                new = _from_utf8(new, codec)
            fields[index] = self._csv_quote(new, raw) if csv else self._text_escape(new)
        return self._delim.join(fields) if changed else None

    def _text_escape(self, value: bytes) -> bytes:
        """Escape a value as COPY TO does: backslash, delimiter and \\b\\f\\n\\r\\t\\v."""
        if self._needs_escape.search(value) is None:
            return value
        delim = self._delim
        return self._needs_escape.sub(lambda m: _ESCAPE.get(m.group(), b"\\" + delim), value)

    # ------------------------------------------------------------------ csv

    def _csv_regexes(self) -> None:
        """Compile the csv syntax: a raw field is unquoted runs and quoted sections
        (which may hold delimiters and newlines); inside quotes the escape
        character escapes the quote and itself, and is literal before anything else."""
        d, q, e = (re.escape(c) for c in (self._delim, self._quote, self._escape))
        if self._escape == self._quote:
            inner = b"(?:[^" + q + b"]|" + q + q + b")*+"
            doubled, single = self._quote * 2, self._quote
            self._unescape_quoted = lambda text: text.replace(doubled, single)
        else:
            inner = b"(?:[^" + q + e + b"]|" + e + b"[" + q + e + b"]?)*+"
            self._unescape_quoted = functools.partial(re.compile(e + b"([" + q + e + b"])").sub, rb"\1")
        self._field = re.compile(b"(?:[^" + d + q + b"\n]++|" + q + inner + q + b")*+", re.S)
        self._part = re.compile(q + b"(" + inner + b")" + q + b"|([^" + q + b"]+)", re.S)

    def _csv_record(self, buf: bytes, pos: int, final: bool) -> tuple[list[bytes] | None, int, int]:
        """Split the csv record at ``pos`` into raw fields: ``(fields, end, next)``.

        ``fields`` is None when the record is not complete yet. At the end of
        the stream a last record without newline is complete, but an open quote
        is an error.
        """
        fields = []
        match = self._field.match
        size = len(buf)
        delim = self._delim[0]
        p = pos
        while True:
            stop = match(buf, p).end()
            fields.append(buf[p:stop])
            if stop < size:
                c = buf[stop]
                if c == delim:
                    p = stop + 1
                    continue
                if c == 10:
                    return fields, stop, stop + 1
                # an opening quote whose closing quote has not arrived
            if not final:
                return None, pos, pos
            if stop == size:
                return fields, size, size
            raise ValueError("COPY csv data ends inside a quoted field")

    def _csv_unquote(self, raw: bytes) -> bytes:
        """The value of a raw field with quoted sections (quotes removed, escapes resolved)."""
        out = []
        pos = 0
        match = self._part.match
        while pos < len(raw):
            m = match(raw, pos)
            if m is None:
                raise ValueError("unterminated quoted csv field")
            inner, plain = m.groups()
            out.append(plain if inner is None else self._unescape_quoted(inner))
            pos = m.end()
        return b"".join(out)

    def _csv_quote(self, value: bytes, raw: bytes) -> bytes:
        """A masked csv field: quoted when the original was or when COPY TO would quote it."""
        q, e = self._quote, self._escape
        if raw[:1] != q and value != self._null and value != b"\\." and self._plain_csv.search(value) is None:
            return value  # ("\\." alone on a line ends the data: quoted in any column, harmless)
        if e != q:
            value = value.replace(e, e + e)
        return q + value.replace(q, e + q) + q

    # ------------------------------------------------------------------ binary

    def _binary(self, buf: bytes, out: list) -> int:
        """Rewrite the complete header and tuples of ``buf`` into ``out``; return where it stopped."""
        size = len(buf)
        pos = 0
        if self._stage == 0:
            if size < 19:
                self._need = 19
                return 0
            if buf[:11] != BINARY_SIGNATURE:
                raise ValueError("binary COPY data does not start with the PGCOPY signature")
            flags = _U32.unpack_from(buf, 11)[0]
            if flags >> 17:  # bits 16-31 are critical; only 16 (WITH OIDS) is defined
                raise ValueError(f"binary COPY header has unknown critical flags {flags:#x}")
            self._oids = bool(flags & 0x10000)
            ext = _I32.unpack_from(buf, 15)[0]
            if ext < 0:
                raise ValueError("invalid binary COPY header extension length")
            if size < 19 + ext:
                self._need = 19 + ext
                return 0
            pos = 19 + ext
            out.append(buf[:pos])
            self._stage = 1
        copied = pos  # bytes before this are in out
        counts = self.counts
        while pos < size:
            if self._stage == 2:
                raise ValueError("binary COPY data after the trailer")
            end, masked = self._scan_tuple(buf, pos)
            if end < 0:  # incomplete: the buffer must reach -end bytes
                self._need = -end - pos
                break
            if masked:
                for vstart, vend, masker, entry in masked:
                    value = buf[vstart + 4 : vend]
                    new = masker(value)
                    if new is value:
                        continue
                    counts[entry] += 1
                    out.append(buf[copied:vstart])
                    if new is None:
                        out.append(NULL_LENGTH)
                    else:
                        out.append(length_word(len(new)))
                        out.append(new)
                    copied = vend
            pos = end
        if copied < pos:
            out.append(buf[copied:pos])
        return pos

    def _scan_tuple(self, buf: bytes, pos: int) -> tuple[int, list | None]:
        """Find the end of the tuple (or trailer) at ``pos`` and its masked values.

        Returns ``(end, masked)``, ``masked`` listing ``(start of length word,
        end of value, masker, entry)`` for the non-NULL masked fields; or
        ``(-n, None)`` when the buffer must hold ``n`` bytes before the tuple
        is complete. Maskers run only on complete tuples (an incomplete one is
        scanned again when more data has arrived).
        """
        size = len(buf)
        if pos + 2 > size:
            return -(pos + 2), None
        count = _I16.unpack_from(buf, pos)[0]
        if count == -1:
            self._stage = 2
            return pos + 2, None
        if self._ncolumns is not None and count != self._ncolumns:
            raise ValueError(f"binary COPY tuple has {count} fields, expected {self._ncolumns}")
        if count < self._min_fields:
            raise ValueError(f"binary COPY tuple has {count} fields, fewer than the masked columns need")
        if self._steps is None:  # the column count was not known: all tuples have the first one's
            self._steps = plan_steps(self._columns, count)
            self._ncolumns = count
        steps, tail = self._steps
        p = pos + 2
        if self._oids:  # WITH OIDS (before PostgreSQL 12): an uncounted OID field first
            p = _skip_field(buf, p, size)
            if p < 0:
                return p, None
        masked = []
        for gap, masker, entry in steps:
            for _ in gap:
                p = _skip_field(buf, p, size)
                if p < 0:
                    return p, None
            if p + 4 > size:
                return -(p + 4), None
            n = _I32.unpack_from(buf, p)[0]
            if n == -1:  # NULL: nothing to mask
                p += 4
                continue
            if n < 0:
                raise ValueError(f"invalid field length {n} in binary COPY tuple")
            end = p + 4 + n
            if end > size:
                return -end, None
            masked.append((p, end, masker, entry))
            p = end
        for _ in tail:
            p = _skip_field(buf, p, size)
            if p < 0:
                return p, None
        self.rows += 1
        return p, masked


def _skip_field(buf: bytes, p: int, size: int) -> int:
    """The position after the binary field at ``p``, or ``-(bytes needed)`` if it is incomplete."""
    if p + 4 > size:
        return -(p + 4)
    n = _I32.unpack_from(buf, p)[0]
    if n >= 0:
        end = p + 4 + n
        return end if end <= size else -end
    if n == -1:
        return p + 4
    raise ValueError(f"invalid field length {n} in binary COPY tuple")


def _from_utf8(value: bytes, codec: str) -> bytes:
    """A masker's UTF-8 output in the stream's encoding (characters it lacks become '?')."""
    text = value.decode("utf-8", "surrogateescape")
    try:
        return text.encode(codec, "surrogateescape")
    except UnicodeEncodeError:
        return text.encode(codec, "replace")


def _unescape_one(m: re.Match[bytes]) -> bytes:
    octal, hexa, char = m.groups()
    if octal is not None:
        return bytes((int(octal, 8) & 0xFF,))
    if hexa is not None:
        return bytes((int(hexa, 16),))
    return _SIMPLE.get(char[0], char)
