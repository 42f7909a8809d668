"""Congestion control on a synthetic ACK clock, and the afpacket fanout's flow hash."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from mtcp_core._native import ffi, lib
from mtcp_core._util import _ip_to_int, _raise


def flow_core(saddr: str, daddr: str, sport: int, dport: int, ncores: int) -> int:
    """The core the afpacket fanout program sends this flow to (symmetric)."""
    return int(lib.mtcp_flow_core(_ip_to_int(saddr), _ip_to_int(daddr), sport, dport, ncores))


@dataclass(frozen=True)
class CongestionRound:
    """One round of ``simulate_congestion``: when it ended and the window after it."""

    time_s: float
    cwnd: int
    ssthresh: int


def simulate_congestion(
    algo: str,
    rtts_us: Sequence[int],
    *,
    mss: int = 1448,
    init_cwnd_segs: int = 10,
    loss_round: int = -1,
) -> tuple[list[CongestionRound], int]:
    """Runs the core's congestion control ``algo`` on a synthetic ACK clock (no packets):
    one round per entry of ``rtts_us``, a window of MSS-sized segments ACKed one by one over
    that round trip, one loss at the start of round ``loss_round``. Returns the rounds and
    the count of HyStart++ exits from slow start (a test and teaching aid)."""
    n = len(rtts_us)
    rtt = ffi.new("uint32_t[]", list(rtts_us) or [0])
    cwnd = ffi.new("uint32_t[]", max(n, 1))
    ssth = ffi.new("uint32_t[]", max(n, 1))
    tus = ffi.new("uint64_t[]", max(n, 1))
    exits = ffi.new("uint64_t *")
    r = lib.mtcp_cc_simulate(
        algo.encode(), mss, init_cwnd_segs, rtt, n, loss_round, cwnd, ssth, tus, exits
    )
    if r < 0:
        _raise("simulate_congestion")
    rounds = [CongestionRound(tus[i] / 1e6, int(cwnd[i]), int(ssth[i])) for i in range(n)]
    return rounds, int(exits[0])
