"""Health: is every worker up and every core's mTCP thread running? (``/healthz``)

The management address is on the kernel's stack, so a health check from inside a container
(where a connection to the container's own address goes over loopback and never reaches the
user-level stack on ``eth0``) asks here instead of fetching the site. Healthy means:

- not draining;
- every core has a live worker (a worker that died is down until its successor runs);
- ``--stack mtcp``: every core's mTCP thread published its stats block within
  ``HEARTBEAT_MAX_AGE_S``. The thread publishes at least once a second even when idle (it
  wakes once a second at most to do so), so an older block means a stuck or dead thread.

``heartbeat_age`` reads the block's header (``struct mtcp_stats_block`` in
``mtcp_core/src/core/stats.h``: magic, version, ncounters, core, pid, updated_ns, which is
``CLOCK_MONOTONIC``, the clock of ``time.monotonic``).
"""

from __future__ import annotations

import struct
import time
from typing import Any

from appliance.metrics.source import ApplianceView

HEARTBEAT_MAX_AGE_S = 5.0
_HEADER = struct.Struct("=QIIIIQ")  # magic, version, ncounters, core, pid, updated_ns
_MAGIC = 0x5354415450435445
_VERSION = 1


def heartbeat_age(stats_path: str, pid: int, now: float | None = None) -> float | None:
    """Seconds since the mTCP thread of worker ``pid`` last published its block, or None
    (no block, another worker's block, or not a stats block)."""
    try:
        with open(stats_path, "rb") as f:
            head = f.read(_HEADER.size)
    except OSError:
        return None
    if len(head) < _HEADER.size:
        return None
    magic, version, _n, _core, block_pid, updated_ns = _HEADER.unpack(head)
    if magic != _MAGIC or version != _VERSION or block_pid != pid or updated_ns == 0:
        return None
    now = time.monotonic() if now is None else now
    return max(0.0, now - updated_ns / 1e9)


def evaluate(view: ApplianceView, max_age_s: float = HEARTBEAT_MAX_AGE_S) -> dict[str, Any]:
    """The ``/healthz`` document; ``healthy`` says whether it is 200 or 503."""
    problems: list[str] = []
    cores: list[dict[str, Any]] = []
    if view.draining:
        problems.append("draining")
    if not view.cores:
        problems.append("no workers")
    for c in view.cores:
        entry: dict[str, Any] = {"core": c.core, "worker": "up" if c.up else "down", "pid": c.pid}
        if not c.up:
            problems.append(f"core {c.core}: worker down")
        if view.stack == "mtcp":
            age = c.heartbeat_age_s
            entry["heartbeat_age_s"] = None if age is None else round(age, 3)
            if not c.up:
                entry["mtcp_thread"] = "down"
            elif age is None:
                entry["mtcp_thread"] = "no heartbeat"
                problems.append(f"core {c.core}: mTCP thread has not published its stats")
            elif age > max_age_s:
                entry["mtcp_thread"] = "stale"
                problems.append(f"core {c.core}: mTCP thread silent for {age:.1f}s")
            else:
                entry["mtcp_thread"] = "ok"
        cores.append(entry)
    return {
        "healthy": not problems,
        "status": "ok" if not problems else "fail",
        "problems": problems,
        "stack": view.stack,
        "draining": view.draining,
        "cores": cores,
    }
