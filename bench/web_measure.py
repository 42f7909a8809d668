"""web_bench's measuring: the workloads (rows), the rig of two namespaces, running wrk, the
load generator and tls_load against one server, CPU accounting, idle CPU and the priority and
scaling experiments. Part of ``make bench`` (web_bench.py)."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import common
from web_servers import (
    BIG_FILE,
    LOAD_KEEPALIVE,
    NAN,
    PORT,
    PRIORITY_BULK_FLOWS,
    PRIORITY_SHORT_CONNS,
    SCALING_SERVERS,
    SMALL_FILES,
    TLS_KINDS,
    TLS_LOAD_MAX,
    TLS_PORT,
    TLS_SERVERS,
    VARIANTS,
    WAKE_COUNTERS,
    Server,
    appliance_argv,
    counter_delta,
)

from mtcp_core.testing import netns

# ---------------------------------------------------------------- what is measured


@dataclass(frozen=True)
class Workload:
    name: str  # short-64B-c64, keepalive-4K-c256, download-100M, priority, scaling-64B
    kind: str  # short | keepalive | download | priority | scaling
    path: str
    size: int
    connections: int
    seconds: float
    threads: int = 1
    tool: str = "wrk"  # or "load": mtcp-appliance load on the client's own user-level stack

    @property
    def close(self) -> bool:
        return self.kind in ("short", "priority", "scaling")

    @property
    def tls(self) -> bool:
        return self.kind in TLS_KINDS


@dataclass
class Row:
    server: str
    workload: str
    kind: str
    size: int
    connections: int
    workers: int = 1
    priority: bool | None = None  # the appliance's TX lists (mtcp only)
    unit: str = "req"  # what the CPU figures are per: a request, or a MiB downloaded
    tool: str = "wrk"  # the client: wrk, or mtcp-appliance load
    wakeups_per_req: float = NAN  # mtcp: device waits + eventfd signals + app waits, per req
    requests: int = 0
    seconds: float = 0.0
    rps: float = NAN
    gbps: float = NAN
    p50_ms: float = NAN
    p99_ms: float = NAN
    errors: int = 0
    socket_errors: int = 0
    non_2xx: int = 0
    server_cpu_s: float = NAN
    server_cpu_pct: float = NAN
    server_us_per_unit: float = NAN
    machine_cpu_s: float = NAN
    machine_us_per_unit: float = NAN
    # priority rows: connections timed from connect() to the server's close, one at a time
    conn_p50_ms: float = NAN
    conn_p99_ms: float = NAN
    # ... and the handshake alone: connect() until it returned (SYN to SYN-ACK)
    hs_p50_ms: float = NAN
    hs_p99_ms: float = NAN
    link_mbps: int = 0  # priority rows: the stack's shaped link rate (0: none)
    conn_count: int = 0
    conn_errors: int = 0
    per_cpu_busy_s: dict[str, float] = field(default_factory=dict)
    counters: dict[str, float] = field(default_factory=dict)
    background: dict[str, float] = field(default_factory=dict)
    ok: bool = False
    notes: list[str] = field(default_factory=list)


@dataclass
class Idle:
    server: str
    workers: int
    priority: bool | None
    start_s: float  # from exec to answering its first request
    server_cpu_pct: float  # its process tree over the idle interval, % of one core
    machine_cpu_pct: float  # every CPU, % of the whole machine


def _fmt_size(n: int) -> str:
    if n >= 1 << 20 and n % (1 << 20) == 0:
        return f"{n >> 20}M"
    return f"{n >> 10}K" if n >= 1024 and n % 1024 == 0 else f"{n}B"


def workloads(opts: argparse.Namespace) -> list[Workload]:
    d = opts.duration
    out = []
    if opts.quick:
        out.append(Workload("short-64B-c64", "short", SMALL_FILES[64], 64, 64, d))
        # the rows the targets are judged on, so that every target has a figure
        out.append(Workload("keepalive-64B-c64", "keepalive", SMALL_FILES[64], 64, 64, d))
        out.append(Workload("load-short-64B-c64", "short", SMALL_FILES[64], 64, 64, d, tool="load"))
        out.append(
            Workload("load-keepalive-64B-c64", "keepalive", SMALL_FILES[64], 64, 64, d, tool="load")
        )
    else:
        for kind in ("short", "keepalive"):
            for size, path in SMALL_FILES.items():
                for conns in (64, 256):
                    name = f"{kind}-{_fmt_size(size)}-c{conns}"
                    out.append(Workload(name, kind, path, size, conns, d))
                name = f"load-{kind}-{_fmt_size(size)}-c64"
                out.append(Workload(name, kind, path, size, 64, d, tool="load"))
    out.append(Workload(f"download-{_fmt_size(opts.big)}", "download", BIG_FILE, opts.big, 1, d))
    clients = getattr(opts, "tls_clients", 64)
    out.append(Workload("tls-full-64B", "tls-full", SMALL_FILES[64], 64, clients, d))
    out.append(Workload("tls-resumed-64B", "tls-resumed", SMALL_FILES[64], 64, clients, d))
    out.append(Workload("tls-keepalive-64B-c64", "tls-keepalive", SMALL_FILES[64], 64, 64, d))
    if opts.only:
        wanted = set(opts.only.split(","))
        out = [
            wl for wl in out if wl.name in wanted or wl.kind in wanted or wl.tool in wanted
        ]
    return out


# ---------------------------------------------------------------- servers


@dataclass
class Rig:
    cl: netns.Namespace
    sv: netns.Namespace
    link: netns.Veth
    server_cpus: list[int]
    client_cpus: list[int]
    site: Path
    opts: argparse.Namespace
    tls: tuple[Path, Path] | None = None  # the HTTPS rows' certificate and key
    tls_load: Path | None = None  # the HTTPS handshake rows' client (bench/tls_load.c)

    def url(self, path: str, tls: bool = False) -> str:
        if tls:
            return f"https://{self.link.addr_b.ip}:{TLS_PORT}{path}"
        return f"http://{self.link.addr_b.ip}:{PORT}{path}"

    def wrk(self, wl: Workload, seconds: float | None = None) -> list[str]:
        timeout = 60.0 if wl.kind in ("download", "priority") else 5.0
        argv = common.wrk_argv(
            self.url(wl.path, wl.tls),
            connections=wl.connections,
            seconds=seconds or wl.seconds,
            threads=wl.threads,
            close=wl.close,
            timeout_s=timeout,
        )
        return common.in_ns(self.cl, self.client_cpus, argv)


    def load(self, wl: Workload, run: int) -> list[str]:
        """mtcp-appliance load on afpacket on the client's veth end, from an address of its
        own (.10 + run: a new stack's 4-tuples never meet the server's TIME_WAIT entries of
        an earlier run), while the kernel address is off that end."""
        net = self.link.network
        ip = f"{net.network_address + 10 + run % 200}/{net.prefixlen}"
        argv = [
            appliance_argv()[0], "load", self.url(wl.path), "-c", str(wl.connections),
            "-d", str(max(1, round(wl.seconds))), "--timeout", "5", "--json",
            "--backend", "afpacket", "--iface", self.link.if_a, "--ip", ip,
        ]  # fmt: skip
        if wl.kind == "keepalive":
            argv += ["--keepalive", str(LOAD_KEEPALIVE)]
        return common.in_ns(self.cl, self.client_cpus, argv)

    def client_address(self, present: bool) -> None:
        """wrk needs the kernel address on the client's end; load needs the end to itself."""
        addr = str(self.link.addr_a)
        out = self.cl.ip("-o", "-4", "addr", "show", "dev", self.link.if_a)
        has = addr.split("/")[0] in out
        if present and not has:
            self.cl.ip("addr", "add", addr, "dev", self.link.if_a)
        if not present and has:
            self.cl.ip("addr", "del", addr, "dev", self.link.if_a)


