/* The app thread's socket API (mtcp_api.h in mTCP). Every call is one crossing
 * from Python; data moves through the shared socket rings without the mTCP
 * thread, which hears only of what it must act on (jobs). One app thread per
 * context. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "../core/bytering.h"
#include "../tcp/tcp.h"
#include "ctx.h"

struct mtcp_linger_opt {
    int l_onoff;
    int l_linger;
};

static struct msock *sock_get(struct mtcp_context *ctx, int id)
{
    if (!ctx || id < 0 || id >= ctx->nsocks || ctx->socks[id].type == MSOCK_FREE ||
        ctx->socks[id].type == MSOCK_ZOMBIE) {
        errno = EBADF;
        return NULL;
    }
    return &ctx->socks[id];
}

/* The socket if it is one of this type, else NULL with errno EBADF (no such socket)
 * or EINVAL (another type). */
static struct msock *sock_get_as(struct mtcp_context *ctx, int id, uint8_t type)
{
    struct msock *s = sock_get(ctx, id);
    if (s && s->type != type) {
        errno = EINVAL;
        return NULL;
    }
    return s;
}

/* The TCB behind the socket now (NULL: none yet, or a listener). */
static inline struct tcb *sock_tcb(struct msock *s)
{
    return atomic_load_explicit(&s->tcb, memory_order_acquire);
}

static void sock_release(struct mtcp_context *ctx, int id)
{
    struct msock *s = &ctx->socks[id];
    s->type = MSOCK_FREE;
    s->epid = -1; /* a stale ready-list entry is dropped when the list is walked */
    s->next_free = ctx->sock_free_head;
    ctx->sock_free_head = id;
}

/* Zombies: sockets closed while their CONNECT was still queued; free once the
 * mTCP thread has seen the close. */
static void reap_zombies(struct mtcp_context *ctx)
{
    for (int i = 0; ctx->nzombies && i < ctx->nsocks; i++) {
        struct msock *s = &ctx->socks[i];
        if (s->type == MSOCK_ZOMBIE && atomic_load_explicit(&s->released, memory_order_acquire)) {
            ctx->nzombies--;
            sock_release(ctx, i);
        }
    }
}

static int sock_alloc(struct mtcp_context *ctx, uint8_t type)
{
    if (ctx->sock_free_head < 0 && ctx->nzombies)
        reap_zombies(ctx);
    int id = ctx->sock_free_head;
    if (id < 0) {
        errno = EMFILE;
        return -1;
    }
    struct msock *s = &ctx->socks[id];
    ctx->sock_free_head = s->next_free;
    uint32_t gen = s->gen + 1;
    int ready_next = s->ep_ready_next;
    memset(s, 0, sizeof(*s));
    s->gen = gen;
    s->type = type;
    s->epid = -1;
    s->ep_ready_next = ready_next; /* may still sit on a ready list (stale entry) */
    atomic_store(&s->tcb, NULL);
    return id;
}

int mtcp_socket(mctx_t ctx, int domain, int type, int protocol)
{
    if (!ctx) {
        errno = EINVAL;
        return -1;
    }
    if (domain != AF_INET) {
        errno = EAFNOSUPPORT;
        return -1;
    }
    if ((type & 0xf) != SOCK_STREAM || (protocol != 0 && protocol != MTCP_IPPROTO_TCP)) {
        errno = EPROTONOSUPPORT;
        return -1;
    }
    return sock_alloc(ctx, MSOCK_STREAM);
}

static int port_in_use(struct mtcp_context *ctx, uint16_t port, int self)
{
    for (int i = 0; i < ctx->nsocks; i++) {
        struct msock *s = &ctx->socks[i];
        if (i != self && (s->type == MSOCK_STREAM || s->type == MSOCK_LISTENER) &&
            s->lport == port)
            return 1;
    }
    return 0;
}

