"""Sans-I/O HTTP/1.1 server connection serving a folder (placeholder: GET/HEAD only).

Bytes in, bytes out, on h11: the caller moves the bytes over whichever stack it runs on.
Installed as ``appliance.http.connection`` (this folder must not hold an __init__.py, see
DESIGN.md). The full static file service (ranges, ETags, listings...) replaces this.
"""

from __future__ import annotations

import mimetypes
from http import HTTPStatus
from pathlib import Path
from urllib.parse import unquote

import h11

SERVER = b"mtcp-appliance"
MAX_REQUEST_HEADERS = 16 * 1024


class Connection:
    """One server-side HTTP/1.1 connection: ``receive(data)`` returns the bytes to send."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_HEADERS)
        self._request: h11.Request | None = None
        self._head = False  # the current request is a HEAD: responses carry no body

    @property
    def closed(self) -> bool:
        """True once the connection must be closed (after the bytes last returned)."""
        return self._h11.our_state in (h11.MUST_CLOSE, h11.CLOSED, h11.ERROR)

    def receive(self, data: bytes) -> bytes:
        """Feeds received bytes (b"" at end of stream); returns the bytes to send."""
        self._h11.receive_data(data)
        out: list[bytes] = []
        while True:
            try:
                event = self._h11.next_event()
            except h11.RemoteProtocolError as exc:
                if self._h11.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                    out += self._send(exc.error_status_hint, b"bad request\n")
                break
            if event is h11.NEED_DATA or isinstance(event, h11.ConnectionClosed):
                break
            if event is h11.PAUSED:
                if self._h11.our_state is h11.DONE and self._h11.their_state is h11.DONE:
                    self._h11.start_next_cycle()  # keep-alive: serve the next request
                    self._head = False
                    continue
                break
            if isinstance(event, h11.Request):
                self._request = event
                self._head = event.method == b"HEAD"
            elif isinstance(event, h11.EndOfMessage) and self._request is not None:
                out += self._respond(self._request)
                self._request = None
        return b"".join(out)

    def _respond(self, request: h11.Request) -> list[bytes]:
        if request.method not in (b"GET", b"HEAD"):
            return self._send(405, b"method not allowed\n", extra=[(b"allow", b"GET, HEAD")])
        path = self._resolve(request.target)
        try:
            body = path.read_bytes() if path is not None else None
        except OSError:
            body = None
        if path is None or body is None:
            return self._send(404, b"not found\n")
        ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return self._send(200, body, ctype.encode())

    def _resolve(self, target: bytes) -> Path | None:
        """The file a target names, or None: nothing outside the root, no dotfiles."""
        raw = unquote(target.split(b"?", 1)[0].decode("latin-1"))
        if not raw.startswith("/") or "\0" in raw:
            return None
        parts = [p for p in raw.split("/") if p]
        if any(p.startswith(".") for p in parts):
            return None
        path = self.root.joinpath(*parts).resolve()
        if not path.is_relative_to(self.root):
            return None
        if path.is_dir():
            path = path / "index.html"
        return path if path.is_file() else None

    def _send(
        self,
        status: int,
        body: bytes,
        content_type: bytes = b"text/plain; charset=utf-8",
        extra: list[tuple[bytes, bytes]] | None = None,
    ) -> list[bytes]:
        headers = [
            (b"server", SERVER),
            (b"content-type", content_type),
            (b"content-length", str(len(body)).encode()),
            *(extra or []),
        ]
        reason = HTTPStatus(status).phrase.encode()
        out = [self._h11.send(h11.Response(status_code=status, headers=headers, reason=reason))]
        if not self._head:
            out.append(self._h11.send(h11.Data(data=body)))
        out.append(self._h11.send(h11.EndOfMessage()))
        return [b for b in out if b]
