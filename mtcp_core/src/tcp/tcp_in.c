/* TCP input: segment arrival per RFC 9293 3.10.7, with RFC 5961's RST and SYN
 * handling, RFC 7323 PAWS, RFC 2018 SACK, RFC 5681/6582 fast retransmit and
 * NewReno recovery, out-of-order reassembly and delayed ACKs. */
#include <errno.h>
#include <string.h>

#include "../net/net.h"
#include "tcp.h"

#define PAWS_IDLE_MS (24ull * 24 * 3600 * 1000) /* RFC 7323 5.5: TS.Recent older than 24 days */

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
 * it), timestamps (RFC 7323 3.2), SACK-permitted (RFC 2018 2). */
static void syn_options(struct tcp_layer *ctx, struct tcb *t, const struct wire_tcp *seg)
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
        if (t->rcv_space > t->rcv.limit)
            t->rcv_space = t->rcv.limit;
    }
    if (seg->opt.has_ts) {
        t->ts_ok = 1;
        t->ts_recent = seg->opt.ts_val;
        t->ts_recent_ms = ctx->net.now_ms;
    } else {
        t->ts_ok = 0;
    }
    t->sack_ok = seg->opt.sack_ok && ctx->conf.sack;
    t->cwnd = (uint32_t)TCP_INIT_CWND_SEGS * t->mss;
    tcp_cc_init(t);
    t->quickacks = TCP_QUICKACKS; /* slow start: every ACK grows the sender's window */
}

/* State of a passive open common to the SYN and the SYN-cookie paths. */
static struct tcb *passive_tcb(struct tcp_layer *ctx, struct mtcp_listener *l,
                               const uint8_t mac[6], const struct wire_ipv4 *ip,
                               const struct wire_tcp *seg, uint32_t iss, uint32_t irs)
{
    struct tcb *t = tcb_alloc(ctx, ip->dst, seg->dport, ip->src, seg->sport);
    if (!t)
        return NULL;
    memcpy(t->rmac, mac, 6);
    tcb_limit_buffers(t, l->rcvbuf, l->sndbuf);
    if (l->cc)
        t->cc_algo = (uint8_t)(l->cc - 1u);
    t->listener = l;
    l->pending++;
    t->irs = irs;
    t->rcv_nxt = irs + 1;
    t->iss = iss;
    t->snd_una = t->snd_nxt = t->snd_max = t->iss;
    t->snd_head_seq = t->iss + 1;
    t->ts_offset = tcp_ts_offset(ctx, t->laddr, t->raddr);
    t->rcv_adv = t->rcv_nxt;
    t->recover = t->iss;
    tcp_idle_touch(ctx, t);
    return t;
}

static struct tcb *passive_open(struct tcp_layer *ctx, struct mtcp_listener *l,
                                const uint8_t mac[6], const struct wire_ipv4 *ip,
                                const struct wire_tcp *seg)
{
    if (atomic_load_explicit(&l->accept_ready, memory_order_acquire) >= l->backlog) {
        /* nobody accepts: drop, the peer retries (as Linux does) */
        STAT_INC(&ctx->net.stats, drop_tcp_backlog_full);
        return NULL;
    }
    if (!tcp_source_allowed(ctx, ip->src)) {
        tcp_send_rst_for(ctx, mac, ip, seg); /* per-source limit (nginx limit_conn) */
        return NULL;
    }
    int cookie = l->pending >= l->syn_backlog; /* half-open backlog full (a SYN flood?) */
    struct tcb *t = NULL;
    if (!cookie) {
        t = passive_tcb(ctx, l, mac, ip, seg,
                        tcp_isn(ctx, ip->dst, seg->dport, ip->src, seg->sport), seg->seq);
        /* out of TCBs or memory while evicted connections are being closed: their slots
         * are free by the time the handshake completes */
        cookie = !t && ctx->evicted_pending;
    }
    if (cookie) {
        /* answer statelessly with a cookie */
        uint16_t mss = clamp_mss(seg);
        uint32_t isn = tcp_cookie_make(ctx, ip->dst, seg->dport, ip->src, seg->sport, seg->seq, mss);
        tcp_send_cookie_synack(ctx, mac, ip, seg, isn, mss);
        return NULL;
    }
    if (!t)
        return NULL;
    syn_options(ctx, t, seg);
    t->snd_wnd = seg->win; /* RFC 7323 2.2: the window of a SYN is not scaled */
    t->snd_wl1 = seg->seq;
    t->snd_wl2 = t->iss;
    tcp_set_state(ctx, t, TCP_SYN_RECEIVED);
    tcp_schedule(ctx, t, TCB_P_SYN);
    return t;
}

