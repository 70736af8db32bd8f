"""``pgwarden revoke`` and ``pgwarden sessions``: the file-based control plane.

They write to the control store in the data dir (``identity.control_file``);
a running gateway polls it twice a second and applies what it finds.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Annotated, Optional

import typer
from rich import box
from rich.table import Table

from .output import print_table, utc

from .main import ConfigOption, fail, out, require_config

sessions_app = typer.Typer(help="Sessions: recorded (list, show, replay) and live (list --live, kill).", no_args_is_help=True)


def _control(config):
    from ..identity.control import ControlStore

    return ControlStore(config.identity.control_file)


def revoke(
    subject: Annotated[
        Optional[str], typer.Option("--subject", help="The subject to revoke (a token's `sub`).", show_default=False)
    ] = None,
    key: Annotated[
        Optional[str], typer.Option("--key", help="An API key's name (revokes the key and subject key:NAME).",
                                    show_default=False)
    ] = None,
    reason: Annotated[str, typer.Option("--reason", help="Why (kept with the revocation).")] = "",
    config: ConfigOption = None,
) -> None:
    """Revoke a subject or an API key: new logins are refused and live sessions end at once."""
    if (subject is None) == (key is None):
        fail("give exactly one of --subject S or --key NAME")
    cfg = require_config(config)
    target = subject if subject is not None else f"key:{key}"
    if not target.strip():
        fail("the subject is empty")
    key_revoked = False
    if key is not None:
        from ..identity.apikeys import ApiKeyStore

        keys = ApiKeyStore(cfg.identity.api_keys_file)
        try:
            if not any(k.name == key for k in keys.list()):
                fail(f"no API key named {key!r}")
            key_revoked = keys.revoke(key)
        except (OSError, sqlite3.Error) as exc:
            fail(f"cannot write {cfg.identity.api_keys_file}: {exc}", 1)
    try:
        new = _control(cfg).revoke(target, reason)
    except (OSError, sqlite3.Error) as exc:
        fail(f"cannot write {cfg.identity.control_file}: {exc}", 1)
    what = f"API key {key!r}" if key is not None else f"subject {target!r}"
    if new or key_revoked:
        out.print(f"revoked {what}; its live sessions end within a second")
    else:
        out.print(f"{what} was already revoked")


@sessions_app.command("list")
def sessions_list(
    live: Annotated[bool, typer.Option("--live", help="Sessions connected now (control plane) instead of recorded ones.")] = False,
    identity: Annotated[Optional[str], typer.Option(
        "--identity", help="Recorded: subject or user name (glob).", show_default=False)] = None,
    role: Annotated[Optional[str], typer.Option("--role", help="Recorded: sessions with this role (glob).", show_default=False)] = None,
    target: Annotated[Optional[str], typer.Option("--target", help="Recorded: sessions to this target.", show_default=False)] = None,
    since: Annotated[Optional[str], typer.Option(
        "--since", help="Recorded: started at or after (ISO time, or 1h / 2d ago).", show_default=False)] = None,
    until: Annotated[Optional[str], typer.Option(
        "--until", help="Recorded: started before (ISO time, or 1h / 2d ago).", show_default=False)] = None,
    refused: Annotated[bool, typer.Option("--refused", help="Recorded: only sessions with refused statements.")] = False,
    masked: Annotated[bool, typer.Option("--masked", help="Recorded: only sessions where data was masked.")] = False,
    limit: Annotated[int, typer.Option("--limit", min=1, help="Recorded: at most this many, newest first.")] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON array, for scripts.")] = False,
    config: ConfigOption = None,
) -> None:
    """Recorded sessions from the audit trail (newest first), or with --live who is connected now."""
    cfg = require_config(config)
    if not live:
        from .sessions import list_recorded

        list_recorded(cfg, identity=identity, role=role, target=target, since=since, until=until,
                      refused=refused, masked=masked, limit=limit, as_json=as_json)
        return
    if any(v is not None for v in (identity, role, target, since, until)) or refused or masked:
        fail("the filters apply to recorded sessions; drop --live to use them")
    try:
        sessions = _control(cfg).live_sessions()
    except (OSError, sqlite3.Error) as exc:
        fail(f"cannot read {cfg.identity.control_file}: {exc}", 1)
    if as_json:
        print(json.dumps([s.as_dict() for s in sessions], indent=2))
        return
    if not sessions:
        out.print("no live sessions")
        return
    table = Table(caption="times in UTC", box=box.SIMPLE_HEAD)
    for column in ("id", "subject", "user", "target", "client", "auth", "since"):
        table.add_column(column, no_wrap=True)
    for s in sessions:
        table.add_row(s.id, s.subject, s.user, s.target, s.client, s.auth, utc(s.since))
    print_table(out, table)


@sessions_app.command("kill")
def sessions_kill(
    session_id: Annotated[str, typer.Argument(help="The session's id (from `pgwarden sessions list --live`).")],
    config: ConfigOption = None,
) -> None:
    """End a live session (its client gets FATAL 57P01)."""
    cfg = require_config(config)
    try:
        requested = _control(cfg).request_kill(session_id)
    except (OSError, sqlite3.Error) as exc:
        fail(f"cannot write {cfg.identity.control_file}: {exc}", 1)
    if not requested:
        fail(f"no live session {session_id!r}")
    out.print(f"session {session_id} will be terminated within a second")
