"""Real-time alerts (docs/alerts.md): events worth a human's attention, sent to sinks and recorded.

The gateway builds the engine with :func:`build_alerts` and registers it as an
observer; the engine lives in :mod:`.engine`, the sinks in :mod:`.sinks`, the
de-duplication and rate-limit logic in :mod:`.limits`. Imports are deferred so
that the config (which only needs :mod:`.model`) stays light.
"""

from __future__ import annotations

import logging
from typing import Any

__all__ = ["build_alerts"]

log = logging.getLogger("pgwarden.alerts")


def build_alerts(config: Any, gateway: Any) -> Any:
    """The gateway's alert engine (an Observer with async start/stop), or None when alerting is off."""
    alerts = getattr(config, "alerts", None)
    if alerts is None or not alerts.enabled:
        return None
    from .engine import make_engine

    roles = set(getattr(config, "roles", {}) or {})
    users = {u.name for u in getattr(config, "users", ())}
    for name in alerts.exfiltration.roles:
        known = name[5:] in users if name.startswith("user:") else name in roles
        if not known:
            log.warning("alerts.exfiltration.roles: %r is neither a configured role nor user:<a static user>; "
                        "its thresholds never apply", name, extra={"event": "config_warning"})
    return make_engine(config, getattr(gateway, "audit_writer", None), getattr(gateway, "gateway_id", ""))
