"""Session recording keeps its promises (docs/audit.md, issue 5), proven end to end.

* Write-ahead and fail closed: when the audit store cannot be written, new
  statements are refused with SQLSTATE 58030 and never reach PostgreSQL; the
  same session works again once the store does; the outage is in the trail.
  For SQLite the store is made unwritable with RLIMIT_FSIZE on the gateway
  process (``chmod`` does not stop root); for PostgreSQL the audit server is
  stopped. Records the writer retries are stored once, and a gateway stopped
  during an outage leaves the rest in its journal for the next start.
* A gateway killed with SIGKILL loses no record of a write that reached
  PostgreSQL, and the trail still verifies after the restart.
* Group commit under load loses and duplicates nothing.

The gateway runs as ``pgwarden serve`` (a real process that can be limited and
killed) except where the in-process ``RunningGateway`` is enough.
"""

from __future__ import annotations

import asyncio
import re
import resource
import secrets
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import psycopg
import pytest
import yaml

from pgwarden.session.scram import make_verifier
from pgwarden.store.records import parse_body
from pgwarden.store.sqlite import SqliteAuditStore

PGWARDEN = [sys.executable, "-m", "pgwarden"]
USER, PASSWORD = "carol", "carol-durability-pw"
_VERIFIER = make_verifier(PASSWORD)
AUDIT_UNAVAILABLE = "58030"


# ---------------------------------------------------------------- helpers


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(directory: Path, pg, **audit) -> Path:
    data = {
        "listen": {"host": "127.0.0.1", "port": _free_port(), "tls": {"mode": "disable"}, "shutdown_grace": 3},
        "logging": {"statements": False},
        "targets": {"app": {"host": pg.host, "port": pg.port, "database": "appdb", "user": "app",
                            "password": pg.passwords["app"]}},
        "users": [{"name": USER, "scram_verifier": _VERIFIER}],
        "data_dir": str(directory),
    }
    if audit:
        data["audit"] = audit
    path = directory / "pgwarden.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


class Served:
    """``pgwarden serve`` in a subprocess. Its log goes to a pipe drained by a thread:
    a regular file would be subject to the RLIMIT_FSIZE the tests put on the gateway."""

    def __init__(self, config: Path) -> None:
        self.config = config
        self.port = yaml.safe_load(config.read_text())["listen"]["port"]
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [*PGWARDEN, "serve", "--config", str(config)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        self._drain = threading.Thread(target=self._read, daemon=True)
        self._drain.start()
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                self._drain.join(5)
                raise AssertionError(f"gateway exited ({self.proc.returncode}):\n{self.log}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    self.kill()
                    raise AssertionError(f"gateway did not start listening:\n{self.log}") from None
                time.sleep(0.05)

    def _read(self) -> None:
        for line in self.proc.stderr:  # type: ignore[union-attr]
            self.lines.append(line)

    @property
    def log(self) -> str:
        return "".join(self.lines)

    @property
    def dsn(self) -> str:
        return f"host=127.0.0.1 port={self.port} user={USER} password={PASSWORD} dbname=app"

    def limit_file_size(self, limit: int | None) -> None:
        """The gateway's RLIMIT_FSIZE: no write at or beyond ``limit`` bytes into any file
        (``None``: no limit again). Only the soft limit is changed: raising a hard limit
        needs CAP_SYS_RESOURCE, which even root may lack in a container."""
        _soft, hard = resource.prlimit(self.proc.pid, resource.RLIMIT_FSIZE)
        if limit is not None and hard != resource.RLIM_INFINITY:  # RLIM_INFINITY is -1
            limit = min(limit, hard)
        resource.prlimit(self.proc.pid, resource.RLIMIT_FSIZE, (hard if limit is None else limit, hard))

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        self._drain.join(5)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)
        self._drain.join(5)


def audit_verify(config: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*PGWARDEN, "audit", "verify", "-c", str(config)], capture_output=True, text=True,
                          timeout=120)


def read_stored(path: Path) -> list:
    """Every record of an SQLite trail (journal included), as stored."""

    async def read() -> list:
        store = SqliteAuditStore(path)
        await store.open(create=False)
        try:
            return [r async for r in store.records()]
        finally:
            await store.close()

    return asyncio.run(read())


