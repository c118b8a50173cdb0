"""``--chaos-report DIR``: one HTML page per run (``DIR/index.html``) and the same data
as JSON beside it (``DIR/report.json``).

Per test, a timeline picture drawn as inline SVG (no plotting library): every
request's latency on a log scale, coloured by flow, failures as red crosses; the
fault windows shaded and named; the recoveries waited for bracketed, their end
marked; kernel events from BPF in a lane below. Then the figures and the verdict,
with the assertion's message when it failed.
"""

from __future__ import annotations

import html
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .report import SummaryColumn, TestResult, columns, row

WIDTH, HEIGHT = 980, 380
LEFT, RIGHT, TOP = 70, 24, 46
PLOT_BOTTOM = 270  # the latency plot ends here; the kernel-event lane and legend follow
LANE_Y = 300
FLOW_COLOURS = ("#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#17becf", "#bcbd22", "#7f7f7f")
FAILURE = "#d62728"
EVENT_COLOURS = {"oom_victim": "#6a1b9a", "signal": "#e65100", "exit": "#455a64"}


def _css(outcome: str) -> str:
    """An outcome as a class name ("no effect" -> "no-effect")."""
    return _esc(outcome.replace(" ", "-"))


def _esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def _short(text: str, limit: int = 48) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _nice_step(span: float) -> float:
    raw = span / 8 if span > 0 else 1.0
    magnitude = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 5, 10):
        if raw <= factor * magnitude:
            return float(factor * magnitude)
    return float(10 * magnitude)