/* The ACK completing a handshake we answered with a SYN cookie. */
static struct tcb *cookie_open(struct tcp_layer *ctx, struct mtcp_listener *l,
                               const uint8_t mac[6], const struct wire_ipv4 *ip,
                               const struct wire_tcp *seg, int *no_room)
{
    uint16_t mss = tcp_cookie_check(ctx, ip->dst, seg->dport, ip->src, seg->sport, seg->seq - 1,
                                    seg->ack - 1);
    if (!mss) {
        STAT_INC(&ctx->net.stats, syn_cookies_bad);
        return NULL;
    }
    if (atomic_load_explicit(&l->accept_ready, memory_order_acquire) >= l->backlog) {
        STAT_INC(&ctx->net.stats, drop_tcp_backlog_full);
        return NULL;
    }
    if (!tcp_source_allowed(ctx, ip->src))
        return NULL;
    struct tcb *t = passive_tcb(ctx, l, mac, ip, seg, seg->ack - 1, seg->seq - 1);
    if (!t) {
        *no_room = 1; /* a valid cookie, no TCB yet: the peer retransmits, no RST */
        return NULL;
    }
    STAT_INC(&ctx->net.stats, syn_cookies_ok);
    t->mss = mss;
    t->rcv_wscale = 0;
    if (t->rcv.limit > 65535)
        t->rcv.limit = 65535;
    if (t->rcv_space > t->rcv.limit)
        t->rcv_space = t->rcv.limit;
    t->cwnd = (uint32_t)TCP_INIT_CWND_SEGS * t->mss;
    tcp_cc_init(t);
    t->snd_nxt = t->snd_max = t->iss + 1; /* our SYN-ACK is acknowledged */
    /* the window the cookie SYN-ACK offered (unscaled), so that data riding on this
     * ACK, or right behind it, is in the window */
    t->rcv_adv = t->rcv_nxt + (t->rcv.limit < 65535 ? t->rcv.limit : 65535);
    t->snd_wnd = seg->win;
    t->snd_wl1 = seg->seq;
    t->snd_wl2 = seg->ack;
    tcp_set_state(ctx, t, TCP_SYN_RECEIVED);
    return t;
}

/* RFC 1122 4.2.2.13 and RFC 6191: a SYN for a 4-tuple in TIME-WAIT opens a new
 * connection when it is clearly newer than the old one (a later timestamp, or a
 * sequence number beyond the old receive window). Returns 1 when it did. */
static int time_wait_reopen(struct tcp_layer *ctx, struct tcb *t, const uint8_t mac[6],
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
        n->snd_una = n->snd_nxt = n->snd_max = n->recover = n->iss;
        n->snd_head_seq = n->iss + 1;
    }
    return 1;
}

