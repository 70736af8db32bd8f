"""Scripted playbooks against the sans-IO Relay: bytes in, exact bytes and commands out.

No network: each test feeds client bytes and fake server replies (built with the
encoders or raw frames) and checks precisely what the relay queued for the
server and for the client, what it asked the driver to do, and what the
``completed`` hook was told.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pgwarden.session.relay import (
    POISON_TEXT,
    CloseRequested,
    HoldRequested,
    Relay,
    StageFailed,
)
from pgwarden.session.statement import Kind, Protocol, SessionInfo, Statement
from pgwarden.session.verdict import ALLOW, Deny, Hold, Rewrite
from pgwarden.wire import encode
from pgwarden.wire.frames import ProtocolViolation
from pgwarden.wire.messages import decode_error_fields

# ---------------------------------------------------------------- message builders


def cstr(s: str) -> bytes:
    return s.encode("utf-8") + b"\x00"


def bind(portal: str = "", statement: str = "", params: list[bytes | None] | None = None) -> bytes:
    params = params or []
    body = cstr(portal) + cstr(statement) + struct.pack("!h", 0) + struct.pack("!h", len(params))
    for p in params:
        body += struct.pack("!i", -1) if p is None else struct.pack("!i", len(p)) + p
    return encode.message(b"B", body + struct.pack("!h", 0))


def execute(portal: str = "", max_rows: int = 0) -> bytes:
    return encode.message(b"E", cstr(portal) + struct.pack("!i", max_rows))


def describe(kind: str, name: str = "") -> bytes:
    return encode.message(b"D", kind.encode() + cstr(name))


def close(kind: str, name: str = "") -> bytes:
    return encode.message(b"C", kind.encode() + cstr(name))


def flush() -> bytes:
    return b"H\x00\x00\x00\x04"


def function_call(oid: int = 1598) -> bytes:
    # FunctionCall: oid, arg format codes, args, result format
    return encode.message(b"F", struct.pack("!Ihhh", oid, 0, 0, 0))


def row_description(*names: str) -> bytes:
    body = struct.pack("!h", len(names))
    for n in names:
        body += cstr(n) + struct.pack("!IhIhih", 0, 0, 25, -1, -1, 0)
    return encode.message(b"T", body)


def data_row(*values: bytes | None) -> bytes:
    body = struct.pack("!h", len(values))
    for v in values:
        body += struct.pack("!i", -1) if v is None else struct.pack("!i", len(v)) + v
    return encode.message(b"D", body)


def command_complete(tag: str) -> bytes:
    return encode.message(b"C", cstr(tag))


PARSE_COMPLETE = b"1\x00\x00\x00\x04"
BIND_COMPLETE = b"2\x00\x00\x00\x04"
CLOSE_COMPLETE = b"3\x00\x00\x00\x04"
NO_DATA = b"n\x00\x00\x00\x04"
PORTAL_SUSPENDED = b"s\x00\x00\x00\x04"
EMPTY_QUERY = b"I\x00\x00\x00\x04"
POISON_QUERY = encode.query(POISON_TEXT)
POISON_PARSE = encode.parse("pgwarden_denied", POISON_TEXT)
# What PostgreSQL answers to the poison text.
SYNTAX_ERROR = encode.error_response("42601", 'syntax error at or near "pgwarden"', extra={"P": "1"})


def rfq(status: str = "I") -> bytes:
    return encode.ready_for_query(status.encode())


def deny_error(deny: Deny) -> bytes:
    detail = deny.detail or (f'Refused by pgwarden rule "{deny.rule}".' if deny.rule else None)
    return encode.error_response(deny.sqlstate, deny.message, detail=detail, hint=deny.hint)


def messages(data: bytes) -> list[bytes]:
    """Split a stream into whole messages (for readable assertion failures)."""
    out, pos = [], 0
    while pos < len(data):
        size = struct.unpack_from("!I", data, pos + 1)[0] + 1
        out.append(data[pos : pos + size])
        pos += size
    assert pos == len(data)
    return out


# ---------------------------------------------------------------- fake policy

DENY = Deny('pgwarden: statement refused by rule "test.deny"', "42501", rule="test.deny")
DENY_EXEC = Deny("pgwarden: execution refused", "42501", rule="test.exec", hint="ask an admin")


class Policy:
    """evaluate(statement, first_stage): deny /*deny*/, deny /*deny-exec*/ at Execute,
    hold /*hold*/ (noting the next stage like the pipeline does), rewrite /*rewrite*/."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str | None, int]] = []
        self.statements: list[Statement] = []
        self.raise_on: str | None = None

    def __call__(self, stmt: Statement, first_stage: int):
        self.seen.append((stmt.kind, stmt.text, first_stage))
        self.statements.append(stmt)
        text = stmt.text or ""
        if self.raise_on and self.raise_on in text:
            raise RuntimeError("stage bug")
        if first_stage == 0 and "/*hold*/" in text and stmt.kind != Kind.PARSE:
            stmt.next_stage = 1
            return Hold(wait=lambda: None, reason="test hold", rule="test.hold")
        if "/*deny*/" in text:
            return DENY
        if "/*deny-exec*/" in text and stmt.kind == Kind.EXECUTE:
            return DENY_EXEC
        if "/*rewrite*/" in text:
            return Rewrite(text.replace("/*rewrite*/", "/*rewritten*/"), rule="test.rewrite")
        return ALLOW


