"""Prometheus exposition: custom collectors over a ``MetricsSource`` (label ``core``).

Every per-core stack counter of mtcp_core's stats block is exported: the ones below under
their own family names (``STACK_FAMILIES``), the rest as ``mtcp_<name>_total`` (counters)
or ``mtcp_<name>`` (gauges), so that a counter added to the C core shows up without a change
here. HTTP counters come from the workers' HTTP blocks, worker facts from the supervisor.
Names follow Prometheus conventions: ``mtcp_`` prefix, base units, ``_total`` counters.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

import mtcp_core
from appliance.metrics.http_block import DURATION_BUCKETS, STATUS_CLASSES
from appliance.metrics.source import ApplianceView, MetricsSource


@dataclass(frozen=True)
class Family:
    """One exported family built from stack stats: ``stats[i]`` goes into the sample whose
    extra label value is ``values[i]`` (no extra label when ``label`` is None)."""

    name: str  # without _total
    kind: str  # "counter" or "gauge"
    doc: str
    stats: tuple[str, ...]
    label: str | None = None
    values: tuple[str, ...] = ()


_STATES = tuple(s.lower() for s in mtcp_core.TCP_STATES)
_DROPS = tuple(n for n in mtcp_core.stat_names() if n.startswith("drop_"))

STACK_FAMILIES: tuple[Family, ...] = (
    Family("mtcp_rx_packets", "counter", "Frames received from the device", ("rx_packets",)),
    Family("mtcp_tx_packets", "counter", "Frames handed to the device", ("tx_packets",)),
    Family("mtcp_rx_bytes", "counter", "Bytes of frames received", ("rx_bytes",)),
    Family("mtcp_tx_bytes", "counter", "Bytes of frames handed to the device", ("tx_bytes",)),
    Family("mtcp_rx_batches", "counter", "Non-empty RX bursts from the device", ("rx_batches",)),
    Family("mtcp_tx_batches", "counter", "TX flushes to the device", ("tx_batches",)),
    Family(
        "mtcp_drops",
        "counter",
        "Frames or segments dropped, by reason",
        _DROPS,
        "reason",
        tuple(n.removeprefix("drop_") for n in _DROPS),
    ),
    Family(
        "mtcp_connections_opened",
        "counter",
        "TCP connections opened: passive (accepted) or active (connected)",
        ("conn_passive_opens", "conn_active_opens"),
        "kind",
        ("passive", "active"),
    ),
    Family("mtcp_connections_closed", "counter", "TCP connections closed", ("conn_closed",)),
    Family(
        "mtcp_connections",
        "gauge",
        "TCP connections by state",
        tuple(f"state_{s}" for s in _STATES),
        "state",
        _STATES,
    ),
    Family("mtcp_retransmits", "counter", "TCP segments retransmitted", ("retransmits",)),
    Family("mtcp_rsts_sent", "counter", "TCP RST segments sent", ("rst_tx",)),
    Family("mtcp_rsts_received", "counter", "TCP RST segments received", ("rst_rx",)),
    Family(
        "mtcp_syn_cookies_sent", "counter", "SYN-ACKs sent with a SYN cookie", ("syn_cookies_sent",)
    ),
    Family("mtcp_tcp_segments_received", "counter", "TCP segments received", ("tcp_segs_rx",)),
    Family("mtcp_tcp_segments_sent", "counter", "TCP segments sent", ("tcp_segs_tx",)),
    Family(
        "mtcp_tx_queue_length",
        "gauge",
        "Connections waiting on each TX list (priority queueing: control, ACK, data)",
        ("txq_control", "txq_ack", "txq_data"),
        "list",
        ("control", "ack", "data"),
    ),
    Family(
        "mtcp_tx_list_packets",
        "counter",
        "Packets sent from each TX list",
        ("tx_control_pkts", "tx_ack_pkts", "tx_data_pkts"),
        "list",
        ("control", "ack", "data"),
    ),
    Family(
        "mtcp_pool_free",
        "gauge",
        "Free objects in each per-core pool",
        ("pool_tcb_free", "pool_sndbuf_free", "pool_rcvbuf_free"),
        "pool",
        ("tcb", "sndbuf", "rcvbuf"),
    ),
    Family(
        "mtcp_pool_size",
        "gauge",
        "Objects in each per-core pool",
        ("pool_tcb_total", "pool_sndbuf_total", "pool_rcvbuf_total"),
        "pool",
        ("tcb", "sndbuf", "rcvbuf"),
    ),
    Family("mtcp_hugepages", "gauge", "1 when the core's pools sit on huge pages", ("hugepages",)),
    Family("mtcp_flows", "gauge", "Entries in the core's flow table", ("flows",)),
    Family(
        "mtcp_buffer_memory_used_bytes",
        "gauge",
        "Socket-buffer bytes the core's connections may touch (their rings' sizes)",
        ("buf_mem_used",),
    ),
    Family(
        "mtcp_buffer_memory_budget_bytes",
        "gauge",
        "The core's socket-buffer budget: from half of it on, new connections get small buffers",
        ("buf_mem_budget",),
    ),
    Family(
        "mtcp_buffer_memory_pressure",
        "gauge",
        "1 while the core's buffers use half of the budget or more (small buffers for new ones)",
        ("buf_mem_pressure",),
    ),
    Family(
        "mtcp_buffer_released_bytes",
        "counter",
        "Bytes of closed connections' buffer pages given back to the kernel (madvise)",
        ("buf_released_bytes",),
    ),
)

# rx_batch_* counters: batches of 1, 2-3, 4-7 ... frames; le is each bucket's upper bound
RX_BATCH_BUCKETS: tuple[tuple[str, str], ...] = (
    ("rx_batch_1", "1.0"),
    ("rx_batch_2_3", "3.0"),
    ("rx_batch_4_7", "7.0"),
    ("rx_batch_8_15", "15.0"),
    ("rx_batch_16_31", "31.0"),
    ("rx_batch_32_63", "63.0"),
    ("rx_batch_64_up", "+Inf"),
)

_MAPPED = {s for f in STACK_FAMILIES for s in f.stats} | {b for b, _ in RX_BATCH_BUCKETS}


def generic_name(stat: str) -> str:
    """The family name of a stack stat without a family of its own."""
    return f"mtcp_{stat}"


GENERIC_STATS: tuple[str, ...] = tuple(n for n in mtcp_core.stat_names() if n not in _MAPPED)


def _counter_or_gauge(kind: str, name: str, doc: str, labels: list[str]) -> Metric:
    if kind == "counter":
        return CounterMetricFamily(name, doc, labels=labels)
    return GaugeMetricFamily(name, doc, labels=labels)


class ApplianceCollector(Collector):
    """Collects everything from one ``MetricsSource.view()`` per scrape."""

    def __init__(self, source: MetricsSource) -> None:
        self.source = source

    def describe(self) -> list[Metric]:
        return []  # collected on demand; nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        view = self.source.view()
        yield from self._appliance(view)
        yield from self._workers(view)
        yield from self._stack(view)
        yield from self._http(view)

    def _appliance(self, view: ApplianceView) -> Iterator[Metric]:
        info = GaugeMetricFamily(
            "mtcp_appliance_info",
            "The appliance's version, stack and backend (value 1)",
            labels=["version", "stack", "backend"],
        )
        info.add_metric([view.version, view.stack, view.backend or ""], 1)
        yield info
        yield GaugeMetricFamily(
            "mtcp_appliance_cores", "Cores (worker processes) configured", value=len(view.cores)
        )
        yield GaugeMetricFamily(
            "mtcp_appliance_draining",
            "1 while the appliance drains connections before it stops",
            value=1 if view.draining else 0,
        )

    def _workers(self, view: ApplianceView) -> Iterator[Metric]:
        up = GaugeMetricFamily("mtcp_worker_up", "1 while the core's worker runs", labels=["core"])
        pid = GaugeMetricFamily(
            "mtcp_worker_pid", "Process id of the core's worker", labels=["core"]
        )
        restarts = CounterMetricFamily(
            "mtcp_worker_restarts",
            "Times the supervisor restarted the core's worker after it died",
            labels=["core"],
        )
        start = GaugeMetricFamily(
            "mtcp_worker_start_time_seconds",
            "Start of the core's current worker (Unix time)",
            labels=["core"],
        )
        cpu = CounterMetricFamily(
            "mtcp_worker_cpu_seconds",
            "User and system CPU time of the core's current worker",
            labels=["core"],
        )
        rss = GaugeMetricFamily(
            "mtcp_worker_resident_memory_bytes",
            "Resident memory of the core's current worker",
            labels=["core"],
        )
        for c in view.cores:
            lab = [str(c.core)]
            up.add_metric(lab, 1 if c.up else 0)
            restarts.add_metric(lab, c.restarts)
            if c.pid is not None:
                pid.add_metric(lab, c.pid)
            if c.started_at is not None and c.up:
                start.add_metric(lab, c.started_at)
            if c.cpu_seconds is not None:
                cpu.add_metric(lab, c.cpu_seconds)
            if c.rss_bytes is not None:
                rss.add_metric(lab, c.rss_bytes)
        yield from (up, pid, restarts, start, cpu, rss)

    def _stack(self, view: ApplianceView) -> Iterator[Metric]:
        cores = [c for c in view.cores if c.stack is not None]
        if view.stack != "mtcp":
            return
        for fam in STACK_FAMILIES:
            labels = ["core"] + ([fam.label] if fam.label else [])
            metric = _counter_or_gauge(fam.kind, fam.name, fam.doc, labels)
            for c in cores:
                assert c.stack is not None
                if fam.kind == "gauge" and not c.up:
                    continue  # a dead worker's gauges are stale
                if fam.label:
                    for stat, value in zip(fam.stats, fam.values, strict=True):
                        metric.add_metric([str(c.core), value], c.stack.get(stat, 0))
                else:
                    metric.add_metric([str(c.core)], c.stack.get(fam.stats[0], 0))
            yield metric
        hist = HistogramMetricFamily(
            "mtcp_rx_batch_size",
            "Frames per non-empty RX burst (the sum is mtcp_rx_packets_total)",
            labels=["core"],
        )
        for c in cores:
            assert c.stack is not None
            acc = 0
            buckets: list[tuple[str, float]] = []
            for stat, le in RX_BATCH_BUCKETS:
                acc += c.stack.get(stat, 0)
                buckets.append((le, acc))
            hist.add_metric([str(c.core)], buckets, c.stack.get("rx_packets", 0))
        yield hist
        for stat in GENERIC_STATS:
            gauge = mtcp_core.stat_is_gauge(stat)
            metric = _counter_or_gauge(
                "gauge" if gauge else "counter",
                generic_name(stat),
                f"mtcp_core per-core stat {stat}",
                ["core"],
            )
            for c in cores:
                assert c.stack is not None
                if gauge and not c.up:
                    continue
                metric.add_metric([str(c.core)], c.stack.get(stat, 0))
            yield metric

    def _http(self, view: ApplianceView) -> Iterator[Metric]:
        reqs = CounterMetricFamily(
            "mtcp_http_requests",
            "HTTP requests answered, by method and status class",
            labels=["core", "method", "status_class"],
        )
        dur = HistogramMetricFamily(
            "mtcp_http_request_duration_seconds",
            "Time from a request's first byte to the last byte of its response handed to the stack",
            labels=["core"],
        )
        out = CounterMetricFamily(
            "mtcp_http_response_bytes",
            "Bytes of HTTP responses (headers and bodies) handed to the stack",
            labels=["core"],
        )
        site_reqs = CounterMetricFamily(
            "mtcp_http_site_requests",
            "HTTP requests answered, by site (virtual host) and status class",
            labels=["core", "site", "status_class"],
        )
        site_bytes = CounterMetricFamily(
            "mtcp_http_site_response_bytes",
            "Bytes of HTTP responses (headers and bodies), by site (virtual host)",
            labels=["core", "site"],
        )
        for c in view.cores:
            h = c.http
            if h is None:
                continue
            lab = str(c.core)
            for (method, cls), n in sorted(h.requests.items()):
                if n or (method in ("GET", "HEAD") and cls in STATUS_CLASSES[1:]):
                    reqs.add_metric([lab, method, cls], n)
            acc = 0
            buckets: list[tuple[str, float]] = []
            for bound, n in zip((*DURATION_BUCKETS, float("inf")), h.duration_buckets, strict=True):
                acc += n
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), acc))
            dur.add_metric([lab], buckets, h.duration_sum_s)
            out.add_metric([lab], h.response_bytes)
            for site, (by_class, nbytes) in h.sites.items():
                for cls, n in by_class.items():
                    site_reqs.add_metric([lab, site, cls], n)
                site_bytes.add_metric([lab, site], nbytes)
        yield from (reqs, dur, out, site_reqs, site_bytes)


def make_registry(source: MetricsSource) -> CollectorRegistry:
    """A registry with the appliance's collector and the supervisor's process metrics."""
    from prometheus_client import PlatformCollector, ProcessCollector

    registry = CollectorRegistry(auto_describe=False)
    registry.register(ApplianceCollector(source))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry
