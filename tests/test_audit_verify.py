"""Verification, export and retention of the audit trail (no gateway, no PostgreSQL).

Each tampering test edits the SQLite file directly, as an attacker with write
access to the store would, and asserts that verification names the record(s).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pgwarden.store.base import StoredCheckpoint
from pgwarden.store.blocks import decode_block, encode_block
from pgwarden.store.records import chain_hash, make_record
from pgwarden.store.retention import RetentionError, apply_retention, plan_retention
from pgwarden.store.signing import checkpoint_body, load_or_create_signer
from pgwarden.store.sqlite import SqliteAuditStore
from pgwarden.store.verify import verify_store

ROOT = Path(__file__).resolve().parent.parent
TOOL = ROOT / "tools" / "verify_audit_export.py"
PGWARDEN = [sys.executable, "-m", "pgwarden"]
DAY = 86400.0


async def _build(store, signer, n, every, at):
    await store.set_meta("public_key_pem", signer.public_pem)
    await store.set_meta("store_id", "test-store")
    done = (await store.head())[0]
    while done < n:
        batch = [make_record("statement", "sess0001", {"n": i, "text": f"SELECT {i}"}, at=at(i) if at else None)
                 for i in range(done + 1, min(done + every, n) + 1)]
        seq, head = await store.append(batch)
        done = seq
        if seq % every == 0:
            await checkpoint(store, signer, seq, head)


async def checkpoint(store, signer, seq, head, reason="interval"):
    stamp = make_record("audit", None, {}).at
    body = checkpoint_body(seq=seq, chain_hash=head, at=stamp, reason=reason, store="test-store", key=signer.key_id)
    await store.add_checkpoint(StoredCheckpoint(0, seq, stamp, body, signer.sign(body)))


def make_trail(directory: Path, n: int = 55, every: int = 10, at=None) -> Path:
    """Records 1..n, a signed checkpoint every `every` records (so n=55 leaves 51..55 unsigned)."""
    path = directory / "audit.sqlite"
    signer = load_or_create_signer(directory / "audit-signing.key")

    async def go():
        store = SqliteAuditStore(path)
        await store.open()
        try:
            await _build(store, signer, n, every, at)
        finally:
            await store.close()

    asyncio.run(go())
    return path


def verify(path: Path, **kwargs):
    async def go():
        store = SqliteAuditStore(path)
        await store.open(create=False)
        try:
            return await verify_store(store, **kwargs)
        finally:
            await store.close()

    return asyncio.run(go())


def kinds(report) -> list[tuple[str, int, int]]:
    return [(p.kind, p.seq, p.end) for p in report.problems]


class Rows:
    """The trail's records as an attacker with write access to the file sees them:
    ``[seq, at, session, type, hash, body]`` lists in ``self.rows``; :meth:`save` writes them back."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with sqlite3.connect(path, isolation_level=None) as db:
            blocks = db.execute("SELECT data FROM blocks ORDER BY first_seq").fetchall()
        self.rows = [[r.seq, r.at, r.session, r.type, r.hash, r.body]
                     for (data,) in blocks for r in decode_block(bytes(data))]

    def get(self, seq: int) -> list:
        return next(r for r in self.rows if r[0] == seq)

    def edit(self, seq: int, old: bytes, new: bytes) -> None:
        row = self.get(seq)
        assert old in row[5]
        row[5] = row[5].replace(old, new)

    def delete(self, *seqs: int) -> None:
        self.rows = [r for r in self.rows if r[0] not in seqs]

    def save(self) -> None:
        rows = [tuple(r) for r in self.rows]
        with sqlite3.connect(self.path, isolation_level=None) as db:
            db.execute("DELETE FROM blocks")
            if rows:
                db.execute("INSERT INTO blocks VALUES (?, ?, ?, ?, ?)",
                           (rows[0][0], rows[-1][0], rows[0][1], rows[-1][4], encode_block(rows)))


@pytest.fixture
def trail(tmp_path) -> Path:
    return make_trail(tmp_path)


@pytest.fixture
def rows(trail) -> Rows:
    return Rows(trail)


@pytest.fixture
def db(trail):
    conn = sqlite3.connect(trail, isolation_level=None)
    yield conn
    conn.close()


