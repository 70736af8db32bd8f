"""The ApprovalStore contract (pgwarden/store/approvals.py), run against both backends.

What a reviewer, a gateway and the CLI rely on, on SQLite and PostgreSQL
alike: a request is found by its id or a unique prefix; N distinct reviewers
with a reviewer role approve it, nobody approves their own request or decides
twice; an approved ticket runs exactly once, for the same requester and the
same statement, within its validity, even when two gateways (two store
instances) try at the same moment; sweeps expire what is due; events that
nobody chained are claimed exactly once across gateways. The clock is fixed
(every call gets ``now``), so no assertion depends on timing.

PostgreSQL stores live in one database per module owned by the unprivileged
``app`` role, with a fresh schema per test; the test that kills connections
gets a database of its own.
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets

import pytest

from pgwarden.store.approvals import (
    ApprovalError,
    ApprovalRequest,
    Reviewer,
    event_fields,
    fingerprint,
)
from pgwarden.store.approvals_postgres import PostgresApprovalStore
from pgwarden.store.approvals_sqlite import SqliteApprovalStore
from pgwarden.store.base import AuditStoreError

pytestmark = pytest.mark.anyio

T0 = 1_790_000_000.0  # a fixed clock
TIMEOUT = 600.0  # a pending request expires at created_at + TIMEOUT
VALIDITY = 900.0

BOB = Reviewer("bob", ("dba",))
CAROL = Reviewer("carol", ("ops", "dba"), via="api")
EVE = Reviewer("eve", ("developer",))  # not a reviewer
ADMIN = Reviewer("local:root", (), admin=True)
FP = fingerprint("app", "DELETE FROM orders WHERE id = $1", [(0, b"42")])


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def approvals_db(pg):
    name = f"appr_{secrets.token_hex(4)}"
    pg.psql(f"CREATE DATABASE {name} OWNER app")
    yield name
    pg.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(params=["sqlite", "postgres"])
async def open_store(request, tmp_path):
    """Opens stores on one fresh set of tables; each call is one more process sharing them."""
    if request.param == "sqlite":
        def make():
            return SqliteApprovalStore(tmp_path / "audit.sqlite")
    else:
        pg, db = request.getfixturevalue("pg"), request.getfixturevalue("approvals_db")
        schema = f"t_{secrets.token_hex(4)}"

        def make():
            return PostgresApprovalStore(pg.dsn("app", db), schema=schema)
    opened = []

    async def factory(create: bool = True):
        opened.append(make())
        await opened[-1].open(create=create)
        return opened[-1]

    yield factory
    for s in opened:
        await s.close()


@pytest.fixture
async def store(open_store):
    return await open_store()


def req(rid: str | None = None, *, at: float = T0, requester: str = "alice", mode: str = "ticket",
        required: int = 1, reviewer_roles: tuple[str, ...] = ("dba",), fp: str = FP, **kw) -> ApprovalRequest:
    return ApprovalRequest(
        id=rid or secrets.token_hex(6), created_at=at, expires_at=at + TIMEOUT, status="pending", mode=mode,
        requester=requester, requester_roles=("developer",), role="app_rw", target="app", session="s-1",
        gateway="gw-1", statement="DELETE FROM orders WHERE id = $1", params=({"format": 0, "value": "42"},),
        fingerprint=fp, rule="no-unbounded-delete", reason="deletes rows", policy="default", required=required,
        reviewer_roles=reviewer_roles, validity=VALIDITY, **kw,
    )


async def approved(store, *, at: float = T0, **kw) -> ApprovalRequest:
    r = req(at=at, **kw)
    await store.create(r, chained=True)
    updated, _ = await store.decide(r.id, BOB, "approve", "ok", at + 10, chained=True)
    assert updated.status == "approved" and updated.valid_until == at + 10 + VALIDITY
    return updated


async def refused(code: str, call) -> ApprovalError:
    with pytest.raises(ApprovalError) as info:
        await call
    assert info.value.code == code, info.value.message
    return info.value


# ---------------------------------------------------------------- create, get, list


async def test_create_and_get_by_id_and_prefix(store):
    r = req("0a1b2c3d4e5f")
    event = await store.create(r, chained=False)
    assert (event.request, event.kind, event.at) == (r.id, "requested", T0)
    assert isinstance(event.id, int)
    assert event.fields == event_fields("requested", r)
    assert event.fields["statement"] == r.statement and event.fields["approvals_required"] == 1
    assert await store.get(r.id) == r  # every field round-trips
    assert await store.get("0a1b") == r  # a unique prefix of 4 characters
    assert await store.get("0a1b2c3d") == r
    assert await store.get("0a1") is None  # shorter than 4: never a prefix
    assert await store.get("ffff") is None
    assert await store.get("0a1b2c3d4e5f0") is None  # longer than the id
    assert await store.get("0a1%") is None and await store.get("0A1B") is None  # no LIKE, no case folding


async def test_ambiguous_prefix_finds_nothing(store):
    """Documented choice: an ambiguous prefix returns None (as sessions do); a longer one finds it."""
    a, b = req("abcd00000001"), req("abcd11111111")
    await store.create(a, chained=True)
    await store.create(b, chained=True)
    assert await store.get("abcd") is None
    assert await store.get("abcd0") == a
    assert await store.get("abcd1") == b


async def test_create_refuses_a_duplicate_id(store):
    r = req()
    await store.create(r, chained=True)
    with pytest.raises(AuditStoreError, match="exists"):
        await store.create(r, chained=True)
    assert len(await store.list()) == 1


async def test_list_newest_first_with_status_filter_and_limit(store):
    rs = [req(at=T0 + i) for i in range(4)]
    for r in (rs[2], rs[0], rs[3], rs[1]):  # insertion order does not matter
        await store.create(r, chained=True)
    assert [x.id for x in await store.list()] == [r.id for r in reversed(rs)]
    assert [x.id for x in await store.list(limit=2)] == [rs[3].id, rs[2].id]
    await store.decide(rs[1].id, BOB, "approve", "", T0 + 5, chained=True)
    await store.decide(rs[2].id, BOB, "deny", "no", T0 + 5, chained=True)
    assert [x.id for x in await store.list("approved")] == [rs[1].id]
    assert [x.id for x in await store.list("denied")] == [rs[2].id]
    assert [x.id for x in await store.list("pending")] == [rs[3].id, rs[0].id]
    assert [x.id for x in await store.list("pending", limit=1)] == [rs[3].id]
    assert await store.list("executed") == []


async def test_get_many(store):
    rs = [req(at=T0 + i) for i in range(3)]
    for r in rs:
        await store.create(r, chained=True)
    found = await store.get_many([rs[0].id, "feedfeedfeed", rs[2].id, rs[0].id])
    assert found == {rs[0].id: rs[0], rs[2].id: rs[2]}
    assert await store.get_many([]) == {}
    assert await store.get_many([rs[1].id[:6]]) == {}  # full ids only


# ---------------------------------------------------------------- decisions


async def test_two_of_n_approvals(store):
    r = req(required=2)
    await store.create(r, chained=True)
    first, events = await store.decide(r.id, BOB, "approve", "looks fine", T0 + 10, chained=True)
    assert first.status == "pending" and first.valid_until is None and first.approvers == ("bob",)
    assert [(e.kind, e.request, e.at) for e in events] == [("approve", r.id, T0 + 10)]
    assert events[0].fields == {"reviewer": "bob", "roles": ["dba"], "comment": "looks fine", "via": "cli",
                                "status": "pending"}
    assert await store.get(r.id) == first

    await refused("already_decided", store.decide(r.id, BOB, "approve", "", T0 + 11, chained=True))
    await refused("already_decided", store.decide(r.id, BOB, "deny", "", T0 + 11, chained=True))

    second, events = await store.decide(r.id, CAROL, "approve", "", T0 + 20, chained=True)
    assert second.status == "approved" and second.approvers == ("bob", "carol")
    assert second.valid_until == T0 + 20 + VALIDITY and second.decided_at == T0 + 20
    assert [(e.kind, e.fields["status"], e.fields["via"]) for e in events] == [("approve", "approved", "api")]
    assert await store.get(r.id) == second
    await refused("not_pending", store.decide(r.id, ADMIN, "approve", "", T0 + 21, chained=True))


async def test_refused_decisions_change_nothing(store):
    r = req()
    await store.create(r, chained=True)
    await refused("self_approval", store.decide(r.id, Reviewer("alice", ("dba",)), "approve", "", T0 + 1, chained=True))
    await refused("self_approval", store.decide(r.id, Reviewer("alice", (), admin=True), "approve", "", T0 + 1,
                                                chained=True))
    await refused("not_reviewer", store.decide(r.id, EVE, "approve", "", T0 + 1, chained=True))
    await refused("not_reviewer", store.decide(r.id, EVE, "deny", "", T0 + 1, chained=True))
    await refused("expired", store.decide(r.id, BOB, "approve", "", T0 + TIMEOUT, chained=True))
    await refused("bad_action", store.decide(r.id, BOB, "maybe", "", T0 + 1, chained=True))
    await refused("not_found", store.decide("feedfeedfeed", BOB, "approve", "", T0 + 1, chained=True))
    await refused("not_found", store.decide(r.id[:6], BOB, "approve", "", T0 + 1, chained=True))  # full id only
    assert await store.get(r.id) == r
    assert [e.kind for e in await store.claim_unchained()] == []  # refusals write no events


async def test_admin_may_decide_and_is_the_only_one_without_reviewer_roles(store):
    open_to_admin = req(reviewer_roles=())
    await store.create(open_to_admin, chained=True)
    await refused("not_reviewer", store.decide(open_to_admin.id, BOB, "approve", "", T0 + 1, chained=True))
    updated, _ = await store.decide(open_to_admin.id, ADMIN, "approve", "", T0 + 1, chained=True)
    assert updated.status == "approved" and updated.approvers == ("local:root",)

    other = req(at=T0 + 1)
    await store.create(other, chained=True)
    updated, _ = await store.decide(other.id, ADMIN, "approve", "", T0 + 2, chained=True)
    assert updated.status == "approved"


async def test_deny(store):
    r = req(required=2)
    await store.create(r, chained=True)
    await store.decide(r.id, BOB, "approve", "", T0 + 1, chained=True)
    denied, events = await store.decide(r.id, CAROL, "deny", "not on a Friday", T0 + 2, chained=True)
    assert denied.status == "denied" and denied.denied_by.reviewer == "carol"
    assert (denied.closed_by, denied.closed_reason, denied.closed_at, denied.decided_at) == (
        "carol", "not on a Friday", T0 + 2, T0 + 2)
    assert [(e.kind, e.fields["status"], e.fields["comment"]) for e in events] == [
        ("deny", "denied", "not on a Friday")]
    assert await store.get(r.id) == denied
    await refused("not_pending", store.decide(r.id, ADMIN, "approve", "", T0 + 3, chained=True))
    assert await store.consume("alice", FP, T0 + 3, "s-2", chained=True) is None


async def test_concurrent_decisions_are_not_lost(open_store):
    """Two reviewers on two gateways at once: both decisions count (the row is locked, not overwritten)."""
    a, b = await open_store(), await open_store()
    for i in range(3):
        r = req(at=T0 + i, required=2)
        await a.create(r, chained=True)
        (ra, _), (rb, _) = await asyncio.gather(
            a.decide(r.id, BOB, "approve", "", T0 + 10, chained=True),
            b.decide(r.id, CAROL, "approve", "", T0 + 10, chained=True),
        )
        assert sorted([ra.status, rb.status]) == ["approved", "pending"]
        final = await a.get(r.id)
        assert final.status == "approved" and sorted(final.approvers) == ["bob", "carol"]


# ---------------------------------------------------------------- tickets


async def test_consume_only_a_matching_valid_ticket_once(store):
    ticket = await approved(store)
    until = ticket.valid_until
    assert await store.consume("mallory", FP, T0 + 20, "s-2", chained=True) is None  # another requester
    assert await store.consume("alice", "0" * 64, T0 + 20, "s-2", chained=True) is None  # another statement
    assert await store.consume("alice", FP, until, "s-2", chained=True) is None  # validity over
    assert (await store.get(ticket.id)).status == "approved"

    used, event = await store.consume("alice", FP, until - 0.001, "s-2", chained=False)
    assert used.id == ticket.id and used.status == "executed"
    assert (used.executed_session, used.closed_by, used.closed_at) == ("s-2", "s-2", until - 0.001)
    assert (event.request, event.kind, event.at) == (ticket.id, "executed", until - 0.001)
    assert event.fields == {"status": "executed", "by": "s-2", "reason": used.closed_reason,
                            "executed_session": "s-2"}
    assert await store.get(ticket.id) == used
    assert await store.consume("alice", FP, until - 0.001, "s-3", chained=True) is None  # exactly once
    assert [e.id for e in await store.claim_unchained()] == [event.id]


async def test_consume_ignores_pending_and_hold_requests(store):
    pending = req()
    await store.create(pending, chained=True)
    assert await store.consume("alice", FP, T0 + 1, "s-2", chained=True) is None
    hold = await approved(store, at=T0 + 1, mode="hold")
    assert await store.consume("alice", FP, T0 + 20, "s-2", chained=True) is None
    assert (await store.get(hold.id)).status == "approved"
    assert (await store.get(pending.id)).status == "pending"


async def test_two_gateways_consume_one_ticket_once(open_store):
    a, b = await open_store(), await open_store()
    for i in range(5):
        ticket = await approved(a, at=T0 + 100 * i)
        results = await asyncio.gather(
            a.consume("alice", FP, T0 + 100 * i + 20, "s-a", chained=False),
            b.consume("alice", FP, T0 + 100 * i + 20, "s-b", chained=False),
        )
        winners = [r for r in results if r is not None]
        assert len(winners) == 1, results
        stored = await b.get(ticket.id)
        assert stored.status == "executed" and stored.executed_session == winners[0][0].executed_session
    executed = [e for e in await a.claim_unchained() if e.kind == "executed"]
    assert len(executed) == 5  # one execution event per ticket


async def test_find_pending(store):
    assert await store.find_pending("alice", FP, T0) is None
    hold = req(mode="hold")
    await store.create(hold, chained=True)
    assert await store.find_pending("alice", FP, T0 + 1) is None  # tickets only
    ticket = req(at=T0 + 1)
    await store.create(ticket, chained=True)
    assert await store.find_pending("alice", FP, T0 + 2) == ticket
    assert await store.find_pending("bob", FP, T0 + 2) is None
    assert await store.find_pending("alice", "0" * 64, T0 + 2) is None
    assert await store.find_pending("alice", FP, ticket.expires_at) is None  # expired (not swept yet)
    await store.decide(ticket.id, BOB, "approve", "", T0 + 3, chained=True)
    assert await store.find_pending("alice", FP, T0 + 4) is None


# ---------------------------------------------------------------- closing, expiry


async def test_close_request(store):
    r = req()
    await store.create(r, chained=True)
    # executed only from approved, whatever from_statuses says
    assert await store.close_request(r.id, "executed", "s-1", "", T0 + 1, chained=True) is None
    withdrawn, event = await store.close_request(r.id, "withdrawn", "s-1", "client cancelled", T0 + 2, chained=False)
    assert (withdrawn.status, withdrawn.closed_by, withdrawn.closed_reason, withdrawn.closed_at) == (
        "withdrawn", "s-1", "client cancelled", T0 + 2)
    assert (event.kind, event.at, event.fields) == ("withdrawn", T0 + 2, {
        "status": "withdrawn", "by": "s-1", "reason": "client cancelled", "executed_session": None})
    assert await store.get(r.id) == withdrawn
    assert await store.close_request(r.id, "withdrawn", "s-1", "again", T0 + 3, chained=True) is None
    await refused("not_pending", store.decide(r.id, BOB, "approve", "", T0 + 3, chained=True))

    hold = await approved(store, at=T0 + 10, mode="hold")
    assert await store.close_request(hold.id, "executed", "s-1", "", T0 + 30, from_statuses=("pending",),
                                     chained=True) is None
    executed, event = await store.close_request(hold.id, "executed", "s-1", "ran", T0 + 30, session="s-1",
                                                chained=True)
    assert (executed.status, executed.executed_session, event.kind) == ("executed", "s-1", "executed")
    assert await store.close_request(hold.id, "withdrawn", "s-1", "", T0 + 31, chained=True) is None

    denied = req(at=T0 + 40)
    await store.create(denied, chained=True)
    await store.decide(denied.id, BOB, "deny", "", T0 + 41, chained=True)
    assert await store.close_request(denied.id, "withdrawn", "s-1", "", T0 + 42,
                                     from_statuses=("pending", "approved", "denied"), chained=True) is None
    await refused("not_found", store.close_request("feedfeedfeed", "withdrawn", "s-1", "", T0, chained=True))
    await refused("bad_status", store.close_request(r.id, "approved", "s-1", "", T0, chained=True))
    # only the unchained writes left events to claim
    assert [e.kind for e in await store.claim_unchained()] == ["withdrawn"]


async def test_expire_due(store):
    pending = req(at=T0)
    await store.create(pending, chained=True)
    ticket = await approved(store, at=T0 + 1)  # valid until T0 + 11 + VALIDITY
    hold = await approved(store, at=T0 + 2, mode="hold")  # a held statement: its gateway runs it at once
    later = req(at=T0 + 500)
    await store.create(later, chained=True)

    assert await store.expire_due(T0 + TIMEOUT - 0.001, chained=True) == []
    done = await store.expire_due(T0 + TIMEOUT, chained=False)
    assert [(r.id, r.status, r.closed_by, e.kind, e.request, e.at) for r, e in done] == [
        (pending.id, "expired", "timeout", "expired", pending.id, T0 + TIMEOUT)]
    assert await store.get(pending.id) == done[0][0]
    assert done[0][1].fields["status"] == "expired" and done[0][1].fields["by"] == "timeout"

    assert await store.expire_due(ticket.valid_until - 0.001, chained=True) == []
    done = await store.expire_due(ticket.valid_until, chained=True)
    assert [(r.id, r.status, e.kind) for r, e in done] == [(ticket.id, "expired", "expired")]
    assert await store.consume("alice", FP, ticket.valid_until - 1, "s-2", chained=True) is None  # gone

    # Still approved after its validity, a hold request lost its session (its gateway stopped).
    assert hold.valid_until < T0 + 10_000
    done = await store.expire_due(T0 + 10_000, chained=True)
    assert sorted(r.id for r, _ in done) == sorted([later.id, hold.id])
    expired_hold = await store.get(hold.id)
    assert expired_hold.status == "expired" and "session was gone" in expired_hold.closed_reason
    assert await store.expire_due(T0 + 10_000, chained=True) == []
    assert [(e.kind, e.request) for e in await store.claim_unchained()] == [("expired", pending.id)]


# ---------------------------------------------------------------- events for the chain


async def test_claim_unchained_returns_unchained_events_once(store):
    r = req()
    requested = await store.create(r, chained=False)
    _, decided = await store.decide(r.id, BOB, "approve", "", T0 + 1, chained=True)  # chained by the caller
    _, executed = await store.consume("alice", FP, T0 + 2, "s-2", chained=False)
    claimed = await store.claim_unchained()
    assert claimed == [requested, executed]  # in order, with the same fields as returned at the write
    assert decided[0].id not in [e.id for e in claimed]
    assert await store.claim_unchained() == []


async def test_claim_unchained_across_gateways(open_store):
    a, b = await open_store(), await open_store()
    written = []
    for i in range(12):
        r = req(at=T0 + i)
        written.append((await a.create(r, chained=False)).id)
        _, events = await b.decide(r.id, BOB, "deny", "", T0 + i + 1, chained=False)
        written.extend(e.id for e in events)

    async def drain(store) -> list[int]:
        got = []
        while batch := await store.claim_unchained(limit=5):
            assert [e.id for e in batch] == sorted(e.id for e in batch)
            got.extend(e.id for e in batch)
        return got

    got_a, got_b = await asyncio.gather(drain(a), drain(b))
    assert sorted(got_a + got_b) == sorted(written)  # every event claimed, none twice
    assert await a.claim_unchained() == [] and await b.claim_unchained() == []


# ---------------------------------------------------------------- lifecycle


async def test_data_survives_close_and_reopen(open_store):
    first = await open_store()
    r = req(required=2)
    await first.create(r, chained=False)
    updated, _ = await first.decide(r.id, BOB, "approve", "first of two", T0 + 1, chained=True)
    await first.close()
    second = await open_store(create=False)
    assert await second.get(r.id) == updated
    assert [e.kind for e in await second.claim_unchained()] == ["requested"]
    final, _ = await second.decide(r.id, CAROL, "approve", "", T0 + 2, chained=True)
    assert final.status == "approved" and final.approvers == ("bob", "carol")


async def test_close_twice_and_use_after_close(open_store):
    s = await open_store()
    await s.create(req("abcdabcdabcd"), chained=True)
    await s.close()
    await s.close()  # twice is fine
    if isinstance(s, SqliteApprovalStore):
        with pytest.raises(AuditStoreError, match="not open"):
            await s.get("abcd")
    else:  # the PostgreSQL store connects again on the next call, as after a lost connection
        assert (await s.get("abcd")).id == "abcdabcdabcd"


def test_request_body_round_trip():
    """The body column holds everything; from_stored gives back an equal request."""
    import json

    r = dataclasses.replace(req(), validity=0.0, valid_until=T0 + 5, closed_reason="x")
    assert ApprovalRequest.from_stored(json.loads(r.body())) == r
