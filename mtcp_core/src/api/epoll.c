/* mTCP's epoll: the mTCP thread sends events through the event queue; the app
 * thread keeps the ready lists and computes readiness from socket state, so that
 * level-triggered sockets stay ready as long as they are (Linux semantics) and
 * edge-triggered ones report once per new event. */
#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <unistd.h>

#include "../core/clock.h"
#include "ctx.h"

#define EP_ALWAYS (MTCP_EPOLLERR | MTCP_EPOLLHUP)

static uint32_t readiness(struct mtcp_context *ctx, struct msock *s)
{
    if (s->type == MSOCK_LISTENER)
        return atomic_load_explicit(&s->listener->accept_ready, memory_order_acquire) ? MTCP_EPOLLIN
                                                                                      : 0;
    struct tcb *t = atomic_load_explicit(&s->tcb, memory_order_acquire);
    if (!t) {
        if (atomic_load(&s->conn_err))
            return MTCP_EPOLLERR | MTCP_EPOLLHUP | MTCP_EPOLLIN | MTCP_EPOLLOUT;
        /* connecting: nothing yet; never connected: like Linux, OUT|HUP */
        return s->connecting ? 0 : MTCP_EPOLLOUT | MTCP_EPOLLHUP;
    }
    (void)ctx;
    uint32_t fl = tcb_app_flags(t);
    uint32_t ev = 0;
    if (mtcp_bytering_used(&t->rcv) || (fl & (TCB_AF_EOF | TCB_AF_CLOSED)) || s->rd_shut)
        ev |= MTCP_EPOLLIN;
    if (fl & TCB_AF_EOF)
        ev |= MTCP_EPOLLRDHUP;
    if ((fl & TCB_AF_CONNECTED) && !(fl & TCB_AF_WR_SHUT) && mtcp_bytering_free(&t->snd))
        ev |= MTCP_EPOLLOUT;
    if (fl & TCB_AF_RESET)
        ev |= MTCP_EPOLLERR | MTCP_EPOLLHUP | MTCP_EPOLLIN | MTCP_EPOLLOUT;
    if ((fl & TCB_AF_CLOSED) || ((fl & TCB_AF_EOF) && (fl & TCB_AF_WR_SHUT)))
        ev |= MTCP_EPOLLHUP;
    return ev;
}

static struct mtcp_epoll *ep_get(struct mtcp_context *ctx, int epid)
{
    if (!ctx || epid < 0 || epid >= MTCP_MAX_EPOLL || !ctx->ep[epid].used) {
        errno = EBADF;
        return NULL;
    }
    return &ctx->ep[epid];
}

static void ready_push(struct mtcp_context *ctx, struct mtcp_epoll *ep, int sockid)
{
    struct msock *s = &ctx->socks[sockid];
    if (s->ep_ready_next != -2)
        return; /* already listed (perhaps as a stale entry, which the walk revalidates) */
    s->ep_ready_next = -1;
    if (ep->ready_tail >= 0)
        ctx->socks[ep->ready_tail].ep_ready_next = sockid;
    else
        ep->ready_head = sockid;
    ep->ready_tail = sockid;
    ep->nready++;
}

static int ready_pop(struct mtcp_context *ctx, struct mtcp_epoll *ep)
{
    int id = ep->ready_head;
    if (id < 0)
        return -1;
    struct msock *s = &ctx->socks[id];
    ep->ready_head = s->ep_ready_next;
    if (ep->ready_head < 0)
        ep->ready_tail = -1;
    s->ep_ready_next = -2;
    ep->nready--;
    return id;
}

int mtcp_epoll_create(mctx_t ctx, int size)
{
    (void)size;
    if (!ctx) {
        errno = EINVAL;
        return -1;
    }
    for (int i = 0; i < MTCP_MAX_EPOLL; i++) {
        if (!ctx->ep[i].used) {
            ctx->ep[i].used = 1;
            ctx->ep[i].ready_head = ctx->ep[i].ready_tail = -1;
            ctx->ep[i].nready = 0;
            return i;
        }
    }
    errno = EMFILE;
    return -1;
}

int mtcp_epoll_close(mctx_t ctx, int epid)
{
    struct mtcp_epoll *ep = ep_get(ctx, epid);
    if (!ep)
        return -1;
    while (ready_pop(ctx, ep) >= 0)
        ;
    for (int i = 0; i < ctx->nsocks; i++)
        if (ctx->socks[i].epid == epid)
            ctx->socks[i].epid = -1;
    ep->used = 0;
    return 0;
}

