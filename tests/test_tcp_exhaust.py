"""No client can pin the stack (issue 15), over the ``pair`` link with short bounds:
connections stuck at a zero window (closed by the app, held by it with TCP_USER_TIMEOUT, or
neither: the idle timeout), retransmissions bounded by TCP_USER_TIMEOUT, the number of
orphans, the socket-buffer memory budget and its pressure mode, pages of closed connections'
buffers given back, eviction of idle connections when the pool is full, and the
per-source connection limit.

Both contexts are driven from the test thread (each still has one app thread).
"""

from __future__ import annotations

import errno
import time
from typing import Any

import pytest

import mtcp_core as m
from mtcp_core.testing.pairnet import (
    CLIENT,
    SERVER,
    Net,
    accept,
    connect,
    listen,
    settled,
    wait_event,
    wait_for,
    wait_pools_back,
)

DELAY_US = 1000  # one-way: a 2 ms RTT, as the fault tests use
TIME_WAIT_MS = 50
RTO_MIN_S = 0.2  # opt.h TCP_RTO_MIN_MS


def net_with(**server_kw: Any) -> Net:
    """A pair link whose server stack has ``server_kw`` (the client's are the defaults)."""
    link = m.PairLink(seed=5, delay_us=DELAY_US)
    a = m.Stack("pair", f"{CLIENT}/24", pair=link, pair_side=0, time_wait_ms=TIME_WAIT_MS)
    server_kw.setdefault("time_wait_ms", TIME_WAIT_MS)
    b = m.Stack("pair", f"{SERVER}/24", pair=link, pair_side=1, **server_kw)
    return Net(link, a, b, a.context(0), b.context(0))


def stuck_pair(n: Net, data: int = 256 * 1024) -> tuple[m.Socket, m.Epoll, m.Socket, m.Epoll]:
    """A connection whose client never reads (a 4 KiB receive buffer) and whose server has
    written ``data`` bytes: the client's window is zero and the server probes it."""
    ls, sep = listen(n.server)
    ep = n.client.epoll()
    c = n.client.socket()
    c.setsockopt(m.SOL_SOCKET, m.SO_RCVBUF, 4096)
    with pytest.raises(BlockingIOError):
        c.connect((SERVER, 80))
    ep.register(c, m.EPOLLOUT | m.EPOLLIN)
    wait_event(ep, c, m.EPOLLOUT)
    s = accept(ls, sep)
    ls.close()
    sep.register(s, m.EPOLLIN)
    sent = s.send(b"z" * data)
    assert sent > 16 * 1024
    wait_for(lambda: c.tcp_info()["rcv_wnd"] == 0, "the client's window closed", 10)
    settled(n.server, lambda st: st["zero_window_probes"] >= 1, "a zero-window probe", 10)
    return c, ep, s, sep


def error_within(ep: m.Epoll, c: m.Socket, low: float, high: float, t0: float) -> float:
    """The client's connection is reset no sooner than ``low`` and no later than ``high``
    seconds after ``t0``."""
    wait_event(ep, c, m.EPOLLERR | m.EPOLLHUP, high + 5 - (time.monotonic() - t0))
    took = time.monotonic() - t0
    assert low <= took <= high, f"reset after {took:.2f}s (expected {low}..{high})"
    return took


def timed_out_within(n: Net, ep: m.Epoll, s: m.Socket, low: float, high: float, t0: float,
                     bound: str, counter: str) -> dict[str, int]:  # fmt: skip
    """The server's connection ``s`` fails with ETIMEDOUT no sooner than ``low`` and no later
    than ``high`` seconds after ``t0`` (``bound``: what ends it), counted once in the server's
    ``counter``; returns the server's counters."""
    wait_event(ep, s, m.EPOLLERR, high + 10 - (time.monotonic() - t0))
    took = time.monotonic() - t0
    assert low <= took <= high, f"aborted after {took:.2f}s ({bound})"
    assert s.getsockopt(m.SOL_SOCKET, m.SO_ERROR) == errno.ETIMEDOUT
    return settled(n.server, lambda st: st[counter] == 1, f"{counter} counted")


# ---------------------------------------------------------------- zero window


def test_orphan_stuck_at_zero_window_is_aborted_after_orphan_retries() -> None:
    retries = 3
    with net_with(orphan_retries=retries) as n:
        c, ep, s, _ = stuck_pair(n)
        t0 = time.monotonic()
        s.close()  # the app gives up: an orphan with data unsent and a zero window
        st = settled(n.server, lambda st: st["orphans"] == 1, "one orphan")
        assert st["orphan_aborts"] == 0
        # the probes back off from the RTO (200 ms): 0.2 + 0.4 + 0.8 (+ 1.6) s; the peer
        # answers every probe, with a zero window
        error_within(ep, c, RTO_MIN_S * 2, RTO_MIN_S * (2 ** (retries + 1)) + 1.5, t0)
        assert c.getsockopt(m.SOL_SOCKET, m.SO_ERROR) == errno.ECONNRESET
        st = settled(n.server, lambda st: st["orphan_aborts"] == 1, "the orphan aborted")
        assert st["orphans"] == 0 and st["user_timeouts"] == 0
        c.close()
        wait_pools_back(n.server, "server")


