"""Per-core pools: preallocated once, on huge pages when the kernel has them reserved."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

import mtcp_core as m

NR_HUGEPAGES = Path("/proc/sys/vm/nr_hugepages")


@pytest.fixture
def reserved_hugepages() -> Iterator[int]:
    if os.geteuid() != 0 or not NR_HUGEPAGES.exists():
        pytest.skip("needs root and /proc/sys/vm/nr_hugepages to reserve huge pages")
    before = int(NR_HUGEPAGES.read_text())
    NR_HUGEPAGES.write_text(str(before + 16))
    got = int(NR_HUGEPAGES.read_text()) - before
    try:
        if got < 8:
            pytest.skip(f"the kernel reserved only {got} huge pages")
        yield got
    finally:
        NR_HUGEPAGES.write_text(str(before))


def make_stack(link: m.PairLink, hugepages: bool) -> m.Stack:
    return m.Stack("pair", "198.18.0.1/24", pair=link, max_conns=32, hugepages=hugepages)


def test_pools_use_huge_pages_when_reserved(reserved_hugepages: int) -> None:
    link = m.PairLink()
    try:
        with make_stack(link, hugepages=True) as stack:
            st = stack.context(0).stats()
            assert st["hugepages"] == 3  # TCBs, send buffers, receive buffers
            assert st["pool_tcb_free"] == st["pool_tcb_total"] == 32
    finally:
        link.close()


def test_pools_fall_back_to_normal_pages() -> None:
    link = m.PairLink()
    try:
        with make_stack(link, hugepages=False) as stack:
            st = stack.context(0).stats()
            assert st["hugepages"] == 0
            assert st["pool_sndbuf_free"] == st["pool_sndbuf_total"] == 32
            assert st["pool_rcvbuf_free"] == st["pool_rcvbuf_total"] == 32
    finally:
        link.close()
