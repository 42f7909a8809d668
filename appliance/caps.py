"""Linux capabilities of this process (``CapEff`` in /proc/self/status) and what each
backend needs."""

from __future__ import annotations

CAP_NET_BIND_SERVICE = 10
CAP_NET_ADMIN = 12
CAP_NET_RAW = 13

NAMES = {
    CAP_NET_BIND_SERVICE: "CAP_NET_BIND_SERVICE",
    CAP_NET_ADMIN: "CAP_NET_ADMIN",
    CAP_NET_RAW: "CAP_NET_RAW",
}

# backend -> (capability, why)
NEEDED: dict[str, tuple[int, str]] = {
    "tap": (CAP_NET_ADMIN, "to create the TAP device (/dev/net/tun) and address its host side"),
    "afpacket": (CAP_NET_RAW, "for AF_PACKET sockets"),
}


def effective(status_path: str = "/proc/self/status") -> int | None:
    """The effective capability mask, or None when it cannot be read."""
    try:
        with open(status_path) as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return int(line.split()[1], 16)
    except (OSError, ValueError, IndexError):
        return None
    return None


def has(cap: int, mask: int | None = None) -> bool | None:
    """Whether the capability is effective (None: unknown)."""
    mask = effective() if mask is None else mask
    return None if mask is None else bool(mask >> cap & 1)


def missing_for(backend: str, mask: int | None = None) -> str | None:
    """'CAP_X (why)' when the backend's capability is missing, else None."""
    need = NEEDED.get(backend)
    if need is None or has(need[0], mask) is not False:
        return None
    return f"{NAMES[need[0]]} ({need[1]})"


def suggestion(missing: str) -> str:
    """The two lines that explain a missing capability and the way around it."""
    return (
        f"  missing capability: {missing}\n"
        f"  run as root (or grant it: setcap cap_net_admin,cap_net_raw+ep on the Python "
        f"binary), or serve on the kernel's stack instead:\n"
        f"    mtcp-appliance serve --stack linux --port 8080"
    )
