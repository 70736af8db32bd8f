"""Gateway configuration: a YAML file validated by pydantic.

Why pydantic: every key is typed and every mistake is reported with its path, so
``pgwarden config check`` can answer a bad file with one line that names the key
and the problem (``targets.app.port: Input should be a valid integer``).

``${VAR}`` (and ``${VAR:-default}``) in any string value expands from the
environment before validation; an unset variable without a default is an error,
never an empty string, because an empty password silently weakens a deployment.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .config_audit import AuditConfig
from .config_guardrails import GuardrailsConfig, RolePolicy
from .config_masking import MaskingConfig
from .config_approvals import ApiConfig, ApprovalsConfig
from .config_alerts import AlertsConfig

__all__ = [
    "Config",
    "ConfigError",
    "ListenConfig",
    "ListenTLSConfig",
    "LoggingConfig",
    "TargetConfig",
    "UserConfig",
    "IdentityConfig",
    "IssuerConfig",
    "DevIssuerConfig",
    "RoleConfig",
    "RoleBinding",
    "GuardrailsConfig",
    "AuditConfig",
    "MaskingConfig",
    "load_config",
    "parse_config",
    "SAFE_STARTUP_PARAMETERS",
]

# Startup parameters a client may pass through to the upstream session. Anything
# else is refused: `options` can set any GUC (role, read-only flags), and a
# parameter we do not know is a parameter we cannot reason about.
SAFE_STARTUP_PARAMETERS = frozenset(
    {
        "application_name",
        "client_encoding",
        "datestyle",
        "timezone",
        "search_path",
        "extra_float_digits",
        "intervalstyle",
        "bytea_output",
        "statement_timeout",
        "lock_timeout",
        "idle_in_transaction_session_timeout",
        "idle_session_timeout",
        "client_min_messages",
        "default_transaction_isolation",
        "lc_monetary",
        "lc_numeric",
        "lc_time",
        "geqo",
        "jit",
        "work_mem",
        "timezone_abbreviations",
    }
)


class ConfigError(Exception):
    """A configuration problem, phrased for a person in one line."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ListenTLSConfig(_Strict):
    """TLS offered to clients after an SSLRequest."""

    cert: Path | None = None
    key: Path | None = None
    # require: plaintext sessions are refused (see ListenConfig.allow_plaintext_loopback)
    # prefer: TLS offered, plaintext accepted
    # disable: SSLRequest is answered with 'N'
    mode: Literal["require", "prefer", "disable"] = "require"
    min_version: Literal["TLSv1.2", "TLSv1.3"] = "TLSv1.2"

    @model_validator(mode="after")
    def _cert_and_key(self) -> "ListenTLSConfig":
        if self.mode != "disable" and (self.cert is None or self.key is None):
            raise ValueError(
                f"mode '{self.mode}' needs both 'cert' and 'key' "
                "(make a local pair with: pgwarden tls selfsigned DIR)"
            )
        return self


class LoginThrottleConfig(_Strict):
    """Slow down repeated failed logins from one client address."""

    # Failures from one address within `window` seconds before answers are delayed.
    after: Annotated[int, Field(ge=1)] = 3
    window: Annotated[float, Field(gt=0)] = 60.0
    # The delay doubles with each further failure, from 0.25 s up to this.
    max_delay: Annotated[float, Field(ge=0)] = 5.0


class ListenConfig(_Strict):
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 6432
    tls: ListenTLSConfig = ListenTLSConfig(mode="disable")
    # With tls.mode=require, still accept plaintext from 127.0.0.0/8 and ::1.
    allow_plaintext_loopback: bool = False
    # Accept a password sent in cleartext (a token) without TLS from loopback.
    allow_cleartext_password_loopback: bool = False
    max_connections: Annotated[int, Field(ge=1)] = 1000
    # Seconds a client has to finish the startup and authentication exchange.
    startup_timeout: Annotated[float, Field(gt=0)] = 30.0
    # Seconds SIGTERM waits for busy sessions to finish before closing them.
    shutdown_grace: Annotated[float, Field(ge=0)] = 30.0
    # Largest message a client may send after authentication (bytes).
    max_message_size: Annotated[int, Field(ge=1024)] = 64 * 1024 * 1024
    login_throttle: LoginThrottleConfig = LoginThrottleConfig()


class LoggingConfig(_Strict):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["text", "json"] = "text"
    file: Path | None = None
    # The statement log stage: one line per statement with its session.
    statements: bool = True


