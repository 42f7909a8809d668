"""The pair backend's in-memory link and its fault injector."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from mtcp_core._native import ffi, lib
from mtcp_core._util import _raise


@dataclass(frozen=True)
class FaultRates:
    """What the fault injector does to frames (struct mtcp_pair_faults but its seed), for a
    pair link and for the link emulator: probabilities in [0, 1] of losing, duplicating,
    reordering (holding a frame back until after the next) and corrupting (one random bit
    flipped) a frame; ``delay_us`` one way, plus a uniform random ``jitter_us``."""

    delay_us: int = 0
    jitter_us: int = 0
    loss: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    corrupt: float = 0.0

    def __post_init__(self) -> None:
        for name in ("loss", "duplicate", "reorder", "corrupt"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name}: a probability in [0, 1], got {v}")
        for name in ("delay_us", "jitter_us"):
            v = getattr(self, name)
            if not 0 <= v <= 0xFFFFFFFF:
                raise ValueError(f"{name}: 0..4294967295, got {v}")

    def _fill_faults(self, f: Any, seed: int) -> None:
        """Sets the C ``struct mtcp_pair_faults`` ``f`` (the field names are the C names)."""
        f.seed = seed
        for fl in fields(FaultRates):
            setattr(f, fl.name, getattr(self, fl.name))


@dataclass(frozen=True)
class Faults(FaultRates):
    """Fault injector settings of a pair link, its random stream's ``seed`` included."""

    seed: int = 0

    def _c(self) -> Any:
        f = ffi.new("struct mtcp_pair_faults *")
        self._fill_faults(f, self.seed)
        return f


class PairLink:
    """In-memory link joining two stacks in one process (the ``pair`` backend)."""

    def __init__(self, faults: Faults | None = None, **kw: Any) -> None:
        self.faults = faults or Faults(**kw)
        self._ptr = lib.mtcp_pair_create(self.faults._c())
        if self._ptr == ffi.NULL:
            raise MemoryError("mtcp_pair_create")

    def set_faults(self, faults: Faults | None = None, **kw: Any) -> None:
        self.faults = faults or Faults(**kw)
        lib.mtcp_pair_set_faults(self._ptr, self.faults._c())

    # TCP flag bits for drop_next
    FIN: int = lib.MTCP_TCP_FLAG_FIN
    SYN: int = lib.MTCP_TCP_FLAG_SYN
    RST: int = lib.MTCP_TCP_FLAG_RST
    PSH: int = lib.MTCP_TCP_FLAG_PSH
    ACK: int = lib.MTCP_TCP_FLAG_ACK
    URG: int = lib.MTCP_TCP_FLAG_URG

    def counters(self, side: int) -> dict[str, int]:
        """Counters of the direction sent by ``side``; ``targeted`` counts the frames
        that ``drop_next`` rules took (they are not in ``lost``)."""
        c = ffi.new("struct mtcp_pair_counters *")
        lib.mtcp_pair_counters(self._ptr, side, c)
        keys = (
            "sent",
            "delivered",
            "lost",
            "duplicated",
            "reordered",
            "corrupted",
            "overflow",
            "targeted",
        )
        return {k: int(getattr(c, k)) for k in keys}

    def drop_next(
        self,
        side: int,
        flags_mask: int,
        flags_value: int,
        count: int = 1,
        min_payload: int = 0,
        max_payload: int = 65535,
    ) -> None:
        """Drops the next ``count`` TCP segments sent by ``side`` whose flags satisfy
        ``flags & flags_mask == flags_value`` and whose payload is ``min_payload`` to
        ``max_payload`` bytes. The next SYN: ``drop_next(0, SYN | ACK, SYN)``; the next
        SYN-ACK: ``(SYN | ACK, SYN | ACK)``; a pure ACK: ``(SYN | FIN | RST | ACK, ACK,
        max_payload=0)``; the next FIN: ``(FIN, FIN)``. Arming the same rule again adds
        to its count; up to 8 different rules per side (OSError ENOSPC)."""
        if side not in (0, 1):
            raise ValueError("side must be 0 or 1")
        if not 0 <= flags_mask <= 0xFF or not 0 <= flags_value <= 0xFF:
            raise ValueError("flags_mask and flags_value are 8-bit TCP flags")
        if flags_value & ~flags_mask:
            raise ValueError("flags_value has bits outside flags_mask: it could never match")
        if count < 0 or not 0 <= min_payload <= max_payload:
            raise ValueError("count >= 0 and 0 <= min_payload <= max_payload")
        max_payload = min(max_payload, 0xFFFFFFFF)
        r = lib.mtcp_pair_drop_next(
            self._ptr, side, flags_mask, flags_value, count, min_payload, max_payload
        )
        if r < 0:
            _raise("drop_next")

    def inject(self, side: int, frame: bytes, now_ns: int) -> None:
        """Sends ``frame`` as ``side``, a side that no stack has open (a test playing the
        peer), at ``now_ns`` on the stepped clock: it goes through that side's faults and
        is due at ``now_ns`` plus the delay."""
        if lib.mtcp_pair_inject(self._ptr, side, frame, len(frame), now_ns) < 0:
            _raise("pair inject")

    def take(self, side: int, now_ns: int) -> bytes | None:
        """The next frame sent to ``side`` (a side no stack has open) that is due by
        ``now_ns``, or None."""
        buf = ffi.new("char[]", 2048)
        n = lib.mtcp_pair_take(self._ptr, side, buf, 2048, now_ns)
        if n < 0:
            _raise("pair take")
        return ffi.unpack(buf, n) if n else None

    def next_due(self, side: int) -> int:
        """When the next frame for ``side`` is due (ns on the link's clock), 0 if none."""
        return int(lib.mtcp_pair_next_due(self._ptr, side))

    def close(self) -> None:
        if self._ptr is not None:
            lib.mtcp_pair_destroy(self._ptr)
            self._ptr = None
