"""Checks ``mtcp-appliance load`` against wrk: the same server, the same load, one run.

Two network namespaces joined by a veth (DESIGN.md, "Measuring performance"). One server runs
in the server namespace, pinned to ``--server-cpu``: nginx (default: one worker, access log
off), lighttpd, or the appliance (``mtcp-appliance serve``, ``--server mtcp`` on the
user-level stack or ``--server linux`` on the kernel's), started by bench/web_bench.py's
``Server`` and serving a 64 B file. It is measured, in alternating rounds, by

- **wrk** (kernel client): ``wrk -t1 -cN -dDs --latency -H 'Connection: close'``, and
- **load** (user-level client): ``mtcp-appliance load -c N -d D`` on afpacket,

both pinned to ``--client-cpu`` (``taskset``). The client's veth end carries the kernel
address while wrk runs and none while load runs (its stack owns the end then). Printed: each
run's requests/s, p50/p90/p99 latency (both tools: request written to response read),
errors, the client CPU's busy share and CPU per request, whole-machine CPU per request
(/proc/stat), then the load/wrk ratios (medians).

A kernel server runs with TCP timestamps off by default (``--server-timestamps on`` keeps
them): the core derives a connection's timestamp offset from its ISN, so successive
connections on one 4-tuple do not have increasing timestamps; once load's source ports wrap
around (about 28k connections, 3 s at 9k/s) the server's TIME_WAIT entries refuse about half
of the reused 4-tuples (PAWS) and those connections wait for the 1 s SYN retransmission.
Each load run also gets its own client address, away from wrk's and earlier runs' 4-tuples.

Needs root (namespaces, AF_PACKET), wrk and the server (apt-get install wrk nginx lighttpd).
Takes /tmp/bench.lock (flock) for the whole run, so that benchmarks of several people do not
overlap (``--no-lock`` when it already runs under ``flock /tmp/bench.lock``). Bounded in
time; the namespaces are removed at the end, also after a failure. Results as JSON in
bench/results/loadgen-check-<time>.json.

    sudo python bench/loadgen_check.py --quick
    sudo python bench/loadgen_check.py --server nginx --connections 64 --duration 10 --repeat 2
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import web_bench  # noqa: E402

from mtcp_core.testing import netns  # noqa: E402

PROG = "loadgen_check"
LOCK = Path("/tmp/bench.lock")
PORT = web_bench.PORT
PATH = web_bench.SMALL_FILES[64]
SERVERS = ("nginx", "lighttpd", "linux", "mtcp")
KERNEL_SERVERS = ("nginx", "lighttpd", "linux")
RUN_TIMEOUT_S = 2.0  # a request not done in this long counts as a timeout (both tools)


@contextlib.contextmanager
def bench_lock(wait_s: float) -> Iterator[None]:
    """flock /tmp/bench.lock, waiting at most wait_s."""
    with LOCK.open("a") as f:
        deadline = time.monotonic() + wait_s
        said = False
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not said:
                    print(f"{PROG}: waiting for {LOCK} (another benchmark runs)",
                          file=sys.stderr, flush=True)  # fmt: skip
                    said = True
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{LOCK} is held by another benchmark") from None
                time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def make_site(folder: Path) -> None:
    """The files web_bench's servers are checked with (its 64 B and 4 KiB files)."""
    for size, path in web_bench.SMALL_FILES.items():
        (folder / path.lstrip("/")).write_bytes(b"x" * size)
    folder.chmod(0o755)


def load_address(link: netns.Veth, run: int) -> str:
    """A fresh client address for each load run (.10, .11, ...; wrk has .1): a new stack's
    connections must not meet the server's TIME_WAIT entries of an earlier run's 4-tuples
    (their sequence numbers and timestamps are unrelated, so the server may refuse them)."""
    net = link.network
    return f"{net.network_address + 10 + run}/{net.prefixlen}"


def set_client_address(client: netns.Namespace, link: netns.Veth, present: bool) -> None:
    """wrk needs the kernel address on the client's end; load needs the end to itself."""
    addr = str(link.addr_a)
    has = addr.split("/")[0] in client.ip("-o", "-4", "addr", "show", "dev", link.if_a)
    if present and not has:
        client.ip("addr", "add", addr, "dev", link.if_a)
    if not present and has:
        client.ip("addr", "del", addr, "dev", link.if_a)


