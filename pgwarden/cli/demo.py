"""``pgwarden demo``: the whole product on one machine with one command.

Starts an embedded PostgreSQL (pgserver) holding a fake-PII shop database,
writes a complete gateway config into the data directory, and serves it with
TLS on 127.0.0.1. A second run reuses the data, the certificate and the demo
password. Ctrl-C (or SIGTERM) drains the gateway, then stops PostgreSQL.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
import stat
from pathlib import Path
from typing import Annotated, Optional

import typer
import yaml

DEMO_USER = "demo"
DEMO_TARGET = "shop"
# (role, group claim that grants it, example subject)
DEMO_GROUPS = [("agent", "agents"), ("analyst", "analysts"), ("developer", "developers"), ("dba", "dbas")]
DEMO_SUBJECTS = {"agent": "mcp-agent", "analyst": "ana", "developer": "dev", "dba": "dba"}


def _default_data_dir() -> Path:
    import platformdirs

    return Path(platformdirs.user_cache_dir("pgwarden", appauthor=False)) / "demo"


def _traversable_by_others(path: Path) -> bool:
    for parent in [path, *path.parents]:
        if parent.exists() and not parent.stat().st_mode & stat.S_IXOTH:
            return False
    return True


def _pgdata_dir(data_dir: Path) -> Path:
    """Where the embedded cluster lives.

    As root, pgserver runs PostgreSQL as an unprivileged OS user and opens every
    parent folder of the data directory to it; under /root that would make
    /root readable by everyone, so the cluster goes to /var/lib/pgwarden instead.
    """
    if os.geteuid() == 0 and not _traversable_by_others(data_dir):
        digest = hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:10]
        return Path("/var/lib/pgwarden") / f"demo-{digest}" / "postgres"
    return data_dir / "postgres"


def _demo_password(data_dir: Path) -> str:
    path = data_dir / "demo-password"
    if path.exists():
        return path.read_text().strip()
    password = secrets.token_urlsafe(18)
    path.write_text(password + "\n")
    path.chmod(0o600)
    return password


# Masking (docs/masking.md): the sample schema's PII is redacted for agent, analyst and the
# static demo user, shown partially to developer, and in clear to dba. Card numbers become
# tokens (same card, same token: joins still work); SSNs and card numbers may not be used
# to filter (that would let a client test guesses); results computed from a card are refused.
DEMO_MASKING = {
    "unmasked_roles": ["dba"],
    "rules": [
        {"name": "email", "columns": ["customers.email"], "type": "email", "strategy": "redact",
         "roles": {"developer": "partial"}},
        {"name": "phone", "columns": ["customers.phone"], "type": "phone", "strategy": "redact",
         "roles": {"developer": "partial"}},
        {"name": "ssn", "columns": ["customers.ssn"], "type": "us_ssn", "strategy": "redact",
         "roles": {"developer": "partial"}, "filter": "refuse"},
        {"name": "card", "columns": ["customers.card_number"], "type": "credit_card", "strategy": "tokenize",
         "roles": {"developer": "partial"}, "derived": "refuse", "filter": "refuse"},
        {"name": "address", "columns": ["customers.street_address", "customers.date_of_birth"],
         "strategy": "redact", "roles": {"developer": "partial"}},
        {"name": "iban", "columns": ["payments.iban"], "type": "iban", "strategy": "redact",
         "roles": {"developer": "partial"}},
    ],
}


# Just-in-time approvals (docs/approvals.md): a developer's UPDATE, DELETE (and MERGE, which
# can do either) and DDL waits in the session until a dba approves it. The dangerous pack
# still comes first: DROP TABLE or a DELETE without WHERE is refused outright, never reviewed.
# INSERT and reads need no approval.
DEMO_REVIEW_RULES = [
    {"name": "review-developer-changes",
     "match": {"roles": ["developer"], "command": ["UPDATE", "DELETE", "MERGE"]}, "action": "review",
     "message": "a developer's UPDATE or DELETE needs a dba's approval"},
    {"name": "review-developer-ddl", "match": {"roles": ["developer"], "classification": ["ddl"]},
     "action": "review", "message": "a developer's schema change needs a dba's approval"},
]
DEMO_REVIEWER = ("dba", "dbas")  # (subject, group) of the reviewer token the demo suggests


def demo_api_port(port: int) -> int:
    """The reviewer API's port: the gateway's plus one (minus one at the top of the range)."""
    return port + 1 if port < 65535 else port - 1


def write_demo_config(data_dir: Path, target: dict, port: int, password: str) -> Path:
    """Write the demo's complete config file and return its path."""
    from ..certs import write_selfsigned
    from ..session.scram import make_verifier

    tls_dir = data_dir / "tls"
    if not (tls_dir / "server.crt").exists():
        write_selfsigned(tls_dir, overwrite=True)
    verifier_file = data_dir / "demo-verifier"
    if verifier_file.exists() and verifier_file.read_text().startswith("SCRAM-SHA-256$"):
        verifier = verifier_file.read_text().strip()
    else:
        verifier = make_verifier(password)
        verifier_file.write_text(verifier + "\n")
    config = {
        "listen": {
            "host": "127.0.0.1",
            "port": port,
            "tls": {"mode": "require", "cert": str(tls_dir / "server.crt"), "key": str(tls_dir / "server.key")},
            "shutdown_grace": 5,
        },
        "logging": {"level": "info", "format": "text", "statements": True},
        "targets": {
            DEMO_TARGET: {
                "host": str(target["host"]),
                "port": int(target["port"]),
                "database": target["database"],
                "user": target["user"],
                "sslmode": "disable",
            }
        },
        "users": [{"name": DEMO_USER, "scram_verifier": verifier, "targets": [DEMO_TARGET]}],
        # Identities: tokens from the built-in dev issuer (`pgwarden token mint`).
        "identity": {"dev_issuer": {"enabled": True, "key_file": "dev-issuer.key"}},
        "roles": {
            # agent: read-only, with both guardrail packs (docs/guardrails.md).
            "agent": {"targets": [DEMO_TARGET], "access": "read", "max_session": 8 * 3600,
                      "guardrails": {"packs": ["dangerous", "read-only"]}},
            "analyst": {"targets": [DEMO_TARGET], "access": "read"},
            # developer: may write, but the dangerous pack refuses DROP, TRUNCATE, unbounded DELETE...
            "developer": {"targets": [DEMO_TARGET], "access": "write", "guardrails": {"packs": ["dangerous"]}},
            # dba: no packs; every statement is still parsed, checked against the rules and logged.
            "dba": {"targets": [DEMO_TARGET], "access": "admin", "guardrails": {"packs": []}},
        },
        "guardrails": {
            "packs": ["dangerous"],  # for the static demo user
            "rules": [
                {"name": "watch-payments", "match": {"tables": "payments"}, "action": "alert"},
                *DEMO_REVIEW_RULES,
            ],
        },
        "role_bindings": [{"role": role, "match": {"groups": group}} for role, group in DEMO_GROUPS],
        "masking": DEMO_MASKING,
        # A held statement waits up to 10 minutes for a dba (`pgwarden approvals`, or the API).
        "approvals": {"enabled": True, "mode": "hold", "reviewer_roles": ["dba"]},
        "api": {"enabled": True, "host": "127.0.0.1", "port": demo_api_port(port)},
        "data_dir": str(data_dir),
    }
    path = data_dir / "pgwarden.yaml"
    header = (
        "# Written by `pgwarden demo` on every start (the socket directory may change).\n"
        "# Every key is documented in docs/configuration.md.\n"
    )
    path.write_text(header + yaml.safe_dump(config, sort_keys=False))
    return path