class TargetConfig(_Strict):
    """One upstream PostgreSQL that clients reach by naming the target as their database."""

    host: str = "127.0.0.1"  # a path starting with '/' is a Unix socket directory
    port: Annotated[int, Field(ge=1, le=65535)] = 5432
    database: str
    user: str
    password: str | None = None
    password_file: Path | None = None
    password_env: str | None = None
    sslmode: Literal["disable", "require", "verify-full"] = "disable"
    sslrootcert: Path | None = None
    connect_timeout: Annotated[float, Field(gt=0)] = 10.0

    @model_validator(mode="after")
    def _one_password_source(self) -> "TargetConfig":
        sources = [s for s in (self.password, self.password_file, self.password_env) if s is not None]
        if len(sources) > 1:
            raise ValueError("give at most one of 'password', 'password_file', 'password_env'")
        if self.sslmode == "verify-full" and self.sslrootcert is None:
            raise ValueError("sslmode 'verify-full' needs 'sslrootcert' (the CA that signed the server certificate)")
        return self

    def resolve_password(self) -> str | None:
        """Read the upstream password from its source at connect time (files may rotate)."""
        if self.password is not None:
            return self.password
        if self.password_file is not None:
            return self.password_file.read_text().rstrip("\r\n")
        if self.password_env is not None:
            value = os.environ.get(self.password_env)
            if value is None:
                raise ConfigError(f"environment variable {self.password_env} (password_env) is not set")
            return value
        return None


_VERIFIER_RE = re.compile(r"^SCRAM-SHA-256\$(\d+):([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+):([A-Za-z0-9+/=]+)$")


class UserConfig(_Strict):
    """A static gateway user (break-glass), authenticated with SCRAM-SHA-256."""

    name: str
    # PostgreSQL's verifier format; make one with: pgwarden user verifier
    scram_verifier: str
    # Targets this user may reach; empty means every target.
    targets: list[str] = []

    @field_validator("scram_verifier")
    @classmethod
    def _verifier_format(cls, value: str) -> str:
        if not _VERIFIER_RE.match(value):
            raise ValueError(
                "not a SCRAM-SHA-256 verifier (expected 'SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>'; "
                "make one with: pgwarden user verifier)"
            )
        return value


class IssuerConfig(_Strict):
    """An OIDC issuer whose access tokens clients may present as their password."""

    issuer: str
    audience: str | list[str]
    jwks_uri: str | None = None
    algorithms: list[str] | None = None
    require_typ_at_jwt: bool = False
    required_claims: list[str] = []
    # Plain http:// is refused for discovery and keys except on loopback.
    allow_insecure_http: bool = False


class DevIssuerConfig(_Strict):
    """pgwarden's own issuer for demos and local development (`pgwarden token mint`)."""

    enabled: bool = False
    key_file: Path = Path("dev-issuer.key")
    issuer: str = "pgwarden-dev"
    audience: str = "pgwarden"


class IdentityConfig(_Strict):
    issuers: list[IssuerConfig] = []
    dev_issuer: DevIssuerConfig = DevIssuerConfig()
    leeway: Annotated[float, Field(ge=0, le=300)] = 30.0
    # Seconds a session may outlive its token's exp before it is ended.
    expiry_grace: Annotated[float, Field(ge=0)] = 0.0
    jwks_cache_ttl: Annotated[float, Field(gt=0)] = 300.0
    jwks_min_refetch_interval: Annotated[float, Field(ge=0)] = 30.0
    # pgwarden-issued API keys (`pgwarden keys create`); relative to data_dir.
    # Key login is on whenever `roles` are configured.
    api_keys_file: Path = Path("api-keys.sqlite")
    # Revocations, live sessions and kill requests (`pgwarden revoke`,
    # `pgwarden sessions`); relative to data_dir.
    control_file: Path = Path("control.sqlite")

    @property
    def enabled(self) -> bool:
        """Whether access tokens are accepted (some issuer is trusted)."""
        return bool(self.issuers) or self.dev_issuer.enabled


class RoleConfig(_Strict):
    """What an identity holding this role may do."""

    targets: list[str]
    # read: the upstream session starts with default_transaction_read_only=on
    # (the Guardrails milestone refuses turning it off); write; admin.
    access: Literal["read", "write", "admin"] = "read"
    # The PostgreSQL role the upstream session acts as (the target's login must be a
    # member). Sent as a startup parameter, so it is also what RESET ROLE returns to.
    set_role: str | None = None
    # Longest a session with this role may last, in seconds (None: until the token expires).
    max_session: Annotated[float, Field(gt=0)] | None = None
    # Packs, exemptions and the default verdict for this role's statements.
    guardrails: RolePolicy = RolePolicy()


class RoleBinding(_Strict):
    """Grant ``role`` to identities whose token claims match every entry of ``match``.

    A claim path may use dots (``realm_access.roles``). A string claim matches
    when equal to the value; a list claim when it contains it; ``scope`` (a
    space-separated string) when one of its scopes equals it.
    """

    role: str
    match: dict[str, str]

    @field_validator("match")
    @classmethod
    def _not_empty(cls, value: dict[str, str]) -> dict[str, str]:
        if not value:
            raise ValueError("a binding needs at least one claim to match (no access is the default)")
        return value


