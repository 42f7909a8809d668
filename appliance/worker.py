"""One worker process per core: the per-core loop, apart from the supervisor (uvicorn style).

The supervisor forks a worker with everything it needs in a ``WorkerSpec``; ``run`` is the
worker's whole life and never returns. In the worker:

- the process is pinned to its CPU (``os.sched_setaffinity``), so both of its threads are;
- ``--stack mtcp``: ``stack.context(core, cpu)`` starts the core's **mTCP thread** (native,
  never holds the GIL) and this process's main thread is the **app thread** that runs
  ``serve_mtcp``; ``--stack linux``: the main thread runs ``serve_linux`` on a
  ``SO_REUSEPORT`` socket of the port that every worker shares;
- every finished request is counted in the core's HTTP block (``on_request``), in shared
  memory that the supervisor reads;
- SIGTERM drains: stop accepting, finish what is in flight (at most ``drain_timeout``
  seconds), wait until the stack has sent what the server handed it, exit 0. SIGINT is
  ignored (a terminal's Ctrl-C reaches the supervisor, which drains every worker). SIGHUP
  reloads: the server drains and a new one starts on the same core with an empty cache and
  a reopened access log; the core's TCP state and pinned threads stay.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import os
import signal
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Any, NoReturn

import mtcp_core
from appliance import logs
from appliance.config import Config
from appliance.logs import log
from appliance.metrics.http_block import HttpBlock

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_STARTUP = 3  # could not start: the supervisor gives up instead of restarting

READY_TIMEOUT_S = 30.0
FLUSH_TIMEOUT_S = 5.0
_PR_SET_PDEATHSIG = 1
# states in which a connection may still have data of ours to deliver or a FIN to send
_BUSY_STATES = ("syn_received", "established", "close_wait", "fin_wait_1", "closing", "last_ack")


@dataclass
class WorkerSpec:
    core: int
    cpu: int
    config: Config
    site: Any  # appliance.http.server.SiteConfig
    http_block: HttpBlock
    ready_fd: int  # write end of a pipe: one byte once the worker serves
    stack: mtcp_core.Stack | None = None
    stats_path: str | None = None  # this core's stack stats block
    close_fds: tuple[int, ...] = ()  # the supervisor's descriptors, closed in the child
    restart: int = 0  # how many workers this core had before this one
    supervisor_pid: int = 0  # the parent; 0: unknown (then a parent of pid 1 means it died)
    tls_block: Any = None  # appliance.metrics.tls_block.TlsBlock, with HTTPS
    ticket_keys: str | None = None  # the supervisor's session-ticket key file


class _State:
    def __init__(self, drain_timeout: float) -> None:
        self.stop = threading.Event()
        self.draining = threading.Event()
        self.terminating = False
        self.reload = False
        self.drain_timeout = drain_timeout
        self.drain_deadline = float("inf")
        self.tls: Any = None  # the worker's TlsServer: reloads its certificates on SIGHUP

    def on_term(self, signum: int, _frame: Any) -> None:
        if self.terminating:
            return
        self.terminating = True
        self.drain_deadline = time.monotonic() + self.drain_timeout
        log.info(
            "draining (signal %s): no new connections, finishing in-flight requests",
            signal.Signals(signum).name,
        )
        self.draining.set()
        timer = threading.Timer(self.drain_timeout, self._drain_timed_out)
        timer.daemon = True
        timer.start()

    def _drain_timed_out(self) -> None:
        if not self.stop.is_set():
            log.warning("drain timeout (%.1fs): closing what is left", self.drain_timeout)
            self.stop.set()

    def on_hup(self, _signum: int, _frame: Any) -> None:
        if not self.terminating:
            self.reload = True
            self.draining.set()
            if self.tls is not None:
                self.tls.request_reload()


def run(spec: WorkerSpec) -> NoReturn:
    """The worker's life, in the forked child; ends the process with its exit status."""
    code = EXIT_FAILED
    try:
        code = _main(spec)
    except BaseException as exc:  # noqa: BLE001 - everything ends up in the exit status
        if isinstance(exc, SystemExit) and isinstance(exc.code, int):
            code = exc.code
        else:
            log.error("worker failed: %s", "".join(traceback.format_exception(exc)).strip())
    finally:
        with contextlib.suppress(Exception):
            logs.log.handlers[0].flush()
        os._exit(code)


