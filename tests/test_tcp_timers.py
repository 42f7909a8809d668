"""TCP timers and socket options over the ``pair`` link: delayed ACKs, Nagle and
TCP_NODELAY, keepalive, the idle timeout, retransmission backoff (and the abort after
the last retry), SO_RCVBUF / SO_SNDBUF.

The helpers (``make_net``, ``Side``, ``connect`` ...) are the fault tests' ones. Some
tests drive both contexts from the test thread (each context still has one app thread).

The abort after TCP_MAX_RETRIES takes about 102 s (RTO 200 ms doubling 8 times), too long
for every run: by default the test checks that the retransmission timer backs off; set
MTCP_SLOW_TESTS=1 to also wait for the abort itself.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from typing import Any

import pytest
from test_tcp_faults import (
    DEADLINE_S,
    SERVER,
    Net,
    Side,
    accept,
    connect,
    listen,
    make_net,
    pools_back,
    settled,
    wait_event,
    wait_for,
)

import mtcp_core as m

SLOW = os.environ.get("MTCP_SLOW_TESTS", "") not in ("", "0")
TCP_MAX_RETRIES = 8  # tcp/tcp.h
RTO_MIN_S = 0.2  # tcp/tcp.h TCP_RTO_MIN_MS
# the abort comes at the expiry after the last retry: 200 ms * (2^0 + ... + 2^8)
ABORT_AFTER_S = RTO_MIN_S * (2 ** (TCP_MAX_RETRIES + 1) - 1)


def net_with(**kw: Any) -> Net:
    return make_net(seed=3, **kw)


def read_exactly(ep: m.Epoll, s: m.Socket, n: int, timeout: float = DEADLINE_S) -> bytes:
    got = bytearray()
    end = time.monotonic() + timeout
    while len(got) < n:
        assert time.monotonic() < end, f"read {len(got)} of {n}"
        try:
            d = s.recv(n - len(got))
        except BlockingIOError:
            ep.poll(0.05)
            continue
        assert d, f"EOF after {len(got)} of {n}"
        got += d
    return bytes(got)


def read_to_eof(ep: m.Epoll, s: m.Socket, timeout: float = DEADLINE_S) -> bytes:
    got = bytearray()
    end = time.monotonic() + timeout
    while True:
        assert time.monotonic() < end, f"no EOF after {len(got)} bytes"
        try:
            d = s.recv(65536)
        except BlockingIOError:
            ep.poll(0.05)
            continue
        if not d:
            return bytes(got)
        got += d


def all_acked(sock: m.Socket) -> bool:
    """Everything written has been sent and acknowledged."""
    info = sock.tcp_info()
    return info["sndbuf_used"] == 0 and info["snd_una"] == info["snd_nxt"]


# ---------------------------------------------------------------- delayed ACKs

ROUNDS = 60  # more than the 16 quick ACKs a connection starts with
REQUEST = b"q" * 100
RESPONSE = b"r" * 1000


def request_response(n: Net) -> tuple[dict[str, int], dict[str, int]]:
    """ROUNDS request/response exchanges on one connection; returns the counters'
    growth during the exchanges (client, server)."""
    last_acked = threading.Event()

    def serve(s: m.Socket, ep: m.Epoll) -> int:
        for _ in range(ROUNDS):
            assert read_exactly(ep, s, len(REQUEST)) == REQUEST
            s.send(RESPONSE)
        # the last response's ACK has nothing to ride on: it comes at once (no delayed
        # ACKs) or when the client's delayed-ACK timer fires
        wait_for(lambda: all_acked(s), "the last response acknowledged", 5)
        last_acked.set()
        return len(read_to_eof(ep, s))

    server = Side(n.server, serve).begin()
    ep = n.client.epoll()
    c = connect(n.client, ep)
    wait_for(lambda: all_acked(c), "handshake settled")
    c0, s0 = n.client.stats(), n.server.stats()
    for _ in range(ROUNDS):
        c.send(REQUEST)
        assert read_exactly(ep, c, len(RESPONSE)) == RESPONSE
    if not last_acked.wait(10):
        server.finish(0)  # its error says why
    # the server saw the client's last ACK a link delay (1 ms) after the client's round
    # sent and published it; every response counted means every ACK the server sent
    # before it is counted too
    c1 = n.client.stats()
    s1 = settled(
        n.server, lambda st: st["tx_data_pkts"] - s0["tx_data_pkts"] >= ROUNDS, "responses"
    )
    c.close()
    assert server.finish() == 0
    grown = ({k: c1[k] - c0[k] for k in c1}, {k: s1[k] - s0[k] for k in s1})
    pools_back(n.client, "client")
    pools_back(n.server, "server")
    return grown


def test_delayed_acks_ride_on_responses() -> None:
    results: dict[bool, tuple[dict[str, int], dict[str, int]]] = {}
    for delayed in (True, False):
        n = net_with(no_delayed_ack=not delayed)
        try:
            results[delayed] = request_response(n)
        finally:
            n.close()
    (dc, ds), (nc, ns) = results[True], results[False]
    keys = ("tx_ack_pkts", "tx_data_pkts", "delayed_acks", "retransmits", "loss_probes")
    seen = "; ".join(
        f"{mode} {side}: " + ", ".join(f"{k} {st[k]}" for k in keys)
        for mode, side, st in (
            ("delayed", "client", dc),
            ("delayed", "server", ds),
            ("no_delayed", "client", nc),
            ("no_delayed", "server", ns),
        )
    )
    # without delayed ACKs the server acknowledges every request on its own before
    # answering; with them the answer carries the ACK
    assert ns["tx_ack_pkts"] >= ROUNDS * 0.8, seen
    assert ds["tx_ack_pkts"] <= ns["tx_ack_pkts"] / 2, seen
    assert dc["tx_ack_pkts"] + ds["tx_ack_pkts"] < nc["tx_ack_pkts"] + ns["tx_ack_pkts"], seen
    # a lossless link: a delayed ACK must not look like a loss to the sender (its tail
    # loss probe waits for the peer's delayed-ACK time when one segment is out)
    for st in (dc, ds, nc, ns):
        assert st["retransmits"] == 0, seen
    assert dc["delayed_acks"] + ds["delayed_acks"] > 0, seen  # the last response's ACK
    assert nc["delayed_acks"] == ns["delayed_acks"] == 0, seen
    # the same data moved both times
    assert ds["tx_data_pkts"] == ns["tx_data_pkts"] == ROUNDS, seen


# ---------------------------------------------------------------- Nagle


def one_byte_writes(nodelay: bool, count: int = 200) -> tuple[int, bytes]:
    """``count`` one-byte sends, 1 ms apart; returns (data segments, bytes received)."""
    n = net_with()
    try:
        server = Side(n.server, lambda s, ep: read_to_eof(ep, s)).begin()
        ep = n.client.epoll()
        c = n.client.socket()
        c.setsockopt(m.IPPROTO_TCP, m.TCP_NODELAY, 1 if nodelay else 0)
        assert c.getsockopt(m.IPPROTO_TCP, m.TCP_NODELAY) == (1 if nodelay else 0)
        with pytest.raises(BlockingIOError):
            c.connect((SERVER, 80))
        ep.register(c, m.EPOLLOUT | m.EPOLLIN)
        wait_event(ep, c, m.EPOLLOUT)
        before = n.client.stats()["tx_data_pkts"]
        data = bytes(range(count))
        for i in range(count):
            assert c.send(data[i : i + 1]) == 1
            time.sleep(0.001)  # the application's pace, not a synchronisation
        wait_for(lambda: all_acked(c), "all bytes acknowledged")
        segs = n.client.stats()["tx_data_pkts"] - before
        c.close()
        got = server.finish()
        return segs, got
    finally:
        n.close()


def test_nagle_coalesces_small_writes_and_nodelay_does_not() -> None:
    count = 200
    nagle_segs, nagle_data = one_byte_writes(nodelay=False, count=count)
    fast_segs, fast_data = one_byte_writes(nodelay=True, count=count)
    assert nagle_data == fast_data == bytes(range(count))
    assert fast_segs >= count * 0.5, (nagle_segs, fast_segs)
    assert nagle_segs * 4 <= fast_segs, (nagle_segs, fast_segs)


def test_nagle_sends_a_full_segment_and_its_tail_without_waiting_for_an_ack() -> None:
    """Minshall's Nagle (as Linux): only an unacknowledged small segment holds the next
    small one. A response of one full segment plus a tail goes out at once; a plain
    Nagle would hold the tail until the first segment's (delayed) ACK."""
    n = net_with()
    try:
        ls, sep = listen(n.server)
        ep = n.client.epoll()
        c = connect(n.client, ep)
        s = accept(ls, sep)
        # from now on the client's pure ACKs are lost: the tail must not wait for one
        ack_only = m.PairLink.SYN | m.PairLink.FIN | m.PairLink.RST | m.PairLink.ACK
        n.link.drop_next(0, ack_only, m.PairLink.ACK, count=1000, max_payload=0)
        response = os.urandom(2000)  # 1448 + 552 with timestamps
        assert s.send(response) == len(response)
        got = read_exactly(ep, c, len(response), timeout=10)
        assert got == response
        c.abort()
        s.abort()
    finally:
        n.close()


