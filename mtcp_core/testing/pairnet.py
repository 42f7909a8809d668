"""Two threaded stacks joined by the in-memory ``pair`` link, for the pair, fault, exhaustion
and shaping tests (support, like ``netns`` and ``echo_app``: no tests here).

No privileges needed. Each context is driven by exactly one Python thread: the test thread
drives the client stack, a ``Peer`` thread drives the server stack. The waits poll the
published counters or epoll with a deadline; tests that need exact times use segment
scripts on a stepped context instead (mtcp_core.testing, test_tcp_segments.py).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

import mtcp_core as m
from mtcp_core.testing import pools_back

SERVER = "198.18.0.2"
CLIENT = "198.18.0.1"
DEADLINE_S = 30.0


@dataclass
class Net:
    link: m.PairLink
    client_stack: m.Stack
    server_stack: m.Stack
    client: m.Context
    server: m.Context

    def stats(self) -> tuple[dict[str, int], dict[str, int]]:
        return self.client.stats(), self.server.stats()

    def close(self) -> None:
        self.client_stack.close()
        self.server_stack.close()
        self.link.close()

    def __enter__(self) -> Net:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def make_net(**stack_kw: object) -> Net:
    link = m.PairLink(seed=1)
    a = m.Stack("pair", f"{CLIENT}/24", pair=link, pair_side=0, **stack_kw)  # type: ignore[arg-type]
    b = m.Stack("pair", f"{SERVER}/24", pair=link, pair_side=1, **stack_kw)  # type: ignore[arg-type]
    return Net(link, a, b, a.context(0), b.context(0))


def close_net(n: Net) -> None:
    n.close()


def settled(
    ctx: m.Context, cond: Callable[[dict[str, int]], bool], what: str, timeout: float = DEADLINE_S
) -> dict[str, int]:
    """Counters are published once per round of the mTCP thread: wait until they show it."""
    box: list[dict[str, int]] = []

    def check() -> bool:
        box[:] = [ctx.stats()]
        return cond(box[0])

    wait_for(check, what, timeout)
    return box[0]


def wait_for(cond: Callable[[], bool], what: str, timeout: float = DEADLINE_S) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def wait_event(ep: m.Epoll, sock: m.Socket, mask: int, timeout: float = DEADLINE_S) -> int:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for s, ev in ep.poll(0.1):
            if s is sock and ev & mask:
                return ev
    raise AssertionError(f"no event {mask:#x} on {sock}")


@dataclass
class Peer:
    """The server side, run in its own thread on the server context."""

    ctx: m.Context
    port: int = 80
    mode: str = "echo"  # echo | sink | none
    received: dict[int, bytearray] = field(default_factory=dict)
    eof: set[int] = field(default_factory=set)
    accepted: list[m.Socket] = field(default_factory=list)
    close_on_eof: bool = True
    error: BaseException | None = None

    def __post_init__(self) -> None:
        self.stop = threading.Event()
        self.ready = threading.Event()
        self.lsock: m.Socket | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Peer:
        self.thread.start()
        assert self.ready.wait(10)
        return self

    def join(self) -> None:
        self.stop.set()
        self.thread.join(10)
        assert not self.thread.is_alive()
        if self.error:
            raise self.error

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as e:  # surfaced by join()
            self.error = e

    def _loop(self) -> None:
        ls = self.ctx.socket()
        ls.bind(("0.0.0.0", self.port))
        ls.listen(1024)
        self.lsock = ls
        ep = self.ctx.epoll()
        ep.register(ls, m.EPOLLIN)
        self.ready.set()
        if self.mode == "none":
            self.stop.wait()
            return
        pending: dict[int, bytes] = {}
        while not self.stop.is_set():
            for s, ev in ep.poll(0.05):
                if s is ls:
                    for c in ls.accept_many():
                        # socket ids are reused: forget what the id's last holder left
                        self.eof.discard(c.fd)
                        pending.pop(c.fd, None)
                        self.accepted.append(c)
                        self.received[c.fd] = bytearray()
                        ep.register(c, m.EPOLLIN | m.EPOLLOUT | m.EPOLLET)
                    continue
                self._service(ep, s, ev, pending)

    def _service(self, ep: m.Epoll, s: m.Socket, ev: int, pending: dict[int, bytes]) -> None:
        if ev & m.EPOLLIN:
            received = self.received[s.fd]
            start = len(received)
            try:
                ended = recv_ready(s, received)
            except ConnectionResetError:
                self.eof.add(s.fd)
                ep.unregister(s)
                s.close()
                return
            if ended:
                self.eof.add(s.fd)
            if self.mode == "echo" and len(received) > start:
                pending[s.fd] = pending.get(s.fd, b"") + received[start:]
        out = pending.get(s.fd)
        while out:
            try:
                n = s.send(out)
            except BlockingIOError:
                break
            out = out[n:]
        if out:
            pending[s.fd] = out
        else:
            pending.pop(s.fd, None)
            if s.fd in self.eof and self.close_on_eof:
                ep.unregister(s)
                s.close()


def connect(
    ctx: m.Context, ep: m.Epoll, port: int = 80, timeout: float = DEADLINE_S
) -> m.Socket:
    """A client socket connected to the server's ``port``, registered for IN and OUT."""
    c = ctx.socket()
    with pytest.raises(BlockingIOError):
        c.connect((SERVER, port))
    ep.register(c, m.EPOLLOUT | m.EPOLLIN)
    ev = wait_event(ep, c, m.EPOLLOUT | m.EPOLLERR, timeout)
    assert not ev & m.EPOLLERR, os.strerror(c.getsockopt(m.SOL_SOCKET, m.SO_ERROR))
    return c


