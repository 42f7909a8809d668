"""The link emulator (mtcp_core.LinkEmulator, ``mtcp-appliance netem``) between two kernel
namespaces, and the core across it.

What it does is checked by what crossed it: the kernel's own ping for the delay, numbered
UDP datagrams for loss, duplication, reordering and corruption (what the receiver saw next
to what the emulator counted), the emulator's pcap timestamps for the delay line's
accuracy and the rate. Tolerances are statistical (a seeded binomial draw) or about time
the emulator itself controls, never about how fast this machine is.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import mtcp_core
from appliance import cli
from mtcp_core.netem import parse_duration_us, parse_probability, parse_rate_bps
from mtcp_core.testing import echo_app, netns
from mtcp_core.testing.pcapfile import records

UDP_PORT = 9000

# ---------------------------------------------------------------- options, no privileges


def test_option_values() -> None:
    assert parse_duration_us("20ms") == 20_000
    assert parse_duration_us("1.5ms") == 1_500
    assert parse_duration_us("300us") == 300
    assert parse_duration_us("0.02s") == 20_000
    assert parse_duration_us("7") == 7_000  # a bare number is ms, as in tc-netem
    assert parse_probability("2%") == pytest.approx(0.02)
    assert parse_probability("0.5") == pytest.approx(0.005)
    assert parse_rate_bps("100mbit") == 100_000_000
    assert parse_rate_bps("1gbit") == 1_000_000_000
    assert parse_rate_bps("12.5mbps") == 100_000_000
    assert parse_rate_bps("0") == 0
    for bad in ("fast", "-1ms", "20 parsecs"):
        with pytest.raises(ValueError):
            parse_duration_us(bad)
    for bad in ("101%", "-1%", "lots"):
        with pytest.raises(ValueError):
            parse_probability(bad)
    with pytest.raises(ValueError, match="rate like"):
        parse_rate_bps("100 furlongs")
    with pytest.raises(ValueError, match="loss"):
        mtcp_core.LinkShape(loss=1.5)
    with pytest.raises(ValueError, match="queue_frames"):
        mtcp_core.LinkShape(queue_frames=0)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--loss", "150%"], "--loss"),
        (["--delay", "1ms/2ms/3ms"], "A2B/B2A"),
        (["--rate", "quick"], "--rate"),
        (["--queue", "0"], "--queue"),
    ],
)
def test_cli_rejects_bad_values(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["netem", "--a", "x0", "--b", "x1", *args])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_cli_per_direction_values() -> None:
    from appliance.netem import shapes

    argv = ["netem", "--a", "x0", "--b", "x1", "--delay", "20ms/5ms", "--loss", "2%",
            "--rate", "100mbit/0", "--queue", "50"]  # fmt: skip
    args = cli.build_parser().parse_args(argv)
    a_to_b, b_to_a = shapes(args)
    assert (a_to_b.delay_us, b_to_a.delay_us) == (20_000, 5_000)
    assert a_to_b.loss == b_to_a.loss == pytest.approx(0.02)
    assert (a_to_b.rate_bps, b_to_a.rate_bps) == (100_000_000, 0)
    assert a_to_b.queue_frames == b_to_a.queue_frames == 50


# ---------------------------------------------------------------- helpers


def icmp_seq(frame: bytes, icmp_type: int) -> int | None:
    if len(frame) < 42 or frame[12:14] != b"\x08\x00" or frame[23] != 1:
        return None
    icmp = 14 + (frame[14] & 0x0F) * 4
    if frame[icmp] != icmp_type:
        return None
    return int(struct.unpack_from("!H", frame, icmp + 6)[0])


def wait_drained(emu: mtcp_core.LinkEmulator, timeout: float = 10.0) -> dict[str, dict[str, int]]:
    """The counters once they stop moving (the delay line and the rate queue are empty)."""
    deadline = time.monotonic() + timeout
    last = emu.counters()
    while time.monotonic() < deadline:
        time.sleep(0.3)
        now = emu.counters()
        if now == last:
            break
        last = now
    return last


class Receiver:
    """A kernel UDP socket in a namespace with a large receive buffer (nothing is lost in
    the receiver, so what is missing went missing on the link)."""

    def __init__(self, ns: netns.Namespace, addr: str) -> None:
        with ns.entered():
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, 33, 16 << 20)  # SO_RCVBUFFORCE
        self.sock.bind((addr, UDP_PORT))
        self.sock.settimeout(0.5)

    def drain(self) -> list[bytes]:
        out = []
        try:
            while True:
                out.append(self.sock.recv(4096))
        except TimeoutError:
            return out


def datagram(i: int, size: int = 200) -> bytes:
    """Datagram number i: its number, then bytes derived from it (damage shows)."""
    head = struct.pack("!I", i)
    return (head + hashlib.sha256(head).digest() * (size // 32 + 1))[:size]


def send_numbered(ns: netns.Namespace, dst: str, n: int, size: int = 200,
                  pace: bool = True) -> None:  # fmt: skip
    """n numbered datagrams from a kernel socket in ns; paced (a few per ms) unless told."""

    def send() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for i in range(n):
                s.sendto(datagram(i, size), (dst, UDP_PORT))
                if pace and i % 8 == 7:
                    time.sleep(0.001)

    ns.call(send)


def snmp(ns: netns.Namespace, proto: str) -> dict[str, int]:
    lines = [ln.split() for ln in ns.run(["cat", "/proc/net/snmp"]).stdout.splitlines()]
    rows = [ln for ln in lines if ln and ln[0] == f"{proto}:"]
    return {k: int(v) for k, v in zip(rows[0][1:], rows[1][1:], strict=True)}


def binomial_ok(k: int, n: int, p: float, sigmas: float = 5.0) -> bool:
    mean = n * p
    sd = (n * p * (1 - p)) ** 0.5
    return abs(k - mean) <= sigmas * sd


# ---------------------------------------------------------------- delay


def test_delay_kernel_ping_rtt(netlab: netns.Lab, tmp_path: Path) -> None:
    """20 ms each way: the kernel's ping sees 40 ms round trips, and the emulator's own
    captures show each frame held 20 ms (to well under a millisecond)."""
    shape = mtcp_core.LinkShape(delay_us=20_000)
    path = netlab.emulated_path(shape, seed=1, static_arp=True,
                                pcap_prefix=str(tmp_path / "cap"))  # fmt: skip
    out = path.client.run(["ping", "-c", "20", "-i", "0.05", "-W", "2", str(path.server_ip.ip)])
    m = re.search(r"= ([\d.]+)/([\d.]+)/([\d.]+)/", out.stdout)
    assert m, out.stdout
    rtt_min, rtt_avg = float(m.group(1)), float(m.group(2))
    assert " 0% packet loss" in out.stdout
    assert 40.0 <= rtt_min < 41.0, out.stdout
    assert rtt_avg < 50.0, out.stdout  # generous: ping's own scheduling on a busy machine
    assert path.emulator.realtime_active
    c = path.emulator.counters()
    assert c["a_to_b"]["delayed"] == c["a_to_b"]["forwarded"] == 20
    assert c["b_to_a"]["delayed"] == c["b_to_a"]["forwarded"] == 20
    path.emulator.close()  # flushes the captures
    seen_a = {icmp_seq(f, 8): t for t, f in records(tmp_path / "cap-a.pcap")}
    left_b = {icmp_seq(f, 8): t for t, f in records(tmp_path / "cap-b.pcap")}
    held = [left_b[s] - seen_a[s] for s in seen_a if s is not None and s in left_b]
    assert len(held) == 20
    assert min(held) >= 0.020 - 1e-6  # never early
    assert statistics.median(held) < 0.0205, held  # on time to well under a millisecond


def test_jitter_spreads_delay(netlab: netns.Lab, tmp_path: Path) -> None:
    shape = mtcp_core.LinkShape(delay_us=5_000, jitter_us=10_000)
    path = netlab.emulated_path((shape, mtcp_core.LinkShape()), seed=3, static_arp=True,
                                pcap_prefix=str(tmp_path / "cap"))  # fmt: skip
    path.client.run(["ping", "-c", "30", "-i", "0.02", "-W", "2", str(path.server_ip.ip)])
    path.emulator.close()
    seen_a = {icmp_seq(f, 8): t for t, f in records(tmp_path / "cap-a.pcap")}
    left_b = {icmp_seq(f, 8): t for t, f in records(tmp_path / "cap-b.pcap")}
    held = [left_b[s] - seen_a[s] for s in seen_a if s is not None and s in left_b]
    assert len(held) == 30
    assert min(held) >= 0.005 - 1e-6
    assert max(held) <= 0.015 + 0.005  # 5 + 10 ms, and a little for a late wake-up
    assert max(held) - min(held) > 0.004  # spread over the jitter range, not fixed


# ---------------------------------------------------------------- loss, seeded


def test_loss_rate_within_tolerance_and_seeded(netlab: netns.Lab) -> None:
    """10 % loss a -> b: the emulator drops within a binomial tolerance of 10 %, the
    receiver gets exactly what it forwarded, and the same seed drops the same number again
    (the decisions follow the seed and the order of frames, not the clock)."""
    n, p, seed = 2000, 0.10, 11
    shape = mtcp_core.LinkShape(loss=p)
    path = netlab.emulated_path((shape, mtcp_core.LinkShape()), seed=seed, static_arp=True)
    rx = Receiver(path.server, str(path.server_ip.ip))
    dropped = []
    for run_seed in (seed, seed + 1, seed):
        path.emulator.set((shape, mtcp_core.LinkShape()), seed=run_seed)
        before = path.emulator.direction("a_to_b")
        send_numbered(path.client, str(path.server_ip.ip), n)
        got = rx.drain()
        after = wait_drained(path.emulator)["a_to_b"]
        d = {k: after[k] - before[k] for k in after}
        assert d["received"] == n
        assert d["forwarded"] + d["dropped"] == n
        assert len(got) == d["forwarded"]
        assert binomial_ok(d["dropped"], n, p), d
        dropped.append(d["dropped"])
    assert dropped[0] == dropped[2], dropped  # same seed, same frames: same drops
    assert path.emulator.direction("b_to_a")["received"] == 0  # one way only


# ---------------------------------------------------------------- duplicate, reorder, corrupt


def test_duplicate_reorder_corrupt_counted(netlab: netns.Lab) -> None:
    n, p = 2000, 0.05
    shape = mtcp_core.LinkShape(duplicate=p, reorder=p, corrupt=p)
    path = netlab.emulated_path((shape, mtcp_core.LinkShape()), seed=5, static_arp=True)
    rx = Receiver(path.server, str(path.server_ip.ip))
    udp0, ip0 = snmp(path.server, "Udp"), snmp(path.server, "Ip")
    send_numbered(path.client, str(path.server_ip.ip), n)
    got = rx.drain()
    c = wait_drained(path.emulator)["a_to_b"]
    assert c["received"] == n
    for key in ("duplicated", "reordered", "corrupted"):
        assert binomial_ok(c[key], n, p), (key, c)
    seqs = []
    for d in got:
        i = struct.unpack_from("!I", d)[0]
        assert d == datagram(i), f"datagram {i} arrived damaged"  # checksums caught the rest
        seqs.append(i)
    # duplicates: every copy the emulator made arrives twice unless it was the corrupted
    # frame's copy (a duplicate is a copy of the frame as corrupted)
    dups = len(seqs) - len(set(seqs))
    assert c["duplicated"] - c["corrupted"] <= dups <= c["duplicated"]
    # reordering: a held frame arrives after the next one
    inversions = sum(1 for x, y in zip(seqs, seqs[1:], strict=False) if y < x)
    assert 0 < inversions <= c["reordered"] + c["duplicated"]
    assert inversions >= c["reordered"] * 0.7
    # corruption: the receiver's checksums (IP header, UDP) caught the flipped bits; only a
    # flip in the Ethernet source address passes unnoticed (6 of ~240 bytes)
    missing = n - len(set(seqs))
    assert c["corrupted"] * 0.85 <= missing <= c["corrupted"]
    caught = (snmp(path.server, "Udp")["InCsumErrors"] - udp0["InCsumErrors"]) + (
        snmp(path.server, "Ip")["InHdrErrors"] - ip0["InHdrErrors"]
    )
    assert 0 < caught <= c["corrupted"]


# ---------------------------------------------------------------- rate limit


def test_rate_limit_token_bucket_and_tail_drop(netlab: netns.Lab, tmp_path: Path) -> None:
    """20 Mbit/s with a 1000-frame queue: a burst far above the rate leaves at the rate (the
    emulator's own egress timestamps, over the ~0.4 s the queue takes to drain) and what does
    not fit the queue is tail-dropped."""
    rate = 20_000_000
    shape = mtcp_core.LinkShape(rate_bps=rate, queue_frames=1000)
    path = netlab.emulated_path((shape, mtcp_core.LinkShape()), seed=1, static_arp=True,
                                pcap_prefix=str(tmp_path / "cap"))  # fmt: skip
    rx = Receiver(path.server, str(path.server_ip.ip))
    n = 3000
    send_numbered(path.client, str(path.server_ip.ip), n, size=1000, pace=False)
    got = rx.drain()
    c = wait_drained(path.emulator)["a_to_b"]
    path.emulator.close()
    assert n * 0.9 <= c["received"] <= n  # (the sender's own veth may drop a few)
    assert c["queue_drops"] > 0
    assert c["forwarded"] + c["queue_drops"] == c["received"]
    assert len(got) == c["forwarded"]
    assert c["rate_delayed"] > 0
    out = list(records(tmp_path / "cap-b.pcap"))
    assert len(out) == c["forwarded"] > 1000
    # from the 10th frame on: the bucket's initial burst (2 frames) is behind us
    span = out[-1][0] - out[10][0]
    bits = sum(len(f) for _, f in out[11:]) * 8
    measured = bits / span
    assert 0.9 * rate <= measured <= 1.02 * rate, measured


# ---------------------------------------------------------------- TCP across it


def test_kernel_tcp_with_offloads_is_segmented(netlab: netns.Lab, tmp_path: Path) -> None:
    """The kernel sender keeps TSO/GSO on: the emulator cuts its super-frames into
    MTU-sized segments with correct checksums, the data arrive intact."""
    shape = mtcp_core.LinkShape(delay_us=1_000)
    path = netlab.emulated_path(shape, seed=2, pcap_prefix=str(tmp_path / "cap"))
    data = os.urandom(2 << 20)
    with path.server.entered():
        listener = socket.create_server((str(path.server_ip.ip), 0))

    def sink() -> bytes:
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(30)
            buf = bytearray()
            while chunk := conn.recv(1 << 20):
                buf += chunk
            return bytes(buf)

    result: list[bytes] = []
    t = threading.Thread(target=lambda: result.append(sink()), daemon=True)
    t.start()

    def send() -> None:
        with socket.create_connection(listener.getsockname(), timeout=30) as s:
            s.sendall(data)

    path.client.call(send)
    t.join(30)
    listener.close()
    assert result and result[0] == data
    c = path.emulator.counters()
    assert c["a_to_b"]["segmented"] > 0
    assert c["a_to_b"]["oversize"] == 0
    path.emulator.close()
    assert max(len(f) for _, f in records(tmp_path / "cap-b.pcap")) <= 1514


def test_kernel_to_core_echo_byte_exact_40ms_3pct(netlab: netns.Lab) -> None:
    """A Linux client and the core's echo server across 40 ms RTT with 3 % loss each way:
    every byte comes back, in order, checked one by one."""
    shape = mtcp_core.LinkShape(delay_us=20_000, loss=0.03)
    path = netlab.emulated_path(shape, seed=14, server_address=False)
    stack = path.server.call(mtcp_core.Stack, "afpacket", str(path.server_ip),
                             iface=path.server_link.if_b, time_wait_ms=100)  # fmt: skip
    try:
        thread, stop, result = echo_app.serve_in_thread(
            lambda: echo_app.MtcpNet(stack.context(0)), {7: "echo"}, duration=120
        )
        try:
            data = os.urandom(256 * 1024)
            back = path.client.call(echo_app.echo_exchange, (str(path.server_ip.ip), 7),
                                    data, 90.0)  # fmt: skip
        finally:
            echo_app.stop_server(thread, stop, result)
        assert len(back) == len(data)
        assert back == data
        c = path.emulator.counters()
        assert c["a_to_b"]["dropped"] > 0 and c["b_to_a"]["dropped"] > 0  # loss happened
    finally:
        stack.close()


def test_port_down_and_up_no_spin(netlab: netns.Lab) -> None:
    """An interface that goes down raises an error on the port's sockets that nobody reads
    (POLLERR until read): the loop reads it instead of waking for it forever, at real-time
    priority, and forwards again once the interface is back."""
    path = netlab.emulated_path(mtcp_core.LinkShape(delay_us=1_000), seed=1)
    dst = str(path.server_ip.ip)
    path.client.run(["ping", "-c", "2", "-i", "0.1", dst])
    path.middle.ip("link", "set", path.port_b, "down")
    path.client.run(["ping", "-c", "2", "-i", "0.1", "-W", "1", dst], check=False)

    def busy_cpu_over(seconds: float) -> float:
        t0 = os.times()
        time.sleep(seconds)
        t1 = os.times()
        return (t1.user - t0.user) + (t1.system - t0.system)

    assert busy_cpu_over(1.0) < 0.3  # a spinning loop takes the whole second
    path.middle.ip("link", "set", path.port_b, "up")
    wait_until(lambda: path.client.run(["ping", "-c", "1", "-W", "1", dst],
                                       check=False).returncode == 0)  # fmt: skip
    assert busy_cpu_over(1.0) < 0.3
    assert path.emulator.direction("b_to_a")["port_errors"] >= 1
    assert path.emulator.running


# ---------------------------------------------------------------- the command


def test_cli_forwards_with_delay_and_prints_counters(netlab: netns.Lab) -> None:
    path = netlab.emulated_path(emulator=False, static_arp=True)
    argv = [sys.executable, "-m", "appliance.cli", "netem", "--netns", path.middle.name,
            "--a", path.port_a, "--b", path.port_b, "--delay", "5ms/15ms", "--seed", "9",
            "--json", "--duration", "30"]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=netns.child_env(argv))  # fmt: skip
    netlab.processes.append(proc)
    try:
        ping1 = ["ping", "-c", "1", "-W", "1", str(path.server_ip.ip)]
        wait_until(lambda: path.client.run(ping1, check=False).returncode == 0)
        out = path.client.run(["ping", "-c", "5", "-i", "0.05", str(path.server_ip.ip)])
        m = re.search(r"= ([\d.]+)/", out.stdout)
        assert m and 20.0 <= float(m.group(1)) < 25.0, out.stdout
    finally:
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=10)
    assert proc.returncode == 0, stderr
    assert "delay 5ms" in stderr and "delay 15ms" in stderr
    final = json.loads(stdout.strip().splitlines()[-1])
    assert final["final"] is True
    assert final["realtime"] is True  # root here: SCHED_FIFO allowed
    assert "without real-time" not in stderr
    assert final["a_to_b"]["forwarded"] >= 6 and final["b_to_a"]["forwarded"] >= 6


def test_cli_names_a_missing_interface(netlab: netns.Lab) -> None:
    ns = netlab.namespace("nemiss")
    out = ns.run([sys.executable, "-m", "appliance.cli", "netem", "--a", "nosuch0",
                  "--b", "lo", "--duration", "1"], check=False)  # fmt: skip
    assert out.returncode == 1
    assert "nosuch0" in out.stderr and "no such interface" in out.stderr


def wait_until(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        time.sleep(0.1)