# ---------------------------------------------------------------- keepalive


def test_keepalive_probes_an_idle_peer_and_gives_up_when_it_vanishes() -> None:
    idle, intvl, cnt = 1, 1, 3
    n = net_with()
    try:
        ls, sep = listen(n.server)
        ep = n.client.epoll()
        c = n.client.socket()
        c.setsockopt(m.SOL_SOCKET, m.SO_KEEPALIVE, 1)
        c.setsockopt(m.IPPROTO_TCP, m.TCP_KEEPIDLE, idle)
        c.setsockopt(m.IPPROTO_TCP, m.TCP_KEEPINTVL, intvl)
        c.setsockopt(m.IPPROTO_TCP, m.TCP_KEEPCNT, cnt)
        assert c.getsockopt(m.SOL_SOCKET, m.SO_KEEPALIVE) == 1
        assert c.getsockopt(m.IPPROTO_TCP, m.TCP_KEEPIDLE) == idle
        with pytest.raises(BlockingIOError):
            c.connect((SERVER, 80))
        ep.register(c, m.EPOLLOUT | m.EPOLLIN)
        wait_event(ep, c, m.EPOLLOUT)
        s = accept(ls, sep)
        sep.register(s, m.EPOLLIN)
        ep.modify(c, m.EPOLLIN)
        # idle, the peer answers: probes go out, the connection stays up
        t0 = time.monotonic()
        settled(n.client, lambda st: st["keepalive_probes"] >= 2, "two keepalive probes", 5)
        took = time.monotonic() - t0
        assert took >= 2 * idle * 0.9, f"probes sooner than the idle time: {took:.2f}s"
        assert not [ev for x, ev in ep.poll(0) if x is c and ev & m.EPOLLERR]
        assert c.tcp_info()["state"] == s.tcp_info()["state"] == "ESTABLISHED"
        with pytest.raises(BlockingIOError):
            s.recv(10)  # probes carry nothing the application sees
        assert c.getsockopt(m.SOL_SOCKET, m.SO_ERROR) == 0
        # the peer vanishes: after cnt unanswered probes the connection is reset
        before = n.client.stats()
        n.link.set_faults(seed=3, loss=1.0)
        t0 = time.monotonic()
        ev = wait_event(ep, c, m.EPOLLERR, idle + intvl * cnt + 5)
        took = time.monotonic() - t0
        assert ev & m.EPOLLHUP
        assert took <= idle + intvl * cnt + 1.5, f"gave up after {took:.2f}s"
        assert took >= intvl * cnt * 0.8, f"gave up after {took:.2f}s"
        assert c.getsockopt(m.SOL_SOCKET, m.SO_ERROR) == errno.ETIMEDOUT
        with pytest.raises(TimeoutError):
            c.recv(10)
        after = settled(n.client, lambda st: st["conn_timeouts"] > before["conn_timeouts"], "ct")
        # cnt unanswered probes; the first may have gone out just before the loss began
        # (its answer was lost), so at least cnt - 1 after
        assert after["keepalive_probes"] - before["keepalive_probes"] >= cnt - 1
        c.close()
        s.abort()
    finally:
        n.close()


