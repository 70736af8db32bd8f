"""A masking test environment: a database of customers with known secrets, a gateway
whose masking rules cover them, and dev-issuer tokens for four roles.

Shared by tests/test_masking_gateway.py and tests/test_masking_corpus.py. The
secrets are fixed so that a test can search every value a client received for
them (``SECRETS``): whatever the statement, none may appear for a masked role.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

import psycopg

from pgwarden.config import parse_config
from pgwarden.identity.login import dev_issuer_for
from pgwarden.testing.gateway import RunningGateway

DB = "maskdb"
TARGET = "mask"

CUSTOMERS = [
    # id, full_name, email, phone, ssn, card_number, balance, age, note
    (1, "Alice Archer", "alice.archer@example.com", "+1 415-555-0101", "123-45-6789", "4111111111111111",
     "1200.50", 34, "prefers email"),
    (2, "Bob Brown", "bob.brown@corp.example.org", "+1 212-555-0199", "234-56-7891", "5500005555555559",
     "80.00", 51, "vip"),
    (3, "Carol Chen", "carol@example.net", "+44 20 7946 0958", "345-67-8912", "340000000000009",
     "0.00", 27, "call after 5pm"),
]

#: What no masked role may ever see, in any form a client could parse out.
SECRETS = [c[2] for c in CUSTOMERS] + [c[4] for c in CUSTOMERS] + [c[5] for c in CUSTOMERS]
SSN_DIGITS = [c[4].replace("-", "") for c in CUSTOMERS]

SCHEMA_SQL = """
DROP SCHEMA IF EXISTS public CASCADE;
CREATE SCHEMA public AUTHORIZATION app;
GRANT USAGE ON SCHEMA public TO PUBLIC;
SET ROLE app;
CREATE TABLE public.customers (
    id int PRIMARY KEY, full_name text NOT NULL, email text NOT NULL, phone text, ssn text NOT NULL,
    card_number varchar(19) NOT NULL, balance numeric(10,2), age int, note text
);
CREATE TABLE public.orders (id int PRIMARY KEY, customer_id int REFERENCES customers, total numeric(10,2));
CREATE VIEW public.customer_contacts AS SELECT id, email, lower(email) AS email_lower, full_name FROM customers;
CREATE FUNCTION public.notes_with_contact() RETURNS SETOF text LANGUAGE sql STABLE
    AS $$ SELECT note || ' (' || email || ')' FROM customers ORDER BY id $$;
CREATE FUNCTION public.shout(t text) RETURNS void LANGUAGE plpgsql AS $$ BEGIN RAISE NOTICE 'value: %', t; END $$;
"""

MASKING = {
    "unmasked_roles": ["dba"],
    "rules": [
        {"name": "email", "columns": ["public.customers.email"], "type": "email", "strategy": "redact",
         "roles": {"developer": "partial"}},
        {"name": "ssn", "columns": ["*.ssn"], "type": "us_ssn", "strategy": "redact",
         "roles": {"developer": "partial"}, "filter": "refuse"},
        {"name": "card", "columns": ["customers.card_number"], "type": "credit_card", "strategy": "tokenize",
         "roles": {"developer": "partial"}, "derived": "refuse", "copy": "refuse"},
        {"name": "phone", "columns": ["customers.phone"], "type": "phone", "strategy": "partial"},
        {"name": "money", "columns": ["customers.balance", "customers.age"], "strategy": "redact",
         "roles": {"developer": "none"}},
    ],
}

ROLES = {
    "agent": {"targets": [TARGET], "access": "read", "guardrails": {"packs": ["dangerous", "read-only"]}},
    "analyst": {"targets": [TARGET], "access": "read"},
    "developer": {"targets": [TARGET], "access": "write", "guardrails": {"packs": ["dangerous"]}},
    "dba": {"targets": [TARGET], "access": "admin", "guardrails": {"packs": []}},
}


def reset_database(pg) -> None:
    if pg.psql(f"SELECT 1 FROM pg_database WHERE datname = '{DB}'") != "1":
        pg.psql(f"CREATE DATABASE {DB} OWNER app")
    with psycopg.connect(pg.dsn("postgres", DB), autocommit=True) as admin:
        admin.execute(SCHEMA_SQL)
        with admin.cursor() as cur:
            cur.executemany("INSERT INTO public.customers VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)", CUSTOMERS)
            cur.execute("INSERT INTO public.orders VALUES (1, 1, 10.00), (2, 1, 20.00), (3, 2, 5.00)")
        admin.execute("ANALYZE public.customers")


def config_data(pg, data_dir: Path, *, audit: bool = False, masking: dict | None = None) -> dict:
    return {
        "listen": {"host": "127.0.0.1", "port": 0, "shutdown_grace": 2, "tls": {"mode": "disable"},
                   "allow_cleartext_password_loopback": True},
        "logging": {"level": "info", "statements": False},
        "targets": {TARGET: {"host": pg.host, "port": pg.port, "database": DB, "user": "app",
                             "password": pg.passwords["app"], "sslmode": "disable"}},
        "identity": {"dev_issuer": {"enabled": True}},
        "roles": ROLES,
        "role_bindings": [{"role": r, "match": {"groups": f"mask-{r}s"}} for r in ROLES],
        "masking": MASKING if masking is None else masking,
        "audit": {"enabled": audit},
        "data_dir": str(data_dir),
    }


@contextlib.contextmanager
def masking_gateway(pg, data_dir: Path, *, audit: bool = False, masking: dict | None = None):
    reset_database(pg)
    config = parse_config(config_data(pg, data_dir, audit=audit, masking=masking))
    with RunningGateway(config) as gw:
        yield Env(gw, config)


class Env:
    def __init__(self, gw: RunningGateway, config) -> None:
        self.gw = gw
        self.config = config
        self.issuer = dev_issuer_for(config)

    def token(self, role: str) -> str:
        return self.issuer.mint(f"mask-{role}", groups=(f"mask-{role}s",), ttl=600)

    def dsn(self, role: str) -> str:
        return self.gw.dsn(f"mask-{role}", self.token(role), database=TARGET, sslmode="disable")

    def connect(self, role: str, **kw) -> psycopg.Connection:
        kw.setdefault("autocommit", True)
        return psycopg.connect(self.dsn(role), **kw)

    def asyncpg_args(self, role: str) -> dict:
        return {"host": "127.0.0.1", "port": self.gw.port, "user": f"mask-{role}", "password": self.token(role),
                "database": TARGET, "ssl": False}


def leaks(values, *, partial_ok: bool = False) -> list[str]:
    """The secrets found in ``values`` (any nesting of rows, strings, bytes, numbers)."""
    found: list[str] = []
    for text in _texts(values):
        for secret in SECRETS:
            if secret in text:
                found.append(secret)
        digits = re.sub(r"\D", "", text)
        for ssn in SSN_DIGITS:
            if ssn in digits:
                found.append(ssn)
    return found


def _texts(value):
    if value is None:
        return
    if isinstance(value, (list, tuple, set)):
        for item in value:
            yield from _texts(item)
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _texts(k)
            yield from _texts(v)
    elif isinstance(value, (bytes, bytearray, memoryview)):
        yield bytes(value).decode("utf-8", "replace")
    else:
        yield str(value)
