"""Property-based tests of the sans-I/O core: whatever bytes arrive, in whatever pieces,
the connection answers with well-formed responses or closes; it never raises, never hits
an internal error (500) and never serves a file from outside the root."""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.http.config import SiteConfig
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


def drive(site: Site, chunks: list[bytes], eof: bool = True) -> tuple[bytes, Connection]:
    """Feeds the chunks as an adapter would (reads only while it wants input), then the end
    of the stream and the timers; returns everything sent."""
    c = Connection(site, T0)
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
    for _ in range(3):
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
