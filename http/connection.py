"""Sans-I/O HTTP/1.1 server connection on h11: bytes and the clock in, bytes out.

The caller (an adapter: ``mtcp`` or ``linux``) owns the socket and drives a ``Connection``:

    out = conn.receive(data, now)   # data received (b"" at end of stream) → bytes to send
    out = conn.pull(now)            # everything returned so far is sent: the next bytes
    out = conn.timer(now)           # called once ``conn.deadline`` has passed
    conn.wants_input                # read from the socket only while this holds
    conn.closed                     # close the socket once everything returned is sent
    conn.abort                      # close the socket now, dropping unsent bytes
    conn.close(now)                 # the socket is closed: release files, record the rest

A response is produced a piece at a time: the head together with a small body (from the
site's in-memory cache), and a large file one ``stream_chunk`` per ``pull``, so that a file
is read only as fast as the socket takes it. Pipelined requests are answered in order: the
next request is looked at only when the previous response is complete. Nothing here raises
into the caller: a broken request gets an error response and a close, an internal error a
500 (or an abort once the response has started).

Installed as ``appliance.http.connection`` (the root-level folder has no __init__.py, see
DESIGN.md, Trap).
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path

import h11

from appliance.http.config import RequestRecord, SiteConfig
from appliance.http.site import PHRASES, Reply, Site, http_date, serialize

SERVER = b"mtcp-appliance"
SEND_TIMEOUT_S = 60.0  # a response that makes no progress this long is dropped
LINGER_S = 5.0  # after the last response of a closing connection: time for it to leave
NO_BODY = frozenset((204, 304))
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"  # the interim response to Expect: 100-continue
_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}
_REASONS |= {k: v.encode() for k, v in PHRASES.items()}

_date_cache: tuple[int, bytes] = (0, b"")

# The fast path: a whole, simple request (GET or HEAD, HTTP/1.0 or 1.1, no body, one
# segment of input) is parsed with two regular expressions instead of h11, and its response
# framed here. Every request it takes is one h11 would take the same way (the grammar below
# is a subset of h11's, RFC 9112 section 3 and 5); anything else, and anything that needs
# h11's framing (a body, Expect, Upgrade, a missing or repeated Host), goes to h11.
# Possessive quantifiers: no backtracking, so a hostile header costs linear time.
_TOKEN = rb"[-!#$%&'*+.^_`|~0-9A-Za-z]++"
_VALUE = rb"(?:[^\x00\s]++(?:[ \t]++[^\x00\s]++)*+)?+"
_FAST_HEAD = re.compile(
    rb"(GET|HEAD) ([\x21-\x7e]++) HTTP/1\.([01])\r\n((?:"
    + _TOKEN
    + rb":[ \t]*+"
    + _VALUE
    + rb"[ \t]*+\r\n)*+)\r\n"
)
_FAST_FIELD = re.compile(rb"(" + _TOKEN + rb"):[ \t]*+(" + _VALUE + rb")[ \t]*+\r\n")
_HOST = re.compile(rb"[A-Za-z0-9.\-]+|\[[0-9A-Fa-f:.]+\]")  # a host for a redirect's Location
# header fields that need h11's framing or state machine
_SLOW_FIELDS = frozenset((b"content-length", b"transfer-encoding", b"expect", b"upgrade"))


def _has_obs_fold(buf: bytes) -> bool:
    """True when the request head at the start of ``buf`` (as far as it has arrived) has a
    field line continued on the next line (obs-fold: a line that starts with SP or HTAB)."""
    end = buf.find(b"\n\r\n")
    end2 = buf.find(b"\n\n")
    if end < 0 or 0 <= end2 < end:
        end = end2
    head = buf if end < 0 else buf[: end + 1]
    return b"\n " in head or b"\n\t" in head


def head_parts(status: int, block: bytes, hsts: bytes | None = None) -> tuple[bytes, bytes]:
    """A response head around its Date value, without the Connection framing: what
    ``_start`` writes, and what the static responder installs (responder.py)."""
    return (
        b"HTTP/1.1 %d %s\r\nDate: " % (status, _REASONS.get(status, b"")),
        b"\r\nServer: %s\r\n%s%s"
        % (SERVER, b"Strict-Transport-Security: %s\r\n" % hsts if hsts else b"", block),
    )


def write_head(
    status: int, block: bytes, hsts: bytes | None, close: bool, keep_alive_10: bool
) -> bytes:
    """The whole response head, for every response of a connection whichever parser took
    its request: status line, Date, Server, HSTS, the reply's header block and the
    Connection framing (close; keep-alive for an HTTP/1.0 client that asked; nothing for
    HTTP/1.1's default)."""
    pre, post = head_parts(status, block, hsts)
    return b"".join(
        (
            pre,
            http_now(),
            post,
            b"Connection: close\r\n\r\n"
            if close
            else b"Connection: keep-alive\r\n\r\n"
            if keep_alive_10
            else b"\r\n",
        )
    )


@dataclass(eq=False)
class Exchange:
    """One request and its response: what either parser (the simple-request one or h11)
    read from the request head, and what the response did, for the framing, the access log
    and the metrics record. A new one per request: nothing is reset by hand.

    Its own ``__init__`` (the dataclass keeps it) sets only the start and the header dict:
    the other fields start as the class's defaults, which is what keeps a record per request
    cheap on the simple-request path (about 0.2 µs against 0.7 µs for the generated one)."""

    started: float | None  # the first byte of the request (the connect for the first one)
    method: bytes = b""
    target: bytes = b""
    version: bytes = b""  # b"1.0", b"1.1" (h11 may hand over others: 505)
    headers: dict[bytes, bytes] = field(default_factory=dict)  # repeated fields joined
    head_bytes: int = 0  # the fields' size as counted against max_header_bytes
    line: bytes = b"-"  # the request line, as the access log writes it
    is_head: bool = False  # a HEAD request: the head of the response only
    simple: bool = False  # taken by the simple-request parser: h11 never sees it
    client_close: bool = False  # the request asked for a close (or is HTTP/1.0)
    keep10: bool = False  # HTTP/1.0 keep-alive for this response
    said_close: bool = False  # the response head said Connection: close
    status: int = 0  # 0: not answered yet
    site: str = ""  # the virtual host of the response (Reply.site)
    body_bytes: int = 0  # request body bytes received
    sent_head: int = 0
    sent_body: int = 0

    def __init__(self, started: float | None) -> None:
        self.started = started
        self.headers = {}

    @property
    def method_name(self) -> str:
        return self.method.decode("ascii", "replace") if self.method else "-"

    def read_head(
        self, method: bytes, target: bytes, version: bytes, fields: Iterable[tuple[bytes, bytes]]
    ) -> int:
        """Fills the record from a parsed request head, the same for both parsers (field
        names in any case); returns how many Host fields there were."""
        self.method = method
        self.is_head = method == b"HEAD"
        self.target = target
        self.version = version
        self.line = b"%s %s HTTP/%s" % (method, target, version)
        headers = self.headers
        hosts = head_bytes = 0
        for raw, value in fields:
            name = raw.lower()
            if name == b"host":
                hosts += 1
            head_bytes += len(name) + len(value) + 4
            old = headers.get(name)
            headers[name] = value if old is None else old + b", " + value
        self.head_bytes = head_bytes
        conn = headers.get(b"connection")
        tokens = {t.strip().lower() for t in conn.split(b",")} if conn else set()
        self.client_close = b"close" in tokens or version < b"1.1"
        if version == b"1.0":
            self.keep10 = b"keep-alive" in tokens and b"close" not in tokens
        return hosts


def http_now() -> bytes:
    """The Date header's value, formatted once per second."""
    global _date_cache
    sec = int(time.time())
    if _date_cache[0] != sec:
        _date_cache = (sec, http_date(sec))
    return _date_cache[1]


class Connection:
    """One server-side HTTP/1.1 connection (see the module's docstring)."""

    def __init__(
        self,
        site: Site | SiteConfig | Path,
        now: float | None = None,
        *,
        peer: str = "-",
        core: int = 0,
        on_request: Callable[[RequestRecord], None] | None = None,
        fast: bool = True,
        secure: bool = False,
        served: int = 0,
    ) -> None:
        if isinstance(site, Path):
            site = SiteConfig(root=site)
        if isinstance(site, SiteConfig):
            site = Site(site)
        self.site = site
        self.config = cfg = site.config
        self.peer = peer
        self.core = core
        self.secure = secure  # behind TLS (HSTS); plain ones may be redirected to HTTPS
        self.on_request = on_request
        now = time.monotonic() if now is None else now
        self._max_head = cfg.max_request_line + cfg.max_header_bytes + 4
        self._h11c: h11.Connection | None = None  # made when first needed (see _h11)
        self._fast_allowed = fast
        # the largest piece of a file read at once: the socket's send buffer when the
        # adapter knows it (the stack shrinks new connections' buffers under memory
        # pressure; a stuck client then pins a small chunk here, not stream_chunk)
        self.chunk_limit = 0
        self.fast_requests = 0  # requests taken by the fast path
        self._reply: Reply | None = None  # the response being sent
        self._part = 0  # index into self._reply.parts
        self._offset = 0  # bytes of the current (file) part already read
        self._more = False  # input is buffered that was not looked at yet
        self.closed = False
        self.abort = False
        self._eof = False
        self._draining = False
        self._requests = served  # responses the static responder sent before handing it over
        # the current request and its response; the first one's time runs from the connect
        self._req = Exchange(started=now)
        self._last_progress = now
        self._linger_until: float | None = None
        self.deadline = now + cfg.header_timeout_s

    def _new_h11(self) -> h11.Connection:
        return h11.Connection(h11.SERVER, max_incomplete_event_size=self._max_head)

    @property
    def _h11(self) -> h11.Connection:
        """The h11 state machine, made on first use: a connection whose requests all take
        the fast path never needs one."""
        if self._h11c is None:
            self._h11c = self._new_h11()
        return self._h11c

    # ------------------------------------------------------------------ the caller's API

    @property
    def wants_input(self) -> bool:
        """True while the connection can use more input (no response in progress, no
        buffered request waiting, not closing)."""
        return not (self.closed or self.abort or self._reply is not None or self._more)

    @property
    def has_output(self) -> bool:
        """True when ``pull`` would return more (a response in progress, or buffered
        pipelined requests)."""
        return not self.abort and (self._reply is not None or self._more)

    def receive(self, data: bytes, now: float | None = None) -> bytes:
        """Feeds bytes received from the peer (b"": the peer closed its side); returns the
        bytes to send."""
        now = time.monotonic() if now is None else now
        if self.closed or self.abort or self._eof:
            return b""
        if data:
            if self._req.started is None:
                self._req.started = now
            if self._fast_allowed:
                if self._fast_parse(data):
                    out = self._guard(now, lambda: self._fast_respond(now))
                    self._set_deadline(now)
                    return out
        else:
            self._eof = True
        self._h11.receive_data(data)
        return self._produce(now)

    def pull(self, now: float | None = None) -> bytes:
        """The next bytes to send, once everything returned so far has been sent."""
        now = time.monotonic() if now is None else now
        self._last_progress = now
        if not self.has_output or self.closed and self._reply is None:
            self._set_deadline(now)
            return b""
        return self._produce(now)

    def timer(self, now: float | None = None) -> bytes:
        """Called once ``deadline`` has passed: a 408 to send before closing (a request
        that did not arrive in time), or nothing and ``abort`` (idle, or a peer that stopped
        reading)."""
        now = time.monotonic() if now is None else now
        if now < self.deadline or self.abort:
            return b""
        if self.closed or self._reply is not None or self._more:
            self.abort = True  # lingered, or no progress sending: give up
            return b""
        h = self._h11
        partial = bool(h.trailing_data[0]) and h.their_state is h11.IDLE
        if (partial or h.their_state is h11.SEND_BODY) and h.our_state in (
            h11.IDLE,
            h11.SEND_RESPONSE,
        ):
            out = self._guard(now, lambda: self._start(self.site.error(408, close=True), now))
            self._set_deadline(now)
            return out
        self.abort = True  # idle keep-alive (or a fresh connection that sent nothing)
        return b""

    @property
    def peer_closed(self) -> bool:
        """The peer's end of stream has been seen."""
        return self._eof

    @property
    def unread_input(self) -> bool:
        """True when the peer may still be sending the request being answered (or one
        after it): the connection closes with input the server did not read, which is when
        a lingering close keeps the client's kernel from being reset before it hands the
        response over."""
        if self._eof:
            return False
        h = self._h11c
        if h is None:
            return False  # fast path only: every request came whole and was read
        if h.trailing_data[0]:
            return True  # the start of a request not looked at
        return h.their_state not in (h11.IDLE, h11.DONE, h11.MUST_CLOSE, h11.CLOSED)

    def drain(self, now: float | None = None) -> None:
        """No new requests: an idle connection closes at once, a busy one after its
        current response (which says Connection: close when its head is still to come)."""
        now = time.monotonic() if now is None else now
        self._draining = True
        h = self._h11
        if (
            self._reply is None
            and not self._more
            and h.their_state is h11.IDLE
            and not h.trailing_data[0]
        ):
            self.closed = True
            self._set_deadline(now)

    def close(self, now: float | None = None) -> None:
        """The adapter closed the socket: releases the response's file and records a
        response that did not finish."""
        now = time.monotonic() if now is None else now
        if self._reply is not None:
            self._reply.release()
            self._reply = None
            self._finish(now)
        self.closed = True

    # ------------------------------------------------------------------ the engine

    def _produce(self, now: float) -> bytes:
        out = self._guard(now, lambda: self._run(now, self.config.stream_chunk))
        self._set_deadline(now)
        return out

    def _guard(self, now: float, step: Callable[[], bytes]) -> bytes:
        """Runs a step; an unexpected error becomes a 500 when no response has started,
        an abort otherwise. Never raises."""
        try:
            return step()
        except Exception as exc:  # noqa: BLE001 - the server must not die of one request
            print(f"appliance.http: internal error: {exc!r}", file=sys.stderr)
            if self._reply is not None:
                self._reply.release()
                self._reply = None
                self.abort = True
                self._finish(now)
                return b""
            self._more = False
            if self._h11.our_state in (h11.IDLE, h11.SEND_RESPONSE) and not self.abort:
                try:
                    return self._start(self.site.error(500, close=True), now)
                except Exception:  # noqa: BLE001
                    pass
            self.abort = True
            return b""

    def _run(self, now: float, budget: int) -> bytes:
        out: list[bytes] = []
        size = 0
        self._more = False
        while not (self.closed or self.abort):
            if self._reply is not None:
                chunk = self._body_chunk(now)
                out.append(chunk)
                size += len(chunk)
                if self._reply is not None:
                    break  # one file chunk per call: the socket has to take it first
                continue
            if size >= budget:
                self._more = True  # answer the rest of the pipeline on the next pull
                break
            h = self._h11
            if h.our_state is h11.DONE and h.their_state is h11.DONE:
                h.start_next_cycle()
                self._next_request(now)
            elif h.our_state is h11.MUST_CLOSE:
                if (
                    self._req.keep10
                    and h.their_state in (h11.DONE, h11.MUST_CLOSE)
                    and not self._draining
                ):
                    data, eof = h.trailing_data
                    self._h11c = h = self._new_h11()
                    if data:
                        h.receive_data(data)
                    if eof:
                        h.receive_data(b"")
                    self._next_request(now)
                else:
                    self.closed = True
                    break
            elif h.our_state is not h11.IDLE and h.our_state is not h11.SEND_RESPONSE:
                self.closed = True  # CLOSED, ERROR
                break
            if h.their_state is h11.IDLE and _has_obs_fold(h.trailing_data[0]):
                # RFC 9112 section 5.2: a server MUST reject obs-fold in a request with 400
                # (or unfold it; h11 unfolds, which a proxy in front might not have done)
                out.append(self._error(400, now))
                size += len(out[-1])
                continue
            try:
                event = h.next_event()
            except h11.RemoteProtocolError as exc:
                status = exc.error_status_hint
                if status == 431:
                    status = self._head_limit_status() or 431
                out.append(self._error(status, now))
                size += len(out[-1])
                continue
            if event is h11.NEED_DATA:
                status = self._check_partial_head()
                if status:
                    out.append(self._error(status, now))
                    size += len(out[-1])
                    continue
                break
            if event is h11.PAUSED:
                break
            if isinstance(event, h11.Request):
                piece = self._on_request(event, now)
            elif isinstance(event, h11.Data):
                piece = self._on_body(len(event.data), now)
            elif isinstance(event, h11.EndOfMessage):
                piece = b""
                req = self._req
                if req.status == 0:  # not answered early (413...)
                    piece = self._start(self._respond(req, now), now)
            elif isinstance(event, h11.ConnectionClosed):
                self.closed = True
                break
            else:
                piece = b""
            out.append(piece)
            size += len(piece)
        return b"".join(out)

    def _next_request(self, now: float) -> None:
        """Between two requests: a new record (its time runs from now when the next
        request has started to arrive)."""
        h = self._h11c
        self._req = Exchange(started=now if h is not None and h.trailing_data[0] else None)

    # ------------------------------------------------------------------ requests

    def _fast_parse(self, data: bytes) -> bool:
        """True when ``data`` is exactly one simple request that arrives while nothing else
        is going on (see _FAST_HEAD): its head is then in the current record. False: h11's
        (and the record as it was)."""
        h = self._h11c
        if (
            self._draining
            or self._reply is not None
            or self._more
            or len(data) > self._max_head
            or h is not None
            and (h.our_state is not h11.IDLE or h.their_state is not h11.IDLE or h.trailing_data[0])
        ):
            return False
        m = _FAST_HEAD.fullmatch(data)
        if m is None:
            return False
        method, target, minor, block = m.groups()
        if len(method) + len(target) + 10 > self.config.max_request_line:
            return False  # 414: h11's path words it
        req = self._req  # fresh: no request has been read since it was made
        hosts = req.read_head(
            method, target, b"1.0" if minor == b"0" else b"1.1", _FAST_FIELD.findall(block)
        )
        if (
            hosts > 1
            or (not hosts and minor == b"1")
            or req.head_bytes > self.config.max_header_bytes
            or not _SLOW_FIELDS.isdisjoint(req.headers)
        ):
            # 400 (RFC 9112 section 3.2), 431, or framing: h11's path; a clean record for it
            self._req = Exchange(started=req.started)
            return False
        req.simple = True
        return True

    def _fast_respond(self, now: float) -> bytes:
        """What ``_on_request`` and the end of the request do on h11's path, for a request
        ``_fast_parse`` took."""
        self.fast_requests += 1
        self._requests += 1
        return self._start(self._respond(self._req, now), now)

    def _respond(self, req: Exchange, now: float) -> Reply:
        """The site's reply, or a 308 to HTTPS for a plain request when redirect_http is on
        (ACME http-01 challenges excepted: a certificate authority asks over plain HTTP)."""
        method, target, headers = req.method, req.target, req.headers
        port = self.config.redirect_https_port
        if port is None or self.secure or target.startswith(b"/.well-known/acme-challenge/"):
            return self.site.respond(method, target, headers, now)
        host = headers.get(b"host", b"").strip()
        if host.startswith(b"["):
            host = host[: host.find(b"]") + 1]
        else:
            host = host.partition(b":")[0]
        if not host or not _HOST.fullmatch(host):
            return self.site.error(400, close=True)
        if not target.startswith(b"/"):
            target = b"/"  # absolute-form or *: the site's root
        where = host if port == 443 else b"%s:%d" % (host, port)
        return self.site.error(308, [(b"Location", b"https://" + where + target)])

    def _on_request(self, event: h11.Request, now: float) -> bytes:
        cfg = self.config
        self._requests += 1
        req = self._req
        req.read_head(event.method, event.target, event.http_version, event.headers)
        headers = req.headers
        if req.version not in (b"1.0", b"1.1"):
            return self._error(505, now)  # RFC 9110 15.6.6: only HTTP/1.x is spoken here
        if len(req.line) > cfg.max_request_line:
            return self._error(414, now)
        if req.head_bytes > cfg.max_header_bytes:
            return self._error(431, now)
        length = headers.get(b"content-length")
        if length is not None and int(length) > cfg.max_body:
            return self._error(413, now)
        if self._h11.they_are_waiting_for_100_continue:
            self._h11.send(h11.InformationalResponse(status_code=100, headers=[]))
            return CONTINUE  # the interim head as h11 frames it (it is told, for its state)
        return b""

    def _on_body(self, n: int, now: float) -> bytes:
        req = self._req
        req.body_bytes += n
        if req.body_bytes > self.config.max_body and req.status == 0:
            return self._error(413, now)
        return b""

    def _check_partial_head(self) -> int:
        """A request head still arriving that is already over a limit: 414 or 431."""
        h = self._h11
        if h.their_state is not h11.IDLE or h.our_state is not h11.IDLE:
            return 0
        buf = h.trailing_data[0]
        if len(buf) <= min(self.config.max_request_line, self.config.max_header_bytes):
            return 0
        return self._head_limit_status(buf)

    def _head_limit_status(self, buf: bytes | None = None) -> int:
        cfg = self.config
        if buf is None:
            buf = self._h11.trailing_data[0]
        end = buf.find(b"\n", 0, cfg.max_request_line + 2)
        if end < 0:
            return 414 if len(buf) > cfg.max_request_line + 1 else 0
        line = len(buf[:end].rstrip(b"\r"))
        if line > cfg.max_request_line:
            return 414
        return 431 if len(buf) - end - 1 > cfg.max_header_bytes else 0

    # ------------------------------------------------------------------ responses

    def _error(self, status: int, now: float) -> bytes:
        """An error response that closes the connection (a broken or refused request)."""
        if self._h11.our_state not in (h11.IDLE, h11.SEND_RESPONSE) or self._req.status:
            self.closed = True
            return b""
        return self._start(self.site.error(status, close=True), now)

    def _start(self, reply: Reply, now: float) -> bytes:
        """Sends a reply's head (and its body when that is in memory).

        Every byte on the wire is framed here (``write_head``, then the body as it is): a
        response has a Content-Length and says Connection: close when it ends the
        connection. For a request h11 parsed, h11 is the state machine and is told the same
        framing (what it writes is dropped: it is the same bytes), so that it decides what may
        follow and when to close; a simple request leaves h11 idle."""
        cfg = self.config
        req = self._req
        status = reply.status
        req.status = status
        req.site = reply.site
        close = (
            reply.close
            or self._draining
            or self._requests >= cfg.max_keepalive_requests
            or self._eof
        )
        if close:
            req.keep10 = False
        if not req.simple:
            framing = [(b"content-length", b"%d" % reply.length)]
            if close:
                framing.append((b"connection", b"close"))
            self._h11.send(h11.Response(status_code=status, headers=framing))
        # what h11 would say on the wire: close unless both sides keep the connection
        req.said_close = close or req.client_close and not req.keep10
        if reply.cacheable and self.site.offer is not None and cfg.redirect_https_port is None:
            self.site.offer(req.method, req.target, req.headers, now)
        head = write_head(
            status,
            reply.head if reply.head is not None else serialize(reply.headers),
            cfg.hsts if self.secure and cfg.hsts else None,
            req.said_close,
            req.keep10,
        )
        req.sent_head = len(head)
        if req.is_head or status in NO_BODY or not reply.length:
            reply.release()
            if not req.simple:
                self._h11.send(h11.EndOfMessage())
            self._finish(now)
            return head
        parts = reply.parts
        if len(parts) == 1 and isinstance(parts[0], bytes):  # the whole body in memory
            body = parts[0]
            req.sent_body = len(body)
            if not req.simple:
                self._h11.send(h11.Data(data=body))  # Content-Length framing: the same bytes
                self._h11.send(h11.EndOfMessage())
            reply.release()
            self._finish(now)
            return head + body
        self._reply = reply
        self._part = 0
        self._offset = 0
        return head

    def _body_chunk(self, now: float) -> bytes:
        """The next piece of the response's body (in-memory parts whole, file ranges one
        stream_chunk at a time); ends the response after its last part."""
        reply = self._reply
        assert reply is not None
        req = self._req
        out: list[bytes] = []
        while self._part < len(reply.parts):
            part = reply.parts[self._part]
            if isinstance(part, bytes):
                out.append(part)
                self._part += 1
                continue
            start, length = part
            chunk = self.config.stream_chunk
            if 0 < self.chunk_limit < chunk:
                chunk = max(4096, self.chunk_limit)
            n = min(chunk, length - self._offset)
            data = os.pread(reply.fd, n, start + self._offset)
            if len(data) != n:
                raise OSError(f"{len(data)} bytes read where {n} were due (file truncated?)")
            out.append(data)
            self._offset += n
            if self._offset == length:
                self._part += 1
                self._offset = 0
            break  # one chunk of a file at a time
        data = out[0] if len(out) == 1 else b"".join(out)
        req.sent_body += len(data)
        if not req.simple and data:
            self._h11.send(h11.Data(data=data))  # Content-Length framing: the same bytes
        if self._part >= len(reply.parts):
            if not req.simple:
                self._h11.send(h11.EndOfMessage())
            reply.release()
            self._reply = None
            self._finish(now)
        return data

    def _finish(self, now: float) -> None:
        """A response ended (or was cut short): access log and metrics record."""
        req = self._req
        if req.simple:
            if req.said_close or self._draining:
                self.closed = True
        elif self._h11.our_state is h11.MUST_CLOSE and not req.keep10:
            self.closed = True  # it said Connection: close (error, drain, last request...)
        started = req.started if req.started is not None else now
        log = self.site.access_log
        if log is not None:
            headers = req.headers
            log.write(
                self.peer, req.line, req.status, req.sent_body, headers.get(b"referer"),
                headers.get(b"user-agent"), req.site, headers.get(b"host"),
            )
        if self.on_request is not None:
            record = RequestRecord(
                method=req.method_name,
                status=req.status,
                bytes_sent=req.sent_head + req.sent_body,
                duration_s=max(0.0, now - started),
                core=self.core,
                site=req.site,
            )
            try:
                self.on_request(record)
            except Exception as exc:  # noqa: BLE001 - metrics must not break serving
                print(f"appliance.http: on_request failed: {exc!r}", file=sys.stderr)
        if req.simple:  # h11 never saw this request: it is still idle for the next
            self._next_request(now)

    # ------------------------------------------------------------------ timers

    def _set_deadline(self, now: float) -> None:
        cfg = self.config
        if self.abort:
            self.deadline = now
        elif self.closed:
            if self._linger_until is None:
                self._linger_until = now + LINGER_S
            self.deadline = self._linger_until
        elif self._reply is not None or self._more:
            self.deadline = self._last_progress + SEND_TIMEOUT_S
        else:
            h = self._h11c
            if h is not None and h.their_state is h11.SEND_BODY:
                self.deadline = now + cfg.header_timeout_s
            elif self._req.started is not None:
                self.deadline = self._req.started + cfg.header_timeout_s
            elif self._requests == 0:
                self.deadline = now + cfg.header_timeout_s
            else:
                self.deadline = now + cfg.keepalive_timeout_s
