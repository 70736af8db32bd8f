"""OSCAL assessment-results output of the evidence report (pgwarden/evidence/oscal.py).

Every document is validated against NIST's published schema (vendored, see
tests/data/oscal/README.md), and the mapping itself is asserted: a document can
be schema-valid and still claim the wrong thing. The reports are written by
hand, to the ``pgwarden-evidence/1`` contract, so these tests pin the contract
from the consumer's side independently of the code that produces it.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from oscal_schema import SCHEMA_PATH, OscalInvalid, oscal_errors, validate_oscal
from pgwarden.evidence.oscal import NS, OSCAL_VERSION, to_oscal

# (id, label, title, status, rests on the trail)
CONTROLS = [
    ("au-2", "AU-2", "Event Logging", "satisfied", True),
    ("au-3", "AU-3", "Content of Audit Records", "satisfied", True),
    ("au-6", "AU-6", "Audit Record Review, Analysis, and Reporting", "not_satisfied", True),
    ("au-8", "AU-8", "Time Stamps", "satisfied", True),
    ("au-9.3", "AU-9(3)", "Protection of Audit Information | Cryptographic Protection", "satisfied", True),
    ("au-10", "AU-10", "Non-repudiation", "satisfied", True),
    ("au-11", "AU-11", "Audit Record Retention", "not_satisfied", False),
    ("au-12", "AU-12", "Audit Record Generation", "satisfied", True),
    ("au-14", "AU-14", "Session Audit", "no_events", True),
    ("ac-2", "AC-2", "Account Management", "satisfied", True),
    ("ac-3", "AC-3", "Access Enforcement", "satisfied", True),
    ("ac-4", "AC-4", "Information Flow Enforcement", "no_events", True),
    ("ac-6", "AC-6", "Least Privilege", "satisfied", False),
    ("ac-6.9", "AC-6(9)", "Least Privilege | Log Use of Privileged Functions", "satisfied", True),
    ("ac-12", "AC-12", "Session Termination", "no_events", True),
    ("ia-2", "IA-2", "Identification and Authentication (Organizational Users)", "satisfied", True),
    ("ia-9", "IA-9", "Service Identification and Authentication", "satisfied", False),
    ("si-4", "SI-4", "System Monitoring", "not_satisfied", True),
    ("si-10", "SI-10", "Information Input Validation", "satisfied", True),
    ("sc-8", "SC-8", "Transmission Confidentiality and Integrity", "satisfied", True),
    ("cm-5", "CM-5", "Access Restrictions for Change", "satisfied", True),
]
IDS = [c[0] for c in CONTROLS]
CONFIG_BASED = {c[0] for c in CONTROLS if not c[4]}

HOSTILE = [
    "SELECT '<script>alert(\"x\")</script>' FROM users WHERE name = 'O''Brien'",
    'DELETE FROM t -- "quoted" `tick` [click](javascript:alert(1)) ![img](http://x/y.png)',
    "INSERT INTO notes VALUES ('Zoë ☃ 日本語 \U0001f600 {{ insert: param, ac-2_prm_1 }}')",
    "line one\n# not a heading\r\n<img src=x onerror=alert(1)>\x00\u2028tail   ",
    "backslash \\<script> and |table|, *bold*, _it_, ~~s~~, &amp;",
    "x" * 5000,
]


def _samples(cid: str, n: int, start_seq: int = 100) -> list[dict]:
    return [
        {
            "seq": start_seq + i,
            "at": f"2026-05-01T0{i % 10}:15:30.250000Z",
            "type": ["statement", "auth", "result", "approval"][i % 4],
            "session": None if i == 2 else f"s-{cid}-{i} <b>\"alice\"</b>",
            "summary": HOSTILE[i % len(HOSTILE)],
        }
        for i in range(n)
    ]


def make_report(verification: str = "verified") -> dict:
    """A realistic one-week report: mixed statuses, samples full of hostile text."""
    problems = []
    if verification == "failed":
        problems = [
            {"kind": "changed", "seq": 4711, "end": None, "detail": "hash(4711) != SHA-256(hash(4710) || body(4711))"},
            {"kind": "deleted", "seq": 5000, "end": 5009, "detail": "rows missing from the sequence <script>"},
        ]
    controls = []
    for n, (cid, label, title, status, trail) in enumerate(CONTROLS):
        counts = {} if status == "no_events" else {"statements": 1200 + n, "deny": n, "odd key/with spaces": 3}
        controls.append({
            "id": cid, "label": label, "title": title, "family": label.split("-")[0],
            "requirement": f"What {label} requires (paraphrase).",
            "implementation": [f"pgwarden does X for {label}", "config `audit.sinks` = [\"file\"]"],
            "status": status,
            "reason": {"satisfied": f"{n} events show the control working",
                       "not_satisfied": "no review of <denied> statements by a reviewer",
                       "no_events": "nothing of this kind happened"}[status],
            "counts": counts,
            "samples": [] if status == "no_events" else _samples(cid, 1 + n % 6),
        })
    return {
        "format": "pgwarden-evidence/1",
        "generated_at": "2026-05-08T09:30:00Z",
        "generator": {"name": "pgwarden", "version": "0.1.0"},
        "period": {"from": "2026-05-01T00:00:00Z", "to": "2026-05-08T00:00:00Z"},
        "system": {
            "name": "pgwarden", "gateway_ids": ["gw-eu-1", "gw_eu_2"], "targets": ["prod", "reporting <db>"],
            "store": {"backend": "postgresql", "location": "postgresql://audit@db.internal:5432/audit"},
            "public_key_id": "ed25519:4f2a9c", "config_path": "/etc/pgwarden/pgwarden.yaml",
        },
        "verification": {
            "status": verification, "first_seq": 1, "last_seq": 9876, "records": 9876, "checkpoints": 98,
            "problems": problems, "key_id": "ed25519:4f2a9c",
            "warnings": ["37 records after the last checkpoint are not signed yet"],
        },
        "totals": {"records": 9876, "by_type": {"statement": 8000, "auth": 1876}, "sessions": 311,
                   "statements": {"allow": 7800, "deny": 150, "rewrite": 40, "held": 10}},
        "daily": [{"date": f"2026-05-0{d}", "allow": 1100, "deny": 20, "rewrite": 5, "held": 1} for d in range(1, 8)],
        "controls": controls,
        "extra-key-from-a-later-version": {"ignored": True},
    }


def empty_report() -> dict:
    """An empty period: no records at all, so nothing verified and every control without events."""
    report = make_report("no_records")
    report["period"] = {"from": "2026-05-08T00:00:00Z", "to": "2026-05-08T00:00:00Z"}
    report["verification"].update(first_seq=None, last_seq=None, records=0, checkpoints=0, key_id=None, warnings=[])
    report["totals"] = {"records": 0, "by_type": {}, "sessions": 0,
                        "statements": {"allow": 0, "deny": 0, "rewrite": 0, "held": 0}}
    report["daily"] = []
    report["system"].update(gateway_ids=[], public_key_id=None)
    for c in report["controls"]:
        c.update(status="no_events", reason="", counts={}, samples=[])
    return report


def _ar(doc: dict) -> dict:
    return doc["assessment-results"]


def _result(doc: dict) -> dict:
    (result,) = _ar(doc)["results"]
    return result


def _findings(doc: dict) -> dict[str, dict]:
    return {f["target"]["target-id"].removesuffix("_obj"): f for f in _result(doc)["findings"]}


def _verification_obs(doc: dict) -> dict:
    (obs,) = [o for o in _result(doc)["observations"] if o["title"] == "Audit trail integrity verification"]
    return obs


def _prop(obj: dict, name: str) -> str | None:
    return next((p["value"] for p in obj.get("props", []) if p["name"] == name and p["ns"] == NS), None)


# ------------------------------------------------------------------ validity


@pytest.mark.parametrize("report", [make_report(), make_report("failed"), empty_report()],
                         ids=["verified", "failed", "empty"])
def test_documents_are_schema_valid(report):
    validate_oscal(to_oscal(report))


def test_vendored_schema_is_the_published_release():
    """The provenance note's digest matches the file, so an edit to the schema cannot pass unnoticed."""
    note = (SCHEMA_PATH.parent / "README.md").read_text()
    digest = re.search(r"SHA-256 `([0-9a-f]{64})`", note).group(1)
    assert hashlib.sha256(SCHEMA_PATH.read_bytes()).hexdigest() == digest
    schema = json.loads(SCHEMA_PATH.read_text())
    assert schema["$id"] == f"http://csrc.nist.gov/ns/oscal/{OSCAL_VERSION}/oscal-ar-schema.json"


