"""The ``approvals:`` config: validation errors a user would make, policy matching, and ``policy check``."""

from __future__ import annotations

import pytest

from pgwarden.config import ConfigError, parse_config
from pgwarden.services.policy import check_statement


def _config(tmp_path, **approvals):
    data = {
        "targets": {"app": {"database": "d", "user": "u"}},
        "data_dir": str(tmp_path),
        "roles": {"developer": {"targets": ["app"], "access": "write"}, "dba": {"targets": ["app"], "access": "admin"}},
        "guardrails": {"rules": [
            {"name": "dev-deletes", "match": {"roles": ["developer"], "command": "DELETE"}, "action": "review"},
            {"name": "dev-ddl", "match": {"roles": ["developer"], "classification": "ddl"}, "action": "review"},
        ]},
        "approvals": {"enabled": True, "reviewer_roles": ["dba"], **approvals},
    }
    return parse_config(data, base_dir=tmp_path)


def test_defaults_and_policy_overrides(tmp_path):
    config = _config(tmp_path, timeout="5m", policies=[
        {"name": "ddl-two-person", "rules": ["dev-ddl"], "approvals": 2, "mode": "ticket", "validity": "2h"},
        {"name": "bots", "identities": ["key:bot-*"], "mode": "ticket"},
    ])
    default = config.approvals.settings_for("dev-deletes", "developer", "alice")
    assert (default.policy, default.mode, default.approvals, default.timeout, default.validity) == (
        "default", "hold", 1, 300.0, 900.0)
    ddl = config.approvals.settings_for("dev-ddl", "developer", "alice")
    assert (ddl.policy, ddl.mode, ddl.approvals, ddl.validity, ddl.reviewer_roles) == (
        "ddl-two-person", "ticket", 2, 7200.0, ("dba",))
    assert config.approvals.settings_for("dev-deletes", "developer", "key:bot-7").policy == "bots"


@pytest.mark.parametrize("change, message", [
    ({"reviewer_roles": ["wizard"]}, "approvals: unknown role(s) wizard"),
    ({"policies": [{"name": "p", "reviewer_roles": ["nobody"]}]}, "unknown role(s) nobody"),
    ({"policies": [{"name": "p"}, {"name": "p"}]}, "duplicate name(s) p"),
    ({"timeout": "soon"}, "is not a duration"),
    ({"mode": "email"}, "mode"),
    ({"approvals": 0}, "approvals"),
    ({"webhooks": [{"url": "ftp://x"}]}, "http:// or https://"),
])
def test_bad_settings_are_named(tmp_path, change, message):
    with pytest.raises((ConfigError, ValueError)) as info:
        _config(tmp_path, **change)
    assert message in str(info.value)


def test_approvals_need_the_audit_store(tmp_path):
    with pytest.raises(ConfigError, match="approvals live in the audit store"):
        parse_config({"targets": {"app": {"database": "d", "user": "u"}}, "approvals": {"enabled": True}})


def test_policy_check_says_how_a_review_is_handled(tmp_path):
    config = _config(tmp_path, policies=[{"name": "ddl", "rules": ["dev-ddl"], "mode": "ticket"}])
    held = check_statement(config, "DELETE FROM t WHERE id = 1", role="developer")
    assert held.decision.action == "review" and held.sqlstate is None
    assert held.as_dict()["approval"]["mode"] == "hold"
    ticket = check_statement(config, "CREATE TABLE t2 (x int)", role="developer")
    assert ticket.decision.action == "review" and ticket.sqlstate == "PW001"
    assert ticket.as_dict()["approval"]["policy"] == "ddl"
    assert check_statement(config, "DELETE FROM t WHERE id = 1", role="dba").decision.action == "allow"


def test_api_off_loopback_needs_tls(tmp_path, tls_files):
    with pytest.raises(ConfigError, match="bearer tokens in cleartext"):
        _config_with_api(tmp_path, {"enabled": True, "host": "0.0.0.0"})
    assert _config_with_api(tmp_path, {"enabled": True, "host": "0.0.0.0", "allow_plaintext": True}).api.url \
        == "http://127.0.0.1:8433"
    config = _config_with_api(tmp_path, {"enabled": True, "host": "0.0.0.0",
                                         "tls": {"cert": str(tls_files["cert"]), "key": str(tls_files["key"])}})
    assert config.api.url == "https://127.0.0.1:8433"


def test_api_serves_https(tls_files):
    import asyncio

    import httpx
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from pgwarden.web.server import ApiServer

    async def run():
        app = Starlette(routes=[Route("/ping", lambda request: JSONResponse({"ok": True}))])
        server = ApiServer(app, "127.0.0.1", 0, ssl_certfile=str(tls_files["cert"]), ssl_keyfile=str(tls_files["key"]))
        await server.start()
        try:
            assert server.url.startswith("https://")
            async with httpx.AsyncClient(verify=False) as client:
                return (await client.get(f"{server.url}/ping")).json()
        finally:
            await server.stop()

    assert asyncio.run(run()) == {"ok": True}


def _config_with_api(tmp_path, api):
    data = {"targets": {"app": {"database": "d", "user": "u"}}, "data_dir": str(tmp_path), "api": api}
    return parse_config(data, base_dir=tmp_path)
