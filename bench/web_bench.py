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
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from web_measure import (  # noqa: E402
    Idle,
    Rig,
    Row,
    _percentile,
    _run_wrk,
    build_tls_load,
    priority_rows,
    probe_connections,
    run_server,
    say,
    scaling_rows,
    workloads,
)
from web_report import (  # noqa: E402
    chart_svg,
    figures,
    md_table,
    median,
    render_png,
    report,
    targets,
)
from web_servers import (  # noqa: E402
    BIG_FILE,
    METRICS,
    NGINX_CONF,
    PORT,
    PROG,
    SERVERS,
    SMALL_FILES,
    TLS_KINDS,
    TLS_SERVERS,
    VARIANTS,
    Server,
    _fetch,
    appliance_argv,
    counter_delta,
    make_cert,
    make_site,
    parse_counters,
)

from mtcp_core.testing import netns  # noqa: E402


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


# what other benchmarks and tests/test_bench.py use through this module
__all__ = [
    "BIG_FILE", "METRICS", "NGINX_CONF", "PORT", "SERVERS", "SMALL_FILES", "TLS_KINDS",
    "TLS_SERVERS", "Server", "_fetch", "_percentile", "_run_wrk", "appliance_argv",
    "counter_delta", "main", "make_site", "md_table", "median", "parse_counters",
    "probe_connections", "workloads",
]


if __name__ == "__main__":
    sys.exit(main())