def _break(path: list, value=None, delete: bool = False):
    def mutate(doc: dict) -> dict:
        doc = copy.deepcopy(doc)
        node = doc
        for key in path[:-1]:
            node = node[key]
        if delete:
            del node[path[-1]]
        else:
            node[path[-1]] = value
        return doc

    return mutate


AR, RES = "assessment-results", ["assessment-results", "results", 0]
BROKEN = {
    "missing metadata.title": _break([AR, "metadata", "title"], delete=True),
    "missing import-ap": _break([AR, "import-ap"], delete=True),
    "bad uuid": _break([AR, "uuid"], "12345678-1234-1234-1234-123456789abc"),  # version 1 nibble: not 4/5
    "uuid not a uuid": _break(RES + ["uuid"], "not-a-uuid"),
    "date without zone": _break(RES + ["start"], "2026-05-01T00:00:00"),
    "date with space": _break([AR, "metadata", "last-modified"], "2026-05-01 00:00:00Z"),
    "state not in enum": _break(RES + ["findings", 0, "target", "status", "state"], "partially-satisfied"),
    "target type not in enum": _break(RES + ["findings", 0, "target", "type"], "control-id"),
    "control-id not a token": _break(RES + ["reviewed-controls", "control-selections", 0, "include-controls", 0,
                                            "control-id"], "au 2"),
    "prop name starting with a digit": _break([AR, "metadata", "props", 0, "name"], "1generator"),
    "prop value with trailing space": _break([AR, "metadata", "props", 0, "value"], "pgwarden "),
    "unknown property": _break([AR, "metadata", "colour"], "blue"),
    "empty observations array": _break(RES + ["observations"], []),
    "observation without methods": _break(RES + ["observations", 0, "methods"], delete=True),
}


