"""``mtcp-appliance doctor``: checks what the configured stack and backend need and says
what to fix. One line per check: ``ok``, ``warn`` (works, but could be better) or ``FAIL``
(serve would not start), each failure or warning with the command that fixes it. The exit
status is 1 when a check failed."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from appliance import caps, netfilter
from appliance.config import Config, available_cpus

IFF_UP = 0x1


@dataclass(frozen=True)
class Check:
    level: str  # "ok", "warn", "FAIL"
    what: str
    fix: str = ""


def _cap(cap: int, why: str) -> Check:
    name = caps.NAMES[cap]
    have = caps.has(cap)
    if have is None:
        return Check("warn", f"{name}: cannot read /proc/self/status CapEff")
    if have:
        return Check("ok", f"{name} ({why})")
    return Check(
        "FAIL",
        f"{name} missing ({why})",
        "run as root, or grant it (setcap cap_net_admin,cap_net_raw+ep on the Python binary); "
        "or serve on the kernel's stack: mtcp-appliance serve --stack linux --port 8080",
    )


def _tun() -> Check:
    path = Path("/dev/net/tun")
    try:
        st = path.stat()
    except FileNotFoundError:
        return Check(
            "FAIL",
            "/dev/net/tun missing",
            "modprobe tun (in a container: pass --device /dev/net/tun)",
        )
    except OSError as exc:
        return Check("FAIL", f"/dev/net/tun: {exc.strerror}")
    if not stat.S_ISCHR(st.st_mode):
        return Check(
            "FAIL", "/dev/net/tun is not a character device", "mknod /dev/net/tun c 10 200"
        )
    if not os.access(path, os.R_OK | os.W_OK):
        return Check(
            "FAIL",
            "/dev/net/tun not readable and writable by this user",
            "run as root or chmod 0666 /dev/net/tun",
        )
    return Check("ok", "/dev/net/tun is there")


def _iface_flags(name: str) -> int | None:
    try:
        return int(Path(f"/sys/class/net/{name}/flags").read_text().strip(), 16)
    except (OSError, ValueError):
        return None


def _iface_checks(cfg: Config) -> list[Check]:
    name = cfg.iface or ""
    flags = _iface_flags(name)
    out: list[Check] = []
    if cfg.backend == "tap":
        if flags is None:
            return [Check("ok", f"TAP device {name} does not exist yet: serve creates it")]
        tun_flags = Path(f"/sys/class/net/{name}/tun_flags")
        if not tun_flags.exists():
            return [
                Check(
                    "FAIL",
                    f"{name} exists and is not a TAP device",
                    f"pick another name with --iface, or: ip link del {name}",
                )
            ]
        try:
            tf = int(tun_flags.read_text().strip(), 16)
        except (OSError, ValueError):
            tf = 0
        if not tf & 0x0100:  # IFF_MULTI_QUEUE
            out.append(
                Check(
                    "FAIL",
                    f"{name} is a single-queue TAP (one worker per core needs IFF_MULTI_QUEUE)",
                    f"ip link del {name}",
                )
            )
        else:
            out.append(Check("ok", f"{name} is a multi-queue TAP device"))
        return out
    if flags is None:
        return [
            Check(
                "FAIL",
                f"interface {name} does not exist",
                "ip link (to list interfaces); --iface NAME",
            )
        ]
    if flags & IFF_UP:
        out.append(Check("ok", f"interface {name} exists and is up"))
    else:
        out.append(Check("FAIL", f"interface {name} is down", f"ip link set {name} up"))
    out += _offload_checks(name)
    out.append(_kernel_address(name, cfg))
    return out


def _kernel_address(name: str, cfg: Config) -> Check:
    """The stack owns its address: the kernel should not answer for it on the same link."""
    try:
        res = subprocess.run(
            ["ip", "-o", "-4", "addr", "show", "dev", name],
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.TimeoutExpired):
        return Check("warn", f"cannot list the kernel's addresses on {name} (no ip command?)")
    if f" {cfg.host}/" in res.stdout and cfg.nft_guard:
        # a container's address: shared on purpose, the guard keeps the kernel off the port
        if shutil.which("nft") is None:
            return Check(
                "FAIL",
                f"the kernel also has {cfg.host} on {name} and --nft-guard needs nft, which is "
                "not installed",
                "apt-get install nftables",
            )
        return Check(
            "ok",
            f"the kernel also has {cfg.host} on {name}: shared, --nft-guard keeps the kernel "
            f"off TCP port {cfg.port} (table {netfilter.table_name(name)})",
        )
    if f" {cfg.host}/" in res.stdout:
        return Check(
            "FAIL",
            f"the kernel also has {cfg.host} on {name}: both would answer",
            f"ip addr del {cfg.ip} dev {name}",
        )
    return Check("ok", f"the kernel does not use {cfg.host} on {name}")


def _offload_checks(name: str) -> list[Check]:
    if shutil.which("ethtool") is None:
        return [
            Check(
                "warn", "ethtool not found: offload settings not checked", "apt-get install ethtool"
            )
        ]
    try:
        res = subprocess.run(["ethtool", "-k", name], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return [Check("warn", f"ethtool -k {name}: {exc}")]
    feats: dict[str, str] = {}
    for line in res.stdout.splitlines():
        key, sep, value = line.strip().partition(":")
        if sep:
            feats[key.strip()] = value.strip().split(" ")[0]
    out: list[Check] = []
    if feats.get("tx-checksumming") == "on":
        out.append(
            Check(
                "warn",
                f"{name}: tx checksum offload is on: frames the kernel sends on this link may "
                "carry partial checksums (the stack accepts them; captures show them as bad)",
                f"ethtool -K {name} tx off (and on the peer of a veth)",
            )
        )
    else:
        out.append(Check("ok", f"{name}: tx checksum offload is off"))
    for feat, short in (("generic-receive-offload", "gro"), ("large-receive-offload", "lro")):
        if feats.get(feat) == "on":
            out.append(
                Check(
                    "warn",
                    f"{name}: {feat} is on: AF_PACKET may see coalesced frames larger than the MTU",
                    f"ethtool -K {name} {short} off",
                )
            )
    return out


def _hugepages() -> Check:
    try:
        info = Path("/proc/meminfo").read_text()
    except OSError:
        return Check("warn", "cannot read /proc/meminfo")
    free = 0
    for line in info.splitlines():
        if line.startswith("HugePages_Free:"):
            free = int(line.split()[1])
    if free > 0:
        return Check("ok", f"{free} free huge pages for the per-core pools")
    return Check(
        "warn",
        "no free huge pages: the per-core pools use normal pages",
        "echo 256 > /proc/sys/vm/nr_hugepages",
    )


def _metrics_port(cfg: Config) -> Check:
    family = socket.AF_INET6 if ":" in cfg.metrics_host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((cfg.metrics_host, cfg.metrics_port))
        except OSError as exc:
            return Check(
                "FAIL",
                f"metrics address {cfg.metrics_host}:{cfg.metrics_port}: {exc.strerror}",
                "--metrics HOST:PORT",
            )
    return Check("ok", f"metrics address {cfg.metrics_host}:{cfg.metrics_port} is free")


def checks(cfg: Config) -> list[Check]:
    out: list[Check] = []
    if cfg.stack == "mtcp":
        if cfg.backend == "tap":
            out.append(_cap(caps.CAP_NET_ADMIN, "create and address the TAP device"))
            out.append(_tun())
        else:
            out.append(_cap(caps.CAP_NET_RAW, "AF_PACKET sockets"))
        out += _iface_checks(cfg)
        out.append(_hugepages())
    elif cfg.port < 1024:
        out.append(_cap(caps.CAP_NET_BIND_SERVICE, f"listen on port {cfg.port}"))
    ncpu = len(available_cpus())
    if cfg.cores > ncpu:
        out.append(
            Check(
                "warn",
                f"{cfg.cores} cores asked, {ncpu} CPUs available: workers share CPUs",
                f"--cores {ncpu}",
            )
        )
    else:
        out.append(Check("ok", f"{cfg.cores} workers on {ncpu} available CPUs"))
    out.append(_metrics_port(cfg))
    if cfg.tls_port is not None:
        from appliance.tls_doctor import tls_checks  # HTTPS: the certificates

        out += tls_checks(cfg)
    return out


def run_checks(cfg: Config, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    what = f"stack {cfg.stack}" + (
        f", backend {cfg.backend} ({cfg.iface})" if cfg.stack == "mtcp" else ""
    )
    print(f"mtcp-appliance doctor: {what}", file=out)
    results = checks(cfg)
    for c in results:
        print(f"{c.level:<4} {c.what}", file=out)
        if c.fix and c.level != "ok":
            print(f"     fix: {c.fix}", file=out)
    failed = sum(c.level == "FAIL" for c in results)
    warned = sum(c.level == "warn" for c in results)
    print(f"{failed} failed, {warned} warnings", file=out)
    return 1 if failed else 0
