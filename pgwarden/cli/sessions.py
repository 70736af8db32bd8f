"""``pgwarden sessions list | show | replay``: recorded sessions from the audit trail.

These add to the ``sessions`` group of ``control.py`` (which owns ``list
--live`` and ``kill``). All reading and pairing happens in
``pgwarden.services.sessions``; this module only renders its Transcript, as a
rich table (``show``), as a psql transcript (``replay``) or as JSON.

Replay imitates psql's default ``aligned`` output closely (centred headers,
numbers right-aligned, ``+`` on wrapped lines, ``(N rows)``, ``Time: ... ms``)
so reviewers read it the way they read psql, but it is a *reconstruction*:
anything pgwarden adds is a ``--`` comment line, so it cannot be mistaken for
what the client saw. Trailing blanks that psql prints are dropped.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time
from typing import Annotated, Any, Iterator, Optional

import typer
from rich import box
from rich.cells import cell_len
from rich.table import Table
from rich.text import Text

from ..services.sessions import (
    Event, SessionsError, Transcript, at_seconds, list_sessions, load_transcript, open_reader, parse_when,
)
from ..store import SessionFilter
from ..store.decode import RIGHT_ALIGNED, Column
from .control import sessions_app
from .main import ConfigOption, fail, out, require_config
from .output import print_table, utc

__all__ = ["list_recorded", "sessions_show", "sessions_replay", "psql_table", "replay_lines"]


def _run(coro):
    """Run a service coroutine; a SessionsError becomes one line on stderr (exit 1)."""
    try:
        return asyncio.run(coro)
    except SessionsError as exc:
        fail(str(exc), 1)


def _when(at: str | None, seconds: bool = True) -> str:
    return utc(at_seconds(at), seconds)


def duration_text(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds:.1f}s"
    s = int(round(seconds))
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _span(started: str | None, ended: str | None) -> float | None:
    a, b = at_seconds(started), at_seconds(ended)
    return None if a is None or b is None else max(0.0, b - a)


# ---------------------------------------------------------------- list


def list_recorded(cfg, *, identity: str | None, role: str | None, target: str | None, since: str | None,
                  until: str | None, refused: bool, masked: bool, limit: int, as_json: bool) -> None:
    """``pgwarden sessions list`` without ``--live`` (called from control.sessions_list)."""
    try:
        filters = SessionFilter(
            identity=identity, role=role, target=target,
            since=parse_when(since) if since else None, until=parse_when(until) if until else None,
            only_refused=refused, only_masked=masked, limit=limit,
        )
    except SessionsError as exc:
        fail(str(exc))

    async def fetch():
        async with open_reader(cfg) as store:
            return await list_sessions(store, filters)

    found = _run(fetch())
    if as_json:
        print(json.dumps([s.as_dict() for s in found], indent=2, ensure_ascii=False))
        return
    if not found:
        out.print("no recorded sessions match")
        return
    table = Table(caption="times in UTC", box=box.SIMPLE_HEAD)
    for column in ("id", "started", "ended", "identity", "roles", "target", "client", "stmts", "refused",
                   "errors", "masked", "end reason"):
        table.add_column(column, no_wrap=True, justify="right" if column in ("stmts", "refused", "errors", "masked") else "left")
    for s in found:
        who = s.subject or s.user
        if s.subject and s.user and s.user != s.subject:
            who = f"{s.subject} ({s.user})"
        ended = "open" if s.ended_at is None else duration_text(_span(s.started_at, s.ended_at))
        # The summary's counters are written at disconnect: for an open session they are not known yet.
        counts = ("-",) * 4 if s.ended_at is None else (s.statements, s.refused, s.errors, s.masked)
        table.add_row(*(Text(str(v)) for v in (
            s.id, _when(s.started_at), ended, who, ", ".join(s.roles) or "-", s.target, s.client, *counts,
            s.end_reason or "-")))
    print_table(out, table)


# ---------------------------------------------------------------- show


def _load(config, session_id: str) -> Transcript:
    cfg = require_config(config)

    async def fetch():
        async with open_reader(cfg) as store:
            return await load_transcript(store, session_id)

    return _run(fetch())


def _one_line(text: str | None, limit: int = 100) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _decision_text(decision: dict[str, Any] | None) -> str:
    if not decision:
        return "-"
    text = str(decision.get("action", "?"))
    if decision.get("rule"):
        text += f" ({decision['rule']})"
    if decision.get("alerts"):
        text += " alerts: " + ", ".join(map(str, decision["alerts"]))
    return text


@sessions_app.command("show")
def sessions_show(
    session_id: Annotated[str, typer.Argument(help="Session id or a unique prefix (6+ characters).")],
    as_json: Annotated[bool, typer.Option("--json", help="The whole transcript as JSON (rows included).")] = False,
    config: ConfigOption = None,
) -> None:
    """A recorded session: who, how they authenticated, and every event."""
    transcript = _load(config, session_id)
    if as_json:
        print(json.dumps(transcript.as_dict(), indent=2, ensure_ascii=False))
        return
    h = transcript.header
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    who = h.get("identity") or h.get("user") or "?"
    if h.get("user") and h.get("user") != who:
        who += f" (user {h['user']})"
    rows = [
        ("session", f"{h['id']} ({'open or not closed cleanly' if h['open'] else 'ended'})"),
        ("who", who + (f", roles {', '.join(h['roles'])}" if h.get("roles") else "")),
        ("authenticated", ", ".join(str(x) for x in (h.get("method"), h.get("issuer") and f"issuer {h['issuer']}") if x) or "-"),
        ("TLS", h.get("tls") or "none"),
        ("target", h.get("target") or "-"),
        ("client", h.get("client") or "-"),
        ("application", h.get("application_name") or "-"),
        ("gateway", h.get("gateway") or "-"),
        ("started", _when(h.get("started_at")) + " UTC"),
        ("ended", "-" if h["open"] else f"{_when(h.get('ended_at'))} UTC, after {duration_text(h.get('duration_s'))}"
         + (f", {h['end_reason']}" if h.get("end_reason") else "")),
        ("counts", f"{h['statements']} statements, {h['refused']} refused, {h['errors']} errors, {h['masked']} masked"),
    ]
    for key, value in rows:
        grid.add_row(key, Text(str(value)))
    out.print(grid)
    table = Table(box=box.SIMPLE_HEAD, caption="times in UTC")
    for column in ("seq", "time", "type", "n", "text / detail", "decision", "status", "rows", "ms"):
        table.add_column(column, justify="right" if column in ("seq", "n", "rows", "ms") else "left",
                         no_wrap=column != "text / detail")
    for e in transcript.events:
        r = e.result
        if e.type == "statement":
            kind = e.kind or "statement"
            text = _one_line(e.text) if e.text is not None else f"[{e.statement_name or 'unnamed'}]"
            if e.params:
                text += "  -- " + ", ".join(f"${i}={_literal(p)}" for i, p in enumerate(e.params, 1))
            status = (r.status or "?") if r else "no result"
            if r and r.error and r.error.get("message"):
                text += f"  [{r.error.get('sqlstate') or 'error'}: {_one_line(r.error['message'], 80)}]"
            cells = (e.seq, _clock(e.at), kind, e.n, _one_line(text, 160), _decision_text(e.decision), status,
                     "" if not r or r.rows is None else r.rows,
                     "" if not r or r.duration_ms is None else f"{r.duration_ms:.3f}")
        else:
            cells = (e.seq, _clock(e.at), e.type, e.n or "", _one_line(e.detail, 160), "", "", "", "")
        table.add_row(*(Text("" if c is None else str(c)) for c in cells))
    print_table(out, table)
    for problem in transcript.problems:
        out.print(Text(f"note: {problem}"))


def _clock(at: str | None) -> str:
    """HH:MM:SS.mmm of an ``at`` (the date is in the header)."""
    if not at or "T" not in at:
        return at or ""
    return at.split("T", 1)[1][:12]


def _literal(value: str | None) -> str:
    if value is None:
        return "NULL"
    value = value if len(value) <= 200 else value[:199] + "…"
    return "'" + value.replace("'", "''") + "'"


# ---------------------------------------------------------------- replay (psql look-alike)


def psql_table(columns: list[Column], rows: list[list[str | None]]) -> list[str]:
    """psql's ``aligned`` format (border 1): centred headers, numbers right, ``+`` on continued lines."""
    names = [c.name for c in columns]
    cells = [[("" if v is None else v).split("\n") for v in row] for row in rows]
    widths = [cell_len(n) for n in names]
    for row in cells:
        for j, lines in enumerate(row):
            widths[j] = max(widths[j], *(cell_len(line) for line in lines))
    right = [c.type in RIGHT_ALIGNED for c in columns]

    def pad(text: str, width: int, how: str) -> str:
        gap = width - cell_len(text)
        if how == "r":
            return " " * gap + text
        if how == "c":
            return " " * (gap // 2) + text + " " * (gap - gap // 2)
        return text + " " * gap

    lines = ["|".join(f" {pad(n, w, 'c')} " for n, w in zip(names, widths)).rstrip(),
             "+".join("-" * (w + 2) for w in widths)]
    for row in cells:
        height = max((len(c) for c in row), default=1)
        for k in range(height):
            parts = []
            for j, cell in enumerate(row):
                piece = cell[k] if k < len(cell) else ""
                mark = "+" if k < len(cell) - 1 else " "
                parts.append(f" {pad(piece, widths[j], 'r' if right[j] else 'l')}{mark}")
            lines.append("|".join(parts).rstrip(" "))
    return lines


def _tag_count(tag: str) -> int | None:
    last = tag.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() and " " in tag else None


def _verb(tag: str) -> str:
    return tag.split(" ", 1)[0].upper()


_ROW_VERBS = {"SELECT", "FETCH", "SHOW", "EXPLAIN"}
_DML = {"INSERT", "UPDATE", "DELETE", "MERGE"}


def timing_line(ms: float) -> str:
    """psql's ``\\timing`` line, including its (mm:ss.sss) form from one second up."""
    if ms < 1000:
        return f"Time: {ms:.3f} ms"
    seconds = ms / 1000.0
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"Time: {ms:.3f} ms ({int(minutes):02d}:{seconds:06.3f})"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"Time: {ms:.3f} ms ({int(hours):02d}:{int(minutes):02d}:{seconds:06.3f})"
    days, hours = divmod(hours, 24)
    return f"Time: {ms:.3f} ms ({days:.0f} d {int(hours):02d}:{int(minutes):02d}:{seconds:06.3f})"


def _set_lines(decoded, info: dict[str, Any], tag: str | None, max_rows: int | None) -> list[str]:
    rows = decoded.rows
    shown = rows if max_rows is None else rows[:max_rows]
    total = _tag_count(tag) if tag else None
    if total is None and isinstance(info.get("rows"), int):
        total = info["rows"]
    count = total if total is not None else len(rows)
    lines = psql_table(decoded.columns, shown) if decoded.columns else []
    lines.append(f"({count} row{'' if count == 1 else 's'})")
    if not decoded.described:
        lines.append("-- no column description was recorded: column names are placeholders")
    if info.get("truncated"):
        lines.append(f"-- {len(rows)} of {total if total is not None else 'more'} rows were recorded "
                     "(audit.results caps)")
    elif total is not None and total > len(rows) and not decoded.problems:
        lines.append(f"-- {len(rows)} of {total} rows were recorded")
    if len(shown) < len(rows):
        lines.append(f"-- showing {len(shown)} of {len(rows)} recorded rows (--max-rows)")
    lines += [f"-- {p}" for p in decoded.problems]
    lines.append("")
    return lines


def _outputs(r, max_rows: int | None) -> list[str]:
    """Tags and row sets in the order psql prints them (sets pair with the tags that return rows)."""
    lines: list[str] = []
    sets = list(zip(r.sets, r.set_info))
    # A set does not name its tag (unless the recorder adds ``tag``): pair them with the tags that can
    # return rows, counting DML (RETURNING) only when the sets outnumber the read-like tags.
    verbs = [_verb(t) for t in r.tags]
    if len(sets) == len(r.tags):
        row_tags = set(range(len(r.tags)))
    elif len(sets) > sum(v in _ROW_VERBS for v in verbs):
        row_tags = {k for k, v in enumerate(verbs) if v in _ROW_VERBS or v in _DML}
    else:
        row_tags = {k for k, v in enumerate(verbs) if v in _ROW_VERBS}
    i = 0
    for k, tag in enumerate(r.tags):
        verb = verbs[k]
        if i < len(sets) and k in row_tags:
            decoded, info = sets[i]
            i += 1
            lines += _set_lines(decoded, info, tag, max_rows)
            if verb in _DML:
                lines.append(tag)
        elif verb == "SELECT":
            count = _tag_count(tag) or 0
            lines += [f"({count} row{'' if count == 1 else 's'})", "-- the rows were not recorded", ""]
        else:
            lines.append(tag)
    for decoded, info in sets[i:]:  # rows sent before an error, or sets whose tag is missing
        lines += _set_lines(decoded, info, info.get("tag"), max_rows)
    return lines


class _Prompt:
    """psql's prompt, with ``*`` in a transaction and ``!`` in a failed one (inferred from tags)."""

    def __init__(self, target: str) -> None:
        self.target = target or "pgwarden"
        self.state = ""

    def first(self) -> str:
        return f"{self.target}={self.state}> "

    def more(self) -> str:
        return f"{self.target}-{self.state}> "

    def after(self, event: Event) -> None:
        r = event.result
        if r is None or r.status == "denied":
            return  # a refusal never reaches PostgreSQL: the transaction is as it was
        for tag in r.tags:
            verb = _verb(tag)
            if verb in ("BEGIN", "START"):
                self.state = "*"
            elif verb == "ROLLBACK" and re.search(r"\brollback\s+(work\s+|transaction\s+)?to\b", event.text or "", re.I):
                self.state = "*" if self.state else ""
            elif verb in ("COMMIT", "ROLLBACK") or tag.upper() == "PREPARE TRANSACTION":
                self.state = ""
        if r.status == "error" and self.state:
            self.state = "!"


def _statement_lines(e: Event, prompt: _Prompt, max_rows: int | None) -> list[str]:
    r = e.result
    if e.kind == "parse":
        if r is not None and r.status == "ok" and not (e.decision or {}).get("action") in ("deny", "rewrite"):
            return []  # the execute that follows shows the text; an unremarkable Parse is noise
    text = e.text
    if e.kind == "function_call" and not text:
        text = "-- fast-path function call"
    text = (text or "-- (statement text not recorded)").rstrip()
    if not text.endswith(";") and not text.startswith("--"):
        text += ";"
    first, *rest = text.split("\n")
    lines = [prompt.first() + first] + [prompt.more() + line for line in rest]
    if e.params:
        lines.append("-- parameters: " + ", ".join(f"${i} = {_literal(p)}" for i, p in enumerate(e.params, 1)))
    decision = e.decision or {}
    if decision.get("action") == "rewrite":
        lines.append(f"-- rewritten by pgwarden (rule {decision.get('rule') or '-'})")
    if decision.get("alerts"):
        lines.append("-- alerts: " + ", ".join(map(str, decision["alerts"])))
    if r is None:
        if decision.get("action") == "deny":
            lines.append(f"ERROR:  {decision.get('message') or 'refused by pgwarden'}")
            lines.append(f"-- refused by pgwarden, rule {decision.get('rule') or '-'}")
        else:
            lines.append("-- no result was recorded (the session is still open, or the gateway stopped)")
        return lines
    for notice in r.notices:
        lines.append(f"{notice.get('severity') or 'NOTICE'}:  {notice.get('message', '')}")
    if r.status == "skipped":
        lines.append("-- skipped: PostgreSQL discarded it after an earlier error in the same request")
    lines += _outputs(r, max_rows)
    if r.masked:
        shown = [f"{m.get('column')} ({m.get('strategy')}{', rule ' + str(m['rule']) if m.get('rule') else ''}, "
                 f"{m.get('values', 0)} values)" for m in r.masked]
        lines.append("-- masked by pgwarden: " + "; ".join(shown))
    if r.copy:
        c = r.copy
        lines.append(f"-- COPY {c.get('direction', '?')}: {c.get('bytes', '?')} bytes in {c.get('messages', '?')} messages")
    if r.status in ("error", "denied"):
        err = r.error or {}
        message = err.get("message") or decision.get("message") or ("refused by pgwarden" if r.status == "denied" else "")
        lines.append(f"ERROR:  {message}")
        if err.get("detail"):
            lines.append(f"DETAIL:  {err['detail']}")
        if r.status == "denied":
            lines.append(f"-- refused by pgwarden, rule {err.get('rule') or decision.get('rule') or '-'}")
    if r.duration_ms is not None:
        lines.append(timing_line(float(r.duration_ms)))
    return lines


def replay_lines(transcript: Transcript, max_rows: int | None = None) -> Iterator[tuple[Event | None, list[str]]]:
    """The transcript as psql would have shown it, one chunk per event (None: the banner)."""
    h = transcript.header
    prompt = _Prompt(h.get("target") or "")
    who = h.get("identity") or h.get("user") or "?"
    roles = f" (roles {', '.join(h['roles'])})" if h.get("roles") else ""
    banner = [f"-- session {h['id']}: {who}{roles} -> {h.get('target') or '?'} from {h.get('client') or '?'}"
              f"{', ' + h['tls'] if h.get('tls') else ', no TLS'}"
              f"{', ' + h['application_name'] if h.get('application_name') else ''}"]
    banner.append(f"-- started {_when(h.get('started_at'))} UTC, "
                  + ("still open or not closed cleanly" if h["open"] else
                     f"ended after {duration_text(h.get('duration_s'))}" + (f" ({h['end_reason']})" if h.get("end_reason") else "")))
    yield None, banner
    for e in transcript.events:
        if e.type == "statement":
            lines = _statement_lines(e, prompt, max_rows)
            prompt.after(e)
        elif e.type == "notice":
            lines = [f"{e.fields.get('severity') or 'NOTICE'}:  {e.fields.get('message', '')}"]
        elif e.type in ("cancel", "disconnect") or (e.type == "auth" and e.fields.get("outcome") != "ok"):
            lines = [f"-- {e.type}: {e.detail}"]
        else:
            lines = []
        if lines:
            yield e, lines
    for problem in transcript.problems:
        yield None, [f"-- note: {problem}"]


@sessions_app.command("replay")
def sessions_replay(
    session_id: Annotated[str, typer.Argument(help="Session id or a unique prefix (6+ characters).")],
    speed: Annotated[float, typer.Option(
        "--speed", min=0, help="Pace by the recorded times: 1 = real time, 2 = twice as fast, 0 = no waiting.")] = 0.0,
    max_wait: Annotated[float, typer.Option(
        "--max-wait", min=0, help="With --speed: longest pause in seconds (idle gaps are cut to this).")] = 5.0,
    max_rows: Annotated[Optional[int], typer.Option(
        "--max-rows", min=0, help="Show at most N rows of each result.", show_default=False)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="The transcript model as JSON instead.")] = False,
    config: ConfigOption = None,
) -> None:
    """Play a recorded session back as a psql transcript: statements, results, errors, timings."""
    transcript = _load(config, session_id)
    if as_json:
        if max_rows is not None:
            for e in transcript.events:
                for s in e.result.sets if e.result else ():
                    s.rows = s.rows[:max_rows]
        print(json.dumps(transcript.as_dict(), indent=2, ensure_ascii=False))
        return
    previous: float | None = None
    for event, lines in replay_lines(transcript, max_rows):
        moment = at_seconds(event.at) if event is not None else None
        if speed > 0 and moment is not None:
            if previous is not None and moment > previous:
                time.sleep(min((moment - previous) / speed, max_wait))
            previous = moment
        sys.stdout.write("\n".join(lines) + "\n")
        sys.stdout.flush()
