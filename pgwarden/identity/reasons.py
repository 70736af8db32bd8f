"""A login refusal's reason text, as a short code for metrics labels and alerts.

The gateway keeps one precise, human reason per refused login (for the audit
trail and the log; the client is only told that authentication failed). A
metric label or an alert rule needs a small fixed set instead, so this maps the
reason texts the identity and startup code write to codes. Unknown texts map
to ``other``, so a new message can never explode a label's cardinality.
"""

from __future__ import annotations

import re

__all__ = ["refusal_code", "REVOKED"]

REVOKED = "revoked"

_TOKEN = re.compile(r"\b(token|api key) rejected \(([a-z_]{1,32})\)")

# (substring, code): the first that occurs in the reason wins.
_FIXED = (
    ("was revoked", REVOKED),
    ("matches no role binding", "no_role"),
    ("grants no configured role", "no_role"),
    ("login is not enabled", "login_disabled"),
    ("unknown target", "target_not_granted"),
    ("target not granted", "target_not_granted"),
    ("too many", "throttled"),
    ("tls.mode=require", "tls_required"),
    ("without TLS refused", "tls_required"),
    ("startup parameter", "bad_startup"),
    ("no user", "bad_startup"),
    ("unsupported protocol", "bad_startup"),
    ("client disconnected during authentication", "client_gone"),
    ("protocol violation", "protocol_violation"),
    ("malformed PasswordMessage", "protocol_violation"),
    ("unexpected message", "protocol_violation"),
    ("authentication failed for user", "bad_password"),
    ("password is not UTF-8", "bad_password"),
)


def refusal_code(reason: str) -> str:
    """``token_expired``, ``api_key_revoked``, ``revoked``, ``bad_password``, ... or ``other``."""
    if not reason:
        return "other"
    m = _TOKEN.search(reason)
    if m is not None:
        code = ("token_" if m.group(1) == "token" else "api_key_") + m.group(2)
        return REVOKED if m.group(2) == "revoked" else code
    for needle, code in _FIXED:
        if needle in reason:
            return code
    return "other"
