"""Differential test: the compiled relay loops (``pgwarden.session._speedups``)
against their pure-Python specification.

``ClientFastPath.client_data`` (fastpath.py) and ``ReplyTracker.server_data``
(replies.py) are the reference; ``_speedups.client_data`` / ``server_data``
must behave identically. Two relays are driven through the same seeded random
scenarios -- pipelined simple and extended-protocol requests, policy verdicts
(allow, deny, hold then resume, rewrite, a stage that raises), server replies
from a small simulated PostgreSQL (rows, errors, poison errors, discarded
batches, notices, out-of-step and malformed replies), every stream cut into
random chunks (inside headers, inside DataRows) -- one through each
implementation, and after every call the test compares everything observable:
the bytes (and chunking) sent each way, commands, every statement's fields,
the expected-reply queue, the prepared-statement and portal maps, buffered
input, transaction status and any exception raised.

The pure-Python side is called explicitly, so the test also runs with
PGWARDEN_PURE_PYTHON=1; it is skipped only when the extension is not built.
"""

from __future__ import annotations

import importlib.machinery
import os
import random
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from pgwarden.session.fastpath import ClientFastPath
from pgwarden.session.relay import (
    POISON_TEXT,
    CloseRequested,
    HoldRequested,
    Relay,
    StageFailed,
)
from pgwarden.session.replies import _MISSING, ReplyTracker
from pgwarden.session.statement import Kind, SessionInfo, Statement
from pgwarden.session.verdict import ALLOW, Deny, Hold, Rewrite
from pgwarden.wire import encode
from pgwarden.wire.frames import ProtocolViolation

_SESSION_DIR = Path(__file__).resolve().parent.parent / "pgwarden" / "session"
_BUILT = [p for s in importlib.machinery.EXTENSION_SUFFIXES for p in _SESSION_DIR.glob("_speedups" + s)]

try:
    from pgwarden.session import _speedups
except ImportError as exc:
    if _BUILT:  # built but unusable (e.g. out of step with replies.py): that is a failure, not a skip
        raise ImportError(f"pgwarden.session._speedups is built ({_BUILT[0].name}) but does not import: {exc}") from exc
    pytest.skip("compiled accelerator not built (no C compiler)", allow_module_level=True)

PURE = (ClientFastPath.client_data, ReplyTracker.server_data)
FAST = (_speedups.client_data, _speedups.server_data)

# ---------------------------------------------------------------- the policy


DENY = Deny('pgwarden: statement refused by rule "test.deny"', "42501", rule="test.deny")
DENY_EXEC = Deny("pgwarden: execution refused", "42501", rule="test.exec", hint="ask an admin")


class Policy:
    """Deterministic verdicts from markers in the text (as tests/test_relay.py)."""

    def __init__(self) -> None:
        self.statements: list[Statement] = []

    def __call__(self, stmt: Statement, first_stage: int):
        self.statements.append(stmt)
        text = stmt.text or ""
        if "/*raise*/" in text:
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
        if "/*mask*/" in text and stmt.kind != Kind.PARSE:
            stmt.mask = FakeMask()  # the relay Describes a masked Execute's portal first
        return ALLOW


class FakeMask:
    """A masking plan source whose rewriter replaces every DataRow by a one-column row "****"."""

    def result(self, description: bytes):
        return FakeRewriter()

    def copy_out(self, response: bytes):
        return None

    def scrub(self, message: bytes):
        return None


class FakeRewriter:
    def data_rows(self, buf: bytes, pos: int, end: int, out: list) -> int:
        while end - pos >= 5 and buf[pos] == 68:
            size = struct.unpack_from("!I", buf, pos + 1)[0] + 1
            if size > end - pos:
                break
            out.append(msg(b"D", struct.pack("!hi", 1, 4) + b"****"))
            pos += size
        return pos


def rewrite_parameter(name: str, value: str) -> str | None:
    return "pgwarden" if name == "application_name" else None


# ---------------------------------------------------------------- message builders


def msg(t: bytes, body: bytes = b"") -> bytes:
    return t + struct.pack("!I", len(body) + 4) + body


def cstr(s: str | bytes) -> bytes:
    return (s.encode("utf-8") if isinstance(s, str) else s) + b"\x00"


