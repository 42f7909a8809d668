"""The application's side of the static responder (mtcp_core/src/api/responder.c).

The responder answers cache hits inside the stack, in the mTCP thread's round that received
the request; this module decides what it may answer. For a request that reached Python and
got a small file from the site's in-memory cache, ``offer`` installs the complete responses
for that request's key (method, the target as received, the Accept-Encoding value as
received, and the Host when the site's responses depend on it): the 200 and the 304 that an
exact If-None-Match gets, each split around the Date value (the core fills it in from its
per-second slot) and without the Connection framing (the core adds it the way
``Connection._start`` does). Every response is made by ``Site.respond``, the very code that
answers on the Python path, for a request that carries only the key's fields, so an entry is
byte for byte what Python would send for any request the core takes under that key.

``tick`` (once per loop round) keeps the table true: once per ``REVALIDATE_S`` it asks the
site again for every installed key (one ``stat`` per file, as the site's cache does) and
replaces an entry whose bytes changed or removes one that is no longer a cached file; it
also takes the hits' metrics and access-log records from the core in one batch each. The
table is bounded per core (entries, bytes, one entry's size); the oldest entries go first.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING

from appliance.http.config import RequestRecord
from appliance.http.connection import head_parts
from appliance.http.site import REVALIDATE_S, Site, serialize
from appliance.http.vhosts import Sites

if TYPE_CHECKING:
    import mtcp_core

MAX_ENTRIES = 4096
MAX_BYTES = 64 * 1024 * 1024
ENTRY_OVERHEAD = 1024  # headers of an entry, beyond its body
LOG_METHODS = {b"GET": "GET", b"HEAD": "HEAD"}

Parts = tuple[bytes, bytes, bytes, bytes, bytes, bytes, bytes]


def make_key(method: bytes, target: bytes, ae: bytes | None, host: bytes | None,
             key_host: bool) -> bytes:
    """The table key, exactly as the core builds it from a request (responder.c key_build)."""
    key = method + b" " + target + b"\n" + (b"0" if ae is None else b"1" + ae) + b"\n"
    if key_host:
        key += (b"0" if host is None else b"1" + host) + b"\n"
    return key


class Responder:
    """One server's responder on one context (made by ``serve_mtcp``)."""

    def __init__(
        self,
        ctx: mtcp_core.Context,
        site: Site | Sites,
        port: int,
        *,
        log: bool,
        core: int = 0,
        on_request: Callable[[RequestRecord], None] | None = None,
        hit_slots: int = 0,
        key_host: bool = False,
        max_entries: int = MAX_ENTRIES,
        max_bytes: int = MAX_BYTES,
    ) -> None:
        cfg = site.config
        self.ctx = ctx
        self.site = site
        self.core = core
        self.on_request = on_request
        self.hit_slots = hit_slots
        self.key_host = key_host
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.max_entry = cfg.small_file_limit + ENTRY_OVERHEAD
        # per hit records: for the access log, and for an on_request that wants every record
        self.records = log or (on_request is not None and not hit_slots)
        self.log = log
        # the site the hits belong to (metrics by site, the access log's site field)
        self.site_name = site.default.name if isinstance(site, Sites) else ""
        ctx.responder_enable(
            port,
            max_entries=max_entries,
            max_bytes=max_bytes,
            max_entry=self.max_entry + 512,
            max_request_line=cfg.max_request_line,
            max_header_bytes=cfg.max_header_bytes,
            header_timeout_ms=int(cfg.header_timeout_s * 1000),
            keepalive_timeout_ms=int(cfg.keepalive_timeout_s * 1000),
            max_keepalive_requests=cfg.max_keepalive_requests,
            log=self.records,
            key_host=key_host,
            hit_slots=hit_slots,
        )
        # key -> (method, target, accept-encoding, host, parts, weight), oldest first
        self._installed: OrderedDict[
            bytes, tuple[bytes, bytes, bytes | None, bytes | None, Parts, int]
        ] = OrderedDict()
        self._bytes = 0
        self._next_check = 0.0
        self.installs = 0
        site.offer = self.offer

    # ------------------------------------------------------------------ the table

    def _parts(
        self, method: bytes, target: bytes, ae: bytes | None, host: bytes | None, now: float
    ) -> Parts | None:
        """The entry for a key, or None when its response is not a cached small file."""
        headers: dict[bytes, bytes] = {}
        if ae is not None:
            headers[b"accept-encoding"] = ae
        if host is not None:
            headers[b"host"] = host
        reply = self.site.respond(method, target, headers, now)
        if not reply.cacheable or reply.close:
            reply.release()
            return None
        etag = next((v for n, v in reply.headers if n == b"ETag"), b"")
        pre, post = head_parts(reply.status, reply.head or serialize(reply.headers))
        body = reply.parts[0] if method == b"GET" and reply.parts else b""
        assert isinstance(body, bytes)
        pre304 = post304 = b""
        if etag:
            r304 = self.site.respond(method, target, {**headers, b"if-none-match": etag}, now)
            if r304.status != 304:
                return None  # not what a conditional request gets here: no entry at all
            pre304, post304 = head_parts(304, serialize(r304.headers))
        return (b"", pre, post, body, etag, pre304, post304)

    def offer(self, method: bytes, target: bytes, headers: dict[bytes, bytes], now: float) -> None:
        """A request of this key got a cached file on the Python path: install its key."""
        if method not in LOG_METHODS:
            return
        ae = headers.get(b"accept-encoding")
        host = headers.get(b"host") if self.key_host else None
        key = make_key(method, target, ae, host, self.key_host)
        if key in self._installed:
            return
        parts = self._parts(method, target, ae, host, now)
        if parts is not None:
            self._install(key, method, target, ae, host, parts)

    def _install(
        self,
        key: bytes,
        method: bytes,
        target: bytes,
        ae: bytes | None,
        host: bytes | None,
        parts: Parts,
    ) -> None:
        weight = sum(len(p) for p in parts) + len(key)
        if weight > self.max_entry:
            return  # files above the entry bound are never installed
        old = self._installed.pop(key, None)
        if old is not None:
            self._bytes -= old[5]
        while self._installed and (
            len(self._installed) >= self.max_entries or self._bytes + weight > self.max_bytes
        ):
            okey, oval = self._installed.popitem(last=False)
            self._bytes -= oval[5]
            self.ctx.responder_remove(okey)
        try:
            self.ctx.responder_install((key, *parts[1:]))
        except OSError:
            return
        self._installed[key] = (method, target, ae, host, parts, weight)
        self._bytes += weight
        self.installs += 1

    def revalidate(self, now: float) -> None:
        """Every installed key asked of the site again: changed bytes are replaced, what is
        no longer a cached file removed."""
        for key, (method, target, ae, host, parts, _) in list(self._installed.items()):
            fresh = self._parts(method, target, ae, host, now)
            if fresh is None:
                old = self._installed.pop(key)
                self._bytes -= old[5]
                self.ctx.responder_remove(key)
            elif fresh != parts:
                self._install(key, method, target, ae, host, fresh)

    def clear(self) -> None:
        self._installed.clear()
        self._bytes = 0
        self.ctx.responder_clear()

    @property
    def entries(self) -> int:
        return len(self._installed)

    # ------------------------------------------------------------------ hits

    def collect(self) -> None:
        """The hits' metrics and access-log records since the last call."""
        if not self.records:
            return
        log = self.site.access_log if self.log else None
        for rec in self.ctx.responder_read_log():
            if log is not None:
                log.write(
                    rec.peer, rec.request_line, rec.status, rec.body_bytes, rec.referer,
                    rec.user_agent, self.site_name, rec.host, rec.time,
                )  # fmt: skip
            if self.on_request is not None and not self.hit_slots:
                method = LOG_METHODS.get(rec.request_line.split(b" ", 1)[0], "OTHER")
                record = RequestRecord(method, rec.status, rec.bytes_sent, rec.duration_s,
                                       self.core, site=self.site_name)  # fmt: skip
                self.on_request(record)

    def tick(self, now: float) -> None:
        """Once per loop round."""
        self.collect()
        if now >= self._next_check:
            if self._next_check:
                self.revalidate(now)
            self._next_check = now + REVALIDATE_S
