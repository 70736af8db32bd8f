"""The reviewer HTTP API, served for real (uvicorn on port 0) over a real SQLite approval store.

Credentials are real too: pgwarden API keys (``pgw_...``) from an ApiKeyStore
and a dev-issuer access token, checked by ApprovalService.reviewer_for_token.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

import httpx
import pytest
from starlette.routing import Route

from pgwarden.config import parse_config
from pgwarden.identity.apikeys import ApiKeyStore
from pgwarden.identity.login import dev_issuer_for
from pgwarden.services.approvals import ApprovalService
from pgwarden.store.approvals import ApprovalRequest, fingerprint, new_request_id
from pgwarden.store.approvals_sqlite import SqliteApprovalStore
from pgwarden.web import ApiServer, build_app
from pgwarden.web.openapi import OPENAPI

STATEMENT = "DELETE FROM orders WHERE id = $1"


@dataclass
class Env:
    config: object
    keys: dict[str, str]
    jwt: str
    path: object


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> Env:
    base = tmp_path_factory.mktemp("approvals-api")
    config = parse_config({
        "targets": {"shop": {"database": "shop", "user": "app"}},
        "data_dir": str(base),
        "identity": {"dev_issuer": {"enabled": True}},
        "roles": {
            "developer": {"targets": ["shop"], "access": "write"},
            "reviewer": {"targets": ["shop"], "access": "read"},
            "dba": {"targets": ["shop"], "access": "admin"},
        },
        "role_bindings": [{"role": "reviewer", "match": {"groups": "reviewers"}}],
        "approvals": {
            "reviewer_roles": ["reviewer"],
            "policies": [{"name": "ddl", "rules": ["drop-*"], "reviewer_roles": ["dba"]}],
            "public_url": "https://pgwarden.example.com",
        },
    }, base_dir=base)
    store = ApiKeyStore(config.identity.api_keys_file)
    keys = {
        "alice": store.create("alice", ["developer"]),  # requester, reads nothing
        "bob": store.create("bob", ["reviewer"]),
        "carol": store.create("carol", ["reviewer"]),
        "erin": store.create("erin", ["reviewer", "developer"]),  # a reviewer who also makes requests
        "dana": store.create("dana", ["dba"]),
    }
    jwt = dev_issuer_for(config).mint("rita@example.com", groups=("reviewers",), ttl=600)
    return Env(config, keys, jwt, base / "approvals.sqlite")


def make_request(requester: str = "key:alice", *, required: int = 1, reviewer_roles=("reviewer",),
                 rule: str = "dev-writes", expires_in: float = 600.0) -> ApprovalRequest:
    now = time.time()
    params = ({"format": 0, "value": "42"},)
    return ApprovalRequest(
        id=new_request_id(), created_at=now, expires_at=now + expires_in, status="pending", mode="hold",
        requester=requester, requester_roles=("developer",), role="developer", target="shop", session="s-1",
        gateway="gw-1", statement=STATEMENT, params=params,
        fingerprint=fingerprint("shop", STATEMENT, [(0, b"42")]), rule=rule, reason="writes need review",
        policy="default", required=required, reviewer_roles=tuple(reviewer_roles),
    )


@dataclass
class Api:
    http: httpx.AsyncClient
    store: SqliteApprovalStore
    service: ApprovalService
    env: Env

    def auth(self, who: str) -> dict[str, str]:
        token = self.env.jwt if who == "rita" else self.env.keys[who]
        return {"Authorization": f"Bearer {token}"}

    async def add(self, request: ApprovalRequest) -> str:
        await self.store.create(request, chained=True)
        return request.id

    async def get(self, path: str, who: str | None = None, **kw) -> httpx.Response:
        return await self.http.get(path, headers=self.auth(who) if who else {}, **kw)

    async def post(self, path: str, who: str | None = None, **kw) -> httpx.Response:
        headers = {**(self.auth(who) if who else {}), **kw.pop("headers", {})}
        return await self.http.post(path, headers=headers, **kw)


@contextlib.asynccontextmanager
async def serving(env: Env, service_class=ApprovalService):
    store = SqliteApprovalStore(env.path)
    await store.open()
    service = service_class(env.config, store)
    server = ApiServer(build_app(service), "127.0.0.1", 0)
    await server.start()
    try:
        assert server.port != 0
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}", timeout=10) as http:
            yield Api(http, store, service, env)
    finally:
        await server.stop()
        await store.close()


def run(env: Env, scenario, service_class=ApprovalService) -> None:
    async def main() -> None:
        async with serving(env, service_class) as api:
            await scenario(api)

    asyncio.run(main())


def error_code(response: httpx.Response) -> str:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    return body["error"]["code"]


# ---------------------------------------------------------------- meta


def test_health_openapi_and_unknown_routes(env):
    async def scenario(api: Api) -> None:
        r = await api.get("/api/v1/health")
        assert (r.status_code, r.json()) == (200, {"status": "ok"})
        r = await api.get("/openapi.json")
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
        doc = r.json()
        assert doc["openapi"].startswith("3.1") and doc == OPENAPI
        app_paths = {route.path for route in build_app(api.service).routes if isinstance(route, Route)}
        assert app_paths == set(doc["paths"])
        assert doc["components"]["securitySchemes"]["bearer"] == {**doc["components"]["securitySchemes"]["bearer"],
                                                                  "type": "http", "scheme": "bearer"}
        assert "error" in doc["components"]["schemas"]["Error"]["properties"]
        assert doc["paths"]["/api/v1/approvals/{id}/approve"]["post"]["responses"]["409"]
        r = await api.get("/api/v1/nothing")
        assert r.status_code == 404 and error_code(r) == "not_found"
        r = await api.http.delete("/api/v1/approvals")
        assert r.status_code == 405 and error_code(r) == "method_not_allowed"

    run(env, scenario)


# ---------------------------------------------------------------- authentication


def test_401_without_or_with_a_bad_token_and_403_for_a_non_reviewer(env):
    async def scenario(api: Api) -> None:
        rid = await api.add(make_request())
        bad = [{}, {"Authorization": "Basic Ym9iOnB3"}, {"Authorization": "Bearer"},
               {"Authorization": "Bearer pgw_abcdefgh_" + "x" * 43}, {"Authorization": "Bearer eyJ.not.jwt"},
               {"Authorization": "Bearer " + api.env.keys["bob"][:-2] + "zz"}]
        for headers in bad:
            for method, path in (("GET", "/api/v1/approvals"), ("GET", f"/api/v1/approvals/{rid}"),
                                 ("POST", f"/api/v1/approvals/{rid}/approve")):
                r = await api.http.request(method, path, headers=headers)
                assert r.status_code == 401, (headers, path, r.text)
                assert r.headers["www-authenticate"].startswith("Bearer")
                assert error_code(r) == "unauthenticated"
                assert "rejected" not in r.text and "unknown" not in r.text  # no reason to probe with
        for method, path in (("GET", "/api/v1/approvals"), ("GET", f"/api/v1/approvals/{rid}"),
                             ("POST", f"/api/v1/approvals/{rid}/approve"), ("POST", f"/api/v1/approvals/{rid}/deny")):
            r = await api.http.request(method, path, headers=api.auth("alice"))
            assert r.status_code == 403 and error_code(r) == "not_reviewer", r.text
        assert (await api.service.get(rid)).status == "pending"

    run(env, scenario)


# ---------------------------------------------------------------- reading


def test_list_and_show(env):
    async def scenario(api: Api) -> None:
        first, second = await api.add(make_request()), await api.add(make_request(rule="drop-table"))
        r = await api.get("/api/v1/approvals", "bob")
        assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
        listed = r.json()["approvals"]
        ids = [a["id"] for a in listed]
        assert first in ids and second in ids and all(a["status"] == "pending" for a in listed)
        assert "links" not in listed[0] and listed[0]["statement"] == STATEMENT
        r = await api.get("/api/v1/approvals", "dana", params={"status": "all", "limit": 1})  # a policy's role
        assert r.status_code == 200 and len(r.json()["approvals"]) == 1
        r = await api.get("/api/v1/approvals", "bob", params={"status": "denied"})
        assert first not in [a["id"] for a in r.json()["approvals"]]
        r = await api.get(f"/api/v1/approvals/{first}", "rita")  # an access token works as well
        shown = r.json()
        assert r.status_code == 200 and shown["id"] == first and shown["requester"] == "key:alice"
        assert shown["links"] == {
            "show": f"https://pgwarden.example.com/api/v1/approvals/{first}",
            "approve": f"https://pgwarden.example.com/api/v1/approvals/{first}/approve",
            "deny": f"https://pgwarden.example.com/api/v1/approvals/{first}/deny",
        }
        assert {k: v for k, v in shown.items() if k != "links"} == (await api.service.get(first)).as_dict()
        r = await api.get(f"/api/v1/approvals/{first[:8].upper()}", "bob")  # a unique prefix
        assert r.status_code == 200 and r.json()["id"] == first
        for missing in ("0" * 12 if first != "0" * 12 else "1" * 12, "zz", "x" * 100):
            r = await api.get(f"/api/v1/approvals/{missing}", "bob")
            assert r.status_code == 404 and error_code(r) == "not_found"
        r = await api.get("/api/v1/approvals", "bob", params={"status": "bogus"})
        assert r.status_code == 400 and error_code(r) == "bad_status"
        r = await api.get("/api/v1/approvals", "bob", params={"limit": "lots"})
        assert r.status_code == 400 and error_code(r) == "bad_limit"

    run(env, scenario)


# ---------------------------------------------------------------- deciding


def test_approve_then_conflicts(env):
    async def scenario(api: Api) -> None:
        rid = await api.add(make_request())
        r = await api.post(f"/api/v1/approvals/{rid}/approve", "bob", json={"comment": "looks fine"})
        body = r.json()
        assert r.status_code == 200 and body["status"] == "approved" and body["links"]["approve"].endswith("/approve")
        assert [(d["reviewer"], d["action"], d["comment"], d["via"]) for d in body["decisions"]] == [
            ("key:bob", "approve", "looks fine", "api")]
        assert (await api.service.get(rid)).status == "approved"
        for who, action in (("carol", "approve"), ("bob", "approve"), ("carol", "deny")):
            r = await api.post(f"/api/v1/approvals/{rid}/{action}", who)
            assert r.status_code == 409 and error_code(r) == "not_pending", r.text
        r = await api.post("/api/v1/approvals/" + "f" * 12 + "/approve", "bob")
        assert r.status_code == 404 and error_code(r) == "not_found"

    run(env, scenario)


def test_deny_with_an_empty_body(env):
    async def scenario(api: Api) -> None:
        rid = await api.add(make_request())
        r = await api.post(f"/api/v1/approvals/{rid}/deny", "carol")
        assert r.status_code == 200 and r.json()["status"] == "denied"
        assert r.json()["decisions"][0]["comment"] == ""
        r = await api.get("/api/v1/approvals", "bob", params={"status": "denied"})
        assert rid in [a["id"] for a in r.json()["approvals"]]

    run(env, scenario)


def test_self_approval_wrong_reviewer_role_and_expired(env):
    async def scenario(api: Api) -> None:
        own = await api.add(make_request("key:erin"))
        r = await api.post(f"/api/v1/approvals/{own}/approve", "erin")
        assert r.status_code == 403 and error_code(r) == "self_approval"
        ddl = await api.add(make_request(reviewer_roles=("dba",), rule="drop-table"))
        r = await api.post(f"/api/v1/approvals/{ddl}/approve", "bob")
        assert r.status_code == 403 and error_code(r) == "not_reviewer"
        r = await api.post(f"/api/v1/approvals/{ddl}/approve", "dana")
        assert r.status_code == 200 and r.json()["status"] == "approved"
        old = await api.add(make_request(expires_in=-1.0))
        r = await api.post(f"/api/v1/approvals/{old}/approve", "bob")
        assert r.status_code == 409 and error_code(r) == "expired"
        assert (await api.service.get(own)).status == "pending"

    run(env, scenario)


def test_two_of_m(env):
    async def scenario(api: Api) -> None:
        rid = await api.add(make_request(required=2))
        r = await api.post(f"/api/v1/approvals/{rid}/approve", "bob", json={})
        assert r.status_code == 200 and r.json()["status"] == "pending" and len(r.json()["decisions"]) == 1
        r = await api.post(f"/api/v1/approvals/{rid}/approve", "bob")
        assert r.status_code == 409 and error_code(r) == "already_decided"
        r = await api.post(f"/api/v1/approvals/{rid}/approve", "rita", json={"comment": "second"})
        body = r.json()
        assert r.status_code == 200 and body["status"] == "approved" and body["valid_until"]
        assert [d["reviewer"] for d in body["decisions"]] == ["key:bob", "rita@example.com"]

    run(env, scenario)


def test_bad_bodies(env):
    async def scenario(api: Api) -> None:
        rid = await api.add(make_request())
        url = f"/api/v1/approvals/{rid}/approve"
        cases = [
            (b"not json", 400, "bad_request"),
            (b"[1, 2]", 400, "bad_request"),
            (b"\xff\xfe", 400, "bad_request"),
            (b"[" * 60000, 400, "bad_request"),  # nested past the recursion limit: a 400, not a 500
            (b'{"comment": 5}', 400, "bad_comment"),
            (b'{"comment": null}', 400, "bad_comment"),
            (b'{"comment": "' + b"x" * 2001 + b'"}', 400, "bad_comment"),
            (b'{"comment": "' + b"x" * (64 * 1024) + b'"}', 413, "too_large"),
        ]
        for content, status, code in cases:
            r = await api.post(url, "bob", content=content, headers={"Content-Type": "application/json"})
            assert (r.status_code, error_code(r)) == (status, code), content[:40]

        async def chunks():  # no Content-Length: the limit applies while reading
            for _ in range(80):
                yield b" " * 1024

        r = await api.post(url, "bob", content=chunks())
        assert r.status_code == 413 and error_code(r) == "too_large"
        assert (await api.service.get(rid)).status == "pending"
        r = await api.post(url, "bob", content=b"  \n")  # blank counts as empty
        assert r.status_code == 200 and r.json()["status"] == "approved"

    run(env, scenario)


class BrokenService(ApprovalService):
    async def list(self, status="pending", limit=100):
        raise RuntimeError("secret detail: password=hunter2")


def test_unexpected_errors_are_generic_and_logged(env, caplog):
    async def scenario(api: Api) -> None:
        with caplog.at_level(logging.ERROR, logger="pgwarden.api"):
            r = await api.get("/api/v1/approvals", "bob")
        assert r.status_code == 500 and error_code(r) == "internal"
        assert "hunter2" not in r.text and "Traceback" not in r.text
        assert any("hunter2" in (rec.exc_text or "") or rec.exc_info for rec in caplog.records)

    run(env, scenario, BrokenService)


def test_server_stops_and_frees_the_port(env):
    async def main() -> None:
        store = SqliteApprovalStore(env.path)
        await store.open()
        server = ApiServer(build_app(ApprovalService(env.config, store)), "127.0.0.1", 0)
        await server.start()
        port = server.port
        async with httpx.AsyncClient(timeout=5) as http:
            assert (await http.get(f"http://127.0.0.1:{port}/api/v1/health")).status_code == 200
            await server.stop()
            with pytest.raises(httpx.ConnectError):
                await http.get(f"http://127.0.0.1:{port}/api/v1/health")
        await server.stop()  # twice is fine
        again = ApiServer(build_app(ApprovalService(env.config, store)), "127.0.0.1", port)
        await again.start()  # the port is free again
        await again.stop()
        await store.close()

    asyncio.run(main())
