"""Real-time alerts (docs/alerts.md): events worth a human's attention, sent to sinks and recorded.

The gateway builds the engine with :func:`build_alerts` and registers it as an
observer; the engine lives in :mod:`.engine`, the sinks in :mod:`.sinks`, the
de-duplication and rate-limit logic in :mod:`.limits`. Imports are deferred so
that the config (which only needs :mod:`.model`) stays light.
"""

from __future__ import annotations

from typing import Any

__all__ = ["build_alerts"]


def build_alerts(config: Any, gateway: Any) -> Any:
    """The gateway's alert engine (an Observer with async start/stop), or None when alerting is off."""
    alerts = getattr(config, "alerts", None)
    if alerts is None or not alerts.enabled:
        return None
    from .engine import make_engine

    # Unknown role names in exfiltration thresholds are a config error (Config._cross_checks).
    return make_engine(config, getattr(gateway, "audit_writer", None), getattr(gateway, "gateway_id", ""))
