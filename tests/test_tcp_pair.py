"""TCP lifecycle between two stacks joined by the in-memory ``pair`` link.

No privileges needed. Each context is driven by exactly one Python thread: the test
thread drives the client stack, a ``Peer`` thread drives the server stack.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import mtcp_core as m
from mtcp_core.testing import FIN
from mtcp_core.testing.pairnet import (
    CLIENT,
    DEADLINE_S,
    SERVER,
    Net,
    Peer,
    close_net,
    connect,
    make_net,
    read_to_eof,
    settled,
    transfer,
    wait_event,
    wait_for,
)
from mtcp_core.testing.pcapfile import tcp_frames


@pytest.fixture
def net() -> Iterator[Net]:
    n = make_net(time_wait_ms=100)
    yield n
    close_net(n)


@dataclass
class Accepted:
    """A connection opened by the client and accepted by the test itself."""

    c: m.Socket  # client side
    ep: m.Epoll  # client's epoll, c registered
    s: m.Socket  # server side, accepted
    ep_s: m.Epoll  # server's epoll (the listener registered)
    addr: tuple[str, int]  # accept()'s peer address


def accept_one(net: Net) -> Accepted:
    ep_s = net.server.epoll()
    ls = net.server.socket()
    ls.bind(("0.0.0.0", 80))
    ls.listen()
    ep_s.register(ls, m.EPOLLIN)
    ep = net.client.epoll()
    c = connect(net.client, ep)
    wait_event(ep_s, ls, m.EPOLLIN)
    s, addr = ls.accept()
    return Accepted(c, ep, s, ep_s, addr)


def test_handshake_negotiates_options(net: Net) -> None:
    peer = Peer(net.server, mode="none").start()
    ep = net.client.epoll()
    c = connect(net.client, ep)
    info = c.tcp_info()
    assert info["state"] == "ESTABLISHED"
    assert info["mss"] == 1460
    assert info["snd_wscale"] >= 1 and info["rcv_wscale"] >= 1  # 64 KiB rings need scaling
    assert c.getpeername() == (SERVER, 80)
    assert c.getsockname()[0] == CLIENT
    ss = settled(net.server, lambda s: s["conn_passive_opens"] == 1, "accept queue")
    cs = settled(net.client, lambda s: s["conn_active_opens"] == 1, "active open counted")
    assert cs["tx_control_pkts"] >= 1 and ss["tx_control_pkts"] >= 1  # SYN / SYN-ACK
    c.close()
    peer.join()


def test_one_mebibyte_each_way_byte_exact(net: Net) -> None:
    peer = Peer(net.server, mode="echo").start()
    ep = net.client.epoll()
    c = connect(net.client, ep)
    payload = os.urandom(1 << 20)
    echoed = transfer(ep, c, payload, len(payload))
    assert echoed == payload
    assert bytes(next(iter(peer.received.values()))) == payload
    c.close()
    peer.join()


def test_sequence_numbers_wrap_around() -> None:
    # both ISNs 3000 bytes below 2^32: 1 MiB crosses the wrap in both directions
    n = make_net(time_wait_ms=50, fixed_isn=(1 << 32) - 3000)
    try:
        peer = Peer(n.server, mode="echo").start()
        ep = n.client.epoll()
        c = connect(n.client, ep)
        payload = os.urandom(1 << 20)
        assert transfer(ep, c, payload, len(payload)) == payload
        assert c.tcp_info()["snd_una"] < 1 << 20  # it did wrap
        c.close()
        peer.join()
    finally:
        close_net(n)


def test_close_from_client_side(net: Net) -> None:
    peer = Peer(net.server, mode="echo").start()
    ep = net.client.epoll()
    c = connect(net.client, ep)
    assert transfer(ep, c, b"ping", 4) == b"ping"
    c.close()
    # the client did the active close: it holds TIME_WAIT, the server went LAST_ACK -> CLOSED
    wait_for(lambda: net.client.stats()["state_time_wait"] == 1, "client TIME_WAIT")
    wait_for(lambda: peer.eof, "server sees EOF")
    wait_for(
        lambda: net.server.stats()["pool_tcb_free"] == net.server.stats()["pool_tcb_total"],
        "server TCB freed",
    )
    assert net.server.stats()["state_time_wait"] == 0
    # TIME_WAIT ends by itself
    wait_for(lambda: net.client.stats()["state_time_wait"] == 0, "TIME_WAIT expiry")
    cs, ss = net.stats()
    assert cs["pool_tcb_free"] == cs["pool_tcb_total"]
    assert cs["rst_tx"] == cs["rst_rx"] == ss["rst_tx"] == ss["rst_rx"] == 0
    peer.join()


def test_close_from_server_side(net: Net) -> None:
    a = accept_one(net)
    c, ep, s, _ep_s, peer_addr = a.c, a.ep, a.s, a.ep_s, a.addr
    assert peer_addr == c.getsockname()
    assert s.send(b"bye") == 3
    s.close()  # server closes first
    assert read_to_eof(ep, c) == b"bye"
    ep.modify(c, m.EPOLLIN | m.EPOLLRDHUP)  # RDHUP is reported only when asked for, as in Linux
    ev = wait_event(ep, c, m.EPOLLRDHUP)
    assert ev & m.EPOLLRDHUP
    assert c.tcp_info()["state"] == "CLOSE_WAIT"
    c.close()
    wait_for(lambda: net.server.stats()["state_time_wait"] == 1, "server TIME_WAIT")
    wait_for(
        lambda: net.client.stats()["pool_tcb_free"] == net.client.stats()["pool_tcb_total"],
        "client freed after LAST_ACK",
    )
    assert net.client.stats()["rst_tx"] == 0


def test_simultaneous_close_both_sides_end_in_time_wait() -> None:
    n = make_net(time_wait_ms=200)
    try:
        a = accept_one(n)
        c, s = a.c, a.s
        # 20 ms one-way delay: both FINs are in flight at once
        n.link.set_faults(seed=1, delay_us=20000)
        c.close()
        s.close()
        wait_for(lambda: n.client.stats()["state_time_wait"] == 1, "client TIME_WAIT")
        wait_for(lambda: n.server.stats()["state_time_wait"] == 1, "server TIME_WAIT")
        cs, ss = n.stats()
        assert cs["rst_tx"] == ss["rst_tx"] == 0
        wait_for(lambda: n.client.stats()["pool_tcb_free"] == cs["pool_tcb_total"], "freed")
        wait_for(lambda: n.server.stats()["pool_tcb_free"] == ss["pool_tcb_total"], "freed")
    finally:
        close_net(n)


def test_rst_for_closed_port(net: Net) -> None:
    ep = net.client.epoll()
    c = net.client.socket()
    with pytest.raises(BlockingIOError):
        c.connect((SERVER, 81))
    ep.register(c, m.EPOLLOUT | m.EPOLLIN)
    ev = wait_event(ep, c, m.EPOLLERR)
    assert ev & m.EPOLLHUP
    assert c.getsockopt(m.SOL_SOCKET, m.SO_ERROR) == errno.ECONNREFUSED
    with pytest.raises(ConnectionRefusedError):
        c.recv(10)
    ss = settled(net.server, lambda s: s["rst_tx"] == 1, "RST sent")
    assert ss["drop_tcp_no_socket"] == 1
    cs = settled(net.client, lambda s: s["rst_rx"] == 1, "RST received")
    c.close()
    wait_for(lambda: net.client.stats()["pool_tcb_free"] == cs["pool_tcb_total"], "freed")


def test_abort_sends_rst_and_peer_sees_reset(net: Net) -> None:
    a = accept_one(net)
    c, _ep, s, ep_s = a.c, a.ep, a.s, a.ep_s
    ep_s.register(s, m.EPOLLIN)
    c.setsockopt(m.SOL_SOCKET, m.SO_LINGER, (1, 0))
    c.close()  # SO_LINGER 0: RST, no TIME_WAIT
    ev = wait_event(ep_s, s, m.EPOLLERR)
    assert ev & m.EPOLLHUP
    with pytest.raises(ConnectionResetError):
        s.recv(10)
    with pytest.raises(ConnectionResetError):
        s.send(b"x")
    cs = settled(net.client, lambda s: s["rst_tx"] == 1, "RST sent")
    settled(net.server, lambda s: s["rst_rx"] == 1, "RST received")
    assert cs["state_time_wait"] == 0
    s.close()


def test_half_close_keeps_the_other_direction(net: Net) -> None:
    a = accept_one(net)
    c, ep, s, ep_s = a.c, a.ep, a.s, a.ep_s
    ep_s.register(s, m.EPOLLIN)
    c.send(b"request")
    c.shutdown(m.SHUT_WR)
    with pytest.raises(BrokenPipeError):
        c.send(b"more")
    assert read_to_eof(ep_s, s) == b"request"
    assert s.tcp_info()["state"] == "CLOSE_WAIT"
    s.send(b"response after your FIN")
    s.close()
    assert read_to_eof(ep, c) == b"response after your FIN"
    c.close()


def test_many_connections_in_sequence_return_pools(net: Net) -> None:
    peer = Peer(net.server, mode="echo").start()
    ep = net.client.epoll()
    initial = net.client.stats()["pool_tcb_total"]
    for i in range(300):
        c = connect(net.client, ep)
        msg = f"request {i}".encode()
        assert transfer(ep, c, msg, len(msg)) == msg
        ep.unregister(c)
        c.close()
    wait_for(lambda: net.client.stats()["pool_tcb_free"] == initial, "client pools back")
    wait_for(lambda: net.server.stats()["pool_tcb_free"] == initial, "server pools back")
    cs, ss = net.stats()
    assert cs["pool_sndbuf_free"] == cs["pool_sndbuf_total"]
    assert cs["pool_rcvbuf_free"] == cs["pool_rcvbuf_total"]
    assert ss["pool_rcvbuf_free"] == ss["pool_rcvbuf_total"]
    assert ss["conn_passive_opens"] == 300 and cs["conn_active_opens"] == 300
    assert cs["rst_tx"] == ss["rst_tx"] == 0
    peer.join()


def test_socket_ids_come_from_a_free_list(net: Net) -> None:
    a = net.client.socket()
    b = net.client.socket()
    a.close()
    c = net.client.socket()
    assert c.fd == a.fd  # the id just freed is reused first (LIFO free list)
    assert b.fd != c.fd


def test_api_errors_carry_errno(net: Net) -> None:
    ls = net.server.socket()
    ls.bind(("0.0.0.0", 80))
    other = net.server.socket()
    with pytest.raises(OSError) as e:
        other.bind(("0.0.0.0", 80))
    assert e.value.errno == errno.EADDRINUSE
    with pytest.raises(OSError) as e:
        other.bind(("198.18.0.99", 8080))
    assert e.value.errno == errno.EADDRNOTAVAIL
    with pytest.raises(OSError) as e:
        other.recv(10)
    assert e.value.errno == errno.ENOTCONN
    ls.listen()
    with pytest.raises(BlockingIOError):
        ls.accept()
    assert ls.accept_many() == []
    ls.close()
    with pytest.raises(OSError) as e:
        m.Socket(net.server, 4000).recv(1)
    assert e.value.errno == errno.EBADF
    with pytest.raises(OSError) as e:
        m.Stack("pair", "198.18.0.9/24", pair=net.link, rcvbuf=100)
    assert "rcvbuf" in str(e.value)
    with pytest.raises(OSError) as e:
        m.Stack("nosuch", "198.18.0.9/24")
    assert e.value.errno == errno.EINVAL


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("priority", "tx_priority="),
        ("no_priority", "tx_priority=False"),
        ("no_delayed_ack", "delayed_ack=False"),
        ("no_sack", "sack=False"),
        ("no_evict", "evict=False"),
        ("no_hugepages", "hugepages=False"),
    ],
)
def test_stack_old_option_names_say_the_new_one(old: str, new: str) -> None:
    link = m.PairLink()
    try:
        with pytest.raises(TypeError, match=f"{old}= was renamed: use {new}"):
            m.Stack("pair", "198.18.0.9/24", pair=link, **{old: True})
        with pytest.raises(TypeError, match="unknown option bogus="):
            m.Stack("pair", "198.18.0.9/24", pair=link, bogus=1)
    finally:
        link.close()


def test_every_stack_option_reaches_the_c_conf() -> None:
    """Each StackOptions field, set away from its default, lands in its struct mtcp_conf
    field with the C side's polarity (``sack=False`` is ``no_sack = 1``)."""
    from mtcp_core._native import ffi

    o = m.StackOptions(
        pcap="/p", stats_path="/s", trace=True, max_conns=1, rcvbuf=2, sndbuf=3, mem_budget=4,
        hugepages=False, sack=False, delayed_ack=False, congestion="newreno", time_wait_ms=5,
        idle_timeout_ms=6, syn_backlog=7, challenge_ack_limit=8, orphan_retries=9,
        max_orphans=10, max_conns_per_source=11, evict=False, frag_timeout_ms=12, fixed_isn=13,
        secret_seed=14, tx_priority=False, tx_rate_mbps=15, afpacket_rx="ring",
        shared_addr=True, busy_poll_us=16,
    )  # fmt: skip
    keep: list[object] = []

    def cstr(v: str | None) -> object:
        if v is None:
            return ffi.NULL
        keep.append(ffi.new("char[]", v.encode()))
        return keep[-1]

    conf = ffi.new("struct mtcp_conf *")
    o._fill(conf, cstr)
    strings = {k: ffi.string(getattr(conf, k)).decode() for k in ("pcap_path", "stats_path",
                                                                   "congestion")}  # fmt: skip
    assert strings == {"pcap_path": "/p", "stats_path": "/s", "congestion": "newreno"}
    numbers = {k: getattr(conf, k) for k in (
        "trace", "max_conns", "rcvbuf", "sndbuf", "mem_budget", "hugepages", "no_sack",
        "no_delayed_ack", "time_wait_ms", "idle_timeout_ms", "syn_backlog",
        "challenge_ack_limit", "orphan_retries", "max_orphans", "max_conns_per_source",
        "no_evict", "frag_timeout_ms", "fixed_isn", "secret_seed", "no_priority",
        "tx_rate_mbps", "afpacket_rx_ring", "shared_addr", "busy_poll_us")}  # fmt: skip
    assert numbers == {
        "trace": 1, "max_conns": 1, "rcvbuf": 2, "sndbuf": 3, "mem_budget": 4, "hugepages": 0,
        "no_sack": 1, "no_delayed_ack": 1, "time_wait_ms": 5, "idle_timeout_ms": 6,
        "syn_backlog": 7, "challenge_ack_limit": 8, "orphan_retries": 9, "max_orphans": 10,
        "max_conns_per_source": 11, "no_evict": 1, "frag_timeout_ms": 12, "fixed_isn": 13,
        "secret_seed": 14, "no_priority": 1, "tx_rate_mbps": 15, "afpacket_rx_ring": 1,
        "shared_addr": 1, "busy_poll_us": 16,
    }  # fmt: skip
    conf = ffi.new("struct mtcp_conf *")
    m.StackOptions()._fill(conf, cstr)
    assert (conf.no_sack, conf.no_delayed_ack, conf.no_evict, conf.no_priority) == (0, 0, 0, 0)
    assert (conf.hugepages, conf.trace, conf.afpacket_rx_ring, conf.pcap_path) == (
        1, 0, 0, ffi.NULL,
    )


