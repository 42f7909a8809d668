"""Bulk transfer under random loss: the core next to the Linux kernel's own TCP, same run.

For each loss rate (default 0, 1, 5 and 10 %), the time to move SIZE bytes (default 8 MiB) one
way, measured from the moment the sender starts writing (the connection is already open, the
loss already on) to the receiver's end of stream, every byte checked (SHA-256):

  (a) pair:   two mtcp_core stacks in this process joined by the in-memory pair link, with its
              seeded fault injector dropping that share of frames in both directions and a
              fixed one-way delay (``--delay-ms``, default 1 ms);
  (b) kernel: Linux to Linux over a veth between two namespaces, with an nftables rule in the
              receiver's namespace that drops that share of the sender's segments (input hook)
              and of the receiver's ACKs (output hook);
  (c) core:   the core (afpacket on a veth end with no kernel address) sending to a Linux
              receiver, with the very same nftables rule in the receiver's namespace.

(b) and (c) differ only in the sender's stack, so their ratio is the comparison that counts;
(a) has a delay that the veth runs do not have (there is no netem here to add one), so it is
shown next to them, not divided by them. The kernel sender's TX offloads are off
(``ethtool -K IF tx off``): its frames cross the veth one MSS each, so that one nftables drop
is one lost segment, as for the core, and not a 64 KiB GSO burst.

Needs root (namespaces, AF_PACKET) and nftables' ``nft``. Addresses from 198.18.0.0/15; the
namespaces are removed at the end, also after a failure; every transfer is bounded by
``--timeout``. Writes a table to stdout and everything to bench/results/loss-<time>.json.
Usage: see bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import socket
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (puts tests/ on sys.path: netns is shared with the tests)
import netns  # noqa: E402

import mtcp_core  # noqa: E402

SINK_PORT = 5001
PAIR_SENDER, PAIR_RECEIVER = "198.18.0.1", "198.18.0.2"
PATHS = ("pair", "kernel", "core")


@dataclass
class Result:
    path: str  # pair | kernel | core
    loss_percent: float
    seconds: float | None  # None: failed or timed out
    ok: bool
    bytes: int
    retransmits: int | None = None
    drops: dict[str, int] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)
    error: str = ""

    @property
    def mb_s(self) -> float | None:
        return self.bytes / self.seconds / 1e6 if self.seconds else None


# ---------------------------------------------------------------- nftables


def receiver_loss_rules(percent: float, sender_ip: str) -> str:
    """In the receiver's namespace: drop ``percent`` % of the sender's TCP segments on the
    way in and of the receiver's own TCP segments (the ACKs) on the way out."""
    p = int(round(percent))
    return f"""
table inet mtloss {{
  chain input {{
    type filter hook input priority 0; policy accept;
    ip saddr {sender_ip} ip protocol tcp numgen random mod 100 < {p} counter drop comment "data"
  }}
  chain output {{
    type filter hook output priority 0; policy accept;
    ip daddr {sender_ip} ip protocol tcp numgen random mod 100 < {p} counter drop comment "acks"
  }}
}}
"""


def loss_off(ns: netns.Namespace) -> dict[str, int]:
    """Deletes the table; returns the packets its rules dropped, by comment."""
    out = ns.run(["nft", "-j", "list", "table", "inet", "mtloss"]).stdout
    drops: dict[str, int] = {}
    for item in json.loads(out)["nftables"]:
        rule = item.get("rule")
        if rule and "comment" in rule:
            for expr in rule["expr"]:
                if "counter" in expr:
                    drops[rule["comment"]] = int(expr["counter"]["packets"])
    ns.nft("delete table inet mtloss\n")
    return drops


def kernel_retrans(ns: netns.Namespace) -> int:
    lines = [ln.split() for ln in ns.run(["cat", "/proc/net/snmp"]).stdout.splitlines()]
    tcp = [ln for ln in lines if ln and ln[0] == "Tcp:"]
    return int(dict(zip(tcp[0][1:], tcp[1][1:], strict=True))["RetransSegs"])


# ---------------------------------------------------------------- the two ends


