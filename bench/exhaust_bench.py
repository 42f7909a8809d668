#!/usr/bin/env python3
"""Exhaustion benchmark (issue 15): can a few clients lock everyone else out?

The appliance (mtcp, one core, afpacket) and nginx (one worker, 4,096 worker connections, as
in the issue's campaign) in turn, in the same two-namespace topology as ``make bench``
(server on one CPU, clients on the other). For each server: an unloaded baseline of
legitimate requests, then each attack in turn (``bench/exhaust_attack.py`` in the client
namespace): zero-window readers, idle floods, slowloris, slow readers at 1 B/s, a SYN flood.
During each attack a legitimate client makes short requests at a fixed rate (one at a time,
``Connection: close``, 3 s timeout); the row reports their success rate and p99 against the
unloaded p99, and the server's worker RSS before, at its peak during, and ``--after`` seconds
after the attackers left. One more row: a request with sixteen overlapping ranges (the bytes
answered per byte of file: range amplification).

Targets (issue 15), checked for the appliance and printed met or MISSED: legitimate success
>= 99% and p99 <= 3x unloaded during zero-window readers, idle floods and slow readers; RSS
back within 10% of its pre-attack value ``--after`` (60) s after; RSS during the attack at
most the pre-attack RSS plus the socket-buffer budget; range amplification <= 1x.

Run as root (``make bench-exhaust``, or ``--quick``: small counts, a few seconds a row, what
CI runs). Results: ``bench/results/exhaust-<time>.json`` and ``.md``. Every attacker is
bounded in count and time (``--duration`` of the attacker process is a hard bound).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import web_bench  # noqa: E402

from mtcp_core.testing import netns  # noqa: E402

PROG = "exhaust_bench"
PORT = web_bench.PORT
SMALL = web_bench.SMALL_FILES[64]
BIG = web_bench.BIG_FILE  # 1 MiB here, the issue's large file
SERVERS = ("mtcp", "nginx")
ATTACK = Path(__file__).resolve().parent / "exhaust_attack.py"
LEGIT_TIMEOUT_S = 3.0
BUDGET_MB = 512  # the appliance's default socket-buffer budget per core

NGINX_CONF = web_bench.NGINX_CONF.replace("worker_connections 16384", "worker_connections 4096")


@dataclass
class Scenario:
    name: str
    kind: str  # exhaust_attack.py kind
    count: int  # connections (syn_flood: SYNs a second)
    checked: bool  # the success / p99 targets apply


# each attack (an exhaust_attack.py kind): its scenarios' name, whether the success and p99
# targets apply, its sizes (connections; syn_flood: SYNs a second) in the full run and in the
# quick one (bench/README.md, "What runs")
ATTACKS: list[tuple[str, str, bool, tuple[int, ...], int]] = [
    ("zero_window", "zero-window readers {:,}", True, (4200,), 100),
    ("idle", "idle flood {:,}", True, (10000, 70000), 200),
    ("slowloris", "slowloris {:,}", False, (2000,), 100),
    ("slow_reader", "slow readers {:,} at 1 B/s", True, (2000,), 100),
    ("syn_flood", "SYN flood {:,}/s", False, (20000,), 2000),
]


def scenarios(quick: bool) -> list[Scenario]:
    return [
        Scenario(name.format(count), kind, count, checked)
        for kind, name, checked, full, small in ATTACKS
        for count in ((small,) if quick else full)
    ]


@dataclass
class Legit:
    ok: int = 0
    tries: int = 0
    latencies_ms: list[float] = field(default_factory=list)

    @property
    def success_pct(self) -> float:
        return 100.0 * self.ok / self.tries if self.tries else math.nan

    def p(self, q: float) -> float:
        v = sorted(self.latencies_ms)
        if not v:
            return math.nan
        return v[min(len(v) - 1, max(0, math.ceil(q / 100 * len(v)) - 1))]


@dataclass
class Row:
    server: str
    scenario: str
    count: int
    checked: bool
    legit_ok: int = 0
    legit_tries: int = 0
    success_pct: float = math.nan
    p50_ms: float = math.nan
    p99_ms: float = math.nan
    p99_ratio: float = math.nan
    rss_pre_mb: float = math.nan
    rss_peak_mb: float = math.nan
    rss_after_mb: float = math.nan
    after_ratio: float = math.nan
    attacker: dict[str, Any] = field(default_factory=dict)
    counters: dict[str, float] = field(default_factory=dict)
    rss_after_maps: list[str] = field(default_factory=list)  # where the RSS after sits
    notes: list[str] = field(default_factory=list)


def legit_get(ip: str) -> float | None:
    """One short request; its latency in ms, or None when it failed (run in the client ns)."""
    t0 = time.perf_counter()
    req = f"GET {SMALL} HTTP/1.1\r\nHost: legit\r\nConnection: close\r\n\r\n".encode()
    try:
        with socket.create_connection((ip, PORT), timeout=LEGIT_TIMEOUT_S) as s:
            s.settimeout(max(0.05, LEGIT_TIMEOUT_S - (time.perf_counter() - t0)))
            s.sendall(req)
            buf = b""
            while chunk := s.recv(65536):
                buf += chunk
                if time.perf_counter() - t0 > LEGIT_TIMEOUT_S:
                    return None
    except OSError:
        return None
    if not buf.startswith(b"HTTP/1.1 200") or len(buf) < 64:
        return None
    return (time.perf_counter() - t0) * 1000.0


def legit_run(ip: str, seconds: float, rate: float, cpu: int, stop: threading.Event) -> Legit:
    """Requests one at a time at ``rate`` a second for ``seconds`` (run in the client ns)."""
    os.sched_setaffinity(0, {cpu})
    out = Legit()
    t0 = time.monotonic()
    for i in range(max(1, int(seconds * rate))):
        wait = t0 + i / rate - time.monotonic()
        if wait > 0 and stop.wait(wait):
            break
        if time.monotonic() - t0 > seconds + LEGIT_TIMEOUT_S:
            break
        out.tries += 1
        ms = legit_get(ip)
        if ms is not None:
            out.ok += 1
            out.latencies_ms.append(ms)
    return out


def rss_mb(pid: int) -> float:
    """Resident memory of the server's workers: the descendants of ``pid`` (the appliance's
    worker, nginx's worker), MiB."""
    total = 0
    todo = common.children(pid)
    while todo:
        p = todo.pop()
        todo += common.children(p)
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
    return total / 2**20


