"""Echo and tiny HTTP responders for the interop tests and the echo benchmark.

One responder loop (``serve``) runs over either stack through a small adapter with batch
operations, so that the user-level stack and the kernel's are measured with the same
application logic:

- ``MtcpNet``: an ``mtcp_core.Context``; each loop round is one ``Epoll.poll``, one
  ``accept_many`` per ready listener, one ``recv_many``, one ``send_many`` and one
  ``close_many`` (the design's "a crossing carries a batch").
- ``KernelNet``: non-blocking kernel sockets on ``select.epoll``, the same calls done one socket
  at a time (the kernel has no batch calls).

Modes of a listener:

- ``echo``: sends back every byte it receives; closes once the peer has closed (the client
  closes first, the core does the passive close).
- ``once``: reads one request up to the first ``\\n``, sends it back and closes (the core
  closes first and goes through TIME_WAIT).
- ``http``: reads an HTTP/1.1 request head, answers ``200`` with ``Connection: close`` and a
  small body, then closes (what wrk with ``Connection: close`` expects).

Kernel-socket clients for the same protocols are here too (``echo_exchange``,
``short_connections``). Every loop is bounded in time; nothing sleeps to wait for an event.
"""

from __future__ import annotations

import contextlib
import errno
import selectors
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from mtcp_core.kernelnet import KernelSockets

Mode = Literal["echo", "once", "http"]

EPOLLIN = 0x001
EPOLLOUT = 0x004
EPOLLERR = 0x008
EPOLLHUP = 0x010
EPOLLRDHUP = 0x2000

HTTP_BODY = b"x" * 64
HTTP_RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: "
    + str(len(HTTP_BODY)).encode()
    + b"\r\nConnection: close\r\n\r\n"
    + HTTP_BODY
)
MAX_REQUEST = 16 * 1024


class StopFlag(Protocol):
    """threading.Event or multiprocessing.Event: anything with is_set()."""

    def is_set(self) -> bool: ...


class Net(Protocol):
    """What ``serve`` needs from a stack: listeners, an epoll and batch socket operations.
    Handles are opaque; ``key(handle)`` is unique among the open ones."""

    def listen(self, port: int, backlog: int) -> Any: ...
    def register(self, handle: Any, events: int) -> None: ...
    def modify(self, handle: Any, events: int) -> None: ...
    def poll(self, timeout: float) -> list[tuple[Any, int]]: ...
    def accept_many(self, listener: Any) -> list[Any]: ...
    def recv_many(self, handles: Sequence[Any]) -> list[bytes | OSError]: ...
    def send_many(self, items: Sequence[tuple[Any, bytes]]) -> list[int | OSError]: ...
    def close_many(self, handles: Sequence[Any]) -> None: ...
    def peer(self, handle: Any) -> tuple[str, int]: ...
    def key(self, handle: Any) -> int: ...
    def close(self) -> None: ...


class MtcpNet:
    """``Net`` over one mtcp_core context (use it from the context's app thread only)."""

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx
        self.ep = ctx.epoll()
        self._listeners: list[Any] = []

    def listen(self, port: int, backlog: int) -> Any:
        sock = self.ctx.socket()
        sock.bind(("0.0.0.0", port))
        sock.listen(backlog)
        self._listeners.append(sock)
        return sock

    def register(self, handle: Any, events: int) -> None:
        self.ep.register(handle, events)

    def modify(self, handle: Any, events: int) -> None:
        self.ep.modify(handle, events)

    def poll(self, timeout: float) -> list[tuple[Any, int]]:
        return self.ep.poll(timeout)

    def accept_many(self, listener: Any) -> list[Any]:
        return listener.accept_many(256)

    def recv_many(self, handles: Sequence[Any]) -> list[bytes | OSError]:
        out: list[bytes | OSError] = []
        # One crossing for up to 1024 sockets: the binding splits its 256 KiB scratch
        # between them (whatever does not fit stays readable for the next round).
        for i in range(0, len(handles), 1024):
            out += self.ctx.recv_many(handles[i : i + 1024], 256 * 1024)
        return out

    def send_many(self, items: Sequence[tuple[Any, bytes]]) -> list[int | OSError]:
        return self.ctx.send_many(items)

    def close_many(self, handles: Sequence[Any]) -> None:
        self.ctx.close_many(handles)

    def peer(self, handle: Any) -> tuple[str, int]:
        return tuple(handle.getpeername())  # type: ignore[return-value]

    def key(self, handle: Any) -> int:
        return int(handle.fd)

    def close(self) -> None:
        if self.ctx._ptr is None:
            return
        self.ctx.close_many(self._listeners)
        self._listeners.clear()
        self.ep.close()


