"""The sans-I/O HTTP core without sockets: ``Connection`` (h11) and ``Site`` (the files).

Bytes in, bytes out, and a clock that the test moves by hand: timeouts, the cache's
revalidation and streaming are checked exactly, in milliseconds.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from appliance.http import connection as connection_mod
from appliance.http import loop as loop_mod
from appliance.http import site as site_mod
from appliance.http.config import RequestRecord, SiteConfig
from appliance.http.connection import Connection
from appliance.http.site import BadRequest, Site, parse_ranges, parse_target
from appliance.testing import http1
from appliance.testing.http1 import body, get, header, norm, status_of

T0 = 1000.0
BIG = 300_000  # over small_file_limit below: streamed


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = http1.write_files(
        tmp_path / "site",
        {
            "index.html": b"<h1>hello</h1>\n",
            "small.txt": bytes(range(48, 48 + 64)),
            "big.bin": os.urandom(BIG),
            **http1.DOCS,
            "app.js": b"console.log(1);\n" * 10,
            "app.js.gz": b"GZ",
            "app.js.br": b"BR",
            ".secret": "secret\n",
            ".well-known/security.txt": "Contact: x\n",
        },
    )
    outside = http1.write_files(tmp_path / "outside", {"secret.txt": "TOPSECRET\n"})
    (r / "out.txt").symlink_to(outside / "secret.txt")
    (r / "in.txt").symlink_to(r / "small.txt")
    return r


def cfg(root: Path, **kw: object) -> SiteConfig:
    kw.setdefault("small_file_limit", 64 * 1024)
    kw.setdefault("stream_chunk", 64 * 1024)
    return SiteConfig(root=root, **kw)  # type: ignore[arg-type]


def etag(p: Path, suffix: bytes = b"") -> bytes:
    st = p.stat()
    return b'"%x-%x-%x%s"' % (st.st_mtime_ns // 1000, st.st_size, st.st_ino, suffix)


def lastmod(p: Path) -> bytes:
    return site_mod.http_date(p.stat().st_mtime)


def one(root: Path, request: bytes, **kw: object) -> bytes:
    c = Connection(cfg(root, **kw), T0)
    out = c.receive(request, T0)
    while c.has_output:
        out += c.pull(T0)
    return out


# ---------------------------------------------------------------- responses, byte-exact


def test_get_small_file_is_byte_exact(root: Path) -> None:
    p = root / "small.txt"
    expected = (
        b"HTTP/1.1 200 OK\r\nDate: X\r\nServer: mtcp-appliance\r\n"
        b"Content-Type: text/plain\r\nContent-Length: 64\r\n"
        b"Last-Modified: " + lastmod(p) + b"\r\nETag: " + etag(p) + b"\r\n"
        b"Accept-Ranges: bytes\r\nCache-Control: public, max-age=60\r\n\r\n" + p.read_bytes()
    )
    assert norm(one(root, get("/small.txt"))) == expected


def test_head_has_the_get_headers_and_no_body(root: Path) -> None:
    full = one(root, get("/small.txt"))
    head = one(root, get("/small.txt", method="HEAD"))
    assert norm(head) == norm(full)[:-64]


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS", "PATCH", "get"])
def test_other_methods_are_405_with_allow(root: Path, method: str) -> None:
    out = one(root, get("/small.txt", method=method))
    assert status_of(out) == 405 and header(out, "Allow") == "GET, HEAD"


def test_pipelined_requests_are_answered_in_order_whatever_the_split(root: Path) -> None:
    reqs = get("/small.txt") + get("/missing") + get("/", method="HEAD") + get("/index.html")
    whole = Connection(cfg(root), T0).receive(reqs, T0)
    assert [status_of(r) for r in re.split(rb"(?=HTTP/1\.1 )", whole) if r] == [200, 404, 200, 200]
    c = Connection(cfg(root), T0)
    split = b"".join(c.receive(reqs[i : i + 1], T0) for i in range(len(reqs)))
    assert norm(split) == norm(whole)
    assert not c.closed


def test_every_response_gives_one_record(root: Path) -> None:
    records: list[RequestRecord] = []
    c = Connection(cfg(root), T0, core=3, on_request=records.append)
    outs = [c.receive(get(t), T0 + i) for i, t in enumerate(["/small.txt", "/nope", "/docs"])]
    assert [(r.method, r.status, r.bytes_sent, r.core) for r in records] == [
        ("GET", 200, len(outs[0]), 3),
        ("GET", 404, len(outs[1]), 3),
        ("GET", 301, len(outs[2]), 3),
    ]
    assert all(r.duration_s >= 0 for r in records)
    c.receive(b"BAD\r\n\r\n", T0 + 5)
    assert (records[-1].method, records[-1].status) == ("-", 400)


def test_date_and_server_headers(root: Path) -> None:
    out = one(root, get("/nope"))
    assert header(out, "Server") == "mtcp-appliance"
    assert re.fullmatch(r"\w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d GMT", header(out, "Date") or "")


# ---------------------------------------------------------------- files and folders


def test_index_file_listing_and_redirect(root: Path) -> None:
    assert body(one(root, get("/"))) == b"<h1>hello</h1>\n"
    out = one(root, get("/docs?x=1&y"))
    assert status_of(out) == 301 and header(out, "Location") == "/docs/?x=1&y"
    listing = body(one(root, get("/docs/"))).decode()
    assert http1.listing_links(listing) == http1.DOCS_LINKS
    assert ".hidden" not in listing
    assert status_of(one(root, get("/docs/"), listing=False)) == 403
    (root / "docs" / "start.htm").write_text("start\n")
    out = one(root, get("/docs/"), index_files=("start.htm", "index.html"))
    assert body(out) == b"start\n"


def test_mime_types(root: Path) -> None:
    for name, ctype in [
        ("s.css", "text/css"),
        ("i.svg", "image/svg+xml"),
        ("a.js", "text/javascript"),
        ("d.json", "application/json"),
        ("p.png", "image/png"),
        ("x.unknownext", "application/octet-stream"),
    ]:
        (root / name).write_bytes(b"x")
        assert header(one(root, get("/" + name)), "Content-Type") == ctype


def test_conditional_requests(root: Path) -> None:
    p = root / "small.txt"
    tag, lm = etag(p).decode(), lastmod(p).decode()
    out = one(root, get("/small.txt", f"If-None-Match: {tag}"))
    assert norm(out) == (
        b"HTTP/1.1 304 Not Modified\r\nDate: X\r\nServer: mtcp-appliance\r\n"
        b"Last-Modified: " + lm.encode() + b"\r\nETag: " + tag.encode() + b"\r\n"
        b"Cache-Control: public, max-age=60\r\n\r\n"
    )
    assert status_of(one(root, get("/small.txt", f'If-None-Match: "x", W/{tag}'))) == 304
    assert status_of(one(root, get("/small.txt", 'If-None-Match: "other"'))) == 200
    assert status_of(one(root, get("/small.txt", f"If-Modified-Since: {lm}"))) == 304
    old = "Thu, 01 Jan 1970 00:00:01 GMT"
    assert status_of(one(root, get("/small.txt", f"If-Modified-Since: {old}"))) == 200
    # If-None-Match wins over If-Modified-Since
    both = get("/small.txt", 'If-None-Match: "other"', f"If-Modified-Since: {lm}")
    assert status_of(one(root, both)) == 200


def test_ranges(root: Path) -> None:
    data = (root / "small.txt").read_bytes()
    out = one(root, get("/small.txt", "Range: bytes=2-5"))
    assert status_of(out) == 206 and body(out) == data[2:6]
    assert header(out, "Content-Range") == "bytes 2-5/64"
    assert body(one(root, get("/small.txt", "Range: bytes=-3"))) == data[-3:]
    assert body(one(root, get("/small.txt", "Range: bytes=60-1000"))) == data[60:]
    out = one(root, get("/small.txt", "Range: bytes=100-"))
    assert status_of(out) == 416 and header(out, "Content-Range") == "bytes */64"
    out = one(root, get("/small.txt", "Range: bytes=0-1,10-12"))
    boundary = (header(out, "Content-Type") or "").split("boundary=")[1]
    assert (
        body(out)
        == (
            f"\r\n--{boundary}\r\nContent-Type: text/plain\r\nContent-Range: bytes 0-1/64\r\n\r\n"
            f"{data[0:2].decode()}"
            f"\r\n--{boundary}\r\nContent-Type: text/plain\r\nContent-Range: bytes 10-12/64\r\n\r\n"
            f"{data[10:13].decode()}\r\n--{boundary}--\r\n"
        ).encode()
    )
    assert int(header(out, "Content-Length") or 0) == len(body(out))
    tag = etag(root / "small.txt").decode()
    assert status_of(one(root, get("/small.txt", "Range: bytes=0-1", f"If-Range: {tag}"))) == 206
    assert status_of(one(root, get("/small.txt", "Range: bytes=0-1", 'If-Range: "x"'))) == 200
    lm = lastmod(root / "small.txt").decode()
    assert status_of(one(root, get("/small.txt", "Range: bytes=0-1", f"If-Range: {lm}"))) == 206


@pytest.mark.parametrize(
    ("value", "size", "expected"),
    [
        (b"bytes=0-0", 10, [(0, 0)]),
        (b"bytes=5-", 10, [(5, 9)]),
        (b"bytes=-4", 10, [(6, 9)]),
        (b"bytes=-40", 10, [(0, 9)]),
        (b"bytes=8-20", 10, [(8, 9)]),
        (b"bytes=3-1", 10, None),
        (b"bytes=10-", 10, []),
        (b"bytes=-0", 10, []),
        (b"items=0-1", 10, None),
        (b"bytes=a-b", 10, None),
        (b"bytes=", 10, None),
        (b"bytes=0-1, 4-5", 10, [(0, 1), (4, 5)]),
        (b"bytes=" + b",".join(b"%d-%d" % (i, i) for i in range(17)), 100, None),
    ],
)
def test_parse_ranges(value: bytes, size: int, expected: object) -> None:
    assert parse_ranges(value, size) == expected


def test_precompressed_siblings(root: Path) -> None:
    def enc(accept: str | None) -> tuple[str | None, bytes, str | None]:
        out = one(root, get("/app.js", *([f"Accept-Encoding: {accept}"] if accept else [])))
        assert header(out, "Vary") == "Accept-Encoding"
        assert header(out, "Content-Type") == "text/javascript"
        return header(out, "Content-Encoding"), body(out), header(out, "ETag")

    assert enc(None)[:2] == (None, (root / "app.js").read_bytes())
    assert enc("gzip, deflate, br")[:2] == ("br", b"BR")
    assert enc("gzip")[:2] == ("gzip", b"GZ")
    assert enc("br;q=0.5, gzip;q=0.9")[:2] == ("gzip", b"GZ")
    assert enc("br;q=0, gzip")[:2] == ("gzip", b"GZ")
    assert enc("identity")[:2] == (None, (root / "app.js").read_bytes())
    assert enc("gzip;q=0.5, identity")[0] is None
    assert enc("*")[0] == "br"
    assert enc("br")[2] != enc("gzip")[2] != enc(None)[2]  # a tag per representation
    assert header(one(root, get("/small.txt")), "Vary") is None


def test_cache_control_is_configurable(root: Path) -> None:
    assert header(one(root, get("/small.txt")), "Cache-Control") == "public, max-age=60"
    assert header(one(root, get("/small.txt"), cache_control=None), "Cache-Control") is None
    out = one(root, get("/small.txt"), cache_control="no-cache")
    assert header(out, "Cache-Control") == "no-cache"


def test_error_pages_come_from_the_site_when_it_has_them(root: Path) -> None:
    out = one(root, get("/nope"))
    assert b"<h1>404 Not Found</h1>" in body(out)
    assert header(out, "Content-Type") == "text/html; charset=utf-8"
    (root / "404.html").write_bytes(b"<p>custom</p>\n")
    out = one(root, get("/nope"))
    assert body(out) == b"<p>custom</p>\n" and header(out, "Content-Type") == "text/html"
    assert status_of(out) == 404


def test_access_log_in_combined_format(root: Path, tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    site = Site(cfg(root, access_log=log))
    c = Connection(site, T0, peer="198.18.0.1")
    c.receive(get("/small.txt", "Referer: http://a/", 'User-Agent: t "1"'), T0)
    c.receive(get("/nope"), T0)
    site.flush()
    lines = log.read_text().splitlines()
    pat = r"198\.18\.0\.1 - - \[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d \+0000\] "
    assert re.fullmatch(
        pat + r'"GET /small.txt HTTP/1.1" 200 64 "http://a/" "t \\x221\\x22"', lines[0]
    )
    assert re.fullmatch(pat + r'"GET /nope HTTP/1.1" 404 \d+ "-" "-"', lines[1])
    site.close()


# ---------------------------------------------------------------- path safety


@pytest.mark.parametrize(
    ("target", "segments", "trailing"),
    [
        (b"/", (), True),
        (b"/a/./b/../c", ("a", "c"), False),
        (b"/a/b/..", ("a",), True),
        (b"/../../etc/passwd", ("etc", "passwd"), False),
        (b"/%2e%2e/%2e%2e/x", ("x",), False),
        (b"/%252e%252e/x", ("%2e%2e", "x"), False),
        (b"//a//b/", ("a", "b"), True),
        (b"/a%20b?q=1", ("a b",), False),
        (b"http://h/x/y?z", ("x", "y"), False),
    ],
)
def test_parse_target(target: bytes, segments: tuple[str, ...], trailing: bool) -> None:
    t = parse_target(target)
    assert (t.segments, t.trailing_slash) == (segments, trailing)


@pytest.mark.parametrize(
    "target",
    [b"/a%2fb", b"/a%2Fb", b"/a%5cb", b"/a\\b", b"/a%00b", b"/a%0ab", b"/%zz", b"/a%2", b"*"],
)
def test_parse_target_refuses(target: bytes) -> None:
    with pytest.raises(BadRequest):
        parse_target(target)


@pytest.mark.parametrize(
    ("target", "status"),
    [
        ("/../outside/secret.txt", 404),
        ("/%2e%2e/outside/secret.txt", 404),
        ("/%252e%252e/outside/secret.txt", 404),
        ("/..%2foutside%2fsecret.txt", 400),
        ("/..%5coutside%5csecret.txt", 400),
        ("/..\\outside\\secret.txt", 400),
        ("/small.txt%00.html", 400),
        ("/out.txt", 404),
        ("/.secret", 404),
        ("/docs/.hidden", 404),
        ("/%2esecret", 404),
        ("/small.txt/", 404),
    ],
)
def test_traversal_never_leaves_the_root(root: Path, target: str, status: int) -> None:
    out = one(root, get(target))
    assert status_of(out) == status, out[:200]
    assert b"TOPSECRET" not in out and b"secret\n" not in body(out)


def test_symlink_policy(root: Path) -> None:
    assert body(one(root, get("/in.txt"))) == (root / "small.txt").read_bytes()
    out = one(root, get("/out.txt"), follow_symlinks_outside=True)
    assert body(out) == b"TOPSECRET\n"
    assert body(one(root, get("/.well-known/security.txt"))) == b"Contact: x\n"


# ---------------------------------------------------------------- limits


def test_limits_414_431_413(root: Path) -> None:
    assert status_of(one(root, get("/" + "a" * 9000))) == 414
    c = Connection(cfg(root), T0)  # the line arrives without its end: 414 all the same
    assert status_of(c.receive(b"GET /" + b"a" * 9000, T0)) == 414 and c.closed
    assert status_of(one(root, get("/", *[f"X-{i}: {'v' * 100}" for i in range(200)]))) == 431
    c = Connection(cfg(root), T0)
    assert status_of(c.receive(b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 5000, T0)) == 431
    out = one(root, get("/", "Content-Length: 5") + b"hello")
    assert status_of(out) == 413 and header(out, "Connection") == "close"
    chunked = get("/", "Transfer-Encoding: chunked") + b"5\r\nhello\r\n0\r\n\r\n"
    assert status_of(one(root, chunked)) == 413
    out = one(root, get("/", "Content-Length: 5") + b"hello" + get("/"), max_body=10)
    assert [status_of(r) for r in re.split(rb"(?=HTTP/1\.1 )", out) if r] == [200, 200]
    c = Connection(cfg(root, max_body=10), T0)
    out = c.receive(get("/", "Content-Length: 5", "Expect: 100-continue"), T0)
    assert out == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert status_of(c.receive(b"hello", T0)) == 200


def test_connection_close_and_max_requests(root: Path) -> None:
    c = Connection(cfg(root), T0)
    out = c.receive(get("/small.txt", "Connection: close") + get("/small.txt"), T0)
    assert out.count(b"HTTP/1.1 200") == 1 and header(out, "Connection") == "close" and c.closed
    c = Connection(cfg(root, max_keepalive_requests=2), T0)
    assert header(c.receive(get("/small.txt"), T0), "Connection") is None
    assert header(c.receive(get("/small.txt"), T0), "Connection") == "close"
    assert c.closed


def test_http_1_0(root: Path) -> None:
    c = Connection(cfg(root), T0)
    out = c.receive(b"GET /small.txt HTTP/1.0\r\n\r\n", T0)
    assert out.startswith(b"HTTP/1.1 200 OK\r\n") and header(out, "Connection") == "close"
    assert header(out, "Content-Length") == "64" and header(out, "Transfer-Encoding") is None
    assert c.closed
    c = Connection(cfg(root), T0)
    ka = b"GET /small.txt HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
    out = c.receive(ka + ka, T0)
    assert out.count(b"\r\nConnection: keep-alive\r\n") == 2 and not c.closed
    assert header(c.receive(b"GET / HTTP/1.0\r\n\r\n", T0), "Connection") == "close"


# ---------------------------------------------------------------- timers


def test_header_deadline_gives_408_then_close(root: Path) -> None:
    c = Connection(cfg(root, header_timeout_s=2.0), T0)
    assert c.receive(b"GET / HTTP/1.1\r\nHo", T0 + 0.5) == b""
    assert c.deadline == pytest.approx(T0 + 2.0)  # counted from the connect
    assert c.timer(T0 + 1.9) == b""
    out = c.timer(T0 + 2.0)
    assert status_of(out) == 408 and header(out, "Connection") == "close" and c.closed


def test_idle_connections_close_silently(root: Path) -> None:
    c = Connection(cfg(root, header_timeout_s=2.0, keepalive_timeout_s=5.0), T0)
    assert c.timer(T0 + 2.0) == b"" and c.abort  # connected, never sent anything
    c = Connection(cfg(root, header_timeout_s=2.0, keepalive_timeout_s=5.0), T0)
    c.receive(get("/small.txt"), T0 + 1)
    assert c.deadline == pytest.approx(T0 + 6)
    c.receive(b"GET /small.txt HTTP/1.1\r\n", T0 + 3)  # the next request, slowly
    assert c.deadline == pytest.approx(T0 + 5)
    assert status_of(c.timer(T0 + 5)) == 408
    c = Connection(cfg(root, keepalive_timeout_s=5.0), T0)
    c.receive(get("/small.txt"), T0)
    assert c.timer(T0 + 5) == b"" and c.abort


def test_drain(root: Path) -> None:
    idle = Connection(cfg(root), T0)
    idle.receive(get("/small.txt"), T0)
    idle.drain(T0)
    assert idle.closed
    busy = Connection(cfg(root), T0)
    busy.receive(b"GET /small.txt HTTP/1.1\r\n", T0)
    busy.drain(T0)
    assert not busy.closed
    out = busy.receive(b"Host: x\r\n\r\n", T0)
    assert status_of(out) == 200 and header(out, "Connection") == "close" and busy.closed


# ---------------------------------------------------------------- streaming and cache


def test_large_files_are_streamed_chunk_by_chunk(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[int] = []
    real_pread = os.pread

    def pread(fd: int, n: int, off: int) -> bytes:
        reads.append(n)
        return real_pread(fd, n, off)

    site = Site(cfg(root, stream_chunk=64 * 1024))
    Connection(site, T0).receive(get("/small.txt"), T0)  # cached before counting
    monkeypatch.setattr(connection_mod.os, "pread", pread)
    c = Connection(site, T0)
    first = c.receive(get("/big.bin") + get("/small.txt"), T0)
    pieces = [first]
    assert not c.wants_input and c.has_output
    while c.has_output:
        pieces.append(c.pull(T0))
    assert reads and max(reads) <= 64 * 1024 and sum(reads) == BIG
    assert all(len(p) <= 64 * 1024 + 1024 for p in pieces)
    out = b"".join(pieces)
    first_response = out[: out.index(b"HTTP/1.1 200", 10)]
    assert body(first_response) == (root / "big.bin").read_bytes()
    assert status_of(out[len(first_response) :]) == 200 and c.wants_input


def test_streamed_response_cut_short_is_recorded_and_releases_the_file(root: Path) -> None:
    records: list[RequestRecord] = []
    c = Connection(cfg(root), T0, on_request=records.append)
    out = c.receive(get("/big.bin"), T0)
    fd = c._reply.fd if c._reply else -1
    assert fd >= 0
    c.close(T0 + 1)
    assert [(r.status, r.bytes_sent) for r in records] == [(200, len(out))]
    with pytest.raises(OSError):
        os.fstat(fd)


def test_small_files_are_cached_and_revalidated_about_once_a_second(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = root / "small.txt"
    site = Site(cfg(root))
    stats: list[str] = []
    real_stat = os.stat

    def counting_stat(path: object, *a: object, **kw: object) -> os.stat_result:
        stats.append(str(path))
        return real_stat(path, *a, **kw)  # type: ignore[arg-type]

    def fetch(now: float) -> bytes:
        c = Connection(site, now)
        return body(c.receive(get("/small.txt"), now))

    first = fetch(T0)
    monkeypatch.setattr(site_mod.os, "stat", counting_stat)
    p.write_bytes(b"X" * 64)
    os.utime(p, ns=(p.stat().st_atime_ns, p.stat().st_mtime_ns + 5_000_000_000))
    stats.clear()
    assert [fetch(T0 + 0.1 * i) for i in range(1, 10)] == [first] * 9  # from memory
    assert [s for s in stats if s.endswith("small.txt")] == []
    assert fetch(T0 + 1.0) == b"X" * 64  # revalidated: one stat of the file
    assert len([s for s in stats if s.endswith("small.txt")]) == 1


def test_internal_errors_become_500_not_exceptions(
    root: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    site = Site(cfg(root))

    def broken(*_: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(site, "respond", broken)
    c = Connection(site, T0)
    out = c.receive(get("/"), T0)
    assert status_of(out) == 500 and c.closed
    assert "boom" in capsys.readouterr().err


def test_legacy_shape_path_and_no_clock(root: Path) -> None:
    """Connection(root) and receive(data) without a clock still work (test_cli.py)."""
    c = Connection(root)
    assert c.receive(get("/small.txt")).startswith(b"HTTP/1.1 200 OK\r\n")


# ---------------------------------------------------------------- the default site


def test_default_site_is_served_whole() -> None:
    """static/ (installed as appliance.static): the page, its stylesheet and image, and its
    own 404 page for a missing address."""
    from appliance.cli import DEFAULT_ROOT

    site = Site(SiteConfig(root=DEFAULT_ROOT))
    index = one_site(site, get("/"))
    assert status_of(index) == 200 and header(index, "Content-Type") == "text/html"
    page = body(index).decode()
    assert "mtcp-appliance" in page
    links = set(re.findall(r'(?:href|src)="(/[^"]*)"', page))
    assert {"/style.css", "/logo.svg"} <= links
    types = {}
    for link in sorted(links):
        out = one_site(site, get(link))
        types[link] = (status_of(out), header(out, "Content-Type"))
    assert types["/style.css"] == (200, "text/css")
    assert types["/logo.svg"] == (200, "image/svg+xml")
    assert types["/no-such-page"] == (404, "text/html")
    assert body(one_site(site, get("/no-such-page"))) == (DEFAULT_ROOT / "404.html").read_bytes()


def one_site(site: Site, request: bytes) -> bytes:
    c = Connection(site, T0)
    out = c.receive(request, T0)
    while c.has_output:
        out += c.pull(T0)
    return out


# ---------------------------------------------------------------- the shared loop, batched


class FakeNet:
    """loop.Net without sockets: three clients connect at once, each with one request;
    every call is recorded."""

    def __init__(self, stop: object, requests: list[bytes]) -> None:
        self.stop = stop
        self.requests = requests
        self.calls: list[tuple[str, object]] = []
        self.rounds = 0
        self.sent: dict[int, bytes] = {}

    def listen(self) -> int:
        return 0

    def poll(self, timeout: float) -> list[tuple[int, int]]:
        self.rounds += 1
        self.calls.append(("poll", None))
        if self.rounds == 1:
            return [(0, loop_mod.EPOLLIN)]
        if self.rounds >= 3:
            self.stop.set()  # type: ignore[attr-defined]
        return []

    def accept_many(self, max_sockets: int) -> list[tuple[object, int, str]]:
        self.calls.append(("accept_many", max_sockets))
        return [(k, k, "198.18.0.1") for k in range(1, len(self.requests) + 1)]

    def register(self, handle: object, events: int) -> None:
        self.calls.append(("register", handle))

    def modify(self, handle: object, events: int) -> None:
        self.calls.append(("modify", handle))

    def recv_many(self, handles: list[int]) -> list[bytes | OSError]:
        self.calls.append(("recv_many", list(handles)))
        return [self.requests[h - 1] for h in handles]

    def send_many(
        self, items: list[tuple[int, bytes]], close: list[bool] | None = None
    ) -> list[int | OSError]:
        self.calls.append(("send_many", [h for h, _ in items]))
        self.calls.append(("send_many_close", list(close or [])))
        for h, data in items:
            self.sent[h] = self.sent.get(h, b"") + bytes(data)
        return [len(d) for _, d in items]

    def close_many(self, handles: list[int]) -> None:
        self.calls.append(("close_many", list(handles)))

    def shutdown_write(self, handle: int) -> None:
        self.calls.append(("shutdown_write", handle))

    def close_listener(self) -> None:
        self.calls.append(("close_listener", None))

    def close(self) -> None:
        self.calls.append(("close", None))


def test_the_loop_moves_each_round_in_one_batch_per_operation(root: Path) -> None:
    import threading

    stop = threading.Event()
    reqs = [get("/small.txt"), get("/index.html", "Connection: close"), get("/nope")]
    net = FakeNet(stop, reqs)
    records: list[RequestRecord] = []
    loop_mod.run(net, Site(cfg(root)), stop, core=2, on_request=records.append)
    first_round = net.calls[: net.calls.index(("poll", None), 1)]
    names = [c[0] for c in first_round if c[0] not in ("register", "modify", "send_many_close")]
    assert names == ["poll", "accept_many", "recv_many", "send_many"]
    assert dict(first_round)["recv_many"] == [1, 2, 3]
    assert dict(first_round)["send_many"] == [1, 2, 3]
    # the one that said Connection: close is closed with its response (its FIN rides on it)
    assert dict(first_round)["send_many_close"] == [False, True, False]
    assert [status_of(net.sent[h]) for h in (1, 2, 3)] == [200, 200, 404]
    assert sorted((r.status, r.core) for r in records) == [(200, 2), (200, 2), (404, 2)]
    assert net.calls[-2:] == [("close_many", [1, 3]), ("close", None)]  # stop: all closed
