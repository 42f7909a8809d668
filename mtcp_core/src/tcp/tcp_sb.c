/* The sender's loss detection and recovery for SACK connections, as modern Linux does it:
 * a scoreboard of what is in flight with each burst's transmit time; RACK-TLP (RFC 8985)
 * marks segments lost by time (a segment sent before one that was delivered is lost once
 * RACK.rtt + the reordering window have passed since it was sent), a reordering timer
 * for what is not yet overdue, and one tail loss probe per episode; pipe (RFC 6675) and
 * Proportional Rate Reduction (RFC 6937, PRR-SSRB) pace what goes out during recovery;
 * D-SACKs (RFC 2883) adapt the reordering window and undo a reduction whose
 * retransmissions all proved spurious (RFC 3708). Connections without SACK keep
 * NewReno's duplicate-ACK recovery (tcp_in.c). */
#include <string.h>

#include "tcp.h"

#define NOW_US(ctx) ((uint32_t)(ctx)->net.now_us)
#define TIME_GT(a, b) ((int32_t)((uint32_t)(a) - (uint32_t)(b)) > 0)
#define TCP_WCDELACKT_MS 200u       /* RFC 8985 7.2: worst-case delayed-ACK time */

/* ---------------------------------------------------------------- scoreboard */

static void sb_recount(struct tcb *t)
{
    uint32_t lost = 0, sacked = 0, retrans = 0;
    for (uint8_t i = 0; i < t->sb_n; i++) {
        uint32_t len = t->sb[i].end - t->sb[i].start;
        if (t->sb[i].flags & TCP_SB_SACKED)
            sacked += len;
        else if (t->sb[i].flags & TCP_SB_LOST)
            lost += len;
        else if (t->sb[i].flags & TCP_SB_RETRANS)
            retrans += len;
    }
    t->lost_bytes = lost;
    t->sacked_bytes_sb = sacked;
    t->retrans_bytes = retrans;
}

/* Makes room for one more entry: merges the two neighbours with the same state whose
 * transmit times are closest (the merged burst keeps the later time: RACK then waits
 * longer for the earlier part, never less). Returns -1 when no two neighbours match. */
static int sb_compact(struct tcb *t)
{
    int best = -1;
    uint32_t gap = UINT32_MAX;
    for (int i = 0; i + 1 < t->sb_n; i++) {
        if (t->sb[i].flags != t->sb[i + 1].flags)
            continue;
        uint32_t g = t->sb[i + 1].xmit_us - t->sb[i].xmit_us;
        if ((int32_t)g < 0)
            g = (uint32_t)-(int32_t)g;
        if (g < gap) {
            gap = g;
            best = i;
        }
    }
    if (best < 0)
        return -1;
    struct tcp_sb_seg *a = &t->sb[best], *b = &t->sb[best + 1];
    a->end = b->end;
    if (TIME_GT(b->xmit_us, a->xmit_us))
        a->xmit_us = b->xmit_us;
    memmove(b, b + 1, (size_t)(t->sb_n - best - 2) * sizeof(*b));
    t->sb_n--;
    return 0;
}

/* An entry boundary at seq (inside [SND.UNA, SND.MAX)). Returns the index of the entry
 * that starts at seq, or -1 when the table is full (the caller stays coarse). */
static int sb_split(struct tcb *t, uint32_t seq)
{
    for (int i = 0; i < t->sb_n; i++) {
        struct tcp_sb_seg *e = &t->sb[i];
        if (e->start == seq)
            return i;
        if (SEQ_LT(e->start, seq) && SEQ_LT(seq, e->end)) {
            if (t->sb_n == TCP_SB_MAX && sb_compact(t) < 0)
                return -1;
            /* compaction may have moved or merged this entry: look again */
            for (i = 0; i < t->sb_n; i++)
                if (SEQ_LT(t->sb[i].start, seq) && SEQ_LT(seq, t->sb[i].end))
                    break;
            if (i == t->sb_n)
                return -1;
            e = &t->sb[i];
            memmove(e + 2, e + 1, (size_t)(t->sb_n - i - 1) * sizeof(*e));
            e[1] = e[0];
            e[0].end = seq;
            e[1].start = seq;
            t->sb_n++;
            return i + 1;
        }
    }
    return -1;
}

