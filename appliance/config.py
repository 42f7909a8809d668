"""The appliance's configuration: one ``Config`` from three layers.

A TOML file (``--config FILE`` or ``MTCP_APPLIANCE_CONFIG``), then ``MTCP_APPLIANCE_<KEY>``
environment variables, then command-line flags: each layer overrides the one before. A key
has one name everywhere: the flag ``--access-log`` is the key ``access_log`` in the file and
the variable ``MTCP_APPLIANCE_ACCESS_LOG``. Every value is checked before anything starts; a
bad one raises ``ConfigError`` naming the key, where it came from and what is wrong.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance import netfilter

ENV_PREFIX = "MTCP_APPLIANCE_"
ENV_CONFIG = ENV_PREFIX + "CONFIG"

# static/ is installed as appliance.static; an editable install links its files back to the
# checkout's static/, which is then the folder to serve (served files may not resolve outside it).
DEFAULT_ROOT = (Path(__file__).parent / "static" / "index.html").resolve().parent
DEFAULT_MTCP_IP = "198.18.0.2/24"
DEFAULT_TAP_HOST = "198.18.0.1/24"  # host side of the TAP
DEFAULT_TAP_NAME = "mtcp0"
DEFAULT_LINUX_IP = "127.0.0.1"
DEFAULT_METRICS = "127.0.0.1:9100"
DEFAULT_DRAIN_TIMEOUT_S = 30.0
# lingering close, as nginx's lingering_close / lingering_time / lingering_timeout
DEFAULT_LINGERING_CLOSE = "on"
DEFAULT_LINGERING_TIME_S = 30.0
DEFAULT_LINGERING_TIMEOUT_S = 5.0
# mtcp send buffer per connection: a large file at 10+ Gb/s needs ~ms of the link queued,
# as the app thread shares the core with the mTCP thread. 100 MiB over a veth: 64 KiB
# 0.39x nginx, 1 MiB 1.32x, 4 MiB 1.66x (bench/web_bench.py, one run each); 1 MiB keeps
# the worst case (every connection of a core filling its buffer) at 4 GiB a core.
DEFAULT_SNDBUF = 1 << 20
DEFAULT_BUSY_POLL_US = 0
IFNAMSIZ = 16


class ConfigError(ValueError):
    """A bad setting: ``key`` (as written in the file), ``source`` and ``reason``."""

    def __init__(self, key: str, reason: str, source: str = "") -> None:
        self.key, self.reason, self.source = key, reason, source
        where = f" (from {source})" if source else ""
        super().__init__(f"{key}{where}: {reason}")


def available_cpus() -> list[int]:
    """The CPUs this process may run on, in order."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return list(range(os.cpu_count() or 1))


@dataclass(frozen=True)
class Config:
    """Everything ``serve`` needs, checked and with the defaults filled in."""

    stack: str = "mtcp"
    backend: str = "tap"
    iface: str | None = None
    ip: str = DEFAULT_MTCP_IP  # address/prefix (mtcp) or address (linux)
    gateway: str | None = None
    port: int = 80
    root: Path = DEFAULT_ROOT
    cores: int = 1
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9100
    access_log: Path | None = None
    tx_priority: bool = True
    afpacket_rx: str = "copy"
    pcap: str | None = None
    tap_host: str | None = DEFAULT_TAP_HOST
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT_S
    nft_guard: bool = False
    tx_rate_mbps: int = 0  # mtcp: the link's rate for the stack's shaper (0: none)
    sndbuf: int = DEFAULT_SNDBUF  # mtcp: send buffer per connection, bytes
    log_format: str = "combined"  # access log: combined or json
    event_log_format: str = "text"  # the event log (stderr): text or json
    spa_fallback: str | None = None  # the default site's SPA fallback ("/index.html")
    # file-only tables (appliance/sites.py checks them): [[redirects]], [[headers]], [[sites]]
    redirects: tuple[dict[str, Any], ...] = ()
    headers: tuple[dict[str, Any], ...] = ()
    sites: tuple[dict[str, Any], ...] = ()
    config_file: Path | None = None
    table_lines: dict[tuple[Any, ...], int] = field(default_factory=dict, compare=False)
    mem_budget_mb: int = 0  # mtcp: socket-buffer memory per core, MiB (0: the stack's 512)
    max_conns_per_source: int = 0  # mtcp: connections per client address per core (0: any)
    # HTTPS (appliance.http.tls)
    tls_port: int | None = None
    cert: Path | None = None
    key: Path | None = None
    ocsp_staple: Path | None = None
    sni: tuple[tuple[str, Path, Path, Path | None], ...] = ()  # (name, cert, key, staple)
    redirect_http: bool = False
    hsts: int = 0  # Strict-Transport-Security max-age, seconds (0: not sent)
    lingering_close: str = DEFAULT_LINGERING_CLOSE
    lingering_time: float = DEFAULT_LINGERING_TIME_S
    lingering_timeout: float = DEFAULT_LINGERING_TIMEOUT_S
    congestion: str = "cubic"  # mtcp: congestion control of every connection
    responder: bool = True  # mtcp: cached small files answered inside the stack
    busy_poll_us: int = DEFAULT_BUSY_POLL_US  # mtcp: poll after a busy round before sleeping
    sources: dict[str, str] = field(default_factory=dict, compare=False)  # key -> where from

    @property
    def host(self) -> str:
        """The address the site is served on, without the prefix."""
        return self.ip.split("/")[0]

    @property
    def serve_url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    @property
    def tls_url(self) -> str | None:
        if self.tls_port is None:
            return None
        port = "" if self.tls_port == 443 else f":{self.tls_port}"
        return f"https://{self.host}{port}/"

    @property
    def metrics_url(self) -> str:
        host = f"[{self.metrics_host}]" if ":" in self.metrics_host else self.metrics_host
        return f"http://{host}:{self.metrics_port}"