class Harness:
    def __init__(self, **kwargs) -> None:
        self.policy = Policy()
        self.completed: list[Statement] = []
        self.session = SessionInfo(id="t1", user="alice", target="app", client_addr="127.0.0.1:1")
        self.relay = Relay(self.session, self.policy, self.completed.append, **kwargs)

    def client(self, data: bytes) -> tuple[bytes, bytes, list]:
        self.relay.client_data(data)
        return self._take()

    def server(self, data: bytes) -> tuple[bytes, bytes, list]:
        self.relay.server_data(data)
        return self._take()

    def _take(self) -> tuple[bytes, bytes, list]:
        to_server, to_client, commands = self.relay.take_output()
        return b"".join(bytes(x) for x in to_server), b"".join(bytes(x) for x in to_client), commands

    def done(self) -> list[tuple[str, str | None, str]]:
        return [(s.kind, s.text, s.status) for s in self.completed]


# ---------------------------------------------------------------- simple protocol


def test_simple_query_allowed_passes_untouched():
    h = Harness()
    q = encode.query("select 1 as x")
    to_server, to_client, commands = h.client(q)
    assert (to_server, to_client, commands) == (q, b"", [])
    assert h.policy.seen == [(Kind.QUERY, "select 1 as x", 0)]
    reply = row_description("x") + data_row(b"1") + command_complete("SELECT 1") + rfq("I")
    to_server, to_client, commands = h.server(reply)
    assert (to_server, to_client, commands) == (b"", reply, [])
    assert h.done() == [(Kind.QUERY, "select 1 as x", "ok")]
    assert h.completed[0].tag == "SELECT 1" and h.completed[0].protocol == Protocol.SIMPLE
    assert h.relay.idle


def test_simple_query_forwarded_bytes_are_the_client_bytes_even_when_split():
    h = Harness()
    q = encode.query("select 'a much longer statement text' as s")
    sent = b""
    for i in range(len(q)):
        to_server, to_client, _ = h.client(q[i : i + 1])
        sent += to_server
        assert to_client == b""
    assert sent == q
    assert len(h.policy.seen) == 1


def test_denied_simple_query_is_poisoned_and_the_error_replaced():
    h = Harness()
    h.client(encode.query("begin"))
    h.server(command_complete("BEGIN") + rfq("T"))
    assert h.session.txn_status == "T"

    to_server, to_client, commands = h.client(encode.query("delete from t /*deny*/"))
    assert to_server == POISON_QUERY
    assert (to_client, commands) == (b"", [])
    # the server fails the poison in the parser and aborts the transaction
    to_server, to_client, _ = h.server(SYNTAX_ERROR + rfq("E"))
    assert to_server == b""
    got = messages(to_client)
    assert got == [deny_error(DENY), rfq("E")]
    err = decode_error_fields(got[0][5:])
    assert err.sqlstate == "42501"
    assert err.message == DENY.message
    assert err.severity == "ERROR"
    assert err.fields["D"] == 'Refused by pgwarden rule "test.deny".'
    assert "pgwarden denied" not in to_client.decode("latin-1")  # the poison's own error never leaks
    assert h.session.txn_status == "E"
    assert h.done() == [(Kind.QUERY, "begin", "ok"), (Kind.QUERY, "delete from t /*deny*/", "denied")]


def test_denied_query_outside_a_transaction_reports_idle():
    h = Harness()
    h.client(encode.query("/*deny*/ select 1"))
    _, to_client, _ = h.server(SYNTAX_ERROR + rfq("I"))
    assert messages(to_client) == [deny_error(DENY), rfq("I")]
    assert h.relay.idle


def test_pipelined_simple_queries_with_a_deny_in_the_middle():
    h = Harness()
    q1, q2, q3 = encode.query("select 1"), encode.query("select 2 /*deny*/"), encode.query("select 3")
    to_server, _, _ = h.client(q1 + q2 + q3)
    assert to_server == q1 + POISON_QUERY + q3
    r1 = row_description("a") + data_row(b"1") + command_complete("SELECT 1") + rfq()
    r3 = row_description("a") + data_row(b"3") + command_complete("SELECT 1") + rfq()
    _, to_client, _ = h.server(r1 + SYNTAX_ERROR + rfq() + r3)
    assert to_client == r1 + deny_error(DENY) + rfq() + r3
    assert h.done() == [
        (Kind.QUERY, "select 1", "ok"),
        (Kind.QUERY, "select 2 /*deny*/", "denied"),
        (Kind.QUERY, "select 3", "ok"),
    ]


