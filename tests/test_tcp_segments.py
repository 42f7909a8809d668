"""TCP as segment scripts: the stack on a stepped context, the test as its peer.

Each test hands the stack hand-built frames at times it chooses and checks exactly what the
stack sends back and when (``mtcp_core.testing``): RFC 9293 state machine, RFC 5961,
RFC 7323 (PAWS, timestamps), RFC 1337, SYN cookies, the timers (retransmission backoff and
the abort, keepalive, the idle timeout, delayed ACKs) and Nagle. No threads, no sleeps, no
root: a script of minutes of stack time runs in milliseconds, and the same script gives the
same segments every run. The last sections put two stacks on one stepped clock (``Duo``): a
lossy link's recovery and the targeted drops (SYN, SYN-ACK, final ACK, FIN), at exact times.
What needs a real kernel peer stays in the namespace tests (test_interop_kernel.py,
test_tcp_conformance.py's SYN flood).
"""

from __future__ import annotations

import errno
import random
from pathlib import Path

import pytest

import mtcp_core as m
from mtcp_core.testing import (
    ACK,
    FIN,
    PSH,
    RST,
    SYN,
    Duo,
    PeerConn,
    Rig,
    icmp_echo_frame,
    pools_back,
    stack_client,
)
from mtcp_core.testing.pcapfile import record_times, tcp_frames

ECHO, ONCE, SINK = 7, 8, 9
CLOSED_PORT = 10
TIME_WAIT_MS = 3000
SYN_BACKLOG = 64
CHALLENGE_ACK_LIMIT = 100
RAW_NET = "198.19.0."  # peers off the stack's subnet, through its gateway (the peer)
# opt.h
TCP_RTO_MIN_MS = 200
TCP_MAX_RETRIES = 8
DELACK_MS = 40  # opt.h MTCP_DELACK_MS


def delta(after: dict[str, int], before: dict[str, int], name: str) -> int:
    return after[name] - before[name]


@pytest.fixture
def rig() -> Rig:
    with Rig(
        time_wait_ms=TIME_WAIT_MS, syn_backlog=SYN_BACKLOG, challenge_ack_limit=CHALLENGE_ACK_LIMIT
    ) as r:
        r.app.serve(ECHO, "echo")
        r.app.serve(ONCE, "once")
        yield r


def established(rig: Rig, dport: int = ECHO, **kw: object) -> PeerConn:
    c = rig.conn(dport, **kw)  # type: ignore[arg-type]
    c.handshake()
    c.echo(b"before\n")
    return c


# ---------------------------------------------------------------- the rig itself


def script_trace() -> list[tuple[object, ...]]:
    """A script with a passive and an active connection, data, timers and closes; every
    segment the stack sent, with its time."""
    with Rig(time_wait_ms=500) as rig:
        rig.app.serve(ECHO, "echo")
        c = rig.conn(ECHO)
        c.handshake()
        c.echo(b"deterministic\n")
        s, peer = stack_client(rig)
        s.send(b"x" * 3000)
        rig.advance(700)  # retransmissions of the unacknowledged data
        c.send_fin()
        rig.advance(1000)
        return [(x.sport, x.dport, x.seq, x.ack, x.flags, x.window, x.ts, x.payload, x.at_ns)
                for x in rig.inbox + c.pending() + peer.pending()]  # fmt: skip


def test_a_script_repeats_to_the_bit() -> None:
    """The stack reads no clock but the script's and no randomness but secret_seed: the
    same script gives the same segments, ISNs and timestamps included, at the same times."""
    first, second = script_trace(), script_trace()
    assert len(first) > 10
    assert first == second


def test_a_stepped_context_never_waits_and_refuses_what_it_cannot_do() -> None:
    """No thread behind it: epoll returns at once whatever the timeout, time cannot go back,
    a threaded context cannot be stepped, the load generator (wall clock) is refused, and
    the link's hand-driven side is refused where a stack sends."""
    with Rig() as rig:
        ep = rig.ctx.epoll()
        ls = rig.app.serve(ECHO)
        ep.register(ls, m.EPOLLIN)
        assert ep.poll(5.0) == [] and ep.poll(None) == []  # returns at once
        with pytest.raises(ValueError):
            rig.ctx.step(rig.now_ns - 1)
        with pytest.raises(ValueError):
            m.LoadGenerator(rig.ctx, (rig.peer_ip, 80), b"GET / HTTP/1.0\r\n\r\n")
        with pytest.raises(OSError) as e:
            rig.link.inject(0, b"x" * 60, rig.now_ns)  # side 0 is the stack's
        assert e.value.errno == errno.EBUSY
        assert rig.link.take(1, rig.now_ns) is None
    link = m.PairLink()
    threaded = m.Stack("pair", "198.18.0.2/24", pair=link, pair_side=0)
    try:
        ctx = threaded.context(0)
        assert m.lib.mtcp_ctx_step(ctx._ptr, 10**12) == 0
        assert m.ffi.errno == errno.EINVAL
    finally:
        threaded.close()
        link.close()


def test_the_link_delays_frames_on_the_stepped_clock() -> None:
    """A pair link with a delay hands a frame over exactly delay after it was sent, on the
    script's clock, in both directions."""
    with Rig(faults=m.Faults(delay_us=3000)) as rig:
        rig.app.serve(ECHO)
        c = rig.conn(ECHO)
        c.syn()
        assert c.recv() is None  # the SYN is still on the wire
        rig.advance(2.999)
        assert rig.stats()["rx_packets"] == 0
        rig.advance(0.001)  # the SYN arrives; the SYN-ACK leaves now
        assert rig.stats()["rx_packets"] == 1
        rig.advance(2.999)
        assert c.recv() is None
        rig.advance(0.001)
        c.expect(flags=SYN | ACK, at_ms=rig.now_ms)


def test_a_stepped_capture_has_the_scripts_times_and_repeats_to_the_byte(
    tmp_path: Path,
) -> None:
    """Stack(pcap=...) on a stepped context stamps each record with the round's time (not
    the wall clock), so the capture of a script is the same file every run."""
    files = []
    for run in range(2):
        path = tmp_path / f"run{run}-core%u.pcap"
        with Rig(pcap=str(path)) as rig:
            rig.app.serve(ECHO)
            c = rig.conn(ECHO)
            c.handshake()
            rig.advance(250)
            c.echo(b"captured\n")
        files.append(Path(str(path).replace("%u", "0")))
    times = record_times(files[0])
    assert times[0] == 1.0 and times[-1] == 1.25, times  # the script's clock: 1 s, +250 ms
    assert len(tcp_frames(files[0])) >= 5
    assert files[0].read_bytes() == files[1].read_bytes()


# ---------------------------------------------------------------- RST and closed ports


def test_syn_to_a_closed_port_gets_rst(rig: Rig) -> None:
    """RFC 9293 3.10.7.1: <SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK>."""
    before = rig.stats()
    c = rig.conn(CLOSED_PORT)
    c.syn()
    c.expect(flags=RST | ACK, seq=0, ack=c.iss + 1, at_ms=rig.now_ms)
    rig.advance(200)
    c.expect_none()
    st = rig.stats()
    assert delta(st, before, "drop_tcp_no_socket") == 1
    assert delta(st, before, "rst_tx") == 1
    assert pools_back(st)


