"""Conditional requests and byte ranges (RFC 9110 sections 13 and 14): HTTP dates, entity
tags, If-Range, and the Range header's byte ranges. Part of the static file service
(site.py)."""

from __future__ import annotations

import email.utils
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from appliance.http.site import _File

MAX_RANGES = 16  # more ranges than this in one request: the Range header is ignored (200)
# (so are ranges that overlap or add up to more than the file: see parse_ranges)


def http_date(t: float) -> bytes:
    return email.utils.formatdate(t, usegmt=True).encode()


def parse_http_date(value: bytes) -> int | None:
    """Seconds since the epoch of an HTTP date (IMF-fixdate, RFC 850 or asctime), or None."""
    try:
        parsed = email.utils.parsedate_tz(value.decode("latin-1"))
        return None if parsed is None else int(email.utils.mktime_tz(parsed))
    except (ValueError, OverflowError, TypeError):
        return None


def _etag_list(value: bytes) -> list[bytes]:
    return [v.strip() for v in value.split(b",") if v.strip()]


def _weak(tag: bytes) -> bytes:
    return tag[2:] if tag.startswith(b"W/") else tag


def _etag_matches(if_none_match: bytes, etag: bytes) -> bool:
    """If-None-Match uses the weak comparison (RFC 9110 13.1.2)."""
    tags = _etag_list(if_none_match)
    return b"*" in tags or any(_weak(t) == etag for t in tags)


def _if_range_ok(value: bytes, f: _File) -> bool:
    """If-Range (RFC 9110 13.1.5): an entity tag must match strongly, a date exactly."""
    value = value.strip()
    if value.startswith((b'"', b"W/")):
        return value == f.etag
    since = parse_http_date(value)
    return since is not None and since == f.mtime


def parse_ranges(value: bytes, size: int) -> list[tuple[int, int]] | None:
    """A Range header → inclusive (first, last) byte ranges in request order; [] when none
    is satisfiable (416); None when the header is to be ignored (bad syntax, another unit,
    too many ranges)."""
    unit, eq, spec = value.partition(b"=")
    if not eq or unit.strip().lower() != b"bytes":
        return None
    out: list[tuple[int, int]] = []
    items = [s.strip() for s in spec.split(b",")]
    items = [s for s in items if s]
    if not items or len(items) > MAX_RANGES:
        return None
    for item in items:
        first, dash, last = item.partition(b"-")
        first, last = first.strip(), last.strip()
        if not dash or (first and not first.isdigit()) or (last and not last.isdigit()):
            return None
        if not first:
            if not last:
                return None
            n = int(last)
            if n == 0 or size == 0:
                continue
            out.append((max(0, size - n), size - 1))
            continue
        start = int(first)
        end = int(last) if last else size - 1
        if last and end < start:
            return None
        if start >= size:
            continue
        out.append((start, min(end, size - 1)))
    if len(out) > 1:
        # Ranges that overlap, or add up to more than the file, would make the answer
        # larger than the file (the CVE-2011-3192 class): the whole file instead (200), as
        # nginx does. Amplification stays at most 1x.
        spans = sorted(out)
        total = sum(e - s + 1 for s, e in spans)
        if total > size or any(spans[i + 1][0] <= spans[i][1] for i in range(len(spans) - 1)):
            return None
    return out
