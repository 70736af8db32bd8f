"""Recorded sessions: `pgwarden sessions list | show | replay` over a trail built here,
and the DataRow decoder they rely on.

The trail is written the way the recorder writes it (``make_record`` bodies and
session summaries through ``append_sync``), so these tests pin the reader to
the record format in docs/audit.md, not to the recorder's code.
"""

from __future__ import annotations

import asyncio
import base64
import json
import struct
import time
import uuid
from datetime import datetime, timezone
from decimal import Decimal

import pytest
import yaml
from typer.testing import CliRunner

from pgwarden.cli.main import app
from pgwarden.store.base import SessionSummary
from pgwarden.store.decode import decode_result_set, decode_value, iter_datarows, param_texts, pg_text
from pgwarden.store.records import make_record
from pgwarden.store.sqlite import SqliteAuditStore

NOW = time.time()
S_ALICE = "a1ice0c0ffee42"
S_BOB = "b0b000deadbeef"
S_CAROL = "ca401000feed99"


def datarow(*values: bytes | None) -> bytes:
    body = struct.pack("!h", len(values))
    for v in values:
        body += struct.pack("!i", -1) if v is None else struct.pack("!i", len(v)) + v
    return b"D" + struct.pack("!i", len(body) + 4) + body


def b64(*rows: bytes) -> str:
    return base64.b64encode(b"".join(rows)).decode()


def numeric_bin(ndigits_groups: list[int], weight: int, sign: int, dscale: int) -> bytes:
    return struct.pack(f"!hhHh{len(ndigits_groups)}h", len(ndigits_groups), weight, sign, dscale, *ndigits_groups)


ALLOW = {"action": "allow", "rule": None, "message": None, "alerts": []}


def stmt(session, n, text, at, decision=ALLOW, **extra):
    return make_record("statement", session, {"n": n, "request": n, "kind": extra.pop("kind", "query"),
                                              "protocol": extra.pop("protocol", "simple"), "text": text,
                                              "decision": decision, **extra}, at=at)


def result(session, n, at, status="ok", tags=(), rows=None, error=None, results=(), duration_ms=0.5, **extra):
    return make_record("result", session, {"n": n, "status": status, "tags": list(tags), "rows": rows,
                                           "duration_ms": duration_ms, "error": error, "results": list(results),
                                           "sha256": "00" * 32, "result_bytes": 0, "notices": extra.pop("notices", []),
                                           **extra}, at=at)


def text_set(columns, rows, truncated=False):
    return {"columns": [{"name": n, "type": t, "format": 0} for n, t in columns], "formats": [0],
            "row_bytes": 0, "captured_rows": len(rows), "truncated": truncated,
            "data": b64(*(datarow(*(None if v is None else v.encode() for v in r)) for r in rows))}


def connect(session, at, user, target, subject=None, roles=(), tls="TLSv1.3 TLS_AES_256_GCM_SHA384"):
    identity = None if subject is None else {"subject": subject, "issuer": "https://idp.example", "roles": list(roles),
                                             "method": "oidc", "access": {}}
    return make_record("connect", session, {"gateway": "gw-1", "user": user, "target": target,
                                            "client": "10.0.0.5:51234", "tls": tls, "application_name": "psql",
                                            "startup": {}, "identity": identity}, at=at)