def test_shared_address_leaves_the_kernels_ports_alone() -> None:
    """shared_addr (a container's eth0, which the kernel keeps too): a SYN for a port with no
    listener is the kernel's and gets no RST from the stack; a segment for a listening port
    without a connection still does (RFC 9293 3.10.7.1), and pings are left to the kernel."""
    with Rig(shared_addr=True) as rig:
        rig.app.serve(ECHO, "echo")
        before = rig.stats()
        c = rig.conn(CLOSED_PORT)
        c.syn()
        rig.advance(500)
        c.expect_none()
        st = rig.stats()
        assert delta(st, before, "drop_tcp_no_socket") == 1
        assert delta(st, before, "rst_tx") == 0
        stray = rig.conn(ECHO)  # an ACK for no connection of a port the stack serves
        stray.send(ACK, seq=stray.iss, ack=12345)
        stray.expect(flags=RST, seq=12345)
        before = rig.stats()
        rig.inject(icmp_echo_frame(rig.PEER_MAC, rig.mac, rig.peer_ip, rig.ip))
        rig.advance(100)
        assert rig.other == []  # no echo reply
        st = rig.stats()
        assert delta(st, before, "drop_icmp_type") == 1
        assert delta(st, before, "icmp_echo_replies") == 0
    # and without shared_addr the same ping is answered (the test can fail)
    with Rig() as rig:
        rig.inject(icmp_echo_frame(rig.PEER_MAC, rig.mac, rig.peer_ip, rig.ip))
        assert [f.icmp_type for f in rig.other] == [0]
        assert rig.stats()["icmp_echo_replies"] == 1


def test_out_of_window_rst_is_ignored(rig: Rig) -> None:
    """RFC 5961 3.2: a RST outside the receive window is dropped without an answer."""
    c = established(rig)
    before = rig.stats()
    for off in (1 << 20, 1 << 30, -(1 << 20)):  # beyond the window, and behind RCV.NXT
        c.send(RST, seq=c.snd_nxt + off)
    rig.advance(300)
    c.expect_none()
    c.echo(b"after\n")  # still there
    st = rig.stats()
    assert delta(st, before, "rst_rx") == 0
    assert st["state_established"] == 1
    assert rig.app.report.resets == 0


def test_in_window_rst_gets_a_challenge_ack(rig: Rig) -> None:
    """RFC 5961 3.2: a RST in the window but not at RCV.NXT gets a challenge ACK and the
    connection lives on."""
    c = established(rig)
    before = rig.stats()
    c.send(RST, seq=c.snd_nxt + 1000)
    seg = c.expect(flags=ACK, seq=c.rcv_nxt, ack=c.snd_nxt, payload=b"", at_ms=rig.now_ms)
    assert c.is_challenge_ack(seg)
    rig.advance(200)
    c.expect_none()
    c.echo(b"after\n")
    st = rig.stats()
    assert delta(st, before, "challenge_acks") == 1
    assert delta(st, before, "rst_rx") == 0 and delta(st, before, "rst_tx") == 0
    assert st["state_established"] == 1
    assert rig.app.report.resets == 0


def test_exact_rst_resets_the_connection(rig: Rig) -> None:
    """RFC 5961 3.2: a RST at exactly RCV.NXT resets; the application sees ECONNRESET."""
    c = established(rig)
    before = rig.stats()
    c.send(RST, seq=c.snd_nxt)
    st = rig.stats()
    assert delta(st, before, "rst_rx") == 1
    rig.advance(200)
    c.expect_none()  # an acceptable RST gets no answer
    # the connection is gone: our next segment meets no socket and gets a RST
    c.send(ACK | PSH, b"gone?\n")
    c.expect(flags=RST, seq=c.rcv_nxt)
    st = rig.stats()
    assert st["state_established"] == 0
    assert rig.app.report.resets == 1, "the application did not see ECONNRESET"
    assert pools_back(st)


def test_syn_in_established_gets_a_challenge_ack(rig: Rig) -> None:
    """RFC 5961 4.2: a SYN in a synchronized state, whatever its sequence number, gets a
    challenge ACK and no reset."""
    c = established(rig)
    cases = (
        ("in the window", c.snd_nxt + 5000),
        ("at RCV.NXT", c.snd_nxt),
        ("behind the window", c.iss),
    )
    for where, seq in cases:
        before = rig.stats()
        c.send(SYN, seq=seq, mss=1460)
        seg = c.recv()
        assert seg is not None, f"SYN {where}: no challenge ACK"
        assert c.is_challenge_ack(seg), f"SYN {where}: {seg} is not a challenge ACK"
        c.expect_none()
        st = rig.stats()
        assert delta(st, before, "challenge_acks") == 1, where
        assert delta(st, before, "rst_tx") == 0, where
        rig.advance(1000)  # out of the challenge-ACK rate limit's second
    c.echo(b"after\n")
    assert rig.stats()["state_established"] == 1
    assert rig.app.report.resets == 0


def test_bad_tcp_checksum_is_dropped_and_counted(rig: Rig) -> None:
    c = established(rig)
    before = rig.stats()
    c.send(ACK | PSH, b"CORRUPTED\n", bad_checksum=True)
    rig.advance(300)
    c.expect_none()
    assert delta(rig.stats(), before, "drop_tcp_checksum") == 1
    c.echo(b"good!\n")  # the same sequence numbers, now intact
    assert rig.app.report.bytes_in == len(b"before\n") + len(b"good!\n")


def test_paws_drops_an_old_timestamp(rig: Rig) -> None:
    """RFC 7323 5.3: a segment whose TSval is older than TS.Recent is not acceptable: it is
    ACKed, dropped, and its data never reaches the application."""
    c = rig.conn(ECHO, timestamps=True)
    syn_ack = c.handshake()
    assert syn_ack.ts is not None, "the stack did not negotiate timestamps"
    newer = c.tsval()
    c.send_data(b"first\n", tsval=newer)
    assert c.read(6) == b"first\n"
    before = rig.stats()
    c.send(ACK | PSH, b"STALE\n", tsval=newer - 100_000)
    seg = c.expect(flags=ACK, seq=c.rcv_nxt, ack=c.snd_nxt, payload=b"")
    assert c.is_challenge_ack(seg)
    c.expect_none()
    assert delta(rig.stats(), before, "drop_tcp_paws") == 1
    c.send_data(b"fresh\n")  # the same sequence numbers, a current TSval
    assert c.read(6) == b"fresh\n"
    assert rig.app.report.bytes_in == len(b"first\nfresh\n")


def test_challenge_acks_are_rate_limited(rig: Rig) -> None:
    """RFC 5961 7: a burst of in-window RSTs gets exactly the per-second limit of challenge
    ACKs; the rest are counted as suppressed, and the next second has a fresh allowance."""
    limit = CHALLENGE_ACK_LIMIT
    burst = 10 * limit
    c = established(rig)
    rig.advance(1000)  # a fresh rate-limit second (the handshake's ACKs are in the last one)
    before = rig.stats()
    for i in range(burst):
        rig.link.inject(1, c.frame(RST, seq=c.snd_nxt + 1 + i, ts=False), rig.now_ns)
    rig.settle()
    acks = [s for s in c.pending() if c.is_challenge_ack(s)]
    st = rig.stats()
    assert len(acks) == limit
    assert delta(st, before, "challenge_acks") == limit
    assert delta(st, before, "challenge_acks_suppressed") == burst - limit
    assert delta(st, before, "rst_rx") == 0
    rig.advance(999)
    c.send(RST, seq=c.snd_nxt + 1)  # still the same second: suppressed
    c.expect_none()
    rig.advance(1)
    c.send(RST, seq=c.snd_nxt + 1)  # a new second
    assert c.is_challenge_ack(c.expect(flags=ACK))
    c.echo(b"after\n")  # data is not rate limited: the connection lives
    assert rig.app.report.resets == 0


