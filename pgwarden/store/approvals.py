"""Approval requests and decisions: the model, the rules of the state machine, the store interface.

A request is made when a guardrail rule says ``review``; reviewers decide it;
the statement then runs once. The *state* (status, decisions) lives in two
tables next to the audit trail (same SQLite file, or same PostgreSQL
database), because several processes change it: the gateway that holds the
statement, the CLI of a reviewer, another gateway's HTTP API. Every change is
also an *event* row; a gateway writes each event into the tamper-evident
chain as an ``approval`` record (``chained`` marks the ones written), so the
chain holds the request, every decision and the execution, in order, whoever
made them.

Status transitions (``apply_decision`` and ``ApprovalStore.close_request``)::

    pending --approve (N distinct)--> approved --run once--> executed
    pending --deny--> denied
    pending --timeout--> expired          approved --validity over--> expired (ticket)
    pending|approved --client cancel / session gone--> withdrawn

The transition rules are plain functions here, shared by both backends, which
only load a row under a lock, apply, and write it back.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..config import Config

__all__ = [
    "ApprovalRequest",
    "ApprovalDecision",
    "ApprovalEvent",
    "ApprovalError",
    "ApprovalStore",
    "Reviewer",
    "STATUSES",
    "OPEN_STATUSES",
    "apply_decision",
    "fingerprint",
    "new_request_id",
    "iso",
    "approval_store_for",
]

STATUSES = ("pending", "approved", "denied", "expired", "withdrawn", "executed")
OPEN_STATUSES = ("pending", "approved")


def iso(t: float | None) -> str | None:
    """UTC ISO 8601 with milliseconds, or None."""
    if t is None:
        return None
    # Whole milliseconds first: ``int((t % 1) * 1000)`` read 1790000000.123 as .122
    # (the float is a hair below), and could never carry into the seconds.
    seconds, ms = divmod(round(t * 1000), 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + ".%03dZ" % ms


def new_request_id() -> str:
    """12 hex characters: short enough to type, 48 random bits."""
    return secrets.token_hex(6)


def fingerprint(target: str, text: str, params: Sequence[tuple[int, bytes | None]], context: str = "") -> str:
    """SHA-256 of what runs: target, statement text, each parameter's format and bytes, and
    ``context`` (what else changes the meaning of the text: parameter types, search_path).

    A ticket approves exactly this; changed text, parameters, types, search_path
    or target need a new approval. Parameters are hashed with their format code
    (text/binary), so the same value sent differently is a different statement.
    """
    h = hashlib.sha256()
    for part in (target.encode(), text.encode("utf-8", "surrogatepass"), context.encode("utf-8", "surrogatepass")):
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    h.update(len(params).to_bytes(4, "big"))
    for fmt, value in params:
        h.update(bytes((fmt & 1,)))
        if value is None:
            h.update(b"\xff" * 8)
        else:
            h.update(len(value).to_bytes(8, "big"))
            h.update(value)
    return h.hexdigest()


class ApprovalError(Exception):
    """A decision that is not allowed; ``code`` is stable (API error bodies, CLI exit messages).

    Codes: not_found, not_pending, expired, self_approval, not_reviewer, already_decided.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Reviewer:
    """Who decides: an identity (token subject, ``key:NAME``, ``local:USER``) and its roles."""

    identity: str
    roles: tuple[str, ...] = ()
    admin: bool = False  # the local admin may decide any request (approvals.local_admin)
    via: str = "cli"  # cli | api


