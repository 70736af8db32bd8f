"""Byte-level masking: DataRows, COPY TO streams and echoed values in errors.

Pure codec tests (no server): every output is compared byte for byte with a
message built independently, and the COPY streams are also fed split at every
byte offset, since CopyData boundaries are not row boundaries in general.
"""

from __future__ import annotations

import random
import re
import struct

import pytest

from pgwarden.policy.masking.copy import BINARY_SIGNATURE, CopyMasker, stream_codec
from pgwarden.policy.masking.errors import scrub_fields, scrub_message
from pgwarden.policy.masking.rows import RowMasker
from pgwarden.wire import encode

I32 = struct.Struct("!i")


def fields_bytes(values) -> bytes:
    return b"".join(b"\xff\xff\xff\xff" if v is None else I32.pack(len(v)) + v for v in values)


def data_row(values) -> bytes:
    body = struct.pack("!h", len(values)) + fields_bytes(values)
    return b"D" + I32.pack(len(body) + 4) + body


def star(value: bytes) -> bytes:
    return b"*" * len(value)


# ---------------------------------------------------------------------------------------------- DataRow


def test_data_row_masks_only_the_chosen_columns():
    rm = RowMasker([(1, star), (3, lambda v: b"X")], 5)
    row = data_row([b"1", b"alice@example.com", b"Alice", b"123-45-6789", b"t"])
    out = rm.data_row(b"junk" + row, 4, len(row))
    assert out == data_row([b"1", b"*****************", b"Alice", b"X", b"t"])
    assert rm.counts == [1, 1] and rm.rows == 1


def test_data_row_nulls_empty_values_and_null_results():
    seen = []

    def record(v):
        seen.append(v)
        return None

    rm = RowMasker([(0, record), (2, lambda v: b"")], 3)
    row = data_row([b"", None, None])
    assert rm.data_row(row, 0, len(row)) == data_row([None, None, None])
    assert seen == [b""]  # NULL is never handed to a masker; an empty value is
    assert rm.counts == [1, 0]


def test_data_row_longer_and_shorter_values():
    long_value = b"L" * 70000
    rm = RowMasker([(0, lambda v: long_value), (2, lambda v: v[:1])], 4)
    row = data_row([b"ab", b"keep", b"0123456789", None])
    assert rm.data_row(row, 0, len(row)) == data_row([long_value, b"keep", b"0", None])
    rm = RowMasker([(1, lambda v: b"x" * 300)], 2)  # a length word not in the prebuilt table
    row = data_row([b"a", b"b"])
    assert rm.data_row(row, 0, len(row)) == data_row([b"a", b"x" * 300])


def test_unchanged_values_are_not_counted_and_the_row_is_copied():
    rm = RowMasker([(0, lambda v: v), (1, lambda v: v)], 2)
    row = data_row([b"same", b"also"])
    out = rm.data_row(row, 0, len(row))
    assert out == row and rm.counts == [0, 0] and rm.rows == 1
    rm = RowMasker([(0, lambda v: bytes(bytearray(v)))], 1)  # equal but another object: counted
    row = data_row([b"v"])
    assert rm.data_row(row, 0, len(row)) == row and rm.counts == [1]


def test_counts_follow_the_order_of_columns():
    rm = RowMasker([(4, lambda v: b"a"), (0, lambda v: v), (2, lambda v: None)], 5)
    rows = data_row([b"0", b"1", b"2", b"3", b"4"]) * 3
    out: list[bytes] = []
    assert rm.data_rows(rows, 0, len(rows), out) == len(rows)
    assert out == [data_row([b"0", b"1", None, b"3", b"a"])] * 3
    assert rm.counts == [3, 0, 3] and rm.rows == 3


