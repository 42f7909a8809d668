"""Per-worker HTTP counters in shared memory.

Each worker owns one small block (a ``shm_block.SharedBlock``: created by the supervisor
before it forks, one writer, read at each scrape): request counts by method and status
class, a request duration histogram, the sum of durations and the response bytes, and the
same per site. The worker's ``on_request`` callback adds to it.

Layout: little-endian ``uint64`` slots; see ``_SLOTS`` below.
"""

from __future__ import annotations

import bisect
import ctypes
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from appliance.metrics.shm_block import HDR_CORE, HDR_PID, HEADER_SLOTS, SharedBlock

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

_REQ = HEADER_SLOTS
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


class HttpBlock(SharedBlock):
    """One core's block: ``create`` it in the supervisor, ``record`` in the worker,
    ``read`` anywhere that mapped it."""

    MAGIC = MAGIC
    VERSION = VERSION
    SLOTS = _SLOTS

    def __init__(self, path: Path, core: int) -> None:
        super().__init__(path, core)
        self.sites: tuple[str, ...] = ()
        self._site_index: dict[str, int] = {}

    def set_sites(self, names: list[str] | tuple[str, ...]) -> None:
        """The site names (at most MAX_SITES), in slot order; set before the fork."""
        if len(names) > MAX_SITES:
            raise ValueError(f"at most {MAX_SITES} sites")
        self.sites = tuple(names)
        self._site_index = {n: i for i, n in enumerate(names)}

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
        raw = self._raw()
        if raw is None:
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
            core=raw[HDR_CORE],
            pid=raw[HDR_PID],
            requests=requests,
            response_bytes=raw[_BYTES] + hits[4],
            duration_sum_s=(raw[_DUR_SUM_NS] + hits[5]) / 1e9,
            duration_buckets=tuple(
                a + b
                for a, b in zip(raw[_DUR_BUCKETS:_SITE_BASE], hits[6 : 6 + nb], strict=True)
            ),
            sites=sites,
        )
