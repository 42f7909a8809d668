/* TCBs, the per-core flow table, state changes, ISNs, jobs from the app and the
 * timers (TIME_WAIT FIFO, RTO timing wheel). */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "../core/clock.h"
#include "../net/net.h"
#include "tcp.h"

static const char *const state_names[TCP_NSTATES] = {
    "CLOSED",      "LISTEN",     "SYN-SENT",   "SYN-RECEIVED", "ESTABLISHED", "FIN-WAIT-1",
    "FIN-WAIT-2",  "CLOSE-WAIT", "CLOSING",    "LAST-ACK",     "TIME-WAIT",
};

const char *tcp_state_name(int s)
{
    return (s >= 0 && s < TCP_NSTATES) ? state_names[s] : "?";
}

/* ---------------------------------------------------------------- flow table */

static inline uint32_t flow_hash(uint32_t laddr, uint16_t lport, uint32_t raddr, uint16_t rport)
{
    uint64_t k = ((uint64_t)raddr << 32 | laddr) ^ ((uint64_t)rport << 16 | lport) * 0x9E3779B97F4A7C15ull;
    k ^= k >> 29;
    k *= 0xBF58476D1CE4E5B9ull;
    k ^= k >> 32;
    return (uint32_t)k & (MTCP_FLOW_BUCKETS - 1);
}

struct tcb *flow_lookup(struct tcp_layer *ctx, uint32_t laddr, uint16_t lport, uint32_t raddr,
                        uint16_t rport)
{
    struct tcb *t = ctx->flow[flow_hash(laddr, lport, raddr, rport)];
    for (; t; t = t->hnext)
        if (t->rport == rport && t->raddr == raddr && t->lport == lport && t->laddr == laddr)
            return t;
    return NULL;
}

static void flow_insert(struct tcp_layer *ctx, struct tcb *t)
{
    struct tcb **b = &ctx->flow[flow_hash(t->laddr, t->lport, t->raddr, t->rport)];
    t->hnext = *b;
    *b = t;
    t->in_flow = 1;
    ctx->flow_count++;
}

static void flow_remove(struct tcp_layer *ctx, struct tcb *t)
{
    if (!t->in_flow)
        return;
    t->in_flow = 0;
    struct tcb **pp = &ctx->flow[flow_hash(t->laddr, t->lport, t->raddr, t->rport)];
    for (; *pp; pp = &(*pp)->hnext) {
        if (*pp == t) {
            *pp = t->hnext;
            ctx->flow_count--;
            return;
        }
    }
}

struct mtcp_listener *listener_lookup(struct tcp_layer *ctx, uint32_t laddr, uint16_t port)
{
    for (struct mtcp_listener *l = ctx->listeners; l; l = l->next)
        if (l->port == port && (l->addr == 0 || l->addr == laddr) && !l->draining)
            return l;
    return NULL;
}

/* ---------------------------------------------------------------- TCBs */

static void timers_unlink(struct tcp_layer *ctx, struct tcb *t);

static int tcb_pools_empty(const struct tcp_layer *ctx)
{
    return ctx->tcb_pool.nfree == 0 || ctx->sndbuf_pool.nfree == 0 ||
           ctx->rcvbuf_pool.nfree == 0;
}

/* Out of TCBs: the oldest TIME-WAIT connections that the app has closed give theirs back,
 * as Linux ends TIME-WAIT early past tcp_max_tw_buckets. A server that closes first keeps
 * one TIME-WAIT per short connection for time_wait_ms; without this, max_conns / time_wait
 * would cap its rate of short connections (4096 per 2 s by default). A delayed duplicate
 * that would have hit the reclaimed TIME-WAIT meets a new ISN and timestamps (RFC 6191). */

static void tcb_reclaim_time_wait(struct tcp_layer *ctx)
{
    for (int i = 0; i < TCB_TW_RECLAIM_TRIES && tcb_pools_empty(ctx); i++) {
        struct tcb *tw = ctx->tw.first;
        if (!tw || !tw->app_closed)
            return;
        STAT_INC(&ctx->net.stats, time_wait_reclaimed);
        tcp_conn_done(ctx, tw, 0);
    }
}

