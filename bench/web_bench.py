"""The appliance against the kernel's stack, nginx and lighttpd: the mTCP paper's web workloads
in one run (``make bench``; bench/README.md).

Two network namespaces joined by a veth (198.18.0.0/15; DESIGN.md, "Measuring performance").
The server runs in one, pinned to ``--server-cpu``; wrk runs in the other, pinned to
``--client-cpu``. One server at a time, on the same files:

  mtcp:      ``mtcp-appliance serve --stack mtcp --backend afpacket`` on the server's veth end
             (which has no kernel address), one worker (``--cores 1``), no access log;
  linux:     ``mtcp-appliance serve --stack linux``: the same HTTP code on kernel sockets;
  nginx:     one worker process, access log off, sendfile on;
  lighttpd:  one process, no access log, sendfile (its default network backend).

Workloads (rows): short connections (``Connection: close``: one request each) and keep-alive
for a 64 B and a 4 KiB file at 64 and 256 concurrent connections; one flow downloading a
100 MiB file over and over (Gb/s); and, on mtcp only, the priority-queueing experiment:
the latency of short connections (wrk, 16 at a time, and a probe that also times the handshake)
while 8 connections download the big file, with the appliance's priority TX lists on and off
(``--no-priority``). HTTPS rows (issue 18; mtcp, linux and nginx, one ECDSA P-256
certificate and Mozilla's intermediate ciphers for all): new TLS 1.3 handshakes a second,
full and resumed (a session ticket), one 64 B request each (``bench/tls_load.c``, built
here: ``--tls-clients`` connections at once, bounded in time and count; wrk cannot resume
sessions in a controlled way), and keep-alive 64 B requests over TLS (wrk on https://).
With ``--scaling`` (machines with 4 CPUs or more) also short 64 B connections with 1, 2,
4 ... workers on the first half of the CPUs and wrk threads on the second half.

Figures per row: requests/s (Gb/s for downloads), latency p50/p99, errors (socket errors and
non-2xx), the server's CPU (its whole process tree: the appliance's supervisor and workers with
their mTCP threads; nginx's master and workers) per request (per MiB for downloads), and the
whole machine's CPU per request (/proc/stat, all CPUs: with veth, part of each stack's work runs
in softirq on the client's CPU, so only this compares a kernel server and a user-level one
fairly). After each server starts: its idle CPU over ``--idle`` seconds, as % of one core.

Writes bench/results/web-<time>.{json,md,png} and prints the table, the ratios that the
targets of issue 6 use and whether each is met. Needs root, wrk, nginx and lighttpd; every run
is bounded in time; the namespaces are removed at the end, also after a failure.
"""

from __future__ import annotations

import argparse
import contextlib
import html
import http.client
import json
import math
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import netns  # noqa: E402

PROG = "web_bench"
PORT = 80
TLS_PORT = 443
TLS_SERVERS = ("mtcp", "linux", "nginx")  # lighttpd is left out of the HTTPS rows
TLS_KINDS = ("tls-full", "tls-resumed", "tls-keepalive")
TLS_LOAD_MAX = 10_000_000  # connections a handshake row makes at most
SERVERS = ("mtcp", "linux", "nginx", "lighttpd")
# more appliance variants (--servers): mtcp without the static responder, with busy polling
VARIANTS = {"mtcp-noresp": ["--no-responder"], "mtcp-bp": ["--busy-poll-us", "50"]}
LOAD_KEEPALIVE = 100  # requests per connection of the load generator's keep-alive rows
SCALING_SERVERS = ("mtcp", "linux", "nginx")
METRICS = "127.0.0.1:9100"  # the appliance's management address, inside the server namespace
NAN = float("nan")
SMALL_FILES = {64: "/f64.bin", 4096: "/f4k.bin"}
BIG_FILE = "/big.bin"
PRIORITY_SHORT_CONNS, PRIORITY_BULK_FLOWS = 16, 8
START_TIMEOUT_S = 30.0
# the appliance's counters kept per row (differences over the row, summed over cores)
COUNTERS = (
    "mtcp_retransmits_total",
    "mtcp_rsts_sent_total",
    "mtcp_rsts_received_total",
    "mtcp_syn_cookies_sent_total",
    "mtcp_challenge_acks_total",
    "mtcp_drops_total",
    "mtcp_worker_restarts_total",
    "mtcp_http_requests_total",
    # wake-ups: device waits (ppoll), eventfd signals mTCP -> app and app -> mTCP, app waits
    "mtcp_sleeps_total",
    "mtcp_app_signals_total",
    "mtcp_stack_kicks_total",
    "mtcp_app_waits_total",
    "mtcp_busy_polls_total",
    "mtcp_rsp_hits_total",
    "mtcp_rsp_misses_total",
)
WAKE_COUNTERS = ("sleeps", "app_signals", "stack_kicks", "app_waits")