@dataclass(frozen=True, slots=True)
class ApprovalDecision:
    reviewer: str
    roles: tuple[str, ...]
    action: str  # approve | deny
    comment: str
    at: float
    via: str = "cli"

    def as_dict(self) -> dict[str, Any]:
        return {
            "reviewer": self.reviewer, "roles": list(self.roles), "action": self.action, "comment": self.comment,
            "at": iso(self.at), "via": self.via,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ApprovalDecision":
        return cls(d["reviewer"], tuple(d.get("roles") or ()), d["action"], d.get("comment") or "",
                   float(d["at_epoch"]) if "at_epoch" in d else 0.0, d.get("via") or "cli")

    def stored(self) -> dict[str, Any]:
        out = self.as_dict()
        out["at_epoch"] = self.at
        return out


@dataclass(frozen=True, slots=True)
class ApprovalRequest:
    id: str
    created_at: float
    expires_at: float  # a pending request expires then
    status: str
    mode: str  # hold | ticket
    requester: str  # token subject, key:NAME, or the static user name
    requester_roles: tuple[str, ...]
    role: str | None  # the role the session acts as
    target: str
    session: str
    gateway: str
    statement: str
    params: tuple[dict[str, Any], ...]  # {"format": 0|1, "value": text | "\\x.." | None}
    fingerprint: str
    rule: str
    reason: str
    policy: str
    required: int
    reviewer_roles: tuple[str, ...]
    validity: float = 900.0  # seconds an approved ticket stays usable
    decisions: tuple[ApprovalDecision, ...] = ()
    valid_until: float | None = None  # an approved ticket may be used until then
    decided_at: float | None = None
    closed_at: float | None = None  # executed / expired / withdrawn
    closed_by: str | None = None  # who or what closed it (a session id, "timeout", ...)
    closed_reason: str = ""
    executed_session: str | None = None

    @property
    def approvers(self) -> tuple[str, ...]:
        return tuple(d.reviewer for d in self.decisions if d.action == "approve")

    @property
    def denied_by(self) -> ApprovalDecision | None:
        for d in self.decisions:
            if d.action == "deny":
                return d
        return None

    def as_dict(self) -> dict[str, Any]:
        """The public shape (API responses, webhooks, ``approvals show --json``)."""
        return {
            "id": self.id,
            "status": self.status,
            "mode": self.mode,
            "created_at": iso(self.created_at),
            "expires_at": iso(self.expires_at),
            "valid_until": iso(self.valid_until),
            "requester": self.requester,
            "requester_roles": list(self.requester_roles),
            "role": self.role,
            "target": self.target,
            "session": self.session,
            "gateway": self.gateway,
            "statement": self.statement,
            "params": [dict(p) for p in self.params],
            "fingerprint": self.fingerprint,
            "rule": self.rule,
            "reason": self.reason,
            "policy": self.policy,
            "approvals_required": self.required,
            "reviewer_roles": list(self.reviewer_roles),
            "validity_seconds": self.validity,
            "decisions": [d.as_dict() for d in self.decisions],
            "decided_at": iso(self.decided_at),
            "closed_at": iso(self.closed_at),
            "closed_by": self.closed_by,
            "closed_reason": self.closed_reason,
            "executed_session": self.executed_session,
        }

    def stored(self) -> dict[str, Any]:
        """Everything, with epoch times, for the ``body`` column (``from_stored`` reads it back)."""
        return {
            "id": self.id, "created_at": self.created_at, "expires_at": self.expires_at, "status": self.status,
            "mode": self.mode, "requester": self.requester, "requester_roles": list(self.requester_roles),
            "role": self.role, "target": self.target, "session": self.session, "gateway": self.gateway,
            "statement": self.statement, "params": [dict(p) for p in self.params], "fingerprint": self.fingerprint,
            "rule": self.rule, "reason": self.reason, "policy": self.policy, "required": self.required,
            "reviewer_roles": list(self.reviewer_roles), "validity": self.validity,
            "decisions": [d.stored() for d in self.decisions],
            "valid_until": self.valid_until, "decided_at": self.decided_at, "closed_at": self.closed_at,
            "closed_by": self.closed_by, "closed_reason": self.closed_reason,
            "executed_session": self.executed_session,
        }

    @classmethod
    def from_stored(cls, d: dict[str, Any]) -> "ApprovalRequest":
        return cls(
            id=d["id"], created_at=d["created_at"], expires_at=d["expires_at"], status=d["status"], mode=d["mode"],
            requester=d["requester"], requester_roles=tuple(d.get("requester_roles") or ()), role=d.get("role"),
            target=d["target"], session=d["session"], gateway=d.get("gateway") or "", statement=d["statement"],
            params=tuple(d.get("params") or ()), fingerprint=d["fingerprint"], rule=d.get("rule") or "",
            reason=d.get("reason") or "", policy=d.get("policy") or "default", required=int(d.get("required") or 1),
            reviewer_roles=tuple(d.get("reviewer_roles") or ()),
            validity=900.0 if d.get("validity") is None else float(d["validity"]),  # 0 stays 0
            decisions=tuple(ApprovalDecision.from_dict(x) for x in d.get("decisions") or ()),
            valid_until=d.get("valid_until"), decided_at=d.get("decided_at"), closed_at=d.get("closed_at"),
            closed_by=d.get("closed_by"), closed_reason=d.get("closed_reason") or "",
            executed_session=d.get("executed_session"),
        )

    def body(self) -> str:
        return json.dumps(self.stored(), separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True, slots=True)
class ApprovalEvent:
    """One change to a request, waiting to be (or already) written into the audit chain."""

    id: int
    request: str
    at: float
    kind: str  # requested | approve | deny | approved | denied | expired | withdrawn | executed
    fields: dict[str, Any] = field(default_factory=dict)


def event_fields(kind: str, request: ApprovalRequest, decision: ApprovalDecision | None = None) -> dict[str, Any]:
    """What the audit record of an event carries (besides request id and kind)."""
    if kind == "requested":
        return {
            "mode": request.mode, "requester": request.requester, "requester_roles": list(request.requester_roles),
            "role": request.role, "target": request.target, "statement": request.statement,
            "params": [dict(p) for p in request.params], "fingerprint": request.fingerprint, "rule": request.rule,
            "reason": request.reason, "policy": request.policy, "approvals_required": request.required,
            "reviewer_roles": list(request.reviewer_roles), "expires_at": iso(request.expires_at),
        }
    if decision is not None:
        return {"reviewer": decision.reviewer, "roles": list(decision.roles), "comment": decision.comment,
                "via": decision.via, "status": request.status}
    return {"status": request.status, "by": request.closed_by, "reason": request.closed_reason,
            "executed_session": request.executed_session}


def apply_decision(
    request: ApprovalRequest, reviewer: Reviewer, action: str, comment: str, now: float
) -> tuple[ApprovalRequest, list[tuple[str, dict[str, Any]]]]:
    """The request after ``reviewer`` approves or denies it, and the events to record.

    Raises ApprovalError when the decision is not allowed. The last needed
    approval starts the ticket's validity window (``valid_until``).
    """
    if action not in ("approve", "deny"):
        raise ApprovalError("bad_action", f"unknown action {action!r} (approve or deny)")
    if request.status == "pending" and now >= request.expires_at:
        raise ApprovalError("expired", f"request {request.id} expired at {iso(request.expires_at)}")
    if request.status != "pending":
        raise ApprovalError("not_pending", f"request {request.id} is already {request.status}; it cannot be decided again")
    if reviewer.identity == request.requester:
        raise ApprovalError("self_approval", f"{reviewer.identity} made request {request.id} and cannot decide it")
    if not reviewer.admin:
        if not request.reviewer_roles:
            raise ApprovalError("not_reviewer", f"request {request.id} may only be decided by the local admin")
        if not set(reviewer.roles) & set(request.reviewer_roles):
            raise ApprovalError(
                "not_reviewer",
                f"{reviewer.identity} has none of the reviewer roles of request {request.id} "
                f"({', '.join(request.reviewer_roles)})",
            )
    if any(d.reviewer == reviewer.identity for d in request.decisions):
        raise ApprovalError("already_decided", f"{reviewer.identity} already decided request {request.id}")
    decision = ApprovalDecision(reviewer.identity, tuple(reviewer.roles), action, comment, now, reviewer.via)
    decisions = request.decisions + (decision,)
    events: list[tuple[str, dict[str, Any]]] = []
    if action == "deny":
        updated = replace(request, decisions=decisions, status="denied", decided_at=now, closed_at=now,
                          closed_by=reviewer.identity, closed_reason=comment)
        events.append(("deny", event_fields("deny", updated, decision)))
        return updated, events
    approvals = len({d.reviewer for d in decisions if d.action == "approve"})
    if approvals >= request.required:
        updated = replace(request, decisions=decisions, status="approved", decided_at=now,
                          valid_until=now + request.validity)
    else:
        updated = replace(request, decisions=decisions)
    events.append(("approve", event_fields("approve", updated, decision)))
    return updated, events


def close_request(request: ApprovalRequest, status: str, by: str, reason: str, now: float,
                  session: str | None = None) -> ApprovalRequest:
    return replace(request, status=status, closed_at=now, closed_by=by, closed_reason=reason,
                   executed_session=session if status == "executed" else request.executed_session)


CLOSE_STATUSES = ("executed", "expired", "withdrawn")


def closable_from(status: str, from_statuses: Sequence[str]) -> frozenset[str]:
    """The statuses ``ApprovalStore.close_request`` may move to ``status`` from.

    Only open requests close; only an approved one is executed (whatever the caller passed).
    """
    if status not in CLOSE_STATUSES:
        raise ApprovalError("bad_status", f"cannot close a request as {status!r} (one of {', '.join(CLOSE_STATUSES)})")
    allowed = frozenset(from_statuses) & frozenset(OPEN_STATUSES)
    return allowed & {"approved"} if status == "executed" else allowed


def due_expiry(request: ApprovalRequest, now: float) -> ApprovalRequest | None:
    """``request`` closed as expired if it is due (``expire_due``), else None."""
    if request.status == "pending" and now >= request.expires_at:
        return close_request(request, "expired", "timeout", "no decision before the request expired", now)
    if request.status == "approved" and request.valid_until is not None and now >= request.valid_until:
        # A hold request is run by its session within a poll; one still approved after its
        # validity lost its session (the gateway stopped) and can never run.
        why = ("the approved ticket was not used in time" if request.mode == "ticket"
               else "the held session was gone before it could run")
        return close_request(request, "expired", "timeout", why, now)
    return None


def usable_ticket(request: ApprovalRequest, requester: str, fingerprint: str, now: float) -> bool:
    """What ``consume`` checks (again, on the locked row)."""
    return (request.status == "approved" and request.mode == "ticket" and request.requester == requester
            and request.fingerprint == fingerprint and request.valid_until is not None and now < request.valid_until)


def request_from_body(body: str) -> ApprovalRequest:
    """A request from its ``body`` column (both backends store ``ApprovalRequest.body()``)."""
    return ApprovalRequest.from_stored(json.loads(body))


def compact_json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def prefix_bounds(prefix: str) -> tuple[str, str] | None:
    """[low, high) holding exactly the ids that start with ``prefix`` in code point order
    (SQLite's binary order, PostgreSQL's COLLATE "C"); None if there is no such range."""
    last = ord(prefix[-1])
    if last >= 0x10FFFF or 0xD7FF <= last <= 0xDFFF or "\x00" in prefix:
        return None
    return prefix, prefix[:-1] + chr(last + 1)


class ApprovalStore:
    """Abstract; ``SqliteApprovalStore`` and ``PostgresApprovalStore`` implement it.

    Every method is one transaction. ``chained`` on a write says whether the
    caller writes the audit records of its events itself (a gateway does; the
    CLI cannot write an SQLite trail a gateway owns, so it leaves them for a
    gateway's ``claim_unchained``).
    """

    kind = "abstract"

    async def open(self, *, create: bool = True) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def create(self, request: ApprovalRequest, *, chained: bool) -> ApprovalEvent:
        """Insert a new pending request and its ``requested`` event."""
        raise NotImplementedError

    async def get(self, request_id: str) -> ApprovalRequest | None:
        """By full id or a unique prefix of at least 4 characters."""
        raise NotImplementedError

    async def list(self, status: str | None = None, limit: int = 100) -> list[ApprovalRequest]:
        """Newest first; ``status`` None lists all."""
        raise NotImplementedError

    async def get_many(self, ids: Sequence[str]) -> dict[str, ApprovalRequest]:
        raise NotImplementedError

    async def decide(self, request_id: str, reviewer: Reviewer, action: str, comment: str, now: float, *,
                     chained: bool) -> tuple[ApprovalRequest, list[ApprovalEvent]]:
        """``apply_decision`` under the row lock; raises ApprovalError (not_found too)."""
        raise NotImplementedError

    async def consume(self, requester: str, fingerprint: str, now: float, session: str, *,
                      chained: bool) -> tuple[ApprovalRequest, ApprovalEvent] | None:
        """Ticket mode: atomically turn an approved, still valid ticket of ``requester`` for
        ``fingerprint`` into ``executed`` (by ``session``); None if there is none."""
        raise NotImplementedError

    async def find_pending(self, requester: str, fingerprint: str, now: float) -> ApprovalRequest | None:
        """A pending, unexpired ticket request of ``requester`` for ``fingerprint`` (to reuse its id)."""
        raise NotImplementedError

    async def close_request(self, request_id: str, status: str, by: str, reason: str, now: float, *,
                            from_statuses: Sequence[str] = OPEN_STATUSES, session: str | None = None,
                            chained: bool) -> tuple[ApprovalRequest, ApprovalEvent] | None:
        """Move an open request to ``status`` (executed, expired, withdrawn) if it is in
        ``from_statuses``; None if it was not (someone decided first)."""
        raise NotImplementedError

    async def expire_due(self, now: float, *, chained: bool) -> list[tuple[ApprovalRequest, ApprovalEvent]]:
        """Pending requests past ``expires_at`` and approved tickets past ``valid_until`` -> expired."""
        raise NotImplementedError

    async def claim_unchained(self, limit: int = 200) -> list[ApprovalEvent]:
        """Events nobody wrote into the audit chain yet, marked as written (each claimed once)."""
        raise NotImplementedError


def approval_store_for(config: "Config") -> ApprovalStore:
    """The approval tables next to the configured audit store (not yet opened)."""
    store = config.audit.store
    if store.type == "postgres":
        from .approvals_postgres import PostgresApprovalStore

        return PostgresApprovalStore(store.dsn or "")
    from .approvals_sqlite import SqliteApprovalStore

    return SqliteApprovalStore(store.path)
