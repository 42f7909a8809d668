"""The wire code through the binding, for the parser and fragment tests: exact C copies of
frames, drop reasons by name, IPv4 headers built by hand."""

from __future__ import annotations

import struct
from typing import Any

from mtcp_core._native import ffi, lib

_DROP_NAMES: dict[int, str] = {
    i: ffi.string(lib.mtcp_stats_name(i)).decode() for i in range(lib.mtcp_stats_count())
}


def reason(code: int) -> str:
    """'ok', or the name of the drop_* counter a parse function returned."""
    if code == 0:
        return "ok"
    name = _DROP_NAMES[code]
    assert name.startswith("drop_"), name
    return name


def cbuf(data: bytes) -> Any:
    """An exactly sized C copy of data (so a sanitizer sees any over-read)."""
    buf = ffi.new("uint8_t[]", len(data))
    ffi.memmove(buf, data, len(data))
    return buf


SRC, DST = 0xC6120001, 0xC6120002  # 198.18.0.1 -> 198.18.0.2
MF = 0x2000


def ip_header(ident: int, flags_off: int, payload_len: int, *, proto: int = 6,
              src: int = SRC, dst: int = DST, options: bytes = b"") -> bytes:  # fmt: skip
    ihl = 5 + len(options) // 4
    h = struct.pack("!BBHHHBBHII", 0x40 | ihl, 0, ihl * 4 + payload_len, ident, flags_off, 64,
                    proto, 0, src, dst) + options  # fmt: skip
    total = sum(struct.unpack(f"!{len(h) // 2}H", h))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return h[:10] + struct.pack("!H", ~total & 0xFFFF) + h[12:]