TEXTS = [
    "select 1",
    "select $1::int",
    "begin",
    "commit",
    "select 'é€'",
    "delete from t /*deny*/",
    "select 2 /*hold*/",
    "select 3 /*rewrite*/",
    "select 4 /*raise*/",
    "select 5 /*deny-exec*/",
    "update t set a = 1 /*hold*/ /*deny*/",
    "select 6 /*mask*/",
    "select 7 /*mask*/ /*hold*/",
    "",
]
NAMES = ["", "s1", "s2", "pgwarden_denied"]

# Malformed input ends a scenario (the driver closes the session), so only some
# scenarios get any: run_scenario sets this.
MALFORMED = [False]


def roll(rng: random.Random) -> float:
    """A random number in [0, 1); below 0.1 (where builders put malformed variants) only in a malformed scenario."""
    r = rng.random()
    return r if MALFORMED[0] else 0.1 + 0.9 * r
PORTALS = ["", "p1", "p2"]


def random_text(rng: random.Random) -> bytes:
    r = roll(rng)
    if r < 0.04:
        return b"select \xff\xfe"  # invalid UTF-8
    if r < 0.06:
        return b"select \xc3"  # truncated UTF-8
    return rng.choice(TEXTS).encode("utf-8")


def query(rng: random.Random) -> bytes:
    text = random_text(rng)
    r = roll(rng)
    if r < 0.03:
        return msg(b"Q", text)  # unterminated
    if r < 0.05:
        return msg(b"Q", text + b"\x00junk\x00")  # trailing bytes
    if r < 0.06:
        return msg(b"Q", b"")  # empty body
    if r < 0.07:
        return msg(b"Q", b"select\x00 1\x00")  # NUL inside
    return msg(b"Q", text + b"\x00")


def parse(rng: random.Random) -> bytes:
    name = rng.choice(NAMES[:3]).encode()
    text = random_text(rng)
    types = [rng.choice([0, 23, 25]) for _ in range(rng.randint(0, 2))]
    r = roll(rng)
    if r < 0.03:
        return msg(b"P", cstr(name) + cstr(text) + struct.pack("!h", 3))  # wrong type count
    if r < 0.05:
        return msg(b"P", cstr(name) + text)  # unterminated
    return msg(b"P", cstr(name) + cstr(text) + struct.pack("!h", len(types)) + b"".join(struct.pack("!I", t) for t in types))


def bind(rng: random.Random) -> bytes:
    portal = rng.choice(PORTALS).encode()
    name = rng.choice(NAMES + ["nope"]).encode()
    params = [rng.choice([None, b"1", b"hello", b"\x00\x01"]) for _ in range(rng.randint(0, 2))]
    r = roll(rng)
    if r < 0.02:
        return msg(b"B", b"")  # no names at all
    if r < 0.04:
        return msg(b"B", cstr(portal) + name)  # unterminated statement name
    if r < 0.05:
        return msg(b"B", b"\xff\x00\x00")  # invalid UTF-8 portal name
    body = cstr(portal) + cstr(name) + struct.pack("!hh", 0, len(params))
    for p in params:
        body += struct.pack("!i", -1) if p is None else struct.pack("!i", len(p)) + p
    return msg(b"B", body + struct.pack("!h", 0))


def execute(rng: random.Random) -> bytes:
    r = roll(rng)
    if r < 0.03:
        return msg(b"E", b"")  # shorter than its contents
    if r < 0.05:
        return msg(b"E", b"p1")  # unterminated portal name
    return msg(b"E", cstr(rng.choice(PORTALS + ["nope"])) + struct.pack("!i", rng.choice([0, 0, 1])))


def describe(rng: random.Random) -> bytes:
    return msg(b"D", rng.choice([b"S", b"P"]) + cstr(rng.choice(NAMES[:3] + PORTALS[1:])))


def close(rng: random.Random) -> bytes:
    if roll(rng) < 0.05:
        return msg(b"C", b"Xx\x00")  # neither 'S' nor 'P'
    return msg(b"C", rng.choice([b"S", b"P"]) + cstr(rng.choice(NAMES[:3] + PORTALS[1:])))


SYNC = msg(b"S")
FLUSH = msg(b"H")


def extended_batch(rng: random.Random) -> bytes:
    parts = []
    for _ in range(rng.randint(1, 3)):
        if rng.random() < 0.5:
            parts.append(parse(rng))
        parts.append(bind(rng))
        if rng.random() < 0.4:
            parts.append(describe(rng))
        parts.append(execute(rng))
        if rng.random() < 0.1:
            parts.append(close(rng))
    r = rng.random()
    parts.append(SYNC if r < 0.85 else FLUSH if r < 0.95 else b"")
    return b"".join(parts)