struct tcb *tcb_alloc(struct tcp_layer *ctx, uint32_t laddr, uint16_t lport, uint32_t raddr,
                      uint16_t rport)
{
    if (tcb_pools_empty(ctx))
        tcb_reclaim_time_wait(ctx);
    tcp_evict_idle(ctx, 1); /* near full: idle connections make room (nginx) */
    uint32_t snd_cap, rcv_cap;
    if (tcb_pools_empty(ctx) || tcp_mem_caps(ctx, &snd_cap, &rcv_cap) < 0) {
        STAT_INC(&ctx->net.stats, drop_tcp_no_memory);
        return NULL;
    }
    struct tcb *t = mtcp_pool_get(&ctx->tcb_pool);
    memset(t, 0, sizeof(*t));
    mtcp_bytering_init(&t->snd, mtcp_pool_get(&ctx->sndbuf_pool), snd_cap);
    mtcp_bytering_init(&t->rcv, mtcp_pool_get(&ctx->rcvbuf_pool), rcv_cap);
    tcp_mem_charge(ctx, t);
    if (ctx->src_cnt) {
        tcp_source_count(ctx, raddr, 1);
        t->src_counted = 1;
    }
    atomic_store(&t->sockid, -1);
    t->in_use = 1;
    t->laddr = laddr;
    t->lport = lport;
    t->raddr = raddr;
    t->rport = rport;
    t->state = TCP_CLOSED;
    t->mss = MTCP_PEER_DEFAULT_MSS;
    t->rto_ms = TCP_RTO_INIT_MS;
    t->ssthresh = UINT32_MAX;
    t->cc_algo = (uint8_t)ctx->conf.cc_algo;
    t->rack_reo_mult = 1;
    t->last_rx_ms = ctx->net.now_ms;
    t->ka_idle_ms = MTCP_KEEPIDLE_MS;
    t->ka_intvl_ms = MTCP_KEEPINTVL_MS;
    t->ka_cnt = MTCP_KEEPCNT;
    tcb_limit_buffers(t, 0, 0);
    ctx->state_count[TCP_CLOSED]++;
    flow_insert(ctx, t);
    return t;
}

void tcb_limit_buffers(struct tcb *t, uint32_t rcvbuf, uint32_t sndbuf)
{
    if (rcvbuf && rcvbuf < t->rcv.limit)
        t->rcv.limit = rcvbuf;
    if (sndbuf && sndbuf < t->snd.limit)
        t->snd.limit = sndbuf;
    /* our receive window scale: the smallest shift that lets the ring fit (RFC 7323 2.2) */
    t->rcv_wscale = 0;
    while (t->rcv_wscale < 14 && (t->rcv.limit >> t->rcv_wscale) > 65535)
        t->rcv_wscale++;
    /* auto-tuning starts small and grows toward the ring (Linux: tcp_rmem[1] / 2) */
    t->rcv_space = t->rcv.limit < TCP_RCV_SPACE_INIT ? t->rcv.limit : TCP_RCV_SPACE_INIT;
}

void tcb_free(struct tcp_layer *ctx, struct tcb *t)
{
    if (!t->in_use)
        return;
    timers_unlink(ctx, t);
    flow_remove(ctx, t);
    ctx->state_count[t->state]--;
    /* Still on a TX or event list: unlinked lazily when the list is walked. */
    t->in_use = 0;
    t->pend = 0;
    tcp_mem_release(ctx, t);
    mtcp_pool_put(&ctx->sndbuf_pool, t->snd.buf);
    mtcp_pool_put(&ctx->rcvbuf_pool, t->rcv.buf);
    if (t->lists || t->ev_pending) {
        /* A TX or event list still points at it: it goes back to the pool when
         * the list lets go (tcb_unlisted). */
        t->zombie = 1;
        return;
    }
    mtcp_pool_put(&ctx->tcb_pool, t);
}

void tcb_unlisted(struct tcp_layer *ctx, struct tcb *t)
{
    if (t->zombie && !t->lists && !t->ev_pending) {
        t->zombie = 0;
        mtcp_pool_put(&ctx->tcb_pool, t);
    }
}

/* ---------------------------------------------------------------- state */

void tcp_set_state(struct tcp_layer *ctx, struct tcb *t, enum tcp_state s)
{
    if (ctx->net.trace)
        fprintf(stderr, "mtcp[%u] %u.%u.%u.%u:%u <-> %u.%u.%u.%u:%u %s -> %s\n", ctx->net.core,
                t->laddr >> 24, (t->laddr >> 16) & 255, (t->laddr >> 8) & 255, t->laddr & 255,
                t->lport, t->raddr >> 24, (t->raddr >> 16) & 255, (t->raddr >> 8) & 255,
                t->raddr & 255, t->rport, state_names[t->state], state_names[s]);
    ctx->state_count[t->state]--;
    ctx->state_count[s]++;
    t->state = (uint8_t)s;
}

