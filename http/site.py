"""Static file service, sans I/O on the network side: a request in, a ``Reply`` out.

``Site.respond`` maps a request (method, target, headers) onto the folder of a
``SiteConfig``: strict path handling (percent-decoding once, dot-segment removal, no escape
from the root, no dotfiles but ``/.well-known/``), index files, jinja2 directory listings,
MIME types, validators (ETag, Last-Modified) and conditional requests, byte ranges (single
and multipart), precompressed ``.br``/``.gz`` siblings, error pages (jinja2, or the site's
own ``<status>.html``).

Small files live in an in-memory cache together with their precomputed response headers;
an entry is trusted for ``REVALIDATE_S`` and then checked again with one ``stat`` (and its
path resolved again). Large files are never read whole: their reply names byte ranges of an
open file descriptor that the connection streams chunk by chunk.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote_from_bytes

import jinja2

from appliance.http.accesslog import AccessLog, AccessLogOwner, log_time
from appliance.http.codings import ENCODINGS, _choose_encoding
from appliance.http.conditional import (
    MAX_RANGES,
    _etag_matches,
    _if_range_ok,
    http_date,
    parse_http_date,
    parse_ranges,
)
from appliance.http.config import SiteConfig
from appliance.http.errorpages import PHRASES, render_error
from appliance.http.listing import listing_entry, listing_page
from appliance.http.paths import (
    RULE_FILES,
    WELL_KNOWN,
    BadRequest,
    Target,
    is_hidden,
    mime_type,
    parse_target,
)

REVALIDATE_S = 1.0
MAX_CACHE_ENTRIES = 4096
MAX_CACHE_BYTES = 64 * 1024 * 1024
MAX_TARGETS = 4096  # parsed request targets remembered (a pure function of the bytes)
ALLOW = b"GET, HEAD"
HTML = b"text/html; charset=utf-8"
TEMPLATES = Path(__file__).resolve().parent / "templates"




@dataclass
class Reply:
    """A response for the connection to send: status, headers (without Date, Server and
    Connection, which the connection adds), and a body as parts: bytes, or (offset, length)
    ranges of ``fd`` to stream. ``fd`` (when not -1) belongs to the reply: ``release()``."""

    status: int
    headers: list[tuple[bytes, bytes]]
    parts: list[bytes | tuple[int, int]] = field(default_factory=list)
    length: int = 0
    fd: int = -1
    close: bool = False  # the connection must close after this response
    head: bytes | None = None  # ``headers`` serialized (precomputed for cached files)
    site: str = ""  # the virtual host that answered (access log, metrics); see vhosts.py
    cacheable: bool = False  # a cached small file's 200: the static responder may keep it

    def release(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1


@dataclass
class _File:
    """A cached regular file: its validators, headers and (small files) content."""

    real: str
    ino: int
    size: int
    mtime_ns: int
    etag: bytes
    last_modified: bytes
    ctype: bytes
    body: bytes | None  # the content, for files up to small_file_limit
    checked: float  # monotonic time of the last stat
    variants: dict[str, _File] = field(default_factory=dict)  # "br"/"gzip" → sibling
    encoding: bytes | None = None  # Content-Encoding of a sibling
    headers_200: list[tuple[bytes, bytes]] = field(default_factory=list)
    head_200: bytes = b""  # headers_200 serialized, ready to send

    @property
    def mtime(self) -> int:
        return self.mtime_ns // 1_000_000_000


@dataclass
class _Request:
    method: bytes
    headers: dict[bytes, bytes]


class Site(AccessLogOwner):
    """The file service of one ``SiteConfig`` (one per worker; not thread-safe)."""

    def __init__(self, config: SiteConfig) -> None:
        self.config = config
        self.root = os.path.realpath(config.root)
        if not os.path.isdir(self.root):
            raise NotADirectoryError(errno.ENOTDIR, f"site root is not a folder: {config.root}")
        self._files: dict[str, _File] = {}
        # target → (parsed, hidden, normalized path)
        self._targets: dict[bytes, tuple[Target, bool, str]] = {}
        self._cache_bytes = 0
        self._errors: dict[int, bytes] = {}
        self._env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(str(TEMPLATES)),
            autoescape=True,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self._cache_control = config.cache_control.encode() if config.cache_control else None
        self.access_log = AccessLog(config.access_log) if config.access_log is not None else None
        # Called by the connection when a request got a cached file (``Reply.cacheable``):
        # (method, target, headers, now). The static responder (responder.py) sets it.
        self.offer: Callable[[bytes, bytes, dict[bytes, bytes], float], None] | None = None
        # True when a response depends on the Host field (virtual hosts): the static
        # responder's key then includes it.
        self.varies_by_host = False

    # ------------------------------------------------------------------ requests

    def respond(
        self, method: bytes, target: bytes, headers: dict[bytes, bytes], now: float
    ) -> Reply:
        """The reply to a GET or HEAD (any other method: 405). ``headers``: lower-case
        names, repeated fields joined with ", "."""
        if method not in (b"GET", b"HEAD"):
            return self.error(405, [(b"Allow", ALLOW)])
        known = self._targets.get(target)
        if known is None:
            try:
                t = parse_target(target)
            except BadRequest:
                return self.error(400)
            known = (t, is_hidden(t.segments), t.path)
            if len(self._targets) >= MAX_TARGETS:
                self._targets.clear()  # bounded: many distinct targets only cost the parse
            self._targets[target] = known
        t, hidden, key = known
        if hidden:
            return self.error(404)
        req = _Request(method, headers)
        entry = self._files.get(key)
        if entry is not None and now - entry.checked < REVALIDATE_S:
            return self._file_reply(req, entry, now)
        found = self._lookup(t, now)
        if isinstance(found, Reply):
            return found
        return self._file_reply(req, found, now)

    def _lookup(self, t: Target, now: float) -> _File | Reply:
        kind, real, st = self._resolve(t.segments)
        if kind == "dir":
            if not t.trailing_slash:
                location = quote_from_bytes(os.fsencode(t.path), safe="/:@!$&'()*+,;=~")
                loc = location.encode() + b"/"
                if t.query is not None:
                    loc += b"?" + t.query
                return self.error(301, [(b"Location", loc)])
            for name in self.config.index_files:
                ikind, ireal, ist = self._resolve((*t.segments, name))
                if ikind == "file" and ist is not None:
                    return self._entry(t.path, ireal, ist, now)
            if self.config.listing:
                return self._listing(t, real)
            return self.error(403)
        if kind == "file" and st is not None and not t.trailing_slash:
            return self._entry(t.path, real, st, now)
        self._forget(t.path)
        return self.error(404)

    def _resolve(self, segments: tuple[str, ...]) -> tuple[str, str, os.stat_result | None]:
        """("file" | "dir" | "none", real path, stat) for path segments under the root;
        symlinks pointing outside the root are "none" unless follow_symlinks_outside."""
        real = os.path.realpath(os.path.join(self.root, *segments))
        if real != self.root:
            inside = real.startswith(self.root + os.sep)
            if not inside and not self.config.follow_symlinks_outside:
                return "none", real, None
            if inside and is_hidden(real[len(self.root) + 1 :].split(os.sep)):
                return "none", real, None  # a link to a dotfile inside the root
        try:
            st = os.stat(real)
        except (OSError, ValueError):
            return "none", real, None
        if stat.S_ISDIR(st.st_mode):
            return "dir", real, st
        if stat.S_ISREG(st.st_mode):
            return "file", real, st
        return "none", real, None  # FIFOs, devices, sockets

    def _entry(self, key: str, real: str, st: os.stat_result, now: float) -> _File:
        old = self._files.get(key)
        old_weight = _weight(old) if old is not None else 0
        entry = self._load(real, st, now, old)
        variants: dict[str, _File] = {}
        for token, suffix, coding in ENCODINGS:
            vreal = real + suffix
            try:
                vst = os.stat(vreal)
            except OSError:
                continue
            if not stat.S_ISREG(vst.st_mode) or vreal != os.path.realpath(vreal):
                continue  # a sibling must be a plain file, not a link
            oldv = old.variants.get(token) if old is not None else None
            v = self._load(vreal, vst, now, oldv, ctype=entry.ctype, encoding=coding)
            variants[token] = v
        entry.variants = variants
        vary = [(b"Vary", b"Accept-Encoding")] if variants else []
        for f in (entry, *variants.values()):
            f.headers_200 = self._file_headers(f, f.size) + vary
            f.head_200 = serialize(f.headers_200)
        self._store(key, entry, old_weight if old is not None else None)
        return entry

    def _load(
        self,
        real: str,
        st: os.stat_result,
        now: float,
        old: _File | None,
        ctype: bytes | None = None,
        encoding: bytes | None = None,
    ) -> _File:
        same = (
            old is not None
            and old.real == real
            and (old.ino, old.size, old.mtime_ns) == (st.st_ino, st.st_size, st.st_mtime_ns)
        )
        if same and old is not None:
            old.checked = now
            return old
        # a small file that changed while it was read (None) is streamed instead
        body = _read_small(real, st.st_size) if st.st_size <= self.config.small_file_limit else None
        suffix = b"" if encoding is None else b"-" + encoding
        etag = b'"%x-%x-%x%s"' % (st.st_mtime_ns // 1000, st.st_size, st.st_ino, suffix)
        return _File(
            real=real,
            ino=st.st_ino,
            size=st.st_size,
            mtime_ns=st.st_mtime_ns,
            etag=etag,
            last_modified=http_date(st.st_mtime),
            ctype=ctype or mime_type(real),
            body=body,
            checked=now,
            encoding=encoding,
        )

    def _store(self, key: str, entry: _File, old_weight: int | None) -> None:
        """Caches ``entry`` under ``key`` (replacing an entry of ``old_weight`` bytes)."""
        if old_weight is not None and key in self._files:
            self._cache_bytes -= old_weight
            del self._files[key]
        while self._files and (
            len(self._files) >= MAX_CACHE_ENTRIES
            or self._cache_bytes + _weight(entry) > MAX_CACHE_BYTES
        ):
            oldest = next(iter(self._files))
            self._cache_bytes -= _weight(self._files.pop(oldest))
        self._files[key] = entry
        self._cache_bytes += _weight(entry)

    def _forget(self, key: str) -> None:
        entry = self._files.pop(key, None)
        if entry is not None:
            self._cache_bytes -= _weight(entry)

    def _file_headers(self, f: _File, length: int) -> list[tuple[bytes, bytes]]:
        h = [(b"Content-Type", f.ctype), (b"Content-Length", b"%d" % length)]
        if f.encoding is not None:
            h.append((b"Content-Encoding", f.encoding))
        h += [(b"Last-Modified", f.last_modified), (b"ETag", f.etag), (b"Accept-Ranges", b"bytes")]
        if self._cache_control is not None:
            h.append((b"Cache-Control", self._cache_control))
        return h

    # ------------------------------------------------------------------ file replies

    def _file_reply(self, req: _Request, base: _File, now: float) -> Reply:
        vary = bool(base.variants)
        f = base
        if vary:
            f = _choose_encoding(base, req.headers.get(b"accept-encoding"))
        extra = [(b"Vary", b"Accept-Encoding")] if vary else []
        h = req.headers
        inm = h.get(b"if-none-match")
        if inm is not None:
            if _etag_matches(inm, f.etag):
                return self._not_modified(f, extra)
        else:
            ims = h.get(b"if-modified-since")
            if ims is not None:
                since = parse_http_date(ims)
                if since is not None and f.mtime <= since:
                    return self._not_modified(f, extra)
        rng = h.get(b"range")
        if rng is not None and req.method == b"GET":
            if_range = h.get(b"if-range")
            if if_range is None or _if_range_ok(if_range, f):
                ranges = parse_ranges(rng, f.size)
                if ranges == []:
                    return self.error(416, [(b"Content-Range", b"bytes */%d" % f.size)] + extra)
                if ranges is not None:
                    return self._ranges_reply(f, ranges, extra)
        if f.body is not None:
            return Reply(200, f.headers_200, [f.body], f.size, head=f.head_200, cacheable=True)
        fd = _open_regular(f.real)
        if fd < 0:
            base.checked = -REVALIDATE_S  # gone since the last stat: look again next time
            return self.error(404)
        return Reply(200, f.headers_200, [(0, f.size)], f.size, fd, head=f.head_200)

    def _not_modified(self, f: _File, extra: list[tuple[bytes, bytes]]) -> Reply:
        h = [(b"Last-Modified", f.last_modified), (b"ETag", f.etag)]
        if self._cache_control is not None:
            h.append((b"Cache-Control", self._cache_control))
        return Reply(304, h + extra)

    def _ranges_reply(
        self, f: _File, ranges: list[tuple[int, int]], extra: list[tuple[bytes, bytes]]
    ) -> Reply:
        fd = -1
        if f.body is None:
            fd = _open_regular(f.real)
            if fd < 0:
                return self.error(404)

        def piece(start: int, end: int) -> bytes | tuple[int, int]:
            if f.body is not None:
                return f.body[start : end + 1]
            return (start, end + 1 - start)

        common = [(b"Last-Modified", f.last_modified), (b"ETag", f.etag)]
        if f.encoding is not None:
            common.insert(0, (b"Content-Encoding", f.encoding))
        common.append((b"Accept-Ranges", b"bytes"))
        if self._cache_control is not None:
            common.append((b"Cache-Control", self._cache_control))
        if len(ranges) == 1:
            start, end = ranges[0]
            length = end + 1 - start
            h = [
                (b"Content-Type", f.ctype),
                (b"Content-Length", b"%d" % length),
                (b"Content-Range", b"bytes %d-%d/%d" % (start, end, f.size)),
                *common,
                *extra,
            ]
            return Reply(206, h, [piece(start, end)], length, fd)
        boundary = secrets.token_hex(12).encode()
        parts: list[bytes | tuple[int, int]] = []
        length = 0
        for start, end in ranges:
            head = b"\r\n--%s\r\nContent-Type: %s\r\nContent-Range: bytes %d-%d/%d\r\n\r\n" % (
                boundary,
                f.ctype,
                start,
                end,
                f.size,
            )
            parts += [head, piece(start, end)]
            length += len(head) + end + 1 - start
        tail = b"\r\n--%s--\r\n" % boundary
        parts.append(tail)
        length += len(tail)
        h = [
            (b"Content-Type", b"multipart/byteranges; boundary=" + boundary),
            (b"Content-Length", b"%d" % length),
            *common,
            *extra,
        ]
        return Reply(206, h, parts, length, fd)

    # ------------------------------------------------------------------ listings, errors

    def _listing(self, t: Target, real: str) -> Reply:
        entries = []
        try:
            with os.scandir(real) as it:
                for de in it:
                    if de.name.startswith(".") or not t.segments and de.name in RULE_FILES:
                        continue  # dotfiles, and the site's rule files (http/rules.py)
                    kind, _, st = self._resolve((*t.segments, de.name))
                    if kind == "none" or st is None:
                        continue  # not servable: dangling, outside the root, special file
                    entries.append(listing_entry(de.name, kind == "dir", st))
        except OSError:
            return self.error(404)
        body = listing_page(self._env, t, entries)
        h = [(b"Content-Type", HTML), (b"Content-Length", b"%d" % len(body))]
        return Reply(200, h, [body], len(body))

    def error(
        self, status: int, extra: list[tuple[bytes, bytes]] | None = None, close: bool = False
    ) -> Reply:
        """An error (or redirect) reply: the site's ``<status>.html`` when it has one, else
        the jinja2 template."""
        body = self._site_error_page(status)
        ctype = b"text/html"
        if body is None:
            ctype = HTML
            body = self._errors.get(status)
            if body is None:
                body = render_error(self._env, status)
                self._errors[status] = body
        h = [(b"Content-Type", ctype), (b"Content-Length", b"%d" % len(body)), *(extra or [])]
        return Reply(status, h, [body], len(body), close=close)

    def _site_error_page(self, status: int) -> bytes | None:
        if status < 400:
            return None
        name = f"{status}.html"
        now = time.monotonic()
        key = "\0error/" + name  # never a request path
        entry = self._files.get(key)
        if entry is not None and now - entry.checked < REVALIDATE_S:
            return entry.body
        kind, real, st = self._resolve((name,))
        if kind != "file" or st is None or st.st_size > self.config.small_file_limit:
            self._forget(key)
            return None
        old_weight = _weight(entry) if entry is not None else None
        entry = self._load(real, st, now, entry)
        self._store(key, entry, old_weight)
        return entry.body


def serialize(headers: list[tuple[bytes, bytes]]) -> bytes:
    """Header fields as they go on the wire (every value here is the server's own or was
    validated by h11: no CR or LF)."""
    return b"".join(b"%s: %s\r\n" % (name, value) for name, value in headers)


def _weight(f: _File) -> int:
    return (len(f.body) if f.body is not None else 0) + sum(
        len(v.body) for v in f.variants.values() if v.body is not None
    )


def _read_small(real: str, size: int) -> bytes | None:
    """The whole file if it still has ``size`` bytes, else None."""
    fd = _open_regular(real)
    if fd < 0:
        return None
    try:
        data = os.pread(fd, size + 1, 0)
    except OSError:
        return None
    finally:
        os.close(fd)
    return data if len(data) == size else None


def _open_regular(real: str) -> int:
    """O_RDONLY, never blocking on a FIFO; -1 unless it is a regular file."""
    try:
        fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:
        return -1
    try:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            return fd
    except OSError:
        pass
    os.close(fd)
    return -1


# the public names this module had before its concerns moved out (paths.py, conditional.py,
# codings.py, errorpages.py, accesslog.py); kept importable from here
__all__ = [
    "ALLOW", "ENCODINGS", "HTML", "MAX_CACHE_BYTES", "MAX_CACHE_ENTRIES", "MAX_RANGES",
    "MAX_TARGETS", "PHRASES", "REVALIDATE_S", "RULE_FILES", "TEMPLATES", "WELL_KNOWN",
    "AccessLog", "BadRequest", "Reply", "Site", "Target", "http_date", "is_hidden", "log_time",
    "mime_type", "parse_http_date", "parse_ranges", "parse_target", "serialize",
]
