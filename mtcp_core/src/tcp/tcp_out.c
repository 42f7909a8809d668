/* TCP output: the three TX lists (control, ACK, data) drained in priority order
 * each round (DESIGN.md "The mTCP thread loop"), segment building, retransmission. */
#include <errno.h>
#include <string.h>

#include "../net/net.h"
#include "tcp.h"

/* ---------------------------------------------------------------- lists */

void tcp_schedule(struct tcp_layer *ctx, struct tcb *t, uint8_t pend)
{
    t->pend |= pend;
    uint8_t want;
    if (!ctx->priority)
        want = TCB_L_DATA; /* one FIFO list: everything in the order it was scheduled */
    else if (pend & (TCB_P_SYN | TCB_P_RST | TCB_P_FIN))
        want = TCB_L_CTRL;
    else if (pend & TCB_P_DATA)
        want = TCB_L_DATA;
    else
        want = TCB_L_ACK;
    if (t->lists & want)
        return;
    t->lists |= want;
    if (want == TCB_L_CTRL) {
        tcb_list_append(&ctx->ctrl, t, TCB_CTRL);
    } else if (want == TCB_L_ACK) {
        tcb_list_append(&ctx->ack, t, TCB_ACK);
    } else {
        tcb_list_append(&ctx->data, t, TCB_DATA);
    }
}

/* ---------------------------------------------------------------- segments */

uint32_t tcp_rcv_room(struct tcb *t)
{
    uint32_t space = mtcp_bytering_free(&t->rcv);
    uint32_t used = mtcp_bytering_used(&t->rcv);
    uint32_t tuned = t->rcv_space > used ? t->rcv_space - used : 0;
    return tuned < space ? tuned : space;
}

uint16_t tcp_rcv_window(struct tcb *t, uint32_t *right_edge)
{
    uint32_t space = tcp_rcv_room(t);
    /* never shrink the window (RFC 9293 3.8.6): keep the advertised right edge */
    uint32_t edge = t->rcv_nxt + space;
    if (SEQ_LT(edge, t->rcv_adv))
        edge = t->rcv_adv;
    *right_edge = edge;
    uint32_t w = (edge - t->rcv_nxt) >> t->rcv_wscale;
    return (uint16_t)(w > 65535 ? 65535 : w);
}

uint32_t tcp_seg_max(const struct tcb *t)
{
    /* the MSS counts payload only; options come out of the same frame (RFC 9293 3.7.1),
     * and timestamps ride on every segment once negotiated */
    return t->mss - (t->ts_ok ? 12u : 0u);
}

/* RFC 2018 4: the first block covers the most recently received segment; the others
 * repeat the blocks of the previous ACK in their order (each grown to the island that
 * holds it now), so that a block is reported in at least three successive ACKs; then
 * any island not reported yet. Only as many as the option space holds (3 beside
 * timestamps, 4 without) count as sent and are remembered for the next ACK. */
static void sack_blocks(struct tcb *t, struct wire_tcp_opts *o)
{
    uint8_t fit = o->has_ts ? 3 : 4, n = 0;
    uint8_t used[TCP_OOO_RANGES] = {0};
    uint8_t first = t->ooo_last < t->nooo ? t->ooo_last : 0;
    uint8_t pick[4];
    pick[n++] = first;
    used[first] = 1;
    for (uint8_t j = 0; j < t->nsack_prev && n < fit; j++) {
        const struct tcp_range *h = &t->sack_prev[j];
        for (uint8_t i = 0; i < t->nooo; i++)
            if (!used[i] && SEQ_LT(t->ooo[i].start, h->end) && SEQ_LT(h->start, t->ooo[i].end)) {
                pick[n++] = i;
                used[i] = 1;
                break;
            }
    }
    for (uint8_t i = t->nooo; i-- > 0 && n < fit;) /* the newest data first */
        if (!used[i]) {
            pick[n++] = i;
            used[i] = 1;
        }
    for (uint8_t k = 0; k < n; k++) {
        o->sack[k].left = t->ooo[pick[k]].start;
        o->sack[k].right = t->ooo[pick[k]].end;
        t->sack_prev[k] = t->ooo[pick[k]];
    }
    o->nsack = n;
    t->nsack_prev = n;
}

/* RFC 2883: a duplicate that arrived is reported in the first block of the next ACK, the
 * SACK blocks after it (the emitter drops what does not fit). */
