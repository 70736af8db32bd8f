"""The approval store backends' own duties: SQLite next to a running audit writer, PostgreSQL's
notifications, reconnects and privileges (the shared contract is test_approval_store.py)."""

from __future__ import annotations

import asyncio
import secrets
import sqlite3

import asyncpg
import pytest

from pgwarden.store.approvals_postgres import CHANNEL, PostgresApprovalStore
from pgwarden.store.approvals_sqlite import SqliteApprovalStore
from pgwarden.store.base import AuditStoreError
from pgwarden.store.records import make_record
from pgwarden.store.sqlite import SqliteAuditStore

from pgwarden.store.approvals import ApprovalError

from test_approval_store import BOB, EVE, FP, T0, req

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def approvals_db(pg):
    name = f"apprb_{secrets.token_hex(4)}"
    pg.psql(f"CREATE DATABASE {name} OWNER app")
    yield name
    pg.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


# ---------------------------------------------------------------- SQLite only


async def test_sqlite_reader_refuses_a_missing_file(tmp_path):
    path = tmp_path / "audit.sqlite"
    store = SqliteApprovalStore(path)
    with pytest.raises(AuditStoreError, match="no audit trail at .*audit.sqlite"):
        await store.open(create=False)
    assert not path.exists()  # a reader never creates the audit file
    await store.close()


async def test_sqlite_shares_the_file_with_a_running_audit_writer(tmp_path):
    """The gateway's audit writer holds the flock and its own connection; the approval
    store (the CLI, with create=False) adds its tables and works beside it."""
    path = tmp_path / "audit.sqlite"
    audit = SqliteAuditStore(path)
    await audit.open()
    try:
        await audit.append([make_record("statement", "s1", {"text": "SELECT 1"}, at=T0)])
        cli = SqliteApprovalStore(path)
        await cli.open(create=False)  # creates the tables in the existing trail
        try:
            r = req()
            await cli.create(r, chained=False)
            await cli.decide(r.id, BOB, "approve", "", T0 + 1, chained=False)
            await audit.append([make_record("statement", "s1", {"text": "SELECT 2"}, at=T0 + 2)])
            audit.load_journal()  # the writer's records move into SQLite next to the approval rows
            assert await audit.bounds() == (1, 2, 2)
            assert (await cli.get(r.id)).status == "approved"
        finally:
            await cli.close()
    finally:
        await audit.close()


async def test_sqlite_file_made_by_the_approval_store_suits_the_audit_store(tmp_path):
    path = tmp_path / "sub" / "audit.sqlite"
    store = SqliteApprovalStore(path)
    await store.open()  # create=True: makes the file
    await store.close()
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA page_size").fetchone()[0] == 65536  # the audit store's page size
    finally:
        conn.close()
    audit = SqliteAuditStore(path)
    await audit.open()
    await audit.append([make_record("statement", "s1", {"text": "SELECT 1"}, at=T0)])
    await audit.close()


async def test_sqlite_reader_refuses_a_foreign_file(tmp_path):
    path = tmp_path / "other.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE t (x)")
    conn.close()
    with pytest.raises(AuditStoreError, match="not a pgwarden audit trail"):
        await SqliteApprovalStore(path).open(create=False)


async def test_sqlite_waits_for_the_write_lock_off_the_event_loop(tmp_path):
    """While another process holds the write lock, a decision waits on the worker
    thread and the event loop keeps running; it completes once the lock is free."""
    path = tmp_path / "audit.sqlite"
    store = SqliteApprovalStore(path)
    await store.open()
    try:
        r = req()
        await store.create(r, chained=True)
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        task = asyncio.ensure_future(store.decide(r.id, BOB, "approve", "", T0 + 1, chained=True))
        ticks = 0
        for _ in range(20):
            await asyncio.sleep(0.01)
            ticks += 1
        assert ticks == 20 and not task.done()  # the loop ran while the decision waited
        other.execute("ROLLBACK")
        other.close()
        updated, _ = await asyncio.wait_for(task, 10)
        assert updated.status == "approved"
    finally:
        await store.close()


# ---------------------------------------------------------------- PostgreSQL only


