"""The event loop both adapters share: one thread, one epoll, many ``Connection``s.

A round: one ``poll`` (its timeout is the nearest connection deadline, at most
``POLL_MAX_S``) → new connections taken in one ``accept_many`` → expired deadlines handled
(408s, idle closes) → every readable connection read in one ``recv_many`` and fed to its
``Connection`` → every connection with bytes to send written in one ``send_many`` → finished
ones closed in one ``close_many``. On ``mtcp_core`` each of those is one crossing into the
stack for the whole batch; on kernel sockets (``linux.KernelNet``) the same calls loop over
the sockets, one system call each.

Flow control: a connection is read only while it has nothing waiting to be sent and its
``Connection`` wants input; a large file is read one chunk at a time, the next chunk only
once the socket took the previous one (EPOLLOUT, level-triggered).

Lingering close (nginx's ``lingering_close``): a connection that is done while its client
may still be sending (an error answered before the request was read in full: 400, 408, 413,
431...; with ``lingering_close = "always"`` every connection the server closes) is not
closed at once, which would make the kernel or the stack answer the unread bytes with a RST
and the client's kernel drop the response it holds. Its write side is shut after the
response (FIN), then whatever arrives is read and dropped until the client closes, no byte
came for ``lingering_timeout_s``, ``lingering_time_s`` passed in all, or
``lingering_max_bytes`` were dropped; then it is closed.
"""

from __future__ import annotations

import heapq
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from appliance.http.config import RequestRecord
from appliance.http.connection import Connection
from appliance.http.site import Site
from appliance.http.tls import TlsConnection, TlsServer

EPOLLIN = 0x001
EPOLLOUT = 0x004
EPOLLERR = 0x008
EPOLLHUP = 0x010
EPOLLRDHUP = 0x2000
POLL_MAX_S = 0.25  # how soon a set stop or draining event is seen
ACCEPT_BATCH = 256


class Net(Protocol):
    """What the loop needs from a stack. Handles are opaque; ``key`` is unique among the
    open ones and is what ``poll`` reports."""

    def listen(self) -> int: ...  # the listener's key
    def listen_tls(self) -> int: ...  # the TLS listener's key (only called with ``tls``)
    def poll(self, timeout: float) -> list[tuple[int, int]]: ...
    def accept_many(self, max_sockets: int, listener: int = -1) -> list[tuple[Any, int, str]]: ...
    # A Net may also have: ``handed(key) -> (served, started)`` for a connection that the
    # static responder handed over (responses it sent, when the current request started),
    # ``tick(now)`` called once per round, and ``busy() -> bool``: connections it still
    # holds while draining (the loop ends only once that is False).
    def register(self, handle: Any, events: int) -> None: ...
    def modify(self, handle: Any, events: int) -> None: ...
    def shutdown_write(self, handle: Any) -> None: ...  # FIN after what was sent; may raise
    def recv_many(self, handles: Sequence[Any]) -> list[bytes | OSError]: ...
    def send_many(
        self, items: Sequence[tuple[Any, bytes | memoryview]], close: list[bool] | None = None
    ) -> list[int | OSError]: ...  # close[i]: close handle i too (cleared where it was not)
    def close_many(self, handles: Sequence[Any]) -> None: ...
    def close_listener(self) -> None: ...
    def close(self) -> None: ...


class _Conn:
    __slots__ = (
        "handle", "key", "http", "out", "events", "timer_at", "dead", "sent_closed",
        "linger_end", "linger_at", "linger_bytes",
    )  # fmt: skip

    def __init__(self, handle: Any, key: int, http: Connection | TlsConnection) -> None:
        self.handle = handle
        self.key = key
        self.http = http
        self.out: bytes | memoryview = b""
        self.events = EPOLLIN | EPOLLRDHUP
        self.timer_at = -1.0
        self.dead = False  # close now (reset, error, abort)
        self.sent_closed = False  # closed together with its last bytes (send_many's close)
        self.linger_end = -1.0  # lingering close: until then at most (-1: not lingering)
        self.linger_at = -1.0  # ... and until then unless a byte comes
        self.linger_bytes = 0  # dropped while lingering

    def wanted(self) -> int:
        if self.linger_end >= 0:
            return EPOLLIN | EPOLLRDHUP
        ev = EPOLLOUT if self.out else 0
        if not self.out and self.http.wants_input:
            ev |= EPOLLIN | EPOLLRDHUP
        return ev

    def finished(self) -> bool:
        h = self.http
        return self.dead or h.abort or (not self.out and h.closed and not h.has_output)

    def should_linger(self) -> bool:
        """Done, and its client may still be sending: a lingering close, not a close."""
        h = self.http
        mode = h.config.lingering_close
        if self.dead or h.abort or self.linger_end >= 0 or mode == "off":
            return False
        return h.unread_input or (mode == "always" and not h.peer_closed)


