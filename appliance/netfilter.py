"""Sharing one interface and one address with the kernel (a container's ``eth0``).

In a container the appliance's afpacket stack takes the container's own interface and
address, which the kernel keeps too (the management address, metrics and status, stays on
the kernel's stack). Both then see every frame, so each must leave the other's traffic alone:

- the kernel must not answer the served port: an ``ip`` table with a ``prerouting`` chain at
  ``raw`` priority drops TCP to the stack's address and port arriving on the interface. It
  runs in ``ip_rcv``, after AF_PACKET sockets bound to ETH_P_IP took their copy, so the stack
  still gets those segments (a ``netdev`` *ingress* drop would run before that, and take them
  from the stack too);
- the stack must leave the kernel's ports alone: it runs with ``shared_addr`` (see
  ``mtcp_core.Stack``), so a segment for a port it does not listen on gets no RST from it
  (the kernel's management connections would be reset) and pings are the kernel's.

``install`` is idempotent (it replaces the table in one ``nft -f`` transaction, so it also
cleans up after a supervisor that was killed), ``remove`` too. The table is named after the
interface, so two appliances on two interfaces do not touch each other's rules.
"""

from __future__ import annotations

import fcntl
import ipaddress
import re
import shutil
import socket
import struct
import subprocess
from dataclasses import dataclass

TABLE_PREFIX = "mtcp_appliance_"
NFT_TIMEOUT_S = 10.0
_SIOCGIFADDR = 0x8915
_SIOCGIFNETMASK = 0x891B


class NetfilterError(RuntimeError):
    """``nft`` is missing or refused the rules; the message says which and why."""


def table_name(iface: str) -> str:
    """The nftables table name for an interface (nft identifiers: letters, digits, _)."""
    return TABLE_PREFIX + re.sub(r"[^A-Za-z0-9_]", "_", iface)


def _quote(iface: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_.:@-]{1,15}", iface):
        raise ValueError(f"interface name {iface!r} cannot be used in an nftables rule")
    return f'"{iface}"'


@dataclass(frozen=True)
class Guard:
    """The rules for one interface: the stack serves ``ip``:``port`` on ``iface``."""

    iface: str
    ip: str
    port: int

    def ruleset(self) -> str:
        """The ``nft -f`` script that (re)installs the rules."""
        name, dev = table_name(self.iface), _quote(self.iface)
        ip = str(ipaddress.IPv4Address(self.ip))
        port = int(self.port)
        lines = [
            *_drop_tables(self.iface),
            f"table ip {name} {{",
            "  chain prerouting {",
            "    type filter hook prerouting priority raw; policy accept;",
            f"    iifname {dev} ip daddr {ip} tcp dport {port} drop "
            f'comment "mtcp-appliance: the user-level stack serves this port"',
            "  }",
            "}",
        ]
        return "\n".join(lines) + "\n"


def _drop_tables(iface: str) -> list[str]:
    """Lines that delete this interface's table whether or not it exists."""
    name = table_name(iface)
    # "table X" creates the table if missing, so the "delete" after it cannot fail
    return [f"table ip {name}", f"delete table ip {name}"]


def _nft(script: str) -> None:
    nft = shutil.which("nft")
    if nft is None:
        raise NetfilterError("the nft command is missing (apt-get install nftables)")
    try:
        res = subprocess.run(
            [nft, "-f", "-"], input=script, capture_output=True, text=True, timeout=NFT_TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        raise NetfilterError(f"nft did not finish within {NFT_TIMEOUT_S:.0f}s") from None
    if res.returncode != 0:
        msg = " ".join(res.stderr.split())[:400]
        raise NetfilterError(f"nft failed (exit {res.returncode}): {msg}")


def install(guard: Guard) -> Guard:
    """Installs (or replaces) the rule. Returns what was installed."""
    _nft(guard.ruleset())
    return guard


def remove(iface: str) -> None:
    """Removes the interface's rules; nothing to remove is fine."""
    _nft("\n".join(_drop_tables(iface)) + "\n")


def listed(iface: str) -> str:
    """``nft list`` of this interface's table ('' when there is none)."""
    nft = shutil.which("nft")
    if nft is None:
        return ""
    res = subprocess.run(
        [nft, "list", "table", "ip", table_name(iface)],
        capture_output=True,
        text=True,
        timeout=NFT_TIMEOUT_S,
    )
    return res.stdout if res.returncode == 0 else ""


# ----------------------------------------------------------------- the interface's address


def iface_address(iface: str) -> str | None:
    """The kernel's IPv4 address/prefix on the interface (the first one), or None."""
    req = struct.pack("256s", iface.encode()[:15])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            addr = fcntl.ioctl(s.fileno(), _SIOCGIFADDR, req)
            mask = fcntl.ioctl(s.fileno(), _SIOCGIFNETMASK, req)
        except OSError:
            return None
    ip = socket.inet_ntoa(addr[20:24])
    prefix = ipaddress.IPv4Network(f"0.0.0.0/{socket.inet_ntoa(mask[20:24])}").prefixlen
    return f"{ip}/{prefix}"


def default_gateway(iface: str, route_file: str = "/proc/thread-self/net/route") -> str | None:
    """The next hop of the kernel's IPv4 default route through the interface, or None."""
    try:
        with open(route_file) as f:
            lines = f.read().splitlines()[1:]
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) < 8 or fields[0] != iface:
            continue
        dest, gateway, flags, mask = fields[1], fields[2], int(fields[3], 16), fields[7]
        if dest == "00000000" and mask == "00000000" and flags & 0x2:  # RTF_GATEWAY
            return socket.inet_ntoa(struct.pack("<I", int(gateway, 16)))
    return None