/* [seq, seq + len) went out now: new data joins the log (extending the last entry when it
 * went out in the same round), a retransmission refreshes its entries' time. */
void tcp_sb_on_send(struct tcp_layer *ctx, struct tcb *t, uint32_t seq, uint32_t len)
{
    if (len == 0)
        return;
    uint32_t now = NOW_US(ctx);
    uint32_t end = seq + len;
    if (t->in_recovery)
        t->prr_out += len;
    if (SEQ_LT(seq, t->snd_max)) {
        /* a retransmission (the part of it below SND.MAX) */
        uint32_t rend = SEQ_LT(end, t->snd_max) ? end : t->snd_max;
        if (SEQ_LT(seq, t->snd_una))
            seq = t->snd_una;
        if (SEQ_LT(seq, rend)) {
            sb_split(t, seq);
            sb_split(t, rend);
            for (uint8_t i = 0; i < t->sb_n; i++) {
                struct tcp_sb_seg *e = &t->sb[i];
                if (SEQ_LEQ(e->end, seq) || SEQ_GEQ(e->start, rend) ||
                    (e->flags & TCP_SB_SACKED))
                    continue;
                e->flags = (uint8_t)((e->flags & ~TCP_SB_LOST) | TCP_SB_RETRANS | TCP_SB_EVER);
                e->xmit_us = now;
                if (t->undo_ok)
                    t->undo_retrans += (e->end - e->start + t->mss - 1) / t->mss;
            }
        }
        if (SEQ_LEQ(end, t->snd_max)) {
            sb_recount(t);
            return;
        }
        seq = t->snd_max;
    }
    /* new data past SND.MAX (the caller moves SND.MAX after this) */
    if (t->sb_n) {
        struct tcp_sb_seg *last = &t->sb[t->sb_n - 1];
        if (last->end == seq && last->flags == 0 && last->xmit_us == now) {
            last->end = end;
            return;
        }
    }
    if (t->sb_n == TCP_SB_MAX && sb_compact(t) < 0) {
        /* all neighbours differ: extend the last entry, whatever it is */
        struct tcp_sb_seg *last = &t->sb[t->sb_n - 1];
        last->end = end;
        last->xmit_us = now;
        return;
    }
    struct tcp_sb_seg *e = &t->sb[t->sb_n++];
    e->start = seq;
    e->end = end;
    e->xmit_us = now;
    e->flags = 0;
}

void tcp_sb_reset(struct tcb *t)
{
    t->sb_n = 0;
    t->lost_bytes = t->sacked_bytes_sb = t->retrans_bytes = 0;
}

/* RFC 6675 pipe: bytes outstanding that are neither SACKed nor lost (a retransmission
 * counts once, as Linux's packets_out - sacked_out - lost_out + retrans_out). */
uint32_t tcp_pipe(const struct tcb *t)
{
    uint32_t flight = t->snd_max - t->snd_una;
    uint32_t gone = t->sacked_bytes_sb + t->lost_bytes;
    return flight > gone ? flight - gone : 0;
}

/* The first lost entry not yet retransmitted: its start and length, 0 when none. */
uint32_t tcp_sb_next_lost(const struct tcb *t, uint32_t *seq)
{
    for (uint8_t i = 0; i < t->sb_n; i++) {
        if ((t->sb[i].flags & (TCP_SB_LOST | TCP_SB_SACKED)) == TCP_SB_LOST) {
            *seq = t->sb[i].start;
            return t->sb[i].end - t->sb[i].start;
        }
    }
    return 0;
}

/* ---------------------------------------------------------------- RACK */

