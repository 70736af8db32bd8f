"""Red-team tests of the evidence report: it must never call tampered, unsigned or
removed records "verified"/"satisfied", and its counts must be the trail's.

Two kinds of trail:

* synthetic trails (no gateway): one statement record a minute from 2026-01-01
  00:00 UTC (record i at minute i), a checkpoint signed every 10 records *at
  the time of its record*, like a gateway's. The period 00:31..01:10 holds
  records 31..70; tests tamper with copies as an insider with write access to
  the store (not the signing key) would, with ``test_audit_verify.Rows``;
* the module-scoped gateway trail of test_evidence.py (reused through its
  ``env`` fixture) plus a second gateway running edge cases (multi-statement
  strings, the extended protocol, refusals, masking, failed logins),
  whose counts are recomputed independently from the store.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import shutil
import sqlite3
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psycopg
import pytest
import yaml
from typer.testing import CliRunner

from oscal_schema import validate_oscal

from pgwarden.cli.main import app
from pgwarden.config import parse_config
from pgwarden.evidence.collect import Collector, end_reason
from pgwarden.evidence.controls import Context, evaluate
from pgwarden.evidence.html import render_html
from pgwarden.evidence.oscal import to_oscal
from pgwarden.evidence.report import build_report
from pgwarden.store.base import StoredCheckpoint
from pgwarden.store.records import chain_hash, make_record
from pgwarden.store.retention import apply_retention
from pgwarden.store.signing import checkpoint_body, load_or_create_signer
from pgwarden.store.sqlite import SqliteAuditStore
from pgwarden.testing.gateway import RunningGateway

from conftest import GW_PASSWORD, GW_USER
from test_audit_verify import Rows
from test_evidence import config_data, control

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc).timestamp()
FRM, TO = "2026-01-01T00:31:00Z", "2026-01-01T01:10:00Z"  # records 31..70
PERIOD = range(31, 71)


def _iso(t: float) -> str:
    return make_record("audit", None, {}, at=t).at


async def _fill(store, signer, n: int, every: int, at, first: int = 1, sign_to: int | None = None) -> None:
    await store.set_meta("public_key_pem", signer.public_pem)
    await store.set_meta("store_id", "attack-store")
    for i in range(first, n + 1):
        seq, head = await store.append([make_record("statement", "sess0001", {
            "n": i, "kind": "query", "text": f"SELECT {i}", "decision": {"action": "allow", "rule": None}}, at=at(i))])
        if seq % every == 0 and (sign_to is None or seq <= sign_to):
            stamp = _iso(at(i) + 0.5)
            body = checkpoint_body(seq=seq, chain_hash=head, at=stamp, reason="interval", store="attack-store",
                                   key=signer.key_id)
            await store.add_checkpoint(StoredCheckpoint(0, seq, stamp, body, signer.sign(body)))


def make_timed_trail(directory: Path, n: int = 100, every: int = 10, at=None, sign_to: int | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    signer = load_or_create_signer(directory / "audit-signing.key")
    at = at or (lambda i: T0 + 60 * i)

    async def go():
        store = SqliteAuditStore(directory / "audit.sqlite")
        await store.open()
        try:
            await _fill(store, signer, n, every, at, sign_to=sign_to)
        finally:
            await store.close()

    asyncio.run(go())
    return directory


def cfg_for(directory: Path, **extra):
    data = {"targets": {"app": {"host": "127.0.0.1", "database": "app", "user": "app", "password": "x"}},
            "data_dir": str(directory), **extra}
    return parse_config(data, base_dir=directory)


def cfg_file(directory: Path) -> Path:
    path = directory / "pgwarden.yaml"
    path.write_text(yaml.safe_dump({"targets": {"app": {"host": "127.0.0.1", "database": "app", "user": "app",
                                                        "password": "x"}}, "data_dir": str(directory)}))
    return path


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return make_timed_trail(tmp_path_factory.mktemp("attack") / "base")


@pytest.fixture
def copy(base, tmp_path) -> Path:
    target = tmp_path / "trail"
    shutil.copytree(base, target)
    return target


def report_for(directory: Path, frm: str = FRM, to: str = TO, **kwargs) -> dict:
    return build_report(cfg_for(directory), frm, to, **kwargs)


def assert_not_clean(report: dict, *kinds: str) -> None:
    """What every tampered period must show: failed (or unsigned), AU-9(3)/AU-10 not satisfied,
    no trail-based control satisfied, and a banner in the HTML and OSCAL."""
    v = report["verification"]
    assert v["status"] in ("failed", "unsigned"), v
    found = {p["kind"] for p in v["problems"]}
    assert set(kinds) <= found, (kinds, v["problems"])
    assert control(report, "AU-9(3)")["status"] == "not_satisfied"
    assert control(report, "AU-10")["status"] != "satisfied"
    for c in report["controls"]:
        if c["trail"]:
            assert c["status"] != "satisfied", (c["label"], c["reason"])
    page = render_html(report)
    assert "VERIFICATION FAILED" in page or "NOT VERIFIED" in page
    assert "Audit trail verified" not in page
    doc = to_oscal(report)
    validate_oscal(doc)
    assert doc["assessment-results"]["results"][0].get("risks")


# ---------------------------------------------------------------- the intact synthetic trail


def test_the_intact_trail_is_verified_and_counted(base):
    r = report_for(base)
    v = r["verification"]
    assert v["status"] == "verified" and v["signed"] == "all" and v["problems"] == []
    assert v["period_seqs"] == [31, 70]
    # Verified from just after the checkpoint signed before the period (less 5 minutes' slack)
    # through the first one signed after it (plus the slack).
    assert v["range"] == [21, 80]
    assert r["totals"]["records"] == 40 and r["totals"]["statements"]["allow"] == 40
    assert control(r, "AU-9(3)")["status"] == "satisfied"
    # The key came from the store: the report says how weak that is.
    assert any("--public-key" in w for w in v["warnings"])


# ---------------------------------------------------------------- deletions


def _delete(directory: Path, *seqs: int) -> None:
    rows = Rows(directory / "audit.sqlite")
    rows.delete(*seqs)
    rows.save()


@pytest.mark.parametrize("seqs", [(31, 32), (55,), (69, 70), tuple(PERIOD), (30,), (71,)],
                         ids=["first", "middle", "last", "whole-period", "just-before", "just-after"])
def test_deleted_records_fail_the_report(copy, seqs):
    _delete(copy, *seqs)
    r = report_for(copy)
    assert_not_clean(r, "deleted")
    # The same answer as `pgwarden audit verify` over the whole trail.
    result = CliRunner().invoke(app, ["audit", "verify", "-c", str(cfg_file(copy))])
    assert result.exit_code == 1


def test_a_period_emptied_by_deletion_is_not_reported_as_empty(copy):
    _delete(copy, *PERIOD)
    r = report_for(copy)
    assert r["totals"]["records"] == 0 and r["verification"]["status"] == "failed"
    out = copy / "r.json"
    result = CliRunner().invoke(app, ["evidence", "-c", str(cfg_file(copy)), "--from", FRM, "--to", TO,
                                      "-f", "json", "--out", str(out)])
    assert result.exit_code == 1, result.output
    assert "VERIFICATION FAILED" in result.output


def test_checkpoints_deleted_then_the_end_of_the_period_cut(copy):
    """Removing the checkpoints after seq 60 makes 61.. an 'unsigned tail'; cutting 66..70 then must
    still be caught, because later records (71..100) remain and are verified too."""
    with sqlite3.connect(copy / "audit.sqlite") as db:
        db.execute("DELETE FROM checkpoints WHERE seq > 60")
    _delete(copy, *range(66, 71))
    assert_not_clean(report_for(copy), "deleted")


def test_deleted_checkpoints_leave_old_records_unsigned(copy):
    with sqlite3.connect(copy / "audit.sqlite") as db:
        db.execute("DELETE FROM checkpoints WHERE seq > 60")
    r = report_for(copy)
    v = r["verification"]
    # Nothing was removed that later records reveal, but 61..70 have been unsigned for months:
    # a running gateway would have signed them.
    assert v["unsigned_tail"] == [61, 70] and v["unsigned_stale"]
    au93 = control(r, "AU-9(3)")
    assert au93["status"] == "not_satisfied" and "61..70" in au93["reason"]
    assert control(r, "AU-10")["status"] != "satisfied"
    for c in r["controls"]:
        if c["trail"]:
            assert c["status"] != "satisfied", c["label"]
    assert "never signed" in render_html(r)


def test_no_checkpoint_at_all_is_not_verified(copy):
    with sqlite3.connect(copy / "audit.sqlite") as db:
        db.execute("DELETE FROM checkpoints")
    r = report_for(copy)
    assert r["verification"]["status"] == "unsigned" and r["verification"]["signed"] == "none"
    assert_not_clean(r)
    result = CliRunner().invoke(app, ["evidence", "-c", str(cfg_file(copy)), "--from", FRM, "--to", TO,
                                      "-f", "json", "--out", str(copy / "r.json")])
    assert result.exit_code == 1 and "NOT VERIFIED" in result.output


def test_a_fresh_unsigned_tail_is_named_but_not_failed(tmp_path):
    now = time.time()
    trail = make_timed_trail(tmp_path / "t", n=30, at=lambda i: now - 300 + i, sign_to=20)
    r = build_report(cfg_for(trail), _iso(now - 3600), _iso(now + 60))
    v = r["verification"]
    assert v["status"] == "verified" and v["unsigned_tail"] == [21, 30] and not v["unsigned_stale"]
    au93 = control(r, "AU-9(3)")
    assert au93["status"] == "satisfied" and "21..30 are not signed yet" in au93["reason"]


# ---------------------------------------------------------------- edits, insertions, reordering, keys


def _move_at(directory: Path, seq: int, new: str, recompute: bool = False) -> None:
    rows = Rows(directory / "audit.sqlite")
    row = rows.get(seq)
    row[5] = row[5].replace(row[1].encode(), new.encode())
    row[1] = new
    if recompute:  # and every later stored hash, so only a signature can tell
        previous = rows.get(seq - 1)[4]
        for r in rows.rows[rows.rows.index(row):]:
            r[4] = previous = chain_hash(previous, r[5])
    rows.save()


@pytest.mark.parametrize("seq,new,recompute", [
    (31, "2025-12-31T00:00:00.000000Z", False),  # the first record moved before the period
    (70, "2026-02-01T00:00:00.000000Z", False),  # the last moved after it
    (50, "2099-01-01T00:00:00.000000Z", True),  # one in the middle moved far ahead, hashes recomputed
    (75, "1999-01-01T00:00:00.000000Z", True),  # one after the period moved far back
])
def test_a_record_moved_out_of_the_period_fails_the_report(copy, seq, new, recompute):
    _move_at(copy, seq, new, recompute)
    r = report_for(copy)
    assert_not_clean(r)
    assert {p["kind"] for p in r["verification"]["problems"]} & {"changed", "checkpoint_mismatch"}


def test_an_inserted_forged_record_fails_the_report(copy):
    rows = Rows(copy / "audit.sqlite")
    forged = rows.get(50)[:]
    forged[5] = forged[5].replace(b"SELECT 50", b"GRANT ALL")
    at = len(rows.rows) and rows.rows.index(rows.get(50))
    rows.rows.insert(at, forged)
    for i, r in enumerate(rows.rows):  # renumber, as an insider hiding the insertion would
        r[0] = i + 1
    rows.save()
    assert_not_clean(report_for(copy))


def test_reordered_records_fail_the_report(copy):
    rows = Rows(copy / "audit.sqlite")
    a, b = rows.get(40), rows.get(41)
    a[0], b[0] = 41, 40
    rows.rows.sort(key=lambda r: r[0])
    rows.save()
    assert_not_clean(report_for(copy), "reordered")


def _resign(directory: Path, other) -> None:
    with sqlite3.connect(directory / "audit.sqlite") as db:
        db.execute("UPDATE meta SET value = ? WHERE key = 'public_key_pem'", (other.public_pem,))
        for cid, body in db.execute("SELECT id, body FROM checkpoints").fetchall():
            data = json.loads(bytes(body))
            data["key_id"] = other.key_id
            new = json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
            db.execute("UPDATE checkpoints SET body = ?, signature = ? WHERE id = ?", (new, other.sign(new), cid))


def test_a_replaced_store_key_with_re_signed_checkpoints(copy, tmp_path):
    other = load_or_create_signer(tmp_path / "insider" / "key")
    _resign(copy, other)
    # The gateway's .pub next to its key file disagrees with the store: wrong_key.
    assert_not_clean(report_for(copy), "wrong_key")
    # Without that file, only a pinned key tells: the report warns that the key came from the store...
    pinned = copy / "audit-signing.key.pub"
    kept = tmp_path / "pinned.pem"
    shutil.move(pinned, kept)
    r = report_for(copy)
    assert r["verification"]["key_source"] == "store meta"
    assert any("--public-key" in w for w in r["verification"]["warnings"])
    assert "pin it with --public-key" in render_html(r)
    # ... and with the key pinned, the forgery fails.
    assert_not_clean(report_for(copy, public_key=kept), "wrong_key")


def test_retention_that_removed_the_period_is_said(tmp_path):
    now = time.time()
    trail = make_timed_trail(tmp_path / "t", n=100, at=lambda i: now - 100 * 86400 + 60 * i if i <= 70
                             else now - 60 + (i - 70) * 0.5)
    signer = load_or_create_signer(trail / "audit-signing.key")

    async def go():
        store = SqliteAuditStore(trail / "audit.sqlite")
        await store.open()
        try:
            return await apply_retention(store, signer, max_age_seconds=90 * 86400, store_id="attack-store",
                                         why="policy", verify_first=True)
        finally:
            await store.close()

    assert asyncio.run(go()).through_seq == 70
    frm, to = _iso(now - 100 * 86400 + 60 * 31), _iso(now - 100 * 86400 + 60 * 70)
    r = build_report(cfg_for(trail), frm, to)
    v = r["verification"]
    assert v["status"] == "no_records" and r["totals"]["records"] == 0
    assert any("retention" in w and "no longer in the trail" in w for w in v["warnings"])


# ---------------------------------------------------------------- the PostgreSQL store


@pytest.fixture
def pg_trail(pg, tmp_path):
    name = f"evat_{secrets.token_hex(4)}"
    pg.psql(f"CREATE DATABASE {name} OWNER app")
    from pgwarden.store.postgres import PostgresAuditStore

    dsn = pg.dsn("app", name)
    signer = load_or_create_signer(tmp_path / "audit-signing.key")

    async def go():
        store = PostgresAuditStore(dsn)
        await store.open()
        try:
            await _fill(store, signer, 100, 10, lambda i: T0 + 60 * i)
        finally:
            await store.close()

    asyncio.run(go())
    config = cfg_for(tmp_path, audit={"store": {"type": "postgres", "dsn": dsn}})
    yield config, name
    pg.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_a_postgres_store_and_its_unsigned_columns(pg, pg_trail):
    config, name = pg_trail
    r = build_report(config, FRM, TO)
    assert r["verification"]["status"] == "verified" and r["totals"]["records"] == 40
    assert r["system"]["store"]["backend"] == "postgresql"
    # The `at`, `type` and `session` columns are not covered by the chain (the bodies are):
    # moving a record after the period into the past by its column would make the
    # time index skip the whole period, and retyping one would hide a statement.
    pg.psql("UPDATE pgwarden_audit.records SET at = '1999-01-01T00:00:00.000000Z' WHERE seq = 75;"
            "UPDATE pgwarden_audit.records SET type = 'notice' WHERE seq = 40;", database=name)
    r = build_report(config, FRM, TO)
    assert r["totals"]["records"] == 40 and r["totals"]["statements"]["allow"] == 40  # judged by the bodies
    assert_not_clean(r, "changed")
    details = " ".join(p["detail"] for p in r["verification"]["problems"])
    assert "stored at column" in details and "stored type column" in details
    # `pgwarden audit verify` checks the columns against the bodies too.
    from pgwarden.services import audit as audit_service

    report = asyncio.run(audit_service.verify(config))
    assert not report.ok and report.counts.get("changed") == 2
    assert {p.seq for p in report.problems} == {40, 75}
    assert all("column" in p.detail for p in report.problems)


def test_a_postgres_store_that_cannot_be_reached_exits_1(tmp_path):
    config = tmp_path / "pg.yaml"
    config.write_text(yaml.safe_dump({
        "targets": {"app": {"host": "127.0.0.1", "database": "app", "user": "app", "password": "x"}},
        "data_dir": str(tmp_path),
        "audit": {"store": {"type": "postgres", "dsn": "postgresql://nobody@127.0.0.1:1/none?connect_timeout=2"}}}))
    result = CliRunner().invoke(app, ["evidence", "-c", str(config), "-f", "json", "--out", str(tmp_path / "r.json")])
    assert result.exit_code == 1, result.output
    assert "error" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "r.json").exists()


# ---------------------------------------------------------------- robustness


def test_an_unreadable_store_exits_1_and_an_empty_trail_0(tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "audit.sqlite").write_bytes(b"not a database" * 100)
    result = CliRunner().invoke(app, ["evidence", "-c", str(cfg_file(bad)), "-f", "json", "--out", str(bad / "r")])
    assert result.exit_code == 1 and "Traceback" not in result.output

    empty = tmp_path / "empty"
    make_timed_trail(empty, n=0)
    out = empty / "r.json"
    result = CliRunner().invoke(app, ["evidence", "-c", str(cfg_file(empty)), "-f", "json", "--out", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["verification"]["status"] == "no_records" and data["totals"]["records"] == 0
    assert control(data, "AU-2")["status"] == "no_events"


def test_corrupt_blocks_do_not_traceback(copy):
    with sqlite3.connect(copy / "audit.sqlite") as db:
        db.execute("UPDATE blocks SET data = ?", (b"\x00" * 7 + b"\x05" + b"x" * 20,))
    result = CliRunner().invoke(app, ["evidence", "-c", str(cfg_file(copy)), "--from", FRM, "--to", TO,
                                      "-f", "html", "--out", str(copy / "r.html")])
    assert result.exit_code == 1 and "Traceback" not in result.output


@pytest.mark.parametrize("args", [["--public-key", "/nonexistent.pem"], ["--from", "2026-01-01T25:00"],
                                  ["--to", "not a date"], ["--from", "2026-01-02", "--to", "2026-01-01"]])
def test_bad_input_exits_2(copy, args):
    result = CliRunner().invoke(app, ["evidence", "-c", str(cfg_file(copy)), "-f", "json",
                                      "--out", str(copy / "r.json"), *args])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and not (copy / "r.json").exists()


def test_the_summary_goes_to_stderr_when_the_report_goes_to_stdout(copy):
    result = CliRunner().invoke(app, ["evidence", "-c", str(cfg_file(copy)), "--from", FRM, "--to", TO,
                                      "-f", "json", "--out", "-"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["totals"]["records"] == 40  # nothing else on stdout
    assert "AU-9(3)" in result.stderr and "verified: records" in result.stderr


def test_print_table_writes_to_the_console_it_is_given():
    import io

    from rich.console import Console
    from rich.table import Table

    from pgwarden.cli.output import print_table

    buf = io.StringIO()
    table = Table("a", "b")
    table.add_row("x" * 150, "y")
    print_table(Console(file=buf), table)
    assert "x" * 150 in buf.getvalue()  # not cut to 80 columns, and on the given stream


# ---------------------------------------------------------------- hostile content


BIDI = "SELECT 1 /* \u202e;tnemetats edirrevo */ -- \u200b\u2066x\u2069"
HOSTILE = [
    "SELECT '<script>alert(1)</script>'",
    "SELECT '</svg><img src=x onerror=alert(1)>'",
    "SELECT '\" onmouseover=\"alert(1)' AS \"x'><a href='javascript:alert(1)'>\"",
    BIDI,
]


def _record(seq: int, rtype: str, fields: dict, at: str = "2026-01-01T00:10:00.000000Z") -> tuple:
    body = json.dumps({"v": 1, "seq": seq, "at": at, "type": rtype, "session": "s<script>", **fields}).encode()
    return seq, at, rtype, "s<script>", body


def test_hostile_content_stays_inert_in_every_format():
    col = Collector()
    recs = [_record(1, "connect", {"gateway": "gw\u202e", "user": "<b>mallory</b>\u202e", "target": "app",
                                   "client": "10.0.0.1:5", "tls": None, "application_name": "</svg><script>x",
                                   "identity": None})]
    recs += [_record(i + 2, "statement", {"n": i, "kind": "query", "text": t,
                                          "decision": {"action": "deny", "rule": "r<script>"}})
             for i, t in enumerate(HOSTILE)]
    recs.append(_record(10, "statement", {"n": 9, "kind": "query", "text": "SELECT '" + "A" * 1_000_000 + "'",
                                           "decision": {"action": "allow", "rule": None}}))
    recs.append(_record(11, "alert", {"kind": "k\u202e<svg>", "severity": "high", "title": "<script>x</script>"}))
    recs.append(_record(12, "disconnect", {"reason": "subject 'maximum session expired' revoked"}))
    for rec in recs:
        col.add(*rec)
    assert col.counts["disconnect.revoked"] == 1  # a quoted subject name is not a category
    ctx = Context(col=col, verification={"status": "verified", "last_checkpoint_seq": 12, "problems": []})
    cfg = cfg_for(Path("/tmp"))
    controls = evaluate(cfg, ctx)
    report = {"format": "pgwarden-evidence/1", "generated_at": "2026-01-02T00:00:00.000000Z",
              "generator": {"name": "pgwarden", "version": "0"}, "period": {"from": FRM, "to": TO},
              "system": {"name": "pgwarden", "gateway_ids": sorted(col.gateways), "targets": ["app"],
                         "store": {"backend": "sqlite", "location": "/x"}, "public_key_id": "k",
                         "config_path": None, "config_sha256": None},
              "verification": {"status": "verified", "first_seq": 1, "last_seq": 12, "records": 12, "checkpoints": 1,
                               "problems": [], "key_id": "k", "warnings": ["w\u202e<script>"], "key_source": "x",
                               "range": [1, 12], "period_seqs": [1, 12]},
              "totals": {"records": 12, "by_type": dict(col.by_type), "sessions": 1, "statements": col.statements()},
              "daily": col.daily_rows("2026-01-01", "2026-01-01"),
              "summary": {}, "controls": controls}
    page = render_html(report)
    assert len(page) < 200_000  # the 1 MB statement is clipped
    assert "<script" not in page.lower() and "<img" not in page.lower()
    assert not re.search(r"<[^>]*\son\w+\s*=", page)  # no tag with an event handler attribute
    assert not re.search(r"""(href|src)\s*=\s*["']?\s*javascript:""", page, re.IGNORECASE)
    assert page.count("<svg") == page.count("</svg>") == 1
    for ch in ("\u202e", "\u200b", "\u2066", "\u2069"):
        assert ch not in page, hex(ord(ch))
    assert "&lt;U+202E&gt;" in page and "&lt;script&gt;" in page
    text = json.dumps(report, ensure_ascii=False)
    assert "\u202e" not in json.dumps([c["samples"] for c in controls], ensure_ascii=False)
    json.loads(text)
    doc = to_oscal(report)
    validate_oscal(doc)
    assert "\u202e" not in json.dumps(doc, ensure_ascii=False)


