"""Property-based tests of the sans-I/O core: whatever bytes arrive, in whatever pieces,
the connection answers with well-formed responses or closes; it never raises, never hits
an internal error (500) and never serves a file from outside the root."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.http.config import RequestRecord, SiteConfig
from appliance.http.connection import Connection
from appliance.http.site import Site

T0 = 1000.0
SETTINGS = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
STATUS_LINE = re.compile(rb"HTTP/1\.1 (\d{3}) [^\r\n]*\r\n")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Site:
    base = tmp_path_factory.mktemp("fuzz")
    root = base / "site"
    root.mkdir()
    (root / "index.html").write_text("<h1>home</h1>\n")
    (root / "a.txt").write_text("a" * 100)
    (root / "big.bin").write_bytes(b"b" * 5000)
    (root / "d").mkdir()
    (root / "d" / "x.txt").write_text("x\n")
    (root / "app.js").write_text("js\n")
    (root / "app.js.gz").write_bytes(b"gz")
    (root / ".secret").write_text("TOPSECRET-DOT\n")
    (base / "outside.txt").write_text("TOPSECRET-OUT\n")
    (root / "link").symlink_to(base / "outside.txt")
    cfg = SiteConfig(
        root=root,
        small_file_limit=1000,  # big.bin is streamed
        stream_chunk=1024,
        max_request_line=256,
        max_header_bytes=512,
        max_body=8,
    )
    return Site(cfg)


def drive(
    site: Site,
    chunks: list[bytes],
    eof: bool = True,
    *,
    timers: bool = True,
    fast: bool = True,
    on_request: Callable[[RequestRecord], None] | None = None,
) -> tuple[bytes, Connection]:
    """Feeds the chunks as an adapter would (reads only while it wants input), then the end
    of the stream and the timers; returns everything sent."""
    c = Connection(site, T0, fast=fast, on_request=on_request)
    out = []
    now = T0
    for chunk in chunks:
        now += 0.001
        while c.has_output:
            out.append(c.pull(now))
        if not c.wants_input:
            break
        out.append(c.receive(chunk, now))
    while c.has_output:
        out.append(c.pull(now))
    if eof and c.wants_input:
        out.append(c.receive(b"", now))
        while c.has_output:
            out.append(c.pull(now))
    for _ in range(3 if timers else 0):
        now = max(now, c.deadline) + 0.001
        out.append(c.timer(now))
        while c.has_output:
            out.append(c.pull(now))
    c.close(now)
    return b"".join(out), c


def check(data: bytes, c: Connection, capsys: pytest.CaptureFixture[str]) -> None:
    assert c.closed or c.abort
    assert b"TOPSECRET" not in data
    if data:
        assert STATUS_LINE.match(data), data[:100]
    statuses = [int(m.group(1)) for m in STATUS_LINE.finditer(data)]
    assert 500 not in statuses
    assert "internal error" not in capsys.readouterr().err


@SETTINGS
@given(st.lists(st.binary(max_size=300), max_size=6))
def test_any_bytes_get_a_response_or_a_close(
    site: Site, capsys: pytest.CaptureFixture[str], chunks: list[bytes]
) -> None:
    data, c = drive(site, chunks)
    check(data, c, capsys)


_METHODS = st.sampled_from([b"GET", b"HEAD", b"POST", b"OPTIONS", b"G\x00T", b""])
_SEGMENTS = st.sampled_from(
    [b"..", b".", b"%2e%2e", b"%252e", b"%2f", b"%5c", b"\\", b"%00", b"a.txt", b"d", b"link",
     b".secret", b"%2esecret", b"", b"index.html", b"big.bin", b"app.js", b"%", b"%zz",
     b"\xff", b"outside.txt", b"?q=1", b"#f"]
)  # fmt: skip
_HEADERS = st.sampled_from(
    [b"Range: bytes=0-3,-2", b"Range: bytes=99999-", b"Range: bytes=x", b"If-None-Match: *",
     b"If-Modified-Since: yesterday", b"Accept-Encoding: gzip;q=0.5, br", b"Connection: close",
     b"Content-Length: 4", b"Content-Length: 100", b"Transfer-Encoding: chunked",
     b"Expect: 100-continue", b"If-Range: \"x\"", b"Host: x", b"X: " + b"y" * 600, b"bad header"]
)  # fmt: skip


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    method = draw(_METHODS)
    path = b"/" + b"/".join(draw(st.lists(_SEGMENTS, max_size=5)))
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2", b""]))
    headers = draw(st.lists(_HEADERS, max_size=4))
    body = draw(st.sampled_from([b"", b"abcd", b"4\r\nabcd\r\n0\r\n\r\n"]))
    return b"%s %s %s\r\n%s\r\n%s" % (
        method,
        path,
        version,
        b"".join(h + b"\r\n" for h in headers),
        body,
    )


@SETTINGS
@given(st.lists(requests(), min_size=1, max_size=4), st.integers(min_value=1, max_value=64))
def test_request_like_input_in_any_split(
    site: Site, capsys: pytest.CaptureFixture[str], reqs: list[bytes], piece: int
) -> None:
    stream = b"".join(reqs)
    chunks = [stream[i : i + piece] for i in range(0, len(stream), piece)]
    data, c = drive(site, chunks)
    check(data, c, capsys)
    # every response is complete: its Content-Length worth of body (none for a HEAD, a
    # 100 or a 304) follows its head, and the next response starts right after it
    pos = 0
    while pos < len(data):
        m = STATUS_LINE.match(data, pos)
        assert m, data[pos : pos + 80]
        end = data.index(b"\r\n\r\n", pos) + 4
        length = re.search(rb"\r\nContent-Length: (\d+)\r\n", data[pos:end])
        with_body = end + (int(length.group(1)) if length else 0)
        if int(m.group(1)) not in (100, 304) and boundary(data, with_body):
            pos = with_body
        else:
            assert boundary(data, end), data[pos : pos + 300]
            pos = end  # a HEAD response


def boundary(data: bytes, pos: int) -> bool:
    return pos == len(data) or bool(STATUS_LINE.match(data, pos))


# ---------------------------------------------------------------- the fast path

_FAST_METHODS = st.sampled_from([b"GET", b"HEAD", b"GET", b"POST", b"get"])
_FAST_TARGETS = st.sampled_from(
    [b"/", b"/a.txt", b"/big.bin", b"/d", b"/d/x.txt", b"/app.js", b"/.secret", b"/%2e%2e/x",
     b"/nope", b"/a.txt?x=1", b"/" + b"p" * 300, b"*", b"/\x7f", b"/a\xff"]
)  # fmt: skip
_FAST_FIELDS = st.sampled_from(
    [b"Host: x", b"host:x", b"HOST: \t x \t", b"Host:", b"Host: a, b", b"User-Agent: t/1 (x)",
     b"Connection: close", b"connection: Keep-Alive", b"Connection: keep-alive, close",
     b"Connection: upgrade", b"Upgrade: websocket", b"Accept-Encoding: gzip", b"Accept-Encoding:",
     b"If-None-Match: *", b"Range: bytes=0-1", b"Referer: http://r/", b"X-Obs: caf\xe9",
     b"X-Empty:", b"X-Sp: a  b", b"X-Tab:\tv", b"Content-Length: 0", b"Content-Length: 2",
     b"Transfer-Encoding: chunked", b"Expect: 100-continue", b"Bad Name: v", b" folded",
     b"X-Nul: a\x00b", b"X-Cr: a\rb", b"X-Big: " + b"y" * 500, b"X:y"]
)  # fmt: skip


@st.composite
def simple_requests(draw: st.DrawFn) -> bytes:
    """Requests near the fast path's border: most are simple GETs and HEADs, the rest differ
    in one way the fast path must hand to h11."""
    method = draw(_FAST_METHODS)
    target = draw(_FAST_TARGETS)
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0", b"HTTP/1.2"]))
    fields = draw(st.lists(_FAST_FIELDS, max_size=4))
    if draw(st.booleans()):
        fields.insert(0, b"Host: h")
    end = draw(st.sampled_from([b"\r\n", b"\r\n", b"\n"]))
    return b"%s %s %s\r\n%s%s" % (method, target, version, b"".join(f + end for f in fields), end)


def _drive_both(site: Site, reqs: list[bytes], fast: bool) -> tuple[bytes, list[tuple], int]:
    """Each request in a receive of its own, as a client that waits for each response."""
    records: list[tuple] = []

    def record(r: RequestRecord) -> None:
        records.append((r.method, r.status, r.bytes_sent))

    raw, c = drive(site, reqs, eof=False, timers=False, fast=fast, on_request=record)
    data = re.sub(rb"\r\nDate: [^\r]*\r\n", b"\r\nDate: -\r\n", raw)
    return data, records, c.fast_requests


@SETTINGS
@given(st.lists(simple_requests(), min_size=1, max_size=4))
def test_fast_path_answers_exactly_as_h11(site: Site, reqs: list[bytes]) -> None:
    """The fast path is an optimisation only: for any request, fast or not, the bytes sent,
    the close and the metrics records are the same as on h11's path."""
    fast, fast_records, taken = _drive_both(site, reqs, fast=True)
    slow, slow_records, none = _drive_both(site, reqs, fast=False)
    assert fast == slow
    assert fast_records == slow_records
    assert none == 0