# ------------------------------------------------------------------------- value parsers
# Each takes the raw value (a TOML value, or a string from the environment or a flag) and
# returns the checked value or raises ValueError with the reason.


def _str(v: Any) -> str:
    if not isinstance(v, str):
        raise ValueError(f"must be a string, got {v!r}")
    return v


def _choice(*choices: str) -> Callable[[Any], str]:
    def parse(v: Any) -> str:
        s = _str(v)
        if s not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}, got {s!r}")
        return s

    return parse


def _int(lo: int, hi: int) -> Callable[[Any], int]:
    def parse(v: Any) -> int:
        if isinstance(v, bool):
            raise ValueError(f"must be an integer {lo}..{hi}, got {v!r}")
        if isinstance(v, str):
            try:
                v = int(v.strip(), 10)
            except ValueError:
                raise ValueError(f"must be an integer {lo}..{hi}, got {v!r}") from None
        if not isinstance(v, int) or not lo <= v <= hi:
            raise ValueError(f"must be an integer {lo}..{hi}, got {v!r}")
        return v

    return parse


def _float_pos(v: Any) -> float:
    if isinstance(v, bool):
        raise ValueError(f"must be a number of seconds > 0, got {v!r}")
    if isinstance(v, str):
        try:
            v = float(v)
        except ValueError:
            raise ValueError(f"must be a number of seconds > 0, got {v!r}") from None
    if not isinstance(v, int | float) or not 0 < v <= 86400:
        raise ValueError(f"must be a number of seconds > 0 (at most 86400), got {v!r}")
    return float(v)


def _bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, str):
        low = v.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off", ""):
            return False
    raise ValueError(f"must be true or false, got {v!r}")


def _iface(v: Any) -> str:
    s = _str(v)
    if not s or len(s) >= IFNAMSIZ or "/" in s or any(c.isspace() for c in s):
        raise ValueError(f"must be an interface name of 1..{IFNAMSIZ - 1} characters, got {s!r}")
    return s


def _cidr(v: Any) -> str:
    s = _str(v)
    try:
        iface = ipaddress.IPv4Interface(s)
    except ValueError as exc:
        raise ValueError(f"must be an IPv4 address/prefix such as 198.18.0.2/24: {exc}") from None
    if "/" not in s:
        iface = ipaddress.IPv4Interface(f"{s}/24")
    return str(iface)


def _ipv4(v: Any) -> str:
    s = _str(v)
    try:
        return str(ipaddress.IPv4Address(s))
    except ValueError as exc:
        raise ValueError(f"must be an IPv4 address: {exc}") from None


