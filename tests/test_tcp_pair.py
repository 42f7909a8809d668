"""TCP lifecycle between two stacks joined by the in-memory ``pair`` link. No privileges.

Most tests run both stacks on one stepped clock (``mtcp_core.testing.Duo``, the apps in
``mtcp_core.testing.duoapp``): no threads, no sleeps, every wait a number of stack
milliseconds, the same run every time. The last section keeps real threads for what is
about the threads themselves: the app thread and the mTCP thread working the rings at once
(1 MiB each way), and the batched calls (send_many/recv_many/close_many) that carry many
sockets in one crossing of the job queue, read by the mTCP thread in one round. There the
test thread drives the client context and a ``Peer`` thread the server context.
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
from mtcp_core.testing import FIN, App, Duo, pools_back
from mtcp_core.testing.duoapp import (
    Stream,
    dial,
    open_conn,
    pools_back_on_both,
    run_streams,
    until_event,
)
from mtcp_core.testing.pairnet import (
    DEADLINE_S,
    SERVER,
    Net,
    Peer,
    close_net,
    connect,
    make_net,
    transfer,
    wait_event,
    wait_for,
)
from mtcp_core.testing.pcapfile import tcp_frames

CLIENT_IP = "198.18.0.1"
SERVER_IP = "198.18.0.2"


@pytest.fixture
def duo() -> Iterator[Duo]:
    with Duo(time_wait_ms=100) as d:
        yield d


def echo_server(duo: Duo, port: int = 80) -> App:
    """An echo responder on the server stack (``App``: it closes when the peer has)."""
    app = App(duo.server)
    app.serve(port, "echo", backlog=1024)
    return app


def read_to_eof(duo: Duo, sock: m.Socket) -> bytes:
    """What ``sock`` receives up to the peer's FIN, in stack time."""
    r = Stream(sock)
    run_streams(duo, r, done=lambda: r.eof)
    assert not r.reset, "reset before the FIN"
    return bytes(r.got)


def echoed(duo: Duo, app: App, c: m.Socket, payload: bytes) -> bytes:
    """Sends ``payload`` on ``c`` while reading as many bytes back from the echo server."""
    st = Stream(c, payload)
    run_streams(duo, st, extra=app.run, done=lambda: len(st.got) >= len(payload))
    return bytes(st.got)


# ---------------------------------------------------------------- stepped


def test_handshake_negotiates_options(duo: Duo) -> None:
    ls = duo.server.socket()  # a listener that never accepts
    ls.bind(("0.0.0.0", 80))
    ls.listen(16)
    c, _ep = dial(duo)
    info = c.tcp_info()
    assert info["state"] == "ESTABLISHED"
    assert info["mss"] == 1460
    assert info["snd_wscale"] >= 1 and info["rcv_wscale"] >= 1  # 64 KiB rings need scaling
    assert c.getpeername() == (SERVER_IP, 80)
    assert c.getsockname()[0] == CLIENT_IP
    duo.settle()
    cs, ss = duo.client.stats(), duo.server.stats()
    assert ss["conn_passive_opens"] == 1  # in the accept queue
    assert cs["conn_active_opens"] == 1
    assert cs["tx_control_pkts"] >= 1 and ss["tx_control_pkts"] >= 1  # SYN / SYN-ACK
    c.close()


def test_one_mebibyte_each_way_byte_exact_on_one_clock(duo: Duo) -> None:
    app = echo_server(duo)
    c, _ep = dial(duo, on_round=app.run)
    payload = os.urandom(1 << 20)
    assert echoed(duo, app, c, payload) == payload
    assert bytes(next(iter(app.received.values()))) == payload
    c.close()


