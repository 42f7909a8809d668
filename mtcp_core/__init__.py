"""Python binding of the native mTCP core, shaped like ``socket`` and ``select.epoll``.

    stack = mtcp_core.Stack(backend="afpacket", iface="eth0", ip="198.18.0.2/24")
    ctx = stack.context(0)                    # starts core 0's mTCP thread
    lsock = ctx.socket(); lsock.bind(("0.0.0.0", 80)); lsock.listen(4096)
    ep = ctx.epoll(); ep.register(lsock, mtcp_core.EPOLLIN)
    for sock, events in ep.poll(timeout=1.0): ...

Every call into C is this design's system call: the batch calls (``Epoll.poll``,
``Socket.accept_many``, ``Context.recv_many``/``send_many``/``close_many``) carry many
sockets per crossing. Calls that can block release the GIL (cffi does so for every call).
Errors come back as ``OSError`` (its errno subclasses: ``BlockingIOError``,
``ConnectionResetError`` ...), like the socket module's.

A context has one app thread: call a context's methods from one Python thread only.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import struct
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from mtcp_core._native import ffi, lib

__all__ = [
    "EPOLLERR",
    "EPOLLET",
    "EPOLLHUP",
    "EPOLLIN",
    "EPOLLOUT",
    "EPOLLRDHUP",
    "Context",
    "Epoll",
    "LatencySummary",
    "LinkEmulator",
    "LinkShape",
    "LoadGenerator",
    "LoadResult",
    "PairLink",
    "Socket",
    "Stack",
    "SteppedContext",
    "flow_core",
    "read_stats_file",
    "stat_names",
]

EPOLLIN: int = lib.MTCP_EPOLLIN
EPOLLOUT: int = lib.MTCP_EPOLLOUT
EPOLLERR: int = lib.MTCP_EPOLLERR
EPOLLHUP: int = lib.MTCP_EPOLLHUP
EPOLLRDHUP: int = lib.MTCP_EPOLLRDHUP
EPOLLET: int = lib.MTCP_EPOLLET
SHUT_RD: int = lib.MTCP_SHUT_RD
SHUT_WR: int = lib.MTCP_SHUT_WR
SHUT_RDWR: int = lib.MTCP_SHUT_RDWR
SOL_SOCKET: int = lib.MTCP_SOL_SOCKET
SO_REUSEADDR: int = lib.MTCP_SO_REUSEADDR
SO_KEEPALIVE: int = lib.MTCP_SO_KEEPALIVE
SO_SNDBUF: int = lib.MTCP_SO_SNDBUF
SO_RCVBUF: int = lib.MTCP_SO_RCVBUF
SO_LINGER: int = lib.MTCP_SO_LINGER
SO_ERROR: int = lib.MTCP_SO_ERROR
IPPROTO_TCP: int = lib.MTCP_IPPROTO_TCP
TCP_NODELAY: int = lib.MTCP_TCP_NODELAY
TCP_MAXSEG: int = lib.MTCP_TCP_MAXSEG
TCP_KEEPIDLE: int = lib.MTCP_TCP_KEEPIDLE
TCP_KEEPINTVL: int = lib.MTCP_TCP_KEEPINTVL
TCP_KEEPCNT: int = lib.MTCP_TCP_KEEPCNT
TCP_USER_TIMEOUT: int = lib.MTCP_TCP_USER_TIMEOUT
SO_EVICTABLE: int = lib.MTCP_SO_EVICTABLE
TCP_CONGESTION: int = lib.MTCP_TCP_CONGESTION
CONGESTION_ALGORITHMS = ("cubic", "newreno")


_AF_INET = 2
_SOCK_STREAM = 1
_RECV_SCRATCH = 256 * 1024


def _raise(what: str) -> None:
    err = ffi.errno
    raise OSError(err, f"{what}: {os.strerror(err)}")


def _ip_to_int(host: str) -> int:
    if host in ("", "0.0.0.0"):
        return 0
    return int(ipaddress.IPv4Address(host))


def _int_to_ip(value: int) -> str:
    return str(ipaddress.IPv4Address(value))


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


class ResponderLogRecord(NamedTuple):
    """One hit answered by the static responder, for the access log."""

    peer: str
    request_line: bytes
    status: int
    body_bytes: int
    bytes_sent: int
    duration_s: float
    time: float  # time.time() when the response was handed to TCP
    referer: bytes | None
    user_agent: bytes | None
    host: bytes | None


_LOGREC = struct.Struct("<IIHHHHIIQQH6x")


def rsp_parse(data: bytes, max_request_line: int = 8192, max_header_bytes: int = 16384) -> int:
    """The static responder's request parser alone: the head's length when it would take
    the request, 0 when it needs more bytes, -reason otherwise (1 method, 2 grammar,
    3 header, 4 size)."""
    hl = ffi.new("unsigned *")
    r = lib.mtcp_rsp_parse(data, len(data), max_request_line, max_header_bytes, hl)
    return int(hl[0]) if r == 1 else int(r)


def flow_core(saddr: str, daddr: str, sport: int, dport: int, ncores: int) -> int:
    """The core the afpacket fanout program sends this flow to (symmetric)."""
    return int(lib.mtcp_flow_core(_ip_to_int(saddr), _ip_to_int(daddr), sport, dport, ncores))


@dataclass(frozen=True)
class CongestionRound:
    """One round of ``simulate_congestion``: when it ended and the window after it."""

    time_s: float
    cwnd: int
    ssthresh: int


def simulate_congestion(
    algo: str,
    rtts_us: Sequence[int],
    *,
    mss: int = 1448,
    init_cwnd_segs: int = 10,
    loss_round: int = -1,
) -> tuple[list[CongestionRound], int]:
    """Runs the core's congestion control ``algo`` on a synthetic ACK clock (no packets):
    one round per entry of ``rtts_us``, a window of MSS-sized segments ACKed one by one over
    that round trip, one loss at the start of round ``loss_round``. Returns the rounds and
    the count of HyStart++ exits from slow start (a test and teaching aid)."""
    n = len(rtts_us)
    rtt = ffi.new("uint32_t[]", list(rtts_us) or [0])
    cwnd = ffi.new("uint32_t[]", max(n, 1))
    ssth = ffi.new("uint32_t[]", max(n, 1))
    tus = ffi.new("uint64_t[]", max(n, 1))
    exits = ffi.new("uint64_t *")
    r = lib.mtcp_cc_simulate(
        algo.encode(), mss, init_cwnd_segs, rtt, n, loss_round, cwnd, ssth, tus, exits
    )
    if r < 0:
        _raise("simulate_congestion")
    rounds = [CongestionRound(tus[i] / 1e6, int(cwnd[i]), int(ssth[i])) for i in range(n)]
    return rounds, int(exits[0])


@dataclass(frozen=True)
class Faults:
    """Fault injector settings of a pair link; rates are probabilities."""

    seed: int = 0
    loss: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    corrupt: float = 0.0
    delay_us: int = 0
    jitter_us: int = 0

    def _c(self) -> Any:
        f = ffi.new("struct mtcp_pair_faults *")
        f.seed = self.seed
        f.loss = self.loss
        f.duplicate = self.duplicate
        f.reorder = self.reorder
        f.corrupt = self.corrupt
        f.delay_us = self.delay_us
        f.jitter_us = self.jitter_us
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


class Stack:
    """A user-level TCP/IP stack on one device: one core per worker.

    Create it in the process that later forks the workers (device order = core order);
    each worker then calls ``context(core)``.
    """

    def __init__(
        self,
        backend: str,
        ip: str,
        iface: str | None = None,
        *,
        gateway: str | None = None,
        cores: int = 1,
        mac: str | None = None,
        fanout_group: int = 0,
        tap_host: str | None = None,
        pcap: str | None = None,
        stats_path: str | None = None,
        max_conns: int = 0,
        rcvbuf: int = 0,
        sndbuf: int = 0,
        priority: bool = True,
        time_wait_ms: int = 0,
        hugepages: bool = True,
        pair: PairLink | None = None,
        pair_side: int = 0,
        trace: bool = False,
        fixed_isn: int = 0,
        idle_timeout_ms: int = 0,
        syn_backlog: int = 0,
        challenge_ack_limit: int = 0,
        sack: bool = True,
        delayed_ack: bool = True,
        no_delayed_ack: bool = False,
        afpacket_rx: str = "copy",
        tx_rate_mbps: int = 0,
        shared_addr: bool = False,
        secret_seed: int = 0,
        orphan_retries: int = 0,
        max_orphans: int = 0,
        mem_budget: int = 0,
        max_conns_per_source: int = 0,
        evict: bool = True,
        frag_timeout_ms: int = 0,
        congestion: str = "cubic",
        busy_poll_us: int = 0,
    ) -> None:
        try:
            iface_ip = ipaddress.IPv4Interface(ip)
        except ValueError as e:
            raise ValueError(f"ip: {e}") from None
        if backend == "pair" and pair is None:
            raise ValueError("pair: the pair backend needs a PairLink")
        keep: list[Any] = []

        def cstr(value: str | None) -> Any:
            if value is None:
                return ffi.NULL
            s = ffi.new("char[]", value.encode())
            keep.append(s)
            return s

        conf = ffi.new("struct mtcp_conf *")
        conf.backend = cstr(backend)
        conf.iface = cstr(iface)
        conf.ip = cstr(str(iface_ip.ip))
        conf.prefix = iface_ip.network.prefixlen
        conf.gateway = cstr(gateway)
        conf.mac = cstr(mac)
        conf.ncores = cores
        conf.fanout_group = fanout_group
        conf.tap_host_cidr = cstr(tap_host)
        conf.pcap_path = cstr(pcap)
        conf.stats_path = cstr(stats_path)
        conf.max_conns = max_conns
        conf.rcvbuf = rcvbuf
        conf.sndbuf = sndbuf
        conf.no_priority = 0 if priority else 1
        conf.time_wait_ms = time_wait_ms
        conf.hugepages = 1 if hugepages else 0
        conf.pair = pair._ptr if pair is not None else ffi.NULL
        conf.pair_side = pair_side
        conf.trace = 1 if trace else 0
        conf.fixed_isn = fixed_isn
        conf.idle_timeout_ms = idle_timeout_ms
        conf.syn_backlog = syn_backlog
        conf.challenge_ack_limit = challenge_ack_limit
        conf.no_sack = 0 if sack else 1
        conf.no_delayed_ack = 1 if (no_delayed_ack or not delayed_ack) else 0
        if afpacket_rx not in ("ring", "copy"):
            raise ValueError(f"afpacket_rx: 'ring' or 'copy', not {afpacket_rx!r}")
        conf.afpacket_rx_ring = 1 if afpacket_rx == "ring" else 0
        if not 0 <= tx_rate_mbps <= 1_000_000:
            raise ValueError(f"tx_rate_mbps: 0 (no shaping) to 1000000, not {tx_rate_mbps}")
        conf.tx_rate_mbps = tx_rate_mbps
        conf.shared_addr = 1 if shared_addr else 0
        if not 0 <= secret_seed < 1 << 64:
            raise ValueError(f"secret_seed: 0 (random) or a 64-bit seed, not {secret_seed}")
        conf.secret_seed = secret_seed
        conf.orphan_retries = orphan_retries
        conf.max_orphans = max_orphans
        conf.mem_budget = mem_budget
        conf.max_conns_per_source = max_conns_per_source
        conf.no_evict = 0 if evict else 1
        if not 0 <= frag_timeout_ms <= 120_000:
            raise ValueError(f"frag_timeout_ms: 0 (default 30000) to 120000, not {frag_timeout_ms}")
        conf.frag_timeout_ms = frag_timeout_ms
        if congestion not in CONGESTION_ALGORITHMS:
            names = ", ".join(CONGESTION_ALGORITHMS)
            raise ValueError(f"congestion: one of {names}, not {congestion!r}")
        conf.congestion = cstr(congestion)
        if not 0 <= busy_poll_us <= 1_000_000:
            raise ValueError(f"busy_poll_us: 0 (none) to 1000000, not {busy_poll_us}")
        conf.busy_poll_us = busy_poll_us
        err = ffi.new("char[]", 256)
        ptr = lib.mtcp_stack_create(conf, err, 256)
        if ptr == ffi.NULL:
            e = ffi.errno
            raise OSError(e, ffi.string(err).decode() or os.strerror(e))
        self._ptr: Any = ptr
        self.ip = str(iface_ip.ip)
        self.backend = backend
        self.pair = pair  # keep the link alive while the stack uses it
        self._contexts: list[Context] = []

    @property
    def ncores(self) -> int:
        return int(lib.mtcp_stack_ncores(self._ptr))

    @property
    def mac(self) -> str:
        out = ffi.new("char[]", 18)
        lib.mtcp_stack_mac(self._ptr, out, 18)
        return ffi.string(out).decode()

    def context(self, core: int = 0, cpu: int | None = None) -> Context:
        """Starts core ``core``'s mTCP thread (pinned to ``cpu`` when given)."""
        ptr = lib.mtcp_create_context(self._ptr, core, -1 if cpu is None else cpu)
        if ptr == ffi.NULL:
            _raise(f"context {core}")
        ctx = Context(self, ptr, core)
        self._contexts.append(ctx)
        return ctx

    def stepped_context(self, core: int = 0, start_ns: int = 1_000_000_000) -> SteppedContext:
        """Core ``core`` with no mTCP thread, for tests: the caller runs its rounds on a
        clock of its own that starts at ``start_ns`` (see ``SteppedContext``)."""
        if start_ns <= 0:
            raise ValueError("start_ns: the clock starts after 0")
        ptr = lib.mtcp_create_stepped_context(self._ptr, core, start_ns)
        if ptr == ffi.NULL:
            _raise(f"stepped context {core}")
        ctx = SteppedContext(self, ptr, core, start_ns)
        self._contexts.append(ctx)
        return ctx

    def close(self) -> None:
        for ctx in self._contexts:
            ctx.close()
        self._contexts.clear()
        if self._ptr is not None:
            lib.mtcp_stack_destroy(self._ptr)
            self._ptr = None

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Context:
    """One core: its mTCP thread and the calling (app) thread."""

    def __init__(self, stack: Stack, ptr: Any, core: int) -> None:
        self.stack = stack
        self.core = core
        self._ptr: Any = ptr
        self._scratch = ffi.new("char[]", _RECV_SCRATCH)
        self._socks: dict[int, Socket] = {}

    def _check(self) -> Any:
        if self._ptr is None:
            raise OSError(9, "context is closed")
        return self._ptr

    def socket(self) -> Socket:
        sid = lib.mtcp_socket(self._check(), _AF_INET, _SOCK_STREAM, 0)
        if sid < 0:
            _raise("socket")
        return self._wrap(sid)

    def _wrap(self, sid: int) -> Socket:
        s = Socket(self, sid)
        self._socks[sid] = s
        return s

    def epoll(self) -> Epoll:
        epid = lib.mtcp_epoll_create(self._check(), 1024)
        if epid < 0:
            _raise("epoll_create")
        return Epoll(self, epid)

    def stats(self) -> dict[str, int]:
        """This core's counters as last published by its mTCP thread."""
        n = lib.mtcp_stats_count()
        buf = ffi.new("uint64_t[]", n)
        got = lib.mtcp_ctx_stats(self._check(), buf, n)
        names = stat_names()
        return {names[i]: int(buf[i]) for i in range(got)}

    def recv_many(self, socks: Sequence[Socket], bufsize: int = 65536) -> list[bytes | OSError]:
        """Reads up to ``bufsize`` bytes from each socket in one crossing. Each result is
        the data (b"" at end of stream) or the OSError that a recv() would raise."""
        n = len(socks)
        if n == 0:
            return []
        if n * bufsize > _RECV_SCRATCH:
            bufsize = _RECV_SCRATCH // n
            if bufsize == 0:
                raise ValueError("recv_many: too many sockets for one crossing")
        ids = ffi.new("int[]", [s.fd for s in socks])
        lens = ffi.new("ssize_t[]", n)
        lib.mtcp_read_batch(self._check(), ids, n, self._scratch, bufsize, lens)
        out: list[bytes | OSError] = []
        for i in range(n):
            r = int(lens[i])
            if r >= 0:
                out.append(ffi.unpack(self._scratch + i * bufsize, r))
            else:
                out.append(OSError(-r, os.strerror(-r)))
        return out

    def send_many(
        self, items: Sequence[tuple[Socket, bytes]], close: Sequence[bool] | None = None
    ) -> list[int | OSError]:
        """Writes each buffer to its socket in one crossing; each result is the number
        of bytes taken or the OSError a send() would raise. ``close``: one flag per item;
        a flagged socket whose buffer was taken whole and that has no unread data is closed
        in the same crossing (its FIN then rides on the data), as ``close_many`` would; the
        others stay open (``Socket.closed`` tells which)."""
        n = len(items)
        if n == 0:
            return []
        ids = ffi.new("int[]", [s.fd for s, _ in items])
        keep = [ffi.from_buffer(d) for _, d in items]
        bufs = ffi.new("char *[]", keep)
        lens = ffi.new("size_t[]", [len(d) for _, d in items])
        out = ffi.new("ssize_t[]", n)
        if close is None:
            lib.mtcp_write_batch(self._check(), ids, bufs, lens, n, out)
        else:
            if len(close) != n:
                raise ValueError(f"close: {len(close)} flags for {n} items")
            flags = ffi.new("unsigned char[]", [1 if c else 0 for c in close])
            lib.mtcp_write_close_batch(self._check(), ids, bufs, lens, flags, n, out)
        res: list[int | OSError] = []
        for i in range(n):
            r = int(out[i])
            res.append(r if r >= 0 else OSError(-r, os.strerror(-r)))
            if close is not None and flags[i]:
                s = items[i][0]
                s._open = False
                self._socks.pop(s.fd, None)
        return res

    def close_many(self, socks: Iterable[Socket]) -> None:
        lst = [s for s in socks if s._open]
        if not lst:
            return
        ids = ffi.new("int[]", [s.fd for s in lst])
        for s in lst:
            s._open = False
            self._socks.pop(s.fd, None)
        lib.mtcp_close_batch(self._check(), ids, len(lst))

    # ---- the static responder (responder.c): see appliance.http.responder

    def responder_enable(
        self,
        port: int,
        *,
        max_entries: int,
        max_bytes: int,
        max_entry: int,
        max_request_line: int,
        max_header_bytes: int,
        header_timeout_ms: int,
        keepalive_timeout_ms: int,
        max_keepalive_requests: int,
        log: bool,
        key_host: bool = False,
        hit_slots: int = 0,
    ) -> None:
        """Connections accepted on ``port`` are answered from the installed responses until
        a request is not one of them (then they reach ``accept`` with their bytes)."""
        c = ffi.new("struct mtcp_rsp_conf *")
        c.port = port
        c.max_entries = max_entries
        c.max_bytes = max_bytes
        c.max_entry = max_entry
        c.max_request_line = max_request_line
        c.max_header_bytes = max_header_bytes
        c.header_timeout_ms = header_timeout_ms
        c.keepalive_timeout_ms = keepalive_timeout_ms
        c.max_keepalive_requests = max_keepalive_requests
        c.log = 1 if log else 0
        c.key_host = 1 if key_host else 0
        # the address of 21 uint64 counters in shared memory (the worker's HTTP block) that
        # must stay mapped while the context runs; 0: take them with responder_take_metrics
        c.hit_slots = ffi.cast("uint64_t *", hit_slots) if hit_slots else ffi.NULL
        if lib.mtcp_rsp_enable(self._check(), c) < 0:
            _raise("responder_enable")

    def responder_install(self, parts: Sequence[bytes]) -> None:
        """parts: key, head before Date, head after Date, body, ETag, 304 head before Date,
        304 head after Date. OSError E2BIG: over the entry bound."""
        if len(parts) != 7:
            raise ValueError("responder_install: 7 parts")
        keep = [ffi.from_buffer(p) for p in parts]
        bufs = ffi.new("char *[]", keep)
        lens = ffi.new("size_t[]", [len(p) for p in parts])
        if lib.mtcp_rsp_install(self._check(), bufs, lens) < 0:
            _raise("responder_install")

    def responder_remove(self, key: bytes) -> None:
        if lib.mtcp_rsp_remove(self._check(), key, len(key)) < 0:
            _raise("responder_remove")

    def responder_clear(self) -> None:
        if lib.mtcp_rsp_clear(self._check()) < 0:
            _raise("responder_clear")

    def responder_drain(self) -> None:
        if lib.mtcp_rsp_drain(self._check()) < 0:
            _raise("responder_drain")

    def responder_conns(self) -> int:
        return int(lib.mtcp_rsp_conns(self._check()))

    def responder_take_metrics(self) -> list[int]:
        """Hits since the last call: GET 2xx, GET 3xx, HEAD 2xx, HEAD 3xx, bytes, duration
        sum (ns), 15 duration buckets (as appliance.metrics.http_block's)."""
        buf = ffi.new("uint64_t[]", 32)
        n = lib.mtcp_rsp_take_metrics(self._check(), buf, 32)
        return [int(buf[i]) for i in range(n)]

    def responder_read_log(self) -> list[ResponderLogRecord]:
        """The access-log records of the hits since the last call."""
        out: list[ResponderLogRecord] = []
        while True:
            n = lib.mtcp_rsp_read_log(self._check(), self._scratch, _RECV_SCRATCH)
            if n == 0:
                return out
            raw = ffi.buffer(self._scratch, n)[:]
            off = 0
            while off < n:
                (ln, raddr, status, line_len, ref_len, ua_len, body, sent, dur, wall, host_len) = (
                    _LOGREC.unpack_from(raw, off)
                )
                p = off + _LOGREC.size
                line = raw[p : p + line_len]
                p += line_len
                referer = None if ref_len == 0xFFFF else raw[p : p + ref_len]
                p += 0 if referer is None else ref_len
                agent = None if ua_len == 0xFFFF else raw[p : p + ua_len]
                p += 0 if agent is None else ua_len
                host = None if host_len == 0xFFFF else raw[p : p + host_len]
                out.append(
                    ResponderLogRecord(
                        _int_to_ip(raddr), line, status, body, sent, dur / 1e9, wall / 1e9,
                        referer, agent, host,
                    )
                )
                off += ln
            if n < _RECV_SCRATCH // 2:
                return out

    def close(self) -> None:
        """Stops the mTCP thread; open connections are reset."""
        if self._ptr is not None:
            lib.mtcp_destroy_context(self._ptr)
            self._ptr = None
            for s in self._socks.values():
                s._open = False
            self._socks.clear()

    def __enter__(self) -> Context:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SteppedContext(Context):
    """A core with no mTCP thread (``Stack.stepped_context``): the caller runs its rounds,
    one ``step`` at a time, on a clock of its own, and the stack reads no other clock. So a
    test can hand the stack a frame at time t, move time on, and see exactly what it sent,
    with no threads and no sleeps. The socket and epoll API work from the same thread:
    what the app asks for (connect, send, close ...) is done by the next step, and
    ``Epoll.poll`` never waits (step the clock instead)."""

    #: rounds that ``settle``/``advance`` run at one instant before giving up: a stack that
    #: is still busy after that many is looping, which is a bug worth an error
    MAX_ROUNDS_AT_ONCE = 10_000

    def __init__(self, stack: Stack, ptr: Any, core: int, start_ns: int) -> None:
        super().__init__(stack, ptr, core)
        self.now_ns = start_ns
        self.deadline_ns = start_ns  # when the stack wants its next round

    @property
    def now_ms(self) -> float:
        return self.now_ns / 1e6

    def step(self, now_ns: int | None = None) -> int:
        """One round at ``now_ns`` (default: the current time; never earlier). Returns
        when the stack wants the next round (``now_ns`` itself: at once)."""
        t = self.now_ns if now_ns is None else now_ns
        if t < self.now_ns:
            raise ValueError(f"step: {t} ns is before the clock ({self.now_ns} ns)")
        d = int(lib.mtcp_ctx_step(self._check(), t))
        if d == 0:
            _raise("step")
        self.now_ns = t
        self.deadline_ns = d
        return d

    def settle(self, on_round: Callable[[], bool] | None = None) -> int:
        """A round at the current time (it takes what the app queued), then more while the
        stack has more to do at once; returns when it wants its next round. ``on_round()``
        runs after every round (a test's peer takes what was sent) and returns True when
        it sent something back, which takes another round."""
        self.step()
        self._run_now(on_round)
        return self.deadline_ns

    def advance(
        self, ms: float = 0.0, *, ns: int = 0, on_round: Callable[[], bool] | None = None
    ) -> None:
        """Moves the clock ``ms`` milliseconds (plus ``ns``) on, running every round the
        stack asks for on the way, at its deadline, as the thread would wake for it, and
        settles at the end. ``on_round`` as for ``settle``."""
        end = self.now_ns + round(ms * 1_000_000) + ns
        self.settle(on_round)
        while self.now_ns < end:
            self.step(min(self.deadline_ns, end))
            self._run_now(on_round)

    def _run_now(self, on_round: Callable[[], bool] | None) -> None:
        for _ in range(self.MAX_ROUNDS_AT_ONCE):
            if on_round is not None and on_round():
                self.step()
            elif self.deadline_ns <= self.now_ns:
                self.step()
            else:
                return
        raise RuntimeError(f"stack still busy after {self.MAX_ROUNDS_AT_ONCE} rounds at once")


