"""``pgwarden audit``: verify, export and prune the tamper-evident audit trail.

Exit status (scripts and CI depend on it): ``verify`` exits 0 when the trail is
intact, 1 when problems were found, 2 for bad input or config (no trail, no
key). Other commands exit 0 on success, 2 for bad input, 1 when the store fails.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich import box
from rich.table import Table

from ..services import audit as service
from ..store.retention import RetentionError, RetentionResult
from ..store.verify import VerifyReport
from .main import ConfigOption, err, fail, out, require_config
from .output import print_table

audit_app = typer.Typer(help="The session recording audit trail: verify, export, retention.", no_args_is_help=True)

JsonOption = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]


def _run(coro):
    try:
        return asyncio.run(coro)
    except service.AuditServiceError as exc:
        fail(str(exc), exc.code)


def _print_verify(report: VerifyReport) -> None:
    summary = Table(box=box.SIMPLE_HEAD, show_header=False)
    summary.add_column("what", style="bold")
    summary.add_column("value")
    seqs = "-" if report.first_seq is None else f"{report.first_seq}..{report.last_seq}"
    summary.add_row("records", f"{report.records} (seq {seqs})")
    summary.add_row("anchor", f"seq {report.anchor.get('seq')} ({report.anchor.get('source')})")
    summary.add_row("checkpoints", f"{report.checkpoints_checked} of {report.checkpoints} verified"
                    + (f", last at seq {report.last_checkpoint_seq}" if report.last_checkpoint_seq else ""))
    summary.add_row("public key", f"{report.key_id} ({report.key_source})")
    for removed in report.retention:
        summary.add_row(
            "retention",
            f"records ..{removed.get('through_seq')} removed at {removed.get('at')} "
            f"({removed.get('records')} records before {removed.get('before')}: {removed.get('why')})",
        )
    if report.unsigned_tail:
        summary.add_row("unsigned tail", f"records {report.unsigned_tail[0]}..{report.unsigned_tail[1]}")
    verdict = "[bold green]OK[/]" if report.ok else f"[bold red]{sum(report.counts.values())} PROBLEM(S)[/]"
    summary.add_row("result", verdict)
    print_table(out, summary)
    for warning in report.warnings:
        err.print(f"[yellow]warning:[/] {warning}", soft_wrap=True)
    if report.problems:
        table = Table("kind", "seq", "detail", box=box.SIMPLE_HEAD)
        for p in report.problems:
            table.add_row(p.kind, p.seqs, p.detail)
        print_table(out, table)
        if report.omitted:
            out.print(f"... and {report.omitted} more problem(s) not listed")


@audit_app.command("verify")
def verify(
    config: ConfigOption = None,
    public_key: Annotated[
        Optional[Path], typer.Option("--public-key", help="Verify with this PEM public key (recommended: pin it).",
                                     show_default=False)
    ] = None,
    start: Annotated[Optional[int], typer.Option("--from", min=1, help="First seq to verify.", show_default=False)] = None,
    end: Annotated[Optional[int], typer.Option("--to", min=1, help="Last seq to verify.", show_default=False)] = None,
    export: Annotated[
        Optional[Path], typer.Option("--export", help="Verify an export (directory or archive) instead of the store.",
                                     show_default=False)
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Check the hash chain and the signed checkpoints.

    Names every record that was changed, deleted, inserted or reordered, and every
    checkpoint that does not verify. Exit 0: intact; 1: problems; 2: bad input or config.
    """
    if export is not None:
        if start is not None or end is not None:
            fail("--from/--to do not apply to --export (an export is verified whole)")
        try:
            report = service.verify_export(export, public_key=public_key)
        except service.AuditServiceError as exc:
            fail(str(exc), 2)
            return
    else:
        cfg = require_config(config)
        report = _run(service.verify(cfg, public_key=public_key, start=start, end=end))
    if as_json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        _print_verify(report)
    raise typer.Exit(0 if report.ok else 1)


