"""The HTTP server end to end: real clients (curl, http.client, raw sockets) in one network
namespace, the server in another, on both stacks:

- mtcp:  ``serve_mtcp`` on the user-level stack, afpacket on the server's veth end (which has
         no kernel address);
- linux: ``serve_linux`` on the kernel's sockets, the same address on the same kind of veth.

Every test runs against both (the ``srv`` and ``alt`` fixtures are parametrized over the
stacks), and again over HTTPS (``mtcp+tls``, ``linux+tls``: the same site on port 443 with
a certificate from a test CA that the clients trust, ``appliance.http.tls``). Responses
are compared byte for byte where the bytes are ours (Date aside).
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.http.config import RequestRecord, SiteConfig
from appliance.http.server import serve_linux
from appliance.http.site import http_date
from appliance.testing import http1
from appliance.testing.http1 import body, get, header, norm, status_of
from appliance.testing.httpserver import (
    Server,
    read_responses,
    running_server,
    start_server,
    stop_server,
)
from appliance.testing.tlsca import CA
from mtcp_core.testing import netns

pytestmark = pytest.mark.requires_root

STACKS = ["mtcp", "linux"]
SERVED = ["mtcp", "linux", "mtcp+tls", "linux+tls"]  # what srv and alt run on
BIG = 2 * 1024 * 1024 + 12345  # streamed: over small_file_limit
HUGE = 24 * 1024 * 1024  # more than both sides' socket buffers can hold
HEADER_TIMEOUT_S = 1.5
ALT_LINGER_TIME_S = 2.0
ALT_LINGER_TIMEOUT_S = 0.5
SECRET = b"TOPSECRET"


# ---------------------------------------------------------------- the site


@pytest.fixture(scope="module")
def site_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("http")
    r = base / "site"
    r.mkdir()
    (r / "index.html").write_bytes(b"<h1>hello</h1>\n")
    (r / "small.txt").write_bytes(bytes(range(48, 48 + 64)))
    (r / "big.bin").write_bytes(os.urandom(BIG))
    with open(r / "huge.bin", "wb") as f:
        f.truncate(HUGE)  # zeros
    (r / "style.css").write_text("body { color: #333; }\n")
    (r / "logo.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg"/>\n')
    (r / "data.json").write_text("{}\n")
    (r / "blob.xyz").write_bytes(b"\0\1")
    (r / "404.html").write_bytes(b"<h1>custom not found</h1>\n")
    http1.write_files(r, http1.DOCS)
    (r / "both").mkdir()
    (r / "both" / "index.html").write_text("index\n")
    (r / "both" / "default.htm").write_text("default\n")
    js = b"console.log('mtcp-appliance');\n" * 40
    (r / "app.js").write_bytes(js)
    (r / "app.js.gz").write_bytes(gzip.compress(js, mtime=0))
    (r / "app.js.br").write_bytes(b"not really brotli")
    (r / ".secret").write_text("dot secret\n")
    (r / ".well-known").mkdir()
    (r / ".well-known" / "security.txt").write_text("Contact: mailto:x@example.org\n")
    outside = base / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(SECRET + b"\n")
    (r / "out.txt").symlink_to(outside / "secret.txt")
    (r / "outdir").symlink_to(outside)
    (r / "in.txt").symlink_to(r / "small.txt")
    return r


# ---------------------------------------------------------------- servers


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CA:
    return CA(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module", params=SERVED)
def stack(request: pytest.FixtureRequest) -> str:
    """mtcp or linux (+tls): the ``srv`` and ``alt`` of one test run on the same stack."""
    reason = netns.missing_privileges()
    if reason:
        pytest.skip(reason)
    return str(request.param)


@pytest.fixture(scope="module")
def srv(stack: str, site_root: Path, ca: CA) -> Iterator[Server]:
    """The default configuration (plus an access log and a short header deadline)."""
    config = SiteConfig(
        root=site_root,
        header_timeout_s=HEADER_TIMEOUT_S,
        access_log=site_root.parent / f"access-{stack}.log",
    )
    with running_server(stack, config, ca) as server:
        yield server


@pytest.fixture(scope="module")
def alt(stack: str, site_root: Path, ca: CA) -> Iterator[Server]:
    """The other side of every switch."""
    config = SiteConfig(
        root=site_root,
        index_files=("default.htm", "index.html"),
        listing=False,
        cache_control=None,
        follow_symlinks_outside=True,
        max_body=16,
        keepalive_timeout_s=1.0,
        max_keepalive_requests=2,
        small_file_limit=0,  # everything streamed, nothing cached
        stream_chunk=16 * 1024,
        lingering_time_s=ALT_LINGER_TIME_S,
        lingering_timeout_s=ALT_LINGER_TIMEOUT_S,
    )
    with running_server(stack, config, ca) as server:
        yield server


# ---------------------------------------------------------------- raw HTTP helpers


def closed_by_server(sock: socket.socket, timeout: float = 3.0) -> bool:
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def response(status: str, headers: list[tuple[str, str]], body: bytes = b"") -> bytes:
    lines = [f"HTTP/1.1 {status}", "Date: X", "Server: mtcp-appliance"]
    lines += [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def etag(p: Path, suffix: str = "") -> str:
    st = p.stat()
    return f'"{st.st_mtime_ns // 1000:x}-{st.st_size:x}-{st.st_ino:x}{suffix}"'


def lastmod(p: Path) -> str:
    return http_date(p.stat().st_mtime).decode()


def file_headers(p: Path, ctype: str, *, cache: bool = True) -> list[tuple[str, str]]:
    h = [
        ("Content-Type", ctype),
        ("Content-Length", str(p.stat().st_size)),
        ("Last-Modified", lastmod(p)),
        ("ETag", etag(p)),
        ("Accept-Ranges", "bytes"),
    ]
    return h + [("Cache-Control", "public, max-age=60")] if cache else h


# ---------------------------------------------------------------- GET, HEAD, methods


def test_get_and_head_are_byte_exact(srv: Server) -> None:
    p = srv.root / "small.txt"
    full = response("200 OK", file_headers(p, "text/plain"), p.read_bytes())
    got = srv.exchange(get("/small.txt") + get("/small.txt", method="HEAD"), ["GET", "HEAD"])
    assert [norm(r) for r in got] == [full, full[:-64]]
    status, headers, data = srv.request("GET", "/")
    assert (status, headers["content-type"], data) == (200, "text/html", b"<h1>hello</h1>\n")
    assert headers["server"] == "mtcp-appliance"
    assert re.fullmatch(r"\w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d GMT", headers["date"])


def test_curl_gets_heads_and_downloads_a_large_file(srv: Server) -> None:
    out = srv.curl("/small.txt", "-i")
    assert (
        out.startswith(b"HTTP/1.1 200 OK\r\n")
        and body(out) == (srv.root / "small.txt").read_bytes()
    )
    head = srv.curl("/small.txt", "-I")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"\r\nContent-Length: 64\r\n" in head
    digest = hashlib.sha256((srv.root / "big.bin").read_bytes()).hexdigest()
    got = srv.curl("/big.bin")
    assert len(got) == BIG and hashlib.sha256(got).hexdigest() == digest


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS"])
def test_other_methods_get_405_with_allow(srv: Server, method: str) -> None:
    status, headers, _ = srv.request(method, "/small.txt")
    assert status == 405 and headers["allow"] == "GET, HEAD"


# ---------------------------------------------------------------- folders, types, errors


def test_index_files_listing_and_redirect(srv: Server, alt: Server) -> None:
    assert srv.request("GET", "/both/")[2] == b"index\n"
    assert alt.request("GET", "/both/")[2] == b"default\n"  # index_files order
    status, headers, _ = srv.request("GET", "/docs?x=1&y=%20")
    assert (status, headers["location"]) == (301, "/docs/?x=1&y=%20")
    listing = srv.curl("/docs", "-L").decode()  # curl follows the redirect
    assert http1.listing_links(listing) == http1.DOCS_LINKS
    assert ".hidden" not in listing and "<title>Index of /docs/</title>" in listing
    assert alt.request("GET", "/docs/")[0] == 403  # listing off


@pytest.mark.parametrize(
    ("path", "ctype"),
    [
        ("/index.html", "text/html"),
        ("/style.css", "text/css"),
        ("/logo.svg", "image/svg+xml"),
        ("/app.js", "text/javascript"),
        ("/data.json", "application/json"),
        ("/blob.xyz", "application/octet-stream"),
        ("/docs/", "text/html; charset=utf-8"),
    ],
)
def test_mime_types(srv: Server, path: str, ctype: str) -> None:
    assert srv.request("GET", path)[1]["content-type"] == ctype


def test_error_pages_template_and_site_override(srv: Server) -> None:
    status, headers, data = srv.request("GET", "/missing")
    assert (status, data) == (404, b"<h1>custom not found</h1>\n")  # <root>/404.html
    assert headers["content-type"] == "text/html"
    status, headers, data = srv.request("DELETE", "/")
    assert status == 405 and b"<h1>405 Method Not Allowed</h1>" in data  # the template
    assert headers["content-type"] == "text/html; charset=utf-8"


# ---------------------------------------------------------------- validators, ranges


def test_conditional_requests_get_304(srv: Server) -> None:
    p = srv.root / "small.txt"
    tag, lm = etag(p), lastmod(p)
    got = srv.exchange(get("/small.txt", f"If-None-Match: {tag}"))
    expected = [("Last-Modified", lm), ("ETag", tag), ("Cache-Control", "public, max-age=60")]
    assert [norm(r) for r in got] == [response("304 Not Modified", expected)]
    assert srv.request("GET", "/small.txt", {"If-Modified-Since": lm})[0] == 304
    old = "Sun, 06 Nov 1994 08:49:37 GMT"
    assert srv.request("GET", "/small.txt", {"If-Modified-Since": old})[0] == 200
    assert srv.request("GET", "/small.txt", {"If-None-Match": '"nope"'})[0] == 200
    # curl's own conditional GET
    out = srv.curl("/small.txt", "-i", "-z", lm)
    assert out.startswith(b"HTTP/1.1 304 Not Modified\r\n")


def test_single_and_multipart_ranges_byte_exact(srv: Server) -> None:
    p = srv.root / "small.txt"
    data = p.read_bytes()
    common = [("Last-Modified", lastmod(p)), ("ETag", etag(p)), ("Accept-Ranges", "bytes")]
    common.append(("Cache-Control", "public, max-age=60"))
    (got,) = srv.exchange(get("/small.txt", "Range: bytes=2-5"))
    assert norm(got) == response(
        "206 Partial Content",
        [("Content-Type", "text/plain"), ("Content-Length", "4"),
         ("Content-Range", "bytes 2-5/64"), *common],
        data[2:6],
    )  # fmt: skip
    (got,) = srv.exchange(get("/small.txt", "Range: bytes=0-1,-3"))
    boundary = (header(got, "Content-Type") or "").removeprefix("multipart/byteranges; boundary=")
    multipart = (
        f"\r\n--{boundary}\r\nContent-Type: text/plain\r\nContent-Range: bytes 0-1/64\r\n\r\n"
        f"{data[:2].decode()}"
        f"\r\n--{boundary}\r\nContent-Type: text/plain\r\nContent-Range: bytes 61-63/64\r\n\r\n"
        f"{data[61:].decode()}\r\n--{boundary}--\r\n"
    ).encode()
    assert norm(got) == response(
        "206 Partial Content",
        [("Content-Type", f"multipart/byteranges; boundary={boundary}"),
         ("Content-Length", str(len(multipart))), *common],
        multipart,
    )  # fmt: skip
    # curl, multipart ranges of the large (streamed) file
    big = (srv.root / "big.bin").read_bytes()
    out = srv.curl("/big.bin", "-i", "-r", "1000000-1000099,2000000-")
    boundary = (header(out, "Content-Type") or "").split("boundary=")[1]
    parts = body(out).split(f"\r\n--{boundary}".encode())
    assert parts[0] == b"" and parts[-1] == b"--\r\n" and len(parts) == 4
    assert parts[1].endswith(b"\r\n\r\n" + big[1000000:1000100])
    assert f"Content-Range: bytes 2000000-{BIG - 1}/{BIG}".encode() in parts[2]
    assert parts[2].endswith(b"\r\n\r\n" + big[2000000:])


def test_unsatisfiable_range_and_if_range(srv: Server) -> None:
    (got,) = srv.exchange(get("/small.txt", "Range: bytes=64-"))
    assert status_of(got) == 416 and header(got, "Content-Range") == "bytes */64"
    p = srv.root / "small.txt"
    status, _, data = srv.request("GET", "/small.txt", {"Range": "bytes=0-3", "If-Range": etag(p)})
    assert (status, data) == (206, p.read_bytes()[:4])
    status, _, data = srv.request("GET", "/small.txt", {"Range": "bytes=0-3", "If-Range": '"old"'})
    assert (status, data) == (200, p.read_bytes())


def test_precompressed_siblings_by_accept_encoding(srv: Server) -> None:
    js = (srv.root / "app.js").read_bytes()
    out = srv.curl("/app.js", "-i", "--compressed", "-H", "Accept-Encoding: gzip")
    assert header(out, "Content-Encoding") == "gzip" and body(out) == js  # curl decoded it
    assert header(out, "Vary") == "Accept-Encoding"
    for accept, coding, data in [
        ("br, gzip", "br", b"not really brotli"),
        ("gzip;q=1.0, br;q=0.5", "gzip", gzip.compress(js, mtime=0)),
        ("br;q=0", None, js),
        (None, None, js),
    ]:
        headers = {"Accept-Encoding": accept} if accept else {}
        status, h, got = srv.request("GET", "/app.js", headers)
        assert (status, h.get("content-encoding"), got) == (200, coding, data), accept
        assert h["vary"] == "Accept-Encoding" and h["content-type"] == "text/javascript"


def test_cache_control_is_configurable(srv: Server, alt: Server) -> None:
    assert srv.request("GET", "/small.txt")[1]["cache-control"] == "public, max-age=60"
    assert "cache-control" not in alt.request("GET", "/small.txt")[1]


# ---------------------------------------------------------------- path safety


TRAVERSALS = [
    "/../outside/secret.txt",
    "/../../../../etc/passwd",
    "/%2e%2e/outside/secret.txt",
    "/%2E%2E/%2e%2e/outside/secret.txt",
    "/%252e%252e/outside/secret.txt",
    "/docs/..%2f..%2foutside%2fsecret.txt",
    "/..%5c..%5coutside%5csecret.txt",
    "/..\\outside\\secret.txt",
    "/small.txt%00.html",
    "/out.txt",
    "/outdir/secret.txt",
    "//outdir//secret.txt",
    "/docs/../out.txt",
    "/.secret",
    "/docs/.hidden",
    "/%2esecret",
    "http://evil/../outside/secret.txt",
]


@pytest.mark.parametrize("target", TRAVERSALS)
def test_traversal_never_leaks_outside_the_root(srv: Server, target: str) -> None:
    (got,) = srv.exchange(get(target))
    assert status_of(got) in (400, 404), got[:100]
    assert SECRET not in got and b"dot secret" not in got and b"root:" not in got


def test_traversal_with_curl_and_symlink_policy(srv: Server, alt: Server) -> None:
    for path in ["/../outside/secret.txt", "/%2e%2e/outside/secret.txt", "/out.txt"]:
        out = srv.curl(path, "-i", "--path-as-is")
        assert out.startswith(b"HTTP/1.1 404 ") and SECRET not in out
    assert alt.request("GET", "/out.txt")[2] == SECRET + b"\n"  # follow_symlinks_outside
    assert srv.request("GET", "/in.txt")[2] == (srv.root / "small.txt").read_bytes()
    status, _, data = srv.request("GET", "/.well-known/security.txt")
    assert (status, data) == (200, b"Contact: mailto:x@example.org\n")


# ---------------------------------------------------------------- limits, keep-alive


def test_request_limits_414_431_413(srv: Server, alt: Server) -> None:
    (got,) = srv.exchange(get("/" + "a" * 9000))
    assert status_of(got) == 414 and header(got, "Connection") == "close"
    (got,) = srv.exchange(get("/", *[f"X-{i}: {'v' * 200}" for i in range(100)]))
    assert status_of(got) == 431
    (got,) = srv.exchange(get("/", "Content-Length: 10") + b"0123456789")
    assert status_of(got) == 413 and header(got, "Connection") == "close"
    assert srv.request("POST", "/", body=b"x" * 100)[0] == 413
    # a bounded body is read (and ignored)
    got = alt.exchange(get("/small.txt", "Content-Length: 10") + b"0123456789" + get("/in.txt"),
                       ["GET", "GET"])  # fmt: skip
    assert [status_of(r) for r in got] == [200, 200]
    (got,) = alt.exchange(get("/small.txt", "Content-Length: 17") + b"x" * 17)
    assert status_of(got) == 413


def send_then_read_late(sock: socket.socket, first: bytes, more: bytes, total: int) -> bytes:
    """Sends ``first``, then ``more`` again and again up to ``total`` bytes (a client that
    keeps sending its request after the server answered), waits 0.5 s, and reads
    everything until the server's end of stream. A reset at any point raises."""
    sock.settimeout(10)
    sock.sendall(first)
    sent = len(first)
    while sent < total:
        sock.sendall(more)
        sent += len(more)
    time.sleep(0.5)
    got = b""
    while data := sock.recv(65536):
        got += data
    return got


