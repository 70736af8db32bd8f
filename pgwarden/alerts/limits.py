"""De-duplication, rate limits and failure counting: pure logic with an injectable clock.

Why separate from the engine: these decide how many messages a human gets,
so their semantics must be exact and testable without a gateway. Every
structure here is bounded, because what feeds them (refused statements,
failed logins) is under a client's control.

* :class:`Deduper`: the first occurrence of a (kind, key) goes out at once;
  repeats within the window are counted, and when the window closes one
  summary carries the count. A window that closed with repeats re-opens
  quietly, so a loop that keeps going sends one summary per window, not an
  immediate alert after each.
* :class:`RateLimiter`: at most ``max`` alerts per ``per`` seconds to one sink and
  severity (critical alerts are never held); the excess is counted per kind and
  reported once the period ends.
* :class:`FailureCounter`: failures per key within a sliding window, keeping
  at most ``threshold`` timestamps per key and a bounded number of keys.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from .model import MAX_SESSIONS, Alert, severity_rank

__all__ = ["Deduper", "RateLimiter", "FailureCounter", "Suppressed"]

Clock = Callable[[], float]


@dataclass(slots=True)
class _Window:
    alert: Alert  # the occurrence that opened the window (the template of its summary)
    opened: float
    count: int = 0  # repeats since it opened
    first: float = 0.0
    last: float = 0.0
    sessions: list[str] = field(default_factory=list)


class Deduper:
    """``offer(alert)`` returns the alert to send now, or None when it only counts as a repeat;
    ``due()`` returns the summaries of windows that closed (``flush()`` closes them all)."""

    def __init__(self, window: float, clock: Clock, max_keys: int = 10000) -> None:
        self.window = window
        self.clock = clock
        self.max_keys = max_keys
        self._open: OrderedDict[tuple[str, str], _Window] = OrderedDict()
        self.suppressed = 0  # repeats folded into summaries, in total
        self._early: list[Alert] = []  # summaries of windows closed by offer(), for the next due()

    def offer(self, alert: Alert) -> Alert | None:
        if self.window <= 0:
            return alert
        now = self.clock()
        key = (alert.kind, alert.key)
        win = self._open.get(key)
        if win is not None and now - win.opened < self.window:
            if win.count == 0:
                win.first = now
            win.count += 1
            win.last = now
            self.suppressed += 1
            if alert.session and alert.session not in win.sessions and len(win.sessions) < MAX_SESSIONS:
                win.sessions.append(alert.session)
            return None
        out: list[Alert] = []
        if win is not None:  # closed but not collected yet: its summary first
            self._close(key, win, out)
        self._open[key] = _Window(alert, now)
        if len(self._open) > self.max_keys:  # bounded: the oldest window closes early
            oldest = next(iter(self._open))
            self._close(oldest, self._open[oldest], out, reopen=False)
        self._early.extend(out)
        return alert

    def due(self) -> list[Alert]:
        """Summaries of the windows that closed by now (and re-opened quietly if they had repeats)."""
        out, self._early = self._early, []
        if self.window <= 0 or not self._open:
            return out
        now = self.clock()
        for key, win in list(self._open.items()):
            if now - win.opened >= self.window:
                self._close(key, win, out, reopen=True, now=now)
        return out

    def flush(self) -> list[Alert]:
        """Close every window now (shutdown): the summaries of all pending repeats."""
        out, self._early = self._early, []
        for key, win in list(self._open.items()):
            self._close(key, win, out, reopen=False)
        return out

    def _close(self, key: tuple[str, str], win: _Window, out: list[Alert], reopen: bool = False,
               now: float = 0.0) -> None:
        del self._open[key]
        if win.count:
            out.append(win.alert.repeated(win.count, win.first, win.last, win.sessions))
            if reopen:  # the loop may still be going: keep counting, quietly
                self._open[key] = _Window(win.alert, now)

    def __len__(self) -> int:
        return len(self._open)


@dataclass(slots=True)
class Suppressed:
    """What a sink's rate limit held back during one period."""

    count: int
    kinds: dict[str, int]
    severity: str
    first: float
    last: float


