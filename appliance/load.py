"""``mtcp-appliance load``: a load generator on the user-level stack.

Opens short HTTP connections (one ``GET`` per connection, ``Connection: close``, like
``wrk -H 'Connection: close'``) from the core's own stack, as the mTCP paper's clients did,
so that a server can be pushed past what one kernel client core generates. The loop itself
is C (``mtcp_core.LoadGenerator``, ``mtcp_core/src/app/loadgen.c``): each core runs one
closed loop of connections with the GIL released; ``--cores N`` runs N of them, one thread
and one stack core each (afpacket: one fanout group; active opens pick source ports whose
replies come back to their own core), and sums what they counted.

The stack options are those of ``serve`` (``--backend``, ``--iface``, ``--ip``,
``--gateway``, ``--tap-host``, ``--afpacket-rx``, ``--pcap``) and are checked the same way
(``appliance.config``). Every run is bounded by ``--duration`` (and ``--requests``).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from appliance.config import ConfigError, available_cpus, build, flag_name

if TYPE_CHECKING:
    import mtcp_core

__all__ = ["LoadSettings", "add_parser", "load_command", "parse_url", "run_load"]

USER_AGENT = "mtcp-appliance-load"
MAX_DURATION_S = 86400.0
# Stack keys of serve that load takes too (flag -> config key).
STACK_KEYS = ("backend", "iface", "ip", "gateway", "tap_host", "afpacket_rx", "pcap", "cores")


class LoadError(ValueError):
    """A bad option: the message names it."""


@dataclass(frozen=True)
class Target:
    host: str  # IPv4 address
    port: int
    path: str  # path and query
    netloc: str  # what goes into Host:


@dataclass(frozen=True)
class LoadSettings:
    target: Target
    url: str
    connections: int
    duration: float
    requests: int  # 0: no cap
    timeout: float
    headers: tuple[str, ...]
    cores: int
    keepalive: int  # requests per connection (0: one, with Connection: close)
    pipeline: int  # keep-alive: requests in flight per connection
    stack: dict[str, Any]  # keyword arguments of mtcp_core.Stack
    describe: str  # the stack, in words


def parse_url(url: str) -> Target:
    """``http://ADDR[:PORT][/PATH]``; the host must be an IPv4 address (the user-level stack
    has no resolver)."""
    parts = urlsplit(url)
    if parts.scheme != "http":
        raise LoadError(f"URL: only http:// URLs are supported, got {url!r}")
    host = parts.hostname or ""
    try:
        addr = ipaddress.IPv4Address(host)
    except ValueError:
        raise LoadError(
            f"URL: the host must be an IPv4 address (the stack has no resolver), got {host!r}"
        ) from None
    if addr.is_unspecified or addr.is_multicast or addr == ipaddress.IPv4Address(0xFFFFFFFF):
        raise LoadError(f"URL: {addr} is not a host address")
    try:
        port = 80 if parts.port is None else parts.port
    except ValueError:
        raise LoadError(f"URL: bad port in {url!r}") from None
    if not 1 <= port <= 65535:
        raise LoadError(f"URL: port must be 1..65535, got {port}")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    if any(c.isspace() for c in path):
        raise LoadError(f"URL: the path must not contain blanks, got {path!r}")
    return Target(str(addr), port, path, parts.netloc)


def build_request(target: Target, headers: Sequence[str] = (), keepalive: bool = False) -> bytes:
    """The request every connection sends: GET, Host, User-Agent, Connection: close (none
    in keep-alive mode)."""
    lines = [
        f"GET {target.path} HTTP/1.1",
        f"Host: {target.netloc}",
        f"User-Agent: {USER_AGENT}",
        *headers,
        *([] if keepalive else ["Connection: close"]),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _check_header(h: str) -> str:
    name, sep, _value = h.partition(":")
    if not sep or not name.strip() or any(c in h for c in "\r\n") or name != name.strip():
        raise LoadError(f"--header: must be 'Name: value', got {h!r}")
    if name.strip().lower() in ("host", "connection"):
        raise LoadError(f"--header: {name} is set by load itself")
    return h


def settings_from_args(args: argparse.Namespace) -> LoadSettings:
    """Checks every option; raises LoadError or ConfigError naming the bad one."""
    target = parse_url(args.url)
    if args.connections < 1:
        raise LoadError(f"--connections: must be at least 1, got {args.connections}")
    if not 0 < args.duration <= MAX_DURATION_S:
        raise LoadError(
            f"--duration: must be seconds > 0 (at most {MAX_DURATION_S:.0f}), got {args.duration}"
        )
    if args.requests < 0:
        raise LoadError(f"--requests: must be >= 0 (0: no cap), got {args.requests}")
    if args.keepalive < 0:
        raise LoadError(f"--keepalive: requests per connection >= 0, got {args.keepalive}")
    if not 1 <= args.pipeline <= 64:
        raise LoadError(f"--pipeline: must be 1..64, got {args.pipeline}")
    if args.pipeline > 1 and not args.keepalive:
        raise LoadError("--pipeline: needs --keepalive N (requests per connection)")
    if not 0 < args.timeout <= 3600:
        raise LoadError(f"--timeout: must be seconds > 0 (at most 3600), got {args.timeout}")
    headers = tuple(_check_header(h) for h in args.header or ())
    if args.backend == "afpacket" and not args.iface:
        raise LoadError("--iface: the afpacket backend needs an interface")
    raw: dict[str, Any] = {"stack": "mtcp"}
    where: dict[str, str] = {}
    for key in STACK_KEYS:
        value = getattr(args, key, None)
        if value is not None:
            raw[key], where[key] = (str(value) if key == "cores" else value), flag_name(key)
    raw.setdefault("cores", 1)
    cfg = build(raw, where)  # serve's checks and messages
    if target.host == cfg.host:
        raise LoadError(f"URL: {target.host} is the load generator's own address (--ip)")
    if args.connections < cfg.cores:
        raise LoadError(
            f"--connections: at least one per core ({cfg.cores} cores), got {args.connections}"
        )
    if args.connections > 16384 * cfg.cores:
        raise LoadError(f"--connections: at most 16384 per core, got {args.connections}")
    stack: dict[str, Any] = {
        "backend": cfg.backend,
        "ip": cfg.ip,
        "iface": cfg.iface,
        "gateway": cfg.gateway,
        "cores": cfg.cores,
        "tap_host": cfg.tap_host,
        "pcap": cfg.pcap,
        "afpacket_rx": cfg.afpacket_rx,
    }
    describe = f"mtcp {cfg.backend} on {cfg.iface} as {cfg.ip}"
    if cfg.backend == "tap":
        describe += f" (host side {cfg.tap_host})"
    return LoadSettings(
        target=target,
        url=args.url,
        connections=args.connections,
        duration=args.duration,
        requests=args.requests,
        timeout=args.timeout,
        headers=headers,
        cores=cfg.cores,
        keepalive=args.keepalive,
        pipeline=args.pipeline,
        stack=stack,
        describe=describe,
    )


def _split(total: int, parts: int) -> list[int]:
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def run_load(
    s: LoadSettings, stop: threading.Event | None = None
) -> tuple[mtcp_core.LoadResult, list[mtcp_core.LoadResult]]:
    """Runs the generators (one thread and one stack core each); returns the sum and the
    per-core results. ``stop`` set from another thread ends the run early."""
    import mtcp_core

    per_conns = _split(s.connections, s.cores)
    per_reqs = _split(s.requests, s.cores) if s.requests else [0] * s.cores
    # a core whose share of a --requests cap is 0 has nothing to do
    active = [i for i in range(s.cores) if not s.requests or per_reqs[i] > 0]
    cpus = available_cpus()
    # TCBs: the loop's connections, plus those closing (LAST_ACK) or, after an abort or
    # a server that does not close first, in TIME_WAIT; buffers are mapped lazily
    max_conns = max(4096, 8 * max(per_conns))
    # every connection at full buffer sizes: the budget is no limit for a load generator
    budget = max_conns * (2 * 65536)
    stack = mtcp_core.Stack(**s.stack, max_conns=max_conns, mem_budget=budget)
    request = build_request(s.target, s.headers, keepalive=s.keepalive > 0)
    address = (s.target.host, s.target.port)
    results: dict[int, mtcp_core.LoadResult | BaseException] = {}
    gens: dict[int, mtcp_core.LoadGenerator] = {}
    lock = threading.Lock()
    start = threading.Barrier(len(active) + 1)
    stop = stop or threading.Event()

    def worker(core: int) -> None:
        cpu = cpus[core % len(cpus)]
        try:
            os.sched_setaffinity(0, {cpu})  # this thread: the core's app thread
            ctx = stack.context(core, cpu=cpu)
            # warm-up: one request resolves the server's address (ARP) on this core before
            # the clock starts; its outcome is not counted
            mtcp_core.LoadGenerator(
                ctx, address, request, connections=1, duration=s.timeout, max_requests=1,
                timeout=s.timeout,
            ).run()  # fmt: skip
            gen = mtcp_core.LoadGenerator(
                ctx,
                address,
                request,
                connections=per_conns[core],
                duration=s.duration,
                max_requests=per_reqs[core],
                timeout=s.timeout,
                keepalive=s.keepalive,
                pipeline=s.pipeline,
            )
            with lock:
                gens[core] = gen
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            results[core] = exc
            start.abort()
            return
        try:
            start.wait()
        except threading.BrokenBarrierError:
            return  # another core failed to start: its error is reported
        if stop.is_set():
            gen.stop()
        try:
            results[core] = gen.run()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            results[core] = exc

    threads = [
        threading.Thread(target=worker, args=(core,), name=f"load-core{core}", daemon=True)
        for core in active
    ]
    try:
        for t in threads:
            t.start()
        try:
            start.wait(timeout=s.timeout * 3 + 30)
        except threading.BrokenBarrierError:
            pass
        deadline = time.monotonic() + s.duration + s.timeout * 3 + 30
        for t in threads:
            while t.is_alive() and time.monotonic() < deadline:
                if stop.wait(0.05):
                    with lock:
                        for g in gens.values():
                            g.stop()
                t.join(0.05)
        if any(t.is_alive() for t in threads):
            with lock:
                for g in gens.values():
                    g.stop()
            for t in threads:
                t.join(5)
        # what was handed to the stack last (the final FINs) goes out before it stops
        time.sleep(0.05)
    finally:
        if not any(t.is_alive() for t in threads):
            stack.close()
    for r in results.values():
        if isinstance(r, BaseException):
            raise r
    got: list[mtcp_core.LoadResult] = []
    for core in active:
        r = results.get(core)
        if not isinstance(r, mtcp_core.LoadResult):
            raise RuntimeError(f"core {core}: the load generator did not finish")
        got.append(r)
    return mtcp_core.LoadResult.merge(got), got


# ---------------------------------------------------------------- output


def _fmt_time(seconds: float) -> str:
    """wrk's units: us, ms, s."""
    if seconds < 1e-3:
        return f"{seconds * 1e6:.2f}us"
    if seconds < 1.0:
        return f"{seconds * 1e3:.2f}ms"
    return f"{seconds:.2f}s"


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.2f}{unit}"
        n /= 1024
    return f"{n:.2f}GB"


