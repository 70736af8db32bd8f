"""Prometheus metrics (docs/metrics.md): plain counters on the data path, read at scrape time.

The gateway's hot path must not pay for metrics: no lock, no label lookup in a
``prometheus_client`` child, no per-statement objects. So :class:`GatewayMetrics`
is an :class:`~pgwarden.observe.Observer` whose hooks only bump ints in dicts
keyed by small bounded keys (a verdict class, a statement kind, a rule name, a
command word: the only strings made per statement are the command tag's split),
and a custom collector turns those ints into metric families when Prometheus
scrapes ``GET /metrics`` (in the gateway's loop, so no lock is needed either).
Statements are counted in ``completed``, once their verdict is final.
The two histograms (audit write latency and upstream connect latency) are plain
bucket counts too, turned into histogram families at scrape time.

Each gateway has its own :class:`~prometheus_client.CollectorRegistry` (several
gateways run in one test process, and the default registry would mix them).

Cardinality is bounded by the config, never by traffic: targets, roles and rule
names come from the config (or pgwarden's fixed built-in names), auth failure
reasons go through :func:`~pgwarden.identity.reasons.refusal_code`, and every
label map is additionally capped at :data:`MAX_LABEL_VALUES` (the rest is
counted as ``other``). No label carries a session, a client, a token subject
or SQL text (a static user's configured name is its ``role``: ``user:<name>``).
"""

from __future__ import annotations

import asyncio
from bisect import bisect_left
import logging
import platform
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from .. import __version__
from ..identity.reasons import refusal_code
from ..observe import Observer
from ..session.verdict import Allow, Deny, Rewrite

__all__ = ["GatewayMetrics", "build_metrics", "MAX_LABEL_VALUES", "ROW_COMMANDS", "STATIC_ROLE"]

log = logging.getLogger("pgwarden.metrics")

#: Distinct values one label may take before further ones are counted as "other".
MAX_LABEL_VALUES = 200
#: Command tags whose last number is a row count (``SELECT 5``, ``INSERT 0 1``, ``COPY 10``).
ROW_COMMANDS = frozenset({"SELECT", "INSERT", "UPDATE", "DELETE", "MERGE", "COPY", "FETCH", "MOVE"})
#: The ``role`` label of a static (SCRAM) user's session, who holds no role: ``user:<name>``
#: (bounded by the configured users; the same spelling as alerts.exfiltration.roles and approvals).
STATIC_ROLE = "user:"
_APPROVAL_EVENTS = frozenset(
    {"requested", "approve", "deny", "approved", "denied", "expired", "withdrawn", "executed"})
_VERDICTS = ((Allow, "allow"), (Deny, "deny"), (Rewrite, "rewrite"))
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_PENDING_REFRESH = 10.0  # seconds a pending-approvals count is reused between scrapes


def _bump(counts: dict, key: Any, by: int = 1) -> None:
    """``counts[key] += by``, with new keys past :data:`MAX_LABEL_VALUES` folded into "other"."""
    if key not in counts and len(counts) >= MAX_LABEL_VALUES:
        key = "other" if not isinstance(key, tuple) else (*key[:-1], "other")
    counts[key] = counts.get(key, 0) + by


def session_role(info: Any) -> str:
    """The ``role`` label of a session: its identity's roles joined with ``+`` (binding order), or
    ``user:<name>`` for a static SCRAM user. Bounded by the config, never by traffic."""
    identity = info.extra.get("identity")
    roles = getattr(identity, "roles", None) if identity is not None else None
    if not roles:
        return STATIC_ROLE + info.user
    return "+".join(roles)


_tag_cache: dict[str, tuple[str, int] | None] = {}


def _tag_rows(tag: str) -> tuple[str, int] | None:
    """(command, rows) of a command tag that reports rows (``SELECT 5``), cached: tags repeat."""
    try:
        return _tag_cache[tag]
    except KeyError:
        pass
    head, _, count = tag.rpartition(" ")
    command = head.partition(" ")[0]
    found = (command, int(count)) if count.isdigit() and command in ROW_COMMANDS else None
    if len(_tag_cache) > 4096:
        _tag_cache.clear()
    _tag_cache[tag] = found
    return found