class KernelNet(KernelSockets):
    """``Net`` over the kernel's sockets: the same loop, one system call per socket (the
    batch calls are ``mtcp_core.kernelnet``'s, shared with the HTTP server's adapter)."""

    def __init__(self, host: str = "0.0.0.0") -> None:
        super().__init__()
        self.host = host
        self._listeners: list[socket.socket] = []

    def listen(self, port: int, backlog: int) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, port))
        sock.listen(backlog)
        sock.setblocking(False)
        self._listeners.append(sock)
        return sock

    def accept_many(self, listener: socket.socket) -> list[socket.socket]:
        out = []
        for _ in range(256):
            try:
                conn, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                break
            except ConnectionAbortedError:
                continue
            conn.setblocking(False)
            out.append(conn)
        return out

    def peer(self, handle: socket.socket) -> tuple[str, int]:
        return handle.getpeername()  # type: ignore[no-any-return]

    def key(self, handle: socket.socket | int) -> int:
        return handle if isinstance(handle, int) else handle.fileno()

    def close(self) -> None:
        for s in self._listeners:
            s.close()
        self._listeners.clear()
        self.ep.close()


@dataclass
class ServerReport:
    accepted: int = 0
    closed: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    replies: int = 0
    resets: int = 0
    errors: list[str] = field(default_factory=list)
    peers: list[tuple[str, int]] = field(default_factory=list)
    rounds: int = 0


class _Conn:
    __slots__ = ("handle", "mode", "inbuf", "out", "eof", "replied", "events")

    def __init__(self, handle: Any, mode: Mode) -> None:
        self.handle = handle
        self.mode = mode
        self.inbuf = bytearray()
        self.out = bytearray()
        self.eof = False
        self.replied = False
        self.events = EPOLLIN | EPOLLRDHUP

    def take(self, data: bytes) -> None:
        if self.mode == "echo":
            self.out += data
            return
        if self.replied:
            return  # the request is answered: the rest is ignored until the close
        self.inbuf += data
        if self.mode == "once":
            end = self.inbuf.find(b"\n")
            if end >= 0:
                self.out += self.inbuf[: end + 1]
                self.replied = True
        elif b"\r\n\r\n" in self.inbuf:
            self.out += HTTP_RESPONSE
            self.replied = True
        if not self.replied and len(self.inbuf) > MAX_REQUEST:
            self.replied = True  # oversized request: close without an answer

    def finished(self) -> bool:
        if self.out:
            return False
        return self.eof or (self.mode != "echo" and self.replied)

    def wanted(self) -> int:
        """Level-triggered interest: EPOLLOUT only while output waits, no input after EOF."""
        return (0 if self.eof else EPOLLIN | EPOLLRDHUP) | (EPOLLOUT if self.out else 0)


