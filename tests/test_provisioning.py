"""Grafana provisioning and the container's doctor: the dashboard picks its Prometheus data
source through a dashboard variable (so it works imported and provisioned by a sidecar,
which fills no ``${DS_...}`` import input), and ``doctor --nft-guard`` takes the address the
kernel shares with the stack for what it is."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from mtcp_core.testing import netns

REPO = Path(__file__).resolve().parent.parent
DASHBOARD = REPO / "metrics" / "grafana-dashboard.json"
CONFIGMAP = REPO / "deploy" / "kubernetes" / "grafana-dashboard.yaml"
EXE = str(Path(sys.executable).parent / "mtcp-appliance")


def _datasources(node: Any, path: str = "") -> list[tuple[str, Any]]:
    out = []
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "datasource":
                out.append((f"{path}.{k}", v))
            out += _datasources(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _datasources(v, f"{path}[{i}]")
    return out


@pytest.mark.parametrize("source", ["json", "configmap"])
def test_dashboard_selects_its_data_source_by_a_variable(source: str) -> None:
    if source == "json":
        board = json.loads(DASHBOARD.read_text())
    else:
        cm = yaml.safe_load(CONFIGMAP.read_text())
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        board = json.loads(cm["data"]["mtcp-appliance.json"])
    text = json.dumps(board)
    assert "__inputs" not in board and "${DS_" not in text  # no import-time input
    variables = {v["name"]: v for v in board["templating"]["list"]}
    ds = variables["datasource"]
    assert ds["type"] == "datasource" and ds["query"] == "prometheus"
    refs = _datasources(board["panels"])
    assert refs, "no panel names a data source"
    bad = [(p, v) for p, v in refs if v != {"type": "prometheus", "uid": "${datasource}"}]
    assert bad == [], bad[:5]


@pytest.mark.requires_root
def test_doctor_with_nft_guard_accepts_the_shared_address(
    netlab: netns.Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    if shutil.which("nft") is None:
        pytest.skip("nft is not installed (Debian package nftables)")
    a, b = netlab.namespace("ngA"), netlab.namespace("ngB")
    link = netlab.veth(a, b)  # the kernel has the address: a container's eth0
    ifname, addr = link.if_a, link.addr_a
    for name in list(os.environ):
        if name.startswith("MTCP_APPLIANCE_"):
            monkeypatch.delenv(name)
    argv = [
        EXE,
        "doctor",
        "--backend",
        "afpacket",
        "--iface",
        ifname,
        "--ip",
        str(addr),
        "--metrics",
        "127.0.0.1:0",
    ]
    plain = a.run(argv, check=False)
    assert f"FAIL the kernel also has {addr.ip} on {ifname}" in plain.stdout
    guarded = a.run([*argv, "--nft-guard"], check=False)
    assert "FAIL the kernel also has" not in guarded.stdout
    assert (
        f"ok   the kernel also has {addr.ip} on {ifname}: shared, --nft-guard keeps the kernel "
        f"off TCP port 80 (table mtcp_appliance_{ifname})"
    ) in guarded.stdout, guarded.stdout
