"""Helpers every binding module uses: errno to OSError, addresses to and from ints."""

from __future__ import annotations

import ipaddress
import os

from mtcp_core._native import ffi


def _raise(what: str) -> None:
    err = ffi.errno
    raise OSError(err, f"{what}: {os.strerror(err)}")


def _ip_to_int(host: str) -> int:
    if host in ("", "0.0.0.0"):
        return 0
    return int(ipaddress.IPv4Address(host))


def _int_to_ip(value: int) -> str:
    return str(ipaddress.IPv4Address(value))
