"""The sans-IO codec: frame splitting, startup packet splitting, decoders vs encoders.

Property tests feed streams of valid frontend and backend messages split at every
byte boundary (and at random multi-splits), check that hostile lengths are
refused before anything is allocated for them, and that every decoder answers
arbitrary bytes with either a value or ProtocolViolation, never another exception.
"""

from __future__ import annotations

import struct
import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pgwarden.wire import encode
from pgwarden.wire.constants import (
    CANCEL_REQUEST_CODE,
    GSSENC_REQUEST_CODE,
    MAX_STARTUP_PACKET,
    PROTOCOL_3_0,
    SSL_REQUEST_CODE,
)
from pgwarden.wire.frames import FrameBuffer, ProtocolViolation, StartupBuffer
from pgwarden.wire.messages import (
    Bind,
    Close,
    Describe,
    Execute,
    Parse,
    StartupPacket,
    decode_auth_sasl_mechanisms,
    decode_bind,
    decode_close,
    decode_cstring,
    decode_describe,
    decode_error_fields,
    decode_execute,
    decode_parameter_status,
    decode_parse,
    decode_query,
    decode_sasl_initial,
    decode_startup,
)

SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FEW = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

MAX = 1 << 20  # FrameBuffer limit used by the property tests


# ---------------------------------------------------------------- test-side encoders


def cstr(s: str) -> bytes:
    return s.encode("utf-8") + b"\x00"


def bind_msg(
    portal: str,
    statement: str,
    params: list[bytes | None],
    formats: list[int] | None = None,
    result_formats: list[int] | None = None,
) -> bytes:
    formats = formats or []
    result_formats = result_formats or []
    body = cstr(portal) + cstr(statement)
    body += struct.pack("!h", len(formats)) + b"".join(struct.pack("!h", f) for f in formats)
    body += struct.pack("!h", len(params))
    for p in params:
        body += struct.pack("!i", -1) if p is None else struct.pack("!i", len(p)) + p
    body += struct.pack("!h", len(result_formats)) + b"".join(struct.pack("!h", f) for f in result_formats)
    return encode.message(b"B", body)


def execute_msg(portal: str, max_rows: int = 0) -> bytes:
    return encode.message(b"E", cstr(portal) + struct.pack("!i", max_rows))


def describe_msg(kind: str, name: str) -> bytes:
    return encode.message(b"D", kind.encode("ascii") + cstr(name))


def close_msg(kind: str, name: str) -> bytes:
    return encode.message(b"C", kind.encode("ascii") + cstr(name))


def body_of(message: bytes) -> bytes:
    return message[5:]


# ---------------------------------------------------------------- strategies

# Text that can travel in a C string: no NUL, no lone surrogates (not UTF-8).
ctext = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=24)
ctext_nonempty = ctext.filter(bool)
int16 = st.integers(-(2**15), 2**15 - 1)
int32 = st.integers(-(2**31), 2**31 - 1)
uint32 = st.integers(0, 2**32 - 1)
small_bytes = st.binary(max_size=24)
param_value = st.none() | small_bytes

frontend_messages = st.one_of(
    st.builds(encode.query, ctext),
    st.builds(encode.parse, ctext, ctext, st.lists(uint32, max_size=4)),
    st.builds(bind_msg, ctext, ctext, st.lists(param_value, max_size=4)),
    st.builds(execute_msg, ctext, int32),
    st.builds(describe_msg, st.sampled_from("SP"), ctext),
    st.builds(close_msg, st.sampled_from("SP"), ctext),
    st.just(encode.sync()),
    st.just(encode.terminate()),
    st.builds(encode.password_message, ctext),
    st.builds(encode.sasl_initial_response, ctext, small_bytes),
    st.builds(encode.sasl_response, small_bytes),
)

backend_messages = st.one_of(
    st.just(encode.auth_ok()),
    st.just(encode.auth_cleartext()),
    st.builds(encode.auth_md5, st.binary(min_size=4, max_size=4)),
    st.builds(encode.auth_sasl, st.lists(ctext_nonempty, min_size=1, max_size=3)),
    st.builds(encode.auth_sasl_continue, small_bytes),
    st.builds(encode.auth_sasl_final, small_bytes),
    st.builds(encode.parameter_status, ctext, ctext),
    st.builds(encode.backend_key_data, int32, uint32),
    st.builds(encode.ready_for_query, st.sampled_from([b"I", b"T", b"E"])),
    st.builds(encode.negotiate_protocol_version, st.integers(0, 3), st.lists(ctext, max_size=3)),
    st.builds(lambda c, m: encode.error_response(c, m), st.text("0123456789ABCDEFPX", min_size=5, max_size=5), ctext),
    st.builds(lambda m: encode.notice_response(m), ctext),
)

