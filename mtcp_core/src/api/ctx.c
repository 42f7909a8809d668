/* The per-core context and its mTCP thread loop (DESIGN.md "The mTCP thread loop"):
 * receive a batch -> process every frame -> take the app's jobs -> run due timers
 * -> transmit control, then ACK, then data lists -> one TX flush -> hand the
 * round's events to the app in one batch -> sleep on the device and an eventfd
 * when there is nothing to do. */

#include <errno.h>
#include <poll.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "../core/clock.h"
#include "../net/net.h"
#include "../tcp/tcp.h"
#include "ctx.h"


/* ---------------------------------------------------------------- events */

void tcp_app_event(struct tcp_layer *tl, struct tcb *t, uint32_t events)
{
    struct mtcp_context *ctx = ctx_of_tcp(tl);
    /* a connection the responder holds: its own event, taken in rsp_round */
    if (!t->rsp && atomic_load_explicit(&t->sockid, memory_order_acquire) < 0)
        return;
    if (!t->ev_pending)
        tcb_list_push_front(&ctx->ev, t, TCB_EV);
    t->ev_pending |= events;
}

void tcp_app_accept_ready(struct tcp_layer *tl, struct mtcp_listener *l)
{
    struct mtcp_context *ctx = ctx_of_tcp(tl);
    if (l->ev_queued)
        return;
    struct mtcp_event ev = {l->sockid, l->sock_gen, MTCP_EPOLLIN};
    if (mtcp_spsc_push(&ctx->evq, &ev) == 0) {
        /* one event per listener per round; cleared when the round's events flush */
        l->ev_queued = 1;
        STAT_INC(&ctx->tcp.net.stats, events);
    }
}

static int flush_events(struct mtcp_context *ctx)
{
    int pushed = 0;
    struct tcb_list keep = {0};
    struct tcb *t;
    while ((t = tcb_list_pop_front(&ctx->ev, TCB_EV))) {
        int sid = atomic_load_explicit(&t->sockid, memory_order_acquire);
        if (t->in_use && t->rsp) {
            /* the responder's (an event after its step in this round): next round */
            tcb_list_push_front(&keep, t, TCB_EV);
            continue;
        }
        if (t->in_use && sid >= 0) {
            struct mtcp_event ev = {sid, atomic_load_explicit(&t->sock_gen, memory_order_relaxed),
                                    t->ev_pending};
            if (mtcp_spsc_push(&ctx->evq, &ev) < 0) {
                /* queue full: try again next round */
                tcb_list_push_front(&keep, t, TCB_EV);
                continue;
            }
            pushed++;
        }
        t->ev_pending = 0;
        tcb_unlisted(&ctx->tcp, t);
    }
    ctx->ev = keep;
    for (struct mtcp_listener *l = ctx->tcp.listeners; l; l = l->next)
        if (l->ev_queued) {
            l->ev_queued = 0;
            pushed++;
        }
    STAT_ADD(&ctx->tcp.net.stats, events, pushed);
    return pushed;
}

static void wake_fd(int fd)
{
    uint64_t one = 1;
    ssize_t r = write(fd, &one, sizeof(one));
    (void)r; /* EAGAIN: the counter is already non-zero, the sleeper wakes anyway */
}

static void drain_fd(int fd)
{
    uint64_t v;
    ssize_t r = read(fd, &v, sizeof(v));
    (void)r;
}

/* ---------------------------------------------------------------- jobs */

void ctx_push_job(struct mtcp_context *ctx, const struct mtcp_job *job)
{
    /* The job queue is large; when it is full the mTCP thread is behind, so let
     * it run rather than drop a job. */
    while (mtcp_spsc_push(&ctx->jobq, job) < 0) {
        if (ctx->stepped) {
            /* no thread to wait for: the caller's thread runs the round at the
             * context's current time, as the thread would have */
            ctx_round(ctx, ctx->tcp.net.now_ns);
            continue;
        }
        wake_fd(ctx->stack_efd);
        sched_yield();
    }
}

void ctx_kick(struct mtcp_context *ctx)
{
    /* Dekker-style handshake with the sleeping side: our push is visible before we
     * read its flag; it sets its flag before it checks the queue. */
    atomic_thread_fence(memory_order_seq_cst);
    if (atomic_load(&ctx->stack_sleeping)) {
        wake_fd(ctx->stack_efd);
        atomic_fetch_add_explicit(&ctx->app_kicks, 1, memory_order_relaxed);
    }
}

