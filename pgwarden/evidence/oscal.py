"""The evidence report as an OSCAL 1.1.2 *assessment-results* document.

Why OSCAL: GRC tools (and FedRAMP's automation) ingest OSCAL, not our JSON, so
``pgwarden evidence --format oscal`` lets an assessor load pgwarden's findings
next to everything else. :func:`to_oscal` is a pure function of the
``pgwarden-evidence/1`` report, so it is tested without a store or gateway, and
the same report always gives the same document.

How the report maps (tests/test_evidence_oscal.py validates every case against
NIST's published JSON schema, vendored in tests/data/oscal/):

* one ``result`` whose ``start``/``end`` are the report's period and whose
  ``reviewed-controls`` include every control of the report;
* per control, one observation (what the trail shows: counts, bounded samples
  as ``relevant-evidence``) and one finding whose target is the control's
  objective (``<id>_obj``, NIST's rev. 5 catalog naming) with
  ``satisfied`` -> satisfied/pass, ``not_satisfied`` -> not-satisfied/fail,
  ``no_events`` (or anything unknown: never claim more than we know) ->
  not-satisfied/other;
* the trail's verification is an observation of its own, related to every
  finding that rests on the trail (a control's ``trail`` key if the report has
  one, else catalog.py's flag); when it failed it is also an open risk that
  those findings name, and a ``verification-status`` prop on the metadata and
  the result, so no consumer can miss it.

Choices an assessor may ask about:

* ``import-ap`` is required, but pgwarden has no separate assessment plan: its
  plan is the fixed control catalog of the report. So ``href`` is ``#<uuid>`` of
  a back-matter resource that says so (the OSCAL convention for an internal
  reference), instead of a URL that resolves to nothing.
* Observation methods are NIST's defined values: ``EXAMINE`` for the analysis
  of audit records, ``TEST`` for the cryptographic verification of the chain.
  That the collection was automated is said by the ``tool`` origin.
* UUIDs are version 5, derived from the period and ``generated_at``, so a
  report regenerated for the same run gives a byte-identical document.
* Audit text (statement summaries, sessions, store paths) is attacker-
  influenced. OSCAL prose fields are Markdown, so everything taken from the
  report except the static catalog's label, title and requirement is flattened
  to one line and its Markdown/HTML punctuation backslash-escaped: a
  ``<script>`` or ``[link](…)`` in a query renders as text in any OSCAL viewer.
  Prop values are plain strings and get flattening only.
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime, timezone
from typing import Any

from .catalog import CONTROLS
from .collect import visible

__all__ = ["OSCAL_VERSION", "NS", "to_oscal"]

#: The OSCAL release whose schema the output is validated against.
OSCAL_VERSION = "1.1.2"
#: Namespace of pgwarden's own props (OSCAL requires a URI; a URN claims no domain).
NS = "urn:pgwarden:oscal"

_ROOT = uuid.uuid5(uuid.NAMESPACE_URL, "urn:pgwarden:evidence:oscal")
_CONTROL_ID = re.compile(r"^[a-z]{2}-\d+(\.\d+)?$")
_CONFIG_IDS = {c.id for c in CONTROLS if not c.trail}
_STATES = {"satisfied": ("satisfied", "pass"), "not_satisfied": ("not-satisfied", "fail")}
# CommonMark inline syntax plus OSCAL's "{{ insert: ... }}" parameter syntax.
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]<>&|~!#])")
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_MAX_TEXT = 400


def _line(value: Any, limit: int = _MAX_TEXT) -> str:
    """One line, no control characters, bounded: what a prop value or a quoted
    fragment of audit text may be (OSCAL's StringDatatype is ``^\\S(.*\\S)?$``)."""
    text = " ".join(visible(_CONTROL_CHARS.sub(" ", str(value))).split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _md(value: Any, limit: int = _MAX_TEXT) -> str:
    """Untrusted text made inert inside OSCAL Markdown prose."""
    return _MD_SPECIAL.sub(r"\\\1", _line(value, limit))


def _token(value: Any) -> str:
    """An OSCAL token (used as a prop ``class``) from an arbitrary key."""
    text = re.sub(r"[^A-Za-z0-9._-]+", "-", str(value)).strip("-") or "unnamed"
    return text if re.match(r"[A-Za-z_]", text) else f"_{text}"


def _ts(value: Any) -> str:
    """OSCAL date-time: UTC, seconds, ``Z``. Naive input is taken as UTC.

    Raises ValueError on anything unparseable: a document whose times are
    guessed is worse than no document.
    """
    dt = datetime.fromisoformat(str(value).strip())
    dt = dt.replace(tzinfo=timezone.utc) if dt.tzinfo is None else dt.astimezone(timezone.utc)
    fmt = "%Y-%m-%dT%H:%M:%S.%fZ" if dt.microsecond else "%Y-%m-%dT%H:%M:%SZ"
    return dt.strftime(fmt)


def _prop(name: str, value: Any, cls: str | None = None) -> dict | None:
    text = _line(value) if value is not None else ""
    if not text:
        return None
    prop = {"name": name, "ns": NS, "value": text}
    if cls:
        prop["class"] = _token(cls)
    return prop


def _props(*items: dict | None) -> dict:
    """``{"props": [...]}`` without the Nones, or ``{}`` (OSCAL arrays are minItems 1)."""
    kept = [p for p in items if p]
    return {"props": kept} if kept else {}


def _bullets(lines: list[str]) -> str:
    return "\n".join(f"- {line}" for line in lines)


class _Ids:
    """Deterministic v5 UUIDs, one per named object of one report."""

    def __init__(self, seed: str):
        self._base = uuid.uuid5(_ROOT, seed)

    def __call__(self, name: str) -> str:
        return str(uuid.uuid5(self._base, name))


def _control_id(control: dict) -> str:
    cid = str(control.get("id", "")).strip().lower()
    if not _CONTROL_ID.match(cid):
        raise ValueError(f"control id {control.get('id')!r} is not an OSCAL control id like 'au-9.3'")
    return cid


def _rests_on_trail(control: dict, cid: str) -> bool:
    """Does the control's status rest on records (so a bad trail undermines it)?"""
    if "trail" in control:
        return bool(control["trail"])
    return cid not in _CONFIG_IDS


def _status(control: dict) -> dict:
    """The finding's objective status; only an explicit "satisfied" is satisfied."""
    raw = control.get("status")
    reason = _md(control.get("reason") or "")
    if raw in _STATES:
        state, why = _STATES[raw]
        out = {"state": state, "reason": why}
        if reason:
            out["remarks"] = reason
        return out
    remark = "no events in the period" if raw == "no_events" else f"unrecognised status '{_md(raw)}'"
    return {"state": "not-satisfied", "reason": "other", "remarks": f"{remark}. {reason}".strip()}


def _verification(report: dict, ids: _Ids, actors: list, subjects: list) -> tuple[dict, dict | None]:
    """The chain verification as an observation, and as a risk when it failed."""
    ver = report.get("verification") or {}
    status = str(ver.get("status") or "unknown")
    problems = ver.get("problems") or []
    warnings = ver.get("warnings") or []
    span = (
        f"seq {ver.get('first_seq')} to {ver.get('last_seq')}"
        if ver.get("first_seq") is not None
        else "no sequence numbers"
    )
    headline = {
        "verified": "The audit trail verified: every record chains to the next and every checkpoint "
        "signature is valid.",
        "failed": "**The audit trail FAILED verification.** Records in the period may have been altered, "
        "removed or inserted; findings that rest on the trail cannot be relied on.",
        "no_records": "The audit trail holds no records in the period, so there was nothing to verify.",
        "unsigned": "**No signed checkpoint covers the period's records.** They chain consistently, but anyone "
        "who can write the store could have rewritten them; findings that rest on the trail cannot be relied on.",
    }.get(status, f"Verification status '{_md(status)}' is not one pgwarden defines; treat the trail as unverified.")
    detail = [
        f"Records checked: {int(ver.get('records') or 0)} ({span}); signed checkpoints: "
        f"{int(ver.get('checkpoints') or 0)}.",
        f"Signing key: {_md(ver.get('key_id') or 'none')}.",
    ]
    detail += [f"Problem {_md(p.get('kind'))} at {_problem_span(p)}: {_md(p.get('detail', ''))}" for p in problems]
    detail += [f"Warning: {_md(w)}" for w in warnings]
    evidence = [
        {"description": f"{_md(p.get('kind'))} at {_problem_span(p)}: {_md(p.get('detail', ''))}",
         **_props(_prop("problem-kind", p.get("kind")), _prop("first-seq", p.get("seq")),
                  _prop("last-seq", p.get("end")))}
        for p in problems
    ] or [{"description": f"Chain and signature verification over {span}; no problems found."}]
    observation = {
        "uuid": ids("observation/verification"),
        "title": "Audit trail integrity verification",
        "description": f"{headline}\n\n{_bullets(detail)}",
        **_props(
            _prop("verification-status", status),
            _prop("records", ver.get("records")),
            _prop("checkpoints", ver.get("checkpoints")),
            _prop("first-seq", ver.get("first_seq")),
            _prop("last-seq", ver.get("last_seq")),
            _prop("key-id", ver.get("key_id")),
        ),
        "methods": ["TEST"],
        "types": ["finding"],
        "origins": [{"actors": actors}],
        "subjects": subjects,
        "relevant-evidence": evidence,
        "collected": _ts(report["generated_at"]),
    }
    if status == "verified" or status == "no_records":
        return observation, None
    risk = {
        "uuid": ids("risk/verification"),
        "title": "Audit trail integrity not established",
        "description": headline,
        "statement": "Evidence for the trail-based controls is drawn from records whose integrity could not be "
        f"verified ({len(problems)} problem(s)). Until the cause is found and the trail re-verified, those "
        "controls' findings must not be relied on. Run `pgwarden audit verify` for the full list.",
        **_props(_prop("verification-status", status)),
        "status": "open",
        "origins": [{"actors": actors}],
        "related-observations": [{"observation-uuid": observation["uuid"]}],
    }
    return observation, risk


def _problem_span(problem: dict) -> str:
    seq, end = problem.get("seq"), problem.get("end")
    if seq is None:
        return "an unknown position"
    return f"seq {seq}" if end in (None, seq) else f"seq {seq}-{end}"


def _control_pair(control: dict, cid: str, ids: _Ids, ctx: dict) -> tuple[dict, dict]:
    """One control as (observation, finding)."""
    label = _line(control.get("label") or cid.upper())
    title = _line(control.get("title") or "")
    name = f"{label} {title}".strip()
    counts = control.get("counts") or {}
    samples = control.get("samples") or []
    reason = _md(control.get("reason") or "")
    on_trail = _rests_on_trail(control, cid)
    source = "audit trail" if on_trail else "running configuration and audit trail"
    count_lines = [f"{_md(k)}: {int(v)}" for k, v in counts.items()] or ["no counters for this control"]
    evidence = [
        {
            "description": f"Audit record seq {_md(s.get('seq'))} at {_md(s.get('at'))}, type "
            f"{_md(s.get('type'))}, session {_md(s.get('session') or 'none')}: {_md(s.get('summary', ''))}",
            **_props(
                _prop("audit-seq", s.get("seq")),
                _prop("record-type", s.get("type")),
                _prop("recorded-at", s.get("at")),
                _prop("session", s.get("session")),
            ),
        }
        for s in samples
    ] or [{"description": "No sample records: " + ("see the counts above." if counts else "none in the period.")}]
    observation = {
        "uuid": ids(f"observation/{cid}"),
        "title": f"{name}: what the {source} shows",
        "description": f"Automated analysis of the {source} for {ctx['period_text']}.\n\n"
        f"{_bullets(count_lines)}\n\n{reason}".rstrip(),
        **_props(*(_prop("event-count", int(v), cls=k) for k, v in counts.items())),
        "methods": ["EXAMINE"],
        "types": ["control-objective"],
        "origins": [{"actors": ctx["actors"]}],
        "subjects": ctx["subjects"],
        "relevant-evidence": evidence,
        "collected": ctx["collected"],
    }
    related = [{"observation-uuid": observation["uuid"]}]
    if on_trail:
        related.append({"observation-uuid": ctx["verification_uuid"]})
    implementation = [_md(x) for x in control.get("implementation") or [] if _line(x)]
    description = str(control.get("requirement") or "").strip() or name
    if implementation:
        description += "\n\nHow pgwarden implements it:\n\n" + _bullets(implementation)
    finding = {
        "uuid": ids(f"finding/{cid}"),
        "title": name,
        "description": description,
        **_props(
            _prop("pgwarden-status", control.get("status")),
            _prop("evidence-basis", "audit-trail" if on_trail else "configuration"),
        ),
        "origins": [{"actors": ctx["actors"]}],
        "target": {
            "type": "objective-id",
            "target-id": f"{cid}_obj",
            "description": reason or description,
            "status": _status(control),
        },
        "related-observations": related,
    }
    if on_trail and ctx["risk_uuid"]:
        finding["related-risks"] = [{"risk-uuid": ctx["risk_uuid"]}]
    return observation, finding


def to_oscal(report: dict) -> dict:
    """Convert a ``pgwarden-evidence/1`` report into an OSCAL assessment-results document.

    Raises ValueError for input no valid document can come from (unparseable
    times, malformed or duplicate control ids) rather than emit a wrong one.
    """
    generated = _ts(report["generated_at"])
    period = report.get("period") or {}
    start = _ts(period.get("from") or report["generated_at"])
    end = _ts(period.get("to") or report["generated_at"])
    ids = _Ids(f"{report.get('format')}|{start}|{end}|{generated}")
    generator = report.get("generator") or {}
    tool_name = f"{_line(generator.get('name') or 'pgwarden')} {_line(generator.get('version') or '')}".strip()
    system = report.get("system") or {}
    store = system.get("store") or {}
    ver_status = str((report.get("verification") or {}).get("status") or "unknown")
    sys_name = _md(system.get("name")) or "pgwarden"

    tool_uuid, component_uuid, plan_uuid = ids("component/tool"), ids("component/system"), ids("resource/plan")
    actors = [{"type": "tool", "actor-uuid": tool_uuid}]
    subjects = [{"subject-uuid": component_uuid, "type": "component"}]
    ver_obs, risk = _verification(report, ids, actors, subjects)
    ctx = {
        "period_text": f"{start} to {end}",
        "actors": actors,
        "subjects": subjects,
        "collected": generated,
        "verification_uuid": ver_obs["uuid"],
        "risk_uuid": risk["uuid"] if risk else None,
    }

    observations, findings, order = [ver_obs], [], []
    for control in report.get("controls") or []:
        cid = _control_id(control)
        if cid in order:
            raise ValueError(f"control {cid} appears twice in the report")
        order.append(cid)
        obs, finding = _control_pair(control, cid, ids, ctx)
        observations.append(obs)
        findings.append(finding)

    totals = report.get("totals") or {}
    statements = totals.get("statements") or {}
    selection: dict[str, Any] = {"description": "The NIST SP 800-53 rev. 5 controls pgwarden produces evidence for."}
    if order:  # in report order, the auditor's reading order
        selection["include-controls"] = [{"control-id": cid} for cid in order]
    system_lines = [
        f"Gateways: {_md(', '.join(map(str, system.get('gateway_ids') or [])) or 'none recorded')}",
        f"Targets: {_md(', '.join(map(str, system.get('targets') or [])) or 'none configured')}",
        f"Audit store: {_md(store.get('backend') or 'unknown')} at {_md(store.get('location') or 'unknown')}",
        f"Audit records in the period: {int(totals.get('records') or 0)}; sessions: {int(totals.get('sessions') or 0)}",
        "Statements: " + ", ".join(f"{k} {int(statements.get(k) or 0)}" for k in ("allow", "deny", "rewrite", "held")),
        f"Trail verification: {_md(ver_status)}",
    ]
    result = {
        "uuid": ids("result"),
        "title": f"pgwarden audit-trail evidence, {start} to {end}",
        "description": "Automated evidence from pgwarden's tamper-evident audit trail for the period.\n\n"
        + _bullets(system_lines),
        "start": start,
        "end": end,
        **_props(
            _prop("verification-status", ver_status),
            _prop("audit-records", totals.get("records")),
            _prop("sessions", totals.get("sessions")),
            *(_prop("statement-count", statements.get(k), cls=k) for k in ("allow", "deny", "rewrite", "held")),
        ),
        "local-definitions": {
            "components": [{
                "uuid": component_uuid,
                "type": "software",
                "title": f"{sys_name} gateway",
                "description": "The pgwarden PostgreSQL gateway(s) and the audit trail they write.",
                **_props(
                    *(_prop("gateway-id", g) for g in system.get("gateway_ids") or []),
                    *(_prop("target", t) for t in system.get("targets") or []),
                    _prop("audit-store", store.get("backend")),
                    _prop("public-key-id", system.get("public_key_id")),
                ),
                "status": {"state": "operational"},
            }],
            "assessment-assets": {
                "components": [{
                    "uuid": tool_uuid,
                    "type": "software",
                    "title": tool_name,
                    "description": "pgwarden's evidence generator (`pgwarden evidence`), which reads and "
                    "verifies the audit trail without human intervention.",
                    "status": {"state": "operational"},
                }],
                "assessment-platforms": [{
                    "uuid": ids("platform"),
                    "title": tool_name,
                    "uses-components": [{"component-uuid": tool_uuid}],
                }],
            },
        },
        "reviewed-controls": {"control-selections": [selection]},
        "observations": observations,
        **({"risks": [risk]} if risk else {}),
        **({"findings": findings} if findings else {}),
        "remarks": "Per-day statement counts are in the HTML and JSON renderings of the same report.",
    }
    return {
        "assessment-results": {
            "uuid": ids("assessment-results"),
            "metadata": {
                "title": f"pgwarden NIST SP 800-53 evidence: {sys_name}, {start} to {end}",
                "published": generated,
                "last-modified": generated,
                "version": generated,
                "oscal-version": OSCAL_VERSION,
                **_props(
                    _prop("generator", tool_name),
                    _prop("source-format", report.get("format")),
                    _prop("verification-status", ver_status),
                ),
                "remarks": f"Generated automatically by {tool_name} from its tamper-evident audit trail. "
                "Statuses are pgwarden's automated judgement of the evidence, not an assessor's.",
            },
            "import-ap": {
                "href": f"#{plan_uuid}",
                "remarks": "pgwarden has no separate assessment plan; the reference is to a back-matter "
                "resource describing the built-in plan.",
            },
            "results": [result],
            "back-matter": {"resources": [{
                "uuid": plan_uuid,
                "title": "pgwarden built-in assessment plan",
                "description": "The plan is fixed by pgwarden: every control in reviewed-controls is judged "
                "automatically from the audit trail records of the period (or, for configuration-based controls, "
                "from the configuration at report time), after the trail's hash chain and signed checkpoints are verified.",
                **_props(_prop("source-format", report.get("format"))),
            }]},
        }
    }