/* RFC 6528: ISN = M + F(localip, localport, remoteip, remoteport, secretkey),
 * M a 4 microsecond clock, F a keyed hash (here SipHash-2-4 style rounds over the
 * 4-tuple with a per-stack random key). */
#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND                                                                                  \
    do {                                                                                          \
        v0 += v1; v1 = ROTL(v1, 13); v1 ^= v0; v0 = ROTL(v0, 32);                                 \
        v2 += v3; v3 = ROTL(v3, 16); v3 ^= v2;                                                    \
        v0 += v3; v3 = ROTL(v3, 21); v3 ^= v0;                                                    \
        v2 += v1; v1 = ROTL(v1, 17); v1 ^= v2; v2 = ROTL(v2, 32);                                 \
    } while (0)

static uint64_t siphash_2_4(const uint64_t key[2], uint64_t m0, uint64_t m1)
{
    uint64_t v0 = 0x736f6d6570736575ull ^ key[0], v1 = 0x646f72616e646f6dull ^ key[1];
    uint64_t v2 = 0x6c7967656e657261ull ^ key[0], v3 = 0x7465646279746573ull ^ key[1];
    uint64_t m[3] = {m0, m1, (uint64_t)16 << 56};
    for (int i = 0; i < 3; i++) {
        v3 ^= m[i];
        SIPROUND;
        SIPROUND;
        v0 ^= m[i];
    }
    v2 ^= 0xff;
    SIPROUND; SIPROUND; SIPROUND; SIPROUND;
    return v0 ^ v1 ^ v2 ^ v3;
}

uint32_t tcp_isn(struct tcp_layer *ctx, uint32_t laddr, uint16_t lport, uint32_t raddr,
                 uint16_t rport)
{
    if (ctx->conf.fixed_isn)
        return ctx->conf.fixed_isn;
    uint64_t f = siphash_2_4(ctx->conf.isn_key, (uint64_t)laddr << 32 | raddr,
                             (uint64_t)lport << 16 | rport);
    uint64_t m = ctx->net.now_ns / 4000; /* 4 us ticks of the round's clock */
    return (uint32_t)(m + f);
}

/* The timestamp clock's offset for a pair of addresses (RFC 7323 section 5.4; Linux's
 * secure_tcp_ts_off): a keyed hash of the addresses only, not of the ports, so that
 * successive connections between two hosts carry increasing timestamps. A peer that keeps
 * an earlier connection of the same 4-tuple in TIME-WAIT accepts a new SYN by its newer
 * timestamp (RFC 6191); an offset that changed with each connection would make about half
 * of the reused 4-tuples look older and be refused. */
uint32_t tcp_ts_offset(struct tcp_layer *ctx, uint32_t laddr, uint32_t raddr)
{
    uint64_t k[2] = {ctx->conf.isn_key[0] ^ 0x74736f6666736574ull, ctx->conf.isn_key[1]};
    return (uint32_t)siphash_2_4(k, (uint64_t)laddr << 32 | raddr, 0);
}

/* ---------------------------------------------------------------- FIFO timers */

/* The paper's timer lists: TIME_WAIT, delayed ACKs and the idle timeout each have
 * one fixed delay, so appending keeps a list in expiry order and a scan stops at
 * the first entry not yet due. Doubly linked so that an entry leaves in O(1). */
static void fifo_unlink(struct tcb_list *l, struct tcb *t, size_t off, uint8_t *on)
{
    if (!*on)
        return;
    tcb_list_remove(l, t, off);
    *on = 0;
}

static void fifo_append(struct tcb_list *l, struct tcb *t, size_t off, uint8_t *on)
{
    fifo_unlink(l, t, off, on);
    tcb_list_append(l, t, off);
    *on = 1;
}

#define tw_unlink(ctx, t) fifo_unlink(&(ctx)->tw, (t), TCB_TW, &(t)->on_tw)
#define tw_append(ctx, t) fifo_append(&(ctx)->tw, (t), TCB_TW, &(t)->on_tw)
#define da_unlink(ctx, t) fifo_unlink(&(ctx)->da, (t), TCB_DA, &(t)->on_da)
#define da_append(ctx, t) fifo_append(&(ctx)->da, (t), TCB_DA, &(t)->on_da)
#define idle_unlink(ctx, t) fifo_unlink(&(ctx)->idle, (t), TCB_IDLE, &(t)->on_idle)
#define idle_append(ctx, t) fifo_append(&(ctx)->idle, (t), TCB_IDLE, &(t)->on_idle)

