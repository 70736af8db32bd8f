"""The gateway's side of approvals: held statements, tickets, polling and webhooks.

:class:`ApprovalBroker` is what ``ApprovalsStage``'s Holds await. It writes
requests to the approval store (next to the audit trail), waits for their
decision and turns it into a verdict. Decisions arrive three ways: from this
gateway's HTTP API (served by the gateway, see ``Gateway.start``; released at
once through ``on_change``), and from the CLI or another gateway sharing a
PostgreSQL store, which one poller picks up
(every ``approvals.poll_interval`` seconds, one query for all held requests).
The same poller writes into the audit chain the events others made (the CLI
cannot write a trail a gateway owns) and expires what timed out.

Nothing here blocks a session that is not waiting for approval: store calls
are awaited only inside a Hold, the poller runs beside the sessions, and
webhooks are queued.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from ..config import Config
from ..services.approvals import ApprovalService, links_for
from ..session.statement import Statement
from ..session.verdict import ALLOW, Deny, Verdict
from ..store.approvals import ApprovalRequest, ApprovalStore, approval_store_for, iso
from ..wire.constants import SQLState

__all__ = ["ApprovalBroker"]

log = logging.getLogger("pgwarden.approvals")

APPROVAL_REQUIRED = "PW001"
_STORE_FAILED = "58030"
_EXPIRE_EVERY = 10  # polls between expiry sweeps


def _duration(seconds: float) -> str:
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{int(seconds // 3600)} h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{int(seconds // 60)} min"
    return f"{seconds:g} s"


class ApprovalBroker:
    def __init__(self, config: Config, gateway_id: str, store: ApprovalStore | None = None) -> None:
        self.config = config
        self.gateway_id = gateway_id
        self.store = store or approval_store_for(config)
        self.recorder: Any = None  # set by the gateway once the audit recorder exists
        self.notifier: Any = None
        self.service: ApprovalService | None = None
        self.api: Any = None
        self._waiters: dict[str, asyncio.Future] = {}
        self._created: dict[str, asyncio.Event] = {}
        self._poller: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()
        self._polls = 0

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Open the store (fail closed: a gateway that cannot keep approvals does not start)."""
        await self.store.open(create=True)
        if self.config.approvals.webhooks:
            from ..services.webhooks import WebhookNotifier

            self.notifier = WebhookNotifier(list(self.config.approvals.webhooks), self.links)
            self.notifier.start()
        self.service = ApprovalService(
            self.config, self.store, recorder=self.recorder, notifier=self.notifier, on_change=self._changed
        )
        await self._listen()
        self._poller = asyncio.get_running_loop().create_task(self._poll_forever(), name="approvals-poller")

    def api_started(self, api: Any) -> None:
        """The gateway's HTTP API (an ApiServer, which the gateway owns) serves this broker's
        routes: links in notices and webhooks point at its port."""
        self.api = api
        if self.service is not None:
            self.service.api_port = api.port

    async def stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            try:
                await self._poller
            except (asyncio.CancelledError, Exception):
                pass
        for task in list(self._tasks):
            try:
                await asyncio.wait_for(task, 2.0)
            except (asyncio.CancelledError, asyncio.TimeoutError, Exception):
                pass
        if self.notifier is not None:
            await self.notifier.stop()
        await self.store.close()

    async def _transition(self, change, notify: str | None, name: str):
        """Run a store transition (``change()`` -> (request, event) or None) and write its audit
        record and webhook in a task of the broker's own: a client that cancels while it runs
        stops waiting for it, not the transition, so the store and the chain never disagree."""

        async def run():
            result = await change()
            if result is not None:
                updated, event = result
                self._record(updated, [event])
                if notify is not None and self.service is not None:
                    self.service.notify(notify, updated)
            return result

        return await asyncio.shield(self._spawn(run(), name))

    def _spawn(self, coro, name: str) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ------------------------------------------------------------ what holds await

    def links(self, request_id: str) -> dict[str, str]:
        return links_for(self.config, request_id, self.api.port if self.api is not None else None)

    def hold_notice(self, request: ApprovalRequest) -> str:
        how = f"pgwarden approvals approve {request.id}"
        if self.config.api.enabled:
            how += f" (or POST {self.links(request.id)['approve']})"
        reviewers = ", ".join(request.reviewer_roles) or "the local admin"
        count = f"{request.required} approvals" if request.required > 1 else "approval"
        why = f": {request.reason}" if request.reason else ""
        return (
            f"pgwarden: statement held for {count} (rule {request.rule}{why}): request {request.id}; "
            f"reviewers: {reviewers}; waiting up to {_duration(request.expires_at - request.created_at)}. "
            f"Approve with: {how}"
        )

    async def _create(self, request: ApprovalRequest) -> None:
        created = self._created[request.id] = asyncio.Event()
        try:
            event = await self.store.create(request, chained=True)
            self._record(request, [event])
            log.info("approval request %s by %s (rule %s, %s)", request.id, request.requester, request.rule,
                     request.mode, extra={"event": "approval_requested", "request": request.id})
            if self.service is not None:
                self.service.notify("requested", request)
        finally:
            created.set()
            self._created.pop(request.id, None)  # a withdraw that came meanwhile holds the event

    async def _too_many(self, request: ApprovalRequest) -> Deny | None:
        cap = self.config.approvals.max_pending_per_requester
        pending = await self.store.list("pending", 1000)
        if sum(1 for r in pending if r.requester == request.requester) < cap:
            return None
        log.warning("approval request by %s refused: %d pending already", request.requester, cap,
                    extra={"event": "approvals_too_many"})
        return Deny(
            f"pgwarden: {request.requester} already has {cap} approval requests waiting; "
            "this statement was not submitted for review",
            "53400",
            rule="approvals.too_many",
            hint="Wait for the pending requests to be decided (pgwarden approvals list), or withdraw them.",
        )

    async def hold(self, statement: Statement, request: ApprovalRequest) -> Verdict:
        """Hold mode: wait for the decision (or the timeout) and return the verdict."""
        try:
            refusal = await self._too_many(request)
        except Exception as exc:
            return self._store_failed(statement, request, exc)
        if refusal is not None:
            return refusal
        loop = asyncio.get_running_loop()
        future = self._waiters[request.id] = loop.create_future()
        try:
            try:
                await asyncio.shield(self._spawn(self._create(request), f"approval-create[{request.id}]"))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                return self._store_failed(statement, request, exc)
            statement.approval = {"request": request.id, "mode": "hold", "status": "pending"}
            timeout = max(0.0, request.expires_at - time.time())
            try:
                decided: ApprovalRequest = await asyncio.wait_for(asyncio.shield(future), timeout)
            except asyncio.TimeoutError:
                decided = await self._expire(request)
            return await self._verdict_for(statement, decided)
        finally:
            self._waiters.pop(request.id, None)
            self._created.pop(request.id, None)

    async def _expire(self, request: ApprovalRequest) -> ApprovalRequest:
        closed = await self._transition(
            lambda: self.store.close_request(
                request.id, "expired", "timeout",
                f"no decision within {_duration(request.expires_at - request.created_at)}",
                time.time(), from_statuses=("pending",), chained=True,
            ),
            "expired", f"approval-expire[{request.id}]",
        )
        if closed is None:  # decided just now: take that
            current = await self.store.get(request.id)
            return current or request
        return closed[0]

    async def _verdict_for(self, statement: Statement, request: ApprovalRequest) -> Verdict:
        info = statement.session
        if request.status == "approved":
            closed = await self._transition(
                lambda: self.store.close_request(
                    request.id, "executed", info.id, "released to the held session", time.time(),
                    from_statuses=("approved",), session=info.id, chained=True,
                ),
                "executed", f"approval-execute[{request.id}]",
            )
            if closed is not None:
                statement.approval = _approval_field(closed[0])
                return ALLOW
            request = await self.store.get(request.id) or request
        statement.approval = _approval_field(request)
        if request.status == "denied":
            by = request.denied_by
            who = by.reviewer if by is not None else "a reviewer"
            comment = f": {by.comment}" if by is not None and by.comment else ""
            return Deny(
                f"pgwarden: request {request.id} was denied by {who}{comment}",
                SQLState.INSUFFICIENT_PRIVILEGE,
                rule="approvals.denied",
                detail=f"rule {request.rule}; statement not run",
            )
        if request.status == "expired":
            return Deny(
                f"pgwarden: request {request.id} timed out: no decision within "
                f"{_duration(request.expires_at - request.created_at)}",
                SQLState.QUERY_CANCELED,
                rule="approvals.timeout",
                hint="Run the statement again to ask again.",
            )
        return Deny(
            f"pgwarden: request {request.id} is {request.status}; statement not run",
            SQLState.QUERY_CANCELED,
            rule="approvals.withdrawn",
        )

    async def ticket(self, statement: Statement, request: ApprovalRequest) -> Verdict:
        """Ticket mode: run an approved ticket once, or refuse at once with the request id."""
        info = statement.session
        try:
            consumed = await self._transition(
                lambda: self.store.consume(request.requester, request.fingerprint, time.time(), info.id, chained=True),
                "executed", f"approval-consume[{request.id}]",
            )
            if consumed is not None:
                updated = consumed[0]
                statement.approval = _approval_field(updated)
                log.info("approval ticket %s used by session %s", updated.id, info.id,
                         extra={"event": "approval_executed", "request": updated.id})
                return ALLOW
            pending = await self.store.find_pending(request.requester, request.fingerprint, time.time())
            if pending is None:
                refusal = await self._too_many(request)
                if refusal is not None:
                    return refusal
                await asyncio.shield(self._spawn(self._create(request), f"approval-create[{request.id}]"))
                pending = request
                fresh = True
            else:
                fresh = False
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            return self._store_failed(statement, request, exc)
        statement.approval = {"request": pending.id, "mode": "ticket", "status": "pending"}
        how = f"pgwarden approvals approve {pending.id}"
        valid = _duration(pending.validity)
        return Deny(
            f"pgwarden: approval required (rule {pending.rule}): request {pending.id}"
            + ("" if fresh else " is still waiting for a decision"),
            APPROVAL_REQUIRED,
            rule="approvals.required",
            detail=(f"{pending.reason}. " if pending.reason else "")
            + f"Reviewers: {', '.join(pending.reviewer_roles) or 'the local admin'}; "
            f"{pending.required} approval(s) needed; the request expires at {iso(pending.expires_at)}.",
            hint=f"Once approved ({how}), run exactly the same statement with the same parameters "
            f"within {valid}; it runs once.",
        )

    def withdraw(self, request_id: str, session_id: str) -> None:
        """The client cancelled or went away: withdraw its held request (in the background)."""
        future = self._waiters.pop(request_id, None)
        if future is not None and not future.done():
            future.cancel()
        created = self._created.get(request_id)  # before the hold's cleanup runs
        self._spawn(self._withdraw(request_id, session_id, created), f"approval-withdraw[{request_id}]")

    async def _withdraw(self, request_id: str, session_id: str, created: asyncio.Event | None) -> None:
        if created is not None:
            await created.wait()
        try:
            closed = await self.store.close_request(
                request_id, "withdrawn", session_id, "the client cancelled or disconnected", time.time(),
                from_statuses=("pending", "approved"), chained=True,
            )
        except Exception:
            log.exception("withdrawing approval request %s failed", request_id)
            return
        if closed is not None:
            updated, event = closed
            self._record(updated, [event])
            if self.service is not None:
                self.service.notify("withdrawn", updated)

    # ------------------------------------------------------------ decisions from anywhere

    def _changed(self, request: ApprovalRequest) -> None:
        """A decision made through this gateway: release its held statement now."""
        future = self._waiters.get(request.id)
        if future is not None and not future.done() and request.status not in ("pending",):
            future.set_result(request)

    async def _listen(self) -> None:
        """With the PostgreSQL store: LISTEN, so a decision made anywhere releases a hold at once
        (polling stays on and covers a lost listener, which is re-opened on the next poll)."""
        listen = getattr(self.store, "listen", None)
        if listen is None:
            return
        try:
            await listen(self._notified)
        except Exception as exc:
            log.warning("approvals: LISTEN failed, polling only: %s", exc, extra={"event": "approvals_listen_failed"})

    def _notified(self, request_id: str) -> None:
        if request_id in self._waiters:
            self._spawn(self._check(request_id), f"approval-check[{request_id}]")

    async def _check(self, request_id: str) -> None:
        try:
            await self._chain_unchained()  # a CLI decision goes into the chain before the execution
            found = await self.store.get_many([request_id])
        except Exception as exc:
            log.warning("approval check failed: %s", exc)
            return
        request = found.get(request_id)
        if request is not None and request.status != "pending":
            self._changed(request)

    async def _poll_forever(self) -> None:
        interval = self.config.approvals.poll_interval
        while True:
            await asyncio.sleep(interval)
            if getattr(self.store, "listening", True) is False and self._polls % _EXPIRE_EVERY == 0:
                await self._listen()
            try:
                await self.poll_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("approval poll failed: %s", exc, extra={"event": "approvals_poll_failed"})

    async def poll_once(self) -> None:
        self._polls += 1
        # Chain decisions made elsewhere first, so the trail has "approve" before "executed".
        await self._chain_unchained()
        if self._waiters:
            found = await self.store.get_many(list(self._waiters))
            for request_id, request in found.items():
                if request.status != "pending":
                    self._changed(request)
        if self._polls % _EXPIRE_EVERY == 0:
            for updated, event in await self.store.expire_due(time.time(), chained=True):
                self._record(updated, [event])
                if self.service is not None:
                    self.service.notify("expired", updated)

    async def _chain_unchained(self) -> None:
        if self.recorder is not None:
            events = await self.store.claim_unchained()
            if events:
                requests = await self.store.get_many(sorted({e.request for e in events}))
                for event in events:
                    request = requests.get(event.request)
                    self._record(request, [event])
                    # Decisions made through the CLI: their webhooks go out from here (once:
                    # each event is claimed by one gateway).
                    if request is not None and self.service is not None:
                        if event.kind == "deny":
                            self.service.notify("denied", request)
                        elif event.kind == "approve" and event.fields.get("status") == "approved":
                            self.service.notify("approved", request)

    # ------------------------------------------------------------ helpers

    def _record(self, request: ApprovalRequest | None, events) -> None:
        if self.recorder is None:
            return
        for event in events:
            try:
                self.recorder.approval_event(request, event)
            except Exception:
                log.exception("recording an approval event failed")

    def _store_failed(self, statement: Statement, request: ApprovalRequest, exc: Exception) -> Deny:
        log.error("approval store failed: %s", exc, extra={"event": "approvals_store_failed", "request": request.id})
        return Deny(
            "pgwarden: the approval request could not be recorded; statement refused",
            _STORE_FAILED,
            rule="approvals.unavailable",
            hint="Statements that need approval run again once the approval store can be written.",
        )


def _approval_field(request: ApprovalRequest) -> dict[str, Any]:
    """What the statement record carries: the request and every decision (AC-6(9), CM-5 evidence)."""
    return {
        "request": request.id,
        "mode": request.mode,
        "status": request.status,
        "rule": request.rule,
        "requester": request.requester,
        "fingerprint": request.fingerprint,
        "decisions": [d.as_dict() for d in request.decisions],
    }