def serve(
    net: Net,
    listeners: Mapping[int, Mode],
    *,
    stop: StopFlag | None = None,
    duration: float = 30.0,
    ready: Callable[[], None] | None = None,
    record_peers: bool = False,
    backlog: int = 4096,
) -> ServerReport:
    """Runs the responder until ``stop`` is set or ``duration`` seconds have passed; returns
    what it did. Connections still open at the end are closed."""
    report = ServerReport()
    lsocks: dict[int, tuple[Any, Mode]] = {}
    for port, mode in listeners.items():
        h = net.listen(port, backlog)
        net.register(h, EPOLLIN)
        lsocks[net.key(h)] = (h, mode)
    conns: dict[int, _Conn] = {}
    if ready is not None:
        ready()
    deadline = time.monotonic() + duration
    try:
        while not (stop is not None and stop.is_set()):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            events = net.poll(min(left, 0.05))
            report.rounds += 1
            readable: list[_Conn] = []
            touched: dict[int, _Conn] = {}
            for handle, ev in events:
                k = net.key(handle)
                if k in lsocks:
                    lh, mode = lsocks[k]
                    for h in net.accept_many(lh):
                        c = _Conn(h, mode)
                        conns[net.key(h)] = c
                        net.register(h, c.events)
                        report.accepted += 1
                        if record_peers:
                            report.peers.append(net.peer(h))
                        readable.append(c)  # its request may be there already
                    continue
                c = conns.get(k)
                if c is None or (not isinstance(handle, int) and c.handle is not handle):
                    continue  # closed (and perhaps reused) since the poll
                touched[k] = c
                if ev & (EPOLLIN | EPOLLERR | EPOLLHUP | EPOLLRDHUP) and not c.eof:
                    readable.append(c)
            broken: set[int] = set()
            if readable:
                results = net.recv_many([c.handle for c in readable])
                for c, res in zip(readable, results, strict=True):
                    touched[net.key(c.handle)] = c
                    if isinstance(res, BlockingIOError):
                        continue
                    if isinstance(res, OSError):
                        if isinstance(res, ConnectionResetError):
                            report.resets += 1
                        else:
                            report.errors.append(f"recv: {res!r}")
                        broken.add(net.key(c.handle))
                    elif res:
                        report.bytes_in += len(res)
                        c.take(res)
                    else:
                        c.eof = True
            pending = [c for k, c in touched.items() if c.out and k not in broken]
            if pending:
                results2 = net.send_many([(c.handle, bytes(c.out)) for c in pending])
                for c, sent in zip(pending, results2, strict=True):
                    if isinstance(sent, BlockingIOError):
                        continue
                    if isinstance(sent, OSError):
                        if isinstance(sent, (ConnectionResetError, BrokenPipeError)):
                            report.resets += 1
                        else:
                            report.errors.append(f"send: {sent!r}")
                        broken.add(net.key(c.handle))
                        continue
                    report.bytes_out += sent
                    del c.out[:sent]
            done: list[_Conn] = []
            for k, c in touched.items():
                if k in broken:
                    done.append(c)
                elif c.finished():
                    done.append(c)
                    report.replies += 1
                elif (want := c.wanted()) != c.events:
                    net.modify(c.handle, want)
                    c.events = want
            if done:
                for c in done:
                    del conns[net.key(c.handle)]
                net.close_many([c.handle for c in done])
                report.closed += len(done)
    finally:
        if conns:
            net.close_many([c.handle for c in conns.values()])
            report.closed += len(conns)
        net.close()
    return report


