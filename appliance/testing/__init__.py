"""Support for the appliance tests (no tests here; installed, like ``mtcp_core.testing``):
``Appliance`` runs ``mtcp-appliance serve`` in a namespace of a ``netns.Lab`` and reads its
output, metrics and log; ``http_get`` fetches from inside a namespace; ``run_harness`` runs
a benchmark script to its end, ``run_quick`` its quick mode, and reads its results.
Submodules: ``tlsca`` (a test CA), ``browser`` (headless Chromium), ``metrics`` (dashboard
names, made-up views), ``httpserver`` (appliance.http in a thread), ``responder`` (the same
with the static responder on or off), ``http1`` (raw HTTP/1.1 messages, a test site's
files)."""

from __future__ import annotations

import http.client
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from mtcp_core.testing import netns

# the installed console script; run away from the checkout (whose folders would shadow
# the installed packages)
APPLIANCE = str(Path(sys.executable).parent / "mtcp-appliance")
START_TIMEOUT_S = 30.0

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse_scrape(text: str) -> Samples:
    """Every sample of a Prometheus text exposition: (name, sorted labels) -> value."""
    out: Samples = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples named ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, lab), v in samples.items() if n == name and want <= set(lab))


def http_get(
    ns: netns.Namespace, host: str, port: int, path: str = "/", timeout: float = 10.0
) -> tuple[int, bytes]:
    """GET from inside the namespace (a fresh connection, closed after the response)."""

    def get() -> tuple[int, bytes]:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
        try:
            conn.request("GET", path, headers={"Connection": "close"})
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    return ns.call(get)


def run_harness(argv: list[str], timeout_s: float) -> str:
    """Runs a benchmark script (which makes its own namespaces and servers) to its end and
    returns its stdout. Past ``timeout_s`` it gets SIGTERM (a harness stops its servers and
    removes its namespaces on it) and the test fails; a non-zero exit fails it too, either
    with the end of the script's output."""
    # under scripts/test-asan the appliance children need the sanitizer runtimes preloaded
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=netns.child_env(argv)
    )
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.terminate()
        out, err = proc.communicate(timeout=60)
        msg = f"{argv[1]} took over {timeout_s:g}s: {out[-2000:]}{err[-2000:]}"
        raise AssertionError(msg) from None
    assert proc.returncode == 0, out[-3000:] + err[-3000:]
    return out


def run_quick(script: Path, name: str, out: Path, timeout_s: float) -> tuple[Path, Any]:
    """``script --quick --out OUT`` (``run_harness``): the one results file it wrote,
    ``OUT/NAME-quick-*.json``, and its document; its Markdown report (``.md`` beside it)
    must start with the heading "# <script's name>"."""
    run_harness([sys.executable, str(script), "--quick", "--out", str(out)], timeout_s)
    (path,) = out.glob(f"{name}-quick-*.json")
    assert path.with_suffix(".md").read_text().startswith(f"# {script.stem}")
    return path, json.loads(path.read_text())


class Appliance:
    """``mtcp-appliance serve ARGS`` in namespace ``ns``; waits for the two lines that say
    where it serves and where its metrics are. The Lab stops it at teardown if it runs."""

    def __init__(
        self,
        ns: netns.Namespace,
        log_path: Path,
        args: Sequence[str] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        self.ns = ns
        self.log_path = log_path
        self._log = self.log_path.open("wb")
        argv = [APPLIANCE, "serve", *args]
        base = netns.child_env(argv) or dict(os.environ)
        base = {k: v for k, v in base.items() if not k.startswith("MTCP_APPLIANCE_")}
        self.proc: subprocess.Popen[bytes] = ns.popen(
            argv, stdout=subprocess.PIPE, stderr=self._log, cwd="/", env={**base, **(env or {})}
        )
        self.lines = self._read_lines(2, START_TIMEOUT_S)
        serving, metrics = self.lines
        self.serve_url = serving.split(" at ", 1)[1].split(" ", 1)[0]
        self.metrics_url = metrics.split(" at ", 1)[1].split(",", 1)[0]
        host_port = self.serve_url.split("//", 1)[1].rstrip("/")
        self.host, port = host_port.rsplit(":", 1)
        self.port = int(port)
        mhost_port = self.metrics_url.split("//", 1)[1].split("/", 1)[0]
        self.mhost, mport = mhost_port.rsplit(":", 1)
        self.mport = int(mport)

    def _read_lines(self, n: int, timeout: float) -> list[str]:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        buf = b""
        deadline = time.monotonic() + timeout
        while buf.count(b"\n") < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"appliance did not start: {buf!r}\n{self.log()}")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 4096)
                if not chunk:
                    raise RuntimeError(
                        f"appliance exited ({self.proc.wait()}): {buf!r}\n{self.log()}"
                    )
                buf += chunk
        return buf.decode().splitlines()[:n]

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def get(self, path: str = "/", timeout: float = 10.0) -> tuple[int, bytes]:
        return http_get(self.ns, self.host, self.port, path, timeout)

    def mgmt(self, path: str) -> tuple[int, bytes]:
        return http_get(self.ns, self.mhost, self.mport, path)

    def scrape(self) -> Samples:
        status, body = self.mgmt("/metrics")
        assert status == 200, body
        return parse_scrape(body.decode())

    def worker_pids(self) -> dict[int, int]:
        s = self.scrape()
        return {
            int(dict(lab)["core"]): int(v) for (n, lab), v in s.items() if n == "mtcp_worker_pid"
        }

    def wait_log(self, text: str, timeout: float = 10.0, count: int = 1) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            log = self.log()
            if log.count(text) >= count:
                return log
            time.sleep(0.05)
        raise TimeoutError(f"{text!r} not in the log ({count}x):\n{self.log()}")

    def send_signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            self.close()

    def close(self) -> None:
        if self.proc.poll() is None:  # a test that failed: drain briefly, then kill
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log.close()

    def __enter__(self) -> Appliance:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
