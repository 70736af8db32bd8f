"""Slow down repeated failed logins from one source (brute force, token stuffing).

Each client address gets a short memory of its recent failures. From the
``after``-th failure within ``window`` seconds, the FATAL answer to every further
failure is held back for a delay that doubles up to ``max_delay``: a client
guessing passwords gets a few tries per second at most, while a person who
mistypes once notices nothing. A successful login clears the address. The
table is bounded, so a flood of addresses cannot grow memory without limit.
"""

from __future__ import annotations

import time
from collections import OrderedDict

from ..config import LoginThrottleConfig

__all__ = ["LoginThrottle"]

_MAX_SOURCES = 10_000


class LoginThrottle:
    def __init__(self, config: LoginThrottleConfig, clock=time.monotonic) -> None:
        self.config = config
        self.clock = clock
        self._failures: OrderedDict[str, tuple[int, float]] = OrderedDict()

    def failed(self, source: str | None) -> float:
        """Record a failure; return how long to hold back the answer (seconds)."""
        key = source or "local"
        now = self.clock()
        count, last = self._failures.pop(key, (0, now))
        if now - last > self.config.window:
            count = 0
        count += 1
        self._failures[key] = (count, now)
        while len(self._failures) > _MAX_SOURCES:
            self._failures.popitem(last=False)
        over = count - self.config.after
        if over < 0:
            return 0.0
        return min(self.config.max_delay, 0.25 * (2**over))

    def succeeded(self, source: str | None) -> None:
        self._failures.pop(source or "local", None)
