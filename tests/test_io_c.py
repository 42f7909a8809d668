"""The io/ backends' own C tests (tests/c/), built and run plain, under ASan+UBSan and
(pair) under TSan. The afpacket and tap parts need root and say "skipped" without it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
def test_io_backends_c_suite(repo_root: Path, tmp_path: Path) -> None:
    proc = subprocess.run(
        ["sh", str(repo_root / "tests" / "c" / "run_io_tests.sh"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert " 0 failed" in proc.stdout and "!!" not in proc.stdout
