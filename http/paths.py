"""Request targets onto paths: percent-decoding once, dot-segment removal, hidden files
(dotfiles but ``/.well-known/``), and the Content-Type of a file name. Part of the static
file service (site.py)."""

from __future__ import annotations

import mimetypes
import os
from collections.abc import Iterable
from dataclasses import dataclass

WELL_KNOWN = ".well-known"
RULE_FILES = ("_redirects", "_headers")  # at the root: read as site rules, never served

# Deterministic types for the web's usual files (the system's mime.types differs from one
# machine to the next); everything else comes from Python's built-in table.
_MIME = {
    ".html": "text/html",
    ".htm": "text/html",
    ".css": "text/css",
    ".js": "text/javascript",
    ".mjs": "text/javascript",
    ".json": "application/json",
    ".txt": "text/plain",
    ".md": "text/markdown",
    ".xml": "application/xml",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".webp": "image/webp",
    ".avif": "image/avif",
    ".ico": "image/x-icon",
    ".wasm": "application/wasm",
    ".woff": "font/woff",
    ".woff2": "font/woff2",
    ".pdf": "application/pdf",
    ".mp4": "video/mp4",
    ".webm": "video/webm",
    ".mp3": "audio/mpeg",
    ".gz": "application/gzip",
    ".br": "application/octet-stream",
    ".zip": "application/zip",
    ".tar": "application/x-tar",
}
_BUILTIN_MIME = mimetypes.MimeTypes(filenames=())


def mime_type(name: str) -> bytes:
    """The Content-Type for a file name (by its last suffix)."""
    suffix = os.path.splitext(name)[1].lower()
    ctype = _MIME.get(suffix)
    if ctype is None:
        ctype = _BUILTIN_MIME.types_map[1].get(suffix, "application/octet-stream")
    return ctype.encode()


class BadRequest(Exception):
    """The target cannot name a file: answered with 400."""


@dataclass(frozen=True)
class Target:
    """A request target after percent-decoding and dot-segment removal."""

    segments: tuple[str, ...]  # decoded path segments, no "", "." or ".."
    trailing_slash: bool
    query: bytes | None  # the raw query (without "?"), None when there was no "?"

    @property
    def path(self) -> str:
        """The normalized path: "/" + segments (+ "/")."""
        p = "/" + "/".join(self.segments)
        return p + "/" if self.trailing_slash and self.segments else p


def _percent_decode(raw: bytes) -> bytes:
    """Decodes %XX once. Refuses malformed escapes and the bytes that would change the
    path's structure or cannot be in a file name: "/" (%2F), "\\" (%5C), NUL and other
    control characters."""
    if b"%" not in raw:
        return raw
    pieces = raw.split(b"%")
    out = bytearray(pieces[0])
    for piece in pieces[1:]:
        hexpair = piece[:2]
        if len(hexpair) != 2 or not all(c in b"0123456789abcdefABCDEF" for c in hexpair):
            raise BadRequest("malformed percent-escape")
        byte = int(hexpair, 16)
        if byte in (0x2F, 0x5C) or byte < 0x20 or byte == 0x7F:
            raise BadRequest("encoded separator or control character")
        out.append(byte)
        out += piece[2:]
    return bytes(out)


def parse_target(target: bytes) -> Target:
    """origin-form (or absolute-form) target → ``Target``; raises BadRequest."""
    if target.startswith((b"http://", b"https://")):
        slash = target.find(b"/", target.index(b"//") + 2)
        target = target[slash:] if slash >= 0 else b"/"
    if not target.startswith(b"/"):
        raise BadRequest("not an origin-form target")
    raw, sep, query = target.partition(b"?")
    raw = raw.partition(b"#")[0]
    if b"\\" in raw or b"\0" in raw:
        raise BadRequest("backslash or NUL in the path")
    decoded = os.fsdecode(_percent_decode(raw))
    segments: list[str] = []
    parts = decoded.split("/")
    for seg in parts:
        if seg in ("", "."):
            continue
        if seg == "..":
            if segments:
                segments.pop()  # RFC 3986 5.2.4: never above the root
            continue
        segments.append(seg)
    last = parts[-1]
    trailing = last in ("", ".", "..")
    return Target(tuple(segments), trailing, query if sep else None)


def is_hidden(segments: Iterable[str]) -> bool:
    """Dotfiles and dot-folders are not served, except the top-level /.well-known/."""
    for i, seg in enumerate(segments):
        if seg.startswith(".") and not (i == 0 and seg == WELL_KNOWN):
            return True
    return False
