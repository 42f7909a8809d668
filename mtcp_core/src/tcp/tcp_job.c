/* The mTCP thread's side of the socket API: jobs the app thread queued. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "../api/ctx.h"
#include "../net/net.h"
#include "tcp.h"

/* An ephemeral port whose 4-tuple is free and whose return traffic the device
 * steers to this core (mTCP's mtcp_init_rss idea). 0 when none is left. */
static uint16_t pick_port(struct mtcp_context *ctx, uint32_t raddr, uint16_t rport)
{
    const uint32_t span = MTCP_EPHEMERAL_HI - MTCP_EPHEMERAL_LO + 1;
    if (ctx->next_port < MTCP_EPHEMERAL_LO || ctx->next_port > MTCP_EPHEMERAL_HI)
        ctx->next_port = (uint16_t)(MTCP_EPHEMERAL_LO + (ctx->stack->isn_key[0] % span));
    for (uint32_t i = 0; i < span; i++) {
        uint16_t p = ctx->next_port;
        ctx->next_port = p == MTCP_EPHEMERAL_HI ? MTCP_EPHEMERAL_LO : (uint16_t)(p + 1);
        if (ctx->ncores > 1 && io_flow_core(ctx->ip, raddr, p, rport, ctx->ncores) != ctx->core)
            continue;
        if (listener_lookup(ctx, ctx->ip, p) || flow_lookup(ctx, ctx->ip, p, raddr, rport))
            continue;
        return p;
    }
    return 0;
}

static void connect_failed(struct mtcp_context *ctx, struct msock *s, const struct mtcp_job *j,
                           int err)
{
    atomic_store_explicit(&s->conn_err, err, memory_order_release);
    struct mtcp_event ev = {j->sockid, j->gen,
                            MTCP_EPOLLERR | MTCP_EPOLLHUP | MTCP_EPOLLOUT | MTCP_EPOLLIN};
    if (mtcp_spsc_push(&ctx->evq, &ev) == 0)
        STAT_INC(&ctx->stats, events);
}

static void job_connect(struct mtcp_context *ctx, const struct mtcp_job *j)
{
    struct msock *s = j->obj;
    uint16_t lport = s->lport ? s->lport : pick_port(ctx, j->addr, j->port);
    if (!lport) {
        connect_failed(ctx, s, j, EADDRNOTAVAIL);
        return;
    }
    if (flow_lookup(ctx, ctx->ip, lport, j->addr, j->port)) {
        connect_failed(ctx, s, j, EADDRINUSE);
        return;
    }
    struct tcb *t = tcb_alloc(ctx, ctx->ip, lport, j->addr, j->port);
    if (!t) {
        connect_failed(ctx, s, j, ENOBUFS);
        return;
    }
    t->iss = tcp_isn(ctx, ctx->ip, lport, j->addr, j->port);
    t->snd_una = t->snd_nxt = t->snd_max = t->iss;
    t->snd_head_seq = t->iss + 1;
    t->ts_offset = tcp_ts_offset(ctx, t->laddr, t->raddr);
    t->mss = MTCP_PEER_DEFAULT_MSS;
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
    t->recover = t->iss;
    atomic_store_explicit(&t->sock_gen, j->gen, memory_order_relaxed);
    atomic_store_explicit(&t->sockid, j->sockid, memory_order_release);
    atomic_store_explicit(&s->tcb, t, memory_order_release);
    tcp_set_state(ctx, t, TCP_SYN_SENT);
    tcp_schedule(ctx, t, TCB_P_SYN);
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
    if (!t || !t->in_use)
        return;
    t->app_closed = 1;
    t->acc_queued = 0;
    if (t->state == TCP_CLOSED) {
        tcb_free(ctx, t);
        return;
    }
    if (t->state == TCP_SYN_SENT) {
        tcp_conn_done(ctx, t, 0);
        return;
    }
    if (t->state == TCP_TIME_WAIT) {
        if (abort)
            tcp_conn_done(ctx, t, 0);
        else
            tcp_mem_uncharge(ctx, t); /* nothing more to send or read: freed when it ends */
        return;
    }
    /* RFC 9293 3.10.4 / RFC 2525 2.17: closing with unread data, or SO_LINGER 0,
     * aborts with RST */
    if (abort || t->linger0 || mtcp_bytering_used(&t->rcv)) {
        tcp_send_rst_now(ctx, t);
        tcp_conn_done(ctx, t, 0);
        return;
    }
    /* it lingers without its app: bounded in number (max_orphans) and in retries */
    if (tcp_orphan_add(ctx, t) < 0)
        return;
    if (t->state == TCP_ESTABLISHED || t->state == TCP_CLOSE_WAIT ||
        t->state == TCP_SYN_RECEIVED)
        tcp_schedule(ctx, t, TCB_P_FIN | TCB_P_DATA);
    /* FIN-WAIT-*, CLOSING, LAST-ACK: already closing; freed when done */
}