static void dsack_first(struct tcp_layer *ctx, struct tcb *t, struct wire_tcp_opts *o)
{
    uint8_t n = o->nsack < WIRE_TCP_MAX_SACK ? o->nsack : WIRE_TCP_MAX_SACK - 1;
    memmove(&o->sack[1], &o->sack[0], (size_t)n * sizeof(o->sack[0]));
    o->sack[0].left = t->dsack_start;
    o->sack[0].right = t->dsack_end;
    o->nsack = (uint8_t)(n + 1);
    t->dsack_pend = 0;
    STAT_INC(&ctx->net.stats, dsacks_tx);
}

uint32_t tcp_tso_max(const struct tcp_layer *ctx, const struct tcb *t)
{
    uint32_t seg_max = tcp_seg_max(t);
    uint32_t dev_max = ctx->net.dev->tso_max;
    /* a shaped link models a slow NIC: its token bucket lets two MTU frames through
     * at once, where a TSO frame would be a burst of up to 44 */
    if (ctx->net.tx_rate_Bps)
        return 0;
    if (MTCP_TSO_MAX < dev_max)
        dev_max = MTCP_TSO_MAX;
    /* room for the headers at their largest (Ethernet, IPv4 and TCP with 40 bytes of
     * options), and an IPv4 total length that fits 16 bits (RFC 791) */
    uint32_t hdrs = WIRE_ETH_HLEN + WIRE_IPV4_HLEN + WIRE_TCP_HLEN + WIRE_TCP_MAX_OPTLEN;
    if (dev_max <= hdrs || seg_max == 0)
        return 0;
    uint32_t room = dev_max - hdrs;
    if (room > 0xffffu - (hdrs - WIRE_ETH_HLEN))
        room = 0xffffu - (hdrs - WIRE_ETH_HLEN);
    room -= room % seg_max; /* whole segments */
    return room >= 2u * seg_max ? room : 0;
}

/* Builds and queues one segment. payload: len bytes of the send ring starting at
 * sequence number seq. A payload larger than tcp_seg_max() (only ever asked for up
 * to tcp_tso_max()) goes out as one TSO frame that the device cuts into MSS-sized
 * segments, each with a copy of this header (the kernel's tcp_gso_segment: PSH and
 * FIN on the last one only). Returns 0, or -1 when the round's TX budget is spent. */