@pytest.mark.parametrize("status", [431, 413])
def test_lingering_close_gets_the_error_to_a_client_still_sending(
    srv: Server, status: int
) -> None:
    """An error answered before the request was read in full (431: a head too large, 413:
    a body too large) is followed by a lingering close: the server shuts its side, reads and
    drops what keeps coming, and closes when the client has closed or the time is up. A
    client that keeps sending 256 KiB and reads only after 0.5 s gets the whole response
    and an orderly end of stream, not a reset that makes its kernel drop the response."""
    if status == 431:
        first = b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: " + b"v" * 20000 + b"\r\n"
        more = b"X-More: " + b"w" * 1000 + b"\r\n"
    else:
        first = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n"
        more = b"x" * 8192
    with srv.connect() as s:
        got = send_then_read_late(s, first, more, 256 * 1024)
        s.shutdown(socket.SHUT_WR)
    (resp,) = read_responses_from(got, ["GET"])
    assert status_of(resp) == status and header(resp, "Connection") == "close"


def test_lingering_close_is_bounded_in_time(alt: Server) -> None:
    """A client that neither closes nor sends is closed lingering_timeout after the error;
    one that keeps sending slowly is closed lingering_time after it at the latest."""
    head = b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: " + b"v" * 20000 + b"\r\n"
    with alt.connect() as s:
        s.sendall(head)
        (resp,) = read_responses_until_eof(s)  # the response, then the server's FIN
        assert status_of(resp) == 431
        time.sleep(ALT_LINGER_TIMEOUT_S * 3)  # silent: the server gives up and closes
        with pytest.raises(OSError):  # so a late byte is answered with a reset
            for _ in range(2):
                s.sendall(b"X-Late: 1\r\n")
                time.sleep(0.2)
    with alt.connect() as s:
        s.sendall(head)
        t0 = time.monotonic()
        ended = None
        while time.monotonic() - t0 < ALT_LINGER_TIME_S + 5:
            try:
                s.sendall(b"X-Slow: " + b"s" * 100 + b"\r\n")
            except OSError:  # the server closed while bytes were still coming: a reset
                ended = time.monotonic() - t0
                break
            time.sleep(ALT_LINGER_TIMEOUT_S / 4)
    assert ended is not None, "the server lingered past lingering_time"
    assert ALT_LINGER_TIME_S * 0.8 <= ended < ALT_LINGER_TIME_S + 3, ended


