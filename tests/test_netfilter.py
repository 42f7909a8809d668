"""Serving on an interface whose address the kernel keeps (a container's eth0): ``ip = "auto"``
takes the interface's address and default route, ``nft_guard`` installs the nftables rule
that keeps the kernel off the served port (idempotently, removed on exit) and runs the stack
with ``shared_addr``, so that it leaves the kernel's ports and pings alone."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from appliance import netfilter
from appliance.config import ConfigError, load
from appliance.testing import APPLIANCE, Appliance, http_get
from mtcp_core.testing import netns


def test_ruleset_drops_the_served_port_for_the_kernel() -> None:
    rules = netfilter.Guard("eth0", "198.18.7.2", 80).ruleset()
    name = "mtcp_appliance_eth0"
    # replaces whatever an earlier run left: create-if-missing, then delete, then add
    assert rules.index(f"table ip {name}\n") < rules.index(f"delete table ip {name}\n")
    assert rules.index(f"delete table ip {name}\n") < rules.index(f"table ip {name} {{")
    assert "type filter hook prerouting priority raw;" in rules
    assert 'iifname "eth0" ip daddr 198.18.7.2 tcp dport 80 drop' in rules
    assert "netdev" not in rules and "egress" not in rules


def test_table_names_and_bad_input() -> None:
    assert netfilter.table_name("eth0.100") == "mtcp_appliance_eth0_100"
    with pytest.raises(ValueError, match="cannot be used"):
        netfilter.Guard('eth0" accept', "198.18.7.2", 80).ruleset()
    with pytest.raises(ValueError):
        netfilter.Guard("eth0", "not-an-ip", 80).ruleset()


def test_default_gateway_from_the_route_table(tmp_path: Path) -> None:
    routes = tmp_path / "route"
    routes.write_text(
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
        "eth0\t00000000\t010012C6\t0003\t0\t0\t0\t00000000\t0\t0\t0\n"
        "eth0\t000012C6\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n"
    )
    assert netfilter.default_gateway("eth0", str(routes)) == "198.18.0.1"
    assert netfilter.default_gateway("eth1", str(routes)) is None
    assert netfilter.default_gateway("eth0", str(tmp_path / "missing")) is None


def test_ip_auto_takes_the_interface_address() -> None:
    cfg = load({"backend": "afpacket", "iface": "lo", "ip": "auto"}, env={})
    assert cfg.ip == "127.0.0.1/8" and cfg.gateway is None
    assert netfilter.iface_address("lo") == "127.0.0.1/8"
    assert netfilter.iface_address("mt-nosuchif") is None


@pytest.mark.parametrize(
    ("flags", "key", "reason"),
    [
        ({"ip": "auto"}, "ip", "needs --backend afpacket"),
        ({"backend": "afpacket", "iface": "mt-nosuchif", "ip": "auto"}, "ip", "no IPv4 address"),
        ({"nft_guard": True}, "nft_guard", "--backend afpacket"),
        ({"stack": "linux", "nft_guard": "yes"}, "nft_guard", "--stack mtcp"),
        ({"backend": "afpacket", "iface": "lo", "nft_guard": "maybe"}, "nft_guard", "true or"),
    ],
)
def test_bad_settings_name_the_key(flags: dict[str, object], key: str, reason: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load(flags, env={})
    assert exc.value.key == key and reason in exc.value.reason


def test_nft_guard_from_the_environment() -> None:
    env = {
        "MTCP_APPLIANCE_BACKEND": "afpacket",
        "MTCP_APPLIANCE_IFACE": "lo",
        "MTCP_APPLIANCE_NFT_GUARD": "true",
    }
    assert load({}, env=env).nft_guard is True
    assert load({}, env={**env, "MTCP_APPLIANCE_NFT_GUARD": "0"}).nft_guard is False


@pytest.mark.requires_root
def test_stack_and_kernel_share_an_interface_and_its_address(
    netlab: netns.Lab, tmp_path: Path
) -> None:
    """As in a container: the server's interface keeps its kernel address and a default
    route; the appliance takes both (``--ip auto``), serves port 80 on its stack while the
    kernel serves the management port on the same address, from another namespace, many
    times each (without the rule the kernel resets port 80; without shared_addr the stack
    resets port 9100), and a ping gets one reply (the kernel's), not two. A stale table of a
    killed run is replaced, and the rule is gone after the exit."""
    client, server = netlab.namespace("nftc"), netlab.namespace("nfts")
    link = netlab.veth(client, server)
    iface, ip, gw = link.if_b, str(link.addr_b.ip), str(link.addr_a.ip)
    server.ip("route", "add", "default", "via", gw, "dev", iface)
    # what a supervisor killed with SIGKILL leaves behind: its tables, here a wrong rule
    server.call(netfilter.install, netfilter.Guard(iface, ip, 8081))
    args = ["--backend", "afpacket", "--iface", iface, "--ip", "auto", "--nft-guard"]
    args += ["--metrics", "0.0.0.0:9100", "--cores", "1"]
    with Appliance(server, tmp_path / "appliance.log", args) as app:
        assert app.serve_url == f"http://{ip}:80/"
        app.wait_log("nftables: the kernel drops TCP")
        listed = server.call(netfilter.listed, iface)
        assert "tcp dport 80 drop" in listed and "8081" not in listed
        ping = client.run(["ping", "-c", "3", "-i", "0.2", "-W", "2", ip], check=False)
        assert " 0% packet loss" in ping.stdout and "DUP!" not in ping.stdout, ping.stdout
        for _ in range(20):
            status, body = http_get(client, ip, 80, "/")
            assert status == 200 and b"mtcp-appliance" in body
            status, body = http_get(client, ip, 9100, "/healthz")
            assert status == 200, body
        status, body = http_get(client, ip, 9100, "/metrics")
        assert status == 200 and b"mtcp_http_requests_total" in body
        assert app.stop() == 0
        assert "nftables: removed table" in app.log()
    assert server.call(netfilter.listed, iface) == ""
    # the gateway came from the default route (the stack answers a client off its subnet
    # through it): the server's config, as the appliance computed it
    cfg = server.call(load, {"backend": "afpacket", "iface": iface, "ip": "auto"}, {})
    assert cfg.gateway == gw and cfg.ip == str(link.addr_b)


@pytest.mark.requires_root
def test_nft_missing_is_a_startup_error_naming_the_key(netlab: netns.Lab, tmp_path: Path) -> None:
    ns = netlab.namespace("nonft")
    link = netlab.veth(None, ns)
    args = ["--backend", "afpacket", "--iface", link.if_b, "--ip", "auto", "--nft-guard"]
    argv = [APPLIANCE, "serve", *args]
    bin_dir = tmp_path / "bin"  # a PATH with ip (for ip netns exec) and no nft
    bin_dir.mkdir()
    (bin_dir / "ip").symlink_to(shutil.which("ip") or "/usr/sbin/ip")
    env = {**(netns.child_env(argv) or {}), "PATH": str(bin_dir), "HOME": "/"}
    proc = ns.popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd="/")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, (out, err)
    assert b"nft_guard: the nft command is missing" in err