/* RFC 8985 6.2 step 4 */
static uint32_t rack_reo_wnd_us(const struct tcb *t)
{
    if (!t->rack_reord) {
        if (t->in_recovery || t->in_loss)
            return 0;
        if (t->sacked_bytes_sb >= TCP_DUPTHRESH * tcp_seg_max(t))
            return 0;
    }
    uint64_t w = (uint64_t)(t->rack_min_rtt_us / 4) * (t->rack_reo_mult ? t->rack_reo_mult : 1);
    if (w > t->srtt_us)
        w = t->srtt_us;
    return (uint32_t)w;
}

/* RFC 8985 6.2 steps 1-2 for one delivered entry. */
static void rack_update(struct tcp_layer *ctx, struct tcb *t, const struct tcp_sb_seg *e)
{
    uint32_t now = NOW_US(ctx);
    uint32_t rtt = now - e->xmit_us;
    if ((int32_t)rtt < 0)
        rtt = 0;
    if (e->flags & TCP_SB_EVER) {
        /* an ACK for the original transmission, not the retransmission, would give a
         * short sample: ignore samples below the minimum RTT */
        if (t->rack_min_rtt_at_ms && rtt < t->rack_min_rtt_us)
            return;
    } else {
        uint32_t now_ms = (uint32_t)ctx->net.now_ms;
        if (!t->rack_min_rtt_at_ms || rtt < t->rack_min_rtt_us ||
            now_ms - t->rack_min_rtt_at_ms > RACK_MIN_RTT_WIN_MS) {
            t->rack_min_rtt_us = rtt;
            t->rack_min_rtt_at_ms = now_ms ? now_ms : 1; /* 0: no sample yet */
        }
    }
    t->rack_rtt_us = rtt;
    if (!t->rack_ok) {
        t->rack_xmit_us = e->xmit_us;
        t->rack_end_seq = e->end;
        t->rack_ok = 1;
    } else if (TIME_GT(e->xmit_us, t->rack_xmit_us) ||
               (e->xmit_us == t->rack_xmit_us && SEQ_GT(e->end, t->rack_end_seq))) {
        t->rack_xmit_us = e->xmit_us;
        t->rack_end_seq = e->end;
    }
}

/* RFC 8985 6.2 step 3: a delivered segment below the highest delivered one that was
 * never retransmitted was reordered by the network. */
static void rack_reorder_check(struct tcb *t, const struct tcp_sb_seg *e)
{
    if (SEQ_LT(e->end, t->rack_fack)) {
        if (!(e->flags & TCP_SB_EVER)) {
            t->rack_reord = 1;
            uint32_t segs = (t->rack_fack - e->end) / t->mss;
            if (segs > t->reordering)
                t->reordering = segs;
        }
    } else {
        t->rack_fack = e->end;
    }
}

/* RFC 8985 6.2 step 5: marks lost what was sent before the RACK segment and is overdue.
 * Returns the microseconds until the next one becomes overdue (0: none). Sets *newly
 * to the count of entries marked. */
static uint32_t rack_detect(struct tcp_layer *ctx, struct tcb *t, int *newly)
{
    *newly = 0;
    if (!t->rack_ok)
        return 0;
    uint32_t now = NOW_US(ctx);
    uint32_t reo = rack_reo_wnd_us(t);
    uint32_t timeout = 0;
    for (uint8_t i = 0; i < t->sb_n; i++) {
        struct tcp_sb_seg *e = &t->sb[i];
        if (e->flags & (TCP_SB_SACKED | TCP_SB_LOST))
            continue;
        int before = TIME_GT(t->rack_xmit_us, e->xmit_us) ||
                     (t->rack_xmit_us == e->xmit_us && SEQ_GT(t->rack_end_seq, e->end));
        if (!before)
            continue;
        int32_t remaining = (int32_t)(e->xmit_us + t->rack_rtt_us + reo - now);
        if (remaining <= 0) {
            e->flags = (uint8_t)((e->flags & ~TCP_SB_RETRANS) | TCP_SB_LOST);
            uint32_t segs = (e->end - e->start + t->mss - 1) / t->mss;
            t->lost_total += segs;
            STAT_ADD(&ctx->net.stats, rack_marked_lost, segs);
            (*newly)++;
        } else if ((uint32_t)remaining > timeout) {
            timeout = (uint32_t)remaining;
        }
    }
    if (*newly)
        sb_recount(t);
    return timeout;
}