def test_rst_in_time_wait_is_ignored(rig: Rig) -> None:
    """RFC 1337: a RST for a connection in TIME_WAIT is ignored (TIME_WAIT assassination);
    TIME_WAIT still answers a retransmitted FIN afterwards, and ends after its time."""
    c = rig.conn(ONCE)
    c.handshake()
    c.send_data(b"bye\n")
    assert c.read(4) == b"bye\n"
    if not c.fin_received:  # the stack closes first; its FIN may ride on the data
        c.take(c.wait_for(lambda s: s.has(FIN)))
    assert c.fin_received
    c.send_fin()
    last = c.expect(flags=ACK, seq=c.rcv_nxt, ack=c.snd_nxt)
    entered_ms = last.at_ms
    st = rig.stats()
    assert st["state_time_wait"] == 1
    before = st
    c.send(RST, seq=c.snd_nxt)  # exactly RCV.NXT: would kill any other state
    c.send(RST | ACK, seq=c.snd_nxt)
    c.expect_none()
    st = rig.stats()
    assert delta(st, before, "drop_tcp_rst_time_wait") == 2
    assert st["state_time_wait"] == 1 and st["flows"] == 1
    assert delta(st, before, "rst_rx") == 0
    # still there: a retransmitted FIN is ACKed again
    c.send(FIN | ACK, seq=c.snd_nxt - 1)
    c.expect(flags=ACK, ack=c.snd_nxt)
    # TIME_WAIT ends TIME_WAIT_MS after it began (the FIN restarted it: RFC 9293 3.10.7.4)
    rig.advance(TIME_WAIT_MS - 1 - (rig.now_ms - entered_ms))
    assert rig.stats()["state_time_wait"] == 1
    rig.advance(TIME_WAIT_MS)
    assert pools_back(rig.stats())


def time_wait_conn(rig: Rig) -> PeerConn:
    """A connection to the ONCE port that the stack closed first: its TCB is in TIME-WAIT."""
    c = rig.conn(ONCE, sport=45000)
    c.handshake()
    c.send_data(b"bye\n")
    assert c.read(4) == b"bye\n"
    if not c.fin_received:
        c.take(c.wait_for(lambda s: s.has(FIN)))
    c.send_fin()
    c.expect(flags=ACK, ack=c.snd_nxt)
    assert rig.stats()["state_time_wait"] == 1
    return c


def test_a_newer_syn_reopens_a_time_wait_connection(rig: Rig) -> None:
    """RFC 6191: a SYN on the 4-tuple of a TIME-WAIT connection with a newer timestamp
    opens a new connection at once, whose ISN lies beyond the old sequence space."""
    old = time_wait_conn(rig)
    rig.advance(10)
    new = rig.conn(ONCE, sport=45000)
    new.ts_base = old.ts_base  # the same host's clock: newer by the 10 ms
    new.iss = new.snd_nxt = (old.snd_nxt + 100_000) & 0xFFFFFFFF
    synack = new.handshake()
    assert (synack.seq - old.rcv_nxt) & 0xFFFFFFFF < 1 << 31  # beyond the old incarnation
    new.send_data(b"again\n")
    assert new.read(6) == b"again\n"
    assert rig.app.report.accepted == 2


def test_an_older_syn_does_not_reopen_a_time_wait_connection(rig: Rig) -> None:
    """RFC 6191: a SYN whose timestamp is older meets TIME-WAIT's rules instead: PAWS
    (RFC 7323 5.3) drops it with an ACK of the old connection's numbers; no new one."""
    old = time_wait_conn(rig)
    before = rig.stats()
    new = rig.conn(ONCE, sport=45000)
    new.ts_base = old.ts_base - 1000  # an older clock
    new.iss = new.snd_nxt = (old.snd_nxt + 100_000) & 0xFFFFFFFF
    new.syn()
    new.expect(flags=ACK, seq=old.rcv_nxt, ack=old.snd_nxt, payload=b"")
    new.expect_none()
    st = rig.stats()
    assert delta(st, before, "drop_tcp_paws") == 1
    assert st["state_time_wait"] == 1
    assert rig.app.report.accepted == 1


def test_timestamps_increase_across_connections_between_two_hosts(rig: Rig) -> None:
    """RFC 7323 5.4 (and Linux's secure_tcp_ts_off): the TSval clock's offset depends on the
    two addresses, not the ports, so successive connections from one host see increasing
    timestamps (RFC 6191 reuse of a TIME-WAIT 4-tuple depends on it); the clock is 1 ms."""
    tsvals = []
    for _ in range(16):
        c = rig.conn(ECHO)
        syn_ack = c.handshake()
        assert syn_ack.ts is not None
        tsvals.append(syn_ack.ts[0])
        c.send(RST | ACK)
        rig.advance(7)
    steps = [(b - a) & 0xFFFFFFFF for a, b in zip(tsvals, tsvals[1:], strict=False)]
    assert steps == [7] * 15, (tsvals, steps)


def server_closes_first(rig: Rig, line: bytes) -> None:
    """One connection to the ``once`` responder: ``line`` echoed, the server's FIN, ours and
    the server's last ACK; the server's end is left in TIME-WAIT."""
    c = rig.conn(ONCE)
    c.handshake()
    c.send_data(line)
    assert c.read(len(line)) == line
    if not c.fin_received:  # the FIN may ride on the data
        c.take(c.wait_for(lambda s: s.has(FIN)))
    c.send_fin()
    c.expect(flags=ACK, ack=c.snd_nxt)


def test_time_wait_gives_its_tcb_to_a_new_connection_when_the_pool_is_empty() -> None:
    """A server that closes first keeps a TIME-WAIT per connection. With 32 TCBs and a 60 s
    TIME-WAIT, 120 sequential connections still all succeed: when the pool is empty, the
    oldest TIME-WAIT connection gives its TCB back (as Linux does past tcp_max_tw_buckets)."""
    with Rig(max_conns=32, time_wait_ms=60_000) as rig:
        rig.app.serve(ONCE, "once")
        for i in range(120):
            server_closes_first(rig, b"x%d\n" % i)
            rig.advance(1)
        st = rig.stats()
        # every connection is still in TIME-WAIT or gave its TCB to a later one (the stack
        # keeps some of the pool free for new connections, so fewer than 32 may stay)
        assert st["state_time_wait"] + st["time_wait_reclaimed"] == 120
        assert 0 < st["state_time_wait"] <= 32
        assert st["drop_tcp_no_memory"] == 0
        assert rig.app.report.accepted == 120


# ---------------------------------------------------------------- SYN cookies


def fill_syn_backlog(rig: Rig, seed: int = 1337) -> dict[str, int]:
    """Spoofed SYNs (off-link sources, through the gateway) until the listener's half-open
    backlog is full; returns the counters then."""
    rnd = random.Random(seed)
    for _ in range(SYN_BACKLOG + 50):
        src = RAW_NET + str(rnd.randrange(1, 255))
        frame = rig.tcp(src, rnd.randrange(1024, 65536), ECHO, rnd.getrandbits(32), 0, SYN,
                        mss=1460, ip_id=rnd.getrandbits(16))  # fmt: skip
        rig.link.inject(1, frame, rig.now_ns)
    rig.settle()
    rig.inbox.clear()  # the SYN-ACKs to the spoofed sources
    st = rig.stats()
    assert st["state_syn_received"] == SYN_BACKLOG
    assert st["syn_cookies_sent"] >= 1
    return st


def test_syn_cookie_handshake_carries_data_at_once(rig: Rig) -> None:
    """With the backlog full, a SYN gets a cookie SYN-ACK (no state kept); the ACK that
    returns the cookie opens the connection, and the data right behind it is taken at once."""
    before = fill_syn_backlog(rig)
    c = rig.conn(ECHO, src=RAW_NET + "77")
    synack = c.handshake()
    assert synack.mss is not None, f"the cookie SYN-ACK carries no MSS: {synack}"
    t0 = rig.now_ns
    c.echo(b"through a cookie\n")
    assert rig.now_ns == t0  # answered in the same instant: nothing waited for a timer
    st = rig.stats()
    assert delta(st, before, "syn_cookies_sent") == 1
    assert delta(st, before, "syn_cookies_ok") == 1
    assert delta(st, before, "syn_cookies_bad") == 0
    assert delta(st, before, "retransmits") == 0
    c.echo(b"and more\n")
    assert rig.app.report.accepted == 1 and rig.app.report.resets == 0


