"""Facts about the running config that several controls cite, phrased once.

Why a separate module: the same setting (TLS mode, the trusted issuers, the
guardrail packs, the signing key...) is evidence for several controls, and an
auditor comparing two controls must read the same words for the same fact.
Everything here reads the config defensively (``getattr``) because some
sections (``alerts``) are being added while this report already ships.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "alert_sinks", "audit_sinks", "tls_client", "upstreams", "issuers", "roles_text", "guardrails_text",
    "masking_text", "approvals_text", "store_text", "retention_text", "review_rules", "loopback_host",
    "termination_text", "control_plane",
]

_LOOP = ("127.0.0.1", "::1", "localhost")


def loopback_host(host: str) -> bool:
    """A Unix socket directory or a loopback address: traffic that never crosses a network."""
    return host.startswith("/") or host in _LOOP or host.startswith("127.")


def alert_sinks(config: Any) -> list[str]:
    """Where alerts are delivered to people (``config.alerts.sinks``; absent in configs older than
    alerts). ``log`` sinks are left out: they are the gateway's own log, the default without sinks."""
    alerts = getattr(config, "alerts", None)
    if alerts is None or getattr(alerts, "enabled", True) is False:
        return []
    out = []
    for sink in getattr(alerts, "sinks", None) or []:
        kind = getattr(sink, "type", None) or getattr(sink, "kind", None) or type(sink).__name__
        if kind == "log":
            # The gateway's own log, where alerts go anyway without sinks: it tells no reviewer.
            continue
        where = getattr(sink, "url", None) or getattr(sink, "path", None) or getattr(sink, "address", None)
        out.append(f"{kind}" + (f" ({_redact_url(str(where))})" if where else ""))
    return out


def _redact_url(text: str) -> str:
    """A URL without its query and credentials (webhook URLs often embed a secret)."""
    from urllib.parse import urlsplit

    if "://" not in text:
        return text
    parts = urlsplit(text)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}" + ("/\u2026" if parts.path.strip("/") or parts.query else "")


def audit_sinks(config: Any) -> list[str]:
    sinks = config.audit.sinks
    out = []
    if sinks.syslog is not None:
        s = sinks.syslog
        out.append(f"syslog over {s.protocol} to {s.address}" + ("" if s.protocol == "unix" else f":{s.port}"))
    if sinks.jsonl is not None:
        out.append(f"JSON lines file {sinks.jsonl.path}")
    return out


def tls_client(config: Any) -> str:
    tls = config.listen.tls
    text = f"client TLS mode '{tls.mode}'"
    if tls.mode != "disable":
        text += f", minimum {tls.min_version}"
    if config.listen.allow_plaintext_loopback:
        text += "; plaintext accepted from loopback"
    if config.listen.allow_cleartext_password_loopback:
        text += "; cleartext passwords (tokens) accepted from loopback without TLS"
    return text


def upstreams(config: Any) -> list[tuple[str, str, bool]]:
    """(target name, its sslmode, whether the upstream is on this host)."""
    return [(name, t.sslmode, loopback_host(t.host)) for name, t in config.targets.items()]


def issuers(config: Any) -> list[str]:
    ident = config.identity
    out = [f"OIDC issuer {i.issuer} (audience {i.audience if isinstance(i.audience, str) else ', '.join(i.audience)})"
           for i in ident.issuers]
    if ident.dev_issuer.enabled:
        out.append(f"pgwarden's dev issuer {ident.dev_issuer.issuer} (for demos; not an organisational IdP)")
    return out


def roles_text(config: Any) -> list[str]:
    out = []
    for name, role in config.roles.items():
        extra = f", acts as {role.set_role}" if role.set_role else ""
        extra += f", sessions at most {int(role.max_session)} s" if role.max_session else ""
        out.append(f"role {name}: {role.access} access to {', '.join(role.targets)}{extra}")
    return out