def _hostport(v: Any) -> tuple[str, int]:
    s = _str(v)
    host, sep, port = s.rpartition(":")
    host = host.strip("[]")
    if not sep or not host:
        raise ValueError(f"must be host:port such as 127.0.0.1:9100, got {s!r}")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if host != "localhost":
            raise ValueError(f"host must be an IP address or localhost, got {host!r}") from None
    try:
        p = int(port, 10)
    except ValueError:
        raise ValueError(f"port must be an integer 0..65535, got {port!r}") from None
    if not 0 <= p <= 65535:
        raise ValueError(f"port must be an integer 0..65535, got {p}")
    return host, p


def _path(v: Any) -> Path:
    s = _str(v)
    if not s:
        raise ValueError("must be a path, got an empty string")
    return Path(s).expanduser()


def _log_file(v: Any) -> Path:
    """A log file, or "-" for stdout."""
    if v == "-" or v == Path("-"):
        return Path("-")
    return _writable_file(v)


def _site_path(v: Any) -> str:
    s = _str(v)
    if not s.startswith("/") or any(c in s for c in "?#*") or any(c.isspace() for c in s):
        raise ValueError(f"must be a path of the site such as /index.html, got {s!r}")
    return s


def _writable_file(v: Any) -> Path:
    p = _path(v)
    if p.is_dir():
        raise ValueError(f"{p} is a folder, not a file")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise ValueError(f"its folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise ValueError(f"its folder {parent} is not writable")
    return p


def _root(v: Any) -> Path:
    p = _path(v)
    if not p.is_dir():
        raise ValueError(f"{p}: not a folder")
    return p


_LABEL = r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?"
_HOSTNAME = re.compile(rf"(?:\*\.)?{_LABEL}(?:\.{_LABEL})*")


def _sni(v: Any) -> tuple[tuple[str, Path, Path, Path | None], ...]:
    """Certificates by server name. TOML: a table ``[sni."name"]`` with ``cert``, ``key``
    (and ``ocsp_staple``); a variable or flag: ``NAME=CERT:KEY[:STAPLE]`` entries separated
    by ``;`` or spaces. A name may be a wildcard of one label (``*.example.org``)."""
    entries: list[tuple[str, Any, Any, Any]] = []
    if isinstance(v, dict):
        for name, spec in v.items():
            if not isinstance(spec, dict) or set(spec) - {"cert", "key", "ocsp_staple"}:
                raise ValueError(
                    f"{name!r}: must be a table with cert, key (and ocsp_staple), got {spec!r}"
                )
            if "cert" not in spec or "key" not in spec:
                raise ValueError(f"{name!r}: needs both cert and key")
            entries.append((name, spec["cert"], spec["key"], spec.get("ocsp_staple")))
    else:
        for item in _str(v).replace(";", " ").split():
            name, eq, files = item.partition("=")
            parts = files.split(":")
            if not eq or len(parts) not in (2, 3) or not all(parts):
                raise ValueError(f"entries must be NAME=CERT:KEY[:STAPLE], got {item!r}")
            entries.append((name, parts[0], parts[1], parts[2] if len(parts) == 3 else None))
    out = []
    seen = set()
    for name, cert, key, staple in entries:
        low = str(name).lower().rstrip(".")
        if not _HOSTNAME.fullmatch(low):
            raise ValueError(f"{name!r} is not a host name (or *.domain)")
        if low in seen:
            raise ValueError(f"{name!r} is given twice")
        seen.add(low)
        out.append((low, _path(cert), _path(key), _path(staple) if staple else None))
    return tuple(out)


def _pcap(v: Any) -> str:
    s = _str(v)
    _writable_file(s.replace("%u", "0"))
    return s


# key -> (parser, help). Flags are "--" + key with "_" -> "-"; "no_priority" is "--no-priority".
KEYS: dict[str, tuple[Callable[[Any], Any], str]] = {
    "stack": (_choice("mtcp", "linux"), "mtcp (user-level stack, default) or linux (kernel)"),
    "backend": (_choice("tap", "afpacket"), "mtcp packet I/O: tap (default) or afpacket"),
    "iface": (_iface, f"tap: device name (default {DEFAULT_TAP_NAME}); afpacket: the interface"),
    "ip": (
        _str,
        f"address/prefix (default {DEFAULT_MTCP_IP}; linux: {DEFAULT_LINUX_IP}); afpacket: "
        "auto = the interface's own address (and its default route as the gateway)",
    ),
    "gateway": (_ipv4, "mtcp: next hop for destinations off the subnet"),
    "port": (_int(1, 65535), "TCP port (default 80 for mtcp, 8080 for linux)"),
    "root": (_root, "folder to serve (default: the bundled static/)"),
    "cores": (_int(1, 256), "worker processes, one per core (default: all CPUs)"),
    "metrics": (_hostport, f"management address host:port (default {DEFAULT_METRICS})"),
    "access_log": (_log_file, "access log file, - for stdout (default: none)"),
    "log_format": (
        _choice("combined", "json"),
        "access log format: combined (default) or json (one object per line)",
    ),
    "event_log_format": (
        _choice("text", "json"),
        "event log (stderr) format: text (default) or json (one object per line)",
    ),
    "spa_fallback": (
        _site_path,
        "single-page app: answer unknown paths without an extension with this file "
        "(such as /index.html); real files and missing assets keep their answer",
    ),
    "no_priority": (_bool, "mtcp: one FIFO TX list instead of control > ACK > data"),
    "afpacket_rx": (
        _choice("copy", "ring"),
        "afpacket receive path: copy (recvmmsg, each frame at once; default) or ring "
        "(TPACKET_V3, zero copy, a block at a time: up to 1 ms later)",
    ),
    "pcap": (_pcap, "mtcp: capture to this pcap file (%u: core number)"),
    "sndbuf": (
        _int(4096, 64 << 20),
        f"mtcp: send buffer per connection in bytes, rounded down to a power of two (default "
        f"{DEFAULT_SNDBUF}: a large file keeps the link busy while the app thread is not "
        "running; memory is used only as far as a connection fills it)",
    ),
    "mem_budget_mb": (
        _int(0, 1 << 20),
        "mtcp: socket-buffer memory per core in MiB (default 0: 512). From half of it on, new "
        "connections get 16 KiB buffers each way; past it, idle connections are evicted or "
        "new ones refused. The connection pool is sized from it (MiB * 32 connections)",
    ),
    "max_conns_per_source": (
        _int(0, 1 << 20),
        "mtcp: connections one client address may hold per core (default 0: no limit); its "
        "further SYNs are answered with RST (as nginx's limit_conn answers 503)",
    ),
    "tx_rate_mbps": (
        _int(0, 1_000_000),
        "mtcp: shape each core's sending to a link of this many Mb/s (default 0: as fast as "
        "the device takes frames); for a veth, which has no line rate of its own",
    ),
    "congestion": (
        _choice("cubic", "newreno"),
        "mtcp: congestion control, cubic (RFC 9438 with HyStart++; default) or newreno "
        "(RFC 5681); the kernel's stack takes sysctl net.ipv4.tcp_congestion_control",
    ),
    "tap_host": (_str, "tap: host side address/prefix (default 198.18.0.1/24, or .1 of --ip)"),
    "drain_timeout": (_float_pos, "seconds to finish in-flight requests on SIGTERM (30)"),
    "lingering_close": (
        _choice("on", "off", "always"),
        "after the last response of a connection whose request was not read in full (an "
        "error such as 413 or 431): shut the write side, read and drop what still comes, "
        "then close, so that the client gets the response instead of a reset (on; always: "
        "every connection the server closes; off)",
    ),
    "lingering_time": (_float_pos, "lingering close: seconds in all at most (30)"),
    "lingering_timeout": (
        _float_pos,
        "lingering close: seconds without a byte from the client before closing (5)",
    ),
    "no_responder": (
        _bool,
        "mtcp: answer every request in Python (default: cached small files are answered "
        "by the stack's static responder, in the round that received the request)",
    ),
    "busy_poll_us": (
        _int(0, 10_000),
        f"mtcp: after a round that did work, poll the device and the app's queue this many "
        f"microseconds before sleeping (default {DEFAULT_BUSY_POLL_US}; 0: sleep at once; "
        "an idle stack never polls)",
    ),
    "nft_guard": (
        _bool,
        "afpacket: keep the kernel from answering the served port on the interface (an "
        "nftables rule, removed on exit), for an address shared with the kernel (a "
        "container); the stack then leaves the kernel's other ports and pings alone",
    ),
    "tls_port": (_int(1, 65535), "HTTPS port (needs cert and key; default: no HTTPS)"),
    "cert": (_path, "HTTPS: the certificate chain (PEM: the leaf, then intermediates)"),
    "key": (_path, "HTTPS: the certificate's private key (PEM, unencrypted)"),
    "ocsp_staple": (_path, "HTTPS: a DER OCSP response stapled to handshakes (default: none)"),
    "sni": (
        _sni,
        "HTTPS: more certificates, chosen by the client's server name (SNI): "
        "NAME=CERT:KEY[:STAPLE] entries, ';'-separated (file: [sni.\"NAME\"] tables)",
    ),
    "redirect_http": (_bool, "HTTPS: answer plain-HTTP requests with 308 to https://"),
    "hsts": (
        _int(0, 2**31 - 1),
        "HTTPS: Strict-Transport-Security max-age in seconds (default 0: not sent)",
    ),
}


# keys only the TOML file has: arrays of tables (site rules, virtual hosts)
FILE_TABLES = ("redirects", "headers", "sites")

# the TOML type of each key that is not a string
TOML_TYPES: dict[str, Any] = {
    "port": int,
    "cores": int,
    "no_priority": bool,
    "drain_timeout": int | float,
    "lingering_time": int | float,
    "lingering_timeout": int | float,
    "nft_guard": bool,
    "tx_rate_mbps": int,
    "sndbuf": int,
    "mem_budget_mb": int,
    "max_conns_per_source": int,
    "tls_port": int,
    "redirect_http": bool,
    "hsts": int,
    "sni": dict,
    "no_responder": bool,
    "busy_poll_us": int,
}
_TYPE_NAMES: dict[Any, str] = {
    int: "integer",
    bool: "boolean (true or false)",
    int | float: "number",
    str: "string",
    dict: "table",
}


def env_name(key: str) -> str:
    return ENV_PREFIX + key.upper()


def flag_name(key: str) -> str:
    return "--" + key.replace("_", "-")


def read_file(path: Path) -> dict[str, Any]:
    """The TOML file's settings (a flat table; ``[appliance]`` or ``[serve]`` also works)."""
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError("config", f"{path}: no such file", "--config") from None
    except OSError as exc:
        raise ConfigError("config", f"{path}: {exc.strerror}", "--config") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("config", f"{path}: not valid TOML: {exc}", "--config") from None
    for section in ("appliance", "serve"):
        if isinstance(data.get(section), dict) and len(data) == 1:
            data = data[section]
    return data


def gather(
    flags: Mapping[str, Any],
    env: Mapping[str, str],
    config_file: Path | None,
) -> tuple[dict[str, Any], dict[str, str]]:
    """Raw values by key and where each came from, file < env < flags."""
    raw: dict[str, Any] = {}
    where: dict[str, str] = {}
    path = config_file
    if path is None and env.get(ENV_CONFIG):
        path = Path(env[ENV_CONFIG])
    if path is not None:
        raw["config_file"], where["config_file"] = path, "--config"
        for key, value in read_file(path).items():
            if key in FILE_TABLES:
                if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
                    raise ConfigError(
                        key, f"must be an array of tables ([[{key}]]), got {value!r}", str(path)
                    )
                raw[key], where[key] = value, str(path)
                continue
            if key not in KEYS:
                known = ", ".join((*KEYS, *FILE_TABLES))
                raise ConfigError(key, f"unknown key; known keys: {known}", str(path))
            want = TOML_TYPES.get(key, str)
            if isinstance(value, bool) != (want is bool) or not isinstance(value, want):
                raise ConfigError(
                    key, f"must be a TOML {_TYPE_NAMES[want]}, got {value!r}", str(path)
                )
            raw[key], where[key] = value, str(path)
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX) or name == ENV_CONFIG:
            continue
        key = name[len(ENV_PREFIX) :].lower()
        if key not in KEYS:
            known = ", ".join(env_name(k) for k in KEYS)
            raise ConfigError(
                name, f"unknown variable; known: {ENV_CONFIG}, {known}", "environment"
            )
        raw[key], where[key] = value, name
    for key, value in flags.items():
        if key not in KEYS:
            raise ConfigError(key, "unknown option", "command line")
        raw[key], where[key] = value, flag_name(key)
    return raw, where


