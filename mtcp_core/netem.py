"""The link emulator: a bad link (delay, jitter, loss, duplication, reordering, corruption,
a rate limit) between two interfaces, forwarded by a C loop (src/app/netem.c) on the core's
own afpacket ports and the pair link's fault injector.

Typical use, in the middle namespace of client — emulator — server::

    shape = LinkShape(delay_us=20_000, loss=0.02, rate_bps=100_000_000)
    with LinkEmulator("veth-a", "veth-b", shape, seed=7, netns="mid") as emu:
        ...  # traffic between the two other namespaces
        print(emu.counters())

``LinkEmulator`` forwards on a thread of its own (the C loop runs without the GIL) from
``start()`` (or entering the ``with``) to ``stop()``. One seed drives both directions, each
from its own random stream: for one seed and one sequence of frames, the decisions are
the same every run.
"""

from __future__ import annotations

import re
import threading
from dataclasses import asdict, dataclass
from typing import Any

from mtcp_core._native import ffi, lib
from mtcp_core.pair import FaultRates

__all__ = [
    "COUNTERS",
    "LinkEmulator",
    "LinkShape",
    "complete_checksum",
    "parse_duration_us",
    "parse_probability",
    "parse_rate_bps",
    "segment",
]

COUNTERS = (
    "received",
    "forwarded",
    "bytes_forwarded",
    "dropped",
    "duplicated",
    "reordered",
    "corrupted",
    "delayed",
    "rate_delayed",
    "queue_drops",
    "overflow",
    "oversize",
    "segmented",
    "checksummed",
    "tx_errors",
    "port_errors",
)
DIRECTIONS = ("a_to_b", "b_to_a")
MAX_QUEUE_FRAMES = 1_000_000
RT_PRIORITY = 10  # SCHED_FIFO priority of the forwarding thread (below the kernel's IRQ threads)


@dataclass(frozen=True)
class LinkShape(FaultRates):
    """One direction of the emulated link: the pair link's fault injector (``FaultRates``:
    delay, jitter, loss, duplication, reordering, corruption), and ``rate_bps``, a limit on
    the bits of Ethernet frames per second (0: no limit) with a token bucket of
    ``burst_bytes`` (0: two frames or 1 ms at the rate) draining a FIFO of ``queue_frames``
    frames, tail drop. Jitter also reorders frames."""

    rate_bps: int = 0
    queue_frames: int = 1000
    burst_bytes: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.burst_bytes <= 0xFFFFFFFF:
            raise ValueError(f"burst_bytes: 0..4294967295, got {self.burst_bytes}")
        if not 0 <= self.rate_bps < 2**64:
            raise ValueError(f"rate_bps: >= 0, got {self.rate_bps}")
        if not 1 <= self.queue_frames <= MAX_QUEUE_FRAMES:
            raise ValueError(f"queue_frames: 1..{MAX_QUEUE_FRAMES}, got {self.queue_frames}")

    def _fill(self, d: Any, seed: int) -> None:
        self._fill_faults(d.faults, seed)
        d.rate_bps = self.rate_bps
        d.queue_frames = self.queue_frames
        d.burst_bytes = self.burst_bytes


Shapes = LinkShape | tuple[LinkShape, LinkShape]


def _pair(shape: Shapes) -> tuple[LinkShape, LinkShape]:
    if isinstance(shape, LinkShape):
        return shape, shape
    a_to_b, b_to_a = shape
    return a_to_b, b_to_a


