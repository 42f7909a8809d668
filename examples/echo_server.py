"""An echo server on the user-level stack: the smallest complete use of mtcp_core.

    ip netns exec srv .venv/bin/python examples/echo_server.py --iface veth-s --ip 198.18.0.2/24

Everything that crosses into C per loop turn is one batch: one poll, one accept_many,
one recv_many, one send_many, one close_many.
"""

from __future__ import annotations

import argparse
import signal
import threading

import mtcp_core as m


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="afpacket", choices=("afpacket", "tap"))
    ap.add_argument("--iface", required=True, help="interface (afpacket) or tap device name")
    ap.add_argument("--ip", default="198.18.0.2/24", help="the stack's address/prefix")
    ap.add_argument("--port", type=int, default=7)
    ap.add_argument("--tap-host", help="tap: host side address/prefix to set, e.g. 198.18.0.1/24")
    args = ap.parse_args()

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with m.Stack(args.backend, args.ip, iface=args.iface, tap_host=args.tap_host) as stack:
        ctx = stack.context(0)
        lsock = ctx.socket()
        lsock.bind(("0.0.0.0", args.port))
        lsock.listen(1024)
        ep = ctx.epoll()
        ep.register(lsock, m.EPOLLIN)
        print(
            f"echo on {args.ip.split('/')[0]}:{args.port} ({args.backend} {args.iface})", flush=True
        )
        while not stop.is_set():
            ready = ep.poll(0.5)
            readable = []
            for sock, _events in ready:
                if sock is lsock:
                    for conn in lsock.accept_many():
                        ep.register(conn, m.EPOLLIN)
                else:
                    readable.append(sock)
            replies, done = [], []
            for sock, data in zip(readable, ctx.recv_many(readable), strict=True):
                if isinstance(data, BlockingIOError):
                    continue
                if isinstance(data, OSError) or not data:
                    done.append(sock)  # reset, or the client closed
                else:
                    replies.append((sock, data))
            # a reply bigger than the socket's free send space is cut short: fine for
            # an example (a real server keeps the rest and waits for EPOLLOUT)
            ctx.send_many(replies)
            for sock in done:
                ep.unregister(sock)
            ctx.close_many(done)
        print(ctx.stats()["conn_passive_opens"], "connections served", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
