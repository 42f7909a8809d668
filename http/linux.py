"""The ``--stack linux`` adapter: the shared loop (``loop.run``) on the kernel's sockets.

Non-blocking sockets on one ``select.epoll``, in one thread; the loop's batch operations
become one system call per socket (the kernel has no batch calls: ``mtcp_core.kernelnet``,
shared with the echo responder of the tests). ``SO_REUSEPORT`` lets
one such loop per worker process share a port. ``StaticServer`` wraps it for callers that
want the socketserver shape (bind now, ``serve_forever`` later).
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
from pathlib import Path

from appliance.http.config import SiteConfig
from mtcp_core.kernelnet import KernelSockets

BACKLOG = 4096
USER_TIMEOUT_MS = 30_000  # TCP_USER_TIMEOUT of every connection


def listening_socket(host: str, port: int, reuse_port: bool = True) -> socket.socket:
    """A bound, listening, non-blocking TCP socket."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # accepted connections inherit it: a peer that stops acknowledging or keeps its
        # window at zero is aborted (issue 15; the mtcp adapter sets the same)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, USER_TIMEOUT_MS)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class KernelNet(KernelSockets):
    """``loop.Net`` over kernel sockets; keys are file descriptors."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        reuse_port: bool = True,
        sock: socket.socket | None = None,
        tls_port: int | None = None,
        tls_sock: socket.socket | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.tls_port = tls_port
        self.reuse_port = reuse_port
        super().__init__()
        self._lsock = sock
        self._tsock = tls_sock

    def listen(self) -> int:
        if self._lsock is None:
            self._lsock = listening_socket(self.host, self.port, self.reuse_port)
        self._lsock.setblocking(False)
        self.ep.register(self._lsock.fileno(), select.EPOLLIN)
        return self._lsock.fileno()

    def listen_tls(self) -> int:
        if self._tsock is None:
            assert self.tls_port is not None
            self._tsock = listening_socket(self.host, self.tls_port, self.reuse_port)
        self._tsock.setblocking(False)
        self.ep.register(self._tsock.fileno(), select.EPOLLIN)
        return self._tsock.fileno()

    def accept_many(
        self, max_sockets: int, listener: int = -1
    ) -> list[tuple[socket.socket, int, str]]:
        out: list[tuple[socket.socket, int, str]] = []
        lsock = self._lsock
        if self._tsock is not None and listener == self._tsock.fileno():
            lsock = self._tsock
        if lsock is None:
            return out
        for _ in range(max_sockets):
            try:
                conn, addr = lsock.accept()
            except (BlockingIOError, InterruptedError):
                break
            except OSError:  # ECONNABORTED, EMFILE...: try again next round
                break
            conn.setblocking(False)
            with contextlib.suppress(OSError):
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            out.append((conn, conn.fileno(), str(addr[0])))
        return out

    def shutdown_write(self, handle: socket.socket) -> None:
        handle.shutdown(socket.SHUT_WR)

    def close_listener(self) -> None:
        for lsock in (self._lsock, self._tsock):
            if lsock is not None:
                with contextlib.suppress(OSError):
                    self.ep.unregister(lsock.fileno())
                lsock.close()
        self._lsock = self._tsock = None

    def close(self) -> None:
        self.close_listener()
        self.ep.close()


class StaticServer:
    """socketserver's shape around ``serve_linux``: binds at once (port 0 picks a free
    port, see ``server_address``), serves in ``serve_forever`` until ``shutdown``."""

    def __init__(self, root: Path, host: str, port: int, site: SiteConfig | None = None) -> None:
        self.site = site or SiteConfig(root=Path(root))
        self.socket = listening_socket(host, port, reuse_port=False)
        self.server_address: tuple[str, int] = self.socket.getsockname()[:2]
        self._stop = threading.Event()
        self._done = threading.Event()
        self._done.set()

    def serve_forever(self) -> None:
        from appliance.http import loop
        from appliance.http.site import Site

        self._done.clear()
        try:
            net = KernelNet(sock=self.socket)
            loop.run(net, Site(self.site), self._stop)
        finally:
            self._done.set()

    def shutdown(self) -> None:
        self._stop.set()
        self._done.wait(10)

    def server_close(self) -> None:
        self.socket.close()

    def __enter__(self) -> StaticServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.server_close()