def test_data_rows_stop_at_other_messages_and_incomplete_rows():
    rm = RowMasker([(0, star)], 1)
    r1, r2 = data_row([b"abc"]), data_row([None])
    complete = encode.message(b"C", b"SELECT 2\x00")
    buf = b"xx" + r1 + r2 + complete + r1
    out: list[bytes] = []
    stop = rm.data_rows(buf, 2, len(buf), out)
    assert stop == 2 + len(r1) + len(r2) and out == [data_row([b"***"]), r2]
    for cut in range(len(r1)):  # a row cut anywhere is left for later, untouched
        out = []
        assert rm.data_rows(r2 + r1, 0, len(r2) + cut, out) == len(r2) and out == [r2]
    out = []
    assert rm.data_rows(b"", 0, 0, out) == 0 and out == []
    assert rm.rows == 2 + len(r1)


@pytest.mark.parametrize(
    "message",
    [
        data_row([b"a", b"b"]),  # 2 columns, RowDescription says 3
        b"D" + I32.pack(6 + 4 + 10) + struct.pack("!h", 3) + I32.pack(10) + b"x" * 10,  # value past the end
        b"D" + I32.pack(6 + 12) + struct.pack("!h", 3) + I32.pack(-2) + fields_bytes([b"a", b"b"])[:8],
        b"D" + I32.pack(6 + 12 + 2) + struct.pack("!h", 3) + fields_bytes([None, None, None]) + b"zz",  # trailing
        b"D" + I32.pack(6 + 12) + struct.pack("!h", 3) + fields_bytes([b"abcdef", None]),  # length runs past
        b"D" + I32.pack(4),  # no column count
        b"D" + I32.pack(5) + b"\x00",
        b"D" + I32.pack(-7) + struct.pack("!h", 3),
    ],
)
def test_malformed_rows_raise(message):
    rm = RowMasker([(1, star)], 3)
    with pytest.raises(ValueError):
        rm.data_rows(message, 0, len(message), [])
    with pytest.raises(ValueError):
        rm.data_row(message, 0, len(message))


def test_data_row_requires_exactly_one_complete_row():
    rm = RowMasker([(0, star)], 1)
    row = data_row([b"a"])
    for bad in (row[:-1], row + b"x", b"C" + row[1:]):
        with pytest.raises(ValueError):
            rm.data_row(bad, 0, len(bad))


def test_masker_plan_is_validated():
    for columns, n in (([(2, star)], 2), ([(-1, star)], 2), ([(0, star), (0, star)], 2)):
        with pytest.raises(ValueError):
            RowMasker(columns, n)


def test_random_rows_match_a_reference_rewrite():
    rnd = random.Random(6)
    for _ in range(300):
        n = rnd.randint(1, 10)
        masked = rnd.sample(range(n), rnd.randint(0, n))
        results = {i: rnd.choice([None, b"", b"m" * rnd.randint(1, 400), "same"]) for i in masked}

        def masker(i):
            return lambda v: v if results[i] == "same" else results[i]

        rm = RowMasker([(i, masker(i)) for i in masked], n)
        rows = []
        expected = []
        for _ in range(rnd.randint(1, 5)):
            values = [rnd.choice([None, b"", bytes(rnd.randrange(256) for _ in range(rnd.randint(1, 300)))])
                      for _ in range(n)]  # fmt: skip
            rows.append(data_row(values))
            expected.append(data_row([
                v if i not in results or v is None or results[i] == "same" else results[i]
                for i, v in enumerate(values)
            ]))  # fmt: skip
        buf = b"".join(rows)
        out: list[bytes] = []
        assert rm.data_rows(buf, 0, len(buf), out) == len(buf)
        assert out == expected


# ---------------------------------------------------------------------------------------------- COPY


def feed_whole(masker: CopyMasker, stream: bytes) -> bytes:
    return masker.data(stream) + masker.finish()


def feed_bytewise(masker: CopyMasker, stream: bytes) -> bytes:
    return b"".join(masker.data(stream[i : i + 1]) for i in range(len(stream))) + masker.finish()


def assert_any_split(make, stream: bytes, expected: bytes) -> None:
    """One piece, byte by byte, and every two-piece split give the same output."""
    assert feed_whole(make(), stream) == expected
    assert feed_bytewise(make(), stream) == expected
    for cut in range(1, len(stream)):
        m = make()
        assert m.data(stream[:cut]) + m.data(stream[cut:]) + m.finish() == expected, cut