def test_user_timeout_aborts_a_connection_stuck_at_zero_window() -> None:
    with net_with() as n:
        c, ep, s, sep = stuck_pair(n)
        assert s.getsockopt(m.IPPROTO_TCP, m.TCP_USER_TIMEOUT) == 0
        t0 = time.monotonic()
        s.setsockopt(m.IPPROTO_TCP, m.TCP_USER_TIMEOUT, 1000)
        assert s.getsockopt(m.IPPROTO_TCP, m.TCP_USER_TIMEOUT) == 1000
        # the app still holds the socket: it learns ETIMEDOUT, the peer gets a RST
        st = timed_out_within(n, sep, s, 0.0, 4.0, t0, "user timeout 1 s", "user_timeouts")
        wait_event(ep, c, m.EPOLLERR | m.EPOLLHUP, 5)
        assert st["orphan_aborts"] == st["zero_window_aborts"] == 0
        s.close()
        c.close()
        wait_pools_back(n.server, "server")


def test_user_timeout_bounds_retransmissions() -> None:
    with net_with() as n:
        ls, sep = listen(n.server)
        ep = n.client.epoll()
        c = connect(n.client, ep)
        s = accept(ls, sep)
        sep.register(s, m.EPOLLIN)
        s.setsockopt(m.IPPROTO_TCP, m.TCP_USER_TIMEOUT, 1500)
        n.link.set_faults(seed=5, loss=1.0)  # the peer vanishes
        t0 = time.monotonic()
        s.send(b"x" * 1000)
        # without the user timeout, 8 retries take ~102 s
        timed_out_within(n, sep, s, 1.4, 4.5, t0, "user timeout 1.5 s", "user_timeouts")
        s.close()
        c.abort()


def test_zero_window_without_an_end_is_bounded_by_the_idle_timeout() -> None:
    # the peer answers every probe (so the idle timeout never sees silence), the app
    # holds its socket and sets no user timeout: the stack still ends it
    with net_with(idle_timeout_ms=1500) as n:
        c, ep, s, sep = stuck_pair(n)
        t0 = time.monotonic()
        timed_out_within(n, sep, s, 0.0, 6.0, t0, "idle timeout 1.5 s", "zero_window_aborts")
        s.close()
        c.close()


def test_too_many_orphans_are_reset_at_close() -> None:
    with net_with(max_orphans=1) as n:
        c1, ep1, s1, _ = stuck_pair(n)
        s1.close()
        settled(n.server, lambda st: st["orphans"] == 1, "one orphan")
        ls, sep = listen(n.server)  # stuck_pair closed its listener
        c2b = connect(n.client, ep1)
        s2 = accept(ls, sep)
        s2.send(b"y" * 100_000)
        s2.close()  # a second orphan is one too many: reset at once
        wait_event(ep1, c2b, m.EPOLLERR | m.EPOLLHUP, 10)
        st = settled(n.server, lambda st: st["orphan_overflows"] == 1, "overflow counted")
        assert st["orphans"] == 1
        for x in (c1, c2b, ls):
            x.close()


# ---------------------------------------------------------------- memory


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def test_closed_connections_buffer_pages_are_given_back() -> None:
    conns, sndbuf = 8, 4 << 20
    with net_with(sndbuf=sndbuf, hugepages=False) as n:
        ls, sep = listen(n.server)
        ep = n.client.epoll()
        pairs = []
        for _ in range(conns):
            c = connect(n.client, ep)
            pairs.append((c, accept(ls, sep)))
        payload = b"p" * sndbuf  # allocated before the measurement starts
        before = rss()
        for _, s in pairs:  # the whole send ring is written: every page touched
            assert s.send(payload) == sndbuf
        grown = rss() - before
        assert grown >= conns * sndbuf * 0.9, f"RSS grew by {grown}"
        st = n.server.stats()
        assert st["buf_mem_used"] >= conns * sndbuf
        for c, s in pairs:
            s.abort()
            c.close()
        st = wait_pools_back(n.server, "server")
        assert st["buf_released_bytes"] >= conns * sndbuf
        assert st["buf_mem_used"] == 0
        left = rss() - before
        # (the rest of the growth is the interpreter's own heap)
        assert left <= conns * sndbuf * 0.25, f"RSS still {left} above (grew by {grown})"


