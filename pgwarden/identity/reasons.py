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


#: The forms a real revocation takes in a refusal's reason (once the user name is removed).
_REVOKED_FORM = re.compile(
    r"^(?:authentication failed for user : )?"
    r"(?:access for .* was revoked$|api key rejected \(revoked\)|token rejected \(revoked\))", re.DOTALL)


def refusal_code(reason: str | None, user: str | None = None) -> str:
    """``token_expired``, ``revoked``, ``bad_password``, ... or ``other``.

    Robust to what a client writes into the reason: the login's ``user`` (quoted in
    it) is removed first, and ``revoked`` is only believed in the forms revocations
    really take. Otherwise a user name, a startup parameter or a SASL mechanism
    name containing "was revoked" would pass for a revoked identity (a high
    severity alert, per distinct name)."""
    text = reason or ""
    if user:
        text = text.replace(repr(user), "")
    code = _code(text)
    if code == REVOKED and not _REVOKED_FORM.match(text):
        code = _code(text.replace("was revoked", "").replace("(revoked)", "()"))
    return code


def _code(reason: str) -> str:
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