# ---------------------------------------------------------------- idle timeout


def test_idle_timeout_resets_idle_connections_only() -> None:
    n = net_with(idle_timeout_ms=500)
    try:
        ls, sep = listen(n.server)
        ep = n.client.epoll()
        idle_c = connect(n.client, ep)
        idle_s = accept(ls, sep)
        busy_c = connect(n.client, ep)
        busy_s = accept(ls, sep)
        sep.register(busy_s, m.EPOLLIN)
        t0 = time.monotonic()
        idle_err_at: float | None = None
        got = bytearray()
        sent = 0
        next_send = t0
        while (now := time.monotonic()) - t0 < 1.6:
            if now >= next_send:  # some traffic every 100 ms keeps busy_c alive
                busy_c.send(b"k")
                sent += 1
                next_send += 0.1
            for x, ev in ep.poll(0.02):
                if x is idle_c and ev & (m.EPOLLERR | m.EPOLLHUP) and idle_err_at is None:
                    idle_err_at = time.monotonic() - t0
                assert x is not busy_c or not ev & m.EPOLLERR, "the active connection was reset"
            try:
                got += busy_s.recv(100)
            except BlockingIOError:
                pass
        assert idle_err_at is not None, "the idle connection was not reset"
        assert 0.4 <= idle_err_at <= 1.2, f"reset after {idle_err_at:.2f}s (timeout 0.5 s)"
        assert idle_c.getsockopt(m.SOL_SOCKET, m.SO_ERROR) in (errno.ETIMEDOUT, errno.ECONNRESET)
        with pytest.raises(OSError):
            idle_c.recv(10)

        # whichever side's timer fired first reset the other one
        def idle_timeouts() -> int:
            return n.client.stats()["idle_timeouts"] + n.server.stats()["idle_timeouts"]

        wait_for(lambda: idle_timeouts() >= 1, "idle timeout counted", 5)
        assert idle_timeouts() <= 2  # the idle connection only (once per side at most)
        assert busy_c.tcp_info()["state"] == busy_s.tcp_info()["state"] == "ESTABLISHED"
        got += read_exactly(sep, busy_s, sent - len(got))
        assert bytes(got) == b"k" * sent and sent >= 10
        for x in (idle_c, busy_c):
            x.close()
        for x in (idle_s, busy_s):
            x.close()
    finally:
        n.close()


