"""The per-core stats block in shared memory, read by another process; and an idle core that
uses no CPU. Both on the pair backend: no privileges needed."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import mtcp_core
from mtcp_core.testing import echo_app, netns

SERVER, CLIENT = "198.18.0.2/24", "198.18.0.1/24"
PORT = 7
READER = "import json, sys, mtcp_core\nprint(json.dumps(mtcp_core.read_stats_file(sys.argv[1])))\n"


@pytest.fixture
def stats_template() -> Iterator[str]:
    template = f"/dev/shm/mtcp-test-{secrets.token_hex(4)}-%u"
    yield template
    Path(template.replace("%u", "0")).unlink(missing_ok=True)


def read_in_another_process(path: str, cwd: Path) -> dict[str, object]:
    # cwd away from the repository root, whose mtcp_core/ folder has no _native
    argv = [sys.executable, "-c", READER, path]
    proc = subprocess.run(
        argv, capture_output=True, text=True, timeout=30, cwd=cwd, check=True,
        env=netns.child_env(argv),
    )  # fmt: skip
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def test_stats_block_is_read_by_another_process(stats_template: str, tmp_path: Path) -> None:
    link = mtcp_core.PairLink()
    server = mtcp_core.Stack("pair", SERVER, pair=link, pair_side=0, stats_path=stats_template)
    client = mtcp_core.Stack("pair", CLIENT, pair=link, pair_side=1, time_wait_ms=50)
    path = stats_template.replace("%u", "0")
    try:
        sctx = server.context(0)
        cctx = client.context(0)
        assert Path(path).exists()
        thread, stop, result = echo_app.serve_in_thread(
            lambda: echo_app.MtcpNet(sctx), {PORT: "echo"}
        )
        n = 5
        try:
            for i in range(n):
                payload = os.urandom(1000 * (i + 1))
                ex = echo_app.mtcp_client(cctx, ("198.18.0.2", PORT), payload, until="echo")
                assert ex.data == payload
        finally:
            report = echo_app.stop_server(thread, stop, result)
        assert report.accepted == n
        # the block is published once per round: wait for the round that counted the last
        deadline = time.monotonic() + 10
        while sctx.stats()["conn_passive_opens"] < n and time.monotonic() < deadline:
            time.sleep(0.01)
        mine = sctx.stats()

        block = read_in_another_process(path, tmp_path)
        assert block["core"] == 0
        assert block["pid"] == os.getpid()
        counters = block["counters"]
        assert isinstance(counters, dict)
        assert set(counters) == set(mtcp_core.stat_names())
        assert counters["rx_packets"] > 0 and counters["tx_packets"] > 0
        assert counters["conn_passive_opens"] == mine["conn_passive_opens"] == n
        assert counters["conn_active_opens"] == 0
        assert counters["pool_tcb_total"] == mine["pool_tcb_total"] > 0
        assert counters["rx_packets"] <= sctx.stats()["rx_packets"]
    finally:
        client.close()
        server.close()
        link.close()
    # the block outlives the process's stack: a supervisor still reads a dead worker's
    assert read_in_another_process(path, tmp_path)["counters"]["conn_passive_opens"] == n


def test_stats_file_that_is_not_a_block_is_refused(tmp_path: Path) -> None:
    bogus = tmp_path / "not-a-block"
    bogus.write_bytes(b"\0" * 4096)
    with pytest.raises(OSError):
        mtcp_core.read_stats_file(str(bogus))
    with pytest.raises(OSError):
        mtcp_core.read_stats_file(str(tmp_path / "missing"))


def test_idle_context_uses_no_cpu() -> None:
    """An idle core blocks on the device and its eventfd: its mTCP thread uses ~0 CPU."""
    link = mtcp_core.PairLink()
    stack = mtcp_core.Stack("pair", SERVER, pair=link, pair_side=0)
    try:
        before = echo_app.find_threads("mtcp-core0")
        ctx = stack.context(0)
        new = echo_app.find_threads("mtcp-core0") - before
        assert len(new) == 1, "no new mtcp-core0 thread"
        (tid,) = new
        lsock = ctx.socket()
        lsock.bind(("0.0.0.0", PORT))
        lsock.listen(16)
        rounds0 = ctx.stats()["rounds"]
        cpu0, wall0 = echo_app.cpu_seconds(tid=tid), time.monotonic()
        threading.Event().wait(1.5)  # the measured interval: nothing happens in it
        cpu, wall = echo_app.cpu_seconds(tid=tid) - cpu0, time.monotonic() - wall0
        rounds = ctx.stats()["rounds"] - rounds0
    finally:
        stack.close()
        link.close()
    assert cpu < 0.05 * wall, f"idle mTCP thread used {cpu:.3f}s of CPU in {wall:.2f}s"
    # it sleeps until the next timer (at most 1 s): a handful of rounds, not a spin
    assert rounds < 50, f"{rounds} rounds in {wall:.2f}s while idle"


def test_tcp_states_come_from_the_core() -> None:
    """mtcp_core.TCP_STATES is derived from the stats block's state_* counters, whose order
    is the core's state numbering (MTCP_TCP_*, what tcp_info reports); the metrics' lists
    are derived from it, not copied."""
    from appliance.metrics import collector, status
    from mtcp_core._native import lib

    assert mtcp_core.TCP_STATES[:5] == ("CLOSED", "LISTEN", "SYN_SENT", "SYN_RECEIVED",
                                        "ESTABLISHED")  # fmt: skip
    assert len(mtcp_core.TCP_STATES) == 11
    for number, name in enumerate(mtcp_core.TCP_STATES):
        assert getattr(lib, f"MTCP_TCP_{name}") == number
    assert collector._STATES == tuple(s.lower() for s in mtcp_core.TCP_STATES)
    assert "closed" not in status.STATES and "listen" not in status.STATES
    assert len(status.STATES) == 9