static void timers_unlink(struct tcp_layer *ctx, struct tcb *t)
{
    tcp_rto_disarm(ctx, t);
    tw_unlink(ctx, t);
    da_unlink(ctx, t);
    idle_unlink(ctx, t);
}

void tcp_delack_arm(struct tcp_layer *ctx, struct tcb *t)
{
    if (t->on_da)
        return; /* the first unacknowledged segment set the deadline */
    t->da_expire_ms = ctx->net.now_ms + MTCP_DELACK_MS;
    da_append(ctx, t);
}

void tcp_delack_cancel(struct tcp_layer *ctx, struct tcb *t)
{
    da_unlink(ctx, t);
}

void tcp_idle_touch(struct tcp_layer *ctx, struct tcb *t)
{
    t->last_rx_ms = ctx->net.now_ms;
    t->probes = 0; /* anything from the peer answers our probes */
    if (t->state == TCP_TIME_WAIT || t->state == TCP_CLOSED)
        return;
    if (!t->on_idle || t != ctx->idle.last)
        idle_append(ctx, t);
}

/* ---------------------------------------------------------------- lifecycle */

void tcp_conn_done(struct tcp_layer *ctx, struct tcb *t, int err)
{
    timers_unlink(ctx, t);
    t->pend &= (uint8_t)~(TCB_P_DATA | TCB_P_ACK | TCB_P_FIN | TCB_P_SYN);
    if (t->state != TCP_CLOSED)
        tcp_set_state(ctx, t, TCP_CLOSED);
    /* segments for this 4-tuple are now for no connection (a new SYN may open one) */
    flow_remove(ctx, t);
    if (t->listener) {
        /* embryonic connection of a listener: nobody else knows it */
        t->listener->pending--;
        t->listener = NULL;
        tcb_free(ctx, t);
        return;
    }
    uint32_t fl = TCB_AF_CLOSED;
    if (err) {
        atomic_store_explicit(&t->so_error, err, memory_order_relaxed);
        fl |= TCB_AF_RESET;
    }
    atomic_fetch_or_explicit(&t->app_flags, fl, memory_order_release);
    if (t->app_closed) {
        tcb_free(ctx, t);
        return;
    }
    STAT_INC(&ctx->net.stats, conn_closed);
    /* The app still holds it (or will accept it): it frees it with JOB_CLOSE. */
    tcp_app_event(ctx, t, MTCP_EPOLLIN | MTCP_EPOLLOUT | MTCP_EPOLLHUP | MTCP_EPOLLRDHUP |
                              (err ? MTCP_EPOLLERR : 0));
}

void tcp_enter_time_wait(struct tcp_layer *ctx, struct tcb *t)
{
    tcp_rto_disarm(ctx, t);
    da_unlink(ctx, t);
    idle_unlink(ctx, t);
    if (t->state != TCP_TIME_WAIT)
        tcp_set_state(ctx, t, TCP_TIME_WAIT);
    tcp_orphan_clear(ctx, t); /* TIME-WAIT is bounded by itself (and reclaimable) */
    if (t->app_closed)
        tcp_mem_uncharge(ctx, t); /* all it sent is acknowledged, nobody reads any more */
    atomic_fetch_or_explicit(&t->app_flags, TCB_AF_EOF, memory_order_release);
    t->tw_expire_ms = ctx->net.now_ms + ctx->conf.time_wait_ms;
    tw_append(ctx, t); /* a restarted 2MSL moves the entry to the tail */
    if (!t->app_closed)
        tcp_app_event(ctx, t, MTCP_EPOLLIN | MTCP_EPOLLRDHUP | MTCP_EPOLLHUP);
}

/* ---------------------------------------------------------------- timing wheel */

/* One wheel entry per TCB with millisecond slots (the paper's fine-grained timer),
 * used for the RTO, the persist timer and keepalive (timer_kind). */
void tcp_rto_disarm(struct tcp_layer *ctx, struct tcb *t)
{
    if (!t->rto_armed)
        return;
    if (t->rto_prev)
        t->rto_prev->rto_next = t->rto_next;
    else
        ctx->wheel[t->rto_expire_ms % MTCP_WHEEL_SLOTS] = t->rto_next;
    if (t->rto_next)
        t->rto_next->rto_prev = t->rto_prev;
    t->rto_armed = 0;
    ctx->wheel_count--;
}

