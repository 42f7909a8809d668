"""The ``--stack mtcp`` adapter: the shared loop (``loop.run``) on an ``mtcp_core`` context.

Every operation of a round is one crossing into the stack for the whole batch: one
``Epoll.poll``, one ``accept_many``, one ``recv_many`` for every readable connection, one
``send_many`` for every connection with bytes to send, one ``close_many``. Run it from the
context's app thread (one Python thread per context).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import mtcp_core as m

if TYPE_CHECKING:
    from appliance.http.responder import Responder

RECV_SIZE = 65536
BACKLOG = 4096
# TCP_USER_TIMEOUT of every connection: a peer that acknowledges nothing, or keeps its window
# at zero, this long is aborted by the stack (issue 15: 4,200 clients that never read pinned
# every TCB; the HTTP send timeout alone leaves an orphan behind)
USER_TIMEOUT_MS = 30_000


class MtcpNet:
    """``loop.Net`` over one mtcp_core context, listening on ``port``."""

    def __init__(
        self,
        ctx: m.Context,
        port: int,
        *,
        peers: bool = False,
        tls_port: int | None = None,
        responder: Responder | None = None,
    ) -> None:
        self.ctx = ctx
        self.port = port
        self.tls_port = tls_port
        self.peers = peers  # look the peer's address up (one crossing per connection)
        self.ep = ctx.epoll()
        self._lsock: m.Socket | None = None
        self._tsock: m.Socket | None = None
        self.responder = responder  # static responder on ``port`` (plain HTTP only)
        self._handed: dict[int, tuple[int, float]] = {}
        self._draining = False

    def _listening(self, port: int) -> m.Socket:
        sock = self.ctx.socket()
        try:
            sock.bind(("0.0.0.0", port))
            # accepted connections inherit both: the stack may evict one that is idle at
            # the TCP level (nothing unsent, unacknowledged or unread: a keep-alive
            # connection between requests, or one whose request head trickles in) when
            # its pool nears full, oldest first, as nginx reuses idle connections
            sock.setsockopt(m.IPPROTO_TCP, m.TCP_USER_TIMEOUT, USER_TIMEOUT_MS)
            sock.setsockopt(m.SOL_SOCKET, m.SO_EVICTABLE, 1)
            sock.listen(BACKLOG)
            self.ep.register(sock, m.EPOLLIN)
        except BaseException:
            sock.close()
            raise
        return sock

    def listen(self) -> int:
        self._lsock = self._listening(self.port)
        return self._lsock.fd

    def listen_tls(self) -> int:
        assert self.tls_port is not None
        self._tsock = self._listening(self.tls_port)
        return self._tsock.fd

    def poll(self, timeout: float) -> list[tuple[int, int]]:
        return [(s.fd, ev) for s, ev in self.ep.poll(timeout)]

    def accept_many(self, max_sockets: int, listener: int = -1) -> list[tuple[m.Socket, int, str]]:
        lsock = self._lsock
        if self._tsock is not None and listener == self._tsock.fd:
            lsock = self._tsock
        if lsock is None:
            return []
        out = []
        self._handed.clear()
        try:
            if self.responder is not None and lsock is self._lsock:
                socks = []
                for s, served, started in lsock.accept_many_handed(max_sockets):
                    socks.append(s)
                    self._handed[s.fd] = (served, started)
            else:
                socks = lsock.accept_many(max_sockets)
        except OSError:  # out of sockets, say: the rest wait for the next round
            return []
        for s in socks:
            peer = "-"
            if self.peers:
                try:
                    peer = s.getpeername()[0]
                except OSError:
                    pass
            out.append((s, s.fd, peer))
        return out

    def send_buffer(self, handle: m.Socket) -> int:
        """The connection's send buffer (small under the stack's memory pressure)."""
        try:
            return handle.getsockopt(m.SOL_SOCKET, m.SO_SNDBUF)
        except OSError:
            return 0

    def handed(self, key: int) -> tuple[int, float]:
        """(responses the static responder sent, when the current request started) of a
        connection just accepted."""
        return self._handed.get(key, (0, time.monotonic()))

    def register(self, handle: m.Socket, events: int) -> None:
        self.ep.register(handle, events)

    def modify(self, handle: m.Socket, events: int) -> None:
        self.ep.modify(handle, events)

    def shutdown_write(self, handle: m.Socket) -> None:
        handle.shutdown(m.SHUT_WR)

    def recv_many(self, handles: Sequence[m.Socket]) -> list[bytes | OSError]:
        out: list[bytes | OSError] = []
        # the binding shares its 256 KiB scratch between the sockets of one crossing;
        # whatever does not fit stays readable for the next round
        for i in range(0, len(handles), 1024):
            out += self.ctx.recv_many(handles[i : i + 1024], RECV_SIZE)
        return out

    def send_many(
        self,
        items: Sequence[tuple[m.Socket, bytes | memoryview]],
        close: list[bool] | None = None,
    ) -> list[int | OSError]:
        out = self.ctx.send_many(items, close)  # type: ignore[arg-type]
        if close is not None:
            for i, (sock, _) in enumerate(items):
                close[i] = close[i] and sock.closed  # not closed: unread data, or not all sent
        return out

    def close_many(self, handles: Sequence[m.Socket]) -> None:
        self.ctx.close_many(handles)

    def tick(self, now: float) -> None:
        if self.responder is not None:
            self.responder.tick(now)

    def busy(self) -> bool:
        """Draining: the static responder still holds connections."""
        return self.responder is not None and self.ctx.responder_conns() > 0

    def close_listener(self) -> None:
        if self.responder is not None and not self._draining:
            # the responder drains its connections first (idle ones close, the others
            # after their response); its hand-overs still come through the plain listener,
            # which takes no new connection from now on
            self._draining = True
            self.ctx.responder_drain()
            if self._tsock is not None:
                self.ctx.close_many([self._tsock])
                self._tsock = None
            return
        socks = [s for s in (self._lsock, self._tsock) if s is not None]
        if socks:
            self.ctx.close_many(socks)
        self._lsock = self._tsock = None

    def close(self) -> None:
        if self.ctx._ptr is None:
            return
        if self.responder is not None:
            self.responder.collect()  # the last hits' records
            self._draining = True
        self.close_listener()
        self.ep.close()
