"""The batch socket calls of the serving loops, done on the kernel's sockets.

The loops that run on either stack (``appliance.http.loop``, the echo responder in
``mtcp_core.testing.echo_app``) speak to it through batch operations: on mtcp_core one
crossing carries a batch (``Context.recv_many``, ``send_many``, ``close_many``); the kernel
has no batch calls, so ``KernelSockets`` makes them one system call per socket on one
``select.epoll``. Both loops' kernel adapters (``appliance.http.linux.KernelNet``,
``echo_app.KernelNet``) build on it and add their listeners.
"""

from __future__ import annotations

import contextlib
import select
import socket
from collections.abc import Sequence

RECV_SIZE = 65536  # at most this much per socket and round


class KernelSockets:
    """Non-blocking kernel sockets on one epoll; handles are sockets, events come back keyed
    by file descriptor."""

    def __init__(self) -> None:
        self.ep = select.epoll()

    def register(self, handle: socket.socket, events: int) -> None:
        self.ep.register(handle.fileno(), events)

    def modify(self, handle: socket.socket, events: int) -> None:
        self.ep.modify(handle.fileno(), events)

    def poll(self, timeout: float) -> list[tuple[int, int]]:
        """(fd, events) of the ready sockets; a signal ends the wait with none."""
        try:
            return self.ep.poll(timeout)
        except InterruptedError:
            return []

    def recv_many(self, handles: Sequence[socket.socket]) -> list[bytes | OSError]:
        """Each socket's bytes (b"" at EOF) or its error, in order."""
        out: list[bytes | OSError] = []
        for h in handles:
            try:
                out.append(h.recv(RECV_SIZE))
            except OSError as exc:
                out.append(exc)
        return out

    def send_many(
        self,
        items: Sequence[tuple[socket.socket, bytes | memoryview]],
        close: list[bool] | None = None,
    ) -> list[int | OSError]:
        """Each write's count of bytes taken, or its error. ``close[i]``: close socket i once
        all of its data was taken; left True only where it was closed."""
        out: list[int | OSError] = []
        for i, (h, data) in enumerate(items):
            try:
                sent = h.send(data)
            except OSError as exc:
                out.append(exc)
                if close is not None:
                    close[i] = False
                continue
            out.append(sent)
            if close is not None and close[i]:
                if sent == len(data):
                    self.close_many([h])
                else:
                    close[i] = False
        return out

    def close_many(self, handles: Sequence[socket.socket]) -> None:
        for h in handles:
            with contextlib.suppress(OSError):
                self.ep.unregister(h.fileno())
            h.close()