class _Buckets:
    """A histogram's counts without locks: the gateway's loop is the only writer, scrapes read."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one: above every bound (+Inf)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def cumulative(self) -> list[tuple[str, int]]:
        out, running = [], 0
        for bound, count in zip((*map(str, self.bounds), "+Inf"), self.counts):
            running += count
            out.append((bound, running))
        return out

    def family(self, name: str, documentation: str) -> HistogramMetricFamily:
        return HistogramMetricFamily(name, documentation, buckets=self.cumulative(), sum_value=self.total)


class GatewayMetrics(Observer):
    """The gateway's counters (hooks) and their exposition (:meth:`render`)."""

    def __init__(self, config: Any, gateway: Any) -> None:
        self.config = config
        self.gateway = gateway
        self.registry = CollectorRegistry(auto_describe=False)
        # -- sessions: live ones are kept by id (one insert per session, not per statement)
        self._live: dict[str, Any] = {}
        self.sessions: dict[tuple[str, str], int] = {}
        self.bytes_from_client = 0  # of ended sessions; live ones are added at scrape time
        self.bytes_from_server = 0
        # -- statements
        # verdict class -> statement kind -> n (nested, so a statement builds no key tuple)
        self.verdicts: dict[type, dict[str, int]] = {cls: {} for cls, _ in _VERDICTS}
        self.denied: dict[str, int] = {}
        self.rows: dict[str, int] = {}
        self.masked_values = 0
        self.masked_statements = 0
        # -- logins
        self.auth: dict[tuple[str, str], int] = {}
        self.auth_failures: dict[str, int] = {}
        # -- approvals
        self.approval_events: dict[str, int] = {}
        self._pending: int | None = None
        self._pending_at = float("-inf")
        self._counting: asyncio.Future | None = None  # the one count under way (concurrent scrapes share it)
        # -- audit (records written are read from the writer at scrape time: its inline fast
        # path, flush_now, counts them without calling audit_written)
        self.audit_failures = 0
        # -- upstreams
        self.upstream_failures: dict[str, int] = {t: 0 for t in config.targets}
        # Observed once per group commit, which with the SQLite store's inline path is once per
        # client read: bucket counts in a list (a bisect, ~0.1 µs) instead of prometheus_client's
        # locked Histogram (~0.5 µs), turned into a histogram family at scrape time.
        self.audit_latency = _Buckets(_LATENCY_BUCKETS)
        # Per configured target, the same lock-free buckets (prometheus_client's Histogram would
        # also expose a ``_created`` gauge family, which docs/metrics.md does not name).
        self.upstream_latency: dict[str, _Buckets] = {t: _Buckets(_LATENCY_BUCKETS) for t in config.targets}
        self.registry.register(_Collector(self))

    # ------------------------------------------------------------ hooks (data path: ints only)

    def authenticated(self, event: Any) -> None:
        _bump(self.auth, (event.outcome, event.method or "none"))
        if event.outcome != "ok":
            # Not refusal_code(event.reason) alone: the reason quotes the client's user name.
            _bump(self.auth_failures, refusal_code(event.reason, event.user))

    def session_started(self, info: Any) -> None:
        self._live[info.id] = info
        _bump(self.sessions, (info.target, session_role(info)))

    def session_ended(self, info: Any, reason: str) -> None:
        if self._live.pop(info.id, None) is not None:
            self.bytes_from_client += info.bytes_from_client
            self.bytes_from_server += info.bytes_from_server

    def completed(self, stmt: Any) -> None:
        # Counted at completion, not in ``decided``: stmt.verdict is then what the client got,
        # including a hold that resolved to a refusal and a statement refused after the fact
        # because its audit record could not be written (Relay.refuse_unsent).
        verdict = stmt.verdict
        if verdict is not None:  # None: skipped after an earlier error, never decided
            cls = verdict.__class__
            counts = self.verdicts.get(cls)
            if counts is None:
                counts = self.verdicts[cls] = {}
            kind = stmt.kind
            counts[kind] = counts.get(kind, 0) + 1
            if cls is Deny:
                _bump(self.denied, verdict.rule or "none")
        for tag in stmt.tags:
            found = _tag_rows(tag)
            if found is not None:
                command, count = found
                self.rows[command] = self.rows.get(command, 0) + count
        mask = stmt.mask
        if mask is not None:
            values = _masked_values(mask)
            if values:
                self.masked_values += values
                self.masked_statements += 1

    def approval_event(self, request: Any, event: Any) -> None:
        kind = getattr(event, "kind", "other")
        _bump(self.approval_events, kind if kind in _APPROVAL_EVENTS else "other")
        self._pending_at = float("-inf")  # the next scrape counts again

    def audit_written(self, records: int, seconds: float, backlog: int) -> None:
        self.audit_latency.observe(seconds)

    def audit_failed(self, error: str) -> None:
        self.audit_failures += 1

    def upstream_connected(self, target: str, seconds: float, error: str | None) -> None:
        if error is None:
            buckets = self.upstream_latency.get(target)  # configured targets only (bounded)
            if buckets is not None:
                buckets.observe(seconds)
        else:
            _bump(self.upstream_failures, target)

    # ------------------------------------------------------------ scrape

    async def refresh(self) -> None:
        """What must be awaited before a scrape: the approval store's pending count (cached)."""
        broker = getattr(self.gateway, "approvals", None)
        if broker is None or broker.service is None:
            return
        loop = asyncio.get_running_loop()
        if loop.time() - self._pending_at < _PENDING_REFRESH:
            return
        # Unauthenticated scrapes may come in any number at once: they share one count.
        if self._counting is None or self._counting.done():
            self._counting = asyncio.ensure_future(self._count_pending(broker))
        await asyncio.shield(self._counting)

    async def _count_pending(self, broker: Any) -> None:
        loop = asyncio.get_running_loop()
        try:
            pending = await asyncio.wait_for(broker.store.list("pending", 10000), 2.0)
        except Exception as exc:  # the scrape still answers, without this gauge
            log.warning("metrics: cannot count pending approvals: %s", exc, extra={"event": "metrics_failed"})
            self._pending = None
        else:
            self._pending = len(pending)
        self._pending_at = loop.time()

    async def render(self) -> bytes:
        """The Prometheus text exposition of this gateway."""
        await self.refresh()
        return generate_latest(self.registry)


