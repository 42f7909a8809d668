/* Congestion control, pluggable per connection (tcb->cc_algo): NewReno (RFC 5681 with
 * RFC 3465 byte counting) and CUBIC (RFC 9438) with HyStart++ (RFC 9406) in slow start.
 * Windows are in bytes; times in microseconds. Loss recovery itself (RACK-TLP, PRR) is
 * in tcp_sb.c: it asks this module for the window after a congestion event and lets it
 * grow the window on ACKs outside recovery. */
#include "tcp.h"

#define CUBIC_C 0.4      /* RFC 9438 4.1 */
#define CUBIC_BETA 0.7   /* RFC 9438 4.6 */
/* RFC 9406 4.3 */
#define HS_MIN_RTT_THRESH_US 4000u
#define HS_MAX_RTT_THRESH_US 16000u
#define HS_MIN_RTT_DIVISOR 8u
#define HS_N_RTT_SAMPLE 8u
#define HS_CSS_GROWTH_DIVISOR 4u
#define HS_CSS_ROUNDS 5u

static const char *const cc_names[TCP_CC_COUNT] = {"cubic", "newreno"};

const char *tcp_cc_name(int algo)
{
    return (algo >= 0 && algo < TCP_CC_COUNT) ? cc_names[algo] : "?";
}

int tcp_cc_from_name(const char *name, size_t len)
{
    for (int i = 0; i < TCP_CC_COUNT; i++) {
        size_t n = 0;
        while (cc_names[i][n])
            n++;
        /* a trailing NUL in the caller's buffer is allowed, as setsockopt(TCP_CONGESTION) */
        while (len && name[len - 1] == 0)
            len--;
        if (len == n) {
            size_t k = 0;
            while (k < n && name[k] == cc_names[i][k])
                k++;
            if (k == n)
                return i;
        }
    }
    return -1;
}

/* cube root by Newton's method (no libm) */
static double cube_root(double x)
{
    if (x <= 0)
        return 0;
    double y = x > 1 ? x / 3 : 1;
    for (int i = 0; i < 100; i++) {
        double ny = (2 * y + x / (y * y)) / 3;
        double d = ny - y;
        y = ny;
        if (d < 1e-12 && d > -1e-12)
            break;
    }
    return y;
}

static void hystart_reset(struct tcb *t)
{
    t->hs_window_end = t->snd_max;
    t->hs_cur_min_us = UINT32_MAX;
    t->hs_last_min_us = UINT32_MAX;
    t->hs_samples = 0;
    t->hs_css_rounds = 0;
    t->hs_done = 0;
}

void tcp_cc_init(struct tcb *t)
{
    t->cub_w_max = 0;
    t->cub_epoch_ok = 0;
    t->cub_rem = 0;
    hystart_reset(t);
}

/* RFC 9406 4.2: the slow start increment for `acked` bytes: all of it in slow start,
 * a quarter in conservative slow start; leaves slow start after CSS_ROUNDS rounds of CSS. */
static uint32_t hystart(struct tcp_layer *ctx, struct tcb *t, uint32_t acked)
{
    if (t->hs_done)
        return acked;
    if (SEQ_GEQ(t->snd_una, t->hs_window_end)) {
        /* a round ended */
        t->hs_last_min_us = t->hs_cur_min_us;
        t->hs_cur_min_us = UINT32_MAX;
        t->hs_samples = 0;
        t->hs_window_end = t->snd_max;
        if (t->hs_css_rounds && ++t->hs_css_rounds > HS_CSS_ROUNDS) {
            t->ssthresh = t->cwnd; /* into congestion avoidance */
            t->hs_done = 1;
            STAT_INC(&ctx->net.stats, hystart_exits);
            return 0;
        }
    }
    if (t->last_rtt_us) {
        if (t->last_rtt_us < t->hs_cur_min_us)
            t->hs_cur_min_us = t->last_rtt_us;
        if (t->hs_samples < UINT16_MAX)
            t->hs_samples++;
    }
    if (t->hs_samples >= HS_N_RTT_SAMPLE && t->hs_cur_min_us != UINT32_MAX &&
        t->hs_last_min_us != UINT32_MAX) {
        if (!t->hs_css_rounds) {
            uint32_t th = t->hs_last_min_us / HS_MIN_RTT_DIVISOR;
            if (th < HS_MIN_RTT_THRESH_US)
                th = HS_MIN_RTT_THRESH_US;
            if (th > HS_MAX_RTT_THRESH_US)
                th = HS_MAX_RTT_THRESH_US;
            if (t->hs_cur_min_us >= t->hs_last_min_us + th) {
                t->hs_css_base_us = t->hs_cur_min_us; /* the RTT rose: CSS */
                t->hs_css_rounds = 1;
                STAT_INC(&ctx->net.stats, hystart_css);
            }
        } else if (t->hs_cur_min_us < t->hs_css_base_us) {
            t->hs_css_rounds = 0; /* a false alarm: back to slow start */
        }
    }
    return t->hs_css_rounds ? acked / HS_CSS_GROWTH_DIVISOR : acked;
}