int mtcp_bind(mctx_t ctx, int sockid, uint32_t addr, uint16_t port)
{
    struct msock *s = sock_get(ctx, sockid);
    if (!s)
        return -1;
    if (s->type != MSOCK_STREAM || s->lport || atomic_load(&s->tcb) || s->connecting) {
        errno = EINVAL;
        return -1;
    }
    if (addr != 0 && addr != ctx->tcp.net.ip) {
        errno = EADDRNOTAVAIL;
        return -1;
    }
    if (port == 0) {
        /* any free port from the ephemeral range that maps to this core */
        for (uint32_t p = MTCP_EPHEMERAL_LO; p <= MTCP_EPHEMERAL_HI; p++)
            if (!port_in_use(ctx, (uint16_t)p, sockid)) {
                port = (uint16_t)p;
                break;
            }
        if (!port) {
            errno = EADDRINUSE;
            return -1;
        }
    } else if (port_in_use(ctx, port, sockid)) {
        errno = EADDRINUSE;
        return -1;
    }
    s->laddr = addr;
    s->lport = port;
    return 0;
}

static uint32_t pow2_at_least(uint32_t v)
{
    uint32_t p = 16;
    while (p < v && p < 65536)
        p <<= 1;
    return p;
}

int mtcp_listen(mctx_t ctx, int sockid, int backlog)
{
    struct msock *s = sock_get(ctx, sockid);
    if (!s)
        return -1;
    if (s->type == MSOCK_LISTENER)
        return 0;
    if (atomic_load(&s->tcb) || s->connecting) {
        errno = EINVAL;
        return -1;
    }
    if (!s->lport && mtcp_bind(ctx, sockid, 0, 0) < 0)
        return -1;
    if (backlog <= 0)
        backlog = 128;
    if (backlog > MTCP_MAX_BACKLOG)
        backlog = MTCP_MAX_BACKLOG;
    struct mtcp_listener *l = calloc(1, sizeof(*l));
    if (!l || mtcp_spsc_init(&l->acceptq, pow2_at_least((uint32_t)backlog), sizeof(struct tcb *)) < 0) {
        free(l);
        errno = ENOMEM;
        return -1;
    }
    l->addr = s->laddr;
    l->port = s->lport;
    l->sockid = sockid;
    l->sock_gen = s->gen;
    l->backlog = (uint32_t)backlog;
    l->syn_backlog = ctx->stack->syn_backlog;
    /* accepted connections inherit the buffer sizes set before listen() (the mTCP
     * thread sizes a connection when its SYN arrives) */
    l->rcvbuf = s->want_rcvbuf;
    l->sndbuf = s->want_sndbuf;
    l->cc = s->cc;
    s->type = MSOCK_LISTENER;
    s->listener = l;
    struct mtcp_job j = {.type = JOB_LISTEN, .sockid = sockid, .obj = l};
    ctx_push_job(ctx, &j);
    if (ctx->stepped) {
        /* no thread: run the round that would have registered it, at the context's time */
        ctx_round(ctx, ctx->tcp.net.now_ns);
        return 0;
    }
    ctx_kick(ctx);
    /* Wait until the mTCP thread has it in its table, so that a SYN arriving right
     * after listen() returns finds it (bounded: the thread takes jobs every round). */
    for (int i = 0; i < 200000 && !atomic_load_explicit(&l->registered, memory_order_acquire); i++) {
        if (i > 100)
            sched_yield();
        ctx_kick(ctx);
    }
    return 0;
}

static void push_opt(struct mtcp_context *ctx, struct tcb *t, uint32_t opt, uint32_t value)
{
    struct mtcp_job j = {.type = JOB_SOCKOPT, .tcb = t, .addr = opt, .value = value};
    ctx_push_job(ctx, &j);
}

/* TCB fields belong to the mTCP thread: options reach them as jobs. */
static void sock_push_opts(struct mtcp_context *ctx, struct msock *s, struct tcb *t)
{
    if (s->nodelay)
        push_opt(ctx, t, OPT_NODELAY, 1);
    if (s->linger0)
        push_opt(ctx, t, OPT_LINGER0, 1);
    if (s->ka_idle_ms)
        push_opt(ctx, t, OPT_KEEPIDLE, s->ka_idle_ms);
    if (s->ka_intvl_ms)
        push_opt(ctx, t, OPT_KEEPINTVL, s->ka_intvl_ms);
    if (s->ka_cnt)
        push_opt(ctx, t, OPT_KEEPCNT, s->ka_cnt);
    if (s->keepalive)
        push_opt(ctx, t, OPT_KEEPALIVE, 1);
    if (s->user_timeout_ms)
        push_opt(ctx, t, OPT_USER_TIMEOUT, s->user_timeout_ms);
    if (s->evictable)
        push_opt(ctx, t, OPT_EVICTABLE, 1);
    if (s->cc)
        push_opt(ctx, t, OPT_CONGESTION, s->cc - 1u);
}

