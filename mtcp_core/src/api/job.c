/* The mTCP thread's side of the socket API: the jobs the app thread queued, turned into
 * tcp/ calls (tcp/tcp.h "user calls") and socket-table bookkeeping. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "../tcp/tcp.h"
#include "ctx.h"

static void connect_failed(struct mtcp_context *ctx, struct msock *s, const struct mtcp_job *j,
                           int err)
{
    atomic_store_explicit(&s->conn_err, err, memory_order_release);
    struct mtcp_event ev = {j->sockid, j->gen,
                            MTCP_EPOLLERR | MTCP_EPOLLHUP | MTCP_EPOLLOUT | MTCP_EPOLLIN};
    if (mtcp_spsc_push(&ctx->evq, &ev) == 0)
        STAT_INC(&ctx->tcp.net.stats, events);
}

static void job_connect(struct mtcp_context *ctx, const struct mtcp_job *j)
{
    struct msock *s = j->obj;
    uint16_t lport = s->lport ? s->lport : tcp_pick_port(&ctx->tcp, j->addr, j->port);
    if (!lport) {
        connect_failed(ctx, s, j, EADDRNOTAVAIL);
        return;
    }
    if (flow_lookup(&ctx->tcp, ctx->tcp.net.ip, lport, j->addr, j->port)) {
        connect_failed(ctx, s, j, EADDRINUSE);
        return;
    }
    struct tcb *t = tcp_open_active(&ctx->tcp, lport, j->addr, j->port);
    if (!t) {
        connect_failed(ctx, s, j, ENOBUFS);
        return;
    }
    tcb_limit_buffers(t, s->want_rcvbuf, s->want_sndbuf);
    /* options set before connect(): the app thread wrote them before queueing the
     * job, and the queue orders that */
    t->nodelay = s->nodelay;
    t->linger0 = s->linger0;
    if (s->cc)
        t->cc_algo = (uint8_t)(s->cc - 1u);
    t->keepalive = s->keepalive;
    if (s->ka_idle_ms)
        t->ka_idle_ms = s->ka_idle_ms;
    if (s->ka_intvl_ms)
        t->ka_intvl_ms = s->ka_intvl_ms;
    if (s->ka_cnt)
        t->ka_cnt = (uint8_t)s->ka_cnt;
    t->user_timeout_ms = s->user_timeout_ms;
    t->evictable = s->evictable;
    atomic_store_explicit(&t->sock_gen, j->gen, memory_order_relaxed);
    atomic_store_explicit(&t->sockid, j->sockid, memory_order_release);
    atomic_store_explicit(&s->tcb, t, memory_order_release);
    tcp_connect(&ctx->tcp, t);
}

static void job_close(struct mtcp_context *ctx, const struct mtcp_job *j, int abort)
{
    struct tcb *t = j->tcb;
    if (!t && j->obj) {
        /* the socket was closed while its CONNECT was queued: the TCB (if the
         * connect got one) is in the socket; then the socket id may be reused */
        struct msock *s = j->obj;
        t = atomic_load_explicit(&s->tcb, memory_order_acquire);
        atomic_store_explicit(&s->released, 1, memory_order_release);
        if (t)
            atomic_store_explicit(&t->sockid, -1, memory_order_release);
    }
    tcp_close_tcb(&ctx->tcp, t, abort);
}

static void listener_free(struct mtcp_context *ctx, struct mtcp_listener *l)
{
    rsp_listener_gone(ctx, l);
    struct mtcp_listener **pp = &ctx->tcp.listeners;
    for (; *pp; pp = &(*pp)->next) {
        if (*pp == l) {
            *pp = l->next;
            break;
        }
    }
    /* The app no longer touches the accept queue: reset what nobody accepted. */
    struct tcb *t;
    while (mtcp_spsc_pop(&l->acceptq, &t)) {
        if (!t->in_use || atomic_load(&t->sockid) >= 0)
            continue;
        t->app_closed = 1;
        if (t->state != TCP_CLOSED)
            tcp_send_rst_now(&ctx->tcp, t);
        tcp_conn_done(&ctx->tcp, t, 0);
    }
    /* Handshakes still in progress. */
    for (uint32_t i = 0; l->pending && i < ctx->tcp.tcb_pool.n; i++) {
        t = mtcp_pool_at(&ctx->tcp.tcb_pool, i);
        if (t->in_use && t->listener == l) {
            tcp_send_rst_now(&ctx->tcp, t);
            tcp_conn_done(&ctx->tcp, t, 0);
        }
    }
    mtcp_spsc_destroy(&l->acceptq);
    free(l);
}

void ctx_handle_job(struct mtcp_context *ctx, const struct mtcp_job *j)
{
    STAT_INC(&ctx->tcp.net.stats, jobs);
    struct tcb *t = j->tcb;
    switch (j->type) {
    case JOB_LISTEN: {
        struct mtcp_listener *l = j->obj;
        l->next = ctx->tcp.listeners;
        ctx->tcp.listeners = l;
        atomic_store_explicit(&l->registered, 1, memory_order_release);
        break;
    }
    case JOB_UNLISTEN:
        listener_free(ctx, j->obj);
        break;
    case JOB_CONNECT:
        job_connect(ctx, j);
        break;
    case JOB_RSP_ENABLE:
    case JOB_RSP_INSTALL:
    case JOB_RSP_REMOVE:
    case JOB_RSP_CLEAR:
    case JOB_RSP_DRAIN:
        rsp_job(ctx, j);
        break;
    case JOB_SEND:
        atomic_store_explicit(&t->send_job_pending, 0, memory_order_release);
        if (t->in_use)
            tcp_schedule(&ctx->tcp, t, TCB_P_DATA);
        break;
    case JOB_WINDOW:
        tcp_window_update(&ctx->tcp, t);
        break;
    case JOB_SHUT_WR:
        tcp_shutdown_wr(&ctx->tcp, t);
        break;
    case JOB_SOCKOPT:
        if (!t->in_use)
            break;
        switch (j->addr) {
        case OPT_NODELAY:
            t->nodelay = (uint8_t)j->value;
            if (t->nodelay)
                tcp_schedule(&ctx->tcp, t, TCB_P_DATA); /* push what Nagle held */
            break;
        case OPT_LINGER0:
            t->linger0 = (uint8_t)j->value;
            break;
        case OPT_KEEPALIVE:
            t->keepalive = (uint8_t)j->value;
            break;
        case OPT_KEEPIDLE:
            t->ka_idle_ms = j->value;
            break;
        case OPT_KEEPINTVL:
            t->ka_intvl_ms = j->value;
            break;
        case OPT_KEEPCNT:
            t->ka_cnt = (uint8_t)j->value;
            break;
        case OPT_USER_TIMEOUT:
            t->user_timeout_ms = j->value;
            break;
        case OPT_EVICTABLE:
            t->evictable = (uint8_t)j->value;
            break;
        case OPT_CONGESTION:
            tcp_set_cc(t, j->value);
            break;
        default:
            break;
        }
        tcp_timers_changed(&ctx->tcp, t);
        break;
    case JOB_CLOSE:
        job_close(ctx, j, 0);
        break;
    case JOB_ABORT:
        job_close(ctx, j, 1);
        break;
    default:
        break;
    }
}
