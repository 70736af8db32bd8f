"""How pgwarden implements each control (from the config) and whether the period shows it working.

Every status carries a ``reason`` an auditor can check: it names the setting
or the counts it rests on. The rules, in short:

* ``satisfied``: the mechanism is configured and the period's records show it
  working (or, for configuration-only controls, the configuration is adequate);
* ``no_events``: the mechanism is configured but nothing in the period
  exercised it, so there is no operational evidence either way;
* ``not_satisfied``: the mechanism is missing or misconfigured, or the records
  contradict it (plaintext sessions, dropped records...).

A control whose evidence comes from the trail (``Control.trail``) is never
``satisfied`` when verification failed for the period: its records might be
forged. :func:`evaluate` applies that after the per-control rules.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from . import config_facts as F
from .catalog import CONTROLS, Control
from .collect import Collector

__all__ = ["Context", "evaluate"]

SAT, NOT, NONE = "satisfied", "not_satisfied", "no_events"


@dataclass
class Context:
    """What the rules may look at besides the config."""

    col: Collector
    verification: dict[str, Any]
    retention: list[dict[str, Any]] = field(default_factory=list)  # signed retention checkpoints seen
    oldest_at: str | None = None  # oldest record still in the trail
    now: float = 0.0

    @property
    def failed(self) -> bool:
        return self.verification.get("status") == "failed"

    @property
    def unreliable(self) -> bool:
        """The period's records cannot be relied on: verification failed, or no signature covers them."""
        return self.verification.get("status") in ("failed", "unsigned") or bool(self.verification.get("unsigned_stale"))

    def n(self, name: str) -> int:
        return self.col.counts.get(name, 0)

    def pick(self, *names: str, prefix: str | None = None) -> dict[str, int]:
        """Counters by name (always present, 0 when unseen) plus every counter under ``prefix``."""
        out = {name: self.n(name) for name in names}
        if prefix:
            out.update({k: v for k, v in sorted(self.col.counts.items()) if k.startswith(prefix)})
        return out

    def samples(self, *categories: str, limit: int = 5) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        for cat in categories:
            found.extend(self.col.samples.get(cat, ()))
        found.sort(key=lambda s: s["seq"])
        return found[:limit]


Result = tuple[list[str], str, str, dict[str, int], list[dict[str, Any]]]  # implementation, status, reason, counts, samples


def _au_2(cfg, ctx: Context) -> Result:
    impl = ["the gateway records every connect, authentication outcome, statement (before it is forwarded), "
            "result, notice, cancel, disconnect, approval event, alert and trail event",
            F.store_text(cfg),
            "results: " + (f"rows kept up to {cfg.audit.results.max_rows} per statement, SHA-256 over all"
                           if cfg.audit.results.enabled else "not captured (only statements and outcomes)")]
    counts = {f"type.{k}": v for k, v in sorted(ctx.col.by_type.items())}
    total = sum(ctx.col.by_type.values())
    if not total:
        return impl, NONE, "no records in the period", counts, []
    return impl, SAT, f"{total} records of {len(ctx.col.by_type)} event types logged in the period", counts, \
        ctx.samples("connect", "auth_ok", "allow", "audit")


def _au_3(cfg, ctx: Context) -> Result:
    impl = ["who: user, token subject, issuer, roles; what: statement text, parameters, decision and rule, rows; "
            "when: `at` in UTC; where: client address, target, gateway id; outcome: status, SQLSTATE, rule"]
    counts = ctx.pick("content.incomplete", "records.unreadable")
    counts["records"] = sum(ctx.col.by_type.values())
    if not counts["records"]:
        return impl, NONE, "no records in the period", counts, []
    bad = counts["content.incomplete"] + counts["records.unreadable"]
    if bad:
        return impl, NOT, f"{bad} record(s) lack required content or cannot be read", counts, ctx.samples("incomplete")
    return impl, SAT, f"all {counts['records']} records carry the fields for who, what, when, where and outcome", \
        counts, ctx.samples("connect", "deny_guardrails", "auth_refused")


