"""The load generator: short HTTP connections from one context, in C."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from mtcp_core._native import ffi, lib
from mtcp_core._util import _ip_to_int, _raise
from mtcp_core.stack import Context, SteppedContext


@dataclass(frozen=True)
class LatencySummary:
    """A latency histogram's summary, in seconds."""

    count: int
    min: float
    mean: float
    p50: float
    p90: float
    p99: float
    p999: float
    max: float


class _Count:
    """A read-only count of ``LoadResult``: its C result's field of the same name."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, owner: type | None = None) -> int:
        return int(getattr(obj._raw, self.name))

    def __set__(self, obj: Any, value: object) -> None:
        raise AttributeError(f"{self.name} is read-only")


class LoadResult:
    """What one or more ``LoadGenerator`` runs counted (``merge`` sums cores).

    ``completed`` counts complete responses of any status; ``ok`` those with 2xx/3xx.
    ``errors``: ``connect`` (refused, timed out, unreachable), ``reset`` (failed after the
    connection was established), ``timeout`` (not done in time), ``response`` (closed before
    a complete response, or not HTTP/1.x) and ``status`` (a status other than 2xx/3xx).
    ``latency``: request written to response read (wrk's definition); ``connect``:
    ``connect()`` to established."""

    ERROR_KINDS = ("connect", "reset", "timeout", "response", "status")
    started = _Count()
    completed = _Count()
    bytes_read = _Count()
    bytes_written = _Count()

    def __init__(self, raw: Any) -> None:
        self._raw = raw  # struct mtcp_load_result *

    @classmethod
    def merge(cls, results: Iterable[LoadResult]) -> LoadResult:
        raw = ffi.new("struct mtcp_load_result *")
        for r in results:
            lib.mtcp_load_merge(raw, r._raw)
        return cls(raw)

    @property
    def ok(self) -> int:
        return int(self._raw.status[2] + self._raw.status[3])

    @property
    def status_classes(self) -> dict[str, int]:
        """Completed responses by status class: ``"2xx"`` ..., ``"other"``."""
        names = ("other", "1xx", "2xx", "3xx", "4xx", "5xx")
        return {n: int(self._raw.status[i]) for i, n in enumerate(names)}

    @property
    def errors(self) -> dict[str, int]:
        return {k: int(getattr(self._raw, "err_" + k)) for k in self.ERROR_KINDS}

    @property
    def socket_errors(self) -> int:
        """Errors other than a bad status (wrk's "Socket errors")."""
        e = self.errors
        return e["connect"] + e["reset"] + e["timeout"] + e["response"]

    @property
    def elapsed(self) -> float:
        return float(self._raw.elapsed_ns) / 1e9

    @property
    def requests_per_second(self) -> float:
        return self.completed / self.elapsed if self._raw.elapsed_ns else 0.0

    def _summary(self, hist: Any, count: int, lo: int, hi: int, total: int) -> LatencySummary:
        def q(x: float) -> float:
            return float(lib.mtcp_load_quantile(hist, hi, x)) / 1e9

        return LatencySummary(
            count=count,
            min=lo / 1e9 if count else 0.0,
            mean=total / count / 1e9 if count else 0.0,
            p50=q(0.5),
            p90=q(0.9),
            p99=q(0.99),
            p999=q(0.999),
            max=hi / 1e9,
        )

    @property
    def latency(self) -> LatencySummary:
        r = self._raw
        return self._summary(
            r.lat_hist, self.completed, int(r.lat_min_ns), int(r.lat_max_ns), int(r.lat_sum_ns)
        )

    @property
    def connect(self) -> LatencySummary:
        r = self._raw
        return self._summary(
            r.conn_hist,
            int(r.conn_count),
            int(r.conn_min_ns),
            int(r.conn_max_ns),
            int(r.conn_sum_ns),
        )

    def latency_quantile(self, q: float) -> float:
        """The request latency at quantile ``q`` (0..1), in seconds."""
        return float(lib.mtcp_load_quantile(self._raw.lat_hist, self._raw.lat_max_ns, q)) / 1e9

    def to_dict(self) -> dict[str, Any]:
        return {
            "started": self.started,
            "completed": self.completed,
            "ok": self.ok,
            "status": self.status_classes,
            "errors": self.errors,
            "bytes_read": self.bytes_read,
            "bytes_written": self.bytes_written,
            "elapsed_s": self.elapsed,
            "requests_per_s": self.requests_per_second,
            "latency_s": self.latency.__dict__,
            "connect_s": self.connect.__dict__,
        }


class LoadGenerator:
    """Short HTTP connections from one context, in C (``mtcp_load_run``): ``connections``
    at a time, each one ``request`` then the response, closed, opened again; for
    ``duration`` seconds or until ``max_requests`` connections are done. ``keepalive`` N:
    N requests per connection (``request`` must not ask for a close), ``pipeline`` of them
    in flight at a time, then the client closes and opens the next.

    ``run()`` blocks (without the GIL) and must be called from the context's app thread;
    ``stop()`` may be called from any thread."""

    def __init__(
        self,
        ctx: Context,
        address: tuple[str, int],
        request: bytes,
        *,
        connections: int = 64,
        duration: float = 10.0,
        max_requests: int = 0,
        timeout: float = 2.0,
        keepalive: int = 0,
        pipeline: int = 1,
    ) -> None:
        if isinstance(ctx, SteppedContext):
            raise ValueError("ctx: the load generator needs the wall clock (a stepped context)")
        max_conns = int(lib.MTCP_LOAD_MAX_CONNECTIONS)
        if keepalive < 0:
            raise ValueError(f"keepalive: requests per connection >= 0, got {keepalive}")
        max_depth = int(lib.MTCP_LOAD_MAX_PIPELINE)
        if not 1 <= pipeline <= max_depth:
            raise ValueError(f"pipeline: must be 1..{max_depth}, got {pipeline}")
        if not 1 <= connections <= max_conns:
            raise ValueError(f"connections: must be 1..{max_conns}, got {connections}")
        if not duration > 0:
            raise ValueError(f"duration: must be > 0 seconds, got {duration}")
        if max_requests < 0:
            raise ValueError(f"max_requests: must be >= 0, got {max_requests}")
        if not 0 < timeout <= 3600:
            raise ValueError(f"timeout: must be > 0 seconds (at most 3600), got {timeout}")
        if not request:
            raise ValueError("request: must not be empty")
        host, port = address
        if not 1 <= port <= 65535:
            raise ValueError(f"port: must be 1..65535, got {port}")
        self.ctx = ctx
        self._request = ffi.new("char[]", request)
        self._conf = ffi.new("struct mtcp_load_conf *")
        c = self._conf
        c.addr = _ip_to_int(host)
        if c.addr == 0:
            raise ValueError(f"address: {host!r} is not a host address")
        c.port = port
        c.request = self._request
        c.request_len = len(request)
        c.connections = connections
        c.duration_ms = max(1, round(duration * 1000))
        c.max_requests = max_requests
        c.timeout_ms = max(1, round(timeout * 1000))
        c.keepalive = keepalive
        c.pipeline = pipeline

    def run(self) -> LoadResult:
        raw = ffi.new("struct mtcp_load_result *")
        if lib.mtcp_load_run(self.ctx._check(), self._conf, raw) < 0:
            _raise("load")
        return LoadResult(raw)

    def stop(self) -> None:
        lib.mtcp_load_stop(self._conf)