def rss_maps(pid: int, top: int = 4) -> list[str]:
    """The worker's largest resident mappings ("size MiB, resident MiB, name"), to tell the
    stack's buffer pools from the interpreter's heap."""
    maps: list[tuple[int, int, str]] = []
    for p in common.children(pid):
        with contextlib.suppress(OSError):
            size, name = 0, ""
            for line in Path(f"/proc/{p}/smaps").read_text().splitlines():
                head = line.split()
                if "-" in head[0] and not head[0].endswith(":"):
                    lo, hi = (int(x, 16) for x in head[0].split("-"))
                    size, name = hi - lo, head[5] if len(head) > 5 else "[anon]"
                elif head[0] == "Rss:":
                    maps.append((int(head[1]) * 1024, size, name))
    maps.sort(reverse=True)
    return [f"{s / 2**20:.0f} MiB map, {r / 2**20:.1f} MiB resident {n}" for r, s, n in maps[:top]]


class Sampler(threading.Thread):
    """Peak worker RSS while it runs."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self.halt = pid, 0.0, threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            self.peak = max(self.peak, rss_mb(self.pid))
            self.halt.wait(0.25)

    def stop(self) -> float:
        self.halt.set()
        self.join()
        self.peak = max(self.peak, rss_mb(self.pid))
        return self.peak


COUNTER_NAMES = (
    "mtcp_evictions_total",
    "mtcp_orphan_aborts_total",
    "mtcp_user_timeouts_total",
    "mtcp_zero_window_aborts_total",
    "mtcp_syn_cookies_sent_total",
    "mtcp_buf_pressure_opens_total",
    "mtcp_buffer_released_bytes_total",
    "mtcp_idle_timeouts_total",
)
GAUGE_NAMES = ("mtcp_buffer_memory_used_bytes", "mtcp_buffer_memory_budget_bytes")


def appliance_counters(server: web_bench.Server) -> dict[str, float]:
    if server.kind != "mtcp":
        return {}
    try:
        text = server.sv.call(web_bench._fetch, f"http://{web_bench.METRICS}/metrics", 5.0)
    except OSError:
        return {}
    out: dict[str, float] = {}
    for line in text.splitlines():
        name, _, rest = line.partition("{")
        if name in COUNTER_NAMES or name in GAUGE_NAMES:
            with contextlib.suppress(ValueError):
                key = name.removeprefix("mtcp_").removesuffix("_total")
                out[key] = out.get(key, 0.0) + float(rest.rpartition(" ")[2])
        elif line.startswith('mtcp_drops_total{core="0",reason="tcp_no_memory"}'):
            out["drops_tcp_no_memory"] = float(line.rpartition(" ")[2])
    return out


class Rig:
    def __init__(self, lab: netns.Lab, opts: argparse.Namespace, site: Path) -> None:
        self.opts, self.site = opts, site
        self.cl, self.sv, self.link = common.client_server_pair(lab, "exh")
        common.steer_receive(self.cl, self.sv, self.link, [opts.client_cpu], [opts.server_cpu])
        net = self.link.network
        hosts = list(net.hosts())
        # more client addresses (70,000 connections need more than one address's ports) and
        # addresses the SYN flood spoofs: the client's kernel answers ARP for them, and an
        # nftables rule drops what comes back, so the server's SYN-ACKs reach nobody
        self.sources = [str(self.link.addr_a.ip), str(hosts[2]), str(hosts[3])]
        self.spoof = [str(h) for h in hosts[100:164]]
        for a in self.sources[1:] + self.spoof:
            self.cl.ip("addr", "add", f"{a}/32", "dev", self.link.if_a)
        spoof_set = ", ".join(self.spoof)
        self.cl.nft(
            "table ip exhaust_spoof {\n chain input {\n"
            "  type filter hook input priority 0; policy accept;\n"
            f"  ip daddr {{ {spoof_set} }} tcp flags & (syn | ack) == syn | ack drop\n"
            " }\n}\n"
        )
        self.ip = str(self.link.addr_b.ip)

    def attacker(self, sc: Scenario, hard_s: float) -> subprocess.Popen[str]:
        argv = [sys.executable, str(ATTACK), sc.kind, "--host", self.ip, "--port", str(PORT)]
        argv += ["--duration", f"{hard_s:g}", "--path-big", BIG]
        argv += ["--ramp-timeout", f"{self.opts.ramp:g}"]
        if sc.kind == "syn_flood":
            argv += ["--rate", str(sc.count), "--spoof", ",".join(self.spoof)]
        else:
            argv += ["--count", str(sc.count), "--sources", ",".join(self.sources)]
            if self.opts.quick:
                argv += ["--interval", "1"]
        return self.cl.popen(
            common.in_ns(self.cl, [self.opts.client_cpu], argv)[4:],  # already inside
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=common.die_with_parent,
        )

    def legit(self, seconds: float) -> Legit:
        stop = threading.Event()
        return self.cl.call(legit_run, self.ip, seconds, self.opts.rate, self.opts.client_cpu, stop)


class Server(web_bench.Server):
    def argv(self) -> list[str]:
        if self.kind != "nginx":
            return super().argv()
        conf = self.tmp / "nginx.conf"
        conf.write_text(
            NGINX_CONF.format(
                workers=1,
                affinity=format(1 << self.cpus[0], "b"),
                tmp=self.tmp,
                ip=self.ip,
                port=PORT,
                root=self.site,
                tls="",  # plain HTTP only: the attacks do not use TLS
            )
        )
        return ["nginx", "-c", str(conf), "-p", str(self.tmp)]


def say(msg: str) -> None:
    print(msg, flush=True)


def range_row(rig: Rig, server: Server) -> Row:
    """The issue's request: sixteen overlapping ranges of the 1 MiB file."""
    row = Row(server.kind, "16 overlapping ranges", 16, True)
    req = (
        f"GET {BIG} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nRange: bytes="
        + ",".join(["0-"] * 16)
        + "\r\n\r\n"
    ).encode()

    def fetch() -> bytes:
        with socket.create_connection((rig.ip, PORT), timeout=10) as s:
            s.sendall(req)
            buf = b""
            while chunk := s.recv(1 << 20):
                buf += chunk
            return buf

    try:
        buf = rig.cl.call(fetch)
        head, _, body = buf.partition(b"\r\n\r\n")
        row.counters = {
            "status": float(head.split(b" ", 2)[1]),
            "body_bytes": float(len(body)),
            "amplification": len(body) / rig.opts.big,
        }
    except (OSError, IndexError, ValueError) as exc:
        row.notes.append(f"{type(exc).__name__}: {exc}")
    return row