def _au_6(cfg, ctx: Context) -> Result:
    sinks, alerts = F.audit_sinks(cfg), F.alert_sinks(cfg)
    impl = [f"records streamed to: {', '.join(sinks)}" if sinks else "no SIEM sink configured (audit.sinks)",
            f"alerts sent to: {', '.join(alerts)}" if alerts else "no alert sink configured",
            "review tools: this report, `pgwarden sessions list/show/replay`, `pgwarden audit export`"]
    counts = ctx.pick("alerts", "audit.dropped", "audit.dropped.dropped", prefix="alerts.severity.")
    if not sinks and not alerts:
        return impl, NOT, "nothing delivers records or alerts to reviewers; review depends on someone running " \
            "the reports by hand", counts, []
    reason = "records and/or alerts are delivered to reviewers" + (f" ({counts['alerts']} alerts in the period)" if counts["alerts"] else "")
    if counts["audit.dropped.dropped"]:
        reason += f"; {counts['audit.dropped.dropped']} record(s) were dropped by a sink (the store keeps them)"
    return impl, SAT, reason, counts, ctx.samples("alert", "audit")


def _au_8(cfg, ctx: Context) -> Result:
    impl = ["every record's `at` is UTC with microseconds, from the gateway host's clock",
            "the host's time source (NTP) is the organisation's to configure"]
    counts = ctx.pick("time.nonconforming")
    counts["records"] = sum(ctx.col.by_type.values())
    if not counts["records"]:
        return impl, NONE, "no records in the period", counts, []
    if counts["time.nonconforming"]:
        return impl, NOT, f"{counts['time.nonconforming']} record(s) have a time stamp not in UTC ISO 8601 form", counts, []
    return impl, SAT, f"all {counts['records']} time stamps are UTC with microsecond precision", counts, \
        ctx.samples("connect", limit=2)


def _signed(ctx: Context) -> tuple[bool, str]:
    v = ctx.verification
    last_cp = v.get("last_checkpoint_seq")
    first = ctx.col.first_seq
    if first is None or last_cp is None or last_cp < first:
        return False, "no signed checkpoint covers any record of the period"
    tail = v.get("unsigned_tail")
    if tail and v.get("unsigned_stale"):
        return False, (f"records {tail[0]}..{tail[1]} of the period were never signed (older than the checkpoint "
                       "interval): they could have been altered, forged or cut off without detection")
    if tail:
        return True, f"records {tail[0]}..{tail[1]} are not signed yet (after the last checkpoint)"
    return True, "every record of the period is covered by a signed checkpoint"


def _au_9_3(cfg, ctx: Context) -> Result:
    v = ctx.verification
    impl = [F.store_text(cfg), f"verified with public key {v.get('key_id')} ({v.get('key_source')})",
            "`pgwarden audit verify` and exports checked by tools/verify_audit_export.py detect changed, deleted, "
            "inserted and reordered records"]
    counts = {"records_verified": v.get("records") or 0, "checkpoints_verified": v.get("checkpoints") or 0,
              "problems": len(v.get("problems") or [])}
    if v.get("status") == "no_records":
        return impl, NONE, "no records in the period to verify", counts, []
    if ctx.failed:
        kinds = sorted({p["kind"] for p in v.get("problems") or []})
        return impl, NOT, f"verification failed: {', '.join(kinds)}", counts, []
    ok, why = _signed(ctx)
    return impl, SAT if ok else NOT, f"verified; {why}", counts, []


def _au_10(cfg, ctx: Context) -> Result:
    impl = ["each statement record is tied to its session's connect record: authenticated user or token subject, "
            "issuer and roles", "records are hash-chained and signed (see AU-9(3))"]
    counts = ctx.pick("sessions", "sessions.identity", "sessions.static")
    counts["distinct_subjects"] = len(ctx.col.subjects)
    counts["distinct_static_users"] = len(ctx.col.static_users)
    if ctx.failed:
        return impl, NOT, "verification failed: the attribution of actions cannot be relied on", counts, []
    if not counts["sessions"]:
        return impl, NONE, "no sessions in the period", counts, []
    ok, why = _signed(ctx)
    if not ok:
        return impl, NOT, f"{why}: attribution is not cryptographically bound", counts, []
    reason = f"{counts['sessions.identity']} session(s) bound to an IdP subject, {counts['sessions.static']} to static users"
    if counts["sessions.static"]:
        reason += " (a shared static account weakens attribution to an individual)"
    return impl, SAT, reason + "; " + why, counts, ctx.samples("connect", limit=3)


