"""The stack (one device, its cores) and its contexts: threaded and stepped."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from mtcp_core._native import ffi, lib
from mtcp_core._util import _int_to_ip, _raise
from mtcp_core.options import StackOptions
from mtcp_core.pair import PairLink
from mtcp_core.responder import _LOGREC, ResponderLogRecord
from mtcp_core.sockets import _AF_INET, _RECV_SCRATCH, _SOCK_STREAM, Epoll, Socket
from mtcp_core.stats import stat_names


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
        pair: PairLink | None = None,
        pair_side: int = 0,
        options: StackOptions | None = None,
        **option_fields: Any,
    ) -> None:
        """``backend`` (afpacket, tap, pair ...) with address ``ip`` (CIDR) on ``iface``;
        how it behaves: ``options``, or its fields as keywords (which win over ``options``;
        see ``StackOptions``)."""
        opts = StackOptions.build(options, **option_fields) if option_fields else options
        opts = opts or StackOptions()
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
        conf.pair = pair._ptr if pair is not None else ffi.NULL
        conf.pair_side = pair_side
        opts._fill(conf, cstr)
        err = ffi.new("char[]", 256)
        ptr = lib.mtcp_stack_create(conf, err, 256)
        if ptr == ffi.NULL:
            e = ffi.errno
            raise OSError(e, ffi.string(err).decode() or os.strerror(e))
        self._ptr: Any = ptr
        self.ip = str(iface_ip.ip)
        self.backend = backend
        self.options = opts
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