def build(raw: Mapping[str, Any], where: Mapping[str, str], check_certs: bool = True) -> Config:
    """Checks every value and fills in the defaults. ``check_certs``: load every
    certificate and key now (a bad one is a ConfigError naming the file and why)."""
    val: dict[str, Any] = {}
    tables = {k: tuple(raw[k]) for k in FILE_TABLES if k in raw}
    config_file = raw.get("config_file")
    for key, value in raw.items():
        if key in FILE_TABLES or key == "config_file":
            continue
        parse = KEYS[key][0]
        if value is None:
            continue
        try:
            val[key] = parse(value)
        except ValueError as exc:
            raise ConfigError(key, str(exc), where.get(key, "")) from None

    def err(key: str, reason: str) -> ConfigError:
        return ConfigError(key, reason, where.get(key, ""))

    stack = val.get("stack", "mtcp")
    backend = val.get("backend", "tap")
    cpus = available_cpus()
    cores = val.get("cores", len(cpus))
    port = val.get("port", 80 if stack == "mtcp" else 8080)
    metrics_host, metrics_port = val.get("metrics", ("127.0.0.1", 9100))
    iface = val.get("iface")
    tap_host: str | None = None
    nft_guard = val.get("nft_guard", False)
    if nft_guard and (stack, backend) != ("mtcp", "afpacket"):
        raise err("nft_guard", "only means something with --stack mtcp --backend afpacket")
    if stack == "mtcp":
        if backend == "afpacket" and not iface:
            raise err(
                "iface",
                "the afpacket backend needs an interface (--iface, "
                f"{env_name('iface')} or iface in the config file)",
            )
        ip_value = val.get("ip", DEFAULT_MTCP_IP)
        if ip_value == "auto":
            ip_value = _auto_ip(err, backend, iface)
            if "gateway" not in val and iface:
                gw_auto = netfilter.default_gateway(iface)
                if gw_auto is not None:
                    val["gateway"] = gw_auto
                    where = {**where, "gateway": f"the default route via {iface}"}
        ip = _checked(err, "ip", _cidr, ip_value)
        budget = val.get("mem_budget_mb", 0) << 20
        if budget and budget < 2 * val.get("sndbuf", DEFAULT_SNDBUF):
            raise err("mem_budget_mb", "must hold at least two connections' send buffers")
        net = ipaddress.IPv4Interface(ip).network
        if backend == "tap":
            iface = iface or DEFAULT_TAP_NAME
            tap_host = _tap_host(err, val, ip)
        gw = val.get("gateway")
        if gw is not None and ipaddress.IPv4Address(gw) not in net:
            raise err("gateway", f"{gw} is not in the subnet {net} of ip {ip}")
        if gw is not None and gw == ip.split("/")[0]:
            raise err("gateway", f"{gw} is the stack's own address")
    else:
        ip = val.get("ip", DEFAULT_LINUX_IP).split("/")[0]
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            raise err("ip", f"must be an IP address to listen on, got {ip!r}") from None
        for key in (
            "gateway",
            "pcap",
            "tap_host",
            "iface",
            "tx_rate_mbps",
            "sndbuf",
            "mem_budget_mb",
            "max_conns_per_source",
            "congestion",
            "busy_poll_us",
        ):  # (no_responder is accepted: the kernel's stack has no responder to turn off)
            if key in val:
                raise err(key, "only means something with --stack mtcp")
    tls = _tls(err, val, port, check_certs, tables.get("sites", ()), config_file)
    return Config(
        **tls,
        stack=stack,
        backend=backend,
        iface=iface,
        ip=ip,
        gateway=val.get("gateway"),
        port=port,
        root=val.get("root", DEFAULT_ROOT),
        cores=cores,
        metrics_host=metrics_host,
        metrics_port=metrics_port,
        access_log=val.get("access_log"),
        tx_priority=not val.get("no_priority", False),
        afpacket_rx=val.get("afpacket_rx", "copy"),
        pcap=val.get("pcap"),
        tap_host=tap_host,
        drain_timeout=val.get("drain_timeout", DEFAULT_DRAIN_TIMEOUT_S),
        nft_guard=nft_guard,
        tx_rate_mbps=val.get("tx_rate_mbps", 0),
        sndbuf=val.get("sndbuf", DEFAULT_SNDBUF),
        log_format=val.get("log_format", "combined"),
        event_log_format=val.get("event_log_format", "text"),
        spa_fallback=val.get("spa_fallback"),
        redirects=tables.get("redirects", ()),
        headers=tables.get("headers", ()),
        sites=tables.get("sites", ()),
        config_file=config_file,
        table_lines=table_lines(config_file) if config_file is not None else {},
        mem_budget_mb=val.get("mem_budget_mb", 0),
        max_conns_per_source=val.get("max_conns_per_source", 0),
        lingering_close=val.get("lingering_close", DEFAULT_LINGERING_CLOSE),
        lingering_time=val.get("lingering_time", DEFAULT_LINGERING_TIME_S),
        lingering_timeout=val.get("lingering_timeout", DEFAULT_LINGERING_TIMEOUT_S),
        congestion=val.get("congestion", "cubic"),
        responder=stack == "mtcp" and not val.get("no_responder", False),
        busy_poll_us=val.get("busy_poll_us", DEFAULT_BUSY_POLL_US),
        sources=dict(where),
    )


