"""The status page (``/server-status``, like lighttpd's mod_status): per-core rates, connection
states and worker facts, as HTML (jinja2, refreshing itself) or JSON (``?json``), and charts of
the last minutes (inline SVG, ``metrics/charts.py``; the numbers as JSON: ``?series``).

Rates need two moments: a sampler thread takes a view every ``interval`` seconds and a page
shows the rates between the last two samples. Every sample's rates are also kept for
``HISTORY_S`` (15 minutes): requests/s, connections/s, throughput, drops/s and
retransmissions/s, per core; the charts show the last ``minutes`` (5 to 15) of them.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup

import mtcp_core
from appliance.metrics import charts
from appliance.metrics.source import ApplianceView, CoreView, MetricsSource

# TCB states (a closed connection has no TCB and a listening socket none either: both are
# left out), in the core's order
STATES: tuple[str, ...] = tuple(
    s.lower() for s in mtcp_core.TCP_STATES if s not in ("CLOSED", "LISTEN")
)
# name in the status data -> what it counts
RATES: tuple[str, ...] = (
    "rx_packets",
    "tx_packets",
    "rx_bytes",
    "tx_bytes",
    "connections",
    "requests",
    "response_bytes",
    "cpu_seconds",
)

HISTORY_S = 15 * 60
# charted series: key, title, unit, and whether the kernel stack (no stack counters) has it
SERIES: tuple[tuple[str, str, str, bool], ...] = (
    ("requests", "Requests", "/s", True),
    ("connections", "Connections opened", "/s", False),
    ("throughput", "Throughput (sent)", "B/s", True),
    ("drops", "Drops", "/s", False),
    ("retransmits", "Retransmissions", "/s", False),
)
_SERIES_KEYS = tuple(k for k, _, _, _ in SERIES)

_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=jinja2.select_autoescape(["html"]),
    undefined=jinja2.StrictUndefined,
)


def _totals(c: CoreView) -> dict[str, float]:
    st = c.stack or {}
    return {
        "rx_packets": st.get("rx_packets", 0),
        "tx_packets": st.get("tx_packets", 0),
        "rx_bytes": st.get("rx_bytes", 0),
        "tx_bytes": st.get("tx_bytes", 0),
        "connections": st.get("conn_passive_opens", 0) + st.get("conn_active_opens", 0),
        "requests": c.http.total_requests if c.http else 0,
        "response_bytes": c.http.response_bytes if c.http else 0,
        "cpu_seconds": c.cpu_seconds or 0.0,
        # charted only: frames sent by the stack, or (kernel stack) the responses' bytes
        "throughput": st.get("tx_bytes", 0)
        if c.stack
        else (c.http.response_bytes if c.http else 0),
        "drops": sum(v for k, v in st.items() if k.startswith("drop_")),
        "retransmits": st.get("retransmits", 0),
    }


@dataclass(frozen=True)
class _Sample:
    at: float
    totals: dict[int, dict[str, float]]


class StatusPage:
    """Renders the status of a ``MetricsSource``; ``start()`` runs the rate sampler."""

    def __init__(self, source: MetricsSource, interval: float = 1.0) -> None:
        self.source = source
        self.interval = interval
        self._samples: deque[_Sample] = deque(maxlen=2)
        # (monotonic time, {core: {series key: rate}}), one entry per sample
        self._history: deque[tuple[float, dict[int, dict[str, float]]]] = deque(
            maxlen=int(HISTORY_S / interval) + 2
        )
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sample(self, view: ApplianceView | None = None) -> None:
        view = view or self.source.view()
        s = _Sample(view.taken_at, {c.core: _totals(c) for c in view.cores})
        with self._lock:
            prev = self._samples[-1] if self._samples else None
            self._samples.append(s)
            if prev is not None and s.at > prev.at:
                dt = s.at - prev.at
                rates = {}
                for core, now in s.totals.items():
                    before = prev.totals.get(core, now)
                    # a counter that went down (a worker's restart) counts as no change
                    rates[core] = {
                        k: max(now[k] - before.get(k, now[k]), 0) / dt for k in _SERIES_KEYS
                    }
                self._history.append((s.at, rates))

    def start(self) -> None:
        self.sample()
        self._thread = threading.Thread(target=self._run, name="status-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.sample()
            except Exception:  # noqa: BLE001 - a bad read must not end the sampler
                continue

    def _rates(self) -> tuple[float, dict[int, dict[str, float]]]:
        with self._lock:
            if len(self._samples) < 2:
                return 0.0, {}
            a, b = self._samples[0], self._samples[1]
        dt = b.at - a.at
        if dt <= 0:
            return 0.0, {}
        rates: dict[int, dict[str, float]] = {}
        for core, now in b.totals.items():
            before = a.totals.get(core, now)
            rates[core] = {k: max(now[k] - before.get(k, 0), 0) / dt for k in RATES}
        return dt, rates

    def data(self) -> dict[str, Any]:
        """The page's content as plain data (the ``?json`` answer)."""
        view = self.source.view()
        dt, rates = self._rates()
        now = time.time()
        cores: list[dict[str, Any]] = []
        total_rates = dict.fromkeys(RATES, 0.0)
        total_states = dict.fromkeys(STATES, 0)
        for c in view.cores:
            st = c.stack or {}
            r = rates.get(c.core, dict.fromkeys(RATES, 0.0))
            states = {s: (st.get(f"state_{s}", 0) if c.up else 0) for s in STATES}
            for k in RATES:
                total_rates[k] += r[k]
            for s in STATES:
                total_states[s] += states[s]
            t = _totals(c)
            cores.append(
                {
                    "core": c.core,
                    "cpu": c.cpu,
                    "pid": c.pid,
                    "up": c.up,
                    "restarts": c.restarts,
                    "uptime_s": round(now - c.started_at, 1) if c.started_at and c.up else None,
                    "rss_bytes": c.rss_bytes,
                    "rates": _rates_out(r),
                    "connections": states,
                    "totals": {
                        "requests": int(t["requests"]),
                        "rx_packets": int(t["rx_packets"]),
                        "tx_packets": int(t["tx_packets"]),
                        "connections_opened": int(t["connections"]),
                        "response_bytes": int(t["response_bytes"]),
                        "retransmits": st.get("retransmits", 0),
                        "drops": sum(v for k, v in st.items() if k.startswith("drop_")),
                    },
                    "tx_queues": {q: st.get(f"txq_{q}", 0) for q in ("control", "ack", "data")},
                    "responder": responder_view(st),
                }
            )
        return {
            "appliance": {
                "version": view.version,
                "stack": view.stack,
                "backend": view.backend,
                "serve_url": view.serve_url,
                "supervisor_pid": view.supervisor_pid,
                "uptime_s": round(now - view.started_at, 1),
                "draining": view.draining,
            },
            "interval_s": round(dt, 3),
            "cores": cores,
            "total": {
                "rates": _rates_out(total_rates),
                "connections": total_states,
                "responder": _responder_total([c["responder"] for c in cores]),
            },
        }

    def series(self, minutes: float = 15, now: float | None = None) -> dict[str, Any]:
        """The charted rates of the last ``minutes`` (5..15): seconds before now (``t``),
        per core and in total; ``available``: what this stack counts."""
        window = min(max(minutes, 5.0), HISTORY_S / 60) * 60
        now = time.monotonic() if now is None else now
        with self._lock:
            hist = [(at, r) for at, r in self._history if now - at <= window]
        cores = sorted({c for _, r in hist for c in r})
        kernel = self.source.view().stack != "mtcp"
        out: dict[str, Any] = {
            "window_s": window,
            "t": [round(at - now, 3) for at, _ in hist],
            "cores": {
                str(c): {
                    k: [round(r.get(c, {}).get(k, 0.0), 3) for _, r in hist] for k in _SERIES_KEYS
                }
                for c in cores
            },
            "total": {
                k: [round(sum(x.get(k, 0.0) for x in r.values()), 3) for _, r in hist]
                for k in _SERIES_KEYS
            },
            "available": {k: (avail or not kernel) for k, _, _, avail in SERIES},
        }
        return out

    def charts(self, minutes: float = 15) -> list[Markup]:
        """One inline SVG chart per series."""
        s = self.series(minutes)
        out = []
        for key, title, unit, _ in SERIES:
            lines: list[tuple[str, str, list[float], bool]] = [
                (f"core {c}", charts.core_color(i), v[key], False)
                for i, (c, v) in enumerate(s["cores"].items())
            ]
            lines.append(("all", charts.TOTAL_COLOR, s["total"][key], True))
            note = "" if s["available"][key] else "not counted on the kernel's stack"
            if not s["t"]:
                note = "collecting: the first points come within seconds"
            svg = charts.chart(f"{title}", unit, s["window_s"], s["t"], lines, note)
            out.append(Markup(f'<figure class="chart" id="chart-{key}">{svg}</figure>'))
        return out

    def html(self, refresh: int = 2, minutes: float = 15) -> str:
        return _env.get_template("server-status.html").render(
            s=self.data(),
            states=STATES,
            refresh=refresh,
            fmt_bytes=fmt_bytes,
            fmt_num=fmt_num,
            charts=self.charts(minutes),
            minutes=round(min(max(minutes, 5.0), HISTORY_S / 60)),
            fmt_ratio=fmt_ratio,
        )