def guardrails_text(config: Any) -> list[str]:
    g = config.guardrails
    if not g.enabled:
        return ["guardrails are disabled: statements are not checked against packs or rules"]
    out = [f"every statement parsed with the PostgreSQL parser; unparsable statements refused; packs "
           f"{', '.join(g.packs) or 'none'} for sessions without a role; default verdict {g.default}"]
    if g.exempt:
        out.append(f"pack rules switched off: {', '.join(g.exempt)}")
    for rule in g.rules:
        out.append(f"rule {rule.name}: {rule.action}" + (" (alerts)" if rule.alert else ""))
    for name, role in config.roles.items():
        pol = role.guardrails
        if pol.packs is not None or pol.exempt or pol.default:
            packs = (", ".join(pol.packs) or "none") if pol.packs is not None else "inherited"
            out.append(f"role {name}: packs {packs}"
                       + (f", exempt {', '.join(pol.exempt)}" if pol.exempt else "")
                       + (f", default {pol.default}" if pol.default else ""))
    return out


def masking_text(config: Any) -> list[str]:
    m = config.masking
    if not m.active:
        return []
    out = [f"masking rule {r.name}: {', '.join(r.columns)} -> {r.strategy}"
           + (f" (per role: {', '.join(f'{k}={v}' for k, v in r.roles.items())})" if r.roles else "")
           + (", derived values refused" if r.derived == "refuse" else "")
           + (", filtering on it refused" if r.filter == "refuse" else "")
           for r in m.rules]
    if m.detect.enabled:
        out.append(f"content detection ({m.detect.scope} columns): {', '.join(m.detect.types)} -> {m.detect.strategy}")
    if m.unmasked_roles:
        out.append(f"roles that see every value: {', '.join(m.unmasked_roles)}")
    return out


def review_rules(config: Any) -> list[str]:
    return [r.name for r in config.guardrails.rules if r.action == "review"] if config.guardrails.enabled else []


def approvals_text(config: Any) -> list[str]:
    a = config.approvals
    if not a.enabled:
        return []
    out = [f"just-in-time approvals ({a.mode} mode): {a.approvals} reviewer(s) other than the requester, "
           f"reviewer roles {', '.join(a.reviewer_roles) or '(local admin only)'}; requests expire after {int(a.timeout)} s"]
    rules = review_rules(config)
    out.append(f"rules that need approval: {', '.join(rules)}" if rules else "no guardrail rule has action review")
    for p in a.policies:
        out.append(f"approval policy {p.name}: rules {', '.join(p.rules) or 'any'}"
                   + (f", {p.approvals} reviewer(s)" if p.approvals else "") + (f", mode {p.mode}" if p.mode else ""))
    if not a.local_admin:
        out.append("the local admin may not decide requests (reviewers need a token or API key)")
    return out


def store_text(config: Any) -> str:
    s = config.audit.store
    where = "a separate PostgreSQL database" if s.type == "postgres" else f"SQLite file {s.path} (sync {s.sync})"
    cp = config.audit.checkpoints
    return (f"audit store: {where}; SHA-256 hash chain; Ed25519 checkpoints every {cp.every_records} records "
            f"or {cp.every_seconds:g} s and at shutdown (key {cp.key_file}); on store failure: {config.audit.on_audit_failure}")


def retention_text(config: Any) -> str:
    r = config.audit.retention
    if r.max_age is None:
        return "no retention period configured (audit.retention.max_age): records are kept until removed by hand"
    return (f"records older than {r.max_age} are removed every {r.check_every}, oldest first, "
            "with a signed retention checkpoint naming what was removed")


def control_plane(config: Any) -> bool:
    """Whether revocation and ``sessions kill`` apply (the gateway runs them with token or key login)."""
    return bool(config.identity.enabled or config.roles)


def termination_text(config: Any) -> list[str]:
    out = []
    if config.identity.enabled:
        out.append(f"token sessions end when the access token expires (grace {config.identity.expiry_grace:g} s)")
    limits = [f"{n}: {int(r.max_session)} s" for n, r in config.roles.items() if r.max_session]
    if limits:
        out.append(f"maximum session length per role ({', '.join(limits)})")
    if control_plane(config):
        out.append("`pgwarden revoke` ends a subject's sessions; `pgwarden sessions kill` ends one session")
    return out