_TABLE_HEADER = re.compile(r"^\s*\[\[\s*([A-Za-z0-9_.]+)\s*\]\]")
_KEY_LINE = re.compile(r"^\s*([A-Za-z0-9_]+)\s*=")


def table_lines(path: Path) -> dict[tuple[Any, ...], int]:
    """Line numbers of the file's arrays of tables, for error messages:
    ("redirects", i), ("headers", i), ("sites", i), ("sites", i, "redirects", j), and
    ("spa_fallback",) / ("sites", i, "spa_fallback") for that key."""
    out: dict[tuple[Any, ...], int] = {}
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return out
    counts: dict[tuple[Any, ...], int] = {}
    site = -1
    section: tuple[Any, ...] = ()
    for n, line in enumerate(text.splitlines(), 1):
        m = _TABLE_HEADER.match(line)
        if m is not None:
            name = m.group(1)
            if name == "sites":
                site += 1
                key: tuple[Any, ...] = ("sites", site)
                section = key
            elif name.startswith("sites.") and site >= 0:
                sub = name.split(".", 1)[1]
                base = ("sites", site, sub)
                i = counts.get(base, 0)
                counts[base] = i + 1
                key = (*base, i)
                section = key
            else:
                base = (name,)
                i = counts.get(base, 0)
                counts[base] = i + 1
                key = (name, i)
                section = key
            out.setdefault(key, n)
            continue
        if line.lstrip().startswith("["):
            section = ("?",)
            continue
        m = _KEY_LINE.match(line)
        if m is not None:
            k = m.group(1)
            if section == ():
                out.setdefault((k,), n)
            elif len(section) == 2 and section[0] == "sites":
                out.setdefault((*section, k), n)
    return out