# ---------------------------------------------------------------- retransmission backoff


def backoff_times(sock: m.Socket, seconds: float) -> list[float]:
    """When the connection's RTO backoff went up (one per retransmission timeout)."""
    out: list[float] = []
    last = sock.tcp_info()["rto_backoff"]
    t0 = time.monotonic()
    while (now := time.monotonic()) - t0 < seconds:
        cur = sock.tcp_info()["rto_backoff"]
        if cur > last:
            out.extend([now - t0] * (cur - last))
        last = cur
        time.sleep(0.005)
    return out


def test_retransmission_timeouts_back_off_exponentially() -> None:
    n = net_with()
    try:
        ls, sep = listen(n.server)
        ep = n.client.epoll()
        c = connect(n.client, ep)
        s = accept(ls, sep)
        assert c.send(b"warm up") == 7
        sep.register(s, m.EPOLLIN)
        assert read_exactly(sep, s, 7) == b"warm up"
        wait_for(lambda: all_acked(c), "RTT sampled")
        before = n.client.stats()
        n.link.set_faults(seed=3, loss=1.0)  # the peer is gone, data is pending
        assert c.send(b"x" * 10000) == 10000
        times = backoff_times(c, 3.5)
        # RTO 200 ms, then 400, 800, 1600 ms: timeouts at about 0.2, 0.6, 1.4, 3.0 s
        assert len(times) >= 4, times
        gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
        assert all(b >= 1.6 * a for a, b in zip(gaps, gaps[1:], strict=False)), times
        assert gaps[0] >= RTO_MIN_S * 1.5, times
        after = n.client.stats()
        assert after["rto_timeouts"] - before["rto_timeouts"] >= 4
        assert after["retransmits"] - before["retransmits"] >= 4
        assert c.tcp_info()["state"] == "ESTABLISHED"  # not given up yet
        assert c.getsockopt(m.SOL_SOCKET, m.SO_ERROR) == 0
        c.abort()
        s.abort()
    finally:
        n.close()