def client_batch(rng: random.Random, max_size: int) -> bytes:
    """One chunk's worth of client requests, often pipelined."""
    parts = []
    for _ in range(rng.choice([1, 1, 1, 2, 3, 5])):
        r = rng.random()
        if r < 0.4:
            parts.append(query(rng))
        elif r < 0.85:
            parts.append(extended_batch(rng))
        elif r < 0.89:
            parts.append(msg(b"d", b"copy data") + msg(b"c"))
        elif r < 0.91:
            parts.append(msg(b"f", cstr("client gave up")))
        elif r < 0.94:
            parts.append(msg(b"F", struct.pack("!Ihhh", 1598, 0, 0, 0)))  # FunctionCall: always refused
        elif r < 0.98:
            parts.append(FLUSH)
        else:
            parts.append(msg(b"X"))  # Terminate
    if MALFORMED[0] and rng.random() < 0.3:
        parts.insert(
            rng.randint(0, len(parts)),
            rng.choice(
                [
                    msg(b"?", b"x"),  # unknown type
                    b"Q" + struct.pack("!I", rng.choice([0, 3])),  # length below 4
                    b"P" + struct.pack("!I", max_size + 1) + b"x",  # above the limit
                ]
            ),
        )
    if MALFORMED[0] and rng.random() < 0.1:
        parts.append(msg(b"Q", b"select 1\x00")[: rng.randint(1, 10)])  # never finished: misframes what follows
    return b"".join(parts)


# ---------------------------------------------------------------- a small simulated PostgreSQL


def row_description() -> bytes:
    return msg(b"T", struct.pack("!h", 1) + cstr("a") + struct.pack("!IhIhih", 0, 0, 25, -1, -1, 0))


def data_row(rng: random.Random) -> bytes:
    value = bytes(rng.randrange(256) for _ in range(rng.choice([0, 1, 5, 40, 300, 3000])))
    return msg(b"D", struct.pack("!hi", 1, len(value)) + value)


def error(rng: random.Random) -> bytes:
    if roll(rng) < 0.05:
        return msg(b"E", b"Sjunk")  # malformed fields
    return encode.error_response(rng.choice(["42601", "22012", "40001"]), "boom", extra={"P": "1"})


def complete(rng: random.Random) -> bytes:
    r = roll(rng)
    if r < 0.03:
        return msg(b"C")  # no tag at all
    if r < 0.06:
        return msg(b"C", b"\xff\xfe tag\x00")  # invalid UTF-8 tag
    if r < 0.12:
        return msg(b"C", rng.choice([b"\x00", b"X\x00", b"XY\x00", b"no terminator"]))  # odd tags
    return msg(b"C", cstr(rng.choice(["SELECT 1", "INSERT 0 1", "BEGIN", "COMMIT", "UPDATE 3"])))


def ready(rng: random.Random) -> bytes:
    return msg(b"Z", rng.choice([b"I", b"I", b"T", b"E"]))


def extras(rng: random.Random) -> bytes:
    """Asynchronous messages and ones the relay passes through untouched."""
    r = rng.random()
    if r < 0.90:
        return b""
    return rng.choice(
        [
            encode.notice_response("note", sqlstate="01000"),
            encode.parameter_status("application_name", "psql"),
            encode.parameter_status("TimeZone", "UTC"),
            msg(b"A", struct.pack("!I", 7) + cstr("chan") + cstr("payload")),
            msg(b"d", b"copy row"),
            msg(b"c"),
            msg(b"H", b"\x00\x00\x00"),
        ]
    )


def split_messages(data: bytes) -> list[tuple[bytes, bytes]]:
    out, pos = [], 0
    while len(data) - pos >= 5:
        size = struct.unpack_from("!I", data, pos + 1)[0] + 1
        if size < 5 or pos + size > len(data):
            break
        out.append((data[pos : pos + 1], data[pos + 5 : pos + size]))
        pos += size
    return out


