"""What the benchmarks in bench/ share: CPU accounting (/proc/stat, /proc/PID/stat), wrk's
output, the two-namespace topology with pinned CPUs, child processes that announce themselves
with a JSON line, and the JSON files in bench/results/.

Imported as ``import common`` by the scripts next to it. What the benchmarks share with the
tests (``netns``, ``echo_app`` ...) is the installed package ``mtcp_core.testing``.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime as dt
import json
import os
import platform
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mtcp_core.testing import netns
from mtcp_core.testing.echo_app import cpu_seconds  # noqa: F401  (re-exported)

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
RESULTS = BENCH / "results"

CLK_TCK = os.sysconf("SC_CLK_TCK")
Jiffies = dict[str, tuple[int, int]]


# ---------------------------------------------------------------- CPU accounting


def machine_jiffies() -> Jiffies:
    """/proc/stat: for "cpu" (all) and each "cpuN": (busy, total) jiffies."""
    out = {}
    for line in Path("/proc/stat").read_text().splitlines():
        if not line.startswith("cpu"):
            continue
        name, *vals = line.split()
        user, nice, system, idle, iowait, irq, softirq, steal = (int(x) for x in vals[:8])
        busy = user + nice + system + irq + softirq + steal
        out[name] = (busy, busy + idle + iowait)
    return out


def busy_seconds(a: Jiffies, b: Jiffies) -> dict[str, float]:
    """Busy CPU-seconds between two machine_jiffies() readings, per key ("cpu" = all)."""
    return {k: (b[k][0] - a[k][0]) / CLK_TCK for k in a if k in b}


def _stat_fields(path: str) -> list[str]:
    # after the command name in parentheses: fields[0] is field 3 (state) of proc(5)
    return Path(path).read_text().rsplit(")", 1)[1].split()


def children(pid: int) -> list[int]:
    """The live child processes of ``pid`` (all its threads' children)."""
    out: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                out += [int(c) for c in (task / "children").read_text().split()]
    return out


def tree_cpu_seconds(pid: int) -> float:
    """CPU time of a process tree: the process, its descendants that were waited for
    (cutime + cstime: restarted workers keep counting) and its live descendants."""
    try:
        f = _stat_fields(f"/proc/{pid}/stat")
    except OSError:
        return 0.0
    total = sum(int(x) for x in f[11:15]) / CLK_TCK
    for child in children(pid):
        total += tree_cpu_seconds(child)
    return total


def tree_run_seconds(pid: int) -> float:
    """Time on a CPU of every live thread of a process tree, from /proc/.../schedstat
    (nanoseconds, where /proc/PID/stat counts 10 ms ticks): for short idle intervals."""
    total = 0
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError, ValueError, IndexError):
                total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9 + sum(tree_run_seconds(c) for c in children(pid))


# ---------------------------------------------------------------- wrk


def _wrk_ms(s: str) -> float:
    for unit, scale in (("us", 1e-3), ("ms", 1.0), ("s", 1e3), ("m", 60e3), ("h", 3600e3)):
        if s.endswith(unit):
            return float(s[: -len(unit)]) * scale
    return float(s) * 1e3


def _wrk_bytes(s: str) -> float:
    # wrk prints sizes with binary prefixes: 1.17GB is 1.17 * 2**30 bytes
    for i, unit in enumerate(("TB", "GB", "MB", "KB")):
        if s.endswith(unit):
            return float(s[:-2]) * 1024 ** (4 - i)
    return float(s.rstrip("B"))


def parse_wrk(out: str) -> dict[str, float]:
    """wrk --latency's summary: requests, seconds, bytes (read), p50_ms, p75_ms, p90_ms, p99_ms
    and errors (socket errors: connect, read, write, timeout; plus non-2xx/3xx responses)."""
    res: dict[str, float] = {"errors": 0, "socket_errors": 0, "non_2xx": 0}
    for raw in out.splitlines():
        line = raw.strip()
        if line.startswith(("50%", "75%", "90%", "99%")):
            res[f"p{line[:2]}_ms"] = _wrk_ms(line.split()[1])
        elif " requests in " in line:
            res["requests"] = float(line.split()[0])
            when, _, read = line.split(" in ", 1)[1].partition(",")
            res["seconds"] = _wrk_ms(when.strip()) / 1e3
            if read.strip().endswith(" read"):
                res["bytes"] = _wrk_bytes(read.strip().split()[0])
        elif line.startswith("Socket errors:"):
            n = sum(int(p.split()[1]) for p in line.split(":", 1)[1].split(","))
            res["socket_errors"] += n
            res["errors"] += n
        elif line.startswith("Non-2xx or 3xx responses:"):
            n = int(line.split(":")[1])
            res["non_2xx"] += n
            res["errors"] += n
    return res


def wrk_argv(
    url: str,
    *,
    connections: int,
    seconds: float,
    threads: int = 1,
    close: bool = False,
    timeout_s: float = 5.0,
) -> list[str]:
    """A bounded wrk run with latency percentiles; ``close``: one request per connection."""
    argv = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--latency",
        "--timeout",
        f"{max(1, round(timeout_s))}s",
    ]
    if close:
        argv += ["-H", "Connection: close"]
    return [*argv, url]


# ---------------------------------------------------------------- topology and pinning


def check_root(prog: str) -> str | None:
    """Why ``prog`` cannot run here (a message for stderr), or None."""
    reason = netns.missing_privileges()
    return f"{prog}: {reason}; run it as root (sudo)" if reason else None