# ---------------------------------------------------------------- extended protocol


def test_extended_batch_with_denied_execute_and_a_pipelined_second_batch():
    h = Harness()
    p1 = encode.parse("", "select /*deny-exec*/ 1")
    b1, d1, e1 = bind(), describe("P"), execute()
    dropped = bind("", "") + execute() + close("S", "") + encode.query("select 'smuggled'") + flush()
    batch1 = p1 + b1 + d1 + e1 + dropped + encode.sync()
    p2, b2, e2 = encode.parse("s2", "select 2"), bind("p2", "s2", [b"x", None]), execute("p2")
    batch2 = p2 + b2 + describe("S", "s2") + e2 + encode.sync()

    to_server, to_client, commands = h.client(batch1 + batch2)
    assert messages(to_server) == messages(p1 + b1 + d1 + POISON_PARSE + encode.sync() + batch2)
    assert (to_client, commands) == (b"", [])
    # nothing after the denied Execute was evaluated until the Sync
    assert h.policy.seen == [
        (Kind.PARSE, "select /*deny-exec*/ 1", 0),
        (Kind.EXECUTE, "select /*deny-exec*/ 1", 0),
        (Kind.PARSE, "select 2", 0),
        (Kind.EXECUTE, "select 2", 0),
    ]
    assert h.policy.statements[3].params == (b"x", None)
    assert h.policy.statements[3].statement_name == "s2" and h.policy.statements[3].portal_name == "p2"

    reply1 = PARSE_COMPLETE + BIND_COMPLETE + row_description("?column?") + SYNTAX_ERROR + rfq()
    reply2 = (
        PARSE_COMPLETE
        + BIND_COMPLETE
        + encode.message(b"t", struct.pack("!h", 0))
        + row_description("?column?")
        + data_row(b"2")
        + command_complete("SELECT 1")
        + rfq()
    )
    _, to_client, _ = h.server(reply1 + reply2)
    assert messages(to_client) == messages(
        PARSE_COMPLETE + BIND_COMPLETE + row_description("?column?") + deny_error(DENY_EXEC) + rfq() + reply2
    )
    err = decode_error_fields(messages(to_client)[3][5:])
    assert (err.sqlstate, err.message, err.fields.get("H")) == ("42501", DENY_EXEC.message, "ask an admin")
    assert h.done() == [
        (Kind.PARSE, "select /*deny-exec*/ 1", "ok"),
        (Kind.EXECUTE, "select /*deny-exec*/ 1", "denied"),
        (Kind.PARSE, "select 2", "ok"),
        (Kind.EXECUTE, "select 2", "ok"),
    ]
    assert h.completed[-1].tag == "SELECT 1"
    assert h.relay.idle


def test_denied_parse_poisons_and_drops_until_sync():
    h = Harness()
    batch = encode.parse("s", "drop table t /*deny*/") + bind("", "s") + execute() + encode.sync()
    to_server, _, _ = h.client(batch)
    assert to_server == POISON_PARSE + encode.sync()
    assert h.policy.seen == [(Kind.PARSE, "drop table t /*deny*/", 0)]
    _, to_client, _ = h.server(SYNTAX_ERROR + rfq())
    assert to_client == deny_error(DENY) + rfq()
    assert h.done() == [(Kind.PARSE, "drop table t /*deny*/", "denied")]
    # the statement name was never registered
    h.client(bind("", "s") + execute() + encode.sync())
    assert h.policy.seen[-1] == (Kind.EXECUTE, None, 0)


def test_failing_parse_undoes_the_speculative_statement():
    h = Harness()
    to_server, _, _ = h.client(encode.parse("s1", "selec 1") + encode.sync())
    assert to_server == encode.parse("s1", "selec 1") + encode.sync()
    real_error = encode.error_response("42601", 'syntax error at or near "selec"')
    _, to_client, _ = h.server(real_error + rfq())
    assert to_client == real_error + rfq()  # real errors pass through untouched
    assert h.done() == [(Kind.PARSE, "selec 1", "error")]
    assert h.completed[0].error.sqlstate == "42601"

    h.client(bind("", "s1") + execute() + encode.sync())
    execute_stmt = h.policy.statements[-1]
    assert execute_stmt.kind == Kind.EXECUTE and execute_stmt.statement_name == "s1"
    assert execute_stmt.text is None
    h.server(encode.error_response("26000", 'prepared statement "s1" does not exist') + rfq())
    # The Bind failed: that is the failure of the Execute of its portal (not "skipped").
    assert h.done()[-1] == (Kind.EXECUTE, None, "error")
    assert h.completed[-1].error.sqlstate == "26000"

    # contrast: a Parse the server accepted is remembered
    h.client(encode.parse("s2", "select 2") + encode.sync())
    h.server(PARSE_COMPLETE + rfq())
    h.client(bind("", "s2") + execute() + encode.sync())
    assert h.policy.seen[-1] == (Kind.EXECUTE, "select 2", 0)