class LinkEmulator:
    """Forwards frames between interfaces ``a`` and ``b`` through an emulated link.

    ``shape``: one LinkShape for both directions or ``(a_to_b, b_to_a)``. ``netns``: open the
    interfaces in that namespace (a name under /run/netns, or a path); the caller's thread
    stays where it is. ``pcap_a``/``pcap_b``: capture every frame that port receives and
    sends (timestamps when the emulator saw them). ``realtime``: run the forwarding thread
    SCHED_FIFO where allowed, so that other load does not delay its wake-ups (see
    ``realtime_active``). Needs CAP_NET_RAW."""

    def __init__(
        self,
        a: str,
        b: str,
        shape: Shapes = LinkShape(),  # noqa: B008 - frozen, never mutated
        *,
        seed: int = 0,
        netns: str | None = None,
        pcap_a: str | None = None,
        pcap_b: str | None = None,
        realtime: bool = True,
    ) -> None:
        if not 0 <= seed < 2**64:
            raise ValueError(f"seed: 0..2**64-1, got {seed}")
        self.a, self.b, self.seed = a, b, seed
        self.shapes = _pair(shape)
        conf = ffi.new("struct mtcp_netem_conf *")
        keep = [ffi.new("char[]", s.encode()) if s else ffi.NULL
                for s in (a, b, netns, pcap_a, pcap_b)]  # fmt: skip
        conf.iface_a, conf.iface_b, conf.netns, conf.pcap_a, conf.pcap_b = keep
        for i, s in enumerate(self.shapes):
            s._fill(conf.dir[i], seed)
        conf.rt_priority = RT_PRIORITY if realtime else 0
        err = ffi.new("char[]", 256)
        ptr = lib.mtcp_netem_open(conf, err, 256)
        if ptr == ffi.NULL:
            errno = ffi.errno
            raise OSError(errno, ffi.string(err).decode(errors="replace") or "netem: open failed")
        self._ptr: Any = ptr
        self._thread: threading.Thread | None = None
        self._result = 0

    def start(self) -> LinkEmulator:
        """Starts forwarding on a background thread."""
        if self._ptr is None:
            raise ValueError("the emulator is closed")
        if self._thread is not None:
            raise RuntimeError("the emulator already runs")

        def loop() -> None:
            self._result = int(lib.mtcp_netem_run(self._ptr))

        self._thread = threading.Thread(target=loop, name="netem", daemon=True)
        self._thread.start()
        return self

    @property
    def realtime_active(self) -> bool:
        """Whether the running loop got its real-time priority."""
        return self._ptr is not None and bool(lib.mtcp_netem_realtime(self._ptr))

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        """Stops forwarding (frames still in the delay line are dropped with it)."""
        if self._thread is None or self._ptr is None:
            return
        lib.mtcp_netem_stop(self._ptr)
        self._thread.join(10)
        if self._thread.is_alive():
            raise RuntimeError("netem: the forwarding loop did not stop within 10 s")
        self._thread = None

    def set(self, shape: Shapes, *, seed: int | None = None) -> None:
        """New settings while it runs (a new seed restarts the random streams); the rate
        limiter's queue cannot grow past the size the emulator was opened with."""
        if self._ptr is None:
            raise ValueError("the emulator is closed")
        new = _pair(shape)
        if seed is not None:
            self.seed = seed
        for i, s in enumerate(new):
            d = ffi.new("struct mtcp_netem_dir *")
            s._fill(d, self.seed)
            if lib.mtcp_netem_set(self._ptr, i, d) < 0:
                raise ValueError(
                    f"netem: {DIRECTIONS[i]}: queue_frames {s.queue_frames} is more than the "
                    f"{self.shapes[i].queue_frames} the emulator was opened with"
                )
        self.shapes = new

    def direction(self, d: int | str) -> dict[str, int]:
        """Counters of one direction: 0 or "a_to_b", 1 or "b_to_a"."""
        i = DIRECTIONS.index(d) if isinstance(d, str) else int(d)
        if self._ptr is None:
            raise ValueError("the emulator is closed")
        c = ffi.new("struct mtcp_netem_counters *")
        lib.mtcp_netem_counters(self._ptr, i, c)
        return {k: int(getattr(c, k)) for k in COUNTERS}

    def counters(self) -> dict[str, dict[str, int]]:
        """{"a_to_b": {...}, "b_to_a": {...}} (see COUNTERS and the README)."""
        return {name: self.direction(i) for i, name in enumerate(DIRECTIONS)}

    def settings(self) -> dict[str, Any]:
        return {
            "a": self.a,
            "b": self.b,
            "seed": self.seed,
            **{name: asdict(s) for name, s in zip(DIRECTIONS, self.shapes, strict=True)},
        }

    def close(self) -> None:
        self.stop()
        if self._ptr is not None:
            lib.mtcp_netem_close(self._ptr)
            self._ptr = None

    def __enter__(self) -> LinkEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_ptr", None) is not None and not self.running:
            lib.mtcp_netem_close(self._ptr)
            self._ptr = None


