"""Webhook delivery (shared by approvals and alerts) and approval notifications.

:class:`WebhookDelivery` is the core both use: a bounded queue per receiver,
retries with backoff, counters; :class:`WebhookNotifier` builds approval
notifications (Slack-style text or the request as JSON) and alerts
(pgwarden/alerts/sinks.py) build theirs.

Why it is built this way: notifications are called from the data path (the
session whose statement waits for review) and from decisions (API, CLI). A
slow or dead webhook receiver must never hold a statement, delay a decision
or fail one. So :meth:`WebhookNotifier.notify` only builds the body and puts
it in a bounded in-memory queue (1000 per webhook by default; when full the notification
is dropped with a warning: memory stays bounded however long a receiver is
down) and returns; it never blocks and never raises. Each delivery attempt
runs as its own task (at most a few at a time per webhook, most important
first), so retrying one receiver never delays another.

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
import heapq
import itertools
import json
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx

from .. import __version__
from ..config_approvals import WebhookConfig
from ..store.approvals import ApprovalRequest

__all__ = [
    "WebhookDelivery", "WebhookItem", "WebhookNotifier", "slack_text", "slack_escape", "webhook_body", "safe_url",
]

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


_ZWSP = "\u200b"
_MENTION = re.compile(r"(?<!\w)@")


def slack_escape(text: str) -> str:
    """Text a client chose (SQL, user names) made inert in Slack-style markup.

    ``&``, ``<`` and ``>`` are entities, so ``<!channel>`` or ``<https://evil|click here>`` are
    shown, not parsed. Mattermost and Teams render the same ``{"text"}`` as Markdown and turn a
    plain ``@channel`` / ``@here`` / ``@all`` into a mention and ``[text](url)`` into a disguised
    link: an invisible zero-width space after ``@`` and between ``]`` and ``(`` breaks both."""
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("](", "]" + _ZWSP + "(")
    return _MENTION.sub("@" + _ZWSP, text)  # a mention starts a word; alice@example.com stays as it is


def _clip(text: str, limit: int = STATEMENT_CHARS) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[:limit].rstrip() + "…"


def slack_text(event: str, request: ApprovalRequest, links: dict[str, str]) -> str:
    """The one-message summary: who asks what where, and the links (or who decided)."""
    e = slack_escape
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


class WebhookTarget(Protocol):
    """What the delivery core needs of a webhook's config (WebhookConfig, an alert webhook sink)."""

    url: str
    headers: dict[str, str]
    timeout: float
    max_attempts: int


@dataclass(slots=True)
class WebhookItem:
    index: int  # the target
    data: bytes  # the JSON body
    label: str  # what it is, for the log ("the requested notification of request 1a2b...")
    extra: dict[str, Any]  # log record extras (request, alert ids)
    priority: int = 0  # higher first; when a target's queue is full, a lower one makes room


class WebhookDelivery:
    """The delivery core shared by approval notifications and alerts.

    ``put`` enqueues (any thread; never blocks, never raises); ``start`` (inside
    the loop) starts delivering; ``await stop()`` drains briefly. Each target has
    its own bound on pending deliveries (``queue_size``) and on concurrent ones
    (``per_target``), so a hung receiver fills only its own share. ``backoff`` is
    the first retry delay (doubling, capped at ``max_backoff``). Counters are kept
    per target (``stats``) and in total (``delivered``, ``failed``, ``dropped``).

    Items carry a ``priority`` (alerts: their severity): a target's waiting items
    go out highest first, a full queue makes room for a new item by dropping its
    lowest-priority waiting one (if lower than the new one's), and an item waiting
    to be retried gives its slot back meanwhile. So a flood of warnings to a slow
    or failing receiver never makes a critical alert wait behind them or drop.
    Each attempt is bounded as a whole by the target's ``timeout`` (a receiver
    that trickles its answer cannot stretch it), and the response body is never
    read (an endless body costs nothing).
    """

    def __init__(
        self,
        targets: Sequence[WebhookTarget],
        *,
        names: Sequence[str] | None = None,
        backoff: float = 1.0,
        max_backoff: float = MAX_BACKOFF,
        queue_size: int | Sequence[int] = 1000,
        per_target: int = 4,
        transport: httpx.AsyncBaseTransport | None = None,
        logger: logging.Logger = log,
        what: str = "notification",
    ) -> None:
        self.targets = list(targets)
        self.names = list(names) if names is not None else [f"webhook #{i}" for i in range(len(self.targets))]
        self.backoff = backoff
        self.max_backoff = max_backoff
        sizes = [queue_size] * len(self.targets) if isinstance(queue_size, int) else list(queue_size)
        self.queue_sizes = sizes
        self.per_target = per_target
        self.log = logger
        self.what = what
        self._transport = transport
        # Per target: a heap of (-priority, seq, attempt, item) waiting for a slot.
        self._waiting: list[list[tuple[int, int, int, WebhookItem]]] = [[] for _ in self.targets]
        self._active = [0] * len(self.targets)  # deliveries in flight
        self._pending = [0] * len(self.targets)  # waiting + in flight + waiting to be retried, per target
        self._seq = itertools.count()
        self._idle: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._running = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._retries: dict[object, asyncio.TimerHandle] = {}  # items waiting to be retried
        self._client: httpx.AsyncClient | None = None
        self._stopped = False
        self.stats = [{"delivered": 0, "failed": 0, "dropped": 0} for _ in self.targets]

    delivered = property(lambda self: sum(s["delivered"] for s in self.stats))
    failed = property(lambda self: sum(s["failed"] for s in self.stats))
    dropped = property(lambda self: sum(s["dropped"] for s in self.stats))

    def where(self, index: int) -> str:
        return f"{self.names[index]} ({safe_url(self.targets[index].url)})"

    def queued(self, index: int) -> int:
        return self._pending[index]

    # ------------------------------------------------------------ enqueueing

    def put(self, items: Sequence[WebhookItem]) -> None:
        """Queue ``items`` from any thread; returns at once."""
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if self._loop is not None and running is not self._loop:
            self._loop.call_soon_threadsafe(self._enqueue, list(items))
        else:
            self._enqueue(items)

    def _drop(self, item: WebhookItem, why: str) -> None:
        i = item.index
        self.stats[i]["dropped"] += 1
        self.log.warning("%s: %s, dropped %s", self.where(i), why, item.label,
                         extra={"event": "webhook_dropped", **item.extra})

    def _enqueue(self, items: Sequence[WebhookItem]) -> None:
        for item in items:
            i = item.index
            if self._stopped:
                self._drop(item, "stopped")
                continue
            waiting = self._waiting[i]
            if self._pending[i] >= self.queue_sizes[i]:
                # Full: the lowest-priority waiting item (the newest among equals) makes room
                # for a more important one; otherwise the new one is dropped.
                victim = max(waiting) if waiting else None
                if victim is None or -victim[0] >= item.priority:
                    self._drop(item, f"queue full ({self.queue_sizes[i]})")
                    continue
                waiting.remove(victim)
                heapq.heapify(waiting)
                self._drop(victim[3], f"queue full ({self.queue_sizes[i]}), made room for {item.label}")
            else:
                self._pending[i] += 1
            heapq.heappush(waiting, (-item.priority, next(self._seq), 1, item))
            if self._idle is not None:
                self._idle.clear()
            self._kick(i)

    # ------------------------------------------------------------ running

    def start(self) -> None:
        """Start delivering in the running loop (a no-op without targets)."""
        if self._running or not self.targets:
            return
        self._loop = asyncio.get_running_loop()
        self._idle = asyncio.Event()
        if not any(self._pending):
            self._idle.set()
        self._client = httpx.AsyncClient(
            follow_redirects=False, transport=self._transport,
            headers={"User-Agent": f"pgwarden/{__version__} (webhook)"},
        )
        self._running = True
        for i in range(len(self.targets)):
            self._kick(i)

    async def stop(self, timeout: float = 2.0) -> int:
        """Stop taking items, give deliveries in flight ``timeout`` seconds, then cancel them.

        Returns how many were not delivered (also counted as dropped)."""
        self._stopped = True
        left = sum(self._pending)
        if not self._running:
            for i, n in enumerate(self._pending):
                self.stats[i]["dropped"] += n
                self._pending[i] = 0
                self._waiting[i].clear()
            if left:
                self.log.warning("webhooks: %d %s(s) not delivered (never started)", left, self.what,
                                 extra={"event": "webhook_dropped"})
            return left
        if left and self._idle is not None:
            try:
                await asyncio.wait_for(self._idle.wait(), timeout)
            except asyncio.TimeoutError:
                pass
        self._running = False
        left = list(self._pending)
        for handle in self._retries.values():
            handle.cancel()
        self._retries.clear()
        for waiting in self._waiting:
            waiting.clear()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        for i, n in enumerate(left):
            self.stats[i]["dropped"] += n
            self._pending[i] = 0
        if sum(left):
            self.log.warning("webhooks: %d %s(s) not delivered at shutdown", sum(left), self.what,
                             extra={"event": "webhook_dropped"})
        if self._client is not None:
            await self._client.aclose()
            self._client = None
        return sum(left)

    def _kick(self, index: int) -> None:
        """Start waiting deliveries of ``index`` while it has free slots (highest priority first)."""
        if not self._running:
            return
        waiting = self._waiting[index]
        while waiting and self._active[index] < self.per_target:
            _, _, attempt, item = heapq.heappop(waiting)
            self._active[index] += 1
            task = asyncio.create_task(self._deliver(item, attempt), name=f"pgwarden-webhook-{index}")
            self._tasks.add(task)
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        item, retry_in, attempt = None, None, 0
        exc = task.exception()
        if exc is not None:
            self.log.error("webhook delivery failed unexpectedly", exc_info=exc)
        else:
            item, retry_in, attempt = task.result()
        index = item.index if item is not None else self._index_of(task)
        self._active[index] -= 1
        if retry_in is not None and self._running and self._loop is not None:
            # The slot is free while it waits: more important items go first meanwhile.
            token = object()
            self._retries[token] = self._loop.call_later(retry_in, self._retry, token, item, attempt)
        else:
            self._pending[index] -= 1
            if not any(self._pending) and self._idle is not None:
                self._idle.set()
        self._kick(index)

    @staticmethod
    def _index_of(task: asyncio.Task) -> int:
        return int(task.get_name().rsplit("-", 1)[1])

    def _retry(self, token: object, item: WebhookItem, attempt: int) -> None:
        self._retries.pop(token, None)
        if not self._running:
            return
        heapq.heappush(self._waiting[item.index], (-item.priority, next(self._seq), attempt, item))
        self._kick(item.index)

    def _delay(self, attempt: int, response: httpx.Response | None) -> float:
        delay = self.backoff * (2 ** (attempt - 1))
        if response is not None and response.status_code == 429:
            try:
                delay = max(delay, float(response.headers.get("retry-after", "")))
            except ValueError:
                pass
        return min(delay, self.max_backoff) if delay == delay else self.max_backoff  # NaN: the cap

    async def _post(self, config: WebhookTarget, data: bytes) -> httpx.Response:
        """One attempt: the status and headers, the body never read, the whole bounded by ``timeout``."""
        assert self._client is not None
        request = self._client.build_request(
            "POST", config.url, content=data, timeout=config.timeout,
            headers={"Content-Type": "application/json", **config.headers},
        )
        response = await asyncio.wait_for(self._client.send(request, stream=True), config.timeout)
        await response.aclose()  # do not read what the receiver sends back
        return response

    async def _deliver(self, item: WebhookItem, attempt: int) -> tuple[WebhookItem, float | None, int]:
        """One attempt; ``(item, seconds until the retry or None, next attempt)``."""
        index, label = item.index, item.label
        config = self.targets[index]
        where = self.where(index)
        extra = {"event": "webhook_failed", **item.extra}
        response: httpx.Response | None = None
        try:
            response = await self._post(config, item.data)
        except (httpx.TransportError, httpx.TimeoutException) as exc:
            problem = f"{type(exc).__name__}: {exc}".rstrip(": ")
        except asyncio.TimeoutError:
            problem = f"no complete answer within {config.timeout:g}s"
        else:
            status = response.status_code
            if 200 <= status < 300:
                self.stats[index]["delivered"] += 1
                self.log.debug("%s: delivered %s (attempt %d)", where, label, attempt)
                return item, None, attempt
            problem = f"HTTP {status}"
            if not (status >= 500 or status == 429):
                self.stats[index]["failed"] += 1
                self.log.warning("%s: %s refused with %s; not retried", where, label, problem, extra=extra)
                return item, None, attempt
        if attempt >= config.max_attempts:
            self.stats[index]["failed"] += 1
            self.log.warning("%s: gave up on %s after %d attempt(s): %s",
                             where, label, config.max_attempts, problem, extra=extra)
            return item, None, attempt
        delay = self._delay(attempt, response)
        self.log.info("%s: %s failed (%s), attempt %d of %d; retrying in %.3gs",
                      where, label, problem, attempt, config.max_attempts, delay,
                      extra={"event": "webhook_retry", **item.extra})
        return item, delay, attempt + 1


class WebhookNotifier:
    """Approval notifications: ``notify`` builds the bodies and hands them to a :class:`WebhookDelivery`.

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
        self.delivery = WebhookDelivery(self.configs, backoff=backoff, max_backoff=max_backoff,
                                        queue_size=queue_size, per_target=per_webhook, transport=transport)

    delivered = property(lambda self: self.delivery.delivered)
    failed = property(lambda self: self.delivery.failed)
    dropped = property(lambda self: self.delivery.dropped)
    _tasks = property(lambda self: self.delivery._tasks)

    def notify(self, event: str, request: ApprovalRequest) -> None:
        """Queue ``event`` for every webhook that wants it; returns at once, never raises."""
        try:
            wanted = [i for i, c in enumerate(self.configs) if event in c.events]
            if not wanted or self.delivery._stopped:
                return
            links = self.links(request.id)
            items = []
            for index in wanted:
                body = webhook_body(self.configs[index].format, event, request, links)
                data = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
                items.append(WebhookItem(index, data, f"the {event} notification of request {request.id}",
                                   {"request": request.id}))
            self.delivery.put(items)
        except Exception:
            log.exception("webhook notification for %s (%s) not queued", getattr(request, "id", "?"), event)

    def start(self) -> None:
        """Start the worker in the running loop (a no-op without webhooks)."""
        self.delivery.start()

    async def stop(self, timeout: float = 2.0) -> None:
        """Stop taking notifications, give deliveries in flight ``timeout`` seconds, then cancel them."""
        await self.delivery.stop(timeout)