def read_responses_until_eof(sock: socket.socket) -> list[bytes]:
    sock.settimeout(10)
    got = b""
    while data := sock.recv(65536):
        got += data
    return read_responses_from(got, ["GET"])


def read_responses_from(data: bytes, methods: list[str]) -> list[bytes]:
    """read_responses over bytes already received."""
    a, b = socket.socketpair()
    with a, b:
        a.sendall(data)
        a.shutdown(socket.SHUT_WR)
        return read_responses(b, methods)


def test_pipelined_requests_answered_in_order_and_close_honoured(srv: Server) -> None:
    with srv.connect() as s:
        s.sendall(get("/small.txt") + get("/missing") + get("/", method="HEAD") + get("/"))
        got = read_responses(s, ["GET", "GET", "HEAD", "GET"])
        assert [status_of(r) for r in got] == [200, 404, 200, 200]
        assert body(got[0]) == (srv.root / "small.txt").read_bytes()
        assert body(got[3]) == b"<h1>hello</h1>\n" and body(got[2]) == b""
        assert not closed_by_server(s, 0.2)  # keep-alive
        s.sendall(get("/small.txt", "Connection: close") + get("/small.txt"))
        (last,) = read_responses(s, ["GET"])
        assert header(last, "Connection") == "close"
        assert closed_by_server(s)  # and the request after it is not answered