/* ---------------------------------------------------------------- loop */

static void count_batch(struct mtcp_stats *st, int n)
{
    if (n <= 0)
        return;
    STAT_INC(st, rx_batches);
    if (n == 1) STAT_INC(st, rx_batch_1);
    else if (n < 4) STAT_INC(st, rx_batch_2_3);
    else if (n < 8) STAT_INC(st, rx_batch_4_7);
    else if (n < 16) STAT_INC(st, rx_batch_8_15);
    else if (n < 32) STAT_INC(st, rx_batch_16_31);
    else if (n < 64) STAT_INC(st, rx_batch_32_63);
    else STAT_INC(st, rx_batch_64_up);
}

static void update_gauges(struct mtcp_context *ctx)
{
    struct mtcp_stats *st = &ctx->tcp.net.stats;
    STAT_SET(st, pool_tcb_free, ctx->tcp.tcb_pool.nfree);
    STAT_SET(st, pool_sndbuf_free, ctx->tcp.sndbuf_pool.nfree);
    STAT_SET(st, pool_rcvbuf_free, ctx->tcp.rcvbuf_pool.nfree);
    STAT_SET(st, flows, ctx->tcp.flow_count);
    STAT_SET(st, orphans, ctx->tcp.orphans);
    STAT_SET(st, buf_mem_used, ctx->tcp.mem_used);
    STAT_SET(st, buf_mem_budget, ctx->stack->mem_budget);
    STAT_SET(st, buf_mem_pressure, tcp_mem_pressure(&ctx->tcp));
    for (int s = 0; s < TCP_NSTATES; s++)
        st->v[MTCP_STAT_state_closed + s] = ctx->tcp.state_count[s];
    /* a listening socket has no TCB: count the listener table instead */
    uint64_t listening = 0;
    for (struct mtcp_listener *l = ctx->tcp.listeners; l; l = l->next)
        listening++;
    STAT_SET(st, state_listen, listening);
}

/* Shaping: refills the link's byte tokens for the time passed (a token bucket at the
 * link rate, at most MTCP_SHAPE_BURST_NS of it saved up) and sets the round's frame budget.
 * A round with no tokens sends nothing; the lists keep their order (control, ACK, data with
 * priority on), so what waits is what a NIC's queue would hold, in the stack's order. */
static void shaper_refill(struct mtcp_context *ctx, uint64_t now_ns)
{
    uint64_t rate = ctx->stack->tx_rate_Bps;
    int64_t burst = (int64_t)(rate * MTCP_SHAPE_BURST_NS / MTCP_NS_PER_S);
    if (burst < 2 * (MTCP_MAX_FRAME + MTCP_WIRE_OVERHEAD))
        burst = 2 * (MTCP_MAX_FRAME + MTCP_WIRE_OVERHEAD);
    uint64_t dt = now_ns - ctx->tcp.net.tx_tokens_ns;
    ctx->tcp.net.tx_tokens_ns = now_ns;
    if (dt > MTCP_SHAPE_BURST_NS)
        dt = MTCP_SHAPE_BURST_NS; /* also the first round: no credit from before it */
    ctx->tcp.net.tx_tokens += (int64_t)(dt * rate / MTCP_NS_PER_S);
    if (ctx->tcp.net.tx_tokens > burst)
        ctx->tcp.net.tx_tokens = burst;
    if (ctx->tcp.net.tx_tokens <= 0)
        ctx->tcp.net.tx_budget = 0;
}

/* Shaping: nanoseconds until the link takes a frame again (0: now). */
static uint64_t shaper_wait_ns(const struct mtcp_context *ctx)
{
    if (ctx->tcp.net.tx_tokens > 0)
        return 0;
    uint64_t owed = (uint64_t)(1 - ctx->tcp.net.tx_tokens);
    return owed * MTCP_NS_PER_S / ctx->stack->tx_rate_Bps + 1;
}

static int take_jobs(struct mtcp_context *ctx)
{
    int jobs = 0;
    struct mtcp_job job;
    while (jobs < MTCP_JOBS_PER_ROUND && mtcp_spsc_pop(&ctx->jobq, &job)) {
        ctx_handle_job(ctx, &job);
        jobs++;
    }
    return jobs;
}