@pytest.mark.parametrize("name", list(BROKEN))
def test_broken_documents_fail_validation(name):
    """The validator is real: each deliberate defect is caught, and by the schema rule it breaks."""
    doc = BROKEN[name](to_oscal(make_report()))
    with pytest.raises(OscalInvalid) as info:
        validate_oscal(doc)
    assert info.value.errors
    assert oscal_errors(to_oscal(make_report())) == []


def test_unicode_classes_are_honoured():
    """Tokens are ``\\p{L}``-based: a non-ASCII letter is valid, punctuation is not. An ASCII
    approximation of the schema's patterns would get the first wrong."""
    doc = to_oscal(make_report())
    _ar(doc)["metadata"]["props"][0]["name"] = "séquence-日本"
    validate_oscal(doc)
    _ar(doc)["metadata"]["props"][0]["name"] = "séquence!"
    with pytest.raises(OscalInvalid, match="does not match"):
        validate_oscal(doc)


# ------------------------------------------------------------------ mapping


def test_metadata_and_period():
    doc = to_oscal(make_report())
    meta = _ar(doc)["metadata"]
    assert meta["title"].startswith("pgwarden NIST SP 800-53 evidence")
    assert meta["last-modified"] == "2026-05-08T09:30:00Z"
    assert meta["oscal-version"] == OSCAL_VERSION == "1.1.2"
    assert _prop(meta, "generator") == "pgwarden 0.1.0"
    assert "pgwarden 0.1.0" in meta["remarks"]
    result = _result(doc)
    assert (result["start"], result["end"]) == ("2026-05-01T00:00:00Z", "2026-05-08T00:00:00Z")


def test_include_controls_are_all_21_in_report_order():
    doc = to_oscal(make_report())
    (selection,) = _result(doc)["reviewed-controls"]["control-selections"]
    assert [c["control-id"] for c in selection["include-controls"]] == IDS
    assert len(IDS) == 21 and "au-9.3" in IDS and "ac-6.9" in IDS


def test_finding_state_per_control():
    findings = _findings(to_oscal(make_report()))
    assert list(findings) == IDS
    for cid, _, _, status, _ in CONTROLS:
        target = findings[cid]["target"]
        assert target["type"] == "objective-id" and target["target-id"] == f"{cid}_obj"
        expected = {"satisfied": ("satisfied", "pass"), "not_satisfied": ("not-satisfied", "fail"),
                    "no_events": ("not-satisfied", "other")}[status]
        assert (target["status"]["state"], target["status"]["reason"]) == expected, cid
        if status == "no_events":
            assert target["status"]["remarks"].startswith("no events in the period")
        assert _prop(findings[cid], "pgwarden-status") == status


