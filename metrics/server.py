"""The management address: Prometheus metrics and the status page, on the kernel's stack.

It runs in the supervisor (threads of its own, never a worker's), so that it keeps
answering while the data plane is busy or broken:

- ``/metrics``: the Prometheus text exposition (``?json`` is not offered there);
- ``/server-status``: the status page, HTML with charts of the last ``?minutes=N`` (5..15,
  default 15); ``?json`` for JSON, ``?series`` for the charts' numbers, ``?refresh=N`` to set
  the page's self-refresh period (0: off);
- ``/healthz``: 200 when every worker is up and every core's mTCP thread is running, else
  503; a JSON body says which (``appliance.metrics.health``). Container and Kubernetes
  health checks ask here: the site on the user-level stack is not reachable over loopback;
- ``/``: links to the others.
"""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry

from appliance.metrics.collector import make_registry
from appliance.metrics.health import evaluate
from appliance.metrics.source import MetricsSource
from appliance.metrics.status import StatusPage

_INDEX = b"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><link rel="icon" href="data:,">
<title>mtcp-appliance management</title></head>
<body><h1>mtcp-appliance</h1><ul>
<li><a href="/server-status">/server-status</a> (<a href="/server-status?json">JSON</a>)</li>
<li><a href="/metrics">/metrics</a> (Prometheus)</li>
<li><a href="/healthz">/healthz</a> (health: workers and mTCP threads)</li></ul></body></html>
"""


class _Handler(BaseHTTPRequestHandler):
    server: ManagementServer
    protocol_version = "HTTP/1.1"
    server_version = "mtcp-appliance-management"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - base signature
        pass  # no line per scrape on stderr

    def do_HEAD(self) -> None:
        self._route(head=True)

    def do_GET(self) -> None:
        self._route(head=False)

    def _route(self, head: bool) -> None:
        url = urlsplit(self.path)
        query = parse_qs(url.query, keep_blank_values=True)
        try:
            if url.path == "/metrics":
                self._send(200, CONTENT_TYPE_LATEST, generate_latest(self.server.registry), head)
            elif url.path in ("/server-status", "/server-status/"):
                try:
                    minutes = float(query.get("minutes", ["15"])[0])
                except ValueError:
                    minutes = 15.0
                if minutes != minutes:  # NaN
                    minutes = 15.0
                if "series" in query:
                    body = json.dumps(self.server.status.series(minutes)).encode()
                    self._send(200, "application/json", body, head)
                elif "json" in query or query.get("format") == ["json"]:
                    body = json.dumps(self.server.status.data(), indent=1).encode()
                    self._send(200, "application/json", body, head)
                else:
                    try:
                        refresh = int(query.get("refresh", ["2"])[0])
                    except ValueError:
                        refresh = 2
                    html = self.server.status.html(
                        refresh=max(0, min(refresh, 3600)), minutes=minutes
                    )
                    self._send(200, "text/html; charset=utf-8", html.encode(), head)
            elif url.path == "/healthz":
                doc = evaluate(self.server.source.view())
                body = json.dumps(doc, indent=1).encode() + b"\n"
                self._send(200 if doc["healthy"] else 503, "application/json", body, head)
            elif url.path == "/":
                self._send(200, "text/html; charset=utf-8", _INDEX, head)
            elif url.path == "/favicon.ico":
                self._send(204, None, b"", head)
            else:
                self._send(404, "text/plain; charset=utf-8", b"not found\n", head)
        except BrokenPipeError:
            pass

    def _send(self, status: int, ctype: str | None, body: bytes, head: bool) -> None:
        self.send_response(status)
        if ctype:
            self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if not head:
            self.wfile.write(body)


class ManagementServer(ThreadingHTTPServer):
    """Binds at construction (so a taken address fails before anything starts);
    ``start()`` serves in a thread, ``stop()`` ends it."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, host: str, port: int, source: MetricsSource) -> None:
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        super().__init__((host, port), _Handler)
        self.source = source
        self.registry: CollectorRegistry = make_registry(source)
        self.status = StatusPage(source)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        host = str(host)
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def start(self) -> None:
        self.status.start()
        self._thread = threading.Thread(
            target=self.serve_forever,
            kwargs={"poll_interval": 0.2},
            name="management",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self.shutdown()
            self._thread.join(5)
            self._thread = None
        self.status.stop()
        self.server_close()
