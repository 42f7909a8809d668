"""Raw HTTP/1.1 for the HTTP tests: a request's bytes, a response's status, headers and body
read back from its bytes (``norm`` masks the Date so that responses compare byte for byte),
a test site's files written from a table, and a folder to list with the links its listing
must show."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

# a folder whose listing must escape names, sort them (folders first) and leave out dot files
DOCS: dict[str, bytes | str | None] = {
    "docs/b.txt": "b\n",
    "docs/a.txt": "a\n",
    'docs/<x>&"q.txt': "x\n",
    "docs/.hidden": "h\n",
    "docs/sub": None,
}
# the links (href, text) of its listing, in order
DOCS_LINKS = [
    ("../", "../"),
    ("sub/", "sub/"),
    ("%3Cx%3E%26%22q.txt", "&lt;x&gt;&amp;&#34;q.txt"),
    ("a.txt", "a.txt"),
    ("b.txt", "b.txt"),
]


def get(path: str, *headers: str, method: str = "GET", version: str = "1.1") -> bytes:
    """A request for ``path`` (``Host: t``) with ``headers`` ("Name: value") added."""
    return "\r\n".join([f"{method} {path} HTTP/{version}", "Host: t", *headers, "", ""]).encode()


def norm(data: bytes) -> bytes:
    """The response(s) with every Date header's value replaced by X."""
    return re.sub(rb"\r\nDate: [^\r]+\r\n", b"\r\nDate: X\r\n", data)


def status_of(resp: bytes) -> int:
    return int(resp.split(b" ", 2)[1])


def header(resp: bytes, name: str) -> str | None:
    """The first ``name`` header's value (the name in any case), None without one."""
    head = resp.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    m = re.search(rf"\r\n{re.escape(name)}: ([^\r]*)", head, re.I)
    return m.group(1) if m else None


def body(resp: bytes) -> bytes:
    return resp.split(b"\r\n\r\n", 1)[1]


def listing_links(listing: str) -> list[tuple[str, str]]:
    """The links of a folder listing's page: (href, text), in order."""
    return re.findall(r'<a href="([^"]*)">([^<]*)</a>', listing)


def write_files(root: Path, files: Mapping[str, bytes | str | None]) -> Path:
    """Creates ``root`` and in it each path of ``files`` (relative, "/" between folders) with
    its bytes or text; None makes an empty folder. Returns ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if content is None:
            path.mkdir(exist_ok=True)
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    return root
