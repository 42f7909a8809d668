"""TCP that survives loss, reordering, duplication and corruption, over the ``pair`` link.

Each fault mode moves 8 MiB each way at once (two independent directions on one
connection) through the seeded fault injector, byte-exact, for ``MTCP_FAULT_SEEDS`` seeds
(default 20), then checks that both stacks gave every pool entry back and that the counters
show the mechanism that recovered (checksum drops for corruption, retransmissions for loss,
fast retransmit or SACK recovery at 10 % loss rather than timeouts alone).

Targeted drops (``PairLink.drop_next``) take out chosen segments: three in a row in the middle
of a bulk transfer must be repaired without a timeout (the dropped SYN, SYN-ACK, final ACK
and FIN run as deterministic two-stack scripts in test_tcp_segments.py). A reader that
stops reading must stall the writer with a zero window probed at backed-off intervals and
lose nothing, also with loss on the link.

The test thread drives the client context; a ``Side`` thread drives the server context
(each context has exactly one app thread).
"""

from __future__ import annotations

import errno
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import mtcp_core as m
from mtcp_core.testing import pairnet
from mtcp_core.testing.pairnet import (
    CLIENT,
    DEADLINE_S,
    SERVER,
    accept,
    connect,
    listen,
    settled,
    wait_pools_back,
)

SIZE = 8 << 20  # bytes each way per fault run
SEEDS = int(os.environ.get("MTCP_FAULT_SEEDS", "20"))
PARALLEL = max(1, int(os.environ.get("MTCP_FAULT_PARALLEL", "10")))  # runs side by side
RUN_DEADLINE_S = 90.0  # one 8 MiB run, both ways
DELAY_US = 1000  # one-way: a 2 ms RTT, so retransmission timing is real
TIME_WAIT_MS = 50
CHUNK = 256 * 1024

SYN, ACK, FIN, RST = m.PairLink.SYN, m.PairLink.ACK, m.PairLink.FIN, m.PairLink.RST

MODES: dict[str, dict[str, float]] = {
    "loss10": {"loss": 0.10},
    "reorder5": {"reorder": 0.05},
    "dup5": {"duplicate": 0.05},
    "corrupt1": {"corrupt": 0.01},
    "all": {"loss": 0.10, "reorder": 0.05, "duplicate": 0.05, "corrupt": 0.01},
}


# ---------------------------------------------------------------- helpers


class Net(pairnet.Net):
    def close(self) -> None:
        # a server thread still in a call on its context must leave it before the
        # context goes (its calls are bounded by their deadlines)
        for side in [x for x in SIDES if x.ctx is self.server]:
            side.join(RUN_DEADLINE_S + DEADLINE_S)
            SIDES.remove(side)
        super().close()


def make_net(seed: int = 1, **stack_kw: Any) -> Net:
    link = m.PairLink(seed=seed, delay_us=DELAY_US)
    stack_kw.setdefault("time_wait_ms", TIME_WAIT_MS)
    a = m.Stack("pair", f"{CLIENT}/24", pair=link, pair_side=0, **stack_kw)
    b = m.Stack("pair", f"{SERVER}/24", pair=link, pair_side=1, **stack_kw)
    return Net(link, a, b, a.context(0), b.context(0))


@pytest.fixture
def net() -> Iterator[Net]:
    n = make_net()
    yield n
    n.close()