@pytest.mark.parametrize(
    "req",
    [
        b"GET /a.txt HTTP/1.1\r\nHost: x\r\nUser-Agent: wrk\r\n\r\n",
        b"HEAD / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"GET /d/x.txt HTTP/1.0\r\n\r\n",
        b"GET /big.bin HTTP/1.1\r\nhost:   x  \r\nX-Obs: caf\xe9\r\n\r\n",
    ],
)
def test_fast_path_is_taken_for_simple_requests(site: Site, req: bytes) -> None:
    _, records, taken = _drive_both(site, [req, req], fast=True)
    assert records and records[0][1] in (200, 301)
    assert taken == len(records)


@pytest.mark.parametrize(
    "req",
    [
        b"GET /a.txt HTTP/1.1\r\n\r\n",  # no Host: 400 from h11
        b"GET /a.txt HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"GET /a.txt HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
        b"GET /a.txt HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n",
        b"GET /a.txt HTTP/1.1\nHost: a\n\n",
        b"POST /a.txt HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET /a.txt HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",  # pipelined
    ],
)
def test_fast_path_leaves_the_rest_to_h11(site: Site, req: bytes) -> None:
    _, _, taken = _drive_both(site, [req], fast=True)
    assert taken == 0


def test_fast_path_regex_rejects_hostile_whitespace_without_backtracking() -> None:
    """Possessive quantifiers: a long run of spaces inside a header value that never ends in
    a valid field is rejected; every repetition in the grammar is possessive."""
    from appliance.http import connection as hc

    value = b"a" + b" \t" * 3000 + b"\x00"
    head = b"GET / HTTP/1.1\r\nHost: x\r\nX: " + value + b"\r\n\r\n"
    assert hc._FAST_HEAD.fullmatch(head) is None
    assert all(
        "++" in p or "*+" in p or "?+" in p for p in (hc._TOKEN.decode(), hc._VALUE.decode())
    )
