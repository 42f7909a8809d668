"""Two workers on one afpacket interface: the fanout program sends each flow to one core.

The stack (cores=2) is created in the server namespace by the test process, which then forks
one worker process per core (as the appliance's supervisor does); each worker starts its
core's context and runs the echo_app responder, recording the peer of every connection it
accepts. A kernel client makes many connections; every flow must land on exactly one worker,
the one ``mtcp_core.flow_core`` predicts. Each worker also makes an active open to a kernel
server: the stack must pick a source port whose return traffic comes back to its own core.
The workers' shared stats blocks must tell their own core, pid and counters.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import secrets
import socket
import threading
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import mtcp_core
from mtcp_core.testing import echo_app, netns
from mtcp_core.testing.kernel import core_on_veth

pytestmark = pytest.mark.requires_root

CORES = 2
PORT = 7
CONNECTIONS = 200


def _worker(
    stack: mtcp_core.Stack,
    core: int,
    results: Any,
    go: Any,
    ready: Any,
    stop: Any,
    kernel_server: tuple[str, int],
) -> None:
    """One worker process: its core's context, an active open, then the responder."""
    try:
        ctx = stack.context(core)
        if not go.wait(20):
            raise TimeoutError("no go from the test")
        payload = os.urandom(50_000 + core)
        ex = echo_app.mtcp_client(ctx, kernel_server, payload, until="echo")
        active = {"local": ex.local, "ok": ex.data == payload}
        report = echo_app.serve(
            echo_app.MtcpNet(ctx),
            {PORT: "echo"},
            stop=stop,
            duration=120,
            ready=ready.set,
            record_peers=True,
        )
        st = ctx.stats()
        ctx.close()
        results.put(
            {
                "core": core,
                "pid": os.getpid(),
                "peers": report.peers,
                "errors": report.errors,
                "resets": report.resets,
                "active": active,
                "passive_opens": st["conn_passive_opens"],
                "active_opens": st["conn_active_opens"],
            }
        )
    except BaseException:  # noqa: BLE001 - reported to the test
        results.put({"core": core, "error": traceback.format_exc()})
        ready.set()


@pytest.fixture
def stats_path() -> Iterator[str]:
    template = f"/dev/shm/mtcp-test-{secrets.token_hex(4)}-%u"
    yield template
    for core in range(CORES):
        Path(template.replace("%u", str(core))).unlink(missing_ok=True)


