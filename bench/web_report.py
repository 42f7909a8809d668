"""web_bench's report: the figures and ratios the issues' targets use, the Markdown tables
and the chart (SVG, PNG when a converter is there). Part of ``make bench`` (web_bench.py)."""

from __future__ import annotations

import html
import math
import os
import shutil
import statistics
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from web_measure import (
    Idle,
    Row,
    _fmt_size,
)
from web_servers import (
    NAN,
    PRIORITY_BULK_FLOWS,
    PRIORITY_SHORT_CONNS,
    TLS_KINDS,
    VARIANTS,
)

# issue 6's targets: (what, its key in figures(), bound, how the figure must compare to it);
# "short-64B-c64" is the paper's short-connection row, one worker
TARGETS: tuple[tuple[str, str, float, str], ...] = (
    ("short 64 B req/s, mtcp / linux", "rps:mtcp/linux", 1.7, ">="),
    ("short 64 B req/s, mtcp / nginx", "rps:mtcp/nginx", 0.9, ">="),
    ("short 64 B whole-machine CPU/req, mtcp / linux", "machine:mtcp/linux", 0.6, "<="),
    ("download Gb/s, mtcp / nginx", "gbps:mtcp/nginx", 0.8, ">="),
    ("priority: short conn. p99 under 8 flows, on / off", "p99:on/off", 0.5, "<="),
    ("priority: handshake p99 under 8 flows, on / off (extra)", "handshake p99:on/off", 0.5, "<="),
    ("idle CPU of the appliance, mtcp (% of a core)", "idle:mtcp", 1.0, "<"),
    ("idle CPU of the appliance, linux (% of a core)", "idle:linux", 1.0, "<"),
    # issue 18's targets
    ("TLS 1.3 full handshakes/s, mtcp / nginx", "tls-full:mtcp/nginx", 0.9, ">="),
    ("TLS 1.3 resumed handshakes/s, mtcp / nginx", "tls-resumed:mtcp/nginx", 0.9, ">="),
    ("keep-alive 64 B over TLS req/s, mtcp / nginx", "tls-keepalive:mtcp/nginx", 0.9, ">="),
    ("TLS 1.3 full handshakes/s, linux / nginx", "tls-full:linux/nginx", 0.9, ">="),
    ("TLS 1.3 resumed handshakes/s, linux / nginx", "tls-resumed:linux/nginx", 0.9, ">="),
    ("keep-alive 64 B over TLS req/s, linux / nginx", "tls-keepalive:linux/nginx", 0.9, ">="),
)
TARGET_ROW = "short-64B-c64"

# issue 13's targets: mtcp (static responder on) against nginx and lighttpd, per row driven
# by wrk and by the load generator (where one wrk core is the ceiling)
TARGETS_13: tuple[tuple[str, str, float, str], ...] = tuple(
    t
    for pre, tool in (("", "wrk"), ("load-", "load"))
    for t in (
        (f"short 64 B req/s, mtcp / nginx ({tool})", f"{pre}short-64B-c64 rps:mtcp/nginx",
         1.3, ">="),
        (f"short 64 B req/s, mtcp / lighttpd ({tool})", f"{pre}short-64B-c64 rps:mtcp/lighttpd",
         1.3, ">="),
        (f"short 64 B server CPU/req, mtcp / nginx ({tool})",
         f"{pre}short-64B-c64 srv:mtcp/nginx", 0.5, "<="),
        (f"keep-alive 64 B req/s, mtcp / lighttpd ({tool})",
         f"{pre}keepalive-64B-c64 rps:mtcp/lighttpd", 1.1, ">="),
        (f"keep-alive 64 B server CPU/req, mtcp / lighttpd ({tool})",
         f"{pre}keepalive-64B-c64 srv:mtcp/lighttpd", 1.0, "<="),
        (f"short 64 B whole-machine CPU/req, mtcp / nginx ({tool})",
         f"{pre}short-64B-c64 machine:mtcp/nginx", 0.8, "<="),
    )
)  # fmt: skip


def median(vals: Sequence[float]) -> float:
    good = [v for v in vals if not math.isnan(v)]
    return statistics.median(good) if good else NAN


def pick(rows: Sequence[Row], attr: str, **match: Any) -> float:
    """The median of ``attr`` over the rows that match (NaN when none)."""
    sel = [getattr(r, attr) for r in rows if all(getattr(r, k) == v for k, v in match.items())]
    return median(sel)