# issue 6's targets: (what, its key in figures(), bound, how the figure must compare to it);
# "short-64B-c64" is the paper's short-connection row, one worker
TARGETS: tuple[tuple[str, str, float, str], ...] = (
    ("short 64 B req/s, mtcp / linux", "rps:mtcp/linux", 1.7, ">="),
    ("short 64 B req/s, mtcp / nginx", "rps:mtcp/nginx", 0.9, ">="),
    ("short 64 B whole-machine CPU/req, mtcp / linux", "machine:mtcp/linux", 0.6, "<="),
    ("download Gb/s, mtcp / nginx", "gbps:mtcp/nginx", 0.8, ">="),
    ("priority: short conn. p99 under 8 flows, on / off", "p99:on/off", 0.5, "<="),
    ("priority: handshake p99 under 8 flows, on / off (extra)", "handshake p99:on/off", 0.5, "<="),
    ("idle CPU of the appliance, mtcp (% of a core)", "idle:mtcp", 1.0, "<"),
    ("idle CPU of the appliance, linux (% of a core)", "idle:linux", 1.0, "<"),
    # issue 18's targets
    ("TLS 1.3 full handshakes/s, mtcp / nginx", "tls-full:mtcp/nginx", 0.9, ">="),
    ("TLS 1.3 resumed handshakes/s, mtcp / nginx", "tls-resumed:mtcp/nginx", 0.9, ">="),
    ("keep-alive 64 B over TLS req/s, mtcp / nginx", "tls-keepalive:mtcp/nginx", 0.9, ">="),
    ("TLS 1.3 full handshakes/s, linux / nginx", "tls-full:linux/nginx", 0.9, ">="),
    ("TLS 1.3 resumed handshakes/s, linux / nginx", "tls-resumed:linux/nginx", 0.9, ">="),
    ("keep-alive 64 B over TLS req/s, linux / nginx", "tls-keepalive:linux/nginx", 0.9, ">="),
)
TARGET_ROW = "short-64B-c64"

# issue 13's targets: mtcp (static responder on) against nginx and lighttpd, per row driven
# by wrk and by the load generator (where one wrk core is the ceiling)
TARGETS_13: tuple[tuple[str, str, float, str], ...] = tuple(
    t
    for pre, tool in (("", "wrk"), ("load-", "load"))
    for t in (
        (f"short 64 B req/s, mtcp / nginx ({tool})", f"{pre}short-64B-c64 rps:mtcp/nginx",
         1.3, ">="),
        (f"short 64 B req/s, mtcp / lighttpd ({tool})", f"{pre}short-64B-c64 rps:mtcp/lighttpd",
         1.3, ">="),
        (f"short 64 B server CPU/req, mtcp / nginx ({tool})",
         f"{pre}short-64B-c64 srv:mtcp/nginx", 0.5, "<="),
        (f"keep-alive 64 B req/s, mtcp / lighttpd ({tool})",
         f"{pre}keepalive-64B-c64 rps:mtcp/lighttpd", 1.1, ">="),
        (f"keep-alive 64 B server CPU/req, mtcp / lighttpd ({tool})",
         f"{pre}keepalive-64B-c64 srv:mtcp/lighttpd", 1.0, "<="),
        (f"short 64 B whole-machine CPU/req, mtcp / nginx ({tool})",
         f"{pre}short-64B-c64 machine:mtcp/nginx", 0.8, "<="),
    )
)  # fmt: skip

NGINX_CONF = """\
worker_processes {workers};
worker_cpu_affinity {affinity};
daemon off;
master_process on;
user root;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 16384; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    default_type application/octet-stream;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server {{
        listen {ip}:{port};
        root {root};
    }}
{tls}}}
"""
# the same certificate and policy as the appliance's (appliance.http.tls): TLS 1.3/1.2,
# Mozilla intermediate ciphers and groups, session tickets (nginx's default), no cache
NGINX_TLS = """    server {{
        listen {ip}:{port} ssl;
        root {root};
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_ciphers {ciphers};
        ssl_ecdh_curve {groups};
        ssl_prefer_server_ciphers off;
        ssl_session_tickets on;
        ssl_session_cache off;
    }}
"""

LIGHTTPD_CONF = """\
server.document-root = "{root}"
server.bind = "{ip}"
server.port = {port}
server.errorlog = "{tmp}/error.log"
server.network-backend = "sendfile"
server.max-fds = 16384
server.max-connections = 8192
server.max-worker = {max_worker}
mimetype.assign = ("" => "application/octet-stream")
"""


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


def appliance_argv() -> list[str]:
    """The appliance's command: the entry point of the venv whose Python runs this script."""
    return [str(Path(sys.executable).with_name("mtcp-appliance"))]


def _clean_env() -> dict[str, str]:
    # settings of the appliance come from our flags only
    return {k: v for k, v in os.environ.items() if not k.startswith("MTCP_APPLIANCE_")}