@pytest.mark.skipif(not SLOW, reason=f"takes ~{ABORT_AFTER_S:.0f} s; set MTCP_SLOW_TESTS=1")
@pytest.mark.timeout(ABORT_AFTER_S + 60)
def test_connection_aborts_after_bounded_retries() -> None:
    n = net_with()
    try:
        ls, sep = listen(n.server)
        ep = n.client.epoll()
        c = connect(n.client, ep)
        s = accept(ls, sep)
        wait_for(lambda: all_acked(c), "handshake ACKed")
        n.link.set_faults(seed=3, loss=1.0)
        assert c.send(b"x" * 10000) == 10000
        t0 = time.monotonic()
        ev = wait_event(ep, c, m.EPOLLERR, ABORT_AFTER_S + 30)
        took = time.monotonic() - t0
        print(f"aborted after {took:.1f}s")
        assert ev & m.EPOLLHUP
        assert ABORT_AFTER_S * 0.9 <= took <= ABORT_AFTER_S + 5, took
        assert c.getsockopt(m.SOL_SOCKET, m.SO_ERROR) == errno.ETIMEDOUT
        with pytest.raises(TimeoutError):
            c.recv(10)
        cs = settled(n.client, lambda st: st["conn_timeouts"] >= 1, "conn_timeouts", 5)
        assert cs["rto_timeouts"] >= TCP_MAX_RETRIES
        c.close()
        s.abort()
    finally:
        n.close()


# ---------------------------------------------------------------- SO_RCVBUF / SO_SNDBUF


def stall_point(writer: m.Socket, timeout: float = DEADLINE_S) -> int:
    """Writes until the writer stays blocked (the reader does not read); returns the
    bytes accepted."""
    sent = 0
    chunk = b"z" * 65536
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            sent += writer.send(chunk)
            continue
        except BlockingIOError:
            pass
        if writer.tcp_info()["snd_wnd"] == 0:
            return sent
        time.sleep(0.01)
    raise AssertionError(f"writer never stalled ({sent} bytes)")


@pytest.mark.parametrize("option", ["SO_RCVBUF", "SO_SNDBUF"])
def test_buffer_sizes_set_before_connect_take_effect(option: str) -> None:
    small = 8192
    default = 64 * 1024
    n = net_with()
    try:
        ls, sep = listen(n.server)
        ep = n.client.epoll()
        c = n.client.socket()
        c.setsockopt(m.SOL_SOCKET, getattr(m, option), small)
        with pytest.raises(OSError) as e:
            c.setsockopt(m.SOL_SOCKET, getattr(m, option), 100)
        assert e.value.errno == errno.EINVAL
        with pytest.raises(BlockingIOError):
            c.connect((SERVER, 80))
        ep.register(c, m.EPOLLOUT | m.EPOLLIN)
        wait_event(ep, c, m.EPOLLOUT)
        s = accept(ls, sep)
        assert c.getsockopt(m.SOL_SOCKET, getattr(m, option)) == small
        if option == "SO_RCVBUF":
            assert c.tcp_info()["rcv_wnd"] <= small
            assert s.tcp_info()["snd_wnd"] <= small  # what the server was told
            assert s.getsockopt(m.SOL_SOCKET, m.SO_RCVBUF) == default
            held = stall_point(s)  # the client does not read
            assert held <= small + default, held
            assert c.tcp_info()["rcvbuf_used"] <= small
        else:
            held = stall_point(c)  # the server does not read
            assert held <= default + small, held
            assert c.tcp_info()["sndbuf_used"] <= small
        assert held >= small
        c.abort()
        s.abort()
    finally:
        n.close()


def test_accepted_connections_inherit_the_listeners_buffer_sizes() -> None:
    small = 8192
    n = net_with()
    try:
        ls = n.server.socket()
        ls.bind(("0.0.0.0", 80))
        ls.setsockopt(m.SOL_SOCKET, m.SO_RCVBUF, small)  # before listen(), as on Linux
        ls.listen(16)
        sep = n.server.epoll()
        sep.register(ls, m.EPOLLIN)
        ep = n.client.epoll()
        c = n.client.socket()
        with pytest.raises(BlockingIOError):
            c.connect((SERVER, 80))
        ep.register(c, m.EPOLLOUT | m.EPOLLIN)
        wait_event(ep, c, m.EPOLLOUT)
        s = accept(ls, sep)
        assert s.getsockopt(m.SOL_SOCKET, m.SO_RCVBUF) == small
        assert c.tcp_info()["snd_wnd"] <= small  # the window the server announced
        held = stall_point(c)  # the server does not read
        assert small <= held <= small + 64 * 1024, held
        assert s.tcp_info()["rcvbuf_used"] <= small
        c.abort()
        s.abort()
    finally:
        n.close()