/* RFC 9293 3.10.7.3 */
static void input_syn_sent(struct tcp_layer *ctx, struct tcb *t, const uint8_t mac[6],
                           const struct wire_ipv4 *ip, const struct wire_tcp *seg)
{
    int has_ack = seg->flags & WIRE_TCP_ACK;
    if (has_ack && (SEQ_LEQ(seg->ack, t->iss) || SEQ_GT(seg->ack, t->snd_max))) {
        tcp_send_rst_for(ctx, mac, ip, seg);
        STAT_INC(&ctx->net.stats, drop_tcp_bad_segment);
        return;
    }
    if (seg->flags & WIRE_TCP_RST) {
        STAT_INC(&ctx->net.stats, rst_rx);
        if (has_ack)
            tcp_conn_done(ctx, t, ECONNREFUSED);
        return;
    }
    if (!(seg->flags & WIRE_TCP_SYN)) {
        STAT_INC(&ctx->net.stats, drop_tcp_bad_segment);
        return;
    }
    t->irs = seg->seq;
    t->rcv_nxt = seg->seq + 1;
    t->rcv_adv = t->rcv_nxt;
    syn_options(ctx, t, seg);
    t->snd_wnd = seg->win;
    t->snd_wl1 = seg->seq;
    t->snd_wl2 = seg->ack;
    tcp_idle_touch(ctx, t);
    if (!has_ack) {
        /* simultaneous open: SYN-RECEIVED, answer with SYN-ACK */
        tcp_set_state(ctx, t, TCP_SYN_RECEIVED);
        tcp_schedule(ctx, t, TCB_P_SYN);
        return;
    }
    t->snd_una = seg->ack;
    t->recover = seg->ack;
    if (t->rto_backoff == 0)
        tcp_rtt_sample(t, (uint32_t)(ctx->net.now_ms - (t->rto_expire_ms - t->rto_ms)));
    t->rto_backoff = 0;
    tcp_rto_disarm(ctx, t);
    tcp_set_state(ctx, t, TCP_ESTABLISHED);
    STAT_INC(&ctx->net.stats, conn_active_opens);
    atomic_fetch_or_explicit(&t->app_flags, TCB_AF_CONNECTED, memory_order_release);
    tcp_app_event(ctx, t, MTCP_EPOLLOUT);
    tcp_schedule(ctx, t, TCB_P_ACK);
    if (t->pend & (TCB_P_FIN | TCB_P_DATA))
        tcp_schedule(ctx, t, TCB_P_DATA);
    tcp_idle_timer(ctx, t);
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
static int passive_established(struct tcp_layer *ctx, struct tcb *t)
{
    struct mtcp_listener *l = t->listener;
    tcp_set_state(ctx, t, TCP_ESTABLISHED);
    atomic_fetch_or_explicit(&t->app_flags, TCB_AF_CONNECTED, memory_order_release);
    if (!l)
        return 0; /* simultaneous open: the socket already holds it */
    l->pending--;
    t->listener = NULL;
    if (tcp_app_takes(ctx, l)) {
        /* the static responder holds it until a request is not its own */
        STAT_INC(&ctx->net.stats, conn_passive_opens);
        tcp_app_adopt(ctx, t, l);
        return 0;
    }
    if (mtcp_spsc_push(&l->acceptq, &t) < 0) {
        STAT_INC(&ctx->net.stats, drop_tcp_backlog_full);
        t->app_closed = 1;
        tcp_send_rst_now(ctx, t);
        tcp_conn_done(ctx, t, 0);
        return -1;
    }
    t->acc_queued = 1;
    atomic_fetch_add_explicit(&l->accept_ready, 1, memory_order_release);
    STAT_INC(&ctx->net.stats, conn_passive_opens);
    tcp_app_accept_ready(ctx, l);
    return 0;
}

/* ---------------------------------------------------------------- ranges */

/* Adds [start, end) to a sorted list of disjoint ranges, merging what touches.
 * Returns the index of the range that now holds it, or -1 when the list is full. */
static int range_add(struct tcp_range *r, uint8_t *n, uint8_t max, uint32_t start, uint32_t end)
{
    uint8_t i = 0;
    while (i < *n && SEQ_LT(r[i].end, start))
        i++;
    if (i < *n && SEQ_LEQ(r[i].start, end)) {
        /* overlaps or touches r[i]: grow it, then swallow the ranges it reaches */
        if (SEQ_LT(start, r[i].start))
            r[i].start = start;
        if (SEQ_GT(end, r[i].end))
            r[i].end = end;
        uint8_t j = (uint8_t)(i + 1);
        while (j < *n && SEQ_LEQ(r[j].start, r[i].end)) {
            if (SEQ_GT(r[j].end, r[i].end))
                r[i].end = r[j].end;
            j++;
        }
        uint8_t gone = (uint8_t)(j - i - 1);
        if (gone) {
            memmove(&r[i + 1], &r[j], (size_t)(*n - j) * sizeof(*r));
            *n = (uint8_t)(*n - gone);
        }
        return i;
    }
    if (*n == max)
        return -1;
    memmove(&r[i + 1], &r[i], (size_t)(*n - i) * sizeof(*r));
    r[i].start = start;
    r[i].end = end;
    (*n)++;
    return i;
}

/* Forget ranges at or below seq (cumulatively acknowledged or delivered). */
static void range_trim(struct tcp_range *r, uint8_t *n, uint32_t seq)
{
    uint8_t k = 0;
    for (uint8_t i = 0; i < *n; i++) {
        if (SEQ_LEQ(r[i].end, seq))
            continue;
        r[k] = r[i];
        if (SEQ_LT(r[k].start, seq))
            r[k].start = seq;
        k++;
    }
    *n = k;
}

/* ---------------------------------------------------------------- ACK side */

static uint32_t sacked_bytes(const struct tcb *t)
{
    uint32_t n = 0;
    for (uint8_t i = 0; i < t->nsacked; i++)
        n += t->sacked[i].end - t->sacked[i].start;
    return n;
}

/* RFC 2018: remember what the peer holds above SND.UNA. */
static void sack_update(struct tcb *t, const struct wire_tcp *seg)
{
    for (uint8_t i = 0; i < seg->opt.nsack; i++) {
        uint32_t l = seg->opt.sack[i].left, r = seg->opt.sack[i].right;
        if (!SEQ_LT(l, r) || SEQ_LEQ(r, t->snd_una) || SEQ_GT(r, t->snd_max))
            continue; /* D-SACK or nonsense */
        if (SEQ_LT(l, t->snd_una))
            l = t->snd_una;
        range_add(t->sacked, &t->nsacked, TCP_SACK_RANGES, l, r);
    }
}

void tcp_ack_advance(struct tcp_layer *ctx, struct tcb *t, uint32_t ack)
{
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
            tcp_app_event(ctx, t, MTCP_EPOLLOUT);
    }
    t->snd_una = ack;
    if (t->sml_out && SEQ_GEQ(ack, t->snd_sml))
        t->sml_out = 0;
    if (SEQ_LT(t->snd_nxt, t->snd_una))
        t->snd_nxt = t->snd_una;
    if (SEQ_LT(t->rexmit_nxt, t->snd_una))
        t->rexmit_nxt = t->snd_una;
    range_trim(t->sacked, &t->nsacked, ack);
    if (t->sack_ok) {
        /* tcp_sack_ack took the RTT sample from the scoreboard */
    } else if (t->rtt_timing && SEQ_GT(ack, t->rtt_seq)) {
        tcp_rtt_sample(t, (uint32_t)(ctx->net.now_ms - t->rtt_start_ms));
        t->rtt_timing = 0;
    }
    if (!t->sack_ok) {
        /* without SACK the scoreboard only drops what is acknowledged */
        tcp_sb_drop_acked(t, ack);
    }
    t->rto_backoff = 0;
    if (t->snd_una == t->snd_max)
        tcp_rto_disarm(ctx, t);
    else
        tcp_rto_arm(ctx, t); /* RFC 6298 5.3: restart on new data acknowledged */
}