def test_http_1_0(srv: Server) -> None:
    out = srv.curl("/small.txt", "-i", "-0")  # curl speaking HTTP/1.0
    assert (
        out.startswith(b"HTTP/1.1 200 OK\r\n")
        and body(out) == (srv.root / "small.txt").read_bytes()
    )
    with srv.connect() as s:
        s.sendall(b"GET /small.txt HTTP/1.0\r\n\r\n")
        (got,) = read_responses(s, ["GET"])
        assert header(got, "Connection") == "close" and header(got, "Transfer-Encoding") is None
        assert closed_by_server(s)
    with srv.connect() as s:
        s.sendall(b"GET /small.txt HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        (got,) = read_responses(s, ["GET"])
        assert header(got, "Connection") == "keep-alive" and not closed_by_server(s, 0.2)
        s.sendall(b"GET /index.html HTTP/1.0\r\n\r\n")
        (got,) = read_responses(s, ["GET"])
        assert body(got) == b"<h1>hello</h1>\n" and closed_by_server(s)


def test_keepalive_idle_timeout_and_max_requests(alt: Server) -> None:
    with alt.connect() as s:
        s.sendall(get("/small.txt"))
        (got,) = read_responses(s, ["GET"])
        assert header(got, "Connection") is None
        t0 = time.monotonic()
        assert closed_by_server(s, 3.0)  # keepalive_timeout_s=1.0
        assert 0.7 < time.monotonic() - t0 < 2.5
    with alt.connect() as s:  # max_keepalive_requests=2
        s.sendall(get("/small.txt") + get("/small.txt") + get("/small.txt"))
        got = read_responses(s, ["GET", "GET"])
        assert [header(r, "Connection") for r in got] == [None, "close"]
        assert closed_by_server(s)


def test_slowloris_is_cut_off_at_the_header_deadline(srv: Server) -> None:
    """A client trickling its head gets 408 and a close at the deadline; others are
    served meanwhile."""
    with srv.connect() as s:
        t0 = time.monotonic()
        s.sendall(b"GET / HTTP/1.1\r\n")
        served, got, cut = 0, b"", None
        s.settimeout(0.25)
        while time.monotonic() - t0 < 6:
            try:
                data = s.recv(4096)
            except TimeoutError:
                s.sendall(b"X-Slow: 1\r\n")  # one more header line, slowly
                assert srv.request("GET", "/small.txt")[0] == 200
                served += 1
                continue
            except ConnectionResetError:
                break
            if not data:
                break
            cut = cut or time.monotonic() - t0
            got += data
    assert got.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), got[:100]
    assert header(got, "Connection") == "close"
    assert cut is not None and HEADER_TIMEOUT_S - 0.2 < cut < HEADER_TIMEOUT_S + 1.5
    assert served >= 2


