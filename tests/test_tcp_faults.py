"""TCP that survives loss, reordering, duplication and corruption, over the ``pair`` link.

Two stacks on one stepped clock (``mtcp_core.testing.Duo``: no threads, no sleeps; a seed
is one exact run). Each fault mode moves 8 MiB each way at once (two independent directions
on one connection) through the seeded fault injector, byte-exact, for ``MTCP_FAULT_SEEDS``
seeds (default 20), then checks that both stacks gave every pool entry back and that the
counters show the mechanism that recovered (checksum drops for corruption, retransmissions
for loss, fast retransmit or SACK recovery at 10 % loss rather than timeouts alone).

Targeted drops (``PairLink.drop_next``) take out chosen segments: three in a row in the middle
of a bulk transfer must be repaired without a timeout (the dropped SYN, SYN-ACK, final ACK
and FIN run as two-stack scripts in test_tcp_segments.py). A reader that stops reading must
stall the writer with a zero window probed at backed-off intervals (timed on the stack's
clock) and lose nothing, also with loss on the link.
"""

from __future__ import annotations

import errno
import os
import random

import pytest

import mtcp_core as m
from mtcp_core.testing import Duo
from mtcp_core.testing.duoapp import Stream, open_conn, pools_back_on_both, run_streams

SIZE = 8 << 20  # bytes each way per fault run
SEEDS = int(os.environ.get("MTCP_FAULT_SEEDS", "20"))
RUN_LIMIT_MS = 600_000.0  # stack time for one 8 MiB run, both ways (a run takes ~3-9 s)
DELAY_US = 1000  # one-way: a 2 ms RTT, so retransmission timing is real
TIME_WAIT_MS = 50

SYN, ACK, FIN, RST = m.PairLink.SYN, m.PairLink.ACK, m.PairLink.FIN, m.PairLink.RST

MODES: dict[str, dict[str, float]] = {
    "loss10": {"loss": 0.10},
    "reorder5": {"reorder": 0.05},
    "dup5": {"duplicate": 0.05},
    "corrupt1": {"corrupt": 0.01},
    "all": {"loss": 0.10, "reorder": 0.05, "duplicate": 0.05, "corrupt": 0.01},
}


def make_duo(seed: int = 1, **stack_kw: object) -> Duo:
    stack_kw.setdefault("time_wait_ms", TIME_WAIT_MS)
    return Duo(faults=m.Faults(seed=seed, delay_us=DELAY_US), **stack_kw)


def check_same(got: bytes, want: bytes, what: str) -> None:
    """Byte-exact comparison that reports where it differs (never a multi-MiB diff)."""
    if got == want:
        return
    n = min(len(got), len(want))
    first = next((i for i in range(n) if got[i] != want[i]), n)
    raise AssertionError(f"{what}: {len(got)} of {len(want)} bytes, first difference at {first}")


def payload_for(seed: int, tag: int) -> bytes:
    return random.Random(seed * 1000 + tag).randbytes(SIZE)


# ---------------------------------------------------------------- fault modes


@pytest.mark.parametrize("seed", range(1, SEEDS + 1), ids=lambda s: f"seed{s}")
@pytest.mark.parametrize("mode", list(MODES))
def test_eight_mebibytes_each_way_under_faults(mode: str, seed: int) -> None:
    """8 MiB each way at once under ``MODES[mode]`` with ``seed``, then the checks."""
    rates = MODES[mode]
    with make_duo(seed, max_conns=16) as duo:
        up = payload_for(seed, 1)
        down = payload_for(seed, 2)
        o = open_conn(duo)  # a clean handshake; the handshake's faults have their tests
        duo.link.set_faults(seed=seed, delay_us=DELAY_US, **rates)
        client = Stream(o.c, up, shut=True)
        server = Stream(o.s, down, shut=True)
        run_streams(duo, client, server, limit_ms=RUN_LIMIT_MS)
        assert not client.reset and not server.reset
        o.c.close()
        o.s.close()
        o.ls.close()
        check_same(bytes(client.got), down, "server -> client")
        check_same(bytes(server.got), up, "client -> server")

        cs, ss = pools_back_on_both(duo)
        link = [duo.link.counters(0), duo.link.counters(1)]
    corrupted = link[0]["corrupted"] + link[1]["corrupted"]
    csum_drops = sum(st["drop_tcp_checksum"] + st["drop_ip_checksum"] for st in (cs, ss))
    if rates.get("corrupt"):
        assert corrupted > 0
        # corrupted frames are dropped and counted, never delivered as data
        assert 0 < csum_drops <= corrupted + link[0]["duplicated"] + link[1]["duplicated"]
    else:
        assert csum_drops == 0
    if rates.get("loss"):
        assert link[0]["lost"] > 0 and link[1]["lost"] > 0
        for st, who in ((cs, "client"), (ss, "server")):
            assert st["retransmits"] > 0, who
            # 10 % loss is repaired by fast retransmit / SACK, not by timeouts alone
            fast = st["fast_retransmits"] + st["sack_retransmits"]
            assert fast > 0, f"{who}: only timeouts ({st['rto_timeouts']}) repaired loss"
            assert st["recoveries"] > 0, who
            assert st["rto_timeouts"] * 5 <= st["recoveries"], (
                f"{who}: {st['rto_timeouts']} timeouts for {st['recoveries']} recoveries"
            )
    if rates.get("reorder") or rates.get("loss"):
        assert cs["ooo_segments"] > 0 and ss["ooo_segments"] > 0  # reassembly was used
    if rates.get("duplicate"):
        assert link[0]["duplicated"] > 0 and link[1]["duplicated"] > 0


# ---------------------------------------------------------------- targeted drops