def test_stack_options_and_keywords_combine() -> None:
    """Keywords are StackOptions fields and win over ``options``; bad values fail when the
    options are made, naming the field."""
    link = m.PairLink()
    base = m.StackOptions(sack=False, time_wait_ms=50)
    with m.Stack("pair", "198.18.0.9/24", pair=link, options=base, delayed_ack=False) as s:
        assert (s.options.sack, s.options.delayed_ack, s.options.time_wait_ms) == (
            False, False, 50,
        )
    assert base.delayed_ack  # the caller's options are not changed
    with m.Stack("pair", "198.18.0.9/24", pair=link) as s:
        assert s.options == m.StackOptions()
    with pytest.raises(ValueError, match="congestion: one of cubic, newreno, not 'bbr'"):
        m.StackOptions(congestion="bbr")
    link.close()


def test_level_and_edge_triggered_epoll(net: Net) -> None:
    a = accept_one(net)
    c, _ep, s, _ep_s = a.c, a.ep, a.s, a.ep_s
    lt = net.server.epoll()
    lt.register(s, m.EPOLLIN)
    c.send(b"abc")
    wait_event(lt, s, m.EPOLLIN)
    # level-triggered: still reported while unread
    assert [ev for x, ev in lt.poll(0.1) if x is s]
    assert [ev for x, ev in lt.poll(0.1) if x is s]
    assert s.recv(1) == b"a"
    assert [ev for x, ev in lt.poll(0.1) if x is s]  # 2 bytes left
    assert s.recv(10) == b"bc"
    assert not [ev for x, ev in lt.poll(0.1) if x is s]
    lt.unregister(s)
    et = net.server.epoll()
    et.register(s, m.EPOLLIN | m.EPOLLET)
    c.send(b"xyz")
    wait_event(et, s, m.EPOLLIN)
    # edge-triggered: reported once for the arrival, even though data stays unread
    assert not [ev for x, ev in et.poll(0.2) if x is s]
    c.send(b"more")
    wait_event(et, s, m.EPOLLIN)  # a new arrival is a new edge
    assert s.recv(100) == b"xyzmore"
    c.close()
    s.close()