class Socket:
    """A TCP socket of one context. Non-blocking: operations that would wait raise
    ``BlockingIOError``; use ``Epoll`` to wait."""

    def __init__(self, ctx: Context, fd: int) -> None:
        self.ctx = ctx
        self.fd = fd
        self._open = True

    @property
    def closed(self) -> bool:
        """True once closed (``close``, ``Context.close_many`` or ``send_many``'s close)."""
        return not self._open

    def fileno(self) -> int:
        return self.fd

    def __repr__(self) -> str:
        return f"<mtcp_core.Socket core={self.ctx.core} fd={self.fd}>"

    def bind(self, address: tuple[str, int]) -> None:
        if lib.mtcp_bind(self.ctx._check(), self.fd, _ip_to_int(address[0]), address[1]) < 0:
            _raise("bind")

    def listen(self, backlog: int = 128) -> None:
        if lib.mtcp_listen(self.ctx._check(), self.fd, backlog) < 0:
            _raise("listen")

    def accept(self) -> tuple[Socket, tuple[str, int]]:
        addr = ffi.new("uint32_t *")
        port = ffi.new("uint16_t *")
        sid = lib.mtcp_accept(self.ctx._check(), self.fd, addr, port)
        if sid < 0:
            _raise("accept")
        return self.ctx._wrap(sid), (_int_to_ip(addr[0]), int(port[0]))

    def accept_many(self, max_sockets: int = 256) -> list[Socket]:
        """Every pending connection, up to ``max_sockets``, in one crossing ([] if none)."""
        out = ffi.new("int[]", max_sockets)
        n = lib.mtcp_accept_batch(self.ctx._check(), self.fd, out, max_sockets)
        if n < 0:
            if ffi.errno == errno.EAGAIN:
                return []
            _raise("accept")
        return [self.ctx._wrap(out[i]) for i in range(n)]

    def accept_many_handed(self, max_sockets: int = 256) -> list[tuple[Socket, int, float]]:
        """``accept_many``, also giving per connection the responses the static responder
        already sent on it and when its current request started (``time.monotonic``)."""
        out = ffi.new("int[]", max_sockets)
        served = ffi.new("uint32_t[]", max_sockets)
        started = ffi.new("uint64_t[]", max_sockets)
        n = lib.mtcp_accept_batch_rsp(self.ctx._check(), self.fd, out, served, started,
                                      max_sockets)
        if n < 0:
            if ffi.errno == errno.EAGAIN:
                return []
            _raise("accept")
        return [
            (self.ctx._wrap(out[i]), int(served[i]), int(started[i]) / 1e9) for i in range(n)
        ]

    def connect_ex(self, address: tuple[str, int]) -> int:
        """Starts an active open; returns an errno (EINPROGRESS when under way)."""
        r = lib.mtcp_connect(self.ctx._check(), self.fd, _ip_to_int(address[0]), address[1])
        return 0 if r == 0 else ffi.errno

    def connect(self, address: tuple[str, int]) -> None:
        """Non-blocking connect: raises BlockingIOError(EINPROGRESS) like a non-blocking
        socket; EPOLLOUT (or EPOLLERR) tells the outcome."""
        err = self.connect_ex(address)
        if err:
            raise OSError(err, f"connect: {os.strerror(err)}")

    def recv(self, bufsize: int) -> bytes:
        n = min(bufsize, _RECV_SCRATCH)
        r = lib.mtcp_read(self.ctx._check(), self.fd, self.ctx._scratch, n)
        if r < 0:
            _raise("recv")
        return ffi.unpack(self.ctx._scratch, r)

    def send(self, data: bytes | bytearray | memoryview) -> int:
        buf = ffi.from_buffer(data)
        r = lib.mtcp_write(self.ctx._check(), self.fd, buf, len(buf))
        if r < 0:
            _raise("send")
        return int(r)

    def sendmsg(self, buffers: Sequence[bytes | bytearray | memoryview]) -> int:
        """writev: several buffers in one crossing."""
        keep = [ffi.from_buffer(b) for b in buffers]
        iov = ffi.new("struct mtcp_iovec[]", len(keep))
        for i, b in enumerate(keep):
            iov[i].base = b
            iov[i].len = len(b)
        r = lib.mtcp_writev(self.ctx._check(), self.fd, iov, len(keep))
        if r < 0:
            _raise("sendmsg")
        return int(r)

    def shutdown(self, how: int) -> None:
        if lib.mtcp_shutdown(self.ctx._check(), self.fd, how) < 0:
            _raise("shutdown")

    def close(self) -> None:
        if self._open and self.ctx._ptr is not None:
            self._open = False
            self.ctx._socks.pop(self.fd, None)
            if lib.mtcp_close(self.ctx._ptr, self.fd) < 0:
                _raise("close")

    def abort(self) -> None:
        """Close with RST (SO_LINGER 0)."""
        if self._open and self.ctx._ptr is not None:
            self._open = False
            self.ctx._socks.pop(self.fd, None)
            if lib.mtcp_abort(self.ctx._ptr, self.fd) < 0:
                _raise("abort")

    def getsockname(self) -> tuple[str, int]:
        addr = ffi.new("uint32_t *")
        port = ffi.new("uint16_t *")
        if lib.mtcp_getsockname(self.ctx._check(), self.fd, addr, port) < 0:
            _raise("getsockname")
        return _int_to_ip(addr[0]), int(port[0])

    def getpeername(self) -> tuple[str, int]:
        addr = ffi.new("uint32_t *")
        port = ffi.new("uint16_t *")
        if lib.mtcp_getpeername(self.ctx._check(), self.fd, addr, port) < 0:
            _raise("getpeername")
        return _int_to_ip(addr[0]), int(port[0])

    def setsockopt(
        self, level: int, option: int, value: int | tuple[int, int] | str | bytes
    ) -> None:
        if isinstance(value, (str, bytes)):  # TCP_CONGESTION: a name
            raw = value.encode() if isinstance(value, str) else value
            v = ffi.new("char[]", raw)
            size = len(raw)
        elif isinstance(value, tuple):  # SO_LINGER (onoff, seconds)
            v = ffi.new("int[2]", list(value))
            size = ffi.sizeof("int[2]")
        else:
            v = ffi.new("int *", value)
            size = ffi.sizeof("int")
        if lib.mtcp_setsockopt(self.ctx._check(), self.fd, level, option, v, size) < 0:
            _raise("setsockopt")

    def getsockopt(self, level: int, option: int) -> int:
        v = ffi.new("int *")
        size = ffi.new("unsigned *", ffi.sizeof("int"))
        if lib.mtcp_getsockopt(self.ctx._check(), self.fd, level, option, v, size) < 0:
            _raise("getsockopt")
        return int(v[0])

    def tcp_info(self) -> dict[str, Any]:
        info = ffi.new("struct mtcp_tcp_info *")
        if lib.mtcp_get_tcp_info(self.ctx._check(), self.fd, info) < 0:
            _raise("tcp_info")
        fields = (
            "snd_una",
            "snd_nxt",
            "snd_wnd",
            "rcv_nxt",
            "rcv_wnd",
            "mss",
            "snd_wscale",
            "rcv_wscale",
            "cwnd",
            "ssthresh",
            "srtt_us",
            "rto_ms",
            "sndbuf_used",
            "rcvbuf_used",
            "retransmits",
            "sack_ok",
            "ts_ok",
            "in_recovery",
            "ooo_ranges",
            "dup_acks",
            "rto_backoff",
            "sndbuf_cap",
            "rcvbuf_cap",
            "rttvar_us",
            "min_rtt_us",
            "lost_segs",
            "reordering",
            "sacked_bytes",
            "lost_bytes",
            "pipe",
            "reo_wnd_mult",
        )
        out: dict[str, Any] = {f: int(getattr(info, f)) for f in fields}
        out["state"] = TCP_STATES[info.state]
        out["congestion"] = ffi.string(info.congestion).decode()
        return out

    def __enter__(self) -> Socket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Epoll:
    """Like ``select.epoll`` on one context; ``poll`` returns (Socket, events) pairs,
    the whole batch in one crossing."""

    def __init__(self, ctx: Context, epid: int) -> None:
        self.ctx = ctx
        self.epid = epid
        self._events = ffi.new("struct mtcp_epoll_event[]", 1024)

    def _ctl(self, op: int, sock: Socket, events: int) -> None:
        if lib.mtcp_epoll_ctl(self.ctx._check(), self.epid, op, sock.fd, events, sock.fd) < 0:
            _raise("epoll_ctl")

    def register(self, sock: Socket, events: int = EPOLLIN | EPOLLOUT) -> None:
        self._ctl(lib.MTCP_EPOLL_CTL_ADD, sock, events)

    def modify(self, sock: Socket, events: int) -> None:
        self._ctl(lib.MTCP_EPOLL_CTL_MOD, sock, events)

    def unregister(self, sock: Socket) -> None:
        self._ctl(lib.MTCP_EPOLL_CTL_DEL, sock, 0)

    def poll(self, timeout: float | None = -1.0, maxevents: int = -1) -> list[tuple[Socket, int]]:
        """Waits up to ``timeout`` seconds (None or negative: forever)."""
        forever = timeout is None or timeout < 0
        deadline = 0.0 if forever else time.monotonic() + float(timeout or 0.0)
        maxev = 1024 if maxevents <= 0 else min(maxevents, 1024)
        while True:
            ms = -1 if forever else max(0, int((deadline - time.monotonic()) * 1000))
            n = lib.mtcp_epoll_wait(self.ctx._check(), self.epid, self._events, maxev, ms)
            if n >= 0:
                break
            if ffi.errno != errno.EINTR:
                _raise("epoll_wait")
            # PEP 475: a signal interrupted the wait; its handler has run (it may raise),
            # now wait for the rest of the time
        socks = self.ctx._socks
        out: list[tuple[Socket, int]] = []
        for i in range(n):
            ev = self._events[i]
            s = socks.get(int(ev.data))
            if s is not None:
                out.append((s, int(ev.events)))
        return out

    def interrupt(self) -> None:
        """Wakes a poll() blocked in another thread."""
        if self.ctx._ptr is not None:
            lib.mtcp_epoll_interrupt(self.ctx._ptr)

    def close(self) -> None:
        if self.ctx._ptr is not None and self.epid >= 0:
            lib.mtcp_epoll_close(self.ctx._ptr, self.epid)
            self.epid = -1


