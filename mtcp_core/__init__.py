"""Python binding of the native mTCP core, shaped like ``socket`` and ``select.epoll``.

    stack = mtcp_core.Stack("afpacket", "198.18.0.2/24", iface="eth0",
                            options=mtcp_core.StackOptions(delayed_ack=False))
    ctx = stack.context(0)                    # starts core 0's mTCP thread
    lsock = ctx.socket(); lsock.bind(("0.0.0.0", 80)); lsock.listen(4096)
    ep = ctx.epoll(); ep.register(lsock, mtcp_core.EPOLLIN)
    for sock, events in ep.poll(timeout=1.0): ...

Every call into C is this design's system call: the batch calls (``Epoll.poll``,
``Socket.accept_many``, ``Context.recv_many``/``send_many``/``close_many``) carry many
sockets per crossing. Calls that can block release the GIL (cffi does so for every call).
Errors come back as ``OSError`` (its errno subclasses: ``BlockingIOError``,
``ConnectionResetError`` ...), like the socket module's.

A context has one app thread: call a context's methods from one Python thread only.

The modules, one concern each (their public names are all re-exported here):
``constants`` (socket/epoll/option numbers), ``options`` (``StackOptions``), ``stack``
(``Stack``, ``Context``, ``SteppedContext``), ``sockets`` (``Socket``, ``Epoll``),
``stats`` (counter names, ``TCP_STATES``, stats files), ``pair`` (``PairLink``, ``Faults``),
``loadgen`` (``LoadGenerator``), ``responder`` (its parser and log record), ``congestion``
(``simulate_congestion``, ``flow_core``), ``netem`` (the link emulator); ``testing`` holds
the support that tests and benchmarks share.
"""

from __future__ import annotations

from mtcp_core._native import ffi, lib
from mtcp_core.congestion import CongestionRound, flow_core, simulate_congestion
from mtcp_core.constants import (
    CONGESTION_ALGORITHMS,
    EPOLLERR,
    EPOLLET,
    EPOLLHUP,
    EPOLLIN,
    EPOLLOUT,
    EPOLLRDHUP,
    IPPROTO_TCP,
    SHUT_RD,
    SHUT_RDWR,
    SHUT_WR,
    SO_ERROR,
    SO_EVICTABLE,
    SO_KEEPALIVE,
    SO_LINGER,
    SO_RCVBUF,
    SO_REUSEADDR,
    SO_SNDBUF,
    SOL_SOCKET,
    TCP_CONGESTION,
    TCP_KEEPCNT,
    TCP_KEEPIDLE,
    TCP_KEEPINTVL,
    TCP_MAXSEG,
    TCP_NODELAY,
    TCP_USER_TIMEOUT,
)
from mtcp_core.loadgen import LatencySummary, LoadGenerator, LoadResult
from mtcp_core.netem import LinkEmulator, LinkShape
from mtcp_core.options import StackOptions
from mtcp_core.pair import FaultRates, Faults, PairLink
from mtcp_core.responder import ResponderLogRecord, rsp_parse
from mtcp_core.sockets import Epoll, Socket
from mtcp_core.stack import Context, Stack, SteppedContext
from mtcp_core.stats import TCP_STATES, read_stats_file, stat_is_gauge, stat_names

__all__ = [
    "CONGESTION_ALGORITHMS",
    "EPOLLERR",
    "EPOLLET",
    "EPOLLHUP",
    "EPOLLIN",
    "EPOLLOUT",
    "EPOLLRDHUP",
    "IPPROTO_TCP",
    "SHUT_RD",
    "SHUT_RDWR",
    "SHUT_WR",
    "SOL_SOCKET",
    "SO_ERROR",
    "SO_EVICTABLE",
    "SO_KEEPALIVE",
    "SO_LINGER",
    "SO_RCVBUF",
    "SO_REUSEADDR",
    "SO_SNDBUF",
    "TCP_CONGESTION",
    "TCP_KEEPCNT",
    "TCP_KEEPIDLE",
    "TCP_KEEPINTVL",
    "TCP_MAXSEG",
    "TCP_NODELAY",
    "TCP_STATES",
    "TCP_USER_TIMEOUT",
    "CongestionRound",
    "Context",
    "Epoll",
    "FaultRates",
    "Faults",
    "LatencySummary",
    "LinkEmulator",
    "LinkShape",
    "LoadGenerator",
    "LoadResult",
    "PairLink",
    "ResponderLogRecord",
    "Socket",
    "Stack",
    "StackOptions",
    "SteppedContext",
    "ffi",
    "flow_core",
    "lib",
    "read_stats_file",
    "rsp_parse",
    "simulate_congestion",
    "stat_is_gauge",
    "stat_names",
]