/* One round at now_ns (the only clock the layers below read: ctx->tcp.net.now_ns/now_ms, and the
 * device's through io_dev.now_ns on a stepped context). Returns when the next round is due
 * (monotonic ns): now_ns when there is more to do at once (frames or jobs were taken, TX
 * lists or events are left), else the nearest of the next timer, the next delayed frame of
 * the device, the shaper's next token and now + 1 s (the idle thread's stats heartbeat). */
uint64_t ctx_round(struct mtcp_context *ctx, uint64_t now_ns)
{
    struct io_frame frames[MTCP_RX_BATCH];
    ctx->tcp.net.now_ns = now_ns;
    ctx->tcp.net.now_ms = now_ns / MTCP_NS_PER_MS;
    ctx->tcp.net.now_us = now_ns / 1000u;
    ctx->tcp.net.dev->now_ns = now_ns;
    ctx->tcp.net.tx_budget = MTCP_TX_BATCH;
    int shaped = ctx->stack->tx_rate_Bps != 0;
    if (shaped)
        shaper_refill(ctx, now_ns);
    STAT_INC(&ctx->tcp.net.stats, rounds);

    int n = io_rx_burst(ctx->tcp.net.dev, frames, MTCP_RX_BATCH);
    count_batch(&ctx->tcp.net.stats, n);
    for (int i = 0; i < n; i++)
        net_input(&ctx->tcp.net, &frames[i]);
    if (n > 0)
        io_rx_done(ctx->tcp.net.dev);

    int jobs = take_jobs(ctx);

    /* the static responder answers this round's requests (its responses leave in this
     * round's transmit) */
    uint64_t rsp_next = rsp_round(ctx);

    uint64_t next = tcp_timers(&ctx->tcp);
    if (rsp_next < next)
        next = rsp_next;
    uint64_t arp_next = arp_timer(&ctx->tcp.net);
    if (arp_next < next)
        next = arp_next;
    uint64_t frag_next = net_frag_timer(&ctx->tcp.net);
    if (frag_next < next)
        next = frag_next;

    if (ctx->tcp.net.announce) {
        arp_announce(&ctx->tcp.net);
        ctx->tcp.net.announce = 0;
    }
    tcp_output_round(&ctx->tcp);
    net_tx_flush(&ctx->tcp.net);

    if (flush_events(ctx) && atomic_load(&ctx->app_waiting)) {
        wake_fd(ctx->app_efd);
        STAT_INC(&ctx->tcp.net.stats, app_signals);
    }

    /* a stepped context publishes every round: its caller reads exact counters */
    if (ctx->stepped || now_ns - ctx->last_publish_ns >= MTCP_NS_PER_MS || n == 0) {
        STAT_SET(&ctx->tcp.net.stats, stack_kicks,
                 atomic_load_explicit(&ctx->app_kicks, memory_order_relaxed));
        STAT_SET(&ctx->tcp.net.stats, app_waits,
                 atomic_load_explicit(&ctx->app_waits, memory_order_relaxed));
        update_gauges(ctx);
        mtcp_stats_publish(&ctx->tcp.net.stats, now_ns);
        ctx->last_publish_ns = now_ns;
    }

    int tx_pending = ctx->tcp.ctrl.first || ctx->tcp.ack.first || ctx->tcp.data.first;
    uint64_t tx_wait_ns = 0;
    if (shaped && tx_pending) {
        tx_wait_ns = shaper_wait_ns(ctx);
        if (tx_wait_ns)
            tx_pending = 0; /* the link is busy: wait until it takes a frame again */
    }
    if (n > 0 || jobs > 0 || tx_pending || ctx->ev.first)
        return now_ns;
    if (next > 1000)
        next = 1000; /* once a second at most: the stats heartbeat; no busy spinning */
    uint64_t deadline = now_ns + next * MTCP_NS_PER_MS;
    uint64_t due = io_next_due_ns(ctx->tcp.net.dev);
    if (due && due < deadline)
        deadline = due > now_ns ? due : now_ns;
    if (tx_wait_ns && now_ns + tx_wait_ns < deadline)
        deadline = now_ns + tx_wait_ns;
    return deadline;
}

/* The mTCP thread: rounds on the monotonic clock, and between them a sleep on the device
 * and the stack eventfd (the app's kick) until the round's deadline. */