# ---------------------------------------------------------------- load generator


@dataclass(frozen=True)
class LatencySummary:
    """A latency histogram's summary, in seconds."""

    count: int
    min: float
    mean: float
    p50: float
    p90: float
    p99: float
    p999: float
    max: float


class LoadResult:
    """What one or more ``LoadGenerator`` runs counted (``merge`` sums cores).

    ``completed`` counts complete responses of any status; ``ok`` those with 2xx/3xx.
    ``errors``: ``connect`` (refused, timed out, unreachable), ``reset`` (failed after the
    connection was established), ``timeout`` (not done in time), ``response`` (closed before
    a complete response, or not HTTP/1.x) and ``status`` (a status other than 2xx/3xx).
    ``latency``: request written to response read (wrk's definition); ``connect``:
    ``connect()`` to established."""

    ERROR_KINDS = ("connect", "reset", "timeout", "response", "status")

    def __init__(self, raw: Any) -> None:
        self._raw = raw  # struct mtcp_load_result *

    @classmethod
    def merge(cls, results: Iterable[LoadResult]) -> LoadResult:
        raw = ffi.new("struct mtcp_load_result *")
        for r in results:
            lib.mtcp_load_merge(raw, r._raw)
        return cls(raw)

    @property
    def started(self) -> int:
        return int(self._raw.started)

    @property
    def completed(self) -> int:
        return int(self._raw.completed)

    @property
    def ok(self) -> int:
        return int(self._raw.status[2] + self._raw.status[3])

    @property
    def status_classes(self) -> dict[str, int]:
        """Completed responses by status class: ``"2xx"`` ..., ``"other"``."""
        names = ("other", "1xx", "2xx", "3xx", "4xx", "5xx")
        return {n: int(self._raw.status[i]) for i, n in enumerate(names)}

    @property
    def errors(self) -> dict[str, int]:
        return {k: int(getattr(self._raw, "err_" + k)) for k in self.ERROR_KINDS}

    @property
    def socket_errors(self) -> int:
        """Errors other than a bad status (wrk's "Socket errors")."""
        e = self.errors
        return e["connect"] + e["reset"] + e["timeout"] + e["response"]

    @property
    def bytes_read(self) -> int:
        return int(self._raw.bytes_read)

    @property
    def bytes_written(self) -> int:
        return int(self._raw.bytes_written)

    @property
    def elapsed(self) -> float:
        return float(self._raw.elapsed_ns) / 1e9

    @property
    def requests_per_second(self) -> float:
        return self.completed / self.elapsed if self._raw.elapsed_ns else 0.0

    def _summary(self, hist: Any, count: int, lo: int, hi: int, total: int) -> LatencySummary:
        def q(x: float) -> float:
            return float(lib.mtcp_load_quantile(hist, hi, x)) / 1e9

        return LatencySummary(
            count=count,
            min=lo / 1e9 if count else 0.0,
            mean=total / count / 1e9 if count else 0.0,
            p50=q(0.5),
            p90=q(0.9),
            p99=q(0.99),
            p999=q(0.999),
            max=hi / 1e9,
        )

    @property
    def latency(self) -> LatencySummary:
        r = self._raw
        return self._summary(
            r.lat_hist, self.completed, int(r.lat_min_ns), int(r.lat_max_ns), int(r.lat_sum_ns)
        )

    @property
    def connect(self) -> LatencySummary:
        r = self._raw
        return self._summary(
            r.conn_hist,
            int(r.conn_count),
            int(r.conn_min_ns),
            int(r.conn_max_ns),
            int(r.conn_sum_ns),
        )

    def latency_quantile(self, q: float) -> float:
        """The request latency at quantile ``q`` (0..1), in seconds."""
        return float(lib.mtcp_load_quantile(self._raw.lat_hist, self._raw.lat_max_ns, q)) / 1e9

    def to_dict(self) -> dict[str, Any]:
        return {
            "started": self.started,
            "completed": self.completed,
            "ok": self.ok,
            "status": self.status_classes,
            "errors": self.errors,
            "bytes_read": self.bytes_read,
            "bytes_written": self.bytes_written,
            "elapsed_s": self.elapsed,
            "requests_per_s": self.requests_per_second,
            "latency_s": self.latency.__dict__,
            "connect_s": self.connect.__dict__,
        }


