"""The NIST SP 800-53 evidence report as an operation shared by the CLI (and later the HTTP API).

Why here: building the report (store, verification, controls) and writing it in
a format are the same whether a person runs ``pgwarden evidence`` or a
compliance job asks over HTTP; both must produce the same bytes for the same
period. See ``pgwarden/evidence/`` for what the report contains.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from ..evidence.report import EvidenceError, collect_report, period_bounds

__all__ = ["EvidenceError", "FORMATS", "build", "render", "write", "check_writable", "period_bounds"]

FORMATS = ("html", "json", "oscal")


async def build(config: Any, start: str | None, end: str | None, *, public_key: Path | None = None,
                config_path: Path | None = None) -> dict[str, Any]:
    """The report for ``start``..``end`` (dates or ISO times; defaults: the last 30 days)."""
    frm, to = period_bounds(start, end)
    return await collect_report(config, frm, to, public_key=public_key, config_path=config_path)


def render(report: dict[str, Any], fmt: str) -> str:
    """The report as text in ``fmt`` (html, json or oscal)."""
    if fmt == "json":
        return json.dumps(report, indent=2, ensure_ascii=False) + "\n"
    if fmt == "html":
        from ..evidence.html import render_html

        return render_html(report)
    if fmt == "oscal":
        try:
            from ..evidence.oscal import to_oscal  # written separately; imported only when asked for
        except ImportError as exc:
            raise EvidenceError(f"the OSCAL converter is not available in this installation ({exc})", 1) from exc
        return json.dumps(to_oscal(report), indent=2, ensure_ascii=False) + "\n"
    raise EvidenceError(f"unknown format {fmt!r} (use one of: {', '.join(FORMATS)})")


def check_writable(out: str) -> None:
    """Refuse an --out that cannot be written before spending time on the report."""
    if out == "-":
        return
    path = Path(out)
    if path.is_dir():
        raise EvidenceError(f"--out {out}: is a directory (give a file name)")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise EvidenceError(f"--out {out}: directory {parent} does not exist")
    if path.exists() and not os.access(path, os.W_OK) or not path.exists() and not os.access(parent, os.W_OK):
        raise EvidenceError(f"--out {out}: not writable")


def write(text: str, out: str) -> None:
    """Write to a file (atomically: a reader never sees half a report) or to stdout for ``-``."""
    if out == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    path = Path(out)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise EvidenceError(f"--out {out}: cannot write: {exc.strerror or exc}") from exc
