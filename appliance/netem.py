"""``mtcp-appliance netem``: the link emulator as a command (mtcp_core.LinkEmulator).

Forwards every IPv4 and ARP frame between two interfaces (``--a``, ``--b``) through an
emulated link until SIGINT/SIGTERM or ``--duration``, then prints its counters. Run it in a
namespace between two others (``ip netns exec MID mtcp-appliance netem --a vA --b vB ...``,
or ``--netns MID``), so that the two sides reach each other only through it.

Every shaping option takes one value for both directions or ``A2B/B2A`` (``--delay
20ms/5ms``: 20 ms from a to b, 5 ms back).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from mtcp_core.netem import (
    COUNTERS,
    MAX_QUEUE_FRAMES,
    LinkEmulator,
    LinkShape,
    parse_duration_us,
    parse_probability,
    parse_rate_bps,
)

T = TypeVar("T")

# The fault injector's probabilities: each an option (--loss 2%) and the LinkShape field of
# the same name.
FAULTS: dict[str, str] = {
    "loss": "random loss, e.g. 2%%",
    "duplicate": "frames sent twice",
    "reorder": "frames held back and sent after the next one",
    "corrupt": "frames with one random bit flipped",
}


def _both(parse: Callable[[str], T]) -> Callable[[str], tuple[T, T]]:
    """An argparse type: "X" for both directions or "X/Y" (a -> b, b -> a)."""

    def conv(text: str) -> tuple[T, T]:
        parts = text.split("/")
        if len(parts) > 2:
            raise argparse.ArgumentTypeError(f"{text!r}: one value, or two as A2B/B2A")
        try:
            vals = [parse(p) for p in parts]
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return (vals[0], vals[-1])

    conv.__name__ = parse.__name__
    return conv


def _queue(text: str) -> int:
    n = int(text)
    if not 1 <= n <= MAX_QUEUE_FRAMES:
        raise ValueError(f"{text!r}: 1..{MAX_QUEUE_FRAMES} frames")
    return n


def _bytes(text: str) -> int:
    n = int(text)
    if not 0 <= n <= 0xFFFFFFFF:
        raise ValueError(f"{text!r}: 0..4294967295 bytes")
    return n


def add_parser(commands: Any, **kw: Any) -> argparse.ArgumentParser:
    """Registers ``netem`` on the CLI's subparsers."""
    p: argparse.ArgumentParser = commands.add_parser(
        "netem",
        help="emulate a bad link (delay, loss, rate...) between two interfaces",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        **kw,
    )
    p.add_argument("--a", required=True, metavar="IFACE", help="one port (direction a -> b)")
    p.add_argument("--b", required=True, metavar="IFACE", help="the other port")
    p.add_argument("--delay", type=_both(parse_duration_us), default=(0, 0), metavar="TIME",
                   help="one-way delay: 20ms, 500us (a bare number is ms); default 0")  # fmt: skip
    p.add_argument("--jitter", type=_both(parse_duration_us), default=(0, 0), metavar="TIME",
                   help="extra uniform random delay 0..TIME (reorders frames too)")  # fmt: skip
    for name, what in FAULTS.items():
        p.add_argument(f"--{name}", type=_both(parse_probability), default=(0.0, 0.0),
                       metavar="PCT", help=what)  # fmt: skip
    p.add_argument("--rate", type=_both(parse_rate_bps), default=(0, 0), metavar="RATE",
                   help="rate limit: 100mbit, 1gbit, 12.5mbps (bytes/s); default none")  # fmt: skip
    p.add_argument("--queue", type=_both(_queue), default=(1000, 1000), metavar="FRAMES",
                   help="rate limiter queue, frames, tail drop (default 1000)")  # fmt: skip
    p.add_argument("--burst", type=_both(_bytes), default=(0, 0), metavar="BYTES",
                   help="token bucket depth (default: 2 frames or 1 ms at the rate)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0,
                   help="random seed: same seed and frames, same choices (default 0)")  # fmt: skip
    p.add_argument("--netns", metavar="NAME",
                   help="open the interfaces in this network namespace")  # fmt: skip
    p.add_argument("--pcap", metavar="PREFIX",
                   help="capture each port to PREFIX-a.pcap and PREFIX-b.pcap")  # fmt: skip
    p.add_argument("--duration", type=float, default=0.0, metavar="SECONDS",
                   help="stop after this long (default: at SIGINT/SIGTERM)")  # fmt: skip
    p.add_argument("--stats-interval", type=float, default=0.0, metavar="SECONDS",
                   help="also print the counters every SECONDS (default: at the end)")  # fmt: skip
    p.add_argument("--no-realtime", action="store_true",
                   help="an ordinary thread, not SCHED_FIFO (less exact delays)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="counters as JSON lines")
    p.set_defaults(func=netem_command)
    return p


def shapes(args: argparse.Namespace) -> tuple[LinkShape, LinkShape]:
    """The two directions' LinkShape from the parsed options."""
    out = []
    for i in (0, 1):
        out.append(
            LinkShape(
                delay_us=args.delay[i],
                jitter_us=args.jitter[i],
                **{name: getattr(args, name)[i] for name in FAULTS},
                rate_bps=args.rate[i],
                queue_frames=args.queue[i],
                burst_bytes=args.burst[i],
            )
        )
    return out[0], out[1]


def describe(shape: LinkShape) -> str:
    parts = [f"delay {shape.delay_us / 1000:g}ms"]
    if shape.jitter_us:
        parts.append(f"jitter {shape.jitter_us / 1000:g}ms")
    for name in FAULTS:
        if v := getattr(shape, name):
            parts.append(f"{name} {v * 100:g}%")
    if shape.rate_bps:
        parts.append(f"rate {shape.rate_bps / 1e6:g}mbit queue {shape.queue_frames}")
    return ", ".join(parts)


def format_counters(counters: dict[str, dict[str, int]]) -> str:
    names = list(counters)
    lines = [f"{'':16}" + "".join(f"{n:>14}" for n in names)]
    for key in COUNTERS:
        lines.append(f"{key:16}" + "".join(f"{counters[n][key]:>14}" for n in names))
    return "\n".join(lines)


def _wait_realtime(emu: LinkEmulator, timeout: float = 1.0) -> bool:
    """Whether the loop got its real-time priority (it sets it as it starts)."""
    deadline = time.monotonic() + timeout
    while not emu.realtime_active:
        if time.monotonic() > deadline or not emu.running:
            return False
        time.sleep(0.01)
    return True


def netem_command(args: argparse.Namespace) -> int:
    try:
        a_to_b, b_to_a = shapes(args)
        if args.duration < 0 or args.stats_interval < 0:
            raise ValueError("--duration and --stats-interval must be >= 0")
    except ValueError as exc:
        print(f"mtcp-appliance netem: {exc}", file=sys.stderr)
        return 2
    try:
        emu = LinkEmulator(
            args.a,
            args.b,
            (a_to_b, b_to_a),
            seed=args.seed,
            netns=args.netns,
            pcap_a=f"{args.pcap}-a.pcap" if args.pcap else None,
            pcap_b=f"{args.pcap}-b.pcap" if args.pcap else None,
            realtime=not args.no_realtime,
        )
    except OSError as exc:
        print(f"mtcp-appliance netem: {exc.strerror or exc}", file=sys.stderr)
        return 1
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    print(f"netem: {args.a} -> {args.b}: {describe(a_to_b)}; {args.b} -> {args.a}: "
          f"{describe(b_to_a)}; seed {args.seed}", file=sys.stderr, flush=True)  # fmt: skip
    t0 = time.monotonic()
    end = t0 + args.duration if args.duration else None

    def report(final: bool) -> None:
        c = emu.counters()
        if args.json:
            doc = {"elapsed_s": round(time.monotonic() - t0, 3), "final": final,
                   "realtime": emu.realtime_active, **c}  # fmt: skip
            print(json.dumps(doc), flush=True)
        else:
            print(format_counters(c) + "\n", flush=True)

    with emu:
        if not args.no_realtime and not _wait_realtime(emu):
            print("netem: running without real-time priority (needs CAP_SYS_NICE): on a busy "
                  "machine frames may leave late", file=sys.stderr, flush=True)  # fmt: skip
        next_report = t0 + args.stats_interval if args.stats_interval else None
        while not stop.is_set():
            now = time.monotonic()
            if end is not None and now >= end:
                break
            if not emu.running:
                print("mtcp-appliance netem: the forwarding loop ended", file=sys.stderr)
                return 1
            wake = min(t for t in (end, next_report, now + 0.5) if t is not None)
            stop.wait(max(0.0, wake - now))
            if next_report is not None and time.monotonic() >= next_report:
                report(final=False)
                next_report += args.stats_interval
        report(final=True)
    return 0