def copy_masker(columns, **options):
    return lambda: CopyMasker(columns, **options)


def test_copy_text_decodes_every_escape_and_reescapes():
    seen = []

    def mask(value):
        seen.append(value)
        return b"<" + value + b">"

    stream = b"1\ta\\\\b\\tc\\nd\\re\\bf\\fg\\vh\\101\\x41\\x4a\\7\\q\\.\tend\n2\t\\N\t\\N\n3\tplain\t\n"
    expected = b"1\t<a\\\\b\\tc\\nd\\re\\bf\\fg\\vhAAJ\x07q.>\tend\n2\t\\N\t\\N\n3\t<plain>\t\n"
    m = CopyMasker([(1, mask)], format="text", ncolumns=3)
    assert feed_whole(m, stream) == expected
    assert seen == [b"a\\b\tc\nd\re\bf\fg\vhAAJ\x07q.", b"plain"]
    assert m.counts == [2] and m.rows == 3
    assert_any_split(copy_masker([(1, mask)], format="text", ncolumns=3), stream, expected)


def test_copy_text_null_results_custom_delimiter_and_null():
    def mask(value):
        return {b"drop": None, b"pipe": b"a|b\\c\r\n"}.get(value, value)

    stream = b"x\\|y|drop|1\nNULL|pipe|2\nq|NULL|3\nr|keep|4\n"
    expected = b"x\\|y|NULL|1\nNULL|a\\|b\\\\c\\r\\n|2\nq|NULL|3\nr|keep|4\n"
    m = CopyMasker([(1, mask)], format="text", delimiter="|", null="NULL", ncolumns=3)
    assert feed_whole(m, stream) == expected
    assert m.counts == [2] and m.rows == 4
    assert_any_split(copy_masker([(1, mask)], format="text", delimiter="|", null="NULL", ncolumns=3), stream, expected)


def test_copy_text_header_final_line_and_field_count():
    make = copy_masker([(0, star)], format="text", header=True, ncolumns=2)
    stream = b"ssn\tname\n123\tann\n45\tbob"
    assert_any_split(make, stream, b"ssn\tname\n***\tann\n**\tbob")
    with pytest.raises(ValueError):
        CopyMasker([(0, star)], format="text", ncolumns=3).data(b"a\tb\n")
    with pytest.raises(ValueError):
        CopyMasker([(2, star)], format="text").data(b"a\tb\n")


def test_copy_text_converts_other_client_encodings():
    seen = []

    def mask(value):
        seen.append(value)
        return "é!".encode()

    m = CopyMasker([(0, mask)], format="text", encoding="LATIN1")
    assert feed_whole(m, b"caf\xe9\t\xe9\n") == b"\xe9!\t\xe9\n"
    assert seen == ["café".encode()]
    assert stream_codec("UTF8") is None and stream_codec("SQL_ASCII") is None
    assert stream_codec("WIN1252") == "cp1252"
    for refused in ("SJIS", "BIG5", "GBK", "no-such-encoding"):
        with pytest.raises(ValueError):
            CopyMasker([(0, star)], format="text", encoding=refused)


def test_copy_csv_quotes_newlines_and_nulls():
    seen = []

    def mask(value):
        seen.append(value)
        return {b"a\nb": b"x,y", b"": b"", b'say "hi"': b"plain", b"null me": None}.get(value, b"m")

    stream = b'id,"na""me",ssn\n1,"multi\nline, name","a\nb"\n2,,""\n3,"",\n4,q,"say ""hi"""\n5,"x",null me\n6,x,ab\n'
    expected = b'id,"na""me",ssn\n1,"multi\nline, name","x,y"\n2,,""\n3,"",\n4,q,"plain"\n5,"x",\n6,x,m\n'
    make = copy_masker([(2, mask)], format="csv", header=True, ncolumns=3)
    m = make()
    assert feed_whole(m, stream) == expected
    assert seen == [b"a\nb", b"", b'say "hi"', b"null me", b"ab"]
    assert m.counts == [4] and m.rows == 6  # the empty string came back as the same object: not counted
    assert_any_split(make, stream, expected)


