"""Static files over short connections: the HTTP server on --stack mtcp, on --stack linux,
and nginx, in one run.

Two network namespaces joined by a veth (DESIGN.md, "Measuring performance"); the server is
pinned to one CPU (``--server-cpu``, the mTCP thread too), wrk to another (``--client-cpu``).
For each file (64 B and 4 KiB by default) and each server:

  mtcp:   ``appliance.http.server.serve_mtcp`` on the user-level stack (afpacket on the
          server's veth end, which has no kernel address);
  linux:  ``appliance.http.server.serve_linux`` on kernel sockets (the address on that end);
  nginx:  nginx with one worker process, access log off, the same folder (when installed).

Load: ``wrk -H "Connection: close"``: one request per connection. Reported per run:
requests/s, p50/p99 latency, errors (socket errors and non-2xx), the server's CPU per request
(all its threads, for nginx master and worker) and the whole machine's CPU per request (all
CPUs in /proc/stat: with veth, part of each stack's work runs in softirq on the other CPU, so
only this figure compares them fairly). A table goes to stdout, everything as JSON to
bench/results/http-<time>.json.

Needs root (namespaces, AF_PACKET) and wrk (apt-get install wrk); nginx is optional
(apt-get install nginx-light). Every run is bounded in time; the namespaces are removed at the
end, also after a failure. Usage: see bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH), str(BENCH.parent / "tests")]  # echo_bench; echo_app, netns

import echo_app  # noqa: E402
import echo_bench as eb  # noqa: E402
import netns  # noqa: E402

PORT = 80
RESULTS = BENCH / "results"
SERVERS = ("mtcp", "linux", "nginx")
NGINX_CONF = """\
worker_processes 1;
daemon off;
user root;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    sendfile on;
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
}}
"""


@dataclass
class Result:
    server: str
    file: str
    size: int
    requests: int = 0
    errors: int = 0
    seconds: float = 0.0
    rps: float = 0.0
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")
    server_cpu_s: float = 0.0
    server_cpu_pct: float = float("nan")
    server_us_per_req: float = float("nan")
    machine_cpu_s: float = 0.0
    machine_us_per_req: float = float("nan")
    machine_us_per_req_net_of_idle: float = float("nan")
    idle_machine_cpu_pct: float = float("nan")
    per_cpu_busy_s: dict[str, float] = field(default_factory=dict)
    server_stats: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- the server child


def role_serve(args: argparse.Namespace) -> int:
    """Child: enters the server namespace, pins itself, serves args.root until "stop" on
    stdin (or --max-time)."""
    os.sched_setaffinity(0, {args.cpu})
    from appliance.http.server import SiteConfig, serve_linux, serve_mtcp

    stop, ready = threading.Event(), threading.Event()
    site = SiteConfig(root=Path(args.root), access_log=None)
    stats: dict[str, int] = {}
    requests = [0]

    def count(_: object) -> None:
        requests[0] += 1

    def watch_stdin() -> None:
        for line in sys.stdin:
            if line.strip() == "stop":
                break
        stop.set()

    def announce(tid: int | None) -> None:
        if ready.wait(30):
            print(json.dumps({"ready": True, "pid": os.getpid(), "tid": tid}), flush=True)

    threading.Thread(target=watch_stdin, daemon=True).start()
    bound = threading.Timer(args.max_time, stop.set)  # a forgotten child stops by itself
    bound.daemon = True
    bound.start()
    with netns.entered(args.netns):
        if args.stack == "mtcp":
            stack, ctx, tid = eb.start_core(args)
            threading.Thread(target=announce, args=(tid,), daemon=True).start()
            serve_mtcp(ctx, site, PORT, stop, count, ready=ready)
            stats = {k: v for k, v in ctx.stats().items() if v}
            stack.close()
        else:
            threading.Thread(target=announce, args=(None,), daemon=True).start()
            serve_linux(args.ip.split("/")[0], PORT, site, stop, count, ready=ready)
    print(json.dumps({"stats": stats, "requests": requests[0]}), flush=True)
    return 0


# ---------------------------------------------------------------- one measured run


def _process_tree_cpu(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):
            total += echo_app.cpu_seconds(pid)
    return total


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            out += [int(c) for c in (task / "children").read_text().split()]
    return out


def start_nginx(
    opts: argparse.Namespace, server_ns: netns.Namespace, ip: str, root: Path, tmp: Path
) -> tuple[subprocess.Popen[str], list[int]]:
    conf = tmp / "nginx.conf"
    conf.write_text(NGINX_CONF.format(tmp=tmp, ip=ip, port=PORT, root=root))
    argv = ["ip", "netns", "exec", server_ns.name, "taskset", "-c", str(opts.server_cpu),
            "nginx", "-c", str(conf), "-p", str(tmp)]  # fmt: skip
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 10
    master: int | None = None
    while time.monotonic() < deadline and proc.poll() is None:
        with contextlib.suppress(OSError, ValueError):
            master = int((tmp / "nginx.pid").read_text())
        if master and _children(master):
            return proc, [master, *_children(master)]
        time.sleep(0.05)
    proc.kill()
    err = (tmp / "error.log").read_text() if (tmp / "error.log").exists() else ""
    raise RuntimeError(f"nginx did not start: rc={proc.poll()} {err[-500:]}")


def run_one(
    server: str,
    path: str,
    size: int,
    opts: argparse.Namespace,
    client_ns: netns.Namespace,
    server_ns: netns.Namespace,
    link: netns.Veth,
    root: Path,
) -> Result:
    res = Result(server=server, file=path, size=size)
    ip = str(link.addr_b.ip)
    kernel_addr = server != "mtcp"
    if kernel_addr:
        server_ns.ip("addr", "add", str(link.addr_b), "dev", link.if_b)
    child: subprocess.Popen[str] | None = None
    tmp = Path(tempfile.mkdtemp(prefix="http-bench-"))
    try:
        if server == "nginx":
            child, pids = start_nginx(opts, server_ns, ip, root, tmp)
        else:
            child = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()),
                    "--role", "serve", "--stack", server, "--netns", server_ns.name,
                    "--cpu", str(opts.server_cpu), "--ip", str(link.addr_b),
                    "--iface", link.if_b, "--root", str(root),
                    "--max-time", str(opts.duration + 120),
                    "--time-wait-ms", str(opts.time_wait_ms),
                    "--afpacket-rx", opts.afpacket_rx,
                ],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            )  # fmt: skip
            hello = eb._read_json_line(child, 30)
            pids = [hello["pid"]]
        # the machine while the server idles: the rate subtracted for "net us/req"
        m0, w0 = eb.machine_jiffies(), time.monotonic()
        threading.Event().wait(opts.idle)
        wall = time.monotonic() - w0
        idle_rate = eb.busy_seconds(m0, eb.machine_jiffies())["cpu"] / wall
        res.idle_machine_cpu_pct = 100 * idle_rate / (os.cpu_count() or 1)
        argv = [
            "ip", "netns", "exec", client_ns.name, "taskset", "-c", str(opts.client_cpu),
            "wrk", "-t1", f"-c{opts.concurrency}", f"-d{round(opts.duration)}s", "--latency",
            "--timeout", "5s", "-H", "Connection: close", f"http://{ip}:{PORT}{path}",
        ]  # fmt: skip
        m0, s0, w0 = eb.machine_jiffies(), _process_tree_cpu(pids), time.monotonic()
        out = subprocess.run(
            argv, capture_output=True, text=True, timeout=opts.duration + 30, check=True
        ).stdout
        wall = time.monotonic() - w0
        m1, s1 = eb.machine_jiffies(), _process_tree_cpu(pids)
        w = eb.parse_wrk(out)
        if "requests" not in w:
            raise RuntimeError(f"cannot read wrk's output:\n{out}")
        res.requests = int(w["requests"])
        res.errors = int(w["errors"])
        res.seconds = w.get("seconds", wall)
        res.p50_ms = w.get("p50_ms", float("nan"))
        res.p99_ms = w.get("p99_ms", float("nan"))
        res.rps = res.requests / res.seconds if res.seconds else 0.0
        res.server_cpu_s = s1 - s0
        res.server_cpu_pct = 100 * res.server_cpu_s / wall
        busy = eb.busy_seconds(m0, m1)
        res.machine_cpu_s = busy["cpu"]
        res.per_cpu_busy_s = {k: round(v, 3) for k, v in busy.items() if k != "cpu"}
        if res.requests:
            res.server_us_per_req = 1e6 * res.server_cpu_s / res.requests
            res.machine_us_per_req = 1e6 * res.machine_cpu_s / res.requests
            net = max(0.0, res.machine_cpu_s - idle_rate * wall)
            res.machine_us_per_req_net_of_idle = 1e6 * net / res.requests
    finally:
        if child is not None:
            if server == "nginx":
                child.terminate()
            elif child.poll() is None and child.stdin is not None:
                with contextlib.suppress(BrokenPipeError):
                    child.stdin.write("stop\n")
                    child.stdin.flush()
                try:
                    final = eb._read_json_line(child, 30)
                    res.server_stats = final.get("stats", {})
                except RuntimeError as exc:
                    res.notes.append(str(exc))
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        shutil.rmtree(tmp, ignore_errors=True)
        if kernel_addr:
            server_ns.ip("addr", "del", str(link.addr_b), "dev", link.if_b)
    return res


# ---------------------------------------------------------------- report


def table(results: list[Result]) -> str:
    head = (
        f"{'server':<7}{'file':>7}{'requests':>10}{'errors':>8}{'req/s':>9}{'p50 ms':>8}"
        f"{'p99 ms':>8}{'srv%':>6}{'srv us/req':>11}{'all us/req':>11}{'net us/req':>11}"
        f"{'idle all%':>10}"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        lines.append(
            f"{r.server:<7}{_size(r.size):>7}{r.requests:>10}{r.errors:>8}{r.rps:>9.0f}"
            f"{r.p50_ms:>8.2f}{r.p99_ms:>8.2f}{r.server_cpu_pct:>6.0f}"
            f"{r.server_us_per_req:>11.1f}{r.machine_us_per_req:>11.1f}"
            f"{r.machine_us_per_req_net_of_idle:>11.1f}{r.idle_machine_cpu_pct:>10.1f}"
        )
    lines.append(
        "srv: the server's processes (all threads); all: /proc/stat, every CPU; net: all less "
        "the machine's idle rate; wrk -H 'Connection: close' (one request per connection)"
    )
    return "\n".join(lines)


def _size(n: int) -> str:
    return f"{n // 1024}K" if n >= 1024 and n % 1024 == 0 else f"{n}B"


def ratios(results: list[Result]) -> dict[str, float]:
    def med(server: str, size: int, attr: str) -> float:
        vals = sorted(getattr(r, attr) for r in results if r.server == server and r.size == size)
        return vals[len(vals) // 2] if vals else float("nan")

    out: dict[str, float] = {}
    for size in sorted({r.size for r in results}):
        for other in ("linux", "nginx"):
            for attr in ("rps", "machine_us_per_req", "server_us_per_req"):
                base = med(other, size, attr)
                out[f"{_size(size)} {attr} mtcp/{other}"] = (
                    med("mtcp", size, attr) / base if base else float("nan")
                )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="3 s per run, one round")
    ap.add_argument("--duration", type=float, help="wrk: seconds per run (default 10)")
    ap.add_argument("--concurrency", type=int, default=32, help="wrk: open connections")
    ap.add_argument("--repeat", type=int, help="rounds over all servers (default 2)")
    ap.add_argument("--sizes", default="64,4096", help="file sizes in bytes, comma-separated")
    ap.add_argument("--servers", default=",".join(SERVERS), help="mtcp,linux,nginx")
    ap.add_argument("--server-cpu", type=int, default=0)
    ap.add_argument("--client-cpu", type=int, default=1)
    ap.add_argument("--idle", type=float, help="seconds of idle measured before each run")
    ap.add_argument("--time-wait-ms", type=int, default=0,
                    help="the core's TIME_WAIT (0: its default, 2 s)")  # fmt: skip
    ap.add_argument("--afpacket-rx", choices=["copy", "ring"], default="copy",
                    help="the core's afpacket receive path (Stack(afpacket_rx=...))")  # fmt: skip
    ap.add_argument("--out", type=Path, default=RESULTS)
    # internal: the server child
    ap.add_argument("--role", choices=["main", "serve"], default="main", help=argparse.SUPPRESS)
    ap.add_argument("--stack", choices=["mtcp", "linux"], help=argparse.SUPPRESS)
    ap.add_argument("--netns", help=argparse.SUPPRESS)
    ap.add_argument("--cpu", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--ip", help=argparse.SUPPRESS)
    ap.add_argument("--iface", help=argparse.SUPPRESS)
    ap.add_argument("--root", help=argparse.SUPPRESS)
    ap.add_argument("--max-time", type=float, default=300.0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.role == "serve":
        return role_serve(args)

    reason = netns.missing_privileges()
    if reason:
        print(f"http_bench: {reason}; run it as root (sudo)", file=sys.stderr)
        return 2
    if not shutil.which("wrk"):
        print("http_bench: needs wrk (apt-get install wrk)", file=sys.stderr)
        return 2
    cpus = os.sched_getaffinity(0)
    if args.server_cpu not in cpus or args.client_cpu not in cpus:
        print(f"http_bench: CPUs {args.server_cpu}/{args.client_cpu} not in {cpus}",
              file=sys.stderr)  # fmt: skip
        return 2
    servers = [s for s in args.servers.split(",") if s]
    if any(s not in SERVERS for s in servers):
        print(f"http_bench: --servers: choose from {','.join(SERVERS)}", file=sys.stderr)
        return 2
    notes = []
    if "nginx" in servers and not shutil.which("nginx"):
        servers.remove("nginx")
        notes.append("nginx not installed (apt-get install nginx-light): left out")
        print(f"http_bench: {notes[-1]}", file=sys.stderr)
    args.duration = min(args.duration or (3.0 if args.quick else 10.0), 300.0)
    args.repeat = args.repeat or (1 if args.quick else 2)
    args.idle = args.idle if args.idle is not None else (1.0 if args.quick else 2.0)
    sizes = [int(s) for s in args.sizes.split(",") if s]

    results: list[Result] = []
    site = Path(tempfile.mkdtemp(prefix="http-bench-site-"))
    os.chmod(site, 0o755)
    files = {}
    for size in sizes:
        name = f"/{_size(size)}.bin"
        (site / name[1:]).write_bytes(os.urandom(size))
        files[size] = name
    try:
        with netns.Lab() as lab:
            cl, sv = lab.namespace("hbenchcl"), lab.namespace("hbenchsv")
            link = lab.veth(cl, sv, address_b=False)
            cl.run(["sysctl", "-q", "-w", "net.ipv4.ip_local_port_range=1024 65535"])
            cl.run(["sysctl", "-q", "-w", "net.ipv4.tcp_tw_reuse=1"])
            for i in range(args.repeat):
                order = servers if i % 2 == 0 else servers[::-1]
                for size in sizes:
                    for server in order:
                        r = run_one(server, files[size], size, args, cl, sv, link, site)
                        print(f"  {server} {_size(size)}: {r.requests} requests, "
                              f"{r.rps:.0f}/s, {r.errors} errors", file=sys.stderr)  # fmt: skip
                        results.append(r)
    finally:
        shutil.rmtree(site, ignore_errors=True)
    print(table(results))
    for r in results:
        if r.server == "mtcp":
            keys = ("rst_rx", "rst_tx", "retransmits", "syn_cookies_sent")
            seen = {k: v for k, v in r.server_stats.items() if k in keys or k.startswith("drop_")}
            print(f"mtcp counters, {_size(r.size)}: {seen or 'no drops, resets or retransmits'}")
    rat = ratios(results)
    print("ratios (medians): " + ", ".join(f"{k} {v:.2f}" for k, v in rat.items()))
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    path = args.out / f"http-{stamp}.json"
    env = eb.environment("wrk")
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        env["nginx"] = subprocess.run(
            ["nginx", "-v"], capture_output=True, text=True, timeout=10
        ).stderr.strip()
    doc = {
        "when": stamp,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                     if k not in ("role", "stack", "netns", "cpu", "ip", "iface", "root")},
        "environment": env,
        "notes": notes,
        "results": [asdict(r) for r in results],
        "ratios": rat,
    }  # fmt: skip
    path.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {path.relative_to(eb.REPO) if path.is_relative_to(eb.REPO) else path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