static void wheel_arm(struct tcp_layer *ctx, struct tcb *t, uint8_t kind, uint64_t delay_ms)
{
    tcp_rto_disarm(ctx, t);
    if (delay_ms < 1)
        delay_ms = 1;
    t->timer_kind = kind;
    t->rto_expire_ms = ctx->net.now_ms + delay_ms;
    struct tcb **slot = &ctx->wheel[t->rto_expire_ms % MTCP_WHEEL_SLOTS];
    t->rto_prev = NULL;
    t->rto_next = *slot;
    if (*slot)
        (*slot)->rto_prev = t;
    *slot = t;
    t->rto_armed = 1;
    ctx->wheel_count++;
}

static uint64_t backed_off(const struct tcb *t)
{
    uint64_t rto = (uint64_t)t->rto_ms << (t->rto_backoff < 16 ? t->rto_backoff : 16);
    return rto > TCP_RTO_MAX_MS ? TCP_RTO_MAX_MS : rto;
}

static int rexmit_timer(const struct tcb *t)
{
    return t->rto_armed && (t->timer_kind == TCP_TIMER_RTO || t->timer_kind == TCP_TIMER_PTO ||
                            t->timer_kind == TCP_TIMER_REO);
}

void tcp_rto_arm(struct tcp_layer *ctx, struct tcb *t)
{
    /* a tail loss probe comes first once per episode (RFC 8985 7.2): it turns a
     * silent tail loss into SACK information instead of a timeout; never later than
     * the RTO would fire */
    uint64_t rto = backed_off(t);
    if (tcp_tlp_allowed(t)) {
        uint64_t pto = tcp_pto_ms(t);
        wheel_arm(ctx, t, TCP_TIMER_PTO, pto < rto ? pto : rto);
    } else {
        wheel_arm(ctx, t, TCP_TIMER_RTO, rto);
    }
}

void tcp_reo_arm(struct tcp_layer *ctx, struct tcb *t, uint64_t delay_ms)
{
    /* the RTO must not come later than it would have: keep the earlier of the two */
    if (t->rto_armed && t->timer_kind == TCP_TIMER_RTO &&
        t->rto_expire_ms <= ctx->net.now_ms + delay_ms)
        return;
    wheel_arm(ctx, t, TCP_TIMER_REO, delay_ms);
}

void tcp_rto_ensure(struct tcp_layer *ctx, struct tcb *t)
{
    if (!rexmit_timer(t))
        tcp_rto_arm(ctx, t);
}

void tcp_idle_timer(struct tcp_layer *ctx, struct tcb *t)
{
    if (rexmit_timer(t))
        return;
    uint32_t unsent = t->snd_head_seq + mtcp_bytering_used(&t->snd) - t->snd_nxt;
    int sync = t->state == TCP_ESTABLISHED || t->state == TCP_CLOSE_WAIT;
    if (sync && t->snd_wnd == 0 && (int32_t)unsent > 0 && t->snd_nxt == t->snd_una) {
        if (!t->rto_armed || t->timer_kind != TCP_TIMER_PERSIST)
            wheel_arm(ctx, t, TCP_TIMER_PERSIST, backed_off(t));
    } else if (sync && t->keepalive) {
        if (!t->rto_armed || t->timer_kind != TCP_TIMER_KEEPALIVE) {
            uint64_t due = t->last_rx_ms + t->ka_idle_ms;
            wheel_arm(ctx, t, TCP_TIMER_KEEPALIVE, due > ctx->net.now_ms ? due - ctx->net.now_ms : 1);
        }
    } else {
        tcp_rto_disarm(ctx, t);
    }
}

void tcp_rtt_sample(struct tcb *t, uint32_t rtt_ms)
{
    tcp_rtt_sample_us(t, rtt_ms * 1000u);
}

/* RFC 6298 2.2/2.3: SRTT, RTTVAR, RTO = SRTT + max(G, 4 * RTTVAR), clamped. */
void tcp_rtt_sample_us(struct tcb *t, uint32_t r)
{
    if (t->srtt_us == 0) {
        t->srtt_us = r ? r : 1;
        t->rttvar_us = r / 2;
    } else {
        uint32_t diff = t->srtt_us > r ? t->srtt_us - r : r - t->srtt_us;
        t->rttvar_us = (3 * t->rttvar_us + diff) / 4;
        t->srtt_us = (7 * t->srtt_us + r) / 8;
    }
    uint32_t var = 4 * t->rttvar_us;
    if (var < 1000)
        var = 1000; /* clock granularity G = 1 ms */
    uint32_t rto = (t->srtt_us + var) / 1000;
    if (rto < TCP_RTO_MIN_MS)
        rto = TCP_RTO_MIN_MS;
    if (rto > TCP_RTO_MAX_MS)
        rto = TCP_RTO_MAX_MS;
    t->rto_ms = rto;
}

