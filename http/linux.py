"""The kernel-socket adapter (``--stack linux``): runs connection.Connection on plain TCP sockets.

A placeholder: one thread per connection. The mtcp_core adapter will run the same
Connection on the mTCP epoll loop, so both stacks can be compared with one flag.
"""

from __future__ import annotations

import socket
import socketserver
from pathlib import Path

from .connection import Connection

IDLE_TIMEOUT_S = 30.0
RECV_SIZE = 65536


class _Handler(socketserver.BaseRequestHandler):
    server: StaticServer
    request: socket.socket

    def handle(self) -> None:
        conn = Connection(self.server.root)
        self.request.settimeout(IDLE_TIMEOUT_S)
        while not conn.closed:
            try:
                data = self.request.recv(RECV_SIZE)
            except OSError:  # idle timeout or reset
                return
            out = conn.receive(data)
            if out:
                self.request.sendall(out)
            if not data:
                return


class StaticServer(socketserver.ThreadingTCPServer):
    """Serves ``root`` on ``(host, port)``; port 0 picks a free one (see server_address)."""

    allow_reuse_address = True
    daemon_threads = True

    def __init__(self, root: Path, host: str, port: int) -> None:
        self.root = root
        super().__init__((host, port), _Handler)
