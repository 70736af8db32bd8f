"""The NIST SP 800-53 evidence report, from a real gateway's trail.

One gateway (module scope) runs a scripted workload through real clients:
allowed statements (one whose text holds a ``<script>`` tag), a statement the
dangerous pack refuses, one a config rule refuses, an UPDATE that needs an
approval ticket, a masked read, a refused login and a login with a dev-issuer
token. The gateway is then stopped (a shutdown checkpoint signs everything),
and every test builds reports from that trail: counts per control, the daily
chart, the HTML's escaping and self-containment, a tampered copy of the trail,
and the CLI's exit codes.
"""

from __future__ import annotations

import json
import re
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace

import psycopg
import pytest
import yaml
from typer.testing import CliRunner

from oscal_schema import validate_oscal

from pgwarden.cli.main import app
from pgwarden.config import parse_config
from pgwarden.evidence.html import render_html
from pgwarden.evidence.collect import Collector
from pgwarden.evidence.controls import Context, evaluate
from pgwarden.evidence.report import EvidenceError, build_report, period_bounds
from pgwarden.identity.login import dev_issuer_for
from pgwarden.testing.gateway import RunningGateway

from conftest import GW_PASSWORD, GW_USER
from test_audit_verify import Rows

SCRIPT = "SELECT '<script>alert(1)</script>' AS x"
SETUP = """
DROP SCHEMA IF EXISTS ev CASCADE;
CREATE SCHEMA ev AUTHORIZATION app;
CREATE TABLE ev.items (id int PRIMARY KEY, name text);
CREATE TABLE ev.people (id int PRIMARY KEY, email text);
CREATE TABLE ev.blocked (id int);
INSERT INTO ev.items VALUES (1, 'a'), (2, 'b');
INSERT INTO ev.people VALUES (1, 'ann@example.com'), (2, 'bob@example.com');
ALTER TABLE ev.items OWNER TO app; ALTER TABLE ev.people OWNER TO app; ALTER TABLE ev.blocked OWNER TO app;
"""

ALLOWED = [SCRIPT, "SELECT 1", "SELECT id, name FROM ev.items ORDER BY id", "SELECT email FROM ev.people ORDER BY id"]


def config_data(pg, data_dir: Path, users: list[dict]) -> dict:
    return {
        "listen": {"host": "127.0.0.1", "port": 0, "tls": {"mode": "disable"}, "shutdown_grace": 2,
                   "allow_cleartext_password_loopback": True},
        "logging": {"level": "warning", "statements": False},
        "targets": {"app": {"host": pg.host, "port": pg.port, "database": "appdb", "user": "app",
                            "password": pg.passwords["app"]}},
        "users": users,
        "data_dir": str(data_dir),
        "identity": {"dev_issuer": {"enabled": True}},
        "roles": {"analyst": {"targets": ["app"], "access": "read"},
                  "dba": {"targets": ["app"], "access": "admin"}},
        "role_bindings": [{"role": "analyst", "match": {"groups": "analysts"}}],
        "guardrails": {"rules": [
            {"name": "no-blocked", "match": {"tables": "ev.blocked"}, "action": "deny"},
            {"name": "review-items", "match": {"tables": "ev.items", "command": ["UPDATE"]}, "action": "review"},
        ]},
        "approvals": {"enabled": True, "mode": "ticket", "reviewer_roles": ["dba"], "poll_interval": 0.05},
        "masking": {"rules": [{"name": "email", "columns": ["ev.people.email"], "type": "email", "strategy": "redact"}]},
        "audit": {"checkpoints": {"every_records": 5}, "retention": {"max_age": "400d"}},
    }


class Env:
    def __init__(self, data_dir: Path, config_file: Path) -> None:
        self.data_dir = data_dir
        self.config_file = config_file
        self.config = parse_config(yaml.safe_load(config_file.read_text()), base_dir=data_dir)


def _run(dsn: str, statements: list[str]) -> list:
    out = []
    with psycopg.connect(dsn, autocommit=True, cursor_factory=psycopg.ClientCursor) as conn:
        for sql in statements:
            try:
                out.append(conn.execute(sql).fetchall())
            except psycopg.Error as exc:
                out.append(exc)
    return out