def pump(ep: m.Epoll, sock: m.Socket, payload: bytes, deadline: float) -> bytes:
    """Full duplex: sends ``payload`` then shuts the write side down, while reading
    everything the peer sends until its FIN. Returns what was read."""
    got = bytearray()
    view = memoryview(payload)
    sent = 0
    shut = False
    eof = False
    ep.modify(sock, m.EPOLLIN | m.EPOLLOUT)
    while not (eof and shut):
        if time.monotonic() > deadline:
            raise AssertionError(
                f"stalled: sent {sent}/{len(payload)}, received {len(got)}, {sock.tcp_info()}"
            )
        for _s, ev in ep.poll(0.1):
            if ev & m.EPOLLERR:
                err = sock.getsockopt(m.SOL_SOCKET, m.SO_ERROR)
                raise OSError(err, f"connection failed: {os.strerror(err)}")
        while sent < len(payload):
            try:
                sent += sock.send(view[sent : sent + CHUNK])
            except BlockingIOError:
                break
        if sent == len(payload) and not shut:
            sock.shutdown(m.SHUT_WR)
            shut = True
            ep.modify(sock, m.EPOLLIN if not eof else 0)
        while not eof:
            try:
                d = sock.recv(CHUNK)
            except BlockingIOError:
                break
            if d:
                got += d
            else:
                eof = True
                ep.modify(sock, m.EPOLLOUT if not shut else 0)
    return bytes(got)


SIDES: list[Side] = []  # started server threads, joined by Net.close()


class Side(threading.Thread):
    """The server: accepts one connection and runs ``pump`` on it, or whatever ``body``
    says, in its own thread on the server context."""

    def __init__(self, ctx: m.Context, body: Callable[[m.Socket, m.Epoll], Any]) -> None:
        super().__init__(daemon=True)
        self.ctx = ctx
        self.body = body
        self.result: Any = None
        self.error: BaseException | None = None
        self.listening = threading.Event()

    def run(self) -> None:
        try:
            ls, ep = listen(self.ctx)
            self.listening.set()
            s = accept(ls, ep)
            ep.register(s, m.EPOLLIN)
            try:
                self.result = self.body(s, ep)
            finally:
                s.close()
                ls.close()
        except BaseException as e:  # surfaced by finish()
            self.error = e
            self.listening.set()

    def begin(self) -> Side:
        SIDES.append(self)
        self.start()
        assert self.listening.wait(10)
        return self

    def finish(self, timeout: float = RUN_DEADLINE_S) -> Any:
        self.join(timeout)
        assert not self.is_alive(), "server thread hung"
        if self.error:
            raise self.error
        return self.result





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


def run_under_faults(mode: str, seed: int) -> None:
    """One run: 8 MiB each way at once under ``MODES[mode]`` with ``seed``, then the
    checks. Raises AssertionError (or OSError) on the first thing that is wrong."""
    rates = MODES[mode]
    n = make_net(seed=seed, max_conns=16)
    try:
        up = payload_for(seed, 1)
        down = payload_for(seed, 2)
        deadline = time.monotonic() + RUN_DEADLINE_S
        server = Side(n.server, lambda s, ep: pump(ep, s, down, deadline)).begin()
        ep = n.client.epoll()
        c = connect(n.client, ep)  # clean handshake; the handshake's faults have their tests
        n.link.set_faults(seed=seed, delay_us=DELAY_US, **rates)
        try:
            got_down = pump(ep, c, up, deadline)
        except AssertionError as e:
            server.join(RUN_DEADLINE_S)  # its own pump gives up at the same deadline
            raise AssertionError(f"client: {e}; server: {server.error}") from None
        got_up = server.finish()
        c.close()
        check_same(got_down, down, "server -> client")
        check_same(got_up, up, "client -> server")

        cs = wait_pools_back(n.client, "client")
        ss = wait_pools_back(n.server, "server")
        link = [n.link.counters(0), n.link.counters(1)]
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
    finally:
        n.close()


def seed_batches() -> list[list[int]]:
    seeds = list(range(1, SEEDS + 1))
    return [seeds[i : i + PARALLEL] for i in range(0, len(seeds), PARALLEL)]