def test_failing_parse_in_a_batch_skips_the_rest_and_undoes_everything():
    h = Harness()
    batch = encode.parse("s3", "bad sql") + bind("p3", "s3") + execute("p3") + encode.sync()
    h.client(batch)
    # speculatively, the Execute was judged with the text being prepared
    assert h.policy.seen[-1] == (Kind.EXECUTE, "bad sql", 0)
    h.server(encode.error_response("42601", "syntax error") + rfq())
    assert h.done() == [(Kind.PARSE, "bad sql", "error"), (Kind.EXECUTE, "bad sql", "skipped")]
    h.client(bind("", "s3") + execute("p3") + encode.sync())
    assert h.policy.seen[-1][1] is None


def test_parse_of_an_existing_name_keeps_the_old_text_when_it_fails():
    h = Harness()
    h.client(encode.parse("s", "select 'old'") + encode.sync())
    h.server(PARSE_COMPLETE + rfq())
    h.client(encode.parse("s", "select 'new'") + encode.sync())
    h.server(encode.error_response("42P05", 'prepared statement "s" already exists') + rfq())
    h.client(bind("", "s") + execute() + encode.sync())
    assert h.policy.seen[-1] == (Kind.EXECUTE, "select 'old'", 0)


def test_failed_unnamed_parse_drops_the_previous_unnamed_statement():
    """PostgreSQL drops the unnamed statement *before* parsing the new one
    (exec_parse_message: drop_unnamed_stmt(), then pg_parse_query), so after a
    failing unnamed Parse there is no unnamed statement left on the server: a
    later Bind of "" fails, and the Execute must not be judged by a stale text."""
    h = Harness()
    h.client(encode.parse("", "select 'old'") + encode.sync())
    h.server(PARSE_COMPLETE + rfq())
    h.client(encode.parse("", "selec 'new'") + encode.sync())
    h.server(encode.error_response("42601", "syntax error") + rfq())
    h.client(bind("", "") + execute() + encode.sync())
    assert h.policy.seen[-1] == (Kind.EXECUTE, None, 0)


def test_close_statement_forgets_it_and_close_failure_restores_it():
    h = Harness()
    h.client(encode.parse("s", "select 1") + encode.sync())
    h.server(PARSE_COMPLETE + rfq())
    h.client(close("S", "s") + encode.sync())
    h.server(CLOSE_COMPLETE + rfq())
    h.client(bind("", "s") + execute() + encode.sync())
    assert h.policy.seen[-1] == (Kind.EXECUTE, None, 0)
    h.server(encode.error_response("26000", "no such statement") + rfq())

    h.client(encode.parse("t", "select 't'") + encode.sync())
    h.server(PARSE_COMPLETE + rfq())
    # a batch where an earlier message fails: the Close is discarded by the server, so undone
    h.client(bind("", "missing") + close("S", "t") + encode.sync())
    h.server(encode.error_response("26000", "no such statement") + rfq())
    h.client(bind("", "t") + execute() + encode.sync())
    assert h.policy.seen[-1] == (Kind.EXECUTE, "select 't'", 0)


def test_describe_replies_and_portal_suspended():
    h = Harness()
    h.client(
        encode.parse("s", "select generate_series(1, 3)")
        + describe("S", "s")
        + bind("c", "s")
        + execute("c", 2)
        + execute("c", 2)
        + encode.sync()
    )
    reply = (
        PARSE_COMPLETE
        + encode.message(b"t", struct.pack("!h", 0))
        + row_description("g")
        + BIND_COMPLETE
        + data_row(b"1")
        + data_row(b"2")
        + PORTAL_SUSPENDED
        + data_row(b"3")
        + command_complete("SELECT 1")
        + rfq()
    )
    _, to_client, _ = h.server(reply)
    assert to_client == reply
    assert [s for _, _, s in h.done()] == ["ok", "ok", "ok"]
    assert h.completed[-1].tag == "SELECT 1"
    assert h.relay.idle


# ---------------------------------------------------------------- hot path


def result_stream(n_rows: int, width: int = 7) -> bytes:
    rows = b"".join(
        data_row(str(i).encode() * (i % width), None if i % 5 == 0 else b"", b"\x00\xff" * (i % 3))
        for i in range(n_rows)
    )
    return row_description("a", "b", "c") + rows + command_complete(f"SELECT {n_rows}") + rfq()


def test_datarows_pass_byte_identical_at_every_split():
    stream = result_stream(40)
    q = encode.query("select a, b, c from t")
    for i in range(len(stream) + 1):
        h = Harness()
        h.client(q)
        out = []
        for chunk in (stream[:i], stream[i:]):
            _, to_client, commands = h.server(chunk)
            assert commands == []
            out.append(to_client)
        assert b"".join(out) == stream, f"split at {i}"
        assert h.done() == [(Kind.QUERY, "select a, b, c from t", "ok")]
        assert h.completed[0].tags == ["SELECT 40"]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), st.integers(0, 60))
