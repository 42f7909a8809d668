"""The core against Linux's own TCP: kernel clients and servers in network namespaces.

Two rigs:

- afpacket: a veth pair between a client namespace (kernel address .1/24) and a server
  namespace whose end is up with NO kernel address (the kernel would answer too); the stack
  takes .2 on that end.
- tap: the tap device is made in a namespace, its host side gets .1/24, the stack is .2; the
  kernel client in that namespace reaches the stack through the tap.

The stack is created inside the server namespace (its AF_PACKET sockets and tap queues belong
to the namespace they were made in); its context is started from the test's own thread, in
the test's namespace: the mTCP thread only uses descriptors that are already bound.
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import mtcp_core
from mtcp_core.testing import echo_app, netns, pools_back
from mtcp_core.testing.echo_app import wait_stats
from mtcp_core.testing.kernel import (
    ECHO,
    ONCE,
    STACK_TIME_WAIT_MS,
    Rig,
    make_afpacket_rig,
)

pytestmark = pytest.mark.requires_root

SIZES = [1, 100, 1448, 1449, 4096, 65536, 300_000, 1 << 20]


def kernel_tcp_counters(ns: netns.Namespace) -> dict[str, int]:
    """The Tcp: line of /proc/net/snmp in ``ns`` (OutRsts, EstabResets, AttemptFails...)."""
    lines = [ln.split() for ln in ns.run(["cat", "/proc/net/snmp"]).stdout.splitlines()]
    tcp = [ln for ln in lines if ln and ln[0] == "Tcp:"]
    return {k: int(v) for k, v in zip(tcp[0][1:], tcp[1][1:], strict=True)}


# both receive paths: the V3 ring (zero copy, blocks) and recvmmsg (copy, per frame)
@pytest.fixture(params=["ring", "copy"])
def afp(netlab: netns.Lab, request: pytest.FixtureRequest) -> Iterator[Rig]:
    yield from make_afpacket_rig(netlab, afpacket_rx=request.param)


@pytest.fixture
def tap(netlab: netns.Lab) -> Iterator[Rig]:
    if not Path("/dev/net/tun").exists():
        pytest.skip("needs /dev/net/tun")
    ns = netlab.namespace("tap")
    stack = ns.call(
        mtcp_core.Stack,
        "tap",
        "198.18.0.2/24",
        iface="mtap0",
        tap_host="198.18.0.1/24",
        time_wait_ms=STACK_TIME_WAIT_MS,
    )
    try:
        ctx = stack.context(0)
        yield Rig(ns, "198.18.0.1", "198.18.0.2", stack, ctx, ns)
    finally:
        stack.close()


def echo_sizes(rig: Rig, sizes: list[int], timeout: float = 20.0) -> None:
    for size in sizes:
        data = os.urandom(size)
        got = rig.client.call(echo_app.echo_exchange, (rig.ip, ECHO), data, timeout)
        assert len(got) == size, f"{size} B echo came back as {len(got)} B"
        assert got == data, f"{size} B echo came back changed"


# ---------------------------------------------------------------- (a) afpacket over veth


def test_afpacket_echo_is_byte_exact(afp: Rig) -> None:
    with afp.serve() as srv:
        echo_sizes(afp, SIZES)
        # and a few at once, from their own threads
        blobs = [os.urandom(200_000 + i) for i in range(6)]
        results: list[bytes | BaseException] = [b""] * len(blobs)

        def one(i: int) -> None:
            try:
                with afp.client.entered():
                    results[i] = echo_app.echo_exchange((afp.ip, ECHO), blobs[i])
            except BaseException as exc:  # noqa: BLE001 - checked below
                results[i] = exc

        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(blobs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert results == blobs
        report = srv.stop()
    assert report.errors == [] and report.resets == 0
    assert report.accepted == len(SIZES) + len(blobs)
    st = wait_stats(afp.ctx, pools_back)
    assert st["conn_passive_opens"] == len(SIZES) + len(blobs)
    assert st["rst_tx"] == 0 and st["rst_rx"] == 0


def test_afpacket_full_size_segments_fit_the_mtu(netlab: netns.Lab) -> None:
    """Linux negotiates timestamps: a full segment carries MSS - 12 bytes of data, so
    that payload and options fit a 1500-byte MTU (frames over it never arrive)."""
    for rig in make_afpacket_rig(netlab):
        with rig.serve():
            echo_sizes(rig, [1449, 65536], timeout=5.0)


def test_context_started_outside_the_namespace(afp: Rig) -> None:
    """The stack was made in the server namespace, the context here: the mTCP thread lives
    in this namespace and still serves the server namespace's interface."""
    threads = echo_app.find_threads("mtcp-core0")
    assert threads, "no mtcp-core0 thread"
    own = os.stat("/proc/thread-self/ns/net").st_ino
    server = os.stat(f"/run/netns/{afp.server_ns.name}").st_ino
    assert own != server
    for tid in threads:
        assert os.stat(f"/proc/self/task/{tid}/ns/net").st_ino == own
    with afp.serve():
        echo_sizes(afp, [10, 100_000])


