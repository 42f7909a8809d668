"""A worker's counters in shared memory: what ``http_block`` and ``tls_block`` have in common.

The supervisor ``create``s one block per core (a file mapped ``MAP_SHARED`` before it forks),
the worker ``claim``s its own after the fork and adds to it (one writer: plain 64-bit stores
under a lock of its own threads, no message per event), and the supervisor ``read``s every
block when it is scraped. A block outlives its worker, so counters keep growing across a
worker's restarts.

Layout: little-endian ``uint64`` slots; slots 0-3 are the header (magic, version, core, the
writer's pid), the kind's counters follow. Readers check the magic and the version.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import struct
import threading
from pathlib import Path
from typing import Any, ClassVar, Self

HDR_MAGIC, HDR_VERSION, HDR_CORE, HDR_PID = range(4)
HEADER_SLOTS = 4


class SharedBlock:
    """One core's block of ``SLOTS`` slots; a subclass names its ``MAGIC``, ``VERSION`` and
    ``SLOTS`` (header included)."""

    MAGIC: ClassVar[int]
    VERSION: ClassVar[int]
    SLOTS: ClassVar[int]

    def __init__(self, path: Path, core: int) -> None:
        self.path = path
        self.core = core
        size = self.SLOTS * 8
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            os.ftruncate(fd, size)
            self._map = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
        self._slots: Any = (ctypes.c_uint64 * self.SLOTS).from_buffer(self._map)
        self._lock = threading.Lock()

    @classmethod
    def create(cls, path: Path, core: int) -> Self:
        """A new, zeroed block for ``core`` at ``path``."""
        block = cls(path, core)
        ctypes.memset(block._slots, 0, cls.SLOTS * 8)
        block._slots[HDR_VERSION] = cls.VERSION
        block._slots[HDR_CORE] = core
        block._slots[HDR_MAGIC] = cls.MAGIC  # last: a reader takes the block from now on
        return block

    def claim(self, pid: int) -> None:
        """Marks the block as written by ``pid`` (the worker, after fork)."""
        self._slots[HDR_PID] = pid
        self._lock = threading.Lock()  # a lock inherited across fork may be held

    def _raw(self) -> tuple[int, ...] | None:
        """Every slot's value, or None when the block is not (yet) a valid block."""
        raw = struct.unpack_from(f"<{self.SLOTS}Q", self._map, 0)
        if raw[HDR_MAGIC] != self.MAGIC or raw[HDR_VERSION] != self.VERSION:
            return None
        return raw

    def close(self) -> None:
        del self._slots
        self._map.close()