def check_cpus(prog: str, *cpus: int) -> str | None:
    allowed = os.sched_getaffinity(0)
    if missing := [c for c in cpus if c not in allowed]:
        return f"{prog}: CPUs {missing} not in this process's CPUs {sorted(allowed)}"
    return None


def cpu_list(cpus: Sequence[int]) -> str:
    """taskset's -c argument."""
    return ",".join(str(c) for c in cpus)


def in_ns(ns: netns.Namespace, cpus: Sequence[int], argv: Sequence[str]) -> list[str]:
    """argv run inside namespace ``ns`` on ``cpus`` (ip netns exec and taskset both exec:
    the pid of the Popen is the program's)."""
    return ["ip", "netns", "exec", ns.name, "taskset", "-c", cpu_list(cpus), *argv]


def client_server_pair(
    lab: netns.Lab, tag: str, *, server_address: bool = False
) -> tuple[netns.Namespace, netns.Namespace, netns.Veth]:
    """Two namespaces ``<tag>cl`` and ``<tag>sv`` joined by a veth (198.18.0.0/15; the server's
    end without a kernel address unless ``server_address``). The client side is set up for
    many short connections: the widest port range and TIME_WAIT reuse."""
    cl, sv = lab.namespace(f"{tag}cl"), lab.namespace(f"{tag}sv")
    link = lab.veth(cl, sv, address_b=server_address)
    cl.run(["sysctl", "-q", "-w", "net.ipv4.ip_local_port_range=1024 65535"])
    cl.run(["sysctl", "-q", "-w", "net.ipv4.tcp_tw_reuse=1"])
    return cl, sv, link


def steer_receive(
    cl: netns.Namespace,
    sv: netns.Namespace,
    link: netns.Veth,
    client_cpus: Sequence[int],
    server_cpus: Sequence[int],
) -> None:
    """Receive packet steering on both ends of the veth: each side's receive work (its
    kernel's TCP input, or the AF_PACKET copy to the user-level stack) runs on that side's
    own CPUs, as on two machines. Without it, a veth runs the receiver's softirq on the
    sender's CPU: the client's TCP input would be charged to the server's CPU (inside the
    server's send() or TX flush) and the server's to the client's."""
    for ns, ifname, cpus in ((cl, link.if_a, client_cpus), (sv, link.if_b, server_cpus)):
        mask = format(sum(1 << c for c in cpus), "x")
        ns.run(["sh", "-c", f"echo {mask} > /sys/class/net/{ifname}/queues/rx-0/rps_cpus"])


# ---------------------------------------------------------------- child processes


def read_json_line(proc: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    """The next line a child prints that starts with "{", as JSON (other lines are passed
    through to stderr)."""
    assert proc.stdout is not None
    box: list[str] = []

    def reader() -> None:
        assert proc.stdout is not None
        while line := proc.stdout.readline():
            if line.startswith("{"):
                box.append(line)
                return
            sys.stderr.write(line)

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    t.join(timeout)
    if not box:
        raise RuntimeError(f"child {proc.args!r} said nothing in {timeout}s (rc={proc.poll()})")
    return json.loads(box[0])  # type: ignore[no-any-return]


PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """For Popen(preexec_fn=...): the child gets SIGTERM when this process (strictly: the
    thread that started it) ends, also by SIGKILL, so no server outlives its benchmark. It
    survives ip netns exec and taskset, which exec the program."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def exit_on_sigterm() -> None:
    """SIGTERM ends the benchmark through SystemExit, so that its ``finally`` and ``with``
    blocks stop the servers and remove the namespaces."""

    def handler(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def stop_process(proc: subprocess.Popen[Any], wait_s: float = 10.0) -> None:
    """SIGTERM to a child we started, SIGKILL when it has not ended within ``wait_s``."""
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(wait_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# ---------------------------------------------------------------- results


def _run_text(argv: Sequence[str]) -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        p = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        return (p.stdout.strip() or p.stderr.strip()).splitlines()[0] if p.returncode == 0 else ""
    return ""


def environment(**extra: Any) -> dict[str, Any]:
    """The machine and the code a result was taken on; ``extra`` adds entries."""
    env: dict[str, Any] = {
        "host": platform.node(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
    }
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                env["cpu_model"] = line.split(":", 1)[1].strip()
                break
    env["commit"] = _run_text(["git", "-C", str(REPO), "describe", "--always", "--dirty"])
    return env | extra


def tool_version(argv: Sequence[str]) -> str:
    """The first line a tool prints about its version ("" when it is not there)."""
    return _run_text(argv)


def stamp() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")


def result_path(out: Path, name: str, when: str, suffix: str = ".json") -> Path:
    """``out/<name>-<when><suffix>``, numbered when that file exists already."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}-{when}{suffix}"
    for n in range(2, 1000):
        if not path.exists():
            break
        path = out / f"{name}-{when}-{n}{suffix}"
    return path


def _jsonable(v: Any) -> Any:
    return str(v) if isinstance(v, Path) else v


def settings(args: Any, skip: Sequence[str] = ()) -> dict[str, Any]:
    """An argparse namespace as JSON-ready settings, without the internal options."""
    return {k: _jsonable(v) for k, v in vars(args).items() if k not in skip}


def write_json(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2, allow_nan=True) + "\n")


def shown(path: Path) -> str:
    """A path as printed: relative to the repository when inside it."""
    return str(path.relative_to(REPO) if path.is_relative_to(REPO) else path)
