"""The apps of a ``Duo``: what the threaded pair tests ran in a ``Peer`` thread and in the
test thread, as turns that run after every instant of the shared stepped clock.

A ``Stream`` is one socket's app: it writes its ``out`` bytes (then shuts its write side
when told), and reads what arrives until the peer's FIN, one non-blocking turn at a time.
``turns`` bundles apps (``Stream``s, ``App.run`` of an echo/sink server) into the
``on_round`` of ``Duo.run_until``; ``open_conn`` makes one connection from the client to a
listener on the server; ``until_event`` waits, in stack time, for an epoll event. No
threads, no sleeps: a test that used to poll the wall clock now says exactly when.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from dataclasses import dataclass, field

import mtcp_core as m
from mtcp_core.testing import Duo, pools_back
from mtcp_core.testing.pairnet import recv_ready

__all__ = [
    "Opened", "Stream", "dial", "open_conn", "pools_back_on_both", "run_streams", "turns",
    "until_event",
]  # fmt: skip

LIMIT_MS = 60_000.0  # stack time a step of a script may take before it is a failure


@dataclass
class Stream:
    """One socket's app: writes ``out`` (``shut``: then SHUT_WR), reads into ``got`` until
    the peer's FIN (``eof``) or a reset (``reset``)."""

    sock: m.Socket
    out: bytes = b""
    shut: bool = False
    chunk: int = 256 * 1024
    sent: int = 0
    got: bytearray = field(default_factory=bytearray)
    eof: bool = False
    reset: bool = False
    shut_done: bool = False

    def turn(self) -> None:
        view = memoryview(self.out)
        while self.sent < len(self.out):
            try:
                n = self.sock.send(view[self.sent : self.sent + self.chunk])
            except BlockingIOError:
                break
            if n <= 0:
                break
            self.sent += n
        if self.shut and not self.shut_done and self.sent == len(self.out):
            self.sock.shutdown(m.SHUT_WR)
            self.shut_done = True
        if not self.eof:
            try:
                self.eof = recv_ready(self.sock, self.got)
            except ConnectionResetError:
                self.reset = self.eof = True

    @property
    def written(self) -> bool:
        return self.sent == len(self.out) and (self.shut_done or not self.shut)

    @property
    def done(self) -> bool:
        """All written (and shut) and the peer's FIN read."""
        return self.written and self.eof


def turns(*apps: Stream | Callable[[], object]) -> Callable[[], None]:
    """One ``on_round`` that gives every app its turn, in order."""

    def run() -> None:
        for a in apps:
            if isinstance(a, Stream):
                a.turn()
            else:
                a()

    return run


def run_streams(duo: Duo, *streams: Stream, extra: Callable[[], object] | None = None,
                done: Callable[[], bool] | None = None,
                limit_ms: float = LIMIT_MS) -> None:  # fmt: skip
    """Runs both stacks until every stream is ``done`` (or ``done()`` holds)."""
    apps: list[Stream | Callable[[], object]] = list(streams)
    if extra is not None:
        apps.append(extra)
    finished = done or (lambda: all(s.done for s in streams))
    duo.run_until(finished, limit_ms=limit_ms, on_round=turns(*apps))


@dataclass
class Opened:
    """A connection opened by the client and accepted by the test on the server."""

    c: m.Socket  # client side
    ep: m.Epoll  # the client's epoll, c registered for IN and OUT
    s: m.Socket  # server side, accepted
    ep_s: m.Epoll  # the server's epoll, the listener registered for IN
    ls: m.Socket  # the listener
    addr: tuple[str, int]  # accept()'s peer address


def until_event(duo: Duo, ep: m.Epoll, sock: m.Socket, mask: int,
                limit_ms: float = LIMIT_MS,
                on_round: Callable[[], object] | None = None) -> int:  # fmt: skip
    """Runs both stacks until ``ep`` reports one of ``mask`` for ``sock``; the events."""
    seen = [0]

    def ready() -> bool:
        seen[0] = next((ev for x, ev in ep.poll(0) if x is sock and ev & mask), 0)
        return bool(seen[0])

    duo.run_until(ready, limit_ms=limit_ms, on_round=on_round)
    return seen[0]


def dial(duo: Duo, port: int = 80, *, ep: m.Epoll | None = None,
         on_round: Callable[[], object] | None = None,
         limit_ms: float = LIMIT_MS) -> tuple[m.Socket, m.Epoll]:  # fmt: skip
    """A client socket connected to the server's ``port`` (registered in ``ep``, a new
    epoll unless given, for IN and OUT); ``on_round``: the server's app meanwhile."""
    ep = ep or duo.client.epoll()
    c = duo.client.socket()
    assert c.connect_ex((duo.server_ip, port)) == errno.EINPROGRESS
    ep.register(c, m.EPOLLIN | m.EPOLLOUT)
    ev = until_event(duo, ep, c, m.EPOLLOUT | m.EPOLLERR, limit_ms, on_round)
    assert not ev & m.EPOLLERR, errno.errorcode.get(c.getsockopt(m.SOL_SOCKET, m.SO_ERROR))
    return c, ep


def open_conn(duo: Duo, port: int = 80, *, ls: m.Socket | None = None,
              ep_s: m.Epoll | None = None, limit_ms: float = LIMIT_MS) -> Opened:  # fmt: skip
    """The client connects to ``port`` on the server (a listener made here unless given),
    the test accepts it; returns when the client is connected and the server accepted."""
    if ls is None:
        ls = duo.server.socket()
        ls.bind(("0.0.0.0", port))
        ls.listen(128)
    if ep_s is None:
        ep_s = duo.server.epoll()
        ep_s.register(ls, m.EPOLLIN)
    c, ep = dial(duo, port, limit_ms=limit_ms)
    until_event(duo, ep_s, ls, m.EPOLLIN, limit_ms)
    s, addr = ls.accept()
    return Opened(c, ep, s, ep_s, ls, addr)


def pools_back_on_both(duo: Duo, limit_ms: float = LIMIT_MS,
                       on_round: Callable[[], object] | None = None,
                       ) -> tuple[dict[str, int], dict[str, int]]:  # fmt: skip
    """Runs both stacks until each gave every TCB and buffer back (TIME-WAIT over
    included); the client's and the server's counters then."""
    box: list[dict[str, int]] = []

    def back() -> bool:
        box[:] = [duo.client.stats(), duo.server.stats()]
        return pools_back(box[0]) and pools_back(box[1])

    duo.run_until(back, limit_ms=limit_ms, on_round=on_round)
    return box[0], box[1]