@pytest.mark.parametrize(
    "seeds", seed_batches(), ids=lambda b: f"seeds{b[0]}-{b[-1]}" if b else "none"
)
@pytest.mark.parametrize("mode", list(MODES))
def test_eight_mebibytes_each_way_under_faults(mode: str, seeds: list[int]) -> None:
    """``run_under_faults`` for a batch of seeds at once: the runs wait on timers and the
    link's delay far more than they use the CPU, so running them side by side keeps the
    100 runs within a couple of minutes on two cores."""
    failures: dict[int, BaseException] = {}

    def one(seed: int) -> None:
        try:
            run_under_faults(mode, seed)
        except BaseException as e:  # reported below, per seed
            failures[seed] = e

    threads = [threading.Thread(target=one, args=(seed,), daemon=True) for seed in seeds]
    for t in threads:
        t.start()
    for t in threads:
        t.join(2 * RUN_DEADLINE_S + 2 * DEADLINE_S)
    hung = [seed for seed, t in zip(seeds, threads, strict=True) if t.is_alive()]
    assert not hung, f"{mode}: runs still going for seeds {hung}"
    if failures:
        lines = [f"seed {seed}: {type(e).__name__}: {e}" for seed, e in sorted(failures.items())]
        raise AssertionError(
            f"{mode}: {len(failures)} of {len(seeds)} runs failed:\n" + "\n".join(lines)
        )


# ---------------------------------------------------------------- targeted drops


def read_all(s: m.Socket, ep: m.Epoll) -> bytes:
    """Server body: everything until EOF."""
    return pump(ep, s, b"", time.monotonic() + DEADLINE_S)


def test_drop_next_counts_and_validates(net: Net) -> None:
    with pytest.raises(ValueError):
        net.link.drop_next(2, SYN, SYN)
    with pytest.raises(ValueError):
        net.link.drop_next(0, SYN, SYN | ACK)  # value outside the mask: never matches
    with pytest.raises(ValueError):
        net.link.drop_next(0, SYN, SYN, min_payload=10, max_payload=5)
    for flags in range(8):  # 8 distinct rules fit per side, a 9th does not
        net.link.drop_next(1, 0xFF, flags, count=1)
    with pytest.raises(OSError) as e:
        net.link.drop_next(1, 0xFF, 0x40)
    assert e.value.errno == errno.ENOSPC
    net.link.drop_next(1, 0xFF, 0x07, count=2)  # the same rule again: adds to its count
    assert net.link.counters(0)["targeted"] == net.link.counters(1)["targeted"] == 0


@pytest.mark.parametrize("sack", [True, False], ids=["sack", "newreno"])
def test_lost_segments_mid_window_are_repaired_without_timeout(sack: bool) -> None:
    """Three segments in a row are lost in the middle of a bulk transfer. With SACK the
    sender learns of the whole hole and retransmits its later segments from the
    scoreboard (sack_retransmits); without it NewReno retransmits the first one on
    three duplicate ACKs and each next one on a partial ACK (RFC 6582). Neither
    waits for a timeout or a loss probe."""
    n = make_net(seed=11, sack=sack)
    try:
        payload = random.Random(11).randbytes(1 << 20)
        server = Side(n.server, read_all).begin()
        ep = n.client.epoll()
        c = connect(n.client, ep)
        assert c.tcp_info()["sack_ok"] == int(sack)
        base = c.tcp_info()["snd_una"]
        view = memoryview(payload)
        sent = 0
        armed_at: int | None = None
        before: dict[str, int] = {}
        end = time.monotonic() + DEADLINE_S
        while sent < len(payload):
            assert time.monotonic() < end, f"stalled at {sent}"
            try:
                sent += c.send(view[sent : sent + 65536])
            except BlockingIOError:
                ep.poll(0.01)
            acked = (c.tcp_info()["snd_una"] - base) & 0xFFFFFFFF
            if armed_at is None and acked >= 256 * 1024:
                # the flow is in full swing: lose the next three data segments
                before = n.client.stats()
                n.link.drop_next(0, SYN | FIN | RST, 0, count=3, min_payload=1)
                armed_at = sent
        c.shutdown(m.SHUT_WR)
        got = server.finish()
        check_same(got, payload, "client -> server")
        assert armed_at is not None and n.link.counters(0)["targeted"] == 3
        after = settled(n.client, lambda st: st["retransmits"] >= before["retransmits"] + 3, "rx")
        d = {k: after[k] - before[k] for k in after}
        assert d["rto_timeouts"] == 0, d["rto_timeouts"]
        assert d["fast_retransmits"] >= 1
        if sack:
            assert d["sack_retransmits"] >= 1, d["fast_retransmits"]
        else:
            assert d["sack_retransmits"] == 0
            assert d["fast_retransmits"] >= 3  # one on dup ACKs, two on partial ACKs
        assert d["retransmits"] <= 6, d["retransmits"]  # the lost ones, not the window
        c.close()
        wait_pools_back(n.client, "client")
        wait_pools_back(n.server, "server")
    finally:
        n.close()