def simulate(forwarded: bytes, rng: random.Random) -> bytes:
    """Plausible replies to what the relay forwarded (poisons fail in the parser)."""
    out = []
    failed = False  # extended protocol: discarding until Sync
    for t, body in split_messages(forwarded):
        out.append(extras(rng))
        poison = POISON_TEXT.encode() in body
        if t == b"Q":
            r = rng.random()
            if poison or r < 0.1:
                out.append(error(rng))
            elif r < 0.15:
                out.append(msg(b"I"))
            else:
                if r < 0.7:
                    out.append(row_description() + b"".join(data_row(rng) for _ in range(rng.randint(0, 4))))
                out.append(complete(rng))
            out.append(ready(rng))
        elif t == b"S":
            out.append(ready(rng))
            failed = False
        elif failed:
            continue
        elif t == b"P":
            if poison or rng.random() < 0.08:
                out.append(error(rng))
                failed = True
            else:
                out.append(msg(b"1"))
        elif t == b"B":
            if rng.random() < 0.05:
                out.append(error(rng))
                failed = True
            else:
                out.append(msg(b"2"))
        elif t == b"D":
            if body[:1] == b"S":
                out.append(msg(b"t", struct.pack("!hI", 1, 23)))
            out.append(row_description() if rng.random() < 0.7 else msg(b"n"))
        elif t == b"E":
            r = rng.random()
            if r < 0.08:
                out.append(error(rng))
                failed = True
                continue
            out.append(b"".join(data_row(rng) for _ in range(rng.randint(0, 4))))
            out.append(msg(b"s") if r < 0.15 else msg(b"I") if r < 0.2 else complete(rng))
        elif t == b"C":
            out.append(msg(b"3"))
    r = rng.random()
    if r < 0.05:  # out of step: replies nobody asked for
        out.insert(rng.randint(0, len(out)), rng.choice([complete(rng), msg(b"2"), msg(b"1"), row_description(), ready(rng)]))
    elif not MALFORMED[0]:
        pass
    elif r < 0.06:
        out.append(rng.choice([b"C\x00\x00\x00\x02", msg(b"R", b"\x00\x00\x00\x00"), msg(b"K", b"\x00" * 8), msg(b"v", b"")]))
    elif r < 0.07:
        out.append(msg(b"Z"))  # ReadyForQuery without its status byte (at the very end)
    elif r < 0.08:
        out.insert(0, msg(b"Z") + msg(b"Z", b"T"))  # ... and followed by another message
    return b"".join(out)


# ---------------------------------------------------------------- driving both implementations


def cuts(rng: random.Random, data: bytes) -> list[bytes]:
    """Random chunks of ``data``: whole, a few random cuts, or byte by byte."""
    r = rng.random()
    if r < 0.35 or len(data) < 2:
        return [data]
    if r < 0.4 and len(data) < 200:
        return [data[i : i + 1] for i in range(len(data))]
    points = sorted(set(rng.randrange(1, len(data)) for _ in range(rng.randint(1, 5))))
    return [data[a:b] for a, b in zip([0] + points, points + [len(data)])]


def as_input(rng: random.Random, chunk: bytes):
    r = rng.random()
    if r < 0.05:
        return bytearray(chunk)
    if r < 0.1:
        return memoryview(chunk)
    return chunk