# ---------------------------------------------------------------- counts from a real gateway


@pytest.fixture(scope="module")
def edge(pg, gw_users, tmp_path_factory):
    """A gateway run with edge cases; its trail is read back independently."""
    pg.psql("DROP SCHEMA IF EXISTS ev CASCADE; CREATE SCHEMA ev AUTHORIZATION app;"
            "CREATE TABLE ev.items (id int PRIMARY KEY, name text); CREATE TABLE ev.people (id int, email text);"
            "CREATE TABLE ev.blocked (id int); INSERT INTO ev.items VALUES (1, 'a'), (2, 'b');"
            "INSERT INTO ev.people VALUES (1, 'ann@example.com');"
            "ALTER TABLE ev.items OWNER TO app; ALTER TABLE ev.people OWNER TO app; ALTER TABLE ev.blocked OWNER TO app;",
            database="appdb")
    data_dir = tmp_path_factory.mktemp("evidence-edge")
    data = config_data(pg, data_dir, gw_users)
    config_file = data_dir / "pgwarden.yaml"
    config_file.write_text(yaml.safe_dump(data))
    config = parse_config(data, base_dir=data_dir)
    with RunningGateway(config) as gw:
        dsn = gw.dsn(GW_USER, GW_PASSWORD, sslmode="disable", application_name="<script>x</script>\u202e")
        with psycopg.connect(dsn, autocommit=True) as conn:  # extended protocol (server-side binding)
            conn.execute("SELECT %s::int + 1", (1,)).fetchall()
            conn.execute("SELECT name FROM ev.items WHERE id = %s", (2,)).fetchall()
            with pytest.raises(psycopg.Error):
                conn.execute("SELECT * FROM ev.blocked WHERE id = %s", (1,))
        with psycopg.connect(dsn, autocommit=True, cursor_factory=psycopg.ClientCursor) as conn:
            conn.execute("SELECT 1; SELECT 2; CREATE TEMP TABLE t (x int)")  # one simple query, three statements
            conn.execute("SELECT email FROM ev.people").fetchall()
            with pytest.raises(psycopg.Error):
                conn.execute("DROP TABLE ev.items")
        for user, password in ((GW_USER, "wrong"), ("nobody", "x")):
            with pytest.raises(psycopg.OperationalError):
                psycopg.connect(gw.dsn(user, password, sslmode="disable")).close()
    return config, config_file, data_dir