# ---------------------------------------------------------------- the intact trail


def test_intact_trail_verifies_with_an_unsigned_tail(trail):
    report = verify(trail)
    assert report.ok, kinds(report)
    assert (report.records, report.first_seq, report.last_seq) == (55, 1, 55)
    assert report.checkpoints_checked == 5 and report.last_checkpoint_seq == 50
    assert report.unsigned_tail == (51, 55) and "51..55" in report.warnings[0]
    assert report.key_source == "store meta"


def test_a_range_verifies_from_the_record_before_it(trail, rows):
    assert verify(trail, start=21, end=40).ok
    rows.edit(5, b"SELECT 5", b"SELECT 6")
    rows.save()
    report = verify(trail, start=21, end=40)
    assert report.ok and report.anchor["source"] == "record"
    assert kinds(verify(trail, start=1, end=10)) == [("changed", 5, 5)]


# ---------------------------------------------------------------- tampering


def test_one_changed_byte_is_named_once(trail, rows):
    rows.edit(23, b"SELECT 23", b"SELECT 24")
    rows.save()
    assert kinds(verify(trail)) == [("changed", 23, 23)]


def test_a_changed_record_under_a_checkpoint_is_named_once(trail, rows):
    rows.edit(30, b"statement", b"Statement")
    rows.save()
    assert kinds(verify(trail)) == [("changed", 30, 30)]


def test_a_changed_stored_hash_is_named_once(trail, rows):
    rows.get(23)[4] = bytes(32)
    rows.save()
    assert kinds(verify(trail)) == [("changed", 23, 23)]


def test_an_edited_seq_in_a_body_is_named(trail, rows):
    rows.edit(23, b'"seq":23,', b'"seq":24,')
    rows.save()
    assert kinds(verify(trail)) == [("changed", 23, 23)]


def test_a_deleted_record_is_named(trail, rows):
    rows.delete(23)
    rows.save()
    assert kinds(verify(trail)) == [("deleted", 23, 23)]


def test_a_deleted_checkpointed_record_is_named(trail, rows):
    rows.delete(29, 30)
    rows.save()
    assert kinds(verify(trail)) == [("deleted", 29, 30)]


def test_deleted_and_renumbered_is_named(trail, rows):
    rows.delete(23)
    for r in rows.rows:
        if r[0] > 23:
            r[0] -= 1
    rows.save()
    assert kinds(verify(trail)) == [("deleted", 23, 23)]


@pytest.mark.parametrize("a,b", [(12, 17), (21, 22)])
def test_swapped_records_are_named(trail, rows, a, b):
    ra, rb = rows.get(a), rows.get(b)
    ra[4:], rb[4:] = rb[4:], ra[4:]
    rows.save()
    assert kinds(verify(trail)) == [("reordered", a, a), ("reordered", b, b)]


def test_an_inserted_record_is_named(trail, rows):
    for r in rows.rows:
        if r[0] >= 25:
            r[0] += 1
    previous = rows.get(24)[4]
    fake = make_record("statement", "sess0001", {"n": 0, "text": "SELECT 'nothing happened'"})
    body = b'{"v":1,"seq":25,' + fake.tail
    rows.rows.insert(24, [25, fake.at, "sess0001", "statement", chain_hash(previous, body), body])
    rows.save()
    assert kinds(verify(trail)) == [("inserted", 25, 25)]


def test_a_cut_tail_is_named(trail, rows):
    rows.rows = rows.rows[:45]
    rows.save()
    report = verify(trail)
    assert kinds(report) == [("truncated", 46, 50)]
    assert report.unsigned_tail == (41, 45)


def test_a_cut_of_everything_is_named(trail, rows):
    rows.rows = []
    rows.save()
    assert kinds(verify(trail)) == [("truncated", 1, 50)]


def test_a_rewrite_with_recomputed_hashes_is_caught_by_the_checkpoint(trail, rows):
    rows.edit(23, b"SELECT 23", b"SELECT 99")
    previous = rows.get(22)[4]
    for r in rows.rows[22:]:
        r[4] = previous = chain_hash(previous, r[5])
    rows.save()
    # Only the range between the two checkpoints around the rewrite; later ones still match their bodies.
    assert kinds(verify(trail)) == [("checkpoint_mismatch", 21, 30)]


