"""Per-worker TLS counters in shared memory, and their Prometheus families.

Like ``http_block``, a ``shm_block.SharedBlock`` per core: the supervisor creates it before
it forks, the worker's ``TlsServer`` adds to its own block, and ``TlsCollector`` reads every
block at each scrape, with the certificates' expiry times that the supervisor read from the
files:

- ``mtcp_tls_handshakes_total{core, version, result}``: handshakes by negotiated version
  (``TLSv1.3``, ``TLSv1.2``; ``-`` when none was negotiated) and result (``ok``; ``error``:
  a bad or refused ClientHello, no shared version or cipher...; ``eof``: the peer closed or
  reset during the handshake; ``timeout``: no complete handshake within 10 s);
- ``mtcp_tls_resumptions_total{core, version}``: handshakes that resumed a session;
- ``mtcp_tls_reloads_total{core, result}``: certificate reloads (``ok``, ``failed``);
- ``mtcp_tls_certificate_expiry_timestamp_seconds{name, file}``: notAfter of each
  configured certificate, one series per DNS name it covers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from appliance.metrics.shm_block import HDR_CORE, HEADER_SLOTS, SharedBlock

MAGIC = 0x4B4C42534C544D4D  # "MMTLSBLK" little endian
VERSION = 1
TLS_VERSIONS: tuple[str, ...] = ("TLSv1.2", "TLSv1.3", "-")
RESULTS: tuple[str, ...] = ("ok", "error", "eof", "timeout")

_HS = HEADER_SLOTS
_RESUMED = _HS + len(TLS_VERSIONS) * len(RESULTS)
_RELOAD_OK = _RESUMED + len(TLS_VERSIONS)
_RELOAD_FAILED = _RELOAD_OK + 1
_SLOTS = _RELOAD_FAILED + 1


def _version_slot(version: str) -> int:
    try:
        return TLS_VERSIONS.index(version)
    except ValueError:
        return len(TLS_VERSIONS) - 1


class TlsBlock(SharedBlock):
    """One core's block (see the module's docstring); ``TlsStats`` for ``TlsServer``."""

    MAGIC = MAGIC
    VERSION = VERSION
    SLOTS = _SLOTS

    def handshake(self, version: str, result: str, resumed: bool) -> None:
        v = _version_slot(version)
        r = RESULTS.index(result) if result in RESULTS else 1
        with self._lock:
            self._slots[_HS + v * len(RESULTS) + r] += 1
            if resumed:
                self._slots[_RESUMED + v] += 1

    def reload(self, ok: bool) -> None:
        with self._lock:
            self._slots[_RELOAD_OK if ok else _RELOAD_FAILED] += 1

    def read(self) -> dict[str, Any] | None:
        raw = self._raw()
        if raw is None:
            return None
        nres = len(RESULTS)
        return {
            "core": raw[HDR_CORE],
            "handshakes": {
                (v, r): raw[_HS + vi * nres + ri]
                for vi, v in enumerate(TLS_VERSIONS)
                for ri, r in enumerate(RESULTS)
            },
            "resumptions": {v: raw[_RESUMED + vi] for vi, v in enumerate(TLS_VERSIONS)},
            "reloads": {"ok": raw[_RELOAD_OK], "failed": raw[_RELOAD_FAILED]},
        }


class TlsCollector(Collector):
    """The TLS families; ``blocks`` and ``certificates`` are asked at every scrape
    (``certificates``: (name, file, notAfter as Unix time))."""

    def __init__(
        self,
        blocks: Callable[[], list[TlsBlock]],
        certificates: Callable[[], list[tuple[str, str, float]]],
    ) -> None:
        self.blocks = blocks
        self.certificates = certificates

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        hs = CounterMetricFamily(
            "mtcp_tls_handshakes",
            "TLS handshakes by negotiated version and result",
            labels=["core", "version", "result"],
        )
        res = CounterMetricFamily(
            "mtcp_tls_resumptions",
            "TLS handshakes that resumed a session (session ticket)",
            labels=["core", "version"],
        )
        rel = CounterMetricFamily(
            "mtcp_tls_reloads", "Certificate reloads by result", labels=["core", "result"]
        )
        for block in self.blocks():
            snap = block.read()
            if snap is None:
                continue
            core = str(snap["core"])
            for (v, r), n in snap["handshakes"].items():
                if n or (r == "ok" and v != "-"):
                    hs.add_metric([core, v, r], n)
            for v, n in snap["resumptions"].items():
                if v != "-":
                    res.add_metric([core, v], n)
            for r, n in snap["reloads"].items():
                rel.add_metric([core, r], n)
        exp = GaugeMetricFamily(
            "mtcp_tls_certificate_expiry_timestamp_seconds",
            "notAfter of each configured certificate, per DNS name it covers (Unix time)",
            labels=["name", "file"],
        )
        for name, path, not_after in self.certificates():
            exp.add_metric([name, path], not_after)
        yield from (hs, res, rel, exp)
