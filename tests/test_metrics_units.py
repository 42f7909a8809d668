"""The metrics pieces without a running appliance: the workers' shared HTTP blocks, the
collectors over a made-up view, the status page's rates, the dashboard's names. No
privileges needed."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

import mtcp_core
from appliance.metrics.collector import GENERIC_STATS, STACK_FAMILIES, make_registry
from appliance.metrics.http_block import DURATION_BUCKETS, HttpBlock
from appliance.metrics.status import StatusPage
from appliance.testing.metrics import DASHBOARD, ViewSource, dashboard_metrics, make_view


@dataclass(frozen=True)
class Rec:
    method: str
    status: int
    bytes_sent: int
    duration_s: float
    core: int = 0


def test_http_block_is_written_by_a_forked_worker_and_read_by_the_supervisor(
    tmp_path: Path,
) -> None:
    block = HttpBlock.create(tmp_path / "http-1", 1)
    first = block.read()
    assert first is not None and first.total_requests == 0
    pid = os.fork()
    if pid == 0:  # the worker: its own writes, no message to anyone
        try:
            block.claim(os.getpid())
            block.record(Rec("GET", 200, 1000, 0.0007))
            block.record(Rec("GET", 200, 24, 0.0007))
            block.record(Rec("head", 304, 0, 0.001))
            block.record(Rec("BREW", 418, 10, 0.3))
            block.record(Rec("POST", 503, 5, 42.0))
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert status == 0
    snap = block.read()
    assert snap is not None
    assert (snap.core, snap.pid) == (1, pid)
    assert snap.requests[("GET", "2xx")] == 2
    assert snap.requests[("HEAD", "3xx")] == 1
    assert snap.requests[("OTHER", "4xx")] == 1
    assert snap.requests[("POST", "5xx")] == 1
    assert snap.total_requests == 5 and snap.response_bytes == 1039
    assert snap.duration_sum_s == pytest.approx(0.0007 * 2 + 0.001 + 0.3 + 42.0)
    b = dict(zip((*DURATION_BUCKETS, float("inf")), snap.duration_buckets, strict=True))
    assert (b[0.001], b[0.5], b[float("inf")]) == (3, 1, 1)  # le is inclusive
    assert sum(snap.duration_buckets) == 5
    # a second view of the same file sees the same counts (the supervisor maps it anew)
    assert HttpBlock(tmp_path / "http-1", 1).read() == snap
    block.close()


def _scrape(source: ViewSource) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(make_registry(source)).decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_every_stack_stat_is_exported_once_under_the_conventions() -> None:
    samples = _scrape(ViewSource(make_view()))
    names = {n for n, _ in samples}
    mapped = {s for f in STACK_FAMILIES for s in f.stats}
    assert set(mtcp_core.stat_names()) <= mapped | set(GENERIC_STATS) | {
        n for n in mtcp_core.stat_names() if n.startswith("rx_batch_")
    }
    for stat in GENERIC_STATS:
        suffix = "" if mtcp_core.stat_is_gauge(stat) else "_total"
        assert f"mtcp_{stat}{suffix}" in names, stat
    assert samples[("mtcp_connections", (("core", "0"), ("state", "established")))] == 3
    assert samples[("mtcp_tx_queue_length", (("core", "1"), ("list", "data")))] == 2
    assert samples[("mtcp_drops_total", (("core", "0"), ("reason", "tcp_checksum")))] == 10
    assert samples[("mtcp_rx_batch_size_bucket", (("core", "0"), ("le", "1.0")))] == 4
    assert samples[("mtcp_rx_batch_size_bucket", (("core", "0"), ("le", "+Inf")))] == 64
    assert (
        samples[
            (
                "mtcp_http_requests_total",
                (("core", "1"), ("method", "HEAD"), ("status_class", "4xx")),
            )
        ]
        == 1
    )
    assert samples[("mtcp_http_request_duration_seconds_count", (("core", "0"),))] == 7
    assert samples[("mtcp_worker_cpu_seconds_total", (("core", "0"),))] == 1.5


def test_a_dead_workers_gauges_are_left_out_and_its_counters_kept() -> None:
    samples = _scrape(ViewSource(make_view(restarts=2, up=False)))
    assert samples[("mtcp_worker_up", (("core", "0"),))] == 0
    assert samples[("mtcp_worker_restarts_total", (("core", "0"),))] == 2
    assert ("mtcp_worker_pid", (("core", "0"),)) not in samples
    assert ("mtcp_connections", (("core", "0"), ("state", "established"))) not in samples
    assert samples[("mtcp_rx_packets_total", (("core", "0"),))] == 10


def test_the_dashboard_uses_only_exported_names() -> None:
    board = json.loads(DASHBOARD.read_text())
    assert board["title"] == "mtcp-appliance" and board["panels"]
    names = {n for n, _ in _scrape(ViewSource(make_view()))}
    missing = dashboard_metrics() - names
    assert not missing, missing


def test_status_page_rates_and_html() -> None:
    source = ViewSource(make_view())
    page = StatusPage(source)
    page.sample()
    time.sleep(0.05)
    source.current = make_view(scale=3)
    page.sample()
    data = page.data()
    core0 = data["cores"][0]
    dt = data["interval_s"]
    assert dt > 0
    assert core0["rates"]["requests_per_s"] == pytest.approx(14 / dt, rel=0.05)
    assert core0["rates"]["rx_packets_per_s"] == pytest.approx(20 / dt, rel=0.05)
    assert core0["connections"]["established"] == 3
    assert data["total"]["connections"]["time_wait"] == 10
    html = page.html(refresh=5)
    assert '<meta http-equiv="refresh" content="5">' in html
    assert html.count('<tr class="core">') == 4  # two tables, two cores each
    assert "http-equiv" not in page.html(refresh=0)