def attack_row(rig: Rig, server: Server, sc: Scenario, unloaded_p99: float) -> Row:
    o = rig.opts
    row = Row(server.kind, sc.name, sc.count, sc.checked)
    row.rss_pre_mb = rss_mb(server.pid)
    before = appliance_counters(server)
    hard = o.ramp + o.during + 30
    proc = rig.attacker(sc, hard)
    sampler = Sampler(server.pid)
    sampler.start()
    try:
        try:
            ready = common.read_json_line(proc, o.ramp + 15)  # type: ignore[arg-type]
            row.attacker["ready"] = ready
        except RuntimeError as exc:
            row.notes.append(str(exc))
        legit = rig.legit(o.during)
        mid = appliance_counters(server)
        row.counters = {k: v - before.get(k, 0.0) for k, v in mid.items() if "memory" not in k}
        for k in GAUGE_NAMES:
            key = k.removeprefix("mtcp_")
            if key in mid:
                row.counters[key] = mid[key]
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            row.notes.append("the attacker did not stop on SIGTERM")
        row.rss_peak_mb = sampler.stop()
    for line in out.splitlines():
        if line.startswith("{"):
            d = json.loads(line)
            if d.get("done"):
                row.attacker.update(d)
                if d.get("count_capped_to"):
                    row.notes.append(f"attacker capped at {d['count_capped_to']} (RLIMIT_NOFILE)")
            elif d.get("error"):
                row.notes.append(f"attacker: {d['error']}")
    if proc.returncode not in (0, None):
        row.notes.append(f"attacker exited {proc.returncode}: {err[-300:]}")
    row.legit_ok, row.legit_tries = legit.ok, legit.tries
    row.success_pct = legit.success_pct
    row.p50_ms, row.p99_ms = legit.p(50), legit.p(99)
    row.p99_ratio = row.p99_ms / unloaded_p99 if unloaded_p99 > 0 else math.nan
    time.sleep(o.after)
    row.rss_after_mb = rss_mb(server.pid)
    row.rss_after_maps = rss_maps(server.pid)
    end = appliance_counters(server)  # what happened up to now (releases come after)
    row.counters.update({k: v - before.get(k, 0.0) for k, v in end.items() if "memory" not in k})
    row.after_ratio = row.rss_after_mb / row.rss_pre_mb if row.rss_pre_mb > 0 else math.nan
    return row