/* RFC 9438 4.2-4.4: one ACK of `acked` bytes in congestion avoidance. */
static void cubic_ca(struct tcp_layer *ctx, struct tcb *t, uint32_t acked)
{
    uint32_t now = (uint32_t)ctx->net.now_us;
    double mss = t->mss;
    double cwnd = t->cwnd;
    if (!t->cub_epoch_ok) {
        t->cub_epoch_ok = 1;
        t->cub_epoch_us = now;
        t->cub_rem = 0;
        if (t->cub_w_max == 0)
            t->cub_w_max = t->cwnd; /* no congestion event yet: the curve starts here */
        double diff = ((double)t->cub_w_max - cwnd) / mss;
        t->cub_k_s = diff > 0 ? cube_root(diff / CUBIC_C) : 0;
        t->cub_w_est = cwnd;
    }
    double el = (double)(uint32_t)(now - t->cub_epoch_us) / 1e6;
    double rtt = (t->srtt_us ? t->srtt_us : 1000u) / 1e6;
    double wmax = t->cub_w_max / mss;
    double d = el + rtt - t->cub_k_s;
    double target = (CUBIC_C * d * d * d + wmax) * mss;
    if (target < cwnd)
        target = cwnd;
    if (target > 1.5 * cwnd)
        target = 1.5 * cwnd;
    /* Reno-friendly region (4.3) */
    double alpha = t->cub_w_est >= t->cub_w_max ? 1.0
                                                 : 3.0 * (1 - CUBIC_BETA) / (1 + CUBIC_BETA);
    t->cub_w_est += alpha * (double)acked * mss / cwnd;
    double dt = el - t->cub_k_s;
    double w_cubic = (CUBIC_C * dt * dt * dt + wmax) * mss;
    if (w_cubic < t->cub_w_est) {
        if (t->cub_w_est > cwnd)
            t->cwnd = t->cub_w_est > 4e9 ? 4000000000u : (uint32_t)t->cub_w_est;
        return;
    }
    /* concave / convex (4.4, 4.5): cwnd grows by (target - cwnd) / cwnd per SMSS acked */
    uint64_t num = (uint64_t)(target - cwnd) * acked + t->cub_rem;
    uint64_t inc = num / t->cwnd;
    t->cub_rem = (uint32_t)(num % t->cwnd);
    if (t->cwnd + inc < (1u << 30))
        t->cwnd += (uint32_t)inc;
}

/* ACK of `acked` new bytes outside recovery; flight: what was outstanding before it.
 * Slow start adds every acknowledged byte (RFC 3465 without its L limit, as Linux, for
 * the stretch ACKs of GRO receivers) up to ssthresh; then congestion avoidance. */
void tcp_cc_on_ack(struct tcp_layer *ctx, struct tcb *t, uint32_t acked, uint32_t flight)
{
    /* only while cwnd is what limits the sender (RFC 7661 4), decided when sending as
     * Linux's tcp_is_cwnd_limited: in slow start, at least half of cwnd was in flight in
     * this window; after it, a send was stopped by cwnd. (Judged per ACK from what is
     * still in flight, a batch of ACKs stopped growth half-way through the batch.) */
    (void)flight;
    int limited = t->cwnd < t->ssthresh ? t->cwnd < 2ull * t->max_flight : t->is_cwnd_limited;
    if (!limited || t->cwnd >= (1u << 30))
        return;
    if (t->cwnd < t->ssthresh) {
        uint32_t grow = t->cc_algo == TCP_CC_CUBIC ? hystart(ctx, t, acked) : acked;
        if (t->cwnd >= t->ssthresh)
            return; /* HyStart++ just ended slow start */
        uint32_t room = t->ssthresh - t->cwnd;
        uint32_t ss = grow < room ? grow : room;
        t->cwnd += ss;
        if (t->cwnd < t->ssthresh)
            return;
        acked = grow - ss;
        if (acked == 0)
            return;
    }
    if (t->cc_algo == TCP_CC_CUBIC) {
        cubic_ca(ctx, t, acked);
        return;
    }
    /* NewReno: one SMSS per cwnd of acknowledged bytes (RFC 3465 2.1, RFC 5681 eq. 3) */
    uint32_t cwnd = t->cwnd ? t->cwnd : t->mss;
    t->bytes_acked += acked;
    if (t->bytes_acked >= cwnd) {
        t->bytes_acked -= cwnd;
        if (t->bytes_acked >= cwnd)
            t->bytes_acked = 0; /* at most one SMSS per ACK, as the RFC's formula */
        t->cwnd += t->mss;
    }
}

/* A congestion event (loss detected, or an RTO): remembers what undo would restore and
 * returns the new ssthresh (RFC 5681 eq. 4 for NewReno, RFC 9438 4.6-4.7 for CUBIC). */
uint32_t tcp_cc_ssthresh(struct tcb *t)
{
    t->prior_cwnd = t->cwnd;
    t->prior_ssthresh = t->ssthresh;
    t->cub_prior_w_max = t->cub_w_max;
    t->hs_done = 1; /* slow start is over for HyStart++ */
    uint32_t floor = 2u * t->mss;
    if (t->cc_algo == TCP_CC_CUBIC) {
        uint32_t cwnd = t->cwnd;
        /* fast convergence (4.7) */
        if (t->cub_w_max && cwnd < t->cub_w_max)
            t->cub_w_max = (uint32_t)((double)cwnd * (1 + CUBIC_BETA) / 2);
        else
            t->cub_w_max = cwnd;
        t->cub_epoch_ok = 0;
        uint32_t s = (uint32_t)((double)cwnd * CUBIC_BETA);
        return s > floor ? s : floor;
    }
    uint32_t flight = t->snd_max - t->snd_una;
    uint32_t half = flight / 2;
    return half > floor ? half : floor;
}

/* The reduction proved spurious (D-SACK, RFC 3708; RFC 9438 4.9): put the window back. */
void tcp_cc_undo(struct tcb *t)
{
    if (t->prior_cwnd > t->cwnd)
        t->cwnd = t->prior_cwnd;
    if (t->prior_ssthresh > t->ssthresh || t->prior_ssthresh == UINT32_MAX)
        t->ssthresh = t->prior_ssthresh;
    if (t->cc_algo == TCP_CC_CUBIC) {
        t->cub_w_max = t->cub_prior_w_max;
        t->cub_epoch_ok = 0;
    }
}