def test_sequence_numbers_wrap_around() -> None:
    # both ISNs 3000 bytes below 2^32: 1 MiB crosses the wrap in both directions
    with Duo(time_wait_ms=50, fixed_isn=(1 << 32) - 3000) as duo:
        app = echo_server(duo)
        c, _ep = dial(duo, on_round=app.run)
        payload = os.urandom(1 << 20)
        assert echoed(duo, app, c, payload) == payload
        assert c.tcp_info()["snd_una"] < 1 << 20  # it did wrap
        c.close()


def test_close_from_client_side(duo: Duo) -> None:
    app = echo_server(duo)
    c, _ep = dial(duo, on_round=app.run)
    assert echoed(duo, app, c, b"ping") == b"ping"
    c.close()
    # the client did the active close: it holds TIME_WAIT, the server went LAST_ACK -> CLOSED
    duo.run_until(lambda: duo.client.stats()["state_time_wait"] == 1, limit_ms=1000,
                  on_round=app.run)  # fmt: skip
    closed_at = duo.now_ms
    duo.run_until(lambda: app.accepted[0].closed, limit_ms=1000, on_round=app.run)  # EOF
    duo.run_until(lambda: pools_back(duo.server.stats()), limit_ms=1000, on_round=app.run)
    assert duo.server.stats()["state_time_wait"] == 0
    # TIME_WAIT ends by itself, after time_wait_ms
    duo.run_until(lambda: duo.client.stats()["state_time_wait"] == 0, limit_ms=1000)
    assert duo.now_ms - closed_at >= 100
    cs, ss = duo.client.stats(), duo.server.stats()
    assert cs["pool_tcb_free"] == cs["pool_tcb_total"]
    assert cs["rst_tx"] == cs["rst_rx"] == ss["rst_tx"] == ss["rst_rx"] == 0


def test_close_from_server_side(duo: Duo) -> None:
    a = open_conn(duo)
    c, ep, s = a.c, a.ep, a.s
    assert a.addr == c.getsockname()
    assert s.send(b"bye") == 3
    s.close()  # server closes first
    assert read_to_eof(duo, c) == b"bye"
    ep.modify(c, m.EPOLLIN | m.EPOLLRDHUP)  # RDHUP is reported only when asked for, as in Linux
    ev = until_event(duo, ep, c, m.EPOLLRDHUP)
    assert ev & m.EPOLLRDHUP
    assert c.tcp_info()["state"] == "CLOSE_WAIT"
    c.close()
    duo.run_until(lambda: duo.server.stats()["state_time_wait"] == 1, limit_ms=1000)
    # the client is freed after LAST_ACK
    duo.run_until(lambda: pools_back(duo.client.stats()), limit_ms=1000)
    assert duo.client.stats()["rst_tx"] == 0


def test_simultaneous_close_both_sides_end_in_time_wait() -> None:
    with Duo(time_wait_ms=200) as duo:
        a = open_conn(duo)
        # 20 ms one-way delay: both FINs are in flight at once
        duo.link.set_faults(seed=1, delay_us=20000)
        a.c.close()
        a.s.close()
        a.ls.close()
        duo.advance(20)  # the FINs cross on the link
        duo.run_until(lambda: duo.client.stats()["state_time_wait"] == 1
                      and duo.server.stats()["state_time_wait"] == 1,
                      limit_ms=1000)  # fmt: skip
        cs, ss = duo.client.stats(), duo.server.stats()
        assert cs["rst_tx"] == ss["rst_tx"] == 0
        pools_back_on_both(duo, limit_ms=1000)


def test_rst_for_closed_port(duo: Duo) -> None:
    ep = duo.client.epoll()
    c = duo.client.socket()
    with pytest.raises(BlockingIOError):
        c.connect((SERVER_IP, 81))
    ep.register(c, m.EPOLLOUT | m.EPOLLIN)
    ev = until_event(duo, ep, c, m.EPOLLERR, limit_ms=100)
    assert ev & m.EPOLLHUP
    assert c.getsockopt(m.SOL_SOCKET, m.SO_ERROR) == errno.ECONNREFUSED
    with pytest.raises(ConnectionRefusedError):
        c.recv(10)
    cs, ss = duo.client.stats(), duo.server.stats()
    assert ss["rst_tx"] == 1
    assert ss["drop_tcp_no_socket"] == 1
    assert cs["rst_rx"] == 1
    c.close()
    duo.run_until(lambda: pools_back(duo.client.stats()), limit_ms=100)


