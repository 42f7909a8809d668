/* TCP input: segment arrival per RFC 9293 3.10.7, with RFC 5961's RST and SYN
 * handling. */
#include <errno.h>
#include <string.h>

#include "../api/ctx.h"
#include "../net/net.h"
#include "tcp.h"

static uint16_t clamp_mss(const struct wire_tcp *seg)
{
    uint16_t m = seg->opt.has_mss ? seg->opt.mss : MTCP_PEER_DEFAULT_MSS;
    if (m > MTCP_MTU - 40)
        m = MTCP_MTU - 40;
    if (m < 64)
        m = 64; /* refuse absurdly small MSS values that would turn data into packet floods */
    return m;
}

/* Options of a SYN: MSS, window scale (RFC 7323 2.2: only when both sides send
 * it), timestamps (RFC 7323 3.2). */
static void syn_options(struct tcb *t, const struct wire_tcp *seg)
{
    t->mss = clamp_mss(seg);
    if (seg->opt.has_wscale) {
        t->wscale_ok = 1;
        t->snd_wscale = seg->opt.wscale;
    } else {
        t->wscale_ok = 0;
        t->snd_wscale = 0;
        t->rcv_wscale = 0;
        /* without scaling the ring can only be offered up to 64 KiB - 1 */
        if (t->rcv.limit > 65535)
            t->rcv.limit = 65535;
    }
    if (seg->opt.has_ts) {
        t->ts_ok = 1;
        t->ts_recent = seg->opt.ts_val;
    } else {
        t->ts_ok = 0;
    }
    t->cwnd = (uint32_t)TCP_INIT_CWND_SEGS * t->mss;
}

static struct tcb *passive_open(struct mtcp_context *ctx, struct mtcp_listener *l,
                                const uint8_t mac[6], const struct wire_ipv4 *ip,
                                const struct wire_tcp *seg)
{
    if (l->pending + atomic_load_explicit(&l->accept_ready, memory_order_acquire) >= l->backlog) {
        STAT_INC(&ctx->stats, drop_tcp_backlog_full);
        return NULL;
    }
    struct tcb *t = tcb_alloc(ctx, ip->dst, seg->dport, ip->src, seg->sport);
    if (!t)
        return NULL;
    memcpy(t->rmac, mac, 6);
    t->listener = l;
    l->pending++;
    t->irs = seg->seq;
    t->rcv_nxt = seg->seq + 1;
    t->iss = tcp_isn(ctx, ip->dst, seg->dport, ip->src, seg->sport);
    t->snd_una = t->snd_nxt = t->snd_max = t->iss;
    t->snd_head_seq = t->iss + 1;
    t->ts_offset = t->iss * 2654435761u;
    syn_options(t, seg);
    t->snd_wnd = seg->win; /* RFC 7323 2.2: the window of a SYN is not scaled */
    t->snd_wl1 = seg->seq;
    t->snd_wl2 = t->iss;
    t->rcv_adv = t->rcv_nxt;
    tcp_set_state(ctx, t, TCP_SYN_RECEIVED);
    tcp_schedule(ctx, t, TCB_P_SYN);
    return t;
}

/* RFC 1122 4.2.2.13 and RFC 6191: a SYN for a 4-tuple in TIME-WAIT opens a new
 * connection when it is clearly newer than the old one (a later timestamp, or a
 * sequence number beyond the old receive window). Returns 1 when it did. */
static int time_wait_reopen(struct mtcp_context *ctx, struct tcb *t, const uint8_t mac[6],
                            const struct wire_ipv4 *ip, const struct wire_tcp *seg)
{
    struct mtcp_listener *l = listener_lookup(ctx, ip->dst, seg->dport);
    if (!l)
        return 0;
    int newer = (t->ts_ok && seg->opt.has_ts) ? (int32_t)(seg->opt.ts_val - t->ts_recent) > 0
                                              : SEQ_GT(seg->seq, t->rcv_nxt);
    if (!newer)
        return 0;
    uint32_t old_snd = t->snd_max;
    tcp_conn_done(ctx, t, 0);
    struct tcb *n = passive_open(ctx, l, mac, ip, seg);
    if (n && SEQ_LEQ(n->iss, old_snd)) {
        /* our side too must start beyond the old incarnation's sequence space */
        n->iss = old_snd + 128u * 1024u;
        n->snd_una = n->snd_nxt = n->snd_max = n->iss;
        n->snd_head_seq = n->iss + 1;
    }
    return 1;
}

/* RFC 9293 3.10.7.3 */
static void input_syn_sent(struct mtcp_context *ctx, struct tcb *t, const uint8_t mac[6],
                           const struct wire_ipv4 *ip, const struct wire_tcp *seg)
{
    int has_ack = seg->flags & WIRE_TCP_ACK;
    if (has_ack && (SEQ_LEQ(seg->ack, t->iss) || SEQ_GT(seg->ack, t->snd_max))) {
        tcp_send_rst_for(ctx, mac, ip, seg);
        STAT_INC(&ctx->stats, drop_tcp_bad_segment);
        return;
    }
    if (seg->flags & WIRE_TCP_RST) {
        STAT_INC(&ctx->stats, rst_rx);
        if (has_ack)
            tcp_conn_done(ctx, t, ECONNREFUSED);
        return;
    }
    if (!(seg->flags & WIRE_TCP_SYN)) {
        STAT_INC(&ctx->stats, drop_tcp_bad_segment);
        return;
    }
    t->irs = seg->seq;
    t->rcv_nxt = seg->seq + 1;
    t->rcv_adv = t->rcv_nxt;
    syn_options(t, seg);
    t->snd_wnd = seg->win;
    t->snd_wl1 = seg->seq;
    t->snd_wl2 = seg->ack;
    if (!has_ack) {
        /* simultaneous open: SYN-RECEIVED, answer with SYN-ACK */
        tcp_set_state(ctx, t, TCP_SYN_RECEIVED);
        tcp_schedule(ctx, t, TCB_P_SYN);
        return;
    }
    t->snd_una = seg->ack;
    if (t->rto_backoff == 0)
        tcp_rtt_sample(t, (uint32_t)(ctx->now_ms - (t->rto_expire_ms - t->rto_ms)));
    t->rto_backoff = 0;
    tcp_rto_disarm(ctx, t);
    tcp_set_state(ctx, t, TCP_ESTABLISHED);
    STAT_INC(&ctx->stats, conn_active_opens);
    atomic_fetch_or_explicit(&t->app_flags, TCB_AF_CONNECTED, memory_order_release);
    ctx_add_event(ctx, t, MTCP_EPOLLOUT);
    tcp_schedule(ctx, t, TCB_P_ACK);
    if (t->pend & (TCB_P_FIN | TCB_P_DATA))
        tcp_schedule(ctx, t, TCB_P_DATA);
}

/* RFC 9293 3.10.7.4, first check: is the segment in the receive window? */
static int seq_acceptable(struct tcb *t, uint32_t seq, uint32_t len)
{
    uint32_t wnd = SEQ_GT(t->rcv_adv, t->rcv_nxt) ? t->rcv_adv - t->rcv_nxt : 0;
    if (len == 0) {
        if (wnd == 0)
            return seq == t->rcv_nxt;
        return SEQ_LEQ(t->rcv_nxt, seq) && SEQ_LT(seq, t->rcv_nxt + wnd);
    }
    if (wnd == 0)
        return 0;
    uint32_t last = seq + len - 1;
    return (SEQ_LEQ(t->rcv_nxt, seq) && SEQ_LT(seq, t->rcv_nxt + wnd)) ||
           (SEQ_LEQ(t->rcv_nxt, last) && SEQ_LT(last, t->rcv_nxt + wnd));
}

/* The handshake completed on a passive open: hand the connection to accept(). */
static int passive_established(struct mtcp_context *ctx, struct tcb *t)
{
    struct mtcp_listener *l = t->listener;
    tcp_set_state(ctx, t, TCP_ESTABLISHED);
    atomic_fetch_or_explicit(&t->app_flags, TCB_AF_CONNECTED, memory_order_release);
    if (!l)
        return 0; /* simultaneous open: the socket already holds it */
    l->pending--;
    t->listener = NULL;
    if (mtcp_spsc_push(&l->acceptq, &t) < 0) {
        STAT_INC(&ctx->stats, drop_tcp_backlog_full);
        t->app_closed = 1;
        tcp_send_rst_now(ctx, t);
        tcp_conn_done(ctx, t, 0);
        return -1;
    }
    t->acc_queued = 1;
    atomic_fetch_add_explicit(&l->accept_ready, 1, memory_order_release);
    STAT_INC(&ctx->stats, conn_passive_opens);
    ctx_listener_event(ctx, l);
    return 0;
}

static void ack_advance(struct mtcp_context *ctx, struct tcb *t, uint32_t ack)
{
    uint32_t acked = ack - t->snd_una;
    int fin_acked = t->fin_sent && SEQ_GT(ack, t->fin_seq);
    uint32_t data_end = fin_acked ? t->fin_seq : ack;
    if (SEQ_GT(data_end, t->snd_head_seq)) {
        uint32_t n = data_end - t->snd_head_seq;
        uint32_t used = mtcp_bytering_used(&t->snd);
        if (n > used)
            n = used;
        atomic_fetch_add_explicit(&t->snd.head, n, memory_order_release);
        t->snd_head_seq += n;
        if (n && !t->app_closed)
            ctx_add_event(ctx, t, MTCP_EPOLLOUT);
    }
    t->snd_una = ack;
    if (SEQ_LT(t->snd_nxt, t->snd_una))
        t->snd_nxt = t->snd_una;
    if (t->rtt_timing && SEQ_GT(ack, t->rtt_seq)) {
        tcp_rtt_sample(t, (uint32_t)(ctx->now_ms - t->rtt_start_ms));
        t->rtt_timing = 0;
    }
    t->rto_backoff = 0;
    if (t->snd_una == t->snd_max)
        tcp_rto_disarm(ctx, t);
    else
        tcp_rto_arm(ctx, t);
    /* RFC 5681 3.1: slow start, then congestion avoidance */
    if (t->cwnd < t->ssthresh)
        t->cwnd += acked < t->mss ? acked : t->mss;
    else
        t->cwnd += (uint32_t)((uint64_t)t->mss * t->mss / (t->cwnd ? t->cwnd : 1));
}

void tcp_input(struct mtcp_context *ctx, const uint8_t src_mac[6], const struct wire_ipv4 *ip,
               unsigned frame_flags)
{
    struct wire_tcp seg;
    int verify = !(frame_flags & (IO_FRAME_CSUM_PARTIAL | IO_FRAME_CSUM_VALID));
    mtcp_drop_t r = wire_tcp_parse(ip->payload, ip->payload_len, ip->src, ip->dst, verify, &seg);
    if (r) {
        STAT_DROP(&ctx->stats, r);
        return;
    }
    STAT_INC(&ctx->stats, tcp_segs_rx);
    struct tcb *t = flow_lookup(ctx, ip->dst, seg.dport, ip->src, seg.sport);
    if (!t) {
        if ((seg.flags & (WIRE_TCP_SYN | WIRE_TCP_ACK | WIRE_TCP_RST)) == WIRE_TCP_SYN) {
            struct mtcp_listener *l = listener_lookup(ctx, ip->dst, seg.dport);
            if (l) {
                passive_open(ctx, l, src_mac, ip, &seg);
                return;
            }
        }
        STAT_INC(&ctx->stats, drop_tcp_no_socket);
        tcp_send_rst_for(ctx, src_mac, ip, &seg);
        return;
    }
    if (t->state == TCP_SYN_SENT) {
        input_syn_sent(ctx, t, src_mac, ip, &seg);
        return;
    }
    if (t->state == TCP_CLOSED) {
        /* kept only until the app closes its socket */
        tcp_send_rst_for(ctx, src_mac, ip, &seg);
        return;
    }
    if (t->state == TCP_TIME_WAIT &&
        (seg.flags & (WIRE_TCP_SYN | WIRE_TCP_ACK | WIRE_TCP_RST)) == WIRE_TCP_SYN &&
        time_wait_reopen(ctx, t, src_mac, ip, &seg))
        return;

    const uint8_t *data = seg.payload;
    uint32_t len = seg.payload_len;
    uint32_t seq = seg.seq;
    uint32_t seglen = len + !!(seg.flags & WIRE_TCP_SYN) + !!(seg.flags & WIRE_TCP_FIN);

    /* a retransmitted SYN while our SYN-ACK is unanswered: send the SYN-ACK again */
    if (t->state == TCP_SYN_RECEIVED && (seg.flags & WIRE_TCP_SYN) && !(seg.flags & WIRE_TCP_ACK) &&
        seq == t->irs) {
        tcp_schedule(ctx, t, TCB_P_SYN);
        return;
    }

    /* RFC 9293 3.10.7.4 first: sequence number check */
    if (!seq_acceptable(t, seq, seglen)) {
        if (!(seg.flags & WIRE_TCP_RST)) {
            if (t->state == TCP_TIME_WAIT && (seg.flags & WIRE_TCP_FIN))
                tcp_enter_time_wait(ctx, t); /* retransmitted FIN: restart 2MSL */
            tcp_send_ack_now(ctx, t);
        }
        STAT_INC(&ctx->stats, drop_tcp_out_of_window);
        return;
    }
    if (t->ts_ok && seg.opt.has_ts && SEQ_LEQ(seq, t->last_ack_sent) &&
        (int32_t)(seg.opt.ts_val - t->ts_recent) >= 0)
        t->ts_recent = seg.opt.ts_val; /* RFC 7323 4.3 */

    /* second: RST (RFC 5961 3.2: exact match resets, in-window gets a challenge ACK) */
    if (seg.flags & WIRE_TCP_RST) {
        if (seq != t->rcv_nxt) {
            tcp_send_ack_now(ctx, t);
            return;
        }
        STAT_INC(&ctx->stats, rst_rx);
        int err = (t->state == TCP_CLOSING || t->state == TCP_LAST_ACK ||
                   t->state == TCP_TIME_WAIT)
                      ? 0
                      : (t->state == TCP_SYN_RECEIVED && !t->listener ? ECONNREFUSED : ECONNRESET);
        tcp_conn_done(ctx, t, err);
        return;
    }
    /* fourth: SYN in a synchronized state (RFC 5961 4.2): challenge ACK */
    if (seg.flags & WIRE_TCP_SYN) {
        tcp_send_ack_now(ctx, t);
        return;
    }
    /* fifth: the ACK field */
    if (!(seg.flags & WIRE_TCP_ACK)) {
        STAT_INC(&ctx->stats, drop_tcp_bad_segment);
        return;
    }
    if (t->state == TCP_SYN_RECEIVED) {
        if (SEQ_LEQ(seg.ack, t->snd_una) || SEQ_GT(seg.ack, t->snd_max)) {
            tcp_send_rst_for(ctx, src_mac, ip, &seg);
            return;
        }
        if (t->rto_backoff == 0)
            tcp_rtt_sample(t, (uint32_t)(ctx->now_ms - (t->rto_expire_ms - t->rto_ms)));
        t->snd_wnd = (uint32_t)seg.win << t->snd_wscale;
        t->snd_wl1 = seq;
        t->snd_wl2 = seg.ack;
        ack_advance(ctx, t, seg.ack);
        if (passive_established(ctx, t) < 0)
            return;
        if (t->pend & (TCB_P_FIN | TCB_P_DATA))
            tcp_schedule(ctx, t, TCB_P_DATA);
    } else if (t->state != TCP_TIME_WAIT) {
        if (SEQ_GT(seg.ack, t->snd_max)) {
            /* acks something not yet sent */
            tcp_send_ack_now(ctx, t);
            STAT_INC(&ctx->stats, drop_tcp_bad_segment);
            return;
        }
        if (SEQ_GT(seg.ack, t->snd_una))
            ack_advance(ctx, t, seg.ack);
        /* window update (RFC 9293 3.10.7.4, SND.WL1/SND.WL2 rule) */
        if (SEQ_LT(t->snd_wl1, seq) || (t->snd_wl1 == seq && SEQ_LEQ(t->snd_wl2, seg.ack))) {
            t->snd_wnd = (uint32_t)seg.win << t->snd_wscale;
            t->snd_wl1 = seq;
            t->snd_wl2 = seg.ack;
        }
        int fin_acked = t->fin_sent && SEQ_GT(t->snd_una, t->fin_seq);
        switch (t->state) {
        case TCP_FIN_WAIT_1:
            if (fin_acked)
                tcp_set_state(ctx, t, TCP_FIN_WAIT_2);
            break;
        case TCP_CLOSING:
            if (fin_acked) {
                tcp_enter_time_wait(ctx, t);
                return;
            }
            break;
        case TCP_LAST_ACK:
            if (fin_acked) {
                tcp_conn_done(ctx, t, 0);
                return;
            }
            break;
        default:
            break;
        }
        if (t->pend & TCB_P_DATA || (t->snd_head_seq + mtcp_bytering_used(&t->snd) != t->snd_nxt &&
                                     !t->fin_sent))
            tcp_schedule(ctx, t, TCB_P_DATA);
    }

    /* seventh: segment text */
    int fin = seg.flags & WIRE_TCP_FIN;
    if (len && (t->state == TCP_ESTABLISHED || t->state == TCP_FIN_WAIT_1 ||
                t->state == TCP_FIN_WAIT_2)) {
        if (t->app_closed) {
            /* nobody will read it: reset, as Linux does for data after close() */
            tcp_send_rst_now(ctx, t);
            tcp_conn_done(ctx, t, 0);
            return;
        }
        if (SEQ_LT(seq, t->rcv_nxt)) {
            uint32_t skip = t->rcv_nxt - seq;
            data += skip;
            len -= skip;
            seq = t->rcv_nxt;
        }
        if (seq != t->rcv_nxt) {
            /* out of order: dropped (no reassembly queue yet); the duplicate ACK
             * tells the peer what is missing */
            tcp_schedule(ctx, t, TCB_P_ACK);
            STAT_INC(&ctx->stats, drop_tcp_out_of_window);
            return;
        }
        uint32_t took = mtcp_bytering_write(&t->rcv, data, len);
        if (took) {
            t->rcv_nxt += took;
            ctx_add_event(ctx, t, MTCP_EPOLLIN);
        }
        if (took < len) {
            STAT_INC(&ctx->stats, drop_tcp_rcvbuf_full);
            fin = 0; /* the FIN lies beyond what we kept */
        }
        tcp_schedule(ctx, t, TCB_P_ACK);
    } else if (len) {
        tcp_schedule(ctx, t, TCB_P_ACK); /* data after the peer's FIN: just re-ACK */
        fin = 0;
    }

    /* eighth: FIN */
    if (fin && seq + len == t->rcv_nxt) {
        switch (t->state) {
        case TCP_SYN_RECEIVED:
        case TCP_ESTABLISHED:
            t->rcv_nxt++;
            tcp_set_state(ctx, t, TCP_CLOSE_WAIT);
            break;
        case TCP_FIN_WAIT_1:
            t->rcv_nxt++;
            if (t->fin_sent && SEQ_GT(t->snd_una, t->fin_seq))
                tcp_enter_time_wait(ctx, t);
            else
                tcp_set_state(ctx, t, TCP_CLOSING);
            break;
        case TCP_FIN_WAIT_2:
            t->rcv_nxt++;
            tcp_enter_time_wait(ctx, t);
            break;
        default:
            break; /* CLOSE-WAIT, CLOSING, LAST-ACK: a retransmitted FIN */
        }
        atomic_fetch_or_explicit(&t->app_flags, TCB_AF_EOF, memory_order_release);
        if (!t->app_closed)
            ctx_add_event(ctx, t, MTCP_EPOLLIN | MTCP_EPOLLRDHUP);
        tcp_schedule(ctx, t, TCB_P_ACK);
    }
}