static int tcp_emit(struct tcp_layer *ctx, struct tcb *t, uint8_t flags, uint32_t seq,
                    uint32_t len)
{
    uint8_t *f = net_tx_alloc(&ctx->net);
    if (!f)
        return -1;
    struct wire_tcp_opts o;
    memset(&o, 0, sizeof(o));
    uint16_t win;
    uint32_t edge;
    if (flags & WIRE_TCP_SYN) {
        o.has_mss = 1;
        o.mss = MTCP_MTU - 40;
        /* SYN: offer everything (active) or echo what the peer offered (passive) */
        if (t->state == TCP_SYN_SENT || t->wscale_ok) {
            o.has_wscale = 1;
            o.wscale = t->rcv_wscale;
        }
        if (t->state == TCP_SYN_SENT || t->ts_ok) {
            o.has_ts = 1;
            o.ts_val = (uint32_t)ctx->net.now_ms + t->ts_offset;
            o.ts_ecr = t->ts_recent;
        }
        o.sack_ok = t->state == TCP_SYN_SENT ? (uint8_t)ctx->conf.sack : t->sack_ok;
        /* RFC 7323 2.2: the window in a SYN is never scaled */
        tcp_rcv_window(t, &edge);
        uint32_t w = edge - t->rcv_nxt;
        win = (uint16_t)(w > 65535 ? 65535 : w);
    } else {
        if (t->ts_ok) {
            o.has_ts = 1;
            o.ts_val = (uint32_t)ctx->net.now_ms + t->ts_offset;
            o.ts_ecr = t->ts_recent;
        }
        if ((flags & WIRE_TCP_ACK) && t->sack_ok && t->nooo)
            sack_blocks(t, &o);
        if ((flags & WIRE_TCP_ACK) && t->dsack_pend)
            dsack_first(ctx, t, &o);
        win = tcp_rcv_window(t, &edge);
    }
    uint8_t hdr[WIRE_TCP_HLEN + WIRE_TCP_MAX_OPTLEN];
    uint32_t ack = (flags & WIRE_TCP_ACK) ? t->rcv_nxt : 0;
    size_t hlen = wire_tcp_emit_hdr(hdr, t->lport, t->rport, seq, ack, flags, win, &o);
    uint32_t off = net_ipv4_headers(&ctx->net, f, t->rmac, t->raddr, WIRE_IPPROTO_TCP,
                                    (uint16_t)(hlen + len));
    memcpy(f + off, hdr, hlen);
    uint32_t idx = atomic_load_explicit(&t->snd.head, memory_order_relaxed) +
                   (seq - t->snd_head_seq);
    if (len > tcp_seg_max(t)) {
        /* TSO: the payload stays in the send ring (the ACK that could free it is
         * processed only after this round's flush). Each wire segment carries the
         * same options, so it holds the MSS less their length. The checksum field
         * gets the pseudo-header sum and the device completes it per segment
         * (CHECKSUM_PARTIAL, as the kernel's __tcp_v4_send_check prepares it). */
        uint32_t gso = t->mss - (uint32_t)(hlen - WIRE_TCP_HLEN);
        uint32_t o = idx & (t->snd.cap - 1);
        uint32_t first = t->snd.cap - o < len ? t->snd.cap - o : len;
        uint16_t ph = (uint16_t)~wire_csum_fold(
            wire_csum_pseudo(ctx->net.ip, t->raddr, WIRE_IPPROTO_TCP, (uint16_t)(hlen + len)));
        f[off + 16] = (uint8_t)(ph >> 8);
        f[off + 17] = (uint8_t)ph;
        net_tx_commit_tso(&ctx->net, off + (uint32_t)hlen, (uint16_t)off, (uint16_t)gso,
                          t->snd.buf + o, first, t->snd.buf, len - first);
        uint32_t nsegs = (len + gso - 1) / gso;
        STAT_ADD(&ctx->net.stats, tcp_segs_tx, nsegs);
        STAT_INC(&ctx->net.stats, tx_tso_frames);
    } else {
        if (len)
            mtcp_bytering_copy_out(&t->snd, idx, f + off + hlen, len);
        wire_tcp_fill_csum(f + off, hlen + len, ctx->net.ip, t->raddr);
        net_tx_commit(&ctx->net, off + (uint32_t)hlen + len);
        STAT_INC(&ctx->net.stats, tcp_segs_tx);
    }
    /* data or a FIN: the scoreboard logs it (RACK's transmit times) */
    if (!(flags & (WIRE_TCP_SYN | WIRE_TCP_RST)) && (len || (flags & WIRE_TCP_FIN)) &&
        SEQ_GEQ(seq, t->snd_una))
        tcp_sb_on_send(ctx, t, seq, len + ((flags & WIRE_TCP_FIN) ? 1u : 0u));
    if (flags & WIRE_TCP_ACK) {
        t->last_ack_sent = t->rcv_nxt;
        t->rcv_adv = edge;
        t->pend &= (uint8_t)~TCB_P_ACK;
        tcp_delack_cancel(ctx, t);
        if (win == 0 || (edge - t->rcv_nxt) < t->rcv_space / 2)
            atomic_store_explicit(&t->wnd_job_wanted, 1, memory_order_release);
    }
    return 0;
}

void tcp_send_rst_now(struct tcp_layer *ctx, struct tcb *t)
{
    if (tcp_emit(ctx, t, WIRE_TCP_RST | WIRE_TCP_ACK, t->snd_nxt, 0) == 0) {
        STAT_INC(&ctx->net.stats, rst_tx);
        STAT_INC(&ctx->net.stats, tx_control_pkts);
    }
}

void tcp_send_ack_now(struct tcp_layer *ctx, struct tcb *t)
{
    if (tcp_emit(ctx, t, WIRE_TCP_ACK, t->snd_nxt, 0) == 0)
        STAT_INC(&ctx->net.stats, tx_ack_pkts);
}

void tcp_send_rst_for(struct tcp_layer *ctx, const uint8_t dst_mac[6], const struct wire_ipv4 *ip,
                      const struct wire_tcp *seg)
{
    /* RFC 9293 3.10.7.1: if ACK is on, <SEQ=SEG.ACK><CTL=RST>, else
     * <SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK>. Never answer a RST. */
    if (seg->flags & WIRE_TCP_RST)
        return;
    uint8_t *f = net_tx_alloc(&ctx->net);
    if (!f)
        return;
    uint32_t seq = 0, ack = 0;
    uint8_t flags = WIRE_TCP_RST;
    if (seg->flags & WIRE_TCP_ACK) {
        seq = seg->ack;
    } else {
        ack = seg->seq + seg->payload_len + !!(seg->flags & WIRE_TCP_SYN) +
              !!(seg->flags & WIRE_TCP_FIN);
        flags |= WIRE_TCP_ACK;
    }
    uint32_t off = net_ipv4_headers(&ctx->net, f, dst_mac, ip->src, WIRE_IPPROTO_TCP, WIRE_TCP_HLEN);
    size_t hlen = wire_tcp_emit_hdr(f + off, seg->dport, seg->sport, seq, ack, flags, 0, NULL);
    wire_tcp_fill_csum(f + off, hlen, ctx->net.ip, ip->src);
    net_tx_commit(&ctx->net, off + (uint32_t)hlen);
    STAT_INC(&ctx->net.stats, rst_tx);
    STAT_INC(&ctx->net.stats, tx_control_pkts);
}

