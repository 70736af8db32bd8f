"""Where alerts go: webhooks (Slack-compatible or JSON), syslog, the log.

Every sink's ``send`` only queues (bounded) and returns: the engine calls it
on the gateway's loop, often from a data-path hook. Delivery reuses the
gateway's existing transports instead of a second implementation:
webhooks go through :class:`~pgwarden.services.webhooks.WebhookDelivery`
(retries with backoff, a bounded share per receiver, so a hung receiver fills
only its own queue), syslog through the audit sinks' RFC 5424 transport
(:class:`~pgwarden.store.sinks.SyslogSink`, which drops and counts while the
receiver is down). What a sink could not deliver is counted in ``stats()``;
the engine reports those counts in the log and the audit trail.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import Sequence
from typing import Any

from ..services.webhooks import WebhookDelivery, WebhookItem, slack_escape
from ..store.sinks import SyslogSink, syslog_message
from .limits import Clock, RateLimiter
from .model import SYSLOG_SEVERITY, Alert, severity_rank

__all__ = ["AlertSink", "LogSink", "SyslogAlertTransport", "SyslogSink", "WebhookSink", "build_sinks",
           "json_payload", "slack_payload"]

log = logging.getLogger("pgwarden.alerts")

#: Log levels: ERROR is kept for critical alerts (the writer logs an unwritable trail at ERROR too);
#: the severity itself is in the message and the ``severity`` extra.
_LEVELS = {"info": logging.INFO, "warning": logging.WARNING, "high": logging.WARNING, "critical": logging.ERROR}
_ICONS = {"info": ":information_source:", "warning": ":warning:", "high": ":rotating_light:",
          "critical": ":rotating_light: :rotating_light:"}
TEXT_CHARS = 1500


def json_payload(alert: Alert, gateway: str) -> dict[str, Any]:
    """The generic JSON body: ``{"type": "pgwarden.alert", "version": 1, ...the alert's fields}``."""
    return {"type": "pgwarden.alert", "version": 1, **alert.as_dict(gateway)}


def slack_payload(alert: Alert, gateway: str) -> dict[str, Any]:
    """``{"text": ...}``: one message, readable in Slack, Mattermost or Teams."""
    e = slack_escape
    text = alert.text if len(alert.text) <= TEXT_CHARS else alert.text[:TEXT_CHARS] + "…"
    lines = [f"{_ICONS[alert.severity]} *pgwarden [{alert.severity.upper()}] {e(alert.title)}*", e(text)]
    facts = [f"{name}: {e(str(value))}" for name, value in (
        ("who", alert.subject or alert.user), ("client", alert.client), ("target", alert.target),
        ("rule", alert.rule), ("session", alert.session), ("count", alert.count if alert.count > 1 else None),
    ) if value]
    facts.append(f"kind: {alert.kind} · gateway {e(gateway)} · alert {alert.id}")
    return {"text": "\n".join(lines + [" · ".join(facts)])}


class AlertSink:
    """Filters (severity, kinds) and the rate limit of one configured sink; subclasses deliver."""

    def __init__(self, config: Any, clock: Clock) -> None:
        self.config = config
        self.name: str = config.name
        self.min_rank = severity_rank(config.min_severity)
        self.kinds = frozenset(config.kinds)
        self.exclude = frozenset(config.exclude_kinds)
        limit = config.rate_limit
        self.limiter = RateLimiter(limit.max, limit.per, clock) if limit is not None else None
        self.delivered = 0

    def wants(self, alert: Alert) -> bool:
        if alert.kind == "alerts_suppressed":  # this sink's own rate-limit summary: always
            return True
        if severity_rank(alert.severity) < self.min_rank or alert.kind in self.exclude:
            return False
        return not self.kinds or alert.kind in self.kinds

    def send(self, alert: Alert, gateway: str) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def stats(self) -> dict[str, int]:
        return {"delivered": self.delivered, "failed": 0, "dropped": 0, "queued": 0}


class LogSink(AlertSink):
    """The gateway's log: a level that follows the severity, the alert's facts as extras."""

    def send(self, alert: Alert, gateway: str) -> None:
        log.log(
            _LEVELS[alert.severity], "ALERT [%s] %s: %s%s", alert.severity, alert.title, alert.text,
            f" (count {alert.count})" if alert.count > 1 else "",
            extra={"event": "alert", "kind": alert.kind, "severity": alert.severity, "alert": alert.id,
                   "session": alert.session, "count": alert.count, "sink": self.name},
        )
        self.delivered += 1


class SyslogAlertTransport(SyslogSink):
    """The audit syslog transport, framing alerts: MSGID ``alert``, the alert's severity as PRI,
    and ``[pgwarden@32473 id kind severity count session]``; the body is the JSON payload.

    Queue entries are ``(syslog severity, body)``; alerts are rare, so the body is decoded
    again here for the SD parameters rather than carried alongside."""

    what = "alert sink"

    def offer(self, records: Sequence[tuple[int, bytes]]) -> None:
        """As the audit transport's, except that a full queue makes room for a more severe alert
        by dropping its least severe queued one: a flood of warnings to a slow receiver must not
        crowd out a critical alert. (Entries are ``(syslog severity, body)``: lower is more severe.)"""
        for entry in records:
            if not self.down and not self.stopping and len(self.queue) >= self.limit and self.queue:
                victim = max(range(len(self.queue)), key=lambda i: (self.queue[i][0], i))
                if self.queue[victim][0] > entry[0]:
                    del self.queue[victim]
                    self.dropped += 1
            super().offer([entry])

    def format(self, seq: int, body: bytes, limit: int | None) -> bytes:
        data = json.loads(body)
        params = [("id", data["id"]), ("kind", data["kind"]), ("severity", data["severity"]),
                  ("count", str(data["count"]))]
        if data.get("session"):
            params.append(("session", str(data["session"])))
        return syslog_message(self.config.facility * 8 + seq, data.get("last_at"), "alert", params, body,
                              self.hostname, self.app_name, self.procid, limit)


class SyslogAlertSink(AlertSink):
    def __init__(self, config: Any, clock: Clock, hostname: str) -> None:
        super().__init__(config, clock)
        self.transport = SyslogAlertTransport(config, hostname, config.queue_size)
        self.transport.name = config.name
        self._task: asyncio.Task | None = None

    def send(self, alert: Alert, gateway: str) -> None:
        body = json.dumps(json_payload(alert, gateway), ensure_ascii=False, separators=(",", ":"), default=str)
        self.transport.offer([(SYSLOG_SEVERITY[alert.severity], body.encode())])

    async def start(self) -> None:
        self._task = asyncio.create_task(self.transport.run(), name=f"alert-sink-{self.name}")

    async def stop(self, timeout: float = 2.0) -> None:
        self.transport.stopping = True
        self.transport.wake.set()
        if self._task is not None:
            _, pending = await asyncio.wait([self._task], timeout=timeout)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)

    def stats(self) -> dict[str, int]:
        t = self.transport
        return {"delivered": t.sent, "failed": 0, "dropped": t.dropped, "queued": len(t.queue)}