def report_text(s: LoadSettings, total: mtcp_core.LoadResult) -> str:
    """wrk-like text (its "Latency Distribution" lines, "requests in", "Requests/sec")."""
    lat, con = total.latency, total.connect
    e = total.errors
    out = [
        f"Running {s.duration:g}s test @ {s.url}",
        f"  {s.cores} cores and {s.connections} connections ({s.describe})"
        + (f", {s.keepalive} requests each, {s.pipeline} in flight" if s.keepalive else ""),
        "  Stats        Avg      Min      Max",
        f"    Latency {_fmt_time(lat.mean):>8} {_fmt_time(lat.min):>8} {_fmt_time(lat.max):>8}",
        f"    Connect {_fmt_time(con.mean):>8} {_fmt_time(con.min):>8} {_fmt_time(con.max):>8}",
        "  Latency Distribution (request written to response read)",
        f"     50%  {_fmt_time(lat.p50)}",
        f"     90%  {_fmt_time(lat.p90)}",
        f"     99%  {_fmt_time(lat.p99)}",
        f"   99.9%  {_fmt_time(lat.p999)}",
        f"  {total.completed} requests in {_fmt_time(total.elapsed)}, "
        f"{_fmt_bytes(total.bytes_read)} read",
    ]
    if total.socket_errors:
        out.append(
            f"  Socket errors: connect {e['connect']}, reset {e['reset']}, "
            f"timeout {e['timeout']}, response {e['response']}"
        )
    if e["status"]:
        out.append(f"  Non-2xx or 3xx responses: {e['status']}")
    el = total.elapsed or 1.0
    out.append(f"Requests/sec: {total.requests_per_second:10.2f}")
    out.append(f"Transfer/sec: {_fmt_bytes(total.bytes_read / el):>10}")
    return "\n".join(out)


