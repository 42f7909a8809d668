"""The HTTP server's public API: a site's settings and the two stack adapters.

    serve_mtcp(ctx, SiteConfig(root=Path("static")), 80, stop)            # --stack mtcp
    serve_linux("127.0.0.1", 8080, SiteConfig(root=Path("static")), stop)  # --stack linux

Both run the same sans-I/O core (``connection.Connection`` on h11, ``site.Site`` for the
files) in one loop (``loop.run``): no thread or process per request. ``on_request`` gets
one ``RequestRecord`` per response (for metrics). ``site`` is one ``SiteConfig`` or a
``vhosts.VhostConfig`` (virtual hosts and site rules). ``draining`` set: the listener closes,
requests in flight are finished (answered with ``Connection: close``), idle connections
close, and the call returns when no connection is left; ``stop`` set: it returns at once
(within ``loop.POLL_MAX_S``), closing every connection.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from appliance.http.config import RequestRecord, SiteConfig

if TYPE_CHECKING:
    import mtcp_core
    from appliance.http.tls import TlsServer
    from appliance.http.vhosts import VhostConfig

__all__ = ["RequestRecord", "SiteConfig", "serve_linux", "serve_mtcp"]


def serve_mtcp(
    ctx: mtcp_core.Context,
    site: SiteConfig | VhostConfig,
    port: int,
    stop: threading.Event,
    on_request: Callable[[RequestRecord], None] | None = None,
    draining: threading.Event | None = None,
    ready: threading.Event | None = None,
    tls: TlsServer | None = None,
    *,
    responder: bool | None = None,
    hit_slots: int = 0,
) -> None:
    """Serves ``site`` on ``port`` of the context's stack, from the calling thread (the
    context's app thread), until ``stop`` (or ``draining`` and no connection left).
    ``ready`` is set once the port listens; ``tls``: HTTPS on ``tls.settings.port`` too.

    ``responder``: answer cached small files of plain HTTP inside the stack
    (``http/responder.py``); None: on unless ``MTCP_APPLIANCE_NO_RESPONDER`` says otherwise.
    A site with virtual hosts ([[sites]]) is served by Python alone for now. The hits reach
    ``on_request`` one record each, or, with ``hit_slots`` (the address of the worker's HTTP
    block's responder counters, ``HttpBlock.hits_address``), are counted there by the mTCP
    thread itself, at once."""
    from appliance.http import loop
    from appliance.http.mtcp import MtcpNet
    from appliance.http.responder import Responder
    from appliance.http.site import Site
    from appliance.http.vhosts import Sites, build

    files = build(site)
    tls_port = tls.settings.port if tls is not None else None
    if responder is None:
        responder = not responder_off_by_env()
    rsp = None
    # (several virtual sites: their per-site hit counters and log names are not kept by the
    # core yet, so they stay on Python)
    # (--redirect-http: every plain request gets a 308 from Python, nothing for it to answer)
    if files.config.redirect_https_port is not None:
        responder = False
    if responder and (isinstance(files, Site) or isinstance(files, Sites) and files.single):
        rsp = Responder(
            ctx, files, port, log=site.access_log is not None, core=ctx.core,
            on_request=on_request, hit_slots=hit_slots, key_host=files.varies_by_host,
        )  # fmt: skip
    net = MtcpNet(
        ctx, port, peers=site.access_log is not None, tls_port=tls_port, responder=rsp
    )
    loop.run(
        net, files, stop, core=ctx.core, on_request=on_request, draining=draining, ready=ready,
        tls=tls,
    )  # fmt: skip


def responder_off_by_env() -> bool:
    """``MTCP_APPLIANCE_NO_RESPONDER`` set to a true value (1, true, yes, on)."""
    value = os.environ.get("MTCP_APPLIANCE_NO_RESPONDER", "").strip().lower()
    return value in ("1", "true", "yes", "on")


def serve_linux(
    host: str,
    port: int,
    site: SiteConfig | VhostConfig,
    stop: threading.Event,
    on_request: Callable[[RequestRecord], None] | None = None,
    draining: threading.Event | None = None,
    reuse_port: bool = True,
    ready: threading.Event | None = None,
    tls: TlsServer | None = None,
    core: int = 0,
) -> None:
    """Serves ``site`` on ``host:port`` with the kernel's sockets (non-blocking, one
    ``select.epoll``, this thread) until ``stop`` (or ``draining`` and no connection left).
    ``ready`` is set once the socket listens (a bind error raises OSError before);
    ``tls``: HTTPS on ``tls.settings.port`` too."""
    from appliance.http import loop
    from appliance.http.linux import KernelNet
    from appliance.http.vhosts import build

    files = build(site)
    tls_port = tls.settings.port if tls is not None else None
    net = KernelNet(host, port, reuse_port=reuse_port, tls_port=tls_port)
    loop.run(
        net, files, stop, core=core, on_request=on_request, draining=draining, ready=ready,
        tls=tls,
    )  # fmt: skip
