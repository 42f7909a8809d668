#!/usr/bin/env python3
"""How fast the appliance starts: from exec to the first page served (issue 17's targets).

Rows (each run ``--runs`` times; median and worst):

- ``scripts/run``: ``./scripts/run --stack linux`` on a checkout that is set up already (the
  set-up steps find nothing changed), to the first 200; target < 3 s;
- ``linux``: ``mtcp-appliance serve --stack linux``; target < 0.5 s;
- ``mtcp tap``: the defaults (a TAP, in a namespace of its own); target < 1 s;
- ``mtcp afpacket``: ``--backend afpacket`` on a veth (as ``make bench`` runs it); < 1 s.

The probe opens a new connection every 20 ms with a 50 ms limit: a SYN sent before the
stack runs is lost (the address is nobody's yet) and the kernel would resend it only after
a second, which is what a probe with a 1 s timeout measures instead of the start.
Also printed: when the appliance printed its "serving" line, the CPU time of a whole run
(start, one page, SIGTERM and drain: on a busy machine the wall times grow, this does not
as much), and the import time of the modules the supervisor loads (``-X importtime``).
As root; wrap in ``flock /tmp/bench.lock``. ``--json FILE`` writes the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import select
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import common

from mtcp_core.testing import netns

REPO = common.REPO
VENV_BIN = REPO / ".venv" / "bin"
APPLIANCE = str(VENV_BIN / "mtcp-appliance")
TARGETS = {"scripts/run": 3.0, "linux": 0.5, "mtcp tap": 1.0, "mtcp afpacket": 1.0}
TIMEOUT_S = 30.0


def probe(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.05) as s:
            s.settimeout(1.0)
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            return s.recv(12).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def timed_start(
    argv: list[str],
    host: str,
    port: int,
    ns: netns.Namespace | None,
    client: netns.Namespace | None = None,
) -> tuple[float, float]:
    """(seconds to the "serving" line, seconds to the first 200); stops the process.
    ``argv`` runs in ``ns`` (None: here); the probe runs in ``client``, by default in ``ns``."""
    prober = client or ns
    env = {k: v for k, v in os.environ.items() if not k.startswith("MTCP_APPLIANCE_")}
    full = ["ip", "netns", "exec", ns.name, *argv] if ns is not None else argv
    t0 = time.monotonic()
    proc = subprocess.Popen(
        full, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, cwd=REPO
    )
    assert proc.stdout is not None
    serving = float("nan")
    first = float("nan")
    try:
        while time.monotonic() - t0 < TIMEOUT_S:
            if serving != serving:
                r, _, _ = select.select([proc.stdout], [], [], 0)
                if r and b"serving" in proc.stdout.readline():
                    serving = time.monotonic() - t0
            ok = prober.call(probe, host, port) if prober is not None else probe(host, port)
            if ok:
                first = time.monotonic() - t0
                break
            if proc.poll() is not None:
                raise RuntimeError(f"{argv} exited with {proc.returncode}")
            time.sleep(0.02)
        else:
            raise RuntimeError(f"{argv}: no page within {TIMEOUT_S:g}s")
        if serving != serving:  # printed after the first page was served
            line = proc.stdout.readline()
            serving = time.monotonic() - t0 if b"serving" in line else float("nan")
    finally:
        common.stop_process(proc, 20.0)
    return serving, first


def import_ms() -> float:
    code = (
        "import appliance.cli, appliance.supervisor, appliance.sites, appliance.http.server,"
        " appliance.http.vhosts, appliance.http.loop, appliance.http.linux, appliance.http.mtcp"
    )
    out = subprocess.run(
        [str(VENV_BIN / "python"), "-X", "importtime", "-c", code],
        capture_output=True,
        text=True,
        cwd="/",
        check=True,
    ).stderr
    total = 0
    for line in out.splitlines():
        parts = line.split("|")
        if len(parts) == 3 and parts[1].strip().isdigit() and not parts[2].startswith("  "):
            total += int(parts[1])  # top-level imports: their cumulative time
    return total / 1000.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--rows", default=",".join(TARGETS), help="comma-separated rows")
    ap.add_argument("--json", type=Path, help="write the numbers here")
    args = ap.parse_args()
    reason = common.check_root("start_bench")
    if reason:
        print(reason, file=sys.stderr)
        return 2
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    results: dict[str, Any] = {"imports_ms": import_ms(), "rows": {}}
    print(f"supervisor's imports: {results['imports_ms']:.0f} ms (python -X importtime)")
    for row in rows:
        firsts: list[float] = []
        servings: list[float] = []
        cpus: list[float] = []  # CPU seconds of the whole run (start, one page, stop)
        cpu_before = _children_cpu()
        for i in range(args.runs):
            with netns.Lab() as lab:
                port, mport = 18180 + i, 19180 + i
                common_opts = ["--cores", "2", "--metrics", f"127.0.0.1:{mport}"]
                linux = ["--stack", "linux", "--port", str(port), *common_opts]
                if row == "scripts/run":
                    argv = [str(REPO / "scripts" / "run"), *linux]
                    s, f = timed_start(argv, "127.0.0.1", port, None)
                elif row == "linux":
                    argv = [APPLIANCE, "serve", *linux]
                    s, f = timed_start(argv, "127.0.0.1", port, None)
                elif row == "mtcp tap":
                    ns = lab.namespace("st")
                    ns.ip("link", "set", "lo", "up")
                    argv = [APPLIANCE, "serve", *common_opts]
                    s, f = timed_start(argv, "198.18.0.2", 80, ns)
                elif row == "mtcp afpacket":
                    cl, sv, link = common.client_server_pair(lab, "st")
                    argv = [APPLIANCE, "serve", "--backend", "afpacket", "--iface", link.if_b]
                    argv += ["--ip", str(link.addr_b), "--port", "80", *common_opts]
                    s, f = timed_start(argv, str(link.addr_b.ip), 80, sv, cl)
                else:
                    raise SystemExit(f"unknown row {row!r}; rows: {', '.join(TARGETS)}")
            firsts.append(f)
            servings.append(s)
            cpu_after = _children_cpu()
            cpus.append(cpu_after - cpu_before)
            cpu_before = cpu_after
        med, worst = statistics.median(firsts), max(firsts)
        target = TARGETS.get(row)
        verdict = "met" if target is not None and worst < target else "MISSED"
        results["rows"][row] = {
            "first_page_s": firsts,
            "serving_line_s": servings,
            "cpu_s": cpus,
            "median_s": med,
            "worst_s": worst,
            "target_s": target,
            "met": verdict == "met",
        }
        print(
            f"{row:14s} first page median {med:.3f} s, worst {worst:.3f} s "
            f"('serving' printed at {statistics.median(servings):.3f} s; CPU of a whole run "
            f"{statistics.median(cpus):.2f} s); target < {target:g} s: {verdict}"
        )
    if args.json is not None:
        args.json.write_text(json.dumps({**results, "env": common.environment()}, indent=2))
    return 0


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


if __name__ == "__main__":
    sys.exit(main())
