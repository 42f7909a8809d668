"""Bulk transfer under random loss and delay: the core next to the Linux kernel's own TCP,
same run, same path.

Each row is a link: the plain veth at a loss rate (default 0, 1, 5 and 10 %), and a long
path, 40 ms round trip at 100 Mb/s, at a loss rate (default 0, 1 and 3 %). Per row, the time
to move SIZE bytes (default 8 MiB) one way, measured from the moment the sender starts
writing (the connection is already open, the loss already on) to the receiver's end of
stream, every byte checked (SHA-256):

  (a) pair:   two mtcp_core stacks in this process joined by the in-memory pair link, with its
              seeded fault injector dropping that share of frames in both directions and a
              fixed one-way delay (``--delay-ms``, default 1 ms); plain veth rows only;
  (b) kernel: Linux to Linux, client and server namespaces joined through the link emulator
              (mtcp_core.LinkEmulator in a middle namespace: the loss in both directions, the
              delay, the rate limit);
  (c) core:   the core (afpacket on the client's veth end, no kernel address) sending to a
              Linux receiver through a second emulator with the very same settings and seed.

(b) and (c) differ only in the sender's stack, so their ratio is the comparison that counts.
``--loss-by nft`` runs the plain veth rows the earlier way instead (an nftables rule in the
receiver's namespace, no emulator), for comparison with older results.

Needs root (namespaces, AF_PACKET; nftables' ``nft`` for ``--loss-by nft``). Addresses from
198.18.0.0/15; the namespaces are removed at the end, also after a failure; every transfer is
bounded by ``--timeout``. Writes a table to stdout and everything to
bench/results/loss-<time>.json. Usage: see bench/README.md.
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
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

import mtcp_core  # noqa: E402
from mtcp_core.testing import netns  # noqa: E402
from mtcp_core.testing.kernel import accept_one, recv_to_end, wait_epoll  # noqa: E402

SINK_PORT = 5001
PAIR_SENDER, PAIR_RECEIVER = "198.18.0.1", "198.18.0.2"
PATHS = ("pair", "kernel", "core")


@dataclass
class Result:
    path: str  # pair | kernel | core
    link: str  # "veth", or "<rtt>ms-<rate>M"
    loss_percent: float
    seconds: float | None  # None: failed or timed out
    ok: bool
    bytes: int
    retransmits: int | None = None
    drops: dict[str, int] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)
    congestion: str = ""  # the sender's congestion control (TCP_CONGESTION / tcp_info)
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
    congestion: str = ""  # the sender's congestion control, as the sender reports it
    errors: list[str] = field(default_factory=list)
    sha256: Any = field(default_factory=hashlib.sha256, repr=False)

    def start(self) -> None:
        self.t_go = time.monotonic()
        self.go.set()

    def take(self, chunk: bytes) -> None:
        """The receiver's: counts and hashes one chunk of the stream."""
        self.got += len(chunk)
        self.sha256.update(chunk)

    def received_all(self) -> None:
        """The receiver's, at the end of the stream."""
        self.t_end = time.monotonic()
        self.digest = self.sha256.digest()

    def fail(self, who: str, exc: BaseException) -> None:
        self.errors.append(f"{who}: {exc!r}")
        self.established.set()
        self.done.set()


def mtcp_sender(ctx: mtcp_core.Context, addr: tuple[str, int], payload: bytes,
                tr: Transfer) -> None:  # fmt: skip
    """The app thread of a sending core: connect, wait for go, write it all, close."""
    ep, sock = ctx.epoll(), ctx.socket()
    try:
        with contextlib.suppress(BlockingIOError):
            sock.connect(addr)
        ep.register(sock, mtcp_core.EPOLLOUT)
        wait_epoll(ep, mtcp_core.EPOLLOUT | mtcp_core.EPOLLERR, 10, "connect")
        if err := sock.getsockopt(mtcp_core.SOL_SOCKET, mtcp_core.SO_ERROR):
            raise OSError(err, f"connect: {os.strerror(err)}")
        tr.congestion = str(sock.tcp_info()["congestion"])
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
    try:
        with accept_one(ctx, port, ready) as (conn, ep):
            if not tr.go.wait(30):
                raise TimeoutError("no go")
            recv_to_end(conn, ep, tr.take, tr.t_go, tr.timeout)
            tr.received_all()
    except BaseException as exc:  # noqa: BLE001 - reported in the result
        tr.fail("receiver", exc)
    finally:
        tr.done.set()


