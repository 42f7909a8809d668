"""web_bench's servers: the appliance (mtcp, linux), nginx and lighttpd started in the
server namespace with their configuration, the files they serve and the TLS certificate, the
appliance's counters read over its management address. Part of ``make bench``
(web_bench.py)."""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import common

from mtcp_core.testing import netns

PROG = "web_bench"
PORT = 80
TLS_PORT = 443
TLS_SERVERS = ("mtcp", "linux", "nginx")  # lighttpd is left out of the HTTPS rows
TLS_KINDS = ("tls-full", "tls-resumed", "tls-keepalive")
TLS_LOAD_MAX = 10_000_000  # connections a handshake row makes at most
SERVERS = ("mtcp", "linux", "nginx", "lighttpd")
# more appliance variants (--servers): mtcp without the static responder, with busy polling
VARIANTS = {"mtcp-noresp": ["--no-responder"], "mtcp-bp": ["--busy-poll-us", "50"]}
LOAD_KEEPALIVE = 100  # requests per connection of the load generator's keep-alive rows
SCALING_SERVERS = ("mtcp", "linux", "nginx")
METRICS = "127.0.0.1:9100"  # the appliance's management address, inside the server namespace
NAN = float("nan")
SMALL_FILES = {64: "/f64.bin", 4096: "/f4k.bin"}
BIG_FILE = "/big.bin"
PRIORITY_SHORT_CONNS, PRIORITY_BULK_FLOWS = 16, 8
START_TIMEOUT_S = 30.0
# the appliance's counters kept per row (differences over the row, summed over cores)
COUNTERS = (
    "mtcp_retransmits_total",
    "mtcp_rsts_sent_total",
    "mtcp_rsts_received_total",
    "mtcp_syn_cookies_sent_total",
    "mtcp_challenge_acks_total",
    "mtcp_drops_total",
    "mtcp_worker_restarts_total",
    "mtcp_http_requests_total",
    # wake-ups: device waits (ppoll), eventfd signals mTCP -> app and app -> mTCP, app waits
    "mtcp_sleeps_total",
    "mtcp_app_signals_total",
    "mtcp_stack_kicks_total",
    "mtcp_app_waits_total",
    "mtcp_busy_polls_total",
    "mtcp_rsp_hits_total",
    "mtcp_rsp_misses_total",
)
WAKE_COUNTERS = ("sleeps", "app_signals", "stack_kicks", "app_waits")


NGINX_CONF = """\
worker_processes {workers};
worker_cpu_affinity {affinity};
daemon off;
master_process on;
user root;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 16384; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    default_type application/octet-stream;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server {{
        listen {ip}:{port};
        root {root};
    }}
{tls}}}
"""
# the same certificate and policy as the appliance's (appliance.http.tls): TLS 1.3/1.2,
# Mozilla intermediate ciphers and groups, session tickets (nginx's default), no cache
NGINX_TLS = """    server {{
        listen {ip}:{port} ssl;
        root {root};
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_ciphers {ciphers};
        ssl_ecdh_curve {groups};
        ssl_prefer_server_ciphers off;
        ssl_session_tickets on;
        ssl_session_cache off;
    }}
"""

LIGHTTPD_CONF = """\
server.document-root = "{root}"
server.bind = "{ip}"
server.port = {port}
server.errorlog = "{tmp}/error.log"
server.network-backend = "sendfile"
server.max-fds = 16384
server.max-connections = 8192
server.max-worker = {max_worker}
mimetype.assign = ("" => "application/octet-stream")
"""



def appliance_argv() -> list[str]:
    """The appliance's command: the entry point of the venv whose Python runs this script."""
    return [str(Path(sys.executable).with_name("mtcp-appliance"))]


def _clean_env() -> dict[str, str]:
    # settings of the appliance come from our flags only
    return {k: v for k, v in os.environ.items() if not k.startswith("MTCP_APPLIANCE_")}