def test_one_observation_per_control_with_evidence():
    doc = to_oscal(make_report())
    result = _result(doc)
    observations = {o["uuid"]: o for o in result["observations"]}
    assert len(observations) == len(IDS) + 1  # + the verification
    for cid, finding in _findings(doc).items():
        own = observations[finding["related-observations"][0]["observation-uuid"]]
        assert own["methods"] == ["EXAMINE"] and own["types"] == ["control-objective"]
        assert own["collected"] == "2026-05-08T09:30:00Z"
        assert own["relevant-evidence"] and all(e["description"] for e in own["relevant-evidence"])
    au2 = observations[_findings(doc)["au-2"]["related-observations"][0]["observation-uuid"]]
    assert "statements: 1200" in au2["description"]
    assert {(p["class"], p["value"]) for p in au2["props"] if p["name"] == "event-count"} >= {("statements", "1200")}


def test_verified_trail_is_an_observation_and_no_risk():
    doc = to_oscal(make_report())
    obs = _verification_obs(doc)
    assert obs["methods"] == ["TEST"]
    assert _prop(obs, "verification-status") == "verified"
    assert "risks" not in _result(doc)
    assert _prop(_result(doc), "verification-status") == "verified"
    for cid, finding in _findings(doc).items():
        related = [r["observation-uuid"] for r in finding["related-observations"]]
        assert (obs["uuid"] in related) == (cid not in CONFIG_BASED), cid


def test_failed_verification_is_prominent():
    doc = to_oscal(make_report("failed"))
    obs = _verification_obs(doc)
    assert "FAILED" in obs["description"] and "4711" in obs["description"]
    assert [_prop(e, "problem-kind") for e in obs["relevant-evidence"]] == ["changed", "deleted"]
    assert _prop(_ar(doc)["metadata"], "verification-status") == "failed"
    assert _prop(_result(doc), "verification-status") == "failed"
    (risk,) = _result(doc)["risks"]
    assert risk["status"] == "open"
    assert risk["related-observations"] == [{"observation-uuid": obs["uuid"]}]
    for cid, finding in _findings(doc).items():
        linked = [r["risk-uuid"] for r in finding.get("related-risks", [])]
        assert linked == ([] if cid in CONFIG_BASED else [risk["uuid"]]), cid


def test_empty_period():
    doc = to_oscal(empty_report())
    result = _result(doc)
    assert result["start"] == result["end"] == "2026-05-08T00:00:00Z"
    assert "risks" not in result
    assert _prop(_verification_obs(doc), "verification-status") == "no_records"
    states = {cid: f["target"]["status"] for cid, f in _findings(doc).items()}
    assert all(s == {"state": "not-satisfied", "reason": "other", "remarks": "no events in the period."}
               for s in states.values())


def test_unknown_status_is_never_satisfied():
    report = make_report()
    report["controls"][0]["status"] = "mostly_fine"
    doc = to_oscal(report)
    validate_oscal(doc)
    status = _findings(doc)["au-2"]["target"]["status"]
    assert (status["state"], status["reason"]) == ("not-satisfied", "other")


# ------------------------------------------------------------------ hostile text, identity


def _strings(node, path=()):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _strings(v, path + (k,))
    elif isinstance(node, list):
        for v in node:
            yield from _strings(v, path)
    elif isinstance(node, str):
        yield path, node


MARKUP = {"title", "description", "remarks", "statement"}  # OSCAL markup-line / markup-multiline


def test_hostile_text_is_inert():
    """In Markdown prose every ``<``, ``[``, ``{`` and backtick from audit text is escaped;
    prop values are plain strings (no markup) and are only flattened to one bounded line."""
    doc = to_oscal(make_report())
    validate_oscal(doc)
    markup = [(p, v) for p, v in _strings(doc) if p[-1] in MARKUP]
    for path, value in markup:
        assert not re.search(r"(?<!\\)[<\[{]", value), (path, value)
    joined = "\n".join(v for _, v in markup)
    assert r'\<script\>alert("x")\</script\>' in joined
    assert r"\[click\](javascript:alert(1))" in joined and r"\{\{ insert: param" in joined
    assert "Zoë ☃ 日本語 \U0001f600" in joined and "O''Brien" in joined
    for path, value in _strings(doc):
        if path[-1] in ("title", "value") or path[-2:] == ("relevant-evidence", "description"):
            assert "\n" not in value and "\x00" not in value and "\u2028" not in value, path
        if path[-1] == "value":
            assert len(value) <= 400, path
    assert any(v == 's-au-3-1 <b>"alice"</b>' for p, v in _strings(doc) if p[-1] == "value")
    # "# not a heading" stays inside one evidence line instead of starting a Markdown block
    assert not any(line.lstrip().startswith("#") for _, v in markup for line in v.splitlines())