int mtcp_epoll_ctl(mctx_t ctx, int epid, int op, int sockid, uint32_t events, uint64_t data)
{
    struct mtcp_epoll *ep = ep_get(ctx, epid);
    if (!ep)
        return -1;
    if (sockid < 0 || sockid >= ctx->nsocks || ctx->socks[sockid].type == MSOCK_FREE ||
        ctx->socks[sockid].type == MSOCK_ZOMBIE) {
        errno = EBADF;
        return -1;
    }
    struct msock *s = &ctx->socks[sockid];
    switch (op) {
    case MTCP_EPOLL_CTL_ADD:
        if (s->epid >= 0) {
            errno = EEXIST; /* one epoll per socket */
            return -1;
        }
        s->epid = epid;
        break;
    case MTCP_EPOLL_CTL_MOD:
        if (s->epid != epid) {
            errno = ENOENT;
            return -1;
        }
        break;
    case MTCP_EPOLL_CTL_DEL:
        if (s->epid != epid) {
            errno = ENOENT;
            return -1;
        }
        s->epid = -1; /* its ready-list entry, if any, is dropped by the next walk */
        return 0;
    default:
        errno = EINVAL;
        return -1;
    }
    s->ep_events = events;
    s->ep_data = data;
    /* like Linux: a socket that is already ready is reported after ADD/MOD */
    uint32_t now = readiness(ctx, s);
    s->ep_pending = now;
    if (now & (events | EP_ALWAYS))
        ready_push(ctx, ep, sockid);
    return 0;
}

/* Move queued stack events onto the ready lists. */
static int drain_events(struct mtcp_context *ctx)
{
    int total = 0;
    for (;;) {
        int n = 0;
        while (n < 1024 && mtcp_spsc_pop(&ctx->evq, &ctx->evbuf[n]))
            n++;
        for (int i = 0; i < n; i++) {
            struct mtcp_event *e = &ctx->evbuf[i];
            if (e->sockid < 0 || e->sockid >= ctx->nsocks)
                continue;
            struct msock *s = &ctx->socks[e->sockid];
            if (s->gen != e->gen || s->type == MSOCK_FREE || s->epid < 0)
                continue;
            s->ep_pending |= e->events;
            ready_push(ctx, &ctx->ep[s->epid], e->sockid);
        }
        total += n;
        if (n < 1024)
            return total;
    }
}

static int collect(struct mtcp_context *ctx, int epid, struct mtcp_epoll *ep,
                   struct mtcp_epoll_event *out, int max)
{
    int got = 0;
    uint32_t walk = ep->nready;
    while (walk-- && got < max) {
        int id = ready_pop(ctx, ep);
        if (id < 0)
            break;
        struct msock *s = &ctx->socks[id];
        if (s->epid != epid || s->type == MSOCK_FREE || s->type == MSOCK_ZOMBIE)
            continue; /* stale entry */
        uint32_t want = s->ep_events | EP_ALWAYS;
        uint32_t ev = readiness(ctx, s) & want;
        if (s->ep_events & MTCP_EPOLLET) {
            /* edge: report once for the events that arrived, if still true */
            if ((s->ep_pending & want) && ev) {
                out[got].events = ev;
                out[got].data = s->ep_data;
                got++;
            }
            s->ep_pending = 0;
        } else if (ev) {
            out[got].events = ev;
            out[got].data = s->ep_data;
            got++;
            ready_push(ctx, ep, id); /* level: stays listed while it is ready */
        }
    }
    return got;
}

int mtcp_epoll_wait(mctx_t ctx, int epid, struct mtcp_epoll_event *events, int maxevents,
                    int timeout_ms)
{
    struct mtcp_epoll *ep = ep_get(ctx, epid);
    if (!ep)
        return -1;
    if (!events || maxevents <= 0) {
        errno = EINVAL;
        return -1;
    }
    if (ctx->stepped)
        timeout_ms = 0; /* no thread will post events while we wait: the caller steps */
    uint64_t deadline = timeout_ms > 0 ? mtcp_now_ns() + (uint64_t)timeout_ms * MTCP_NS_PER_MS : 0;
    struct pollfd pfd = {.fd = ctx->app_efd, .events = POLLIN};
    for (;;) {
        drain_events(ctx);
        int got = collect(ctx, epid, ep, events, maxevents);
        if (got || timeout_ms == 0)
            return got;
        int wait_ms = -1;
        if (timeout_ms > 0) {
            uint64_t now = mtcp_now_ns();
            if (now >= deadline)
                return 0;
            wait_ms = (int)((deadline - now + MTCP_NS_PER_MS - 1) / MTCP_NS_PER_MS);
        }
        atomic_store(&ctx->app_waiting, 1);
        if (!mtcp_spsc_empty(&ctx->evq)) {
            atomic_store(&ctx->app_waiting, 0);
            continue;
        }
        atomic_fetch_add_explicit(&ctx->app_waits, 1, memory_order_relaxed);
        int r = poll(&pfd, 1, wait_ms);
        atomic_store(&ctx->app_waiting, 0);
        if (r > 0) {
            uint64_t v;
            ssize_t rr = read(ctx->app_efd, &v, sizeof(v));
            (void)rr;
            if (atomic_exchange(&ctx->interrupted, 0))
                return 0;
        } else if (r < 0 && errno == EINTR) {
            errno = EINTR;
            return -1;
        }
    }
}

void mtcp_epoll_interrupt(mctx_t ctx)
{
    atomic_store(&ctx->interrupted, 1);
    uint64_t one = 1;
    ssize_t r = write(ctx->app_efd, &one, sizeof(one));
    (void)r;
}
