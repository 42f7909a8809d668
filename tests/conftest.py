"""Shared fixtures. Namespace tests: mark them ``@pytest.mark.requires_root`` or use the
``netlab`` fixture; both skip with the reason when the privileges are missing."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent

# Tests import the installed project, never the folders at the repository root, where
# `appliance` lacks `appliance.http` (installed from http/) and mtcp_core lacks _native.
# `python -m pytest` would put the root first on sys.path: take it off.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != REPO_ROOT]

from mtcp_core.testing import kernel, netns  # noqa: E402  (the installed one, after that)

if os.environ.get("LD_PRELOAD"):
    # loaded into this process already; children get it back only when they are Python
    # (netns.child_env)
    os.environ[netns.PRELOAD_VAR] = os.environ.pop("LD_PRELOAD")


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("requires_root") is not None:
        reason = netns.missing_privileges()
        if reason is not None:
            pytest.skip(reason)


@pytest.fixture
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture
def netlab() -> Iterator[netns.Lab]:
    """A netns.Lab whose namespaces, links and processes are removed after the test,
    also when it fails."""
    reason = netns.missing_privileges()
    if reason is not None:
        pytest.skip(reason)
    with netns.Lab() as lab:
        yield lab


@pytest.fixture
def lossrig(netlab: netns.Lab) -> Iterator[kernel.LossRig]:
    """The core and a kernel peer across a bridge that nftables can make lossy
    (``mtcp_core.testing.kernel.make_loss_rig``); skips without nft."""
    reason = kernel.nft_missing()
    if reason:
        pytest.skip(reason)
    yield from kernel.make_loss_rig(netlab)
