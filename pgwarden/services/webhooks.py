"""Webhook notifications for approval requests (Slack-style text or the request as JSON).

Why it is built this way: notifications are called from the data path (the
session whose statement waits for review) and from decisions (API, CLI). A
slow or dead webhook receiver must never hold a statement, delay a decision
or fail one. So :meth:`WebhookNotifier.notify` only builds the body and puts
it in a bounded in-memory queue (1000 by default; when full the notification
is dropped with a warning: memory stays bounded however long a receiver is
down) and returns; it never blocks and never raises. One worker task takes
deliveries off the queue and runs each as its own task (at most a few at a
time per webhook), so retrying one receiver never delays another.

Delivery is best effort, at least once while the gateway runs: connection
errors, timeouts, 5xx and 429 are retried with exponential backoff (1 s,
2 s, 4 s, ... capped at 60 s; a 429's Retry-After is honoured up to the cap)
until the webhook's ``max_attempts``; any other 4xx is the receiver telling us
the request is wrong and is not retried. Nothing is persisted: notifications
still queued when the gateway stops are dropped (and counted in the log);
the approval state itself lives in the store, not here. Logs name a webhook
by its index and scheme://host/first-path-segment only, because webhook URLs
(Slack's among them) carry their secret in the path or query string.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

import httpx

from .. import __version__
from ..config_approvals import WebhookConfig
from ..store.approvals import ApprovalRequest

__all__ = ["WebhookNotifier", "slack_text", "webhook_body", "safe_url"]

log = logging.getLogger("pgwarden.webhooks")

STATEMENT_CHARS = 500
MAX_BACKOFF = 60.0


def safe_url(url: str) -> str:
    """The URL for logs: no credentials, no query string, only the first path segment."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or "?"
        if ":" in host:
            host = f"[{host}]"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<unparsable url>"
    segments = [s for s in parts.path.split("/") if s]
    path = "/" + segments[0] + ("/…" if len(segments) > 1 else "") if segments else "/"
    return f"{parts.scheme}://{host}{port}{path}"


def _slack_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _clip(text: str, limit: int = STATEMENT_CHARS) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[:limit].rstrip() + "…"


def slack_text(event: str, request: ApprovalRequest, links: dict[str, str]) -> str:
    """The one-message summary: who asks what where, and the links (or who decided)."""
    e = _slack_escape
    who = e(request.requester)
    where = e(request.target) + (f" as {e(request.role)}" if request.role else "")
    rule = f" (rule {e(request.rule)})" if request.rule else ""
    statement = e(_clip(request.statement))
    if event == "requested":
        need = f" — needs {request.required} approvals" if request.required > 1 else ""
        text = f"pgwarden: {who} asks to run on {where}{rule}: {statement} — request {request.id}{need}"
        text += f"\nReview: `pgwarden approvals show {request.id}`, then `pgwarden approvals approve {request.id}`"
        if links.get("approve") and links.get("deny"):
            # API endpoints (POST with a reviewer's bearer token), not pages to click.
            text += f" or POST <{links['approve']}|approve> / <{links['deny']}|deny> with a reviewer token"
        return text
    head = f"pgwarden: request {request.id} of {who} on {where}{rule}"
    if event == "approved":
        by = ", ".join(e(r) for r in request.approvers) or "?"
        tail = f"was approved by {by}"
    elif event == "denied":
        decision = request.denied_by
        tail = f"was denied by {e(decision.reviewer) if decision else e(request.closed_by or '?')}"
        if decision and decision.comment:
            tail += f" (“{e(_clip(decision.comment, 300))}”)"
    elif event == "executed":
        tail = "was executed" + (f" in session {e(request.executed_session)}" if request.executed_session else "")
    else:  # expired, withdrawn
        tail = f"was {e(event)}" + (f" ({e(_clip(request.closed_reason, 300))})" if request.closed_reason else "")
    return f"{head} {tail}: {statement}"


def webhook_body(fmt: str, event: str, request: ApprovalRequest, links: dict[str, str]) -> dict[str, Any]:
    if fmt == "slack":
        return {"text": slack_text(event, request, links)}
    return {"event": event, "request": request.as_dict(), "links": links}