# ---------------------------------------------------------------- per-frame work (tests, fuzzing)

_MAX_PIECES = 65536


def complete_checksum(frame: bytes) -> bytes | None:
    """The frame with its partial TCP/UDP checksum completed as the forwarding loop does
    (the field holds the pseudo-header sum), or None when it is not such a frame."""
    buf = ffi.new("uint8_t[]", frame or b"\0")
    if not lib.mtcp_netem_complete_csum(buf, len(frame)):
        return None
    return bytes(ffi.buffer(buf, len(frame)))


def segment(frame: bytes, mtu: int) -> list[bytes] | None:
    """A TCP/IPv4 frame cut into segments of at most ``mtu`` IP bytes, as the loop cuts a
    GSO frame; None when it cannot be cut."""
    src = ffi.new("uint8_t[]", frame or b"\0")
    out = ffi.new("uint8_t[]", 65536 + 14)
    pieces = []
    for index in range(_MAX_PIECES):
        n = lib.mtcp_netem_segment(src, len(frame), mtu, index, out, len(out))
        if n < 0:
            return None
        if n == 0:
            break
        pieces.append(bytes(ffi.buffer(out, n)))
    return pieces


# ---------------------------------------------------------------- option values

_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(us|µs|ms|s)?\s*$")
_RATE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(bit|kbit|mbit|gbit|bps|kbps|mbps|gbps)?\s*$", re.I)
_RATE_UNITS = {
    "bit": 1, "kbit": 10**3, "mbit": 10**6, "gbit": 10**9,
    "bps": 8, "kbps": 8 * 10**3, "mbps": 8 * 10**6, "gbps": 8 * 10**9,
}  # fmt: skip


def parse_duration_us(text: str) -> int:
    """Parses "20ms", "1.5ms", "300us", "0.02s", "0" -> microseconds (a bare number is ms, as in
    tc-netem)."""
    m = _DURATION.match(text)
    if not m:
        raise ValueError(f"{text!r}: a duration like 20ms, 500us or 0.1s")
    value, unit = float(m.group(1)), m.group(2) or "ms"
    us = value * {"us": 1, "µs": 1, "ms": 1000, "s": 1_000_000}[unit]
    if us > 0xFFFFFFFF:
        raise ValueError(f"{text!r}: at most 4294 s")
    return round(us)


def parse_probability(text: str) -> float:
    """Parses "2%" -> 0.02; a bare number is a percentage too ("2" -> 0.02), as in tc-netem."""
    t = text.strip().removesuffix("%").strip()
    try:
        p = float(t) / 100
    except ValueError:
        raise ValueError(f"{text!r}: a percentage like 2% or 0.5%") from None
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{text!r}: a percentage from 0% to 100%")
    return p


def parse_rate_bps(text: str) -> int:
    """Parses "100mbit", "1gbit", "500kbit", "12.5mbps" (bytes) -> bits per second; a bare number
    is bits per second; "0" is no limit."""
    m = _RATE.match(text)
    if not m:
        raise ValueError(f"{text!r}: a rate like 100mbit, 1gbit or 12.5mbps (bytes/s)")
    return round(float(m.group(1)) * _RATE_UNITS[(m.group(2) or "bit").lower()])