static void *ctx_loop(void *arg)
{
    struct mtcp_context *ctx = arg;
    struct pollfd pfd[2] = {{.fd = ctx->tcp.net.dev->ops->poll_fd(ctx->tcp.net.dev), .events = POLLIN},
                            {.fd = ctx->stack_efd, .events = POLLIN}};
    uint64_t last_work_ns = 0; /* busy polling: when a round last did work */
    int shaped = ctx->stack->tx_rate_Bps != 0;

    while (!atomic_load_explicit(&ctx->stop, memory_order_acquire)) {
        uint64_t now_ns = mtcp_now_ns();
        uint64_t deadline = ctx_round(ctx, now_ns);
        if (deadline <= now_ns) {
            last_work_ns = now_ns;
            continue;
        }
        /* Adaptive busy polling (as SO_BUSY_POLL): right after a round that did work, the
         * next frame or job is likely near; polling the device and the job queue for up to
         * busy_poll_ns costs less than a sleep and a wake-up. Never while idle. */
        if (ctx->busy_poll_ns && last_work_ns && now_ns - last_work_ns < ctx->busy_poll_ns &&
            !shaped) {
            STAT_INC(&ctx->tcp.net.stats, busy_polls);
            continue;
        }
        uint64_t sleep_ns = deadline - now_ns;
        atomic_store(&ctx->stack_sleeping, 1);
        if (!mtcp_spsc_empty(&ctx->jobq) || atomic_load(&ctx->stop)) {
            atomic_store(&ctx->stack_sleeping, 0);
            continue;
        }
        STAT_INC(&ctx->tcp.net.stats, sleeps);
        struct timespec ts = {.tv_sec = (time_t)(sleep_ns / MTCP_NS_PER_S),
                              .tv_nsec = (long)(sleep_ns % MTCP_NS_PER_S)};
        int pr = ppoll(pfd, 2, &ts, NULL);
        atomic_store(&ctx->stack_sleeping, 0);
        if (pr > 0 && (pfd[1].revents & POLLIN)) {
            drain_fd(ctx->stack_efd);
            STAT_INC(&ctx->tcp.net.stats, wakeups_app);
        }
    }
    return NULL;
}

/* ---------------------------------------------------------------- create */

static void ctx_free(struct mtcp_context *ctx)
{
    tcp_source_destroy(&ctx->tcp);
    rsp_free(ctx->rsp_app);
    mtcp_pool_destroy(&ctx->tcp.tcb_pool);
    mtcp_pool_destroy(&ctx->tcp.sndbuf_pool);
    mtcp_pool_destroy(&ctx->tcp.rcvbuf_pool);
    mtcp_spsc_destroy(&ctx->jobq);
    mtcp_spsc_destroy(&ctx->evq);
    free(ctx->tcp.flow);
    free(ctx->tcp.wheel);
    free(ctx->tcp.net.txbuf);
    free(ctx->socks);
    free(ctx->evbuf);
    frag_table_free(ctx->tcp.net.frag);
    if (ctx->stack_efd >= 0)
        close(ctx->stack_efd);
    if (ctx->app_efd >= 0)
        close(ctx->app_efd);
    mtcp_stats_close(&ctx->tcp.net.stats);
    free(ctx);
}

/* A context with its pools, queues and device started, and no thread: now_ns is its
 * clock's start (the monotonic clock for a threaded context, the caller's for a stepped one). */
