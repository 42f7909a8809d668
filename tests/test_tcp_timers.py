"""Socket buffer options between two stacks over the ``pair`` link: SO_RCVBUF / SO_SNDBUF
set before connect() or listen() take effect.

The timers (delayed ACKs, Nagle and TCP_NODELAY, keepalive, the idle timeout, the
retransmission backoff and the abort after the last retry) run as segment scripts on a
stepped clock in test_tcp_segments.py, each at its exact time and without sleeping.

The helpers (``make_net``, ``connect`` ...) are the fault tests' ones. The tests drive both
contexts from the test thread (each context still has one app thread).
"""

from __future__ import annotations

import errno
import time
from typing import Any

import pytest
from test_tcp_faults import (
    DEADLINE_S,
    SERVER,
    Net,
    accept,
    listen,
    make_net,
    wait_event,
)

import mtcp_core as m


def net_with(**kw: Any) -> Net:
    return make_net(seed=3, **kw)


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
