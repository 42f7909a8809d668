"""The root-level http/ folder must never shadow the standard library's http (DESIGN.md, Trap)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_stdlib_http_and_prometheus_import_from_the_repository_root(repo_root: Path) -> None:
    # `python -c` puts the current directory first on sys.path: the repository root here.
    code = (
        "import os, sys, http, http.server, prometheus_client; "
        "assert sys.path[0] == '', sys.path[0]; "
        "assert os.path.dirname(http.__file__) != os.path.abspath('http'), http.__file__"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=repo_root, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert not (repo_root / "http" / "__init__.py").exists()


def test_http_folder_is_installed_as_appliance_http() -> None:
    import http

    from appliance.http import connection

    assert Path(connection.__file__).parent.name == "http"
    assert http.__file__ is not None and not hasattr(http, "connection")  # the stdlib's
