"""mtcp_core._native is built from the C tree and exposes the public header (mtcp_public.h)."""

from __future__ import annotations

import re
import select
import socket
from pathlib import Path


def test_native_module_exposes_every_public_function(repo_root: Path) -> None:
    from mtcp_core._native import ffi, lib

    header = (repo_root / "mtcp_core" / "include" / "mtcp_public.h").read_text()
    declared = set(re.findall(r"^[\w ]+?\**\b(mtcp_\w+)\(", header, re.MULTILINE))
    assert len(declared) > 30
    assert declared <= set(dir(lib))  # the module loaded, so every symbol resolved
    assert ffi.sizeof("struct mtcp_conf") >= ffi.sizeof("void *") * 8


def test_public_constants_are_the_linux_values() -> None:
    from mtcp_core._native import lib

    for name in "EPOLLIN EPOLLPRI EPOLLOUT EPOLLERR EPOLLHUP EPOLLRDHUP EPOLLET".split():
        assert getattr(lib, f"MTCP_{name}") == getattr(select, name) & 0xFFFFFFFF, name
    sockets = (
        "SOL_SOCKET SO_REUSEADDR SO_KEEPALIVE SO_SNDBUF SO_RCVBUF SO_LINGER SO_ERROR"
        " IPPROTO_TCP TCP_NODELAY TCP_MAXSEG SHUT_RD SHUT_WR SHUT_RDWR"
    )
    for name in sockets.split():
        assert getattr(lib, f"MTCP_{name}") == getattr(socket, name), name
