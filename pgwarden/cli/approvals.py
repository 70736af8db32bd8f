"""``pgwarden approvals``: list, show, approve and deny just-in-time approval requests.

The commands open the approval tables next to the audit trail (the same
SQLite file or PostgreSQL database the gateway uses) and act through
:class:`~pgwarden.services.approvals.ApprovalService`, so the rules are the
API's. A running gateway sees a decision within ``approvals.poll_interval``
and writes it into the audit chain. ``--token`` (or ``PGWARDEN_TOKEN``) acts
as the token's identity; without it the command acts as the local admin.
"""

from __future__ import annotations

import asyncio
import json
from contextlib import asynccontextmanager
from typing import Annotated, Optional

import typer
from rich import box
from rich.table import Table

from ..services.approvals import ApprovalError, ApprovalService
from ..store import AuditStoreError
from ..store.approvals import ApprovalRequest, approval_store_for
from .main import ConfigOption, fail, out, require_config
from .output import print_table, utc

approvals_app = typer.Typer(help="Just-in-time approvals: list, show, approve, deny.", no_args_is_help=True)

TokenOption = Annotated[
    Optional[str],
    typer.Option("--token", envvar="PGWARDEN_TOKEN", help="Act as this access token's (or API key's) identity "
                 "instead of the local admin.", show_default=False),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON.")]


@asynccontextmanager
async def _service(cfg):
    if not cfg.approvals.enabled:
        fail("approvals are not enabled in this config (approvals.enabled: true)")
    store = approval_store_for(cfg)
    try:
        await store.open(create=False)
    except AuditStoreError as exc:
        fail(f"cannot open the approval store: {exc}", 1)
    try:
        yield ApprovalService(cfg, store)
    finally:
        await store.close()


def _run(coro):
    try:
        return asyncio.run(coro)
    except ApprovalError as exc:
        fail(exc.message, 1)
    except AuditStoreError as exc:
        fail(f"approval store: {exc}", 1)


def _status(status: str) -> str:
    colour = {"pending": "yellow", "approved": "green", "executed": "green", "denied": "red"}.get(status, "dim")
    return f"[{colour}]{status}[/]"


def _one_line(text: str, limit: int = 80) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


@approvals_app.command("list")
def list_requests(
    status: Annotated[str, typer.Option("--status", help="pending, approved, denied, expired, withdrawn, executed or all.")] = "pending",
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000)] = 50,
    as_json: JsonOption = False,
    config: ConfigOption = None,
) -> None:
    """Approval requests, newest first (pending ones by default)."""
    cfg = require_config(config)

    async def go():
        async with _service(cfg) as service:
            return await service.list(None if status == "all" else status, limit)

    requests: list[ApprovalRequest] = _run(go())
    if as_json:
        out.print_json(json.dumps([r.as_dict() for r in requests]))
        return
    if not requests:
        out.print(f"no {'' if status == 'all' else status + ' '}approval requests")
        return
    table = Table(box=box.SIMPLE_HEAD)
    for col in ("id", "status", "requested", "requester", "target", "rule", "approvals", "statement"):
        table.add_column(col, overflow="fold" if col == "statement" else "ellipsis")
    for r in requests:
        approvals = f"{len(set(r.approvers))}/{r.required}"
        table.add_row(r.id, _status(r.status), utc(r.created_at), r.requester, r.target, r.rule, approvals,
                      _one_line(r.statement))
    print_table(out, table)


@approvals_app.command("show")
def show(request_id: Annotated[str, typer.Argument(help="Request id (or a unique prefix).")],
         as_json: JsonOption = False, config: ConfigOption = None) -> None:
    """One request: who asked, what, why, and every decision."""
    cfg = require_config(config)

    async def go():
        async with _service(cfg) as service:
            return await service.get(request_id)

    r: ApprovalRequest = _run(go())
    if as_json:
        out.print_json(json.dumps(r.as_dict()))
        return
    out.print(f"[bold]request {r.id}[/]  {_status(r.status)}  ({r.mode} mode)")
    rows = [
        ("requested", f"{utc(r.created_at)} UTC by {r.requester}" + (f" (role {r.role})" if r.role else "")),
        ("target", r.target),
        ("session", r.session),
        ("rule", f"{r.rule}: {r.reason}" if r.reason else r.rule),
        ("fingerprint", r.fingerprint),
        ("needs", f"{r.required} approval(s) from {', '.join(r.reviewer_roles) or 'the local admin'}"),
        ("expires", f"{utc(r.expires_at)} UTC" if r.status == "pending" else "-"),
    ]
    if r.valid_until is not None and r.mode == "ticket":
        rows.append(("ticket valid until", f"{utc(r.valid_until)} UTC"))
    if r.closed_at is not None:
        rows.append((r.status, f"{utc(r.closed_at)} UTC by {r.closed_by or '-'}"
                     + (f" ({r.closed_reason})" if r.closed_reason else "")))
    for key, value in rows:
        out.print(f"  [dim]{key + ':':<19}[/] {value}", soft_wrap=True)
    out.print("  [dim]statement:[/]")
    out.print("    " + r.statement.replace("\n", "\n    "), soft_wrap=True, markup=False)
    if r.params:
        out.print("  [dim]parameters:[/] " + ", ".join(
            "NULL" if p.get("value") is None else repr(p.get("value")) for p in r.params), soft_wrap=True, markup=False)
    if r.decisions:
        out.print("  [dim]decisions:[/]")
        for d in r.decisions:
            colour = "green" if d.action == "approve" else "red"
            comment = f" — {d.comment}" if d.comment else ""
            out.print(f"    {utc(d.at)} UTC [{colour}]{d.action}[/] by {d.reviewer} via {d.via}{comment}", soft_wrap=True)


def _decide(action: str, request_id: str, comment: str, token: str | None, config) -> None:
    cfg = require_config(config)

    async def go():
        async with _service(cfg) as service:
            reviewer = await service.reviewer_for_token(token, via="cli") if token else service.local_admin()
            return reviewer, await service.decide(request_id, reviewer, action, comment)

    reviewer, r = _run(go())
    if action == "deny":
        out.print(f"request {r.id} [red]denied[/] by {reviewer.identity}")
    elif r.status == "approved":
        tail = ("the held statement runs now" if r.mode == "hold"
                else f"the requester may now run the statement once, until {utc(r.valid_until)} UTC")
        out.print(f"request {r.id} [green]approved[/] by {reviewer.identity}: {tail}")
    else:
        out.print(f"request {r.id}: approval by {reviewer.identity} recorded "
                  f"({len(set(r.approvers))} of {r.required} needed)")


@approvals_app.command("approve")
def approve(
    request_id: Annotated[str, typer.Argument(help="Request id (or a unique prefix).")],
    comment: Annotated[str, typer.Option("--comment", "-m", help="Why (kept in the audit trail).")] = "",
    token: TokenOption = None,
    config: ConfigOption = None,
) -> None:
    """Approve a request (never your own; some rules need several reviewers)."""
    _decide("approve", request_id, comment, token, config)


@approvals_app.command("deny")
def deny(
    request_id: Annotated[str, typer.Argument(help="Request id (or a unique prefix).")],
    comment: Annotated[str, typer.Option("--comment", "-m", help="Why (shown to the requester).")] = "",
    token: TokenOption = None,
    config: ConfigOption = None,
) -> None:
    """Deny a request: a held statement is refused at once, a ticket can no longer be used."""
    _decide("deny", request_id, comment, token, config)