def test_a_bad_signature_and_an_edited_checkpoint_are_named(trail, db):
    db.execute("UPDATE checkpoints SET signature = ? WHERE seq = 20", (bytes(64),))
    body = db.execute("SELECT body FROM checkpoints WHERE seq = 40").fetchone()[0]
    data = json.loads(bytes(body))
    data["hash"] = "00" * 32
    forged = json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
    db.execute("UPDATE checkpoints SET body = ? WHERE seq = 40", (forged,))
    assert kinds(verify(trail)) == [("bad_signature", 20, 20), ("bad_signature", 40, 40)]


def test_a_replaced_public_key_is_named(trail, db, tmp_path):
    other = load_or_create_signer(tmp_path / "other" / "key")
    db.execute("UPDATE meta SET value = ? WHERE key = 'public_key_pem'", (other.public_pem,))
    report = verify(trail)
    assert [k for k, _, _ in kinds(report)] == ["wrong_key"] * 5
    assert report.key_id == other.key_id
    # The genuine key, given explicitly, still verifies the trail.
    genuine = load_or_create_signer(tmp_path / "audit-signing.key")
    assert verify(trail, public_key=genuine.public_key).ok


def test_verifying_with_another_key_names_every_checkpoint(trail, tmp_path):
    other = load_or_create_signer(tmp_path / "other" / "key")
    report = verify(trail, public_key=other.public_key)
    assert kinds(report) == [("wrong_key", s, s) for s in (10, 20, 30, 40, 50)]


def test_the_key_file_is_the_fallback(trail, db, tmp_path):
    db.execute("DELETE FROM meta WHERE key = 'public_key_pem'")
    report = verify(trail, key_file=tmp_path / "audit-signing.key")
    assert report.ok and report.key_source.endswith("audit-signing.key.pub")


def test_a_live_writer_is_not_a_truncation(tmp_path):
    """Records and a checkpoint appended while verification runs are not reported as a cut."""
    path = make_trail(tmp_path, n=50)
    signer = load_or_create_signer(tmp_path / "audit-signing.key")

    class Live(SqliteAuditStore):
        async def records(self, start=1, end=None, **kw):
            async for rec in super().records(start, end, **kw):
                yield rec
            if start != end:
                await _build(self, signer, 60, 10, None)  # the gateway goes on writing

    async def go():
        store = Live(path)
        await store.open()
        try:
            return await verify_store(store)
        finally:
            await store.close()

    report = asyncio.run(go())
    assert report.ok, kinds(report)
    assert report.last_seq == 50 and "51..60" in report.warnings[-1]


def test_verification_streams_a_large_trail(tmp_path):
    path = make_trail(tmp_path, n=30000, every=1000)
    started = time.perf_counter()
    report = verify(path)
    assert report.ok and report.records == 30000 and report.checkpoints_checked == 30
    assert time.perf_counter() - started < 10


# ---------------------------------------------------------------- retention


def _aged(old: int):
    now = time.time()
    return lambda i: now - 100 * DAY + i if i <= old else now - 10 + i * 0.001


def _store_call(path, fn):
    async def go():
        store = SqliteAuditStore(path)
        await store.open()
        try:
            return await fn(store)
        finally:
            await store.close()

    return asyncio.run(go())


def test_retention_removes_a_prefix_and_the_trail_still_verifies(tmp_path):
    path = make_trail(tmp_path, n=55, at=_aged(30))
    signer = load_or_create_signer(tmp_path / "audit-signing.key")
    plan = _store_call(path, lambda s: plan_retention(s, max_age_seconds=90 * DAY))
    assert (plan.through_seq, plan.records, plan.applied) == (30, 30, False)
    result = _store_call(path, lambda s: apply_retention(
        s, signer, max_age_seconds=90 * DAY, store_id="test-store", why="policy: 90 days"))
    assert result.applied and result.through_seq == 30 and result.records == 30
    report = verify(path)
    assert report.ok, kinds(report)
    assert report.first_seq == 31 and report.records == 25
    assert report.retention[0]["through_seq"] == 30 and report.retention[0]["why"] == "policy: 90 days"
    # Removing more without a retention checkpoint is still caught.
    left = Rows(path)
    left.delete(31, 32, 33)
    left.save()
    assert kinds(verify(path)) == [("deleted", 31, 33)]