@pytest.mark.parametrize("afpacket_rx", ["ring", "copy"])
@pytest.mark.parametrize("ports", ["explicit", "kernel_chosen"])
def test_flows_spread_over_two_workers(
    netlab: netns.Lab, stats_path: str, ports: str, afpacket_rx: str
) -> None:
    # "explicit": the client binds source ports 20000.. (both parities); "kernel_chosen":
    # the client's kernel picks them, as any Linux client would
    source_ports = list(range(20000, 20000 + CONNECTIONS)) if ports == "explicit" else None
    client, _server, link, stack = core_on_veth(
        netlab, "client", "server", cores=CORES, time_wait_ms=100, stats_path=stats_path,
        afpacket_rx=afpacket_rx,
    )  # fmt: skip
    client_ip, ip = str(link.addr_a.ip), str(link.addr_b.ip)
    mp = multiprocessing.get_context("fork")
    results = mp.Queue()
    go, stop = mp.Event(), mp.Event()
    readies = [mp.Event() for _ in range(CORES)]
    with client.entered():
        listener = socket.create_server((client_ip, 0))
    kernel_server = (client_ip, listener.getsockname()[1])
    procs = [
        mp.Process(
            target=_worker,
            args=(stack, core, results, go, readies[core], stop, kernel_server),
            name=f"worker-{core}",
        )
        for core in range(CORES)
    ]
    # Fork before this process starts threads of its own.
    for p in procs:
        p.start()
    kstop = threading.Event()
    kaccepted: list[tuple[str, int]] = []
    kthread = echo_app.kernel_echo_server(listener, kstop, kaccepted)
    out: list[dict[str, Any]] = []
    try:
        go.set()
        for r in readies:
            assert r.wait(30), "a worker did not get ready"
        clients = echo_app.short_connections(
            (ip, PORT),
            CONNECTIONS,
            threads=4,
            mode="echo",
            enter=client.entered,
            timeout=120,
            source_ports=source_ports,
        )
        stop.set()
        for _ in range(CORES):
            try:
                out.append(results.get(timeout=30))
            except queue.Empty:
                break
    finally:
        stop.set()
        go.set()
        for p in procs:
            p.join(20)
            if p.is_alive():
                p.kill()
                p.join()
        kstop.set()
        listener.close()
        kthread.join(10)
        stack.close()

    errors = [r["error"] for r in out if "error" in r]
    assert errors == []
    assert sorted(r["core"] for r in out) == list(range(CORES))
    assert [p.exitcode for p in procs] == [0] * CORES

    # every kernel connection worked and was handled by exactly one worker
    assert clients.errors == [] and clients.ok == CONNECTIONS
    sent = {(client_ip, port) for port in clients.local_ports}
    assert len(sent) == CONNECTIONS
    by_core = {r["core"]: r for r in out}
    seen: list[tuple[str, int]] = []
    for core, r in by_core.items():
        peers = [tuple(p) for p in r["peers"]]
        assert r["errors"] == [] and r["resets"] == 0
        assert peers, f"worker {core} got no connection"
        for peer_ip, peer_port in peers:
            assert mtcp_core.flow_core(peer_ip, ip, peer_port, PORT, CORES) == core
        assert r["passive_opens"] == len(peers)
        seen += peers
    assert len(seen) == len(set(seen)) == CONNECTIONS
    assert set(seen) == sent

    # each worker's active open came back to its own core
    assert len(kaccepted) == CORES
    for core, r in by_core.items():
        (lip, lport) = r["active"]["local"]
        assert r["active"]["ok"], f"worker {core}: active open echo differs"
        assert r["active_opens"] == 1
        assert lip == ip
        assert mtcp_core.flow_core(ip, client_ip, lport, kernel_server[1], CORES) == core
    assert sorted(p for _, p in kaccepted) == sorted(r["active"]["local"][1] for r in out)

    # the stats blocks the workers left: own core, own pid, own counters
    for core, r in by_core.items():
        block = mtcp_core.read_stats_file(stats_path.replace("%u", str(core)))
        assert block["core"] == core
        assert block["pid"] == r["pid"] != os.getpid()
        assert block["counters"]["conn_passive_opens"] == r["passive_opens"]
        assert block["counters"]["rx_packets"] > 0


def _restartable_worker(stack: mtcp_core.Stack, ready: Any, stop: Any) -> None:
    """A worker that serves echo until told to stop (or killed)."""
    try:
        ctx = stack.context(0)
        echo_app.serve(
            echo_app.MtcpNet(ctx), {PORT: "echo"}, stop=stop, duration=60, ready=ready.set
        )
    finally:
        os._exit(0)


@pytest.mark.parametrize("afpacket_rx", ["ring", "copy"])
def test_a_worker_killed_and_started_again_resumes_on_the_same_rings(
    netlab: netns.Lab, afpacket_rx: str
) -> None:
    """The supervisor keeps the AF_PACKET sockets (and so their rings) while a worker dies
    and restarts: the new worker must pick up where the kernel is, in both rings."""
    client, _server, link, stack = core_on_veth(
        netlab, "client", "server", afpacket_rx=afpacket_rx
    )
    ip = str(link.addr_b.ip)
    mp = multiprocessing.get_context("fork")
    try:
        for generation in range(3):
            ready, stop = mp.Event(), mp.Event()
            proc = mp.Process(target=_restartable_worker, args=(stack, ready, stop))
            proc.start()
            try:
                assert ready.wait(20), f"worker {generation} never listened"
                for i in range(20):  # enough traffic to move both rings' positions
                    msg = f"generation {generation} request {i}".encode()
                    got = client.call(echo_app.echo_exchange, (ip, PORT), msg)
                    assert got == msg
            finally:
                proc.kill()  # kill -9: no cleanup in the worker
                proc.join(10)
    finally:
        stack.close()