def test_bad_syn_cookie_is_refused(rig: Rig) -> None:
    """An ACK to the listener whose acknowledgment is not a valid cookie opens nothing: it is
    counted and answered with <SEQ=SEG.ACK><CTL=RST> (RFC 9293 3.10.7.2)."""
    before = fill_syn_backlog(rig)
    c = rig.conn(ECHO, src=RAW_NET + "77")
    c.syn()
    synack = c.expect(flags=SYN | ACK, ack=c.iss + 1)
    forged = (synack.seq + 1 + 0x10000) & 0xFFFFFFFF
    c.send(ACK | PSH, b"forged\n", seq=c.iss + 1, ack=forged, ts=False)
    c.expect(flags=RST, seq=forged)
    st = rig.stats()
    assert delta(st, before, "syn_cookies_bad") == 1
    assert delta(st, before, "syn_cookies_ok") == 0
    assert delta(st, before, "conn_passive_opens") == 0
    assert rig.app.report.accepted == 0


def test_a_cookie_expires_after_two_ticks(rig: Rig) -> None:
    """A cookie is valid in its 64 s tick and the next one, not later: the same ACK that
    would have opened the connection is refused once the clock has moved on."""
    fill_syn_backlog(rig)
    c = rig.conn(ECHO, src=RAW_NET + "78")
    c.syn()
    synack = c.expect(flags=SYN | ACK, ack=c.iss + 1)
    late = c.frame(ACK, seq=c.iss + 1, ack=synack.seq + 1, ts=False)
    rig.advance(2 * 64_000)
    before = rig.stats()
    rig.inject(late)
    c.expect(flags=RST, seq=synack.seq + 1)
    assert delta(rig.stats(), before, "syn_cookies_bad") == 1


# ---------------------------------------------------------------- retransmission timers


def test_retransmission_timeouts_back_off_exponentially_and_the_connection_gives_up() -> None:
    """RFC 8985 7: one tail loss probe first, 200 ms after the lone segment (2 SRTT +
    WCDelAckT, capped by the RTO); then RFC 6298 5.5: each timeout doubles the RTO (200 ms,
    400, 800 ...); after TCP_MAX_RETRIES retransmissions by timeout the connection is aborted
    (ETIMEDOUT, RFC 9293 3.8.3). The whole ~102 s runs on the stepped clock, every
    retransmission at its exact time."""
    with Rig() as rig:
        s, c = stack_client(rig)
        before = rig.stats()
        assert s.send(b"x" * 100) == 100
        first = c.expect(flags=ACK, seq=c.rcv_nxt, payload=b"x" * 100)
        # the peer never answers: the probe after 200 ms, once
        rig.advance(TCP_RTO_MIN_MS - 1)
        c.expect_none()
        rig.advance(1)
        probe = c.expect(seq=first.seq, payload=first.payload)
        sent_ms = probe.at_ms
        assert sent_ms - first.at_ms == TCP_RTO_MIN_MS
        # then the same segment again after 200, 400, 800 ... ms
        rto = TCP_RTO_MIN_MS
        times = []
        for _ in range(TCP_MAX_RETRIES):
            rig.advance(rto - 1)
            c.expect_none()
            rig.advance(1)
            seg = c.expect(seq=first.seq, payload=first.payload)
            times.append(seg.at_ms - sent_ms)
            rto *= 2
        assert times == [200 * (2 ** (k + 1) - 1) for k in range(TCP_MAX_RETRIES)], times
        assert s.tcp_info()["state"] == "ESTABLISHED"  # not given up yet
        assert s.getsockopt(m.SOL_SOCKET, m.SO_ERROR) == 0
        # the expiry after the last retry gives up
        rig.advance(rto - 1)
        assert s.getsockopt(m.SOL_SOCKET, m.SO_ERROR) == 0
        rig.advance(1)
        assert s.getsockopt(m.SOL_SOCKET, m.SO_ERROR) == errno.ETIMEDOUT
        with pytest.raises(TimeoutError):
            s.recv(10)
        st = rig.stats()
        assert delta(st, before, "rto_timeouts") == TCP_MAX_RETRIES
        assert delta(st, before, "loss_probes") == 1
        assert delta(st, before, "retransmits") == TCP_MAX_RETRIES + 1
        assert delta(st, before, "conn_timeouts") == 1
        assert rig.now_ms - sent_ms == 200 * (2 ** (TCP_MAX_RETRIES + 1) - 1)
        s.close()
        rig.settle()
        assert pools_back(rig.stats())


def test_a_retransmission_is_acked_and_the_backoff_ends() -> None:
    """Karn's rule aside, an ACK of new data resets the backoff: the next loss waits one
    RTO again, not the backed-off one (RFC 6298 5.7)."""
    with Rig() as rig:
        s, c = stack_client(rig)
        s.send(b"a" * 10)
        first = c.expect(payload=b"a" * 10)
        rig.advance(200)
        c.expect(seq=first.seq)
        rig.advance(400)
        seg = c.expect(seq=first.seq)
        c.take(seg)  # ACKed now
        assert s.tcp_info()["rto_backoff"] == 0
        s.send(b"b" * 10)
        nxt = c.expect(payload=b"b" * 10)
        rig.advance(s.tcp_info()["rto_ms"])
        again = c.expect(seq=nxt.seq, payload=b"b" * 10)
        assert again.at_ms - nxt.at_ms <= 400  # one RTO, not the 800 ms of the backoff


# ---------------------------------------------------------------- keepalive and idle


def test_keepalive_probes_an_idle_peer_and_gives_up_when_it_vanishes() -> None:
    """SO_KEEPALIVE with TCP_KEEPIDLE 1 s, TCP_KEEPINTVL 1 s, TCP_KEEPCNT 3: the first probe
    after 1 s of silence (<SEQ=SND.UNA-1><ACK=RCV.NXT>, RFC 1122 4.2.3.6), answered ones keep
    the connection, and 3 unanswered ones reset it (ETIMEDOUT) after 1 + 3 s."""
    with Rig() as rig:
        s, c = stack_client(rig, SO_KEEPALIVE=1, TCP_KEEPIDLE=1, TCP_KEEPINTVL=1, TCP_KEEPCNT=3)
        assert s.getsockopt(m.SOL_SOCKET, m.SO_KEEPALIVE) == 1
        assert s.getsockopt(m.IPPROTO_TCP, m.TCP_KEEPIDLE) == 1
        t0 = rig.now_ms
        before = rig.stats()
        for k in range(2):  # idle, the peer answers: probes go out, the connection stays up
            rig.advance(999)
            c.expect_none()
            rig.advance(1)
            probe = c.expect(flags=ACK, seq=c.rcv_nxt - 1, ack=c.snd_nxt, payload=b"")
            assert probe.at_ms == t0 + 1000 * (k + 1)
            c.send(ACK)  # the answer
        assert delta(rig.stats(), before, "keepalive_probes") == 2
        assert s.tcp_info()["state"] == "ESTABLISHED"
        assert s.getsockopt(m.SOL_SOCKET, m.SO_ERROR) == 0
        with pytest.raises(BlockingIOError):
            s.recv(10)  # probes carry nothing the application sees
        # the peer vanishes: 3 probes 1 s apart, then the reset 1 s after the last
        t1 = rig.now_ms
        for k in range(3):
            rig.advance(1000)
            c.expect(flags=ACK, seq=c.rcv_nxt - 1, at_ms=t1 + 1000 * (k + 1))
        assert s.getsockopt(m.SOL_SOCKET, m.SO_ERROR) == 0
        rig.advance(1000)
        c.expect(flags=RST | ACK, at_ms=t1 + 4000)
        assert s.getsockopt(m.SOL_SOCKET, m.SO_ERROR) == errno.ETIMEDOUT
        with pytest.raises(TimeoutError):
            s.recv(10)
        st = rig.stats()
        assert delta(st, before, "keepalive_probes") == 5
        assert delta(st, before, "conn_timeouts") == 1