@pytest.fixture(scope="module")
def env(pg, gw_users, tmp_path_factory) -> Env:
    pg.psql(SETUP, database="appdb")
    data_dir = tmp_path_factory.mktemp("evidence")
    data = config_data(pg, data_dir, gw_users)
    config_file = data_dir / "pgwarden.yaml"
    config_file.write_text(yaml.safe_dump(data))
    config = parse_config(data, base_dir=data_dir)
    with RunningGateway(config) as gw:
        dsn = gw.dsn(GW_USER, GW_PASSWORD, sslmode="disable")
        results = _run(dsn, ALLOWED + ["DROP TABLE ev.items", "SELECT * FROM ev.blocked", "SELEC 1",
                                       "UPDATE ev.items SET name = 'z' WHERE id = 1"])
        assert all(isinstance(r, list) for r in results[:4]), results
        assert results[3] != [("ann@example.com",), ("bob@example.com",)]  # masked
        assert all(isinstance(r, psycopg.Error) for r in results[4:]), results
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(gw.dsn(GW_USER, "wrong-password", sslmode="disable")).close()
        token = dev_issuer_for(config).mint("ann", groups=("analysts",), ttl=600)
        assert _run(gw.dsn("ann", token, sslmode="disable"), ["SELECT 2"]) == [[(2,)]]
    return Env(data_dir, config_file)


@pytest.fixture(scope="module")
def report(env) -> dict:
    return build_report(env.config, config_path=env.config_file)


def control(report: dict, label: str) -> dict:
    return next(c for c in report["controls"] if c["label"] == label)


# ---------------------------------------------------------------- the JSON report


def test_shape_and_totals(report, env):
    assert report["format"] == "pgwarden-evidence/1"
    assert report["generator"] == {"name": "pgwarden", "version": "0.1.0"}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", report["generated_at"])
    system = report["system"]
    assert system["targets"] == ["app"] and len(system["gateway_ids"]) == 1
    assert system["store"] == {"backend": "sqlite", "location": str(env.data_dir / "audit.sqlite")}
    assert system["public_key_id"] == report["verification"]["key_id"] is not None
    assert system["config_path"] == str(env.config_file)
    v = report["verification"]
    assert v["status"] == "verified" and v["problems"] == [] and v["checkpoints"] >= 1
    assert v["unsigned_tail"] is None  # the shutdown checkpoint signs the end
    totals = report["totals"]
    assert totals["sessions"] == 2
    assert totals["statements"] == {"allow": 5, "deny": 3, "rewrite": 0, "held": 1}
    assert totals["by_type"]["connect"] == 2 and totals["by_type"]["auth"] == 3
    assert totals["by_type"]["approval"] == 1
    assert totals["records"] == sum(totals["by_type"].values())
    # The daily chart adds up to the totals, one row per day of the (default 30-day) period.
    assert len(report["daily"]) in (31, 32)
    for verdict, n in totals["statements"].items():
        assert sum(day[verdict] for day in report["daily"]) == n
    ids = [c["id"] for c in report["controls"]]
    assert ids == ["au-2", "au-3", "au-6", "au-8", "au-9.3", "au-10", "au-11", "au-12", "au-14", "ac-2", "ac-3",
                   "ac-4", "ac-6", "ac-6.9", "ac-12", "ia-2", "ia-9", "si-4", "si-10", "sc-8", "cm-5"]
    for c in report["controls"]:
        assert set(c) >= {"id", "label", "title", "family", "requirement", "implementation", "status", "reason",
                          "counts", "samples"}
        assert c["status"] in ("satisfied", "not_satisfied", "no_events") and c["reason"]
        assert len(c["samples"]) <= 5
    json.dumps(report)  # serialisable as is


