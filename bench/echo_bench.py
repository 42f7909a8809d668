"""Short-connection benchmark: the same responder on the user-level stack and on the kernel's.

Two network namespaces joined by a veth (DESIGN.md, "Measuring performance"). In the same run:

  (A) mtcp:   mtcp_core.testing.echo_app's responder on mtcp_core (afpacket on the server's
              veth end, which has no kernel address);
  (B) kernel: the very same responder loop on non-blocking kernel sockets (select.epoll),
              with the address on the server's veth end.

The server process is pinned to one CPU (``--server-cpu``, its mTCP thread too), the load
generator to another (``--client-cpu``). Load: short connections, one small request each:

  --mode http:  ``GET /`` with ``Connection: close``; the server answers 200 + 64 B and closes
                (wrk when installed, else the Python client);
  --mode echo:  a 64 B request echoed back, then the client closes (Python client).

Reported per run: requests/s, p50/p99 latency, errors, server CPU per request (the server
process, all its threads), whole-machine CPU per request (/proc/stat, all CPUs: with veth, part
of each side's work runs in softirq on the other CPU, so only this figure compares the two
stacks fairly), and the idle CPU of the server over 2 s before the load (for mtcp also its mTCP
thread alone). A table goes to stdout, everything as JSON to bench/results/.

Needs root (namespaces, AF_PACKET). Every run is bounded in time and count; the namespaces are
removed at the end, also after a failure. Usage: see bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from mtcp_core.testing import echo_app, netns  # noqa: E402

PORT = 80
IDLE_S = 2.0
# The core keeps TIME_WAIT connections (2 s by default) in its TCB pool: at more than
# max_conns / 2 s connections per second the pool would run dry. Buffers are mapped lazily.
MTCP_MAX_CONNS = 32768


# ---------------------------------------------------------------- child roles


def start_core(args: argparse.Namespace) -> tuple[Any, Any, int]:
    """The server's user-level stack on its veth end (call inside the server namespace):
    (stack, context pinned to args.cpu, the mTCP thread's id)."""
    import mtcp_core

    stack = mtcp_core.Stack(
        "afpacket",
        args.ip,
        iface=args.iface,
        max_conns=MTCP_MAX_CONNS,
        time_wait_ms=args.time_wait_ms,
        afpacket_rx=args.afpacket_rx,
    )
    ctx = stack.context(0, cpu=args.cpu)
    (tid,) = echo_app.find_threads("mtcp-core0")
    return stack, ctx, tid


def role_serve(args: argparse.Namespace) -> int:
    """Server child: enters the server namespace, pins itself, serves until "stop" on stdin."""
    os.sched_setaffinity(0, {args.cpu})
    stop = threading.Event()
    with netns.entered(args.netns):
        tid = None
        stats: dict[str, int] = {}
        if args.stack == "mtcp":
            stack, ctx, tid = start_core(args)
            net: echo_app.Net = echo_app.MtcpNet(ctx)
        else:
            net = echo_app.KernelNet(args.ip.split("/")[0])

        def ready() -> None:
            print(json.dumps({"ready": True, "pid": os.getpid(), "tid": tid}), flush=True)

        def watch_stdin() -> None:
            for line in sys.stdin:
                if line.strip() == "stop":
                    break
            stop.set()

        threading.Thread(target=watch_stdin, daemon=True).start()
        report = echo_app.serve(
            net, {PORT: args.mode}, stop=stop, duration=args.max_time, ready=ready
        )
        if args.stack == "mtcp":
            stats = {k: v for k, v in ctx.stats().items() if v}
            stack.close()
    rep = asdict(report)
    rep["errors"] = rep["errors"][:20]
    print(json.dumps({"report": rep, "stats": stats}), flush=True)
    return 0


def role_load(args: argparse.Namespace) -> int:
    """Python load child: enters the client namespace, pins itself, waits for "go" on stdin,
    makes its connections and prints the latencies."""
    os.sched_setaffinity(0, {args.cpu})
    with netns.entered(args.netns):
        print(json.dumps({"ready": True}), flush=True)
        if sys.stdin.readline().strip() != "go":
            return 1
        host, port = args.target.rsplit(":", 1)
        r = echo_app.short_connections(
            (host, int(port)),
            args.connections,
            threads=args.threads,
            mode=args.mode,
            timeout=args.max_time,
        )
    print(
        json.dumps(
            {"ok": r.ok, "errors": len(r.errors), "first_errors": r.errors[:5],
             "latencies": r.latencies, "elapsed": r.elapsed}
        ),
        flush=True,
    )  # fmt: skip
    return 0


# ---------------------------------------------------------------- one measured run


@dataclass
class Result:
    stack: str
    client: str
    mode: str
    requests: int = 0
    errors: int = 0
    seconds: float = 0.0
    rps: float = 0.0
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")
    server_cpu_s: float = 0.0
    server_us_per_req: float = float("nan")
    machine_cpu_s: float = 0.0
    machine_us_per_req: float = float("nan")
    # the same less what the machine used while idle just before (other processes, timers)
    machine_us_per_req_net_of_idle: float = float("nan")
    server_cpu_pct: float = float("nan")
    per_cpu_busy_s: dict[str, float] = field(default_factory=dict)
    idle_server_cpu_pct: float = float("nan")
    idle_mtcp_thread_cpu_pct: float | None = None
    idle_machine_cpu_pct: float = float("nan")
    server_report: dict[str, Any] = field(default_factory=dict)
    server_stats: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _self_cmd(*extra: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), *extra]