def test_abort_sends_rst_and_peer_sees_reset(duo: Duo) -> None:
    a = open_conn(duo)
    c, s, ep_s = a.c, a.s, a.ep_s
    ep_s.register(s, m.EPOLLIN)
    c.setsockopt(m.SOL_SOCKET, m.SO_LINGER, (1, 0))
    c.close()  # SO_LINGER 0: RST, no TIME_WAIT
    ev = until_event(duo, ep_s, s, m.EPOLLERR, limit_ms=100)
    assert ev & m.EPOLLHUP
    with pytest.raises(ConnectionResetError):
        s.recv(10)
    with pytest.raises(ConnectionResetError):
        s.send(b"x")
    cs, ss = duo.client.stats(), duo.server.stats()
    assert cs["rst_tx"] == 1
    assert ss["rst_rx"] == 1
    assert cs["state_time_wait"] == 0
    s.close()


def test_half_close_keeps_the_other_direction(duo: Duo) -> None:
    a = open_conn(duo)
    c, s = a.c, a.s
    c.send(b"request")
    c.shutdown(m.SHUT_WR)
    with pytest.raises(BrokenPipeError):
        c.send(b"more")
    assert read_to_eof(duo, s) == b"request"
    assert s.tcp_info()["state"] == "CLOSE_WAIT"
    s.send(b"response after your FIN")
    s.close()
    assert read_to_eof(duo, c) == b"response after your FIN"
    c.close()


def test_many_connections_in_sequence_return_pools(duo: Duo) -> None:
    app = echo_server(duo)
    ep = duo.client.epoll()
    initial = duo.client.stats()["pool_tcb_total"]
    for i in range(300):
        c, _ = dial(duo, ep=ep, on_round=app.run)
        msg = f"request {i}".encode()
        assert echoed(duo, app, c, msg) == msg
        ep.unregister(c)
        c.close()
    cs, ss = pools_back_on_both(duo, on_round=app.run)
    assert cs["pool_tcb_free"] == ss["pool_tcb_free"] == initial
    assert cs["pool_sndbuf_free"] == cs["pool_sndbuf_total"]
    assert cs["pool_rcvbuf_free"] == cs["pool_rcvbuf_total"]
    assert ss["pool_rcvbuf_free"] == ss["pool_rcvbuf_total"]
    assert ss["conn_passive_opens"] == 300 and cs["conn_active_opens"] == 300
    assert cs["rst_tx"] == ss["rst_tx"] == 0


def test_socket_ids_come_from_a_free_list(duo: Duo) -> None:
    a = duo.client.socket()
    b = duo.client.socket()
    a.close()
    c = duo.client.socket()
    assert c.fd == a.fd  # the id just freed is reused first (LIFO free list)
    assert b.fd != c.fd


def test_api_errors_carry_errno(duo: Duo) -> None:
    ls = duo.server.socket()
    ls.bind(("0.0.0.0", 80))
    other = duo.server.socket()
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
        m.Socket(duo.server, 4000).recv(1)
    assert e.value.errno == errno.EBADF
    with pytest.raises(OSError) as e:
        m.Stack("pair", "198.18.0.9/24", pair=duo.link, rcvbuf=100)
    assert "rcvbuf" in str(e.value)
    with pytest.raises(OSError) as e:
        m.Stack("nosuch", "198.18.0.9/24")
    assert e.value.errno == errno.EINVAL