static int accept_one(struct mtcp_context *ctx, struct msock *ls)
{
    struct mtcp_listener *l = ls->listener;
    if (ctx->sock_free_head < 0 && ctx->nzombies)
        reap_zombies(ctx);
    if (ctx->sock_free_head < 0) {
        errno = EMFILE; /* leave the connection queued for later */
        return -1;
    }
    struct tcb *t;
    if (!mtcp_spsc_pop(&l->acceptq, &t)) {
        errno = EAGAIN;
        return -1;
    }
    atomic_fetch_sub_explicit(&l->accept_ready, 1, memory_order_release);
    int id = sock_alloc(ctx, MSOCK_STREAM);
    struct msock *s = &ctx->socks[id];
    s->laddr = t->laddr;
    s->lport = t->lport;
    atomic_store_explicit(&s->tcb, t, memory_order_relaxed);
    atomic_store_explicit(&t->sock_gen, s->gen, memory_order_relaxed);
    atomic_store_explicit(&t->sockid, id, memory_order_release);
    /* an accepted socket inherits the listener's options (as on Linux) */
    s->nodelay = ls->nodelay;
    s->linger0 = ls->linger0;
    s->keepalive = ls->keepalive;
    s->ka_idle_ms = ls->ka_idle_ms;
    s->ka_intvl_ms = ls->ka_intvl_ms;
    s->ka_cnt = ls->ka_cnt;
    s->user_timeout_ms = ls->user_timeout_ms;
    s->evictable = ls->evictable;
    s->cc = ls->cc;
    sock_push_opts(ctx, s, t);
    return id;
}

int mtcp_accept(mctx_t ctx, int sockid, uint32_t *addr, uint16_t *port)
{
    struct msock *ls = sock_get_as(ctx, sockid, MSOCK_LISTENER);
    if (!ls)
        return -1;
    int id = accept_one(ctx, ls);
    ctx_kick(ctx);
    if (id >= 0) {
        struct tcb *t = sock_tcb(&ctx->socks[id]);
        if (addr)
            *addr = t->raddr;
        if (port)
            *port = t->rport;
    }
    return id;
}

int mtcp_accept_batch(mctx_t ctx, int sockid, int *out, int max)
{
    struct msock *ls = sock_get_as(ctx, sockid, MSOCK_LISTENER);
    if (!ls)
        return -1;
    int n = 0;
    while (n < max) {
        int id = accept_one(ctx, ls);
        if (id < 0)
            break;
        out[n++] = id;
    }
    ctx_kick(ctx);
    if (n == 0)
        return -1; /* errno from accept_one: EAGAIN or EMFILE */
    return n;
}

int mtcp_connect(mctx_t ctx, int sockid, uint32_t addr, uint16_t port)
{
    struct msock *s = sock_get_as(ctx, sockid, MSOCK_STREAM);
    if (!s)
        return -1;
    if (s->connecting) {
        errno = atomic_load(&s->tcb) && (tcb_app_flags(atomic_load(&s->tcb)) & TCB_AF_CONNECTED)
                    ? EISCONN
                    : EALREADY;
        return -1;
    }
    if (port == 0 || addr == 0) {
        errno = EINVAL;
        return -1;
    }
    s->connecting = 1;
    struct mtcp_job j = {.type = JOB_CONNECT, .sockid = sockid, .gen = s->gen, .obj = s,
                         .addr = addr, .port = port};
    ctx_push_job(ctx, &j);
    ctx_kick(ctx);
    errno = EINPROGRESS;
    return -1;
}

/* The TCB behind a stream socket, or NULL with errno set. */
static struct tcb *stream_tcb(struct mtcp_context *ctx, int sockid)
{
    struct msock *s = sock_get(ctx, sockid);
    if (!s)
        return NULL;
    if (s->type != MSOCK_STREAM) {
        errno = s->type == MSOCK_LISTENER ? EINVAL : EBADF;
        return NULL;
    }
    struct tcb *t = sock_tcb(s);
    if (!t) {
        int err = atomic_load(&s->conn_err);
        errno = err ? err : (s->connecting ? EAGAIN : ENOTCONN);
    }
    return t;
}