class Side:
    def __init__(self, impl, completed: bool, **kwargs) -> None:
        self.client_impl, self.server_impl = impl
        self.policy = Policy()
        self.completed: list[Statement] | None = [] if completed else None
        self.session = SessionInfo(id="t", user="alice", target="app", client_addr="127.0.0.1:1")
        self.relay = Relay(
            self.session, self.policy, self.completed.append if completed else None, **kwargs
        )  # fmt: skip
        self.forwarded = b""

    def call(self, which: str, data) -> object:
        relay = self.relay
        try:
            if which == "client":
                self.client_impl(relay, data)
            elif which == "server":
                self.server_impl(relay, data)
            else:
                relay.resume(data)
            error = None
        except Exception as exc:  # compared, not swallowed
            error = (type(exc).__name__, str(exc))
        to_server, to_client, commands = relay.take_output()
        sent = b"".join(bytes(x) for x in to_server)
        self.forwarded += sent
        state = self.snapshot()
        return {
            "error": error,
            "to_server": [(bytes(x), x is data) for x in to_server],
            "to_client": [(bytes(x), x is data) for x in to_client],
            "commands": [self.command(c) for c in commands],
            **state,
        }

    # Normalised views (statements by their index in the policy's list).

    def sid(self, stmt: Statement | None):
        if stmt is None:
            return None
        for i, s in enumerate(self.policy.statements):
            if s is stmt:
                return i
        return ("unevaluated", self.stmt(stmt))

    @staticmethod
    def verdict(v):
        if isinstance(v, Hold):
            return ("hold", v.reason, v.rule)
        return v

    def stmt(self, s: Statement):
        body = s._bind_body
        return (
            s.kind, s.protocol, s.text, s.request, s.statement_name, s.portal_name, s.param_types,
            None if body is None else bytes(body[0][body[1] : body[2]]),
            self.verdict(s.verdict), list(s.tags), s.error, s.status, s.next_stage,
            s.started_ns != 0, s.duration_ns != 0, s.decision,
        )  # fmt: skip

    def command(self, c):
        if isinstance(c, HoldRequested):
            return ("hold", self.verdict(c.hold), self.sid(c.statement))
        if isinstance(c, StageFailed):
            return ("failed", type(c.error).__name__, str(c.error), self.sid(c.statement))
        assert isinstance(c, CloseRequested)
        return ("close", c.reason, c.error)

    def value(self, v):
        if v is _MISSING:
            return "<missing>"
        if isinstance(v, tuple) and len(v) == 4:  # portal: (text, name, types, (buf, start, stop))
            text, name, types, (buf, start, stop) = v
            return (text, name, types, bytes(buf[start:stop]))
        return v

    def undo(self, undo):
        if undo is None:
            return None
        table, key, previous = undo
        which = "prepared" if table is self.relay._prepared else "portals" if table is self.relay._portals else table
        return (which, key, self.value(previous))

    def snapshot(self) -> dict:
        r = self.relay
        framer = r._client
        return {
            "statements": [self.stmt(s) for s in self.policy.statements],
            "completed": None if self.completed is None else [self.sid(s) for s in self.completed],
            # (a Describe of a prepared statement's entry also names it: replies.describe_entry)
            # (and the relay's own Describe of a masked Execute names the statement)
            "pending": [(k, self.sid(s), d, self.undo(u), *(self.sid(x) if isinstance(x, Statement) else x for x in rest))
                        for k, s, d, u, *rest in r._pending],
            "prepared": dict(r._prepared),
            "portals": {k: self.value(v) for k, v in r._portals.items()},
            "queue": [(t, bytes(b[s:e])) for t, b, s, e in r._queue],
            "held": None if r._held is None else (self.sid(r._held[0]), self.verdict(r._held[1]), r._held[2], bytes(r._held[3][0][r._held[3][1] : r._held[3][2]])),
            "flags": (r.held, r.closed, r._discarding, r._request, r._request_open, r._bind_key, r._bind_names,
                      r._masking, r._rewriter is not None, r._copy_rewriter is not None),
            "span": None if r._span_buf is None else bytes(r._span_buf[r._span_start : r._span_stop]),
            "framer": (b"".join(bytes(c) for c in framer._chunks), framer._have, framer._need),
            "server": (r._server_tail, r._server_skip),
            "session": (self.session.txn_status, dict(self.session.server_params)),
            "idle": r.idle,
        }  # fmt: skip


def run_scenario(seed: int) -> int:
    """Drive both implementations through one random scenario; return the number of calls compared."""
    rng = random.Random(seed)
    kwargs = {}
    max_size = 64 * 1024 * 1024
    if rng.random() < 0.2:
        max_size = kwargs["max_message_size"] = rng.choice([40, 300, 5000])
    if rng.random() < 0.3:
        kwargs["rewrite_parameter"] = rewrite_parameter
    completed = rng.random() < 0.5
    MALFORMED[0] = rng.random() < 0.3
    sides = [Side(PURE, completed, **kwargs), Side(FAST, completed, **kwargs)]
    calls = 0

    def both(which: str, data, step: str) -> bool:
        nonlocal calls
        calls += 1
        a, b = (side.call(which, data) for side in sides)
        if a != b:
            diff = {k: (a[k], b[k]) for k in a if a[k] != b[k]}
            pytest.fail(f"seed {seed}, {step}: pure-Python and compiled differ in {sorted(diff)}:\n{diff!r}")
        return a["error"] is None

    carry = b""  # the end of a client batch held back until the next round
    for rnd in range(rng.randint(1, 10)):
        batch = carry + client_batch(rng, max_size)
        carry = b""
        if rng.random() < 0.15 and len(batch) > 1:  # a message that spans the server's reply
            cut = rng.randrange(1, len(batch))
            batch, carry = batch[:cut], batch[cut:]
        for i, chunk in enumerate(cuts(rng, batch)):
            if not both("client", as_input(rng, chunk), f"round {rnd} client chunk {i}"):
                return calls
        while sides[0].relay.held and rng.random() < 0.8:
            verdict = rng.choice([ALLOW, ALLOW, DENY, Hold(wait=lambda: None, reason="again")])
            if not both("resume", verdict, f"round {rnd} resume {verdict!r}"):
                return calls
        forwarded = sides[0].forwarded
        sides[0].forwarded = sides[1].forwarded = b""
        reply = simulate(forwarded, rng)
        for i, chunk in enumerate(cuts(rng, reply)):
            if not both("server", as_input(rng, chunk), f"round {rnd} server chunk {i}"):
                return calls
    return calls