/* The connection has to be given up: RST (when synchronized) and ETIMEDOUT. */
static void give_up(struct tcp_layer *ctx, struct tcb *t)
{
    STAT_INC(&ctx->net.stats, conn_timeouts);
    if (t->state != TCP_SYN_RECEIVED && t->state != TCP_SYN_SENT)
        tcp_send_rst_now(ctx, t);
    tcp_conn_done(ctx, t, ETIMEDOUT);
}

/* Bounds on a connection that makes no progress (issue 15), checked before a persist or
 * retransmission timer does its work; 1 when t was given up. As Linux: TCP_USER_TIMEOUT
 * bounds the time data stays unacknowledged or the peer's window stays zero
 * (tcp_probe_timer, retransmits_timed_out); a connection the app closed gets
 * orphan_retries retransmissions or probes (tcp_orphan_retries); and, unlike Linux, a
 * window kept at zero for the idle timeout ends too: probes answered with a zero window
 * are no sign of an application that will ever read. */
static int stuck_give_up(struct tcp_layer *ctx, struct tcb *t)
{
    uint64_t now = ctx->net.now_ms;
    if (t->timer_kind == TCP_TIMER_PERSIST) {
        if (t->rto_backoff == 0 || !t->persist_since_ms)
            t->persist_since_ms = now; /* the window closed again: a new episode */
        uint64_t stuck = now - t->persist_since_ms;
        if (t->user_timeout_ms && stuck >= t->user_timeout_ms) {
            STAT_INC(&ctx->net.stats, user_timeouts);
        } else if (t->app_closed && t->rto_backoff >= ctx->conf.orphan_retries) {
            STAT_INC(&ctx->net.stats, orphan_aborts);
        } else if (stuck >= ctx->conf.idle_timeout_ms) {
            STAT_INC(&ctx->net.stats, zero_window_aborts);
        } else {
            return 0;
        }
    } else if (t->timer_kind == TCP_TIMER_RTO && t->state != TCP_SYN_SENT &&
               t->state != TCP_SYN_RECEIVED) {
        if (t->rto_backoff == 0)
            t->rexmit_since_ms = now > t->rto_ms ? now - t->rto_ms : 0; /* sent at */
        if (t->user_timeout_ms && now - t->rexmit_since_ms >= t->user_timeout_ms) {
            STAT_INC(&ctx->net.stats, user_timeouts);
        } else if (t->app_closed && t->rto_backoff >= ctx->conf.orphan_retries) {
            STAT_INC(&ctx->net.stats, orphan_aborts);
        } else {
            return 0;
        }
    } else {
        return 0;
    }
    give_up(ctx, t);
    return 1;
}

/* The next zero-window probe, no later than the bound that ends the episode (Linux clamps
 * it to the user timeout the same way), so that the bound is kept to the millisecond. */
static uint64_t persist_delay(const struct tcp_layer *ctx, const struct tcb *t)
{
    uint64_t d = backed_off(t), now = ctx->net.now_ms;
    uint64_t end = t->persist_since_ms + ctx->conf.idle_timeout_ms;
    if (t->user_timeout_ms && t->persist_since_ms + t->user_timeout_ms < end)
        end = t->persist_since_ms + t->user_timeout_ms;
    if (end > now && end - now < d)
        d = end - now;
    return d;
}