static ssize_t read_tcb(struct mtcp_context *ctx, struct msock *s, struct tcb *t, char *buf,
                        size_t len)
{
    uint32_t fl = tcb_app_flags(t); /* before the ring: EOF implies all data is there */
    if (s->rd_shut)
        return 0;
    uint32_t want = len > UINT32_MAX ? UINT32_MAX : (uint32_t)len;
    uint32_t n = mtcp_bytering_read(&t->rcv, buf, want);
    if (n) {
        if (atomic_exchange_explicit(&t->wnd_job_wanted, 0, memory_order_acq_rel)) {
            struct mtcp_job j = {.type = JOB_WINDOW, .tcb = t};
            ctx_push_job(ctx, &j);
        }
        return n;
    }
    if (fl & TCB_AF_RESET) {
        int e = atomic_load(&t->so_error);
        errno = e ? e : ECONNRESET;
        return -1;
    }
    if (fl & (TCB_AF_EOF | TCB_AF_CLOSED))
        return 0;
    errno = (fl & TCB_AF_CONNECTED) ? EAGAIN : EAGAIN;
    return -1;
}

ssize_t mtcp_read(mctx_t ctx, int sockid, char *buf, size_t len)
{
    struct tcb *t = stream_tcb(ctx, sockid);
    if (!t)
        return -1;
    ssize_t r = read_tcb(ctx, &ctx->socks[sockid], t, buf, len);
    ctx_kick(ctx);
    return r;
}

static ssize_t write_tcb(struct mtcp_context *ctx, struct tcb *t, const struct mtcp_iovec *iov,
                         int iovcnt)
{
    uint32_t fl = tcb_app_flags(t);
    if (fl & TCB_AF_RESET) {
        int e = atomic_load(&t->so_error);
        errno = e ? e : ECONNRESET;
        return -1;
    }
    if (fl & (TCB_AF_WR_SHUT | TCB_AF_CLOSED)) {
        errno = EPIPE;
        return -1;
    }
    if (!(fl & TCB_AF_CONNECTED)) {
        errno = EAGAIN;
        return -1;
    }
    size_t total = 0;
    for (int i = 0; i < iovcnt; i++) {
        size_t l = iov[i].len > UINT32_MAX ? UINT32_MAX : iov[i].len;
        uint32_t n = mtcp_bytering_write(&t->snd, iov[i].base, (uint32_t)l);
        total += n;
        if (n < l)
            break;
    }
    if (total == 0) {
        errno = EAGAIN;
        return -1;
    }
    if (!atomic_exchange_explicit(&t->send_job_pending, 1, memory_order_acq_rel)) {
        struct mtcp_job j = {.type = JOB_SEND, .tcb = t};
        ctx_push_job(ctx, &j);
    }
    return (ssize_t)total;
}

ssize_t mtcp_write(mctx_t ctx, int sockid, const char *buf, size_t len)
{
    struct tcb *t = stream_tcb(ctx, sockid);
    if (!t)
        return -1;
    struct mtcp_iovec v = {buf, len};
    ssize_t r = write_tcb(ctx, t, &v, 1);
    ctx_kick(ctx);
    return r;
}

ssize_t mtcp_writev(mctx_t ctx, int sockid, const struct mtcp_iovec *iov, int iovcnt)
{
    struct tcb *t = stream_tcb(ctx, sockid);
    if (!t)
        return -1;
    if (iovcnt < 0) {
        errno = EINVAL;
        return -1;
    }
    ssize_t r = write_tcb(ctx, t, iov, iovcnt);
    ctx_kick(ctx);
    return r;
}

int mtcp_read_batch(mctx_t ctx, const int *sockids, int n, char *buf, size_t cap, ssize_t *out_len)
{
    for (int i = 0; i < n; i++) {
        struct tcb *t = stream_tcb(ctx, sockids[i]);
        ssize_t r = t ? read_tcb(ctx, &ctx->socks[sockids[i]], t, buf + (size_t)i * cap, cap) : -1;
        out_len[i] = r < 0 ? -errno : r;
    }
    ctx_kick(ctx);
    return n;
}

