"""The static responder's access-log record and its request parser alone."""

from __future__ import annotations

import struct
from typing import NamedTuple

from mtcp_core._native import ffi, lib


class ResponderLogRecord(NamedTuple):
    """One hit answered by the static responder, for the access log."""

    peer: str
    request_line: bytes
    status: int
    body_bytes: int
    bytes_sent: int
    duration_s: float
    time: float  # time.time() when the response was handed to TCP
    referer: bytes | None
    user_agent: bytes | None
    host: bytes | None


_LOGREC = struct.Struct("<IIHHHHIIQQH6x")


def rsp_parse(data: bytes, max_request_line: int = 8192, max_header_bytes: int = 16384) -> int:
    """The static responder's request parser alone: the head's length when it would take
    the request, 0 when it needs more bytes, -reason otherwise (1 method, 2 grammar,
    3 header, 4 size)."""
    hl = ffi.new("unsigned *")
    r = lib.mtcp_rsp_parse(data, len(data), max_request_line, max_header_bytes, hl)
    return int(hl[0]) if r == 1 else int(r)