class WebhookNotifier:
    """``notify`` enqueues; ``start`` (inside the loop) runs the worker; ``await stop()`` drains briefly.

    ``backoff`` is the first retry delay (doubling, capped at ``max_backoff``);
    ``per_webhook`` bounds concurrent deliveries to one webhook.
    """

    def __init__(
        self,
        configs: Sequence[WebhookConfig],
        links: Callable[[str], dict[str, str]],
        *,
        backoff: float = 1.0,
        max_backoff: float = MAX_BACKOFF,
        queue_size: int = 1000,
        per_webhook: int = 4,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.configs = list(configs)
        self.links = links
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.queue_size = queue_size
        self.per_webhook = per_webhook
        self._transport = transport
        self._queue: asyncio.Queue[tuple[int, str, str, bytes]] = asyncio.Queue(maxsize=queue_size)
        self._pending = 0  # queued + being delivered (bounded by queue_size)
        self._idle: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._worker: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._limits: list[asyncio.Semaphore] = []
        self._client: httpx.AsyncClient | None = None
        self._stopped = False
        self.delivered = 0
        self.failed = 0
        self.dropped = 0

    # ------------------------------------------------------------ enqueueing

    def notify(self, event: str, request: ApprovalRequest) -> None:
        """Queue ``event`` for every webhook that wants it; returns at once, never raises."""
        try:
            wanted = [i for i, c in enumerate(self.configs) if event in c.events]
            if not wanted or self._stopped:
                return
            links = self.links(request.id)
            items = []
            for index in wanted:
                body = webhook_body(self.configs[index].format, event, request, links)
                data = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
                items.append((index, event, request.id, data))
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if self._loop is not None and running is not self._loop:
                self._loop.call_soon_threadsafe(self._enqueue, items)
            else:
                self._enqueue(items)
        except Exception:
            log.exception("webhook notification for %s (%s) not queued", getattr(request, "id", "?"), event)

    def _enqueue(self, items: list[tuple[int, str, str, bytes]]) -> None:
        for item in items:
            if self._stopped or self._pending >= self.queue_size:
                self.dropped += 1
                log.warning(
                    "webhook #%d (%s): queue full (%d), dropped the %s notification of request %s",
                    item[0], safe_url(self.configs[item[0]].url), self.queue_size, item[1], item[2],
                    extra={"event": "webhook_dropped", "request": item[2]},
                )
                continue
            self._queue.put_nowait(item)  # cannot be full: _pending counts it
            self._pending += 1
            if self._idle is not None:
                self._idle.clear()

    # ------------------------------------------------------------ running

    def start(self) -> None:
        """Start the worker in the running loop (a no-op without webhooks)."""
        if self._worker is not None or not self.configs:
            return
        self._loop = asyncio.get_running_loop()
        self._idle = asyncio.Event()
        if self._pending == 0:
            self._idle.set()
        self._limits = [asyncio.Semaphore(self.per_webhook) for _ in self.configs]
        self._client = httpx.AsyncClient(
            follow_redirects=False, transport=self._transport,
            headers={"User-Agent": f"pgwarden/{__version__} (webhook)"},
        )
        self._worker = asyncio.create_task(self._run(), name="pgwarden-webhooks")

    async def stop(self, timeout: float = 2.0) -> None:
        """Stop taking notifications, give deliveries in flight ``timeout`` seconds, then cancel them."""
        self._stopped = True
        if self._worker is None:
            if self._pending:
                log.warning("webhooks: %d notification(s) not delivered (never started)", self._pending,
                            extra={"event": "webhook_dropped"})
            return
        if self._pending and self._idle is not None:
            try:
                await asyncio.wait_for(self._idle.wait(), timeout)
            except asyncio.TimeoutError:
                pass
        left = self._pending
        self._worker.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(self._worker, *self._tasks, return_exceptions=True)
        self._worker = None
        if left:
            log.warning("webhooks: %d notification(s) not delivered at shutdown", left,
                        extra={"event": "webhook_dropped"})
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _run(self) -> None:
        while True:
            item = await self._queue.get()
            task = asyncio.create_task(self._deliver(*item), name=f"pgwarden-webhook-{item[0]}")
            self._tasks.add(task)
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._pending -= 1
        if self._pending <= 0 and self._idle is not None:
            self._idle.set()
        if not task.cancelled() and task.exception() is not None:
            log.error("webhook delivery failed unexpectedly", exc_info=task.exception())

    def _delay(self, attempt: int, response: httpx.Response | None) -> float:
        delay = self.backoff * (2 ** (attempt - 1))
        if response is not None and response.status_code == 429:
            try:
                delay = max(delay, float(response.headers.get("retry-after", "")))
            except ValueError:
                pass
        return min(delay, self.max_backoff)

    async def _deliver(self, index: int, event: str, request_id: str, data: bytes) -> None:
        config = self.configs[index]
        where = f"webhook #{index} ({safe_url(config.url)})"
        extra = {"event": "webhook_failed", "request": request_id}
        assert self._client is not None
        async with self._limits[index]:
            for attempt in range(1, config.max_attempts + 1):
                response: httpx.Response | None = None
                try:
                    response = await self._client.post(
                        config.url, content=data, timeout=config.timeout,
                        headers={"Content-Type": "application/json", **config.headers},
                    )
                except (httpx.TransportError, httpx.TimeoutException) as exc:
                    problem = f"{type(exc).__name__}: {exc}".rstrip(": ")
                else:
                    status = response.status_code
                    if 200 <= status < 300:
                        self.delivered += 1
                        log.debug("%s: delivered %s of request %s (attempt %d)", where, event, request_id, attempt)
                        return
                    problem = f"HTTP {status}"
                    if not (status >= 500 or status == 429):
                        self.failed += 1
                        log.warning("%s: %s notification of request %s refused with %s; not retried",
                                    where, event, request_id, problem, extra=extra)
                        return
                if attempt >= config.max_attempts:
                    break
                delay = self._delay(attempt, response)
                log.info("%s: %s notification of request %s failed (%s), attempt %d of %d; retrying in %.3gs",
                         where, event, request_id, problem, attempt, config.max_attempts, delay,
                         extra={"event": "webhook_retry", "request": request_id})
                await asyncio.sleep(delay)
        self.failed += 1
        log.warning("%s: gave up on the %s notification of request %s after %d attempt(s): %s",
                    where, event, request_id, config.max_attempts, problem, extra=extra)