def run(
    net: Net,
    site: Site,
    stop: threading.Event,
    *,
    core: int = 0,
    on_request: Callable[[RequestRecord], None] | None = None,
    draining: threading.Event | None = None,
    ready: threading.Event | None = None,
    tls: TlsServer | None = None,
) -> None:
    """Serves until ``stop`` is set, or until ``draining`` is set and the last connection
    has closed. Always closes every connection, the listener and the site's log. With
    ``tls``, a second listener (``net.listen_tls``) serves HTTPS: its connections are
    wrapped in ``tls.TlsConnection``, and ``tls.tick`` runs once per round (reloads)."""
    conns: dict[int, _Conn] = {}
    timers: list[tuple[float, int]] = []  # (deadline, key), stale entries skipped
    drained = False
    try:
        listener = net.listen()  # a bind error is the caller's to report
        tls_listener = net.listen_tls() if tls is not None else -2
    except BaseException:
        try:
            net.close()
        finally:
            site.close()
        raise
    if ready is not None:
        ready.set()
    send_buffer = getattr(net, "send_buffer", None)  # the adapter's, when it has one
    handed = getattr(net, "handed", None)
    tick = getattr(net, "tick", None)
    busy = getattr(net, "busy", None)
    try:
        while not stop.is_set():
            now = time.monotonic()
            touched: dict[int, _Conn] = {}
            if draining is not None and draining.is_set() and not drained:
                drained = True
                net.close_listener()
                for c in conns.values():
                    if c.linger_end >= 0:  # lingering: at most one more quiet period
                        c.linger_end = min(c.linger_end, now + site.config.lingering_timeout_s)
                    else:
                        c.http.drain(now)
                    touched[c.key] = c
            if drained and not conns and not (busy is not None and busy()):
                break
            if not touched:
                wait = POLL_MAX_S
                if timers:
                    wait = min(wait, max(0.0, timers[0][0] - now))
                events = net.poll(wait)
                now = time.monotonic()
            else:
                events = []
            readable: list[_Conn] = []
            for key, ev in events:
                if key == listener or key == tls_listener:
                    # (while draining only the static responder's hand-overs arrive: the
                    # listener takes no new connection then)
                    secure = key == tls_listener
                    if drained and secure:
                        continue
                    accepted = (
                        net.accept_many(ACCEPT_BATCH, key)
                        if secure
                        else net.accept_many(ACCEPT_BATCH)
                    )
                    for handle, hkey, peer in accepted:
                        served, started = (0, now)
                        if handed is not None and not secure:
                            served, started = handed(hkey)
                        conn = Connection(
                            site, started, peer=peer, core=core, on_request=on_request,
                            secure=secure, served=served,
                        )  # fmt: skip
                        if drained:
                            conn.drain(now)
                        if send_buffer is not None:
                            conn.chunk_limit = send_buffer(handle)
                        http: Any = conn
                        if secure:
                            assert tls is not None
                            http = tls.wrap(conn, now)
                        c = _Conn(handle, hkey, http)
                        conns[hkey] = c
                        touched[hkey] = c
                        try:
                            net.register(handle, c.events)
                        except OSError:
                            c.dead = True
                            continue
                        readable.append(c)  # its request may be there already
                    continue
                c = conns.get(key)
                if c is None:
                    continue
                touched[key] = c
                if ev & EPOLLERR or (ev & EPOLLHUP and not ev & EPOLLIN):
                    c.dead = True
                elif ev & (EPOLLIN | EPOLLRDHUP | EPOLLHUP) and c.events & EPOLLIN:
                    readable.append(c)
            # deadlines: 408s, idle keep-alive closes, stalled senders
            while timers and timers[0][0] <= now:
                at, key = heapq.heappop(timers)
                c = conns.get(key)
                if c is None or c.timer_at != at:
                    continue
                c.timer_at = -1.0
                touched[key] = c
                if c.linger_end >= 0:
                    c.dead = True  # lingered long enough: close
                    continue
                out = c.http.timer(now)
                if out:
                    c.out = bytes(c.out) + out if c.out else out
            # lingering connections: read and drop; the client's end of stream, an error or
            # the byte limit ends them
            lingering = [c for c in readable if c.linger_end >= 0 and not c.dead]
            if lingering:
                cfg = site.config
                results = net.recv_many([c.handle for c in lingering])
                for c, res in zip(lingering, results, strict=True):
                    if isinstance(res, BlockingIOError):
                        continue
                    if isinstance(res, OSError) or not res:
                        c.dead = True
                        continue
                    c.linger_bytes += len(res)
                    if c.linger_bytes > cfg.lingering_max_bytes:
                        c.dead = True
                    c.linger_at = min(c.linger_end, now + cfg.lingering_timeout_s)
            # reads
            readable = [
                c
                for c in readable
                if not c.dead and not c.out and c.http.wants_input and c.linger_end < 0
            ]
            if readable:
                results = net.recv_many([c.handle for c in readable])
                for c, res in zip(readable, results, strict=True):
                    if isinstance(res, BlockingIOError):
                        continue
                    if isinstance(res, OSError):
                        c.dead = True  # reset by the peer
                        continue
                    out = c.http.receive(res, now)
                    if out:
                        c.out = out
            # writes: whatever each connection has ready, in one batch
            batch: list[_Conn] = []
            for c in touched.values():
                if c.dead:
                    continue
                if not c.out and c.http.has_output:
                    c.out = c.http.pull(now)
                if c.out:
                    batch.append(c)
            if batch:
                # a connection whose response ends with these bytes and that closes after
                # it is closed in the same crossing: its FIN rides on the last segment
                # (not one that lingers: it shuts its write side instead, below)
                last = [
                    c.http.closed and not c.http.has_output and not c.http.abort
                    and not c.should_linger()
                    for c in batch
                ]  # fmt: skip
                results2 = net.send_many([(c.handle, c.out) for c in batch], last)
                for c, sent, closing in zip(batch, results2, last, strict=True):
                    if isinstance(sent, BlockingIOError):
                        continue
                    if isinstance(sent, OSError):
                        c.dead = True
                        continue
                    if sent >= len(c.out):
                        c.sent_closed = closing  # cleared by send_many where not closed
                        c.out = b""
                        if c.http.has_output:  # next file chunk: sent when EPOLLOUT says so
                            c.out = c.http.pull(now)
                    else:
                        c.out = memoryview(c.out)[sent:]
            # closes, interest changes, timers
            done: list[_Conn] = []
            for c in touched.values():
                if c.finished() and not c.sent_closed and c.should_linger():
                    try:
                        net.shutdown_write(c.handle)
                    except OSError:
                        c.dead = True
                    else:
                        cfg = site.config
                        c.linger_end = now + (
                            min(cfg.lingering_time_s, cfg.lingering_timeout_s)
                            if drained
                            else cfg.lingering_time_s
                        )
                        c.linger_at = min(c.linger_end, now + cfg.lingering_timeout_s)
                if c.linger_end >= 0 and not c.dead:
                    want = c.wanted()
                    if want != c.events:
                        try:
                            net.modify(c.handle, want)
                        except OSError:
                            done.append(c)
                            continue
                        c.events = want
                    if c.linger_at != c.timer_at:
                        c.timer_at = c.linger_at
                        heapq.heappush(timers, (c.linger_at, c.key))
                    continue
                if c.finished():
                    done.append(c)
                    continue
                want = c.wanted()
                if want != c.events:
                    try:
                        net.modify(c.handle, want)
                    except OSError:
                        c.dead = True
                        done.append(c)
                        continue
                    c.events = want
                at = c.http.deadline
                if at != c.timer_at:
                    c.timer_at = at
                    heapq.heappush(timers, (at, c.key))
            if done:
                for c in done:
                    del conns[c.key]
                    c.http.close(now)
                handles = [c.handle for c in done if not c.sent_closed]
                if handles:
                    net.close_many(handles)
            if tick is not None:
                tick(now)
            if len(timers) > 4 * len(conns) + 64:
                timers = [(c.timer_at, c.key) for c in conns.values() if c.timer_at >= 0]
                heapq.heapify(timers)
            site.flush()
            if tls is not None:
                tls.tick(now)
    except Exception:
        print("appliance.http: the serving loop failed", file=sys.stderr)
        raise
    finally:
        now = time.monotonic()
        for c in conns.values():
            c.http.close(now)
        try:
            if conns:
                net.close_many([c.handle for c in conns.values()])
            net.close()
        finally:
            site.close()