static void timer_expired(struct tcp_layer *ctx, struct tcb *t)
{
    if (stuck_give_up(ctx, t))
        return;
    switch (t->timer_kind) {
    case TCP_TIMER_PERSIST:
        /* RFC 9293 3.8.6.1: probe the zero window, backing off; give up only if the
         * peer stops answering (an answer resets probes) */
        if (t->probes >= 2 * TCP_MAX_RETRIES) {
            give_up(ctx, t);
            return;
        }
        tcp_send_probe(ctx, t);
        STAT_INC(&ctx->net.stats, zero_window_probes);
        t->probes++;
        if (t->rto_backoff < 16)
            t->rto_backoff++;
        wheel_arm(ctx, t, TCP_TIMER_PERSIST, persist_delay(ctx, t));
        return;
    case TCP_TIMER_KEEPALIVE: {
        /* RFC 1122 4.2.3.6 */
        uint64_t due = t->last_rx_ms + t->ka_idle_ms;
        if (t->probes == 0 && due > ctx->net.now_ms) {
            wheel_arm(ctx, t, TCP_TIMER_KEEPALIVE, due - ctx->net.now_ms);
            return;
        }
        if (t->probes >= t->ka_cnt) {
            give_up(ctx, t);
            return;
        }
        tcp_send_probe(ctx, t);
        STAT_INC(&ctx->net.stats, keepalive_probes);
        t->probes++;
        wheel_arm(ctx, t, TCP_TIMER_KEEPALIVE, t->ka_intvl_ms);
        return;
    }
    case TCP_TIMER_PTO:
        tcp_tlp_fire(ctx, t); /* RFC 8985 7.3 */
        return;
    case TCP_TIMER_REO:
        tcp_rack_timeout(ctx, t); /* RFC 8985 6.3 */
        return;
    default:
        break;
    }
    unsigned limit = (t->state == TCP_SYN_SENT || t->state == TCP_SYN_RECEIVED) ? TCP_SYN_RETRIES
                                                                                 : TCP_MAX_RETRIES;
    if (t->rto_backoff >= limit) {
        give_up(ctx, t); /* RFC 9293 3.8.3 */
        return;
    }
    STAT_INC(&ctx->net.stats, rto_timeouts);
    t->rto_backoff++;
    tcp_retransmit(ctx, t);
}

/* ---------------------------------------------------------------- timers */

uint64_t tcp_timers(struct tcp_layer *ctx)
{
    uint64_t now = ctx->net.now_ms;
    while (ctx->tw.first && ctx->tw.first->tw_expire_ms <= now)
        tcp_conn_done(ctx, ctx->tw.first, 0);
    while (ctx->da.first && ctx->da.first->da_expire_ms <= now) {
        struct tcb *t = ctx->da.first;
        da_unlink(ctx, t);
        STAT_INC(&ctx->net.stats, delayed_acks);
        tcp_schedule(ctx, t, TCB_P_ACK);
    }
    uint64_t idle = ctx->conf.idle_timeout_ms;
    while (ctx->idle.first && ctx->idle.first->last_rx_ms + idle <= now) {
        struct tcb *t = ctx->idle.first;
        idle_unlink(ctx, t);
        STAT_INC(&ctx->net.stats, idle_timeouts);
        if (t->state != TCP_SYN_SENT && t->state != TCP_SYN_RECEIVED)
            tcp_send_rst_now(ctx, t);
        tcp_conn_done(ctx, t, ETIMEDOUT);
    }
    /* the wheel: walk every millisecond slot since the last round */
    if (ctx->wheel_count == 0) {
        ctx->wheel_ms = now;
    } else {
        uint64_t from = ctx->wheel_ms;
        if (now - from > MTCP_WHEEL_SLOTS)
            from = now - MTCP_WHEEL_SLOTS;
        for (uint64_t ms = from + 1; ms <= now && ctx->wheel_count; ms++) {
            struct tcb *t = ctx->wheel[ms % MTCP_WHEEL_SLOTS];
            while (t) {
                struct tcb *next = t->rto_next;
                if (t->rto_expire_ms <= now) {
                    tcp_rto_disarm(ctx, t);
                    timer_expired(ctx, t);
                }
                t = next;
            }
        }
        ctx->wheel_ms = now;
    }
    uint64_t next = UINT64_MAX;
    if (ctx->tw.first)
        next = ctx->tw.first->tw_expire_ms - now;
    if (ctx->da.first && ctx->da.first->da_expire_ms - now < next)
        next = ctx->da.first->da_expire_ms - now;
    if (ctx->idle.first && ctx->idle.first->last_rx_ms + idle - now < next)
        next = ctx->idle.first->last_rx_ms + idle - now;
    if (ctx->wheel_count) {
        /* first non-empty slot ahead; entries there may belong to a later turn */
        for (uint64_t d = 1; d <= MTCP_WHEEL_SLOTS && d < next; d++) {
            if (ctx->wheel[(now + d) % MTCP_WHEEL_SLOTS]) {
                next = d;
                break;
            }
        }
    }
    return next;
}

/* ---------------------------------------------------------------- RFC 5961 7 */