# ---------------------------------------------------------------- (b) tap


def test_tap_echo_is_byte_exact(tap: Rig) -> None:
    assert "inet 198.18.0.1/24" in tap.client.ip("-4", "addr", "show", "dev", "mtap0")
    with tap.serve() as srv:
        echo_sizes(tap, SIZES)
        short = echo_app.short_connections(
            (tap.ip, ONCE), 50, threads=2, mode="once", enter=tap.client.entered
        )
        assert short.errors == [] and short.ok == 50
        report = srv.stop()
    assert report.errors == [] and report.resets == 0
    st = wait_stats(tap.ctx, pools_back)
    assert st["conn_passive_opens"] == len(SIZES) + 50
    assert st["rst_tx"] == 0 and st["rst_rx"] == 0
    assert st["rx_csum_partial"] == 0  # the tap completes checksums (io/tap.c)


def test_tap_ping(tap: Rig) -> None:
    for _ in range(3):
        assert tap.client.ping(tap.ip) < 1.0
    assert wait_stats(tap.ctx, lambda s: s["icmp_echo_replies"] >= 3)["icmp_echo_replies"] == 3


# ---------------------------------------------------------------- (c) active open


@pytest.mark.parametrize("who_closes", ["core_first", "kernel_first"])
def test_active_open_to_a_kernel_server(afp: Rig, who_closes: str) -> None:
    up = os.urandom(700_000)  # core -> kernel
    tail = os.urandom(300_000)  # kernel -> core after the echo, in kernel_first
    received = bytearray()
    done = threading.Event()
    errors: list[BaseException] = []
    with afp.client.entered():
        listener = socket.create_server((afp.client_ip, 0))
    port = listener.getsockname()[1]

    def server() -> None:
        try:
            listener.settimeout(10)
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(20)
                if who_closes == "core_first":
                    while data := conn.recv(65536):  # echo until the core's FIN
                        received.extend(data)
                        conn.sendall(data)
                else:
                    while len(received) < len(up):
                        data = conn.recv(min(65536, len(up) - len(received)))
                        if not data:
                            raise AssertionError("the core closed early")
                        received.extend(data)
                        conn.sendall(data)
                    conn.sendall(tail)  # then the kernel closes first
        except BaseException as exc:  # noqa: BLE001 - checked below
            errors.append(exc)
        finally:
            done.set()

    with listener:
        thread = threading.Thread(target=server)
        thread.start()
        if who_closes == "core_first":
            ex = echo_app.mtcp_client(afp.ctx, (afp.client_ip, port), up, until="echo")
            assert ex.data == up
        else:
            ex = echo_app.mtcp_client(afp.ctx, (afp.client_ip, port), up, until="eof")
            assert len(ex.data) == len(up) + len(tail)
            assert ex.data == up + tail
        assert done.wait(20)
        thread.join()
    assert errors == []
    assert bytes(received) == up
    assert ex.local[0] == afp.ip and ex.local[1] > 0
    st = wait_stats(afp.ctx, pools_back)  # TIME_WAIT (core_first) or LAST_ACK, then free
    assert st["conn_active_opens"] == 1
    assert st["rst_tx"] == 0 and st["rst_rx"] == 0