def svg_timeline(data: dict[str, Any]) -> str:
    """The timeline picture of one test (see the module's docstring)."""
    requests = data.get("requests", [])
    faults = data.get("faults", [])
    recoveries = data.get("recoveries", [])
    events = data.get("events", [])
    times = [r["t"] + r["latency_ms"] / 1000 for r in requests] + [r["t"] for r in requests]
    times += [f["start"] for f in faults] + [f["end"] for f in faults if f["end"] is not None]
    times += [f["healthy"] for f in faults if f.get("healthy") is not None]
    times += [r["end"] for r in recoveries] + [e["t"] for e in events]
    t_min = float(min([0.0, *times]))
    t_max = float(max([1.0, *times]))
    latencies = [max(r["latency_ms"], 0.1) for r in requests] or [1.0]
    y_low = float(10 ** math.floor(math.log10(min(latencies))))
    y_high = float(10 ** math.ceil(math.log10(max(latencies) * 1.01)))
    if y_high <= y_low:
        y_high = y_low * 10

    def x(t: float) -> float:
        return LEFT + (t - t_min) / (t_max - t_min) * (WIDTH - LEFT - RIGHT)

    def y(ms: float) -> float:
        span = math.log10(y_high) - math.log10(y_low)
        frac = (math.log10(max(ms, y_low)) - math.log10(y_low)) / span
        return PLOT_BOTTOM - frac * (PLOT_BOTTOM - TOP)

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'width="{WIDTH}" height="{HEIGHT}" font-family="sans-serif" font-size="11">',
        f'<rect x="0" y="0" width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
    ]
    # Fault windows, under everything else.
    for i, f in enumerate(faults):
        end = f["end"] if f["end"] is not None else t_max
        x0, x1 = x(f["start"]), x(end)
        out.append(
            f'<rect class="fault" x="{x0:.1f}" y="{TOP}" width="{max(x1 - x0, 1):.1f}" '
            f'height="{PLOT_BOTTOM - TOP}" fill="#f5b041" fill-opacity="0.22"/>'
        )
        text = f"{_short(f['label'], 60)} ({end - f['start']:.1f} s)"
        if f.get("healthy") is not None:
            # The undo's wait for health, after the fault was lifted: hatched apart.
            h1 = x(f["healthy"])
            out.append(
                f'<rect class="health-wait" x="{x1:.1f}" y="{TOP}" '
                f'width="{max(h1 - x1, 1):.1f}" height="{PLOT_BOTTOM - TOP}" fill="#aed6f1" '
                'fill-opacity="0.25"/>'
            )
            text += f", healthy {f['healthy'] - end:.1f} s after"
        fits_right = x0 + 3 + 6.2 * len(text) < WIDTH - RIGHT
        anchor, tx = ("start", x0 + 3) if fits_right else ("end", WIDTH - RIGHT)
        out.append(
            f'<text x="{tx:.1f}" y="{TOP - 6 - 12 * (i % 3)}" fill="#935116" '
            f'text-anchor="{anchor}">{_esc(text)}</text>'
        )
    # Axes and grid.
    step = _nice_step(t_max - t_min)
    tick = math.ceil(t_min / step) * step
    while tick <= t_max + 1e-9:
        out.append(
            f'<line x1="{x(tick):.1f}" y1="{TOP}" x2="{x(tick):.1f}" y2="{PLOT_BOTTOM}" '
            'stroke="#eee"/>'
        )
        out.append(
            f'<text x="{x(tick):.1f}" y="{PLOT_BOTTOM + 14}" text-anchor="middle">{tick:g} s</text>'
        )
        tick += step
    decade = y_low
    while decade <= y_high * 1.001:
        label = f"{decade / 1000:g} s" if decade >= 1000 else f"{decade:g} ms"
        out.append(
            f'<line x1="{LEFT}" y1="{y(decade):.1f}" x2="{WIDTH - RIGHT}" y2="{y(decade):.1f}" '
            'stroke="#e5e5e5"/>'
        )
        out.append(f'<text x="{LEFT - 6}" y="{y(decade) + 4:.1f}" text-anchor="end">{label}</text>')
        decade *= 10
    out.append(
        f'<rect x="{LEFT}" y="{TOP}" width="{WIDTH - LEFT - RIGHT}" height="{PLOT_BOTTOM - TOP}" '
        'fill="none" stroke="#999"/>'
    )
    out.append(
        f'<text x="14" y="{(TOP + PLOT_BOTTOM) / 2:.0f}" transform="rotate(-90 14 '
        f'{(TOP + PLOT_BOTTOM) / 2:.0f})" text-anchor="middle">request latency</text>'
    )
    # Requests: successes as dots by flow, failures as red crosses.
    flows = sorted({r["flow"] for r in requests})
    colour = {f: FLOW_COLOURS[i % len(FLOW_COLOURS)] for i, f in enumerate(flows)}
    for r in requests:
        cx, cy = x(r["t"]), y(r["latency_ms"])
        if r["ok"]:
            out.append(
                f'<circle class="ok" cx="{cx:.1f}" cy="{cy:.1f}" r="1.8" '
                f'fill="{colour[r["flow"]]}" fill-opacity="0.7"/>'
            )
        else:
            out.append(
                f'<path class="failed" d="M{cx - 3:.1f},{cy - 3:.1f}L{cx + 3:.1f},{cy + 3:.1f}'
                f'M{cx - 3:.1f},{cy + 3:.1f}L{cx + 3:.1f},{cy - 3:.1f}" stroke="{FAILURE}" '
                'stroke-width="1.4"><title>'
                f"{_esc(r['flow'])}: {_esc(r.get('status') or '')} {_esc(r.get('error') or '')}"
                "</title></path>"
            )
    # Recoveries: a bracket from where the wait was measured from to its end.
    for i, rec in enumerate(recoveries):
        x0, x1 = x(rec["start"]), x(rec["end"])
        yb = TOP + 12 + 13 * (i % 4)
        out.append(
            f'<line class="recovery" x1="{x1:.1f}" y1="{TOP}" x2="{x1:.1f}" y2="{PLOT_BOTTOM}" '
            'stroke="#1e8449" stroke-width="1.5" stroke-dasharray="4 3"/>'
        )
        out.append(
            f'<line x1="{x0:.1f}" y1="{yb}" x2="{x1:.1f}" y2="{yb}" stroke="#1e8449" '
            'stroke-width="1.2"/>'
        )
        text = f"{_short(rec['what'])}: {rec['seconds']:.2f} s"
        fits_right = x1 + 4 + 6.2 * len(text) < WIDTH - RIGHT
        anchor, tx = ("start", x1 + 4) if fits_right else ("end", x1 - 4)
        out.append(
            f'<text x="{tx:.1f}" y="{yb + 4}" fill="#1e8449" text-anchor="{anchor}">'
            f"{_esc(text)}</text>"
        )
    # Kernel events lane.
    out.append(f'<text x="{LEFT - 6}" y="{LANE_Y + 4}" text-anchor="end">kernel</text>')
    out.append(
        f'<line x1="{LEFT}" y1="{LANE_Y}" x2="{WIDTH - RIGHT}" y2="{LANE_Y}" stroke="#ccc"/>'
    )
    for e in events:
        ex = x(e["t"])
        kind = e["kind"]
        fill = EVENT_COLOURS.get(kind, FAILURE if kind.startswith("connect") else "#555")
        out.append(
            f'<path class="event" d="M{ex:.1f},{LANE_Y - 7}L{ex + 5:.1f},{LANE_Y + 5}'
            f'L{ex - 5:.1f},{LANE_Y + 5}Z" fill="{fill}"><title>{_esc(kind)}: '
            f"{_esc(e['label'])} at {e['t']:.3f} s</title></path>"
        )
    named = [e for e in events if e["kind"] == "oom_victim"] or events[:1]
    for e in named[:3]:
        out.append(
            f'<text x="{x(e["t"]) + 7:.1f}" y="{LANE_Y - 8}" fill="#333">'
            f"{_esc(e['kind'])} {_esc(e['label'])}</text>"
        )
    # Legend.
    lx, ly = float(LEFT), HEIGHT - 22
    items = [(f, colour[f], "dot") for f in flows] + [("failed request", FAILURE, "cross")]
    items += [("fault in force", "#f5b041", "box"), ("waiting for health", "#aed6f1", "box")]
    items += [("recovered", "#1e8449", "line")]
    items += [("kernel event (BPF)", "#555", "tri")]
    for name, fill, shape in items:
        if shape == "dot":
            out.append(f'<circle cx="{lx + 4}" cy="{ly - 4}" r="3.5" fill="{fill}"/>')
        elif shape == "cross":
            out.append(
                f'<path d="M{lx},{ly - 8}L{lx + 8},{ly}M{lx},{ly}L{lx + 8},{ly - 8}" '
                f'stroke="{fill}" stroke-width="1.6"/>'
            )
        elif shape == "box":
            out.append(
                f'<rect x="{lx}" y="{ly - 9}" width="10" height="10" fill="{fill}" '
                'fill-opacity="0.5"/>'
            )
        elif shape == "line":
            out.append(
                f'<line x1="{lx + 4}" y1="{ly - 10}" x2="{lx + 4}" y2="{ly + 1}" stroke="{fill}" '
                'stroke-width="1.5" stroke-dasharray="3 2"/>'
            )
        else:
            out.append(f'<path d="M{lx + 4},{ly - 9}L{lx + 9},{ly}L{lx - 1},{ly}Z" fill="{fill}"/>')
        out.append(f'<text x="{lx + 13}" y="{ly}">{_esc(name)}</text>')
        lx += 24 + 6.5 * len(name)
    if not requests:
        out.append(
            f'<text x="{(LEFT + WIDTH - RIGHT) / 2:.0f}" y="{(TOP + PLOT_BOTTOM) / 2:.0f}" '
            'text-anchor="middle" fill="#888">no requests were sent by a load generator</text>'
        )
    out.append("</svg>")
    return "\n".join(out)