/* RFC 5681 3.2 / RFC 6582 3.2: enter fast recovery on the third duplicate ACK. */
void tcp_enter_recovery(struct tcp_layer *ctx, struct tcb *t)
{
    t->ssthresh = tcp_cc_ssthresh(t);
    t->cwnd = t->ssthresh + 3u * t->mss;
    t->recover = t->snd_max;
    t->in_recovery = 1;
    t->rexmit_nxt = t->snd_una;
    STAT_INC(&ctx->net.stats, recoveries);
    if (tcp_retransmit_from(ctx, t, t->snd_una, 0) > 0)
        STAT_INC(&ctx->net.stats, fast_retransmits);
}

/* Is SND.UNA lost? Three duplicate ACKs (RFC 5681), more than two segments SACKed
 * above it (RFC 6675 IsLost: duplicate ACKs themselves may be lost), or, with fewer
 * than four segments out and nothing new to send, one less duplicate than segments
 * out (RFC 5827 early retransmit). */
static int una_lost(const struct tcb *t)
{
    if (t->dupacks >= 3)
        return 1;
    if (sacked_bytes(t) > 2u * t->mss)
        return 1;
    uint32_t flight = t->snd_max - t->snd_una;
    uint32_t segs = (flight + t->mss - 1) / t->mss;
    uint32_t unsent = t->snd_head_seq + mtcp_bytering_used((struct mtcp_bytering *)&t->snd) - t->snd_max;
    if (segs < 4 && ((int32_t)unsent <= 0 || t->snd_wnd <= flight))
        return t->dupacks >= (segs > 1 ? segs - 1 : 1);
    return 0;
}

/* The cumulative ACK moved, or a duplicate came: congestion control and recovery. */
static void ack_received(struct tcp_layer *ctx, struct tcb *t, const struct wire_tcp *seg,
                         uint32_t seglen)
{
    if (t->sack_ok) {
        tcp_sack_ack(ctx, t, seg); /* RACK-TLP, PRR (tcp_sb.c) */
        return;
    }
    uint32_t ack = seg->ack;
    uint32_t win = (uint32_t)seg->win << t->snd_wscale;
    uint32_t sacked_before = sacked_bytes(t);
    if (t->sack_ok && seg->opt.nsack)
        sack_update(t, seg);
    /* RFC 6675 2: with SACK, an ACK that reports newly SACKed data counts as a
     * duplicate even when it carries data or a window change (full duplex) */
    int new_sack = sacked_bytes(t) > sacked_before;
    if (SEQ_GT(ack, t->snd_una)) {
        uint32_t acked = ack - t->snd_una;
        tcp_ack_advance(ctx, t, ack);
        if (t->in_recovery) {
            if (SEQ_GEQ(ack, t->recover)) {
                /* full ACK: deflate the window and leave recovery (RFC 6582 3.2 step 3) */
                t->cwnd = t->ssthresh;
                t->in_recovery = 0;
            } else {
                /* partial ACK: the next hole is lost too; retransmit it and deflate by
                 * what was acknowledged (RFC 6582 3.2 step 4) */
                if (tcp_retransmit_from(ctx, t, t->snd_una, 0) > 0)
                    STAT_INC(&ctx->net.stats, fast_retransmits);
                t->cwnd = (t->cwnd > acked ? t->cwnd - acked : 0) + t->mss;
            }
        } else {
            tcp_cc_on_ack(ctx, t, acked, t->snd_max - (ack - acked));
        }
        t->dupacks = 0;
        t->lt_extra = 0;
        return;
    }
    /* RFC 5681 2: a duplicate ACK acknowledges nothing new, carries no data, does
     * not change the window, and comes while data is outstanding */
    if (ack != t->snd_una || t->snd_max == t->snd_una ||
        (!new_sack && (seglen || win != t->snd_wnd)))
        return;
    STAT_INC(&ctx->net.stats, dup_acks_rx);
    if (t->dupacks < 255)
        t->dupacks++;
    if (t->in_recovery) {
        t->cwnd += t->mss; /* each duplicate means a segment left the network */
        if (t->sack_ok && tcp_retransmit_from(ctx, t, t->rexmit_nxt, 1) > 0)
            STAT_INC(&ctx->net.stats, sack_retransmits);
        tcp_schedule(ctx, t, TCB_P_DATA);
    } else if (una_lost(t) && (t->sack_ok || SEQ_GEQ(t->snd_una, t->recover))) {
        /* RFC 6582 4: without SACK, only when this loss is past the last recovery's
         * end (SACK tells real losses from the go-back-N's duplicates) */
        t->lt_extra = 0;
        tcp_enter_recovery(ctx, t);
    } else if (t->dupacks <= 2) {
        /* RFC 3042 limited transmit: a new segment for each of the first two
         * duplicates keeps the ACK clock going in small windows */
        t->lt_extra = t->dupacks;
        tcp_schedule(ctx, t, TCB_P_DATA);
    }
}