def test_idle_timeout_resets_idle_connections_only() -> None:
    """idle_timeout_ms: a connection with no segment in either direction for that long is
    reset (the app sees an error); one with traffic every 100 ms is not."""
    with Rig(idle_timeout_ms=500) as rig:
        rig.app.serve(SINK, "sink")
        idle = rig.conn(SINK)
        idle.handshake()
        busy = rig.conn(SINK)
        busy.handshake()
        t0 = rig.now_ms
        for k in range(16):  # 1.6 s of traffic on busy, none on idle
            rig.advance(100)
            busy.send_data(b"k")
            busy.expect(flags=ACK, ack=busy.snd_nxt)
            if k == 4:  # 500 ms in: idle's timer fired exactly at its timeout
                rst = idle.expect(flags=RST | ACK, seq=idle.rcv_nxt)
                assert rst.at_ms == t0 + 500
        idle.expect_none()
        st = rig.stats()
        assert st["idle_timeouts"] == 1
        assert st["state_established"] == 1
        idle_sock, busy_sock = rig.app.accepted
        assert bytes(rig.app.received[busy_sock.fd]) == b"k" * 16
        assert busy_sock.tcp_info()["state"] == "ESTABLISHED"


# ---------------------------------------------------------------- delayed ACKs and Nagle


def test_delayed_acks_ride_on_responses_or_come_after_40_ms() -> None:
    """RFC 1122 4.2.3.2 / RFC 9293 3.8.6.3: past the quick ACKs a connection starts with,
    a request's ACK rides on the response; data with nothing to answer is ACKed
    DELACK_MS later; without delayed ACKs every segment is ACKed at once."""
    for delayed in (True, False):
        with Rig(delayed_ack=delayed) as rig:
            rig.app.serve(ECHO, "echo")
            rig.app.serve(SINK, "sink")
            c = rig.conn(ECHO)
            c.handshake()
            pure_acks = 0
            for i in range(40):  # more than the 16 quick ACKs
                req = b"q%02d\n" % i
                c.send_data(req)
                segs = c.pending()
                data = [s for s in segs if s.payload]
                assert [s.payload for s in data] == [req], segs
                assert all(s.ack == c.snd_nxt for s in segs)
                pure_acks += len(segs) - len(data)
                c.take(data[0])
            if delayed:
                assert pure_acks <= 16, pure_acks  # the quick ACKs at the start only
            else:
                assert pure_acks == 40, pure_acks
            sink = rig.conn(SINK)
            sink.handshake()
            for _ in range(20):
                sink.send_data(b"d" * 10)
                rig.advance(100)
                sink.pending()
            sink.send_data(b"last")
            t = rig.now_ms
            if delayed:
                sink.expect_none()
                rig.advance(DELACK_MS - 1)
                sink.expect_none()
                rig.advance(1)
                sink.expect(flags=ACK, ack=sink.snd_nxt, at_ms=t + DELACK_MS)
            else:
                sink.expect(flags=ACK, ack=sink.snd_nxt, at_ms=t)
            assert (rig.stats()["delayed_acks"] > 0) == delayed


def nagle_segments(nodelay: bool, count: int = 200) -> tuple[int, bytes]:
    """``count`` one-byte sends 1 ms apart over a 5 ms link, the peer ACKing what it gets;
    returns (data segments the stack sent, bytes the peer got)."""
    with Rig(faults=m.Faults(delay_us=5000)) as rig:
        s, c = stack_client(rig, TCP_NODELAY=1 if nodelay else 0)
        assert s.getsockopt(m.IPPROTO_TCP, m.TCP_NODELAY) == (1 if nodelay else 0)
        segs = 0
        for i in range(count):
            assert s.send(bytes([i])) == 1
            rig.advance(1)
            for seg in c.pending():
                segs += bool(seg.payload)
                c.take(seg)
        for _ in range(10):  # the tail, and the last ACKs across the link
            rig.advance(10)
            for seg in c.pending():
                segs += bool(seg.payload)
                c.take(seg)
        assert s.tcp_info()["snd_una"] == s.tcp_info()["snd_nxt"]
        return segs, bytes(c.received)


def test_nagle_coalesces_small_writes_and_nodelay_does_not() -> None:
    count = 200
    nagle_segs, nagle_data = nagle_segments(nodelay=False, count=count)
    fast_segs, fast_data = nagle_segments(nodelay=True, count=count)
    assert nagle_data == fast_data == bytes(range(count))
    assert fast_segs == count, fast_segs
    # one small segment in flight per round trip (10 ms): about count / 10 of them
    assert nagle_segs <= count // 8, nagle_segs


def test_nagle_sends_a_full_segment_and_its_tail_without_waiting_for_an_ack() -> None:
    """Minshall's Nagle (as Linux): only an unacknowledged small segment holds the next
    small one. A response of one full segment plus a tail goes out at once; a plain Nagle
    would hold the tail until the first segment's ACK."""
    with Rig() as rig:
        s, c = stack_client(rig)
        full = s.tcp_info()["mss"] - (12 if c.timestamps else 0)  # a full segment's payload
        response = bytes(random.Random(2).getrandbits(8) for _ in range(2000))
        assert s.send(response) == len(response)
        rig.settle()
        segs = c.pending()  # no ACK from the peer
        assert [len(x.payload) for x in segs] == [full, len(response) - full], segs
        assert segs[0].at_ns == segs[1].at_ns
        assert b"".join(x.payload for x in segs) == response


# ---------------------------------------------------------------- the state machine


def test_handshake_negotiates_options_only_when_the_syn_offers_them(rig: Rig) -> None:
    """RFC 9293 3.7.1, RFC 7323 1.3/3.2, RFC 2018: the SYN-ACK carries MSS always, and
    window scale, timestamps (echoing our TSval) and SACK-permitted only when the SYN did."""
    c = rig.conn(ECHO)
    c.syn(wscale=7)
    full = c.expect(flags=SYN | ACK, ack=c.iss + 1)
    assert full.mss == 1460 and full.wscale is not None and full.sack_ok
    assert full.ts is not None and full.ts[1] == c.tsval()  # TSecr = our TSval
    bare = rig.conn(ECHO, timestamps=False)
    bare.syn(sack_ok=False)
    seg = bare.expect(flags=SYN | ACK, ack=bare.iss + 1)
    assert seg.mss == 1460
    assert seg.wscale is None and seg.ts is None and not seg.sack_ok, seg


def test_the_peers_mss_bounds_the_segments(rig: Rig) -> None:
    """RFC 9293 3.7.1: segments never exceed the MSS the peer announced (536 here)."""
    c = rig.conn(ECHO, mss=536, timestamps=False)
    c.handshake()
    data = bytes(range(256)) * 5  # 1280 bytes
    c.send_data(data)
    segs = c.pending()
    assert [len(s.payload) for s in segs if s.payload] == [536, 536, 208], segs
    for s in segs:
        c.take(s, ack=False)
    assert bytes(c.received) == data


def test_window_scaling_applies_to_the_peers_window(rig: Rig) -> None:
    """RFC 7323 2.3: after a handshake with wscale 7 on both sides, a window field of 4
    means 512 bytes: the stack sends exactly that much and waits."""
    c = rig.conn(SINK)
    rig.app.serve(SINK, "sink")
    c.syn(wscale=7)
    synack = c.expect(flags=SYN | ACK)
    assert synack.wscale is not None
    c.rcv_nxt = (synack.seq + 1) & 0xFFFFFFFF
    c.send(ACK, window=4)  # 4 << 7 = 512 bytes
    (s,) = rig.app.accepted
    assert s.tcp_info()["snd_wnd"] == 512
    assert s.send(b"w" * 2000) == 2000
    segs = c.pending()
    assert sum(len(x.payload) for x in segs) == 512, segs


