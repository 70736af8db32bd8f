"""``pgwarden keys``: API keys issued by pgwarden for systems with no identity provider."""

from __future__ import annotations

import sqlite3
import time
from typing import Annotated, Optional

import typer
from rich import box
from rich.table import Table

from .main import ConfigOption, err, fail, out, parse_duration, require_config
from .output import print_table, utc


def _utc_min(ts: float | None) -> str:
    return utc(ts, seconds=False)

keys_app = typer.Typer(help="API keys issued by pgwarden (for systems with no identity provider).", no_args_is_help=True)


def _store(config):
    from ..identity.apikeys import ApiKeyStore

    return ApiKeyStore(config.identity.api_keys_file)


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option("--name", help="A unique name for the key (who or what uses it).")],
    roles: Annotated[str, typer.Option("--roles", help="Comma-separated roles from the config's `roles`.")],
    ttl: Annotated[
        Optional[str], typer.Option("--ttl", help="Lifetime: seconds or 15m / 8h / 30d (default: no expiry).")
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Create a key and print it once (only its hash is stored)."""
    cfg = require_config(config)
    role_list = [r.strip() for r in roles.split(",") if r.strip()]
    if not role_list:
        fail("--roles needs at least one role")
    unknown = [r for r in role_list if r not in cfg.roles]
    if unknown:
        known = ", ".join(cfg.roles) or "none configured"
        fail(f"unknown role(s) {', '.join(unknown)} (configured roles: {known})")
    seconds = None
    if ttl is not None:
        seconds = parse_duration(ttl)
        if seconds <= 0:
            fail("--ttl must be positive")
    try:
        key = _store(cfg).create(name, role_list, ttl_seconds=seconds)
    except ValueError as exc:
        fail(str(exc))
    except (OSError, sqlite3.Error) as exc:
        fail(f"cannot write {cfg.identity.api_keys_file}: {exc}", 1)
    print(key)
    err.print("This key is not shown again; store it now.", soft_wrap=True)


@keys_app.command("list")
def keys_list(config: ConfigOption = None) -> None:
    """List keys (names, roles, lifetimes; never secrets)."""
    cfg = require_config(config)
    try:
        keys = _store(cfg).list()
    except (OSError, sqlite3.Error) as exc:
        fail(f"cannot read {cfg.identity.api_keys_file}: {exc}", 1)
    if not keys:
        out.print("no API keys")
        return
    now = time.time()
    table = Table(caption="times in UTC", box=box.SIMPLE_HEAD)
    for column in ("name", "roles", "created", "expires", "revoked"):
        table.add_column(column, no_wrap=column != "roles", min_width=16 if column == "roles" else None)
    for k in keys:
        expires = _utc_min(k.expires_at) + (" (expired)" if k.expired(now) else "")
        table.add_row(k.name, ", ".join(k.roles), _utc_min(k.created_at), expires, _utc_min(k.revoked_at))
    print_table(out, table)


@keys_app.command("revoke")
def keys_revoke(
    name: Annotated[str, typer.Argument(help="The key's name.")],
    config: ConfigOption = None,
) -> None:
    """Revoke a key: new logins with it are refused."""
    cfg = require_config(config)
    try:
        revoked = _store(cfg).revoke(name)
    except (OSError, sqlite3.Error) as exc:
        fail(f"cannot write {cfg.identity.api_keys_file}: {exc}", 1)
    if not revoked:
        fail(f"no active API key named {name!r}")
    out.print(f"revoked API key {name!r}")
