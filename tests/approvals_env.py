"""A gateway with just-in-time approvals for the end-to-end tests, and helpers a reviewer uses.

Requesters and reviewers are real identities: the static SCRAM user ``alice``
(no role) and pgwarden API keys with the roles ``developer`` and ``dba``.
Each guardrail rule below reviews one table, so each test owns its table and
its approval policy: hold (default), ticket, two reviewers, a one-second
timeout.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pgwarden.config import Config, parse_config
from pgwarden.identity.apikeys import ApiKeyStore
from pgwarden.services.approvals import ApprovalService
from pgwarden.store.approvals import ApprovalRequest, Reviewer, approval_store_for
from pgwarden.store.sqlite import SqliteAuditStore
from pgwarden.testing.gateway import RunningGateway

from conftest import GW_PASSWORD, GW_USER

TABLES = ("hold_items", "ticket_items", "two_items", "short_items", "many_items", "expiry_items")

SETUP_SQL = "drop schema if exists ap cascade; create schema ap authorization app;" + "".join(
    f"create table ap.{t} (id int primary key, name text); insert into ap.{t} values (1, 'a'), (2, 'b');"
    f"alter table ap.{t} owner to app;"
    for t in TABLES
)


def config_data(pg, data_dir: Path, users: list[dict], **approvals: Any) -> dict:
    rules = [
        {"name": f"review-{t}", "match": {"tables": f"ap.{t}", "command": ["UPDATE", "DELETE", "INSERT"]},
         "action": "review", "message": f"changes to ap.{t} need a second pair of eyes"}
        for t in TABLES
    ]
    settings = {
        "enabled": True,
        "reviewer_roles": ["dba"],
        "poll_interval": 0.05,
        "max_pending_per_requester": 25,
        "policies": [
            {"name": "tickets", "rules": ["review-ticket_items"], "mode": "ticket", "validity": "1h", "timeout": "1h"},
            {"name": "two-person", "rules": ["review-two_items"], "approvals": 2},
            {"name": "short", "rules": ["review-short_items"], "timeout": 1},
            {"name": "short-tickets", "rules": ["review-expiry_items"], "mode": "ticket", "validity": 1},
        ],
    }
    settings.update(approvals)
    return {
        "listen": {"host": "127.0.0.1", "port": 0, "tls": {"mode": "disable"},
                   "allow_cleartext_password_loopback": True, "shutdown_grace": 2},
        "logging": {"level": "info"},
        "targets": {"app": {"host": pg.host, "port": pg.port, "database": "appdb", "user": "app",
                            "password": pg.passwords["app"]}},
        "users": users,
        "data_dir": str(data_dir),
        "roles": {"developer": {"targets": ["app"], "access": "write"},
                  "dba": {"targets": ["app"], "access": "admin"}},
        "guardrails": {"rules": rules},
        "approvals": settings,
    }


class ApprovalsEnv:
    """The running gateway, its config, API keys, and a reviewer's view of the approval store."""

    def __init__(self, gw: RunningGateway, config: Config, data: dict, data_dir: Path) -> None:
        self.gw = gw
        self.config = config
        self.data = data
        self.data_dir = data_dir
        self.keys = ApiKeyStore(config.identity.api_keys_file)
        self.config_file = data_dir / "pgwarden.yaml"
        self.config_file.write_text(json.dumps(data))

    def key(self, name: str, roles: list[str]) -> str:
        try:
            return self.keys.create(name, roles)
        except Exception:
            self.keys.revoke(name)
            raise

    # -------------------------------------------------------- the reviewer's side (like the CLI)

    def _run(self, fn):
        async def go():
            store = approval_store_for(self.config)
            await store.open(create=False)
            try:
                return await fn(ApprovalService(self.config, store))
            finally:
                await store.close()

        return asyncio.run(go())

    def requests(self, status: str | None = None) -> list[ApprovalRequest]:
        return self._run(lambda s: s.list(status, 1000))

    def get(self, request_id: str) -> ApprovalRequest:
        return self._run(lambda s: s.get(request_id))

    def wait_for(self, predicate, what: str, timeout: float = 20.0) -> ApprovalRequest:
        """The first request ``predicate`` accepts, polled until ``timeout`` (a deadline, not an assertion of speed)."""
        deadline = time.monotonic() + timeout
        while True:
            for request in self.requests():
                if predicate(request):
                    return request
            if time.monotonic() > deadline:
                pytest.fail(f"no approval request {what}")
            time.sleep(0.05)

    def pending_on(self, table: str, *, requester: str | None = None, exclude: set[str] = frozenset()) -> ApprovalRequest:
        return self.wait_for(
            lambda r: r.status == "pending" and f"ap.{table}" in r.statement and r.id not in exclude
            and (requester is None or r.requester == requester),
            f"pending on ap.{table}",
        )

    def decide(self, request_id: str, action: str, reviewer: Reviewer | None = None, comment: str = "",
               token: str | None = None) -> ApprovalRequest:
        async def go(service: ApprovalService):
            who = reviewer
            if who is None:
                who = await service.reviewer_for_token(token, via="cli") if token else service.local_admin()
            return await service.decide(request_id, who, action, comment)

        return self._run(go)

    # -------------------------------------------------------- the trail

    def records(self) -> list[dict]:
        if self.gw.loop is not None and not self.gw.loop.is_closed():
            self.gw.call(self.gw.gateway.audit_writer.flush)
        store = SqliteAuditStore(self.data_dir / "audit.sqlite")
        store.open_sync(create=False)

        async def collect():
            try:
                return [r.body async for r in store.records()]
            finally:
                await store.close()

        return [json.loads(b) for b in asyncio.run(collect())]

    def wait_records(self, predicate, what: str, timeout: float = 20.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while True:
            found = [r for r in self.records() if predicate(r)]
            if found:
                return found
            if time.monotonic() > deadline:
                pytest.fail(f"no audit record {what}")
            time.sleep(0.05)


def start_env(pg, data_dir: Path, users: list[dict], extra: dict | None = None,
              **approvals: Any) -> tuple[RunningGateway, ApprovalsEnv]:
    data_dir.mkdir(parents=True, exist_ok=True)
    data = config_data(pg, data_dir, users, **approvals)
    data.update(extra or {})
    config = parse_config(data, base_dir=data_dir)
    gw = RunningGateway(config)
    gw.__enter__()
    return gw, ApprovalsEnv(gw, config, data, data_dir)


# ---------------------------------------------------------------- clients


def alice(env, **kw):
    return psycopg.connect(env.gw.dsn(GW_USER, GW_PASSWORD, sslmode="disable"), autocommit=True, **kw)


def as_key(env, key: str, **kw):
    return psycopg.connect(env.gw.dsn("svc", key, sslmode="disable"), autocommit=True, **kw)


def value(pg, table: str, row: int) -> str:
    return pg.psql(f"select name from ap.{table} where id = {row}", database="appdb").strip()


class Client(threading.Thread):
    """Runs ``fn`` in a thread, keeping its result or exception (the client blocks while held)."""

    def __init__(self, fn) -> None:
        super().__init__(daemon=True)
        self.fn = fn
        self.result = None
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            self.result = self.fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            self.error = exc

    def outcome(self, timeout: float = 30.0):
        self.join(timeout)
        assert not self.is_alive(), "the client is still blocked"
        return self.result, self.error


def wait_until(predicate, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def ticket_refusal(conn, sql, params=None) -> str:
    with pytest.raises(psycopg.Error) as info:
        conn.execute(sql, params)
    assert info.value.sqlstate == "PW001", info.value
    return info.value.diag.message_primary


def request_id_of(message: str) -> str:
    return message.split("request ", 1)[1].split()[0]