def test_deterministic_and_unique_identifiers():
    report = make_report("failed")
    doc = to_oscal(report)
    assert doc == to_oscal(copy.deepcopy(report))
    uuids = [v for p, v in _strings(doc) if p[-1] == "uuid"]
    assert len(uuids) == len(set(uuids))
    later = copy.deepcopy(report)
    later["generated_at"] = "2026-05-08T09:31:00Z"
    assert _ar(to_oscal(later))["uuid"] != _ar(doc)["uuid"]


def test_references_resolve_inside_the_document():
    doc = to_oscal(make_report("failed"))
    ar, result = _ar(doc), _result(doc)
    (plan,) = ar["back-matter"]["resources"]
    assert ar["import-ap"]["href"] == f"#{plan['uuid']}"
    observations = {o["uuid"] for o in result["observations"]}
    risks = {r["uuid"] for r in result["risks"]}
    tools = {c["uuid"] for c in result["local-definitions"]["assessment-assets"]["components"]}
    components = {c["uuid"] for c in result["local-definitions"]["components"]}
    for finding in result["findings"]:
        assert {r["observation-uuid"] for r in finding["related-observations"]} <= observations
        assert {r["risk-uuid"] for r in finding.get("related-risks", [])} <= risks
    for obs in result["observations"]:
        assert {a["actor-uuid"] for o in obs["origins"] for a in o["actors"]} <= tools
        assert {s["subject-uuid"] for s in obs["subjects"]} <= components


def test_timestamps_are_normalised_to_utc_z():
    report = make_report()
    report["generated_at"] = "2026-05-08T11:30:00.5+02:00"
    report["period"] = {"from": "2026-05-01T00:00:00+00:00", "to": "2026-05-08T00:00:00"}
    doc = to_oscal(report)
    validate_oscal(doc)
    assert _ar(doc)["metadata"]["last-modified"] == "2026-05-08T09:30:00.500000Z"
    assert (_result(doc)["start"], _result(doc)["end"]) == ("2026-05-01T00:00:00Z", "2026-05-08T00:00:00Z")


@pytest.mark.parametrize("mutate, message", [
    (lambda r: r["controls"][0].update(id="AU-2 (1)"), "not an OSCAL control id"),
    (lambda r: r["controls"][1].update(id="au-2"), "appears twice"),
    (lambda r: r.update(generated_at="last tuesday"), "Invalid isoformat"),
])
def test_input_no_valid_document_can_come_from_is_refused(mutate, message):
    report = make_report()
    mutate(report)
    with pytest.raises(ValueError, match=message):
        to_oscal(report)


def test_no_controls_still_valid():
    report = empty_report()
    report["controls"] = []
    doc = to_oscal(report)
    validate_oscal(doc)
    assert "findings" not in _result(doc)


_any_text = st.text(st.characters(codec="utf-8"), max_size=60)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    summary=_any_text, session=st.none() | _any_text, rtype=_any_text, name=_any_text,
    targets=st.lists(_any_text, max_size=3), keys=st.dictionaries(_any_text, st.integers(0, 10**9), max_size=3),
    reason=_any_text, detail=_any_text, kind=_any_text, status=st.sampled_from(["verified", "failed", "no_records"]),
)
def test_any_audit_text_gives_a_valid_document(summary, session, rtype, name, targets, keys, reason, detail, kind,
                                               status):
    """Whatever a client put into a statement or a name, the document stays schema-valid:
    prop values never end up empty, multi-line or padded, classes stay tokens."""
    report = make_report(status)
    report["controls"] = report["controls"][:3]
    report["system"].update(name=name, targets=targets, gateway_ids=[name])
    report["verification"]["problems"] = [{"kind": kind, "seq": 7, "end": 9, "detail": detail}]
    report["verification"]["warnings"] = [detail]
    for c in report["controls"]:
        c.update(reason=reason, counts=keys, implementation=[reason],
                 samples=[{"seq": 1, "at": summary, "type": rtype, "session": session, "summary": summary}])
    validate_oscal(to_oscal(report))