def run_server(rig: Rig, kind: str, rows: list[Row]) -> None:
    o = rig.opts
    server = Server(kind, rig.sv, rig.link, [o.server_cpu], rig.site)
    try:
        server.start(rig.cl)
    except (RuntimeError, OSError) as exc:
        rows.append(Row(kind, "start", 0, False, notes=[f"{type(exc).__name__}: {exc}"]))
        server.stop()
        return
    try:
        rig.legit(1.0)  # warm up (ARP, the site's cache)
        base = rig.legit(o.baseline)
        row = Row(kind, "unloaded", 0, False, legit_ok=base.ok, legit_tries=base.tries)
        row.success_pct, row.p50_ms, row.p99_ms = base.success_pct, base.p(50), base.p(99)
        row.p99_ratio = 1.0
        row.rss_pre_mb = row.rss_peak_mb = row.rss_after_mb = rss_mb(server.pid)
        row.after_ratio = 1.0
        rows.append(row)
        say(line(row))
        unloaded = base.p(99)
        for sc in scenarios(o.quick):
            if o.only and not any(w in sc.name for w in o.only.split(",")):
                continue
            if server.proc is not None and server.proc.poll() is not None:
                rows.append(Row(kind, sc.name, sc.count, sc.checked, notes=["server exited"]))
                continue
            rows.append(attack_row(rig, server, sc, unloaded))
            say(line(rows[-1]))
        rows.append(range_row(rig, server))
        say(line(rows[-1]))
    finally:
        server.stop()