SITE_TLS_KEYS = ("cert", "key", "ocsp_staple")  # a [[sites]] table's own certificate


def _site_certs(
    sites: tuple[dict[str, Any], ...], config_file: Path | None, where: str
) -> list[tuple[str, Path, Path, Path | None]]:
    """SNI entries from the virtual hosts: a ``[[sites]]`` table with ``cert`` and ``key``
    (and ``ocsp_staple``) has that certificate for each of its ``server_names`` (paths
    relative to the config file, like ``root``)."""
    out: list[tuple[str, Path, Path, Path | None]] = []
    for i, t in enumerate(sites):
        given = {k: t[k] for k in SITE_TLS_KEYS if k in t}
        if not given:
            continue
        if "cert" not in given or "key" not in given:
            raise ConfigError(
                f"sites[{i}].cert", "a site's certificate needs both cert and key", where
            )
        paths: dict[str, Path] = {}
        for k, v in given.items():
            if not isinstance(v, str) or not v:
                raise ConfigError(f"sites[{i}].{k}", f"must be a path (a string), got {v!r}", where)
            p = Path(v).expanduser()
            if config_file is not None and not p.is_absolute():
                p = config_file.parent / p
            paths[k] = p
        names = t.get("server_names", [])
        if not isinstance(names, list) or not names:
            raise ConfigError(
                f"sites[{i}].cert", "a site with its own certificate needs server_names", where
            )
        for n in names:
            if isinstance(n, str):
                out.append(
                    (
                        n.strip().lower().rstrip("."),
                        paths["cert"],
                        paths["key"],
                        paths.get("ocsp_staple"),
                    )
                )
    return out