class LoadGenerator:
    """Short HTTP connections from one context, in C (``mtcp_load_run``): ``connections``
    at a time, each one ``request`` then the response, closed, opened again; for
    ``duration`` seconds or until ``max_requests`` connections are done. ``keepalive`` N:
    N requests per connection (``request`` must not ask for a close), ``pipeline`` of them
    in flight at a time, then the client closes and opens the next.

    ``run()`` blocks (without the GIL) and must be called from the context's app thread;
    ``stop()`` may be called from any thread."""

    def __init__(
        self,
        ctx: Context,
        address: tuple[str, int],
        request: bytes,
        *,
        connections: int = 64,
        duration: float = 10.0,
        max_requests: int = 0,
        timeout: float = 2.0,
        keepalive: int = 0,
        pipeline: int = 1,
    ) -> None:
        if isinstance(ctx, SteppedContext):
            raise ValueError("ctx: the load generator needs the wall clock (a stepped context)")
        max_conns = int(lib.MTCP_LOAD_MAX_CONNECTIONS)
        if keepalive < 0:
            raise ValueError(f"keepalive: requests per connection >= 0, got {keepalive}")
        max_depth = int(lib.MTCP_LOAD_MAX_PIPELINE)
        if not 1 <= pipeline <= max_depth:
            raise ValueError(f"pipeline: must be 1..{max_depth}, got {pipeline}")
        if not 1 <= connections <= max_conns:
            raise ValueError(f"connections: must be 1..{max_conns}, got {connections}")
        if not duration > 0:
            raise ValueError(f"duration: must be > 0 seconds, got {duration}")
        if max_requests < 0:
            raise ValueError(f"max_requests: must be >= 0, got {max_requests}")
        if not 0 < timeout <= 3600:
            raise ValueError(f"timeout: must be > 0 seconds (at most 3600), got {timeout}")
        if not request:
            raise ValueError("request: must not be empty")
        host, port = address
        if not 1 <= port <= 65535:
            raise ValueError(f"port: must be 1..65535, got {port}")
        self.ctx = ctx
        self._request = ffi.new("char[]", request)
        self._conf = ffi.new("struct mtcp_load_conf *")
        c = self._conf
        c.addr = _ip_to_int(host)
        if c.addr == 0:
            raise ValueError(f"address: {host!r} is not a host address")
        c.port = port
        c.request = self._request
        c.request_len = len(request)
        c.connections = connections
        c.duration_ms = max(1, round(duration * 1000))
        c.max_requests = max_requests
        c.timeout_ms = max(1, round(timeout * 1000))
        c.keepalive = keepalive
        c.pipeline = pipeline

    def run(self) -> LoadResult:
        raw = ffi.new("struct mtcp_load_result *")
        if lib.mtcp_load_run(self.ctx._check(), self._conf, raw) < 0:
            _raise("load")
        return LoadResult(raw)

    def stop(self) -> None:
        lib.mtcp_load_stop(self._conf)


# The link emulator (mtcp_core/netem.py), re-exported: mtcp_core.LinkEmulator.
from mtcp_core.netem import LinkEmulator, LinkShape  # noqa: E402