def test_batched_calls_carry_many_sockets(net: Net) -> None:
    peer = Peer(net.server, mode="echo").start()
    ep = net.client.epoll()
    socks = [connect(net.client, ep) for _ in range(20)]
    res = net.client.send_many([(s, f"msg{i}".encode()) for i, s in enumerate(socks)])
    assert res == [len(f"msg{i}") for i in range(20)]
    got: dict[int, bytes] = {}
    end = time.monotonic() + DEADLINE_S
    while len(got) < 20 and time.monotonic() < end:
        ready = [s for s, ev in ep.poll(0.1) if ev & m.EPOLLIN and s.fd not in got]
        for s, r in zip(ready, net.client.recv_many(ready), strict=True):
            if isinstance(r, bytes) and r:
                got[s.fd] = r
    assert {s.fd: got.get(s.fd) for s in socks} == {
        s.fd: f"msg{i}".encode() for i, s in enumerate(socks)
    }
    jobs_before = net.client.stats()["jobs"]
    net.client.close_many(socks)
    wait_for(lambda: net.client.stats()["jobs"] >= jobs_before + 20, "close jobs")
    peer.join()


def test_priority_lists_are_observable_and_switchable() -> None:
    for priority in (True, False):
        n = make_net(time_wait_ms=50, tx_priority=priority)
        try:
            peer = Peer(n.server, mode="echo").start()
            ep = n.client.epoll()
            c = connect(n.client, ep)
            assert transfer(ep, c, b"x" * 100000, 100000) == b"x" * 100000
            c.close()
            peer.join()
            # SYN and FIN went on the control list, the data on the data list
            cs = settled(
                n.client,
                lambda s: s["tx_data_pkts"] >= 60 and s["tx_control_pkts"] >= 2,
                "control and data segments counted",
            )
            for k in ("txq_control", "txq_ack", "txq_data"):
                assert k in cs
        finally:
            close_net(n)