def read_trail(path: Path) -> list[dict]:
    """Every record of an SQLite trail (journal included), decoded."""
    return [parse_body(r.body) for r in read_stored(path)]


def sqlstate_of(exc: BaseException) -> str | None:
    return getattr(exc, "sqlstate", None)


@pytest.fixture(scope="module")
def marks(pg) -> str:
    """A table on the target the tests write unique markers into (checked on ``pg`` directly)."""
    table = f"durability_{secrets.token_hex(3)}"
    pg.psql(f"CREATE TABLE {table} (id text PRIMARY KEY); GRANT ALL ON {table} TO app", database="appdb")
    yield table
    pg.psql(f"DROP TABLE IF EXISTS {table}", database="appdb")


def present(pg, table: str, like: str) -> set[str]:
    out = pg.psql(f"SELECT id FROM {table} WHERE id LIKE '{like}'", database="appdb")
    return set(out.split()) if out else set()


def insert(conn, table: str, marker: str, *, simple: bool = False) -> None:
    """INSERT ``marker``, extended protocol (bound parameter) or simple (a literal).

    The marker is also in a comment, so every record of the statement names it and
    psycopg never prepares a text (each is new to it)."""
    if simple:
        conn.execute(f"INSERT INTO {table} VALUES ('{marker}') /* {marker} */")
    else:
        conn.execute(f"INSERT INTO {table} VALUES (%s) /* {marker} */", [marker])


def statement_kinds(records: list[dict], prefix: str) -> Counter:
    """(marker, kind) -> how many statement records name that marker."""
    found: Counter = Counter()
    for r in records:
        if r["type"] == "statement":
            for marker in set(re.findall(re.escape(prefix) + r"[\w-]+", r["text"] or "")):
                found[marker, r["kind"]] += 1
    return found


def assert_each_once(records: list[dict], *, results: bool = True) -> None:
    """No statement or result record is stored twice (e.g. by a retried batch); with
    ``results``, every statement has its result."""
    statements = Counter((r["session"], r["n"]) for r in records if r["type"] == "statement")
    outcomes = Counter((r["session"], r["n"]) for r in records if r["type"] == "result")
    assert [k for k, n in statements.items() if n > 1] == []
    assert [k for k, n in outcomes.items() if n > 1] == []
    if results:
        assert set(outcomes) == set(statements)


def outcomes_of(records: list[dict], prefix: str) -> dict[str, set[str]]:
    """marker -> the result statuses of the statement records naming it."""
    results = {(r["session"], r["n"]): r["status"] for r in records if r["type"] == "result"}
    found: dict[str, set[str]] = {}
    for r in records:
        if r["type"] == "statement":
            for marker in set(re.findall(re.escape(prefix) + r"[\w-]+", r["text"] or "")):
                found.setdefault(marker, set()).add(results.get((r["session"], r["n"]), "missing"))
    return found


# ---------------------------------------------------------------- fail closed: SQLite


#: RLIMIT_FSIZE for "the store cannot be written": every write() at or beyond the limit
#: fails with EFBIG (SIGXFSZ is ignored by the gateway), inside an existing file too,
#: so 0 stops every write SQLite makes, whatever the sizes of its files (the WAL
#: restarts from its beginning after a checkpoint). The gateway's log is a pipe and
#: the audit journal a preallocated mapping: the limit covers neither.
UNWRITABLE = 0