/* ---------------------------------------------------------------- receive side */

/* RFC 2883: the next ACK reports [start, end) as a duplicate (a D-SACK block first). */
static void dsack_note(struct tcb *t, uint32_t start, uint32_t end)
{
    if (!t->sack_ok)
        return;
    t->dsack_pend = 1;
    t->dsack_start = start;
    t->dsack_end = end;
}

#define ACK_LATER 0
#define ACK_ROUND 1 /* with this round's output */
#define ACK_EMIT 2  /* one ACK for this very segment: duplicate ACKs are counted */

/* Receive-window auto-tuning (DRS, as Linux's tcp_rcv_space_adjust): once per receiver
 * RTT, the window target becomes twice what arrived in it (four times while that grows,
 * as a sender in slow start doubles), never more than the ring. So a flow on a long path
 * gets the window its rate needs, and a slow one does not invite a sender to fill a
 * deep queue. */
static void rcv_space_adjust(struct tcp_layer *ctx, struct tcb *t)
{
    if (t->rcv_space_ms == 0) {
        t->rcv_space_ms = ctx->net.now_ms ? ctx->net.now_ms : 1;
        t->rcv_space_seq = t->rcv_nxt;
        return;
    }
    uint64_t rtt = t->rcv_rtt_ms ? t->rcv_rtt_ms
                   : t->srtt_us ? t->srtt_us / 1000u + 1u
                                : TCP_RCV_RTT_DEFAULT_MS;
    if (ctx->net.now_ms - t->rcv_space_ms < rtt)
        return;
    uint32_t got = t->rcv_nxt - t->rcv_space_seq;
    uint64_t want = 2ull * got;
    if (got > t->rcv_space_last)
        want *= 2u; /* growing: the next RTT brings about twice as much */
    if (want > t->rcv.limit)
        want = t->rcv.limit;
    if (want > t->rcv_space) {
        t->rcv_space = (uint32_t)want;
        STAT_INC(&ctx->net.stats, rcv_space_grows);
    }
    t->rcv_space_last = got;
    t->rcv_space_seq = t->rcv_nxt;
    t->rcv_space_ms = ctx->net.now_ms;
}

/* A receiver RTT sample: the segment echoes the timestamp of an ACK we sent
 * (RFC 7323 4.3's TSecr, Linux's tcp_rcv_rtt_measure_ts). */
static void rcv_rtt_sample(struct tcp_layer *ctx, struct tcb *t, uint32_t tsecr)
{
    uint32_t ours = (uint32_t)ctx->net.now_ms + t->ts_offset;
    int32_t d = (int32_t)(ours - tsecr);
    if (tsecr == 0 || d < 0 || d > 60000)
        return;
    uint32_t r = d ? (uint32_t)d : 1u;
    t->rcv_rtt_ms = (t->rcv_rtt_ms == 0 || r < t->rcv_rtt_ms) ? r
                                                              : (7u * t->rcv_rtt_ms + r) / 8u;
}

/* Accepts payload at seq (>= RCV.NXT). In-order bytes go to the app at once; later
 * ones wait in the ring past its tail (bounded by the window and TCP_OOO_RANGES)
 * until the hole before them fills. Returns how the peer must be ACKed. */
