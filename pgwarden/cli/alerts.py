"""``pgwarden alerts test``: does each configured alert sink really deliver?

Exit status: 0 when every tested sink delivered, 1 when one failed (or gave no
answer in time), 2 for bad input (no config, an unknown sink name).
"""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Optional

import typer
from rich import box
from rich.table import Table

from ..services.alerts import AlertsServiceError, send_test_alert
from .main import ConfigOption, fail, out, require_config
from .output import print_table

alerts_app = typer.Typer(help="Real-time alerts: check the configured sinks.", no_args_is_help=True)

_STYLE = {"delivered": "green", "not tested": "dim"}


@alerts_app.command("test")
def test(
    config: ConfigOption = None,
    sink: Annotated[Optional[str], typer.Option("--sink", help="Only this sink (by name).")] = None,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds to wait for the deliveries.")] = 15.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Send a test alert (severity info) to every configured sink and report each delivery."""
    cfg = require_config(config)
    try:
        rows = asyncio.run(send_test_alert(cfg, sink, timeout))
    except AlertsServiceError as exc:
        fail(str(exc))
    if as_json:
        out.print_json(json.dumps(rows))
    else:
        table = Table(box=box.SIMPLE_HEAD)
        for column in ("sink", "type", "outcome", "where"):
            table.add_column(column)
        for row in rows:
            style = _STYLE.get(row["outcome"], "bold red")
            table.add_row(row["sink"], row["type"], f"[{style}]{row['outcome']}[/]", row["detail"])
        print_table(out, table)
    if any(r["outcome"] not in ("delivered", "not tested") for r in rows):
        raise typer.Exit(1)