/* ---------------------------------------------------------------- recovery */

static void recovery_enter(struct tcp_layer *ctx, struct tcb *t)
{
    t->ssthresh = tcp_cc_ssthresh(t);
    t->recover = t->snd_max;
    t->in_recovery = 1;
    t->prr_delivered = 0;
    t->prr_out = 0;
    t->recover_fs = t->snd_max - t->snd_una; /* RFC 6937: RecoverFS = snd.nxt - snd.una */
    if (t->recover_fs == 0)
        t->recover_fs = 1;
    t->undo_ok = 1;
    t->undo_marker = t->snd_una;
    t->undo_retrans = 0;
    STAT_INC(&ctx->net.stats, recoveries);
}

static void recovery_exit(struct tcb *t)
{
    t->in_recovery = 0;
    if (t->cwnd > t->ssthresh || t->prr_delivered)
        t->cwnd = t->ssthresh; /* RFC 6937: cwnd = ssthresh at the end of recovery */
    if (t->rack_reo_persist && --t->rack_reo_persist == 0)
        t->rack_reo_mult = 1; /* RFC 8985 6.2 step 4: back to the default window */
}

/* RFC 6937 on each ACK in recovery: cwnd = pipe + sndcnt. */
static void prr_update(struct tcb *t, uint32_t delivered)
{
    t->prr_delivered += delivered;
    uint32_t pipe = tcp_pipe(t);
    int64_t sndcnt;
    if (pipe > t->ssthresh) {
        /* proportional part: CEIL(prr_delivered * ssthresh / RecoverFS) - prr_out */
        uint64_t want = ((uint64_t)t->prr_delivered * t->ssthresh + t->recover_fs - 1) /
                        t->recover_fs;
        sndcnt = (int64_t)want - t->prr_out;
    } else {
        /* slow start reduction bound (PRR-SSRB) */
        int64_t limit = (int64_t)t->prr_delivered - t->prr_out;
        if (limit < (int64_t)delivered)
            limit = delivered;
        limit += t->mss;
        sndcnt = (int64_t)t->ssthresh - pipe;
        if (sndcnt > limit)
            sndcnt = limit;
    }
    if (sndcnt < 0)
        sndcnt = 0;
    /* whole segments, as Linux counts PRR in packets (a byte budget short of a segment
     * would send nothing and, once the ACKs dry up, wait for the RTO); and the first
     * retransmission goes at once (Linux: "force a fast retransmit upon entering") */
    uint32_t seg = tcp_seg_max(t);
    if (sndcnt % seg)
        sndcnt += seg - sndcnt % seg;
    if (t->prr_out == 0 && sndcnt < seg)
        sndcnt = seg;
    t->cwnd = pipe + (uint32_t)sndcnt;
}