def test_control_counts(report):
    ia2 = control(report, "IA-2")
    assert ia2["status"] == "satisfied"
    assert ia2["counts"]["auth.ok"] == 2 and ia2["counts"]["auth.refused"] == 1
    assert ia2["counts"]["auth.ok.scram-sha-256"] == 1 and ia2["counts"]["auth.ok.password"] == 1
    assert any(s["type"] == "auth" and "refused" in s["summary"] for s in ia2["samples"])
    si10 = control(report, "SI-10")
    assert si10["status"] == "satisfied" and si10["counts"]["deny.guardrails"] == 3
    assert si10["counts"]["deny.unparsable"] == 1  # SELEC 1
    ac3 = control(report, "AC-3")
    assert ac3["counts"]["statements.deny"] == 3 and ac3["counts"]["statements"] == 9
    assert {"dangerous.drop", "no-blocked"} <= {s["summary"].split(":")[0].split()[-1] for s in ac3["samples"]}
    ac4 = control(report, "AC-4")
    assert ac4["status"] == "satisfied" and ac4["counts"]["masked.results"] == 1 and ac4["counts"]["masked.values"] == 2
    assert "email" in ac4["samples"][0]["summary"]
    au12 = control(report, "AU-12")
    assert au12["status"] == "satisfied" and au12["counts"]["records"] == report["totals"]["records"]
    assert control(report, "AU-9(3)")["status"] == "satisfied"
    assert control(report, "AU-11")["status"] == "satisfied"  # max_age 400d, nothing older
    assert control(report, "AU-3")["status"] == "satisfied"
    au10 = control(report, "AU-10")
    assert au10["counts"]["sessions.identity"] == 1 and au10["counts"]["sessions.static"] == 1
    # Plaintext sessions (listen.tls.mode disable) cannot satisfy SC-8.
    sc8 = control(report, "SC-8")
    assert sc8["status"] == "not_satisfied" and sc8["counts"]["tls.plaintext"] == 2
    cm5 = control(report, "CM-5")
    assert cm5["status"] == "satisfied" and cm5["counts"]["approval.requested"] == 1
    assert cm5["counts"]["privileged.deny"] == 1  # the DROP
    assert control(report, "AC-12")["status"] == "no_events"  # token expiry configured, nobody expired
    assert control(report, "SI-4")["status"] == "not_satisfied"  # no sinks in this config


def test_a_period_without_records(env):
    empty = build_report(env.config, "2001-01-01", "2001-01-02")
    assert empty["verification"]["status"] == "no_records"
    assert empty["totals"]["records"] == 0 and len(empty["daily"]) == 2
    assert control(empty, "AU-2")["status"] == "no_events"
    assert empty["period"] == {"from": "2001-01-01T00:00:00.000000Z", "to": "2001-01-02T23:59:59.999999Z"}


# ---------------------------------------------------------------- HTML


def test_html_is_self_contained_and_escaped(report):
    page = render_html(report)
    assert page.startswith("<!DOCTYPE html>") and "<svg" in page
    for c in report["controls"]:
        assert f'href="#{c["id"]}"' in page and f'id="{c["id"]}"' in page
    assert "<script" not in page.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.IGNORECASE)
    assert "@import" not in page and "url(" not in page
    assert "Audit trail verified" in page and "VERIFICATION FAILED" not in page
    # The legend names every verdict; the chart has axis labels.
    for word in ("allow", "deny", "rewrite", "held", "statements", "day (UTC)"):
        assert f">{word}</text>" in page


# ---------------------------------------------------------------- tampering


def _config_at(env, data_dir: Path):
    """The test config with its trail in another (copied) data directory."""
    data = yaml.safe_load(env.config_file.read_text())
    data["data_dir"] = str(data_dir)
    return parse_config(data, base_dir=data_dir)


def test_a_tampered_trail_fails_the_report(env, tmp_path):
    copy = tmp_path / "data"
    shutil.copytree(env.data_dir, copy)
    rows = Rows(copy / "audit.sqlite")
    seq = next(r[0] for r in rows.rows if r[3] == "statement" and b"DROP TABLE" in r[5])
    rows.edit(seq, b"DROP TABLE ev.items", b"SELECT 1           ")
    rows.save()
    tampered = build_report(_config_at(env, copy))
    v = tampered["verification"]
    assert v["status"] == "failed" and any(p["kind"] == "changed" and p["seq"] == seq for p in v["problems"])
    au93 = control(tampered, "AU-9(3)")
    assert au93["status"] == "not_satisfied" and "verification failed" in au93["reason"]
    assert control(tampered, "AU-10")["status"] == "not_satisfied"
    for c in tampered["controls"]:
        if c["evidence"] != "configuration":
            assert c["status"] != "satisfied", c["label"]
    page = render_html(tampered)
    assert "VERIFICATION FAILED" in page
    from pgwarden.evidence.oscal import to_oscal

    doc = to_oscal(tampered)
    validate_oscal(doc)
    result = doc["assessment-results"]["results"][0]
    states = {f["target"]["target-id"]: f["target"]["status"]["state"] for f in result["findings"]}
    assert states["au-9.3_obj"] == "not-satisfied" and states["au-10_obj"] == "not-satisfied"
    assert result.get("risks"), "a failed verification is an open risk in the OSCAL results"