def test_datarows_pass_byte_identical_at_random_multi_splits(data, n_rows):
    notice = encode.notice_response("a notice in the middle")
    stream = result_stream(n_rows)
    # NoticeResponse and NotificationResponse may arrive anywhere
    cut = data.draw(st.integers(1, n_rows + 1))
    msgs = messages(stream)
    msgs.insert(cut, notice)
    msgs.insert(cut, encode.message(b"A", struct.pack("!i", 42) + cstr("chan") + cstr("payload")))
    stream = b"".join(msgs)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=30)))
    bounds = [0, *cuts, len(stream)]
    h = Harness()
    h.client(encode.query("select"))
    out = b""
    for a, b in zip(bounds, bounds[1:]):
        _, to_client, _ = h.server(stream[a:b])
        out += to_client
    assert out == stream
    assert h.completed[0].tags == [f"SELECT {n_rows}"]


def test_unsplit_stream_is_forwarded_without_copies():
    """One complete server chunk with nothing to replace goes out as the same object."""
    h = Harness()
    h.client(encode.query("select"))
    stream = result_stream(10)
    h.relay.server_data(stream)
    assert len(h.relay.to_client) == 1 and h.relay.to_client[0] is stream


# ---------------------------------------------------------------- client -> server property

TEXTS = ["select 1", "select /*deny*/ 1", "select /*hold*/ 2", "insert into t values (1)", ""]

client_messages = st.one_of(
    st.builds(lambda t: ("Q", encode.query(t)), st.sampled_from(TEXTS)),
    st.builds(lambda n, t: ("P", encode.parse(n, t)), st.sampled_from(["", "a"]), st.sampled_from(TEXTS)),
    st.builds(lambda p, n: ("B", bind(p, n, [b"1"])), st.sampled_from(["", "p"]), st.sampled_from(["", "a"])),
    st.builds(lambda p: ("E", execute(p)), st.sampled_from(["", "p"])),
    st.builds(lambda k, n: ("D", describe(k, n)), st.sampled_from("SP"), st.sampled_from(["", "a", "p"])),
    st.builds(lambda k, n: ("C", close(k, n)), st.sampled_from("SP"), st.sampled_from(["", "a", "p"])),
    st.just(("S", encode.sync())),
    st.just(("H", flush())),
    st.just(("F", function_call())),
)


def expected_to_server(msgs: list[tuple[str, bytes]]) -> bytes:
    """Reference model: denied Query/FunctionCall -> poison Query; denied Parse -> poison
    Parse and nothing more until Sync; everything else byte for byte, except an Execute
    whose statement or portal name was re-Parsed / re-bound in an earlier request while the
    relay still knew it (no server replies arrive here, so that stays unanswered): refused
    with a poison Parse, like a denial (see Relay._on_execute)."""
    out, discarding = [], False
    request, request_open = 0, False
    statements: set[str] = set()  # named statements the relay knows
    portals: dict[str, str] = {}  # portal -> statement name
    replacing: dict[str, int] = {}  # statement name -> request of its unanswered re-Parse
    rebinding: dict[str, int] = {}  # portal -> request of its unanswered re-Bind

    def open_request() -> int:
        nonlocal request, request_open
        if not request_open:
            request += 1
            request_open = True
        return request

    for kind, m in msgs:
        if kind in ("Q", "F"):  # a Query or FunctionCall is a request of its own
            request += 1
            request_open = False
        elif kind == "S":
            if not request_open:
                request += 1
            request_open = False
        elif kind == "H":
            request_open = False  # a Flush ends the request (Relay._client_message)
        else:
            open_request()
        if discarding and kind != "S":
            continue
        if kind == "S":
            discarding = False
            out.append(m)
        elif kind == "F" or (kind == "Q" and b"/*deny*/" in m):
            out.append(POISON_QUERY)
        elif kind == "P" and b"/*deny*/" in m:
            out.append(POISON_PARSE)
            discarding = True
        elif kind == "P":
            name = m[5:m.index(b"\x00", 5)].decode()
            if name:
                if name in statements:
                    replacing[name] = request
                statements.add(name)
            out.append(m)
        elif kind == "B":
            portal_end = m.index(b"\x00", 5)
            portal = m[5:portal_end].decode()
            name = m[portal_end + 1:m.index(b"\x00", portal_end + 1)].decode()
            if portal and portal in portals:
                rebinding[portal] = request
            portals[portal] = name
            out.append(m)
        elif kind == "E":
            portal = m[5:m.index(b"\x00", 5)].decode()
            refused = portal in rebinding and rebinding[portal] != request
            if not refused and portal in portals:
                name = portals[portal]
                refused = name in replacing and replacing[name] != request
            if refused:
                out.append(POISON_PARSE)
                discarding = True
            else:
                out.append(m)
        elif kind == "C":
            target, name = m[5:6], m[6:m.index(b"\x00", 6)].decode()
            (statements.discard(name) if target == b"S" else portals.pop(name, None))
            out.append(m)
        else:
            out.append(m)
    return b"".join(out)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), st.lists(client_messages, max_size=25))
