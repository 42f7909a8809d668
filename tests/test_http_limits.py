"""HTTP limits against resource exhaustion (issue 15): byte ranges that would answer more
than the file (overlapping, too many, adding up past its size), request-line versions other
than HTTP/1.0 and 1.1, and obs-fold. The fast path (whole simple requests, parsed with regular
expressions) and h11's path must answer each the same way.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from appliance.http.config import SiteConfig
from appliance.http.connection import Connection
from appliance.http.site import parse_ranges
from appliance.testing.http1 import body, get, status_of

T0 = 1000.0
SIZE = 100_000  # streamed (over small_file_limit)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "site"
    r.mkdir()
    (r / "big.bin").write_bytes(os.urandom(SIZE))
    (r / "small.txt").write_bytes(bytes(range(48, 48 + 64)))
    return r


def serve(root: Path, request: bytes, fast: bool) -> bytes:
    c = Connection(SiteConfig(root=root, small_file_limit=64 * 1024), T0, fast=fast)
    out = c.receive(request, T0)
    while c.has_output:
        out += c.pull(T0)
    return out


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("name", ["big.bin", "small.txt"])
def test_overlapping_or_too_many_ranges_get_the_whole_file(
    root: Path, fast: bool, name: str
) -> None:
    data = (root / name).read_bytes()
    for rng in (
        "bytes=" + ",".join(["0-"] * 16),  # the 16 times "0-": 16x the file as a 206
        "bytes=0-10,5-20",  # overlap
        "bytes=0-10,11-20,-" + str(len(data)),  # the suffix covers the others again
        "bytes=" + ",".join(f"{i}-{i}" for i in range(17)),  # more than 16
    ):
        out = serve(root, get("/" + name, f"Range: {rng}"), fast)
        assert status_of(out) == 200, rng
        assert body(out) == data  # once: amplification at most 1x
    # disjoint ranges that add up to less than the file stay a 206
    out = serve(root, get("/" + name, "Range: bytes=0-1,10-12"), fast)
    assert status_of(out) == 206
    assert len(body(out)) < len(data) + 400


def test_parse_ranges_refuses_amplification() -> None:
    assert parse_ranges(b"bytes=0-,0-", 10) is None
    assert parse_ranges(b"bytes=0-4,4-6", 10) is None
    assert parse_ranges(b"bytes=0-4,5-9", 10) == [(0, 4), (5, 9)]
    assert parse_ranges(b"bytes=5-9,0-4", 10) == [(5, 9), (0, 4)]
    assert parse_ranges(b"bytes=-5,0-4", 10) == [(5, 9), (0, 4)]
    assert parse_ranges(b"bytes=-6,0-4", 10) is None


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("version", ["2.0", "1.2", "0.9", "3.0"])
def test_other_http_versions_get_505(root: Path, fast: bool, version: str) -> None:
    out = serve(root, get("/small.txt", version=version), fast)
    assert status_of(out) == 505
    assert b"Connection: close" in out.split(b"\r\n\r\n", 1)[0]
    for version in ("1.0", "1.1"):
        assert status_of(serve(root, get("/small.txt", version=version), fast)) == 200


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("fold", [" b", "\tb", "  "])
def test_obs_fold_gets_400(root: Path, fast: bool, fold: str) -> None:
    out = serve(root, get("/small.txt", "X-A: a", fold, "Accept: */*"), fast)
    assert status_of(out) == 400
    # a fold arriving in its own segment is refused as well
    c = Connection(SiteConfig(root=root), T0, fast=fast)
    out = c.receive(b"GET /small.txt HTTP/1.1\r\nHost: x\r\nX-A: a\r\n", T0)
    assert out == b""
    out = c.receive(fold.encode() + b"\r\n\r\n", T0)
    while c.has_output:
        out += c.pull(T0)
    assert status_of(out) == 400
    # spaces and tabs inside a field value are no fold
    assert status_of(serve(root, get("/small.txt", "X-A: a \t b"), fast)) == 200


def test_fold_after_the_head_is_body_not_fold(root: Path) -> None:
    # a POST body may contain "\n " freely; only the head counts
    c = Connection(SiteConfig(root=root), T0)
    payload = b"x\n y\n\tz"
    out = c.receive(
        b"POST /small.txt HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
        % (len(payload), payload),
        T0,
    )
    while c.has_output:
        out += c.pull(T0)
    assert status_of(out) in (405, 413)  # refused for the body, not for a fold


@pytest.mark.parametrize("fast", [True, False])
def test_file_chunks_follow_the_sockets_send_buffer(root: Path, fast: bool) -> None:
    # the stack gives new connections small send buffers under memory pressure: the
    # connection then reads the file in pieces that size, so that a client that stops
    # reading pins little memory in the server, not a whole stream_chunk
    data = (root / "big.bin").read_bytes()
    c = Connection(SiteConfig(root=root, small_file_limit=1024, stream_chunk=65536), T0, fast=fast)
    c.chunk_limit = 16384
    first = c.receive(get("/big.bin"), T0)
    head, _, body = first.partition(b"\r\n\r\n")
    assert b" 200 " in head and len(body) in (0, 16384)  # the fast path sends the head alone
    pieces = [len(body)]
    while c.has_output:
        piece = c.pull(T0)
        pieces.append(len(piece))
        body += piece
    assert body == data and max(pieces) == 16384
    unlimited = serve(root, get("/big.bin"), fast)
    assert len(unlimited.partition(b"\r\n\r\n")[2]) == SIZE