def test_copy_csv_custom_delimiter_null_quote_and_escape():
    def mask(value):
        return {b"v1": b"NULL", b"q'e\\": b"a;b", b"drop": None}.get(value, b"'")

    stream = b"1;v1;'x'\n2;'q\\'e\\\\';y\n3;NULL;z\n4;drop;w\n5;'';'a\nb'\n"
    expected = b"1;'NULL';'x'\n2;'a;b';y\n3;NULL;z\n4;NULL;w\n5;'\\'';'a\nb'\n"
    make = copy_masker([(1, mask)], format="csv", delimiter=";", null="NULL", quote="'", escape="\\", ncolumns=3)
    assert feed_whole(make(), stream) == expected
    assert_any_split(make, stream, expected)


def test_copy_csv_open_quote_at_the_end_is_an_error():
    m = CopyMasker([(0, star)], format="csv")
    assert m.data(b'"abc\n') == b""
    with pytest.raises(ValueError):
        m.finish()


def binary_stream(rows, extension=b"", trailer=True) -> bytes:
    out = [BINARY_SIGNATURE, I32.pack(0), I32.pack(len(extension)), extension]
    for values in rows:
        out.append(struct.pack("!h", len(values)) + fields_bytes(values))
    if trailer:
        out.append(b"\xff\xff")
    return b"".join(out)


def test_copy_binary_round_trip():
    def mask(value):
        return {b"\x00\x01": None, b"": b"E"}.get(value, value + b"!")

    one, long = b"\x00\x00\x00\x01", b"long" * 100
    rows = [[one, b"\x00\x01", None], [None, None, b"z"], [b"", b"", b""], [b"1", long, b"2"]]
    masked = [[one + b"!", None, None], [None, None, b"z"], [b"E", b"E", b""], [b"1!", long + b"!", b"2"]]
    stream = binary_stream(rows, extension=b"ext!")
    expected = binary_stream(masked, extension=b"ext!")
    make = copy_masker([(1, mask), (0, mask)], format="binary", ncolumns=3)
    m = make()
    assert feed_whole(m, stream) == expected
    assert m.counts == [3, 3] and m.rows == 4
    assert_any_split(make, stream, expected)
    assert_any_split(copy_masker([(1, mask), (0, mask)], format="binary"), stream, expected)  # count from data


def test_copy_binary_errors():
    stream = binary_stream([[b"a", b"b"]])
    for cut in [*range(1, 19), *range(20, len(stream) - 2)]:  # inside the header (19 bytes) or the tuple
        m = CopyMasker([(0, star)], format="binary", ncolumns=2)
        m.data(stream[:cut])
        with pytest.raises(ValueError):
            m.finish()
    m = CopyMasker([(0, star)], format="binary", ncolumns=2)
    assert m.data(stream[:-2]) + m.finish() == binary_stream([[b"*", b"b"]], trailer=False)  # no trailer yet
    bad = [
        b"PGCOPY\n\xff\r\n\x01" + stream[11:],
        stream[:11] + I32.pack(1 << 17) + stream[15:],  # unknown critical flag
        stream + b"\x00\x01",  # data after the trailer
        binary_stream([[b"a", b"b", b"c"]]),  # field count
        binary_stream([])[:-2] + struct.pack("!h", 2) + I32.pack(-3) + b"\xff\xff",
    ]
    for data in bad:
        with pytest.raises(ValueError):
            CopyMasker([(0, star)], format="binary", ncolumns=2).data(data)


def test_copy_options_are_validated():
    for options in (
        {"format": "xml"},
        {"format": "text", "delimiter": "ab"},
        {"format": "text", "delimiter": "\\"},
        {"format": "csv", "quote": ","},
        {"format": "text", "null": "a\nb"},
        {"format": "text", "ncolumns": 1, "columns": [(1, star)]},
        {"format": "csv", "columns": [(0, star), (0, star)]},
    ):
        columns = options.pop("columns", [(0, star)])
        with pytest.raises(ValueError):
            CopyMasker(columns, **options)