class Server:
    """One server under test in the server namespace, pinned to ``cpus``."""

    def __init__(
        self,
        kind: str,
        sv: netns.Namespace,
        link: netns.Veth,
        cpus: Sequence[int],
        site: Path,
        *,
        workers: int = 1,
        priority: bool = True,
        extra: Sequence[str] = (),
        tls: tuple[Path, Path] | None = None,
    ) -> None:
        self.kind, self.sv, self.link, self.cpus = kind, sv, link, list(cpus)
        self.tls = tls  # (certificate, key): HTTPS on TLS_PORT too
        self.extra = list(extra)  # more flags for the appliance
        self.site, self.workers, self.priority = site, workers, priority
        self.ip = str(link.addr_b.ip)
        self.tmp = Path(tempfile.mkdtemp(prefix=f"web-bench-{kind}-"))
        os.chmod(self.tmp, 0o755)
        self.proc: subprocess.Popen[bytes] | None = None
        self.kernel_addr = False
        self.start_s = NAN

    @property
    def appliance(self) -> bool:
        return self.kind in ("mtcp", "linux", *VARIANTS)

    @property
    def user_level(self) -> bool:
        return self.kind == "mtcp" or self.kind in VARIANTS

    def argv(self) -> list[str]:
        k, n = self.kind, str(self.workers)
        flags = f"--port {PORT} --cores {n} --metrics {METRICS} --drain-timeout 2".split()
        flags += ["--root", str(self.site), *self.extra]
        if k in VARIANTS:
            flags += VARIANTS[k]
            k = "mtcp"
        if self.tls is not None and k in ("mtcp", "linux"):
            flags += ["--tls-port", str(TLS_PORT), "--cert", str(self.tls[0])]
            flags += ["--key", str(self.tls[1])]
        if k == "mtcp":
            argv = [*appliance_argv(), "serve", *"--stack mtcp --backend afpacket".split()]
            argv += ["--iface", self.link.if_b, "--ip", str(self.link.addr_b), *flags]
            return argv + ([] if self.priority else ["--no-priority"])
        if k == "linux":
            return [*appliance_argv(), "serve", "--stack", "linux", "--ip", self.ip, *flags]
        if k == "nginx":
            masks = " ".join(format(1 << c, "b") for c in self.cpus[: self.workers])
            conf = self.tmp / "nginx.conf"
            tls = ""
            if self.tls is not None:
                from appliance.http import tls as app_tls

                tls = NGINX_TLS.format(
                    ip=self.ip,
                    port=TLS_PORT,
                    root=self.site,
                    cert=self.tls[0],
                    key=self.tls[1],
                    ciphers=app_tls.TLS12_CIPHERS,
                    groups=app_tls.GROUPS.replace("P-256", "prime256v1").replace(
                        "P-384", "secp384r1"
                    ),
                )
            conf.write_text(
                NGINX_CONF.format(
                    workers=n,
                    affinity=masks,
                    tmp=self.tmp,
                    ip=self.ip,
                    port=PORT,
                    root=self.site,
                    tls=tls,
                )
            )
            return ["nginx", "-c", str(conf), "-p", str(self.tmp)]
        if k == "lighttpd":
            conf = self.tmp / "lighttpd.conf"
            conf.write_text(
                LIGHTTPD_CONF.format(
                    root=self.site,
                    ip=self.ip,
                    port=PORT,
                    tmp=self.tmp,
                    max_worker=0 if n == "1" else n,
                )
            )
            return ["lighttpd", "-D", "-f", str(conf)]
        raise ValueError(k)

    def start(self, cl: netns.Namespace) -> None:
        if not self.user_level:
            self.sv.ip("addr", "add", str(self.link.addr_b), "dev", self.link.if_b)
            self.kernel_addr = True
        t0 = time.monotonic()
        out = open(self.tmp / "stdout.log", "wb")  # noqa: SIM115 - closed with the process
        err = open(self.tmp / "stderr.log", "wb")  # noqa: SIM115
        try:
            self.proc = subprocess.Popen(
                common.in_ns(self.sv, self.cpus, self.argv()),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=_clean_env(),
                preexec_fn=common.die_with_parent,
            )
        finally:
            out.close()
            err.close()
        deadline = t0 + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.kind} exited with {self.proc.returncode}: {self.log()}")
            if cl.call(http_get, self.ip, SMALL_FILES[64], 1.0) == 200:
                self.start_s = time.monotonic() - t0
                return
            time.sleep(0.1)
        raise RuntimeError(f"{self.kind} did not answer within {START_TIMEOUT_S:g}s: {self.log()}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def cpu_seconds(self) -> float:
        return common.tree_cpu_seconds(self.pid)

    def counters(self) -> dict[str, float]:
        """The appliance's counters of COUNTERS, summed over cores ({} for the others)."""
        if not self.appliance:
            return {}
        try:
            text = self.sv.call(_fetch, f"http://{METRICS}/metrics", 5.0)
        except OSError:
            return {}
        return parse_counters(text)

    def log(self) -> str:
        parts = []
        for name in ("stderr.log", "stdout.log", "error.log"):
            with contextlib.suppress(OSError):
                if t := (self.tmp / name).read_text(errors="replace").strip():
                    parts.append(f"{name}: {t[-800:]}")
        return " | ".join(parts) or "(no output)"

    def stop(self) -> None:
        try:
            if self.proc is not None:
                common.stop_process(self.proc, 15.0)
        finally:
            if self.kernel_addr:
                self.sv.ip("addr", "del", str(self.link.addr_b), "dev", self.link.if_b)
                self.kernel_addr = False
            shutil.rmtree(self.tmp, ignore_errors=True)


def http_get(ip: str, path: str, timeout: float) -> int:
    """The status of GET http://ip:PORT/path (0: no answer); run inside the client namespace."""
    conn = http.client.HTTPConnection(ip, PORT, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    except OSError:
        return 0
    finally:
        conn.close()


def _fetch(url: str, timeout: float) -> str:
    host, _, rest = url.removeprefix("http://").partition("/")
    h, _, p = host.partition(":")
    conn = http.client.HTTPConnection(h, int(p or 80), timeout=timeout)
    try:
        conn.request("GET", "/" + rest)
        return conn.getresponse().read().decode(errors="replace")
    finally:
        conn.close()


def parse_counters(text: str) -> dict[str, float]:
    """Prometheus text: the families of COUNTERS summed over cores, drops by reason and HTTP
    responses by status class kept apart (``mtcp_drops_total{reason="x"}`` → ``drops:x``)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_labels, _, value = line.rpartition(" ")
        name, _, labels = name_labels.partition("{")
        if name not in COUNTERS:
            continue
        key = name.removeprefix("mtcp_").removesuffix("_total")
        for label in ("reason", "status_class"):
            if f'{label}="' in labels:
                key += ":" + labels.split(f'{label}="', 1)[1].split('"', 1)[0]
        with contextlib.suppress(ValueError):
            out[key] = out.get(key, 0.0) + float(value)
    return out


def counter_delta(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    return {k: v - a.get(k, 0.0) for k, v in b.items() if v - a.get(k, 0.0)}


# ---------------------------------------------------------------- one row


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


# ---------------------------------------------------------------- figures


def median(vals: Sequence[float]) -> float:
    good = [v for v in vals if not math.isnan(v)]
    return statistics.median(good) if good else NAN


def pick(rows: Sequence[Row], attr: str, **match: Any) -> float:
    """The median of ``attr`` over the rows that match (NaN when none)."""
    sel = [getattr(r, attr) for r in rows if all(getattr(r, k) == v for k, v in match.items())]
    return median(sel)


def _ratio(a: float, b: float) -> float:
    return a / b if b and not math.isnan(a) and not math.isnan(b) else NAN


def figures(rows: Sequence[Row], idles: Sequence[Idle]) -> dict[str, float]:
    """The ratios that the targets use, and the same ratios for every other workload."""
    main = [r for r in rows if r.kind != "scaling" and r.workers == 1]
    f: dict[str, float] = {}
    t = {"workload": TARGET_ROW}
    f["rps:mtcp/linux"] = _ratio(
        pick(main, "rps", server="mtcp", **t), pick(main, "rps", server="linux", **t)
    )
    f["rps:mtcp/nginx"] = _ratio(
        pick(main, "rps", server="mtcp", **t), pick(main, "rps", server="nginx", **t)
    )
    f["machine:mtcp/linux"] = _ratio(
        pick(main, "machine_us_per_unit", server="mtcp", **t),
        pick(main, "machine_us_per_unit", server="linux", **t),
    )
    f["gbps:mtcp/nginx"] = _ratio(
        pick(main, "gbps", server="mtcp", kind="download"),
        pick(main, "gbps", server="nginx", kind="download"),
    )
    for key, attr in (
        ("p99:on/off", "conn_p99_ms"),
        ("handshake p99:on/off", "hs_p99_ms"),
        ("wrk p99:on/off", "p99_ms"),
    ):
        f[key] = _ratio(
            pick(main, attr, kind="priority", priority=True),
            pick(main, attr, kind="priority", priority=False),
        )
    for kind in TLS_KINDS:
        for app in ("mtcp", "linux"):
            f[f"{kind}:{app}/nginx"] = _ratio(
                pick(main, "rps", server=app, kind=kind),
                pick(main, "rps", server="nginx", kind=kind),
            )
    for kind in ("mtcp", "linux"):
        f[f"idle:{kind}"] = max((i.server_cpu_pct for i in idles if i.server == kind), default=NAN)
    for wl in dict.fromkeys(r.workload for r in main if r.kind in ("short", "keepalive")):
        for other in ("linux", "nginx", "lighttpd", *VARIANTS):
            for attr, tag in (
                ("rps", "rps"),
                ("machine_us_per_unit", "machine"),
                ("server_us_per_unit", "srv"),
            ):
                f[f"{wl} {tag}:mtcp/{other}"] = _ratio(
                    pick(main, attr, server="mtcp", workload=wl),
                    pick(main, attr, server=other, workload=wl),
                )
    return f


def targets(fig: dict[str, float]) -> list[dict[str, Any]]:
    out = []
    for label, key, bound, op in (*TARGETS, *TARGETS_13):
        v = fig.get(key, NAN)
        met = None if math.isnan(v) else {">=": v >= bound, "<=": v <= bound, "<": v < bound}[op]
        out.append(
            {"target": label, "key": key, "value": v, "bound": f"{op} {bound:g}", "met": met}
        )
    return out


def _num(v: float, spec: str) -> str:
    return "-" if math.isnan(v) else format(v, spec)


def md_table(head: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    widths = [
        max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(head)
    ]
    right = [i > 1 for i in range(len(head))]

    def line(cells: Sequence[str]) -> str:
        return (
            "| "
            + " | ".join(
                c.rjust(w) if r else c.ljust(w)
                for c, w, r in zip(cells, widths, right, strict=True)
            )
            + " |"
        )

    sep = (
        "|"
        + "|".join(
            ("-" * (w + 1) + ":") if r else ("-" * (w + 2))
            for w, r in zip(widths, right, strict=True)
        )
        + "|"
    )
    return "\n".join([line(head), sep, *(line(r) for r in body)])


def rows_table(rows: Sequence[Row]) -> str:
    head = [
        "workload",
        "server",
        "req/s",
        "Gb/s",
        "p50 ms",
        "p99 ms",
        "errors",
        "srv CPU %",
        "srv us/unit",
        "all us/unit",
        "wake/req",
    ]
    body = []
    for r in rows:
        name = r.workload
        if r.workers != 1:
            name += f" w{r.workers}"
        server = r.server + (
            ""
            if r.priority is None or r.kind != "priority"
            else (" prio on" if r.priority else " prio off")
        )
        unit = "/MiB" if r.unit == "MiB" else ""
        body.append(
            [
                name,
                server,
                _num(r.rps, ".0f"),
                _num(r.gbps, ".2f"),
                _num(r.p50_ms, ".2f"),
                _num(r.p99_ms, ".2f"),
                str(r.errors) if r.ok else "FAIL",
                _num(r.server_cpu_pct, ".0f"),
                _num(r.server_us_per_unit, ".1f") + unit,
                _num(r.machine_us_per_unit, ".1f") + unit,
                _num(r.wakeups_per_req, ".2f"),
            ]
        )
    return md_table(head, body)


def idle_table(idles: Sequence[Idle]) -> str:
    body = [
        [
            i.server + (f" w{i.workers}" if i.workers != 1 else ""),
            f"{i.start_s:.2f}",
            _num(i.server_cpu_pct, ".2f"),
            _num(i.machine_cpu_pct, ".1f"),
        ]
        for i in idles
    ]
    return md_table(["server", "start s", "idle CPU, % of a core", "machine busy %"], body)


def targets_table(tg: Sequence[dict[str, Any]]) -> str:
    body = [
        [
            t["target"],
            _num(t["value"], ".2f"),
            t["bound"],
            {True: "met", False: "MISSED", None: "no figure"}[t["met"]],
        ]
        for t in tg
    ]
    return md_table(["target (issues 6, 13, 18)", "value", "target", ""], body)


def priority_table(rows: Sequence[Row]) -> str:
    head = ["priority", "link Mb/s", "conns", "conn p50 ms", "conn p99 ms", "handshake p50 ms",
            "handshake p99 ms", "req/s", "wrk p50 ms", "wrk p99 ms", "errors",
            "8 flows Gb/s"]  # fmt: skip
    body = [
        [
            "on" if r.priority else "off",
            str(r.link_mbps or "none"),
            str(r.conn_count),
            _num(r.conn_p50_ms, ".2f"),
            _num(r.conn_p99_ms, ".2f"),
            _num(r.hs_p50_ms, ".2f"),
            _num(r.hs_p99_ms, ".2f"),
            _num(r.rps, ".0f"),
            _num(r.p50_ms, ".2f"),
            _num(r.p99_ms, ".2f"),
            str(r.errors) if r.ok else "FAIL",
            _num(r.background.get("gbps", NAN), ".2f"),
        ]
        for r in rows
        if r.kind == "priority"
    ]
    return md_table(head, body)


def report(doc: dict[str, Any], rows: Sequence[Row], idles: Sequence[Idle]) -> str:
    env = doc["environment"]
    parts = [
        f"# web_bench {doc['when']}{' (quick)' if doc['settings']['quick'] else ''}",
        "",
        f"{env.get('cpu_model', '?')}, {env.get('cpus')} CPUs, kernel {env.get('kernel')}, "
        f"commit {env.get('commit') or '?'}; server on CPU {doc['server_cpus']}, wrk on CPU "
        f"{doc['client_cpus']}; {doc['settings']['duration']:g} s per row",
        "",
        rows_table([r for r in rows if r.kind != "scaling"]),
        "",
        "srv: the server's whole process tree; all: every CPU of the machine (/proc/stat); "
        "per request, or per MiB for downloads.",
        "",
        f"Priority queueing (mtcp): {PRIORITY_BULK_FLOWS} connections download "
        f"{_fmt_size(doc['settings']['big'])} files in a loop, wrk makes "
        f"{PRIORITY_SHORT_CONNS} short connections at a time, and a probe one at a time "
        f"(at most {doc['settings']['probe_rate']:g}/s) timed from connect() to close "
        "(conn: the handshake included, which wrk's latency leaves out; handshake: connect() "
        "alone), the stack's sending shaped to a link of "
        f"{doc['settings'].get('priority_link_mbps') or 'no'} Mb/s (a veth has no line rate):",
        "",
        priority_table(rows),
        "",
        idle_table(idles),
        "",
        targets_table(doc["targets"]),
    ]
    if scaling := [r for r in rows if r.kind == "scaling"]:
        parts += ["", "## Scaling (short 64 B)", "", rows_table(scaling)]
    parts += ["", f"scaling: {doc['scaling']}"]
    return "\n".join(parts) + "\n"


# ---------------------------------------------------------------- chart

COLORS = {
    "mtcp": "#d95f02",
    "linux": "#7570b3",
    "nginx": "#1b9e77",
    "lighttpd": "#e7298a",
    "prio on": "#d95f02",
    "prio off": "#999999",
}


def _panels(rows: Sequence[Row]) -> list[tuple[str, str, list[tuple[str, float]]]]:
    panels: list[tuple[str, str, list[tuple[str, float]]]] = []
    seen: dict[str, int] = {}
    for r in rows:
        if r.kind == "priority":
            title, unit = "short conn. p99 under 8 downloads (mtcp)", "ms"
            label, value = "prio on" if r.priority else "prio off", r.conn_p99_ms
        elif r.kind == "scaling":
            title, unit, label, value = f"short 64B, {r.workers} workers", "req/s", r.server, r.rps
        elif r.kind == "download":
            title, unit, label, value = r.workload, "Gb/s", r.server, r.gbps
        else:
            title, unit, label, value = r.workload, "req/s", r.server, r.rps
        if title not in seen:
            seen[title] = len(panels)
            panels.append((title, unit, []))
        bars = panels[seen[title]][2]
        bars[:] = [(lbl, v) for lbl, v in bars if lbl != label] + [(label, value)]
    return panels


def chart_svg(rows: Sequence[Row], title: str) -> tuple[str, int, int]:
    panels = _panels(rows)
    pw, ph, cols = 300, 220, 4
    nrows = max(1, math.ceil(len(panels) / cols))
    width, height = cols * pw + 20, nrows * ph + 50
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        'font-family="sans-serif" font-size="11">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="10" y="24" font-size="15" font-weight="bold">{html.escape(title)}</text>',
    ]
    for i, (ptitle, unit, bars) in enumerate(panels):
        x0, y0 = 10 + (i % cols) * pw, 40 + (i // cols) * ph
        out.append(
            f'<text x="{x0 + 5}" y="{y0 + 14}" font-weight="bold">'
            f"{html.escape(ptitle)} ({unit})</text>"
        )
        top = max((v for _, v in bars if not math.isnan(v)), default=0.0) or 1.0
        bw, base, span = (pw - 30) / max(1, len(bars)), y0 + ph - 30, ph - 65
        for j, (label, v) in enumerate(bars):
            h = 0.0 if math.isnan(v) else span * v / top
            x = x0 + 10 + j * bw
            out.append(
                f'<rect x="{x + 4:.1f}" y="{base - h:.1f}" width="{bw - 8:.1f}" '
                f'height="{h:.1f}" fill="{COLORS.get(label, "#666")}"/>'
            )
            txt = "n/a" if math.isnan(v) else (f"{v:.0f}" if v >= 100 else f"{v:.2f}")
            out.append(
                f'<text x="{x + bw / 2:.1f}" y="{base - h - 3:.1f}" '
                f'text-anchor="middle">{txt}</text>'
            )
            out.append(
                f'<text x="{x + bw / 2:.1f}" y="{base + 14:.1f}" '
                f'text-anchor="middle">{html.escape(label)}</text>'
            )
        out.append(
            f'<line x1="{x0 + 10}" y1="{base}" x2="{x0 + pw - 20}" y2="{base}" stroke="#333"/>'
        )
    out.append("</svg>")
    return "\n".join(out), width, height


def render_png(svg: str, width: int, height: int, png: Path) -> str | None:
    """The SVG as a PNG through headless Chromium; returns why not, or None."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        return "no chromium (apt-get install chromium): wrote the SVG only"
    with tempfile.TemporaryDirectory(prefix="web-bench-chart-") as tmp:
        page = Path(tmp) / "chart.html"
        page.write_text(f'<html><body style="margin:0">{svg}</body></html>')
        argv = [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-sync",
            f"--user-data-dir={tmp}/profile",
            f"--window-size={width},{height}",
            f"--screenshot={png}",
            page.as_uri(),
        ]
        try:
            # a sanitizer runtime preloaded for the appliance (scripts/test-asan) breaks it
            env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env)
        except subprocess.TimeoutExpired:
            return "chromium did not finish the chart within 60 s"
    if proc.returncode != 0 or not png.exists():
        return f"chromium failed ({proc.returncode}): {proc.stderr[-300:]}"
    return None


# ---------------------------------------------------------------- the run


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


def make_site(root: Path, big: int) -> None:
    os.chmod(root, 0o755)
    for size, path in SMALL_FILES.items():
        (root / path[1:]).write_bytes(os.urandom(size))
    block = os.urandom(1 << 20)
    with open(root / BIG_FILE[1:], "wb") as f:
        for _ in range(big >> 20):
            f.write(block)
        f.write(block[: big % (1 << 20)])


def make_cert(folder: Path, ip: str) -> tuple[Path, Path]:
    """A self-signed ECDSA P-256 certificate for ``ip`` (and bench.test): every server of
    the HTTPS rows uses it."""
    os.chmod(folder, 0o755)
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-keyout", str(key), "-out", str(cert), "-days", "2", "-nodes", "-subj", "/CN=bench.test",
         "-addext", f"subjectAltName=DNS:bench.test,IP:{ip}"],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    os.chmod(key, 0o644)  # nginx's workers run as root here; the appliance reads it too
    return cert, key