def test_client_stream_matches_the_model_at_random_splits(data, msgs):
    """Allowed messages go out byte-identical and in order however the stream is cut;
    holds (resumed with ALLOW as soon as they are reported) change nothing."""
    stream = b"".join(m for _, m in msgs)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    bounds = [0, *cuts, len(stream)]
    h = Harness()
    sent = b""
    holds = 0
    for a, b in zip(bounds, bounds[1:]):
        to_server, to_client, commands = h.client(stream[a:b])
        sent += to_server
        assert to_client == b""
        while commands:
            assert all(isinstance(c, HoldRequested) for c in commands), commands
            holds += len(commands)
            h.relay.resume(ALLOW)
            to_server, _, commands = h._take()
            sent += to_server
        assert not h.relay.held
    assert sent == expected_to_server(msgs)
    assert h.relay.queued_bytes == 0


# ---------------------------------------------------------------- server side details


def test_parameter_status_rewrite_hook():
    def rewrite(name: str, value: str) -> str | None:
        return "alice" if name == "session_authorization" else None

    stream = (
        encode.parameter_status("session_authorization", "app")
        + encode.parameter_status("TimeZone", "UTC")
        + command_complete("SET")
        + rfq()
    )
    want = (
        encode.parameter_status("session_authorization", "alice")
        + encode.parameter_status("TimeZone", "UTC")
        + command_complete("SET")
        + rfq()
    )
    for i in range(len(stream) + 1):
        h = Harness(rewrite_parameter=rewrite)
        h.client(encode.query("set session authorization default"))
        out = h.server(stream[:i])[1] + h.server(stream[i:])[1]
        assert out == want, f"split at {i}"
        # the relay remembers what the server really said
        assert h.session.server_params == {"session_authorization": "app", "TimeZone": "UTC"}


def test_parameter_status_passes_without_hook():
    h = Harness()
    h.client(encode.query("set timezone = 'UTC'"))
    stream = encode.parameter_status("TimeZone", "UTC") + command_complete("SET") + rfq()
    assert h.server(stream)[1] == stream


@pytest.mark.parametrize(
    "bad",
    [
        encode.auth_ok(),
        encode.backend_key_data(1, 2),
        encode.negotiate_protocol_version(0, []),
        b"Z\x00\x00\x00\x03",
        b"D\x00\x00\x00\x00",
    ],
    ids=["auth", "backend-key", "negotiate", "short-length", "zero-length"],
)
def test_server_protocol_violations(bad):
    h = Harness()
    h.client(encode.query("select 1"))
    with pytest.raises(ProtocolViolation):
        h.relay.server_data(bad)


def test_fatal_error_without_anything_pending_passes_through():
    h = Harness()
    fatal = encode.error_response("57P01", "terminating connection due to administrator command", severity="FATAL")
    assert h.server(fatal)[1] == fatal


# ---------------------------------------------------------------- special client messages


def test_function_call_is_denied():
    h = Harness()
    to_server, to_client, commands = h.client(function_call())
    assert to_server == POISON_QUERY
    assert (to_client, commands) == (b"", [])
    assert h.policy.seen == []  # refused without asking the policy
    _, to_client, _ = h.server(SYNTAX_ERROR + rfq())
    got = messages(to_client)
    assert got[1] == rfq()
    err = decode_error_fields(got[0][5:])
    assert err.sqlstate == "0A000"
    assert "fast-path function calls are refused" in err.message
    assert h.done() == [(Kind.FUNCTION_CALL, None, "denied")]


def test_terminate_requests_close_and_stops_processing():
    h = Harness()
    to_server, _, commands = h.client(encode.terminate() + encode.query("select 'after terminate'"))
    assert to_server == encode.terminate()
    assert commands == [CloseRequested("client sent Terminate")]
    assert h.relay.closed
    assert h.policy.seen == []


