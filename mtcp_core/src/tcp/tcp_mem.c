/* Exhaustion bounds (issue 15): socket-buffer memory per core, pages of closed connections
 * given back, orphans, eviction of idle connections, connections per source address.
 * Runs only on the mTCP thread of its core. */
#include <errno.h>
#include <stdlib.h>
#include <sys/mman.h>

#include "tcp.h"

/* ---------------------------------------------------------------- memory */

/* The largest power of two <= v (v >= 1). */
static uint32_t pow2_floor(uint32_t v)
{
    uint32_t p = 1;
    while (p <= v / 2)
        p *= 2;
    return p;
}

int tcp_mem_pressure(const struct tcp_layer *ctx)
{
    return ctx->mem_used >= ctx->conf.mem_budget / 2;
}

/* Ring sizes for a new connection, as Linux's tcp_mem: full buffers below half of the
 * budget, the pressure sizes above it, none past the budget. 0, or -1 when even the
 * pressure sizes do not fit. */
int tcp_mem_caps(struct tcp_layer *ctx, uint32_t *snd_cap, uint32_t *rcv_cap)
{
    const struct tcp_conf *s = &ctx->conf;
    uint32_t snd = s->sndbuf, rcv = s->rcvbuf;
    if (tcp_mem_pressure(ctx)) {
        if (snd > MTCP_PRESSURE_SNDBUF)
            snd = pow2_floor(MTCP_PRESSURE_SNDBUF);
        if (rcv > MTCP_PRESSURE_RCVBUF)
            rcv = pow2_floor(MTCP_PRESSURE_RCVBUF);
    }
    if (ctx->mem_used + snd + rcv > s->mem_budget)
        return -1;
    if (snd != s->sndbuf || rcv != s->rcvbuf)
        STAT_INC(&ctx->net.stats, buf_pressure_opens);
    *snd_cap = snd;
    *rcv_cap = rcv;
    return 0;
}

void tcp_mem_charge(struct tcp_layer *ctx, struct tcb *t)
{
    t->mem_charge = t->snd.cap + t->rcv.cap;
    ctx->mem_used += t->mem_charge;
}

/* The pages a ring touched: its bytes run from index 0 up, wrapping at cap. */
static void ring_release(struct tcp_layer *ctx, struct mtcp_bytering *r, int huge)
{
    uint32_t tail = atomic_load_explicit(&r->tail, memory_order_acquire);
    uint32_t touched = tail >= r->cap ? r->cap : tail;
    if (huge || touched < MTCP_RELEASE_MIN)
        return; /* a small ring stays warm for the next connection (the pool is LIFO) */
    size_t len = ((size_t)touched + 4095u) & ~(size_t)4095u;
    if (madvise(r->buf, len, MADV_DONTNEED) == 0)
        STAT_ADD(&ctx->net.stats, buf_released_bytes, len);
}

/* The rings stop counting against the budget (and their pages go back): at the end, or
 * once neither side can use them again (TIME-WAIT of a connection the app closed). */
void tcp_mem_uncharge(struct tcp_layer *ctx, struct tcb *t)
{
    if (!t->mem_charge)
        return;
    ctx->mem_used -= t->mem_charge;
    t->mem_charge = 0;
    ring_release(ctx, &t->snd, ctx->sndbuf_pool.huge);
    ring_release(ctx, &t->rcv, ctx->rcvbuf_pool.huge);
}

void tcp_mem_release(struct tcp_layer *ctx, struct tcb *t)
{
    tcp_mem_uncharge(ctx, t);
    if (t->orphan) {
        t->orphan = 0;
        ctx->orphans--;
    }
    if (t->evicted) {
        t->evicted = 0;
        ctx->evicted_pending--;
    }
    if (t->src_counted)
        tcp_source_count(ctx, t->raddr, -1);
    t->src_counted = 0;
}

/* ---------------------------------------------------------------- orphans */

int tcp_orphan_add(struct tcp_layer *ctx, struct tcb *t)
{
    if (t->orphan)
        return 0;
    if (ctx->orphans >= ctx->conf.max_orphans) {
        /* Linux: "too many orphaned sockets": reset instead of lingering */
        STAT_INC(&ctx->net.stats, orphan_overflows);
        tcp_send_rst_now(ctx, t);
        tcp_conn_done(ctx, t, 0);
        return -1;
    }
    t->orphan = 1;
    ctx->orphans++;
    return 0;
}

void tcp_orphan_clear(struct tcp_layer *ctx, struct tcb *t)
{
    if (t->orphan) {
        t->orphan = 0;
        ctx->orphans--;
    }
}

/* ---------------------------------------------------------------- eviction */

/* Idle at the TCP level: nothing unsent, unacknowledged or unread, and the app allowed it. */
static int tcb_evictable(struct tcb *t)
{
    return t->evictable && !t->evicted && !t->app_closed &&
           (t->state == TCP_ESTABLISHED || t->state == TCP_CLOSE_WAIT) &&
           t->snd_una == t->snd_max && mtcp_bytering_used(&t->snd) == 0 &&
           mtcp_bytering_used(&t->rcv) == 0;
}

