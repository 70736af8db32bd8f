"""Token-based client identity: OIDC access tokens presented as the password.

:class:`TokenValidator` checks a token against trusted issuers whose keys
:class:`JwksCache` fetches and caches; :class:`DevIssuer` is a local issuer
for demos. Submodules explain the reasoning behind each piece.
"""

from pgwarden.identity.dev_issuer import DevIssuer
from pgwarden.identity.jwks import JwksCache
from pgwarden.identity.tokens import (
    DEFAULT_ALGORITHMS,
    MAX_TOKEN_BYTES,
    REASONS,
    Identity,
    IssuerSettings,
    TokenRejected,
    TokenValidator,
)

__all__ = [
    "DEFAULT_ALGORITHMS",
    "MAX_TOKEN_BYTES",
    "REASONS",
    "DevIssuer",
    "Identity",
    "IssuerSettings",
    "JwksCache",
    "TokenRejected",
    "TokenValidator",
]