@dataclass
class Transfer:
    """Shared between the sender, the receiver and the driver of one transfer."""

    size: int
    timeout: float
    established: threading.Event = field(default_factory=threading.Event)
    go: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    t_go: float = 0.0
    t_end: float = 0.0
    got: int = 0
    digest: bytes = b""
    errors: list[str] = field(default_factory=list)

    def start(self) -> None:
        self.t_go = time.monotonic()
        self.go.set()

    def fail(self, who: str, exc: BaseException) -> None:
        self.errors.append(f"{who}: {exc!r}")
        self.established.set()
        self.done.set()


def _poll_until(ep: mtcp_core.Epoll, mask: int, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        if any(ev & mask for _, ev in ep.poll(min(left, 0.2))):
            return
    raise TimeoutError(f"{what}: nothing within {timeout}s")


def mtcp_sender(ctx: mtcp_core.Context, addr: tuple[str, int], payload: bytes,
                tr: Transfer) -> None:  # fmt: skip
    """The app thread of a sending core: connect, wait for go, write it all, close."""
    ep, sock = ctx.epoll(), ctx.socket()
    try:
        with contextlib.suppress(BlockingIOError):
            sock.connect(addr)
        ep.register(sock, mtcp_core.EPOLLOUT)
        _poll_until(ep, mtcp_core.EPOLLOUT | mtcp_core.EPOLLERR, 10, "connect")
        if err := sock.getsockopt(mtcp_core.SOL_SOCKET, mtcp_core.SO_ERROR):
            raise OSError(err, f"connect: {os.strerror(err)}")
        tr.established.set()
        if not tr.go.wait(30):
            raise TimeoutError("no go")
        view, sent = memoryview(payload), 0
        while sent < len(payload):
            if time.monotonic() - tr.t_go > tr.timeout:
                raise TimeoutError(f"wrote {sent} of {len(payload)} B")
            try:
                sent += sock.send(view[sent : sent + 256 * 1024])
            except BlockingIOError:
                ep.poll(0.05)
    except BaseException as exc:  # noqa: BLE001 - reported in the result
        tr.fail("sender", exc)
    finally:
        sock.close()  # FIN after the data
        ep.close()


def mtcp_sink(ctx: mtcp_core.Context, port: int, ready: threading.Event, tr: Transfer) -> None:
    """The app thread of a receiving core: accept one connection, read it to the end."""
    ep, lsock = ctx.epoll(), ctx.socket()
    conn: mtcp_core.Socket | None = None
    h = hashlib.sha256()
    try:
        lsock.bind(("0.0.0.0", port))
        lsock.listen(8)
        ep.register(lsock, mtcp_core.EPOLLIN)
        ready.set()
        _poll_until(ep, mtcp_core.EPOLLIN, 15, "accept")
        conn, _ = lsock.accept()
        ep.register(conn, mtcp_core.EPOLLIN | mtcp_core.EPOLLRDHUP)
        if not tr.go.wait(30):
            raise TimeoutError("no go")
        while True:
            if time.monotonic() - tr.t_go > tr.timeout:
                raise TimeoutError(f"got {tr.got} of {tr.size} B")
            try:
                chunk = conn.recv(256 * 1024)
            except BlockingIOError:
                ep.poll(0.05)
                continue
            if not chunk:
                break
            tr.got += len(chunk)
            h.update(chunk)
        tr.t_end = time.monotonic()
        tr.digest = h.digest()
    except BaseException as exc:  # noqa: BLE001 - reported in the result
        tr.fail("receiver", exc)
    finally:
        ready.set()
        if conn is not None:
            conn.close()
        lsock.close()
        ep.close()
        tr.done.set()


def kernel_sink(listener: socket.socket, tr: Transfer) -> None:
    h = hashlib.sha256()
    try:
        listener.settimeout(15)
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(tr.timeout)
            while chunk := conn.recv(1 << 20):
                tr.got += len(chunk)
                h.update(chunk)
        tr.t_end = time.monotonic()
        tr.digest = h.digest()
    except BaseException as exc:  # noqa: BLE001 - reported in the result
        tr.fail("receiver", exc)
    finally:
        tr.done.set()


def kernel_sender(ns: netns.Namespace, addr: tuple[str, int], payload: bytes,
                  tr: Transfer) -> None:  # fmt: skip
    try:
        with ns.entered():
            sock = socket.create_connection(addr, timeout=10)
        with sock:
            tr.established.set()
            if not tr.go.wait(30):
                raise TimeoutError("no go")
            sock.settimeout(tr.timeout)
            sock.sendall(payload)
    except BaseException as exc:  # noqa: BLE001 - reported in the result
        tr.fail("sender", exc)


def finish(tr: Transfer, payload_digest: bytes, path: str, rate: float) -> Result:
    if not tr.done.wait(tr.timeout + 20):
        tr.errors.append("receiver did not end")
    ok = not tr.errors and tr.got == tr.size and tr.digest == payload_digest
    if not tr.errors and not ok:
        same = tr.digest == payload_digest
        tr.errors.append(f"{tr.got} of {tr.size} B arrived, digest ok: {same}")
    seconds = tr.t_end - tr.t_go if ok else None
    return Result(path, rate, seconds, ok, tr.size, error="; ".join(tr.errors))


# ---------------------------------------------------------------- the three paths


def run_pair(rate: float, payload: bytes, digest: bytes, args: argparse.Namespace) -> Result:
    delay_us = int(args.delay_ms * 1000)
    link = mtcp_core.PairLink(seed=args.seed, delay_us=delay_us)
    a = mtcp_core.Stack("pair", f"{PAIR_SENDER}/24", pair=link, pair_side=0, time_wait_ms=100)
    b = mtcp_core.Stack("pair", f"{PAIR_RECEIVER}/24", pair=link, pair_side=1, time_wait_ms=100)
    try:
        sender, receiver = a.context(0), b.context(0)
        tr = Transfer(len(payload), args.timeout)
        ready = threading.Event()
        rx = threading.Thread(target=mtcp_sink, args=(receiver, SINK_PORT, ready, tr), daemon=True)
        rx.start()
        ready.wait(10)
        tx = threading.Thread(
            target=mtcp_sender,
            args=(sender, (PAIR_RECEIVER, SINK_PORT), payload, tr),
            daemon=True,
        )
        before = sender.stats()
        tx.start()
        tr.established.wait(15)
        link.set_faults(seed=args.seed, loss=rate / 100, delay_us=delay_us)
        tr.start()
        res = finish(tr, digest, "pair", rate)
        tx.join(10)
        rx.join(10)
        after = sender.stats()
        res.retransmits = after["retransmits"] - before["retransmits"]
        res.drops = {"lost_side0": link.counters(0)["lost"], "lost_side1": link.counters(1)["lost"]}
        res.counters = core_counters(before, after)
        return res
    finally:
        a.close()
        b.close()
        link.close()


def core_counters(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    keys = ("retransmits", "fast_retransmits", "sack_retransmits", "rto_timeouts", "recoveries",
            "dup_acks_rx", "tx_data_pkts")  # fmt: skip
    return {k: after[k] - before[k] for k in keys if k in after}


@dataclass
class VethRigs:
    ksend: netns.Namespace
    krecv: netns.Namespace
    k_sender_ip: str
    k_receiver_ip: str
    core_ns: netns.Namespace
    crecv: netns.Namespace
    core_ip: str
    c_receiver_ip: str
    stack: mtcp_core.Stack
    ctx: mtcp_core.Context


def run_kernel(rate: float, payload: bytes, digest: bytes, rigs: VethRigs,
               args: argparse.Namespace) -> Result:  # fmt: skip
    tr = Transfer(len(payload), args.timeout)
    with rigs.krecv.entered():
        listener = socket.create_server((rigs.k_receiver_ip, 0))
    with listener:
        addr = (rigs.k_receiver_ip, listener.getsockname()[1])
        rx = threading.Thread(target=kernel_sink, args=(listener, tr), daemon=True)
        rx.start()
        before = kernel_retrans(rigs.ksend)
        tx = threading.Thread(target=kernel_sender, args=(rigs.ksend, addr, payload, tr),
                              daemon=True)  # fmt: skip
        tx.start()
        tr.established.wait(15)
        rigs.krecv.nft(receiver_loss_rules(rate, rigs.k_sender_ip))
        tr.start()
        res = finish(tr, digest, "kernel", rate)
        tx.join(10)
        rx.join(10)
        res.drops = loss_off(rigs.krecv)
        res.retransmits = kernel_retrans(rigs.ksend) - before
    return res


def run_core(rate: float, payload: bytes, digest: bytes, rigs: VethRigs,
             args: argparse.Namespace) -> Result:  # fmt: skip
    tr = Transfer(len(payload), args.timeout)
    with rigs.crecv.entered():
        listener = socket.create_server((rigs.c_receiver_ip, 0))
    with listener:
        addr = (rigs.c_receiver_ip, listener.getsockname()[1])
        rx = threading.Thread(target=kernel_sink, args=(listener, tr), daemon=True)
        rx.start()
        before = rigs.ctx.stats()
        tx = threading.Thread(target=mtcp_sender, args=(rigs.ctx, addr, payload, tr),
                              daemon=True)  # fmt: skip
        tx.start()
        tr.established.wait(15)
        rigs.crecv.nft(receiver_loss_rules(rate, rigs.core_ip))
        tr.start()
        res = finish(tr, digest, "core", rate)
        tx.join(10)
        rx.join(10)
        res.drops = loss_off(rigs.crecv)
        after = rigs.ctx.stats()
        res.retransmits = after["retransmits"] - before["retransmits"]
        res.counters = core_counters(before, after)
    return res


def make_veth_rigs(lab: netns.Lab) -> VethRigs:
    ksend, krecv = lab.namespace("lbksnd"), lab.namespace("lbkrcv")
    kl = lab.veth(ksend, krecv, tx_offload=False)
    core_ns, crecv = lab.namespace("lbcore"), lab.namespace("lbcrcv")
    cl = lab.veth(core_ns, crecv, address_a=False, tx_offload=False)
    stack = core_ns.call(mtcp_core.Stack, "afpacket", str(cl.addr_a), iface=cl.if_a,
                         time_wait_ms=100)  # fmt: skip
    ctx = stack.context(0)
    return VethRigs(ksend, krecv, str(kl.addr_a.ip), str(kl.addr_b.ip),
                    core_ns, crecv, str(cl.addr_a.ip), str(cl.addr_b.ip), stack, ctx)  # fmt: skip


# ---------------------------------------------------------------- report


def _median(vals: Sequence[float | None]) -> float | None:
    good = [v for v in vals if v is not None]
    return statistics.median(good) if good else None


def _fmt(v: float | None, spec: str = ".2f") -> str:
    return "fail" if v is None else format(v, spec)


def summary(results: list[Result], rates: list[float]) -> list[dict[str, Any]]:
    rows = []
    for rate in rates:
        row: dict[str, Any] = {"loss_percent": rate}
        for path in PATHS:
            rs = [r for r in results if r.path == path and r.loss_percent == rate]
            if not rs:
                continue
            row[f"{path}_s"] = _median([r.seconds for r in rs])
            row[f"{path}_mb_s"] = _median([r.mb_s for r in rs])
            row[f"{path}_retransmits"] = _median([r.retransmits for r in rs])
            row[f"{path}_failed"] = sum(not r.ok for r in rs)
        k, c = row.get("kernel_s"), row.get("core_s")
        row["core_over_kernel_time"] = c / k if c and k else None
        rows.append(row)
    return rows


def _cell(row: dict[str, Any], path: str) -> str:
    if f"{path}_s" not in row:
        return f"{'-':>8} {'-':>6} {'-':>5}"
    rtx = row[f"{path}_retransmits"]
    return (f"{_fmt(row[f'{path}_s']):>8} {_fmt(row[f'{path}_mb_s'], '.1f'):>6} "
            f"{'-' if rtx is None else int(rtx):>5}")  # fmt: skip


def ratio_cell(row: dict[str, Any]) -> str:
    if "kernel_s" not in row or "core_s" not in row:
        return "-"
    return _fmt(row["core_over_kernel_time"])


def table(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    head = " | ".join(
        [f"{'loss':>5}"]
        + [f"{name + ' s':>8} {'MB/s':>6} {'rtx':>5}" for name in PATHS]
        + [f"{'core/kernel':>11}"]
    )
    lines = [
        f"{args.size_mib} MiB one way; pair: 2 stacks, {args.delay_ms:g} ms one-way delay, "
        f"seed {args.seed}; kernel, core: veth, nftables drop in the receiver's namespace; "
        f"medians of {args.repeat}",
        head,
        "-" * len(head),
    ]
    for r in rows:
        lines.append(
            " | ".join(
                [f"{r['loss_percent']:>4g}%"]
                + [_cell(r, path) for path in PATHS]
                + [f"{ratio_cell(r):>11}"]
            )
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rates", default="0,1,5,10", help="loss rates in percent, comma separated")
    ap.add_argument("--size-mib", type=int, default=8, help="bytes per transfer, MiB")
    ap.add_argument("--delay-ms", type=float, default=1.0, help="pair: one-way delay")
    ap.add_argument("--seed", type=int, default=1, help="pair: fault injector seed")
    ap.add_argument("--repeat", type=int, default=1, help="transfers per path and rate")
    ap.add_argument("--timeout", type=float, default=120.0, help="bound of one transfer, s")
    ap.add_argument("--paths", default=",".join(PATHS), help="which of pair,kernel,core")
    ap.add_argument("--out", type=Path, default=common.RESULTS)
    args = ap.parse_args(argv)
    rates = [float(x) for x in args.rates.split(",") if x.strip()]
    paths = [p for p in args.paths.split(",") if p]
    if bad := [p for p in paths if p not in PATHS] + [r for r in rates if not 0 <= r <= 100]:
        print(f"loss_bench: bad --paths/--rates: {bad}", file=sys.stderr)
        return 2
    args.timeout = min(args.timeout, 600.0)
    veth = any(p in paths for p in ("kernel", "core"))
    if veth:
        if msg := common.check_root("loss_bench"):
            print(msg, file=sys.stderr)
            return 2
        if shutil.which("nft") is None:
            print("loss_bench: needs nftables' nft (apt-get install nftables)", file=sys.stderr)
            return 2
    payload = os.urandom(args.size_mib << 20)
    digest = hashlib.sha256(payload).digest()
    results: list[Result] = []
    with netns.Lab() as lab:
        rigs = make_veth_rigs(lab) if veth else None
        try:
            runners: dict[str, Callable[[float], Result]] = {
                "pair": lambda r: run_pair(r, payload, digest, args)
            }
            if rigs is not None:
                veth_rigs = rigs
                runners["kernel"] = lambda r: run_kernel(r, payload, digest, veth_rigs, args)
                runners["core"] = lambda r: run_core(r, payload, digest, veth_rigs, args)
            for rate in rates:
                for i in range(args.repeat):
                    order = paths if i % 2 == 0 else list(reversed(paths))
                    for path in order:
                        res = runners[path](rate)
                        results.append(res)
                        print(f"  {path:6} {rate:>4g}%: "
                              f"{_fmt(res.seconds)} s, retransmits {res.retransmits}, "
                              f"drops {res.drops}{', ' + res.error if res.error else ''}",
                              file=sys.stderr, flush=True)  # fmt: skip
        finally:
            if rigs is not None:
                rigs.stack.close()
    rows = summary(results, rates)
    print(table(rows, args))
    when = common.stamp()
    path = common.result_path(args.out, "loss", when)
    doc = {
        "when": when,
        "settings": common.settings(args),
        "environment": common.environment(nft=common.tool_version(["nft", "--version"])),
        "summary": rows,
        "results": [asdict(r) | {"mb_s": r.mb_s} for r in results],
    }
    common.write_json(path, doc)
    print(f"wrote {common.shown(path)}")
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