def test_retention_stops_at_the_latest_checkpoint(tmp_path):
    path = make_trail(tmp_path, n=55, at=_aged(55))
    signer = load_or_create_signer(tmp_path / "audit-signing.key")
    result = _store_call(path, lambda s: apply_retention(
        s, signer, max_age_seconds=90 * DAY, store_id="test-store", why="test"))
    assert result.through_seq == 50 and "51..55" in result.note
    report = verify(path)
    assert report.ok and report.first_seq == 51 and report.unsigned_tail == (51, 55)


def test_retention_of_everything_leaves_a_verifiable_empty_trail(tmp_path):
    path = make_trail(tmp_path, n=50, at=_aged(50))
    signer = load_or_create_signer(tmp_path / "audit-signing.key")
    _store_call(path, lambda s: apply_retention(s, signer, max_age_seconds=90 * DAY, store_id="t", why="test"))
    report = verify(path)
    assert report.ok and report.records == 0 and report.retention[0]["through_seq"] == 50


def test_retention_refuses_to_destroy_evidence(tmp_path):
    path = make_trail(tmp_path, n=55, at=_aged(30))
    signer = load_or_create_signer(tmp_path / "audit-signing.key")
    rows = Rows(path)
    rows.edit(5, b"SELECT 5", b"SELECT 0")
    rows.save()
    with pytest.raises(RetentionError) as caught:
        _store_call(path, lambda s: apply_retention(s, signer, max_age_seconds=90 * DAY, store_id="t", why="x"))
    assert kinds(caught.value.report) == [("changed", 5, 5)]
    assert verify(path).records == 55  # nothing deleted


# ---------------------------------------------------------------- CLI, export and the standalone tool


def run(*args, cwd=None):
    return subprocess.run([*PGWARDEN, *args], capture_output=True, text=True, timeout=120, cwd=cwd)


def tool(*args):
    return subprocess.run([sys.executable, str(TOOL), *map(str, args)], capture_output=True, text=True, timeout=60)


def config_for(directory: Path, **audit) -> str:
    data = {"targets": {"app": {"host": "127.0.0.1", "database": "app", "user": "app", "password": "x"}},
            "data_dir": str(directory)}
    if audit:
        data["audit"] = audit
    path = directory / "pgwarden.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_cli_verify(trail, tmp_path):
    cfg = config_for(tmp_path)
    ok = run("audit", "verify", "-c", cfg)
    assert ok.returncode == 0, ok.stderr
    assert "OK" in ok.stdout and "51..55" in ok.stdout
    data = json.loads(run("audit", "verify", "-c", cfg, "--json", "--from", "11", "--to", "30").stdout)
    assert data["ok"] and (data["first_seq"], data["last_seq"]) == (11, 30)
    rows = Rows(trail)
    rows.delete(17)
    rows.save()
    bad = run("audit", "verify", "-c", cfg)
    assert bad.returncode == 1 and "deleted" in bad.stdout and "17" in bad.stdout
    data = json.loads(run("audit", "verify", "-c", cfg, "--json").stdout)
    assert data["problems"] == [{"kind": "deleted", "seq": 17, "end": 17, "detail": data["problems"][0]["detail"]}]


def test_cli_usage_errors_exit_2(tmp_path):
    cfg = config_for(tmp_path)
    missing = run("audit", "verify", "-c", cfg)
    assert missing.returncode == 2 and "no audit trail" in missing.stderr
    assert run("audit", "verify").returncode == 2
    assert run("audit", "public-key", "-c", cfg).returncode == 2
    signer = load_or_create_signer(tmp_path / "audit-signing.key")  # a gateway that recorded nothing yet
    assert run("audit", "public-key", "-c", cfg).stdout == signer.public_pem
    make_trail(tmp_path)
    assert run("audit", "verify", "-c", cfg, "--from", "9", "--to", "3").returncode == 2
    assert run("audit", "verify", "-c", cfg, "--public-key", str(tmp_path / "nope.pem")).returncode == 2
    assert run("audit", "retention", "-c", cfg).returncode == 2  # no max_age configured