raw_frames = st.builds(
    lambda t, body: encode.message(bytes([t]), body), st.integers(0, 255), st.binary(max_size=64)
)

any_message = st.one_of(frontend_messages, backend_messages, raw_frames)
message_lists = st.lists(any_message, max_size=8)


# ---------------------------------------------------------------- FrameBuffer


def feed_chunks(fb: FrameBuffer, chunks: list[bytes]) -> list[tuple[int, bytes]]:
    """Feed every chunk; return (type, whole message bytes) for every frame produced."""
    got: list[tuple[int, bytes]] = []
    for chunk in chunks:
        buf, frames = fb.feed(chunk)
        for t, start, end in frames:
            assert buf[start] == t
            got.append((t, bytes(buf[start:end])))
    return got


def expected_frames(messages: list[bytes]) -> list[tuple[int, bytes]]:
    return [(m[0], m) for m in messages]


@SETTINGS
@given(message_lists)
def test_frames_reassemble_at_every_byte_boundary(messages):
    stream = b"".join(messages)
    want = expected_frames(messages)
    ends = []
    total = 0
    for m in messages:
        total += len(m)
        ends.append(total)
    for i in range(len(stream) + 1):
        fb = FrameBuffer(MAX)
        first = feed_chunks(fb, [stream[:i]])
        # exactly the messages that fit entirely in the prefix, and the rest is buffered
        complete = sum(1 for e in ends if e <= i)
        assert first == want[:complete]
        assert fb.buffered == i - (ends[complete - 1] if complete else 0)
        rest = feed_chunks(fb, [stream[i:]])
        assert first + rest == want
        assert fb.buffered == 0


@SETTINGS
@given(st.data(), st.lists(any_message, max_size=16))
def test_frames_reassemble_at_random_multi_splits(data, messages):
    stream = b"".join(messages)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=20)))
    bounds = [0, *cuts, len(stream)]
    chunks = [stream[a:b] for a, b in zip(bounds, bounds[1:])]
    fb = FrameBuffer(MAX)
    assert feed_chunks(fb, chunks) == expected_frames(messages)
    assert fb.buffered == 0


@SETTINGS
@given(message_lists)
def test_frames_byte_at_a_time_and_bodies(messages):
    stream = b"".join(messages)
    fb = FrameBuffer(MAX)
    got = feed_chunks(fb, [stream[i : i + 1] for i in range(len(stream))])
    assert got == expected_frames(messages)
    for (t, whole), original in zip(got, messages):
        length = struct.unpack_from("!I", whole, 1)[0]
        assert length == len(original) - 1
        assert whole[5:] == original[5:]


def test_frame_offsets_point_into_the_returned_buffer():
    a, b = encode.query("select 1"), encode.sync()
    fb = FrameBuffer(MAX)
    buf, frames = fb.feed(a[:3])
    assert frames == [] and fb.buffered == 3
    buf, frames = fb.feed(a[3:] + b + b[:2])
    assert [(t, buf[s:e]) for t, s, e in frames] == [(ord("Q"), a), (ord("S"), b)]
    assert buf[frames[0][1] + 5 : frames[0][2]] == b"select 1\x00"
    assert fb.buffered == 2
    assert fb.take_tail() == b[:2]
    assert fb.buffered == 0


def test_empty_body_and_exact_limit_are_accepted():
    fb = FrameBuffer(100)
    exact = encode.message(b"x", b"\x01" * 96)  # length word = 100 = limit
    buf, frames = fb.feed(b"H\x00\x00\x00\x04" + exact)
    assert [(t, buf[s:e]) for t, s, e in frames] == [(ord("H"), b"H\x00\x00\x00\x04"), (ord("x"), exact)]


