"""The container image in a real container engine (podman): built from the repository's
Dockerfile on a locally made base image (``deploy/base-image.sh``: debootstrap + podman
import, cached under /var/cache/mtcp-appliance), run on a bridge network in 198.18.0.0/15
with the README's capabilities, read-only like the Kubernetes manifest. The site is fetched
through the published port and from another container, metrics are scraped, the health check
turns healthy, and ``podman stop`` ends it cleanly. Skips where podman or root is missing;
``./scripts/test`` installs and configures podman (scripts/lib.sh, setup_containers)."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BUILD_TIMEOUT_S = 900
START_LIMIT_S = 20.0  # the target is < 3 s; this only bounds the wait
CA_BUNDLES = ("/etc/ssl/certs/ca-certificates.crt",)


def _cgroups_mounted() -> bool:
    """runc needs a cgroup filesystem; ``ip netns exec`` remounts /sys without one."""
    try:
        with open("/proc/self/mountinfo") as f:
            return any(" - cgroup" in line for line in f)
    except OSError:
        return False


pytestmark = [
    pytest.mark.skipif(shutil.which("podman") is None, reason="podman is not installed"),
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (rootful podman, nftables)"),
    pytest.mark.skipif(
        not _cgroups_mounted(),
        reason="no cgroup filesystem is mounted here (as inside `ip netns exec`), so runc "
        "cannot start containers",
    ),
]


def podman(*args: str, timeout: float = 120, check: bool = True) -> str:
    res = subprocess.run(
        ["podman", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and res.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)}: exit {res.returncode}\n{res.stderr}")
    return res.stdout.strip()


def container_logs(name: str) -> str:
    """stdout and stderr of the container (podman logs gives each on its own)."""
    res = subprocess.run(
        ["podman", "logs", name], capture_output=True, text=True, timeout=60, check=False
    )
    return res.stdout + res.stderr


def _free_subnet() -> ipaddress.IPv4Network:
    """A /24 of 198.19.128.0/17 that no route and no podman network uses."""
    used = [
        ipaddress.ip_network(w, strict=False)
        for w in re.findall(r"(\d+\.\d+\.\d+\.\d+/\d+)", subprocess.getoutput("ip -4 route"))
    ]
    for name in podman("network", "ls", "--format", "{{.Name}}").split():
        info = json.loads(podman("network", "inspect", name) or "[]")
        for net in info:
            for sub in net.get("subnets", []) or []:
                used.append(ipaddress.ip_network(sub["subnet"], strict=False))
    for _ in range(64):
        net = ipaddress.ip_network(f"198.19.{128 + secrets.randbelow(127)}.0/24")
        if not any(net.overlaps(u) for u in used if u.version == 4):
            return net
    raise AssertionError("no free /24 in 198.19.128.0/17")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@dataclass
class Image:
    tag: str
    build_s: float
    size: int


@pytest.fixture(scope="module")
def image() -> Iterator[Image]:
    base = subprocess.run(
        [str(ROOT / "deploy" / "base-image.sh")],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
        check=False,
    )
    assert base.returncode == 0, f"base image: {base.stdout}\n{base.stderr}"
    tag = f"localhost/mt-appliance-test-{secrets.token_hex(4)}:latest"
    # docker format: the OCI image format has no HEALTHCHECK
    args = ["build", "--format", "docker", "--network", "host", "-t", tag]
    args += ["-f", str(ROOT / "Dockerfile")]
    ca = os.environ.get("PIP_CERT") or next((c for c in CA_BUNDLES if Path(c).is_file()), None)
    if ca:  # a TLS-inspecting proxy's CA, as the Dockerfile's pip_cert build secret
        args += ["--secret", f"id=pip_cert,src={ca}"]
    t0 = time.monotonic()
    podman(*args, str(ROOT), timeout=BUILD_TIMEOUT_S)
    built = Image(
        tag, time.monotonic() - t0, int(podman("image", "inspect", tag, "-f", "{{.Size}}"))
    )
    try:
        yield built
    finally:
        podman("rmi", "-f", tag, check=False)


@pytest.fixture
def network() -> Iterator[tuple[str, ipaddress.IPv4Network]]:
    name = f"mt-net-{secrets.token_hex(4)}"
    subnet = _free_subnet()
    podman("network", "create", "--subnet", str(subnet), name)
    try:
        yield name, subnet
    finally:
        podman("network", "rm", "-f", name, check=False)


def test_image_is_small_and_has_no_build_tools(image: Image) -> None:
    print(f"\nimage {image.tag}: {image.size / 1e6:.1f} MB, built in {image.build_s:.1f}s")
    assert image.size < 250_000_000
    found = podman(
        "run", "--rm", "--entrypoint", "/bin/sh", image.tag, "-c",
        "for c in gcc cc pip pip3 apt-get nft python3; do command -v $c; done; "
        "ls /var/lib/apt/lists | wc -l; "
        "ls /root/.cache 2>/dev/null | wc -l",
    )  # fmt: skip
    lines = found.splitlines()
    assert "/usr/bin/apt-get" in lines and "/usr/sbin/nft" in lines, found  # apt stays in Debian
    assert not any(re.search(r"/(gcc|cc|pip3?)$", line) for line in lines), found
    assert lines[-2:] == ["0", "0"], found  # no package lists, no pip cache
    labels = json.loads(podman("image", "inspect", image.tag, "-f", "{{json .Labels}}"))
    assert labels["org.opencontainers.image.title"] == "mtcp-appliance"


def test_container_serves_through_the_published_port_and_stops_cleanly(
    image: Image, network: tuple[str, ipaddress.IPv4Network]
) -> None:
    net, subnet = network
    name = f"mt-app-{secrets.token_hex(4)}"
    web, mgmt = _free_port(), _free_port()
    podman(
        "create", "--name", name, "--network", net,
        "--cap-drop", "ALL", "--cap-add", "NET_ADMIN", "--cap-add", "NET_RAW", "--read-only",
        "-p", f"127.0.0.1:{web}:80", "-p", f"127.0.0.1:{mgmt}:9100", image.tag,
    )  # fmt: skip
    try:
        t0 = time.monotonic()
        podman("start", name)
        status, body = 0, b""
        while time.monotonic() - t0 < START_LIMIT_S:
            try:
                status, body = _get(f"http://127.0.0.1:{web}/", timeout=1.0)
            except OSError:
                status = 0
            if status == 200:
                break
            time.sleep(0.05)
        first = time.monotonic() - t0
        logs = container_logs(name)
        assert status == 200, f"no response within {START_LIMIT_S}s\n{logs}"
        print(f"\nstart to first response: {first:.2f}s")
        assert b"<title>mtcp-appliance" in body

        ip = podman(
            "inspect", name, "-f", f'{{{{(index .NetworkSettings.Networks "{net}").IPAddress}}}}'
        )
        assert ipaddress.ip_address(ip) in subnet
        # another container on the network: the site (user-level stack) and the management
        # port (the container's kernel) on the same address, several times each
        fetch = (
            "import urllib.request as u\n"
            "for i in range(5):\n"
            f"    print(u.urlopen('http://{ip}/', timeout=5).status,"
            f" u.urlopen('http://{ip}:9100/healthz', timeout=5).status)\n"
        )
        out = podman(
            "run", "--rm", "--network", net, "--entrypoint", "/opt/venv/bin/python",
            image.tag, "-c", fetch,
        )  # fmt: skip
        assert out.splitlines() == ["200 200"] * 5, out

        status, metrics = _get(f"http://127.0.0.1:{mgmt}/metrics")
        assert status == 200
        text = metrics.decode()
        assert 'backend="afpacket"' in text and 'stack="mtcp"' in text
        served = sum(
            float(v)
            for v in re.findall(r'^mtcp_http_requests_total\{[^}]*status_class="2xx"[^}]*\} (\S+)',
                                text, re.M)
        )  # fmt: skip
        assert served >= 6, text

        # the health check: podman runs it on its timer where systemd runs; run it by hand too
        health = ""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            podman("healthcheck", "run", name, check=False)
            health = podman("inspect", name, "-f", "{{.State.Health.Status}}")
            if health == "healthy":
                break
            time.sleep(1)
        assert health == "healthy", podman("inspect", name, "-f", "{{json .State.Health}}")
        status, hz = _get(f"http://127.0.0.1:{mgmt}/healthz")
        doc = json.loads(hz)
        print(f"health: {health}; /healthz {status}: {json.dumps(doc)}")
        assert status == 200 and doc["status"] == "ok"
        assert all(c["mtcp_thread"] == "ok" and c["worker"] == "up" for c in doc["cores"])

        podman("stop", "-t", "20", name, timeout=60)
        code = podman("inspect", name, "-f", "{{.State.ExitCode}}")
        logs = container_logs(name)
        assert code == "0", logs
        assert "SIGTERM: draining" in logs and "INFO core=- pid=1 stopped" in logs, logs
        assert "nftables: removed table mtcp_appliance_eth0" in logs, logs
    finally:
        podman("rm", "-f", "-t", "0", name, check=False)
