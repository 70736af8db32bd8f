"""Per-result plans: decided once per RowDescription (or CopyOutResponse), applied to every row.

A :class:`StatementMask` is attached to a statement by the masking stage and
called by the relay (``session/replies.py``, "Masking"):

* ``result(row_description)`` for each result set: it reads every column's
  origin (table OID, attribute number), type and format, combines them with
  what the stage expected from the statement's lineage (``Expect``), and
  returns a :class:`~pgwarden.policy.masking.rows.RowMasker` for the columns to
  mask, or None, in which case the rows pass through undecoded.
* ``copy_out(copy_out_response)`` for ``COPY … TO STDOUT``.
* ``scrub(message)`` for ErrorResponse and NoticeResponse, which can echo values.

Combining the two sources, the stricter wins: a column whose origin is a
masked column gets that rule's strategy; a column the lineage says is computed
from a masked column is masked as a whole (a type-valid redaction, or NULL);
a column of unknown origin is masked as a whole when the statement reads masked
columns at all, else content detectors run on it.
"""

from __future__ import annotations

import struct

from ...wire import encode
from ...wire.messages import decode_error_fields
from .catalog import Catalog
from .copy import CopyMasker
from .errors import scrub_message
from .resolve import Expect, Hit, SessionRules
from .rows import RowMasker
from .typed import detect_masker, value_masker, whole_masker

__all__ = ["StatementMask", "MaskTools", "parse_row_description"]

_I16 = struct.Struct("!h")
_FIELD = struct.Struct("!IhIhih")


class MaskTools:
    """What every plan needs that does not change per session: tokenizer, redaction text, detectors."""

    def __init__(self, tokenizer, redaction: str, detect_types: frozenset[str], detect_strategy, plugins=(),
                 detect_all: bool = False) -> None:
        self.tokenizer = tokenizer
        self.redaction = redaction
        self.detect_types = detect_types
        self.detect_strategy = detect_strategy  # type -> strategy, or None: no detection
        self.plugins = tuple(plugins)
        # detect.scope all: detectors also run on columns of known, unmasked origin.
        self.detect_all = detect_all and detect_strategy is not None


def parse_row_description(message: bytes) -> list[tuple[str, int, int, int, int]]:
    """(name, table oid, attnum, type oid, format) per column of a RowDescription message."""
    count = _I16.unpack_from(message, 5)[0]
    pos = 7
    columns = []
    for _ in range(count):
        end = message.index(b"\x00", pos)
        name = message[pos:end].decode("utf-8", "replace")
        table, attnum, type_oid, _typlen, _typmod, fmt = _FIELD.unpack_from(message, end + 1)
        columns.append((name, table, attnum, type_oid, fmt))
        pos = end + 1 + _FIELD.size
    return columns