def run_client(
    tool: str, opts: argparse.Namespace, client: netns.Namespace, link: netns.Veth, run: int
) -> dict[str, Any]:
    """One measured run of wrk or load."""
    url = f"http://{link.addr_b.ip}:{PORT}{PATH}"
    set_client_address(client, link, tool == "wrk")
    if tool == "wrk":
        argv = common.wrk_argv(
            url,
            connections=opts.connections,
            seconds=opts.duration,
            close=True,
            timeout_s=RUN_TIMEOUT_S,
        )
    else:
        argv = [
            web_bench.appliance_argv()[0], "load", url, "-c", str(opts.connections),
            "-d", str(round(opts.duration)), "--timeout", str(RUN_TIMEOUT_S), "--json",
            "--backend", "afpacket", "--iface", link.if_a, "--ip", load_address(link, run),
        ]  # fmt: skip
    m0, w0 = common.machine_jiffies(), time.monotonic()
    proc = client.run(
        ["taskset", "-c", str(opts.client_cpu), *argv], check=False, timeout=opts.duration + 60
    )
    wall = time.monotonic() - w0
    busy = common.busy_seconds(m0, common.machine_jiffies())
    if proc.returncode != 0:
        raise RuntimeError(f"{tool} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    res: dict[str, Any] = {"tool": tool}
    if tool == "wrk":
        w = common.parse_wrk(proc.stdout)
        if "requests" not in w:
            raise RuntimeError(f"cannot read wrk's output:\n{proc.stdout}")
        p90 = [ln.split()[1] for ln in proc.stdout.splitlines() if ln.strip().startswith("90%")]
        res.update(
            requests=int(w["requests"]),
            seconds=w.get("seconds", wall),
            p50_ms=w.get("p50_ms", float("nan")),
            p90_ms=common._wrk_ms(p90[0]) if p90 else float("nan"),
            p99_ms=w.get("p99_ms", float("nan")),
            errors=int(w["errors"]),
        )
    else:
        doc = json.loads(proc.stdout)
        lat = doc["latency_s"]
        res.update(
            requests=int(doc["completed"]),
            seconds=float(doc["elapsed_s"]),
            p50_ms=1e3 * lat["p50"],
            p90_ms=1e3 * lat["p90"],
            p99_ms=1e3 * lat["p99"],
            errors=int(sum(doc["errors"].values())),
            error_kinds=doc["errors"],
            connect_p50_ms=1e3 * doc["connect_s"]["p50"],
        )
    res["rps"] = res["requests"] / res["seconds"] if res["seconds"] else 0.0
    cli, srv = f"cpu{opts.client_cpu}", f"cpu{opts.server_cpu}"
    res["client_cpu_pct"] = 100 * busy.get(cli, 0.0) / wall
    res["server_cpu_pct"] = 100 * busy.get(srv, 0.0) / wall
    res["machine_cpu_pct"] = 100 * busy["cpu"] / wall
    if res["requests"]:
        res["client_cpu_us_per_req"] = 1e6 * busy.get(cli, 0.0) / res["requests"]
        res["machine_us_per_req"] = 1e6 * busy["cpu"] / res["requests"]
    return res


def table(runs: list[dict[str, Any]]) -> str:
    head = (
        f"{'tool':<5} {'req/s':>9} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'errors':>7} "
        f"{'cli cpu%':>8} {'srv cpu%':>8} {'cli us/req':>10} {'all us/req':>10}"
    )
    lines = [head, "-" * len(head)]
    for r in runs:
        lines.append(
            f"{r['tool']:<5} {r['rps']:>9.0f} {r['p50_ms']:>8.3f} {r['p90_ms']:>8.3f} "
            f"{r['p99_ms']:>8.3f} {r['errors']:>7} {r['client_cpu_pct']:>8.0f} "
            f"{r['server_cpu_pct']:>8.0f} "
            f"{r.get('client_cpu_us_per_req', float('nan')):>10.1f} "
            f"{r.get('machine_us_per_req', float('nan')):>10.1f}"
        )
    return "\n".join(lines)


def ratios(runs: list[dict[str, Any]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for key in ("rps", "p50_ms", "p99_ms", "client_cpu_us_per_req", "machine_us_per_req"):
        a = [r[key] for r in runs if r["tool"] == "load" and key in r]
        b = [r[key] for r in runs if r["tool"] == "wrk" and key in r]
        if a and b and statistics.median(b):
            out[key] = statistics.median(a) / statistics.median(b)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="3 s runs, one of each")
    ap.add_argument("--server", choices=SERVERS, default="nginx")
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--duration", type=float, help="seconds per run (default 10, quick 3)")
    ap.add_argument("--repeat", type=int, help="rounds of (wrk, load) (default 2, quick 1)")
    ap.add_argument("--server-timestamps", choices=["on", "off"], default="off",
                    help="kernel servers: TCP timestamps (default off: with them on, runs of "
                    "more than ~28k connections stall, see above)")  # fmt: skip
    ap.add_argument("--server-cpu", type=int, default=0)
    ap.add_argument("--client-cpu", type=int, default=1)
    ap.add_argument("--lock-wait", type=float, default=600.0,
                    help=f"seconds to wait for {LOCK}")  # fmt: skip
    ap.add_argument("--no-lock", action="store_true",
                    help=f"do not take {LOCK} (when already run under flock)")  # fmt: skip
    ap.add_argument("--out", type=Path, default=common.RESULTS)
    opts = ap.parse_args(argv)
    if msg := common.check_root(PROG) or common.check_cpus(PROG, opts.server_cpu,
                                                             opts.client_cpu):  # fmt: skip
        print(msg, file=sys.stderr)
        return 2
    need = ["wrk"] + ([opts.server] if opts.server in ("nginx", "lighttpd") else [])
    if missing := [t for t in need if not shutil.which(t)]:
        print(f"{PROG}: needs {' '.join(missing)} (apt-get install {' '.join(missing)})",
              file=sys.stderr)  # fmt: skip
        return 2
    if not 1 <= opts.connections <= 16384:
        print(f"{PROG}: --connections must be 1..16384", file=sys.stderr)
        return 2
    opts.duration = opts.duration or (3.0 if opts.quick else 10.0)
    if not 1 <= opts.duration <= 300:
        print(f"{PROG}: --duration must be 1..300 s", file=sys.stderr)
        return 2
    opts.repeat = max(1, min(opts.repeat or (1 if opts.quick else 2), 10))
    runs: list[dict[str, Any]] = []
    lock = contextlib.nullcontext() if opts.no_lock else bench_lock(opts.lock_wait)
    site = Path(tempfile.mkdtemp(prefix="loadgen-check-site-"))
    load0 = os.getloadavg()
    try:
        make_site(site)
        with lock, netns.Lab() as lab:
            load0 = os.getloadavg()
            cl, sv, link = common.client_server_pair(lab, "lgck")
            if opts.server in KERNEL_SERVERS and opts.server_timestamps == "off":
                # see above: the core's timestamps are not monotonic per 4-tuple
                sv.run(["sysctl", "-q", "-w", "net.ipv4.tcp_timestamps=0"])
            server = web_bench.Server(opts.server, sv, link, [opts.server_cpu], site)
            try:
                server.start(cl)  # checks GET /f64.bin from the client's kernel address
                for i in range(opts.repeat):
                    for tool in ("wrk", "load") if i % 2 == 0 else ("load", "wrk"):
                        r = run_client(tool, opts, cl, link, i)
                        print(f"  {tool}: {r['requests']} requests, {r['rps']:.0f}/s, "
                              f"{r['errors']} errors", file=sys.stderr)  # fmt: skip
                        runs.append(r)
            finally:
                server.stop()
    finally:
        shutil.rmtree(site, ignore_errors=True)
    print(f"server: {opts.server} on CPU {opts.server_cpu} (GET {PATH}, 64 B; kernel TCP "
          f"timestamps {opts.server_timestamps}); clients on CPU {opts.client_cpu}; "
          f"{opts.connections} connections, {opts.duration:g} s per run; load average at the "
          f"start: {' '.join(f'{x:.2f}' for x in load0)}")  # fmt: skip
    print(table(runs))
    rat = ratios(runs)
    print("load / wrk (medians): " + ", ".join(f"{k} {v:.2f}" for k, v in rat.items()))
    when = common.stamp()
    path = common.result_path(opts.out, "loadgen-check", when)
    common.write_json(
        path,
        {
            "when": when,
            "settings": common.settings(opts),
            "load_average_at_start": load0,
            "environment": common.environment(wrk=common.tool_version(["wrk", "-v"])),
            "runs": runs,
            "ratios_load_over_wrk": rat,
        },
    )
    print(f"wrote {common.shown(path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