def _independent(data_dir: Path, frm: str, to: str) -> dict:
    async def go():
        store = SqliteAuditStore(data_dir / "audit.sqlite")
        await store.open(create=False)
        try:
            return [r async for r in store.records(1, None)]
        finally:
            await store.close()

    recs = [r for r in asyncio.run(go()) if frm <= r.at <= to]
    by_type = Counter(r.type for r in recs)
    verdicts, daily, auth = Counter(), Counter(), Counter()
    for r in recs:
        d = json.loads(r.body)
        if r.type == "statement":
            action = (d.get("decision") or {}).get("action") or "allow"
            v = "held" if isinstance(d.get("approval"), dict) else action
            verdicts[v] += 1
            daily[(r.at[:10], v)] += 1
        if r.type == "auth":
            auth[d["outcome"]] += 1
    return {"recs": recs, "by_type": by_type, "verdicts": verdicts, "daily": daily, "auth": auth}


def test_counts_match_the_trail_exactly(edge):
    config, _file, data_dir = edge
    now = datetime.now(timezone.utc)
    frm, to = (now - timedelta(days=2)).strftime("%Y-%m-%d"), (now + timedelta(days=1)).strftime("%Y-%m-%d")
    r = build_report(config, frm, to)
    ind = _independent(data_dir, r["period"]["from"], r["period"]["to"])
    assert r["verification"]["status"] == "verified"
    assert r["totals"]["records"] == len(ind["recs"])
    assert r["totals"]["by_type"] == dict(sorted(ind["by_type"].items()))
    assert r["totals"]["statements"] == {v: ind["verdicts"][v] for v in ("allow", "deny", "rewrite", "held")}
    for day in r["daily"]:
        for v in ("allow", "deny", "rewrite", "held"):
            assert day[v] == ind["daily"][(day["date"], v)]
    ia2 = control(r, "IA-2")
    assert ia2["counts"]["auth.ok"] == ind["auth"]["ok"] == 2 and ia2["counts"]["auth.refused"] == ind["auth"]["refused"] == 2
    assert r["totals"]["sessions"] == ind["by_type"]["connect"] == 2
    # The extended protocol's Parse and Execute are separate statement records, said per kind.
    ac3 = control(r, "AC-3")["counts"]
    kinds = Counter(json.loads(x.body).get("kind") for x in ind["recs"] if x.type == "statement")
    assert {k: ac3[f"statements.kind.{k}"] for k in kinds} == dict(kinds) and kinds["parse"] == 3