def test_drop_next_counts_and_validates() -> None:
    link = m.PairLink(seed=1, delay_us=DELAY_US)
    try:
        with pytest.raises(ValueError):
            link.drop_next(2, SYN, SYN)
        with pytest.raises(ValueError):
            link.drop_next(0, SYN, SYN | ACK)  # value outside the mask: never matches
        with pytest.raises(ValueError):
            link.drop_next(0, SYN, SYN, min_payload=10, max_payload=5)
        for flags in range(8):  # 8 distinct rules fit per side, a 9th does not
            link.drop_next(1, 0xFF, flags, count=1)
        with pytest.raises(OSError) as e:
            link.drop_next(1, 0xFF, 0x40)
        assert e.value.errno == errno.ENOSPC
        link.drop_next(1, 0xFF, 0x07, count=2)  # the same rule again: adds to its count
        assert link.counters(0)["targeted"] == link.counters(1)["targeted"] == 0
    finally:
        link.close()


@pytest.mark.parametrize("sack", [True, False], ids=["sack", "newreno"])
def test_lost_segments_mid_window_are_repaired_without_timeout(sack: bool) -> None:
    """Three segments in a row are lost in the middle of a bulk transfer. With SACK the
    sender learns of the whole hole and retransmits its later segments from the
    scoreboard (sack_retransmits); without it NewReno retransmits the first one on
    three duplicate ACKs and each next one on a partial ACK (RFC 6582). Neither
    waits for a timeout or a loss probe."""
    with make_duo(11, sack=sack) as duo:
        payload = random.Random(11).randbytes(1 << 20)
        o = open_conn(duo)
        assert o.c.tcp_info()["sack_ok"] == int(sack)
        base = o.c.tcp_info()["snd_una"]
        before: dict[str, int] = {}

        def arm() -> None:
            acked = (o.c.tcp_info()["snd_una"] - base) & 0xFFFFFFFF
            if not before and acked >= 256 * 1024:
                # the flow is in full swing: lose the next three data segments
                before.update(duo.client.stats())
                duo.link.drop_next(0, SYN | FIN | RST, 0, count=3, min_payload=1)

        writer = Stream(o.c, payload, shut=True, chunk=65536)
        reader = Stream(o.s)
        run_streams(duo, writer, reader, extra=arm, done=lambda: reader.eof)
        check_same(bytes(reader.got), payload, "client -> server")
        assert before and duo.link.counters(0)["targeted"] == 3
        after = duo.client.stats()
        assert after["retransmits"] >= before["retransmits"] + 3
        d = {k: after[k] - before[k] for k in after}
        assert d["rto_timeouts"] == 0, d["rto_timeouts"]
        assert d["fast_retransmits"] >= 1
        if sack:
            assert d["sack_retransmits"] >= 1, d["fast_retransmits"]
        else:
            assert d["sack_retransmits"] == 0
            assert d["fast_retransmits"] >= 3  # one on dup ACKs, two on partial ACKs
        assert d["retransmits"] <= 6, d["retransmits"]  # the lost ones, not the window
        o.c.close()
        o.s.close()
        pools_back_on_both(duo)


# ---------------------------------------------------------------- zero window


def probe_times(duo: Duo, ms: float) -> list[float]:
    """Stack times (ms from now) at which the client's zero_window_probes counter went up
    during ``ms`` of stack time."""
    out: list[float] = []
    t0 = duo.now_ms
    last = [duo.client.stats()["zero_window_probes"]]

    def look() -> None:
        cur = duo.client.stats()["zero_window_probes"]
        out.extend([duo.now_ms - t0] * (cur - last[0]))
        last[0] = cur

    duo.advance(ms, on_round=look)
    return out


@pytest.mark.parametrize("loss", [0.0, 0.1])
def test_zero_window_stalls_writer_probes_with_backoff_and_resumes(loss: float) -> None:
    with make_duo(7) as duo:
        o = open_conn(duo)
        c, s = o.c, o.s
        duo.link.set_faults(seed=7, delay_us=DELAY_US, loss=loss)
        payload = random.Random(7).randbytes(1 << 20)
        # the reader does not read: the writer fills the peer's window and its own ring
        writer = Stream(c, payload, chunk=65536)

        def stalled() -> bool:
            return s.tcp_info()["rcv_wnd"] == 0 and c.tcp_info()["snd_wnd"] == 0

        run_streams(duo, writer, done=stalled)  # loss: retransmissions still filling it
        writer.turn()
        sent = writer.sent
        with pytest.raises(BlockingIOError):
            c.send(payload[sent : sent + 65536])
        assert sent < len(payload)
        assert s.tcp_info()["rcv_wnd"] == 0
        # probes go out while the window is shut, each interval longer than the last
        times = probe_times(duo, 3200)
        assert len(times) >= 3, f"zero-window probes seen: {times}"
        assert len(times) <= 12, f"probes not backed off (one per RTT?): {times}"
        gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
        assert all(g >= 100 for g in gaps), f"probes too close together: {times}"
        # exponential backoff: each interval about twice the one before
        assert all(b >= 1.5 * a for a, b in zip(gaps, gaps[1:], strict=False)), (
            f"no backoff between probes: {times}"
        )
        assert c.tcp_info()["state"] == s.tcp_info()["state"] == "ESTABLISHED"
        with pytest.raises(BlockingIOError):
            c.send(b"x")
        # reading resumes the transfer to the end
        reader = Stream(s)
        run_streams(duo, writer, reader, done=lambda: len(reader.got) >= len(payload))
        check_same(bytes(reader.got), payload, "after the stall")
        c.close()
        s.close()
        pools_back_on_both(duo)