def test_sqlite_store_unwritable_refuses_statements_then_recovers(tmp_path, pg, marks):
    config = write_config(tmp_path, pg)
    gw = Served(config)
    try:
        conn = psycopg.connect(gw.dsn, autocommit=True)
        insert(conn, marks, "sq-before")
        gw.limit_file_size(UNWRITABLE)
        # The journal is preallocated and mapped, so statements may still be recorded
        # (durably, in the journal) and run until its load into SQLite (<= 50 ms later)
        # fails; from then on they are refused.
        forwarded, refused = [], []
        deadline = time.monotonic() + 5
        while not refused:
            assert time.monotonic() < deadline, f"never refused; gateway log:\n{gw.log}"
            marker = f"sq-during-{len(forwarded)}"
            try:
                insert(conn, marks, marker)
                forwarded.append(marker)
                time.sleep(0.02)
            except psycopg.Error as exc:
                assert sqlstate_of(exc) == AUDIT_UNAVAILABLE, exc
                refused.append(marker)
        # The store stays unwritable for a while: the writer retries several times, with
        # the refusals' records queued.
        for i in range(6):
            marker = f"sq-refused-{i}"
            with pytest.raises(psycopg.Error) as caught:
                insert(conn, marks, marker, simple=i % 2 == 0)
            assert sqlstate_of(caught.value) == AUDIT_UNAVAILABLE
            assert "audit trail is unavailable" in str(caught.value)
            refused.append(marker)
            time.sleep(0.1)
        # Write-ahead: nothing refused reached PostgreSQL; everything forwarded did.
        assert present(pg, marks, "sq-%") == {"sq-before", *forwarded}
        assert "ALERT: the audit trail cannot be written" in gw.log

        gw.limit_file_size(None)
        deadline = time.monotonic() + 6
        late = 0  # refused before the writer's next retry found the store writable
        while True:  # the same session
            try:
                insert(conn, marks, "sq-after")
                break
            except psycopg.Error as exc:
                assert sqlstate_of(exc) == AUDIT_UNAVAILABLE, exc
                assert time.monotonic() < deadline, f"never recovered; gateway log:\n{gw.log}"
                late += 1
                time.sleep(0.05)
        assert present(pg, marks, "sq-after") == {"sq-after"}
        conn.close()
    finally:
        code = gw.stop()
    assert code == 0, gw.log
    assert "recording resumed" in gw.log
    result = audit_verify(config)
    assert result.returncode == 0, result.stdout + result.stderr

    records = read_trail(tmp_path / "audit.sqlite")
    assert_each_once(records)
    recovered = [r for r in records if r["type"] == "audit" and r["event"] == "store_recovered"]
    assert len(recovered) == 1 and "disk I/O error" in recovered[0]["error"], recovered
    kinds = statement_kinds(records, "sq-")
    for marker in ["sq-before", *forwarded]:
        assert (kinds[marker, "parse"], kinds[marker, "execute"]) == (1, 1), marker
    assert (kinds["sq-after", "parse"], kinds["sq-after", "execute"]) == (late + 1, 1)
    for marker in refused:  # the refused Query, or the Parse (the rest of its request was never run)
        assert sum(n for (m, _kind), n in kinds.items() if m == marker) == 1, (marker, kinds)
    outcomes = outcomes_of(records, "sq-")
    assert {m: outcomes[m] for m in refused} == {m: {"denied"} for m in refused}
    denied = [r for r in records if r["type"] == "statement" and r["decision"]["action"] == "deny"]
    assert len(denied) == len(refused) + late
    assert {r["decision"]["rule"] for r in denied} == {"audit.unavailable"}
    refusals = [r for r in records if r["type"] == "result" and r["status"] == "denied"]
    assert len(refusals) == len(denied) and {r["error"]["sqlstate"] for r in refusals} == {AUDIT_UNAVAILABLE}


def test_sqlite_store_unwritable_allow_and_alert_forwards_and_alerts(tmp_path, pg, marks):
    config = write_config(tmp_path, pg, on_audit_failure="allow_and_alert")
    gw = Served(config)
    forwarded = []

    def forward_until(alerts: int) -> None:
        deadline, first = time.monotonic() + 5, len(forwarded)
        while gw.log.count("ALERT") < alerts or len(forwarded) < first + 8:
            assert time.monotonic() < deadline, f"no alert; gateway log:\n{gw.log}"
            marker = f"sa-during-{len(forwarded)}"
            insert(conn, marks, marker, simple=len(forwarded) % 2 == 1)  # never refused
            forwarded.append(marker)
            time.sleep(0.05)

    try:
        conn = psycopg.connect(gw.dsn, autocommit=True)
        insert(conn, marks, "sa-before")
        gw.limit_file_size(UNWRITABLE)
        forward_until(alerts=1)
        alert = next(line for line in gw.lines if "ALERT" in line)
        assert "ERROR" in alert and "the audit trail cannot be written" in alert and "forwarded unrecorded" in alert
        assert present(pg, marks, "sa-%") == {"sa-before", *forwarded}
        gw.limit_file_size(None)
        deadline = time.monotonic() + 6
        while "recording resumed" not in gw.log:
            assert time.monotonic() < deadline, f"never recovered; gateway log:\n{gw.log}"
            time.sleep(0.05)
        insert(conn, marks, "sa-after")
        # A second outage, and the gateway is stopped before it ends: it stops cleanly, and
        # what SQLite could not take stays in the journal for the next start.
        gw.limit_file_size(UNWRITABLE)
        forward_until(alerts=2)
        conn.close()
    finally:
        code = gw.stop()
    assert code == 0 and "Traceback" not in gw.log, gw.log
    assert "left in the journal" in gw.log
    assert Served(config).stop() == 0  # loads the journal
    result = audit_verify(config)
    assert result.returncode == 0, result.stdout + result.stderr
    # Records kept coming into the journal while SQLite could not take them: none was lost
    # here, none stored twice by the writer's retries.
    records = read_trail(tmp_path / "audit.sqlite")
    assert_each_once(records)
    kinds = statement_kinds(records, "sa-")
    for marker in ["sa-before", "sa-after", *forwarded]:
        expected = {(marker, "query"): 1} if marker in forwarded[1::2] else {(marker, "parse"): 1, (marker, "execute"): 1}
        assert {k: n for k, n in kinds.items() if k[0] == marker} == expected
    events = [r["event"] for r in records if r["type"] == "audit"]
    assert events.count("store_recovered") == 1 and events.count("started") == 2, events