static int rcv_data(struct tcp_layer *ctx, struct tcb *t, uint32_t seq, const uint8_t *data,
                    uint32_t len, int *fin)
{
    uint32_t room = mtcp_bytering_free(&t->rcv);
    if (seq != t->rcv_nxt) {
        uint32_t off = seq - t->rcv_nxt;
        if (off >= room) {
            STAT_INC(&ctx->net.stats, drop_tcp_out_of_window);
            *fin = 0;
            return ACK_EMIT;
        }
        uint32_t n = len < room - off ? len : room - off;
        for (uint8_t i = 0; i < t->nooo; i++)
            if (SEQ_LEQ(t->ooo[i].start, seq) && SEQ_LEQ(seq + n, t->ooo[i].end))
                dsack_note(t, seq, seq + n); /* already held out of order */
        int idx = range_add(t->ooo, &t->nooo, TCP_OOO_RANGES, seq, seq + n);
        if (idx < 0) {
            STAT_INC(&ctx->net.stats, drop_tcp_ooo_full);
            *fin = 0;
            return ACK_EMIT;
        }
        /* past the tail: the app cannot see these bytes until the tail moves */
        uint32_t tail = atomic_load_explicit(&t->rcv.tail, memory_order_relaxed);
        mtcp_bytering_copy_in(&t->rcv, tail + off, data, n);
        t->ooo_last = (uint8_t)idx;
        t->quickacks = TCP_QUICKACKS;
        STAT_INC(&ctx->net.stats, ooo_segments);
        if (*fin && n == len) {
            t->rfin = 1; /* remember it; it counts once RCV.NXT gets there */
            t->rfin_seq = seq + len;
        }
        *fin = 0;
        return ACK_EMIT; /* a duplicate ACK with SACK blocks tells the sender at once */
    }
    uint32_t took = mtcp_bytering_write(&t->rcv, data, len < room ? len : room);
    t->rcv_nxt += took;
    if (took < len) {
        STAT_INC(&ctx->net.stats, drop_tcp_rcvbuf_full);
        *fin = 0; /* the FIN lies beyond what we kept */
    }
    int filled = 0;
    while (t->nooo && SEQ_LEQ(t->ooo[0].start, t->rcv_nxt)) {
        if (SEQ_GT(t->ooo[0].end, t->rcv_nxt)) {
            /* the island's bytes are already in place: publish them */
            atomic_fetch_add_explicit(&t->rcv.tail, t->ooo[0].end - t->rcv_nxt,
                                      memory_order_release);
            t->rcv_nxt = t->ooo[0].end;
        }
        range_trim(t->ooo, &t->nooo, t->rcv_nxt);
        filled = 1;
    }
    if (took || filled)
        tcp_app_event(ctx, t, MTCP_EPOLLIN);
    if (took)
        rcv_space_adjust(ctx, t);
    /* RFC 5681 4.2: ACK at once when a hole fills or one remains; otherwise at least
     * every second full segment, or when the delayed-ACK timer fires */
    if (filled || t->nooo) {
        t->quickacks = TCP_QUICKACKS; /* the sender is recovering: keep its ACK clock */
        return ACK_EMIT;
    }
    /* RFC 9293 3.8.6.3 / RFC 5681 4.2: an ACK for at least every second full-sized
     * segment, sent now: a batch of segments taken in one round gets one ACK per two of
     * them, never one stretch ACK at the end of the round (a sender counting ACKs, or
     * pacing by them, would see its clock halved or worse) */
    if (took < len || t->rcv_nxt - t->last_ack_sent > t->mss) {
        if (t->quickacks)
            t->quickacks--;
        return ACK_EMIT;
    }
    /* quick ACKs (as Linux's quickack mode): at the start (the sender's slow start) and
     * after reordering, a lone segment is ACKed with this round's output instead of
     * after the delayed-ACK timer, which a small congestion window would wait for once
     * per round trip */
    if (!ctx->conf.delayed_ack || t->quickacks) {
        if (t->quickacks)
            t->quickacks--;
        return ACK_ROUND;
    }
    tcp_delack_arm(ctx, t);
    return ACK_LATER;
}

static void fin_received(struct tcp_layer *ctx, struct tcb *t)
{
    t->rfin = 0;
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
        tcp_app_event(ctx, t, MTCP_EPOLLIN | MTCP_EPOLLRDHUP);
    tcp_schedule(ctx, t, TCB_P_ACK);
}

/* ---------------------------------------------------------------- input */

/* A segment for no connection: a SYN for a listener opens one, an ACK may complete a SYN
 * cookie's handshake (the TCB it returns goes on through tcp_input), anything else is
 * answered with a RST (RFC 9293 3.10.7.1) or dropped. NULL: handled. */
static struct tcb *input_no_flow(struct tcp_layer *ctx, const uint8_t src_mac[6],
                                 const struct wire_ipv4 *ip, const struct wire_tcp *seg,
                                 uint8_t ctl)
{
    struct tcb *t = NULL;
    struct mtcp_listener *l = listener_lookup(ctx, ip->dst, seg->dport);
    if (l && ctl == WIRE_TCP_SYN) {
        passive_open(ctx, l, src_mac, ip, seg);
        return NULL;
    }
    int no_room = 0;
    if (l && ctl == WIRE_TCP_ACK &&
        (t = cookie_open(ctx, l, src_mac, ip, seg, &no_room)) != NULL) {
        /* fall through: the ACK completes the handshake and may carry data */
    } else if (no_room) {
        return NULL;
    } else {
        STAT_INC(&ctx->net.stats, drop_tcp_no_socket);
        /* RFC 9293 3.10.7.1 answers with a RST; on an address the kernel shares, a
         * port the stack does not listen on is the kernel's (its management port,
         * its own connections): a RST would reset them. */
        if (!ctx->net.shared_addr || l)
            tcp_send_rst_for(ctx, src_mac, ip, seg);
        return NULL;
    }
    return t;
}

/* SYN-SENT, CLOSED and TIME-WAIT before the common checks; 1: handled. */
static int input_special_state(struct tcp_layer *ctx, struct tcb *t, const uint8_t src_mac[6],
                               const struct wire_ipv4 *ip, const struct wire_tcp *seg,
                               uint8_t ctl)
{
    if (t->state == TCP_SYN_SENT) {
        input_syn_sent(ctx, t, src_mac, ip, seg);
        return 1;
    }
    if (t->state == TCP_CLOSED) {
        /* kept only until the app closes its socket */
        tcp_send_rst_for(ctx, src_mac, ip, seg);
        return 1;
    }
    if (t->state == TCP_TIME_WAIT) {
        if (ctl == WIRE_TCP_SYN && time_wait_reopen(ctx, t, src_mac, ip, seg))
            return 1;
        if (seg->flags & WIRE_TCP_RST) {
            /* RFC 1337: a RST must not cut TIME-WAIT short (assassination) */
            STAT_INC(&ctx->net.stats, drop_tcp_rst_time_wait);
            return 1;
        }
    }
    return 0;
}