static struct mtcp_context *ctx_new(struct mtcp_stack *stack, unsigned core, int cpu,
                                    uint64_t now_ns, int stepped)
{
    if (!stack || core >= stack->ncores) {
        errno = EINVAL;
        return NULL;
    }
    struct mtcp_context *ctx = calloc(1, sizeof(*ctx));
    if (!ctx) {
        errno = ENOMEM;
        return NULL;
    }
    ctx->stack_efd = ctx->app_efd = -1;
    ctx->tcp.net.stats.shm_fd = -1;
    ctx->stack = stack;
    ctx->tcp.net.core = core;
    ctx->tcp.net.ncores = stack->ncores;
    ctx->tcp.net.dev = &stack->io.devs[core];
    ctx->tcp.net.ip = stack->ip;
    ctx->tcp.net.netmask = stack->netmask;
    ctx->tcp.net.gateway = stack->gateway;
    memcpy(ctx->tcp.net.mac, ctx->tcp.net.dev->mac, 6);
    ctx->tcp.priority = !stack->conf.no_priority;
    ctx->tcp.conf = (struct tcp_conf){
        .rcvbuf = stack->rcvbuf,
        .sndbuf = stack->sndbuf,
        .time_wait_ms = stack->time_wait_ms,
        .idle_timeout_ms = stack->idle_timeout_ms,
        .challenge_ack_limit = stack->challenge_ack_limit,
        .sack = stack->sack,
        .delayed_ack = stack->delayed_ack,
        .cc_algo = stack->cc_algo,
        .fixed_isn = stack->conf.fixed_isn,
        .isn_key = {stack->isn_key[0], stack->isn_key[1]},
        .orphan_retries = stack->orphan_retries,
        .max_orphans = stack->max_orphans,
        .max_per_source = stack->max_per_source,
        .mem_budget = stack->mem_budget,
        .evict = stack->evict,
    };
    ctx->tcp.net.shared_addr = stack->shared_addr;
    ctx->tcp.net.tx_rate_Bps = stack->tx_rate_Bps;
    ctx->tcp.net.trace = stack->conf.trace;
    ctx->cpu = cpu;
    ctx->stepped = stepped;
    /* one core announces the address on a real link (afpacket: a NIC or veth; a TAP's
     * host side is known without ARP, a pair link's peer is a test's own stack) */
    ctx->tcp.net.announce = core == 0 && strcmp(ctx->tcp.net.dev->ops->name, "afpacket") == 0;
    /* ARP answers (or gives up on) a next hop: TCP releases or fails the SYNs held for it */
    ctx->tcp.net.net_up.arp_resolved = tcp_arp_resolved;
    ctx->tcp.net.net_up.arp_failed = tcp_arp_failed;
    ctx->tcp.net.now_ns = now_ns;
    ctx->tcp.net.now_ms = now_ns / MTCP_NS_PER_MS;
    ctx->tcp.net.now_us = now_ns / 1000u;
    ctx->busy_poll_ns = (uint64_t)stack->conf.busy_poll_us * 1000u;
    ctx->tcp.wheel_ms = ctx->tcp.net.now_ms;
    ctx->tcp.net.dev->manual_clock = stepped;
    ctx->tcp.net.dev->now_ns = now_ns;

    int rc = io_dev_start(ctx->tcp.net.dev);
    if (rc < 0) {
        ctx_free(ctx);
        errno = -rc;
        return NULL;
    }
    uint32_t n = stack->max_conns;
    int huge = stack->conf.hugepages;
    if (mtcp_pool_init(&ctx->tcp.tcb_pool, sizeof(struct tcb), n, huge) < 0 ||
        mtcp_pool_init(&ctx->tcp.sndbuf_pool, stack->sndbuf, n, huge) < 0 ||
        mtcp_pool_init(&ctx->tcp.rcvbuf_pool, stack->rcvbuf, n, huge) < 0 ||
        mtcp_spsc_init(&ctx->jobq, MTCP_JOBQ_SIZE, sizeof(struct mtcp_job)) < 0 ||
        mtcp_spsc_init(&ctx->evq, MTCP_EVQ_SIZE, sizeof(struct mtcp_event)) < 0 ||
        tcp_source_init(&ctx->tcp) < 0)
        goto nomem;
    ctx->tcp.flow = calloc(MTCP_FLOW_BUCKETS, sizeof(*ctx->tcp.flow));
    ctx->tcp.wheel = calloc(MTCP_WHEEL_SLOTS, sizeof(*ctx->tcp.wheel));
    ctx->tcp.net.txbuf = malloc((size_t)MTCP_TX_BATCH * MTCP_MAX_FRAME);
    ctx->nsocks = (int)n + 64;
    ctx->socks = calloc((size_t)ctx->nsocks, sizeof(*ctx->socks));
    ctx->evbuf = calloc(1024, sizeof(*ctx->evbuf));
    ctx->tcp.net.frag = frag_table_new(MTCP_FRAG_SLOTS, stack->frag_timeout_ms);
    if (!ctx->tcp.flow || !ctx->tcp.wheel || !ctx->tcp.net.txbuf || !ctx->socks || !ctx->evbuf || !ctx->tcp.net.frag)
        goto nomem;
    /* socket ids come from a free list (the paper: any free id, not the lowest) */
    for (int i = 0; i < ctx->nsocks; i++) {
        ctx->socks[i].next_free = i + 1 < ctx->nsocks ? i + 1 : -1;
        ctx->socks[i].epid = -1;
        ctx->socks[i].ep_ready_next = -2;
    }
    ctx->sock_free_head = 0;
    ctx->stack_efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    ctx->app_efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (ctx->stack_efd < 0 || ctx->app_efd < 0) {
        rc = errno;
        ctx_free(ctx);
        errno = rc;
        return NULL;
    }
    rc = mtcp_stats_open(&ctx->tcp.net.stats, stack->conf.stats_path, core);
    if (rc < 0) {
        ctx_free(ctx);
        errno = -rc;
        return NULL;
    }
    STAT_SET(&ctx->tcp.net.stats, pool_tcb_total, n);
    STAT_SET(&ctx->tcp.net.stats, pool_sndbuf_total, n);
    STAT_SET(&ctx->tcp.net.stats, pool_rcvbuf_total, n);
    STAT_SET(&ctx->tcp.net.stats, hugepages, ctx->tcp.tcb_pool.huge + ctx->tcp.sndbuf_pool.huge + ctx->tcp.rcvbuf_pool.huge);
    update_gauges(ctx);
    mtcp_stats_publish(&ctx->tcp.net.stats, now_ns);
    return ctx;
nomem:
    ctx_free(ctx);
    errno = ENOMEM;
    return NULL;
}