def responder_view(st: dict[str, int]) -> dict[str, Any]:
    """The static responder's counters of one core: hits, misses (requests for nothing
    installed), fallbacks (requests it left to Python, by reason), the hit ratio (hits of
    all the requests it looked at; None before the first), its table."""
    fallbacks = {k[len("rsp_fb_") :]: v for k, v in st.items() if k.startswith("rsp_fb_")}
    hits, misses = st.get("rsp_hits", 0), st.get("rsp_misses", 0)
    seen = hits + misses + sum(fallbacks.values())
    return {
        "hits": hits,
        "misses": misses,
        "fallbacks": fallbacks,
        "hit_ratio": round(hits / seen, 4) if seen else None,
        "entries": st.get("rsp_entries", 0),
        "bytes": st.get("rsp_bytes", 0),
    }


def _responder_total(views: list[dict[str, Any]]) -> dict[str, Any]:
    total: dict[str, int] = {"rsp_hits": 0, "rsp_misses": 0, "rsp_entries": 0, "rsp_bytes": 0}
    for v in views:
        total["rsp_hits"] += v["hits"]
        total["rsp_misses"] += v["misses"]
        total["rsp_entries"] += v["entries"]
        total["rsp_bytes"] += v["bytes"]
        for k, n in v["fallbacks"].items():
            total[f"rsp_fb_{k}"] = total.get(f"rsp_fb_{k}", 0) + n
    return responder_view(total)


def fmt_ratio(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def _rates_out(r: dict[str, float]) -> dict[str, float]:
    out = {f"{k}_per_s": round(v, 2) for k, v in r.items() if k != "cpu_seconds"}
    out["cpu_percent"] = round(r.get("cpu_seconds", 0.0) * 100, 1)
    return out


def fmt_num(v: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(v) >= scale:
            return f"{v / scale:.1f}{unit}"
    return f"{v:.0f}" if float(v).is_integer() or abs(v) >= 10 else f"{v:.1f}"


def fmt_bytes(v: float | None) -> str:
    if v is None:
        return "-"
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(v) >= scale:
            return f"{v / scale:.1f} {unit}"
    return f"{v:.0f} B"