def test_sqlite_commit_larger_than_the_journal_fails_without_a_trace(tmp_path, monkeypatch):
    """A group commit too large for the journal goes straight to SQLite; when SQLite fails
    then, the commit is kept nowhere, and the writer's retry of it chains correctly."""
    from pgwarden.store import journal as sqlite_store  # the journal lives in journal.py
    from pgwarden.store.base import AuditStoreError
    from pgwarden.store.records import GENESIS, chain_hash, make_record

    monkeypatch.setattr(sqlite_store, "JOURNAL_SIZE", 64 * 1024)

    def batch(n: int) -> list:
        return [make_record("statement", "big", {"text": f"{i}:" + "x" * 1000}) for i in range(n)]

    async def run() -> None:
        store = SqliteAuditStore(tmp_path / "audit.sqlite")
        await store.open()
        await store.append(batch(3))
        load, calls = store.load_journal, []

        def failing_second_load() -> None:  # makes room, then SQLite fails
            calls.append(1)
            if len(calls) == 2:
                raise AuditStoreError("disk full")
            load()

        store.load_journal = failing_second_load
        big = batch(100)  # ~100 KiB, more than the whole journal
        with pytest.raises(AuditStoreError):
            await store.append(big)
        store.load_journal = load
        assert (await store.head())[0] == 3
        assert (await store.append(big))[0] == 103  # the retry
        await store.close()
        again = SqliteAuditStore(tmp_path / "audit.sqlite")
        await again.open(create=False)
        records = [r async for r in again.records()]
        await again.close()
        assert [r.seq for r in records] == list(range(1, 104))
        previous = GENESIS
        for r in records:
            assert r.body.startswith(b'{"v":1,"seq":%d,' % r.seq)
            previous = chain_hash(previous, r.body)
            assert r.hash == previous

    asyncio.run(run())


# ---------------------------------------------------------------- fail closed: PostgreSQL store