def report_json(
    s: LoadSettings, total: mtcp_core.LoadResult, per_core: Sequence[mtcp_core.LoadResult]
) -> str:
    doc = {
        "url": s.url,
        "connections": s.connections,
        "duration_s": s.duration,
        "requests_cap": s.requests,
        "timeout_s": s.timeout,
        "keepalive": s.keepalive,
        "pipeline": s.pipeline,
        "cores": s.cores,
        "stack": s.describe,
        "warmup_requests": len(per_core),  # one per core before the clock starts, uncounted
        **total.to_dict(),
        "per_core": [r.to_dict() for r in per_core],
    }
    return json.dumps(doc, indent=2)


# ---------------------------------------------------------------- command


def _int_arg(v: str) -> int:
    try:
        return int(v, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {v!r}") from None


def _float_arg(v: str) -> float:
    try:
        return float(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {v!r}") from None


def add_parser(commands: Any, **kw: Any) -> argparse.ArgumentParser:
    """Registers ``load`` on the CLI's subparsers."""
    p: argparse.ArgumentParser = commands.add_parser(
        "load",
        help="generate short HTTP connections from the user-level stack (like wrk)",
        description="Opens short HTTP connections (one GET each, Connection: close) from "
        "the user-level stack, --connections at a time per run, for --duration seconds, and "
        "prints wrk-like results (--json for machines).",
        **kw,
    )
    p.add_argument("url", metavar="URL", help="http://ADDR[:PORT][/PATH] (an IPv4 address)")
    p.add_argument("-c", "--connections", type=_int_arg, default=64,
                   help="concurrent connections, all cores together (default 64)")  # fmt: skip
    p.add_argument("-d", "--duration", type=_float_arg, default=10.0,
                   help="seconds to run (default 10)")  # fmt: skip
    p.add_argument("--requests", type=_int_arg, default=0,
                   help="stop after this many connections (default 0: no cap)")  # fmt: skip
    p.add_argument("--keepalive", type=_int_arg, default=0, metavar="N",
                   help="N requests per connection, no Connection: close (default 0: one "
                   "request per connection, short connections)")  # fmt: skip
    p.add_argument("--pipeline", type=_int_arg, default=1, metavar="DEPTH",
                   help="with --keepalive: requests in flight per connection (1)")  # fmt: skip
    p.add_argument("--timeout", type=_float_arg, default=2.0,
                   help="seconds before a connection counts as timed out (default 2)")  # fmt: skip
    p.add_argument("-H", "--header", action="append", metavar="'NAME: VALUE'",
                   help="an extra request header (repeatable)")  # fmt: skip
    p.add_argument("--cores", type=_int_arg, default=None,
                   help="generators, one per core and thread (default 1)")  # fmt: skip
    p.add_argument("--backend", choices=("tap", "afpacket"), default=None,
                   help="packet I/O: tap (default) or afpacket")  # fmt: skip
    p.add_argument("--iface", default=None,
                   help="afpacket: the interface (required); tap: the device (mtcp0)")  # fmt: skip
    p.add_argument("--ip", metavar="ADDR/PREFIX", default=None,
                   help="the load generator stack's address (default 198.18.0.2/24)")  # fmt: skip
    p.add_argument("--gateway", metavar="ADDR", default=None,
                   help="next hop for servers off the subnet")  # fmt: skip
    p.add_argument("--tap-host", metavar="ADDR/PREFIX", default=None,
                   help="tap: the host side's address (default .1 of --ip)")  # fmt: skip
    p.add_argument("--afpacket-rx", choices=("copy", "ring"), default=None,
                   help="afpacket receive path (default copy)")  # fmt: skip
    p.add_argument("--pcap", metavar="FILE", default=None,
                   help="capture every frame (%%u: core)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=load_command)
    return p


def load_command(args: argparse.Namespace) -> int:
    try:
        s = settings_from_args(args)
    except (LoadError, ConfigError) as exc:
        print(f"mtcp-appliance load: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    try:
        total, per_core = _run_interruptible(s, stop)
    except OSError as exc:
        print(f"mtcp-appliance load: cannot start the stack: {exc}", file=sys.stderr)
        if exc.errno in (1, 13):  # EPERM, EACCES
            need = "CAP_NET_RAW" if s.stack["backend"] == "afpacket" else "CAP_NET_ADMIN"
            print(f"mtcp-appliance load: the {s.stack['backend']} backend needs {need} "
                  "(run as root)", file=sys.stderr)  # fmt: skip
        return 1
    print(report_json(s, total, per_core) if args.json else report_text(s, total))
    return 0


def _run_interruptible(
    s: LoadSettings, stop: threading.Event
) -> tuple[mtcp_core.LoadResult, list[mtcp_core.LoadResult]]:
    """run_load in a thread, so that Ctrl-C ends the run early and still reports."""
    box: list[Any] = []

    def target() -> None:
        try:
            box.append(run_load(s, stop))
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            box.append(exc)

    t = threading.Thread(target=target, name="load", daemon=True)
    t.start()
    while t.is_alive():
        try:
            t.join(0.1)
        except KeyboardInterrupt:
            stop.set()
    if not box:
        raise RuntimeError("the load generator ended without a result")
    if isinstance(box[0], BaseException):
        raise box[0]
    return box[0]  # type: ignore[no-any-return]