int mtcp_write_batch(mctx_t ctx, const int *sockids, const char *const *bufs, const size_t *lens,
                     int n, ssize_t *out)
{
    for (int i = 0; i < n; i++) {
        struct tcb *t = stream_tcb(ctx, sockids[i]);
        struct mtcp_iovec v = {bufs[i], lens[i]};
        ssize_t r = t ? write_tcb(ctx, t, &v, 1) : -1;
        out[i] = r < 0 ? -errno : r;
    }
    ctx_kick(ctx);
    return n;
}

static int close_one(struct mtcp_context *ctx, int sockid, int abort)
{
    struct msock *s = sock_get(ctx, sockid);
    if (!s)
        return -1;
    if (s->type == MSOCK_LISTENER) {
        struct mtcp_job j = {.type = JOB_UNLISTEN, .sockid = sockid, .obj = s->listener};
        ctx_push_job(ctx, &j);
        sock_release(ctx, sockid);
        return 0;
    }
    struct tcb *t = sock_tcb(s);
    if (t) {
        atomic_store_explicit(&t->sockid, -1, memory_order_release);
        struct mtcp_job j = {.type = (abort || s->linger0) ? JOB_ABORT : JOB_CLOSE, .tcb = t};
        ctx_push_job(ctx, &j);
        sock_release(ctx, sockid);
    } else if (s->connecting && !atomic_load(&s->conn_err)) {
        /* CONNECT still queued: the mTCP thread closes whatever it creates, then
         * lets the id go */
        struct mtcp_job j = {.type = abort ? JOB_ABORT : JOB_CLOSE, .sockid = sockid, .obj = s};
        ctx_push_job(ctx, &j);
        s->type = MSOCK_ZOMBIE;
        s->epid = -1;
        ctx->nzombies++;
    } else {
        sock_release(ctx, sockid);
    }
    return 0;
}

int mtcp_close(mctx_t ctx, int sockid)
{
    int r = close_one(ctx, sockid, 0);
    ctx_kick(ctx);
    return r;
}

int mtcp_abort(mctx_t ctx, int sockid)
{
    int r = close_one(ctx, sockid, 1);
    ctx_kick(ctx);
    return r;
}

int mtcp_write_close_batch(mctx_t ctx, const int *sockids, const char *const *bufs,
                           const size_t *lens, unsigned char *close, int n, ssize_t *out)
{
    for (int i = 0; i < n; i++) {
        struct tcb *t = stream_tcb(ctx, sockids[i]);
        struct mtcp_iovec v = {bufs[i], lens[i]};
        ssize_t r = t ? write_tcb(ctx, t, &v, 1) : -1;
        out[i] = r < 0 ? -errno : r;
        /* unread data: the close would reset the connection, and the RST would leave
         * before the bytes just written (the peer would lose the response) */
        if (close[i] && r >= 0 && (size_t)r == lens[i] && mtcp_bytering_used(&t->rcv) == 0)
            close_one(ctx, sockids[i], 0);
        else
            close[i] = 0;
    }
    ctx_kick(ctx);
    return n;
}

int mtcp_close_batch(mctx_t ctx, const int *sockids, int n)
{
    int bad = 0;
    for (int i = 0; i < n; i++)
        if (close_one(ctx, sockids[i], 0) < 0)
            bad++;
    ctx_kick(ctx);
    if (bad) {
        errno = EBADF;
        return -1;
    }
    return 0;
}

int mtcp_shutdown(mctx_t ctx, int sockid, int how)
{
    struct msock *s = sock_get(ctx, sockid);
    if (!s)
        return -1;
    if (how < MTCP_SHUT_RD || how > MTCP_SHUT_RDWR) {
        errno = EINVAL;
        return -1;
    }
    struct tcb *t = stream_tcb(ctx, sockid);
    if (!t) {
        errno = ENOTCONN;
        return -1;
    }
    if (how != MTCP_SHUT_WR)
        s->rd_shut = 1;
    if (how != MTCP_SHUT_RD &&
        !(atomic_fetch_or(&t->app_flags, TCB_AF_WR_SHUT) & TCB_AF_WR_SHUT)) {
        struct mtcp_job j = {.type = JOB_SHUT_WR, .tcb = t};
        ctx_push_job(ctx, &j);
        ctx_kick(ctx);
    }
    return 0;
}

/* The socket's own address (peer 0) or its peer's (1, connected sockets only), as
 * Linux's inet_getname. */