def test_simultaneous_open(rig: Rig) -> None:
    """RFC 9293 3.5 figure 8: the stack's SYN crosses the peer's SYN; it answers with a
    SYN-ACK (SYN-RECEIVED). The peer's SYN-ACK repeats a SYN already taken, so by the
    segment-arrival rules (3.10.7.4, first check) it is not acceptable and gets an ACK; the
    peer's ACK then establishes, with no RST."""
    s = rig.ctx.socket()
    assert s.connect_ex((rig.peer_ip, 80)) == errno.EINPROGRESS
    rig.settle()
    syn = rig.inbox.pop()
    assert syn.has(SYN) and not syn.has(ACK)
    c = PeerConn(rig, rig.peer_ip, 80, syn.sport, iss=7000, timestamps=False)
    c.send(SYN, seq=c.iss, mss=1460)  # our own SYN, not an answer
    c.snd_nxt = c.iss + 1
    synack = c.expect(flags=SYN | ACK, seq=syn.seq, ack=c.iss + 1)
    assert s.tcp_info()["state"] == "SYN_RECEIVED"
    c.rcv_nxt = (synack.seq + 1) & 0xFFFFFFFF
    c.send(SYN | ACK, seq=c.iss, mss=1460)
    c.expect(flags=ACK, seq=c.rcv_nxt, ack=c.snd_nxt)
    assert s.tcp_info()["state"] == "SYN_RECEIVED"
    c.send(ACK)
    assert s.tcp_info()["state"] == "ESTABLISHED"
    s.send(b"ok")
    c.expect(flags=ACK, seq=c.rcv_nxt, payload=b"ok")
    assert rig.stats()["rst_tx"] == 0


def test_active_close_goes_through_fin_wait_and_time_wait() -> None:
    """RFC 9293 3.6: the stack closes first: FIN-WAIT-1, FIN-WAIT-2 on our ACK, TIME-WAIT on
    our FIN (ACKed), and the TCB is free exactly time_wait_ms later."""
    with Rig(time_wait_ms=1000) as rig:
        s, c = stack_client(rig)
        s.close()
        fin = c.expect(flags=FIN | ACK, seq=c.rcv_nxt)
        st = rig.stats()
        assert st["state_fin_wait_1"] == 1
        c.take(fin, ack=False)
        c.send(ACK)
        assert rig.stats()["state_fin_wait_2"] == 1
        c.send_fin()
        c.expect(flags=ACK, ack=c.snd_nxt)
        t = rig.now_ms
        assert rig.stats()["state_time_wait"] == 1
        rig.advance(999)
        assert rig.stats()["state_time_wait"] == 1
        rig.advance(1)
        assert pools_back(rig.stats()), rig.now_ms - t


def test_passive_close_goes_through_close_wait_and_last_ack(rig: Rig) -> None:
    """RFC 9293 3.6: the peer closes first: the stack ACKs the FIN, the app reads EOF and
    closes (CLOSE-WAIT), its FIN goes out (LAST-ACK), and our ACK frees the TCB."""
    c = established(rig)
    c.send_fin()
    segs = c.pending()  # the FIN's ACK, and the app's FIN at once (it closes on EOF)
    assert segs[-1].has(FIN | ACK) and segs[-1].ack == c.snd_nxt, segs
    for seg in segs:
        c.take(seg, ack=False)
    assert rig.stats()["state_last_ack"] == 1
    c.send(ACK)
    assert pools_back(rig.stats())


def test_simultaneous_close_ends_in_time_wait() -> None:
    """RFC 9293 3.6 figure 13: both FINs cross: CLOSING, then TIME-WAIT on the ACK."""
    with Rig(time_wait_ms=500) as rig:
        s, c = stack_client(rig)
        s.close()
        fin = c.expect(flags=FIN | ACK)
        c.send(FIN | ACK)  # ours, not acknowledging the stack's FIN yet
        c.snd_nxt = (c.snd_nxt + 1) & 0xFFFFFFFF
        c.expect(flags=ACK, ack=c.snd_nxt)
        assert rig.stats()["state_closing"] == 1
        c.send(ACK, ack=fin.seq_end)
        assert rig.stats()["state_time_wait"] == 1
        rig.advance(500)
        assert pools_back(rig.stats())


def test_abort_sends_rst_and_frees_at_once() -> None:
    """SO_LINGER 0 semantics (mtcp_abort): <SEQ=SND.NXT><CTL=RST>, and the TCB is free."""
    with Rig() as rig:
        s, c = stack_client(rig)
        s.send(b"unsent?")
        c.take(c.expect(payload=b"unsent?"), ack=False)
        s.abort()
        c.expect(flags=RST | ACK, seq=c.rcv_nxt)
        st = rig.stats()
        assert st["rst_tx"] == 1
        assert pools_back(st)


def test_half_close_keeps_the_other_direction() -> None:
    """RFC 9293 3.6: after the peer's FIN (CLOSE-WAIT) the app reads EOF and may still send;
    its own close then sends the FIN (LAST-ACK)."""
    with Rig() as rig:
        s, c = stack_client(rig)
        c.send_fin()
        c.expect(flags=ACK, ack=c.snd_nxt)
        assert s.tcp_info()["state"] == "CLOSE_WAIT"
        assert s.recv(100) == b""
        assert s.send(b"still talking") == 13
        assert c.read(13) == b"still talking"
        s.close()
        fin = c.expect(flags=FIN | ACK, seq=c.rcv_nxt)
        assert rig.stats()["state_last_ack"] == 1
        c.take(fin)
        assert pools_back(rig.stats())


def test_rst_answering_the_syn_refuses_the_connection() -> None:
    """RFC 9293 3.10.7.3: a RST acknowledging our SYN in SYN-SENT: connection refused."""
    with Rig() as rig:
        s = rig.ctx.socket()
        ep = rig.ctx.epoll()
        ep.register(s, m.EPOLLOUT | m.EPOLLIN)
        assert s.connect_ex((rig.peer_ip, 80)) == errno.EINPROGRESS
        rig.settle()
        syn = rig.inbox.pop()
        c = PeerConn(rig, rig.peer_ip, 80, syn.sport, timestamps=False)
        c.send(RST | ACK, seq=0, ack=syn.seq + 1)
        evs = dict(ep.poll(0))
        assert evs[s] & m.EPOLLERR
        assert s.getsockopt(m.SOL_SOCKET, m.SO_ERROR) == errno.ECONNREFUSED
        c.expect_none()
        assert rig.stats()["state_syn_sent"] == 0
        s.close()
        rig.settle()
        assert pools_back(rig.stats())


def test_a_syn_retransmits_until_the_connect_fails() -> None:
    """RFC 6298 5.5 on the SYN: 1 s, then doubling; after TCP_SYN_RETRIES the connect fails
    with ETIMEDOUT (at the expiry after the last, whose backoff is capped at the 60 s
    maximum RTO, RFC 6298 2.5) and no RST goes out."""
    with Rig() as rig:
        s = rig.ctx.socket()
        assert s.connect_ex((rig.peer_ip, 80)) == errno.EINPROGRESS
        rig.settle()
        syn = rig.inbox.pop()
        t0 = syn.at_ms
        times = []
        while s.getsockopt(m.SOL_SOCKET, m.SO_ERROR) == 0 and rig.now_ms - t0 < 300_000:
            rig.advance(100)
            for seg in rig.segments():
                assert seg.has(SYN) and seg.seq == syn.seq, seg
                times.append(seg.at_ms - t0)
        assert times == [1000 * (2 ** (k + 1) - 1) for k in range(6)], times
        assert s.getsockopt(m.SOL_SOCKET, m.SO_ERROR) == errno.ETIMEDOUT
        assert 123_000 <= rig.now_ms - t0 < 123_100  # 63 s of retries, then 60 s
        assert rig.stats()["rst_tx"] == 0


# ---------------------------------------------------------------- loss and reordering


def test_out_of_order_data_is_sacked_and_delivered_in_order(rig: Rig) -> None:
    """RFC 9293 3.10.7.4, RFC 2018: a segment beyond a hole gets an immediate duplicate ACK
    with a SACK block; the hole's data then completes both, in order, for the app."""
    rig.app.serve(SINK, "sink")
    c = rig.conn(SINK)
    c.handshake()
    base = c.snd_nxt
    c.send(ACK | PSH, b"B" * 100, seq=base + 100)
    dup = c.expect(flags=ACK, ack=base)
    assert dup.sack == [((base + 100) & 0xFFFFFFFF, (base + 200) & 0xFFFFFFFF)], dup
    (s,) = rig.app.accepted
    assert rig.app.received[s.fd] == b""
    c.send(ACK | PSH, b"A" * 100, seq=base)
    c.snd_nxt = (base + 200) & 0xFFFFFFFF
    c.expect(flags=ACK, ack=c.snd_nxt)
    assert rig.app.received[s.fd] == b"A" * 100 + b"B" * 100