def ref_text(rows, delimiter=b"\t", null=b"\\N") -> bytes:
    """COPY TO's text format, written independently (CopyAttributeOutText)."""
    delim = delimiter
    special = {b"\\": b"\\\\", b"\b": b"\\b", b"\f": b"\\f", b"\n": b"\\n", b"\r": b"\\r", b"\t": b"\\t",
               b"\v": b"\\v"}  # fmt: skip
    special.setdefault(delim, b"\\" + delim)  # a control character keeps its letter escape

    def field(v):
        return null if v is None else b"".join(special.get(v[i : i + 1], v[i : i + 1]) for i in range(len(v)))

    return b"".join(delim.join(field(v) for v in row) + b"\n" for row in rows)


def ref_csv(rows, delimiter=b",", null=b"", quote=b'"', escape=None) -> bytes:
    """COPY TO's csv format, written independently (CopyAttributeOutCSV)."""
    delim, escape = delimiter, escape or quote

    def field(v, single):
        if v is None:
            return null
        if not (v == null or any(c in v for c in (delim, quote, b"\n", b"\r")) or (single and v == b"\\.")):
            return v
        return quote + b"".join(escape + v[i : i + 1] if v[i : i + 1] in (quote, escape) else v[i : i + 1]
                                for i in range(len(v))) + quote  # fmt: skip

    return b"".join(delim.join(field(v, len(row) == 1) for v in row) + b"\n" for row in rows)


def fuzz_mask(value):
    """Deterministic: unchanged, NULL or a value full of characters that need escaping."""
    kind = len(value) % 3
    if kind == 0:
        return value
    if kind == 1:
        return None
    return value[::-1] + b'\t,"|;\\\n\r\x01.'


def random_rows(rnd, ncolumns, nrows):
    alphabet = [b"a", b"N", b".", b" ", b"\\", b"\t", b"\n", b"\r", b",", b";", b'"', b"'", b"|", b"\x01", b"\xc3\xa9"]
    return [[None if rnd.random() < 0.15 else b"".join(rnd.choices(alphabet, k=rnd.randint(0, 6)))
             for _ in range(ncolumns)] for _ in range(nrows)]  # fmt: skip


def masked_rows(rows, columns):
    return [[fuzz_mask(v) if i in columns and v is not None else v for i, v in enumerate(row)] for row in rows]


def feed_random_chunks(masker, stream, rnd) -> bytes:
    out, pos = [], 0
    while pos < len(stream):
        step = rnd.choice([1, 2, 3, 7, 50, 1000])
        out.append(masker.data(stream[pos : pos + step]))
        pos += step
    return b"".join(out) + masker.finish()


@pytest.mark.parametrize(
    "options",
    [
        {"format": "text"},
        {"format": "text", "delimiter": "|", "null": "NULL"},
        {"format": "text", "delimiter": "\x01", "null": ""},
        {"format": "csv"},
        {"format": "csv", "delimiter": ";", "null": "\\N", "quote": "'", "escape": "\\"},
        {"format": "csv", "delimiter": "|", "null": "N", "escape": "'"},
        {"format": "binary"},
    ],
)
def test_copy_random_streams_match_a_reference_encoder(options):
    rnd = random.Random(str(options))
    for _ in range(60):
        ncolumns = rnd.randint(1, 5)
        columns = rnd.sample(range(ncolumns), rnd.randint(1, ncolumns))
        rows = random_rows(rnd, ncolumns, rnd.randint(0, 8))
        if options["format"] == "binary":
            stream, expected = binary_stream(rows), binary_stream(masked_rows(rows, columns))
        else:
            kw = {k: v.encode() for k, v in options.items() if k != "format"}
            ref = ref_text if options["format"] == "text" else ref_csv
            if options["format"] == "text" and options.get("null") == "":  # "" reads back as NULL
                rows = [[b"x" if v == b"" else v for v in row] for row in rows]
            stream, expected = ref(rows, **kw), ref(masked_rows(rows, columns), **kw)
        seen = []

        def make():
            def record(v):
                seen.append(v)
                return fuzz_mask(v)

            return CopyMasker([(c, record) for c in columns], ncolumns=ncolumns, **options)

        m = make()
        assert feed_whole(m, stream) == expected
        assert seen == [v for row in rows for i, v in enumerate(row) if i in columns and v is not None]
        assert m.rows == len(rows)
        assert feed_random_chunks(make(), stream, rnd) == expected


