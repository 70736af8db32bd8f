"""The evidence report as one self-contained HTML file: readable on screen, printable, archivable.

Why no external resources at all (CSS, scripts, fonts, images): the file is
evidence handed to an auditor and kept for years; it must render the same
offline, and must not phone home when opened. The chart is inline SVG.

Every value from the report goes through :func:`e` (``html.escape``): statement
texts, user names and rule names come from clients and are attacker-controlled
(a statement can contain ``<script>``).
"""

from __future__ import annotations

from html import escape
from typing import Any

from .collect import visible

__all__ = ["render_html"]

_COLORS = {"allow": "#2e7d32", "deny": "#c62828", "rewrite": "#f9a825", "held": "#1565c0"}
_BADGE = {"satisfied": ("#2e7d32", "satisfied"), "not_satisfied": ("#c62828", "not satisfied"),
          "no_events": ("#757575", "no events")}

_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,Helvetica,Arial,sans-serif;color:#222;margin:2em auto;
max-width:1100px;padding:0 1em;line-height:1.4}
h1{font-size:1.6em;margin-bottom:.2em}h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:2em}
h3{margin-bottom:.3em}table{border-collapse:collapse;width:100%;margin:.5em 0 1em;font-size:.9em}
th,td{border:1px solid #ccc;padding:.3em .5em;text-align:left;vertical-align:top}th{background:#f3f3f3}
.banner{padding:.8em 1em;border-radius:4px;font-weight:bold;margin:1em 0;color:#fff}
.ok{background:#2e7d32}.fail{background:#c62828}.none{background:#757575}.warn{background:#e65100}
.badge{display:inline-block;padding:.1em .5em;border-radius:3px;color:#fff;font-size:.85em;white-space:nowrap}
.mono{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.85em;word-break:break-all}
.muted{color:#666}.control{page-break-inside:avoid;border-top:1px solid #eee;padding-top:.5em}
dl{display:grid;grid-template-columns:max-content auto;gap:.2em 1em}dt{font-weight:bold}dd{margin:0}
@media print{body{margin:0;max-width:none}.control{page-break-inside:avoid}a{color:#000;text-decoration:none}
.banner,.badge{-webkit-print-color-adjust:exact;print-color-adjust:exact}}
"""


def e(value: Any) -> str:
    """Escape anything for HTML text or attribute values; invisible and direction-changing
    characters (U+202E and friends) are spelled out so they cannot reorder what is displayed."""
    return escape(visible("" if value is None else str(value)), quote=True)


def _badge(status: str) -> str:
    color, text = _BADGE.get(status, ("#757575", status))
    return f'<span class="badge" style="background:{color}">{e(text)}</span>'


def _key_counts(counts: dict[str, int], limit: int = 4) -> str:
    shown = [(k, v) for k, v in counts.items() if v][:limit]
    return ", ".join(f"{e(k)}: {v}" for k, v in shown) or '<span class="muted">-</span>'


def _banner(report: dict[str, Any]) -> str:
    v = report["verification"]
    status = v.get("status")
    if status == "failed":
        kinds = sorted({p.get("kind") for p in v.get("problems") or []})
        return (f'<div class="banner fail">VERIFICATION FAILED for this period: {e(", ".join(map(str, kinds)))}. '
                "Controls whose evidence comes from the audit trail are not satisfied.</div>")
    if status == "unsigned":
        return ('<div class="banner fail">NOT VERIFIED: no signed checkpoint covers this period\'s records. They '
                "chain consistently, but anyone who can write the store could have rewritten them. Controls whose "
                "evidence comes from the audit trail are not satisfied.</div>")
    if status == "no_records":
        text = "No audit records in this period: nothing to verify."
        if v.get("range") and v["range"][1] is not None and v.get("records"):
            text = (f"No audit records in this period. The records around it (seqs {e(v['range'][0])}..{e(v['range'][1])}) "
                    "verified, so none were removed from it without a signed retention checkpoint.")
        return f'<div class="banner none">{text}</div>'
    text = (f"Audit trail verified: records {e(v.get('first_seq'))}..{e(v.get('last_seq'))} chain correctly and "
            f"{e(v.get('checkpoints'))} signed checkpoint(s) verify with key {e(v.get('key_id'))}.")
    tail = v.get("unsigned_tail")
    if tail and v.get("unsigned_stale"):
        text += (f" But records {e(tail[0])}..{e(tail[1])} of the period were never signed: they could have been "
                 "altered, forged or cut off without detection.")
        return f'<div class="banner warn">{text}</div>'
    if tail:
        text += f" Records {e(tail[0])}..{e(tail[1])} are not signed yet."
    if v.get("key_source") == "store meta":
        text += " The key was read from the store itself; pin it with --public-key."
    return f'<div class="banner ok">{text}</div>'


def _system(report: dict[str, Any]) -> str:
    s, p, v = report["system"], report["period"], report["verification"]
    rows = [
        ("Period", f"{e(p['from'])} to {e(p['to'])} (UTC)"),
        ("Generated", f"{e(report['generated_at'])} by {e(report['generator']['name'])} {e(report['generator']['version'])}"),
        ("Gateways", e(", ".join(s.get("gateway_ids") or []) or "-")),
        ("Targets", e(", ".join(s.get("targets") or []))),
        ("Audit store", f"{e(s['store']['backend'])}: <span class=\"mono\">{e(s['store']['location'])}</span>"),
        ("Signing key", f"{e(s.get('public_key_id') or '-')} ({e(v.get('key_source') or 'unknown source')})"),
        ("Config", f"<span class=\"mono\">{e(s.get('config_path') or '-')}</span>"
                   + (f" sha256 <span class=\"mono\">{e(s['config_sha256'])}</span>" if s.get("config_sha256") else "")
                   + ". Claims drawn from the configuration describe it at report time, not necessarily the "
                     "configuration in force during the period."),
    ]
    t = report["totals"]
    rows.append(("Records", f"{t['records']} ({e(', '.join(f'{k} {n}' for k, n in t['by_type'].items()))}); "
                            f"{t['sessions']} session(s)"))
    return "<dl>" + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in rows) + "</dl>"


def _verification(report: dict[str, Any]) -> str:
    v = report["verification"]
    period, rng = v.get("period_seqs"), v.get("range")
    if not rng:
        out = ["<p>Verification could not run.</p>" if v.get("status") == "failed"
               else '<p class="muted">Nothing to verify: the period has no records.</p>']
    else:
        out = [f"<p>The period's records are seqs {e(period[0] if period else '?')}..{e(period[1] if period else '?')}; "
               f"verified seqs {e(rng[0])}..{e(rng[1])} (up to the first checkpoint that signs them): "
               f"{e(v.get('records'))} records, {e(v.get('checkpoints'))} checkpoint signature(s) verified, key "
               f"{e(v.get('key_id'))} ({e(v.get('key_source'))}).</p>"]
    for w in v.get("warnings") or []:
        out.append(f'<p class="muted">warning: {e(w)}</p>')
    if v.get("problems"):
        out.append("<table><tr><th>problem</th><th>seq</th><th>detail</th></tr>")
        for p in v["problems"]:
            seqs = p.get("seq") if p.get("end") in (None, p.get("seq")) else f"{p.get('seq')}..{p.get('end')}"
            out.append(f"<tr><td>{e(p.get('kind'))}</td><td>{e(seqs)}</td><td>{e(p.get('detail'))}</td></tr>")
        out.append("</table>")
    return "".join(out)


def _summary(report: dict[str, Any]) -> str:
    rows = ["<table><tr><th>Control</th><th>Title</th><th>Status</th><th>Reason</th><th>Key counts</th></tr>"]
    for c in report["controls"]:
        rows.append(f'<tr><td><a href="#{e(c["id"])}">{e(c["label"])}</a></td><td>{e(c["title"])}</td>'
                    f'<td>{_badge(c["status"])}</td><td>{e(c["reason"])}</td><td>{_key_counts(c["counts"])}</td></tr>')
    rows.append("</table>")
    return "".join(rows)


def _chart(daily: list[dict[str, Any]]) -> str:
    """Statements per day, stacked by verdict, as inline SVG (no script)."""
    if not daily:
        return '<p class="muted">No days in the period.</p>'
    keys = ("allow", "deny", "rewrite", "held")
    top = max(max(sum(int(d.get(k, 0)) for k in keys) for d in daily), 1)
    left, bottom, height = 60, 50, 220
    step = max(4.0, min(40.0, 900.0 / len(daily)))
    bar = max(2.0, step * 0.7)
    width = left + step * len(daily) + 20
    svg = [f'<svg width="{width:.0f}" height="{height + bottom + 40}" '
           f'role="img" aria-label="Statements per day by verdict" font-size="11" font-family="sans-serif">']
    for i in range(5):  # y axis ticks
        value = top * i / 4
        y = height - height * i / 4 + 10
        svg.append(f'<line x1="{left}" y1="{y:.1f}" x2="{width - 10:.0f}" y2="{y:.1f}" stroke="#eee"/>')
        svg.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{value:.0f}</text>')
    svg.append(f'<line x1="{left}" y1="10" x2="{left}" y2="{height + 10}" stroke="#333"/>')
    svg.append(f'<line x1="{left}" y1="{height + 10}" x2="{width - 10:.0f}" y2="{height + 10}" stroke="#333"/>')
    svg.append(f'<text x="14" y="{height / 2 + 10:.0f}" transform="rotate(-90 14 {height / 2 + 10:.0f})" '
               'text-anchor="middle">statements</text>')
    label_every = max(1, int(len(daily) / 15) + (1 if len(daily) % 15 else 0))
    for i, d in enumerate(daily):
        x = left + i * step + (step - bar) / 2
        y = height + 10
        for k in keys:
            n = int(d.get(k, 0))
            if n:
                h = height * n / top
                y -= h
                svg.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar:.1f}" height="{h:.1f}" fill="{_COLORS[k]}">'
                           f'<title>{e(d["date"])}: {n} {k}</title></rect>')
        if i % label_every == 0:
            lx = x + bar / 2
            svg.append(f'<text x="{lx:.1f}" y="{height + 24}" text-anchor="end" '
                       f'transform="rotate(-45 {lx:.1f} {height + 24})">{e(str(d["date"])[5:])}</text>')
    svg.append(f'<text x="{left + (width - left) / 2:.0f}" y="{height + bottom + 8}" text-anchor="middle">day (UTC)</text>')
    lx = left
    for k in keys:
        svg.append(f'<rect x="{lx}" y="{height + bottom + 20}" width="10" height="10" fill="{_COLORS[k]}"/>'
                   f'<text x="{lx + 14}" y="{height + bottom + 29}">{k}</text>')
        lx += 80
    svg.append("</svg>")
    return "".join(svg)


def _control(c: dict[str, Any]) -> str:
    out = [f'<div class="control" id="{e(c["id"])}"><h3>{e(c["label"])} {e(c["title"])} {_badge(c["status"])}</h3>',
           f'<p><b>Requirement.</b> {e(c["requirement"])}</p>',
           f'<p><b>Status.</b> {e(c["status"])}: {e(c["reason"])}</p>',
           f'<p><b>Evidence from.</b> {e(c.get("evidence", ""))}</p>',
           "<p><b>How pgwarden implements it</b> (from the configuration at report time):</p><ul>"]
    out += [f"<li>{e(item)}</li>" for item in c["implementation"]]
    out.append("</ul>")
    if c["counts"]:
        out.append("<table><tr><th>count</th><th>value</th></tr>")
        out += [f"<tr><td>{e(k)}</td><td>{e(v)}</td></tr>" for k, v in c["counts"].items()]
        out.append("</table>")
    if c["samples"]:
        out.append("<table><tr><th>seq</th><th>at</th><th>type</th><th>session</th><th>summary</th></tr>")
        out += [f'<tr><td>{e(s["seq"])}</td><td class="mono">{e(s["at"])}</td><td>{e(s["type"])}</td>'
                f'<td class="mono">{e(s["session"] or "-")}</td><td class="mono">{e(s["summary"])}</td></tr>'
                for s in c["samples"]]
        out.append("</table>")
    out.append("</div>")
    return "".join(out)


def render_html(report: dict[str, Any]) -> str:
    """The whole report as an HTML document (a string)."""
    p = report["period"]
    title = f"pgwarden NIST SP 800-53 evidence, {p['from'][:10]} to {p['to'][:10]}"
    s = report.get("summary") or {}
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{e(title)}</h1>",
        f'<p class="muted">Format {e(report["format"])}. Control requirements are paraphrased; see NIST SP 800-53 '
        "rev. 5 for the authoritative text.</p>",
        _banner(report),
        "<h2>System</h2>", _system(report),
        "<h2>Audit verification</h2>", _verification(report),
        f"<h2>Controls</h2><p>{s.get('satisfied', 0)} satisfied, {s.get('not_satisfied', 0)} not satisfied, "
        f"{s.get('no_events', 0)} without events in the period.</p>",
        _summary(report),
        "<h2>Statements per day</h2>", _chart(report.get("daily") or []),
        "<h2>Details</h2>",
    ]
    parts += [_control(c) for c in report["controls"]]
    parts.append("</body></html>")
    return "\n".join(parts)
