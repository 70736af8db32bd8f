"""The ``audit:`` section of the config: session recording (see docs/audit.md).

Recording is on whenever the config has a ``data_dir`` (the SQLite trail lives
there) or names a store explicitly; ``enabled: false`` turns it off and the
gateway then logs a warning at start, because every statement it forwards is
then unrecorded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "AuditConfig",
    "AuditStoreConfig",
    "ResultsConfig",
    "CheckpointConfig",
    "RetentionConfig",
    "SinksConfig",
    "SyslogSinkConfig",
    "JsonlSinkConfig",
    "parse_duration_seconds",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration_seconds(value: object) -> float:
    """``90d``, ``12h``, ``30m``, ``45s``, ``2w`` or a number of seconds."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value <= 0:
            raise ValueError("must be positive")
        return float(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text and text[-1] in _UNITS and text[:-1].replace(".", "", 1).isdigit():
            seconds = float(text[:-1]) * _UNITS[text[-1]]
            if seconds > 0:
                return seconds
        elif text.replace(".", "", 1).isdigit() and float(text) > 0:
            return float(text)
    raise ValueError(f"{value!r} is not a duration (use e.g. 90d, 12h, 30m or seconds)")


class AuditStoreConfig(_Strict):
    """Where the trail is kept: an SQLite file (default) or a separate PostgreSQL database."""

    type: Literal["sqlite", "postgres"] = "sqlite"
    # sqlite: relative to data_dir.
    path: Path = Path("audit.sqlite")
    # postgres: a libpq URI of the audit database (never a protected target).
    dsn: str | None = None
    # sqlite: "normal" survives a gateway crash (kill -9) without an fsync per
    # commit; "full" also survives power loss (one fsync per group commit).
    sync: Literal["normal", "full"] = "normal"

    @model_validator(mode="after")
    def _check(self) -> "AuditStoreConfig":
        if self.type == "postgres" and not self.dsn:
            raise ValueError("dsn: the postgres audit store needs a dsn")
        return self


class ResultsConfig(_Strict):
    """How much of each result is kept (counts and the SHA-256 always cover all of it)."""

    enabled: bool = True
    max_rows: Annotated[int, Field(ge=0)] = 1000
    max_bytes: Annotated[int, Field(ge=0)] = 1024 * 1024


class CheckpointConfig(_Strict):
    """Signed checkpoints: every ``every_records`` records or ``every_seconds``, and at shutdown."""

    every_records: Annotated[int, Field(ge=1)] = 10000
    every_seconds: Annotated[float, Field(gt=0)] = 60.0
    # Ed25519 private key (PEM); created on first start; relative to data_dir.
    # The public key is written next to it with the suffix ".pub".
    key_file: Path = Path("audit-signing.key")


class RetentionConfig(_Strict):
    """AU-11: delete sessions older than ``max_age`` (a prefix of the trail, see docs/audit.md)."""

    max_age: str | None = None
    check_every: str = "1h"

    @model_validator(mode="after")
    def _check(self) -> "RetentionConfig":
        if self.max_age is not None:
            parse_duration_seconds(self.max_age)
        parse_duration_seconds(self.check_every)
        return self

    @property
    def max_age_seconds(self) -> float | None:
        return None if self.max_age is None else parse_duration_seconds(self.max_age)

    @property
    def check_every_seconds(self) -> float:
        return parse_duration_seconds(self.check_every)


class SyslogSinkConfig(_Strict):
    """RFC 5424 syslog over UDP, TCP (octet-counted framing) or a Unix socket."""

    address: str = "127.0.0.1"  # host, or a socket path for protocol "unix"
    port: Annotated[int, Field(ge=1, le=65535)] = 514
    protocol: Literal["udp", "tcp", "unix"] = "udp"
    facility: Annotated[int, Field(ge=0, le=23)] = 13  # log audit
    app_name: str = "pgwarden"


class JsonlSinkConfig(_Strict):
    """Every record as one JSON line appended to a file (for a SIEM's file shipper)."""

    path: Path


class SinksConfig(_Strict):
    syslog: SyslogSinkConfig | None = None
    jsonl: JsonlSinkConfig | None = None
    # Records waiting for a slow sink; beyond this they are dropped (and the drops recorded).
    queue_size: Annotated[int, Field(ge=1)] = 10000


class AuditConfig(_Strict):
    # None: on when the config has a data_dir or names a store explicitly.
    enabled: bool | None = None
    store: AuditStoreConfig = AuditStoreConfig()
    # What happens to new statements when the trail cannot be written.
    on_audit_failure: Literal["refuse", "allow_and_alert"] = "refuse"
    results: ResultsConfig = ResultsConfig()
    checkpoints: CheckpointConfig = CheckpointConfig()
    retention: RetentionConfig = RetentionConfig()
    sinks: SinksConfig = SinksConfig()
    # Group commit: a batch is written as soon as the previous write finished,
    # holding at most this many records.
    max_batch: Annotated[int, Field(ge=1)] = 5000
    # Records kept in memory while the store is failing, before new ones are dropped (and counted).
    max_backlog: Annotated[int, Field(ge=1)] = 100000