def test_copy_text_end_marker_and_binary_oids():
    m = CopyMasker([(0, star)], format="text", ncolumns=1)
    assert feed_whole(m, b"ab\n\\.\n") == b"**\n\\.\n" and m.rows == 1
    m = CopyMasker([(0, star)], format="csv", ncolumns=1)
    assert feed_whole(m, b'"\\."\n') == b'"**"\n'
    m = CopyMasker([(0, lambda v: b"\\.")], format="csv", ncolumns=1)
    assert feed_whole(m, b"ab\n") == b'"\\."\n'  # alone on a line it would end the data: quoted
    oids = BINARY_SIGNATURE + I32.pack(1 << 16) + I32.pack(0)
    oids += struct.pack("!h", 1) + fields_bytes([b"\x00\x00\x30\x39", b"secret"]) + b"\xff\xff"
    expected = oids.replace(b"secret", b"******")
    assert_any_split(copy_masker([(0, star)], format="binary", ncolumns=1), oids, expected)


# ---------------------------------------------------------------------------------------------- errors


def response(fields: dict[str, str], kind: bytes = b"E") -> bytes:
    return encode.message(kind, b"".join(k.encode() + v.encode() + b"\0" for k, v in fields.items()) + b"\0")


def error(sqlstate: str, text: str, **more: str) -> bytes:
    return response({"S": "ERROR", "V": "ERROR", "C": sqlstate, "M": text, **more})


def detect_ssn(text):
    return re.subn(r"\d{3}-\d{2}-\d{4}", "***-**-****", text)


def marked(sqlstate: str, fields: dict[str, str]) -> tuple[bytes, bytes]:
    """An ErrorResponse with the echoed values in [[...]], and the same with them masked."""
    fields = {"S": "ERROR", "C": sqlstate, "M": "msg", **fields}
    plain = {k: v.replace("[[", "").replace("]]", "") for k, v in fields.items()}
    masked = {k: re.sub(r"\[\[.*?\]\]", "****", v) for k, v in fields.items()}
    return response(plain), response(masked)


@pytest.mark.parametrize(
    "sqlstate,fields",
    [
        ("22P02", {"M": 'invalid input syntax for type integer: "[[123-45-6789]]"', "P": "8"}),
        ("22P02", {"M": 'invalid input syntax for type integer: "[[a "quoted" b]]"'}),
        ("22003", {"M": 'value "[[99999999999]]" is out of range for type integer'}),
        ("23505", {"M": 'duplicate key value violates unique constraint "c_email_key"',
                   "D": "Key (email)=([[alice@example.com]]) already exists.", "s": "public", "t": "c"}),
        ("23505", {"D": "Key (lower(email::text))=([[a(b)c]]) already exists."}),
        ("23502", {"M": 'null value in column "x" of relation "c" violates not-null constraint',
                   "D": "Failing row contains ([[1, alice@example.com, 123-45-6789]])."}),
        ("23514", {"D": "Failing row contains ([[1, null, (a,b)]]).", "n": "c_check"}),
        ("23503", {"D": 'Key (customer_id)=([[42]]) is not present in table "customers".'}),
        ("23P01", {"D": "Key (r)=([[[1,5)]]) conflicts with existing key (r)=([[[2,3)]])."}),
        ("23514", {"D": "Partition key of the failing row contains (a) = ([[5]])."}),
        ("23505", {"D": "Schlüssel »([[email)«=»(x]])« existiert bereits."}),  # translated: the widest reading
        ("22P02", {"M": 'invalid input syntax for type integer: "[[1-2]]"',
                   "W": 'COPY customers, line 1, column ssn: "[[123-45-6789]]"'}),
        ("22P04", {"M": "extra data after last expected column", "W": 'COPY c, line 2: "[[1,a,123-45-6789,x]]"'}),
        ("22P02", {"M": "invalid input syntax for type json", "D": 'Token "[[secret]]" is invalid.',
                   "W": "JSON data, line 1: [[secret...]]"}),
        ("22P02", {"M": "invalid input syntax for type json", "D": 'Expected ":", but found "[[123-45-6789]]".'}),
    ],
)  # fmt: skip
def test_echoed_values_are_masked(sqlstate, fields):
    before, after = marked(sqlstate, fields)
    assert scrub_message(before, echo=True, detect=None) == (after, after.count(b"****"))
    assert scrub_fields(before[5:], echo=True, detect=None) == (after[5:], after.count(b"****"))
    assert scrub_message(before, echo=False, detect=None) is None


