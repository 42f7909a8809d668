"""The supervisor: one process that starts a worker per core and keeps them running.

Apart from the per-core loop (``appliance.worker``), as uvicorn keeps its supervisor apart
from its server. It

- creates the mtcp_core ``Stack`` (every core's device, stats blocks in a per-run folder
  under /dev/shm) and the workers' HTTP blocks *before* it forks, so each worker inherits
  them and starts only its own core (``stack.context(core, cpu)``);
- forks one worker per core, pinned to one CPU each, and restarts a worker that dies, after
  a delay that doubles while it keeps dying young (0.1 s ... 10 s), logging each restart;
- on SIGTERM/SIGINT drains: every worker stops accepting, finishes its in-flight requests
  (at most ``drain_timeout``) and exits, then the supervisor exits 0; a second signal ends
  the workers at once;
- on SIGHUP reopens its log and has every worker reload (new server: empty site cache,
  reopened access log);
- serves the management address (Prometheus metrics and ``/server-status``) on the kernel's
  stack from threads of its own, reading every core's shared blocks; it folds the counters
  of a worker that died into the core's totals, so they keep growing across restarts.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import mtcp_core
from appliance import __version__, caps, logs, netfilter, worker
from appliance.config import Config, available_cpus
from appliance.logs import log
from appliance.metrics.health import heartbeat_age
from appliance.metrics.http_block import HttpBlock
from appliance.metrics.server import ManagementServer
from appliance.metrics.source import ApplianceView, CoreView, process_times

READY_TIMEOUT_S = 30.0
STABLE_AFTER_S = 10.0  # a worker that ran this long resets the restart delay
BACKOFF_FIRST_S = 0.1
BACKOFF_MAX_S = 10.0
KILL_GRACE_S = 5.0  # after drain_timeout, before SIGKILL

_STAT_NAMES = mtcp_core.stat_names()
_COUNTERS = [n for n in _STAT_NAMES if not mtcp_core.stat_is_gauge(n)]


class StartupError(Exception):
    """The appliance could not start; ``code`` is the exit status."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Slot:
    """One core: its worker, now and over its restarts."""

    core: int
    cpu: int
    http: HttpBlock
    stats_path: str | None
    pid: int | None = None
    started_at: float = 0.0  # time.time()
    started_mono: float = 0.0
    ready: bool = False
    ready_fd: int | None = None
    restarts: int = 0
    young_deaths: int = 0
    restart_at: float | None = None  # monotonic
    exit_status: int | None = None
    base: dict[str, int] = field(default_factory=dict)  # counters of workers that died
    tls: Any = None  # the core's TlsBlock (HTTPS configured)


def _describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(sig).name}"
        return f"killed by signal {sig}"
    return f"exit status {os.waitstatus_to_exitcode(status)}"


RUN_PREFIX = "mtcp-appliance-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _run_dir() -> Path:
    """A new folder for this run's shared blocks; removes the folders of earlier runs whose
    supervisor is gone (killed before it could clean up)."""
    base = Path("/dev/shm")
    if not (base.is_dir() and os.access(base, os.W_OK)):
        base = Path(tempfile.gettempdir())
    for old in base.glob(f"{RUN_PREFIX}*-*"):
        pid = old.name[len(RUN_PREFIX) :].split("-", 1)[0]
        with contextlib.suppress(OSError, ValueError):
            if old.is_dir() and old.stat().st_uid == os.getuid() and not _pid_alive(int(pid)):
                shutil.rmtree(old, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"{RUN_PREFIX}{os.getpid()}-", dir=base))


