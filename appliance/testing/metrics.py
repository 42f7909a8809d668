"""Metrics test support: the Grafana dashboard's metric names, a made-up appliance view."""

from __future__ import annotations

import json
import re
import time
from dataclasses import replace
from pathlib import Path

import appliance.metrics.collector
import mtcp_core
from appliance.metrics.http_block import DURATION_BUCKETS, HttpSnapshot
from appliance.metrics.source import ApplianceView, CoreView

_PROMQL = {"by", "without", "on", "ignoring", "group_left", "group_right", "le", "bool"}
DASHBOARD = Path(appliance.metrics.collector.__file__).parent / "grafana-dashboard.json"


def dashboard_metrics() -> set[str]:
    """The series names the dashboard's queries read."""
    board = json.loads(DASHBOARD.read_text())
    names: set[str] = set()
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    assert exprs, "the dashboard has no queries"
    for expr in exprs:
        expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
        expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
        expr = re.sub(r"\b(by|without)\s*\([^)]*\)", "", expr)  # grouping labels
        for word in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*(?=\s*[^\w(]|\s*$)", expr):
            if word not in _PROMQL and word.startswith(("mtcp_", "process_")):
                names.add(word)
    return names


def make_view(restarts: int = 0, up: bool = True, scale: int = 1) -> ApplianceView:
    stack = {n: (0 if mtcp_core.stat_is_gauge(n) else 10 * scale) for n in mtcp_core.stat_names()}
    stack.update(state_established=3, state_time_wait=5, txq_data=2, rx_batch_1=4 * scale)
    http = HttpSnapshot(
        core=0,
        pid=10,
        requests={("GET", "2xx"): 7 * scale, ("HEAD", "4xx"): 1},
        response_bytes=1234 * scale,
        duration_sum_s=0.5,
        duration_buckets=(1, 2) + (0,) * (len(DURATION_BUCKETS) - 2) + (4 * scale,),
        sites={"default": ({"2xx": 7 * scale, "4xx": 1}, 1234 * scale)},
    )
    cores = [
        CoreView(0, 0, 10 if up else None, restarts, time.time(), stack, http, 1.5, 1 << 20),
        CoreView(1, 1, 11, 0, time.time(), stack, replace(http, core=1), 0.5, 1 << 20),
    ]
    return ApplianceView("mtcp", "tap", "0.1.0", "http://198.18.0.2:80/", cores)


class ViewSource:
    def __init__(self, view: ApplianceView) -> None:
        self.current = view

    def view(self) -> ApplianceView:
        return replace(self.current, taken_at=time.monotonic())


# PromQL words that look like metric names but are functions, keywords or labels