@pytest.mark.parametrize(
    "message",
    [
        error("22001", "value too long for type character varying(5)"),
        error("23502", 'null value in column "ssn" of relation "c" violates not-null constraint'),
        error("22P02", 'invalid input syntax for type integer: ""'),
        error("25P02", "current transaction is aborted", H="Key (a)=() is nothing."),
        encode.notice_response("table x does not exist, skipping", sqlstate="00000"),
    ],
)
def test_messages_without_echoed_values_are_untouched(message):
    assert scrub_message(message, echo=True, detect=None) is None
    assert scrub_message(message, echo=True, detect=detect_ssn) is None
    assert scrub_message(message, echo=False, detect=None) is None


def test_notice_with_detect():
    fields = {"S": "NOTICE", "C": "00000", "M": "ssn of alice is 123-45-6789", "D": "also 987-65-4321, 111-22-3333",
              "H": "none", "W": "PL/pgSQL function f() line 3 at RAISE", "q": "123-45-6789"}  # fmt: skip
    new, count = scrub_message(response(fields, b"N"), echo=False, detect=detect_ssn)
    expected = fields | {"M": "ssn of alice is ***-**-****", "D": "also ***-**-****, ***-**-****"}  # q stays
    assert (new, count) == (response(expected, b"N"), 3)


def test_echo_and_detect_together():
    message = error("23505", "dup 123-45-6789", D="Key (ssn)=(123-45-6789) already exists.")
    expected = error("23505", "dup ***-**-****", D="Key (ssn)=(****) already exists.")
    assert scrub_message(message, echo=True, detect=detect_ssn) == (expected, 2)



@pytest.mark.parametrize(
    "body",
    [b"", b"Mabc", b"Mabc\x00", b"\x00extra", b"C22P02\x00Mx: \"1\"\x00\x00\x00", b"C22P02\x00Mx: \"1\""],
)
def test_malformed_bodies_return_none(body):
    assert scrub_fields(body, echo=True, detect=detect_ssn) is None


def test_malformed_messages_return_none():
    good = error("22P02", 'invalid input syntax for type integer: "1"')
    assert scrub_message(good, echo=True, detect=None) is not None
    for bad in (good[:-1], good + b"\x00", b"Z" + good[1:], good[:3], b"E" + I32.pack(5) + b"\x00" + good[6:]):
        assert scrub_message(bad, echo=True, detect=None) is None


@pytest.mark.parametrize(
    ("sqlstate", "text"),
    [
        ("42P01", 'relation "123-45-6789" does not exist'),  # translate(ssn, ...)::regclass
        ("42883", 'function "alice@example.com" does not exist'),  # a value cast to regproc
        ("XX000", 'invalid input syntax for type integer: "123"'),  # no class 22 SQLSTATE: still masked
    ],
)
def test_any_quoted_text_of_a_statement_that_read_masked_columns_is_masked(sqlstate, text):
    new, count = scrub_message(error(sqlstate, text), echo=True, detect=None)
    assert count == 1 and b'"****"' in new and text.split('"')[1].encode() not in new
    assert scrub_message(error(sqlstate, text), echo=False, detect=None) is None

