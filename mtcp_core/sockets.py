"""Sockets and epoll of one context, shaped like ``socket`` and ``select.epoll``."""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from mtcp_core._native import ffi, lib
from mtcp_core._util import _int_to_ip, _ip_to_int, _raise
from mtcp_core.constants import EPOLLIN, EPOLLOUT
from mtcp_core.stats import TCP_STATES

if TYPE_CHECKING:
    from mtcp_core.stack import Context

_AF_INET = 2
_SOCK_STREAM = 1
_RECV_SCRATCH = 256 * 1024

class Socket:
    """A TCP socket of one context. Non-blocking: operations that would wait raise
    ``BlockingIOError``; use ``Epoll`` to wait."""

    def __init__(self, ctx: Context, fd: int) -> None:
        self.ctx = ctx
        self.fd = fd
        self._open = True

    @property
    def closed(self) -> bool:
        """True once closed (``close``, ``Context.close_many`` or ``send_many``'s close)."""
        return not self._open

    def fileno(self) -> int:
        return self.fd

    def __repr__(self) -> str:
        return f"<mtcp_core.Socket core={self.ctx.core} fd={self.fd}>"

    def bind(self, address: tuple[str, int]) -> None:
        if lib.mtcp_bind(self.ctx._check(), self.fd, _ip_to_int(address[0]), address[1]) < 0:
            _raise("bind")

    def listen(self, backlog: int = 128) -> None:
        if lib.mtcp_listen(self.ctx._check(), self.fd, backlog) < 0:
            _raise("listen")

    def accept(self) -> tuple[Socket, tuple[str, int]]:
        addr = ffi.new("uint32_t *")
        port = ffi.new("uint16_t *")
        sid = lib.mtcp_accept(self.ctx._check(), self.fd, addr, port)
        if sid < 0:
            _raise("accept")
        return self.ctx._wrap(sid), (_int_to_ip(addr[0]), int(port[0]))

    def accept_many(self, max_sockets: int = 256) -> list[Socket]:
        """Every pending connection, up to ``max_sockets``, in one crossing ([] if none)."""
        out = ffi.new("int[]", max_sockets)
        n = lib.mtcp_accept_batch(self.ctx._check(), self.fd, out, max_sockets)
        if n < 0:
            if ffi.errno == errno.EAGAIN:
                return []
            _raise("accept")
        return [self.ctx._wrap(out[i]) for i in range(n)]

    def accept_many_handed(self, max_sockets: int = 256) -> list[tuple[Socket, int, float]]:
        """``accept_many``, also giving per connection the responses the static responder
        already sent on it and when its current request started (``time.monotonic``)."""
        out = ffi.new("int[]", max_sockets)
        served = ffi.new("uint32_t[]", max_sockets)
        started = ffi.new("uint64_t[]", max_sockets)
        n = lib.mtcp_accept_batch_rsp(self.ctx._check(), self.fd, out, served, started,
                                      max_sockets)
        if n < 0:
            if ffi.errno == errno.EAGAIN:
                return []
            _raise("accept")
        return [
            (self.ctx._wrap(out[i]), int(served[i]), int(started[i]) / 1e9) for i in range(n)
        ]

    def connect_ex(self, address: tuple[str, int]) -> int:
        """Starts an active open; returns an errno (EINPROGRESS when under way)."""
        r = lib.mtcp_connect(self.ctx._check(), self.fd, _ip_to_int(address[0]), address[1])
        return 0 if r == 0 else ffi.errno

    def connect(self, address: tuple[str, int]) -> None:
        """Non-blocking connect: raises BlockingIOError(EINPROGRESS) like a non-blocking
        socket; EPOLLOUT (or EPOLLERR) tells the outcome."""
        err = self.connect_ex(address)
        if err:
            raise OSError(err, f"connect: {os.strerror(err)}")

    def recv(self, bufsize: int) -> bytes:
        n = min(bufsize, _RECV_SCRATCH)
        r = lib.mtcp_read(self.ctx._check(), self.fd, self.ctx._scratch, n)
        if r < 0:
            _raise("recv")
        return ffi.unpack(self.ctx._scratch, r)

    def send(self, data: bytes | bytearray | memoryview) -> int:
        buf = ffi.from_buffer(data)
        r = lib.mtcp_write(self.ctx._check(), self.fd, buf, len(buf))
        if r < 0:
            _raise("send")
        return int(r)

    def sendmsg(self, buffers: Sequence[bytes | bytearray | memoryview]) -> int:
        """writev: several buffers in one crossing."""
        keep = [ffi.from_buffer(b) for b in buffers]
        iov = ffi.new("struct mtcp_iovec[]", len(keep))
        for i, b in enumerate(keep):
            iov[i].base = b
            iov[i].len = len(b)
        r = lib.mtcp_writev(self.ctx._check(), self.fd, iov, len(keep))
        if r < 0:
            _raise("sendmsg")
        return int(r)

    def shutdown(self, how: int) -> None:
        if lib.mtcp_shutdown(self.ctx._check(), self.fd, how) < 0:
            _raise("shutdown")

    def close(self) -> None:
        self._end(lib.mtcp_close, "close")

    def abort(self) -> None:
        """Close with RST (SO_LINGER 0)."""
        self._end(lib.mtcp_abort, "abort")

    def _end(self, call: Callable[[Any, int], int], what: str) -> None:
        if self._open and self.ctx._ptr is not None:
            self._open = False
            self.ctx._socks.pop(self.fd, None)
            if call(self.ctx._ptr, self.fd) < 0:
                _raise(what)

    def getsockname(self) -> tuple[str, int]:
        return self._name(lib.mtcp_getsockname, "getsockname")

    def getpeername(self) -> tuple[str, int]:
        return self._name(lib.mtcp_getpeername, "getpeername")

    def _name(self, call: Callable[..., int], what: str) -> tuple[str, int]:
        addr = ffi.new("uint32_t *")
        port = ffi.new("uint16_t *")
        if call(self.ctx._check(), self.fd, addr, port) < 0:
            _raise(what)
        return _int_to_ip(addr[0]), int(port[0])

    def setsockopt(
        self, level: int, option: int, value: int | tuple[int, int] | str | bytes
    ) -> None:
        if isinstance(value, (str, bytes)):  # TCP_CONGESTION: a name
            raw = value.encode() if isinstance(value, str) else value
            v = ffi.new("char[]", raw)
            size = len(raw)
        elif isinstance(value, tuple):  # SO_LINGER (onoff, seconds)
            v = ffi.new("int[2]", list(value))
            size = ffi.sizeof("int[2]")
        else:
            v = ffi.new("int *", value)
            size = ffi.sizeof("int")
        if lib.mtcp_setsockopt(self.ctx._check(), self.fd, level, option, v, size) < 0:
            _raise("setsockopt")

    def getsockopt(self, level: int, option: int) -> int:
        v = ffi.new("int *")
        size = ffi.new("unsigned *", ffi.sizeof("int"))
        if lib.mtcp_getsockopt(self.ctx._check(), self.fd, level, option, v, size) < 0:
            _raise("getsockopt")
        return int(v[0])

    def tcp_info(self) -> dict[str, Any]:
        info = ffi.new("struct mtcp_tcp_info *")
        if lib.mtcp_get_tcp_info(self.ctx._check(), self.fd, info) < 0:
            _raise("tcp_info")
        fields = (
            "snd_una",
            "snd_nxt",
            "snd_wnd",
            "rcv_nxt",
            "rcv_wnd",
            "mss",
            "snd_wscale",
            "rcv_wscale",
            "cwnd",
            "ssthresh",
            "srtt_us",
            "rto_ms",
            "sndbuf_used",
            "rcvbuf_used",
            "retransmits",
            "sack_ok",
            "ts_ok",
            "in_recovery",
            "ooo_ranges",
            "dup_acks",
            "rto_backoff",
            "sndbuf_cap",
            "rcvbuf_cap",
            "rttvar_us",
            "min_rtt_us",
            "lost_segs",
            "reordering",
            "sacked_bytes",
            "lost_bytes",
            "pipe",
            "reo_wnd_mult",
        )
        out: dict[str, Any] = {f: int(getattr(info, f)) for f in fields}
        out["state"] = TCP_STATES[info.state]
        out["congestion"] = ffi.string(info.congestion).decode()
        return out

    def __enter__(self) -> Socket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Epoll:
    """Like ``select.epoll`` on one context; ``poll`` returns (Socket, events) pairs,
    the whole batch in one crossing."""

    def __init__(self, ctx: Context, epid: int) -> None:
        self.ctx = ctx
        self.epid = epid
        self._events = ffi.new("struct mtcp_epoll_event[]", 1024)

    def _ctl(self, op: int, sock: Socket, events: int) -> None:
        if lib.mtcp_epoll_ctl(self.ctx._check(), self.epid, op, sock.fd, events, sock.fd) < 0:
            _raise("epoll_ctl")

    def register(self, sock: Socket, events: int = EPOLLIN | EPOLLOUT) -> None:
        self._ctl(lib.MTCP_EPOLL_CTL_ADD, sock, events)

    def modify(self, sock: Socket, events: int) -> None:
        self._ctl(lib.MTCP_EPOLL_CTL_MOD, sock, events)

    def unregister(self, sock: Socket) -> None:
        self._ctl(lib.MTCP_EPOLL_CTL_DEL, sock, 0)

    def poll(self, timeout: float | None = -1.0, maxevents: int = -1) -> list[tuple[Socket, int]]:
        """Waits up to ``timeout`` seconds (None or negative: forever)."""
        forever = timeout is None or timeout < 0
        deadline = 0.0 if forever else time.monotonic() + float(timeout or 0.0)
        maxev = 1024 if maxevents <= 0 else min(maxevents, 1024)
        while True:
            ms = -1 if forever else max(0, int((deadline - time.monotonic()) * 1000))
            n = lib.mtcp_epoll_wait(self.ctx._check(), self.epid, self._events, maxev, ms)
            if n >= 0:
                break
            if ffi.errno != errno.EINTR:
                _raise("epoll_wait")
            # PEP 475: a signal interrupted the wait; its handler has run (it may raise),
            # now wait for the rest of the time
        socks = self.ctx._socks
        out: list[tuple[Socket, int]] = []
        for i in range(n):
            ev = self._events[i]
            s = socks.get(int(ev.data))
            if s is not None:
                out.append((s, int(ev.events)))
        return out

    def interrupt(self) -> None:
        """Wakes a poll() blocked in another thread."""
        if self.ctx._ptr is not None:
            lib.mtcp_epoll_interrupt(self.ctx._ptr)

    def close(self) -> None:
        if self.ctx._ptr is not None and self.epid >= 0:
            lib.mtcp_epoll_close(self.ctx._ptr, self.epid)
            self.epid = -1
