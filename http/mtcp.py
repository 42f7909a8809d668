"""The ``--stack mtcp`` adapter: the shared loop (``loop.run``) on an ``mtcp_core`` context.

Every operation of a round is one crossing into the stack for the whole batch: one
``Epoll.poll``, one ``accept_many``, one ``recv_many`` for every readable connection, one
``send_many`` for every connection with bytes to send, one ``close_many``. Run it from the
context's app thread (one Python thread per context).
"""

from __future__ import annotations

from collections.abc import Sequence

import mtcp_core as m

RECV_SIZE = 65536
BACKLOG = 4096
# TCP_USER_TIMEOUT of every connection: a peer that acknowledges nothing, or keeps its window
# at zero, this long is aborted by the stack (issue 15: 4,200 clients that never read pinned
# every TCB; the HTTP send timeout alone leaves an orphan behind)
USER_TIMEOUT_MS = 30_000


class MtcpNet:
    """``loop.Net`` over one mtcp_core context, listening on ``port``."""

    def __init__(
        self, ctx: m.Context, port: int, *, peers: bool = False, tls_port: int | None = None
    ) -> None:
        self.ctx = ctx
        self.port = port
        self.tls_port = tls_port
        self.peers = peers  # look the peer's address up (one crossing per connection)
        self.ep = ctx.epoll()
        self._lsock: m.Socket | None = None
        self._tsock: m.Socket | None = None

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
        try:
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

    def close_listener(self) -> None:
        socks = [s for s in (self._lsock, self._tsock) if s is not None]
        if socks:
            self.ctx.close_many(socks)
        self._lsock = self._tsock = None

    def close(self) -> None:
        if self.ctx._ptr is None:
            return
        self.close_listener()
        self.ep.close()