def preflight(opts: argparse.Namespace) -> str | None:
    if msg := common.check_root(PROG):
        return msg
    tools = ("wrk", "nginx", "lighttpd", "taskset", "openssl", "gcc")
    missing = [t for t in tools if shutil.which(t) is None]
    if not Path("/usr/include/openssl/ssl.h").exists():
        missing.append("libssl-dev (for bench/tls_load.c)")
    if missing:
        return (
            f"{PROG}: missing {', '.join(missing)}: `make bench` installs them (or "
            "apt-get install wrk nginx-light lighttpd util-linux)"
        )
    if not Path(appliance_argv()[0]).exists():
        return f"{PROG}: no mtcp-appliance next to {sys.executable}: run it with the project's venv"
    return common.check_cpus(PROG, opts.server_cpu, opts.client_cpu)


def main(argv: Sequence[str] | None = None) -> int:
    cpus = sorted(os.sched_getaffinity(0))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--quick",
        action="store_true",
        help="a few seconds per row, fewer rows, an 8 MiB download (CI)",
    )
    ap.add_argument("--duration", type=float, help="seconds per row (default 10; quick 2)")
    ap.add_argument("--big-mib", type=int, help="size of the download file (default 100; quick 8)")
    ap.add_argument("--servers", default=",".join(SERVERS), help="which of " + ",".join(SERVERS))
    ap.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="rounds over the servers (reversed order every other round); the ratios use medians",
    )
    ap.add_argument(
        "--no-priority-rows",
        dest="priority_rows",
        action="store_false",
        help="leave out the priority-queueing experiment",
    )
    ap.add_argument(
        "--scaling",
        choices=("auto", "only", "off"),
        default="auto",
        help="the 1, 2, 4 ... workers sweep: auto runs it on machines with 4 CPUs "
        "or more, after the rest",
    )
    ap.add_argument("--server-cpu", type=int, default=cpus[0])
    ap.add_argument("--client-cpu", type=int, default=cpus[1] if len(cpus) > 1 else cpus[0])
    ap.add_argument(
        "--idle", type=float, help="seconds of idle measured after each start (default 2; quick 1)"
    )
    ap.add_argument("--settle", type=float, help="pause between rows, s (default 1; quick 0.5)")
    ap.add_argument(
        "--warmup",
        type=float,
        default=1.0,
        help="priority rows: seconds the long flows run before the measurement",
    )
    ap.add_argument(
        "--probe-rate",
        type=float,
        default=100.0,
        help="priority rows: connections a second of the probe that times the handshake too",
    )
    ap.add_argument(
        "--only",
        metavar="ROWS",
        help="only these workloads, by name or kind, comma-separated (short-64B-c64,download)",
    )
    ap.add_argument(
        "--no-rps",
        dest="rps",
        action="store_false",
        help="leave the veth's receive work where the kernel puts it (on the sending side's "
        "CPU) instead of on each side's own CPUs, as on two machines",
    )
    ap.add_argument(
        "--priority-link-mbps",
        type=int,
        default=1000,
        help="priority rows: the appliance's --tx-rate-mbps (a veth has no line rate, so "
        "without one no queue forms in the stack; 0: none)",
    )
    ap.add_argument(
        "--appliance-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="one more argument for both appliance runs (repeat it: "
        "--appliance-arg=--afpacket-rx --appliance-arg=ring)",
    )
    ap.add_argument(
        "--tls-clients",
        type=int,
        default=64,
        help="HTTPS handshake rows: connections at once (default 64, as the short rows)",
    )
    ap.add_argument("--name", default="web", help="results file name prefix")
    ap.add_argument("--out", type=Path, default=common.RESULTS)
    opts = ap.parse_args(argv)
    opts.duration = min(opts.duration or (2.0 if opts.quick else 10.0), 300.0)
    opts.big = (opts.big_mib or (8 if opts.quick else 100)) << 20
    opts.idle = opts.idle if opts.idle is not None else (1.0 if opts.quick else 2.0)
    opts.settle = opts.settle if opts.settle is not None else (0.5 if opts.quick else 1.0)
    servers = [s for s in opts.servers.split(",") if s]
    if bad := [s for s in servers if s not in SERVERS and s not in VARIANTS]:
        known = ",".join((*SERVERS, *VARIANTS))
        print(f"{PROG}: unknown servers {bad}; choose from {known}", file=sys.stderr)
        return 2
    if opts.server_cpu == opts.client_cpu:
        print(
            f"{PROG}: the server and wrk need different CPUs (this process may use {cpus})",
            file=sys.stderr,
        )
        return 2
    if msg := preflight(opts):
        print(msg, file=sys.stderr)
        return 2
    common.exit_on_sigterm()
    if len(cpus) >= 4:
        scaling = "off" if opts.scaling == "off" else "run"
    else:
        scaling = f"skipped: needs 4 CPUs or more, this process may use {len(cpus)}"
        if opts.scaling == "only":
            print(f"{PROG}: scaling {scaling}", file=sys.stderr)
            return 2

    when = common.stamp()
    rows: list[Row] = []
    idles: list[Idle] = []
    t0 = time.monotonic()
    site = Path(tempfile.mkdtemp(prefix="web-bench-site-"))
    tls_dir = Path(tempfile.mkdtemp(prefix="web-bench-tls-"))  # not under the served root
    try:
        make_site(site, opts.big)
        with netns.Lab() as lab:
            cl, sv, link = common.client_server_pair(lab, "web")
            rig = Rig(cl, sv, link, [opts.server_cpu], [opts.client_cpu], site, opts)
            rig.tls = make_cert(tls_dir, str(link.addr_b.ip))
            rig.tls_load = build_tls_load(tls_dir)
            if opts.rps:
                common.steer_receive(cl, sv, link, rig.client_cpus, rig.server_cpus)
            if opts.scaling != "only":
                wls = workloads(opts)
                for i in range(opts.repeat):
                    for kind in servers if i % 2 == 0 else servers[::-1]:
                        run_server(rig, kind, wls, rig.server_cpus, rows, idles)
                    if opts.priority_rows and "mtcp" in servers:
                        priority_rows(rig, rows, idles)
            if scaling == "run":
                scaling_rows(rig, rows, idles, cpus)
    finally:
        shutil.rmtree(site, ignore_errors=True)
        shutil.rmtree(tls_dir, ignore_errors=True)
    if scaling.startswith("skipped"):
        say(f"scaling: {scaling}")

    fig = figures(rows, idles)
    doc: dict[str, Any] = {
        "when": when,
        "seconds": round(time.monotonic() - t0, 1),
        "settings": common.settings(opts),
        "environment": common.environment(
            wrk=common.tool_version(["wrk", "-v"]),
            nginx=common.tool_version(["nginx", "-v"]),
            lighttpd=common.tool_version(["lighttpd", "-v"]),
        ),
        "server_cpus": [opts.server_cpu],
        "client_cpus": [opts.client_cpu],
        "scaling": scaling,
        "rows": [asdict(r) for r in rows],
        "idle": [asdict(i) for i in idles],
        "figures": fig,
        "targets": targets(fig),
    }
    name = f"{opts.name}-quick" if opts.quick else opts.name
    path = common.result_path(opts.out, name, when)
    text = report(doc, rows, idles)
    svg, width, height = chart_svg(rows, f"mtcp-appliance web_bench {when}")
    png = path.with_suffix(".png")
    if why := render_png(svg, width, height, png):
        path.with_suffix(".svg").write_text(svg)
        doc["chart"] = why
        say(f"chart: {why}")
    else:
        doc["chart"] = png.name
    path.with_suffix(".md").write_text(text)
    common.write_json(path, doc)
    print(text)
    print(f"wrote {common.shown(path)} (and .md, {png.suffix if not why else '.svg'})")
    failed = [f"{r.server}/{r.workload}" for r in rows if not r.ok]
    if failed:
        print(f"{PROG}: rows without figures: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