LOAD_RUNS = [0]


def _run_load(argv: list[str], seconds: float) -> dict[str, float]:
    """mtcp-appliance load --json, as _run_wrk's figures."""
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 90)
    if proc.returncode != 0:
        raise RuntimeError(f"load failed (rc {proc.returncode}): {proc.stderr[-300:]}")
    doc = json.loads(proc.stdout)
    errors = int(sum(doc["errors"].values()))
    return {
        "requests": float(doc["completed"]),
        "seconds": float(doc["elapsed_s"]),
        "p50_ms": 1e3 * doc["latency_s"]["p50"],
        "p99_ms": 1e3 * doc["latency_s"]["p99"],
        "errors": float(errors),
        "socket_errors": float(errors - doc["errors"]["status"]),
        "non_2xx": float(doc["errors"]["status"]),
        "bytes": float(doc["bytes_read"]),
    }


def probe_connections(
    ip: str, path: str, seconds: float, rate: float, cpu: int
) -> tuple[list[float], list[float], int]:
    """Short connections one at a time, at most ``rate`` a second for ``seconds``, each timed
    from connect() to the server's close (wrk's latency leaves the handshake out: the SYN-ACK
    is what priority queueing hurries). Runs in a thread inside the client namespace, pinned
    to ``cpu``. Returns the latencies (s), the handshakes' (s) and the number of failed
    connections."""
    os.sched_setaffinity(0, {cpu})  # this thread only
    request = f"GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode()
    lat: list[float] = []
    handshakes: list[float] = []
    errors = 0
    start = time.monotonic()
    for i in range(max(1, int(seconds * rate))):
        wait = start + i / rate - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        if time.monotonic() - start > seconds + 5:
            break
        t0 = time.perf_counter()
        try:
            with socket.create_connection((ip, PORT), timeout=5) as sock:
                connected = time.perf_counter()
                sock.sendall(request)
                head = sock.recv(65536)
                while sock.recv(65536):
                    pass
            if not head.startswith(b"HTTP/1.1 200"):
                errors += 1
                continue
        except OSError:
            errors += 1
            continue
        lat.append(time.perf_counter() - t0)
        handshakes.append(connected - t0)
    return lat, handshakes, errors