@pytest.mark.parametrize(
    "data",
    [
        encode.message(b"?", b""),
        encode.message(b"\x00", b""),
        encode.message(b"p", b"password after login\x00"),
        encode.message(b"Q", b"no terminator"),
        encode.message(b"Q", b"two\x00strings\x00"),
        encode.message(b"P", b"name\x00"),
        encode.message(b"B", b""),
        encode.message(b"B", b"\x00"),
        encode.message(b"E", b""),
        encode.message(b"C", b""),
        encode.message(b"C", b"S"),
        b"Q" + struct.pack("!I", 0xFFFFFFFF),
        b"Q" + struct.pack("!I", 1 << 30),
        b"Q" + struct.pack("!I", 3),
    ],
    ids=[
        "unknown-type",
        "nul-type",
        "password",
        "query-unterminated",
        "query-trailing",
        "parse-truncated",
        "bind-empty",
        "bind-portal-only",
        "execute-empty",
        "close-empty",
        "close-no-name",
        "negative-length",
        "1GiB-length",
        "short-length",
    ],
)
def test_malformed_client_messages_raise_protocol_violation(data):
    """client_data documents ProtocolViolation for a malformed stream; anything else
    would reach the driver's internal-error path (XX000) instead of 08P01."""
    h = Harness()
    with pytest.raises(ProtocolViolation):
        h.client(data)


# ---------------------------------------------------------------- hold


def test_hold_queues_later_messages_until_resume_allow():
    h = Harness()
    q1 = encode.query("select /*hold*/ 1")
    q2 = encode.query("select 2")
    to_server, to_client, commands = h.client(q1 + q2)
    assert (to_server, to_client) == (b"", b"")
    assert len(commands) == 1 and isinstance(commands[0], HoldRequested)
    assert commands[0].statement.text == "select /*hold*/ 1"
    assert commands[0].hold.rule == "test.hold"
    assert h.relay.held
    assert h.relay.queued_bytes == len(q2)
    assert h.policy.seen == [(Kind.QUERY, "select /*hold*/ 1", 0)]  # q2 not evaluated yet

    # more input keeps queueing; queued_bytes counts complete messages only (a
    # partial frame is bounded by max_message_size and must be let in to finish,
    # or a large message would pause reading forever)
    q3 = encode.query("select 3")
    assert h.client(q3 + q3[:4]) == (b"", b"", [])
    assert h.relay.queued_bytes == len(q2) + len(q3)
    # the upstream side keeps flowing while held
    notice = encode.notice_response("still here")
    assert h.server(notice)[1] == notice

    h.relay.resume(ALLOW)
    to_server, _, commands = h._take()
    assert to_server == q1 + q2 + q3
    assert commands == []
    assert not h.relay.held
    # evaluation continued after the stage that held
    assert h.policy.seen[1:] == [(Kind.QUERY, "select /*hold*/ 1", 1), (Kind.QUERY, "select 2", 0), (Kind.QUERY, "select 3", 0)]
    assert h.client(q3[4:])[0] == q3


def test_hold_resume_with_deny_sends_poison():
    h = Harness()
    q2 = encode.query("select 2")
    h.client(encode.query("update t set x = 1 /*hold*/") + q2)
    assert h.relay.held
    deny = Deny("canceling statement due to user request", "57014", rule="client.cancel")
    h.relay.resume(deny)
    to_server, _, _ = h._take()
    assert to_server == POISON_QUERY + q2
    _, to_client, _ = h.server(SYNTAX_ERROR + rfq() + command_complete("SELECT 1") + rfq())
    got = messages(to_client)
    assert got[0] == deny_error(deny)
    assert decode_error_fields(got[0][5:]).sqlstate == "57014"
    assert h.done() == [(Kind.QUERY, "update t set x = 1 /*hold*/", "denied"), (Kind.QUERY, "select 2", "ok")]


def test_hold_at_execute_resumed_with_deny_drops_until_sync():
    h = Harness()
    p, b, e = encode.parse("", "select /*hold*/ 1"), bind(), execute()
    after = bind() + execute() + encode.sync() + encode.query("select 'next'")
    to_server, _, commands = h.client(p + b + e + after)
    assert to_server == p + b
    assert isinstance(commands[0], HoldRequested) and commands[0].statement.kind == Kind.EXECUTE
    h.relay.resume(DENY)
    to_server, _, _ = h._take()
    assert to_server == POISON_PARSE + encode.sync() + encode.query("select 'next'")


def test_hold_resumed_with_another_hold_stays_held():
    h = Harness()
    h.client(encode.query("select /*hold*/ 1") + encode.query("select 2"))
    h.relay.resume(Hold(wait=lambda: None, reason="second look"))
    to_server, _, commands = h._take()
    assert to_server == b"" and h.relay.held
    assert isinstance(commands[0], HoldRequested) and commands[0].hold.reason == "second look"
    h.relay.resume(ALLOW)
    assert h._take()[0] == encode.query("select /*hold*/ 1") + encode.query("select 2")


def test_resume_without_hold_is_a_no_op():
    h = Harness()
    h.relay.resume(ALLOW)
    assert h._take() == (b"", b"", [])


# ---------------------------------------------------------------- rewrite and stage failure