/* A D-SACK for [l, r) (RFC 2883): the receiver got those bytes twice. */
static void dsack_received(struct tcp_layer *ctx, struct tcb *t, uint32_t l, uint32_t r)
{
    STAT_INC(&ctx->net.stats, dsacks_rx);
    /* RFC 8985 6.2 step 4: widen the reordering window once per round trip */
    if (!t->rack_dsack_valid || SEQ_GEQ(t->snd_una, t->rack_dsack_round)) {
        if (t->rack_reo_mult < 255)
            t->rack_reo_mult++;
        t->rack_dsack_round = t->snd_max;
        t->rack_dsack_valid = 1;
    }
    t->rack_reo_persist = 16;
    if (t->tlp_out && t->tlp_retrans && SEQ_LEQ(t->tlp_end_seq, r) &&
        SEQ_LT(l, t->tlp_end_seq)) {
        /* the probe's original had arrived: no loss (RFC 8985 7.4.2) */
        t->tlp_out = 0;
    }
    if (!t->undo_ok || SEQ_LT(l, t->undo_marker))
        return;
    if (t->undo_retrans == 0)
        return; /* nothing of this episode was retransmitted: a network duplicate */
    uint32_t segs = (r - l + t->mss - 1) / t->mss;
    if (segs > t->undo_retrans)
        segs = t->undo_retrans;
    STAT_ADD(&ctx->net.stats, retrans_spurious, segs);
    t->undo_retrans -= segs;
    if (t->undo_retrans == 0) {
        /* every retransmission of this episode reached a receiver that had the
         * original: the reduction was spurious (RFC 3708 2, Linux's tcp_try_undo_dsack) */
        tcp_cc_undo(t);
        t->undo_ok = 0;
        if (t->in_recovery) {
            t->in_recovery = 0;
            for (uint8_t i = 0; i < t->sb_n; i++)
                t->sb[i].flags &= (uint8_t)~TCP_SB_LOST;
            sb_recount(t);
        }
        t->in_loss = 0;
        STAT_INC(&ctx->net.stats, undo_dsack);
    }
}

/* D-SACK (RFC 2883 4): 1 when the first block reports a duplicate (then it is not a
 * SACK block). */
static uint8_t sack_dsack_first(struct tcp_layer *ctx, struct tcb *t, const struct wire_tcp *seg)
{
    uint32_t ack = seg->ack;
    /* the first block lies below the cumulative ACK or inside the second block */
    uint8_t first = 0;
    if (seg->opt.nsack) {
        uint32_t l0 = seg->opt.sack[0].left, r0 = seg->opt.sack[0].right;
        if (SEQ_LT(l0, r0) &&
            (SEQ_LEQ(r0, ack) || (seg->opt.nsack > 1 && SEQ_LEQ(seg->opt.sack[1].left, l0) &&
                                  SEQ_LEQ(r0, seg->opt.sack[1].right)))) {
            first = 1;
            if (SEQ_GEQ(l0, t->snd_una - (1u << 30)) && SEQ_LEQ(r0, t->snd_max))
                dsack_received(ctx, t, l0, r0);
        }
    }
    return first;
}

/* The cumulative part of the ACK: entries below it are delivered (RACK) and dropped;
 * the oldest never retransmitted one gives the RTT sample (as Linux). */
static void sack_cumulative(struct tcp_layer *ctx, struct tcb *t, uint32_t ack,
                            uint32_t *delivered, uint32_t *rtt_xmit, int *have_rtt)
{
    if (SEQ_GT(ack, t->snd_una)) {
        for (uint8_t i = 0; i < t->sb_n && SEQ_LT(t->sb[i].start, ack); i++) {
            struct tcp_sb_seg *e = &t->sb[i];
            if (e->flags & TCP_SB_SACKED)
                continue;
            uint32_t end = SEQ_LT(ack, e->end) ? ack : e->end;
            *delivered += end - e->start;
            rack_update(ctx, t, e);
            rack_reorder_check(t, e);
            if (!(e->flags & TCP_SB_EVER) && !*have_rtt) {
                *rtt_xmit = e->xmit_us; /* the oldest newly acknowledged, as Linux */
                *have_rtt = 1;
            }
        }
        tcp_sb_drop_acked(t, ack);
    }
}

/* The SACK blocks after the first D-SACK one: entries they cover become SACKED
 * (delivered, RACK); the newest never retransmitted one gives the SACK RTT. */