/* Bytes in the send ring not yet sent, counted from snd_nxt. */
static uint32_t unsent(struct tcb *t)
{
    uint32_t tail_seq = t->snd_head_seq + mtcp_bytering_used(&t->snd);
    return SEQ_GT(tail_seq, t->snd_nxt) ? tail_seq - t->snd_nxt : 0;
}

static int can_send_fin(struct tcb *t)
{
    /* FIN_WAIT_1, CLOSING and LAST_ACK: a FIN being retransmitted */
    return (t->pend & TCB_P_FIN) && !t->fin_sent && unsent(t) == 0 &&
           (t->state == TCP_ESTABLISHED || t->state == TCP_CLOSE_WAIT ||
            t->state == TCP_FIN_WAIT_1 || t->state == TCP_CLOSING || t->state == TCP_LAST_ACK ||
            t->state == TCP_SYN_RECEIVED);
}

static void fin_sent(struct tcp_layer *ctx, struct tcb *t)
{
    t->fin_sent = 1;
    t->fin_seq = t->snd_nxt;
    t->snd_nxt++;
    if (SEQ_GT(t->snd_nxt, t->snd_max))
        t->snd_max = t->snd_nxt;
    t->pend &= (uint8_t)~TCB_P_FIN;
    if (t->state == TCP_ESTABLISHED)
        tcp_set_state(ctx, t, TCP_FIN_WAIT_1);
    else if (t->state == TCP_CLOSE_WAIT)
        tcp_set_state(ctx, t, TCP_LAST_ACK);
    tcp_rto_ensure(ctx, t);
}

/* Control segments: SYN / SYN-ACK, RST, and a FIN that carries no data. */
static int send_ctrl(struct tcp_layer *ctx, struct tcb *t)
{
    if (t->pend & TCB_P_RST) {
        if (tcp_emit(ctx, t, WIRE_TCP_RST | WIRE_TCP_ACK, t->snd_nxt, 0) < 0)
            return -1;
        t->pend &= (uint8_t)~TCB_P_RST;
        STAT_INC(&ctx->net.stats, rst_tx);
        STAT_INC(&ctx->net.stats, tx_control_pkts);
        return 0;
    }
    if (t->pend & TCB_P_SYN) {
        if (t->state == TCP_SYN_SENT) {
            uint8_t mac[6];
            if (net_resolve(&ctx->net, t->raddr, mac) < 0) {
                t->arp_wait = 1; /* tcp_arp_resolved schedules us again */
                t->pend &= (uint8_t)~TCB_P_SYN;
                STAT_INC(&ctx->net.stats, drop_arp_unresolved);
                return 0;
            }
            t->arp_wait = 0;
            memcpy(t->rmac, mac, 6);
        }
        uint8_t fl = WIRE_TCP_SYN | (t->state == TCP_SYN_RECEIVED ? WIRE_TCP_ACK : 0);
        if (tcp_emit(ctx, t, fl, t->iss, 0) < 0)
            return -1;
        t->pend &= (uint8_t)~TCB_P_SYN;
        if (SEQ_LEQ(t->snd_nxt, t->iss))
            t->snd_nxt = t->iss + 1;
        if (SEQ_GT(t->snd_nxt, t->snd_max))
            t->snd_max = t->snd_nxt;
        tcp_rto_ensure(ctx, t);
        STAT_INC(&ctx->net.stats, tx_control_pkts);
        return 0;
    }
    if (can_send_fin(t)) {
        if (t->state == TCP_SYN_RECEIVED)
            return 0; /* FIN after the handshake completes */
        if (tcp_emit(ctx, t, WIRE_TCP_FIN | WIRE_TCP_ACK, t->snd_nxt, 0) < 0)
            return -1;
        fin_sent(ctx, t);
        STAT_INC(&ctx->net.stats, tx_control_pkts);
    }
    return 0;
}

/* Retransmits what the scoreboard marks lost, lowest first, as far as cwnd - pipe allows
 * (PRR sets cwnd during recovery), whole segments, several at once as one TSO frame where
 * the device segments. Returns -1 when the round's TX budget ran out. */