def test_memory_budget_shrinks_new_connections_buffers_then_refuses() -> None:
    kib = 1024
    budget = 4 << 20
    # 1 MiB send + 64 KiB receive per connection while under half of the budget
    with net_with(sndbuf=1 << 20, mem_budget=budget, max_conns=256) as n:
        ls, sep = listen(n.server)
        ep = n.client.epoll()
        st = n.server.stats()
        assert st["buf_mem_budget"] == budget and st["buf_mem_pressure"] == 0
        full, small, refused = [], [], 0
        clients = []
        while len(full) + len(small) < 200:
            c = n.client.socket()
            with pytest.raises(BlockingIOError):
                c.connect((SERVER, 80))
            ep.register(c, m.EPOLLOUT | m.EPOLLIN)
            clients.append(c)
            try:
                wait_event(sep, ls, m.EPOLLIN, 1.5)
            except AssertionError:
                refused += 1
                break
            s, _ = ls.accept()
            info = s.tcp_info()
            (full if info["sndbuf_cap"] == 1 << 20 else small).append(s)
        # until half the budget (4 MiB / 2 = 2 MiB): full buffers; then 16 KiB each way
        assert len(full) == 2
        assert all(s.tcp_info()["sndbuf_cap"] == 16 * kib for s in small)
        assert all(s.tcp_info()["rcvbuf_cap"] == 16 * kib for s in small)
        st = n.server.stats()
        assert st["buf_mem_pressure"] == 1 and st["buf_pressure_opens"] == len(small)
        assert refused == 1, "past the budget a connection is refused"
        assert st["buf_mem_used"] <= budget
        assert st["drop_tcp_no_memory"] >= 1
        for s in full + small:
            s.abort()
        for c in clients:
            c.close()
        st = wait_pools_back(n.server, "server")
        assert st["buf_mem_used"] == 0 and st["buf_mem_pressure"] == 0


def test_pool_is_sized_by_the_memory_budget() -> None:
    with net_with(mem_budget=64 << 20) as n:
        # 64 MiB at the pressure sizes (16 KiB each way): 2048 connections
        assert n.server.stats()["pool_tcb_total"] == 2048


# ---------------------------------------------------------------- eviction


def drain_server(ls: m.Socket, sep: m.Epoll, live: list[m.Socket]) -> int:
    """Accepts what is queued and closes what the stack reset; returns resets seen."""
    resets = 0
    for x, ev in sep.poll(0.01):
        if x is ls:
            try:
                while True:
                    s, _ = ls.accept()
                    sep.register(s, m.EPOLLIN)
                    live.append(s)
            except BlockingIOError:
                pass
        elif ev & (m.EPOLLERR | m.EPOLLHUP):
            sep.unregister(x)
            live.remove(x)
            x.close()
            resets += 1
    return resets


@pytest.mark.parametrize("evict", [True, False])
def test_eviction_frees_idle_connections_for_new_ones(evict: bool) -> None:
    pool = 32
    with net_with(max_conns=pool, evict=evict) as n:
        ls, sep = listen(n.server)
        ls.setsockopt(m.SOL_SOCKET, m.SO_EVICTABLE, 1)
        assert ls.getsockopt(m.SOL_SOCKET, m.SO_EVICTABLE) == 1
        ep = n.client.epoll()
        live: list[m.Socket] = []
        idle = []
        for _ in range(pool - 4):
            idle.append(connect(n.client, ep))
            drain_server(ls, sep, live)
        wait_for(lambda: (drain_server(ls, sep, live), len(live))[1] == pool - 4, "accepted")
        # a busy connection: its request is unread (not idle at the TCP level)
        busy = idle.pop(0)
        busy.send(b"GET / HTTP/1.1\r\n\r\n")
        time.sleep(0.05)
        # the pool is nearly full: new connections evict the longest silent idle ones
        fresh_ok = 0
        for _ in range(12):
            c = n.client.socket()
            with pytest.raises(BlockingIOError):
                c.connect((SERVER, 80))
            ep.register(c, m.EPOLLOUT | m.EPOLLIN)
            end = time.monotonic() + 4
            ok = False
            while time.monotonic() < end and not ok:
                drain_server(ls, sep, live)
                for x, ev in ep.poll(0.01):
                    if x is c and ev & m.EPOLLOUT and not ev & m.EPOLLERR:
                        ok = True
            fresh_ok += ok
            idle.append(c)
        if not evict:
            assert fresh_ok < 12
            assert n.server.stats()["evictions"] == 0
            return
        assert fresh_ok == 12
        st = settled(n.server, lambda st: st["evictions"] >= 12 - 4, "evictions counted")
        # the oldest idle connections went first; the busy one stayed
        assert busy.tcp_info()["state"] == "ESTABLISHED"
        reset = [c for c in idle if c.getsockopt(m.SOL_SOCKET, m.SO_ERROR)]
        assert len(reset) >= st["evictions"] - 2
        assert all(idle.index(c) < len(idle) - 12 for c in reset)
        for c in idle + [busy]:
            c.close()
        for s in live:
            s.close()
        ls.close()


