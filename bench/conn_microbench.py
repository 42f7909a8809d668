"""Sans-I/O cost of one request through ``appliance.http.connection.Connection``.

No sockets: each round feeds one whole request to ``receive`` (and ``pull`` until the
response is done) on a keep-alive connection, and reports µs per request for the simple-request
path (GET of a small cached file) and for h11's path (the same request with ``fast=False``,
and a request with a body, which always takes h11). Run under ``flock /tmp/bench.lock``:

    flock /tmp/bench.lock .venv/bin/python bench/conn_microbench.py [--requests N] [--repeat R]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from appliance.http.config import SiteConfig
from appliance.http.connection import Connection
from appliance.http.site import Site

SIMPLE = b"GET /index.html HTTP/1.1\r\nHost: bench\r\nUser-Agent: micro\r\nAccept: */*\r\n\r\n"
WITH_BODY = (
    b"GET /index.html HTTP/1.1\r\nHost: bench\r\nContent-Length: 0\r\nAccept: */*\r\n\r\n"
)


def per_request_us(site: Site, request: bytes, fast: bool, n: int) -> float:
    """µs per request over ``n`` requests on one keep-alive connection (the best of one run)."""
    conn = Connection(site, 0.0, fast=fast)
    now = 0.0
    t0 = time.perf_counter()
    for _ in range(n):
        out = conn.receive(request, now)
        while conn.has_output:
            out = conn.pull(now)
        if conn.closed or conn.abort or not out and not conn.wants_input:
            raise SystemExit("connection closed during the benchmark")
        now += 1e-4
    return (time.perf_counter() - t0) / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=900, help="requests per connection")
    ap.add_argument("--repeat", type=int, default=15, help="runs; the best is reported")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "index.html").write_bytes(b"x" * 64)
        site = Site(SiteConfig(root=root, max_keepalive_requests=args.requests + 1))
        cases = (
            ("simple request, fast path", SIMPLE, True),
            ("simple request, h11 path", SIMPLE, False),
            ("Content-Length: 0 (h11)", WITH_BODY, True),
        )
        for name, request, fast in cases:
            best = min(
                per_request_us(site, request, fast, args.requests) for _ in range(args.repeat)
            )
            print(f"{name:28s} {best:7.2f} µs/request")


if __name__ == "__main__":
    main()
