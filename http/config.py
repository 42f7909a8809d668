"""The static site's settings and the per-response record handed to metrics.

Both are re-exported by ``appliance.http.server`` (the public API); they live here so that
the sans-I/O core (``site``, ``connection``) does not import the adapters.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class SiteConfig:
    """What to serve and how. Every limit is per connection (or per request)."""

    root: Path
    index_files: tuple[str, ...] = ("index.html",)
    listing: bool = True  # directory listings (jinja2), dotfiles hidden
    cache_control: str | None = "public, max-age=60"
    follow_symlinks_outside: bool = False
    max_request_line: int = 8192  # 414 beyond
    max_header_bytes: int = 16384  # 431 beyond
    max_body: int = 0  # request bodies refused (413) beyond this
    header_timeout_s: float = 10.0  # slowloris: 408 then close
    keepalive_timeout_s: float = 15.0
    max_keepalive_requests: int = 1000
    access_log: Path | None = None  # combined log format when set
    small_file_limit: int = 256 * 1024  # cached in memory (stat at most ~1/s per file)
    stream_chunk: int = 256 * 1024  # large files streamed in chunks under flow control
    # HTTPS (appliance.http.tls): plain-HTTP requests answered with a 308 to https:// on
    # this port (None: served as they are); Strict-Transport-Security on HTTPS responses
    redirect_https_port: int | None = None
    hsts: bytes | None = None  # the header's value, e.g. b"max-age=31536000"
    # lingering close (nginx's lingering_close/lingering_time/lingering_timeout): after the
    # last response, a connection whose request was not read in full ("on"; "always": any
    # connection the server closes; "off": none) shuts its write side and reads and drops
    # what still comes, so that the client's kernel is not reset before it hands the
    # response over: until the client closes, lingering_time_s in all, lingering_timeout_s
    # without a byte, or lingering_max_bytes dropped
    lingering_close: str = "on"
    lingering_time_s: float = 30.0
    lingering_timeout_s: float = 5.0
    lingering_max_bytes: int = 64 * 1024 * 1024

    def __post_init__(self) -> None:
        if self.lingering_close not in ("on", "off", "always"):
            raise ValueError(
                f"lingering_close: 'on', 'off' or 'always', not {self.lingering_close!r}"
            )


@dataclass(frozen=True)
class RequestRecord:
    """One per response (also error responses; ``method`` is "-" when no request line could
    be parsed). ``bytes_sent``: head and body bytes handed to the stack; ``duration_s``: from
    the request's first byte (or the connection's start) to the response's last byte."""

    method: str
    status: int
    bytes_sent: int
    duration_s: float
    core: int
    site: str = ""  # the virtual host's name (appliance.http.vhosts); "" without one