def test_period_bounds_are_inclusive_and_zone_aware(edge):
    config, _file, data_dir = edge
    everything = _independent(data_dir, "", "~")["recs"]
    first, last = everything[3], everything[-4]
    r = build_report(config, first.at, last.at)
    assert r["totals"]["records"] == len(everything) - 6
    # The same instants written in another zone (India, +05:30) select the same records.
    def zoned(at: str) -> str:
        when = datetime.fromisoformat(at.replace("Z", "+00:00")).astimezone(timezone(timedelta(hours=5, minutes=30)))
        return when.isoformat()
    r2 = build_report(config, zoned(first.at), zoned(last.at))
    assert r2["totals"] == r["totals"] and r2["period"] == r["period"]
    # One microsecond later at the start drops exactly the first record.
    later = (datetime.fromisoformat(first.at.replace("Z", "+00:00")) + timedelta(microseconds=1)).isoformat()
    assert build_report(config, later, last.at)["totals"]["records"] == len(everything) - 7


def test_hostile_application_name_in_a_real_report(edge, tmp_path):
    _config, config_file, _dir = edge
    out = tmp_path / "r.html"
    result = CliRunner().invoke(app, ["evidence", "-c", str(config_file), "--out", str(out)])
    assert result.exit_code == 0, result.output
    page = out.read_text()
    assert "<script" not in page.lower() and "\u202e" not in page


def test_a_trail_judged_only_by_config_is_said_to_be_the_configuration_at_report_time(edge):
    config, config_file, _dir = edge
    r = build_report(config, config_path=config_file)
    assert re.fullmatch(r"[0-9a-f]{64}", r["system"]["config_sha256"])
    page = render_html(r)
    assert "at report time" in page and r["system"]["config_sha256"] in page