def test_active_open_to_a_closed_port_is_refused(afp: Rig) -> None:
    with afp.client.entered():
        probe = socket.create_server((afp.client_ip, 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens there now: the kernel answers RST
    with pytest.raises(ConnectionRefusedError):
        echo_app.mtcp_client(afp.ctx, (afp.client_ip, port), b"x", timeout=10)
    st = wait_stats(afp.ctx, lambda s: s["rst_rx"] >= 1 and pools_back(s))
    assert st["rst_rx"] == 1


# ---------------------------------------------------------------- (d) ping


def test_ping_is_answered(afp: Rig) -> None:
    for _ in range(3):
        assert afp.client.ping(afp.ip) < 1.0
    n = 3
    if shutil.which("ping"):
        out = afp.client.run(["ping", "-c", "3", "-i", "0.2", "-W", "2", afp.ip]).stdout
        assert "3 received" in out, out
        n += 3
    st = wait_stats(afp.ctx, lambda s: s["icmp_echo_replies"] >= n)
    assert st["icmp_echo_replies"] == n


# ---------------------------------------------------------------- (e) 1,000 short connections


def test_thousand_short_connections(afp: Rig) -> None:
    before = kernel_tcp_counters(afp.client)
    start = afp.ctx.stats()
    assert pools_back(start), start
    with afp.serve() as srv:
        results = {}
        for port, mode in ((ECHO, "echo"), (ONCE, "once")):
            results[mode] = echo_app.short_connections(
                (afp.ip, port), 500, threads=4, mode=mode, enter=afp.client.entered, timeout=120
            )
        report = srv.stop()
    for mode, r in results.items():
        assert r.errors == [], f"{mode}: {len(r.errors)} errors, first {r.errors[:3]}"
        assert r.ok == 500
    assert report.accepted == 1000 and report.errors == [] and report.resets == 0
    st = wait_stats(afp.ctx, pools_back)
    assert st["conn_passive_opens"] == 1000
    assert st["rst_tx"] == 0 and st["rst_rx"] == 0
    after = kernel_tcp_counters(afp.client)
    assert after["OutRsts"] == before["OutRsts"]
    assert after["EstabResets"] == before["EstabResets"]
    assert after["AttemptFails"] == before["AttemptFails"]


# ---------------------------------------------------------------- (f) closed port


def test_closed_port_gets_rst(afp: Rig) -> None:
    before = afp.ctx.stats()
    with afp.client.entered(), pytest.raises(ConnectionRefusedError):
        socket.create_connection((afp.ip, 9), timeout=5)
    st = wait_stats(afp.ctx, lambda s: s["rst_tx"] > before["rst_tx"])
    assert st["drop_tcp_no_socket"] == before["drop_tcp_no_socket"] + 1
    assert st["rst_tx"] == before["rst_tx"] + 1
    assert st["conn_passive_opens"] == 0 and pools_back(st)


# ---------------------------------------------------------------- (g) graceful closes


@pytest.mark.parametrize("who_closes", ["kernel_first", "core_first"])
def test_graceful_close_has_no_rst(afp: Rig, who_closes: str) -> None:
    """kernel_first: the client reads the echo and closes, the core does the passive close
    (CLOSE_WAIT, LAST_ACK); core_first: the core answers and closes (FIN_WAIT, TIME_WAIT),
    the client reads to EOF. Neither side may see or send a RST."""
    before = kernel_tcp_counters(afp.client)
    port, mode = (ECHO, "echo") if who_closes == "kernel_first" else (ONCE, "once")
    with afp.serve() as srv:
        r = echo_app.short_connections(
            (afp.ip, port), 20, threads=1, mode=mode, enter=afp.client.entered
        )
        report = srv.stop()
    assert r.errors == [] and r.ok == 20
    assert report.resets == 0 and report.closed == 20
    st = wait_stats(afp.ctx, pools_back)
    assert st["rst_tx"] == 0 and st["rst_rx"] == 0
    assert st["conn_passive_opens"] == 20
    after = kernel_tcp_counters(afp.client)
    assert after["OutRsts"] == before["OutRsts"]
    assert after["EstabResets"] == before["EstabResets"]


def test_new_syn_on_a_time_wait_tuple_is_accepted(netlab: netns.Lab) -> None:
    """The core closes first (``once``) and holds TIME_WAIT (2 s here); the client comes
    back from the same source port, with a higher ISN and newer timestamps."""
    request = b"again\n"
    for rig in make_afpacket_rig(netlab, time_wait_ms=2000):
        with rig.serve():
            for i in range(2):  # both succeed either way; the second one meets TIME_WAIT
                deadline = time.monotonic() + 2.0
                while True:  # until the client's own LAST_ACK of the first one is over
                    try:
                        rig.client.call(
                            echo_app.one_request, (rig.ip, ONCE), request, request, "once",
                            source_port=40000,
                        )  # fmt: skip
                        break
                    except OSError as exc:
                        if exc.errno != errno.EADDRNOTAVAIL or time.monotonic() > deadline:
                            raise
                        time.sleep(0.01)
                if i == 0:
                    wait_stats(rig.ctx, lambda s: s["state_time_wait"] == 1)
        st = wait_stats(rig.ctx, lambda s: s["conn_passive_opens"] == 2)
        assert st["rst_rx"] == 0 and st["drop_tcp_out_of_window"] == 0


# ---------------------------------------------------------------- (h) partial checksums


@pytest.mark.parametrize("afpacket_rx", ["ring", "copy"])
@pytest.mark.parametrize("tx_offload", [True, False], ids=["offload_on", "offload_off"])
def test_partial_checksums(netlab: netns.Lab, tx_offload: bool, afpacket_rx: str) -> None:
    """With TX checksum offload on (veth's default) the kernel's frames carry partial
    checksums (TP_STATUS_CSUMNOTREADY): the core must take them; with it off, none do."""
    if not tx_offload and shutil.which("ethtool") is None:
        pytest.skip("needs ethtool")
    for rig in make_afpacket_rig(netlab, tx_offload=tx_offload, afpacket_rx=afpacket_rx):
        with rig.serve():
            echo_sizes(rig, [100, 100_000])
        st = wait_stats(rig.ctx, pools_back)
        assert st["drop_tcp_checksum"] == 0 and st["drop_ip_checksum"] == 0
        if tx_offload:
            assert st["rx_csum_partial"] > 0
        else:
            assert st["rx_csum_partial"] == 0


# ---------------------------------------------------------------- idle


def test_idle_afpacket_context_uses_no_cpu(afp: Rig) -> None:
    (tid,) = echo_app.find_threads("mtcp-core0")
    with afp.serve():  # a listening responder, but no traffic
        t0, w0 = echo_app.cpu_seconds(tid=tid), time.monotonic()
        threading.Event().wait(1.5)  # the measurement interval itself
        used, wall = echo_app.cpu_seconds(tid=tid) - t0, time.monotonic() - w0
    assert used < 0.05 * wall, f"idle mTCP thread used {used:.3f}s CPU in {wall:.2f}s"


@pytest.mark.parametrize("afpacket_rx", ["ring", "copy"])
def test_interface_down_and_up_leaves_the_idle_loop_asleep(
    netlab: netns.Lab, afpacket_rx: str
) -> None:
    """An interface that goes down leaves an error on the stack's packet sockets (ENETDOWN).
    One that nothing reads (the ARP ring's socket) kept the device's poll readable, so the
    idle mTCP thread ran round after round with nothing to do, also after the interface
    came back up. Counted in rounds (the idle thread runs about one a second), not time.
    Then the stack still answers."""
    client, server = netlab.namespace("client"), netlab.namespace("server")
    link = netlab.veth(client, server, address_b=False)
    stack = server.call(
        mtcp_core.Stack, "afpacket", str(link.addr_b), iface=link.if_b, afpacket_rx=afpacket_rx
    )
    try:
        ctx = stack.context(0)
        server.ip("link", "set", link.if_b, "down")
        threading.Event().wait(0.3)
        server.ip("link", "set", link.if_b, "up")
        threading.Event().wait(0.5)  # errors already left get read by now
        before = ctx.stats()["rounds"]
        threading.Event().wait(1.0)
        rounds = ctx.stats()["rounds"] - before
        assert rounds < 50, f"{rounds} rounds in 1 s on an idle stack after down/up"
        client.ping(str(link.addr_b.ip), timeout=5.0)
    finally:
        stack.close()
