"""Token login: validate the password as an access token, then grant roles from its claims.

This is the gateway's ``password_checker`` when ``identity`` is configured. The
outcome is a :class:`TokenIdentity` that names the targets its roles grant and
the access level for each; no matching role binding means no access at all.
Every refusal carries a precise reason for the log, while the client only ever
hears that authentication failed.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from ..config import Config, RoleBinding
from .apikeys import API_KEY_PREFIX, ApiKeyRejected, ApiKeyStore
from .control import ControlStore, control_store_for
from .dev_issuer import DevIssuer
from .jwks import JwksCache
from .tokens import DEFAULT_ALGORITHMS, Identity, IssuerSettings, TokenRejected, TokenValidator

__all__ = ["TokenIdentity", "TokenLogin", "build_token_login", "claim_matches", "grants_for", "roles_for"]

log = logging.getLogger("pgwarden.identity")

_ACCESS_RANK = {"read": 0, "write": 1, "admin": 2}


@dataclass(frozen=True)
class TokenIdentity:
    """An authenticated token holder and what its roles grant."""

    subject: str
    issuer: str
    roles: tuple[str, ...]
    access: dict[str, str] = field(default_factory=dict)  # target -> read | write | admin
    expires_at: float | None = None
    token_id: str | None = None
    claims: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def targets(self) -> tuple[str, ...]:
        return tuple(self.access)


def _claim(claims: dict[str, Any], path: str) -> Any:
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def claim_matches(claims: dict[str, Any], path: str, expected: str) -> bool:
    value = _claim(claims, path)
    if value is None:
        return False
    if isinstance(value, list):
        return expected in [str(v) for v in value]
    if path == "scope" and isinstance(value, str):
        return expected in value.split()
    return str(value) == expected


def roles_for(claims: dict[str, Any], bindings: list[RoleBinding]) -> tuple[str, ...]:
    """Every role whose binding matches all of its claims, in binding order."""
    roles: list[str] = []
    for binding in bindings:
        if binding.role not in roles and all(claim_matches(claims, k, v) for k, v in binding.match.items()):
            roles.append(binding.role)
    return tuple(roles)


def grants_for(config: Config, roles: tuple[str, ...]) -> tuple[tuple[str, ...], dict[str, str]]:
    """The configured roles among ``roles`` and the access they grant per target (highest wins)."""
    roles = tuple(r for r in roles if r in config.roles)
    access: dict[str, str] = {}
    for role in roles:
        grant = config.roles[role]
        for target in grant.targets:
            if target not in access or _ACCESS_RANK[grant.access] > _ACCESS_RANK[access[target]]:
                access[target] = grant.access
    return roles, access


API_KEY_ISSUER = "pgwarden-api-key"


class TokenLogin:
    """Checks a password as a pgwarden API key (``pgw_…``) or else as an access token."""

    def __init__(
        self,
        config: Config,
        validator: TokenValidator | None,
        api_keys: ApiKeyStore | None = None,
        control: ControlStore | None = None,
    ) -> None:
        self.config = config
        self.validator = validator
        self.api_keys = api_keys
        self.control = control

    async def __call__(self, event: Any) -> tuple[TokenIdentity | None, str]:
        identity, reason = await self._check(event)
        if identity is not None and self.control is not None:
            # Off the loop: a SQLite read. A broken store fails the login closed.
            if await asyncio.to_thread(self.control.is_revoked, identity.subject):
                return None, f"access for {identity.subject!r} was revoked"
        return identity, reason

    async def _check(self, event: Any) -> tuple[TokenIdentity | None, str]:
        if event.password.startswith(API_KEY_PREFIX):
            return await self._api_key(event.password)
        if self.validator is None:
            return None, "token login is not enabled (no issuer configured)"
        try:
            identity: Identity = await self.validator.validate(event.password)
        except TokenRejected as exc:
            return None, f"token rejected ({exc.reason}): {exc.detail}"
        roles, access = grants_for(self.config, roles_for(identity.claims, self.config.role_bindings))
        if not roles:
            return None, f"token for {identity.subject!r} from {identity.issuer!r} matches no role binding"
        return (
            TokenIdentity(
                subject=identity.subject,
                issuer=identity.issuer,
                roles=roles,
                access=access,
                expires_at=identity.expires_at,
                token_id=identity.token_id,
                claims=dict(identity.claims),
            ),
            "",
        )

    async def _api_key(self, key: str) -> tuple[TokenIdentity | None, str]:
        if self.api_keys is None:
            return None, "api key login is not enabled (no roles configured)"
        try:
            info = await asyncio.to_thread(self.api_keys.check, key)
        except ApiKeyRejected as exc:
            return None, f"api key rejected ({exc.reason}): {exc.detail}"
        roles, access = grants_for(self.config, info.roles)
        if not roles:
            return None, f"api key {info.name!r} grants no configured role ({', '.join(info.roles)})"
        return (
            TokenIdentity(
                subject=f"key:{info.name}",
                issuer=API_KEY_ISSUER,
                roles=roles,
                access=access,
                expires_at=info.expires_at,
                token_id=info.key_id,
            ),
            "",
        )


def dev_issuer_for(config: Config) -> DevIssuer | None:
    dev = config.identity.dev_issuer
    if not dev.enabled:
        return None
    return DevIssuer(dev.key_file, issuer=dev.issuer, audience=dev.audience)


def build_token_login(config: Config) -> TokenLogin | None:
    """The password checker for ``config``: access tokens when an issuer is trusted,
    API keys when roles are configured; None when neither."""
    ident = config.identity
    api_keys = ApiKeyStore(ident.api_keys_file) if config.roles else None
    control = control_store_for(config)
    if not ident.enabled:
        return TokenLogin(config, None, api_keys, control) if api_keys is not None else None
    issuers = [
        IssuerSettings(
            issuer=i.issuer,
            audience=i.audience,
            jwks_uri=i.jwks_uri,
            algorithms=tuple(i.algorithms) if i.algorithms else DEFAULT_ALGORITHMS,
            require_typ_at_jwt=i.require_typ_at_jwt,
            required_claims=tuple(i.required_claims),
            leeway=ident.leeway,
        )
        for i in ident.issuers
    ]
    insecure = any(i.allow_insecure_http for i in ident.issuers)
    jwks = JwksCache(
        ttl=ident.jwks_cache_ttl, min_refetch_interval=ident.jwks_min_refetch_interval, allow_insecure_http=insecure
    )
    return TokenLogin(config, TokenValidator(issuers, jwks, dev_issuer_for(config)), api_keys, control)