mctx_t mtcp_create_context(struct mtcp_stack *stack, unsigned core, int cpu)
{
    struct mtcp_context *ctx = ctx_new(stack, core, cpu, mtcp_now_ns(), 0);
    if (!ctx)
        return NULL;
    if (pthread_create(&ctx->thread, NULL, ctx_loop, ctx) != 0) {
        io_dev_stop(ctx->tcp.net.dev);
        ctx_free(ctx);
        errno = EAGAIN;
        return NULL;
    }
    ctx->thread_started = 1;
    if (cpu >= 0) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(cpu, &set);
        pthread_setaffinity_np(ctx->thread, sizeof(set), &set);
    }
    char name[16]; /* the kernel keeps 15 characters of a thread name */
    snprintf(name, sizeof(name), "mtcp-core%u", core % 100000u);
    pthread_setname_np(ctx->thread, name);
    return ctx;
}

mctx_t mtcp_create_stepped_context(struct mtcp_stack *stack, unsigned core, uint64_t now_ns)
{
    if (now_ns == 0) {
        errno = EINVAL; /* 0 is no time: the clock starts later than that */
        return NULL;
    }
    return ctx_new(stack, core, -1, now_ns, 1);
}

uint64_t mtcp_ctx_step(mctx_t ctx, uint64_t now_ns)
{
    if (!ctx || !ctx->stepped || now_ns < ctx->tcp.net.now_ns) {
        errno = EINVAL; /* a threaded context, or time going backwards */
        return 0;
    }
    return ctx_round(ctx, now_ns);
}

void mtcp_destroy_context(mctx_t ctx)
{
    if (!ctx)
        return;
    if (ctx->thread_started) {
        atomic_store(&ctx->stop, 1);
        wake_fd(ctx->stack_efd);
        pthread_join(ctx->thread, NULL);
    }
    if (ctx->thread_started || ctx->stepped) {
        /* no round runs any more: this thread acts as the mTCP thread now */
        struct mtcp_job job;
        while (mtcp_spsc_pop(&ctx->jobq, &job))
            ctx_handle_job(ctx, &job);
        ctx->tcp.net.tx_budget = 1 << 30;
        tcp_abort_all(&ctx->tcp);
        while (ctx->tcp.listeners) {
            struct mtcp_listener *l = ctx->tcp.listeners;
            ctx->tcp.listeners = l->next;
            mtcp_spsc_destroy(&l->acceptq);
            free(l);
        }
        update_gauges(ctx);
        mtcp_stats_publish(&ctx->tcp.net.stats, ctx->stepped ? ctx->tcp.net.now_ns : mtcp_now_ns());
    }
    io_dev_stop(ctx->tcp.net.dev);
    ctx_free(ctx);
}

int mtcp_ctx_stats(mctx_t ctx, uint64_t *out, int n)
{
    if (!ctx || n < 0) {
        errno = EINVAL;
        return -1;
    }
    int cnt = n < MTCP_STAT__COUNT ? n : MTCP_STAT__COUNT;
    for (int i = 0; i < cnt; i++)
        out[i] = __atomic_load_n(&ctx->tcp.net.stats.pub[i], __ATOMIC_RELAXED);
    return cnt;
}