def _tls(
    err: Callable[[str, str], ConfigError],
    val: Mapping[str, Any],
    port: int,
    check: bool,
    sites: tuple[dict[str, Any], ...] = (),
    config_file: Path | None = None,
) -> dict[str, Any]:
    """The HTTPS keys, checked together (and the files loaded, with ``check``); the
    virtual hosts' own certificates join the SNI list."""
    tls_port = val.get("tls_port")
    where = str(config_file) if config_file is not None else "config"
    if tls_port is None:
        for key in ("cert", "key", "ocsp_staple", "sni", "redirect_http", "hsts"):
            if val.get(key):
                raise err(key, "only means something with tls_port (HTTPS)")
        for i, t in enumerate(sites):
            for k in SITE_TLS_KEYS:
                if k in t:
                    raise ConfigError(
                        f"sites[{i}].{k}", "only means something with tls_port (HTTPS)", where
                    )
        return {}
    if tls_port == port:
        raise err("tls_port", f"{tls_port} is also the plain HTTP port")
    for key in ("cert", "key"):
        if key not in val:
            raise err(key, f"tls_port {tls_port} needs a certificate and its key (cert, key)")
    out = {
        "tls_port": tls_port,
        "cert": val["cert"],
        "key": val["key"],
        "ocsp_staple": val.get("ocsp_staple"),
        "sni": (*val.get("sni", ()), *_site_certs(sites, config_file, where)),
        "redirect_http": val.get("redirect_http", False),
        "hsts": val.get("hsts", 0),
    }
    if check:
        from appliance.http.tls import CertError, CertPair, make_context

        pairs = [("cert", CertPair(out["cert"], out["key"], out["ocsp_staple"]))]
        pairs += [("sni", CertPair(c, k, s)) for _, c, k, s in out["sni"]]
        seen_names = set()
        for name, *_ in out["sni"]:
            if name in seen_names:
                raise err("sni", f"{name!r} has two certificates (sni and a site, or two sites)")
            seen_names.add(name)
        for key, pair in dict.fromkeys(pairs):
            try:
                make_context(pair)
            except CertError as exc:
                if key == "cert":
                    key = {str(pair.key): "key", str(pair.ocsp_staple): "ocsp_staple"}.get(
                        exc.path, "cert"
                    )
                raise err(key, str(exc)) from None
    return out