def _masked_values(mask: Any) -> int:
    """Values the masking changed in one statement's results (and scrubbed messages): the
    maskers' counters, summed without building the audit report."""
    results = getattr(mask, "_results", None)
    if results is None:
        return sum(int(entry.get("values", 0)) for entry in mask.report())
    total = mask.scrubbed
    for _labels, masker in results:
        total += sum(masker.counts)
    return total


class _Collector(Collector):
    """Turns :class:`GatewayMetrics`' ints (and the gateway's state) into metric families."""

    def __init__(self, metrics: GatewayMetrics) -> None:
        self.m = metrics

    def describe(self) -> list[Metric]:
        return []  # unchecked collector: the families depend on what happened

    def collect(self) -> Iterator[Metric]:
        m, gateway = self.m, self.m.gateway
        info = GaugeMetricFamily("pgwarden_build_info", "pgwarden's version (the value is always 1).",
                                 labels=["version", "python"])
        info.add_metric([__version__, platform.python_version()], 1)
        yield info

        # -- sessions
        live = GaugeMetricFamily("pgwarden_sessions_live", "Client sessions relaying to a target now.",
                                 labels=["target"])
        per_target = {t: 0 for t in m.config.targets}
        bytes_client, bytes_server = m.bytes_from_client, m.bytes_from_server
        for session in m._live.values():
            per_target[session.target] = per_target.get(session.target, 0) + 1
            bytes_client += session.bytes_from_client
            bytes_server += session.bytes_from_server
        for target, n in sorted(per_target.items()):
            live.add_metric([target], n)
        yield live
        yield _counter("pgwarden_sessions", "Client sessions that reached a target, by target and role "
                       "(identity roles joined with '+', or user:<name> for a static user).",
                       ["target", "role"], m.sessions)
        relayed = CounterMetricFamily("pgwarden_bytes", "Bytes the gateway received in relayed sessions, "
                                      "from clients and from upstreams.", labels=["direction"])
        relayed.add_metric(["from_client"], bytes_client)
        relayed.add_metric(["from_upstream"], bytes_server)
        yield relayed

        # -- statements
        statements = CounterMetricFamily("pgwarden_statements", "Statements decided by the policy, by protocol "
                                         "message kind and final verdict.", labels=["kind", "verdict"])
        names = dict(_VERDICTS)
        for cls, kinds in m.verdicts.items():
            for kind, n in sorted(kinds.items()):
                statements.add_metric([kind, names.get(cls, "other")], n)
        yield statements
        yield _counter("pgwarden_statements_denied", "Statements refused, by the rule that refused them.",
                       ["rule"], m.denied)
        yield _counter("pgwarden_rows", "Rows PostgreSQL reported in command tags, by command.", ["command"], m.rows)
        yield _scalar_counter("pgwarden_masked_values", "Result values changed by masking (and scrubbed "
                              "error or notice texts).", m.masked_values)
        yield _scalar_counter("pgwarden_masked_statements", "Statements whose results had values masked.",
                              m.masked_statements)

        # -- logins
        yield _counter("pgwarden_auth_attempts", "Logins by outcome (ok, refused) and method.",
                       ["outcome", "method"], m.auth)
        yield _counter("pgwarden_auth_failures", "Refused logins by reason code.", ["reason"], m.auth_failures)

        # -- approvals
        yield _counter("pgwarden_approval_events", "Approval request events recorded by this gateway.",
                       ["event"], m.approval_events)
        broker = getattr(gateway, "approvals", None)
        if broker is not None:
            held = GaugeMetricFamily("pgwarden_approvals_held", "Statements of this gateway waiting for a decision.")
            held.add_metric([], len(getattr(broker, "_waiters", ())))
            yield held
            if m._pending is not None:
                pending = GaugeMetricFamily("pgwarden_approvals_pending",
                                            "Pending approval requests in the approval store.")
                pending.add_metric([], m._pending)
                yield pending

        # -- audit
        writer = getattr(gateway, "audit_writer", None)
        if writer is not None:
            status = writer.status()
            up = GaugeMetricFamily("pgwarden_audit_store_up", "1 while the audit store can be written, else 0.")
            up.add_metric([], 0 if status["failed"] else 1)
            yield up
            depth = GaugeMetricFamily("pgwarden_audit_queue_depth", "Audit records waiting to be written.")
            depth.add_metric([], status["queued"])
            yield depth
            yield _scalar_counter("pgwarden_audit_records_written", "Audit records made durable.",
                                  status.get("written") or 0)
            yield _scalar_counter("pgwarden_audit_records_dropped", "Audit records dropped (backlog full while the "
                                  "store failed).", status.get("dropped") or 0)
            yield _scalar_counter("pgwarden_audit_failures", "Times the audit store stopped accepting writes.",
                                  m.audit_failures)
            yield m.audit_latency.family("pgwarden_audit_write_seconds",
                                         "Time to make one batch of audit records durable (group commit).")

        # -- upstreams
        latency = HistogramMetricFamily("pgwarden_upstream_connect_seconds", "Time to connect and log in to a "
                                        "target's PostgreSQL (successes).", labels=["target"])
        for target, buckets in sorted(m.upstream_latency.items()):
            latency.add_metric([target], buckets.cumulative(), buckets.total)
        yield latency
        yield _counter("pgwarden_upstream_connect_failures", "Upstream connects or logins that failed, by target.",
                       ["target"], m.upstream_failures)

        # -- alerts (when the alert engine is configured)
        yield from _alert_metrics(getattr(gateway, "alerts", None))