static void sack_blocks(struct tcp_layer *ctx, struct tcb *t, const struct wire_tcp *seg,
                        uint8_t first, uint32_t *delivered, uint32_t *sack_rtt_xmit,
                        int *sack_rtt)
{
    uint32_t ack = seg->ack;
    /* SACK blocks, in sequence order (the receiver sends the newest first): a block
     * below one already processed in this ACK is not reordering */
    struct wire_sack_block blk[WIRE_TCP_MAX_SACK];
    uint8_t nblk = 0;
    for (uint8_t b = first; b < seg->opt.nsack && nblk < WIRE_TCP_MAX_SACK; b++) {
        uint8_t k = nblk++;
        while (k > 0 && SEQ_GT(blk[k - 1].left, seg->opt.sack[b].left)) {
            blk[k] = blk[k - 1];
            k--;
        }
        blk[k] = seg->opt.sack[b];
    }
    for (uint8_t b = 0; b < nblk; b++) {
        uint32_t l = blk[b].left, r = blk[b].right;
        uint32_t lo = SEQ_GT(ack, t->snd_una) ? ack : t->snd_una;
        if (!SEQ_LT(l, r) || SEQ_LEQ(r, lo) || SEQ_GT(r, t->snd_max))
            continue;
        if (SEQ_LT(l, lo))
            l = lo;
        sb_split(t, l);
        sb_split(t, r);
        for (uint8_t i = 0; i < t->sb_n; i++) {
            struct tcp_sb_seg *e = &t->sb[i];
            if (SEQ_LT(e->start, l) || SEQ_GT(e->end, r) || (e->flags & TCP_SB_SACKED))
                continue;
            *delivered += e->end - e->start;
            rack_update(ctx, t, e);
            rack_reorder_check(t, e);
            if (!(e->flags & TCP_SB_EVER) &&
                (!*sack_rtt || TIME_GT(e->xmit_us, *sack_rtt_xmit))) {
                *sack_rtt_xmit = e->xmit_us;
                *sack_rtt = 1;
            }
            e->flags = (uint8_t)((e->flags & ~(TCP_SB_LOST | TCP_SB_RETRANS)) | TCP_SB_SACKED);
        }
    }
}

/* SND.UNA moves to ack: the TLP episode's end (RFC 8985 7.4), the end of loss recovery,
 * congestion control's growth; or the duplicate ACK counted. */
static void sack_advance(struct tcp_layer *ctx, struct tcb *t, uint32_t ack,
                         uint32_t prior_flight, uint32_t delivered)
{
    if (SEQ_GT(ack, t->snd_una)) {
        uint32_t acked = ack - t->snd_una;
        tcp_ack_advance(ctx, t, ack);
        if (t->tlp_out && SEQ_GEQ(ack, t->tlp_end_seq)) {
            /* RFC 8985 7.4: the episode ends; a retransmitted probe whose original was
             * not reported as a duplicate repaired a real loss: reduce the window */
            t->tlp_out = 0;
            if (t->tlp_retrans && !t->in_recovery && !t->in_loss) {
                t->ssthresh = tcp_cc_ssthresh(t);
                t->cwnd = t->ssthresh;
                t->undo_ok = 0;
                STAT_INC(&ctx->net.stats, tlp_recoveries);
            }
        }
        if (t->in_loss && SEQ_GEQ(ack, t->recover))
            t->in_loss = 0;
        if (t->in_recovery && SEQ_GEQ(ack, t->recover))
            recovery_exit(t);
        else if (!t->in_recovery)
            tcp_cc_on_ack(ctx, t, acked, prior_flight);
    } else if (ack == t->snd_una && prior_flight && delivered) {
        STAT_INC(&ctx->net.stats, dup_acks_rx);
    }
}

/* RACK's loss detection and what follows from it, after an ACK (delivered: the bytes it
 * delivered) or the reordering timer (0): newly lost data starts fast recovery unless one
 * runs already, PRR paces recovery's sending, lost data is scheduled for retransmission.
 * Returns RACK's reordering wait in microseconds (0: none). */