def _au_11(cfg, ctx: Context) -> Result:
    import time
    from datetime import datetime

    r = cfg.audit.retention
    impl = [F.retention_text(cfg), "exports and backups of the trail are retained by the organisation"]
    counts = {"retention_runs": len(ctx.retention),
              "records_removed": sum(int(x.get("records") or 0) for x in ctx.retention)}
    if r.max_age is None:
        return impl, NOT, "no retention period is configured: the organisation-defined period is not enforced", counts, []
    reason = f"retention period {r.max_age}"
    if ctx.oldest_at:
        try:
            oldest = datetime.fromisoformat(ctx.oldest_at.replace("Z", "+00:00")).timestamp()
        except ValueError:
            oldest = None
        late = (ctx.now or time.time()) - (r.max_age_seconds or 0) - 2 * r.check_every_seconds - 86400
        if oldest is not None and oldest < late:
            return impl, NOT, f"{reason}, but the oldest record ({ctx.oldest_at}) is older than that: retention is " \
                "not being applied", counts, []
        reason += f"; oldest record kept: {ctx.oldest_at}"
    if ctx.retention:
        reason += f"; {counts['retention_runs']} signed retention checkpoint(s) account for removed records"
    return impl, SAT, reason, counts, []


def _au_12(cfg, ctx: Context) -> Result:
    impl = ["records are generated by the gateway on the wire, not by clients; a statement is forwarded only "
            "after its record is durable",
            f"when the store fails: {'statements are refused (fail closed)' if cfg.audit.on_audit_failure == 'refuse' else 'statements are forwarded and records held in memory (allow_and_alert)'}"]
    counts = ctx.pick("audit.started", "audit.stopped", "audit.store_failed", "audit.store_recovered",
                      "audit.store_recovered.dropped")
    counts["records"] = sum(ctx.col.by_type.values())
    if not counts["records"]:
        return impl, NONE, "no records in the period", counts, []
    if counts["audit.store_recovered.dropped"]:
        return impl, NOT, f"{counts['audit.store_recovered.dropped']} record(s) were lost during a store outage", \
            counts, ctx.samples("audit")
    reason = f"{counts['records']} records generated by the gateway"
    if counts["audit.store_failed"]:
        reason += f"; {counts['audit.store_failed']} store outage(s), " + (
            "statements refused meanwhile" if cfg.audit.on_audit_failure == "refuse" else "records held and written on recovery")
    return impl, SAT, reason, counts, ctx.samples("audit")


def _au_14(cfg, ctx: Context) -> Result:
    impl = ["statements with parameters and decisions, and results as the client received them (capped, "
            "with a SHA-256 over all rows); `pgwarden sessions replay` shows a session as a transcript"]
    counts = ctx.pick("sessions", "statements", "result.ok", "result.error", "result.denied")
    if not cfg.audit.results.enabled:
        return impl, NOT, "audit.results.enabled is false: what came back to the client is not captured", counts, []
    if not counts["sessions"] and not counts["statements"]:
        return impl, NONE, "no sessions in the period", counts, []
    return impl, SAT, f"{counts['sessions']} session(s) with {counts['statements']} statement(s) recorded for replay", \
        counts, ctx.samples("allow", limit=3)


def _ac_2(cfg, ctx: Context) -> Result:
    impl = F.issuers(cfg) or ["no identity provider is trusted"]
    if cfg.users:
        impl.append(f"static (break-glass) users in the config: {', '.join(u.name for u in cfg.users)}")
    if cfg.role_bindings:
        impl.append(f"{len(cfg.role_bindings)} role binding(s) grant roles from token claims (no match, no access)")
    if F.control_plane(cfg):
        impl.append("API keys (`pgwarden keys`) and revocation (`pgwarden revoke`) are available")
    counts = ctx.pick("auth.ok", "auth.refused", "auth.refused.revoked", "sessions.identity", "sessions.static")
    counts["distinct_subjects"] = len(ctx.col.subjects)
    counts["distinct_static_users"] = len(ctx.col.static_users)
    if not counts["auth.ok"] and not counts["auth.refused"]:
        return impl, NONE, "no logins in the period", counts, []
    reason = f"accounts used: {counts['distinct_subjects']} IdP subject(s), {counts['distinct_static_users']} static user(s)"
    if counts["sessions.static"]:
        reason += f"; static accounts used in {counts['sessions.static']} session(s): their lifecycle is the config's"
    return impl, SAT, reason, counts, ctx.samples("auth_ok", "auth_refused")