# ---------------------------------------------------------------- CLI


def test_cli_writes_each_format_and_exits_by_verification(env, tmp_path):
    runner = CliRunner()
    out = tmp_path / "report.html"
    result = runner.invoke(app, ["evidence", "--config", str(env.config_file), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "AU-9(3)" in result.output and out.read_text().startswith("<!DOCTYPE html>")
    result = runner.invoke(app, ["evidence", "-c", str(env.config_file), "--format", "json", "--out", "-",
                                 "--from", (datetime.now(timezone.utc) - timedelta(days=1)).date().isoformat()])
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert data["totals"]["statements"]["deny"] == 3 and data["system"]["config_sha256"]


@pytest.mark.parametrize("args", [
    ["--from", "yesterday"],
    ["--to", "2026-13-45"],
    ["--from", "2026-11-25", "--to", "2026-11-24"],
    ["--format", "pdf"],
])
def test_cli_bad_input_exits_2(env, tmp_path, args):
    result = CliRunner().invoke(app, ["evidence", "-c", str(env.config_file), "--out", str(tmp_path / "r.html"), *args])
    assert result.exit_code == 2, result.output
    assert not (tmp_path / "r.html").exists()


def test_cli_no_trail_or_unwritable_out_exits_2(env, tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["evidence", "-c", str(env.config_file), "--out", str(tmp_path / "missing" / "r.html")])
    assert result.exit_code == 2 and "does not exist" in result.output
    data = yaml.safe_load(env.config_file.read_text())
    data["data_dir"] = str(tmp_path / "empty")
    (tmp_path / "empty").mkdir()
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump(data))
    result = runner.invoke(app, ["evidence", "-c", str(other), "--out", str(tmp_path / "r.json"), "-f", "json"])
    assert result.exit_code == 2 and "no audit trail" in result.output


def test_cli_exits_1_when_verification_fails(env, tmp_path):
    copy = tmp_path / "data"
    shutil.copytree(env.data_dir, copy)
    rows = Rows(copy / "audit.sqlite")
    rows.delete(rows.rows[3][0])
    rows.save()
    data = yaml.safe_load(env.config_file.read_text())
    data["data_dir"] = str(copy)
    cfg = tmp_path / "pgwarden.yaml"
    cfg.write_text(yaml.safe_dump(data))
    out = tmp_path / "r.json"
    result = CliRunner().invoke(app, ["evidence", "-c", str(cfg), "-f", "json", "--out", str(out)])
    assert result.exit_code == 1, result.output
    assert "VERIFICATION FAILED" in result.output
    assert json.loads(out.read_text())["verification"]["status"] == "failed"


def test_cli_oscal(env, tmp_path):
    out = tmp_path / "r.oscal.json"
    result = CliRunner().invoke(app, ["evidence", "-c", str(env.config_file), "-f", "oscal", "--out", str(out)])
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    validate_oscal(doc)  # NIST's published schema (tests/oscal_schema.py)
    findings = doc["assessment-results"]["results"][0]["findings"]
    assert len(findings) == 21


# ---------------------------------------------------------------- without a gateway


def test_period_bounds():
    now = datetime(2026, 11, 24, 12, 0, tzinfo=timezone.utc)
    assert period_bounds(None, None, now) == ("2026-10-25T12:00:00.000000Z", "2026-11-24T12:00:00.000000Z")
    assert period_bounds("2026-11-24T08:00:00+01:00", "2026-11-24T09:00Z", now) == (
        "2026-11-24T07:00:00.000000Z", "2026-11-24T09:00:00.000000Z")
    assert period_bounds(None, "2026-11-01", now) == ("2026-10-02T23:59:59.999999Z", "2026-11-01T23:59:59.999999Z")
    for bad in (("2026-11-25", "2026-11-24"), ("soon", None), (None, "2026-02-30")):
        with pytest.raises(EvidenceError) as info:
            period_bounds(*bad, now)
        assert info.value.code == 2


class _WithAlerts:
    """The test config plus an ``alerts`` section (added by the alerts work; read defensively)."""

    def __init__(self, config, sinks) -> None:
        self._config = config
        self.alerts = SimpleNamespace(enabled=True, sinks=sinks)

    def __getattr__(self, name):
        return getattr(self._config, name)


def test_alert_records_are_si4_and_au6_evidence(env):
    col = Collector()
    for seq, (kind, severity, count) in enumerate([("statement_blocked", "warning", 3), ("auth_failures", "high", 5),
                                                   ("exfiltration", "critical", 1)], start=1):
        body = json.dumps({"v": 1, "seq": seq, "at": "2026-11-24T05:33:12.123456Z", "type": "alert", "session": None,
                           "kind": kind, "severity": severity, "title": f"<b>{kind}</b>", "count": count}).encode()
        col.add(seq, "2026-11-24T05:33:12.123456Z", "alert", None, body)
    ctx = Context(col=col, verification={"status": "verified", "last_checkpoint_seq": 3})
    cfg = _WithAlerts(env.config, [SimpleNamespace(type="webhook", url="https://hooks.example/secret/abc?token=x")])
    controls = {c["label"]: c for c in evaluate(cfg, ctx)}
    si4 = controls["SI-4"]
    assert si4["status"] == "satisfied"
    assert si4["counts"]["alerts"] == 3 and si4["counts"]["alerts.events"] == 9
    assert si4["counts"]["alerts.kind.exfiltration"] == 1
    assert "secret" not in " ".join(si4["implementation"])  # webhook URLs carry secrets
    assert [s["seq"] for s in si4["samples"]] == [1, 2, 3]
    assert controls["AU-6"]["status"] == "satisfied" and controls["AU-6"]["counts"]["alerts.severity.critical"] == 1
    # Without any sink, alerts are recorded but nobody is told.
    assert {c["label"]: c for c in evaluate(env.config, ctx)}["SI-4"]["status"] == "not_satisfied"


def test_a_log_sink_alone_tells_no_reviewer(env):
    """An explicit ``type: log`` sink is what alerts get without sinks (the gateway's log):
    it does not make SI-4 or AU-6 satisfied, while a webhook next to it does."""
    col = Collector()
    body = json.dumps({"v": 1, "seq": 1, "at": "2026-11-24T05:33:12.123456Z", "type": "alert", "session": None,
                       "kind": "statement_blocked", "severity": "warning", "count": 1}).encode()
    col.add(1, "2026-11-24T05:33:12.123456Z", "alert", None, body)
    ctx = Context(col=col, verification={"status": "verified", "last_checkpoint_seq": 1})
    log_only = {c["label"]: c for c in evaluate(_WithAlerts(env.config, [SimpleNamespace(type="log")]), ctx)}
    assert log_only["SI-4"]["status"] == "not_satisfied"
    assert log_only["AU-6"]["status"] == "not_satisfied"
    both = _WithAlerts(env.config, [SimpleNamespace(type="log"), SimpleNamespace(type="webhook", url="https://h.example/x")])
    controls = {c["label"]: c for c in evaluate(both, ctx)}
    assert controls["SI-4"]["status"] == "satisfied" and controls["AU-6"]["status"] == "satisfied"


def test_privileged_statements_are_found_after_a_semicolon():
    """``COMMIT; DROP TABLE customers;`` (the README's own example) is a privileged statement for
    AC-6(9) and CM-5; a ';' inside a string or a comment starts nothing."""
    col = Collector()
    texts = ["COMMIT; DROP TABLE customers;", "select 1;\n  GRANT ALL ON t TO u", "/* c */ ALTER TABLE t ADD x int",
             "SELECT 'a; drop table x'", "SELECT 1 -- ; drop table x", "SELECT dropped FROM t"]
    for seq, text in enumerate(texts, start=1):
        body = json.dumps({"v": 1, "seq": seq, "at": "2026-11-24T05:33:12.123456Z", "type": "statement",
                           "session": "s1", "n": seq, "kind": "query", "text": text,
                           "decision": {"action": "deny" if seq == 1 else "allow", "rule": "dangerous.drop"}}).encode()
        col.add(seq, "2026-11-24T05:33:12.123456Z", "statement", "s1", body)
    assert col.counts["privileged"] == 3
    assert col.counts["privileged.deny"] == 1 and col.counts["privileged.allow"] == 2


def test_a_role_with_no_packs_says_none(env):
    from pgwarden.evidence.config_facts import guardrails_text

    data = yaml.safe_load(env.config_file.read_text())
    data["roles"] = {"dba": {"targets": list(data["targets"]), "access": "admin", "guardrails": {"packs": []}}}
    data.pop("role_bindings", None)
    lines = guardrails_text(parse_config(data))
    assert "role dba: packs none" in lines, lines
