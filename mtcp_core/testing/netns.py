"""The project's own test hosts: network namespaces joined by veth pairs.

A ``Lab`` makes namespaces (names ``mt-<tag>-<random>``) and veth pairs between two
namespaces or between a namespace and the test process's own one, with addresses from the
benchmarking range 198.18.0.0/15 only, and removes all of it in ``close()``, also when the
test failed. Code runs inside a namespace either as a command (``ip netns exec``) or as a
Python callable in a thread that has entered it (setns on /run/netns/NAME).

Needs root (CAP_SYS_ADMIN for namespaces, CAP_NET_RAW for raw sockets) and iproute2's ip;
``missing_privileges()`` says what is missing.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import os
import secrets
import shutil
import socket
import struct
import subprocess
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")

PREFIX = "mt-"
BENCH_NET = ipaddress.IPv4Network("198.18.0.0/15")
ROOT_REASON = "needs root: creates network namespaces (CAP_SYS_ADMIN) and raw sockets (CAP_NET_RAW)"
CLONE_NEWNET = 0x40000000
COMMAND_TIMEOUT_S = 30.0


class NetnsError(RuntimeError):
    """An ip/ethtool command failed; the message has its stderr."""


# Under scripts/test-asan the sanitizer runtimes are preloaded into pytest. Other programs
# the tests start (curl, ip, gcc...) must not get them (curl hangs under a preloaded ASan),
# but Python children that load the sanitized mtcp_core._native need them: conftest.py
# moves LD_PRELOAD here and child_env() gives it back to Python programs only.
PRELOAD_VAR = "MTCP_TEST_PRELOAD"


def _is_python(program: str) -> bool:
    if os.path.basename(program).startswith("python"):
        return True
    try:
        with open(program, "rb") as f:
            return b"python" in f.readline()
    except OSError:
        return False


def child_env(argv: Sequence[str]) -> dict[str, str] | None:
    """The environment for a child running argv (None: inherit as is)."""
    preload = os.environ.get(PRELOAD_VAR)
    if not preload or not argv or not _is_python(argv[0]):
        return None
    return {**os.environ, "LD_PRELOAD": preload}


def missing_privileges() -> str | None:
    """Why namespace tests cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return ROOT_REASON
    if shutil.which("ip") is None:
        return "needs iproute2's ip (apt-get install iproute2)"
    return None


def _check(argv: Sequence[str]) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
    if proc.returncode != 0:
        raise NetnsError(f"{' '.join(argv)}: {proc.stderr.strip() or proc.returncode}")
    return proc.stdout


def ip(*args: str, ns: str | None = None) -> str:
    """Runs ``ip [-n NS] ARGS...``; returns stdout, raises NetnsError with stderr."""
    return _check(["ip", *(("-n", ns) if ns else ()), *args])


