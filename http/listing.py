"""Directory listings: one folder's entries as the jinja2 page (templates/listing.html),
dotfiles and the site's rule files left out by the caller. Part of the static file service
(site.py, which decides what in a folder is servable)."""

from __future__ import annotations

import os
import time
from typing import Any
from urllib.parse import quote_from_bytes

import jinja2

from appliance.http.paths import Target


def listing_entry(name: str, is_dir: bool, st: os.stat_result) -> dict[str, Any]:
    """One row of a listing: a file or a folder (``name`` as the file system has it)."""
    raw = os.fsencode(name)
    return {
        "name": raw.decode("utf-8", "replace") + ("/" if is_dir else ""),
        "href": quote_from_bytes(raw) + ("/" if is_dir else ""),
        "size": "-" if is_dir else str(st.st_size),
        "mtime": time.strftime("%Y-%m-%d %H:%M", time.gmtime(st.st_mtime)),
        "is_dir": is_dir,
    }


def listing_page(env: jinja2.Environment, t: Target, entries: list[dict[str, Any]]) -> bytes:
    """The listing page of the folder ``t`` names: folders first, then by name."""
    entries.sort(key=lambda e: (not e["is_dir"], e["name"]))
    path = os.fsencode(t.path).decode("utf-8", "replace")
    html = env.get_template("listing.html").render(
        path=path, entries=entries, parent=bool(t.segments)
    )
    return html.encode()

