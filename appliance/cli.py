"""Command line: ``mtcp-appliance serve``.

A first version: ``--stack mtcp`` (the default) serves the root folder from one core of the
user-level stack (on a TAP device by default: stack 198.18.0.2, host side 198.18.0.1/24);
``--stack linux`` serves it on the kernel's sockets. The supervisor with one worker per core,
TOML config and metrics come with the appliance issue.
"""

from __future__ import annotations

import argparse
import errno
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from appliance import __version__

# static/ is installed as appliance.static; an editable install links its files back to the
# checkout's static/, which is then the folder to serve (served files may not resolve outside it).
DEFAULT_ROOT = (Path(__file__).parent / "static" / "index.html").resolve().parent
DEFAULT_MTCP_IP = "198.18.0.2/24"
DEFAULT_TAP_HOST = "198.18.0.1/24"  # host side of the TAP
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
    return serve_mtcp(args, root)


def _missing_capability(err: OSError, backend: str) -> str | None:
    if err.errno not in (errno.EPERM, errno.EACCES):
        return None
    if backend == "tap":
        return "CAP_NET_ADMIN (to create the TAP device /dev/net/tun and address its host side)"
    return "CAP_NET_RAW (for AF_PACKET sockets)"


def serve_mtcp(args: argparse.Namespace, root: Path) -> int:
    import mtcp_core
    from appliance.http.server import SiteConfig
    from appliance.http.server import serve_mtcp as serve

    ip = args.ip or DEFAULT_MTCP_IP
    port = 80 if args.port is None else args.port
    iface = args.iface or ("mtcp0" if args.backend == "tap" else None)
    if args.backend == "afpacket" and not iface:
        print("mtcp-appliance: --iface: afpacket needs an interface", file=sys.stderr)
        return 2
    if args.backend == "pair":
        print(
            "mtcp-appliance: --backend pair is for tests (two stacks in one process)",
            file=sys.stderr,
        )
        return 2
    try:
        stack = mtcp_core.Stack(
            args.backend,
            ip,
            iface=iface,
            tap_host=DEFAULT_TAP_HOST if args.backend == "tap" and not args.ip else None,
        )
    except ValueError as exc:
        print(f"mtcp-appliance: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        cap = _missing_capability(exc, args.backend)
        print(f"mtcp-appliance: cannot start the {args.backend} backend: {exc}", file=sys.stderr)
        if cap:
            print(
                f"  missing capability: {cap}\n  without it, serve on the kernel's stack: "
                "mtcp-appliance serve --stack linux --port 8080",
                file=sys.stderr,
            )
        return 1
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    host = ip.split("/")[0]
    with stack:
        ctx = stack.context(0)
        where = f" (host side {DEFAULT_TAP_HOST} on {iface})" if args.backend == "tap" else ""
        ready = threading.Event()

        def announce() -> None:  # once the port listens (serve runs in this thread)
            if ready.wait(60):
                print(
                    f"serving {root} at http://{host}:{port}/ (stack mtcp, {args.backend}{where})",
                    flush=True,
                )

        threading.Thread(target=announce, daemon=True).start()
        try:
            serve(ctx, SiteConfig(root=root), port, stop, ready=ready)
        except KeyboardInterrupt:
            pass
    return 0


def serve_linux(root: Path, host: str, port: int) -> int:
    from appliance.http.server import SiteConfig
    from appliance.http.server import serve_linux as serve

    stop, ready = threading.Event(), threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    def announce() -> None:  # once the port listens (serve runs in this thread)
        if ready.wait(60):
            print(f"serving {root} at http://{host}:{port}/ (stack linux)", flush=True)

    threading.Thread(target=announce, daemon=True).start()
    try:
        serve(host, port, SiteConfig(root=root), stop, ready=ready)
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        print(f"mtcp-appliance: cannot listen on {host}:{port}: {exc.strerror}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