SCENARIOS = 1500
BLOCKS = 6


@pytest.mark.parametrize("block", range(BLOCKS))
def test_compiled_loops_match_the_python_reference(block):
    calls = 0
    for seed in range(block, SCENARIOS, BLOCKS):
        calls += run_scenario(seed)
    assert calls > 1000


def test_pgbench_streams_match():
    """The exact pgbench -S exchanges of bench/profile_relay.py, many times over."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
    try:
        import profile_relay as pr
    finally:
        sys.path.pop(0)
    for case, (request, reply) in pr.CASES.items():
        for completed in (False, True):
            sides = [Side(PURE, completed), Side(FAST, completed)]
            for _ in range(20):
                for which, data in (("client", pr.SETUP), ("server", pr.SETUP_REPLY), ("client", request), ("server", reply)):
                    a, b = (side.call(which, data) for side in sides)
                    assert a == b, case
                    assert a["error"] is None
            assert sides[1].relay.idle


def test_unexpected_state_types_take_the_python_path():
    """The compiled loops hand the call to the Python reference when the relay's
    state is not what Relay.__init__ builds (here: a list as the reply queue)."""
    sides = [Side(PURE, False), Side(FAST, False)]
    for side in sides:
        side.relay._pending = list(side.relay._pending)
    # A list has no popleft: both fail the same way, at the same point.
    for which, data in (("client", encode.query("select 1")), ("server", msg(b"C", cstr("SELECT 1")) + msg(b"Z", b"I"))):
        a, b = (side.call(which, data) for side in sides)
        assert a == b


def test_pure_python_env_var_selects_the_implementation():
    code = "import pgwarden.session.relay as r; print(r.ACCELERATED, r.Relay.client_data.__module__)"
    env = {k: v for k, v in os.environ.items() if k != "PGWARDEN_PURE_PYTHON"}
    fast = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.split()
    pure = subprocess.run(
        [sys.executable, "-c", code], env={**env, "PGWARDEN_PURE_PYTHON": "1"}, capture_output=True, text=True, check=True
    ).stdout.split()
    assert fast == ["True", "pgwarden.session._speedups"]
    assert pure == ["False", "pgwarden.session.fastpath"]


def test_protocol_violations_match():
    """A few malformed inputs, deterministic, so a mismatch is easy to read."""
    cases = [
        ("client", b"Q\x00\x00\x00\x02"),
        ("client", msg(b"Q", b"select 1\x00") + b"P\x00\x00\x00\x01"),
        ("client", msg(b"E", b"")),
        ("client", msg(b"B", b"")),
        ("client", msg(b"Q", b"")),
        ("server", b"C\x00\x00\x00\x03"),
        ("server", msg(b"Z")),
        ("server", msg(b"R", b"\x00\x00\x00\x00")),
    ]
    for which, data in cases:
        sides = [Side(PURE, True), Side(FAST, True)]
        a, b = (side.call(which, data) for side in sides)
        assert a == b, data
        assert a["error"] is not None, data
        if which == "client" or data[:1] == b"C":
            assert a["error"][0] == ProtocolViolation.__name__


def test_mask_numbers_matches_the_regular_expression():
    """The analysis cache's masked-number key: the compiled twin equals the regex on any text."""
    from pgwarden.policy.analysis import _NUMBER_RUN

    rng = random.Random(7)
    alphabet = "0123456789aZ_$ .é€\"'-+e\n/*;"
    for _ in range(50_000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        assert _speedups.mask_numbers(text) in (None, _NUMBER_RUN.sub("0", text)), text
        if text.isascii():
            assert _speedups.mask_numbers(text) == _NUMBER_RUN.sub("0", text), text
    assert _speedups.mask_numbers("aid = 1234567890 AND b = 7") == "aid = 1234567890 AND b = 0"
