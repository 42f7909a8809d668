/* Test support: the congestion control of tcp_cc.c on a synthetic ACK clock, with no
 * packets and no threads, so that a test can compare its window over time with the
 * curves of RFC 9438 and RFC 9406 deterministically. The real functions run on a real
 * TCB; only the clock and the ACKs are made up. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "tcp.h"

int mtcp_cc_simulate(const char *algo, uint32_t mss, uint32_t init_cwnd_segs,
                     const uint32_t *rtt_us, int rounds, int loss_round, uint32_t *cwnd_out,
                     uint32_t *ssthresh_out, uint64_t *time_us_out, uint64_t *hystart_exits)
{
    int cc = algo ? tcp_cc_from_name(algo, strlen(algo)) : -1;
    if (cc < 0 || mss < 64 || init_cwnd_segs == 0 || rounds < 0 || (rounds && !rtt_us)) {
        errno = EINVAL;
        return -1;
    }
    struct tcp_layer *ctx = calloc(1, sizeof(*ctx));
    struct tcb *t = calloc(1, sizeof(*t));
    if (!ctx || !t) {
        free(ctx);
        free(t);
        errno = ENOMEM;
        return -1;
    }
    t->mss = (uint16_t)mss;
    t->cc_algo = (uint8_t)cc;
    t->cwnd = init_cwnd_segs * mss;
    t->ssthresh = UINT32_MAX;
    t->snd_una = t->snd_max = 1000;
    ctx->net.now_us = 1000000;
    ctx->net.now_ms = ctx->net.now_us / 1000;
    tcp_cc_init(t);
    t->snd_max = t->snd_una + t->cwnd;
    for (int r = 0; r < rounds; r++) {
        uint32_t rtt = rtt_us[r] ? rtt_us[r] : 1;
        t->srtt_us = rtt;
        if (r == loss_round) {
            /* one loss, repaired by the end of recovery: cwnd = ssthresh (RFC 6937) */
            t->ssthresh = tcp_cc_ssthresh(t);
            t->cwnd = t->ssthresh;
        }
        /* a round: the window's worth of ACKs, one per SMSS, evenly over one RTT; the
         * sender keeps cwnd in flight (it always has data) */
        uint32_t n = t->cwnd / mss ? t->cwnd / mss : 1;
        for (uint32_t j = 0; j < n; j++) {
            ctx->net.now_us += rtt / n;
            ctx->net.now_ms = ctx->net.now_us / 1000;
            uint32_t flight = t->snd_max - t->snd_una;
            t->last_rtt_us = rtt;
            t->max_flight = flight; /* the sender keeps cwnd in flight: cwnd-limited */
            t->is_cwnd_limited = 1;
            t->snd_una += mss;
            tcp_cc_on_ack(ctx, t, mss, flight);
            if (SEQ_LT(t->snd_max, t->snd_una + t->cwnd))
                t->snd_max = t->snd_una + t->cwnd;
        }
        if (cwnd_out)
            cwnd_out[r] = t->cwnd;
        if (ssthresh_out)
            ssthresh_out[r] = t->ssthresh;
        if (time_us_out)
            time_us_out[r] = ctx->net.now_us - 1000000u;
    }
    if (hystart_exits)
        *hystart_exits = ctx->net.stats.v[MTCP_STAT_hystart_exits];
    free(t);
    free(ctx);
    return rounds;
}