_STYLE = """
body{font-family:sans-serif;margin:1.5em 2em;color:#222;max-width:1100px}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ddd;padding:3px 8px;
text-align:left;font-size:13px}th{background:#f4f4f4}.passed{color:#1e8449;font-weight:bold}
.failed,.error,.interrupted{color:#c0392b;font-weight:bold}
.skipped,.no-effect{color:#b9770e;font-weight:bold}
section{border-top:2px solid #eee;margin-top:1.5em;padding-top:.5em}
pre{background:#fbeeee;padding:.6em;white-space:pre-wrap;font-size:12px}
.figures td:first-child{font-family:monospace}.meta{color:#555;font-size:13px}
"""


def render(run: dict[str, Any], tests: Sequence[dict[str, Any]]) -> str:
    """The whole page: the run's header and summary table, then each test."""
    extra = [SummaryColumn(title, tuple(names)) for title, names in run.get("columns", [])]
    rows = [
        row(
            TestResult(t["nodeid"], t["outcome"], {k: str(v) for k, v in t["figures"].items()}),
            extra,
        )
        for t in tests
    ]
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>pytest-chaos report {_esc(run['started'])}</title>",
        f"<style>{_STYLE}</style></head><body>",
        "<h1>Chaos experiments</h1>",
        f"<p class='meta'>Run started {_esc(run['started'])}; {_esc(run['summary'])}</p>",
        "<p class='meta'>" + "<br>".join(_esc(line) for line in run["header"]) + "</p>",
        "<table><tr>" + "".join(f"<th>{_esc(c)}</th>" for c in columns(extra)) + "</tr>",
    ]
    for t, cells in zip(tests, rows, strict=True):
        anchor = _anchor(t["nodeid"])
        tds = [f"<td>{_esc(c)}</td>" for c in cells]
        tds[1] = f"<td><a href='#{anchor}'>{_esc(cells[1])}</a></td>"
        tds[4] = f"<td class='{_css(t['outcome'])}'>{_esc(cells[4])}</td>"
        parts.append("<tr>" + "".join(tds) + "</tr>")
    parts.append("</table>")
    for t in tests:
        parts.append(f"<section id='{_anchor(t['nodeid'])}'>")
        parts.append(
            f"<h2>{_esc(t['nodeid'])} <span class='{_css(t['outcome'])}'>"
            f"{_esc(t['outcome'].upper())}</span></h2>"
        )
        parts.append(f"<p class='meta'>{t['duration_s']:.1f} s</p>")
        if t.get("timeline"):
            parts.append(svg_timeline(t["timeline"]))
        if t.get("message"):
            parts.append(f"<pre>{_esc(t['message'])}</pre>")
        if t["figures"]:
            parts.append("<table class='figures'><tr><th>figure</th><th>value</th></tr>")
            parts += [
                f"<tr><td>{_esc(k)}</td><td>{_esc(v)}</td></tr>" for k, v in t["figures"].items()
            ]
            parts.append("</table>")
        timeline = t.get("timeline") or {}
        parts += _history(timeline.get("history"), timeline.get("evidence") or {})
        parts += _evidence(timeline.get("evidence") or {})
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _history(summary: dict[str, Any] | None, files: dict[str, str]) -> list[str]:
    """The test's history in short: per fault window, the operations that ended ok,
    fail (definitely not done) and info (unknown), and the ok ones' latency; with
    links to the history and its Elle export when they were written."""
    if not summary:
        return []
    links = " ".join(
        f"<a href='{_esc(files[k])}'>{label}</a>"
        for k, label in (("history", "history (JSON lines)"), ("elle", "Elle export"))
        if files.get(k)
    )
    out = [
        f"<p class='meta'>{summary['operations']} operations. {links}</p>",
        "<table class='history'><tr><th>window</th><th>ok</th><th>fail</th><th>info</th>"
        "<th>ok p50 ms</th><th>ok max ms</th></tr>",
    ]
    for w in summary["windows"]:
        cells = [w["window"], w["ok"], w["fail"], w["info"], w.get("ok_p50_ms", "-"),
                 w.get("ok_max_ms", "-")]  # fmt: skip
        out.append("<tr>" + "".join(f"<td>{_esc(c)}</td>" for c in cells) + "</tr>")
    out.append("</table>")
    return out


