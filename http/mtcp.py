"""Runs the sans-I/O HTTP connection on an mtcp_core context (``--stack mtcp``).

One loop per core, batched as DESIGN.md asks: one ``poll`` hands over every ready socket,
new connections are taken with one ``accept_many``, all readable sockets are read with
one ``recv_many``, all responses go out with one ``send_many`` and finished connections
are closed with one ``close_many``.
"""

from __future__ import annotations

import threading
from pathlib import Path

import mtcp_core as m
from appliance.http.connection import Connection

POLL_TIMEOUT_S = 0.5


class _Conn:
    __slots__ = ("http", "out", "closing")

    def __init__(self, root: Path) -> None:
        self.http = Connection(root)
        self.out = b""
        self.closing = False


def serve(ctx: m.Context, root: Path, port: int, stop: threading.Event) -> None:
    """Serves ``root`` on ``port`` of the context's stack until ``stop`` is set."""
    lsock = ctx.socket()
    lsock.bind(("0.0.0.0", port))
    lsock.listen(4096)
    ep = ctx.epoll()
    ep.register(lsock, m.EPOLLIN)
    conns: dict[int, _Conn] = {}
    socks: dict[int, m.Socket] = {}
    try:
        while not stop.is_set():
            ready = ep.poll(POLL_TIMEOUT_S)
            readable: list[m.Socket] = []
            writable: list[m.Socket] = []
            for sock, events in ready:
                if sock is lsock:
                    for c in lsock.accept_many(1024):
                        conns[c.fd] = _Conn(root)
                        socks[c.fd] = c
                        ep.register(c, m.EPOLLIN | m.EPOLLRDHUP)
                    continue
                if events & (m.EPOLLIN | m.EPOLLERR | m.EPOLLHUP | m.EPOLLRDHUP):
                    readable.append(sock)
                elif events & m.EPOLLOUT:
                    writable.append(sock)
            finished: list[m.Socket] = []
            for sock, data in zip(readable, ctx.recv_many(readable), strict=True):
                conn = conns[sock.fd]
                if isinstance(data, OSError):
                    if isinstance(data, BlockingIOError):
                        continue
                    finished.append(sock)  # reset by the peer
                    continue
                conn.out += conn.http.receive(data)
                if not data or conn.http.closed:
                    conn.closing = True
                writable.append(sock)
            batch = [(s, conns[s.fd].out) for s in writable if conns[s.fd].out]
            for (sock, payload), res in zip(batch, ctx.send_many(batch), strict=True):
                conn = conns[sock.fd]
                if isinstance(res, OSError):
                    if not isinstance(res, BlockingIOError):
                        finished.append(sock)
                    continue
                conn.out = payload[res:]
            for sock in writable:
                conn = conns[sock.fd]
                if conn.out:
                    ep.modify(sock, m.EPOLLIN | m.EPOLLOUT | m.EPOLLRDHUP)
                elif conn.closing:
                    finished.append(sock)
                else:
                    ep.modify(sock, m.EPOLLIN | m.EPOLLRDHUP)
            if finished:
                unique = list({s.fd: s for s in finished}.values())
                for s in unique:
                    ep.unregister(s)
                    conns.pop(s.fd, None)
                    socks.pop(s.fd, None)
                ctx.close_many(unique)
    finally:
        ctx.close_many(list(socks.values()))
        lsock.close()
        ep.close()
