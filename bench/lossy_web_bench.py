"""Short-connection HTTP latency on a long lossy path: the appliance (mtcp) next to nginx, same
run, same emulated link (``make bench-lossy-web``; bench/README.md).

Three namespaces: the client (wrk and a probe), the link emulator (mtcp_core.LinkEmulator:
``--rtt-ms`` round trip, ``--loss`` in both directions, ``--rate-mbit``, seeded), the server.
One server at a time, pinned to ``--server-cpu``, on the same 64 B file:

  mtcp:   ``mtcp-appliance serve --stack mtcp --backend afpacket`` on the server's veth end;
  nginx:  one worker process, access log off (as in web_bench.py).

Per server, for ``--duration`` seconds: ``wrk -t1 -c<connections> -H "Connection: close"``
(one request per connection; wrk's latency runs from the request written to the response
read) and, beside it, a probe that makes one short connection at a time (at most
``--probe-rate`` a second) and times it from connect() to the server's close, handshake and
FIN included. The emulator's random stream starts over from the same seed for each server, so
both see the same loss process. Reports p50/p90/p99 of both, errors, what the emulator
dropped, and the figure issue 14 asks for: the appliance's wrk p99 over nginx's (target <= 1).

Writes bench/results/lossy-web-<time>.json and prints a table. Needs root, wrk and nginx;
every run is bounded in time; the namespaces are removed at the end, also after a failure.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import web_bench  # noqa: E402

import mtcp_core  # noqa: E402
from mtcp_core.testing import netns  # noqa: E402

PROG = "lossy_web_bench"
SERVERS = ("mtcp", "nginx")
FILE = web_bench.SMALL_FILES[64]


def _pct(values: Sequence[float], q: float) -> float:
    return web_bench._percentile(values, q)


def measure(kind: str, path: netns.EmulatedPath, site: Path, shape: mtcp_core.LinkShape,
            seed: int, opts: argparse.Namespace) -> dict[str, Any]:  # fmt: skip
    """One server's run on the lossy path."""
    emu = path.emulator
    quiet = mtcp_core.LinkShape(delay_us=shape.delay_us, rate_bps=shape.rate_bps,
                                queue_frames=shape.queue_frames)  # fmt: skip
    emu.set(quiet)  # the start-up check crosses the delay, not the loss
    server = web_bench.Server(kind, path.server, path.server_link, [opts.server_cpu], site)
    row: dict[str, Any] = {"server": kind}
    try:
        server.start(path.client)
        before_srv = server.counters()
        before = emu.counters()
        emu.set(shape, seed=seed)  # another seed first: the stream starts over
        url = f"http://{server.ip}:{web_bench.PORT}{FILE}"
        wrk = common.in_ns(path.client, [opts.client_cpu], common.wrk_argv(
            url, connections=opts.connections, seconds=opts.duration, close=True,
            timeout_s=opts.wrk_timeout))  # fmt: skip
        probe: list[Any] = []

        def run_probe() -> None:
            args = (server.ip, FILE, opts.duration, opts.probe_rate, opts.client_cpu)
            probe.append(path.client.call(web_bench.probe_connections, *args))

        t = threading.Thread(target=run_probe, daemon=True)
        t.start()
        w = web_bench._run_wrk(wrk, opts.duration)
        t.join(opts.duration + 60)
        after = emu.counters()
        emu.set(quiet)
        lat, hs, failed = probe[0] if probe else ([], [], -1)
        row.update(
            requests=int(w["requests"]),
            rps=w["requests"] / w["seconds"] if w.get("seconds") else math.nan,
            p50_ms=w.get("p50_ms", math.nan),
            p90_ms=w.get("p90_ms", math.nan),
            p99_ms=w.get("p99_ms", math.nan),
            errors=int(w["errors"]),
            probe_n=len(lat),
            probe_failed=failed,
            probe_p50_ms=_pct(lat, 50) * 1e3,
            probe_p99_ms=_pct(lat, 99) * 1e3,
            probe_handshake_p99_ms=_pct(hs, 99) * 1e3,
            emulator={d: {k: after[d][k] - before[d][k] for k in after[d]} for d in after},
            server_counters=web_bench.counter_delta(before_srv, server.counters()),
        )
    except (RuntimeError, OSError, TimeoutError) as exc:
        row["error"] = str(exc)
    finally:
        server.stop()
    return row


def table(rows: Sequence[dict[str, Any]]) -> str:
    head = ["server", "req/s", "p50 ms", "p90 ms", "p99 ms", "errors", "probe p50",
            "probe p99", "handshake p99", "drops c->s", "drops s->c"]  # fmt: skip
    body = []
    for r in rows:
        if "error" in r:
            body.append([r["server"], "FAIL", *["-"] * (len(head) - 2)])
            continue
        e = r["emulator"]
        body.append([r["server"], f"{r['rps']:.0f}", f"{r['p50_ms']:.1f}", f"{r['p90_ms']:.1f}",
                     f"{r['p99_ms']:.1f}", str(r["errors"]), f"{r['probe_p50_ms']:.1f}",
                     f"{r['probe_p99_ms']:.1f}", f"{r['probe_handshake_p99_ms']:.1f}",
                     str(e["a_to_b"]["dropped"]), str(e["b_to_a"]["dropped"])])  # fmt: skip
    return web_bench.md_table(head, body)


