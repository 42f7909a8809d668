"""Per-worker HTTP counters in shared memory.

Each worker owns one small block: request counts by method and status class, a request
duration histogram, the sum of durations and the response bytes. The supervisor creates
the blocks (one file per core, mapped ``MAP_SHARED`` before it forks), the worker's
``on_request`` callback adds to its own block (one writer per block: plain 64-bit stores,
no message per request), and the metrics collector reads every block when it is scraped.
A block outlives its worker, so the counters keep growing across a worker's restarts.

Layout: little-endian ``uint64`` slots; see ``_SLOTS`` below. Readers check ``MAGIC`` and
``VERSION``.
"""

from __future__ import annotations

import bisect
import ctypes
import mmap
import os
import struct
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

MAGIC = 0x4B4C42505454484D  # "MHTTPBLK" little endian
VERSION = 3
MAX_SITES = 32  # per-site counters (virtual hosts): a bounded label set

METHODS: tuple[str, ...] = ("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "OTHER")
STATUS_CLASSES: tuple[str, ...] = ("1xx", "2xx", "3xx", "4xx", "5xx")
# Upper bounds (seconds) of the request duration histogram; +Inf follows.
DURATION_BUCKETS: tuple[float, ...] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

_HDR_MAGIC, _HDR_VERSION, _HDR_CORE, _HDR_PID = range(4)
_REQ = 4
_BYTES = _REQ + len(METHODS) * len(STATUS_CLASSES)
_DUR_SUM_NS = _BYTES + 1
_DUR_BUCKETS = _DUR_SUM_NS + 1
_SITE_BASE = _DUR_BUCKETS + len(DURATION_BUCKETS) + 1
_SITE_STRIDE = len(STATUS_CLASSES) + 1  # requests by status class, then response bytes
_HITS = _SITE_BASE + MAX_SITES * _SITE_STRIDE
# The static responder's hits, added by the core's mTCP thread (its only writer) in the
# layout of ``Context.responder_take_metrics``: GET 2xx, GET 3xx, HEAD 2xx, HEAD 3xx, bytes,
# duration sum (ns), the duration buckets.
_HIT_SLOTS = 6 + len(DURATION_BUCKETS) + 1
_SLOTS = _HITS + _HIT_SLOTS
SIZE = _SLOTS * 8

_METHOD_INDEX = {m: i for i, m in enumerate(METHODS)}


class RequestLike(Protocol):
    """What the HTTP server reports per request (``appliance.http.server.RequestRecord``)."""

    @property
    def method(self) -> str: ...

    @property
    def status(self) -> int: ...

    @property
    def bytes_sent(self) -> int: ...

    @property
    def duration_s(self) -> float: ...


@dataclass(frozen=True)
class HttpSnapshot:
    """One block's values at one moment."""

    core: int
    pid: int
    requests: dict[tuple[str, str], int]  # (method, status class) -> count
    response_bytes: int
    duration_sum_s: float
    duration_buckets: tuple[int, ...]  # per bucket (not cumulative), +Inf last
    # site -> (requests by status class, response bytes); empty without virtual hosts
    sites: dict[str, tuple[dict[str, int], int]] = field(default_factory=dict)

    @property
    def total_requests(self) -> int:
        return sum(self.requests.values())


def method_slot(method: str) -> int:
    return _METHOD_INDEX.get(method.upper(), len(METHODS) - 1)


def class_slot(status: int) -> int:
    return min(max(status // 100, 1), 5) - 1


class HttpBlock:
    """One core's block: ``create`` it in the supervisor, ``record`` in the worker,
    ``read`` anywhere that mapped it."""

    def __init__(self, path: Path, core: int) -> None:
        self.path = path
        self.core = core
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            os.ftruncate(fd, SIZE)
            self._map = mmap.mmap(fd, SIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
        self._slots: Any = (ctypes.c_uint64 * _SLOTS).from_buffer(self._map)
        self._lock = threading.Lock()
        self.sites: tuple[str, ...] = ()
        self._site_index: dict[str, int] = {}

    def set_sites(self, names: list[str] | tuple[str, ...]) -> None:
        """The site names (at most MAX_SITES), in slot order; set before the fork."""
        if len(names) > MAX_SITES:
            raise ValueError(f"at most {MAX_SITES} sites")
        self.sites = tuple(names)
        self._site_index = {n: i for i, n in enumerate(names)}

    @classmethod
    def create(cls, path: Path, core: int) -> HttpBlock:
        """A new, zeroed block for ``core`` at ``path``."""
        block = cls(path, core)
        ctypes.memset(block._slots, 0, SIZE)
        block._slots[_HDR_VERSION] = VERSION
        block._slots[_HDR_CORE] = core
        block._slots[_HDR_MAGIC] = MAGIC
        return block

    def claim(self, pid: int) -> None:
        """Marks the block as written by ``pid`` (the worker, after fork)."""
        self._slots[_HDR_PID] = pid
        self._lock = threading.Lock()  # a lock inherited across fork may be held

    def record(self, rec: RequestLike) -> None:
        """Counts one finished request (the worker's ``on_request`` callback)."""
        dur = max(rec.duration_s, 0.0)
        s = self._slots
        with self._lock:
            s[_REQ + method_slot(rec.method) * len(STATUS_CLASSES) + class_slot(rec.status)] += 1
            s[_BYTES] += max(rec.bytes_sent, 0)
            s[_DUR_SUM_NS] += int(dur * 1e9)
            s[_DUR_BUCKETS + bisect.bisect_left(DURATION_BUCKETS, dur)] += 1
            si = self._site_index.get(getattr(rec, "site", ""))
            if si is not None:
                base = _SITE_BASE + si * _SITE_STRIDE
                s[base + class_slot(rec.status)] += 1
                s[base + len(STATUS_CLASSES)] += max(rec.bytes_sent, 0)

    def hits_address(self) -> int:
        """Where the static responder's counters are (``Context.responder_enable``'s
        ``hit_slots``): valid while the block is mapped."""
        return ctypes.addressof(self._slots) + _HITS * 8

    def read(self) -> HttpSnapshot | None:
        """The block's values, or None when it is not (yet) a valid block."""
        raw = struct.unpack_from(f"<{_SLOTS}Q", self._map, 0)
        if raw[_HDR_MAGIC] != MAGIC or raw[_HDR_VERSION] != VERSION:
            return None
        ncls = len(STATUS_CLASSES)
        requests = {
            (m, c): raw[_REQ + mi * ncls + ci]
            for mi, m in enumerate(METHODS)
            for ci, c in enumerate(STATUS_CLASSES)
        }
        hits = raw[_HITS:_SLOTS]  # the responder's, counted the same way
        requests["GET", "2xx"] += hits[0]
        requests["GET", "3xx"] += hits[1]
        requests["HEAD", "2xx"] += hits[2]
        requests["HEAD", "3xx"] += hits[3]
        nb = len(DURATION_BUCKETS) + 1
        sites = {
            name: (
                {c: raw[_SITE_BASE + i * _SITE_STRIDE + ci] for ci, c in enumerate(STATUS_CLASSES)},
                raw[_SITE_BASE + i * _SITE_STRIDE + len(STATUS_CLASSES)],
            )
            for i, name in enumerate(self.sites)
        }
        if len(sites) == 1:  # the responder runs for a single site only: its hits are that site's
            (by_class, nbytes), = sites.values()
            by_class["2xx"] += hits[0] + hits[2]
            by_class["3xx"] += hits[1] + hits[3]
            sites[self.sites[0]] = (by_class, nbytes + hits[4])
        return HttpSnapshot(
            core=raw[_HDR_CORE],
            pid=raw[_HDR_PID],
            requests=requests,
            response_bytes=raw[_BYTES] + hits[4],
            duration_sum_s=(raw[_DUR_SUM_NS] + hits[5]) / 1e9,
            duration_buckets=tuple(
                a + b
                for a, b in zip(raw[_DUR_BUCKETS:_SITE_BASE], hits[6 : 6 + nb], strict=True)
            ),
            sites=sites,
        )

    def close(self) -> None:
        del self._slots
        self._map.close()