async def test_pg_default_schema_is_the_audit_schema():
    from pgwarden.store.postgres import PostgresAuditStore

    assert PostgresApprovalStore("host=x dbname=y").schema == PostgresAuditStore("host=x dbname=y").schema
    with pytest.raises(AuditStoreError, match="invalid"):
        PostgresApprovalStore("host=x", schema="bad-name; DROP")


async def test_pg_reader_refuses_a_missing_schema(pg, approvals_db):
    store = PostgresApprovalStore(pg.dsn("app", approvals_db), schema="nothing_here")
    with pytest.raises(AuditStoreError, match="no pgwarden audit trail"):
        await store.open(create=False)
    await store.close()


async def test_pg_notifies_every_change(pg, approvals_db):
    schema = f"t_{secrets.token_hex(4)}"
    store = PostgresApprovalStore(pg.dsn("app", approvals_db), schema=schema)
    await store.open()
    listener = await asyncpg.connect(host=pg.host, port=pg.port, user="app", password=pg.passwords["app"],
                                     database=approvals_db)
    got: asyncio.Queue[str] = asyncio.Queue()
    await listener.add_listener(CHANNEL, lambda *args: got.put_nowait(args[-1]))
    try:
        r = req()
        await store.create(r, chained=True)
        with pytest.raises(ApprovalError):  # a refused decision notifies nobody
            await store.decide(r.id, EVE, "approve", "", T0 + 1, chained=True)
        await store.decide(r.id, BOB, "approve", "", T0 + 1, chained=True)
        await store.consume("alice", FP, T0 + 2, "s-2", chained=True)
        other = req(at=T0 + 3)
        await store.create(other, chained=True)
        await store.expire_due(T0 + 10_000, chained=True)
        payloads = [await asyncio.wait_for(got.get(), 5) for _ in range(5)]
        assert payloads == [r.id, r.id, r.id, other.id, other.id]
        assert got.empty()
    finally:
        await listener.close()
        await store.close()


def _kick(pg, db: str) -> None:
    pg.psql(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}' AND pid <> pg_backend_pid()")


async def test_pg_reconnects_after_losing_the_connection(pg):
    db = f"appr_{secrets.token_hex(4)}"
    pg.psql(f"CREATE DATABASE {db} OWNER app")
    store = PostgresApprovalStore(pg.dsn("app", db), timeout=5)
    try:
        await store.open()
        r = req()
        await store.create(r, chained=True)
        _kick(pg, db)
        assert await store.get(r.id) == r  # a stale connection is replaced at once
        _kick(pg, db)
        await store.decide(r.id, BOB, "approve", "", T0 + 1, chained=True)  # and in a write, before COMMIT
        pg.psql(f"ALTER DATABASE {db} ALLOW_CONNECTIONS false")
        _kick(pg, db)
        with pytest.raises(AuditStoreError, match="cannot connect"):
            await store.consume("alice", FP, T0 + 2, "s-2", chained=True)
        pg.psql(f"ALTER DATABASE {db} ALLOW_CONNECTIONS true")
        used = await store.consume("alice", FP, T0 + 2, "s-2", chained=True)  # reconnects on the next call
        assert used is not None and used[0].status == "executed"
    finally:
        await store.close()
        pg.psql(f"ALTER DATABASE {db} ALLOW_CONNECTIONS true; DROP DATABASE IF EXISTS {db} WITH (FORCE)")


async def test_pg_role_without_create_uses_tables_an_administrator_made(pg, approvals_db):
    schema = f"t_{secrets.token_hex(4)}"
    worker = PostgresApprovalStore(pg.dsn("trustuser", approvals_db), schema=schema)
    with pytest.raises(AuditStoreError, match="permission denied"):
        await worker.open()
    owner = PostgresApprovalStore(pg.dsn("app", approvals_db), schema=schema)
    await owner.open()
    await owner.close()
    pg.psql(
        f"GRANT USAGE ON SCHEMA {schema} TO trustuser;"
        f"GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA {schema} TO trustuser;"
        f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA {schema} TO trustuser;",
        user="app", database=approvals_db,
    )
    await worker.open(create=False)
    try:
        r = req()
        await worker.create(r, chained=False)
        assert (await worker.decide(r.id, BOB, "approve", "", T0 + 1, chained=True))[0].status == "approved"
        assert len(await worker.claim_unchained()) == 1
    finally:
        await worker.close()


