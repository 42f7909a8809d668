"""The per-core counters: names, the TCP state list, and a stats block read from a file."""

from __future__ import annotations

from typing import Any

from mtcp_core._native import ffi, lib
from mtcp_core._util import _raise


def stat_names() -> list[str]:
    """Names of the per-core counters, in the stats block's order."""
    return [ffi.string(lib.mtcp_stats_name(i)).decode() for i in range(lib.mtcp_stats_count())]


def _tcp_states() -> tuple[str, ...]:
    """RFC 9293 state names indexed by state number (``MTCP_TCP_*``), from the core: the
    stats block counts connections by state in that order (``state_closed`` ...)."""
    names = stat_names()
    states = tuple(n.removeprefix("state_").upper() for n in names if n.startswith("state_"))
    for number, name in enumerate(states):
        if getattr(lib, f"MTCP_TCP_{name}", None) != number:
            raise ImportError(f"mtcp_core: stats state {name} is not MTCP_TCP_ {number}")
    return states


TCP_STATES: tuple[str, ...] = _tcp_states()


def stat_is_gauge(name: str) -> bool:
    return bool(lib.mtcp_stats_is_gauge(stat_names().index(name)))


def read_stats_file(path: str) -> dict[str, Any]:
    """Reads a core's shared stats block written by another process."""
    n = lib.mtcp_stats_count()
    buf = ffi.new("uint64_t[]", n)
    core = ffi.new("unsigned *")
    pid = ffi.new("unsigned *")
    got = lib.mtcp_stats_read_file(path.encode(), buf, n, core, pid)
    if got < 0:
        _raise(f"read stats {path}")
    names = stat_names()
    counters = {names[i]: int(buf[i]) for i in range(got)}
    return {"core": int(core[0]), "pid": int(pid[0]), "counters": counters}
