"""``pgwarden evidence``: the NIST SP 800-53 evidence report for a period (HTML, JSON or OSCAL).

Exit status (CI jobs that archive evidence depend on it): 0 when the report was
written and the period's audit records verified (or there were none); 1 when
the report was written but verification FAILED or no signed checkpoint covers
the period's records (the report says so on every page; a job should not file
it as clean evidence), or the store could not be read; 2 for bad input: bad dates, ``--from`` after ``--to``, no trail, an
unwritable ``--out``.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from ..services import evidence as service
from .main import ConfigOption, err, fail, out, require_config
from .output import print_table

_STYLE = {"satisfied": "green", "not_satisfied": "bold red", "no_events": "yellow"}


def _summary(console: Console, report: dict) -> None:
    table = Table("control", "title", "status", "reason", box=box.SIMPLE_HEAD)
    for c in report["controls"]:
        style = _STYLE.get(c["status"], "")
        table.add_row(c["label"], c["title"], f"[{style}]{c['status']}[/]", c["reason"])
    print_table(console, table)  # on stderr when stdout carries the report
    v = report["verification"]
    if v["status"] == "failed":
        kinds = ", ".join(sorted({p["kind"] for p in v["problems"]}))
        console.print(f"[bold red]VERIFICATION FAILED[/] for the period ({kinds}): run `pgwarden audit verify` "
                      "and investigate before using this report as evidence", soft_wrap=True)
    elif v["status"] == "unsigned":
        console.print("[bold red]NOT VERIFIED[/]: no signed checkpoint covers the period's records; they cannot be "
                      "relied on as evidence", soft_wrap=True)
    elif v["status"] == "verified":
        console.print(f"[green]verified[/]: records {v['first_seq']}..{v['last_seq']}, "
                      f"{v['checkpoints']} signed checkpoint(s), key {v['key_id']}", soft_wrap=True)
    else:
        console.print("[yellow]no audit records in the period[/]" + (
            f" (the records around it, {v['range'][0]}..{v['range'][1]}, verified)"
            if v.get("range") and v["range"][1] is not None and v.get("records") else ""), soft_wrap=True)
    for warning in v.get("warnings") or []:
        console.print(f"[yellow]warning:[/] {warning}", soft_wrap=True)


def evidence(
    out_path: Annotated[str, typer.Option("--out", "-o", help="Output file, or - for stdout.")],
    config: ConfigOption = None,
    start: Annotated[Optional[str], typer.Option(
        "--from", help="Start: a date (2026-11-01) or ISO time; default 30 days before --to.", show_default=False)] = None,
    end: Annotated[Optional[str], typer.Option(
        "--to", help="End: a date (the whole day) or ISO time; default now.", show_default=False)] = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help="html, json or oscal.")] = "html",
    public_key: Annotated[Optional[Path], typer.Option(
        "--public-key", help="Verify with this PEM public key (recommended: pin it).", show_default=False)] = None,
) -> None:
    """Write the NIST SP 800-53 evidence report for a period.

    For each supported control: what it requires, how this configuration implements
    it, counts and sample records from the audit trail, and a status. The period's
    records are verified first. Exit 0: written and verified; 1: written but
    verification failed (or the store failed); 2: bad input.
    """
    fmt = fmt.lower()
    if fmt not in service.FORMATS:
        fail(f"--format {fmt}: use one of {', '.join(service.FORMATS)}")
    cfg = require_config(config)
    try:
        service.period_bounds(start, end)  # bad dates exit 2 before the store is opened
        service.check_writable(out_path)
        report = asyncio.run(service.build(cfg, start, end, public_key=public_key,
                                           config_path=config.resolve() if config else None))
        text = service.render(report, fmt)
        service.write(text, out_path)
    except service.EvidenceError as exc:
        fail(str(exc), exc.code)
        return
    console = err if out_path == "-" else out
    _summary(console, report)
    if out_path != "-":
        console.print(f"wrote {fmt} report to {out_path}", soft_wrap=True)
    raise typer.Exit(1 if report["verification"]["status"] in ("failed", "unsigned") else 0)