def _ac_3(cfg, ctx: Context) -> Result:
    impl = [f"targets: {', '.join(cfg.targets)}; an identity reaches only targets its roles grant"]
    impl += F.roles_text(cfg) + F.guardrails_text(cfg)[:3]
    if cfg.masking.active:
        impl.append(f"{len(cfg.masking.rules)} masking rule(s) decide what each role may read")
    counts = ctx.pick("statements", "statements.allow", "statements.deny", "auth.refused.not_granted",
                      prefix="deny.")
    counts.update(ctx.pick(prefix="statements.kind."))
    if not cfg.guardrails.enabled and not cfg.roles and not cfg.masking.active:
        return impl, NOT, "no guardrails, roles or masking: clients get the target login's full privileges", counts, []
    if not counts["statements"]:
        return impl, NONE, "no statements in the period", counts, []
    return impl, SAT, f"{counts['statements']} statement(s) checked before forwarding; {counts['statements.deny']} refused", \
        counts, ctx.samples("deny_guardrails", "deny_identity", "deny_masking")


def _ac_4(cfg, ctx: Context) -> Result:
    impl = F.masking_text(cfg) or ["no masking rules: result values leave in clear"]
    packs = _packs(cfg)
    if "dangerous" in packs:
        impl.append("the dangerous pack refuses COPY PROGRAM, server file access and dblink-style exfiltration")
    counts = ctx.pick("statements", "masked.results", "masked.values", "deny.masking", "deny.exfiltration")
    if not cfg.masking.active and "dangerous" not in packs:
        return impl, NOT, "neither masking nor exfiltration guardrails are configured", counts, []
    if not counts["statements"]:
        return impl, NONE, "no statements in the period", counts, []
    if not counts["masked.results"] and not counts["deny.masking"] and not counts["deny.exfiltration"]:
        return impl, NONE, "configured, but nothing was masked or refused as exfiltration in the period", counts, []
    reason = f"{counts['masked.results']} result(s) masked ({counts['masked.values']} values), " \
             f"{counts['deny.masking']} statement(s) refused by masking, {counts['deny.exfiltration']} by exfiltration rules"
    if not cfg.masking.active:
        reason += "; no masking rules (only exfiltration guardrails)"
    return impl, SAT, reason, counts, ctx.samples("masked", "deny_masking")


def _packs(cfg) -> set[str]:
    if not cfg.guardrails.enabled:
        return set()
    packs = set(cfg.guardrails.packs)
    for role in cfg.roles.values():
        if role.guardrails.packs is not None:
            packs.update(role.guardrails.packs)
    return packs


def _ac_6(cfg, ctx: Context) -> Result:
    impl = ["clients never hold the upstream credential; read roles start their upstream session read-only"]
    impl += F.roles_text(cfg) or ["no roles: every session acts as the target's login"]
    counts = ctx.pick(prefix="sessions.access.")
    if not cfg.roles and not cfg.guardrails.enabled:
        return impl, NOT, "no roles and no guardrails: every client gets the full privileges of the target login", counts, []
    admin = [n for n, r in cfg.roles.items() if r.access == "admin"]
    reason = f"{len(cfg.roles)} role(s) with scoped access" if cfg.roles else "static users only, limited by guardrail packs"
    if admin:
        reason += f"; admin access: {', '.join(admin)}"
    return impl, SAT, reason, counts, []


def _ac_6_9(cfg, ctx: Context) -> Result:
    impl = ["every statement is logged before it runs, privileged ones included (DDL, GRANT/REVOKE, admin sessions)"]
    impl += F.approvals_text(cfg)
    counts = ctx.pick("privileged", "privileged.allow", "privileged.deny", "approval.requested", "approval.executed",
                      "sessions.access.admin")
    if not ctx.n("statements"):
        return impl, NONE, "no statements in the period", counts, []
    return impl, SAT, f"{counts['privileged']} privileged statement(s) logged ({counts['privileged.deny']} refused), " \
        f"{counts['approval.requested']} approval request(s)", counts, ctx.samples("privileged", "approval")


