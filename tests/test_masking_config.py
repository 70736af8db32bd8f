"""Masking configuration, the tokenization key, fail-closed catalog reads and ``policy check``."""

from __future__ import annotations

import stat

import psycopg
import pytest

from masking_env import DB, MASKING, TARGET, config_data, masking_gateway, reset_database
from pgwarden.config import ConfigError, parse_config
from pgwarden.policy.stages.guardrails import GuardrailsStage
from pgwarden.policy.stages.masking import MaskingStage, load_masking_key
from pgwarden.services.policy import check_statement
from pgwarden.testing.gateway import RunningGateway

BASE = {"targets": {"t": {"database": "d", "user": "u"}}, "roles": {"agent": {"targets": ["t"]}}}


def masking(**section) -> dict:
    return {**BASE, "masking": section}


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"rules": [{"name": "a", "columns": ["x.y.z.w"]}]}, "is not [schema.][table.]column"),
        ({"rules": [{"name": "a", "columns": []}]}, "at least one column pattern"),
        ({"rules": [{"name": "a", "columns": "email", "strategy": "constant"}]}, "needs 'constant'"),
        ({"rules": [{"name": "a", "columns": "email", "strategy": "scramble"}]}, "rules.0.strategy"),
        ({"rules": [{"name": "a", "columns": "email", "type": "zipcode"}]}, "rules.0.type"),
        ({"rules": [{"name": "a", "columns": "email", "roles": {"ghost": "none"}}]}, "unknown role(s) ghost"),
        ({"unmasked_roles": ["ghost"]}, "unknown role(s) ghost"),
        ({"rules": [{"name": "a", "columns": "email"}, {"name": "a", "columns": "ssn"}]}, "duplicate rule name(s) a"),
        ({"rules": [{"name": "a", "columns": "email", "targets": ["nope"]}]}, "unknown target(s) nope"),
        ({"rules": [{"name": "a", "columns": "email", "filter": "maybe"}]}, "rules.0.filter"),
    ],
)
def test_bad_masking_config_is_one_clear_line(section, message):
    with pytest.raises(ConfigError) as info:
        parse_config(masking(**section))
    assert message in str(info.value) and "masking" in str(info.value)


def test_rules_match_one_two_and_three_part_patterns():
    config = parse_config(masking(rules=[
        {"name": "a", "columns": ["ssn"]}, {"name": "b", "columns": ["customers.e*"]},
        {"name": "c", "columns": ["sales.*.card"]}, {"name": "d", "columns": "email", "roles": {"agent": "none"}},
    ]))
    a, b, c, d = config.masking.rules
    assert a.matches("public", "people", "ssn") and not a.matches("public", "people", "ssn2")
    assert b.matches("crm", "customers", "email") and not b.matches("crm", "orders", "email")
    assert c.matches("sales", "anything", "card") and not c.matches("public", "anything", "card")
    assert d.strategy_for("agent", None) == "none" and d.strategy_for(None, "alice") == "redact"
    assert config.masking.active and not parse_config(BASE).masking.active


def test_tokenization_key_is_created_once_private_and_stable(tmp_path, monkeypatch):
    config = parse_config({**masking(rules=[{"name": "a", "columns": "x", "strategy": "tokenize"}]),
                           "data_dir": str(tmp_path)})
    key = load_masking_key(config)
    path = tmp_path / "masking.key"
    assert len(key) == 32 and path.read_bytes() == key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_masking_key(config) == key
    monkeypatch.setenv("MASK_KEY", "short")
    env_config = parse_config({**masking(key_env="MASK_KEY", rules=[{"name": "a", "columns": "x"}])})
    with pytest.raises(ConfigError, match="at least 16 bytes"):
        load_masking_key(env_config)