def test_send_many_with_close_puts_the_fin_on_the_last_data_segment(tmp_path: Path) -> None:
    """send_many(..., close=[True]) writes and closes in one crossing: the mTCP thread takes
    both in one round, so the response's last segment carries the FIN (one frame less per
    short connection); a flagged socket whose bytes were not all taken stays open."""
    pcap = tmp_path / "server-%u.pcap"
    n = make_net(time_wait_ms=100)
    n.server_stack.close()
    n.server_stack = m.Stack("pair", f"{SERVER}/24", pair=n.link, pair_side=1,
                             time_wait_ms=100, pcap=str(pcap))  # fmt: skip
    n.server = n.server_stack.context(0)
    try:
        acc = accept_one(n)
        port = acc.c.getsockname()[1]
        assert n.server.send_many([(acc.s, b"response")], close=[True]) == [len(b"response")]
        with pytest.raises(OSError):
            acc.s.send(b"more")  # closed by the same call
        got = transfer(acc.ep, acc.c, b"", len(b"response"))
        assert got == b"response"
        wait_event(acc.ep, acc.c, m.EPOLLIN)
        assert acc.c.recv(100) == b""  # the FIN
        acc.c.close()
        with pytest.raises(ValueError, match="close"):
            n.server.send_many([(acc.s, b"x")], close=[True, False])
    finally:
        close_net(n)
    frames = tcp_frames(Path(str(pcap).replace("%u", "0")))
    data = [f for f in frames if f[0] == 80 and f[1] == port and f[3] > 0]
    assert len(data) == 1 and data[0][2] & FIN, data
    assert not any(f[2] & FIN for f in frames if f[0] == 80 and f[1] == port and f[3] == 0)


def test_send_many_with_close_leaves_a_socket_with_unread_data_open(net: Net) -> None:
    """Closing with unread data is an abort (RFC 2525 2.17): its RST would leave before the
    bytes just written. send_many's close then leaves the socket open for the caller."""
    acc = accept_one(net)
    acc.ep_s.register(acc.s, m.EPOLLIN)
    acc.c.send(b"unread request body")
    wait_event(acc.ep_s, acc.s, m.EPOLLIN)
    assert net.server.send_many([(acc.s, b"413 response")], close=[True]) == [12]
    assert not acc.s.closed
    assert transfer(acc.ep, acc.c, b"", 12) == b"413 response"
    acc.s.close()
    assert acc.s.closed