def kernel_sink(listener: socket.socket, tr: Transfer) -> None:
    try:
        listener.settimeout(15)
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(tr.timeout)
            while chunk := conn.recv(1 << 20):
                tr.take(chunk)
        tr.received_all()
    except BaseException as exc:  # noqa: BLE001 - reported in the result
        tr.fail("receiver", exc)
    finally:
        tr.done.set()


def kernel_sender(ns: netns.Namespace, addr: tuple[str, int], payload: bytes,
                  tr: Transfer, congestion: str) -> None:  # fmt: skip
    try:
        with ns.entered():
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                # the kernel's default is the host's choice (bbr on some hosts, whatever
                # tcp_congestion_control says): name it, so that the comparison is stated
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, congestion.encode())
            except OSError as exc:
                sock.close()
                raise OSError(exc.errno, f"kernel sender: TCP_CONGESTION {congestion!r}: "
                              f"{exc.strerror} (see net.ipv4.tcp_available_congestion_control)"
                              ) from exc  # fmt: skip
            sock.settimeout(10)
            try:
                sock.connect(addr)
            except BaseException:
                sock.close()
                raise
        name = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, 16)
        tr.congestion = name.split(b"\0", 1)[0].decode()
        with sock:
            tr.established.set()
            if not tr.go.wait(30):
                raise TimeoutError("no go")
            sock.settimeout(tr.timeout)
            sock.sendall(payload)
    except BaseException as exc:  # noqa: BLE001 - reported in the result
        tr.fail("sender", exc)


def finish(tr: Transfer, payload_digest: bytes, path: str, link: str, rate: float) -> Result:
    if not tr.done.wait(tr.timeout + 20):
        tr.errors.append("receiver did not end")
    ok = not tr.errors and tr.got == tr.size and tr.digest == payload_digest
    if not tr.errors and not ok:
        same = tr.digest == payload_digest
        tr.errors.append(f"{tr.got} of {tr.size} B arrived, digest ok: {same}")
    seconds = tr.t_end - tr.t_go if ok else None
    return Result(
        path, link, rate, seconds, ok, tr.size, congestion=tr.congestion, error="; ".join(tr.errors)
    )


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
        res = finish(tr, digest, "pair", "veth", rate)
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


# ---------------------------------------------------------------- the links and the rigs


@dataclass(frozen=True)
class Link:
    """One row's path: a loss rate on the plain veth, or on a long path (delay, rate)."""

    name: str  # "veth" | "<rtt>ms-<rate>M"
    loss_percent: float
    delay_ms: float = 0.0  # one way
    rate_mbit: float = 0.0  # 0: no limit
    queue_frames: int = 1000  # the rate limiter's queue (tail drop)

    def shape(self, loss: bool = True) -> mtcp_core.LinkShape:
        return mtcp_core.LinkShape(
            delay_us=round(self.delay_ms * 1000),
            loss=self.loss_percent / 100 if loss else 0.0,
            rate_bps=round(self.rate_mbit * 1e6),
            queue_frames=self.queue_frames,
        )


def links(args: argparse.Namespace) -> list[Link]:
    out = [Link("veth", r) for r in args.rate_list]
    if args.rtt_rate_list:
        name = f"{args.rtt_ms:g}ms-{args.rate_mbit:g}M"
        bdp = args.rate_mbit * 1e6 / 8 * args.rtt_ms / 1000 / 1514
        queue = args.queue_frames or max(16, min(1000, round(bdp)))
        out += [Link(name, r, args.rtt_ms / 2, args.rate_mbit, queue) for r in args.rtt_rate_list]
    return out