class StatementMask:
    __slots__ = ("rules", "catalog", "paths", "tools", "expected", "echo", "copy", "_index", "_results", "scrubbed",
                 "encoding", "_copied")

    def __init__(
        self,
        rules: SessionRules,
        catalog: Catalog,
        paths,
        tools: MaskTools,
        expected: list[list[Expect] | None],
        echo: bool,
        copy=None,
        encoding: str = "UTF8",
    ) -> None:
        self.encoding = encoding  # the session's client_encoding (COPY data is in it)
        self.rules = rules
        self.catalog = catalog
        self.paths = paths
        self.tools = tools
        self.expected = expected  # per row-returning statement, in order
        self.echo = echo  # the statement reads masked columns: values in errors are scrubbed
        # [(lineage Copy, list[Expect] | None)] for each COPY ... TO STDOUT, in order (a copy: consumed)
        self.copy = list(copy) if copy else None
        self._copied = 0
        self._index = 0
        self._results: list[tuple[list[tuple[str, str, Hit | None]], object]] = []
        self.scrubbed = 0

    # ------------------------------------------------------------ rows

    def result(self, description: bytes):
        columns = parse_row_description(description)
        expected = None
        if self.expected is not None and self._index < len(self.expected):
            expected = self.expected[self._index]
        self._index += 1
        if expected is not None and not _aligned(expected, columns):
            expected = None
        maskers = []
        labels = []
        for i, (name, table, attnum, type_oid, fmt) in enumerate(columns):
            expect = expected[i] if expected is not None else None
            origin = self._origin(table, attnum)
            masker, how, hit = self._column(expect, origin, type_oid, fmt)
            if masker is not None:
                maskers.append((i, masker))
                labels.append((name, how, hit))
        if not maskers:
            return None
        row_masker = RowMasker(maskers, len(columns))
        self._results.append((labels, row_masker))
        return row_masker

    def _origin(self, table: int, attnum: int) -> Expect | None:
        """What the RowDescription's origin says: None when it names no (known) column."""
        if not table:
            return None
        rel = self.catalog.by_oid.get(table)
        if rel is None:
            return None
        hits = self.rules.column_hits(self.catalog, rel, attnum, self.paths)
        if hits is None:
            return None
        if not hits:
            return Expect("clean")
        if attnum > 0 and all(h.direct for h in hits):
            return Expect("masked", hits)
        return Expect("derived", hits)

    def _column(self, expect: Expect | None, origin: Expect | None, type_oid: int, fmt: int):
        """(masker, how, hit) for one result column; masker None: the column passes."""
        tools = self.tools
        kinds = {e.kind for e in (expect, origin) if e is not None}
        hits = tuple((expect.hits if expect is not None else ()) + (origin.hits if origin is not None else ()))
        if "derived" in kinds or ("masked" in kinds and len({(h.rule.name, h.strategy) for h in hits}) > 1):
            return whole_masker(type_oid, fmt, redaction=tools.redaction), "whole", hits[0]
        if "masked" in kinds:
            hit = hits[0]
            masker = value_masker(
                hit.strategy, hit.rule.type, type_oid, fmt,
                tokenizer=tools.tokenizer, constant=hit.rule.constant, redaction=tools.redaction,
            )  # fmt: skip
            return masker, hit.strategy, hit
        if "clean" in kinds and not tools.detect_all:
            return None, None, None
        # Origin and lineage both unknown (or detection everywhere).
        if self.echo and "clean" not in kinds:
            return whole_masker(type_oid, fmt, redaction=tools.redaction), "whole", None
        if tools.detect_strategy is not None:
            masker = detect_masker(
                tools.detect_types, tools.detect_strategy, type_oid, fmt,
                tokenizer=tools.tokenizer, redaction=tools.redaction, detectors=tools.plugins,
            )  # fmt: skip
            if masker is not None:
                return masker, "detect", None
        return None, None, None

    # ------------------------------------------------------------ COPY

    def copy_out(self, response: bytes):
        if not self.copy:
            return None
        # One plan per COPY of the statement, in order; past the last, every field is masked.
        if self._copied < len(self.copy):
            info, expects = self.copy[self._copied]
        else:  # more COPYs than planned: mask every field
            info, expects = self.copy[-1][0], None
        self._copied += 1
        overall = response[5]
        count = _I16.unpack_from(response, 6)[0]
        fmt = 1 if overall else 0
        if expects is not None and len(expects) != count:
            expects = None
        maskers = []
        labels = []
        for i in range(count):
            expect = expects[i] if expects is not None else None
            type_oid = expect.type_oid if expect is not None and expect.type_oid else (25 if fmt == 0 else 0)
            if expect is None and not self.echo:
                masker, how, hit = self._column(None, None, type_oid, fmt)
            else:
                masker, how, hit = self._column(expect, None, type_oid, fmt)
            if masker is not None:
                maskers.append((i, masker))
                labels.append((f"column {i + 1}", how, hit))
        if not maskers:
            return None
        options = dict(info.options)
        fmt_name = "binary" if fmt else ("csv" if info.format == "csv" else "text")
        header = options.get("header")
        copy_masker = CopyMasker(
            maskers,
            format=fmt_name,
            ncolumns=count,
            delimiter=_opt(options.get("delimiter")),
            null=_opt(options.get("null")),
            quote=_opt(options.get("quote")) or '"',
            escape=_opt(options.get("escape")),
            header=bool(header) and header not in ("false", "off", "0"),
            encoding=self.encoding,
        )
        self._results.append((labels, copy_masker))
        return copy_masker

    # ------------------------------------------------------------ errors and notices

    def scrub(self, message: bytes) -> bytes | None:
        if self.echo and message[:1] == b"E":
            return self._withheld(message)
        detect = None
        tools = self.tools
        if tools.detect_strategy is not None:
            from .strategies import mask_detected

            def detect(text: str) -> tuple[str, int]:
                return mask_detected(
                    text, tools.detect_types, tools.detect_strategy,
                    tokenizer=tools.tokenizer, redaction=tools.redaction, detectors=tools.plugins,
                )  # fmt: skip

        result = scrub_message(message, echo=self.echo, detect=detect)
        if result is None:
            return None
        new, count = result
        self.scrubbed += count
        return new

    def _withheld(self, message: bytes) -> bytes:
        """An error of a statement that read masked columns, without its texts.

        PostgreSQL echoes values in ways no pattern list can cover (``index 1234567891
        out of valid range`` from ``get_byte(…, ssn::int)``, a time built from SSN
        parts); so the client keeps the SQLSTATE, severity and position, and the
        message says only that it was withheld. The gateway log does not see it either.
        """
        fields = decode_error_fields(message[5:]).fields
        sqlstate = fields.get("C", "XX000")
        self.scrubbed += 1
        return encode.error_response(
            sqlstate,
            f"pgwarden: the error message was withheld because the statement reads masked columns "
            f"(SQLSTATE {sqlstate})",
            severity=fields.get("V") or fields.get("S") or "ERROR",
            hint="Run it without the masked columns to see PostgreSQL's message.",
        )

    # ------------------------------------------------------------ evidence

    def report(self) -> list[dict]:
        """What was masked, per result column: for the statement's audit record."""
        out: list[dict] = []
        for labels, masker in self._results:
            counts = masker.counts
            for (name, how, hit), count in zip(labels, counts, strict=False):
                entry: dict = {"column": name, "strategy": how, "values": count}
                if hit is not None:
                    entry["rule"] = hit.rule.name
                    entry["source"] = hit.column
                out.append(entry)
        if self.scrubbed:
            out.append({"column": "(error or notice text)", "strategy": "scrub", "values": self.scrubbed})
        return out


def _aligned(expected: list[Expect], columns: list) -> bool:
    """Whether these expectations describe this result: same width, and every column the
    lineage tied to one base column has that origin in the RowDescription. (A multi-statement
    string whose results pgwarden miscounted must not lend one result's plan to another.)"""
    if len(expected) != len(columns):
        return False
    for expect, (_name, table, attnum, _type, _fmt) in zip(expected, columns):
        if expect.origin is not None and expect.origin != (table, attnum):
            return False
    return True


def _opt(value) -> str | None:
    return None if value is None else str(value)