# ---------------------------------------------------------------- log and records


def test_access_log_and_request_records(srv: Server) -> None:
    n = len(srv.records)
    with srv.connect() as s:
        s.sendall(get("/small.txt?q=1", "Referer: http://r.example/", "User-Agent: t/1"))
        (got,) = read_responses(s, ["GET"])
    deadline = time.monotonic() + 5
    while len(srv.records) <= n and time.monotonic() < deadline:
        time.sleep(0.01)
    rec = srv.records[n]
    assert (rec.method, rec.status, rec.bytes_sent, rec.core) == ("GET", 200, len(got), 0)
    assert 0 <= rec.duration_s < 5
    assert srv.config.access_log is not None
    line = ""
    while time.monotonic() < deadline:  # written at the end of the loop's round
        line = srv.config.access_log.read_text().splitlines()[-1]
        if "r.example" in line:
            break
        time.sleep(0.01)
    assert re.fullmatch(
        re.escape(srv.client_ip) + r" - - \[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d \+0000\] "
        r'"GET /small.txt\?q=1 HTTP/1.1" 200 64 "http://r.example/" "t/1"',
        line,
    ), line


# ---------------------------------------------------------------- draining, stopping


@pytest.mark.parametrize("stack", STACKS)
def test_draining_finishes_requests_in_flight_then_returns(
    netlab: netns.Lab, site_root: Path, stack: str
) -> None:
    srv, mstack = start_server(netlab, stack, SiteConfig(root=site_root))
    try:
        idle, busy = srv.connect(), srv.connect()
        idle.sendall(get("/small.txt"))
        read_responses(idle, ["GET"])
        busy.sendall(b"GET /small.txt HTTP/1.1\r\n")  # a request in flight
        time.sleep(0.1)
        srv.draining.set()
        assert closed_by_server(idle, 2.0)  # idle keep-alive: closed at once
        busy.sendall(b"Host: t\r\n\r\n")
        (got,) = read_responses(busy, ["GET"])
        assert status_of(got) == 200 and header(got, "Connection") == "close"
        assert closed_by_server(busy)
        srv.thread.join(3)
        assert not srv.thread.is_alive(), "serve did not return once drained"
        try:  # the listener is gone: refused (or nothing at all)
            srv.connect(timeout=1.0).close()
            connected = True
        except OSError:
            connected = False
        assert not connected
        idle.close()
        busy.close()
    finally:
        stop_server(srv, mstack)