def _alert_metrics(alerts: Any) -> Iterator[Metric]:
    stats_fn = getattr(alerts, "stats", None)
    if not callable(stats_fn):
        return
    try:
        stats = stats_fn() or {}
    except Exception:
        log.exception("metrics: alerts.stats() failed")
        return
    raised = CounterMetricFamily("pgwarden_alerts_raised", "Alerts raised, by kind and severity.",
                                 labels=["kind", "severity"])
    for key, n in sorted((stats.get("raised") or {}).items()):
        kind, _, severity = str(key).partition("/")
        raised.add_metric([kind, severity or "none"], n)
    yield raised
    deliveries = CounterMetricFamily("pgwarden_alert_deliveries", "Alert deliveries per sink and outcome.",
                                     labels=["sink", "outcome"])
    queued = GaugeMetricFamily("pgwarden_alert_queue_depth", "Alerts waiting for delivery, per sink.",
                               labels=["sink"])
    for sink, counts in sorted((stats.get("sinks") or {}).items()):
        for outcome in ("delivered", "failed", "dropped"):
            deliveries.add_metric([sink, outcome], int(counts.get(outcome, 0) or 0))
        queued.add_metric([sink], int(counts.get("queued", 0) or 0))
    yield deliveries
    yield queued
    deduplicated = stats.get("deduplicated")
    if isinstance(deduplicated, int):
        yield _scalar_counter("pgwarden_alerts_deduplicated", "Alerts folded into an earlier one (same kind "
                              "and subject within the dedup window).", deduplicated)
    limited = stats.get("rate_limited")
    if isinstance(limited, dict):
        yield _counter("pgwarden_alerts_rate_limited", "Alerts a sink's rate limit held back.", ["sink"],
                       {str(k): int(v or 0) for k, v in limited.items()})


def _counter(name: str, doc: str, labels: list[str], counts: dict) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=labels)
    for key, n in sorted(counts.items(), key=lambda kv: str(kv[0])):
        family.add_metric(list(key) if isinstance(key, tuple) else [key], n)
    return family


def _scalar_counter(name: str, doc: str, value: int) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def build_metrics(config: Any, gateway: Any) -> GatewayMetrics | None:
    """The gateway's metrics (an Observer), or None when nothing would serve them
    (``api.enabled`` false, or ``api.metrics`` false): then they cost nothing."""
    api = getattr(config, "api", None)
    if api is None or not api.enabled or not getattr(api, "metrics", True):
        return None
    return GatewayMetrics(config, gateway)