@pytest.mark.parametrize(
    "length",
    [0, 1, 2, 3, 101, 0xFFFFFFFF, 0x80000000, 0xFFFFFFFC, 1 << 30, (1 << 30) + 4],
    ids=lambda n: f"len={n:#x}",
)
def test_invalid_lengths_raise_on_the_header_alone(length):
    fb = FrameBuffer(100)
    header = b"Q" + struct.pack("!I", length)
    assert fb.feed(header[:4]) == (header[:4], [])  # not enough to judge yet
    with pytest.raises(ProtocolViolation):
        fb.feed(header[4:])


@pytest.mark.parametrize("length", [0xFFFFFFFF, 0x80000000, 1 << 30, 64 * 1024 * 1024 + 1])
def test_hostile_length_is_refused_without_allocating(length):
    fb = FrameBuffer(64 * 1024 * 1024)
    # a valid message first, so the bad header is found mid-buffer too
    data = encode.query("select 1") + b"Q" + struct.pack("!I", length) + b"select"
    tracemalloc.start()
    try:
        with pytest.raises(ProtocolViolation):
            fb.feed(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024, f"refusing a {length}-byte message allocated {peak} bytes"


def test_large_message_in_small_reads_costs_linear_time():
    """A big message (a large INSERT or Bind parameter, well under max_message_size)
    arriving in socket-sized reads must not be re-concatenated on every read: that is
    quadratic (32 MiB in 64 KiB reads copies ~8 GB) and runs on the event loop that
    serves every session. Linear handling takes a few milliseconds here."""
    import time

    size = 32 * 1024 * 1024
    message = b"Q" + struct.pack("!I", size + 4) + b"x" * (size - 1) + b"\x00"
    fb = FrameBuffer(64 * 1024 * 1024)
    frames = []
    start = time.perf_counter()
    for i in range(0, len(message), 65536):
        buf, got = fb.feed(message[i : i + 65536])
        frames += [(t, e - s) for t, s, e in got]
    elapsed = time.perf_counter() - start
    assert frames == [(ord("Q"), len(message))]
    assert elapsed < 1.0, f"feeding a 32 MiB message in 64 KiB reads took {elapsed:.2f}s"


@SETTINGS
@given(st.binary(max_size=64))
def test_framebuffer_arbitrary_bytes_never_crash(data):
    fb = FrameBuffer(1024)
    try:
        buf, frames = fb.feed(data)
    except ProtocolViolation:
        return
    for t, start, end in frames:
        assert 5 <= end - start <= 1025 and buf[start] == t


# ---------------------------------------------------------------- StartupBuffer

startup_params = st.dictionaries(ctext_nonempty, ctext, max_size=4)

startup_packets = st.one_of(
    st.just(encode.ssl_request()),
    st.just(struct.pack("!ii", 8, GSSENC_REQUEST_CODE)),
    st.builds(encode.cancel_request, int32, uint32),
    st.builds(encode.startup_message, startup_params),
)


def drain_startup(sb: StartupBuffer) -> list[bytes]:
    out = []
    while (packet := sb.next_packet()) is not None:
        out.append(packet)
    return out


@SETTINGS
@given(st.lists(startup_packets, max_size=5))
def test_startup_packets_reassemble_at_every_byte_boundary(packets):
    stream = b"".join(packets)
    want = [p[4:] for p in packets]
    for i in range(len(stream) + 1):
        sb = StartupBuffer()
        sb.feed(stream[:i])
        got = drain_startup(sb)
        sb.feed(stream[i:])
        got += drain_startup(sb)
        assert got == want
        assert sb.buffered == 0


@SETTINGS
@given(st.data(), st.lists(startup_packets, max_size=6))
def test_startup_packets_random_multi_splits(data, packets):
    stream = b"".join(packets)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    bounds = [0, *cuts, len(stream)]
    sb = StartupBuffer()
    got = []
    for a, b in zip(bounds, bounds[1:]):
        sb.feed(stream[a:b])
        got += drain_startup(sb)
    assert got == [p[4:] for p in packets]


def test_startup_buffer_keeps_bytes_after_a_packet():
    """What lets the handshake notice data sent after an SSLRequest before the answer."""
    sb = StartupBuffer()
    injected = encode.startup_message({"user": "mallory"})
    sb.feed(encode.ssl_request() + injected)
    assert sb.next_packet() == struct.pack("!i", SSL_REQUEST_CODE)
    assert sb.buffered == len(injected)
    assert sb.take_rest() == injected
    assert sb.buffered == 0


@pytest.mark.parametrize(
    "length",
    [0, 4, 7, MAX_STARTUP_PACKET + 1, 0xFFFFFFFF, 0x80000000, 0xFFFFFFF8, 1 << 30],
    ids=lambda n: f"len={n:#x}",
)
def test_startup_invalid_lengths(length):
    sb = StartupBuffer()
    sb.feed(struct.pack("!I", length)[:3])
    assert sb.next_packet() is None
    sb.feed(struct.pack("!I", length)[3:])
    tracemalloc.start()
    try:
        with pytest.raises(ProtocolViolation):
            sb.next_packet()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024


def test_startup_length_limits_accepted():
    sb = StartupBuffer()
    sb.feed(struct.pack("!II", 8, PROTOCOL_3_0))
    assert sb.next_packet() == struct.pack("!I", PROTOCOL_3_0)
    big = struct.pack("!II", MAX_STARTUP_PACKET, PROTOCOL_3_0) + b"\x01" * (MAX_STARTUP_PACKET - 8)
    sb.feed(big)
    assert sb.next_packet() == big[4:]


def test_startup_buffer_refuses_a_flood():
    sb = StartupBuffer()
    sb.feed(b"\x00" * MAX_STARTUP_PACKET)
    with pytest.raises(ProtocolViolation):
        sb.feed(b"\x00" * (MAX_STARTUP_PACKET + 1))


# ---------------------------------------------------------------- decoders: round trips


@SETTINGS
@given(ctext)
def test_query_round_trip(text):
    assert decode_query(body_of(encode.query(text))) == text


@SETTINGS
@given(ctext, ctext, st.lists(uint32, max_size=8))
def test_parse_round_trip(name, text, types):
    assert decode_parse(body_of(encode.parse(name, text, types))) == Parse(name, text, tuple(types))


@st.composite
def binds(draw):
    params = draw(st.lists(param_value, max_size=6))
    n_formats = draw(st.sampled_from(sorted({0, 1, len(params)})))
    formats = draw(st.lists(int16, min_size=n_formats, max_size=n_formats))
    results = draw(st.lists(int16, max_size=4))
    return draw(ctext), draw(ctext), params, formats, results


@SETTINGS
@given(binds())
def test_bind_round_trip(args):
    portal, statement, params, formats, results = args
    got = decode_bind(body_of(bind_msg(portal, statement, params, formats, results)))
    assert got == Bind(portal, statement, tuple(formats), tuple(params), tuple(results))


@SETTINGS
@given(ctext, int32)
def test_execute_round_trip(portal, max_rows):
    assert decode_execute(body_of(execute_msg(portal, max_rows))) == Execute(portal, max_rows)


@SETTINGS
@given(st.sampled_from("SP"), ctext)
def test_describe_and_close_round_trip(kind, name):
    assert decode_describe(body_of(describe_msg(kind, name))) == Describe(kind, name)
    assert decode_close(body_of(close_msg(kind, name))) == Close(kind, name)


@SETTINGS
@given(startup_params)
def test_startup_round_trip(params):
    packet = encode.startup_message(params)
    assert struct.unpack_from("!I", packet)[0] == len(packet)
    assert decode_startup(packet[4:]) == StartupPacket(3, 0, params)


@pytest.mark.parametrize("version,major,minor", [(PROTOCOL_3_0 + 2, 3, 2), (2 << 16, 2, 0), (1234 << 16 | 5679, 1234, 5679)])
def test_startup_version_split(version, major, minor):
    payload = struct.pack("!I", version) + b"user\x00u\x00\x00"
    assert decode_startup(payload) == StartupPacket(major, minor, {"user": "u"})


@SETTINGS
@given(
    st.text("0123456789ABCDEFPX", min_size=5, max_size=5),
    ctext,
    st.sampled_from(["ERROR", "FATAL", "PANIC"]),
    st.none() | ctext_nonempty,
    st.none() | ctext_nonempty,
    st.dictionaries(st.sampled_from("PpqWsdtcnFLR"), ctext, max_size=4),
)
def test_error_fields_round_trip(sqlstate, text, severity, detail, hint, extra):
    fields = decode_error_fields(
        body_of(encode.error_response(sqlstate, text, severity=severity, detail=detail, hint=hint, extra=extra))
    ).fields
    want = {"S": severity, "V": severity, "C": sqlstate, "M": text, **extra}
    if detail:
        want["D"] = detail
    if hint:
        want["H"] = hint
    assert fields == want
    notice = decode_error_fields(body_of(encode.notice_response(text, detail=detail)))
    assert (notice.severity, notice.sqlstate, notice.message) == ("NOTICE", "00000", text)


def test_error_fields_properties():
    e = decode_error_fields(body_of(encode.error_response("42501", "nope", severity="FATAL")))
    assert (e.severity, e.sqlstate, e.message) == ("FATAL", "42501", "nope")
    # V (non-localized severity) wins over a localized S
    e = decode_error_fields(b"SFATALE\x00VFATAL\x00C08P01\x00Mx\x00\x00")
    assert e.severity == "FATAL"
    assert decode_error_fields(b"\x00").fields == {}


@SETTINGS
@given(ctext, ctext)
def test_parameter_status_round_trip(name, value):
    assert decode_parameter_status(body_of(encode.parameter_status(name, value))) == (name, value)


@SETTINGS
@given(ctext, st.binary(max_size=64))
def test_sasl_initial_round_trip(mechanism, data):
    assert decode_sasl_initial(body_of(encode.sasl_initial_response(mechanism, data))) == (mechanism, data)


def test_sasl_initial_without_data():
    assert decode_sasl_initial(cstr("SCRAM-SHA-256") + struct.pack("!i", -1)) == ("SCRAM-SHA-256", None)


@SETTINGS
@given(st.lists(ctext_nonempty, max_size=4))
def test_auth_sasl_mechanisms_round_trip(names):
    assert decode_auth_sasl_mechanisms(body_of(encode.auth_sasl(names))) == names


@SETTINGS
@given(st.lists(ctext, max_size=4), ctext)
def test_cstring_sequence(parts, tail):
    body = b"".join(cstr(p) for p in parts) + tail.encode("utf-8")
    pos = 0
    for p in parts:
        got, pos = decode_cstring(body, pos)
        assert got == p
    if "\x00" not in tail and tail:
        with pytest.raises(ProtocolViolation):
            decode_cstring(body, pos)


def test_cstring_invalid_utf8():
    with pytest.raises(ProtocolViolation):
        decode_cstring(b"\xff\xfe\x00", 0)


# ---------------------------------------------------------------- decoders: hostile input

# Decoders that must consume their whole body: any strict prefix is a violation.
STRICT = {
    "query": (decode_query, lambda: encode.query("select $1")),
    "parse": (decode_parse, lambda: encode.parse("s1", "select $1", [23, 25])),
    "bind": (decode_bind, lambda: bind_msg("p", "s1", [b"42", None, b""], [0, 1, 0], [1])),
    "execute": (decode_execute, lambda: execute_msg("p", 10)),
    "describe": (decode_describe, lambda: describe_msg("S", "s1")),
    "close": (decode_close, lambda: close_msg("P", "p")),
    "startup": (decode_startup, lambda: encode.startup_message({"user": "u", "database": "d"})),
    "sasl_initial": (decode_sasl_initial, lambda: encode.sasl_initial_response("SCRAM-SHA-256", b"n,,n=,r=abc")),
}
# Decoders that read what is there (prefixes may decode to less).
LENIENT = {
    "error_fields": (decode_error_fields, lambda: encode.error_response("42601", "syntax error", detail="d")),
    "parameter_status": (decode_parameter_status, lambda: encode.parameter_status("TimeZone", "UTC")),
    "auth_sasl_mechanisms": (decode_auth_sasl_mechanisms, lambda: encode.auth_sasl(["SCRAM-SHA-256", "PLUS"])),
}
ALL_DECODERS = {**STRICT, **LENIENT}


def _body(name: str, make) -> bytes:
    whole = make()
    # a startup packet has a 4-byte length word and no type byte
    return whole[4:] if name == "startup" else body_of(whole)


@pytest.mark.parametrize("name", sorted(STRICT))
def test_strict_decoders_reject_every_truncation(name):
    decode, make = STRICT[name]
    body = _body(name, make)
    decode(body)  # the whole body decodes
    for i in range(len(body)):
        with pytest.raises(ProtocolViolation):
            decode(body[:i])


@pytest.mark.parametrize("name", sorted(LENIENT))
def test_lenient_decoders_on_every_truncation(name):
    decode, make = LENIENT[name]
    body = _body(name, make)
    decode(body)
    for i in range(len(body)):
        try:
            decode(body[:i])
        except ProtocolViolation:
            pass


@pytest.mark.parametrize("name", sorted(STRICT))
def test_strict_decoders_reject_trailing_bytes(name):
    decode, make = STRICT[name]
    with pytest.raises(ProtocolViolation):
        decode(_body(name, make) + b"\x00")


@pytest.mark.parametrize("name", sorted(ALL_DECODERS))
@FEW
@given(garbage=st.binary(max_size=96))
def test_decoders_on_arbitrary_bytes(name, garbage):
    """Arbitrary bytes decode to a value or raise ProtocolViolation; nothing else escapes."""
    decode, _ = ALL_DECODERS[name]
    try:
        decode(garbage)
    except ProtocolViolation:
        pass


@pytest.mark.parametrize("name", sorted(ALL_DECODERS))
@FEW
@given(data=st.data())
def test_decoders_on_mutated_valid_bodies(name, data):
    """Valid bodies with bytes flipped, inserted or cut: value or ProtocolViolation."""
    decode, make = ALL_DECODERS[name]
    body = bytearray(_body(name, make))
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "insert", "delete"]))
        pos = data.draw(st.integers(0, len(body)))
        if op == "flip" and pos < len(body):
            body[pos] = data.draw(st.integers(0, 255))
        elif op == "insert":
            body[pos:pos] = data.draw(st.binary(min_size=1, max_size=4))
        elif op == "delete" and pos < len(body):
            del body[pos]
    try:
        decode(bytes(body))
    except ProtocolViolation:
        pass