def test_three_duplicate_acks_retransmit_before_the_timer() -> None:
    """RFC 8985 (RACK) with RFC 6675's DupThresh: with the first of several segments lost,
    SACKs of later ones mark it lost once an RTT and the reordering window (min RTT / 4:
    here 1 / 4 ms) have passed since it was sent, or at once when three segments above it
    are SACKed; long before its RTO (and before the tail loss probe, 2 SRTT + 2 ms)."""
    with Rig() as rig:
        s, c = stack_client(rig)
        full = s.tcp_info()["mss"] - 12
        data = bytes(random.Random(4).getrandbits(8) for _ in range(6 * full))
        assert s.send(data) == len(data)
        segs = [x for x in c.pending() if x.payload]
        assert len(segs) == 6
        lost, rest = segs[0], segs[1:]
        before = rig.stats()
        rig.advance(1)  # a 1 ms round trip: the ACKs come back now
        t = rig.now_ms
        for seg in rest[:2]:  # two duplicate ACKs, SACKing what came: not yet
            c.send(ACK, ack=lost.seq, sack=[(rest[0].seq, seg.seq_end)])
            c.expect_none()
        c.send(ACK, ack=lost.seq, sack=[(rest[0].seq, rest[2].seq_end)])  # the third
        again = c.expect(seq=lost.seq, payload=lost.payload)
        assert again.at_ms == t  # no timer: the third SACKed segment triggered it
        st = rig.stats()
        assert delta(st, before, "retransmits") == 1
        assert delta(st, before, "rto_timeouts") == 0
        c.send(ACK, ack=rest[-1].seq_end)
        assert s.tcp_info()["snd_una"] == s.tcp_info()["snd_nxt"]


def test_a_zero_window_is_probed_with_backoff_and_reopens() -> None:
    """RFC 9293 3.8.6.1: a peer that closes its window gets probes at backed-off intervals
    (the RTO, doubling); when it opens again, the data flows."""
    with Rig() as rig:
        s, c = stack_client(rig)
        c.send(ACK, window=0)
        assert s.send(b"z" * 1000) == 1000
        c.expect_none()  # nothing goes into a closed window
        rto = s.tcp_info()["rto_ms"]
        t0 = rig.now_ms
        times = []
        for _ in range(4):
            rig.advance(rto * 2 ** len(times))
            probe = c.expect(flags=ACK)
            assert len(probe.payload) <= 1, probe
            times.append(probe.at_ms - t0)
            c.send(ACK, window=0)  # still closed
        assert times == [rto * (2 ** (k + 1) - 1) for k in range(4)], times
        assert rig.stats()["zero_window_probes"] == 4
        c.send(ACK, window=65535)
        for seg in sorted(c.pending(), key=lambda x: x.seq):
            c.take(seg, ack=False)
        assert bytes(c.received) == b"z" * 1000
        assert s.tcp_info()["state"] == "ESTABLISHED"


# ---------------------------------------------------------------- buffer sizes


def test_so_rcvbuf_set_before_connect_bounds_the_window_and_the_buffer() -> None:
    small = 8192
    with Rig() as rig:
        s = rig.ctx.socket()
        s.setsockopt(m.SOL_SOCKET, m.SO_RCVBUF, small)
        with pytest.raises(OSError) as e:
            s.setsockopt(m.SOL_SOCKET, m.SO_RCVBUF, 100)
        assert e.value.errno == errno.EINVAL
        assert s.getsockopt(m.SOL_SOCKET, m.SO_RCVBUF) == small
        s2, c = stack_client(rig)  # a default one for comparison
        assert s2.tcp_info()["rcv_wnd"] > small
        s2.abort()
        rig.settle()
        assert s.connect_ex((rig.peer_ip, 81)) == errno.EINPROGRESS
        rig.settle()
        syn = rig.inbox.pop()
        assert syn.window <= small
        c = PeerConn(rig, rig.peer_ip, 81, syn.sport, iss=9000, timestamps=False)
        c.rcv_nxt = syn.seq + 1
        c.send(SYN | ACK, seq=c.iss, mss=1460)
        c.snd_nxt = c.iss + 1
        c.pending()
        sent = 0
        for _ in range(20):  # the app does not read: the window closes at small bytes
            c.send_data(b"r" * 1000)
            ack = c.pending()[-1]
            sent = (ack.ack - c.iss - 1) & 0xFFFFFFFF
            c.snd_nxt = ack.ack
            if ack.window == 0:
                break
        assert ack.window == 0
        assert sent == small, sent
        assert s.tcp_info()["rcvbuf_used"] == small


def test_so_sndbuf_set_before_connect_bounds_what_the_app_can_queue() -> None:
    small = 8192
    with Rig() as rig:
        s, c = stack_client(rig, SO_SNDBUF=small)
        assert s.getsockopt(m.SOL_SOCKET, m.SO_SNDBUF) == small
        with pytest.raises(OSError) as e:
            s.setsockopt(m.SOL_SOCKET, m.SO_SNDBUF, 100)
        assert e.value.errno == errno.EINVAL
        taken = 0
        for _ in range(10):  # the peer ACKs nothing: only the send buffer holds data
            try:
                taken += s.send(b"z" * 4096)
            except BlockingIOError:
                break
            rig.settle()
        assert taken == small, taken
        assert s.tcp_info()["sndbuf_used"] == small


def test_accepted_connections_inherit_the_listeners_buffer_sizes() -> None:
    small = 8192
    with Rig() as rig:
        ls = rig.ctx.socket()
        ls.bind(("0.0.0.0", 80))
        ls.setsockopt(m.SOL_SOCKET, m.SO_RCVBUF, small)  # before listen(), as on Linux
        ls.listen(16)
        c = rig.conn(80, timestamps=False)
        c.syn()
        synack = c.expect(flags=SYN | ACK)
        assert synack.window <= small
        c.rcv_nxt = synack.seq + 1
        c.send(ACK)
        s, _ = ls.accept()
        assert s.getsockopt(m.SOL_SOCKET, m.SO_RCVBUF) == small
        assert s.tcp_info()["rcv_wnd"] <= small
        for _ in range(20):  # nobody reads: the window closes at small bytes
            c.send_data(b"i" * 1000)
            last = c.pending()[-1]
            c.snd_nxt = last.ack
            if last.window == 0:
                break
        assert last.window == 0
        assert s.tcp_info()["rcvbuf_used"] == small


# ---------------------------------------------------------------- two stepped stacks


def duo_open(duo: Duo, limit_ms: float = 10_000) -> tuple[m.Socket, m.Socket, float]:
    """The client connects to the server's port 80; returns (client socket, accepted
    socket, the stack time in ms at which the server accepted)."""
    ls = duo.server.socket()
    ls.bind(("0.0.0.0", 80))
    ls.listen(16)
    c = duo.client.socket()
    assert c.connect_ex((duo.server_ip, 80)) == errno.EINPROGRESS
    got: list[m.Socket] = []
    duo.run_until(lambda: bool(got.extend(ls.accept_many()) or got), limit_ms=limit_ms)
    return c, got[0], duo.now_ms


