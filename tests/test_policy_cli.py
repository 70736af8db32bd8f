"""`pgwarden policy check` as a policy author and a CI job use it."""

from __future__ import annotations

import json

import yaml

from test_cli import run_cli

CONFIG = {
    "targets": {"shop": {"host": "127.0.0.1", "database": "shop", "user": "app", "password": "x"}},
    "roles": {
        "agent": {"targets": ["shop"], "access": "read"},
        "developer": {"targets": ["shop"], "access": "write"},
    },
    "guardrails": {
        "rules": [
            {"name": "review-deletes", "match": {"command": "DELETE", "roles": ["developer"]}, "action": "review"},
            {"name": "weekend-freeze", "match": {"classification": "ddl", "time": {"days": "sat-sun"}},
             "action": "deny", "message": "no schema changes at the weekend"},
        ]
    },
}


def write_config(tmp_path) -> str:
    path = tmp_path / "pgwarden.yaml"
    path.write_text(yaml.safe_dump(CONFIG))
    return str(path)


def test_decision_rule_and_exit_status(tmp_path):
    config = write_config(tmp_path)
    refused = run_cli("policy", "check", "-c", config, "--role", "agent", "COMMIT; DROP TABLE customers;")
    assert refused.returncode == 1
    assert "DENY" in refused.stdout and "dangerous.drop" in refused.stdout and "DROP TABLE" in refused.stdout
    allowed = run_cli("policy", "check", "-c", config, "--role", "agent", "SELECT lower(email) FROM customers")
    assert allowed.returncode == 0 and "ALLOW" in allowed.stdout
    review = run_cli("policy", "check", "-c", config, "--role", "developer", "DELETE FROM orders WHERE id = 1")
    assert review.returncode == 1 and "REVIEW" in review.stdout and "review-deletes" in review.stdout


def test_expect_json_time_and_stdin(tmp_path):
    config = write_config(tmp_path)
    ok = run_cli("policy", "check", "-c", config, "--role", "agent", "--expect", "deny", "DELETE FROM orders")
    assert ok.returncode == 0
    wrong = run_cli("policy", "check", "-c", config, "--role", "agent", "--expect", "allow", "DELETE FROM orders")
    assert wrong.returncode == 1
    out = run_cli("policy", "check", "-c", config, "--role", "developer", "--json",
                  "--at", "2026-11-28T10:00:00+00:00", "-", input="CREATE TABLE t (a int)")
    data = json.loads(out.stdout)
    assert data["action"] == "deny" and data["rule"] == "weekend-freeze"
    assert data["statements"][0]["classification"] == "ddl"
    weekday = run_cli("policy", "check", "-c", config, "--role", "developer", "--json",
                      "--at", "2026-11-30T10:00:00+00:00", "CREATE TABLE t (a int)")
    assert json.loads(weekday.stdout)["action"] == "allow"


def test_bad_input_is_one_clear_line(tmp_path):
    config = write_config(tmp_path)
    unknown = run_cli("policy", "check", "-c", config, "--role", "nobody", "SELECT 1")
    assert unknown.returncode == 2 and "unknown role 'nobody'" in unknown.stderr
    syntax = run_cli("policy", "check", "-c", config, "--role", "agent", "SELEC 1")
    assert syntax.returncode == 1 and "guardrails.syntax" in syntax.stdout
    bad = dict(CONFIG, roles={"agent": {"targets": ["shop"], "guardrails": {"exempt": ["dangerous.nope"]}}})
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    checked = run_cli("config", "check", "-c", str(path))
    assert checked.returncode == 2 and "roles.agent.guardrails.exempt" in checked.stderr