def figures(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    def med(kind: str, key: str) -> float:
        vals = [r[key] for r in rows if r["server"] == kind and "error" not in r]
        return web_bench.median(vals) if vals else math.nan

    out = {}
    for key in ("p99_ms", "probe_p99_ms", "p50_ms"):
        m, n = med("mtcp", key), med("nginx", key)
        out[f"{key}:mtcp"], out[f"{key}:nginx"] = m, n
        out[f"{key}:mtcp/nginx"] = m / n if n and not math.isnan(n) else math.nan
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rtt-ms", type=float, default=40.0, help="round trip of the path")
    ap.add_argument("--loss", type=float, default=2.0, help="loss each way, percent")
    ap.add_argument("--rate-mbit", type=float, default=100.0, help="the path's rate (0: none)")
    ap.add_argument("--seed", type=int, default=1, help="the emulator's seed")
    ap.add_argument("--duration", type=float, default=20.0, help="seconds per server")
    ap.add_argument("--connections", type=int, default=32, help="wrk's connections")
    ap.add_argument("--wrk-timeout", type=float, default=5.0, help="wrk --timeout, s")
    ap.add_argument("--probe-rate", type=float, default=20.0, help="probe connections/s")
    ap.add_argument("--repeat", type=int, default=1, help="runs per server (alternating)")
    ap.add_argument("--server-cpu", type=int, default=None)
    ap.add_argument("--client-cpu", type=int, default=None)
    ap.add_argument("--out", type=Path, default=common.RESULTS)
    opts = ap.parse_args(argv)
    cpus = sorted(os.sched_getaffinity(0))
    opts.server_cpu = cpus[0] if opts.server_cpu is None else opts.server_cpu
    opts.client_cpu = cpus[-1] if opts.client_cpu is None else opts.client_cpu
    if not 0 <= opts.loss <= 100 or opts.rtt_ms < 0 or opts.duration <= 0 or opts.repeat < 1:
        print(f"{PROG}: --loss 0..100, --rtt-ms >= 0, --duration > 0, --repeat >= 1",
              file=sys.stderr)  # fmt: skip
        return 2
    if msg := common.check_root(PROG) or common.check_cpus(PROG, opts.server_cpu,
                                                           opts.client_cpu):  # fmt: skip
        print(msg, file=sys.stderr)
        return 2
    if missing := [t for t in ("wrk", "nginx", "taskset") if shutil.which(t) is None]:
        print(f"{PROG}: missing {', '.join(missing)} (make bench-setup installs them)",
              file=sys.stderr)  # fmt: skip
        return 2
    bdp = opts.rate_mbit * 1e6 / 8 * opts.rtt_ms / 1000 / 1514
    shape = mtcp_core.LinkShape(delay_us=round(opts.rtt_ms * 500), loss=opts.loss / 100,
                                rate_bps=round(opts.rate_mbit * 1e6),
                                queue_frames=max(16, min(1000, round(bdp))))  # fmt: skip
    rows: list[dict[str, Any]] = []
    site = Path(tempfile.mkdtemp(prefix="lossy-web-"))
    try:
        web_bench.make_site(site, 1 << 20)
        with netns.Lab() as lab:
            path = lab.emulated_path(seed=opts.seed, server_address=False, tag="lw")
            path.client.run(["sysctl", "-q", "-w", "net.ipv4.ip_local_port_range=1024 65535"])
            path.client.run(["sysctl", "-q", "-w", "net.ipv4.tcp_tw_reuse=1"])
            for rep in range(opts.repeat):
                order = SERVERS if rep % 2 == 0 else tuple(reversed(SERVERS))
                for kind in order:
                    row = measure(kind, path, site, shape, opts.seed + rep, opts)
                    row["round"] = rep
                    rows.append(row)
                    print(f"  {kind}: {row.get('error') or table([row]).splitlines()[-1]}",
                          file=sys.stderr, flush=True)  # fmt: skip
    finally:
        shutil.rmtree(site, ignore_errors=True)
    fig = figures(rows)
    ratio = fig["p99_ms:mtcp/nginx"]
    verdict = "met" if ratio <= 1.0 else "MISSED"
    print(f"Short connections (64 B, Connection: close), {opts.rtt_ms:g} ms RTT, {opts.loss:g}% "
          f"loss each way, {opts.rate_mbit:g} Mb/s, seed {opts.seed}, {opts.duration:g} s per "
          f"server, wrk -c{opts.connections}")  # fmt: skip
    print(table(rows))
    print(f"\nwrk p99, mtcp / nginx: {ratio:.2f} (target <= 1: {verdict}); probe p99 "
          f"(connect to close), mtcp / nginx: {fig['probe_p99_ms:mtcp/nginx']:.2f}")  # fmt: skip
    when = common.stamp()
    out = common.result_path(opts.out, "lossy-web", when)
    doc = {
        "when": when,
        "settings": common.settings(opts),
        "environment": common.environment(
            wrk=common.tool_version(["wrk", "--version"]),
            nginx=common.tool_version(["nginx", "-v"]),
        ),
        "rows": rows,
        "figures": fig,
        "target": {
            "what": "wrk p99, mtcp / nginx",
            "bound": 1.0,
            "value": ratio,
            "verdict": verdict,
        },
    }
    common.write_json(out, doc)
    print(f"wrote {common.shown(out)}")
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