def run_one(
    stack: str,
    opts: argparse.Namespace,
    client_ns: netns.Namespace,
    server_ns: netns.Namespace,
    link: netns.Veth,
    client: str,
) -> Result:
    res = Result(stack=stack, client=client, mode=opts.mode)
    ip = str(link.addr_b.ip)
    if stack == "kernel":
        server_ns.ip("addr", "add", str(link.addr_b), "dev", link.if_b)
    server = subprocess.Popen(
        _self_cmd(
            "--role", "serve", "--stack", stack, "--netns", server_ns.name,
            "--cpu", str(opts.server_cpu), "--ip", str(link.addr_b), "--iface", link.if_b,
            "--mode", opts.mode, "--max-time", str(opts.max_time + 60),
            "--time-wait-ms", str(opts.time_wait_ms),
            "--afpacket-rx", opts.afpacket_rx,
        ),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    loaders: list[subprocess.Popen[str]] = []
    try:
        hello = common.read_json_line(server, 30)
        pid, tid = hello["pid"], hello["tid"]
        # idle: the server listens, nothing else happens
        m0, s0 = common.machine_jiffies(), common.cpu_seconds(pid)
        t0 = common.cpu_seconds(pid, tid) if tid else 0.0
        w0 = time.monotonic()
        threading.Event().wait(IDLE_S)  # the idle interval being measured
        wall = time.monotonic() - w0
        res.idle_server_cpu_pct = 100 * (common.cpu_seconds(pid) - s0) / wall
        if tid:
            res.idle_mtcp_thread_cpu_pct = 100 * (common.cpu_seconds(pid, tid) - t0) / wall
        busy = common.busy_seconds(m0, common.machine_jiffies())
        idle_busy_rate = busy["cpu"] / wall  # CPU-seconds per second, all CPUs
        res.idle_machine_cpu_pct = 100 * idle_busy_rate / (os.cpu_count() or 1)

        if client == "wrk":
            url = f"http://{ip}:{PORT}/"
            wrk = common.wrk_argv(url, connections=opts.concurrency, seconds=opts.duration,
                                  close=True)  # fmt: skip
            argv = common.in_ns(client_ns, [opts.client_cpu], wrk)
            m0, s0, w0 = common.machine_jiffies(), common.cpu_seconds(pid), time.monotonic()
            out = subprocess.run(
                argv, capture_output=True, text=True, timeout=opts.duration + 30, check=True
            ).stdout
            wall = time.monotonic() - w0
            m1, s1 = common.machine_jiffies(), common.cpu_seconds(pid)
            w = common.parse_wrk(out)
            if "requests" not in w:
                raise RuntimeError(f"cannot read wrk's output:\n{out}")
            res.requests = int(w["requests"])
            res.errors = int(w["errors"])
            res.seconds = w.get("seconds", wall)
            res.p50_ms = w.get("p50_ms", float("nan"))
            res.p99_ms = w.get("p99_ms", float("nan"))
        else:
            per = opts.connections // opts.procs
            for _ in range(opts.procs):
                loaders.append(
                    subprocess.Popen(
                        _self_cmd(
                            "--role",
                            "load",
                            "--netns",
                            client_ns.name,
                            "--cpu",
                            str(opts.client_cpu),
                            "--target",
                            f"{ip}:{PORT}",
                            "--mode",
                            opts.mode,
                            "--connections",
                            str(per),
                            "--threads",
                            str(opts.threads),
                            "--max-time",
                            str(opts.max_time),
                        ),
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                        text=True,
                    )  # fmt: skip
                )
            for p in loaders:
                common.read_json_line(p, 30)
            m0, s0, w0 = common.machine_jiffies(), common.cpu_seconds(pid), time.monotonic()
            for p in loaders:
                assert p.stdin is not None
                p.stdin.write("go\n")
                p.stdin.flush()
            outs = [common.read_json_line(p, opts.max_time + 30) for p in loaders]
            wall = time.monotonic() - w0
            m1, s1 = common.machine_jiffies(), common.cpu_seconds(pid)
            lat = [x for o in outs for x in o["latencies"]]
            res.requests = sum(o["ok"] for o in outs)
            res.errors = sum(o["errors"] for o in outs)
            res.seconds = wall
            res.p50_ms = 1e3 * echo_app.percentile(lat, 50)
            res.p99_ms = 1e3 * echo_app.percentile(lat, 99)
            res.notes += [e for o in outs for e in o["first_errors"]][:5]
        res.rps = res.requests / res.seconds if res.seconds else 0.0
        res.server_cpu_s = s1 - s0
        busy = common.busy_seconds(m0, m1)
        res.machine_cpu_s = busy["cpu"]
        res.per_cpu_busy_s = {k: round(v, 3) for k, v in busy.items() if k != "cpu"}
        res.server_cpu_pct = 100 * res.server_cpu_s / wall
        if res.requests:
            res.server_us_per_req = 1e6 * res.server_cpu_s / res.requests
            res.machine_us_per_req = 1e6 * res.machine_cpu_s / res.requests
            net_busy = max(0.0, res.machine_cpu_s - idle_busy_rate * wall)
            res.machine_us_per_req_net_of_idle = 1e6 * net_busy / res.requests
    finally:
        for p in loaders:
            if p.poll() is None:
                p.kill()
            p.wait()
        if server.poll() is None:
            assert server.stdin is not None
            with contextlib.suppress(BrokenPipeError):
                server.stdin.write("stop\n")
                server.stdin.flush()
        try:
            final = common.read_json_line(server, 30)
            res.server_report = final.get("report", {})
            res.server_stats = final.get("stats", {})
        except RuntimeError as exc:
            res.notes.append(str(exc))
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        if stack == "kernel":
            server_ns.ip("addr", "del", str(link.addr_b), "dev", link.if_b)
    return res


# ---------------------------------------------------------------- report


def table(results: list[Result]) -> str:
    head = (
        f"{'stack':<7}{'client':<7}{'mode':<5}{'requests':>9}{'errors':>7}{'req/s':>9}"
        f"{'p50 ms':>8}{'p99 ms':>8}{'srv%':>6}{'srv us/req':>11}{'all us/req':>11}"
        f"{'net us/req':>11}{'idle srv%':>10}{'idle thr%':>10}{'idle all%':>10}"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        thr = "-" if r.idle_mtcp_thread_cpu_pct is None else f"{r.idle_mtcp_thread_cpu_pct:.2f}"
        lines.append(
            f"{r.stack:<7}{r.client:<7}{r.mode:<5}{r.requests:>9}{r.errors:>7}{r.rps:>9.0f}"
            f"{r.p50_ms:>8.2f}{r.p99_ms:>8.2f}{r.server_cpu_pct:>6.0f}"
            f"{r.server_us_per_req:>11.1f}{r.machine_us_per_req:>11.1f}"
            f"{r.machine_us_per_req_net_of_idle:>11.1f}{r.idle_server_cpu_pct:>10.2f}{thr:>10}"
            f"{r.idle_machine_cpu_pct:>10.1f}"
        )
    lines.append(
        "srv: the server process (all threads); all: /proc/stat, every CPU; net: all less the "
        "machine's idle rate; idle: 2 s before the load (thr: the mTCP thread alone)"
    )
    return "\n".join(lines)


def ratios(results: list[Result]) -> dict[str, float]:
    def med(stack: str, attr: str) -> float:
        vals = sorted(getattr(r, attr) for r in results if r.stack == stack)
        return vals[len(vals) // 2] if vals else float("nan")

    out = {}
    for attr in (
        "rps",
        "server_us_per_req",
        "machine_us_per_req",
        "machine_us_per_req_net_of_idle",
        "p50_ms",
        "p99_ms",
    ):
        k = med("kernel", attr)
        out[f"{attr}_mtcp_over_kernel"] = med("mtcp", attr) / k if k else float("nan")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="short runs (a few seconds each)")
    ap.add_argument("--mode", choices=["http", "echo"], default="http")
    ap.add_argument("--client", choices=["auto", "wrk", "python"], default="auto",
                    help="load generator (auto: wrk for http when installed)")  # fmt: skip
    ap.add_argument("--duration", type=float, help="wrk: seconds per run")
    ap.add_argument("--connections", type=int, help="python client: connections per run")
    ap.add_argument("--concurrency", type=int, default=32, help="wrk: open connections")
    ap.add_argument("--procs", type=int, default=4, help="python client: processes")
    ap.add_argument("--threads", type=int, default=4, help="python client: threads each")
    ap.add_argument("--repeat", type=int, help="runs of each stack, interleaved")
    ap.add_argument("--server-cpu", type=int, default=0)
    ap.add_argument("--client-cpu", type=int, default=1)
    ap.add_argument("--max-time", type=float, default=120.0, help="bound of one run, seconds")
    ap.add_argument("--time-wait-ms", type=int, default=0,
                    help="the core's TIME_WAIT (0: its default, 2 s)")  # fmt: skip
    ap.add_argument("--afpacket-rx", choices=["copy", "ring"], default="copy",
                    help="the core's afpacket receive path (Stack(afpacket_rx=...))")  # fmt: skip
    ap.add_argument("--out", type=Path, default=common.RESULTS)
    # internal: the child processes
    ap.add_argument("--role", choices=["main", "serve", "load"], default="main",
                    help=argparse.SUPPRESS)  # fmt: skip
    ap.add_argument("--stack", choices=["mtcp", "kernel"], help=argparse.SUPPRESS)
    ap.add_argument("--netns", help=argparse.SUPPRESS)
    ap.add_argument("--cpu", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--ip", help=argparse.SUPPRESS)
    ap.add_argument("--iface", help=argparse.SUPPRESS)
    ap.add_argument("--target", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.role == "serve":
        return role_serve(args)
    if args.role == "load":
        return role_load(args)

    if msg := common.check_root("echo_bench") or common.check_cpus(
        "echo_bench", args.server_cpu, args.client_cpu
    ):
        print(msg, file=sys.stderr)
        return 2
    client = args.client
    if client == "auto":
        client = "wrk" if args.mode == "http" and shutil.which("wrk") else "python"
    if client == "wrk" and (args.mode != "http" or not shutil.which("wrk")):
        print("echo_bench: wrk needs --mode http and wrk installed (apt-get install wrk)",
              file=sys.stderr)  # fmt: skip
        return 2
    args.duration = args.duration or (3.0 if args.quick else 10.0)
    args.connections = args.connections or (5000 if args.quick else 20000)
    args.repeat = args.repeat or (1 if args.quick else 2)
    args.max_time = min(args.max_time, 600.0)

    results: list[Result] = []
    with netns.Lab() as lab:
        cl, sv, link = common.client_server_pair(lab, "bench")
        for i in range(args.repeat):
            for stack in ("mtcp", "kernel") if i % 2 == 0 else ("kernel", "mtcp"):
                r = run_one(stack, args, cl, sv, link, client)
                print(f"  {stack}: {r.requests} requests, {r.rps:.0f}/s, {r.errors} errors",
                      file=sys.stderr)  # fmt: skip
                results.append(r)
    print(table(results))
    for r in results:
        if r.stack == "mtcp":
            keys = ("rst_rx", "rst_tx", "retransmits", "syn_cookies_sent")
            seen = {k: v for k, v in r.server_stats.items() if k in keys or k.startswith("drop_")}
            print(f"mtcp counters of the run: {seen or 'no drops, resets or retransmits'}")
    rat = ratios(results)
    print("mtcp / kernel: " + ", ".join(f"{k.split('_mtcp')[0]} {v:.2f}" for k, v in rat.items()))
    when = common.stamp()
    path = common.result_path(args.out, f"echo-{args.mode}", when)
    internal = ("role", "stack", "netns", "cpu", "ip", "iface", "target")
    doc = {
        "when": when,
        "settings": common.settings(args, internal),
        "environment": common.environment(client=client),
        "results": [asdict(r) for r in results],
        "ratios_mtcp_over_kernel": rat,
    }
    common.write_json(path, doc)
    print(f"wrote {common.shown(path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