@dataclass
class Rig:
    """One sender's path to a Linux receiver: the kernel or the core sending, through an
    emulator (``emulator``) or, for ``--loss-by nft``, a veth with the drop rule in the
    receiver's namespace."""

    kind: str  # kernel | core
    send_ns: netns.Namespace
    recv_ns: netns.Namespace
    sender_ip: str
    receiver_ip: str
    emulator: mtcp_core.LinkEmulator | None = None
    stack: mtcp_core.Stack | None = None
    ctx: mtcp_core.Context | None = None


def make_emulated_rig(lab: netns.Lab, kind: str, seed: int, sndbuf: int) -> Rig:
    path = lab.emulated_path(seed=seed, client_address=kind == "kernel", tag=f"lb{kind[0]}")
    rig = Rig(kind, path.client, path.server, str(path.client_ip.ip), str(path.server_ip.ip),
              path.emulator)  # fmt: skip
    if kind == "core":
        rig.stack = path.client.call(mtcp_core.Stack, "afpacket", str(path.client_ip),
                                     iface=path.client_link.if_a, time_wait_ms=100,
                                     sndbuf=sndbuf)  # fmt: skip
        rig.ctx = rig.stack.context(0)
    return rig


def make_nft_rig(lab: netns.Lab, kind: str, sndbuf: int) -> Rig:
    """The earlier setup: a veth between sender and receiver, loss by nftables in the
    receiver's namespace; the kernel sender's TX offloads off (one drop, one segment)."""
    send, recv = lab.namespace(f"lb{kind[0]}snd"), lab.namespace(f"lb{kind[0]}rcv")
    link = lab.veth(send, recv, address_a=kind == "kernel", tx_offload=False)
    rig = Rig(kind, send, recv, str(link.addr_a.ip), str(link.addr_b.ip))
    if kind == "core":
        rig.stack = send.call(mtcp_core.Stack, "afpacket", str(link.addr_a), iface=link.if_a,
                              time_wait_ms=100, sndbuf=sndbuf)  # fmt: skip
        rig.ctx = rig.stack.context(0)
    return rig


def _emu_delta(before: dict[str, dict[str, int]],
               after: dict[str, dict[str, int]]) -> dict[str, int]:  # fmt: skip
    a, b = before["a_to_b"], after["a_to_b"]
    ra, rb = before["b_to_a"], after["b_to_a"]
    return {
        "data_dropped": b["dropped"] - a["dropped"],
        "data_queue_drops": b["queue_drops"] - a["queue_drops"],
        "data_frames": b["forwarded"] - a["forwarded"],
        "acks_dropped": rb["dropped"] - ra["dropped"],
        "ack_frames": rb["forwarded"] - ra["forwarded"],
    }


def run_sender(link: Link, seed: int, payload: bytes, digest: bytes, rig: Rig,
               args: argparse.Namespace) -> Result:  # fmt: skip
    """One transfer from rig's sender to a Linux receiver on ``link``."""
    tr = Transfer(len(payload), args.timeout)
    emu = rig.emulator
    if emu is not None:  # the path's delay and rate from the handshake on, the loss later
        emu.set(link.shape(loss=False))
    with rig.recv_ns.entered():
        listener = socket.create_server((rig.receiver_ip, 0))
    with listener:
        addr = (rig.receiver_ip, listener.getsockname()[1])
        rx = threading.Thread(target=kernel_sink, args=(listener, tr), daemon=True)
        rx.start()
        if rig.kind == "core":
            assert rig.ctx is not None
            before_core = rig.ctx.stats()
            tx = threading.Thread(target=mtcp_sender, args=(rig.ctx, addr, payload, tr),
                                  daemon=True)  # fmt: skip
        else:
            before_k = kernel_retrans(rig.send_ns)
            tx = threading.Thread(target=kernel_sender,
                                  args=(rig.send_ns, addr, payload, tr, args.kernel_congestion),
                                  daemon=True)  # fmt: skip
        tx.start()
        tr.established.wait(15)
        if emu is not None:
            before_emu = emu.counters()
            emu.set(link.shape(), seed=seed)  # a new seed: the stream starts over
        else:
            rig.recv_ns.nft(receiver_loss_rules(link.loss_percent, rig.sender_ip))
        tr.start()
        res = finish(tr, digest, rig.kind, link.name, link.loss_percent)
        if emu is not None:
            res.drops = _emu_delta(before_emu, emu.counters())
            emu.set(link.shape(loss=False))
        tx.join(10)
        rx.join(10)
        if emu is None:
            res.drops = loss_off(rig.recv_ns)
        if rig.kind == "core":
            assert rig.ctx is not None
            after = rig.ctx.stats()
            res.retransmits = after["retransmits"] - before_core["retransmits"]
            res.counters = core_counters(before_core, after)
        else:
            res.retransmits = kernel_retrans(rig.send_ns) - before_k
    return res