def test_catalog_that_cannot_be_read_refuses_the_statement(pg, tmp_path):
    """Fail closed: without the catalog, masking cannot decide, so nothing is forwarded."""
    reset_database(pg)
    config = parse_config(config_data(pg, tmp_path))

    async def broken(target: str):
        raise OSError("the catalog connection was refused")

    stages = [GuardrailsStage(config), MaskingStage(config, loader=broken)]
    from pgwarden.identity.login import dev_issuer_for

    with RunningGateway(config, stages) as gw:
        token = dev_issuer_for(config).mint("mask-agent", groups=("mask-agents",), ttl=600)
        dsn = gw.dsn("mask-agent", token, database=TARGET, sslmode="disable")
        with psycopg.connect(dsn, autocommit=True) as conn:
            with pytest.raises(psycopg.Error) as info:
                conn.execute("SELECT email FROM customers")
            assert "masking.catalog" in str(info.value.diag.message_detail)
            assert "could not read the catalog" in info.value.diag.message_primary
            with pytest.raises(psycopg.Error) as info:  # refused again: the session is still usable
                conn.execute("SELECT 1")
            assert "masking.catalog" in str(info.value.diag.message_detail)
        # A role that sees everything needs no catalog.
        token = dev_issuer_for(config).mint("mask-dba", groups=("mask-dbas",), ttl=600)
        with psycopg.connect(gw.dsn("mask-dba", token, database=TARGET, sslmode="disable"), autocommit=True) as conn:
            assert conn.execute("SELECT count(*) FROM customers").fetchone() == (3,)


def test_policy_check_shows_masking_and_refusals(pg, tmp_path):
    with masking_gateway(pg, tmp_path) as env:
        allowed = check_statement(env.config, "SELECT id, lower(email), ssn FROM customers", role="agent")
        assert allowed.decision.action == "allow"
        assert [(m["column"], m["masking"], m.get("rule")) for m in allowed.masking] == [
            ("id", "none", None), ("lower", "whole value", "email"), ("ssn", "redact", "ssn")]
        dev = check_statement(env.config, "SELECT * FROM customer_contacts", role="developer")
        assert [(m["column"], m["masking"]) for m in dev.masking] == [
            ("id", "none"), ("email", "partial"), ("email_lower", "whole value"), ("full_name", "none")]
        refused = check_statement(env.config, "SELECT id FROM customers WHERE ssn = 'x'", role="agent")
        assert refused.decision.action == "deny" and refused.decision.rule == "masking.ssn"
        assert refused.sqlstate == "42501"
        dba = check_statement(env.config, "SELECT ssn FROM customers", role="dba")
        assert dba.decision.action == "allow" and dba.masking is None


def test_detection_everywhere_and_types_a_role_may_see(pg, tmp_path):
    """detect.scope all scans free text of known columns too; detect.visible exempts types per role."""
    masking = {**MASKING, "detect": {"scope": "all", "visible": {"analyst": ["email"]}}}
    with masking_gateway(pg, tmp_path, masking=masking) as env:
        with psycopg.connect(pg.dsn("postgres", DB), autocommit=True) as admin:
            admin.execute("UPDATE customers SET note = 'mail alice.archer@example.com or call 415-555-0101' "
                          "WHERE id = 1")
        with env.connect("agent") as conn:
            assert conn.execute("SELECT note FROM customers WHERE id = 1").fetchone() == ("mail **** or call ****",)
            assert conn.execute("SELECT email FROM customers WHERE id = 1").fetchone() == ("****",)  # the rule still
        with env.connect("analyst") as conn:
            assert conn.execute("SELECT note FROM customers WHERE id = 1").fetchone() == (
                "mail alice.archer@example.com or call ****",)
    with masking_gateway(pg, tmp_path / "unknown-only") as env:  # the default: only unknown origins
        with psycopg.connect(pg.dsn("postgres", DB), autocommit=True) as admin:
            admin.execute("UPDATE customers SET note = 'mail alice.archer@example.com' WHERE id = 1")
        with env.connect("agent") as conn:
            assert conn.execute("SELECT note FROM customers WHERE id = 1").fetchone() == (
                "mail alice.archer@example.com",)


def test_serve_and_config_check_report_a_missing_masking_key_in_one_line(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "pgwarden.yaml"
    path.write_text("listen: {port: 0}\ntargets: {t: {database: d, user: u}}\n"
                    "masking: {key_env: PGWARDEN_TEST_NO_SUCH_KEY, rules: [{name: a, columns: email, strategy: tokenize}]}\n")
    for command in (["config", "check"], ["serve"]):
        proc = subprocess.run([sys.executable, "-m", "pgwarden", *command, "--config", str(path)],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode != 0
        assert proc.stderr.strip().splitlines() == [
            "error: masking.key_env: environment variable PGWARDEN_TEST_NO_SUCH_KEY must hold at least 16 bytes"]
