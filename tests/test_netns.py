"""The namespace helpers themselves (mtcp_core.testing.netns)."""

from __future__ import annotations

import ipaddress
import shutil
import socket
import subprocess

import pytest

from mtcp_core.testing import netns

pytestmark = pytest.mark.requires_root


def _netns_names() -> set[str]:
    return {line.split()[0] for line in netns.ip("netns", "list").splitlines() if line.strip()}


def test_ping_between_two_namespaces(netlab: netns.Lab) -> None:
    client, server = netlab.namespace("client"), netlab.namespace("server")
    link = netlab.veth(client, server)

    assert client.name.startswith("mt-client-") and server.name.startswith("mt-server-")
    assert link.network.subnet_of(netns.BENCH_NET)
    assert str(link.addr_a.ip) in client.ip("-4", "addr", "show", "dev", link.if_a)
    assert "state UP" in server.ip("link", "show", link.if_b)
    assert client.ping(link.addr_b.ip) < 1.0
    assert server.ping(link.addr_a.ip) < 1.0
    if shutil.which("ping"):
        out = client.run(["ping", "-c", "1", "-W", "2", str(link.addr_b.ip)]).stdout
        assert "1 received" in out


def test_veth_to_own_namespace(netlab: netns.Lab) -> None:
    peer = netlab.namespace()
    link = netlab.veth(None, peer)

    assert link.if_a in {name for _, name in socket.if_nameindex()}
    assert netns.icmp_echo(str(link.addr_b.ip)) < 1.0  # from this very thread
    assert peer.ping(link.addr_a.ip) < 1.0


def test_end_without_kernel_address(netlab: netns.Lab) -> None:
    a, b = netlab.namespace(), netlab.namespace()
    link = netlab.veth(a, b, address_b=False, subnet="198.19.255.0/24")

    assert str(link.addr_b) == "198.19.255.2/24"
    assert "inet " not in b.ip("-4", "addr", "show", "dev", link.if_b)
    with pytest.raises(TimeoutError):
        a.ping(link.addr_b.ip, timeout=0.3)


def test_subnets_outside_the_benchmark_range_are_refused(netlab: netns.Lab) -> None:
    ns = netlab.namespace()
    with pytest.raises(ValueError, match="198.18.0.0/15"):
        netlab.veth(ns, netlab.namespace(), subnet="192.168.1.0/24")
    assert netlab.links == []


def test_entered_and_call_switch_only_the_thread(netlab: netns.Lab) -> None:
    ns = netlab.namespace()
    link = netlab.veth(ns, netlab.namespace())
    own = socket.if_nameindex()

    with ns.entered():
        inside = {name for _, name in socket.if_nameindex()}
        listener = socket.create_server((str(link.addr_a.ip), 0))
    assert inside == {"lo", link.if_a}
    assert socket.if_nameindex() == own
    with listener:  # the socket stays in the namespace it was made in
        port = listener.getsockname()[1]
        addr = (str(link.addr_a.ip), port)
        assert ns.call(lambda: socket.create_connection(addr, 2).close()) is None

    assert set(ns.call(lambda: [n for _, n in socket.if_nameindex()])) == inside
    with pytest.raises(ZeroDivisionError):
        ns.call(lambda: 1 // 0)


def test_tx_offload_off(netlab: netns.Lab) -> None:
    if shutil.which("ethtool") is None:
        pytest.skip("needs ethtool (apt-get install ethtool)")
    a = netlab.namespace()
    link = netlab.veth(a, None, tx_offload=False)
    show_a = ["ip", "netns", "exec", a.name, "ethtool", "-k", link.if_a]
    for argv in (show_a, ["ethtool", "-k", link.if_b]):
        out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
        assert "tx-checksumming: off" in out


def test_teardown_removes_everything_even_after_a_failure() -> None:
    with pytest.raises(RuntimeError, match="test failed"), netns.Lab() as lab:
        a, b = lab.namespace(), lab.namespace()
        lab.veth(a, b)
        host_link = lab.veth(None, a)
        sleeper = a.popen(["sleep", "60"])
        created = {a.name, b.name}
        assert created <= _netns_names()
        raise RuntimeError("test failed")

    assert not created & _netns_names()
    assert lab.namespaces == [] and lab.links == []
    assert sleeper.returncode is not None
    shown = subprocess.run(["ip", "link", "show", host_link.if_a], capture_output=True)
    assert shown.returncode != 0
    assert not any(
        ipaddress.IPv4Interface(line.split()[3]).network == host_link.network
        for line in netns.ip("-o", "-4", "addr", "show").splitlines()
    )