# ---------------------------------------------------------------- report


def _median(vals: Sequence[float | None]) -> float | None:
    good = [v for v in vals if v is not None]
    return statistics.median(good) if good else None


def _fmt(v: float | None, spec: str = ".2f") -> str:
    return "fail" if v is None else format(v, spec)


def summary(results: list[Result], rows: list[Link]) -> list[dict[str, Any]]:
    out = []
    for link in rows:
        row: dict[str, Any] = {
            "link": link.name,
            "loss_percent": link.loss_percent,
            "delay_ms_one_way": link.delay_ms,
            "rate_mbit": link.rate_mbit,
            "queue_frames": link.queue_frames if link.rate_mbit else None,
        }
        for path in PATHS:
            rs = [r for r in results if r.path == path and r.link == link.name
                  and r.loss_percent == link.loss_percent]  # fmt: skip
            if not rs:
                continue
            row[f"{path}_s"] = _median([r.seconds for r in rs])
            row[f"{path}_mb_s"] = _median([r.mb_s for r in rs])
            row[f"{path}_retransmits"] = _median([r.retransmits for r in rs])
            row[f"{path}_failed"] = sum(not r.ok for r in rs)
        k, c = row.get("kernel_s"), row.get("core_s")
        row["core_over_kernel_time"] = c / k if c and k else None
        out.append(row)
    return out


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
        [f"{'link':>11} {'loss':>5}"]
        + [f"{name + ' s':>8} {'MB/s':>6} {'rtx':>5}" for name in PATHS]
        + [f"{'core/kernel':>11}"]
    )
    via = ("the link emulator (loss both ways)" if args.loss_by == "emulator"
           else "nftables drop in the receiver's namespace")  # fmt: skip
    lines = [
        f"{args.size_mib} MiB one way; kernel, core: veth rows through {via}, long-path rows "
        f"through the link emulator ({args.rtt_ms:g} ms RTT, {args.rate_mbit:g} Mb/s); pair: "
        f"2 stacks, {args.delay_ms:g} ms one-way delay; medians of {args.repeat}; the kernel "
        f"sender's congestion control: {args.kernel_congestion}",
        head,
        "-" * len(head),
    ]
    for r in rows:
        lines.append(
            " | ".join(
                [f"{r['link']:>11} {r['loss_percent']:>4g}%"]
                + [_cell(r, path) for path in PATHS]
                + [f"{ratio_cell(r):>11}"]
            )
        )
    return "\n".join(lines)


