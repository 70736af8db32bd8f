"""``pgwarden alerts test``: send one test alert to each configured sink and say what happened.

Why: a Slack webhook URL with a typo, a syslog collector behind a firewall or a
JSON receiver that answers 403 only shows up the day a real alert is lost.
This sends a harmless ``test`` alert (severity info) through the very sink code
the gateway uses (its filters and rate limits are bypassed: a test must reach
every sink it names) and waits for each delivery's outcome. The test alert is
not recorded in the audit trail: only a gateway writes the trail.
"""

from __future__ import annotations

import asyncio
import getpass
import socket
import time
from typing import Any

from ..alerts.model import Alert
from ..alerts.sinks import build_sinks
from ..config import Config
from .webhooks import safe_url

__all__ = ["AlertsServiceError", "send_test_alert"]


class AlertsServiceError(Exception):
    """Bad input (an unknown sink name); the CLI exits 2."""


def _test_alert() -> Alert:
    who = f"{getpass.getuser()}@{socket.gethostname()}"
    now = time.time()
    return Alert(
        kind="test", severity="info", title="Test alert from pgwarden",
        text=f"pgwarden alerts test, run by {who}: if you can read this, this sink delivers pgwarden's alerts.",
        first_at=now, last_at=now, details={"test": True},
    )


async def send_test_alert(config: Config, sink: str | None = None, timeout: float = 15.0) -> list[dict[str, Any]]:
    """One row per sink: ``{"sink", "type", "outcome", "detail"}``; outcome ``delivered``,
    ``failed``, ``dropped`` (syslog receiver down), ``no answer`` (still trying at ``timeout``)
    or ``not tested`` (a log sink: the gateway's own log)."""
    configs = list(config.alerts.effective_sinks)
    if sink is not None:
        configs = [c for c in configs if c.name == sink]
        if not configs:
            names = ", ".join(c.name for c in config.alerts.effective_sinks)
            raise AlertsServiceError(f"no alert sink named {sink!r} (configured: {names})")
    logs = [c for c in configs if c.type == "log"]  # the gateway's own log: nothing to reach from here
    configs = [c for c in configs if c.type != "log"]
    sinks, runners = build_sinks(configs, time.time, backoff=0.2)
    for runner in runners:
        await runner.start()
    alert = _test_alert()
    for s in sinks:
        s.send(alert, "cli")
    deadline = time.monotonic() + timeout

    def settled(s) -> bool:
        st = s.stats()
        return st.get("delivered", 0) + st.get("failed", 0) + st.get("dropped", 0) > 0

    while time.monotonic() < deadline and not all(settled(s) for s in sinks):
        await asyncio.sleep(0.05)
    rows = [{"sink": c.name, "type": "log", "outcome": "not tested",
             "detail": "the gateway's own log (logger pgwarden.alerts)"} for c in logs]
    for s in sinks:
        st = s.stats()
        outcome = ("delivered" if st.get("delivered") else "failed" if st.get("failed")
                   else "dropped" if st.get("dropped") else "no answer")
        detail = {"webhook": safe_url(getattr(s.config, "url", "")), "syslog": _syslog_where(s.config),
                  }.get(s.config.type, "")
        rows.append({"sink": s.name, "type": s.config.type, "outcome": outcome, "detail": detail})
    for runner in runners:
        await runner.stop(1.0)
    return rows


def _syslog_where(config: Any) -> str:
    address = getattr(config, "address", "")
    port = getattr(config, "port", None)
    protocol = getattr(config, "protocol", "")
    return f"{protocol} {address}" + (f":{port}" if port and not str(address).startswith("/") else "")