/* RFC 9293 3.10.7.4, first to fourth: the SYN-ACK retransmission, PAWS, the sequence
 * number check, RST and SYN (RFC 5961); 1: the segment ends here. */
static int input_checks(struct tcp_layer *ctx, struct tcb *t, const struct wire_tcp *seg,
                        uint8_t ctl, uint32_t seglen)
{
    const uint32_t seq = seg->seq, len = seg->payload_len;
    /* a retransmitted SYN while our SYN-ACK is unanswered: send the SYN-ACK again */
    if (t->state == TCP_SYN_RECEIVED && ctl == WIRE_TCP_SYN && seq == t->irs) {
        tcp_schedule(ctx, t, TCB_P_SYN);
        return 1;
    }

    /* RFC 7323 5.3 (PAWS): a segment older than TS.Recent is a duplicate from an
     * earlier wrap of the sequence space: ACK it and drop it */
    if (t->ts_ok && seg->opt.has_ts && !(seg->flags & WIRE_TCP_RST) &&
        (int32_t)(seg->opt.ts_val - t->ts_recent) < 0 &&
        ctx->net.now_ms - t->ts_recent_ms < PAWS_IDLE_MS) {
        STAT_INC(&ctx->net.stats, drop_tcp_paws);
        tcp_send_ack_now(ctx, t);
        return 1;
    }

    /* RFC 9293 3.10.7.4 first: sequence number check */
    if (!seq_acceptable(t, seq, seglen)) {
        if (seg->flags & WIRE_TCP_SYN) {
            tcp_challenge_ack(ctx, t); /* RFC 5961 4.2: whatever its sequence number */
        } else if (!(seg->flags & WIRE_TCP_RST)) {
            if (t->state == TCP_TIME_WAIT && (seg->flags & WIRE_TCP_FIN))
                tcp_enter_time_wait(ctx, t); /* retransmitted FIN: restart 2MSL */
            if (len && SEQ_LEQ(seq + len, t->rcv_nxt))
                dsack_note(t, seq, seq + len); /* all of it arrived before (RFC 2883) */
            tcp_send_ack_now(ctx, t);
        }
        STAT_INC(&ctx->net.stats, drop_tcp_out_of_window);
        return 1;
    }
    tcp_idle_touch(ctx, t);
    if (t->ts_ok && seg->opt.has_ts && SEQ_LEQ(seq, t->last_ack_sent)) {
        t->ts_recent = seg->opt.ts_val; /* RFC 7323 4.3 */
        t->ts_recent_ms = ctx->net.now_ms;
    }

    /* second: RST (RFC 5961 3.2: exact match resets, in-window gets a challenge ACK) */
    if (seg->flags & WIRE_TCP_RST) {
        if (seq != t->rcv_nxt) {
            tcp_challenge_ack(ctx, t);
            return 1;
        }
        STAT_INC(&ctx->net.stats, rst_rx);
        int err = (t->state == TCP_CLOSING || t->state == TCP_LAST_ACK)
                      ? 0
                      : (t->state == TCP_SYN_RECEIVED && !t->listener ? ECONNREFUSED : ECONNRESET);
        tcp_conn_done(ctx, t, err);
        return 1;
    }
    /* fourth: SYN in a synchronized state (RFC 5961 4.2): challenge ACK */
    if (seg->flags & WIRE_TCP_SYN) {
        tcp_challenge_ack(ctx, t);
        return 1;
    }
    return 0;
}

/* Fifth: the ACK field (handshake completion, ACK processing, the send window, FIN
 * acknowledged in the closing states); 1: the segment ends here. */