static int retransmit_lost(struct tcp_layer *ctx, struct tcb *t)
{
    uint32_t seg_max = tcp_seg_max(t);
    uint32_t tso = tcp_tso_max(ctx, t);
    uint32_t cap = tso > seg_max ? tso : seg_max;
    for (int guard = 0; guard < TCP_SB_MAX * 4; guard++) {
        uint32_t seq;
        uint32_t n = tcp_sb_next_lost(t, &seq);
        if (n == 0)
            return 0;
        uint32_t pipe = tcp_pipe(t);
        uint32_t cwnd = t->cwnd + (uint32_t)t->lt_extra * t->mss;
        uint32_t usable = cwnd > pipe ? cwnd - pipe : 0;
        uint32_t data_end = t->snd_head_seq + mtcp_bytering_used(&t->snd);
        uint32_t dlen = SEQ_LT(seq, data_end) ? data_end - seq : 0;
        if (dlen > n)
            dlen = n;
        int fin = t->fin_sent && dlen < n && seq + dlen == t->fin_seq;
        if (dlen == 0 && !fin) {
            /* nothing to send there (a FIN taken back): forget the mark */
            tcp_sb_on_send(ctx, t, seq, n);
            continue;
        }
        uint32_t len = dlen < cap ? dlen : cap;
        uint32_t need = len < seg_max ? (len ? len : 1) : seg_max;
        if (usable < need)
            return 0;
        if (len > usable)
            len = usable - usable % seg_max;
        if (len < dlen)
            fin = 0;
        uint8_t flags = WIRE_TCP_ACK | (fin ? WIRE_TCP_FIN : 0);
        if (tcp_emit(ctx, t, flags, seq, len) < 0)
            return -1;
        uint32_t segs = len ? (len + seg_max - 1) / seg_max : 1;
        STAT_ADD(&ctx->net.stats, retransmits, segs);
        STAT_ADD(&ctx->net.stats, sack_retransmits, segs);
        STAT_ADD(&ctx->net.stats, tx_data_pkts, segs);
        t->retransmits += segs;
        tcp_rto_ensure(ctx, t);
    }
    return 0;
}

/* Data segments up to the window; the last one carries FIN when one is due.
 * Returns -1 when the round's budget ran out with data left. */
