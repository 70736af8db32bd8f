"""The AuditStore contract (pgwarden/store/base.py), run against both backends.

Why one suite: verification, export and ``sessions list`` sit above the store
and must not care which backend holds the trail, so every behaviour they rely
on is checked here on SQLite and PostgreSQL alike, including two gateways
appending to one trail. The PostgreSQL-only tests cover what only a network
store has: connections that die, a store that is down, logins and privileges.

PostgreSQL stores live in one database per module (owned by the unprivileged
``app`` role, so no test depends on superuser rights) with a fresh schema per
test; tests that kill connections get a database of their own.
"""

from __future__ import annotations

import asyncio
import errno
import os
import hashlib
import json
import secrets
import socket

import asyncpg
import pytest

from pgwarden.store.base import AuditStoreError, SessionFilter, SessionSummary, StoredCheckpoint
from pgwarden.store.postgres import PostgresAuditStore
from pgwarden.store.records import GENESIS, chain_hash, make_record, parse_body
from pgwarden.store.sqlite import SqliteAuditStore

pytestmark = pytest.mark.anyio

T0 = 1_790_000_000.0  # 2026-09-21T...Z, a fixed clock so every `at` is known


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def audit_db(pg):
    name = f"audit_{secrets.token_hex(4)}"
    pg.psql(f"CREATE DATABASE {name} OWNER app")
    yield name
    pg.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def own_db(pg):
    """A database for one test that terminates connections or refuses them."""
    name = f"audit_{secrets.token_hex(4)}"
    pg.psql(f"CREATE DATABASE {name} OWNER app")
    yield name
    pg.psql(f"ALTER DATABASE {name} ALLOW_CONNECTIONS true; DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(params=["sqlite", "postgres"])
async def open_store(request, tmp_path):
    """Opens stores on one fresh trail; each call is one more gateway sharing it."""
    if request.param == "sqlite":
        def make():
            return SqliteAuditStore(tmp_path / "audit.sqlite")
    else:
        pg, db, schema = request.getfixturevalue("pg"), request.getfixturevalue("audit_db"), f"t_{secrets.token_hex(4)}"

        def make():
            return PostgresAuditStore(pg.dsn("app", db), schema=schema)
    opened = []

    async def factory():
        opened.append(make())
        await opened[-1].open()
        return opened[-1]

    yield factory
    for s in opened:
        await s.close()


@pytest.fixture
async def store(open_store):
    return await open_store()


def rec(seconds: float, record_type: str = "statement", session: str | None = "s1", **fields):
    return make_record(record_type, session, fields or {"text": f"SELECT {seconds}"}, at=T0 + seconds)


def summary(sid: str, seconds: float, **kw) -> SessionSummary:
    return SessionSummary(id=sid, started_at=make_record("x", None, {}, at=T0 + seconds).at, **kw)


def checkpoint(seq: int, hash_: bytes, reason: str = "interval", at: float = 0.0) -> StoredCheckpoint:
    stamp = make_record("x", None, {}, at=T0 + at).at
    body = json.dumps(
        {"at": stamp, "hash": hash_.hex(), "reason": reason, "seq": seq, "type": "checkpoint", "v": 1},
        sort_keys=True, separators=(",", ":"),
    ).encode()
    return StoredCheckpoint(0, seq, stamp, body, hashlib.sha512(body).digest())  # stands in for Ed25519


async def all_records(store, *args, **kw):
    return [r async for r in store.records(*args, **kw)]


def assert_chain(records, previous: bytes = GENESIS, first: int = 1) -> bytes:
    """Gap-free seqs from ``first``, bodies that carry their seq and `at`, hashes that recompute."""
    for expected, r in enumerate(records, start=first):
        assert r.seq == expected
        assert r.body.startswith(b'{"v":1,"seq":%d,' % expected)
        fields = parse_body(r.body)
        assert (fields["at"], fields["type"], fields["session"]) == (r.at, r.type, r.session)
        previous = chain_hash(previous, r.body)
        assert r.hash == previous
    return previous


# ---------------------------------------------------------------- contract (both backends)


async def test_empty_store(store):
    assert await store.head() == (0, GENESIS)
    assert await store.bounds() == (0, 0, 0)
    assert await all_records(store) == []
    assert await store.checkpoints() == []
    assert await store.sessions() == []
    assert await store.last_seq_before("2100-01-01T00:00:00.000000Z") == 0
    assert await store.get_meta("store_id") is None
    assert await store.append([]) == (0, GENESIS)


async def test_append_numbers_chains_and_returns_head(store):
    first = [rec(1), rec(2, session=None, record_type="audit"), rec(3, session="s2")]
    seq, h = await store.append(first)
    assert [p.seq for p in first] == [1, 2, 3]
    second = [rec(4), rec(5)]
    assert await store.append(second) == (5, (await store.head())[1])
    assert [p.seq for p in second] == [4, 5]
    records = await all_records(store)
    assert records[2].hash == h and seq == 3
    last = assert_chain(records)
    assert await store.head() == (5, last)
    assert await store.bounds() == (1, 5, 5)
    assert [r.at for r in records] == [p.at for p in first + second]
    assert records[1].session is None and records[1].type == "audit"


async def test_session_summaries(store):
    started = summary("sess-aaaa-0001", 1, gateway="gw1", user="alice", roles=["analyst", "dba"], target="app")
    await store.append([rec(0, session=None, record_type="audit"), rec(1, "connect", "sess-aaaa-0001")], [started])
    got = await store.session("sess-aaaa-0001")
    assert got.first_seq == 2 and got.last_seq is None and got.ended_at is None
    assert got.roles == ["analyst", "dba"] and got.user == "alice" and got.gateway == "gw1"
    # A second "started" for the same id is ignored.
    await store.append([], [summary("sess-aaaa-0001", 9, user="mallory")])
    assert (await store.session("sess-aaaa-0001")).user == "alice"
    ended = summary(
        "sess-aaaa-0001", 1, gateway="gw1", user="alice", roles=["analyst"], target="app", first_seq=2,
        ended_at="2026-09-21T00:00:09.000000Z", statements=4, refused=1, errors=2, masked=3, end_reason="client",
    )
    await store.append([rec(2), rec(3, "disconnect", "sess-aaaa-0001")], sessions_ended=[ended])
    got = await store.session("sess-aaaa-0001")
    assert got.as_dict() == {**ended.as_dict(), "last_seq": 4}
    # Started and ended in the same group commit (the recorder keeps one summary object per session).
    s2 = summary("sess-bbbb-0002", 5, user="bob")
    s2.end_reason = "eof"
    await store.append([rec(5, "connect", "sess-bbbb-0002"), rec(6, "disconnect", "sess-bbbb-0002")], [s2], [s2])
    got = await store.session("sess-bbbb-0002")
    assert (got.first_seq, got.last_seq, got.end_reason) == (5, 6, "eof")


async def test_sessions_filters(store):
    rows = [
        summary("s-01", 1, user="alice", subject="alice@corp", roles=["analyst"], target="app"),
        summary("s-02", 2, user="svc", subject="bot@ci", roles=["deployer"], target="app", refused=2),
        summary("s-03", 3, user="alice", roles=[], target="billing", masked=5),
        summary("s-04", 4, user="bob", subject="bob@corp", roles=["analyst", "dba"], target="billing", refused=1, masked=1),
        summary("s-05", 5, user="carol", target="app"),
    ]
    await store.append([], rows[:3])
    await store.append([], rows[3:])

    async def ids(**kw):
        return [s.id for s in await store.sessions(SessionFilter(**kw))]

    assert await ids() == ["s-05", "s-04", "s-03", "s-02", "s-01"]
    assert await ids(limit=2) == ["s-05", "s-04"]
    assert await ids(identity="*@corp") == ["s-04", "s-01"]
    assert await ids(identity="alice") == ["s-03", "s-01"]  # the user name, subject or not
    assert await ids(identity="alice*", limit=1) == ["s-03"]
    assert await ids(role="analyst") == ["s-04", "s-01"]
    assert await ids(role="d*") == ["s-04", "s-02"]
    assert await ids(target="billing") == ["s-04", "s-03"]
    assert await ids(since=rows[2].started_at) == ["s-05", "s-04", "s-03"]
    assert await ids(until=rows[2].started_at) == ["s-02", "s-01"]
    assert await ids(since=rows[1].started_at, until=rows[3].started_at) == ["s-03", "s-02"]
    assert await ids(only_refused=True) == ["s-04", "s-02"]
    assert await ids(only_masked=True) == ["s-04", "s-03"]
    assert await ids(only_refused=True, only_masked=True, target="billing", role="dba", identity="bob") == ["s-04"]
    assert await ids(identity="nobody") == []


async def test_sessions_glob_filter_reaches_old_sessions(store):
    """Glob filters apply after the query: the newest non-matching rows must not hide older matches."""
    many = [summary(f"new-{i:04d}", 100 + i, user="noise") for i in range(620)]
    old = [summary(f"old-{i}", i, user="target-user", roles=["r"]) for i in range(3)]
    await store.append([], old + many)
    assert [s.id for s in await store.sessions(SessionFilter(identity="target-*"))] == ["old-2", "old-1", "old-0"]
    assert len(await store.sessions(SessionFilter(role="r", limit=2))) == 2
    assert len(await store.sessions(SessionFilter(identity="noise", limit=600))) == 600


async def test_session_by_id_and_prefix(store):
    await store.append([], [summary(i, n) for n, i in enumerate(["5f2a9c0e1b7d", "5f2a9cff0000", "ab_cd%ef1234"])])
    assert (await store.session("5f2a9c0e1b7d")).id == "5f2a9c0e1b7d"
    assert (await store.session("5f2a9c0")).id == "5f2a9c0e1b7d"
    assert await store.session("5f2a9c") is None  # ambiguous
    assert await store.session("5f2a9") is None  # too short for a prefix
    assert await store.session("5f2a9c0e1b7dX") is None
    assert (await store.session("ab_cd%")).id == "ab_cd%ef1234"
    assert await store.session("ab_cd_") is None and await store.session("ab%cd%") is None  # no wildcards


async def test_records_paging_and_session_filter(store):
    pending = [rec(i, session=("s1", "s2", None)[i % 3]) for i in range(25)]
    await store.append(pending[:10])
    await store.append(pending[10:])
    everything = await all_records(store, batch=4)
    assert_chain(everything)
    assert len(everything) == 25
    assert [r.seq for r in await all_records(store, 5, 12, batch=3)] == list(range(5, 13))
    assert [r.seq for r in await all_records(store, 24)] == [24, 25]
    assert await all_records(store, 26) == []
    s1 = await all_records(store, session="s1", batch=3)
    assert [r.seq for r in s1] == [p.seq for p in pending if p.session == "s1"]
    assert [r.seq for r in await all_records(store, 10, 20, session="s2", batch=2)] == [
        p.seq for p in pending if p.session == "s2" and 10 <= p.seq <= 20
    ]
    assert await all_records(store, session="nope") == []


async def test_checkpoints(store):
    seq, h = await store.append([rec(i) for i in range(6)])
    added = [checkpoint(5, h), checkpoint(2, h, at=1), checkpoint(5, h, "shutdown", at=2)]
    for c in added:
        await store.add_checkpoint(c)
    got = await store.checkpoints()
    key = lambda c: (c.seq, c.at, c.body, c.signature)  # noqa: E731
    assert [key(c) for c in got] == [key(added[1]), key(added[0]), key(added[2])]  # (seq, id) order
    assert got[1].id < got[2].id
    assert [c.seq for c in await store.checkpoints(3)] == [5, 5]
    assert [c.seq for c in await store.checkpoints(0, 4)] == [2]
    assert [c.seq for c in await store.checkpoints(6)] == []


async def test_last_seq_before(store):
    pending = [rec(i * 10) for i in range(5)]
    await store.append(pending)
    assert await store.last_seq_before(pending[0].at) == 0
    assert await store.last_seq_before(pending[3].at) == 3
    assert await store.last_seq_before("2100-01-01T00:00:00.000000Z") == 5


async def test_retention_and_head_anchor(store):
    started = [summary(f"sess-{i}", i) for i in range(3)]
    pending = [rec(0, "connect", "sess-0"), rec(1, "disconnect", "sess-0"), rec(2, "connect", "sess-1"),
               rec(3, "connect", "sess-2"), rec(4, "disconnect", "sess-2"), rec(5, "statement", "sess-1")]
    await store.append(pending, started, [summary("sess-0", 0), summary("sess-2", 2)])
    records = await all_records(store)
    assert await store.delete_through(3, checkpoint(3, records[2].hash, "retention")) == 3
    assert await store.bounds() == (4, 6, 3)
    assert await store.head() == (6, records[5].hash)
    assert [s.id for s in await store.sessions()] == ["sess-2", "sess-1"]  # sess-0 ended at seq 2
    assert await store.delete_through(6, checkpoint(6, records[5].hash, "retention")) == 3
    assert await store.bounds() == (0, 0, 0)
    assert [s.id for s in await store.sessions()] == ["sess-1"]  # never ended: kept
    assert await store.head() == (6, records[5].hash)  # the signed anchor
    assert [c.seq for c in await store.checkpoints()] == [3, 6]
    nxt = [rec(9)]
    assert await store.append(nxt) == (7, chain_hash(records[5].hash, (await all_records(store))[0].body))
    assert_chain(await all_records(store), records[5].hash, first=7)


async def test_meta(store):
    assert await store.get_meta("format") is None
    await store.set_meta("format", "1")
    await store.set_meta("store_id", "abc")
    await store.set_meta("format", "2")
    assert (await store.get_meta("format"), await store.get_meta("store_id")) == ("2", "abc")


@pytest.mark.parametrize("open_store", ["postgres"], indirect=True)  # SQLite: test_sqlite_journal_failure_keeps_nothing
async def test_failed_append_keeps_nothing(store):
    before = await store.append([rec(0), rec(1)], [summary("keep-1", 0)])
    bad = summary("bad-1", 2, statements=object())  # not storable: fails after the records were inserted
    with pytest.raises(AuditStoreError):
        await store.append([rec(2, "connect", "bad-1"), rec(3), rec(4)], [summary("bad-0", 2)], [bad])
    assert await store.head() == before
    assert await store.bounds() == (1, 2, 2)
    assert [s.id for s in await store.sessions()] == ["keep-1"]
    # The store is still usable and continues the chain where it was.
    assert (await store.append([rec(5)]))[0] == 3
    assert_chain(await all_records(store))


async def test_sqlite_journal_failure_keeps_nothing(tmp_path):
    """An append whose journal write fails raises, keeps nothing, and the chain continues after it."""
    store = SqliteAuditStore(tmp_path / "audit.sqlite")
    await store.open()
    before = await store.append([rec(0), rec(1)])
    write = store._journal_write

    def disk_error(data):
        raise OSError(errno.EIO, "Input/output error")

    store._journal_write = disk_error
    with pytest.raises(AuditStoreError, match="cannot write"):
        await store.append([rec(2), rec(3)])
    store._journal_write = write
    assert await store.head() == before
    assert (await store.append([rec(4)]))[0] == 3
    assert_chain(await all_records(store))
    await store.close()
    store._journal_fd = None
    with pytest.raises(AuditStoreError, match="not open"):
        await store.append([rec(1)])


async def test_sqlite_journal_survives_a_crash(tmp_path):
    """Records appended but not yet loaded into SQLite are recovered from the journal on the next open."""
    path = tmp_path / "audit.sqlite"
    store = SqliteAuditStore(path)
    await store.open()
    started = summary("crash-1", 0, user="alice")
    await store.append([rec(0, "connect", "crash-1"), rec(1)], [started])
    head = await store.head()
    # A crash: the process dies without loading the journal or closing anything.
    store._journal_map.close()
    os.close(store._journal_fd)
    os.close(store._lock_fd)
    store._journal_map = store._journal_fd = store._lock_fd = None
    # A reader sees the journal's records before any gateway restarted.
    reader = SqliteAuditStore(path)
    await reader.open(create=False)
    assert [r.seq for r in await all_records(reader)] == [1, 2]
    await reader.close()
    again = SqliteAuditStore(path)
    await again.open()
    assert await again.head() == head
    assert (await again.session("crash-1")).first_seq == 1
    assert_chain(await all_records(again))
    await again.close()


async def test_sqlite_reader_refuses_missing_trail(tmp_path):
    with pytest.raises(AuditStoreError):
        await SqliteAuditStore(tmp_path / "none.sqlite").open(create=False)


async def test_sqlite_refuses_a_second_writer(tmp_path):
    first = SqliteAuditStore(tmp_path / "audit.sqlite")
    await first.open()
    with pytest.raises(AuditStoreError, match="postgres audit store"):
        await SqliteAuditStore(tmp_path / "audit.sqlite").open()
    await first.close()
    second = SqliteAuditStore(tmp_path / "audit.sqlite")
    await second.open()  # the lock went with the first writer
    await second.close()


@pytest.mark.parametrize("open_store", ["postgres"], indirect=True)  # SQLite: test_sqlite_refuses_a_second_writer
async def test_two_gateways_share_one_chain(open_store):
    """Interleaved group commits from two store objects (two gateways) form one gap-free chain."""
    a, b = await open_store(), await open_store()

    async def gateway(store, name, n):
        heads = []
        for i in range(n):
            batch = [rec(i, session=f"{name}-{i % 4}") for _ in range(1 + i % 3)]
            heads.append((await store.append(batch))[0])
            assert [p.seq for p in batch] == list(range(heads[-1] - len(batch) + 1, heads[-1] + 1))
            await asyncio.sleep(0)  # let the other gateways in (SQLite appends never suspend)
        return heads

    results = await asyncio.gather(*(gateway(s, f"gw{k}", 40) for k, s in enumerate((a, b, a, b))))
    total = sum(1 + i % 3 for i in range(40)) * 4
    records = await all_records(a)
    assert len(records) == total
    assert await b.head() == await a.head() == (total, assert_chain(records))
    assert max(h for heads in results for h in heads) == total
    assert len({h for heads in results for h in heads}) == 160  # every commit got its own range


async def test_backends_return_identical_values(pg, audit_db, tmp_path):
    """The same group commits give byte-identical records, summaries and checkpoints on both."""
    stores = [SqliteAuditStore(tmp_path / "same.sqlite"),
              PostgresAuditStore(pg.dsn("app", audit_db), schema=f"t_{secrets.token_hex(4)}")]
    started = summary("same-1", 0, user="ü", subject="sub", roles=["a", "b"], target="app", client="1.2.3.4:5")
    pending = [rec(0, "connect", "same-1"), rec(1, text="SELECT 'é\u2028\\x00'"), rec(2, session=None)]
    ended = [summary("same-1", 0, user="ü", roles=["a", "b"], first_seq=1, statements=1, end_reason="eof")]
    seen = []
    for s in stores:
        await s.open()
        try:
            await s.append(pending, [started])
            head = await s.append([rec(3, "disconnect", "same-1")], sessions_ended=ended)
            await s.add_checkpoint(checkpoint(head[0], head[1]))
            seen.append((head, await all_records(s), [x.as_dict() for x in await s.sessions()],
                         [(c.seq, c.at, c.body, c.signature) for c in await s.checkpoints()], await s.bounds()))
        finally:
            await s.close()
    assert seen[0] == seen[1]


# ---------------------------------------------------------------- PostgreSQL only


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_pg_open_refuses_unreachable_and_hides_password():
    store = PostgresAuditStore(f"postgresql://app:Sup3r-Secret@127.0.0.1:{_free_port()}/x", timeout=5)
    with pytest.raises(AuditStoreError, match="unreachable") as info:
        await store.open()
    assert "Sup3r-Secret" not in str(info.value) and "127.0.0.1" in str(info.value)


async def test_pg_login_refused_hides_password(pg, audit_db):
    store = PostgresAuditStore(pg.dsn("app", audit_db, password="Wr0ng-Secret-pw"))
    with pytest.raises(AuditStoreError, match="login refused") as info:
        await store.open()
    assert "Wr0ng-Secret-pw" not in str(info.value)


async def test_pg_reader_refuses_missing_schema(pg, audit_db):
    store = PostgresAuditStore(pg.dsn("app", audit_db), schema="nothing_here")
    with pytest.raises(AuditStoreError, match="no pgwarden audit trail"):
        await store.open(create=False)
    await store.close()


async def test_pg_uri_dsn_and_least_privilege(pg, audit_db):
    """A role without CREATE cannot make the schema, but can use one an administrator made."""
    schema = f"t_{secrets.token_hex(4)}"
    worker = PostgresAuditStore(pg.dsn("trustuser", audit_db), schema=schema)
    with pytest.raises(AuditStoreError, match="permission denied"):
        await worker.open()
    owner = PostgresAuditStore(
        f"postgresql://app:{pg.passwords['app']}@{pg.host}:{pg.port}/{audit_db}", schema=schema
    )
    await owner.open()
    await owner.close()
    pg.psql(
        f"GRANT USAGE ON SCHEMA {schema} TO trustuser;"
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO trustuser;"
        f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA {schema} TO trustuser;",
        user="app", database=audit_db,
    )
    await worker.open()
    try:
        await worker.append([rec(0)], [summary("w-1", 0)])
        await worker.set_meta("k", "v")
        await worker.add_checkpoint(checkpoint(1, (await worker.head())[1]))
        assert await worker.bounds() == (1, 1, 1)
    finally:
        await worker.close()


def _kick(pg, db: str) -> None:
    pg.psql(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}' AND pid <> pg_backend_pid()")


async def test_pg_recording_resumes_after_store_outage(pg, own_db):
    store = PostgresAuditStore(pg.dsn("app", own_db), timeout=5)
    await store.open()
    try:
        await store.append([rec(0), rec(1)])
        assert await store.bounds() == (1, 2, 2)  # the reader connection exists too
        _kick(pg, own_db)
        assert (await store.append([rec(2)]))[0] == 3  # reconnects by itself
        assert await store.bounds() == (1, 3, 3)
        pg.psql(f"ALTER DATABASE {own_db} ALLOW_CONNECTIONS false")
        _kick(pg, own_db)
        for _ in range(2):  # the writer retries while the store is down
            with pytest.raises(AuditStoreError, match="cannot connect"):
                await store.append([rec(3), rec(4)])
        pg.psql(f"ALTER DATABASE {own_db} ALLOW_CONNECTIONS true")
        assert (await store.append([rec(3), rec(4)]))[0] == 5
        assert_chain(await all_records(store))
    finally:
        await store.close()


class _Flaky(PostgresAuditStore):
    """Loses the connection once, while reading the head or at COMMIT (after or before it is done)."""

    fail_at = ""  # "head", "commit-done" or "commit-lost"

    async def _head(self, conn):
        if self.fail_at == "head":
            self.fail_at = ""
            conn.terminate()
            raise asyncpg.ConnectionDoesNotExistError("connection lost (simulated)")
        return await super()._head(conn)

    async def _commit(self, conn):
        if not self.fail_at.startswith("commit"):
            return await super()._commit(conn)
        if self.fail_at == "commit-done":
            await super()._commit(conn)
        self.fail_at = ""
        conn.terminate()
        raise asyncpg.ConnectionDoesNotExistError("connection lost during COMMIT (simulated)")


async def test_pg_connection_lost_before_commit_is_retried_at_once(pg, audit_db):
    store = _Flaky(pg.dsn("app", audit_db), schema=f"t_{secrets.token_hex(4)}")
    await store.open()
    try:
        await store.append([rec(0)])
        store.fail_at = "head"
        assert (await store.append([rec(1), rec(2)]))[0] == 3
        assert not store.fail_at
        assert_chain(await all_records(store))
    finally:
        await store.close()


@pytest.mark.parametrize("commits", [True, False])
async def test_pg_retry_after_unanswered_commit_stores_batch_once(pg, audit_db, commits):
    store = _Flaky(pg.dsn("app", audit_db), schema=f"t_{secrets.token_hex(4)}")
    await store.open()
    try:
        await store.append([rec(0)])
        batch = [rec(1, "connect", "c-1"), rec(2)]
        store.fail_at = "commit-done" if commits else "commit-lost"
        with pytest.raises(AuditStoreError, match="unreachable"):
            await store.append(batch, [summary("c-1", 1)])
        assert await store.bounds() == ((1, 3, 3) if commits else (1, 1, 1))
        retry = batch + [rec(3)]  # the writer retries the batch, with what arrived since
        assert (await store.append(retry, [summary("c-1", 1)]))[0] == 4
        assert [p.seq for p in retry] == [2, 3, 4]
        records = await all_records(store)
        assert_chain(records)
        assert len(records) == len({r.body for r in records}) == 4  # nothing stored twice
        assert (await store.session("c-1")).first_seq == 2
    finally:
        await store.close()


def test_pg_dsn_forms_and_store_for():
    from types import SimpleNamespace

    from pgwarden.config_audit import AuditStoreConfig
    from pgwarden.store import store_for
    from pgwarden.store.postgres import parse_dsn

    uri, params = parse_dsn(r"host=/tmp/s port = 5433 user=au password='it\'s a \\ x' dbname=trail connect_timeout=3")
    assert params == {"host": "/tmp/s", "port": "5433", "user": "au", "password": "it's a \\ x", "dbname": "trail",
                      "connect_timeout": "3"}
    assert uri.startswith("postgresql://?") and "connect_timeout" not in uri
    store = store_for(SimpleNamespace(audit=SimpleNamespace(
        store=AuditStoreConfig(type="postgres", dsn="postgresql://au:pw@db.internal:6432/trail?sslmode=require"))))
    assert isinstance(store, PostgresAuditStore)
    assert store.where == "postgresql://au@db.internal:6432/trail" and store.timeout == 30
    with pytest.raises(AuditStoreError, match="invalid"):
        parse_dsn("host=x password='unterminated")