def line(r: Row) -> str:
    if r.scenario == "16 overlapping ranges":
        c = r.counters
        return (
            f"  {r.server:5} {r.scenario:30} status {c.get('status', math.nan):.0f}, "
            f"{c.get('amplification', math.nan):.2f}x the file {r.notes or ''}"
        )
    return (
        f"  {r.server:5} {r.scenario:30} legit {r.legit_ok}/{r.legit_tries} "
        f"({r.success_pct:.1f}%), p50 {r.p50_ms:.1f} ms, p99 {r.p99_ms:.1f} ms "
        f"({r.p99_ratio:.2f}x), RSS {r.rss_pre_mb:.0f} -> peak {r.rss_peak_mb:.0f} -> "
        f"after {r.rss_after_mb:.0f} MiB {r.notes or ''}"
    )


def targets(rows: Sequence[Row], budget_mb: float) -> list[dict[str, Any]]:
    out = []
    for r in rows:
        if r.server != "mtcp" or r.scenario in ("unloaded", "start"):
            continue
        if r.scenario == "16 overlapping ranges":
            amp = r.counters.get("amplification", math.nan)
            out.append({"what": "range amplification <= 1x", "value": amp, "met": amp <= 1.0})
            continue
        if r.checked:
            out.append(
                {
                    "what": f"{r.scenario}: legit success >= 99%",
                    "value": r.success_pct,
                    "met": r.success_pct >= 99.0,
                }
            )
            out.append(
                {
                    "what": f"{r.scenario}: p99 <= 3x unloaded",
                    "value": r.p99_ratio,
                    "met": r.p99_ratio <= 3.0,
                }
            )
        out.append(
            {
                "what": f"{r.scenario}: RSS after within 10% of before",
                "value": r.after_ratio,
                "met": abs(r.after_ratio - 1.0) <= 0.10,
            }
        )
        out.append(
            {
                "what": f"{r.scenario}: RSS peak <= before + budget ({budget_mb:.0f} MiB)",
                "value": r.rss_peak_mb,
                "met": r.rss_peak_mb <= r.rss_pre_mb + budget_mb,
            }
        )
    return out


def fmt(v: float, spec: str) -> str:
    return "-" if isinstance(v, float) and math.isnan(v) else format(v, spec)


