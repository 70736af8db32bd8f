"""Token login: validate the password as an access token, then grant roles from its claims.

This is the gateway's ``password_checker`` when ``identity`` is configured. The
outcome is a :class:`TokenIdentity` that names the targets its roles grant and
the access level for each; no matching role binding means no access at all.
Every refusal carries a precise reason for the log, while the client only ever
hears that authentication failed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from ..config import Config, RoleBinding
from .dev_issuer import DevIssuer
from .jwks import JwksCache
from .tokens import DEFAULT_ALGORITHMS, Identity, IssuerSettings, TokenRejected, TokenValidator

__all__ = ["TokenIdentity", "TokenLogin", "build_token_login", "claim_matches", "roles_for"]

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


class TokenLogin:
    def __init__(self, config: Config, validator: TokenValidator) -> None:
        self.config = config
        self.validator = validator

    async def __call__(self, event: Any) -> tuple[TokenIdentity | None, str]:
        try:
            identity: Identity = await self.validator.validate(event.password)
        except TokenRejected as exc:
            return None, f"token rejected ({exc.reason}): {exc.detail}"
        roles = roles_for(identity.claims, self.config.role_bindings)
        access: dict[str, str] = {}
        for role in roles:
            grant = self.config.roles[role]
            for target in grant.targets:
                if target not in access or _ACCESS_RANK[grant.access] > _ACCESS_RANK[access[target]]:
                    access[target] = grant.access
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


def dev_issuer_for(config: Config) -> DevIssuer | None:
    dev = config.identity.dev_issuer
    if not dev.enabled:
        return None
    return DevIssuer(dev.key_file, issuer=dev.issuer, audience=dev.audience)


def build_token_login(config: Config) -> TokenLogin | None:
    """The password checker for ``config``, or None when no issuer is configured."""
    ident = config.identity
    if not ident.enabled:
        return None
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
    return TokenLogin(config, TokenValidator(issuers, jwks, dev_issuer_for(config)))