static int send_data(struct tcp_layer *ctx, struct tcb *t)
{
    if (t->state != TCP_ESTABLISHED && t->state != TCP_CLOSE_WAIT &&
        t->state != TCP_FIN_WAIT_1 && t->state != TCP_CLOSING && t->state != TCP_LAST_ACK)
        return 0;
    uint32_t max_before = t->snd_max;
    if (t->sack_ok && t->lost_bytes) {
        int r = retransmit_lost(ctx, t);
        if (r < 0)
            return -1;
    }
    for (;;) {
        /* after a timeout (go-back-N) skip what the peer has SACKed */
        for (uint8_t i = 0; i < t->nsacked && SEQ_LT(t->snd_nxt, t->snd_max); i++)
            if (SEQ_LEQ(t->sacked[i].start, t->snd_nxt) && SEQ_LT(t->snd_nxt, t->sacked[i].end))
                t->snd_nxt = SEQ_LT(t->sacked[i].end, t->snd_max) ? t->sacked[i].end : t->snd_max;
        uint32_t avail = unsent(t);
        uint32_t flight = t->snd_nxt - t->snd_una;
        uint32_t cwnd = t->cwnd + (uint32_t)t->lt_extra * t->mss;
        /* the receiver's window bounds what is outstanding, cwnd what is in the network
         * (RFC 6675 pipe with SACK: neither SACKed nor lost) */
        uint32_t in_net = t->sack_ok ? tcp_pipe(t) : flight;
        uint32_t usable = t->snd_wnd > flight ? t->snd_wnd - flight : 0;
        uint32_t cusable = cwnd > in_net ? cwnd - in_net : 0;
        if (cusable < usable)
            usable = cusable;
        if (avail == 0 || usable == 0 || t->fin_sent)
            break;
        if (t->sack_ok && t->lost_bytes)
            break; /* lost segments first: they wait for window, new data behind them */
        uint32_t seg_max = tcp_seg_max(t);
        /* new data may go out as one TSO frame of several segments; what is resent
         * after a timeout (go-back-N, SND.NXT below SND.MAX) stays one segment at a
         * time, so that SACKed ranges are skipped as before */
        uint32_t cap = seg_max;
        if (SEQ_GEQ(t->snd_nxt, t->snd_max)) {
            uint32_t tso = tcp_tso_max(ctx, t);
            if (tso > cap)
                cap = tso;
        }
        uint32_t len = avail < cap ? avail : cap;
        if (len > usable)
            len = usable;
        /* where cwnd (in bytes: PRR, CUBIC) is the limit, whole segments only: a runt
         * would leave every later segment misaligned (sender-side SWS avoidance) */
        if (len == cusable && len < avail && len >= seg_max && len % seg_max)
            len -= len % seg_max;
        else if (len == cusable && len < avail && len < seg_max && in_net)
            break;
        /* a TSO frame carries whole segments unless it ends the data: the rest goes
         * as its own segment, under Nagle below, exactly as without TSO */
        if (len > seg_max && len < avail)
            len -= len % seg_max;
        /* Nagle (RFC 896, RFC 9293 3.7.4) in Minshall's form, as Linux: hold a small
         * segment only while an earlier small one is unacknowledged, so that a
         * response of one full segment and a tail does not wait for a delayed ACK;
         * never with TCP_NODELAY or when the FIN follows */
        if (len < seg_max && flight && !t->nodelay && !(t->pend & TCB_P_FIN) &&
            SEQ_GEQ(t->snd_nxt, t->snd_max) && t->sml_out)
            break;
        uint8_t flags = WIRE_TCP_ACK;
        if (len == avail)
            flags |= WIRE_TCP_PSH;
        int with_fin = len == avail && (t->pend & TCB_P_FIN) && !t->fin_sent;
        if (with_fin)
            flags |= WIRE_TCP_FIN;
        uint32_t seq = t->snd_nxt;
        if (tcp_emit(ctx, t, flags, seq, len) < 0)
            return -1;
        STAT_ADD(&ctx->net.stats, tx_data_pkts, (len + seg_max - 1) / seg_max);
        if (len % seg_max) {
            t->snd_sml = seq + len; /* the last small segment (Minshall) */
            t->sml_out = 1;
        }
        if (seq == t->snd_max && !t->rtt_timing) {
            t->rtt_timing = 1;
            t->rtt_seq = seq;
            t->rtt_start_ms = ctx->net.now_ms;
        }
        t->snd_nxt += len;
        if (SEQ_GT(t->snd_nxt, t->snd_max))
            t->snd_max = t->snd_nxt;
        tcp_rto_ensure(ctx, t);
        if (with_fin)
            fin_sent(ctx, t);
    }
    if (can_send_fin(t)) {
        if (tcp_emit(ctx, t, WIRE_TCP_FIN | WIRE_TCP_ACK, t->snd_nxt, 0) < 0)
            return -1;
        fin_sent(ctx, t);
        STAT_INC(&ctx->net.stats, tx_control_pkts);
    }
    /* what limited this send, for congestion control (Linux's tcp_cwnd_validate) */
    {
        uint32_t in_net = t->sack_ok ? tcp_pipe(t) : t->snd_nxt - t->snd_una;
        uint32_t out = t->snd_nxt - t->snd_una;
        uint32_t cwnd = t->cwnd + (uint32_t)t->lt_extra * t->mss;
        int limited = unsent(t) && in_net + tcp_seg_max(t) > cwnd;
        if (SEQ_GEQ(t->snd_una, t->cwnd_usage_seq) || limited ||
            (!t->is_cwnd_limited && out > t->max_flight)) {
            t->is_cwnd_limited = (uint8_t)limited;
            t->max_flight = out;
            t->cwnd_usage_seq = t->snd_nxt;
        }
    }
    /* RFC 8985 7.2: new data (re)starts the probe timer, from the last of it, with the
     * flight it leaves (a lone segment's allowance only when one segment is out) */
    if (t->snd_max != max_before && tcp_tlp_allowed(t) && t->rto_armed &&
        t->timer_kind == TCP_TIMER_PTO)
        tcp_rto_arm(ctx, t);
    /* zero window with data waiting: the persist timer probes it */
    if (t->snd_nxt == t->snd_una)
        tcp_idle_timer(ctx, t);
    t->pend &= (uint8_t)~TCB_P_DATA;
    return 0;
}

static int send_ack(struct tcp_layer *ctx, struct tcb *t)
{
    if (!(t->pend & TCB_P_ACK))
        return 0;
    if (tcp_emit(ctx, t, WIRE_TCP_ACK, t->snd_nxt, 0) < 0)
        return -1;
    STAT_INC(&ctx->net.stats, tx_ack_pkts);
    return 0;
}

