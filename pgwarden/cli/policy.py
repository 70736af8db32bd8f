"""``pgwarden policy check``: the guardrails' decision for a statement, without a database.

For policy authors ("what would happen if the agent ran this?") and for CI of
policies: ``--expect deny`` makes the exit status say whether the policy
still decides what it should.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from typing import Annotated, Optional

import typer
from rich.table import Table

from ..services.policy import PolicyInputError, check_statement
from .main import ConfigOption, fail, out, require_config
from .output import print_table

policy_app = typer.Typer(help="Guardrail policies: try statements against the config.", no_args_is_help=True)


@policy_app.command("check")
def check(
    sql: Annotated[str, typer.Argument(help="The SQL to check ('-' reads it from stdin).", show_default=False)],
    config: ConfigOption = None,
    role: Annotated[Optional[str], typer.Option("--role", "-r", help="Role the session acts as (none: a static user).")] = None,
    target: Annotated[Optional[str], typer.Option("--target", "-t", help="Target (default: the role's first).")] = None,
    identity: Annotated[Optional[str], typer.Option("--identity", help="Subject or user name, for `identities` rules.")] = None,
    search_path: Annotated[Optional[str], typer.Option("--search-path", help="The session's search_path.")] = None,
    at: Annotated[Optional[str], typer.Option("--at", help="Decide as of this ISO time (time-window rules).")] = None,
    expect: Annotated[Optional[str], typer.Option("--expect", help="allow|deny|review: exit 1 unless this is the decision.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the decision as JSON.")] = False,
) -> None:
    """Print the decision for SQL and the rule that made it.

    Exit status: 0 when the statement is allowed (or matches --expect), 1 when
    it is refused or needs review (or does not match --expect), 2 for bad input.
    """
    cfg = require_config(config)
    if sql == "-":
        sql = sys.stdin.read()
    if expect is not None and expect not in ("allow", "deny", "review"):
        fail("--expect must be allow, deny or review")
    when = None
    if at is not None:
        try:
            when = datetime.fromisoformat(at)
        except ValueError:
            fail(f"--at: not an ISO date-time: {at!r}")
        if when.tzinfo is None:  # type: ignore[union-attr]
            when = when.replace(tzinfo=timezone.utc)  # type: ignore[union-attr]
    try:
        result = check_statement(cfg, sql, role=role, target=target, identity=identity, search_path=search_path, at=when)
    except PolicyInputError as exc:
        fail(str(exc))
        return
    decision = result.decision
    if as_json:
        print(json.dumps(result.as_dict(), indent=2))
    else:
        colour = {"allow": "green", "deny": "red", "review": "yellow"}[decision.action]
        out.print(f"[bold {colour}]{decision.action.upper()}[/]  rule: {decision.rule or 'default'}", soft_wrap=True)
        if decision.message:
            out.print(f"  {decision.message}", soft_wrap=True)
        if decision.alerts:
            out.print(f"  alerts: {', '.join(decision.alerts)}", soft_wrap=True)
        if result.approval is not None:
            a = result.approval
            how = ("the session waits for the decision" if a["mode"] == "hold"
                   else "refused with PW001 and a request id; the exact retry runs once after approval")
            out.print(f"  approval: {a['mode']} mode ({how}); {a['approvals']} approval(s) from "
                      f"{', '.join(a['reviewer_roles'])}; policy {a['policy']}", soft_wrap=True)
        elif decision.action == "review":
            out.print("  approvals are not enabled: the gateway refuses it", soft_wrap=True)
        if result.analysis.statements:
            table = Table("#", "command", "class", "tables", "functions", "where", box=None)
            for index, facts in enumerate(result.analysis.statements, 1):
                table.add_row(
                    str(index),
                    facts.command,
                    facts.classification,
                    ", ".join(sorted(str(t) for t in facts.tables)) or "-",
                    ", ".join(sorted(str(f) for f in facts.functions)) or "-",
                    "-" if facts.has_where is None else ("yes" if facts.has_where else "NO"),
                )
            print_table(out, table)
        if result.masking_note:
            out.print(f"  {result.masking_note}", soft_wrap=True)
        if result.masking:
            table = Table("result", "column", "masking", "rule", "source", box=None)
            for entry in result.masking:
                table.add_row(str(entry["result"]), str(entry["column"]), str(entry["masking"]),
                              str(entry.get("rule", "-")), str(entry.get("source", "-")))
            out.print("Masking:")
            print_table(out, table)
    if expect is not None:
        raise typer.Exit(0 if decision.action == expect else 1)
    raise typer.Exit(0 if decision.action == "allow" else 1)