class Server:
    """One server under test in the server namespace, pinned to ``cpus``."""

    def __init__(
        self,
        kind: str,
        sv: netns.Namespace,
        link: netns.Veth,
        cpus: Sequence[int],
        site: Path,
        *,
        workers: int = 1,
        priority: bool = True,
        extra: Sequence[str] = (),
        tls: tuple[Path, Path] | None = None,
    ) -> None:
        self.kind, self.sv, self.link, self.cpus = kind, sv, link, list(cpus)
        self.tls = tls  # (certificate, key): HTTPS on TLS_PORT too
        self.extra = list(extra)  # more flags for the appliance
        self.site, self.workers, self.priority = site, workers, priority
        self.ip = str(link.addr_b.ip)
        self.tmp = Path(tempfile.mkdtemp(prefix=f"web-bench-{kind}-"))
        os.chmod(self.tmp, 0o755)
        self.proc: subprocess.Popen[bytes] | None = None
        self.kernel_addr = False
        self.start_s = NAN

    @property
    def appliance(self) -> bool:
        return self.kind in ("mtcp", "linux", *VARIANTS)

    @property
    def user_level(self) -> bool:
        return self.kind == "mtcp" or self.kind in VARIANTS

    def argv(self) -> list[str]:
        k, n = self.kind, str(self.workers)
        flags = f"--port {PORT} --cores {n} --metrics {METRICS} --drain-timeout 2".split()
        flags += ["--root", str(self.site), *self.extra]
        if k in VARIANTS:
            flags += VARIANTS[k]
            k = "mtcp"
        if self.tls is not None and k in ("mtcp", "linux"):
            flags += ["--tls-port", str(TLS_PORT), "--cert", str(self.tls[0])]
            flags += ["--key", str(self.tls[1])]
        if k == "mtcp":
            argv = [*appliance_argv(), "serve", *"--stack mtcp --backend afpacket".split()]
            argv += ["--iface", self.link.if_b, "--ip", str(self.link.addr_b), *flags]
            return argv + ([] if self.priority else ["--no-priority"])
        if k == "linux":
            return [*appliance_argv(), "serve", "--stack", "linux", "--ip", self.ip, *flags]
        if k == "nginx":
            masks = " ".join(format(1 << c, "b") for c in self.cpus[: self.workers])
            conf = self.tmp / "nginx.conf"
            tls = ""
            if self.tls is not None:
                from appliance.http import tls as app_tls

                tls = NGINX_TLS.format(
                    ip=self.ip,
                    port=TLS_PORT,
                    root=self.site,
                    cert=self.tls[0],
                    key=self.tls[1],
                    ciphers=app_tls.TLS12_CIPHERS,
                    groups=app_tls.GROUPS.replace("P-256", "prime256v1").replace(
                        "P-384", "secp384r1"
                    ),
                )
            conf.write_text(
                NGINX_CONF.format(
                    workers=n,
                    affinity=masks,
                    tmp=self.tmp,
                    ip=self.ip,
                    port=PORT,
                    root=self.site,
                    tls=tls,
                )
            )
            return ["nginx", "-c", str(conf), "-p", str(self.tmp)]
        if k == "lighttpd":
            conf = self.tmp / "lighttpd.conf"
            conf.write_text(
                LIGHTTPD_CONF.format(
                    root=self.site,
                    ip=self.ip,
                    port=PORT,
                    tmp=self.tmp,
                    max_worker=0 if n == "1" else n,
                )
            )
            return ["lighttpd", "-D", "-f", str(conf)]
        raise ValueError(k)

    def start(self, cl: netns.Namespace) -> None:
        if not self.user_level:
            self.sv.ip("addr", "add", str(self.link.addr_b), "dev", self.link.if_b)
            self.kernel_addr = True
        t0 = time.monotonic()
        out = open(self.tmp / "stdout.log", "wb")  # noqa: SIM115 - closed with the process
        err = open(self.tmp / "stderr.log", "wb")  # noqa: SIM115
        try:
            self.proc = subprocess.Popen(
                common.in_ns(self.sv, self.cpus, self.argv()),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=_clean_env(),
                preexec_fn=common.die_with_parent,
            )
        finally:
            out.close()
            err.close()
        deadline = t0 + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.kind} exited with {self.proc.returncode}: {self.log()}")
            if cl.call(http_get, self.ip, SMALL_FILES[64], 1.0) == 200:
                self.start_s = time.monotonic() - t0
                return
            time.sleep(0.1)
        raise RuntimeError(f"{self.kind} did not answer within {START_TIMEOUT_S:g}s: {self.log()}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def cpu_seconds(self) -> float:
        return common.tree_cpu_seconds(self.pid)

    def counters(self) -> dict[str, float]:
        """The appliance's counters of COUNTERS, summed over cores ({} for the others)."""
        if not self.appliance:
            return {}
        try:
            text = self.sv.call(_fetch, f"http://{METRICS}/metrics", 5.0)
        except OSError:
            return {}
        return parse_counters(text)

    def log(self) -> str:
        parts = []
        for name in ("stderr.log", "stdout.log", "error.log"):
            with contextlib.suppress(OSError):
                if t := (self.tmp / name).read_text(errors="replace").strip():
                    parts.append(f"{name}: {t[-800:]}")
        return " | ".join(parts) or "(no output)"

    def stop(self) -> None:
        try:
            if self.proc is not None:
                common.stop_process(self.proc, 15.0)
        finally:
            if self.kernel_addr:
                self.sv.ip("addr", "del", str(self.link.addr_b), "dev", self.link.if_b)
                self.kernel_addr = False
            shutil.rmtree(self.tmp, ignore_errors=True)


def http_get(ip: str, path: str, timeout: float) -> int:
    """The status of GET http://ip:PORT/path (0: no answer); run inside the client namespace."""
    conn = http.client.HTTPConnection(ip, PORT, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    except OSError:
        return 0
    finally:
        conn.close()


def _fetch(url: str, timeout: float) -> str:
    host, _, rest = url.removeprefix("http://").partition("/")
    h, _, p = host.partition(":")
    conn = http.client.HTTPConnection(h, int(p or 80), timeout=timeout)
    try:
        conn.request("GET", "/" + rest)
        return conn.getresponse().read().decode(errors="replace")
    finally:
        conn.close()


def parse_counters(text: str) -> dict[str, float]:
    """Prometheus text: the families of COUNTERS summed over cores, drops by reason and HTTP
    responses by status class kept apart (``mtcp_drops_total{reason="x"}`` → ``drops:x``)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_labels, _, value = line.rpartition(" ")
        name, _, labels = name_labels.partition("{")
        if name not in COUNTERS:
            continue
        key = name.removeprefix("mtcp_").removesuffix("_total")
        for label in ("reason", "status_class"):
            if f'{label}="' in labels:
                key += ":" + labels.split(f'{label}="', 1)[1].split('"', 1)[0]
        with contextlib.suppress(ValueError):
            out[key] = out.get(key, 0.0) + float(value)
    return out


def counter_delta(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    return {k: v - a.get(k, 0.0) for k, v in b.items() if v - a.get(k, 0.0)}


# ---------------------------------------------------------------- one row



def make_site(root: Path, big: int) -> None:
    os.chmod(root, 0o755)
    for size, path in SMALL_FILES.items():
        (root / path[1:]).write_bytes(os.urandom(size))
    block = os.urandom(1 << 20)
    with open(root / BIG_FILE[1:], "wb") as f:
        for _ in range(big >> 20):
            f.write(block)
        f.write(block[: big % (1 << 20)])


def make_cert(folder: Path, ip: str) -> tuple[Path, Path]:
    """A self-signed ECDSA P-256 certificate for ``ip`` (and bench.test): every server of
    the HTTPS rows uses it."""
    os.chmod(folder, 0o755)
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-keyout", str(key), "-out", str(cert), "-days", "2", "-nodes", "-subj", "/CN=bench.test",
         "-addext", f"subjectAltName=DNS:bench.test,IP:{ip}"],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    os.chmod(key, 0o644)  # nginx's workers run as root here; the appliance reads it too
    return cert, key