def _parent_death_signal(sig: int) -> None:
    """Asks the kernel to send ``sig`` to this process when the supervisor dies."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)


def _main(spec: WorkerSpec) -> int:
    logs.set_core(spec.core)
    logs.setup()
    for fd in spec.close_fds:
        with contextlib.suppress(OSError):
            os.close(fd)
    state = _State(spec.config.drain_timeout)
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, state.on_term)
    signal.signal(signal.SIGHUP, state.on_hup)
    _parent_death_signal(signal.SIGTERM)
    parent = os.getppid()
    orphaned = parent != spec.supervisor_pid if spec.supervisor_pid else parent == 1
    if orphaned:  # the supervisor died before the line above (in a container it is pid 1)
        return EXIT_FAILED
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, {spec.cpu})
    spec.http_block.claim(os.getpid())
    from appliance.http.server import serve_linux, serve_mtcp

    cfg = spec.config
    tls = _tls_server(spec)
    state.tls = tls
    started = log.info if spec.restart else log.debug  # the first start is quiet
    if cfg.stack == "mtcp":
        assert spec.stack is not None
        try:
            ctx = spec.stack.context(spec.core, cpu=spec.cpu)
        except OSError as exc:
            log.error("cannot start the core's mTCP thread: %s", exc)
            return EXIT_STARTUP
        started("worker started on cpu %d (mTCP thread and app thread)", spec.cpu)
        threading.Thread(target=_trim_memory, args=(state.stop,), daemon=True, name="trim").start()
        ready = threading.Event()
        threading.Thread(
            target=_signal_ready, args=(spec.ready_fd, ready), daemon=True, name="ready"
        ).start()
        try:
            _serve_loop(
                spec,
                state,
                lambda site, draining: serve_mtcp(
                    ctx, site, cfg.port, state.stop, spec.http_block.record, draining,
                    ready=ready, tls=tls, responder=cfg.responder,
                    hit_slots=spec.http_block.hits_address(),
                ),
            )  # fmt: skip
            log.info("server stopped; waiting for the stack to send what it was handed")
            _wait_flushed(ctx, state)
        finally:
            ctx.close()  # also flushes and closes this worker's pcap capture
    else:
        ready = threading.Event()
        threading.Thread(
            target=_signal_ready, args=(spec.ready_fd, ready), daemon=True, name="ready"
        ).start()
        started("worker started on cpu %d (kernel stack, SO_REUSEPORT)", spec.cpu)
        _serve_loop(
            spec,
            state,
            lambda site, draining: serve_linux(
                cfg.host,
                cfg.port,
                site,
                state.stop,
                spec.http_block.record,
                draining,
                reuse_port=True,
                ready=ready,
                tls=tls,
                core=spec.core,
            ),
        )
    log.info("worker stopped")
    return EXIT_OK


def _tls_server(spec: WorkerSpec) -> Any:
    """The worker's TlsServer (HTTPS configured), counting in the core's TLS block."""
    cfg = spec.config
    if cfg.tls_port is None:
        return None
    from pathlib import Path

    from appliance.http.tls import CertPair, TlsServer, TlsSettings

    if spec.tls_block is not None:
        spec.tls_block.claim(os.getpid())
    settings = TlsSettings(
        port=cfg.tls_port,
        default=CertPair(cfg.cert, cfg.key, cfg.ocsp_staple),  # type: ignore[arg-type]
        by_name=tuple((n, CertPair(c, k, st)) for n, c, k, st in cfg.sni),
        ticket_keys=Path(spec.ticket_keys) if spec.ticket_keys else None,
    )
    try:
        return TlsServer(settings, spec.tls_block)
    except ValueError as exc:  # CertError: the files changed since the config was checked
        log.error("HTTPS: %s", exc)
        raise SystemExit(EXIT_STARTUP) from None


TRIM_EVERY_S = 10.0


def _trim_memory(stop: threading.Event) -> None:
    """Gives the C heap's free memory back to the kernel now and then (glibc's malloc_trim):
    after thousands of connections close (an attack over), the interpreter's freed buffers
    would otherwise keep the worker's RSS at its peak (issue 15: RSS follows the open
    connections). The stack gives its own rings back itself (madvise)."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return  # not glibc
    trim.argtypes = [ctypes.c_size_t]
    while not stop.wait(TRIM_EVERY_S):
        trim(0)


def _serve_loop(spec: WorkerSpec, state: _State, serve: Any) -> None:
    """Runs the server; after a SIGHUP, runs a fresh one (empty cache, reopened log)."""
    site = spec.site
    for generation in range(1 << 30):
        serve(site, state.draining)
        if not state.reload or state.terminating or state.stop.is_set():
            return
        state.reload = False
        state.draining = threading.Event()
        # a new server: site rules compiled again (kept as they were when they fail)
        site = site.reload() if hasattr(site, "reload") else dataclasses.replace(site)
        log.info(
            "reloaded: new server (cache emptied, rules compiled, access log reopened), "
            "generation %d",
            generation + 1,
        )


def _write_ready(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.write(fd, b"r")
        os.close(fd)


def _signal_ready(fd: int, ready: threading.Event) -> None:
    if ready.wait(READY_TIMEOUT_S):
        _write_ready(fd)


def _wait_flushed(ctx: mtcp_core.Context, state: _State) -> None:
    """Keeps the mTCP thread running until the connections the server closed have sent all
    it handed them (destroying the context would reset them)."""
    deadline = min(
        time.monotonic() + FLUSH_TIMEOUT_S, max(state.drain_deadline, time.monotonic() + 1.0)
    )
    st: dict[str, int] = {}
    while time.monotonic() < deadline:
        st = ctx.stats()
        if sum(st.get(f"state_{s}", 0) for s in _BUSY_STATES) == 0:
            return
        time.sleep(0.02)
    busy = {s: st.get(f"state_{s}", 0) for s in _BUSY_STATES if st.get(f"state_{s}", 0)}
    log.warning("connections still open after the drain (%s): the stack resets them", busy)