def test_postgres_store_down_refuses_statements_then_recovers(tmp_path, pg, marks):
    from pgwarden.store.postgres import PostgresAuditStore
    from pgwarden.store.verify import verify_store
    from pgwarden.testing.gateway import RunningGateway, gateway_config
    from pgwarden.testing.postgres import TestPostgres

    with TestPostgres() as audit_pg:
        dsn = audit_pg.dsn("app", "appdb")
        config = gateway_config(
            pg, users=[{"name": USER, "scram_verifier": _VERIFIER}], data_dir=str(tmp_path),
            logging={"statements": False}, audit={"store": {"type": "postgres", "dsn": dsn}},
        )
        with RunningGateway(config) as gw:
            conn = psycopg.connect(gw.dsn(USER, PASSWORD), autocommit=True)
            insert(conn, marks, "pq-before")
            audit_pg.stop_server()
            # The first statement's record cannot be written: the statement is held, then
            # refused; later ones are refused at once while the writer retries.
            refused = []
            for i in range(4):
                marker = f"pq-refused-{i}"
                with pytest.raises(psycopg.Error) as caught:
                    insert(conn, marks, marker, simple=i % 2 == 1)
                assert sqlstate_of(caught.value) == AUDIT_UNAVAILABLE, caught.value
                assert "audit trail is unavailable" in str(caught.value)
                refused.append(marker)
            assert present(pg, marks, "pq-%") == {"pq-before"}
            assert gw.gateway.audit_writer.failed

            audit_pg.start_server()
            deadline = time.monotonic() + 8
            while True:  # the same session, once the writer's retry reached the store again
                try:
                    insert(conn, marks, "pq-after")
                    break
                except psycopg.Error as exc:
                    assert sqlstate_of(exc) == AUDIT_UNAVAILABLE, exc
                    assert time.monotonic() < deadline, "recording never resumed"
                    refused.append("pq-after")
                    time.sleep(0.05)
            assert present(pg, marks, "pq-%") == {"pq-before", "pq-after"}
            conn.close()

        async def check():
            store = PostgresAuditStore(dsn)
            await store.open(create=False)
            try:
                return await verify_store(store), [parse_body(r.body) async for r in store.records()]
            finally:
                await store.close()

        report, records = asyncio.run(check())
    assert report.ok, report.problems
    assert_each_once(records)
    recovered = [r for r in records if r["type"] == "audit" and r["event"] == "store_recovered"]
    assert len(recovered) == 1 and "cannot connect" in recovered[0]["error"], recovered
    kinds = statement_kinds(records, "pq-")
    assert (kinds["pq-before", "parse"], kinds["pq-before", "execute"]) == (1, 1)
    assert kinds["pq-after", "execute"] == 1
    outcomes = outcomes_of(records, "pq-")
    assert outcomes["pq-before"] == {"ok"}
    for marker in refused:  # recorded, and recorded as refused: none of them ran
        if marker != "pq-after":
            assert outcomes[marker] == {"denied"}, (marker, outcomes)


# ---------------------------------------------------------------- crash


def test_kill_9_loses_no_record_of_a_write_that_reached_postgres(tmp_path, pg, marks):
    config = write_config(tmp_path, pg)
    gw = Served(config)
    connected = threading.Barrier(5)
    errors: list[BaseException] = []

    def writer(t: int) -> None:
        try:
            with psycopg.connect(gw.dsn, autocommit=True) as conn:
                connected.wait(10)
                for i in range(10**9):
                    conn.execute(f"INSERT INTO {marks} VALUES (%s)", [f"kx-{t}-{i}"])
        except psycopg.Error as exc:
            if sqlstate_of(exc) is not None:  # an answer, not the lost connection
                errors.append(exc)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(t,), daemon=True) for t in range(4)]
    for t in threads:
        t.start()
    connected.wait(10)
    time.sleep(1.5)
    gw.kill()
    for t in threads:
        t.join(10)
    assert not errors, errors
    rows = present(pg, marks, "kx-%")
    assert len(rows) > 100, len(rows)

    again = Served(config)  # recovers the journal the killed gateway left
    with psycopg.connect(again.dsn, autocommit=True) as conn:
        insert(conn, marks, "kx-restarted")
    assert again.stop() == 0, again.log
    result = audit_verify(config)
    assert result.returncode == 0, result.stdout + result.stderr

    records = read_trail(tmp_path / "audit.sqlite")
    assert_each_once(records, results=False)  # results of statements cut off by the kill may be missing
    recorded = {p for r in records if r["type"] == "statement" and r["kind"] == "execute" for p in r["params"] or ()}
    missing = rows - recorded
    assert not missing, f"{len(missing)} of {len(rows)} rows in PostgreSQL have no record, e.g. {sorted(missing)[:5]}"


# ---------------------------------------------------------------- load


SESSIONS, STATEMENTS = 50, 2000