def test_cli_public_key_and_key_file_mismatch(trail, tmp_path):
    cfg = config_for(tmp_path)
    pem = run("audit", "public-key", "-c", cfg)
    assert pem.returncode == 0 and pem.stdout == (tmp_path / "audit-signing.key.pub").read_text()
    other = load_or_create_signer(tmp_path / "other" / "key")
    with sqlite3.connect(trail, isolation_level=None) as db:
        db.execute("UPDATE meta SET value = ? WHERE key = 'public_key_pem'", (other.public_pem,))
    data = json.loads(run("audit", "verify", "-c", cfg, "--json").stdout)
    assert not data["ok"] and data["counts"]["wrong_key"] == 6
    assert any("may have been replaced" in p["detail"] for p in data["problems"])
    pinned = run("audit", "verify", "-c", cfg, "--public-key", str(tmp_path / "audit-signing.key.pub"))
    assert pinned.returncode == 0, pinned.stdout


def test_cli_retention_dry_run_then_apply(tmp_path):
    path = make_trail(tmp_path, n=55, at=_aged(30))
    cfg = config_for(tmp_path, retention={"max_age": "90d"})
    dry = run("audit", "retention", "-c", cfg)
    assert dry.returncode == 0 and "would remove records 1..30" in dry.stdout
    assert verify(path).records == 55
    applied = json.loads(run("audit", "retention", "-c", cfg, "--apply", "--json").stdout)
    assert applied["applied"] and applied["checkpoint"]["removed"]["through_seq"] == 30
    assert applied["checkpoint"]["store"] == "test-store"
    after = run("audit", "verify", "-c", cfg)
    assert after.returncode == 0 and "removed" in after.stdout


def test_export_and_the_standalone_tool(trail, tmp_path):
    cfg = config_for(tmp_path)
    out = tmp_path / "export"
    made = run("audit", "export", "-c", cfg, "--from", "11", "--to", "40", "--out", str(out), "--json")
    assert made.returncode == 0, made.stderr
    result = json.loads(made.stdout)
    assert (result["records"], result["checkpoints"], result["anchor"]["seq"]) == (30, 4, 10)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["records.jsonl", "checkpoints.jsonl", "anchor.json", "public_key.pem", "manifest.json"])
    line = json.loads((out / "records.jsonl").read_text().splitlines()[0])
    assert line["seq"] == 11 and line["body"].startswith('{"v":1,"seq":11,')
    good = tool(out, "--public-key", tmp_path / "audit-signing.key.pub")
    assert good.returncode == 0 and "OK" in good.stdout, good.stdout + good.stderr
    assert run("audit", "verify", "--export", str(out)).returncode == 0
    # Refuses to overwrite.
    assert run("audit", "export", "-c", cfg, "--out", str(out)).returncode == 2

    # One edited body in the export.
    lines = (out / "records.jsonl").read_text().splitlines()
    item = json.loads(lines[12])  # seq 23
    item["body"] = item["body"].replace("SELECT 23", "SELECT 42")
    lines[12] = json.dumps(item, separators=(",", ":"))
    (out / "records.jsonl").write_text("\n".join(lines) + "\n")
    bad = tool(out)
    assert bad.returncode == 1 and "record 23: changed" in bad.stdout
    data = json.loads(run("audit", "verify", "--export", str(out), "--json").stdout)
    assert [(p["kind"], p["seq"]) for p in data["problems"]] == [("changed", 23)]

    # A forged anchor breaks the first link.
    lines[12] = json.dumps({**item, "body": item["body"].replace("SELECT 42", "SELECT 23")}, separators=(",", ":"))
    (out / "records.jsonl").write_text("\n".join(lines) + "\n")
    assert tool(out).returncode == 0
    anchor = json.loads((out / "anchor.json").read_text())
    (out / "anchor.json").write_text(json.dumps({**anchor, "hash": "11" * 32}))
    bad = tool(out)
    assert bad.returncode == 1 and "anchor 10: checkpoint_mismatch" in bad.stdout
    # The export holds the checkpoint at seq 10, which signs the true anchor.
    assert [(p["kind"], p["seq"]) for p in json.loads(
        run("audit", "verify", "--export", str(out), "--json").stdout)["problems"]] == [("checkpoint_mismatch", 10)]
    (out / "anchor.json").write_text(json.dumps(anchor))

    # A removed line.
    del lines[12]
    (out / "records.jsonl").write_text("\n".join(lines) + "\n")
    bad = tool(out)
    assert bad.returncode == 1 and "records 23..23: deleted" in bad.stdout


