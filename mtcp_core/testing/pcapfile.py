"""Reading the stack's pcap captures in tests (no scapy): the TCP frames in order."""

from __future__ import annotations

import struct
from pathlib import Path


def tcp_frames(pcap: Path) -> list[tuple[int, int, int, int]]:
    """(sport, dport, tcp flags, payload length) of every TCP/IPv4 frame in a capture, in
    the order it was written."""
    data = pcap.read_bytes()
    out = []
    pos = 24  # global header
    while pos + 16 <= len(data):
        incl = struct.unpack_from("<I", data, pos + 8)[0]
        frame = data[pos + 16 : pos + 16 + incl]
        pos += 16 + incl
        if len(frame) < 54 or frame[12:14] != b"\x08\x00" or frame[23] != 6:
            continue
        ihl = (frame[14] & 0x0F) * 4
        total = struct.unpack_from("!H", frame, 16)[0]
        tcp = 14 + ihl
        sport, dport = struct.unpack_from("!HH", frame, tcp)
        doff = (frame[tcp + 12] >> 4) * 4
        out.append((sport, dport, frame[tcp + 13], total - ihl - doff))
    return out


def record_times(pcap: Path) -> list[float]:
    """The time of every record of a capture, in seconds (the record header's clock)."""
    data = pcap.read_bytes()
    out = []
    pos = 24
    while pos + 16 <= len(data):
        sec, usec, incl = struct.unpack_from("<III", data, pos)
        out.append(sec + usec / 1e6)
        pos += 16 + incl
    return out
