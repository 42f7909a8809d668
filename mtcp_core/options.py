"""``StackOptions``: how a stack behaves, every switch named for what it turns on.

Where a stack runs (backend, address, interface, gateway, cores ...) are ``Stack``'s own
arguments; everything that tunes it is a field here, with 0 meaning the core's default for
the numbers. Pass ``Stack(..., options=StackOptions(...))``, or the same fields as keywords
(``Stack(..., delayed_ack=False)``), or both (the keywords win). The names the binding took
before (``priority=``, ``no_delayed_ack=`` ...) raise a TypeError that names the new one.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from mtcp_core.constants import CONGESTION_ALGORITHMS

#: names the binding or the C conf used, and what to write instead
RENAMED: dict[str, str] = {
    "priority": "tx_priority=",
    "no_priority": "tx_priority=False",
    "no_delayed_ack": "delayed_ack=False",
    "no_sack": "sack=False",
    "no_evict": "evict=False",
    "no_hugepages": "hugepages=False",
    "afpacket_rx_ring": "afpacket_rx='ring'",
}


@dataclass(frozen=True)
class StackOptions:
    """A stack's tunables (see README, "Using the stack from Python")."""

    # capture and observation
    pcap: str | None = None  # pcap path per core ("%u": the core)
    stats_path: str | None = None  # shared stats block per core ("%u": the core)
    trace: bool = False  # log every segment to stderr
    # resources
    max_conns: int = 0  # TCBs per core
    rcvbuf: int = 0  # receive ring per connection, bytes
    sndbuf: int = 0  # send ring per connection, bytes
    mem_budget: int = 0  # bytes of rings per core before memory pressure
    hugepages: bool = True  # pools on huge pages when the system has them
    # TCP behaviour
    sack: bool = True  # negotiate SACK
    delayed_ack: bool = True  # delay ACKs (RFC 9293 3.8.6.3); False: ACK every segment
    congestion: str = "cubic"  # one of CONGESTION_ALGORITHMS
    time_wait_ms: int = 0
    idle_timeout_ms: int = 0
    syn_backlog: int = 0
    challenge_ack_limit: int = 0  # RFC 5961 challenge ACKs per second
    orphan_retries: int = 0
    max_orphans: int = 0
    max_conns_per_source: int = 0
    evict: bool = True  # evict idle connections marked SO_EVICTABLE under pressure
    frag_timeout_ms: int = 0  # IPv4 reassembly timeout; 0: 30000
    fixed_isn: int = 0  # tests: a fixed initial sequence number
    secret_seed: int = 0  # tests: seeds the ISN and SYN-cookie secrets; 0: random
    # the device path
    tx_priority: bool = True  # control > ACK > data TX lists; False: one FIFO list
    tx_rate_mbps: int = 0  # token-bucket shaper; 0: none
    afpacket_rx: str = "copy"  # "copy" (recvmmsg) or "ring" (PACKET_RX_RING)
    shared_addr: bool = False  # the kernel keeps the same address (nft guard)
    busy_poll_us: int = 0  # spin this long before sleeping on an idle device

    def __post_init__(self) -> None:
        if self.afpacket_rx not in ("ring", "copy"):
            raise ValueError(f"afpacket_rx: 'ring' or 'copy', not {self.afpacket_rx!r}")
        if not 0 <= self.tx_rate_mbps <= 1_000_000:
            raise ValueError(f"tx_rate_mbps: 0 (no shaping) to 1000000, not {self.tx_rate_mbps}")
        if not 0 <= self.secret_seed < 1 << 64:
            raise ValueError(f"secret_seed: 0 (random) or a 64-bit seed, not {self.secret_seed}")
        if not 0 <= self.frag_timeout_ms <= 120_000:
            raise ValueError(
                f"frag_timeout_ms: 0 (default 30000) to 120000, not {self.frag_timeout_ms}"
            )
        if self.congestion not in CONGESTION_ALGORITHMS:
            names = ", ".join(CONGESTION_ALGORITHMS)
            raise ValueError(f"congestion: one of {names}, not {self.congestion!r}")
        if not 0 <= self.busy_poll_us <= 1_000_000:
            raise ValueError(f"busy_poll_us: 0 (none) to 1000000, not {self.busy_poll_us}")

    @classmethod
    def build(cls, base: StackOptions | None = None, **kw: Any) -> StackOptions:
        """``base`` (or the defaults) with the fields in ``kw`` replaced; a name that is not
        a field raises TypeError, naming the field that replaced it where there is one."""
        names = {f.name for f in fields(cls)}
        for key in kw:
            if key in names:
                continue
            if key in RENAMED:
                raise TypeError(f"Stack option {key}= was renamed: use {RENAMED[key]}")
            raise TypeError(f"Stack: unknown option {key}= (StackOptions has no such field)")
        values = {f.name: getattr(base, f.name) for f in fields(cls)} if base else {}
        return cls(**{**values, **kw})

    def _fill(self, conf: Any, cstr: Any) -> None:
        """Writes these options into a ``struct mtcp_conf``."""
        for name in _SAME_IN_C:
            setattr(conf, name, getattr(self, name))
        for name, c_name in _FLIPPED_IN_C.items():
            setattr(conf, c_name, 0 if getattr(self, name) else 1)
        conf.pcap_path = cstr(self.pcap)
        conf.stats_path = cstr(self.stats_path)
        conf.congestion = cstr(self.congestion)
        conf.trace = 1 if self.trace else 0
        conf.hugepages = 1 if self.hugepages else 0
        conf.shared_addr = 1 if self.shared_addr else 0
        conf.afpacket_rx_ring = 1 if self.afpacket_rx == "ring" else 0


#: numbers that struct mtcp_conf holds under the same name
_SAME_IN_C = (
    "max_conns", "rcvbuf", "sndbuf", "mem_budget", "time_wait_ms", "idle_timeout_ms",
    "syn_backlog", "challenge_ack_limit", "orphan_retries", "max_orphans",
    "max_conns_per_source", "frag_timeout_ms", "fixed_isn", "secret_seed", "tx_rate_mbps",
    "busy_poll_us",
)  # fmt: skip
#: switches that struct mtcp_conf holds with the other polarity (``no_*``)
_FLIPPED_IN_C = {
    "sack": "no_sack",
    "delayed_ack": "no_delayed_ack",
    "evict": "no_evict",
    "tx_priority": "no_priority",
}