static int sock_name(struct mtcp_context *ctx, int sockid, int peer, uint32_t *addr,
                     uint16_t *port)
{
    struct msock *s = sock_get(ctx, sockid);
    if (!s)
        return -1;
    struct tcb *t = sock_tcb(s);
    if (!peer) {
        *addr = t ? t->laddr : s->laddr;
        *port = t ? t->lport : s->lport;
        return 0;
    }
    if (!t || !(tcb_app_flags(t) & TCB_AF_CONNECTED)) {
        errno = ENOTCONN;
        return -1;
    }
    *addr = t->raddr;
    *port = t->rport;
    return 0;
}

int mtcp_getsockname(mctx_t ctx, int sockid, uint32_t *addr, uint16_t *port)
{
    return sock_name(ctx, sockid, 0, addr, port);
}

int mtcp_getpeername(mctx_t ctx, int sockid, uint32_t *addr, uint16_t *port)
{
    return sock_name(ctx, sockid, 1, addr, port);
}

static int opt_int(const void *v, unsigned len, int *out)
{
    if (!v || len < sizeof(int)) {
        errno = EINVAL;
        return -1;
    }
    memcpy(out, v, sizeof(int));
    return 0;
}

/* Applies an option to the socket's TCB now, or at connect/accept when it has none. */
static int tcb_opt(struct mtcp_context *ctx, struct msock *s, uint32_t opt, uint32_t value)
{
    struct tcb *t = sock_tcb(s);
    if (t) {
        push_opt(ctx, t, opt, value);
        ctx_kick(ctx);
    }
    return 0;
}

int mtcp_setsockopt(mctx_t ctx, int sockid, int level, int optname, const void *optval,
                    unsigned optlen)
{
    struct msock *s = sock_get(ctx, sockid);
    if (!s)
        return -1;
    int v = 0;
    if (level == MTCP_SOL_SOCKET && optname == MTCP_SO_LINGER) {
        struct mtcp_linger_opt lo;
        if (!optval || optlen < sizeof(lo)) {
            errno = EINVAL;
            return -1;
        }
        memcpy(&lo, optval, sizeof(lo));
        s->linger0 = lo.l_onoff && lo.l_linger == 0;
        struct tcb *t = atomic_load(&s->tcb);
        if (t) {
            push_opt(ctx, t, OPT_LINGER0, s->linger0);
            ctx_kick(ctx);
        }
        return 0;
    }
    if (level == MTCP_IPPROTO_TCP && optname == MTCP_TCP_CONGESTION) {
        int cc = optval ? tcp_cc_from_name(optval, optlen) : -1;
        if (cc < 0) {
            errno = optval ? ENOENT : EINVAL; /* Linux: ENOENT for an unknown name */
            return -1;
        }
        s->cc = (uint8_t)(cc + 1);
        return tcb_opt(ctx, s, OPT_CONGESTION, (uint32_t)cc);
    }
    if (opt_int(optval, optlen, &v) < 0)
        return -1;
    if (level == MTCP_SOL_SOCKET) {
        switch (optname) {
        case MTCP_SO_REUSEADDR:
            s->reuseaddr = v != 0;
            return 0;
        case MTCP_SO_KEEPALIVE:
            s->keepalive = v != 0;
            return tcb_opt(ctx, s, OPT_KEEPALIVE, (uint32_t)s->keepalive);
        case MTCP_SO_EVICTABLE:
            s->evictable = v != 0;
            return tcb_opt(ctx, s, OPT_EVICTABLE, s->evictable);
        case MTCP_SO_RCVBUF:
        case MTCP_SO_SNDBUF:
            if (v < 2048) {
                errno = EINVAL;
                return -1;
            }
            /* takes effect on connections opened after this call; never above the
             * pool's buffer size */
            if (optname == MTCP_SO_RCVBUF)
                s->want_rcvbuf = (uint32_t)v;
            else
                s->want_sndbuf = (uint32_t)v;
            return 0;
        default:
            break;
        }
    } else if (level == MTCP_IPPROTO_TCP) {
        switch (optname) {
        case MTCP_TCP_NODELAY:
            s->nodelay = v != 0;
            return tcb_opt(ctx, s, OPT_NODELAY, s->nodelay);
        case MTCP_TCP_USER_TIMEOUT:
            /* milliseconds, 0 = none (Linux's TCP_USER_TIMEOUT) */
            if (v < 0) {
                errno = EINVAL;
                return -1;
            }
            s->user_timeout_ms = (uint32_t)v;
            return tcb_opt(ctx, s, OPT_USER_TIMEOUT, s->user_timeout_ms);
        case MTCP_TCP_KEEPIDLE:
        case MTCP_TCP_KEEPINTVL:
        case MTCP_TCP_KEEPCNT:
            /* seconds, and a count (Linux's ranges) */
            if (v < 1 || v > (optname == MTCP_TCP_KEEPCNT ? 127 : 32767)) {
                errno = EINVAL;
                return -1;
            }
            if (optname == MTCP_TCP_KEEPIDLE) {
                s->ka_idle_ms = (uint32_t)v * 1000u;
                return tcb_opt(ctx, s, OPT_KEEPIDLE, s->ka_idle_ms);
            }
            if (optname == MTCP_TCP_KEEPINTVL) {
                s->ka_intvl_ms = (uint32_t)v * 1000u;
                return tcb_opt(ctx, s, OPT_KEEPINTVL, s->ka_intvl_ms);
            }
            s->ka_cnt = (uint32_t)v;
            return tcb_opt(ctx, s, OPT_KEEPCNT, s->ka_cnt);
        default:
            break;
        }
    }
    errno = ENOPROTOOPT;
    return -1;
}