def _percentile(values: Sequence[float], q: float) -> float:
    vals = sorted(values)
    if not vals:
        return NAN
    return vals[min(len(vals) - 1, max(0, math.ceil(q / 100 * len(vals)) - 1))]


TLS_LOAD_SRC = Path(__file__).resolve().parent / "tls_load.c"


def build_tls_load(folder: Path) -> Path:
    """Compiles bench/tls_load.c (the handshake rows' client) into ``folder``."""
    exe = folder / "tls_load"
    proc = subprocess.run(
        ["gcc", "-std=c11", "-O2", "-Wall", "-Wextra", "-Werror", "-o", str(exe),
         str(TLS_LOAD_SRC), "-lssl", "-lcrypto"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"cannot build {TLS_LOAD_SRC.name}: {proc.stderr[-500:]}")
    return exe


def _run_tls_load(rig: Rig, wl: Workload) -> dict[str, float]:
    """bench/tls_load.c on the client CPU: ``wl.connections`` at a time, each a new TLS
    connection (``tls-full``: a full handshake; ``tls-resumed``: offering a session
    ticket) with one GET, for ``wl.seconds`` (at most TLS_LOAD_MAX connections)."""
    assert rig.tls_load is not None
    mode = "full" if wl.kind == "tls-full" else "resumed"
    argv = [str(rig.tls_load), str(rig.link.addr_b.ip), str(TLS_PORT), wl.path, mode]
    argv += [str(wl.connections), f"{wl.seconds:g}", str(TLS_LOAD_MAX)]
    proc = subprocess.run(
        common.in_ns(rig.cl, rig.client_cpus, argv),
        capture_output=True, text=True, timeout=wl.seconds + 60, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"tls_load failed (rc {proc.returncode}): {proc.stderr[-300:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return {
        "requests": out["connections"],
        "seconds": out["seconds"],
        "resumed": out["resumed"],
        "errors": out["errors"],
        "socket_errors": out["errors"],
        "non_2xx": 0,
        "p50_ms": out["p50_ms"],
        "p99_ms": out["p99_ms"],
    }


def _run_wrk(argv: list[str], seconds: float) -> dict[str, float]:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 90)
    w = common.parse_wrk(proc.stdout)
    if proc.returncode != 0 or "requests" not in w:
        raise RuntimeError(f"wrk failed (rc {proc.returncode}): {proc.stderr[-300:]}")
    return w