def _ratio(a: float, b: float) -> float:
    return a / b if b and not math.isnan(a) and not math.isnan(b) else NAN


def figures(rows: Sequence[Row], idles: Sequence[Idle]) -> dict[str, float]:
    """The ratios that the targets use, and the same ratios for every other workload."""
    main = [r for r in rows if r.kind != "scaling" and r.workers == 1]
    f: dict[str, float] = {}
    t = {"workload": TARGET_ROW}
    f["rps:mtcp/linux"] = _ratio(
        pick(main, "rps", server="mtcp", **t), pick(main, "rps", server="linux", **t)
    )
    f["rps:mtcp/nginx"] = _ratio(
        pick(main, "rps", server="mtcp", **t), pick(main, "rps", server="nginx", **t)
    )
    f["machine:mtcp/linux"] = _ratio(
        pick(main, "machine_us_per_unit", server="mtcp", **t),
        pick(main, "machine_us_per_unit", server="linux", **t),
    )
    f["gbps:mtcp/nginx"] = _ratio(
        pick(main, "gbps", server="mtcp", kind="download"),
        pick(main, "gbps", server="nginx", kind="download"),
    )
    for key, attr in (
        ("p99:on/off", "conn_p99_ms"),
        ("handshake p99:on/off", "hs_p99_ms"),
        ("wrk p99:on/off", "p99_ms"),
    ):
        f[key] = _ratio(
            pick(main, attr, kind="priority", priority=True),
            pick(main, attr, kind="priority", priority=False),
        )
    for kind in TLS_KINDS:
        for app in ("mtcp", "linux"):
            f[f"{kind}:{app}/nginx"] = _ratio(
                pick(main, "rps", server=app, kind=kind),
                pick(main, "rps", server="nginx", kind=kind),
            )
    for kind in ("mtcp", "linux"):
        f[f"idle:{kind}"] = max((i.server_cpu_pct for i in idles if i.server == kind), default=NAN)
    for wl in dict.fromkeys(r.workload for r in main if r.kind in ("short", "keepalive")):
        for other in ("linux", "nginx", "lighttpd", *VARIANTS):
            for attr, tag in (
                ("rps", "rps"),
                ("machine_us_per_unit", "machine"),
                ("server_us_per_unit", "srv"),
            ):
                f[f"{wl} {tag}:mtcp/{other}"] = _ratio(
                    pick(main, attr, server="mtcp", workload=wl),
                    pick(main, attr, server=other, workload=wl),
                )
    return f


def targets(fig: dict[str, float]) -> list[dict[str, Any]]:
    out = []
    for label, key, bound, op in (*TARGETS, *TARGETS_13):
        v = fig.get(key, NAN)
        met = None if math.isnan(v) else {">=": v >= bound, "<=": v <= bound, "<": v < bound}[op]
        out.append(
            {"target": label, "key": key, "value": v, "bound": f"{op} {bound:g}", "met": met}
        )
    return out


def _num(v: float, spec: str) -> str:
    return "-" if math.isnan(v) else format(v, spec)


