"""Command line: ``mtcp-appliance serve``.

A first version: ``--stack linux`` serves the root folder on the kernel's sockets;
``--stack mtcp`` (the default) is wired up by the appliance issue (supervisor, one worker
per core, TOML config, metrics).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from appliance import __version__

# static/ is installed as appliance.static; an editable install links its files back to the
# checkout's static/, which is then the folder to serve (served files may not resolve outside it).
DEFAULT_ROOT = (Path(__file__).parent / "static" / "index.html").resolve().parent
DEFAULT_MTCP_IP = "198.18.0.2/24"  # host side of the TAP: 198.18.0.1/24
DEFAULT_LINUX_IP = "127.0.0.1"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mtcp-appliance",
        description="Static-site web server on a user-level TCP/IP stack.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve a folder over HTTP/1.1")
    serve.add_argument(
        "--stack",
        choices=("mtcp", "linux"),
        default="mtcp",
        help="TCP/IP stack: mtcp (user level, default) or linux (the kernel's sockets)",
    )
    serve.add_argument(
        "--backend",
        choices=("tap", "afpacket", "pair"),
        default="tap",
        help="mtcp packet I/O backend (default: tap)",
    )
    serve.add_argument("--iface", help="afpacket: the interface; tap: the device name")
    serve.add_argument(
        "--ip",
        help=f"address to serve on (default: {DEFAULT_MTCP_IP} for mtcp, "
        f"{DEFAULT_LINUX_IP} for linux)",
    )
    serve.add_argument("--port", type=int, help="TCP port (default: 80 for mtcp, 8080 for linux)")
    serve.add_argument(
        "--root", type=Path, default=DEFAULT_ROOT, help="folder to serve (default: static/)"
    )
    serve.set_defaults(func=serve_command)
    return parser


def serve_command(args: argparse.Namespace) -> int:
    root: Path = args.root
    if not root.is_dir():
        print(f"mtcp-appliance: --root {root}: not a folder", file=sys.stderr)
        return 2
    if args.stack == "linux":
        host = (args.ip or DEFAULT_LINUX_IP).split("/")[0]
        return serve_linux(root, host, 8080 if args.port is None else args.port)
    print(
        "mtcp-appliance: the mTCP data plane (--stack mtcp) is not wired up yet; it lands with "
        "the appliance issue.\n"
        f"  To serve {root} on the kernel's stack now: mtcp-appliance serve --stack linux",
        file=sys.stderr,
    )
    return 2


def serve_linux(root: Path, host: str, port: int) -> int:
    from appliance.http.linux import StaticServer

    try:
        server = StaticServer(root, host, port)
    except OSError as exc:
        print(f"mtcp-appliance: cannot listen on {host}:{port}: {exc.strerror}", file=sys.stderr)
        return 1
    with server:
        bound_host, bound_port = server.server_address[:2]
        print(f"serving {root} at http://{bound_host}:{bound_port}/ (stack linux)", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