def measure(rig: Rig, server: Server, wl: Workload) -> Row:
    row = Row(
        server.kind,
        wl.name,
        wl.kind,
        wl.size,
        wl.connections,
        server.workers,
        server.priority if server.kind == "mtcp" else None,
        unit="MiB" if wl.kind == "download" else "req",
        tool=wl.tool,
    )
    bulk: subprocess.Popen[str] | None = None
    probe: threading.Thread | None = None
    probed: list[tuple[list[float], list[float], int]] = []
    try:
        c0 = server.counters()
        if wl.kind == "priority":
            big = Workload("bulk", "download", BIG_FILE, rig.opts.big, PRIORITY_BULK_FLOWS, 0)
            bulk_s = wl.seconds + rig.opts.warmup + 1
            bulk = subprocess.Popen(
                rig.wrk(big, bulk_s),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                preexec_fn=common.die_with_parent,
            )
            threading.Event().wait(rig.opts.warmup)  # the long flows get going
            args = (str(rig.link.addr_b.ip), wl.path, wl.seconds, rig.opts.probe_rate)
            probe = threading.Thread(
                target=lambda: probed.append(
                    rig.cl.call(probe_connections, *args, rig.client_cpus[0])
                ),
                daemon=True,
            )
            probe.start()
        if wl.tool == "load":
            rig.client_address(False)
            LOAD_RUNS[0] += 1
            argv = rig.load(wl, LOAD_RUNS[0])
        else:
            argv = rig.wrk(wl)
        m0, s0, w0 = common.machine_jiffies(), server.cpu_seconds(), time.monotonic()
        if wl.kind in ("tls-full", "tls-resumed"):
            w = _run_tls_load(rig, wl)
            want = w["requests"] if wl.kind == "tls-resumed" else 0
            if w["resumed"] != want:
                row.notes.append(f"{w['resumed']:g} of {w['requests']:g} connections resumed")
        else:
            try:
                w = (
                    _run_load(argv, wl.seconds)
                    if wl.tool == "load"
                    else _run_wrk(argv, wl.seconds)
                )
            finally:
                if wl.tool == "load":
                    rig.client_address(True)
        wall = time.monotonic() - w0
        m1, s1 = common.machine_jiffies(), server.cpu_seconds()
        if probe is not None:
            probe.join(wl.seconds + 30)
            if not probed:
                raise RuntimeError("the connection probe did not finish")
            lat, hs, row.conn_errors = probed[0]
            row.conn_count = len(lat)
            row.conn_p50_ms = 1e3 * _percentile(lat, 50)
            row.conn_p99_ms = 1e3 * _percentile(lat, 99)
            row.hs_p50_ms = 1e3 * _percentile(hs, 50)
            row.hs_p99_ms = 1e3 * _percentile(hs, 99)
            row.link_mbps = rig.opts.priority_link_mbps
        if bulk is not None:
            out, _ = bulk.communicate(timeout=rig.opts.warmup + wl.seconds + 90)
            b = common.parse_wrk(out)
            row.background = {
                "flows": PRIORITY_BULK_FLOWS,
                "gbps": 8 * b.get("bytes", 0.0) / (b.get("seconds") or NAN) / 1e9,
                "errors": b.get("errors", 0.0),
            }
        row.counters = counter_delta(c0, server.counters())
        row.requests = int(w["requests"])
        row.seconds = w.get("seconds", wall)
        row.errors, row.socket_errors, row.non_2xx = (
            int(w["errors"]),
            int(w["socket_errors"]),
            int(w["non_2xx"]),
        )
        row.p50_ms, row.p99_ms = w.get("p50_ms", NAN), w.get("p99_ms", NAN)
        row.rps = row.requests / row.seconds if row.seconds else NAN
        nbytes = w.get("bytes", NAN)
        if wl.kind == "download":
            row.gbps = 8 * nbytes / row.seconds / 1e9 if row.seconds else NAN
        units = nbytes / (1 << 20) if wl.kind == "download" else row.requests
        row.server_cpu_s = s1 - s0
        row.server_cpu_pct = 100 * row.server_cpu_s / wall
        busy = common.busy_seconds(m0, m1)
        row.machine_cpu_s = busy["cpu"]
        row.per_cpu_busy_s = {k: round(v, 3) for k, v in busy.items() if k != "cpu"}
        if units and units > 0:
            row.server_us_per_unit = 1e6 * row.server_cpu_s / units
            row.machine_us_per_unit = 1e6 * row.machine_cpu_s / units
        if server.user_level and row.requests:
            wakes = sum(row.counters.get(k, 0.0) for k in WAKE_COUNTERS)
            row.wakeups_per_req = wakes / row.requests
        restarts = row.counters.get("worker_restarts", 0)
        if restarts:
            row.notes.append(f"{restarts:g} worker restarts during the row")
        if server.proc is not None and server.proc.poll() is not None:
            row.notes.append(f"server exited with {server.proc.returncode}: {server.log()}")
        row.errors += row.conn_errors
        if wl.kind == "priority" and not row.conn_count:
            row.notes.append("the connection probe made no connection")
        row.ok = units > 0 and not math.isnan(row.p99_ms) and not row.notes
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        row.notes.append(f"{type(exc).__name__}: {exc}")
    finally:
        if bulk is not None and bulk.poll() is None:
            bulk.kill()
            bulk.wait()
    return row


def idle(server: Server, seconds: float) -> Idle:
    """The server's process tree and the machine over ``seconds`` of no load."""
    m0, w0 = common.machine_jiffies(), time.monotonic()
    s0 = common.tree_run_seconds(server.pid)
    threading.Event().wait(seconds)
    wall = time.monotonic() - w0
    m1, s1 = common.machine_jiffies(), common.tree_run_seconds(server.pid)
    machine = common.busy_seconds(m0, m1)["cpu"] / wall / (os.cpu_count() or 1)
    return Idle(
        server.kind,
        server.workers,
        server.priority if server.kind == "mtcp" else None,
        round(server.start_s, 3),
        100 * (s1 - s0) / wall,
        100 * machine,
    )