static inline uint32_t rack_react(struct tcp_layer *ctx, struct tcb *t, uint32_t delivered)
{
    int newly;
    uint32_t reo_us = rack_detect(ctx, t, &newly);
    if (newly && !t->in_recovery && !t->in_loss) {
        recovery_enter(ctx, t);
        STAT_INC(&ctx->net.stats, fast_retransmits);
    }
    if (t->in_recovery)
        prr_update(t, delivered);
    if (t->lost_bytes)
        tcp_schedule(ctx, t, TCB_P_DATA);
    return reo_us;
}

/* The ACK of a SACK connection: scoreboard, RACK, TLP, PRR and congestion control.
 * Runs before the window update; the caller moved nothing yet. */
void tcp_sack_ack(struct tcp_layer *ctx, struct tcb *t, const struct wire_tcp *seg)
{
    uint32_t ack = seg->ack;
    uint32_t prior_una = t->snd_una;
    uint32_t prior_flight = t->snd_max - t->snd_una;
    uint32_t delivered = 0;
    uint32_t rtt_xmit = 0;
    int have_rtt = 0;
    t->last_rtt_us = 0;
    t->lt_extra = 0;
    if (!t->rack_fack_ok || SEQ_LT(t->rack_fack, t->snd_una)) {
        t->rack_fack = t->snd_una; /* nothing above SND.UNA delivered yet */
        t->rack_fack_ok = 1;
    }

    uint8_t first = sack_dsack_first(ctx, t, seg);
    sack_cumulative(ctx, t, ack, &delivered, &rtt_xmit, &have_rtt);
    uint32_t sack_rtt_xmit = 0;
    int sack_rtt = 0;
    sack_blocks(ctx, t, seg, first, &delivered, &sack_rtt_xmit, &sack_rtt);
    /* reneging (RFC 2018 8): the peer dropped what it SACKed; forget every SACK */
    if (t->sb_n && (t->sb[0].flags & TCP_SB_SACKED) && SEQ_GT(ack, prior_una)) {
        for (uint8_t i = 0; i < t->sb_n; i++)
            t->sb[i].flags &= (uint8_t)~TCP_SB_SACKED;
    }
    sb_recount(t);

    if (have_rtt || sack_rtt) {
        uint32_t x = have_rtt ? rtt_xmit : sack_rtt_xmit;
        uint32_t rtt = NOW_US(ctx) - x;
        t->last_rtt_us = rtt ? rtt : 1;
        if (have_rtt)
            tcp_rtt_sample_us(t, t->last_rtt_us);
    }

    sack_advance(ctx, t, ack, prior_flight, delivered);

    uint32_t reo_us = rack_react(ctx, t, delivered);
    /* the timer tcp_ack_advance restarted was chosen before this ACK ended recovery or a
     * probe episode: choose again (a PTO where one is allowed now) */
    if (SEQ_GT(t->snd_una, prior_una) && t->snd_una != t->snd_max)
        tcp_rto_arm(ctx, t);
    if (reo_us && t->snd_una != t->snd_max)
        tcp_reo_arm(ctx, t, (reo_us + 999u) / 1000u);
}

/* RACK's reordering timer fired (RFC 8985 6.3). */
void tcp_rack_timeout(struct tcp_layer *ctx, struct tcb *t)
{
    STAT_INC(&ctx->net.stats, rack_reo_timeouts);
    uint32_t reo_us = rack_react(ctx, t, 0);
    tcp_rto_arm(ctx, t);
    if (reo_us)
        tcp_reo_arm(ctx, t, (reo_us + 999u) / 1000u);
}

/* ---------------------------------------------------------------- TLP */

/* RFC 8985 7.2: may a probe timer run now? One probe per episode, not during recovery. */
int tcp_tlp_allowed(const struct tcb *t)
{
    return t->sack_ok && !t->tlp_out && !t->in_recovery && !t->in_loss && t->srtt_us &&
           t->state >= TCP_ESTABLISHED && t->state != TCP_TIME_WAIT && t->sb_n;
}