class RateLimiter:
    """Per sink, one fixed window **per kind**: ``allow(alert)`` is False beyond ``max`` alerts
    of that kind in ``per`` seconds; **critical** alerts are never held back.

    Why per kind: what feeds the limit (refused statements, flagged rules, failed logins
    with made-up user names) is under a database client's control. With a shared budget,
    a flood of one kind would use it up and a different alert (``revoked_identity`` behind
    a flood of ``auth_failures``, ``exfiltration`` behind refused statements) would wait
    a whole period, then arrive only as a count in ``alerts_suppressed``. A budget per
    severity is not enough either: ``auth_failures`` and ``revoked_identity`` are both
    high. Kinds are a fixed, small set, so per-kind budgets still bound a sink's volume.
    Critical alerts (the trail cannot be written or failed verification) are rare,
    de-duplicated, and must never wait.
    """

    def __init__(self, max_alerts: int, per: float, clock: Clock) -> None:
        self.max = max_alerts
        self.per = per
        self.clock = clock
        self._buckets: dict[str, list[float]] = {}  # kind -> [period start, sent in it]
        self._held: Suppressed | None = None
        self._due_at = 0.0  # when the held alerts' summary is due
        self.suppressed = 0  # in total
        self.bypassed = 0  # critical alerts, never limited

    def allow(self, alert: Alert) -> bool:
        severity = alert.severity
        if severity == "critical":
            self.bypassed += 1
            return True
        now = self.clock()
        bucket = self._buckets.get(alert.kind)
        if bucket is None:
            bucket = self._buckets[alert.kind] = [now, 0]
        elif now - bucket[0] >= self.per and self._held is None:
            bucket[0], bucket[1] = now, 0
        if bucket[1] < self.max:
            bucket[1] += 1
            return True
        self.suppressed += 1
        held = self._held
        if held is None:
            self._held = Suppressed(1, {alert.kind: 1}, severity, now, now)
            self._due_at = bucket[0] + self.per
        else:
            held.count += 1
            held.kinds[alert.kind] = held.kinds.get(alert.kind, 0) + 1
            held.last = now
            if severity_rank(severity) > severity_rank(held.severity):
                held.severity = severity
            self._due_at = min(self._due_at, bucket[0] + self.per)
        return False

    def due(self, force: bool = False) -> Suppressed | None:
        """What was held back, once its period is over (``force``: now); starts the next periods."""
        held = self._held
        if held is None:
            return None
        now = self.clock()
        if not force and now < self._due_at:
            return None
        self._held = None
        for bucket in self._buckets.values():
            if now - bucket[0] >= self.per:
                bucket[0], bucket[1] = now, 0
        # The summary itself is an alert of its own kind, in the new period.
        bucket = self._buckets.setdefault("alerts_suppressed", [now, 0])
        bucket[1] += 1
        return held


class FailureCounter:
    """Failures per key in a sliding window: ``add(key)`` returns how many are in the window now.

    Only the newest ``threshold`` timestamps per key matter, so no more are kept;
    at most ``max_keys`` keys are tracked (the least recently failing go first).
    """

    def __init__(self, threshold: int, window: float, clock: Clock, max_keys: int = 10000) -> None:
        self.threshold = threshold
        self.window = window
        self.clock = clock
        self.max_keys = max_keys
        self._keys: OrderedDict[str, deque[float]] = OrderedDict()

    def add(self, key: str) -> int:
        now = self.clock()
        times = self._keys.get(key)
        if times is None:
            times = self._keys[key] = deque(maxlen=self.threshold)
            if len(self._keys) > self.max_keys:
                self._keys.popitem(last=False)
        else:
            self._keys.move_to_end(key)
        times.append(now)
        while times and now - times[0] > self.window:
            times.popleft()
        return len(times)

    def __len__(self) -> int:
        return len(self._keys)