class Config(_Strict):
    listen: ListenConfig = ListenConfig()
    logging: LoggingConfig = LoggingConfig()
    targets: dict[str, TargetConfig]
    users: list[UserConfig] = []
    identity: IdentityConfig = IdentityConfig()
    roles: dict[str, RoleConfig] = {}
    role_bindings: list[RoleBinding] = []
    guardrails: GuardrailsConfig = GuardrailsConfig()
    audit: AuditConfig = AuditConfig()
    masking: MaskingConfig = MaskingConfig()
    approvals: ApprovalsConfig = ApprovalsConfig()
    api: ApiConfig = ApiConfig()
    alerts: AlertsConfig = AlertsConfig()
    # Extra startup parameters clients may pass through (lower-case names).
    forward_startup_parameters: list[str] = []
    data_dir: Path | None = None

    @model_validator(mode="after")
    def _cross_checks(self) -> "Config":
        if not self.targets:
            raise ValueError("targets: at least one target is needed")
        names = [u.name for u in self.users]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"users: duplicate name(s) {', '.join(dupes)}")
        for user in self.users:
            unknown = [t for t in user.targets if t not in self.targets]
            if unknown:
                raise ValueError(f"users.{user.name}.targets: unknown target(s) {', '.join(unknown)}")
        for name, role in self.roles.items():
            unknown = [t for t in role.targets if t not in self.targets]
            if unknown:
                raise ValueError(f"roles.{name}.targets: unknown target(s) {', '.join(unknown)}")
        for index, binding in enumerate(self.role_bindings):
            if binding.role not in self.roles:
                raise ValueError(f"role_bindings[{index}].role: unknown role {binding.role!r}")
        for rule in self.guardrails.rules:
            unknown = [t for t in rule.match.targets or () if t not in self.targets]
            if unknown:
                raise ValueError(f"guardrails.rules.{rule.name}.match.targets: unknown target(s) {', '.join(unknown)}")
            unknown = [r for r in rule.match.roles or () if r not in self.roles]
            if unknown:
                raise ValueError(f"guardrails.rules.{rule.name}.match.roles: unknown role(s) {', '.join(unknown)}")
        unknown = sorted(r for r in self.masking.role_names() if r not in self.roles)
        if unknown:
            raise ValueError(f"masking: unknown role(s) {', '.join(unknown)}")
        for rule in self.masking.rules:
            unknown = [t for t in rule.targets if t not in self.targets]
            if unknown:
                raise ValueError(f"masking.rules.{rule.name}.targets: unknown target(s) {', '.join(unknown)}")
        unknown = sorted(r for r in self.approvals.role_names() if r not in self.roles)
        if unknown:
            raise ValueError(f"approvals: unknown role(s) {', '.join(unknown)}")
        users = {u.name for u in self.users}
        unknown = sorted(r for r in self.alerts.exfiltration.roles
                         if not (r[5:] in users if r.startswith("user:") else r in self.roles))
        if unknown:
            raise ValueError(f"alerts.exfiltration.roles: unknown role(s) {', '.join(unknown)} "
                             "(a configured role, or user:NAME for a static user)")
        if self.approvals.enabled and not self.audit_enabled:
            raise ValueError(
                "approvals.enabled: approvals live in the audit store, and session recording is off "
                "(set data_dir or audit.store)"
            )
        if self.approvals.enabled and not self.guardrails.enabled:
            raise ValueError("approvals.enabled: approvals act on guardrail rules with action review; guardrails are off")
        if self.audit.store.type == "postgres" and self.audit.store.dsn:
            where = _dsn_location(self.audit.store.dsn)
            for name, target in self.targets.items():
                if where == (target.host, target.port, target.database):
                    raise ValueError(
                        f"audit.store.dsn: the audit trail must not live in a protected target (it is target {name!r}): "
                        "whoever can write to the target could then rewrite the evidence"
                    )
        forbidden = {"options", "replication", "role", "session_authorization", "user", "database",
                     "standard_conforming_strings"}
        bad = [p for p in self.forward_startup_parameters if p.lower() in forbidden]
        if bad:
            raise ValueError(f"forward_startup_parameters: {', '.join(bad)} can never be forwarded")
        return self

    def user(self, name: str) -> UserConfig | None:
        for user in self.users:
            if user.name == name:
                return user
        return None

    @property
    def audit_enabled(self) -> bool:
        """Whether sessions are recorded (see pgwarden.config_audit)."""
        if self.audit.enabled is not None:
            return self.audit.enabled
        return self.data_dir is not None or self.audit.store.type == "postgres" or self.audit.store.path.is_absolute()

    @property
    def safe_startup_parameters(self) -> frozenset[str]:
        return SAFE_STARTUP_PARAMETERS | {p.lower() for p in self.forward_startup_parameters}