void tcp_challenge_ack(struct tcp_layer *ctx, struct tcb *t)
{
    if (ctx->net.now_ms - ctx->cack_window_ms >= 1000) {
        ctx->cack_window_ms = ctx->net.now_ms;
        ctx->cack_count = 0;
    }
    if (ctx->cack_count >= ctx->conf.challenge_ack_limit) {
        STAT_INC(&ctx->net.stats, challenge_acks_suppressed);
        return;
    }
    ctx->cack_count++;
    STAT_INC(&ctx->net.stats, challenge_acks);
    tcp_send_ack_now(ctx, t);
}

/* ---------------------------------------------------------------- SYN cookies */

/* cookie = 5 bits of a 64 s counter | 3 bits MSS index | 24 bits keyed hash of the
 * 4-tuple, the client's ISN and the counter. Valid for the current and previous
 * counter value (64..128 s). */
static const uint16_t cookie_mss[8] = {216, 536, 1024, 1200, 1360, 1400, 1440, 1460};

static uint32_t cookie_hash(struct tcp_layer *ctx, uint32_t laddr, uint16_t lport,
                            uint32_t raddr, uint16_t rport, uint32_t client_isn, uint32_t tick)
{
    uint64_t k[2] = {ctx->conf.isn_key[1], ctx->conf.isn_key[0] ^ 0x636f6f6b6965ull};
    return (uint32_t)siphash_2_4(k, (uint64_t)laddr << 32 | raddr,
                                 (uint64_t)client_isn << 32 | (uint64_t)lport << 16 | rport) ^
           tick * 0x9e3779b1u;
}

uint32_t tcp_cookie_make(struct tcp_layer *ctx, uint32_t laddr, uint16_t lport, uint32_t raddr,
                         uint16_t rport, uint32_t client_isn, uint16_t mss)
{
    uint32_t idx = 0;
    for (uint32_t i = 0; i < 8; i++)
        if (cookie_mss[i] <= mss)
            idx = i;
    uint32_t tick = (uint32_t)(ctx->net.now_ms / COOKIE_TICK_MS) & 31u;
    uint32_t h = cookie_hash(ctx, laddr, lport, raddr, rport, client_isn, tick) & 0xffffffu;
    return tick << 27 | idx << 24 | h;
}

uint16_t tcp_cookie_check(struct tcp_layer *ctx, uint32_t laddr, uint16_t lport,
                          uint32_t raddr, uint16_t rport, uint32_t client_isn, uint32_t cookie)
{
    uint32_t now_tick = (uint32_t)(ctx->net.now_ms / COOKIE_TICK_MS) & 31u;
    uint32_t tick = cookie >> 27;
    if (((now_tick - tick) & 31u) > 1)
        return 0;
    uint32_t h = cookie_hash(ctx, laddr, lport, raddr, rport, client_isn, tick) & 0xffffffu;
    if (h != (cookie & 0xffffffu))
        return 0;
    return cookie_mss[(cookie >> 24) & 7u];
}

/* ---------------------------------------------------------------- ARP */

void tcp_arp_resolved(struct net_layer *n, uint32_t ip, const uint8_t mac[6])
{
    struct tcp_layer *ctx = tcp_of_net(n);
    (void)ip;
    (void)mac;
    /* SYNs held for this next hop go out now; tcp_output looks the MAC up again. */
    for (uint32_t i = 0; i < ctx->tcb_pool.n; i++) {
        struct tcb *t = mtcp_pool_at(&ctx->tcb_pool, i);
        if (t->in_use && t->arp_wait)
            tcp_schedule(ctx, t, TCB_P_SYN);
    }
}

void tcp_arp_failed(struct net_layer *n, uint32_t ip)
{
    struct tcp_layer *ctx = tcp_of_net(n);
    (void)ip;
    for (uint32_t i = 0; i < ctx->tcb_pool.n; i++) {
        struct tcb *t = mtcp_pool_at(&ctx->tcb_pool, i);
        if (t->in_use && t->arp_wait) {
            uint8_t mac[6];
            if (net_resolve(&ctx->net, t->raddr, mac) == 0)
                continue;
            t->arp_wait = 0;
            tcp_conn_done(ctx, t, EHOSTUNREACH);
        }
    }
}

void tcp_abort_all(struct tcp_layer *ctx)
{
    for (uint32_t i = 0; i < ctx->tcb_pool.n; i++) {
        struct tcb *t = mtcp_pool_at(&ctx->tcb_pool, i);
        if (t->in_use && t->state != TCP_CLOSED && t->state != TCP_TIME_WAIT &&
            t->state != TCP_LISTEN && t->state != TCP_SYN_SENT)
            tcp_send_rst_now(ctx, t);
    }
    net_tx_flush(&ctx->net);
}