def report(doc: dict[str, Any], rows: Sequence[Row]) -> str:
    o = doc["settings"]
    out = [
        f"# exhaust_bench {doc['when']}",
        "",
        f"{'quick' if o['quick'] else 'full'} run, {doc['seconds']} s; server on CPU "
        f"{o['server_cpu']}, clients and attackers on CPU {o['client_cpu']}; legitimate "
        f"requests: {o['rate']:g}/s, one at a time, {LEGIT_TIMEOUT_S:g} s timeout; "
        f"{o['during']:g} s during each attack, RSS after {o['after']:g} s.",
        "",
        "| server | scenario | legit ok | success % | p50 ms | p99 ms | p99 / unloaded "
        "| RSS before MiB | peak MiB | after MiB | after / before | notes |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        if r.scenario == "16 overlapping ranges":
            c = r.counters
            out.append(
                f"| {r.server} | {r.scenario} | status {fmt(c.get('status', math.nan), '.0f')} "
                f"| | | | | | | | | {fmt(c.get('amplification', math.nan), '.2f')}x the "
                f"file {'; '.join(r.notes)} |"
            )
            continue
        out.append(
            f"| {r.server} | {r.scenario} | {r.legit_ok}/{r.legit_tries} "
            f"| {fmt(r.success_pct, '.1f')} | {fmt(r.p50_ms, '.2f')} | {fmt(r.p99_ms, '.2f')} "
            f"| {fmt(r.p99_ratio, '.2f')} | {fmt(r.rss_pre_mb, '.0f')} "
            f"| {fmt(r.rss_peak_mb, '.0f')} | {fmt(r.rss_after_mb, '.0f')} "
            f"| {fmt(r.after_ratio, '.2f')} | {'; '.join(r.notes)} |"
        )
    out += ["", "Targets (the appliance):", ""]
    for t in doc["targets"]:
        out.append(f"- {t['what']}: {fmt(t['value'], '.2f')} — {'met' if t['met'] else 'MISSED'}")
    out += ["", "Attackers and the appliance's counters per row:", ""]
    for r in rows:
        if r.attacker or r.counters:
            out.append(f"- {r.server} {r.scenario}: attacker {r.attacker}; counters {r.counters}")
        if r.rss_after_maps:
            out.append(f"  - largest resident mappings after: {'; '.join(r.rss_after_maps)}")
    return "\n".join(out) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    cpus = sorted(os.sched_getaffinity(0))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small counts, seconds a row (CI)")
    ap.add_argument("--servers", default=",".join(SERVERS), help="of " + ",".join(SERVERS))
    ap.add_argument("--only", help="only scenarios whose name contains one of these (comma)")
    ap.add_argument("--baseline", type=float, help="unloaded seconds (default 15; quick 2)")
    ap.add_argument("--during", type=float, help="seconds measured per attack (20; quick 2)")
    ap.add_argument("--after", type=float, help="seconds before RSS after (60; quick 2)")
    ap.add_argument("--ramp", type=float, help="seconds the attackers may take to open (30; 5)")
    ap.add_argument("--rate", type=float, default=20.0, help="legitimate requests a second")
    ap.add_argument("--server-cpu", type=int, default=cpus[0])
    ap.add_argument("--client-cpu", type=int, default=cpus[1] if len(cpus) > 1 else cpus[0])
    ap.add_argument("--out", type=Path, default=common.RESULTS)
    opts = ap.parse_args(argv)
    q = opts.quick
    opts.baseline = opts.baseline if opts.baseline is not None else (2.0 if q else 15.0)
    opts.during = opts.during if opts.during is not None else (2.0 if q else 20.0)
    opts.after = opts.after if opts.after is not None else (2.0 if q else 60.0)
    opts.ramp = opts.ramp if opts.ramp is not None else (5.0 if q else 30.0)
    opts.big = 1 << 20
    servers = [s for s in opts.servers.split(",") if s]
    if bad := [s for s in servers if s not in SERVERS]:
        print(f"{PROG}: unknown servers {bad}", file=sys.stderr)
        return 2
    if msg := common.check_root(PROG):
        print(msg, file=sys.stderr)
        return 2
    if "nginx" in servers and shutil.which("nginx") is None:
        print(f"{PROG}: no nginx: `make bench-exhaust` installs it", file=sys.stderr)
        return 2
    if opts.server_cpu == opts.client_cpu or (
        msg := common.check_cpus(PROG, opts.server_cpu, opts.client_cpu)
    ):
        print(msg or f"{PROG}: the server and the clients need different CPUs", file=sys.stderr)
        return 2
    common.exit_on_sigterm()
    when = common.stamp()
    t0 = time.monotonic()
    rows: list[Row] = []
    site = Path(tempfile.mkdtemp(prefix="exhaust-bench-site-"))
    try:
        web_bench.make_site(site, opts.big)
        with netns.Lab() as lab:
            rig = Rig(lab, opts, site)
            for kind in servers:
                say(f"{kind}:")
                run_server(rig, kind, rows)
    finally:
        shutil.rmtree(site, ignore_errors=True)
    doc: dict[str, Any] = {
        "when": when,
        "seconds": round(time.monotonic() - t0, 1),
        "settings": common.settings(opts),
        "environment": common.environment(nginx=common.tool_version(["nginx", "-v"])),
        "rows": [asdict(r) for r in rows],
        "targets": targets(rows, BUDGET_MB),
    }
    path = common.result_path(opts.out, "exhaust-quick" if q else "exhaust", when)
    text = report(doc, rows)
    path.with_suffix(".md").write_text(text)
    common.write_json(path, doc)
    print(text)
    say(f"results: {common.shown(path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