int mtcp_getsockopt(mctx_t ctx, int sockid, int level, int optname, void *optval,
                    unsigned *optlen)
{
    struct msock *s = sock_get(ctx, sockid);
    if (!s)
        return -1;
    if (!optval || !optlen || *optlen < sizeof(int)) {
        errno = EINVAL;
        return -1;
    }
    struct tcb *t = sock_tcb(s);
    int v;
    if (level == MTCP_SOL_SOCKET && optname == MTCP_SO_ERROR) {
        v = atomic_load(&s->conn_err);
        if (!v && t && (tcb_app_flags(t) & TCB_AF_RESET))
            v = atomic_load(&t->so_error);
    } else if (level == MTCP_SOL_SOCKET && optname == MTCP_SO_RCVBUF) {
        v = t ? (int)t->rcv.limit : (int)(s->want_rcvbuf ? s->want_rcvbuf : ctx->stack->rcvbuf);
    } else if (level == MTCP_SOL_SOCKET && optname == MTCP_SO_SNDBUF) {
        v = t ? (int)t->snd.limit : (int)(s->want_sndbuf ? s->want_sndbuf : ctx->stack->sndbuf);
    } else if (level == MTCP_SOL_SOCKET && optname == MTCP_SO_KEEPALIVE) {
        v = s->keepalive;
    } else if (level == MTCP_SOL_SOCKET && optname == MTCP_SO_REUSEADDR) {
        v = s->reuseaddr;
    } else if (level == MTCP_IPPROTO_TCP && optname == MTCP_TCP_NODELAY) {
        v = s->nodelay;
    } else if (level == MTCP_IPPROTO_TCP && optname == MTCP_TCP_USER_TIMEOUT) {
        v = (int)s->user_timeout_ms;
    } else if (level == MTCP_SOL_SOCKET && optname == MTCP_SO_EVICTABLE) {
        v = s->evictable;
    } else if (level == MTCP_IPPROTO_TCP && optname == MTCP_TCP_KEEPIDLE) {
        v = (int)((s->ka_idle_ms ? s->ka_idle_ms : MTCP_KEEPIDLE_MS) / 1000u);
    } else if (level == MTCP_IPPROTO_TCP && optname == MTCP_TCP_KEEPINTVL) {
        v = (int)((s->ka_intvl_ms ? s->ka_intvl_ms : MTCP_KEEPINTVL_MS) / 1000u);
    } else if (level == MTCP_IPPROTO_TCP && optname == MTCP_TCP_KEEPCNT) {
        v = (int)(s->ka_cnt ? s->ka_cnt : MTCP_KEEPCNT);
    } else if (level == MTCP_IPPROTO_TCP && optname == MTCP_TCP_MAXSEG) {
        v = t ? t->mss : MTCP_DEFAULT_MSS;
    } else {
        errno = ENOPROTOOPT;
        return -1;
    }
    memcpy(optval, &v, sizeof(v));
    *optlen = sizeof(v);
    return 0;
}

