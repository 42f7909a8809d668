"""Command line: ``mtcp-appliance serve``, ``doctor``, ``load`` and ``netem``.

``serve`` reads its settings from a TOML file (``--config``), ``MTCP_APPLIANCE_*`` variables
and flags, in that order of precedence (flags win; see ``appliance.config``), checks all of
them before anything starts, and hands them to the supervisor (``appliance.supervisor``),
which runs one worker per core. With no arguments it serves the bundled ``static/`` on the
user-level stack behind a TAP device (stack 198.18.0.2, host side 198.18.0.1/24) and its
metrics at 127.0.0.1:9100. ``doctor`` checks what the chosen stack and backend need.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from appliance import __version__, caps
from appliance import load as load_cmd
from appliance import netem as netem_cmd
from appliance.config import (
    DEFAULT_LINUX_IP,
    DEFAULT_METRICS,
    DEFAULT_MTCP_IP,
    DEFAULT_ROOT,
    ENV_CONFIG,
    KEYS,
    Config,
    ConfigError,
    load,
)

__all__ = ["DEFAULT_LINUX_IP", "DEFAULT_MTCP_IP", "DEFAULT_ROOT", "build_parser", "main"]

# options that are not config keys
_NOT_KEYS = {"command", "func", "config"}


def _add_config_options(p: argparse.ArgumentParser) -> None:
    """The settings shared by serve and doctor; dest = the config key."""

    def h(key: str) -> str:
        return KEYS[key][1].replace("%", "%%")  # argparse formats help with %

    p.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help=f"TOML file with these settings (or {ENV_CONFIG}); flags and "
        "MTCP_APPLIANCE_<KEY> variables override it",
    )
    p.add_argument("--stack", choices=("mtcp", "linux"), default="mtcp", help=h("stack"))
    p.add_argument("--backend", choices=("tap", "afpacket"), default="tap", help=h("backend"))
    p.add_argument("--iface", help=h("iface"))
    p.add_argument("--ip", help=h("ip"))
    p.add_argument("--gateway", help=h("gateway"))
    p.add_argument("--port", type=int, help=h("port"))
    p.add_argument("--root", type=Path, default=DEFAULT_ROOT, help=h("root"))
    p.add_argument("--cores", type=int, help=h("cores"))
    p.add_argument("--metrics", metavar="HOST:PORT", help=h("metrics"))
    p.add_argument("--access-log", type=Path, metavar="FILE", help=h("access_log"))
    p.add_argument("--log-format", choices=("combined", "json"), help=h("log_format"))
    p.add_argument("--event-log-format", choices=("text", "json"), help=h("event_log_format"))
    p.add_argument("--spa-fallback", metavar="PATH", help=h("spa_fallback"))
    p.add_argument("--no-priority", action="store_true", help=h("no_priority"))
    p.add_argument("--afpacket-rx", choices=("copy", "ring"), help=h("afpacket_rx"))
    p.add_argument("--pcap", metavar="FILE", help=h("pcap"))
    p.add_argument("--tx-rate-mbps", type=int, metavar="MBPS", help=h("tx_rate_mbps"))
    p.add_argument("--sndbuf", type=int, metavar="BYTES", help=h("sndbuf"))
    p.add_argument("--mem-budget-mb", type=int, metavar="MIB", help=h("mem_budget_mb"))
    p.add_argument("--max-conns-per-source", type=int, metavar="N", help=h("max_conns_per_source"))
    p.add_argument("--congestion", choices=("cubic", "newreno"), help=h("congestion"))
    p.add_argument("--tap-host", metavar="ADDR/PREFIX", help=h("tap_host"))
    p.add_argument("--drain-timeout", type=float, metavar="SECONDS", help=h("drain_timeout"))
    p.add_argument("--nft-guard", action="store_true", help=h("nft_guard"))
    p.add_argument("--tls-port", type=int, metavar="N", help=h("tls_port"))
    p.add_argument("--cert", type=Path, metavar="FILE", help=h("cert"))
    p.add_argument("--key", type=Path, metavar="FILE", help=h("key"))
    p.add_argument("--ocsp-staple", type=Path, metavar="FILE", help=h("ocsp_staple"))
    p.add_argument("--sni", action="append", metavar="NAME=CERT:KEY[:STAPLE]", help=h("sni"))
    p.add_argument("--redirect-http", action="store_true", help=h("redirect_http"))
    p.add_argument("--hsts", type=int, metavar="SECONDS", help=h("hsts"))
    p.add_argument("--lingering-close", choices=("on", "off", "always"), help=h("lingering_close"))
    p.add_argument("--lingering-time", type=float, metavar="SECONDS", help=h("lingering_time"))
    p.add_argument(
        "--lingering-timeout", type=float, metavar="SECONDS", help=h("lingering_timeout")
    )
    p.add_argument("--no-responder", action="store_true", help=h("no_responder"))
    p.add_argument("--busy-poll-us", type=int, metavar="US", help=h("busy_poll_us"))


def build_parser(explicit_only: bool = False) -> argparse.ArgumentParser:
    """The parser. ``explicit_only``: no defaults at all, so that the result holds only the
    options given on the command line (what overrides the file and the environment)."""
    kw: dict[str, Any] = {"argument_default": argparse.SUPPRESS} if explicit_only else {}
    parser = argparse.ArgumentParser(
        prog="mtcp-appliance",
        description="Static-site web server on a user-level TCP/IP stack.",
        **kw,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve",
        help="serve a folder over HTTP/1.1, one worker per core",
        description=f"Serves a folder over HTTP/1.1. Defaults: the bundled site on the "
        f"user-level stack behind a TAP (stack {DEFAULT_MTCP_IP}, host side 198.18.0.1/24), "
        f"metrics at {DEFAULT_METRICS}.",
        **kw,
    )
    _add_config_options(serve)
    serve.set_defaults(func=serve_command)
    doctor = commands.add_parser(
        "doctor",
        help="check what the chosen stack and backend need, and say what to fix",
        **kw,
    )
    _add_config_options(doctor)
    doctor.set_defaults(func=doctor_command)
    load_cmd.add_parser(commands, **kw)  # mtcp-appliance load (appliance/load.py)
    netem_cmd.add_parser(commands, **kw)  # mtcp-appliance netem (appliance/netem.py)
    if explicit_only:
        for p in (serve, doctor):
            for action in p._actions:
                action.default = argparse.SUPPRESS
    return parser


def _flags(argv: Sequence[str] | None) -> dict[str, Any]:
    """The config keys given as flags on this command line."""
    given = vars(build_parser(explicit_only=True).parse_args(argv))
    out = {k: v for k, v in given.items() if k not in _NOT_KEYS}
    for key in ("no_priority", "nft_guard", "redirect_http", "no_responder"):
        if out.pop(key, False):
            out[key] = True
    for key in ("root", "access_log", "cert", "key", "ocsp_staple"):
        if key in out:
            out[key] = str(out[key])
    if "sni" in out:
        out["sni"] = ";".join(out["sni"])
    return out


def _config(args: argparse.Namespace, check_certs: bool = True) -> Config | int:
    """The checked configuration, or the exit status after saying what is wrong."""
    try:
        return load(args.flags, os.environ, args.config, check_certs)
    except ConfigError as exc:
        print(f"mtcp-appliance: config error: {exc}", file=sys.stderr)
        return 2


def serve_command(args: argparse.Namespace) -> int:
    cfg = _config(args)
    if isinstance(cfg, int):
        return cfg
    return serve_linux(cfg) if cfg.stack == "linux" else serve_mtcp(cfg)


def _missing_capability(err: OSError, backend: str) -> str | None:
    """The capability an EPERM/EACCES from the backend points at, or None."""
    if err.errno not in (errno.EPERM, errno.EACCES):
        return None
    need = caps.NEEDED.get(backend)
    return f"{caps.NAMES[need[0]]} ({need[1]})" if need else None


def serve_mtcp(cfg: Config) -> int:
    """``--stack mtcp``: the supervisor with one worker per core on the user-level stack."""
    from appliance.supervisor import Supervisor

    return Supervisor(cfg).run()


def serve_linux(cfg: Config) -> int:
    """``--stack linux``: the supervisor with one SO_REUSEPORT worker per core."""
    from appliance.supervisor import Supervisor

    return Supervisor(cfg).run()


def doctor_command(args: argparse.Namespace) -> int:
    cfg = _config(args, check_certs=False)  # doctor checks the certificates itself
    if isinstance(cfg, int):
        return cfg
    from appliance.doctor import run_checks

    return run_checks(cfg)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.flags = _flags(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
