"""The benchmark harness (bench/web_bench.py, ``make bench``) in its quick mode, once: every
server and workload gives figures and no errors, the results files are written. Speed is
never checked here: the issue's targets are checked (and printed) by the benchmark itself.
Also wrk's output and the appliance's counters as the harness reads them (no root needed)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

from appliance.testing import run_quick

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

import common  # noqa: E402
import web_bench  # noqa: E402

QUICK_TIMEOUT_S = 240

WRK_OUTPUT = """\
Running 2s test @ http://198.18.0.2:80/f64.bin
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     2.95ms    1.10ms  21.45ms   80.00%
    Req/Sec    16.40k     1.20k   18.00k    70.00%
  Latency Distribution
     50%    2.43ms
     75%    3.10ms
     90%    4.00ms
     99%   11.55ms
  32763 requests in 2.01s, 1.17GB read
  Socket errors: connect 2, read 1, write 0, timeout 3
  Non-2xx or 3xx responses: 4
Requests/sec:  16300.00
Transfer/sec:      3.50MB
"""


def test_parse_wrk() -> None:
    w = common.parse_wrk(WRK_OUTPUT)
    assert w["requests"] == 32763
    assert w["seconds"] == pytest.approx(2.01)
    assert w["bytes"] == pytest.approx(1.17 * 2**30)
    assert w["p50_ms"] == pytest.approx(2.43)
    assert w["p90_ms"] == pytest.approx(4.0)
    assert w["p99_ms"] == pytest.approx(11.55)
    assert (w["socket_errors"], w["non_2xx"], w["errors"]) == (6, 4, 10)


def test_parse_wrk_microseconds_and_no_errors() -> None:
    out = "     50%  812.00us\n     99%    1.20s\n  10 requests in 1.00m, 512.00KB read\n"
    w = common.parse_wrk(out)
    assert w["p50_ms"] == pytest.approx(0.812)
    assert w["p99_ms"] == pytest.approx(1200)
    assert w["seconds"] == pytest.approx(60)
    assert w["bytes"] == 512 * 1024
    assert w["errors"] == 0


def test_parse_counters_sums_cores_and_keeps_reasons() -> None:
    text = """\
# HELP mtcp_retransmits_total TCP segments retransmitted
mtcp_retransmits_total{core="0"} 3.0
mtcp_retransmits_total{core="1"} 4.0
mtcp_drops_total{core="0",reason="tcp_no_memory"} 128.0
mtcp_http_requests_total{core="0",method="GET",status_class="2xx"} 10.0
mtcp_http_requests_total{core="1",method="HEAD",status_class="2xx"} 5.0
mtcp_rx_packets_total{core="0"} 99.0
"""
    c = web_bench.parse_counters(text)
    assert c == {"retransmits": 7.0, "drops:tcp_no_memory": 128.0, "http_requests:2xx": 15.0}
    assert web_bench.counter_delta({"retransmits": 7.0}, c) == {
        "drops:tcp_no_memory": 128.0,
        "http_requests:2xx": 15.0,
    }


def _finite(v: float) -> bool:
    return isinstance(v, int | float) and math.isfinite(v)


def test_only_keeps_the_named_workloads_and_kinds() -> None:
    import argparse

    def names(only: str | None) -> list[str]:
        opts = argparse.Namespace(duration=1.0, quick=False, big=8 << 20, only=only)
        return [wl.name for wl in web_bench.workloads(opts)]

    every = names(None)
    assert len(every) == 16 and "download-8M" in every
    assert names("tls-full,tls-resumed,tls-keepalive") == [
        "tls-full-64B",
        "tls-resumed-64B",
        "tls-keepalive-64B-c64",
    ]
    assert names("load") == [n for n in every if n.startswith("load-")] and len(names("load")) == 4
    assert names("short-64B-c64,download") == ["short-64B-c64", "download-8M"]
    assert names("keepalive") == [
        n for n in every if n.startswith(("keepalive-", "load-keepalive-"))
    ]
    assert names("none") == []


@pytest.mark.requires_root
def test_quick_mode_every_row_has_figures_and_no_errors(tmp_path: Path) -> None:
    path, doc = run_quick(BENCH / "web_bench.py", "web", tmp_path, QUICK_TIMEOUT_S)
    assert path.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = doc["rows"]
    seen = {(r["server"], r["kind"]) for r in rows}
    for server in web_bench.SERVERS:
        for kind in ("short", "keepalive", "download"):
            assert (server, kind) in seen
    for server in web_bench.TLS_SERVERS:
        for kind in web_bench.TLS_KINDS:
            assert (server, kind) in seen
    assert sorted(r["priority"] for r in rows if r["kind"] == "priority") == [False, True]
    for r in rows:
        what = f"{r['server']} {r['workload']}: {r}"
        assert r["ok"] and not r["notes"], what
        assert r["errors"] == 0 and r["requests"] > 0, what
        assert (r["gbps"] if r["kind"] == "download" else r["rps"]) > 0, what
        for key in ("p50_ms", "p99_ms", "server_us_per_unit", "machine_us_per_unit"):
            assert _finite(r[key]) and r[key] > 0, (key, what)
        if r["kind"] == "priority":
            assert r["background"]["gbps"] > 0 and r["background"]["errors"] == 0, what
            assert r["conn_count"] > 0 and _finite(r["conn_p99_ms"]), what
    for server in ("mtcp", "linux"):
        idle = [i for i in doc["idle"] if i["server"] == server]
        assert idle and all(_finite(i["server_cpu_pct"]) for i in idle), server
    for t in doc["targets"]:  # a figure for every target; whether it is met is not tested
        assert _finite(t["value"]), t