def _dsn_location(dsn: str) -> tuple[str, int, str]:
    """(host, port, database) of a libpq URI or key=value string, with libpq's defaults."""
    from urllib.parse import unquote, urlsplit

    if dsn.startswith(("postgres://", "postgresql://")):
        parts = urlsplit(dsn)
        host = unquote(parts.hostname or "127.0.0.1")
        return host, parts.port or 5432, unquote(parts.path.lstrip("/")) or unquote(parts.username or "")
    fields = dict(item.split("=", 1) for item in dsn.split() if "=" in item)
    host = fields.get("host", "127.0.0.1")
    return host, int(fields.get("port", "5432") or 5432), fields.get("dbname", fields.get("user", ""))


_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _expand(value: object, path: str) -> object:
    if isinstance(value, str):

        def repl(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in os.environ:
                return os.environ[name]
            if default is not None:
                return default
            raise ConfigError(f"{path or '<root>'}: environment variable {name} is not set")

        return _ENV_RE.sub(repl, value)
    if isinstance(value, dict):
        return {k: _expand(v, f"{path}.{k}" if path else str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, f"{path}[{i}]") for i, v in enumerate(value)]
    return value


def _describe(error: ValidationError) -> str:
    first = error.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "<root>"
    msg = first["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    more = len(error.errors()) - 1
    suffix = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
    return f"{loc}: {msg}{suffix}"


def parse_config(data: object, base_dir: Path | None = None) -> Config:
    """Validate an already-loaded mapping; relative paths resolve against ``base_dir``."""
    if not isinstance(data, dict):
        raise ConfigError("<root>: the config must be a mapping of keys to values")
    data = _expand(data, "")
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None
    if base_dir is not None or config.data_dir is not None:
        # Files named relative to the data directory (the audit trail, keys) must
        # land there even for a config built in code.
        config = _resolve_paths(config, base_dir or Path.cwd())
    return config


def _resolve_paths(config: Config, base: Path) -> Config:
    def fix(p: Path | None) -> Path | None:
        return p if p is None or p.is_absolute() else (base / p)

    tls = config.listen.tls.model_copy(update={"cert": fix(config.listen.tls.cert), "key": fix(config.listen.tls.key)})
    listen = config.listen.model_copy(update={"tls": tls})
    targets = {
        name: t.model_copy(update={"password_file": fix(t.password_file), "sslrootcert": fix(t.sslrootcert)})
        for name, t in config.targets.items()
    }
    logging_cfg = config.logging.model_copy(update={"file": fix(config.logging.file)})
    dev = config.identity.dev_issuer
    dev_base = fix(config.data_dir) or base
    dev = dev.model_copy(update={"key_file": dev.key_file if dev.key_file.is_absolute() else dev_base / dev.key_file})
    keys_file = config.identity.api_keys_file
    keys_file = keys_file if keys_file.is_absolute() else dev_base / keys_file
    control_file = config.identity.control_file
    control_file = control_file if control_file.is_absolute() else dev_base / control_file
    identity = config.identity.model_copy(
        update={"dev_issuer": dev, "api_keys_file": keys_file, "control_file": control_file}
    )
    audit = config.audit
    store_path = audit.store.path if audit.store.path.is_absolute() else dev_base / audit.store.path
    key_file = audit.checkpoints.key_file
    key_file = key_file if key_file.is_absolute() else dev_base / key_file
    sinks = audit.sinks
    if sinks.jsonl is not None:
        sinks = sinks.model_copy(update={"jsonl": sinks.jsonl.model_copy(update={"path": fix(sinks.jsonl.path)})})
    audit = audit.model_copy(
        update={
            "store": audit.store.model_copy(update={"path": store_path}),
            "checkpoints": audit.checkpoints.model_copy(update={"key_file": key_file}),
            "sinks": sinks,
        }
    )
    api = config.api
    if api.tls is not None:
        api = api.model_copy(update={"tls": api.tls.model_copy(update={"cert": fix(api.tls.cert), "key": fix(api.tls.key)})})
    masking = config.masking
    mask_key = masking.key_file if masking.key_file.is_absolute() else dev_base / masking.key_file
    masking = masking.model_copy(update={"key_file": mask_key})
    return config.model_copy(
        update={
            "api": api,
            "masking": masking,
            "listen": listen,
            "targets": targets,
            "logging": logging_cfg,
            "data_dir": fix(config.data_dir),
            "identity": identity,
            "audit": audit,
        }
    )


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read, expand and validate a YAML config file, raising ConfigError with one line."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {p}: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{p}: invalid YAML{where}: {problem}") from None
    return parse_config(data, base_dir=p.resolve().parent)