def _ac_12(cfg, ctx: Context) -> Result:
    impl = F.termination_text(cfg) or ["no automatic termination condition configured"]
    counts = ctx.pick(prefix="disconnect.")
    ended = sum(v for k, v in counts.items() if k.split(".", 1)[1] in ("expired", "max_session", "revoked", "killed", "idle"))
    counts["ended_by_gateway"] = ended
    if not F.termination_text(cfg):
        return impl, NOT, "no token expiry, maximum session length or kill/revoke mechanism is configured", counts, []
    if not ended:
        return impl, NONE, "configured, but no session was ended by expiry, limit, revocation or kill in the period", \
            counts, []
    return impl, SAT, f"{ended} session(s) ended by the gateway (expiry, limit, revocation or kill)", counts, \
        ctx.samples("ended")


def _ia_2(cfg, ctx: Context) -> Result:
    impl = ["static users authenticate with SCRAM-SHA-256; identities with an OIDC access token or API key as the password"]
    impl += F.issuers(cfg)
    impl.append(f"repeated failures from one address are slowed after {cfg.listen.login_throttle.after}")
    counts = ctx.pick("auth.ok", "auth.refused", prefix="auth.")
    if not counts["auth.ok"] and not counts["auth.refused"]:
        return impl, NONE, "no authentication attempts in the period", counts, []
    return impl, SAT, f"{counts['auth.ok']} login(s) succeeded and {counts['auth.refused']} were refused; every " \
        "session was authenticated first", counts, ctx.samples("auth_ok", "auth_refused")


def _ia_9(cfg, ctx: Context) -> Result:
    ups = F.upstreams(cfg)
    impl = [f"target {n}: sslmode {m}" + (" (on this host)" if local else "") for n, m, local in ups]
    impl += [f"issuer keys fetched over HTTPS: {i.issuer}" for i in cfg.identity.issuers]
    weak = [n for n, m, local in ups if m != "verify-full" and not local]
    counts = {"targets": len(ups), "targets_verify_full": sum(1 for _n, m, _l in ups if m == "verify-full")}
    if weak:
        return impl, NOT, f"the database server is not authenticated (sslmode not verify-full) for: {', '.join(weak)}", counts, []
    if all(local for _n, _m, local in ups):
        return impl, SAT, "every target is on this host (Unix socket or loopback): no network hop to a server " \
            "that would need authenticating", counts, []
    return impl, SAT, "every remote database is authenticated by its certificate (verify-full)", counts, []


def _si_4(cfg, ctx: Context) -> Result:
    sinks, alerts = F.audit_sinks(cfg), F.alert_sinks(cfg)
    rules = [r.name for r in cfg.guardrails.rules if r.alert or r.action == "alert"]
    impl = [f"alerts sent to: {', '.join(alerts)}" if alerts else "no alert sink configured",
            f"records streamed to: {', '.join(sinks)}" if sinks else "no SIEM sink configured"]
    if rules:
        impl.append(f"guardrail rules that raise alerts: {', '.join(rules)}")
    counts = ctx.pick("alerts", "alerts.events", "statements.alerted", "auth.refused", "statements.deny",
                      prefix="alerts.kind.")
    if not sinks and not alerts:
        return impl, NOT, "no alert or SIEM sink: indicators are recorded but nobody is told", counts, []
    if not sum(ctx.col.by_type.values()):
        return impl, NONE, "no records in the period", counts, []
    return impl, SAT, f"monitored: {counts['alerts']} alert(s), {counts['auth.refused']} refused login(s), " \
        f"{counts['statements.deny']} refused statement(s) in the period", counts, ctx.samples("alert")


def _si_10(cfg, ctx: Context) -> Result:
    impl = F.guardrails_text(cfg) + ["startup parameters outside an allow-list are refused; fast-path calls refused",
                                     f"statements longer than {cfg.guardrails.max_statement_length} bytes are refused"]
    counts = ctx.pick("statements", "statements.deny", "deny.guardrails", "deny.identity", "deny.unparsable")
    if not cfg.guardrails.enabled:
        return impl, NOT, "guardrails are disabled: statements are not validated", counts, []
    if not counts["statements"]:
        return impl, NONE, "no statements in the period", counts, []
    return impl, SAT, f"{counts['statements']} statement(s) parsed and checked; {counts['deny.guardrails']} refused by " \
        "guardrails", counts, ctx.samples("deny_guardrails", "deny_identity")


