"""Output helpers shared by the CLI commands."""

from __future__ import annotations

import time

from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

__all__ = ["print_table", "utc"]


def utc(ts: float | None, seconds: bool = True) -> str:
    """A timestamp as UTC text; ``-`` for none."""
    if ts is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M", time.gmtime(ts))


def print_table(out: Console, table: Table) -> None:
    """Print a table on ``out`` (stdout or stderr, whichever console is given); piped output
    is not cut to 80 columns, so scripts can grep whole rows."""
    console = out
    if not out.is_terminal:
        # Same stream as ``out`` (resolved now, so a redirected sys.stdout/sys.stderr is honoured).
        console = Console(file=out.file, highlight=False,
                          width=Measurement.get(out, out.options.update(width=1000), table).maximum)
    console.print(table)