static int input_ack(struct tcp_layer *ctx, struct tcb *t, const uint8_t src_mac[6],
                     const struct wire_ipv4 *ip, const struct wire_tcp *seg, uint32_t seglen)
{
    const uint32_t seq = seg->seq;
    /* fifth: the ACK field */
    if (!(seg->flags & WIRE_TCP_ACK)) {
        STAT_INC(&ctx->net.stats, drop_tcp_bad_segment);
        return 1;
    }
    if (t->state == TCP_SYN_RECEIVED) {
        if (SEQ_LT(seg->ack, t->snd_una) || SEQ_GT(seg->ack, t->snd_max) ||
            (seg->ack == t->snd_una && t->snd_una == t->iss)) {
            tcp_send_rst_for(ctx, src_mac, ip, seg);
            return 1;
        }
        if (t->rto_backoff == 0 && t->rto_armed)
            tcp_rtt_sample(t, (uint32_t)(ctx->net.now_ms - (t->rto_expire_ms - t->rto_ms)));
        t->snd_wnd = (uint32_t)seg->win << t->snd_wscale;
        t->snd_wl1 = seq;
        t->snd_wl2 = seg->ack;
        if (SEQ_GT(seg->ack, t->snd_una))
            tcp_ack_advance(ctx, t, seg->ack);
        if (passive_established(ctx, t) < 0)
            return 1;
        if (t->pend & (TCB_P_FIN | TCB_P_DATA))
            tcp_schedule(ctx, t, TCB_P_DATA);
    } else if (t->state != TCP_TIME_WAIT) {
        if (SEQ_GT(seg->ack, t->snd_max)) {
            /* acks something not yet sent */
            tcp_send_ack_now(ctx, t);
            STAT_INC(&ctx->net.stats, drop_tcp_bad_segment);
            return 1;
        }
        uint32_t wnd_before = t->snd_wnd;
        ack_received(ctx, t, seg, seglen);
        /* window update (RFC 9293 3.10.7.4, SND.WL1/SND.WL2 rule) */
        if (SEQ_LT(t->snd_wl1, seq) || (t->snd_wl1 == seq && SEQ_LEQ(t->snd_wl2, seg->ack))) {
            t->snd_wnd = (uint32_t)seg->win << t->snd_wscale;
            t->snd_wl1 = seq;
            t->snd_wl2 = seg->ack;
        }
        if (t->snd_wnd > wnd_before && wnd_before == 0)
            t->rto_backoff = 0; /* the zero window opened: the persist backoff ends */
        int fin_acked = t->fin_sent && SEQ_GT(t->snd_una, t->fin_seq);
        switch (t->state) {
        case TCP_FIN_WAIT_1:
            if (fin_acked)
                tcp_set_state(ctx, t, TCP_FIN_WAIT_2);
            break;
        case TCP_CLOSING:
            if (fin_acked) {
                tcp_enter_time_wait(ctx, t);
                return 1;
            }
            break;
        case TCP_LAST_ACK:
            if (fin_acked) {
                tcp_conn_done(ctx, t, 0);
                return 1;
            }
            break;
        default:
            break;
        }
        if ((t->pend & TCB_P_DATA) ||
            (t->snd_head_seq + mtcp_bytering_used(&t->snd) != t->snd_nxt && !t->fin_sent))
            tcp_schedule(ctx, t, TCB_P_DATA);
    }
    return 0;
}

/* Seventh and eighth: the segment's data and FIN, then the ACK it is owed. */
static void input_text(struct tcp_layer *ctx, struct tcb *t, const struct wire_tcp *seg)
{
    const uint8_t *data = seg->payload;
    uint32_t len = seg->payload_len;
    uint32_t seq = seg->seq;
    /* seventh: segment text */
    int fin = seg->flags & WIRE_TCP_FIN;
    int ack_now = ACK_LATER;
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
            dsack_note(t, seq, t->rcv_nxt); /* its first part arrived before */
            data += skip;
            len -= skip;
            seq = t->rcv_nxt;
        }
        if (t->ts_ok && seg->opt.has_ts)
            rcv_rtt_sample(ctx, t, seg->opt.ts_ecr);
        ack_now = rcv_data(ctx, t, seq, data, len, &fin);
    } else if (len) {
        ack_now = ACK_ROUND; /* data after the peer's FIN: just re-ACK */
        fin = 0;
    }

    /* eighth: FIN, now or once an earlier out-of-order FIN is reached */
    if ((fin && seq + len == t->rcv_nxt) || (t->rfin && t->rfin_seq == t->rcv_nxt))
        fin_received(ctx, t);
    else if (ack_now == ACK_EMIT)
        tcp_send_ack_now(ctx, t);
    else if (ack_now == ACK_ROUND)
        tcp_schedule(ctx, t, TCB_P_ACK);
    if (t->in_use && t->state != TCP_TIME_WAIT && t->state != TCP_CLOSED)
        tcp_idle_timer(ctx, t);
}

void tcp_input(struct net_layer *n, const uint8_t src_mac[6], const struct wire_ipv4 *ip,
               unsigned frame_flags)
{
    struct tcp_layer *ctx = tcp_of_net(n);
    struct wire_tcp seg;
    int verify = !(frame_flags & (IO_FRAME_CSUM_PARTIAL | IO_FRAME_CSUM_VALID));
    mtcp_drop_t r = wire_tcp_parse(ip->payload, ip->payload_len, ip->src, ip->dst, verify, &seg);
    if (r) {
        STAT_DROP(&ctx->net.stats, r);
        return;
    }
    STAT_INC(&ctx->net.stats, tcp_segs_rx);
    uint8_t ctl = seg.flags & (WIRE_TCP_SYN | WIRE_TCP_ACK | WIRE_TCP_RST);
    struct tcb *t = flow_lookup(ctx, ip->dst, seg.dport, ip->src, seg.sport);
    if (!t && !(t = input_no_flow(ctx, src_mac, ip, &seg, ctl)))
        return;
    if (input_special_state(ctx, t, src_mac, ip, &seg, ctl))
        return;
    uint32_t seglen =
        seg.payload_len + !!(seg.flags & WIRE_TCP_SYN) + !!(seg.flags & WIRE_TCP_FIN);
    if (input_checks(ctx, t, &seg, ctl, seglen) || input_ack(ctx, t, src_mac, ip, &seg, seglen))
        return;
    input_text(ctx, t, &seg);
}