void tcp_close_tcb(struct mtcp_context *ctx, struct tcb *t, int abort)
{
    struct mtcp_job j = {.type = abort ? JOB_ABORT : JOB_CLOSE, .tcb = t};
    job_close(ctx, &j, abort);
}

static void listener_free(struct mtcp_context *ctx, struct mtcp_listener *l)
{
    rsp_listener_gone(ctx, l);
    struct mtcp_listener **pp = &ctx->listeners;
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
            tcp_send_rst_now(ctx, t);
        tcp_conn_done(ctx, t, 0);
    }
    /* Handshakes still in progress. */
    for (uint32_t i = 0; l->pending && i < ctx->tcb_pool.n; i++) {
        t = mtcp_pool_at(&ctx->tcb_pool, i);
        if (t->in_use && t->listener == l) {
            tcp_send_rst_now(ctx, t);
            tcp_conn_done(ctx, t, 0);
        }
    }
    mtcp_spsc_destroy(&l->acceptq);
    free(l);
}

void tcp_handle_job(struct mtcp_context *ctx, const struct mtcp_job *j)
{
    STAT_INC(&ctx->stats, jobs);
    struct tcb *t = j->tcb;
    switch (j->type) {
    case JOB_LISTEN: {
        struct mtcp_listener *l = j->obj;
        l->next = ctx->listeners;
        ctx->listeners = l;
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
            tcp_schedule(ctx, t, TCB_P_DATA);
        break;
    case JOB_WINDOW:
        if (t->in_use && t->state != TCP_CLOSED && t->state != TCP_TIME_WAIT) {
            /* a window update is worth a segment when it opens by 2 MSS or half the
             * buffer (RFC 9293 3.8.6.2.2, receiver-side SWS avoidance) */
            uint32_t opened = t->rcv_nxt + tcp_rcv_room(t) - t->rcv_adv;
            if ((int32_t)opened >= (int32_t)(2u * t->mss) ||
                (int32_t)opened >= (int32_t)(t->rcv_space / 2))
                tcp_schedule(ctx, t, TCB_P_ACK);
            else
                atomic_store_explicit(&t->wnd_job_wanted, 1, memory_order_release);
        }
        break;
    case JOB_SHUT_WR:
        if (t->in_use && (t->state == TCP_ESTABLISHED || t->state == TCP_CLOSE_WAIT ||
                          t->state == TCP_SYN_RECEIVED || t->state == TCP_SYN_SENT))
            tcp_schedule(ctx, t, TCB_P_FIN | TCB_P_DATA);
        break;
    case JOB_SOCKOPT:
        if (!t->in_use)
            break;
        switch (j->addr) {
        case OPT_NODELAY:
            t->nodelay = (uint8_t)j->value;
            if (t->nodelay)
                tcp_schedule(ctx, t, TCB_P_DATA); /* push what Nagle held */
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
            if (j->value < TCP_CC_COUNT && j->value != t->cc_algo) {
                t->cc_algo = (uint8_t)j->value;
                t->cub_w_max = 0; /* CUBIC starts its curve from the current window */
                t->cub_epoch_ok = 0;
            }
            break;
        default:
            break;
        }
        if (t->state == TCP_ESTABLISHED || t->state == TCP_CLOSE_WAIT) {
            if (t->rto_armed && t->timer_kind == TCP_TIMER_KEEPALIVE)
                tcp_rto_disarm(ctx, t); /* re-armed with the new settings */
            tcp_idle_timer(ctx, t);
        }
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