def test_a_rewritten_export_is_caught_by_its_checkpoints(trail, tmp_path):
    cfg = config_for(tmp_path)
    out = tmp_path / "export"
    assert run("audit", "export", "-c", cfg, "--out", str(out)).returncode == 0
    lines = (out / "records.jsonl").read_text().splitlines()
    previous = bytes(32)
    for index, text in enumerate(lines):
        item = json.loads(text)
        if item["seq"] == 23:
            item["body"] = item["body"].replace("SELECT 23", "SELECT 99")
        previous = chain_hash(previous, item["body"].encode())
        item["hash"] = previous.hex()
        lines[index] = json.dumps(item, separators=(",", ":"))
    (out / "records.jsonl").write_text("\n".join(lines) + "\n")
    bad = tool(out)
    assert bad.returncode == 1 and "records 21..30: checkpoint_mismatch" in bad.stdout


def test_export_after_retention_and_as_an_archive(tmp_path):
    path = make_trail(tmp_path, n=55, at=_aged(30))
    signer = load_or_create_signer(tmp_path / "audit-signing.key")
    _store_call(path, lambda s: apply_retention(s, signer, max_age_seconds=90 * DAY, store_id="t", why="x"))
    cfg = config_for(tmp_path)
    archive = tmp_path / "trail.tar.gz"
    made = run("audit", "export", "-c", cfg, "--to", "50", "--out", str(archive), "--json")
    assert made.returncode == 0, made.stderr
    result = json.loads(made.stdout)
    assert result["from"] == 31 and result["anchor"] == {
        "seq": 30, "hash": result["anchor"]["hash"], "source": "retention checkpoint"}
    checked = tool(archive, "--key-id", signer.key_id)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "31..50" in checked.stdout
    assert run("audit", "verify", "--export", str(archive)).returncode == 0


def test_export_by_time(tmp_path):
    path = make_trail(tmp_path, n=55, at=_aged(30))
    cfg = config_for(tmp_path)
    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() - 50 * DAY))
    made = run("audit", "export", "-c", cfg, "--since", since, "--out", str(tmp_path / "x"), "--json")
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["from"] == 31
    assert verify(path).ok


@pytest.mark.skipif(not all(shutil.which(t) for t in ("openssl", "xxd", "jq", "sha256sum")),
                    reason="needs openssl, xxd, jq and sha256sum")
def test_the_manual_procedure_in_the_docs(trail, tmp_path):
    """The shell commands docs/audit.md gives an auditor, run as written there."""
    cfg = config_for(tmp_path)
    out = tmp_path / "export"
    assert run("audit", "export", "-c", cfg, "--from", "11", "--to", "30", "--out", str(out)).returncode == 0
    signer = load_or_create_signer(tmp_path / "audit-signing.key")
    script = r"""
set -eu
openssl pkey -pubin -in public_key.pem -outform DER | tail -c 32 | sha256sum | cut -c1-16
jq -j 'select(.seq==20) | .body' checkpoints.jsonl > cp.body
jq -r 'select(.seq==20) | .signature' checkpoints.jsonl | xxd -r -p > cp.sig
openssl pkeyutl -verify -pubin -inkey public_key.pem -rawin -in cp.body -sigfile cp.sig
PREV=$(jq -r 'select(.seq==19) | .hash' records.jsonl)
{ printf '%s' "$PREV" | xxd -r -p; jq -j 'select(.seq==20) | .body' records.jsonl; } | sha256sum | cut -c1-64
jq -r 'select(.seq==20) | .hash' records.jsonl
jq -r '.hash' cp.body
"""
    done = subprocess.run(["bash", "-c", script], cwd=out, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.split()
    assert lines[0] == signer.key_id
    assert "Signature Verified Successfully" in done.stdout
    assert lines[-3] == lines[-2] == lines[-1]
