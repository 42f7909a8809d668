"""The Prometheus scrape of a running appliance (two workers, in a test namespace): it parses
with prometheus_client's own parser, follows the naming conventions, its counters move with
the traffic, and every metric the Grafana dashboard uses is in it."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from appliance.testing import Appliance, value
from appliance.testing.metrics import dashboard_metrics
from mtcp_core.testing import netns

pytestmark = pytest.mark.requires_root


def test_scrape_parses_moves_with_traffic_and_feeds_the_dashboard(
    netlab: netns.Lab, tmp_path: Path
) -> None:
    ns = netlab.namespace("scrape")
    with Appliance(ns, tmp_path / "appliance.log", ["--cores", "2"]) as app:
        status, body = app.mgmt("/metrics")
        assert status == 200
        text = body.decode()
        families = list(text_string_to_metric_families(text))
        kinds = {f.name: f.type for f in families}
        for fam in families:
            assert fam.name.startswith(("mtcp_", "process_", "python_")), fam.name
            for s in fam.samples:
                if fam.type == "counter":
                    assert s.name.endswith(("_total", "_created")), s.name
                if fam.name.startswith("mtcp_") and not fam.name.startswith("mtcp_appliance"):
                    assert "core" in s.labels, s
        for name in ("mtcp_rx_batch_size", "mtcp_http_request_duration_seconds"):
            assert kinds[name] == "histogram"
        assert kinds["mtcp_connections"] == "gauge"
        assert kinds["mtcp_drops"] == "counter"

        before = app.scrape()
        for _ in range(25):
            assert app.get("/")[0] == 200
        assert app.get("/missing")[0] == 404
        after = app.scrape()

        # every counter only grows; these move with the traffic
        for (name, labels), v in before.items():
            if name.endswith("_total") and (name, labels) in after:
                assert after[(name, labels)] >= v, name
        for name, labels in [
            ("mtcp_rx_packets_total", {}),
            ("mtcp_tx_packets_total", {}),
            ("mtcp_rx_bytes_total", {}),
            ("mtcp_tx_bytes_total", {}),
            ("mtcp_rx_batches_total", {}),
            ("mtcp_tx_batches_total", {}),
            ("mtcp_rx_batch_size_count", {}),
            ("mtcp_rx_batch_size_sum", {}),
            ("mtcp_tcp_segments_received_total", {}),
            ("mtcp_tx_list_packets_total", {"list": "control"}),
            ("mtcp_http_response_bytes_total", {}),
            ("mtcp_http_request_duration_seconds_sum", {}),
        ]:
            assert value(after, name, **labels) > value(before, name, **labels), name
        assert (
            value(after, "mtcp_connections_opened_total", kind="passive")
            - value(before, "mtcp_connections_opened_total", kind="passive")
            == 26
        )
        got = value(after, "mtcp_http_requests_total", method="GET", status_class="2xx")
        assert got - value(before, "mtcp_http_requests_total", status_class="2xx") == 25
        assert value(after, "mtcp_http_requests_total", status_class="4xx") == 1
        assert value(after, "mtcp_http_request_duration_seconds_count") == 26
        inf = value(after, "mtcp_http_request_duration_seconds_bucket", le="+Inf")
        assert inf == 26
        # histogram count equals the batches, the sum the frames
        assert value(after, "mtcp_rx_batch_size_count") == value(after, "mtcp_rx_batches_total")
        assert value(after, "mtcp_rx_batch_size_sum") == value(after, "mtcp_rx_packets_total")
        assert value(after, "mtcp_worker_up") == 2
        assert value(after, "process_cpu_seconds_total") > 0

        exported = {name for name, _ in after}
        missing = dashboard_metrics() - exported
        assert dashboard_metrics() and not missing, missing
        assert app.stop() == 0