class WebhookSink(AlertSink):
    """One webhook; all of them share one :class:`WebhookDelivery` (``index`` is this one's share)."""

    def __init__(self, config: Any, clock: Clock, delivery: WebhookDelivery, index: int) -> None:
        super().__init__(config, clock)
        self.delivery = delivery
        self.index = index

    def send(self, alert: Alert, gateway: str) -> None:
        build = slack_payload if self.config.format == "slack" else json_payload
        data = json.dumps(build(alert, gateway), ensure_ascii=False, separators=(",", ":"), default=str).encode()
        label = f"the {alert.kind} alert {alert.id}"
        self.delivery.put([WebhookItem(self.index, data, label, {"alert": alert.id}, severity_rank(alert.severity))])

    def stats(self) -> dict[str, int]:
        s = self.delivery.stats[self.index]
        return {**s, "queued": self.delivery.queued(self.index)}


class WebhookGroup(AlertSink):
    """Starts and stops the shared webhook delivery (not a sink of its own)."""

    def __init__(self, delivery: WebhookDelivery) -> None:  # noqa: D107 - no config, no filters
        self.delivery = delivery

    async def start(self) -> None:
        self.delivery.start()

    async def stop(self, timeout: float = 2.0) -> None:
        await self.delivery.stop(timeout)


def build_sinks(configs: list, clock: Clock, *, backoff: float = 1.0) -> tuple[list[AlertSink], list[AlertSink]]:
    """(the sinks alerts are routed to, the things to start and stop)."""
    sinks: list[AlertSink] = []
    runners: list[AlertSink] = []
    hooks = [c for c in configs if c.type == "webhook"]
    delivery = None
    if hooks:
        delivery = WebhookDelivery(
            hooks, names=[f"alert sink {c.name}" for c in hooks], backoff=backoff,
            queue_size=[c.queue_size for c in hooks], logger=log, what="alert",
        )
        runners.append(WebhookGroup(delivery))
    hostname = socket.gethostname()
    for config in configs:
        if config.type == "webhook":
            assert delivery is not None
            sinks.append(WebhookSink(config, clock, delivery, hooks.index(config)))
        elif config.type == "syslog":
            sink = SyslogAlertSink(config, clock, hostname)
            sinks.append(sink)
            runners.append(sink)
        else:
            sinks.append(LogSink(config, clock))
    return sinks, runners
