"""``/healthz`` on the management address: workers up and every core's mTCP thread running
(its stats block's heartbeat), 503 otherwise; and ``python -m appliance.healthcheck``, the
container's health check, which asks it."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import mtcp_core
from appliance import healthcheck
from appliance.metrics import health
from appliance.metrics.source import ApplianceView, CoreView
from appliance.testing import Appliance
from mtcp_core.testing import netns


def _view(*cores: CoreView, stack: str = "mtcp", draining: bool = False) -> ApplianceView:
    return ApplianceView(
        stack=stack,
        backend="afpacket" if stack == "mtcp" else None,
        version="0",
        serve_url="http://198.18.0.2:80/",
        cores=list(cores),
        draining=draining,
    )


def test_healthy_when_every_worker_runs_and_every_mtcp_thread_published_lately() -> None:
    doc = health.evaluate(
        _view(CoreView(0, pid=10, heartbeat_age_s=0.2), CoreView(1, pid=11, heartbeat_age_s=0.9))
    )
    assert doc["healthy"] and doc["status"] == "ok" and doc["problems"] == []
    assert [c["mtcp_thread"] for c in doc["cores"]] == ["ok", "ok"]
    assert [c["worker"] for c in doc["cores"]] == ["up", "up"]


@pytest.mark.parametrize(
    ("core", "problem", "thread"),
    [
        (CoreView(1, pid=None), "core 1: worker down", "down"),
        (CoreView(1, pid=11, heartbeat_age_s=None), "core 1: mTCP thread has not", "no heartbeat"),
        (CoreView(1, pid=11, heartbeat_age_s=6.5), "core 1: mTCP thread silent for 6.5s", "stale"),
    ],
)
def test_unhealthy_names_the_core_and_why(core: CoreView, problem: str, thread: str) -> None:
    doc = health.evaluate(_view(CoreView(0, pid=10, heartbeat_age_s=0.1), core))
    assert not doc["healthy"] and doc["status"] == "fail"
    assert len(doc["problems"]) == 1 and doc["problems"][0].startswith(problem)
    assert doc["cores"][1]["mtcp_thread"] == thread


def test_linux_stack_has_no_mtcp_thread_and_draining_is_unhealthy() -> None:
    doc = health.evaluate(_view(CoreView(0, pid=10), stack="linux"))
    assert doc["healthy"] and "mtcp_thread" not in doc["cores"][0]
    assert health.evaluate(_view(CoreView(0, pid=10), stack="linux", draining=True))[
        "problems"
    ] == ["draining"]
    assert health.evaluate(_view(stack="linux"))["problems"] == ["no workers"]


@pytest.fixture
def stats_template() -> Iterator[str]:
    template = f"/dev/shm/mtcp-test-hz-{secrets.token_hex(4)}-%u"
    yield template
    Path(template.replace("%u", "0")).unlink(missing_ok=True)


def test_heartbeat_of_a_running_core_is_fresh_and_grows_once_it_stops(
    stats_template: str, tmp_path: Path
) -> None:
    """A real stats block (pair backend, no privileges): the mTCP thread publishes at least
    once a second while idle, so its age stays small; after the core stops, it grows."""
    link = mtcp_core.PairLink()
    stack = mtcp_core.Stack(
        "pair", "198.18.0.2/24", pair=link, pair_side=0, stats_path=stats_template
    )
    path = stats_template.replace("%u", "0")
    try:
        assert health.heartbeat_age(path, os.getpid()) is None  # no thread yet
        stack.context(0)
        ages = []
        for _ in range(25):  # 2.5 s of an idle core
            time.sleep(0.1)
            age = health.heartbeat_age(path, os.getpid())
            assert age is not None
            ages.append(age)
        assert max(ages) < 2.0, ages
        assert health.heartbeat_age(path, os.getpid() + 1) is None  # another worker's block
    finally:
        stack.close()
        link.close()
    now = time.monotonic()
    stopped = health.heartbeat_age(path, os.getpid(), now=now + 10)
    assert stopped is not None and stopped >= 10
    not_a_block = tmp_path / "junk"
    not_a_block.write_bytes(b"x" * 64)
    assert health.heartbeat_age(str(not_a_block), os.getpid()) is None
    assert health.heartbeat_age(str(tmp_path / "missing"), os.getpid()) is None


def test_healthcheck_url_from_the_metrics_address() -> None:
    assert healthcheck.url_for("0.0.0.0:9100") == "http://127.0.0.1:9100/healthz"
    assert healthcheck.url_for("198.18.0.2:9200") == "http://198.18.0.2:9200/healthz"
    assert healthcheck.url_for("[::]:9100") == "http://[::1]:9100/healthz"
    assert healthcheck.main(["nonsense"]) == 2


def _healthcheck(ns: netns.Namespace, address: str) -> subprocess.CompletedProcess[str]:
    # the tests' interpreter; ns.run passes it the environment that finds the installed project
    return ns.run([sys.executable, "-m", "appliance.healthcheck", address], check=False)


@pytest.mark.requires_root
def test_healthz_follows_a_stopped_mtcp_thread_and_the_healthcheck_exits_by_it(
    netlab: netns.Lab, tmp_path: Path
) -> None:
    """The appliance on its default TAP: /healthz is 200 with every core's thread ok; a
    worker stopped with SIGSTOP (its mTCP thread too) turns it 503 within the heartbeat
    limit, naming the core, and the health check command exits 1; SIGCONT brings it back."""
    ns = netlab.namespace("healthz")
    with Appliance(ns, tmp_path / "appliance.log", ["--cores", "1"]) as app:
        address = f"{app.mhost}:{app.mport}"
        status, body = app.mgmt("/healthz")
        doc = json.loads(body)
        assert status == 200, doc
        assert doc["cores"][0]["worker"] == "up" and doc["cores"][0]["mtcp_thread"] == "ok"
        ok = _healthcheck(ns, address)
        assert ok.returncode == 0, ok.stderr
        assert json.loads(ok.stdout)["status"] == "ok"
        pid = app.worker_pids()[0]
        os.kill(pid, signal.SIGSTOP)
        try:
            deadline = time.monotonic() + health.HEARTBEAT_MAX_AGE_S + 5
            while time.monotonic() < deadline:
                status, body = app.mgmt("/healthz")
                if status == 503:
                    break
                time.sleep(0.25)
            doc = json.loads(body)
            assert status == 503, doc
            assert doc["cores"][0]["mtcp_thread"] == "stale"
            assert "core 0: mTCP thread silent" in doc["problems"][0]
            bad = _healthcheck(ns, address)
            assert bad.returncode == 1 and json.loads(bad.stdout)["status"] == "fail"
        finally:
            os.kill(pid, signal.SIGCONT)
        deadline = time.monotonic() + 5
        while app.mgmt("/healthz")[0] != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert app.mgmt("/healthz")[0] == 200
        assert app.get("/")[0] == 200
        assert app.stop() == 0