def echo_through(duo: Duo, payload: bytes, limit_ms: float) -> bytes:
    """The client sends ``payload`` to an echo server on the other stack and reads it back;
    both apps run between the instants of the shared clock."""
    c, s0, _ = duo_open(duo, limit_ms)
    served = [s0]
    pending = bytearray()
    got = bytearray()
    sent = 0

    def apps() -> None:
        nonlocal sent
        for s in served:  # the echo server
            try:
                pending.extend(s.recv(65536))
            except BlockingIOError:
                pass
            if pending:
                try:
                    del pending[: s.send(bytes(pending))]
                except BlockingIOError:
                    pass
        if sent < len(payload):  # the client
            try:
                sent += c.send(payload[sent : sent + 65536])
            except BlockingIOError:
                pass
        try:
            got.extend(c.recv(65536))
        except BlockingIOError:
            pass

    duo.run_until(lambda: len(got) >= len(payload), limit_ms=limit_ms, on_round=apps)
    c.close()
    for s in served:
        s.close()
    duo.advance(5000)  # closes, TIME-WAIT
    return bytes(got)


def lossy_run(seed: int) -> tuple[dict[str, int], dict[str, int], float]:
    faults = m.Faults(seed=seed, loss=0.10, reorder=0.02, duplicate=0.02, delay_us=1000)
    payload = random.Random(seed).randbytes(1 << 20)
    with Duo(faults=faults, time_wait_ms=100) as duo:
        assert echo_through(duo, payload, limit_ms=600_000) == payload
        return duo.client.stats(), duo.server.stats(), duo.now_ms


def test_two_stepped_stacks_recover_from_loss_the_same_way_every_run() -> None:
    """Two stacks on one stepped clock over a link with 10 % loss, 2 % reordering and
    duplication, 1 ms each way: 1 MiB echoed byte-exact, the loss repaired by fast
    retransmit and SACK recovery rather than timeouts, pools back; and a second run of the
    same seed is the same run to the counter (another seed is another run)."""
    cst, sst, took_ms = lossy_run(seed=11)
    for who, st in (("client", cst), ("server", sst)):
        assert st["fast_retransmits"] + st["sack_retransmits"] > 0, who
        assert st["recoveries"] > 0, who
        assert st["rto_timeouts"] * 5 <= st["recoveries"], (who, st["rto_timeouts"])
        assert pools_back(st), who
    assert lossy_run(seed=11) == (cst, sst, took_ms)
    assert lossy_run(seed=12) != (cst, sst, took_ms)


def test_sequence_numbers_wrap_around_on_both_sides() -> None:
    """Both ISNs 3000 bytes below 2^32: 100 kB cross the wrap in both directions."""
    payload = random.Random(5).randbytes(100_000)
    with Duo(fixed_isn=(1 << 32) - 3000, time_wait_ms=100) as duo:
        assert echo_through(duo, payload, limit_ms=10_000) == payload
        assert pools_back(duo.client.stats()) and pools_back(duo.server.stats())


# ---------------------------------------------------------------- targeted drops, two stacks


def duo_read(duo: Duo, s: m.Socket, n: int, limit_ms: float = 10_000) -> bytes:
    out = bytearray()
    eof = False

    def more() -> bool:
        nonlocal eof
        while len(out) < n and not eof:
            try:
                d = s.recv(65536)
            except BlockingIOError:
                return False
            eof = not d
            out.extend(d)
        return len(out) >= n or eof

    duo.run_until(more, limit_ms=limit_ms)
    return bytes(out)


def test_dropped_syn_is_retransmitted_after_the_initial_rto() -> None:
    """RFC 6298 2.1: the SYN's timer is 1 s; the dropped SYN goes again exactly then."""
    with Duo(time_wait_ms=100) as duo:
        duo.link.drop_next(0, SYN | ACK, SYN)
        t0 = duo.now_ms
        c, s, at = duo_open(duo)
        assert at - t0 == 1000
        assert duo.link.counters(0)["targeted"] == 1
        cs = duo.client.stats()
        assert cs["rto_timeouts"] == 1 and cs["retransmits"] == 1
        c.send(b"ping")
        assert duo_read(duo, s, 4) == b"ping"
        c.close()
        s.close()
        duo.advance(1000)
        assert pools_back(duo.client.stats()) and pools_back(duo.server.stats())


def test_dropped_syn_ack_is_recovered() -> None:
    """The SYN-ACK is lost: a handshake timer (the client's SYN or the server's SYN-ACK,
    both 1 s) repairs it, 1 s after the start."""
    with Duo(time_wait_ms=100) as duo:
        duo.link.drop_next(1, SYN | ACK, SYN | ACK)
        t0 = duo.now_ms
        c, s, at = duo_open(duo)
        assert at - t0 == 1000
        assert duo.link.counters(1)["targeted"] == 1
        cs, ss = duo.client.stats(), duo.server.stats()
        assert cs["rto_timeouts"] + ss["rto_timeouts"] >= 1
        assert cs["retransmits"] + ss["retransmits"] >= 1
        s.send(b"pong")
        assert duo_read(duo, c, 4) == b"pong"


def test_dropped_final_ack_of_handshake_is_recovered() -> None:
    """The client is ESTABLISHED on the SYN-ACK and stays silent; its ACK is lost, so only
    the server's SYN-ACK retransmission (1 s later), answered by a new ACK, completes the
    server's side."""
    with Duo(time_wait_ms=100) as duo:
        duo.link.drop_next(0, SYN | ACK | FIN | RST, ACK, max_payload=0)
        t0 = duo.now_ms
        c, s, at = duo_open(duo)
        assert at - t0 == 1000
        assert c.tcp_info()["state"] == "ESTABLISHED"
        assert duo.link.counters(0)["targeted"] == 1
        ss = duo.server.stats()
        assert ss["rto_timeouts"] == 1 and ss["retransmits"] == 1
        c.send(b"hello")
        assert duo_read(duo, s, 5) == b"hello"


@pytest.mark.parametrize("closer", [0, 1])
def test_dropped_fin_is_retransmitted(closer: int) -> None:
    """The FIN of the side that closes first is dropped; a loss probe or the retransmission
    timer sends it again, and both sides close cleanly (no RST), every pool entry back."""
    with Duo(time_wait_ms=100) as duo:
        c, s = duo_open(duo)[:2]
        first, second = (c, s) if closer == 0 else (s, c)
        first_ctx = duo.client if closer == 0 else duo.server
        first.send(b"last words")
        assert duo_read(duo, second, 10) == b"last words"  # then the FIN is a bare one
        duo.advance(100)  # the data acknowledged
        before = first_ctx.stats()
        duo.link.drop_next(closer, FIN, FIN)
        first.close()
        assert duo_read(duo, second, 1) == b""  # EOF, after the retransmission
        assert duo.link.counters(closer)["targeted"] == 1
        after = first_ctx.stats()
        assert after["retransmits"] == before["retransmits"] + 1
        fired = ("rto_timeouts", "loss_probes")
        assert sum(after[k] - before[k] for k in fired) == 1, {k: after[k] for k in fired}
        second.close()
        duo.advance(1000)
        cs, ss = duo.client.stats(), duo.server.stats()
        assert pools_back(cs) and pools_back(ss)
        assert cs["rst_tx"] == ss["rst_tx"] == 0


def test_time_wait_holds_no_buffer_memory_once_the_app_closed() -> None:
    """A TIME-WAIT connection the app has closed will never send or read again: its rings
    stop counting against the socket-buffer budget. Without that, a server that closes first
    would charge every TIME-WAIT its full buffers, reach the budget's pressure sizes after a
    few short connections and open later connections (a large download) with 16 KiB rings."""
    budget = 8 << 20  # room for six connections at 1 MiB + 256 KiB
    with Rig(time_wait_ms=60_000, sndbuf=1 << 20, rcvbuf=256 << 10, mem_budget=budget) as rig:
        rig.app.serve(ONCE, "once")
        for i in range(40):
            server_closes_first(rig, b"y%d\n" % i)
            rig.advance(1)
        st = rig.stats()
        assert st["state_time_wait"] == 40  # all still there: nothing needed their TCBs
        assert st["buf_mem_used"] == 0
        assert st["buf_pressure_opens"] == 0
        assert st["time_wait_reclaimed"] == 0
        assert st["drop_tcp_no_memory"] == 0