def test_rewrite_replaces_query_and_parse_text_but_never_execute():
    h = Harness()
    to_server, _, _ = h.client(encode.query("select /*rewrite*/ 1"))
    assert to_server == encode.query("select /*rewritten*/ 1")
    h.server(command_complete("SELECT 1") + rfq())
    assert h.completed[-1].text == "select /*rewritten*/ 1"

    to_server, _, _ = h.client(encode.parse("s", "select /*rewrite*/ $1", [23]) + encode.sync())
    assert to_server == encode.parse("s", "select /*rewritten*/ $1", [23]) + encode.sync()


def test_stage_exception_fails_closed():
    h = Harness()
    h.policy.raise_on = "boom"
    to_server, _, commands = h.client(encode.query("select 'boom'"))
    assert to_server == POISON_QUERY
    assert len(commands) == 1 and isinstance(commands[0], StageFailed)
    assert isinstance(commands[0].error, RuntimeError)
    _, to_client, _ = h.server(SYNTAX_ERROR + rfq())
    assert decode_error_fields(messages(to_client)[0][5:]).sqlstate == "XX000"


# ---------------------------------------------------------------- completed hook


def test_completed_hook_statuses_and_tags():
    h = Harness()
    # ok, with the tag of each statement of a multi-statement Query
    h.client(encode.query("select 1; select 2"))
    h.server(
        row_description("a") + data_row(b"1") + command_complete("SELECT 1")
        + row_description("a") + data_row(b"2") + command_complete("SELECT 1") + rfq()
    )
    # error
    h.client(encode.query("select 1/0"))
    div0 = encode.error_response("22012", "division by zero")
    _, to_client, _ = h.server(div0 + rfq())
    assert to_client == div0 + rfq()
    # denied
    h.client(encode.query("select /*deny*/"))
    h.server(SYNTAX_ERROR + rfq())
    # extended: error at the first Execute, the second one is skipped
    h.client(
        encode.parse("z", "select 1/$1::int")
        + bind("", "z", [b"0"])
        + execute()
        + bind("", "z", [b"1"])
        + execute()
        + encode.sync()
    )
    h.server(PARSE_COMPLETE + BIND_COMPLETE + div0 + rfq())
    # empty query
    h.client(encode.query(""))
    h.server(EMPTY_QUERY + rfq())
    # insert with a tag through the extended protocol
    h.client(encode.parse("", "insert into t values (1)") + bind() + execute() + encode.sync())
    h.server(PARSE_COMPLETE + BIND_COMPLETE + command_complete("INSERT 0 1") + rfq())

    assert h.done() == [
        (Kind.QUERY, "select 1; select 2", "ok"),
        (Kind.QUERY, "select 1/0", "error"),
        (Kind.QUERY, "select /*deny*/", "denied"),
        (Kind.PARSE, "select 1/$1::int", "ok"),
        (Kind.EXECUTE, "select 1/$1::int", "error"),
        (Kind.EXECUTE, "select 1/$1::int", "skipped"),
        (Kind.QUERY, "", "ok"),
        (Kind.PARSE, "insert into t values (1)", "ok"),
        (Kind.EXECUTE, "insert into t values (1)", "ok"),
    ]
    by_text = h.completed
    assert by_text[0].tags == ["SELECT 1", "SELECT 1"]
    assert by_text[1].error is not None and by_text[1].error.sqlstate == "22012"
    assert by_text[2].verdict == DENY and by_text[2].tags == []
    assert by_text[4].error.message == "division by zero" and by_text[4].params == (b"0",)
    assert by_text[5].params == (b"1",)
    assert by_text[8].tag == "INSERT 0 1"
    assert all(s.duration_ns >= 0 for s in by_text)
    assert h.relay.idle and h.relay.pending_statements() == []


def test_request_numbers_group_a_batch():
    h = Harness()
    h.client(encode.query("select 1"))
    h.client(encode.parse("", "select 2") + bind() + execute() + encode.sync())
    h.client(encode.parse("", "select 3") + bind() + execute() + flush())
    h.client(execute() + encode.sync())
    kinds = [s.kind for s in h.policy.statements]
    assert kinds == [Kind.QUERY, Kind.PARSE, Kind.EXECUTE, Kind.PARSE, Kind.EXECUTE, Kind.EXECUTE]
    r = [s.request for s in h.policy.statements]
    # Sync and Flush end a request; a Query is a request of its own
    assert r[0] < r[1] == r[2] < r[3] == r[4] < r[5]


def test_transaction_status_follows_ready_for_query():
    h = Harness()
    h.client(encode.query("begin"))
    h.server(command_complete("BEGIN") + rfq("T"))
    assert h.relay.txn_status == "T" and not h.relay.idle
    h.client(encode.query("commit"))
    h.server(command_complete("COMMIT") + rfq("I"))
    assert h.relay.txn_status == "I" and h.relay.idle


def test_statement_sees_the_session():
    h = Harness()
    h.client(encode.query("select 1"))
    stmt = h.policy.statements[0]
    assert stmt.session is h.session and stmt.protocol == Protocol.SIMPLE
    assert h.relay.pending_statements() == [stmt]