# ---------------------------------------------------------------- zero window


def probe_times(ctx: m.Context, seconds: float) -> list[float]:
    """Times at which the zero_window_probes counter went up during ``seconds``."""
    out: list[float] = []
    last = ctx.stats()["zero_window_probes"]
    t0 = time.monotonic()
    while (now := time.monotonic()) - t0 < seconds:
        cur = ctx.stats()["zero_window_probes"]
        if cur != last:
            out.extend([now - t0] * (cur - last))
            last = cur
        time.sleep(0.005)
    return out


@pytest.mark.parametrize("loss", [0.0, 0.1])
def test_zero_window_stalls_writer_probes_with_backoff_and_resumes(loss: float) -> None:
    n = make_net(seed=7)
    try:
        ls, sep = listen(n.server)
        ep = n.client.epoll()
        c = connect(n.client, ep)
        s = accept(ls, sep)
        n.link.set_faults(seed=7, delay_us=DELAY_US, loss=loss)
        payload = random.Random(7).randbytes(1 << 20)
        sent = 0
        end = time.monotonic() + DEADLINE_S
        # the reader does not read: the writer fills the peer's window and its own ring
        while True:
            assert time.monotonic() < end, f"writer never stalled ({sent} sent)"
            try:
                sent += c.send(payload[sent : sent + 65536])
                continue
            except BlockingIOError:
                pass
            if s.tcp_info()["rcv_wnd"] == 0 and c.tcp_info()["snd_wnd"] == 0:
                break
            time.sleep(0.01)  # loss: retransmissions still filling the window
        with pytest.raises(BlockingIOError):
            c.send(payload[sent : sent + 65536])
        assert sent < len(payload)
        assert s.tcp_info()["rcv_wnd"] == 0
        # probes go out while the window is shut, each interval longer than the last
        times = probe_times(n.client, 3.2)
        assert len(times) >= 3, f"zero-window probes seen: {times}"
        assert len(times) <= 12, f"probes not backed off (one per RTT?): {times}"
        gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
        assert all(g >= 0.1 for g in gaps), f"probes too close together: {times}"
        # exponential backoff: each interval about twice the one before
        assert all(b >= 1.5 * a for a, b in zip(gaps, gaps[1:], strict=False)), (
            f"no backoff between probes: {times}"
        )
        assert c.tcp_info()["state"] == s.tcp_info()["state"] == "ESTABLISHED"
        with pytest.raises(BlockingIOError):
            c.send(b"x")
        # reading resumes the transfer to the end
        got = bytearray()
        sep.register(s, m.EPOLLIN)
        end = time.monotonic() + DEADLINE_S
        while len(got) < len(payload):
            assert time.monotonic() < end, f"stalled after resume at {len(got)}/{len(payload)}"
            while sent < len(payload):
                try:
                    sent += c.send(payload[sent : sent + 65536])
                except BlockingIOError:
                    break
            for _x, _ev in sep.poll(0.02):
                while True:
                    try:
                        d = s.recv(65536)
                    except BlockingIOError:
                        break
                    if not d:
                        break
                    got += d
        check_same(bytes(got), payload, "after the stall")
        c.close()
        s.close()
        wait_pools_back(n.client, "client")
        wait_pools_back(n.server, "server")
    finally:
        n.close()
