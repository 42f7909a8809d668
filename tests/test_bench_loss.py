"""The loss benchmarks (bench/loss_bench.py, bench/lossy_web_bench.py) in a small run each:
every row gives figures for both senders (servers) on the emulated path and the results file
is written. Speed is never checked here: the benchmarks print the issue's figures."""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import pytest

from appliance.testing import run_harness

BENCH = Path(__file__).resolve().parent.parent / "bench"
TIMEOUT_S = 300


@pytest.mark.requires_root
def test_loss_bench_rows_over_the_emulator(tmp_path: Path) -> None:
    argv = [sys.executable, str(BENCH / "loss_bench.py"), "--size-mib", "1", "--rates", "1",
            "--rtt-rates", "1", "--rtt-ms", "10", "--paths", "kernel,core", "--timeout", "120",
            "--out", str(tmp_path)]  # fmt: skip
    out = run_harness(argv, TIMEOUT_S)
    assert "core/kernel" in out
    (path,) = tmp_path.glob("loss-*.json")
    doc = json.loads(path.read_text())
    rows = {(r["link"], r["loss_percent"]): r for r in doc["summary"]}
    assert set(rows) == {("veth", 1.0), ("10ms-100M", 1.0)}
    for row in rows.values():
        assert row["kernel_s"] > 0 and row["core_s"] > 0, row
        assert math.isfinite(row["core_over_kernel_time"]), row
    for res in doc["results"]:
        assert res["ok"], res
        # both senders run CUBIC, whatever the host's default (bbr on some): the ratio
        # compares two stacks, not two congestion controls
        assert res["congestion"] == "cubic", res
        assert res["drops"]["data_frames"] > 0  # the transfer went through the emulator
    long_path = [r for r in doc["results"] if r["link"] == "10ms-100M"]
    assert {r["path"] for r in long_path} == {"kernel", "core"}


@pytest.mark.requires_root
@pytest.mark.skipif(shutil.which("wrk") is None or shutil.which("nginx") is None,
                    reason="needs wrk and nginx (make bench-setup)")  # fmt: skip
def test_lossy_web_bench_gives_both_servers_figures(tmp_path: Path) -> None:
    argv = [sys.executable, str(BENCH / "lossy_web_bench.py"), "--duration", "2",
            "--rtt-ms", "10", "--out", str(tmp_path)]  # fmt: skip
    out = run_harness(argv, TIMEOUT_S)
    assert "wrk p99, mtcp / nginx" in out
    (path,) = tmp_path.glob("lossy-web-*.json")
    doc = json.loads(path.read_text())
    assert [r["server"] for r in doc["rows"]] == ["mtcp", "nginx"]
    for r in doc["rows"]:
        assert "error" not in r, r
        assert r["requests"] > 0 and math.isfinite(r["p99_ms"]), r
        assert r["emulator"]["a_to_b"]["forwarded"] > 0, r
    assert math.isfinite(doc["target"]["value"])