@pytest.mark.parametrize(
    "name,body",
    [
        ("parse", cstr("") + cstr("q") + struct.pack("!h", -1)),
        ("parse", cstr("") + cstr("q") + struct.pack("!h", 3) + b"\x00" * 4),
        ("bind", cstr("") + cstr("") + struct.pack("!h", -1)),
        ("bind", cstr("") + cstr("") + struct.pack("!hh", 0, -1) + struct.pack("!h", 0)),
        ("bind", cstr("") + cstr("") + struct.pack("!hhi", 0, 1, -2) + struct.pack("!h", 0)),
        ("bind", cstr("") + cstr("") + struct.pack("!hhi", 0, 1, 1 << 30) + struct.pack("!h", 0)),
        ("bind", cstr("") + cstr("") + struct.pack("!hhh", 2, 0, 0) + struct.pack("!h", 3) + struct.pack("!iii", -1, -1, -1) + struct.pack("!h", 0)),
        ("bind", cstr("") + cstr("") + struct.pack("!hh", 0, 0) + struct.pack("!h", -3)),
        ("sasl_initial", cstr("SCRAM-SHA-256") + struct.pack("!i", -5) + b"x"),
        ("sasl_initial", cstr("SCRAM-SHA-256") + struct.pack("!i", 1 << 30) + b"x"),
        ("describe", b"X" + cstr("s")),
        ("close", b""),
        ("startup", struct.pack("!I", PROTOCOL_3_0) + cstr("user") + cstr("a") + cstr("user") + cstr("b") + b"\x00"),
        ("startup", struct.pack("!I", PROTOCOL_3_0) + cstr("user") + b"\x00"),
        ("error_fields", b"Mno terminator"),
    ],
)
def test_decoders_reject_specific_garbage(name, body):
    decode, _ = ALL_DECODERS[name]
    with pytest.raises(ProtocolViolation):
        decode(body)


def test_decoders_accept_memoryview_bodies():
    """The messages module documents that decoders take 'bytes or memoryview'."""
    cases = [
        (decode_query, body_of(encode.query("select 1")), "select 1"),
        (decode_parse, body_of(encode.parse("s", "select 1")), Parse("s", "select 1", ())),
        (decode_execute, body_of(execute_msg("p", 5)), Execute("p", 5)),
        (decode_parameter_status, body_of(encode.parameter_status("a", "b")), ("a", "b")),
    ]
    for decode, body, want in cases:
        assert decode(memoryview(body)) == want, decode.__name__


def test_codes_in_special_startup_requests():
    assert struct.unpack("!ii", encode.ssl_request()) == (8, SSL_REQUEST_CODE)
    assert struct.unpack("!iiiI", encode.cancel_request(7, 0xFFFFFFFF)) == (16, CANCEL_REQUEST_CODE, 7, 0xFFFFFFFF)