def _checked(
    err: Callable[[str, str], ConfigError], key: str, parse: Callable[[Any], Any], value: Any
) -> Any:
    try:
        return parse(value)
    except ValueError as exc:
        raise err(key, str(exc)) from None


def _auto_ip(err: Callable[[str, str], ConfigError], backend: str, iface: str | None) -> str:
    """``ip = "auto"``: the afpacket interface's own IPv4 address/prefix."""
    if backend != "afpacket" or not iface:
        raise err("ip", "auto (the interface's own address) needs --backend afpacket and --iface")
    found = netfilter.iface_address(iface)
    if found is None:
        raise err("ip", f"auto: the interface {iface} has no IPv4 address (or does not exist)")
    return found


def _tap_host(err: Callable[[str, str], ConfigError], val: Mapping[str, Any], ip: str) -> str:
    """The TAP's host side: given, or the default, or the first other host of ip's subnet."""
    stack_if = ipaddress.IPv4Interface(ip)
    if "tap_host" in val:
        host = _checked(err, "tap_host", _cidr, val["tap_host"])
        if ipaddress.IPv4Interface(host).ip == stack_if.ip:
            raise err("tap_host", f"{host} is the stack's own address")
        if ipaddress.IPv4Interface(host).ip not in stack_if.network:
            raise err("tap_host", f"{host} is not in the subnet {stack_if.network} of ip {ip}")
        return host
    if "ip" not in val:
        return DEFAULT_TAP_HOST
    for h in stack_if.network.hosts():
        if h != stack_if.ip:
            return f"{h}/{stack_if.network.prefixlen}"
    raise err("ip", f"{ip}: the subnet has no room for the TAP's host side")


def load(
    flags: Mapping[str, Any],
    env: Mapping[str, str] | None = None,
    config_file: Path | None = None,
    check_certs: bool = True,
) -> Config:
    """The configuration from a file, the environment and flags (flags win)."""
    raw, where = gather(flags, os.environ if env is None else env, config_file)
    return build(raw, where, check_certs)