@contextlib.contextmanager
def running(
    rig: Rig,
    kind: str,
    cpus: Sequence[int],
    *,
    workers: int = 1,
    priority: bool = True,
    extra: Sequence[str] = (),
    tls: tuple[Path, Path] | None = None,
) -> Iterator[Server]:
    server = Server(
        kind,
        rig.sv,
        rig.link,
        cpus,
        rig.site,
        workers=workers,
        priority=priority,
        extra=[*rig.opts.appliance_arg, *extra] if kind in ("mtcp", "linux", *VARIANTS) else (),
        tls=tls,
    )
    try:
        server.start(rig.cl)
        yield server
    finally:
        server.stop()


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _row_line(row: Row) -> str:
    value = f"{row.gbps:.2f} Gb/s" if row.kind == "download" else f"{row.rps:.0f} req/s"
    return (
        f"  {row.server:<8} {row.workload:<18} w{row.workers} {value}, p99 "
        f"{row.p99_ms:.2f} ms, {row.errors} errors{'' if row.ok else ' FAILED'}"
        f"{'; ' + '; '.join(row.notes) if row.notes else ''}"
    )


def run_server(
    rig: Rig,
    kind: str,
    wls: Sequence[Workload],
    cpus: Sequence[int],
    rows: list[Row],
    idles: list[Idle],
    *,
    workers: int = 1,
    priority: bool = True,
    extra: Sequence[str] = (),
) -> None:
    """Starts one server, measures its idle CPU and the rows of ``wls``, stops it; a server
    that does not start gives failed rows. ``extra``: more appliance flags. HTTPS rows run
    on TLS_SERVERS only, with the rig's certificate."""
    if kind not in TLS_SERVERS:
        wls = [wl for wl in wls if not wl.tls]
    tls = rig.tls if any(wl.tls for wl in wls) else None
    if not wls:
        return
    try:
        with running(
            rig, kind, cpus, workers=workers, priority=priority, extra=extra, tls=tls
        ) as server:
            idles.append(idle(server, rig.opts.idle))
            say(
                f"  {kind} w{workers}: up in {server.start_s:.1f}s, idle "
                f"{idles[-1].server_cpu_pct:.2f}% of a core"
            )
            for wl in wls:
                row = measure(rig, server, wl)
                rows.append(row)
                say(_row_line(row))
                threading.Event().wait(rig.opts.settle)
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        say(f"  {kind}: {exc}")
        done = {(r.server, r.workload, r.workers, r.priority) for r in rows}
        for wl in wls:
            prio = priority if kind == "mtcp" else None
            if (kind, wl.name, workers, prio) not in done:
                rows.append(
                    Row(
                        kind,
                        wl.name,
                        wl.kind,
                        wl.size,
                        wl.connections,
                        workers,
                        prio,
                        notes=[f"{type(exc).__name__}: {exc}"],
                    )
                )


def priority_rows(rig: Rig, rows: list[Row], idles: list[Idle]) -> None:
    wl_short = Workload(
        "priority", "priority", SMALL_FILES[64], 64, PRIORITY_SHORT_CONNS, rig.opts.duration
    )
    rate = rig.opts.priority_link_mbps
    link = ["--tx-rate-mbps", str(rate)] if rate else []
    for prio in (True, False):
        run_server(
            rig, "mtcp", [wl_short], rig.server_cpus[:1], rows, idles, priority=prio, extra=link
        )


def scaling_rows(rig: Rig, rows: list[Row], idles: list[Idle], cpus: list[int]) -> None:
    half = len(cpus) // 2
    server_cpus, client_cpus = cpus[:half], cpus[half:]
    scaled = Rig(rig.cl, rig.sv, rig.link, server_cpus, client_cpus, rig.site, rig.opts)
    if rig.opts.rps:
        common.steer_receive(rig.cl, rig.sv, rig.link, client_cpus, server_cpus)
    n = 1
    while n <= len(server_cpus):
        threads = len(client_cpus)
        wl = Workload(
            "scaling-64B",
            "scaling",
            SMALL_FILES[64],
            64,
            max(64 * n, threads),
            rig.opts.duration,
            threads=threads,
        )
        for kind in SCALING_SERVERS:
            run_server(scaled, kind, [wl], server_cpus[:n], rows, idles, workers=n)
        n *= 2
