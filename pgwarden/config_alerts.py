"""The ``alerts:`` section: what is worth a human's attention, and where it goes.

The gateway raises alerts from what it already observes (pgwarden/observe.py);
this section sets the thresholds (failed logins, rows or bytes a session may
read), the de-duplication window, and the sinks (webhooks in Slack or generic
JSON form, syslog, the log), each with its own severity and kind filters and
rate limit. Strict like the rest of the config: an unknown kind, a bad URL or
a negative threshold is a config error that names the key. docs/alerts.md
documents every key.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .alerts.model import KINDS, SEVERITIES
from .config_audit import SyslogSinkConfig, parse_duration_seconds

__all__ = [
    "AlertsConfig",
    "AuthFailuresConfig",
    "ExfiltrationConfig",
    "Thresholds",
    "RateLimitConfig",
    "WebhookAlertSink",
    "SyslogAlertSink",
    "LogAlertSink",
    "parse_size",
]

Severity = Literal["info", "warning", "high", "critical"]
assert SEVERITIES == ("info", "warning", "high", "critical")
KindName = Literal[tuple(KINDS)]  # type: ignore[valid-type]

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(b|kb|mb|gb|tb|kib|mib|gib|tib)?\s*$", re.IGNORECASE)
_FACTORS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
            "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}


def parse_size(value: object) -> int:
    """``50MB``, ``1GiB``, ``500kb`` or a number of bytes (a non-negative whole number)."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a size")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError("must not be negative")
        return int(value)
    if isinstance(value, str):
        m = _SIZE.match(value)
        if m is not None:
            return int(float(m.group(1)) * _FACTORS[(m.group(2) or "b").lower()])
    raise ValueError(f"{value!r} is not a size (use e.g. 50MB, 1GiB or a number of bytes)")


def _optional_duration(value: object) -> float:
    """A duration, where 0, ``off`` or null turn the feature off (0.0)."""
    if value is None or value == 0 or (isinstance(value, str) and value.strip().lower() in ("0", "off", "")):
        return 0.0
    return parse_duration_seconds(value)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Thresholds(_Strict):
    """Rows and bytes one session may read before an ``exfiltration`` alert (null: no limit)."""

    rows: Annotated[int, Field(ge=1)] | None = None
    bytes: int | None = None

    @field_validator("bytes", mode="before")
    @classmethod
    def _size(cls, value: object) -> int | None:
        if value is None:
            return None
        size = parse_size(value)
        if size < 1:
            raise ValueError("must be at least 1 byte (or null for no limit)")
        return size


class ExfiltrationConfig(Thresholds):
    """Defaults plus per-role thresholds; a static SCRAM user is the role ``user:NAME``.

    When several of a session's roles have a threshold, the lowest applies.
    """

    roles: dict[str, Thresholds] = {}

    @property
    def active(self) -> bool:
        return any(t.rows or t.bytes for t in (self, *self.roles.values()))


class AuthFailuresConfig(_Strict):
    """Failed logins from one client address, or for one user name, within ``window``."""

    threshold: Annotated[int, Field(ge=1)] | None = 5  # null: no auth_failures alerts
    window: float = 300.0

    @field_validator("window", mode="before")
    @classmethod
    def _seconds(cls, value: object) -> float:
        return parse_duration_seconds(value)


class RateLimitConfig(_Strict):
    """At most ``max`` alerts of each kind per ``per`` to one sink (critical ones always go);
    the rest are summarised when the period ends (docs/alerts.md)."""

    max: Annotated[int, Field(ge=1)] = 10
    per: float = 60.0

    @field_validator("per", mode="before")
    @classmethod
    def _seconds(cls, value: object) -> float:
        return parse_duration_seconds(value)


class _SinkBase(_Strict):
    name: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]
    min_severity: Severity = "info"
    kinds: list[KindName] = []  # empty: every kind
    exclude_kinds: list[KindName] = []
    rate_limit: RateLimitConfig | None = RateLimitConfig()  # null: no limit
    # Alerts waiting for this sink; beyond this they are dropped (counted, and recorded).
    queue_size: Annotated[int, Field(ge=1, le=100000)] = 1000


class WebhookAlertSink(_SinkBase):
    """POST (JSON) to a URL: ``slack`` ({"text": ...}, Slack/Mattermost/Teams) or the alert as ``json``."""

    type: Literal["webhook"]
    url: str
    format: Literal["slack", "json"] = "json"
    headers: dict[str, str] = {}
    timeout: float = 5.0
    # Attempts per alert (1 s, 2 s, 4 s ... between them, capped at 60 s).
    max_attempts: Annotated[int, Field(ge=1, le=20)] = 6

    @field_validator("url")
    @classmethod
    def _http(cls, value: str) -> str:
        from urllib.parse import urlsplit

        try:
            parts = urlsplit(value)
            ok = parts.scheme in ("http", "https") and bool(parts.hostname)
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError:
            ok = False
        if not ok:
            raise ValueError("must be an http:// or https:// URL with a host")
        return value

    @field_validator("timeout", mode="before")
    @classmethod
    def _seconds(cls, value: object) -> float:
        return parse_duration_seconds(value)


class SyslogAlertSink(_SinkBase, SyslogSinkConfig):
    """RFC 5424 syslog (the audit sink's transport: udp, tcp or a unix socket)."""

    type: Literal["syslog"]


class LogAlertSink(_SinkBase):
    """The gateway's own log (logger ``pgwarden.alerts``), at a level that follows the severity."""

    type: Literal["log"]


AlertSink = Annotated[Union[WebhookAlertSink, SyslogAlertSink, LogAlertSink], Field(discriminator="type")]


class AlertsConfig(_Strict):
    enabled: bool = True
    # Repeats of the same alert (kind and key) within this window are counted and sent
    # as one summary when it closes; 0 turns de-duplication off.
    dedupe_window: float = 60.0
    auth_failures: AuthFailuresConfig = AuthFailuresConfig()
    exfiltration: ExfiltrationConfig = ExfiltrationConfig()
    # Severity per kind, overriding the defaults (docs/alerts.md).
    severity: dict[KindName, Severity] = {}  # type: ignore[valid-type]
    # Incremental verification of the audit chain by the gateway (in a separate
    # process); 0 or null turns it off.
    verify_every: float = 3600.0
    # Empty: one sink, the log.
    sinks: list[AlertSink] = []

    @field_validator("dedupe_window", "verify_every", mode="before")
    @classmethod
    def _seconds(cls, value: object) -> float:
        return _optional_duration(value)

    @model_validator(mode="after")
    def _check(self) -> "AlertsConfig":
        names = [s.name for s in self.sinks]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"sinks: duplicate name(s) {', '.join(dupes)}")
        return self

    def severity_of(self, kind: str) -> str:
        return self.severity.get(kind) or KINDS[kind]  # type: ignore[call-overload]

    @property
    def effective_sinks(self) -> list:
        return list(self.sinks) or [LogAlertSink(type="log", name="log", rate_limit=None)]