def serve_in_thread(
    make_net: Callable[[], Net], listeners: Mapping[int, Mode], **kwargs: Any
) -> tuple[threading.Thread, threading.Event, list[ServerReport | BaseException]]:
    """Starts ``serve`` in a thread (the context's app thread); returns the thread, the stop
    event and a list that receives the report (or the exception). Waits until it listens."""
    stop = threading.Event()
    ready = threading.Event()
    result: list[ServerReport | BaseException] = []

    def run() -> None:
        try:
            result.append(serve(make_net(), listeners, stop=stop, ready=ready.set, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            result.append(exc)
        finally:
            ready.set()

    thread = threading.Thread(target=run, name="echo-app", daemon=True)
    thread.start()
    if not ready.wait(10):
        raise TimeoutError("the responder did not start listening within 10 s")
    if result and isinstance(result[0], BaseException):
        raise result[0]
    return thread, stop, result


def stop_server(
    thread: threading.Thread, stop: threading.Event, result: list[ServerReport | BaseException]
) -> ServerReport:
    stop.set()
    thread.join(10)
    if thread.is_alive():
        raise TimeoutError("the responder did not stop within 10 s")
    if not result:
        raise RuntimeError("the responder ended without a report")
    if isinstance(result[0], BaseException):
        raise result[0]
    return result[0]


# ---------------------------------------------------------------- kernel clients


def echo_exchange(addr: tuple[str, int], data: bytes, timeout: float = 20.0) -> bytes:
    """Sends ``data`` over one kernel TCP connection while reading the echo (so that neither
    side's window blocks the other), half-closes, reads to EOF; returns what came back."""
    got = bytearray()
    deadline = time.monotonic() + timeout
    with socket.create_connection(addr, timeout=min(timeout, 5.0)) as sock:
        sock.setblocking(False)
        view = memoryview(data)
        sent = 0
        wr_open = True
        with selectors.DefaultSelector() as sel:
            sel.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"echo of {len(data)} B: got {len(got)} B in {timeout}s")
                for _, mask in sel.select(min(left, 1.0)):
                    if mask & selectors.EVENT_WRITE and wr_open:
                        if sent < len(data):
                            with contextlib.suppress(BlockingIOError):
                                sent += sock.send(view[sent : sent + 256 * 1024])
                        if sent == len(data):
                            sock.shutdown(socket.SHUT_WR)
                            wr_open = False
                            sel.modify(sock, selectors.EVENT_READ)
                    if mask & selectors.EVENT_READ:
                        try:
                            chunk = sock.recv(256 * 1024)
                        except BlockingIOError:
                            continue
                        if not chunk:
                            return bytes(got)
                        got += chunk


@dataclass
class ClientReport:
    ok: int = 0
    errors: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    local_ports: list[int] = field(default_factory=list)
    elapsed: float = 0.0


def one_request(
    addr: tuple[str, int],
    request: bytes,
    expect: bytes,
    mode: Mode,
    timeout: float = 5.0,
    source_port: int | None = None,
) -> int:
    """One short connection: connect (from ``source_port`` when given, else one the kernel
    picks), send ``request``, read the reply, close. Returns the local port; raises on any
    deviation (wrong bytes, reset, timeout)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        if source_port is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("0.0.0.0", source_port))
        sock.connect(addr)
        port = sock.getsockname()[1]
        sock.sendall(request)
        got = bytearray()
        if mode == "echo":
            while len(got) < len(expect):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                got += chunk
        else:  # the server closes after its reply
            while chunk := sock.recv(65536):
                got += chunk
        if bytes(got) != expect:
            raise ValueError(f"reply {bytes(got[:80])!r}... ({len(got)} B) != expected")
    return port


def short_connections(
    addr: tuple[str, int],
    count: int,
    *,
    threads: int = 4,
    mode: Mode = "echo",
    size: int = 64,
    timeout: float = 60.0,
    enter: Callable[[], contextlib.AbstractContextManager[Any]] | None = None,
    source_ports: Sequence[int] | None = None,
) -> ClientReport:
    """``count`` short connections from ``threads`` kernel-socket threads (each entering
    ``enter()`` first, e.g. a namespace); connection i comes from ``source_ports[i]`` when
    given. Bounded: stops at ``timeout`` seconds."""
    if source_ports is not None and len(source_ports) < count:
        raise ValueError("source_ports: fewer ports than connections")
    report = ClientReport()
    lock = threading.Lock()
    next_i = iter(range(count))
    deadline = time.monotonic() + timeout
    if mode == "http":
        request = b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
        expect = HTTP_RESPONSE
    else:
        request = (b"r" * (size - 1)) + b"\n"
        expect = request

    def worker() -> None:
        with enter() if enter is not None else contextlib.nullcontext():
            while time.monotonic() < deadline:
                with lock:
                    i = next(next_i, None)
                if i is None:
                    return
                t0 = time.perf_counter()
                try:
                    sport = source_ports[i] if source_ports is not None else None
                    port = one_request(addr, request, expect, mode, source_port=sport)
                except Exception as exc:  # noqa: BLE001 - every failure is counted
                    with lock:
                        report.errors.append(f"#{i}: {exc!r}")
                    continue
                dt = time.perf_counter() - t0
                with lock:
                    report.ok += 1
                    report.latencies.append(dt)
                    report.local_ports.append(port)

    start = time.monotonic()
    pool = [threading.Thread(target=worker, name=f"client-{i}") for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(max(0.0, deadline - time.monotonic()) + 10)
    report.elapsed = time.monotonic() - start
    missing = count - report.ok - len(report.errors)
    if missing:
        report.errors.append(f"{missing} connections not made within {timeout}s")
    return report


def percentile(values: Iterable[float], q: float) -> float:
    vals = sorted(values)
    if not vals:
        return float("nan")
    idx = min(len(vals) - 1, max(0, round(q / 100 * (len(vals) - 1))))
    return vals[idx]


def kernel_echo_server(
    sock: socket.socket,
    stop: threading.Event,
    accepted: list[tuple[str, int]] | None = None,
    *,
    greeting: bytes = b"",
    timeout: float = 30.0,
) -> threading.Thread:
    """A blocking kernel echo server on an already listening ``sock`` (one thread per
    connection): echoes until the peer's EOF, then sends ``greeting`` and closes. Runs until
    ``stop`` is set (or ``timeout``); returns the accepting thread."""
    sock.settimeout(0.1)
    deadline = time.monotonic() + timeout

    def handle(conn: socket.socket) -> None:
        with conn:
            conn.settimeout(timeout)
            while data := conn.recv(65536):
                conn.sendall(data)
            if greeting:
                conn.sendall(greeting)

    def loop() -> None:
        workers = []
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                conn, peer = sock.accept()
            except TimeoutError:
                continue
            except OSError as exc:
                if exc.errno in (errno.EBADF, errno.EINVAL):
                    return
                raise
            if accepted is not None:
                accepted.append(peer)
            t = threading.Thread(target=handle, args=(conn,), daemon=True)
            t.start()
            workers.append(t)
        for t in workers:
            t.join(5)

    thread = threading.Thread(target=loop, name="kernel-echo", daemon=True)
    thread.start()
    return thread


# ---------------------------------------------------------------- clients on the core


@dataclass
class Exchange:
    local: tuple[str, int]
    data: bytes


def mtcp_client(
    ctx: Any,
    addr: tuple[str, int],
    payload: bytes,
    *,
    until: Literal["echo", "eof"] = "echo",
    timeout: float = 20.0,
) -> Exchange:
    """An active open from the core (``ctx``'s app thread) to ``addr``: sends ``payload``
    while reading. ``until="echo"``: once ``len(payload)`` bytes came back the core closes
    first; ``until="eof"``: reads until the peer has closed, then closes (passive close)."""
    ep = ctx.epoll()
    sock = ctx.socket()
    try:
        try:
            sock.connect(addr)
        except BlockingIOError:
            pass  # EINPROGRESS: EPOLLOUT tells the outcome
        ep.register(sock, EPOLLOUT)
        deadline = time.monotonic() + timeout
        while not ep.poll(min(1.0, max(0.0, deadline - time.monotonic()))):
            if time.monotonic() >= deadline:
                raise TimeoutError(f"connect to {addr}: no answer in {timeout}s")
        err = sock.getsockopt(0x1, 0x4)  # SOL_SOCKET, SO_ERROR
        if err:
            raise OSError(err, f"connect to {addr}: {errno.errorcode.get(err, err)}")
        local = sock.getsockname()
        view = memoryview(payload)
        sent = 0
        got = bytearray()
        eof = False
        interest = EPOLLOUT
        while True:
            want = (EPOLLOUT if sent < len(payload) else 0) | (0 if eof else EPOLLIN | EPOLLRDHUP)
            if want != interest:
                ep.modify(sock, want)
                interest = want
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(
                    f"exchange with {addr}: sent {sent}/{len(payload)} B, got {len(got)} B"
                )
            for _, ev in ep.poll(min(left, 1.0)):
                if ev & EPOLLOUT and sent < len(payload):
                    with contextlib.suppress(BlockingIOError):
                        sent += sock.send(view[sent : sent + 256 * 1024])
                if ev & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR) and not eof:
                    try:
                        chunk = sock.recv(256 * 1024)
                    except BlockingIOError:
                        continue
                    if chunk:
                        got += chunk
                    else:
                        eof = True
            if until == "echo" and len(got) >= len(payload) and sent == len(payload):
                break
            if until == "eof" and eof and sent == len(payload):
                break
        return Exchange(local, bytes(got))
    finally:
        sock.close()
        ep.close()


# ---------------------------------------------------------------- CPU time of threads


def _clock_ticks() -> int:
    import os

    return os.sysconf("SC_CLK_TCK")


def find_threads(name: str, pid: int | str = "self") -> set[int]:
    """Thread ids of process ``pid`` whose name (comm) is ``name``."""
    from pathlib import Path

    out = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            if (task / "comm").read_text().strip() == name:
                out.add(int(task.name))
    return out


def cpu_seconds(pid: int | str = "self", tid: int | None = None) -> float:
    """User + system CPU time of a thread (``tid``) or of a whole process, in seconds."""
    from pathlib import Path

    path = Path(f"/proc/{pid}/task/{tid}/stat" if tid is not None else f"/proc/{pid}/stat")
    fields = path.read_text().rsplit(")", 1)[1].split()
    # fields[0] is the state (field 3): utime and stime are fields 14 and 15
    return (int(fields[11]) + int(fields[12])) / _clock_ticks()


# ---------------------------------------------------------------- the core's counters


def wait_stats(
    ctx: Any,
    ok: Callable[[dict[str, int]], bool],
    timeout: float = 10.0,
    what: str = "",
) -> dict[str, int]:
    """Polls the core's published counters (once per mTCP round) until ``ok`` holds."""
    deadline = time.monotonic() + timeout
    while True:
        st = ctx.stats()
        if ok(st):
            return st
        if time.monotonic() > deadline:
            interesting = {k: v for k, v in st.items() if v and not k.startswith("rx_batch")}
            raise AssertionError(
                f"{what + ': ' if what else ''}counters never got there in {timeout}s: "
                f"{interesting}"
            )
        time.sleep(0.01)
