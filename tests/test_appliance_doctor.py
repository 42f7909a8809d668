"""``mtcp-appliance doctor``: each check that fails or could be better says what to fix."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from appliance import caps, cli
from mtcp_core.testing import netns

ALL_CAPS = (1 << 41) - 1
EXE = str(Path(sys.executable).parent / "mtcp-appliance")


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("MTCP_APPLIANCE_"):
            monkeypatch.delenv(name)


def test_doctor_names_a_missing_capability_and_the_fix(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(caps, "effective", lambda *a: 0)
    assert cli.main(["doctor", "--metrics", "127.0.0.1:0"]) == 1
    out = capsys.readouterr().out
    assert "FAIL CAP_NET_ADMIN missing (create and address the TAP device)" in out
    assert "fix: run as root" in out and "mtcp-appliance serve --stack linux --port 8080" in out
    assert (
        cli.main(["doctor", "--backend", "afpacket", "--iface", "lo", "--metrics", "127.0.0.1:0"])
        == 1
    )
    assert "FAIL CAP_NET_RAW missing (AF_PACKET sockets)" in capsys.readouterr().out


def test_doctor_checks_the_interface(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(caps, "effective", lambda *a: ALL_CAPS)
    argv = ["doctor", "--backend", "afpacket", "--iface", "mt-none0", "--metrics", "127.0.0.1:0"]
    assert cli.main(argv) == 1
    out = capsys.readouterr().out
    assert "FAIL interface mt-none0 does not exist" in out and "fix: ip link" in out
    assert "ok   CAP_NET_RAW" in out
    assert "huge pages" in out


@pytest.mark.requires_root
def test_doctor_in_a_namespace_says_what_to_fix(netlab: netns.Lab) -> None:
    a, b = netlab.namespace("docA"), netlab.namespace("docB")
    link = netlab.veth(a, b, address_a=False)
    ifname = link.if_a
    a.ip("link", "set", ifname, "down")
    argv = [EXE, "doctor", "--backend", "afpacket", "--iface", ifname, "--ip", str(link.addr_a)]
    down = a.run(argv, check=False)
    assert down.returncode == 1, down.stdout
    assert f"FAIL interface {ifname} is down" in down.stdout
    assert f"fix: ip link set {ifname} up" in down.stdout

    a.ip("link", "set", ifname, "up")
    a.ip("addr", "add", str(link.addr_a), "dev", ifname)  # the kernel takes the stack's address
    clash = a.run(argv, check=False)
    assert clash.returncode == 1
    assert f"FAIL the kernel also has {link.addr_a.ip} on {ifname}" in clash.stdout
    assert f"fix: ip addr del {link.addr_a} dev {ifname}" in clash.stdout
    assert f"warn {ifname}: tx checksum offload is on" in clash.stdout
    assert f"fix: ethtool -K {ifname} tx off" in clash.stdout

    a.ip("addr", "del", str(link.addr_a), "dev", ifname)
    a.run(["ethtool", "-K", ifname, "tx", "off"])
    good = a.run(argv, check=False)
    assert good.returncode == 0, good.stdout
    assert f"ok   interface {ifname} exists and is up" in good.stdout
    assert f"ok   {ifname}: tx checksum offload is off" in good.stdout
    assert "FAIL" not in good.stdout

    tap = a.run([EXE, "doctor"], check=False)
    assert tap.returncode == 0, tap.stdout
    assert "ok   /dev/net/tun is there" in tap.stdout
    assert "TAP device mtcp0 does not exist yet: serve creates it" in tap.stdout
    # something else by the TAP's name
    a.ip("link", "add", "mtcp0", "type", "veth", "peer", "name", "mtcp0p")
    taken = a.run([EXE, "doctor"], check=False)
    assert taken.returncode == 1
    assert "FAIL mtcp0 exists and is not a TAP device" in taken.stdout