@pytest.fixture(scope="module")
def trail(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sessions")
    store = SqliteAuditStore(tmp / "audit.sqlite")
    store.open_sync()
    iso = lambda t: make_record("audit", None, {}, at=t).at  # noqa: E731  (the store's own time format)

    # Bob, two days ago, static user on another target; nothing refused.
    t = NOW - 2 * 86400
    bob = SessionSummary(id=S_BOB, started_at=iso(t), gateway="gw-1", user="bob", target="analytics",
                         client="10.0.0.9:4000")
    store.append_sync([connect(S_BOB, t, "bob", "analytics", tls=None)], sessions_started=[bob])
    store.append_sync([stmt(S_BOB, 1, "SHOW server_version", t + 1),
                       result(S_BOB, 1, t + 1.01, tags=["SHOW"], results=[text_set([("server_version", 25)], [["17.2"]])]),
                       make_record("disconnect", S_BOB, {"reason": "client closed", "statements": 1, "refused": 0,
                                                         "errors": 0, "duration_s": 5}, at=t + 5)])
    bob.ended_at, bob.statements, bob.end_reason = iso(t + 5), 1, "client closed"
    store.append_sync([], sessions_ended=[bob])

    # Alice (token, role agent) an hour ago; Carol's open session interleaves with hers.
    t = NOW - 3600
    alice = SessionSummary(id=S_ALICE, started_at=iso(t), gateway="gw-1", user="alice", subject="alice@example.com",
                           roles=["agent"], target="shop", client="10.0.0.5:51234", application_name="psql")
    carol = SessionSummary(id=S_CAROL, started_at=iso(t + 2), gateway="gw-1", user="carol", subject="carol",
                           roles=["developer"], target="shop", client="10.0.0.7:1")
    uid = uuid.UUID("12345678-1234-5678-1234-567812345678")
    ts = struct.pack("!q", int((datetime(2026, 11, 24, 5, 33, 12, 500000) - datetime(2000, 1, 1)).total_seconds() * 1e6))
    deny = {"action": "deny", "rule": "dangerous.drop", "message": "pgwarden: DROP TABLE is not allowed", "alerts": []}
    records = [
        connect(S_ALICE, t, "alice", "shop", "alice@example.com", ["agent"]),
        make_record("auth", S_ALICE, {"outcome": "ok", "user": "alice", "method": "oidc"}, at=t),
        stmt(S_ALICE, 1, "SELECT id, name FROM customers ORDER BY id LIMIT 2", t + 1),
        result(S_ALICE, 1, t + 1.001, tags=["SELECT 2"], rows=2, duration_ms=1.234,
               results=[text_set([("id", 23), ("name", 25)], [["1", "Ada Lovelace"], ["22", None]])]),
        connect(S_CAROL, t + 2, "carol", "shop", "carol", ["developer"]),
        stmt(S_ALICE, 2, "DROP TABLE customers", t + 3, decision=deny),
        result(S_ALICE, 2, t + 3.0001, status="denied", duration_ms=0.05,
               error={"sqlstate": "42501", "message": "pgwarden: DROP TABLE is not allowed", "detail": None,
                      "rule": "dangerous.drop"}),
        stmt(S_ALICE, 3, "SELECT * FROM orders", t + 4),
        result(S_ALICE, 3, t + 4.2, tags=["SELECT 5000"], rows=5000, duration_ms=1500.5,
               results=[text_set([("id", 20)], [["1"], ["2"], ["3"]], truncated=True)]),
        stmt(S_ALICE, 4, "SELECT id, ref, total, at FROM payments WHERE id = $1 AND note = $2", t + 5,
             kind="parse", protocol="extended", statement_name=""),
        result(S_ALICE, 4, t + 5.001),
        stmt(S_ALICE, 5, None, t + 5.002, kind="execute", protocol="extended", statement_name="", portal_name="",
             params=["42", None], param_types=[23, 25]),
        result(S_ALICE, 5, t + 5.01, tags=["SELECT 1"], rows=1, results=[{
            "columns": [{"name": n, "type": o, "format": 1} for n, o in
                        (("id", 23), ("ref", 2950), ("total", 1700), ("at", 1184))],
            "formats": [1], "row_bytes": 0, "captured_rows": 1, "truncated": False,
            "data": b64(datarow(struct.pack("!i", 42), uid.bytes, numeric_bin([12, 3400], 0, 0, 2), ts))}]),
        stmt(S_ALICE, 6, "BEGIN", t + 6),
        result(S_ALICE, 6, t + 6.001, tags=["BEGIN"]),
        stmt(S_ALICE, 7, "SELECT 1/0", t + 7),
        result(S_ALICE, 7, t + 7.001, status="error",
               error={"sqlstate": "22012", "message": "division by zero", "detail": None},
               notices=[{"severity": "WARNING", "sqlstate": "01000", "message": "careful"}]),
        stmt(S_ALICE, 8, "ROLLBACK", t + 8),
        result(S_ALICE, 8, t + 8.001, tags=["ROLLBACK"]),
        stmt(S_CAROL, 1, "UPDATE orders SET status = 'x' WHERE id = 1", t + 9),
        make_record("disconnect", S_ALICE, {"reason": "client closed", "statements": 8, "refused": 1, "errors": 1,
                                            "duration_s": 10}, at=t + 10),
    ]
    alice_end = SessionSummary(**{**alice.as_dict(), "ended_at": iso(t + 10), "statements": 8, "refused": 1,
                                  "errors": 1, "end_reason": "client closed"})
    store.append_sync(records, sessions_started=[alice, carol], sessions_ended=[alice_end])
    store.append_sync([], sessions_ended=[])
    asyncio.run(store.close())  # a stopped gateway: the journal is in SQLite
    config = tmp / "pgwarden.yaml"
    config.write_text(yaml.safe_dump({
        "targets": {"shop": {"host": "127.0.0.1", "database": "shop", "user": "app", "password": "x"}},
        "data_dir": str(tmp),
    }))
    return str(config)


def cli(config, *args):
    res = CliRunner().invoke(app, ["sessions", *args, "--config", config])
    return res


# ---------------------------------------------------------------- list


def test_list_and_filters(trail):
    res = cli(trail, "list")
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert [i for i, line in enumerate(lines) if S_CAROL in line] < [i for i, line in enumerate(lines) if S_BOB in line]
    row = next(line for line in lines if S_ALICE in line)
    for expected in ("alice@example.com (alice)", "agent", "shop", "10.0.0.5:51234", "client closed", " 10s "):
        assert expected in row
    assert "open" in next(line for line in lines if S_CAROL in line)

    def ids(*args):
        res = cli(trail, "list", "--json", *args)
        assert res.exit_code == 0, res.output
        return [s["id"] for s in json.loads(res.stdout)]

    assert ids() == [S_CAROL, S_ALICE, S_BOB]
    assert ids("--refused") == [S_ALICE]
    assert ids("--identity", "alice*") == [S_ALICE]
    assert ids("--identity", "bob") == [S_BOB]  # static users match on the user name
    assert ids("--role", "dev*") == [S_CAROL]
    assert ids("--target", "analytics") == [S_BOB]
    assert ids("--since", "1d") == [S_CAROL, S_ALICE]
    assert ids("--until", "1d") == [S_BOB]
    assert ids("--since", datetime.fromtimestamp(NOW - 3601, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")) == [S_CAROL, S_ALICE]
    assert ids("--masked") == []
    assert ids("--limit", "1") == [S_CAROL]
    bad = cli(trail, "list", "--since", "yesterday-ish")
    assert bad.exit_code == 2 and "not a time" in bad.stderr
    live = cli(trail, "list", "--live", "--refused")
    assert live.exit_code == 2 and "drop --live" in live.stderr


def test_list_without_a_trail_is_one_clear_line(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"targets": {"shop": {"database": "shop", "user": "app"}},
                                      "data_dir": str(tmp_path / "empty")}))
    res = cli(str(config), "list")
    assert res.exit_code == 1 and "no audit trail" in res.stderr
    assert not (tmp_path / "empty" / "audit.sqlite").exists()  # reading never creates a trail


# ---------------------------------------------------------------- show


def test_show_header_and_events(trail):
    res = cli(trail, "show", S_ALICE[:8])
    assert res.exit_code == 0, res.output
    text = res.stdout
    for expected in (S_ALICE, "alice@example.com (user alice), roles agent", "oidc, issuer https://idp.example",
                     "TLSv1.3 TLS_AES_256_GCM_SHA384", "10.0.0.5:51234", "psql", "8 statements, 1 refused, 1 errors",
                     "client closed"):
        assert expected in text, expected
    drop = next(line for line in text.splitlines() if "DROP TABLE customers" in line)
    assert "deny (dangerous.drop)" in drop and "denied" in drop
    first = next(line for line in text.splitlines() if "FROM customers ORDER BY" in line)
    assert "1.234" in first and " 2 " in first
    assert "$1='42', $2=NULL" in text
    assert "22012: division by zero" in text
    assert "UPDATE orders" not in text  # Carol's statement interleaves but is not Alice's
    carol = cli(trail, "show", S_CAROL)
    assert "open or not closed cleanly" in carol.stdout and "no result" in carol.stdout
    assert "1 statements, 0 refused" in carol.stdout  # counted from the records while the session is open
    execute = next(line for line in text.splitlines() if " execute " in line)
    assert "FROM payments" in execute  # an Execute shows its Parse's text


def test_show_json_and_unknown_session(trail):
    res = cli(trail, "show", S_ALICE, "--json")
    data = json.loads(res.stdout)
    assert data["session"]["identity"] == "alice@example.com" and data["session"]["method"] == "oidc"
    statements = [e for e in data["events"] if e["type"] == "statement"]
    assert [e["n"] for e in statements] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert statements[0]["result"]["sets"][0]["rows"] == [["1", "Ada Lovelace"], ["22", None]]
    assert statements[4]["result"]["sets"][0]["rows"] == [
        ["42", "12345678-1234-5678-1234-567812345678", "12.34", "2026-11-24 05:33:12.5+00"]]
    assert statements[4]["params"] == ["42", None] and statements[4]["text_from"] == statements[3]["seq"]
    missing = cli(trail, "show", "zzzzzzzz")
    assert missing.exit_code == 1 and "no recorded session 'zzzzzzzz'" in missing.stderr


# ---------------------------------------------------------------- replay


def test_replay_reads_like_psql(trail):
    res = cli(trail, "replay", S_ALICE)
    assert res.exit_code == 0, res.output
    text = res.stdout
    assert "shop=> SELECT id, name FROM customers ORDER BY id LIMIT 2;\n" in text
    assert (" id |     name\n"
            "----+--------------\n"
            "  1 | Ada Lovelace\n"
            " 22 |\n"
            "(2 rows)\n\n"
            "Time: 1.234 ms\n") in text
    assert "shop=> DROP TABLE customers;\nERROR:  pgwarden: DROP TABLE is not allowed\n" in text
    assert "-- refused by pgwarden, rule dangerous.drop" in text
    assert "(5000 rows)\n-- 3 of 5000 rows were recorded" in text
    assert "Time: 1500.500 ms (00:01.500)" in text
    # Extended protocol: the Parse's text is shown at the Execute, with the parameters.
    assert "shop=> SELECT id, ref, total, at FROM payments WHERE id = $1 AND note = $2;\n" \
           "-- parameters: $1 = '42', $2 = NULL\n" in text
    assert " 42 | 12345678-1234-5678-1234-567812345678 | 12.34 | 2026-11-24 05:33:12.5+00" in text
    assert text.count("FROM payments") == 1
    # Transaction state in the prompt, warnings before the error.
    assert "shop=> BEGIN;\nBEGIN\n" in text
    assert "shop=*> SELECT 1/0;\nWARNING:  careful\nERROR:  division by zero\n" in text
    assert "shop=!> ROLLBACK;\nROLLBACK\n" in text
    assert "-- disconnect: client closed" in text


def test_replay_max_rows_json_and_speed(trail, monkeypatch):
    res = cli(trail, "replay", S_ALICE, "--max-rows", "1")
    assert "-- showing 1 of 2 recorded rows (--max-rows)" in res.stdout and "Ada Lovelace" in res.stdout
    data = json.loads(cli(trail, "replay", S_ALICE, "--json", "--max-rows", "1").stdout)
    assert data["events"][2]["result"]["sets"][0]["rows"] == [["1", "Ada Lovelace"]]
    slept: list[float] = []
    monkeypatch.setattr("pgwarden.cli.sessions.time.sleep", slept.append)
    assert cli(trail, "replay", S_ALICE).exit_code == 0 and slept == []  # speed 0: no waiting
    assert cli(trail, "replay", S_ALICE, "--speed", "2").exit_code == 0
    assert slept and max(slept) <= 5.0 and sum(slept) == pytest.approx(4.5, abs=0.05)  # 9 s from the first statement, at 2x
    slept.clear()
    cli(trail, "replay", S_ALICE, "--speed", "1", "--max-wait", "0.5")
    assert max(slept) <= 0.5


def test_replay_of_an_open_session(trail):
    text = cli(trail, "replay", S_CAROL[:6]).stdout
    assert "still open" in text and "shop=> UPDATE orders SET status = 'x' WHERE id = 1;" in text
    assert "-- no result was recorded" in text


# ---------------------------------------------------------------- decode


def test_decode_text_and_binary_values():
    assert decode_value(b"hello", 25, 0) == "hello" and decode_value(None, 23, 1) is None
    assert decode_value(struct.pack("!i", -7), 23, 1) == -7
    assert decode_value(struct.pack("!q", 2**40), 20, 1) == 2**40
    assert decode_value(struct.pack("!h", 3), 21, 1) == 3
    assert decode_value(b"\x01", 16, 1) is True and pg_text(decode_value(b"\x00", 16, 1)) == "f"
    assert pg_text(decode_value(b"\x00\xff", 17, 1)) == "\\x00ff"
    u = uuid.uuid4()
    assert decode_value(u.bytes, 2950, 1) == u
    assert pg_text(decode_value(struct.pack("!d", 1.5), 701, 1)) == "1.5"
    assert pg_text(decode_value(struct.pack("!d", 3.0), 701, 1)) == "3"
    assert pg_text(decode_value(struct.pack("!f", 0.1), 700, 1), 700) == "0.1"
    assert pg_text(decode_value(struct.pack("!i", 9132), 1082, 1)) == "2025-01-01"
    assert pg_text(decode_value(struct.pack("!q", 0), 1114, 1)) == "2000-01-01 00:00:00"
    assert pg_text(decode_value(struct.pack("!q", 2**63 - 1), 1184, 1)) == "infinity"
    assert decode_value(b"\x01{\"a\": 1}", 3802, 1) == '{"a": 1}'
    assert decode_value(b"abc", 999999, 1) == "\\x616263"  # unknown type: hex


@pytest.mark.parametrize("groups,weight,sign,dscale,expected", [
    ([12, 3400], 0, 0x0000, 2, "12.34"),
    ([1], 1, 0x4000, 0, "-10000"),
    ([], 0, 0x0000, 3, "0.000"),
    ([5000], -1, 0x0000, 1, "0.5"),
    ([1234, 5678, 9012, 3456, 7890, 1234, 5678, 9012], 7, 0, 0, "12345678901234567890123456789012"),
    ([], 0, 0xC000, 0, "NaN"),
    ([], 0, 0xD000, 0, "Infinity"),
])
def test_decode_numeric(groups, weight, sign, dscale, expected):
    value = decode_value(numeric_bin(groups, weight, sign, dscale), 1700, 1)
    assert isinstance(value, Decimal) and pg_text(value) == expected


def test_malformed_data_keeps_what_can_be_read():
    good = datarow(b"1", b"x")
    rows, problem = iter_datarows(good + b"D\x00\x00\x00\xff\x00")
    assert rows == [[b"1", b"x"]] and "bad length" in problem
    rows, problem = iter_datarows(good + b"Z\x00\x00\x00\x05I")
    assert len(rows) == 1 and "not a DataRow" in problem
    rows, problem = iter_datarows(b"D\x00\x00\x00\x0a\x00\x01\x00\x00\x00\x09ab")
    assert rows == [] and "column 1" in problem
    decoded = decode_result_set({"columns": [{"name": "n", "type": 23, "format": 1}], "captured_rows": 2,
                                 "data": b64(datarow(struct.pack("!i", 5)), datarow(b"\x00\x01"))})
    assert decoded.rows == [["5"], ["\\x0001"]]  # a wrong-size int4 falls back to hex
    broken = decode_result_set({"columns": None, "formats": [1], "data": "not base64!!"})
    assert broken.rows == [] and "not base64" in broken.problems[0]
    undescribed = decode_result_set({"columns": None, "formats": [], "data": b64(datarow(b"a", None))})
    assert undescribed.rows == [["a", None]] and not undescribed.described
    assert [c.name for c in undescribed.columns] == ["column1", "column2"]
    assert decode_value(b"\x00\x01\x00\x00", 1700, 1).startswith("\\x")  # truncated numeric
    assert param_texts(["1", None, 3]) == ["1", None, "3"] and param_texts(None) == []


def test_replay_pairs_sets_with_tags_and_wraps_lines():
    """A simple query with several statements: each set under its own tag, DML tags after RETURNING rows."""
    from pgwarden.cli.sessions import replay_lines
    from pgwarden.services.sessions import build_transcript

    summary = SessionSummary(id="multi0000001", started_at="2026-11-24T05:00:00.000000Z", target="shop")
    at = "2026-11-24T05:00:01.000000Z"
    text = "BEGIN;\nINSERT INTO t VALUES (1) RETURNING id;\nSELECT 'a\nb' AS x, 'c' AS y;"
    bodies = [
        (1, at, "statement", {"n": 1, "kind": "query", "protocol": "simple", "text": text, "decision": ALLOW}),
        (2, at, "result", {"n": 1, "status": "ok", "tags": ["BEGIN", "INSERT 0 1", "SELECT 1"], "rows": 2,
                           "duration_ms": 2.0, "error": None,
                           "results": [text_set([("id", 23)], [["1"]]), text_set([("x", 25), ("y", 25)], [["a\nb", "c"]])]}),
        (3, at, "result", {"n": 7, "status": "ok", "tags": ["SELECT 0"]}),
    ]
    transcript = build_transcript(summary, bodies)
    out = "\n".join(line for _, lines in replay_lines(transcript) for line in lines)
    assert "shop=> BEGIN;\nshop-> INSERT INTO t VALUES (1) RETURNING id;\nshop-> SELECT 'a\nshop-> b' AS x" in out
    assert "BEGIN\n id\n----\n  1\n(1 row)\n\nINSERT 0 1\n x | y\n---+---\n a+| c\n b |\n(1 row)\n\nTime: 2.000 ms" in out
    assert "result 3 (n=7) has no statement record" in out