static int pool_nearly_full(const struct tcp_layer *ctx)
{
    uint32_t n = ctx->tcb_pool.n;
    uint32_t need = ctx->conf.sndbuf < MTCP_PRESSURE_SNDBUF ? ctx->conf.sndbuf
                                                              : MTCP_PRESSURE_SNDBUF;
    need += ctx->conf.rcvbuf < MTCP_PRESSURE_RCVBUF ? ctx->conf.rcvbuf : MTCP_PRESSURE_RCVBUF;
    return ctx->tcb_pool.nfree <= n / MTCP_EVICT_FREE_SHARE ||
           ctx->mem_used + (uint64_t)need * (n / MTCP_EVICT_FREE_SHARE + 1) >
               ctx->conf.mem_budget;
}

/* Near full: reset up to `max` evictable idle connections, the longest silent first (the
 * idle FIFO is in order of the last segment received). Their TCBs return when the app
 * closes them. Returns how many. */
int tcp_evict_idle(struct tcp_layer *ctx, int max)
{
    if (!ctx->conf.evict || !pool_nearly_full(ctx))
        return 0;
    /* TIME-WAIT connections the app has closed go first: they cost a client nothing */
    for (int i = 0; i < max && ctx->tw.first && ctx->tw.first->app_closed; i++) {
        STAT_INC(&ctx->net.stats, time_wait_reclaimed);
        tcp_conn_done(ctx, ctx->tw.first, 0);
        if (!pool_nearly_full(ctx))
            return 0;
    }
    int done = 0, scanned = 0;
    struct tcb *t = ctx->idle.first;
    while (t && done < max && scanned++ < MTCP_EVICT_SCAN) {
        struct tcb *next = tcb_list_next(t, TCB_IDLE);
        if (tcb_evictable(t)) {
            STAT_INC(&ctx->net.stats, evictions);
            t->evicted = 1;
            ctx->evicted_pending++;
            tcp_send_rst_now(ctx, t);
            tcp_conn_done(ctx, t, ECONNABORTED);
            done++;
        }
        t = next;
    }
    return done;
}

/* ---------------------------------------------------------------- per source */

static uint32_t src_slot(uint32_t addr, uint32_t mask)
{
    return (addr * 0x9E3779B1u) >> 7 & mask;
}

int tcp_source_init(struct tcp_layer *ctx)
{
    if (!ctx->conf.max_per_source)
        return 0;
    uint32_t n = 64;
    while (n < 2 * ctx->tcb_pool.n)
        n *= 2;
    ctx->src_addr = calloc(n, sizeof(uint32_t));
    ctx->src_cnt = calloc(n, sizeof(uint32_t));
    if (!ctx->src_addr || !ctx->src_cnt)
        return -ENOMEM;
    ctx->src_mask = n - 1;
    return 0;
}

void tcp_source_destroy(struct tcp_layer *ctx)
{
    free(ctx->src_addr);
    free(ctx->src_cnt);
    ctx->src_addr = ctx->src_cnt = NULL;
}

/* Linear probing; a slot is used while its count is nonzero. */
static uint32_t *src_find(struct tcp_layer *ctx, uint32_t addr, int insert)
{
    uint32_t m = ctx->src_mask;
    for (uint32_t i = src_slot(addr, m), k = 0; k <= m; i = (i + 1) & m, k++) {
        if (ctx->src_cnt[i] == 0) {
            if (!insert)
                return NULL;
            ctx->src_addr[i] = addr;
            return &ctx->src_cnt[i];
        }
        if (ctx->src_addr[i] == addr)
            return &ctx->src_cnt[i];
    }
    return NULL; /* cannot happen: the table has twice the pool's slots */
}

uint32_t tcp_source_conns(struct tcp_layer *ctx, uint32_t addr)
{
    if (!ctx->src_cnt)
        return 0;
    uint32_t *c = src_find(ctx, addr, 0);
    return c ? *c : 0;
}

void tcp_source_count(struct tcp_layer *ctx, uint32_t addr, int delta)
{
    if (!ctx->src_cnt)
        return;
    uint32_t *c = src_find(ctx, addr, delta > 0);
    if (!c)
        return;
    if (delta > 0) {
        (*c)++;
        return;
    }
    if (--*c)
        return;
    /* the slot is free now: move later entries of its run back (backward-shift deletion,
     * so that lookups never stop at a hole in front of their entry) */
    uint32_t m = ctx->src_mask, hole = (uint32_t)(c - ctx->src_cnt);
    for (uint32_t j = (hole + 1) & m; ctx->src_cnt[j]; j = (j + 1) & m) {
        uint32_t home = src_slot(ctx->src_addr[j], m);
        /* j's entry may move to the hole if its home is not in (hole, j] cyclically */
        if (((j - home) & m) >= ((j - hole) & m)) {
            ctx->src_addr[hole] = ctx->src_addr[j];
            ctx->src_cnt[hole] = ctx->src_cnt[j];
            ctx->src_cnt[j] = 0;
            hole = j;
        }
    }
}

/* A SYN from addr may open a connection (the per-source limit). */
int tcp_source_allowed(struct tcp_layer *ctx, uint32_t addr)
{
    uint32_t lim = ctx->conf.max_per_source;
    if (!lim || tcp_source_conns(ctx, addr) < lim)
        return 1;
    STAT_INC(&ctx->net.stats, drop_tcp_source_limit);
    return 0;
}