def _rates(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rates", default="0,1,5,10",
                    help="loss rates on the plain veth, percent, comma separated")  # fmt: skip
    ap.add_argument("--rtt-rates", default="0,1,3",
                    help="loss rates on the long path, percent ('' for none)")  # fmt: skip
    ap.add_argument("--rtt-ms", type=float, default=40.0, help="long path: round trip, ms")
    ap.add_argument("--rate-mbit", type=float, default=100.0, help="long path: rate, Mb/s")
    ap.add_argument("--queue-frames", type=int, default=0,
                    help="long path: rate limiter queue, frames (default: one BDP)")  # fmt: skip
    ap.add_argument("--loss-by", choices=("emulator", "nft"), default="emulator",
                    help="plain veth rows: the emulator, or the earlier nftables rule")  # fmt: skip
    ap.add_argument("--core-sndbuf", type=int, default=4 << 20,
                    help="the core sender's send buffer, bytes (default 4 MiB, Linux's "
                    "tcp_wmem maximum)")  # fmt: skip
    ap.add_argument(
        "--kernel-congestion",
        default="cubic",
        help="the Linux sender's congestion control (TCP_CONGESTION; default cubic, "
        "the core's default, whatever the host's sysctl says)",
    )
    ap.add_argument("--size-mib", type=int, default=8, help="bytes per transfer, MiB")
    ap.add_argument("--delay-ms", type=float, default=1.0, help="pair: one-way delay")
    ap.add_argument("--seed", type=int, default=1, help="fault injector seed")
    ap.add_argument("--repeat", type=int, default=1, help="transfers per path and row")
    ap.add_argument("--timeout", type=float, default=120.0, help="bound of one transfer, s")
    ap.add_argument("--paths", default=",".join(PATHS), help="which of pair,kernel,core")
    ap.add_argument("--out", type=Path, default=common.RESULTS)
    args = ap.parse_args(argv)
    try:
        args.rate_list, args.rtt_rate_list = _rates(args.rates), _rates(args.rtt_rates)
    except ValueError:
        print("loss_bench: --rates/--rtt-rates: comma separated numbers", file=sys.stderr)
        return 2
    paths = [p for p in args.paths.split(",") if p]
    rates = args.rate_list + args.rtt_rate_list
    if bad := [p for p in paths if p not in PATHS] + [r for r in rates if not 0 <= r <= 100]:
        print(f"loss_bench: bad --paths/--rates: {bad}", file=sys.stderr)
        return 2
    if not 0 <= args.queue_frames <= 1000 or args.rtt_ms < 0 or args.rate_mbit < 0:
        print("loss_bench: --queue-frames 0..1000, --rtt-ms and --rate-mbit >= 0",
              file=sys.stderr)  # fmt: skip
        return 2
    args.timeout = min(args.timeout, 600.0)
    rows = links(args)
    veth = any(p in paths for p in ("kernel", "core"))
    if veth:
        if msg := common.check_root("loss_bench"):
            print(msg, file=sys.stderr)
            return 2
        if args.loss_by == "nft" and shutil.which("nft") is None:
            print("loss_bench: needs nftables' nft (apt-get install nftables)", file=sys.stderr)
            return 2
    payload = os.urandom(args.size_mib << 20)
    digest = hashlib.sha256(payload).digest()
    results: list[Result] = []
    rigs: dict[tuple[str, str], Rig] = {}  # (kind, "emulator" | "nft")
    with netns.Lab() as lab:
        try:
            for kind in ("kernel", "core"):
                if kind not in paths:
                    continue
                rigs[kind, "emulator"] = make_emulated_rig(lab, kind, args.seed, args.core_sndbuf)
                if args.loss_by == "nft" and args.rate_list:
                    rigs[kind, "nft"] = make_nft_rig(lab, kind, args.core_sndbuf)
            for i, link in enumerate(rows):
                for rep in range(args.repeat):
                    seed = args.seed + 1000 * rep + i
                    order = paths if rep % 2 == 0 else list(reversed(paths))
                    for path in order:
                        if path == "pair":
                            if link.name != "veth":
                                continue  # the pair link has no rate limit: veth rows only
                            res = run_pair(link.loss_percent, payload, digest, args)
                        else:
                            via = "nft" if link.name == "veth" and args.loss_by == "nft" else (
                                "emulator")  # fmt: skip
                            res = run_sender(link, seed, payload, digest, rigs[path, via], args)
                        results.append(res)
                        print(f"  {path:6} {link.name:>11} {link.loss_percent:>4g}%: "
                              f"{_fmt(res.seconds)} s ({res.congestion}), "
                              f"retransmits {res.retransmits}, "
                              f"drops {res.drops}{', ' + res.error if res.error else ''}",
                              file=sys.stderr, flush=True)  # fmt: skip
        finally:
            for rig in rigs.values():
                if rig.stack is not None:
                    rig.stack.close()
    summ = summary(results, rows)
    print(table(summ, args))
    when = common.stamp()
    path = common.result_path(args.out, "loss", when)
    doc = {
        "when": when,
        "settings": common.settings(args),
        "environment": common.environment(nft=common.tool_version(["nft", "--version"])),
        "summary": summ,
        "results": [asdict(r) | {"mb_s": r.mb_s} for r in results],
    }
    common.write_json(path, doc)
    print(f"wrote {common.shown(path)}")
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
