"""Writes deploy/kubernetes/grafana-dashboard.yaml: metrics/grafana-dashboard.json as a
ConfigMap that Grafana's dashboard sidecar picks up (label ``grafana_dashboard: "1"``).

    python3 deploy/dashboard_configmap.py          # rewrite the ConfigMap from the JSON
    python3 deploy/dashboard_configmap.py --check  # exit 1 when it differs (tests do this)

The JSON file is the source; the ConfigMap carries it byte for byte, so it cannot drift.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "metrics" / "grafana-dashboard.json"
TARGET = ROOT / "deploy" / "kubernetes" / "grafana-dashboard.yaml"

HEADER = """\
# GENERATED from metrics/grafana-dashboard.json by deploy/dashboard_configmap.py: do not edit.
apiVersion: v1
kind: ConfigMap
metadata:
  name: mtcp-appliance-dashboard
  labels:
    app.kubernetes.io/name: mtcp-appliance
    app.kubernetes.io/component: dashboard
    grafana_dashboard: "1"
data:
  mtcp-appliance.json: |-
"""


def render(source: Path = SOURCE) -> str:
    text = source.read_text(encoding="utf-8").rstrip("\n")
    if "\t" in text or any(line != line.rstrip() for line in text.splitlines()):
        raise ValueError(f"{source}: tabs or trailing spaces do not survive a YAML block")
    body = "\n".join(("    " + line) if line else "" for line in text.splitlines())
    return HEADER + body + "\n"


def main(argv: list[str]) -> int:
    want = render()
    if argv[1:] == ["--check"]:
        have = TARGET.read_text(encoding="utf-8") if TARGET.exists() else ""
        if have != want:
            print(f"{TARGET} is out of date: run python3 deploy/dashboard_configmap.py")
            return 1
        return 0
    if argv[1:]:
        print(__doc__, file=sys.stderr)
        return 2
    TARGET.write_text(want, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
