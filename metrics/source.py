"""What the metrics exposition and the status page read: a view of every core at one moment.

The supervisor implements ``MetricsSource``: it reads each core's shared stats block (stack
counters, written by the core's mTCP thread) and HTTP block (written by the worker's
``on_request`` callback) and adds what only it knows (worker pids, restarts, counters of
workers that died). Nothing here talks to a worker process.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Protocol

from appliance.metrics.http_block import HttpSnapshot

_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


@dataclass(frozen=True)
class CoreView:
    """One core: its worker and its counters."""

    core: int
    cpu: int | None = None
    pid: int | None = None  # the live worker, None while it is down
    restarts: int = 0
    started_at: float | None = None  # the worker's start, Unix time
    stack: dict[str, int] | None = None  # mtcp_core stat name -> value; None on --stack linux
    http: HttpSnapshot | None = None
    cpu_seconds: float | None = None  # the live worker's user + system CPU time
    rss_bytes: int | None = None
    # seconds since the core's mTCP thread last published its stats block (None: no block)
    heartbeat_age_s: float | None = None

    @property
    def up(self) -> bool:
        return self.pid is not None


@dataclass(frozen=True)
class ApplianceView:
    """The whole appliance at one moment."""

    stack: str  # "mtcp" or "linux"
    backend: str | None  # "tap" / "afpacket" for mtcp
    version: str
    serve_url: str
    cores: list[CoreView]
    supervisor_pid: int = field(default_factory=os.getpid)
    started_at: float = field(default_factory=time.time)
    taken_at: float = field(default_factory=time.monotonic)
    draining: bool = False


class MetricsSource(Protocol):
    def view(self) -> ApplianceView: ...


def process_times(pid: int) -> tuple[float, int] | None:
    """(user + system CPU seconds, resident bytes) of a process, from /proc."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode("ascii", "replace")
    except OSError:
        return None
    fields = raw[raw.rfind(")") + 2 :].split()
    try:
        # fields[0] is field 3 (state): utime is field 14, stime 15, rss 24
        cpu = (int(fields[11]) + int(fields[12])) / _CLK_TCK
        rss = int(fields[21]) * _PAGE
    except (IndexError, ValueError):
        return None
    return cpu, rss