def _evidence(files: dict[str, str]) -> list[str]:
    """Links to the logs, kernel lines and BPF events kept for the test."""
    names = {"kernel": "kernel log"}
    links = [
        f"<a href='{_esc(path)}'>{_esc(names.get(kind, kind.replace(':', ' ')))}</a>"
        for kind, path in files.items()
        if kind not in ("history", "elle")
    ]
    return [f"<p class='meta'>Evidence: {' · '.join(links)}</p>"] if links else []


def _anchor(nodeid: str) -> str:
    return "t-" + "".join(c if c.isalnum() else "-" for c in nodeid)


def write(directory: Path, run: dict[str, Any], tests: Sequence[dict[str, Any]]) -> Path:
    """Write index.html and report.json into ``directory``; return the page's path."""
    directory.mkdir(parents=True, exist_ok=True)
    page = directory / "index.html"
    (directory / "report.json").write_text(
        json.dumps({"run": run, "tests": list(tests)}, indent=1, default=str)
    )
    page.write_text(render(run, tests))
    return page


def run_info(
    header: list[str],
    started: float,
    counts: dict[str, int],
    extra: Sequence[SummaryColumn] = (),
) -> dict[str, Any]:
    summary = ", ".join(f"{n} {k}" for k, n in counts.items() if n) or "no tests"
    return {
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(started)),
        "header": header,
        "summary": summary,
        "columns": [[c.title, list(c.figures)] for c in extra],
    }