def recv_ready(sock: m.Socket, into: bytearray) -> bool:
    """Appends all that non-blocking ``sock`` has to read now to ``into``; True once the
    stream has ended (the peer's FIN). A reset raises ConnectionResetError, with the bytes
    that came before it already in ``into``."""
    while True:
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return False
        if not data:
            return True
        into += data


def read_to_eof(ep: m.Epoll, sock: m.Socket, timeout: float = DEADLINE_S) -> bytes:
    """What ``sock`` (registered in ``ep`` for IN) receives up to the peer's FIN."""
    end = time.monotonic() + timeout
    data = b""
    while True:
        wait_event(ep, sock, m.EPOLLIN, end - time.monotonic())
        d = sock.recv(65536)
        if not d:
            return data
        data += d


def listen(ctx: m.Context, port: int = 80) -> tuple[m.Socket, m.Epoll]:
    """A listener on ``port`` and an epoll with it registered for IN."""
    ls = ctx.socket()
    ls.bind(("0.0.0.0", port))
    ls.listen(128)
    ep = ctx.epoll()
    ep.register(ls, m.EPOLLIN)
    return ls, ep


def accept(ls: m.Socket, ep: m.Epoll, timeout: float = DEADLINE_S) -> m.Socket:
    wait_event(ep, ls, m.EPOLLIN, timeout)
    s, _ = ls.accept()
    return s


def wait_pools_back(ctx: m.Context, what: str, timeout: float = DEADLINE_S) -> dict[str, int]:
    """Every TCB and buffer of the context is free again (TIME_WAIT over included)."""
    return settled(ctx, pools_back, f"{what}: pools back to their initial level", timeout)


def transfer(ep: m.Epoll, c: m.Socket, payload: bytes, expect: int) -> bytes:
    """Sends payload while receiving ``expect`` bytes back."""
    got = bytearray()
    sent = 0
    end = time.monotonic() + DEADLINE_S
    while len(got) < expect or sent < len(payload):
        assert time.monotonic() < end, f"stalled: sent {sent}, got {len(got)}"
        if sent < len(payload):
            try:
                sent += c.send(memoryview(payload)[sent : sent + 262144])
            except BlockingIOError:
                pass
        for _s, ev in ep.poll(0.05):
            if ev & m.EPOLLIN:
                recv_ready(c, got)
    return bytes(got)