def _sc_8(cfg, ctx: Context) -> Result:
    ups = F.upstreams(cfg)
    impl = [F.tls_client(cfg)] + [f"upstream {n}: sslmode {m}" + (" (on this host)" if local else "")
                                  for n, m, local in ups]
    counts = ctx.pick("sessions", "tls.sessions", "tls.plaintext", "tls.plaintext_remote", "tls.plaintext_loopback",
                      prefix="tls.version.")
    bare = [n for n, m, local in ups if m == "disable" and not local]
    if bare:
        return impl, NOT, f"traffic to {', '.join(bare)} is not encrypted (sslmode disable)", counts, []
    if counts["tls.plaintext"]:
        return impl, NOT, f"{counts['tls.plaintext']} session(s) connected without TLS ({counts['tls.plaintext_loopback']} " \
            "from loopback)", counts, ctx.samples("plaintext")
    tls = cfg.listen.tls
    if tls.mode == "disable":
        return impl, NOT, "listen.tls.mode is disable: clients cannot use TLS", counts, []
    if not counts["sessions"]:
        if tls.mode == "require" and not cfg.listen.allow_plaintext_loopback:
            return impl, SAT, "TLS is required of every client; no sessions in the period", counts, []
        return impl, NONE, "no sessions in the period (TLS is offered, not required)", counts, []
    return impl, SAT, f"all {counts['sessions']} session(s) used TLS", counts, ctx.samples("tls", limit=3)


def _cm_5(cfg, ctx: Context) -> Result:
    impl = F.approvals_text(cfg)
    packs = _packs(cfg)
    if "read-only" in packs:
        impl.append("the read-only pack refuses writes and schema changes")
    if "dangerous" in packs:
        impl.append("the dangerous pack refuses DROP, TRUNCATE, ALTER SYSTEM, role changes and extensions")
    readers = [n for n, r in cfg.roles.items() if r.access == "read"]
    if readers:
        impl.append(f"read-only roles cannot change anything: {', '.join(readers)}")
    impl.append("the gateway's own configuration is a file: its SHA-256 is in this report's system section")
    counts = ctx.pick("privileged", "privileged.allow", "privileged.deny", prefix="approval.")
    guarded = bool(F.review_rules(cfg) and cfg.approvals.enabled) or bool(packs) or bool(readers)
    if not guarded:
        return impl, NOT, "nothing restricts schema or permission changes through the gateway", counts, []
    changes = counts["privileged"] + counts.get("approval.requested", 0)
    if not changes:
        return impl, NONE, "restrictions are configured; no change was attempted in the period", counts, []
    return impl, SAT, f"{counts['privileged']} change statement(s) ({counts['privileged.deny']} refused) and " \
        f"{counts.get('approval.requested', 0)} approval request(s), all recorded", counts, \
        ctx.samples("approval", "held", "privileged")


RULES: dict[str, Callable[[Any, Context], Result]] = {
    "AU-2": _au_2, "AU-3": _au_3, "AU-6": _au_6, "AU-8": _au_8, "AU-9(3)": _au_9_3, "AU-10": _au_10,
    "AU-11": _au_11, "AU-12": _au_12, "AU-14": _au_14, "AC-2": _ac_2, "AC-3": _ac_3, "AC-4": _ac_4,
    "AC-6": _ac_6, "AC-6(9)": _ac_6_9, "AC-12": _ac_12, "IA-2": _ia_2, "IA-9": _ia_9, "SI-4": _si_4,
    "SI-10": _si_10, "SC-8": _sc_8, "CM-5": _cm_5,
}


def _one(control: Control, cfg: Any, ctx: Context) -> dict[str, Any]:
    impl, status, reason, counts, samples = RULES[control.label](cfg, ctx)
    if control.trail and ctx.unreliable and status == SAT:
        status = NOT
        why = ("verification failed" if ctx.failed else "no signed checkpoint covers the period's records"
               if ctx.verification.get("status") == "unsigned" else "records of the period were never signed")
        reason = f"{why} for the period, so these records cannot be relied on ({reason})"
    return {"id": control.id, "label": control.label, "title": control.title, "family": control.family,
            "requirement": control.requirement, "implementation": impl, "status": status, "reason": reason,
            "counts": counts, "samples": samples, "trail": control.trail,
            "evidence": "audit trail and configuration" if control.trail else "configuration"}


def evaluate(cfg: Any, ctx: Context) -> list[dict[str, Any]]:
    """Every control of the catalog, in catalog order."""
    return [_one(c, cfg, ctx) for c in CONTROLS]