def _setns(fd: int) -> None:
    if hasattr(os, "setns"):  # Python 3.12+
        os.setns(fd, CLONE_NEWNET)
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@contextlib.contextmanager
def entered(name: str) -> Iterator[None]:
    """Runs the block with the current thread in namespace ``name``, then returns the thread
    to the namespace it was in. Sockets opened inside keep belonging to ``name``."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(f"/run/netns/{name}", os.O_RDONLY)
        try:
            _setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns(own)
    finally:
        os.close(own)


def inet_checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of ``data``: the one's complement of the one's
    complement sum of its 16-bit words (an odd length padded with a zero byte). Over a header
    or pseudo-header plus segment with its checksum field filled in, 0 means valid."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def icmp_echo(dst: str, timeout: float = 2.0) -> float:
    """Sends one ICMP echo request to ``dst`` from the current thread's namespace and waits for
    the reply; returns the round trip in seconds, raises TimeoutError."""
    ident, seq = secrets.randbelow(0x10000), secrets.randbelow(0x10000)
    payload = secrets.token_bytes(16)
    header = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
    packet = struct.pack("!BBHHH", 8, 0, inet_checksum(header + payload), ident, seq) + payload
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as sock:
        start = time.monotonic()
        sock.sendto(packet, (dst, 0))
        while (left := start + timeout - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                data, (src, _) = sock.recvfrom(2048)
            except TimeoutError:
                break
            icmp = data[(data[0] & 0x0F) * 4 :]
            if src == dst and icmp[0] == 0 and icmp[4:8] == packet[4:8] and icmp[8:] == payload:
                return time.monotonic() - start
    raise TimeoutError(f"no ICMP echo reply from {dst} within {timeout}s")


class Namespace:
    """One network namespace of a Lab."""

    def __init__(self, name: str, lab: Lab) -> None:
        self.name = name
        self._lab = lab

    def __repr__(self) -> str:
        return f"Namespace({self.name!r})"

    def ip(self, *args: str) -> str:
        return ip(*args, ns=self.name)

    def run(
        self, argv: Sequence[str], *, check: bool = True, timeout: float = COMMAND_TIMEOUT_S
    ) -> subprocess.CompletedProcess[str]:
        """Runs a command inside (``ip netns exec``), output captured as text."""
        return subprocess.run(
            ["ip", "netns", "exec", self.name, *argv],
            capture_output=True,
            text=True,
            check=check,
            timeout=timeout,
            env=child_env(argv),
        )

    def nft(self, script: str) -> None:
        """Loads an nftables script inside (``nft -f -``)."""
        proc = subprocess.run(
            ["ip", "netns", "exec", self.name, "nft", "-f", "-"],
            input=script,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_S,
        )
        if proc.returncode != 0:
            raise NetnsError(f"nft -f in {self.name}: {proc.stderr.strip()}")

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Starts a command inside; the Lab terminates it at teardown if it still runs."""
        kwargs.setdefault("env", child_env(argv))
        proc = subprocess.Popen(["ip", "netns", "exec", self.name, *argv], **kwargs)
        self._lab.processes.append(proc)
        return proc

    def entered(self) -> contextlib.AbstractContextManager[None]:
        """Context manager: the current thread is in this namespace during the block."""
        return entered(self.name)

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Runs ``fn(*args, **kwargs)`` in a fresh thread inside this namespace; returns its
        result or raises its exception. The calling thread never changes namespace."""

        def inside() -> T:
            with self.entered():
                return fn(*args, **kwargs)

        with ThreadPoolExecutor(max_workers=1, thread_name_prefix=self.name) as pool:
            return pool.submit(inside).result()

    def ping(self, dst: str | ipaddress.IPv4Address, timeout: float = 2.0) -> float:
        """ICMP echo from this namespace to ``dst``; returns the round trip in seconds."""
        return self.call(icmp_echo, str(dst), timeout)


@dataclass
class Veth:
    """A veth pair: end a (``if_a`` in ``ns_a``) and end b; None is the test's own namespace.
    ``addr_a``/``addr_b`` are the ends' addresses, also when the kernel was not given one
    (so that a user-level stack on that end can take it)."""

    ns_a: Namespace | None
    if_a: str
    addr_a: ipaddress.IPv4Interface
    ns_b: Namespace | None
    if_b: str
    addr_b: ipaddress.IPv4Interface

    @property
    def network(self) -> ipaddress.IPv4Network:
        return self.addr_a.network


class Lab:
    """Namespaces and veth pairs for one test; ``close()`` (or leaving the ``with``) removes
    them all, whatever happened in between."""

    def __init__(self) -> None:
        self.namespaces: list[Namespace] = []
        self.links: list[Veth] = []
        self.processes: list[subprocess.Popen[Any]] = []
        self.closers: list[Callable[[], None]] = []  # run first in close(), newest first

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def namespace(self, tag: str = "") -> Namespace:
        """A new namespace with its loopback up."""
        name = f"{PREFIX}{tag[:8] + '-' if tag else ''}{secrets.token_hex(3)}"
        ip("netns", "add", name)
        ns = Namespace(name, self)
        self.namespaces.append(ns)
        ns.ip("link", "set", "lo", "up")
        return ns

    def veth(
        self,
        ns_a: Namespace | None,
        ns_b: Namespace | None,
        *,
        subnet: str | ipaddress.IPv4Network | None = None,
        address_a: bool = True,
        address_b: bool = True,
        tx_offload: bool = True,
    ) -> Veth:
        """A veth pair from ``ns_a`` to ``ns_b`` (None: the test's own namespace), both ends
        up. The ends get .1 and .2 of ``subnet`` (default: a free /24 of 198.18.0.0/15);
        ``address_x=False`` leaves that end without a kernel address. ``tx_offload=False``
        turns TX checksum offload off on both ends (``ethtool -K IF tx off``), so that frames
        carry full checksums instead of partial ones (see DESIGN.md, packet I/O)."""
        net = self._subnet(subnet, own_namespace=ns_a is None or ns_b is None)
        hosts = net.hosts()
        base = f"mt{secrets.token_hex(3)}"
        ip(
            "link", "add", base + "a", *_netns_arg(ns_a),
            "type", "veth", "peer", "name", base + "b", *_netns_arg(ns_b),
        )  # fmt: skip
        link = Veth(
            ns_a,
            base + "a",
            ipaddress.IPv4Interface(f"{next(hosts)}/{net.prefixlen}"),
            ns_b,
            base + "b",
            ipaddress.IPv4Interface(f"{next(hosts)}/{net.prefixlen}"),
        )
        self.links.append(link)
        for ns, ifname, addr, assign in (
            (ns_a, link.if_a, link.addr_a, address_a),
            (ns_b, link.if_b, link.addr_b, address_b),
        ):
            nsname = ns.name if ns else None
            if assign:
                ip("addr", "add", str(addr), "dev", ifname, ns=nsname)
            ip("link", "set", ifname, "up", ns=nsname)
            if not tx_offload:
                _tx_offload_off(nsname, ifname)
        return link

    def emulated_path(
        self,
        shape: Any = None,
        *,
        seed: int = 0,
        client_address: bool = True,
        server_address: bool = True,
        static_arp: bool = False,
        offloads: bool = True,
        pcap_prefix: str | None = None,
        tag: str = "em",
        emulator: bool = True,
    ) -> EmulatedPath:
        """Three namespaces, client — emulator — server, the two outer ones on one /24
        (client .1, server .2), and a running ``mtcp_core.LinkEmulator`` in the middle one
        (port a faces the client, b the server; ``shape``: a LinkShape or (a_to_b, b_to_a)).
        The emulator cuts the outer ends' TSO/GSO frames into MTU-sized segments as a NIC
        would; ``offloads=False`` turns TSO/GSO off on those ends instead.
        ``x_address=False`` leaves that end without a kernel address (for a user-level
        stack). ``static_arp``: permanent neighbour entries on the kernel ends, so that no
        ARP frame takes a random draw. ``pcap_prefix``: PREFIX-a.pcap and PREFIX-b.pcap.
        The emulator stops before the namespaces go. ``emulator=False``: the topology only
        (``EmulatedPath.emulator`` None), for running ``mtcp-appliance netem`` in the middle."""
        import mtcp_core  # only here: the rest of this module runs without the core

        client, middle, server = (self.namespace(f"{tag}c"), self.namespace(f"{tag}m"),
                                  self.namespace(f"{tag}s"))  # fmt: skip
        net = self._subnet(None, own_namespace=False)
        cl = self.veth(client, middle, subnet=net, address_a=client_address, address_b=False)
        sl = self.veth(middle, server, subnet=net, address_a=False, address_b=server_address)
        if not offloads:
            for ns, ifname in ((client, cl.if_a), (server, sl.if_b)):
                _offload_off(ns.name, ifname, ("tso", "gso"))
        client_ip, server_ip = cl.addr_a, sl.addr_b
        if static_arp:
            macs = {ifn: _mac(ns.name, ifn) for ns, ifn in ((client, cl.if_a), (server, sl.if_b))}
            if client_address:
                client.ip("neigh", "replace", str(server_ip.ip), "lladdr", macs[sl.if_b],
                          "nud", "permanent", "dev", cl.if_a)  # fmt: skip
            if server_address:
                server.ip("neigh", "replace", str(client_ip.ip), "lladdr", macs[cl.if_a],
                          "nud", "permanent", "dev", sl.if_b)  # fmt: skip
        if not emulator:
            return EmulatedPath(client, middle, server, cl, sl, client_ip, server_ip, None)
        emu = mtcp_core.LinkEmulator(
            cl.if_b,
            sl.if_a,
            shape if shape is not None else mtcp_core.LinkShape(),
            seed=seed,
            netns=middle.name,
            pcap_a=f"{pcap_prefix}-a.pcap" if pcap_prefix else None,
            pcap_b=f"{pcap_prefix}-b.pcap" if pcap_prefix else None,
        )
        self.closers.append(emu.close)
        emu.start()
        return EmulatedPath(client, middle, server, cl, sl, client_ip, server_ip, emu)

    def close(self) -> None:
        """Stops the processes started in the namespaces, deletes the links and namespaces.
        Keeps going past failures and raises NetnsError for them at the end."""
        errors: list[str] = []
        for closer in reversed(self.closers):
            try:
                closer()
            except Exception as exc:  # noqa: BLE001 - reported at the end
                errors.append(repr(exc))
        self.closers.clear()
        for proc in self.processes:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self.processes.clear()
        for link in reversed(self.links):
            # A pair inside namespaces goes away with them; one with an end here must go now.
            for ns, ifname in ((link.ns_a, link.if_a), (link.ns_b, link.if_b)):
                if ns is None and _link_exists(ifname):
                    try:
                        ip("link", "del", ifname)
                    except NetnsError as exc:
                        errors.append(str(exc))
        self.links.clear()
        for ns in reversed(self.namespaces):
            try:
                ip("netns", "del", ns.name)
            except NetnsError as exc:
                errors.append(str(exc))
        self.namespaces.clear()
        if errors:
            raise NetnsError("; ".join(errors))

    def _subnet(
        self, subnet: str | ipaddress.IPv4Network | None, own_namespace: bool
    ) -> ipaddress.IPv4Network:
        taken = [link.network for link in self.links]
        if subnet is not None:
            net = ipaddress.IPv4Network(subnet)
            if not net.subnet_of(BENCH_NET) or net.num_addresses < 4:
                raise ValueError(f"{net}: test subnets must lie in {BENCH_NET} (and hold 2 hosts)")
            return net
        if own_namespace:  # addresses here are seen by everything else on this machine
            taken += _own_networks()
        for _ in range(1000):
            start = int(BENCH_NET.network_address) + 256 * secrets.randbelow(512)
            net = ipaddress.IPv4Network((start, 24))
            if not any(net.overlaps(t) for t in taken):
                return net
        raise NetnsError(f"no free /24 left in {BENCH_NET}")


@dataclass
class EmulatedPath:
    """What ``Lab.emulated_path`` built: client_link is client (a) — middle (b), server_link
    middle (a) — server (b); the emulator's port a is client_link.if_b, b is
    server_link.if_a."""

    client: Namespace
    middle: Namespace
    server: Namespace
    client_link: Veth
    server_link: Veth
    client_ip: ipaddress.IPv4Interface
    server_ip: ipaddress.IPv4Interface
    emulator: Any  # mtcp_core.LinkEmulator, or None

    @property
    def port_a(self) -> str:
        return self.client_link.if_b

    @property
    def port_b(self) -> str:
        return self.server_link.if_a


def _mac(nsname: str, ifname: str) -> str:
    out = ip("-o", "link", "show", ifname, ns=nsname).split()
    return out[out.index("link/ether") + 1]


def _offload_off(nsname: str | None, ifname: str, features: Sequence[str]) -> None:
    if shutil.which("ethtool") is None:
        warnings.warn(f"ethtool not found: {'/'.join(features)} stay on for {ifname}",
                      stacklevel=3)  # fmt: skip
        return
    argv = ["ethtool", "-K", ifname]
    for f in features:
        argv += [f, "off"]
    _check(["ip", "netns", "exec", nsname, *argv] if nsname else argv)


def _netns_arg(ns: Namespace | None) -> tuple[str, ...]:
    return ("netns", ns.name) if ns else ()


def _link_exists(ifname: str) -> bool:
    return subprocess.run(["ip", "link", "show", ifname], capture_output=True).returncode == 0


def _own_networks() -> list[ipaddress.IPv4Network]:
    nets = []
    for line in ip("-o", "-4", "addr", "show").splitlines():
        fields = line.split()
        if "inet" in fields:
            nets.append(ipaddress.IPv4Interface(fields[fields.index("inet") + 1]).network)
    return nets


def _tx_offload_off(nsname: str | None, ifname: str) -> None:
    if shutil.which("ethtool") is None:
        warnings.warn(f"ethtool not found: TX checksum offload stays on for {ifname}", stacklevel=3)
        return
    argv = ["ethtool", "-K", ifname, "tx", "off"]
    _check(["ip", "netns", "exec", nsname, *argv] if nsname else argv)