def test_stop_returns_with_connections_open(netlab: netns.Lab, site_root: Path) -> None:
    srv, mstack = start_server(netlab, "mtcp", SiteConfig(root=site_root))
    conns = [srv.connect() for _ in range(3)]
    conns[0].sendall(b"GET /big.bin HTTP/1.1\r\nHost: t\r\n\r\n")  # and never read
    time.sleep(0.2)
    t0 = time.monotonic()
    stop_server(srv, mstack)
    assert time.monotonic() - t0 < 1.5
    for c in conns:
        c.close()


def test_large_files_go_out_as_fast_as_the_client_reads(alt: Server) -> None:
    """Flow control: a client that does not read holds the response back (the server hands
    the stack one chunk at a time, on EPOLLOUT); once it reads, all of it arrives."""

    def huge_records() -> list[RequestRecord]:
        return [r for r in alt.records if r.bytes_sent > HUGE // 2]

    before = len(huge_records())
    with alt.connect(10, rcvbuf=64 * 1024) as s:
        s.sendall(get("/huge.bin"))
        time.sleep(0.5)
        assert len(huge_records()) == before  # not handed over whole: the client reads nothing
        first = s.recv(65536)
        total = first.index(b"\r\n\r\n") + 4 + HUGE  # the head, then the file
        got = len(first)
        deadline = time.monotonic() + 30
        while got < total and time.monotonic() < deadline:
            data = s.recv(1 << 20)
            if not data:
                break
            got += len(data)
        assert got == total
    deadline = time.monotonic() + 5
    while len(huge_records()) == before and time.monotonic() < deadline:
        time.sleep(0.01)
    (rec,) = huge_records()[before:]
    assert (rec.status, rec.bytes_sent) == (200, got)


def test_linux_reuse_port(netlab: netns.Lab, site_root: Path) -> None:
    """reuse_port: several loops (one per worker) share the port; without it, a second
    bind fails."""
    ns = netlab.namespace("rport")
    stop = threading.Event()
    threads, readies, errors = [], [], []

    def serve(reuse: bool, ready: threading.Event) -> None:
        try:
            with netns.entered(ns.name):
                config = SiteConfig(root=site_root)
                serve_linux("127.0.0.1", 8080, config, stop, reuse_port=reuse, ready=ready)
        except OSError as exc:
            errors.append(exc)
        finally:
            ready.set()

    try:
        for reuse in (True, True, False):
            ready = threading.Event()
            t = threading.Thread(target=serve, args=(reuse, ready), daemon=True)
            t.start()
            assert ready.wait(5)
            threads.append(t)
            readies.append(ready)
        assert len(errors) == 1 and errors[0].errno == 98  # the third: EADDRINUSE

        def fetch() -> int:
            conn = http.client.HTTPConnection("127.0.0.1", 8080, timeout=5)
            conn.request("GET", "/small.txt")
            status = conn.getresponse().status
            conn.close()
            return status

        assert [ns.call(fetch) for _ in range(6)] == [200] * 6
    finally:
        stop.set()
        for t in threads:
            t.join(5)
    assert not any(t.is_alive() for t in threads)