/* Everything pending for one TCB, in its own order (no-priority FIFO mode). */
static int send_all(struct tcp_layer *ctx, struct tcb *t)
{
    if (send_ctrl(ctx, t) < 0 || send_data(ctx, t) < 0 || send_ack(ctx, t) < 0)
        return -1;
    return 0;
}

/* Walk one list. A TCB whose send ran out of budget stays listed for the next round: at
 * the head when it sent nothing, else at the tail, so that the next round serves the others
 * first (round robin). Kept at the head, a long flow whose window reopens every round would
 * take every round's budget, and a short connection's response behind it would wait until
 * that flow ran out of window. */
static void drain(struct tcp_layer *ctx, struct tcb_list *l, size_t off, uint8_t bit,
                  int (*fn)(struct tcp_layer *, struct tcb *))
{
    struct tcb *t;
    while ((t = l->first)) {
        int budget = ctx->net.tx_budget;
        if (t->in_use && fn(ctx, t) < 0) {
            if (ctx->net.tx_budget < budget && tcb_list_next(t, off)) {
                tcb_list_remove(l, t, off); /* used budget: to the tail (round robin) */
                tcb_list_append(l, t, off);
            }
            return;
        }
        tcb_list_remove(l, t, off);
        t->lists &= (uint8_t)~bit;
        if (t->in_use && bit != TCB_L_DATA && (t->pend & TCB_P_DATA))
            tcp_schedule(ctx, t, TCB_P_DATA);
        tcb_unlisted(ctx, t);
    }
}

static int send_ack_unless_data(struct tcp_layer *ctx, struct tcb *t)
{
    /* data going out this round carries the ACK */
    if ((t->lists & TCB_L_DATA) && unsent(t) && t->snd_wnd > t->snd_nxt - t->snd_una)
        return 0;
    return send_ack(ctx, t);
}

void tcp_output_round(struct tcp_layer *ctx)
{
    STAT_SET(&ctx->net.stats, txq_control, ctx->ctrl.n);
    STAT_SET(&ctx->net.stats, txq_ack, ctx->ack.n);
    STAT_SET(&ctx->net.stats, txq_data, ctx->data.n);
    if (ctx->priority) {
        drain(ctx, &ctx->ctrl, TCB_CTRL,
              TCB_L_CTRL, send_ctrl);
        drain(ctx, &ctx->ack, TCB_ACK,
              TCB_L_ACK, send_ack_unless_data);
        drain(ctx, &ctx->data, TCB_DATA,
              TCB_L_DATA, send_data);
        /* ACKs that a data segment was expected to carry but did not */
        drain(ctx, &ctx->ack, TCB_ACK,
              TCB_L_ACK, send_ack);
    } else {
        drain(ctx, &ctx->data, TCB_DATA,
              TCB_L_DATA, send_all);
    }
}

/* ---------------------------------------------------------------- retransmit */

void tcp_retransmit(struct tcp_layer *ctx, struct tcb *t)
{
    t->rtt_timing = 0; /* Karn: no RTT sample from a retransmitted segment */
    if (t->sack_ok && t->sb_n && t->snd_max != t->snd_una && t->state >= TCP_ESTABLISHED &&
        t->state != TCP_TIME_WAIT) {
        /* everything not SACKed is lost (tcp_sb.c); send_data retransmits and counts it */
        tcp_sack_rto(ctx, t);
        return;
    }
    STAT_INC(&ctx->net.stats, retransmits);
    t->retransmits++;
    switch (t->state) {
    case TCP_SYN_SENT:
    case TCP_SYN_RECEIVED:
        tcp_schedule(ctx, t, TCB_P_SYN);
        tcp_rto_arm(ctx, t);
        return;
    case TCP_TIME_WAIT:
    case TCP_CLOSED:
    case TCP_LISTEN:
        return;
    default:
        break;
    }
    uint32_t flight = t->snd_max - t->snd_una;
    if (flight == 0) {
        tcp_idle_timer(ctx, t);
        return;
    }
    /* RFC 5681 3.1 (eq. 4) on a timeout, then go back to SND.UNA (RFC 6298 5.4) */
    t->ssthresh = tcp_cc_ssthresh(t);
    t->cwnd = t->mss;
    t->snd_nxt = t->snd_una;
    /* a timeout ends fast recovery; recover = SND.MAX keeps the duplicate ACKs of the
     * go-back-N from starting another one (RFC 6582 4) */
    t->in_recovery = 0;
    t->dupacks = 0;
    t->recover = t->snd_max;
    if (t->fin_sent && SEQ_LEQ(t->snd_una, t->fin_seq)) {
        /* the FIN is resent after the data before it */
        t->fin_sent = 0;
        t->pend |= TCB_P_FIN;
    }
    tcp_schedule(ctx, t, TCB_P_DATA);
    tcp_rto_arm(ctx, t);
}

