"""Access logs: the combined format or JSON lines, to a file or to stdout (``-``).

Lines are buffered and written once per loop round (``flush``), in writes of whole lines of
at most ``PIPE_BUF`` bytes each, so that workers sharing a file or a pipe (stdout in a
container) never interleave inside a line.

combined: ``peer - - [time] "request" status bytes "referer" "user agent"``, and, when the
appliance serves several sites, `` "site"`` at the end (the vhost name).
json: one object per line with the same fields, named like nginx's variables::

    {"time": "2026-12-06T08:00:00.123Z", "remote_addr": "198.18.0.1", "request": "GET / HTTP/1.1",
     "method": "GET", "uri": "/", "protocol": "HTTP/1.1", "status": 200, "body_bytes_sent": 15,
     "referer": null, "user_agent": "curl/8.5.0", "host": "example.test", "site": "main"}
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

FORMATS = ("combined", "json")
PIPE_BUF = 4096
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def log_time(t: float) -> str:
    """The combined log format's time, in UTC: 10/Oct/2000:13:55:36 +0000."""
    g = time.gmtime(t)
    return (
        f"{g.tm_mday:02d}/{_MONTHS[g.tm_mon - 1]}/{g.tm_year}:"
        f"{g.tm_hour:02d}:{g.tm_min:02d}:{g.tm_sec:02d} +0000"
    )


def _esc(value: bytes) -> str:
    """Quotes, backslashes and non-printable bytes as \\xHH (nginx's escaping)."""
    out = []
    for b in value:
        if b < 0x20 or b >= 0x7F or b in (0x22, 0x5C):
            out.append(f"\\x{b:02X}")
        else:
            out.append(chr(b))
    return "".join(out)


def iso_time(t: float) -> str:
    g = time.gmtime(t)
    return time.strftime("%Y-%m-%dT%H:%M:%S", g) + f".{int(t * 1000) % 1000:03d}Z"


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("utf-8", "backslashreplace")


class AccessLog:
    """One access log (a worker's; ``path`` "-" is this process's stdout). A record without
    a site (an error answered before a site was chosen) gets ``default_site``."""

    def __init__(
        self,
        path: Path | str,
        fmt: str = "combined",
        with_site: bool = False,
        default_site: str = "",
    ) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"log format must be one of {', '.join(FORMATS)}, got {fmt!r}")
        self.fmt = fmt
        self.with_site = with_site
        self.default_site = default_site
        if str(path) == "-":
            self._fd = os.dup(1)
            os.set_inheritable(self._fd, False)
        else:
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self._lines: list[str] = []

    def write(
        self,
        peer: str,
        request_line: bytes,
        status: int,
        body_bytes: int,
        referer: bytes | None,
        user_agent: bytes | None,
        site: str = "",
        host: bytes | None = None,
        when: float | None = None,
    ) -> None:
        now = time.time() if when is None else when  # when: a static responder hit's time
        site = site or self.default_site
        if self.fmt == "json":
            parts = request_line.split(b" ")
            method, uri, proto = (
                (parts + [b"", b"", b""])[:3]
                if len(parts) == 3
                else (parts[0] if parts and parts[0] != b"-" else b"", b"", b"")
            )
            rec = {
                "time": iso_time(now),
                "remote_addr": peer,
                "request": _text(request_line),
                "method": _text(method) or None,
                "uri": _text(uri) or None,
                "protocol": _text(proto) or None,
                "status": status,
                "body_bytes_sent": body_bytes,
                "referer": _text(referer),
                "user_agent": _text(user_agent),
                "host": _text(host),
                "site": site or None,
            }
            self._lines.append(json.dumps(rec, ensure_ascii=True, separators=(",", ":")) + "\n")
            return
        size = str(body_bytes) if body_bytes else "-"
        line = (
            f'{peer} - - [{log_time(now)}] "{_esc(request_line)}" {status} {size} '
            f'"{_esc(referer) if referer else "-"}" "{_esc(user_agent) if user_agent else "-"}"'
        )
        if self.with_site:
            line += f' "{site or "-"}"'
        self._lines.append(line + "\n")

    def flush(self) -> None:
        if not self._lines or self._fd < 0:
            return
        lines, self._lines = self._lines, []
        chunk: list[bytes] = []
        size = 0
        for text in lines:
            b = text.encode()
            if chunk and size + len(b) > PIPE_BUF:
                self._write(b"".join(chunk))
                chunk, size = [], 0
            chunk.append(b)
            size += len(b)
        if chunk:
            self._write(b"".join(chunk))

    def _write(self, data: bytes) -> None:
        with contextlib.suppress(OSError):
            while data:
                n = os.write(self._fd, data)
                data = data[n:]

    def close(self) -> None:
        self.flush()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class AccessLogOwner:
    """What answers requests with an access log of its own (``Site``, ``Sites``):
    ``Connection`` and the static responder write to ``access_log`` (None: no log), the
    loop calls ``flush`` once a round and ``close`` at the end."""

    access_log: AccessLog | None = None

    def flush(self) -> None:
        if self.access_log is not None:
            self.access_log.flush()

    def close(self) -> None:
        if self.access_log is not None:
            self.access_log.close()
            self.access_log = None