def register(app: typer.Typer) -> None:
    @app.command()
    def demo(
        data_dir: Annotated[
            Optional[Path], typer.Option("--data-dir", help="Where the demo keeps its data (default: user cache dir).")
        ] = None,
        port: Annotated[int, typer.Option("--port", min=1, max=65535, help="Gateway port on 127.0.0.1.")] = 6432,
        config: Annotated[
            Optional[Path], typer.Option("--config", "-c", help="Ignored by the demo: it writes its own config.")
        ] = None,
    ) -> None:
        """Start an embedded PostgreSQL with sample PII data behind the gateway."""
        from ..config import load_config
        from ..demo import start_embedded_postgres
        from ..logs import setup_logging
        from ..server.gateway import install_uvloop, run
        from .main import fail, out

        data_dir = (data_dir or _default_data_dir()).expanduser().resolve()
        data_dir.mkdir(parents=True, exist_ok=True)
        pgdata = _pgdata_dir(data_dir)
        pgdata.parent.mkdir(parents=True, exist_ok=True)
        out.print(f"Starting embedded PostgreSQL in {pgdata} …")
        try:
            pg = start_embedded_postgres(pgdata)
        except Exception as exc:  # pgserver reports many kinds of failure
            fail(f"could not start the embedded PostgreSQL: {exc}", 1)
        try:
            password = _demo_password(data_dir)
            config_path = write_demo_config(data_dir, pg.upstream_target(), port, password)
            cfg = load_config(config_path)
            setup_logging(cfg.logging.level, cfg.logging.format, cfg.logging.file)
            uri = f"postgresql://{DEMO_USER}:{password}@127.0.0.1:{port}/{DEMO_TARGET}?sslmode=require"

            def ready(gateway) -> None:
                state = "loaded sample data" if pg.freshly_loaded else "reused existing data"
                out.print(f"\npgwarden demo is running ({state}).")
                out.print(f"Config: {config_path}")
                out.print("Connect with psql (or any client) using this URI:\n")
                print(uri, flush=True)
                out.print("\nTry:  SELECT full_name, email, ssn FROM customers LIMIT 5;")
                out.print(
                    "\nIdentities: log in with an access token as the password. Mint one per role"
                    " (agent and analyst are read-only, developer writes, dba is admin):"
                )
                for role, group in DEMO_GROUPS:
                    sub = DEMO_SUBJECTS[role]
                    out.print(
                        f"  {role:<9} PGPASSWORD=$(pgwarden token mint --config {config_path} --sub {sub} --groups {group})"
                        f" psql 'host=127.0.0.1 port={port} dbname={DEMO_TARGET} user={sub} sslmode=require'",
                        soft_wrap=True,
                    )
                out.print(
                    "\nGuardrails: as agent, try  COMMIT; DROP TABLE customers;  or"
                    "  SELECT * FROM pg_read_file('/etc/passwd');  (both refused, the session stays usable)."
                )
                out.print(
                    f"Ask the policy without a database:  pgwarden policy check --config {config_path}"
                    " --role developer \"DELETE FROM orders\"",
                    soft_wrap=True,
                )
                out.print(
                    "\nMasking: emails, phones, SSNs, card numbers, addresses and IBANs are redacted for agent,"
                    " analyst and you (cards as tokens), partial for developer, clear for dba. Compare"
                    " SELECT email, ssn, card_number FROM customers LIMIT 3; across roles, and ask:"
                    f"\n  pgwarden policy check --config {config_path} --role agent"
                    " \"SELECT lower(email), ssn FROM customers\"",
                    soft_wrap=True,
                )
                broker = getattr(gateway, "approvals", None)
                api = gateway.api.url if getattr(gateway, "api", None) is not None else None
                if broker is not None:
                    sub, group = DEMO_REVIEWER
                    out.print(
                        "\nApprovals: as developer, UPDATE, DELETE and schema changes wait for a dba. Run"
                        "\n  UPDATE orders SET status = 'refunded' WHERE id = 1;"
                        "\npsql prints a NOTICE with the request id and waits. In another terminal:"
                        f"\n  pgwarden approvals list --config {config_path}"
                        f"\n  pgwarden approvals approve <id> --config {config_path}"
                        f" --token $(pgwarden token mint --config {config_path} --sub {sub} --groups {group})"
                        "\nand the UPDATE completes (approvals deny <id> -m 'why' refuses it instead)."
                        + (f"\nReviewer API: {api}/api/v1/approvals (bearer token; description at {api}/openapi.json)"
                           if api else ""),
                        soft_wrap=True,
                    )
                if api is not None:
                    out.print(f"\nMonitoring: {api}/metrics (Prometheus) and {api}/health (readiness).",
                              soft_wrap=True)
                if getattr(gateway, "alerts", None) is not None:
                    out.print(
                        "Alerts: refusals, flagged rules (watch-payments), failed logins and approvals show up"
                        " below as ALERT lines and in the audit trail. The demo rewrites its config on every"
                        " start: to try webhook or syslog sinks (docs/alerts.md), copy it, add alerts.sinks, set"
                        " free listen.port and api.port and its own data_dir (the SQLite trail takes one"
                        " gateway), and run  pgwarden serve --config <copy>  while the demo runs; check the"
                        " sinks with  pgwarden alerts test --config <copy>.",
                        soft_wrap=True,
                    )
                if gateway.audit_writer is not None:
                    out.print(
                        f"\nRecording: every session goes to the audit trail in {cfg.audit.store.path}."
                        f"\n  pgwarden sessions list --config {config_path}"
                        f"\n  pgwarden sessions replay --config {config_path} <session id>"
                        f"\n  pgwarden audit verify --config {config_path}"
                        f"\nEvidence: a NIST SP 800-53 report from that trail, one HTML file to open in a browser:"
                        f"\n  pgwarden evidence --config {config_path} --out pgwarden-evidence.html",
                        soft_wrap=True,
                    )
                out.print("\nPress Ctrl-C to stop.\n")

            install_uvloop()
            try:
                asyncio.run(run(cfg, ready=ready))
            except OSError as exc:
                fail(
                    f"cannot listen on 127.0.0.1:{port} (gateway) or {demo_api_port(port)} (HTTP API): "
                    f"{exc.strerror or exc} (choose another with --port)",
                    1,
                )
        finally:
            pg.stop()
            out.print("Stopped.")