int mtcp_get_tcp_info(mctx_t ctx, int sockid, struct mtcp_tcp_info *o)
{
    struct msock *s = sock_get(ctx, sockid);
    if (!s)
        return -1;
    struct tcb *t = sock_tcb(s);
    memset(o, 0, sizeof(*o));
    if (!t) {
        o->state = s->type == MSOCK_LISTENER ? MTCP_TCP_LISTEN : MTCP_TCP_CLOSED;
        return 0;
    }
    /* A snapshot of fields the mTCP thread owns: each is one aligned word, values
     * may be from slightly different moments (diagnostics only). */
    o->state = __atomic_load_n(&t->state, __ATOMIC_RELAXED);
    o->snd_una = __atomic_load_n(&t->snd_una, __ATOMIC_RELAXED);
    o->snd_nxt = __atomic_load_n(&t->snd_nxt, __ATOMIC_RELAXED);
    o->snd_wnd = __atomic_load_n(&t->snd_wnd, __ATOMIC_RELAXED);
    o->rcv_nxt = __atomic_load_n(&t->rcv_nxt, __ATOMIC_RELAXED);
    o->rcv_wnd = mtcp_bytering_free(&t->rcv);
    o->mss = __atomic_load_n(&t->mss, __ATOMIC_RELAXED);
    o->snd_wscale = __atomic_load_n(&t->snd_wscale, __ATOMIC_RELAXED);
    o->rcv_wscale = __atomic_load_n(&t->rcv_wscale, __ATOMIC_RELAXED);
    o->cwnd = __atomic_load_n(&t->cwnd, __ATOMIC_RELAXED);
    o->ssthresh = __atomic_load_n(&t->ssthresh, __ATOMIC_RELAXED);
    o->srtt_us = __atomic_load_n(&t->srtt_us, __ATOMIC_RELAXED);
    o->rto_ms = __atomic_load_n(&t->rto_ms, __ATOMIC_RELAXED);
    o->sndbuf_used = mtcp_bytering_used(&t->snd);
    o->rcvbuf_used = mtcp_bytering_used(&t->rcv);
    o->sndbuf_cap = t->snd.cap;
    o->rcvbuf_cap = t->rcv.cap;
    o->retransmits = __atomic_load_n(&t->retransmits, __ATOMIC_RELAXED);
    o->sack_ok = __atomic_load_n(&t->sack_ok, __ATOMIC_RELAXED);
    o->ts_ok = __atomic_load_n(&t->ts_ok, __ATOMIC_RELAXED);
    o->rttvar_us = __atomic_load_n(&t->rttvar_us, __ATOMIC_RELAXED);
    o->min_rtt_us = __atomic_load_n(&t->rack_min_rtt_us, __ATOMIC_RELAXED);
    o->lost_segs = (uint32_t)__atomic_load_n(&t->lost_total, __ATOMIC_RELAXED);
    o->reordering = __atomic_load_n(&t->reordering, __ATOMIC_RELAXED);
    o->sacked_bytes = __atomic_load_n(&t->sacked_bytes_sb, __ATOMIC_RELAXED);
    o->lost_bytes = __atomic_load_n(&t->lost_bytes, __ATOMIC_RELAXED);
    {
        uint32_t flight = o->snd_nxt - o->snd_una;
        uint32_t gone = o->sacked_bytes + o->lost_bytes;
        o->pipe = flight > gone ? flight - gone : 0;
    }
    o->reo_wnd_mult = __atomic_load_n(&t->rack_reo_mult, __ATOMIC_RELAXED);
    {
        const char *cc = tcp_cc_name(__atomic_load_n(&t->cc_algo, __ATOMIC_RELAXED));
        size_t n = strlen(cc);
        memcpy(o->congestion, cc, n < sizeof(o->congestion) ? n : sizeof(o->congestion) - 1);
    }
    o->in_recovery = __atomic_load_n(&t->in_recovery, __ATOMIC_RELAXED);
    o->ooo_ranges = __atomic_load_n(&t->nooo, __ATOMIC_RELAXED);
    o->dup_acks = __atomic_load_n(&t->dupacks, __ATOMIC_RELAXED);
    o->rto_backoff = __atomic_load_n(&t->rto_backoff, __ATOMIC_RELAXED);
    return 0;
}