def test_group_commit_under_load_records_every_statement_once(tmp_path, pg):
    import asyncpg

    config = write_config(tmp_path, pg)
    gw = Served(config)

    async def client(k: int) -> None:
        conn = await asyncpg.connect(host="127.0.0.1", port=gw.port, user=USER, password=PASSWORD, database="app",
                                     server_settings={"application_name": f"load-{k}"})
        try:
            for i in range(STATEMENTS):
                assert await conn.fetchval("SELECT $1::int", i) == i
        finally:
            await conn.close()

    async def load() -> None:
        await asyncio.gather(*(client(k) for k in range(SESSIONS)))

    try:
        started = time.monotonic()
        asyncio.run(load())
        elapsed = time.monotonic() - started
    finally:
        code = gw.stop()  # drains, flushes the writer, signs a shutdown checkpoint
    assert code == 0, gw.log
    print(f"{SESSIONS * STATEMENTS} statements in {elapsed:.1f} s")
    # Group commit: SQLite took the journal in a transaction every few dozen milliseconds
    # (one row per transaction), never one per statement.
    db = sqlite3.connect(tmp_path / "audit.sqlite")
    transactions = db.execute("SELECT count(*) FROM blocks").fetchone()[0]
    db.close()
    assert transactions < SESSIONS * STATEMENTS / 20, transactions
    result = audit_verify(config)
    assert result.returncode == 0, result.stdout + result.stderr

    # 200,000 records: fields are picked from the bodies with patterns, not decoded
    # (json.loads alone would take seconds). Bodies start {"v","seq","at","type","session","n",...}.
    number, kind, param = re.compile(rb'"n":(\d+),'), re.compile(rb'"kind":"(\w+)"'), re.compile(rb'"params":\["(\d+)"\]')
    statements: dict[tuple, bytes] = {}
    results: Counter = Counter()
    for r in read_stored(tmp_path / "audit.sqlite"):
        if r.type == "statement":
            key = (r.session, int(number.search(r.body).group(1)))
            assert key not in statements, f"statement {key} stored twice"
            statements[key] = r.body
        elif r.type == "result":
            results[r.session, int(number.search(r.body).group(1))] += 1
    assert sum(results.values()) == len(results) == len(statements)  # one result per statement
    assert set(results) == set(statements)
    kinds = Counter(kind.search(body).group(1) for body in statements.values())
    assert kinds == {b"execute": SESSIONS * STATEMENTS, b"parse": SESSIONS}
    params: dict[str, list[int]] = {}
    for (session, _n), body in sorted(statements.items()):
        found = param.search(body)
        if found:
            params.setdefault(session, []).append(int(found.group(1)))
    assert len(params) == SESSIONS
    assert all(values == list(range(STATEMENTS)) for values in params.values())  # in order, none lost or extra


def test_gateway_retention_removes_old_sessions_and_the_trail_still_verifies(tmp_path, pg):
    """AU-11 in the running gateway: a prefix older than max_age goes, a signed retention
    checkpoint and an audit record say what and why, and what remains verifies."""
    import asyncio as _asyncio

    from pgwarden.store.sqlite import SqliteAuditStore
    from pgwarden.store.verify import verify_store
    from pgwarden.testing.gateway import RunningGateway, gateway_config

    config = gateway_config(
        pg, users=[{"name": "ret", "scram_verifier": make_verifier("ret-pw")}], data_dir=str(tmp_path),
        audit={"retention": {"max_age": "1s", "check_every": "1s"}, "checkpoints": {"every_seconds": 0.3}},
    )
    with RunningGateway(config) as gw:
        with psycopg.connect(gw.dsn("ret", "ret-pw", "app")) as conn:
            conn.execute("select 'old'")
        time.sleep(2.5)  # older than max_age, then a checkpoint, then a retention round
        with psycopg.connect(gw.dsn("ret", "ret-pw", "app")) as conn:
            conn.execute("select 'new'")
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            gw.call(gw.gateway.audit_writer.flush)
            found = gw.call(_retention_records, gw.gateway.audit_writer.store)
            if found:
                break
            time.sleep(0.3)
        assert found, "no retention record"
    async def check():
        store = SqliteAuditStore(tmp_path / "audit.sqlite")
        await store.open(create=False)
        try:
            report = await verify_store(store)
            checkpoints = [c for c in await store.checkpoints() if b'"reason":"retention"' in c.body]
            first = [r async for r in store.records()][0].seq
            return report, checkpoints, first
        finally:
            await store.close()

    report, checkpoints, first = _asyncio.run(check())
    assert report.ok, report
    assert checkpoints and first > 1


async def _retention_records(store):
    return [r async for r in store.records() if r.type == "audit" and b'"event":"retention"' in r.body]
