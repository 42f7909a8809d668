"""The exhaustion benchmark (bench/exhaust_bench.py, ``make bench-exhaust``) in its quick mode,
once: every server and scenario gives a row with numbers (legitimate requests made, success
rate, latency, RSS before, during and after) and the results files are written. Speed and
the issue's targets are never checked here: the benchmark checks and prints them. Also the
attacker's SYN packets, and its report of a connection it could not open (no root needed)."""

from __future__ import annotations

import math
import socket
import struct
import sys
from pathlib import Path

import pytest

from appliance.testing import run_quick

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

import exhaust_attack  # noqa: E402
import exhaust_bench  # noqa: E402

QUICK_TIMEOUT_S = 300


def test_syn_packet_is_a_valid_syn() -> None:
    pkt = exhaust_attack.syn_packet("198.18.0.100", "198.18.0.2", 40000, 80, 12345)
    assert len(pkt) == 44
    assert exhaust_attack.checksum(pkt[:20]) == 0  # IPv4 header checksum
    ihl, total, proto = pkt[0] & 15, struct.unpack("!H", pkt[2:4])[0], pkt[9]
    assert (ihl, total, proto) == (5, 44, socket.IPPROTO_TCP)
    tcp = pkt[20:]
    sport, dport, seq, _, off, flags = struct.unpack("!HHIIBB", tcp[:14])
    assert (sport, dport, seq, off >> 4, flags) == (40000, 80, 12345, 6, 0x02)
    pseudo = pkt[12:20] + struct.pack("!BBH", 0, socket.IPPROTO_TCP, len(tcp))
    assert exhaust_attack.checksum(pseudo + tcp) == 0


def _finite(v: object) -> bool:
    return isinstance(v, int | float) and math.isfinite(v)


@pytest.mark.requires_root
def test_quick_mode_every_row_has_numbers(tmp_path: Path) -> None:
    _, doc = run_quick(BENCH / "exhaust_bench.py", "exhaust", tmp_path, QUICK_TIMEOUT_S)
    rows = doc["rows"]
    names = [sc.name for sc in exhaust_bench.scenarios(quick=True)]
    for server in exhaust_bench.SERVERS:
        got = [r["scenario"] for r in rows if r["server"] == server]
        assert got == ["unloaded", *names, "16 overlapping ranges"], got
    for r in rows:
        what = f"{r['server']} {r['scenario']}: {r}"
        assert not r["notes"], what
        if r["scenario"] == "16 overlapping ranges":
            assert r["counters"]["status"] in (200.0, 206.0, 416.0), what
            assert _finite(r["counters"]["amplification"]), what
            continue
        assert r["legit_tries"] > 0, what
        for key in ("success_pct", "p50_ms", "p99_ms", "p99_ratio"):
            assert _finite(r[key]), (key, what)
        for key in ("rss_pre_mb", "rss_peak_mb", "rss_after_mb", "after_ratio"):
            assert _finite(r[key]) and r[key] > 0, (key, what)
        if r["scenario"] != "unloaded":
            assert r["attacker"].get("done"), what
            assert r["attacker"].get("established", 0) > 0 or r["attacker"].get("syns", 0) > 0
    assert doc["targets"] and all("met" in t for t in doc["targets"])