def test_unmarked_connections_are_never_evicted() -> None:
    pool = 32
    with net_with(max_conns=pool) as n:
        ls, sep = listen(n.server)  # no SO_EVICTABLE
        ep = n.client.epoll()
        live: list[m.Socket] = []
        for _ in range(pool):
            c = n.client.socket()
            with pytest.raises(BlockingIOError):
                c.connect((SERVER, 80))
            drain_server(ls, sep, live)
        time.sleep(1.0)
        drain_server(ls, sep, live)
        assert n.server.stats()["evictions"] == 0
        for s in live:
            s.close()
        ls.close()
        del ep


# ---------------------------------------------------------------- per source


def test_per_source_connection_limit() -> None:
    with net_with(max_conns_per_source=3) as n:
        ls, sep = listen(n.server)
        ep = n.client.epoll()
        conns = [connect(n.client, ep) for _ in range(3)]
        served = [accept(ls, sep) for _ in range(3)]
        c = n.client.socket()
        with pytest.raises(BlockingIOError):
            c.connect((SERVER, 80))
        ep.register(c, m.EPOLLOUT | m.EPOLLIN)
        wait_event(ep, c, m.EPOLLERR, 10)
        assert c.getsockopt(m.SOL_SOCKET, m.SO_ERROR) == errno.ECONNREFUSED
        st = settled(n.server, lambda st: st["drop_tcp_source_limit"] >= 1, "counted")
        c.close()
        # one leaves: the next gets in
        conns.pop().abort()
        served.pop().close()
        settled(n.server, lambda st: st["flows"] == 2, "the closed one is gone")
        conns.append(connect(n.client, ep))
        served.append(accept(ls, sep))
        assert st["drop_tcp_source_limit"] >= 1
        for x in conns + served:
            x.close()


def test_the_http_server_sets_user_timeout_and_evictable_on_its_listener() -> None:
    from appliance.http.mtcp import USER_TIMEOUT_MS, MtcpNet

    with net_with() as n:
        net = MtcpNet(n.server, 80)
        net.listen()
        ls = net._lsock
        assert ls is not None
        assert ls.getsockopt(m.IPPROTO_TCP, m.TCP_USER_TIMEOUT) == USER_TIMEOUT_MS
        assert ls.getsockopt(m.SOL_SOCKET, m.SO_EVICTABLE) == 1
        ep = n.client.epoll()
        c = connect(n.client, ep)
        got: list[Any] = []
        wait_for(lambda: bool(got.extend(net.accept_many(8)) or got), "accepted", 10)
        s = got[0][0]
        assert s.getsockopt(m.IPPROTO_TCP, m.TCP_USER_TIMEOUT) == USER_TIMEOUT_MS
        assert s.getsockopt(m.SOL_SOCKET, m.SO_EVICTABLE) == 1
        s.close()
        net.close()
        c.close()


def test_time_wait_goes_before_idle_connections_are_evicted() -> None:
    pool = 32
    with net_with(max_conns=pool, time_wait_ms=60_000, max_orphans=64) as n:
        ls, sep = listen(n.server)
        ls.setsockopt(m.SOL_SOCKET, m.SO_EVICTABLE, 1)
        ep = n.client.epoll()
        live: list[m.Socket] = []
        closed = []
        for _ in range(20):  # the server closes first: 20 TIME-WAIT TCBs for a minute
            c = connect(n.client, ep)
            s = accept(ls, sep)
            s.close()
            closed.append(c)
        time.sleep(0.1)
        for c in closed:
            c.close()
        settled(n.server, lambda st: st["state_time_wait"] == 20, "20 in TIME-WAIT", 10)
        idle = []
        for _ in range(pool - 20 - 2):
            idle.append(connect(n.client, ep))
            drain_server(ls, sep, live)
        for _ in range(6):  # the pool is nearly full: TIME-WAIT makes the room
            idle.append(connect(n.client, ep))
            drain_server(ls, sep, live)
        st = settled(n.server, lambda st: st["time_wait_reclaimed"] >= 4, "TIME-WAIT reclaimed")
        assert st["evictions"] == 0
        assert all(c.getsockopt(m.SOL_SOCKET, m.SO_ERROR) == 0 for c in idle)
        for c in idle:
            c.close()
        for s in live:
            s.close()
        ls.close()