def test_level_and_edge_triggered_epoll(duo: Duo) -> None:
    a = open_conn(duo)
    c, s = a.c, a.s
    lt = duo.server.epoll()
    lt.register(s, m.EPOLLIN)
    c.send(b"abc")
    until_event(duo, lt, s, m.EPOLLIN, limit_ms=100)
    # level-triggered: still reported while unread, however long it stays so
    duo.advance(100)
    assert [ev for x, ev in lt.poll(0) if x is s]
    assert [ev for x, ev in lt.poll(0) if x is s]
    assert s.recv(1) == b"a"
    assert [ev for x, ev in lt.poll(0) if x is s]  # 2 bytes left
    assert s.recv(10) == b"bc"
    assert not [ev for x, ev in lt.poll(0) if x is s]
    lt.unregister(s)
    et = duo.server.epoll()
    et.register(s, m.EPOLLIN | m.EPOLLET)
    c.send(b"xyz")
    until_event(duo, et, s, m.EPOLLIN, limit_ms=100)
    # edge-triggered: reported once for the arrival, even though data stays unread
    duo.advance(200)
    assert not [ev for x, ev in et.poll(0) if x is s]
    c.send(b"more")
    until_event(duo, et, s, m.EPOLLIN, limit_ms=100)  # a new arrival is a new edge
    assert s.recv(100) == b"xyzmore"
    c.close()
    s.close()


def test_priority_lists_are_observable_and_switchable() -> None:
    for priority in (True, False):
        with Duo(time_wait_ms=50, tx_priority=priority) as duo:
            app = echo_server(duo)
            c, _ep = dial(duo, on_round=app.run)
            assert echoed(duo, app, c, b"x" * 100000) == b"x" * 100000
            c.close()
            cs, _ss = pools_back_on_both(duo, on_round=app.run)
            # SYN and FIN went on the control list, the data on the data list
            assert cs["tx_data_pkts"] >= 60 and cs["tx_control_pkts"] >= 2
            for k in ("txq_control", "txq_ack", "txq_data"):
                assert k in cs


def test_send_many_with_close_leaves_a_socket_with_unread_data_open(duo: Duo) -> None:
    """Closing with unread data is an abort (RFC 2525 2.17): its RST would leave before the
    bytes just written. send_many's close then leaves the socket open for the caller."""
    acc = open_conn(duo)
    acc.ep_s.register(acc.s, m.EPOLLIN)
    acc.c.send(b"unread request body")
    until_event(duo, acc.ep_s, acc.s, m.EPOLLIN, limit_ms=100)
    assert duo.server.send_many([(acc.s, b"413 response")], close=[True]) == [12]
    assert not acc.s.closed
    r = Stream(acc.c)
    run_streams(duo, r, done=lambda: len(r.got) >= 12, limit_ms=100)
    assert bytes(r.got) == b"413 response"
    acc.s.close()
    assert acc.s.closed


# ---------------------------------------------------------------- threads
# What these test is the crossing between the app thread and a running mTCP thread, which
# a stepped context (one thread, the job queue read at the next step) cannot show.


@pytest.fixture
def net() -> Iterator[Net]:
    n = make_net(time_wait_ms=100)
    yield n
    close_net(n)


def test_one_mebibyte_each_way_byte_exact(net: Net) -> None:
    """The app thread writes and reads the rings while the mTCP thread drains and fills
    them: 1 MiB each way byte-exact through the concurrent SPSC crossings."""
    peer = Peer(net.server, mode="echo").start()
    ep = net.client.epoll()
    c = connect(net.client, ep)
    payload = os.urandom(1 << 20)
    echoed = transfer(ep, c, payload, len(payload))
    assert echoed == payload
    assert bytes(next(iter(peer.received.values()))) == payload
    c.close()
    peer.join()


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


def test_batched_calls_carry_many_sockets(net: Net) -> None:
    """20 sockets written, read and closed with one crossing each (send_many, recv_many,
    close_many), the app thread blocking in epoll while the mTCP thread answers."""
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


# ---------------------------------------------------------------- options (no stack runs)


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
