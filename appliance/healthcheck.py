"""``python -m appliance.healthcheck [HOST:PORT]``: the container's health check.

Asks the supervisor's ``/healthz`` on the management address (on the kernel's stack; the
site itself, on the user-level stack on ``eth0``, cannot be reached over the container's
loopback), prints the answer and exits 0 when healthy, 1 otherwise. The address is the
argument, else ``MTCP_APPLIANCE_METRICS``, else 127.0.0.1:9100; a wildcard host (0.0.0.0,
::) is asked on loopback.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence

from appliance.config import DEFAULT_METRICS, ENV_PREFIX, ConfigError, _hostport

TIMEOUT_S = 3.0


def url_for(address: str) -> str:
    try:
        host, port = _hostport(address)
    except ValueError as exc:
        raise ConfigError("metrics", str(exc)) from None
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"http://[{host}]:{port}/healthz" if ":" in host else f"http://{host}:{port}/healthz"


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    address = args[0] if args else os.environ.get(ENV_PREFIX + "METRICS", DEFAULT_METRICS)
    try:
        url = url_for(address)
    except ConfigError as exc:
        print(f"healthcheck: {exc}", file=sys.stderr)
        return 2
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as resp:
            body = resp.read().decode(errors="replace")
            status = resp.status
    except urllib.error.HTTPError as exc:
        body, status = exc.read().decode(errors="replace"), exc.code
    except (OSError, ValueError) as exc:
        print(f"healthcheck: {url}: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(body)
    return 0 if status == 200 else 1


if __name__ == "__main__":
    sys.exit(main())