@audit_app.command("export")
def export(
    out_path: Annotated[Path, typer.Option("--out", help="A new directory, or a file ending in .tar / .tar.gz.")],
    config: ConfigOption = None,
    start: Annotated[Optional[int], typer.Option("--from", min=1, help="First seq (default: the oldest).",
                                                 show_default=False)] = None,
    end: Annotated[Optional[int], typer.Option("--to", min=1, help="Last seq (default: the newest).",
                                               show_default=False)] = None,
    since: Annotated[Optional[str], typer.Option("--since", help="Only records at or after this ISO time.",
                                                 show_default=False)] = None,
    until: Annotated[Optional[str], typer.Option("--until", help="Only records before this ISO time.",
                                                 show_default=False)] = None,
    as_json: JsonOption = False,
) -> None:
    """Write records and their signed checkpoints for a third party.

    The third party checks them with only the public key: tools/verify_audit_export.py,
    or by hand (docs/audit.md, "Exporting for a third party").
    """
    cfg = require_config(config)
    if start is not None and end is not None and end < start:
        fail("--to must not be less than --from")
    result = _run(service.export(cfg, out_path, start=start, end=end, since=since, until=until))
    if as_json:
        print(json.dumps(result.as_dict(), indent=2))
        return
    out.print(f"exported records {result.from_seq}..{result.to_seq} ({result.records} records, "
              f"{result.checkpoints} checkpoints) to {result.path}", soft_wrap=True)
    if result.anchor.get("hash") is None:
        err.print(f"[yellow]warning:[/] record {result.anchor.get('seq')} (the anchor) is missing from the store; "
                  "the export's first record cannot be chained", soft_wrap=True)
    if result.last_checkpoint_seq is None or result.last_checkpoint_seq < result.to_seq:
        signed = "no record" if result.last_checkpoint_seq is None else f"records up to {result.last_checkpoint_seq}"
        err.print(f"[yellow]note:[/] {signed} in the export are covered by a checkpoint; "
                  "end --to at a checkpoint's seq to have every record signed", soft_wrap=True)


@audit_app.command("public-key")
def public_key(config: ConfigOption = None) -> None:
    """Print the trail's signing public key (PEM) to give to auditors."""
    cfg = require_config(config)
    print(_run(service.public_key_text(cfg)), end="")


def _print_retention(result: RetentionResult) -> None:
    if not result.through_seq:
        out.print(f"nothing to remove: {result.note} (cutoff {result.cutoff})", soft_wrap=True)
        return
    verb = "removed" if result.applied else "would remove"
    out.print(f"{verb} records {result.first_seq}..{result.through_seq} ({result.records} records) "
              f"older than {result.cutoff}", soft_wrap=True)
    if result.note:
        out.print(f"  {result.note}", soft_wrap=True)
    if not result.applied:
        out.print("  (dry run: pass --apply to remove them)")


@audit_app.command("retention")
def retention(
    config: ConfigOption = None,
    apply: Annotated[bool, typer.Option("--apply", help="Remove the records (default: only show what would go).")] = False,
    max_age: Annotated[Optional[str], typer.Option("--max-age", help="Override audit.retention.max_age (e.g. 90d).",
                                                   show_default=False)] = None,
    why: Annotated[Optional[str], typer.Option("--why", help="Reason kept in the signed retention checkpoint.",
                                               show_default=False)] = None,
    force: Annotated[bool, typer.Option("--force", help="Remove even if the records do not verify (export first!).")] = False,
    as_json: JsonOption = False,
) -> None:
    """Remove records older than the retention period, leaving a signed note of what went."""
    cfg = require_config(config)
    try:
        result = _run(service.retention(cfg, apply=apply, max_age=max_age, why=why, force=force))
    except RetentionError as exc:
        if as_json and exc.report is not None:
            print(json.dumps({"error": str(exc), "verify": exc.report.as_dict()}, indent=2))
        elif exc.report is not None:
            _print_verify(exc.report)
        fail(str(exc), 1)
        return
    if as_json:
        print(json.dumps(result.as_dict(), indent=2))
    else:
        _print_retention(result)
