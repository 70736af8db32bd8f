"""Config for just-in-time approvals (``approvals:``) and the reviewer HTTP API (``api:``).

A guardrail rule with ``action: review`` decides *that* a statement needs a
human; this section decides *how*: the delivery mode (hold the session, or
refuse at once with a ticket), how many distinct reviewers, which roles may
review, how long a request waits and how long an approved ticket stays valid.
``policies`` override those per guardrail rule, session role or requester
(first match wins). docs/approvals.md documents every key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .config_audit import parse_duration_seconds

__all__ = ["ApprovalsConfig", "ApprovalPolicyConfig", "WebhookConfig", "ApiConfig", "ApiTLSConfig", "ApprovalSettings"]

Mode = Literal["hold", "ticket"]
EVENTS = ("requested", "approved", "denied", "expired", "withdrawn", "executed")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _duration(value: object) -> float:
    return parse_duration_seconds(value)


class WebhookConfig(_Strict):
    """A URL notified (POST, JSON) when a request is made or decided; never blocks a session."""

    url: str
    # slack: {"text": ...} with the approve/deny links (Slack, Mattermost, Teams
    # incoming webhooks); json: the request as the API returns it, plus the event.
    format: Literal["slack", "json"] = "json"
    headers: dict[str, str] = {}
    events: list[Literal["requested", "approved", "denied", "expired", "withdrawn", "executed"]] = [
        "requested", "approved", "denied",
    ]
    timeout: float = 5.0
    # Attempts per notification (1 s, 2 s, 4 s ... between them, capped at 60 s).
    max_attempts: Annotated[int, Field(ge=1, le=20)] = 6

    @field_validator("url")
    @classmethod
    def _http(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value

    @field_validator("timeout", mode="before")
    @classmethod
    def _seconds(cls, value: object) -> float:
        return _duration(value)


class ApprovalSettings(_Strict):
    """The resolved settings for one request (defaults overlaid by the first matching policy)."""

    policy: str
    mode: Mode
    approvals: int
    reviewer_roles: tuple[str, ...]
    timeout: float
    validity: float


class ApprovalPolicyConfig(_Strict):
    """Overrides for requests whose guardrail rule, session role and requester match (globs)."""

    name: str
    rules: list[str] = []  # guardrail rule names (globs); empty: any rule
    roles: list[str] = []  # the session's acting role; empty: any
    identities: list[str] = []  # requester subject or user (globs); empty: anyone
    mode: Mode | None = None
    approvals: Annotated[int, Field(ge=1, le=10)] | None = None
    reviewer_roles: list[str] | None = None
    timeout: float | None = None
    validity: float | None = None

    @field_validator("timeout", "validity", mode="before")
    @classmethod
    def _seconds(cls, value: object) -> float | None:
        return None if value is None else _duration(value)


class ApprovalsConfig(_Strict):
    enabled: bool = False
    mode: Mode = "hold"
    # Distinct reviewers needed (never the requester).
    approvals: Annotated[int, Field(ge=1, le=10)] = 1
    # Roles (from the reviewer's token or API key) that may decide. Empty: only the local admin.
    reviewer_roles: list[str] = []
    # The CLI without --token acts as the local admin (``local:<unix user>``), who may
    # decide any request: whoever can read the config and write the store is trusted.
    local_admin: bool = True
    # How long a request waits for a decision (hold: the session waits this long).
    timeout: float = 600.0
    # How long an approved ticket may be used (ticket mode).
    validity: float = 900.0
    # Open (pending) requests one requester may have; more are refused (53400), so a
    # client cannot flood reviewers, the trail and the webhooks.
    max_pending_per_requester: Annotated[int, Field(ge=1, le=10000)] = 20
    # How often a gateway looks for decisions made elsewhere (CLI, another gateway).
    poll_interval: Annotated[float, Field(gt=0, le=10)] = 0.5
    # Base URL of the reviewer API in notices and webhooks (default: from api.host/port).
    public_url: str | None = None
    policies: list[ApprovalPolicyConfig] = []
    webhooks: list[WebhookConfig] = []

    @field_validator("timeout", "validity", mode="before")
    @classmethod
    def _seconds(cls, value: object) -> float:
        return _duration(value)

    @model_validator(mode="after")
    def _check(self) -> "ApprovalsConfig":
        names = [p.name for p in self.policies]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"policies: duplicate name(s) {', '.join(dupes)}")
        return self

    def role_names(self) -> set[str]:
        out = set(self.reviewer_roles)
        for policy in self.policies:
            out.update(policy.roles)
            out.update(policy.reviewer_roles or ())
        return {r for r in out if not any(c in r for c in "*?[")}

    def settings_for(self, rule: str | None, role: str | None, requester: str) -> ApprovalSettings:
        """The first policy matching this request, overlaid on the defaults."""
        from fnmatch import fnmatchcase

        for policy in self.policies:
            if policy.rules and not any(fnmatchcase(rule or "default", g) for g in policy.rules):
                continue
            if policy.roles and not any(fnmatchcase(role or "", g) for g in policy.roles):
                continue
            if policy.identities and not any(fnmatchcase(requester, g) for g in policy.identities):
                continue
            return ApprovalSettings(
                policy=policy.name,
                mode=policy.mode or self.mode,
                approvals=policy.approvals or self.approvals,
                reviewer_roles=tuple(self.reviewer_roles if policy.reviewer_roles is None else policy.reviewer_roles),
                timeout=policy.timeout or self.timeout,
                validity=policy.validity or self.validity,
            )
        return ApprovalSettings(
            policy="default", mode=self.mode, approvals=self.approvals, reviewer_roles=tuple(self.reviewer_roles),
            timeout=self.timeout, validity=self.validity,
        )


class ApiTLSConfig(_Strict):
    cert: Path
    key: Path


_LOOPBACK = ("127.0.0.1", "::1", "localhost")


class ApiConfig(_Strict):
    """The gateway's admin HTTP port: the reviewer API (with approvals), ``/metrics``
    (Prometheus) and ``/health`` (readiness); OpenAPI at /openapi.json."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8433
    # Reviewers send bearer tokens: off loopback the API needs TLS (or a TLS proxy in
    # front and allow_plaintext: true, knowingly).
    tls: ApiTLSConfig | None = None
    allow_plaintext: bool = False
    # GET /metrics (Prometheus text format, unauthenticated like most exporters). Off: the
    # gateway keeps no counters at all.
    metrics: bool = True

    @model_validator(mode="after")
    def _plaintext(self) -> "ApiConfig":
        if self.enabled and self.tls is None and self.host not in _LOOPBACK and not self.allow_plaintext:
            raise ValueError(
                f"host {self.host}: off loopback the API would carry bearer tokens in cleartext; "
                "set api.tls (cert, key), or put a TLS proxy in front and set allow_plaintext: true"
            )
        return self

    @property
    def url(self) -> str:
        host = self.host if ":" not in self.host else f"[{self.host}]"
        if host in ("0.0.0.0", "[::]"):
            host = "127.0.0.1"
        return f"{'https' if self.tls is not None else 'http'}://{host}:{self.port}"