def md_table(head: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    widths = [
        max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(head)
    ]
    right = [i > 1 for i in range(len(head))]

    def line(cells: Sequence[str]) -> str:
        return (
            "| "
            + " | ".join(
                c.rjust(w) if r else c.ljust(w)
                for c, w, r in zip(cells, widths, right, strict=True)
            )
            + " |"
        )

    sep = (
        "|"
        + "|".join(
            ("-" * (w + 1) + ":") if r else ("-" * (w + 2))
            for w, r in zip(widths, right, strict=True)
        )
        + "|"
    )
    return "\n".join([line(head), sep, *(line(r) for r in body)])


def rows_table(rows: Sequence[Row]) -> str:
    head = [
        "workload",
        "server",
        "req/s",
        "Gb/s",
        "p50 ms",
        "p99 ms",
        "errors",
        "srv CPU %",
        "srv us/unit",
        "all us/unit",
        "wake/req",
    ]
    body = []
    for r in rows:
        name = r.workload
        if r.workers != 1:
            name += f" w{r.workers}"
        server = r.server + (
            ""
            if r.priority is None or r.kind != "priority"
            else (" prio on" if r.priority else " prio off")
        )
        unit = "/MiB" if r.unit == "MiB" else ""
        body.append(
            [
                name,
                server,
                _num(r.rps, ".0f"),
                _num(r.gbps, ".2f"),
                _num(r.p50_ms, ".2f"),
                _num(r.p99_ms, ".2f"),
                str(r.errors) if r.ok else "FAIL",
                _num(r.server_cpu_pct, ".0f"),
                _num(r.server_us_per_unit, ".1f") + unit,
                _num(r.machine_us_per_unit, ".1f") + unit,
                _num(r.wakeups_per_req, ".2f"),
            ]
        )
    return md_table(head, body)


def idle_table(idles: Sequence[Idle]) -> str:
    body = [
        [
            i.server + (f" w{i.workers}" if i.workers != 1 else ""),
            f"{i.start_s:.2f}",
            _num(i.server_cpu_pct, ".2f"),
            _num(i.machine_cpu_pct, ".1f"),
        ]
        for i in idles
    ]
    return md_table(["server", "start s", "idle CPU, % of a core", "machine busy %"], body)


def targets_table(tg: Sequence[dict[str, Any]]) -> str:
    body = [
        [
            t["target"],
            _num(t["value"], ".2f"),
            t["bound"],
            {True: "met", False: "MISSED", None: "no figure"}[t["met"]],
        ]
        for t in tg
    ]
    return md_table(["target (issues 6, 13, 18)", "value", "target", ""], body)


def priority_table(rows: Sequence[Row]) -> str:
    head = ["priority", "link Mb/s", "conns", "conn p50 ms", "conn p99 ms", "handshake p50 ms",
            "handshake p99 ms", "req/s", "wrk p50 ms", "wrk p99 ms", "errors",
            "8 flows Gb/s"]  # fmt: skip
    body = [
        [
            "on" if r.priority else "off",
            str(r.link_mbps or "none"),
            str(r.conn_count),
            _num(r.conn_p50_ms, ".2f"),
            _num(r.conn_p99_ms, ".2f"),
            _num(r.hs_p50_ms, ".2f"),
            _num(r.hs_p99_ms, ".2f"),
            _num(r.rps, ".0f"),
            _num(r.p50_ms, ".2f"),
            _num(r.p99_ms, ".2f"),
            str(r.errors) if r.ok else "FAIL",
            _num(r.background.get("gbps", NAN), ".2f"),
        ]
        for r in rows
        if r.kind == "priority"
    ]
    return md_table(head, body)


def report(doc: dict[str, Any], rows: Sequence[Row], idles: Sequence[Idle]) -> str:
    env = doc["environment"]
    parts = [
        f"# web_bench {doc['when']}{' (quick)' if doc['settings']['quick'] else ''}",
        "",
        f"{env.get('cpu_model', '?')}, {env.get('cpus')} CPUs, kernel {env.get('kernel')}, "
        f"commit {env.get('commit') or '?'}; server on CPU {doc['server_cpus']}, wrk on CPU "
        f"{doc['client_cpus']}; {doc['settings']['duration']:g} s per row",
        "",
        rows_table([r for r in rows if r.kind != "scaling"]),
        "",
        "srv: the server's whole process tree; all: every CPU of the machine (/proc/stat); "
        "per request, or per MiB for downloads.",
        "",
        f"Priority queueing (mtcp): {PRIORITY_BULK_FLOWS} connections download "
        f"{_fmt_size(doc['settings']['big'])} files in a loop, wrk makes "
        f"{PRIORITY_SHORT_CONNS} short connections at a time, and a probe one at a time "
        f"(at most {doc['settings']['probe_rate']:g}/s) timed from connect() to close "
        "(conn: the handshake included, which wrk's latency leaves out; handshake: connect() "
        "alone), the stack's sending shaped to a link of "
        f"{doc['settings'].get('priority_link_mbps') or 'no'} Mb/s (a veth has no line rate):",
        "",
        priority_table(rows),
        "",
        idle_table(idles),
        "",
        targets_table(doc["targets"]),
    ]
    if scaling := [r for r in rows if r.kind == "scaling"]:
        parts += ["", "## Scaling (short 64 B)", "", rows_table(scaling)]
    parts += ["", f"scaling: {doc['scaling']}"]
    return "\n".join(parts) + "\n"


# ---------------------------------------------------------------- chart

COLORS = {
    "mtcp": "#d95f02",
    "linux": "#7570b3",
    "nginx": "#1b9e77",
    "lighttpd": "#e7298a",
    "prio on": "#d95f02",
    "prio off": "#999999",
}


def _panels(rows: Sequence[Row]) -> list[tuple[str, str, list[tuple[str, float]]]]:
    panels: list[tuple[str, str, list[tuple[str, float]]]] = []
    seen: dict[str, int] = {}
    for r in rows:
        if r.kind == "priority":
            title, unit = "short conn. p99 under 8 downloads (mtcp)", "ms"
            label, value = "prio on" if r.priority else "prio off", r.conn_p99_ms
        elif r.kind == "scaling":
            title, unit, label, value = f"short 64B, {r.workers} workers", "req/s", r.server, r.rps
        elif r.kind == "download":
            title, unit, label, value = r.workload, "Gb/s", r.server, r.gbps
        else:
            title, unit, label, value = r.workload, "req/s", r.server, r.rps
        if title not in seen:
            seen[title] = len(panels)
            panels.append((title, unit, []))
        bars = panels[seen[title]][2]
        bars[:] = [(lbl, v) for lbl, v in bars if lbl != label] + [(label, value)]
    return panels


def chart_svg(rows: Sequence[Row], title: str) -> tuple[str, int, int]:
    panels = _panels(rows)
    pw, ph, cols = 300, 220, 4
    nrows = max(1, math.ceil(len(panels) / cols))
    width, height = cols * pw + 20, nrows * ph + 50
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        'font-family="sans-serif" font-size="11">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="10" y="24" font-size="15" font-weight="bold">{html.escape(title)}</text>',
    ]
    for i, (ptitle, unit, bars) in enumerate(panels):
        x0, y0 = 10 + (i % cols) * pw, 40 + (i // cols) * ph
        out.append(
            f'<text x="{x0 + 5}" y="{y0 + 14}" font-weight="bold">'
            f"{html.escape(ptitle)} ({unit})</text>"
        )
        top = max((v for _, v in bars if not math.isnan(v)), default=0.0) or 1.0
        bw, base, span = (pw - 30) / max(1, len(bars)), y0 + ph - 30, ph - 65
        for j, (label, v) in enumerate(bars):
            h = 0.0 if math.isnan(v) else span * v / top
            x = x0 + 10 + j * bw
            out.append(
                f'<rect x="{x + 4:.1f}" y="{base - h:.1f}" width="{bw - 8:.1f}" '
                f'height="{h:.1f}" fill="{COLORS.get(label, "#666")}"/>'
            )
            txt = "n/a" if math.isnan(v) else (f"{v:.0f}" if v >= 100 else f"{v:.2f}")
            out.append(
                f'<text x="{x + bw / 2:.1f}" y="{base - h - 3:.1f}" '
                f'text-anchor="middle">{txt}</text>'
            )
            out.append(
                f'<text x="{x + bw / 2:.1f}" y="{base + 14:.1f}" '
                f'text-anchor="middle">{html.escape(label)}</text>'
            )
        out.append(
            f'<line x1="{x0 + 10}" y1="{base}" x2="{x0 + pw - 20}" y2="{base}" stroke="#333"/>'
        )
    out.append("</svg>")
    return "\n".join(out), width, height


def render_png(svg: str, width: int, height: int, png: Path) -> str | None:
    """The SVG as a PNG through headless Chromium; returns why not, or None."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        return "no chromium (apt-get install chromium): wrote the SVG only"
    with tempfile.TemporaryDirectory(prefix="web-bench-chart-") as tmp:
        page = Path(tmp) / "chart.html"
        page.write_text(f'<html><body style="margin:0">{svg}</body></html>')
        argv = [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-sync",
            f"--user-data-dir={tmp}/profile",
            f"--window-size={width},{height}",
            f"--screenshot={png}",
            page.as_uri(),
        ]
        try:
            # a sanitizer runtime preloaded for the appliance (scripts/test-asan) breaks it
            env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env)
        except subprocess.TimeoutExpired:
            return "chromium did not finish the chart within 60 s"
    if proc.returncode != 0 or not png.exists():
        return f"chromium failed ({proc.returncode}): {proc.stderr[-300:]}"
    return None


# ---------------------------------------------------------------- the run