int tcp_retransmit_from(struct tcp_layer *ctx, struct tcb *t, uint32_t seq, int below_sacked)
{
    if (SEQ_LT(seq, t->snd_una))
        seq = t->snd_una;
    /* skip SACKed ranges (kept sorted by start) */
    uint32_t next_sacked = t->snd_max, high_sacked = t->snd_una;
    for (uint8_t i = 0; i < t->nsacked; i++) {
        if (SEQ_LEQ(t->sacked[i].start, seq) && SEQ_LT(seq, t->sacked[i].end))
            seq = t->sacked[i].end;
        if (SEQ_GT(t->sacked[i].end, high_sacked))
            high_sacked = t->sacked[i].end;
    }
    for (uint8_t i = 0; i < t->nsacked; i++)
        if (SEQ_GT(t->sacked[i].start, seq) && SEQ_LT(t->sacked[i].start, next_sacked))
            next_sacked = t->sacked[i].start;
    if (SEQ_GEQ(seq, t->snd_max) || (below_sacked && SEQ_GEQ(seq, high_sacked)))
        return 0;
    /* data ends at the send ring's tail: SND.MAX may also count a FIN, which a timeout
     * may have taken back (fin_sent = 0) - never send that sequence slot as data */
    uint32_t data_end = t->snd_head_seq + mtcp_bytering_used(&t->snd);
    uint8_t flags = WIRE_TCP_ACK;
    uint32_t len;
    if (SEQ_GEQ(seq, data_end)) {
        if (!t->fin_sent || seq != t->fin_seq)
            return 0;
        len = 0; /* only the FIN is missing */
        flags |= WIRE_TCP_FIN;
    } else {
        len = data_end - seq;
        if (len > next_sacked - seq)
            len = next_sacked - seq;
        if (len > tcp_seg_max(t))
            len = tcp_seg_max(t);
        if (len == 0)
            return 0;
        if (t->fin_sent && seq + len == t->fin_seq && next_sacked == t->snd_max)
            flags |= WIRE_TCP_FIN;
    }
    if (tcp_emit(ctx, t, flags, seq, len) < 0)
        return -1;
    STAT_INC(&ctx->net.stats, retransmits);
    t->retransmits++;
    t->rtt_timing = 0; /* Karn */
    t->rexmit_nxt = seq + len + ((flags & WIRE_TCP_FIN) ? 1u : 0u);
    tcp_rto_ensure(ctx, t);
    return 1;
}

void tcp_send_probe(struct tcp_layer *ctx, struct tcb *t)
{
    /* an old sequence number: the peer drops it and answers with an ACK carrying its
     * window (how Linux probes for both keepalive and persist) */
    tcp_emit(ctx, t, WIRE_TCP_ACK, t->snd_una - 1, 0);
}

void tcp_send_cookie_synack(struct tcp_layer *ctx, const uint8_t dst_mac[6],
                            const struct wire_ipv4 *ip, const struct wire_tcp *seg, uint32_t isn,
                            uint16_t mss)
{
    uint8_t *f = net_tx_alloc(&ctx->net);
    if (!f)
        return;
    /* only the MSS: a cookie cannot remember window scaling, SACK or timestamps */
    struct wire_tcp_opts o;
    memset(&o, 0, sizeof(o));
    o.has_mss = 1;
    o.mss = mss;
    uint8_t hdr[WIRE_TCP_HLEN + WIRE_TCP_MAX_OPTLEN];
    size_t hlen = wire_tcp_emit_hdr(hdr, seg->dport, seg->sport, isn, seg->seq + 1,
                                    WIRE_TCP_SYN | WIRE_TCP_ACK, 65535, &o);
    uint32_t off = net_ipv4_headers(&ctx->net, f, dst_mac, ip->src, WIRE_IPPROTO_TCP, (uint16_t)hlen);
    memcpy(f + off, hdr, hlen);
    wire_tcp_fill_csum(f + off, hlen, ctx->net.ip, ip->src);
    net_tx_commit(&ctx->net, off + (uint32_t)hlen);
    STAT_INC(&ctx->net.stats, syn_cookies_sent);
    STAT_INC(&ctx->net.stats, tx_control_pkts);
}