/* PTO = 2 SRTT, plus WCDelAckT when one segment is in flight (the receiver may hold its
 * ACK that long), plus Linux's two ticks of timer slack otherwise. */
uint64_t tcp_pto_ms(const struct tcb *t)
{
    uint64_t pto = (2ull * t->srtt_us + 999u) / 1000u;
    if (t->snd_max - t->snd_una <= tcp_seg_max(t))
        pto += TCP_WCDELACKT_MS;
    else
        pto += 2;
    return pto;
}

/* The probe timer fired (RFC 8985 7.3): new data if the window allows it, else the last
 * segment again; then the RTO takes over. */
void tcp_tlp_fire(struct tcp_layer *ctx, struct tcb *t)
{
    uint32_t data_end = t->snd_head_seq + mtcp_bytering_used(&t->snd);
    uint32_t unsent = SEQ_GT(data_end, t->snd_max) ? data_end - t->snd_max : 0;
    uint32_t flight = t->snd_max - t->snd_una;
    STAT_INC(&ctx->net.stats, loss_probes);
    t->tlp_out = 1;
    if (unsent && !t->fin_sent && t->snd_wnd > flight) {
        uint32_t n = unsent < tcp_seg_max(t) ? unsent : tcp_seg_max(t);
        t->tlp_retrans = 0;
        t->tlp_end_seq = t->snd_max + n;
        t->lt_extra = 1; /* one segment past cwnd */
        tcp_schedule(ctx, t, TCB_P_DATA);
        tcp_rto_arm(ctx, t);
        return;
    }
    /* the highest segment not SACKed */
    uint32_t seq = t->snd_una;
    for (int i = t->sb_n - 1; i >= 0; i--) {
        if (!(t->sb[i].flags & TCP_SB_SACKED)) {
            uint32_t len = t->sb[i].end - t->sb[i].start;
            uint32_t back = len < tcp_seg_max(t) ? len : tcp_seg_max(t);
            seq = t->sb[i].end - back;
            break;
        }
    }
    if (t->fin_sent && SEQ_GEQ(seq, t->fin_seq))
        seq = t->fin_seq;
    t->tlp_retrans = 1;
    t->tlp_end_seq = t->snd_max;
    if (tcp_retransmit_from(ctx, t, seq, 0) <= 0)
        t->tlp_out = 0;
    tcp_rto_arm(ctx, t);
}

/* ---------------------------------------------------------------- RTO */

/* A retransmission timeout on a SACK connection (RFC 6675 5.1, RFC 8985 6.3): every
 * segment not SACKed is lost; they go again from SND.UNA under a one-segment window.
 * A second timeout in a row forgets the SACKs too (the peer may have reneged). */
void tcp_sack_rto(struct tcp_layer *ctx, struct tcb *t)
{
    int first = !t->in_loss || t->rto_backoff <= 1;
    if (!t->in_loss) {
        t->ssthresh = tcp_cc_ssthresh(t);
        t->undo_ok = 1;
        t->undo_marker = t->snd_una;
        t->undo_retrans = 0;
    }
    t->cwnd = t->mss;
    t->in_recovery = 0;
    t->in_loss = 1;
    t->tlp_out = 0;
    t->recover = t->snd_max;
    t->bytes_acked = 0;
    for (uint8_t i = 0; i < t->sb_n; i++) {
        struct tcp_sb_seg *e = &t->sb[i];
        if (!first)
            e->flags &= (uint8_t)~TCP_SB_SACKED;
        if (!(e->flags & TCP_SB_SACKED)) {
            if (!(e->flags & TCP_SB_LOST))
                t->lost_total += (e->end - e->start + t->mss - 1) / t->mss;
            e->flags = (uint8_t)((e->flags & ~TCP_SB_RETRANS) | TCP_SB_LOST);
        }
    }
    sb_recount(t);
    tcp_schedule(ctx, t, TCB_P_DATA);
    tcp_rto_arm(ctx, t);
}
