"""A quick start: scripts/lib.sh's setup skips what did not change, and the stack tells its
neighbours its address as it starts. (How long a start takes is measured by
bench/start_bench.py, not here.)"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import mtcp_core
from mtcp_core.testing import netns

REPO = Path(__file__).resolve().parent.parent
SOURCES = (
    "pyproject.toml",
    "setup.py",
    "MANIFEST.in",
    "scripts",
    "mtcp_core",
    "appliance",
    "http",
    "metrics",
    "static",
)


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A copy of the sources and a venv whose python records each ``-m pip`` call instead
    of running it (and runs everything else with the real interpreter)."""
    root = tmp_path / "repo"
    root.mkdir()
    for name in SOURCES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(
                src,
                root / name,
                ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.pyc", "*.egg-info"),
            )
        elif src.exists():
            shutil.copy2(src, root / name)
    bindir = root / ".venv" / "bin"
    bindir.mkdir(parents=True)
    wrapper = bindir / "python"
    wrapper.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = -m ] && [ "$2" = pip ]; then\n'
        '  echo "$*" >>"$(dirname "$0")/pip.log"; exit 0\n'
        "fi\n"
        # under scripts/test-asan the sanitized _native needs its runtimes (conftest.py)
        f'[ -n "${netns.PRELOAD_VAR}" ] && export LD_PRELOAD="${netns.PRELOAD_VAR}"\n'
        f'exec {sys.executable} "$@"\n'
    )
    wrapper.chmod(0o755)
    (root / ".venv" / "pyvenv.cfg").write_text(f"version = {sys.version.split()[0]}\n")
    native = root / "build" / "__editable__.x" / "mtcp_core" / "_native.abi3.so"
    native.parent.mkdir(parents=True)
    native.write_bytes(b"")  # what pip would have built
    return root


def setup(root: Path, extras: str | None = None, **env: str) -> list[str]:
    """Runs setup_venv .venv in the copy; returns the pip calls it made."""
    log = root / ".venv" / "bin" / "pip.log"
    log.unlink(missing_ok=True)
    prefix = "" if extras is None else f'SETUP_EXTRAS="{extras}" '
    proc = subprocess.run(
        ["bash", "-c", f"source scripts/lib.sh && {prefix}setup_venv .venv"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, **env},
    )
    assert proc.returncode == 0, proc.stderr
    return log.read_text().splitlines() if log.exists() else []


def test_a_second_setup_reinstalls_nothing_when_nothing_changed(checkout: Path) -> None:
    first = setup(checkout)
    assert len(first) == 1 and first[0].endswith(f"{checkout}[test]"), first
    assert setup(checkout) == []  # nothing changed: no pip at all
    assert setup(checkout, extras="") == []  # the run path: test extras include runtime
    # an edit of an existing .py file is live in an editable install: nothing to do
    cfg = checkout / "appliance" / "config.py"
    cfg.write_text(cfg.read_text() + "\n# edited\n")
    assert setup(checkout) == []
    # a new file must be linked, a C change compiled, a packaging change applied
    (checkout / "http" / "new_module.py").write_text("X = 1\n")
    assert len(setup(checkout)) == 1 and setup(checkout) == []
    c = next((checkout / "mtcp_core" / "src").rglob("*.c"))
    c.write_text(c.read_text() + "\n/* edited */\n")
    assert len(setup(checkout)) == 1 and setup(checkout) == []
    (checkout / "pyproject.toml").write_text((checkout / "pyproject.toml").read_text() + "\n")
    assert len(setup(checkout)) == 1
    # the run path installs the runtime dependencies only, and forcing works
    assert setup(checkout, extras="") == []
    (checkout / "setup.py").write_text((checkout / "setup.py").read_text() + "\n")
    only_runtime = setup(checkout, extras="")
    assert len(only_runtime) == 1 and only_runtime[0].endswith(str(checkout)), only_runtime
    assert len(setup(checkout, MTCP_FORCE_SETUP="1")) == 1
    # the built core gone (build/ cleaned): installed again
    assert setup(checkout) == []
    for so in (checkout / "build").rglob("_native*.so"):
        so.unlink()
    assert len(setup(checkout)) == 1


def test_a_second_scripts_run_reinstalls_nothing(checkout: Path) -> None:
    """scripts/run itself, twice: the first installs the runtime dependencies only, the
    second goes straight to the appliance (a stand-in that prints its arguments)."""
    if shutil.which("gcc") is None or shutil.which("ip") is None:
        pytest.skip("scripts/run would install Debian packages first (gcc, iproute2)")
    fake = checkout / ".venv" / "bin" / "mtcp-appliance"
    fake.write_text('#!/bin/sh\necho "appliance: $*"\n')
    fake.chmod(0o755)
    log = checkout / ".venv" / "bin" / "pip.log"

    def run() -> tuple[str, list[str]]:
        log.unlink(missing_ok=True)
        proc = subprocess.run(
            [str(checkout / "scripts" / "run"), "--stack", "linux"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stdout, log.read_text().splitlines() if log.exists() else []

    out, pip = run()
    assert out == "appliance: serve --stack linux\n"
    assert len(pip) == 1 and pip[0].endswith(str(checkout)), pip  # no [test] extras
    out, pip = run()
    assert out == "appliance: serve --stack linux\n" and pip == []


ETH_P_ARP = 0x0806


@pytest.mark.requires_root
def test_the_stack_announces_its_address_when_it_starts(netlab: netns.Lab) -> None:
    cl, sv = netlab.namespace("ac"), netlab.namespace("as")
    link = netlab.veth(cl, sv)
    ip = link.addr_b.ip

    def capture() -> socket.socket:
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP))
        s.bind((link.if_a, ETH_P_ARP))
        s.settimeout(0.2)
        return s

    raw = cl.call(capture)
    stack = sv.call(mtcp_core.Stack, "afpacket", str(link.addr_b), iface=link.if_b)
    try:
        ctx = stack.context(0)
        deadline = time.monotonic() + 3
        seen: list[bytes] = []
        while time.monotonic() < deadline:
            try:
                frame = raw.recv(2048)
            except TimeoutError:
                continue
            seen.append(frame)
            arp = frame[14:42]
            op, sha, spa, tpa = arp[6:8], arp[8:14], arp[14:18], arp[24:28]
            if op == b"\x00\x01" and spa == tpa == ip.packed and frame[:6] == b"\xff" * 6:
                assert sha == frame[6:12]
                break
        else:
            raise AssertionError(f"no gratuitous ARP for {ip} in {len(seen)} ARP frames")
        assert ctx.stats()["arp_requests_tx"] >= 1
        ctx.close()
    finally:
        raw.close()
        stack.close()