class Supervisor:
    """``run()`` serves until a signal stops it; returns the exit status."""

    def __init__(self, config: Config, out: TextIO | None = None) -> None:
        self.config = config
        self.out = out or sys.stdout
        self.slots: list[Slot] = []
        self.stack: mtcp_core.Stack | None = None
        self.mgmt: ManagementServer | None = None
        self.run_dir: Path | None = None
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = -1, -1
        self._signals: list[int] = []
        self._draining = False
        self._drain_deadline = 0.0
        self._started_at = time.time()
        self._site: Any = None
        self._guard: netfilter.Guard | None = None
        self._ticket_path: Path | None = None
        self._ticket_keys = b""
        self._ticket_rotated = 0.0

    # ----------------------------------------------------------------- MetricsSource

    def view(self) -> ApplianceView:
        cores: list[CoreView] = []
        with self._lock:
            slots = [(s, s.pid, s.restarts, s.started_at, dict(s.base)) for s in self.slots]
        for s, pid, restarts, started_at, base in slots:
            stack = self._stack_values(s, pid, base) if self.config.stack == "mtcp" else None
            times = process_times(pid) if pid is not None else None
            cores.append(
                CoreView(
                    core=s.core,
                    cpu=s.cpu,
                    pid=pid,
                    restarts=restarts,
                    started_at=started_at if pid is not None else None,
                    stack=stack,
                    http=s.http.read(),
                    cpu_seconds=times[0] if times else None,
                    rss_bytes=times[1] if times else None,
                    heartbeat_age_s=(
                        heartbeat_age(s.stats_path, pid)
                        if s.stats_path is not None and pid is not None
                        else None
                    ),
                )
            )
        return ApplianceView(
            stack=self.config.stack,
            backend=self.config.backend if self.config.stack == "mtcp" else None,
            version=__version__,
            serve_url=self.config.serve_url,
            cores=cores,
            supervisor_pid=os.getpid(),
            started_at=self._started_at,
            draining=self._draining,
        )

    def _stack_values(self, s: Slot, pid: int | None, base: dict[str, int]) -> dict[str, int]:
        block: dict[str, Any] | None = None
        if s.stats_path is not None and pid is not None:
            with contextlib.suppress(OSError):
                block = mtcp_core.read_stats_file(s.stats_path)
        live = block["counters"] if block and block["pid"] == pid else {}
        values = {name: base.get(name, 0) + live.get(name, 0) for name in _COUNTERS}
        for name in _STAT_NAMES:
            if name not in values and name in live:
                values[name] = live[name]
        return values

    # ----------------------------------------------------------------- life cycle

    def run(self) -> int:
        logs.set_format(self.config.event_log_format)
        logs.setup()
        try:
            self._start()
        except StartupError as exc:
            print(f"mtcp-appliance: {exc}", file=sys.stderr)
            self._cleanup()
            return exc.code
        try:
            return self._loop()
        finally:
            self._cleanup()

    def _start(self) -> None:
        cfg = self.config
        from appliance.config import ConfigError
        from appliance.sites import vhost_config  # the HTTP server, imported before the forks

        try:
            self._site = vhost_config(cfg)
        except ConfigError as exc:
            raise StartupError(f"config error: {exc}", 2) from None
        # what every worker imports, imported once here and inherited by the forks
        import appliance.http.loop  # noqa: F401
        import appliance.http.server  # noqa: F401

        if cfg.stack == "mtcp":
            import appliance.http.mtcp  # noqa: F401
        else:
            import appliance.http.linux  # noqa: F401
        if cfg.stack == "mtcp":
            missing = caps.missing_for(cfg.backend)
            if missing:
                raise StartupError(
                    f"the {cfg.backend} backend needs a capability that this process lacks\n"
                    + caps.suggestion(missing)
                )
        try:
            self.mgmt = ManagementServer(cfg.metrics_host, cfg.metrics_port, self)
        except OSError as exc:
            raise StartupError(
                f"metrics: cannot listen on {cfg.metrics_host}:{cfg.metrics_port}: "
                f"{exc.strerror or exc}"
            ) from None
        if cfg.stack == "linux":
            self._check_linux_port(cfg.port)
            if cfg.tls_port is not None:
                self._check_linux_port(cfg.tls_port)
        self.run_dir = _run_dir()
        cpus = available_cpus()
        for core in range(cfg.cores):
            stats = str(self.run_dir / f"stack-{core}") if cfg.stack == "mtcp" else None
            block = HttpBlock.create(self.run_dir / f"http-{core}", core)
            block.set_sites([vs.name for vs in self._site.sites])
            self.slots.append(Slot(core, cpus[core % len(cpus)], block, stats))
        if cfg.tls_port is not None:
            self._start_tls()
        if cfg.stack == "mtcp":
            self.stack = self._make_stack()
        if cfg.nft_guard:
            self._install_guard()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(sig, self._on_signal)
        for slot in self.slots:
            self._spawn(slot)
        self._wait_ready()
        assert self.mgmt is not None
        self.mgmt.start()
        self._announce()

    def _check_linux_port(self, port: int) -> None:
        cfg = self.config
        family = socket.AF_INET6 if ":" in cfg.host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            try:
                s.bind((cfg.host, port))
            except OSError as exc:
                hint = ""
                if exc.errno == errno.EACCES and port < 1024:
                    hint = " (ports below 1024 need CAP_NET_BIND_SERVICE: try --port 8080)"
                raise StartupError(
                    f"cannot listen on {cfg.host}:{port}: {exc.strerror}{hint}"
                ) from None

    # ----------------------------------------------------------------- HTTPS

    def _start_tls(self) -> None:
        """The workers' TLS blocks, the session-ticket keys they share (a file in the run
        folder, rotated by ``_rotate_ticket_keys``) and the TLS metrics."""
        from appliance.http.tls import new_ticket_keys, write_ticket_keys
        from appliance.metrics.tls_block import TlsBlock, TlsCollector

        assert self.run_dir is not None and self.mgmt is not None
        for s in self.slots:
            s.tls = TlsBlock.create(self.run_dir / f"tls-{s.core}", s.core)
        self._ticket_path = self.run_dir / "tls-ticket-keys"
        self._ticket_keys = new_ticket_keys()
        write_ticket_keys(self._ticket_path, self._ticket_keys)
        self._ticket_rotated = time.monotonic()
        self.mgmt.registry.register(
            TlsCollector(lambda: [s.tls for s in self.slots], self._certificate_expiry)
        )

    def _rotate_ticket_keys(self) -> None:
        from appliance.http.tls import TICKET_ROTATE_S, new_ticket_keys, write_ticket_keys

        if self._ticket_path is None or time.monotonic() - self._ticket_rotated < TICKET_ROTATE_S:
            return
        self._ticket_keys = new_ticket_keys(self._ticket_keys)
        try:
            write_ticket_keys(self._ticket_path, self._ticket_keys)
        except OSError as exc:
            log.warning("session ticket keys: cannot rotate: %s", exc)
            return
        self._ticket_rotated = time.monotonic()
        log.info("session ticket keys rotated (the workers pick them up within a second)")

    def _certificate_expiry(self) -> list[tuple[str, str, float]]:
        """(name, file, notAfter) for every configured certificate, read at each scrape."""
        from appliance.http.tls import CertError, cert_info

        cfg = self.config
        certs = [cfg.cert] + [c for _, c, _, _ in cfg.sni]
        out = []
        for path in certs:
            if path is None:
                continue
            try:
                info = cert_info(path)
            except CertError:
                continue
            out += [(name, str(path), info.not_after) for name in info.names]
        return out

    def _make_stack(self) -> mtcp_core.Stack:
        cfg = self.config
        assert self.run_dir is not None
        try:
            return mtcp_core.Stack(
                cfg.backend,
                cfg.ip,
                iface=cfg.iface,
                gateway=cfg.gateway,
                cores=cfg.cores,
                tap_host=cfg.tap_host if cfg.backend == "tap" else None,
                pcap=cfg.pcap,
                stats_path=str(self.run_dir / "stack-%u"),
                tx_priority=cfg.tx_priority,
                afpacket_rx=cfg.afpacket_rx,
                tx_rate_mbps=cfg.tx_rate_mbps,
                sndbuf=cfg.sndbuf,
                mem_budget=cfg.mem_budget_mb << 20,
                max_conns_per_source=cfg.max_conns_per_source,
                shared_addr=cfg.nft_guard,
                congestion=cfg.congestion,
                busy_poll_us=cfg.busy_poll_us,
            )
        except ValueError as exc:
            raise StartupError(str(exc), 2) from None
        except OSError as exc:
            msg = f"cannot start the {cfg.backend} backend: {exc}"
            if exc.errno in (errno.EPERM, errno.EACCES):
                need = caps.NEEDED[cfg.backend]
                msg += "\n" + caps.suggestion(f"{caps.NAMES[need[0]]} ({need[1]})")
            raise StartupError(msg) from None

    def _install_guard(self) -> None:
        """nft_guard: the kernel leaves the served port on the interface to the stack."""
        cfg = self.config
        assert cfg.iface is not None
        try:
            self._guard = netfilter.install(netfilter.Guard(cfg.iface, cfg.host, cfg.port))
        except (netfilter.NetfilterError, ValueError, OSError) as exc:
            raise StartupError(f"nft_guard: {exc}") from None
        log.info(
            "nftables: the kernel drops TCP to %s:%d on %s (table %s)",
            cfg.host,
            cfg.port,
            cfg.iface,
            netfilter.table_name(cfg.iface),
        )

    def _announce(self) -> None:
        cfg = self.config
        assert self.mgmt is not None
        if cfg.stack == "mtcp":
            where = f"{cfg.backend} {cfg.iface}"
            if cfg.backend == "tap":
                where += f", host side {cfg.tap_host}"
        else:
            where = "SO_REUSEPORT"
        print(
            f"serving {cfg.root} at {cfg.serve_url} (stack {cfg.stack}, {where}, "
            f"{cfg.cores} {'core' if cfg.cores == 1 else 'cores'})",
            file=self.out,
            flush=True,
        )
        print(
            f"metrics at {self.mgmt.url}/metrics, status at {self.mgmt.url}/server-status",
            file=self.out,
            flush=True,
        )
        if cfg.tls_url is not None:  # third, after the two lines every run prints
            extra = ", plain HTTP redirected there" if cfg.redirect_http else ""
            print(f"HTTPS at {cfg.tls_url} (TLS 1.3/1.2{extra})", file=self.out, flush=True)
        log.info("serving at %s, management at %s", cfg.serve_url, self.mgmt.url)
        if cfg.tls_url is not None:
            log.info("HTTPS at %s", cfg.tls_url)

    # ----------------------------------------------------------------- workers

    def _spawn(self, slot: Slot) -> None:
        cfg = self.config
        r, w = os.pipe2(os.O_CLOEXEC)
        close = [self._wake_r, self._wake_w, r]
        if self.mgmt is not None:
            close.append(self.mgmt.socket.fileno())
        close += [s.ready_fd for s in self.slots if s.ready_fd is not None]
        spec = worker.WorkerSpec(
            core=slot.core,
            cpu=slot.cpu,
            config=cfg,
            site=self._site,
            http_block=slot.http,
            ready_fd=w,
            stack=self.stack,
            stats_path=slot.stats_path,
            tls_block=slot.tls,
            ticket_keys=str(self._ticket_path) if self._ticket_path else None,
            close_fds=tuple(close),
            restart=slot.restarts,
            supervisor_pid=os.getpid(),
        )
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the worker
            worker.run(spec)
        os.close(w)
        with self._lock:
            slot.pid = pid
            slot.ready = False
            slot.ready_fd = r
            slot.started_at = time.time()
            slot.started_mono = time.monotonic()
            slot.restart_at = None
        # the first start is quiet (the two lines that say where it serves come first)
        level = log.info if slot.restarts else log.debug
        level("worker forked, pid %d, cpu %d", pid, slot.cpu, extra={"core": slot.core})

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not all(s.ready for s in self.slots):
            left = deadline - time.monotonic()
            if left <= 0:
                self._stop_all(signal.SIGKILL)
                raise StartupError(f"workers not ready within {READY_TIMEOUT_S:.0f}s")
            self._poll(min(left, 0.5))
            dead = [s for s in self.slots if s.exit_status is not None]
            if dead:
                self._stop_all(signal.SIGKILL)
                s = dead[0]
                raise StartupError(
                    f"worker for core {s.core} failed to start "
                    f"({_describe_status(s.exit_status or 0)}); see the log above"
                )
            if self._signals:
                sig = self._signals[0]
                self._stop_all(signal.SIGKILL)
                raise StartupError(f"stopped by {signal.Signals(sig).name} while starting", 1)

    def _poll(self, timeout: float) -> None:
        """Waits for a signal or a ready byte, then reaps dead workers."""
        fds = [self._wake_r] + [s.ready_fd for s in self.slots if s.ready_fd is not None]
        try:
            readable, _, _ = select.select(fds, [], [], max(timeout, 0))
        except InterruptedError:
            readable = []
        if self._wake_r in readable:
            with contextlib.suppress(BlockingIOError):
                while os.read(self._wake_r, 512):
                    pass
        for s in self.slots:
            if s.ready_fd is not None and s.ready_fd in readable:
                data = b""
                with contextlib.suppress(OSError):
                    data = os.read(s.ready_fd, 1)
                os.close(s.ready_fd)
                s.ready_fd = None
                if data:
                    s.ready = True
                    level = log.info if s.restarts else log.debug
                    level("worker ready, pid %s", s.pid, extra={"core": s.core})
        self._reap()

    def _reap(self) -> None:
        for _ in range(4 * len(self.slots) + 4):
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            slot = next((s for s in self.slots if s.pid == pid), None)
            if slot is None:
                continue
            self._worker_died(slot, pid, status)

    def _worker_died(self, slot: Slot, pid: int, status: int) -> None:
        now = time.monotonic()
        lived = now - slot.started_mono
        final: dict[str, int] = {}
        if slot.stats_path is not None:
            with contextlib.suppress(OSError):
                block = mtcp_core.read_stats_file(slot.stats_path)
                if block["pid"] == pid:
                    final = block["counters"]
        with self._lock:
            for name in _COUNTERS:
                if final.get(name):
                    slot.base[name] = slot.base.get(name, 0) + final[name]
            slot.pid = None
            slot.exit_status = status
            if slot.ready_fd is not None:
                os.close(slot.ready_fd)
                slot.ready_fd = None
        how = _describe_status(status)
        if self._draining:
            level = log.info if status == 0 else log.warning
            level("worker %d exited (%s) after the drain", pid, how, extra={"core": slot.core})
            return
        if not all(s.ready for s in self.slots) and not slot.ready and slot.restarts == 0:
            log.error("worker %d exited (%s) while starting", pid, how, extra={"core": slot.core})
            return
        slot.young_deaths = slot.young_deaths + 1 if lived < STABLE_AFTER_S else 1
        delay = min(BACKOFF_FIRST_S * 2 ** (slot.young_deaths - 1), BACKOFF_MAX_S)
        slot.restart_at = now + delay
        log.warning(
            "worker %d exited (%s) after %.1fs; restarting in %.1fs (restart %d)",
            pid,
            how,
            lived,
            delay,
            slot.restarts + 1,
            extra={"core": slot.core},
        )

    def _restart_due(self) -> None:
        now = time.monotonic()
        for s in self.slots:
            if s.pid is None and s.restart_at is not None and s.restart_at <= now:
                with self._lock:
                    s.restarts += 1
                    s.exit_status = None
                self._spawn(s)

    def _stop_all(self, sig: int) -> None:
        for s in self.slots:
            if s.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(s.pid, sig)
        if sig == signal.SIGKILL:
            deadline = time.monotonic() + 5
            while any(s.pid is not None for s in self.slots) and time.monotonic() < deadline:
                self._reap()
                time.sleep(0.01)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if signum != signal.SIGCHLD:
            self._signals.append(signum)

    # ----------------------------------------------------------------- main loop

    def _loop(self) -> int:
        forced = False
        while True:
            if self._draining:
                if all(s.pid is None for s in self.slots):
                    break
                if time.monotonic() > self._drain_deadline and not forced:
                    log.error(
                        "workers still running %.0fs after the drain timeout: killing", KILL_GRACE_S
                    )
                    self._stop_all(signal.SIGKILL)
                    forced = True
            timeout = 1.0
            pending = [s.restart_at for s in self.slots if s.pid is None and s.restart_at]
            if pending and not self._draining:
                timeout = max(0.0, min(min(pending) - time.monotonic(), timeout))
            self._poll(timeout)
            while self._signals:
                forced = self._handle_signal(self._signals.pop(0)) or forced
            if not self._draining:
                self._restart_due()
                self._rotate_ticket_keys()
        clean = not forced and all(s.exit_status == 0 for s in self.slots)
        log.info("stopped%s", "" if clean else " (not every worker stopped cleanly)")
        return 0 if clean else 1

    def _handle_signal(self, sig: int) -> bool:
        """Returns True when the workers were killed without a drain."""
        if sig == signal.SIGHUP:
            logs.setup()
            if not self._draining:
                log.info("SIGHUP: reloading every worker (site cache, access log)")
                self._stop_all(signal.SIGHUP)
            return False
        name = signal.Signals(sig).name
        if self._draining:
            self._reap()
            if all(s.pid is None for s in self.slots):
                return False  # nothing left to stop
            log.warning("%s during the drain: stopping the workers now", name)
            self._stop_all(signal.SIGKILL)
            return True
        self._draining = True
        self._drain_deadline = time.monotonic() + self.config.drain_timeout + KILL_GRACE_S
        log.info("%s: draining (up to %.0fs), then exiting", name, self.config.drain_timeout)
        for s in self.slots:
            s.restart_at = None
        self._stop_all(signal.SIGTERM)
        return False

    def _cleanup(self) -> None:
        if any(s.pid is not None for s in self.slots):
            self._stop_all(signal.SIGKILL)
        if self.mgmt is not None:
            self.mgmt.stop()
            self.mgmt = None
        if self.stack is not None:
            self.stack.close()
            self.stack = None
        if self._guard is not None:
            try:
                netfilter.remove(self._guard.iface)
                log.info("nftables: removed table %s", netfilter.table_name(self._guard.iface))
            except netfilter.NetfilterError as exc:
                log.warning("nftables: could not remove the rules: %s", exc)
            self._guard = None
        for s in self.slots:
            if s.ready_fd is not None:
                os.close(s.ready_fd)
                s.ready_fd = None
            s.http.close()
            if s.tls is not None:
                s.tls.close()
                s.tls = None
        if self.run_dir is not None:
            shutil.rmtree(self.run_dir, ignore_errors=True)
            self.run_dir = None
        if self._wake_w >= 0:
            signal.set_wakeup_fd(-1)
            os.close(self._wake_r)
            os.close(self._wake_w)
            self._wake_r = self._wake_w = -1
