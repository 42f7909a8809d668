/* The static responder (rsp.h): the table of installed responses, the connections the
 * mTCP thread answers itself, and the app thread's calls that fill the table.
 *
 * A connection accepted on the responder's port belongs to the responder until it sees
 * a request it does not answer: then the connection, with every unread byte still in its
 * receive ring, goes into the listener's accept queue like any new connection, and the
 * application (Python) serves it from then on. While the responder holds it, it does what
 * the Python path does (appliance.http.connection): keep-alive, Connection: close,
 * HTTP/1.0 keep-alive, pipelining, the keep-alive request limit, the header and keep-alive
 * timeouts, drain. Every hit counts in the same HTTP metrics and, when the site keeps an
 * access log, leaves a record in a per-core ring that the worker drains in batches.
 *
 * Threads: the table, the connections and the timer lists belong to the mTCP thread; the
 * app thread changes the table only through jobs (an entry is built whole by the app and
 * handed over), reads the log ring (single consumer) and takes the metrics (atomics). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../core/bytering.h"
#include "../core/clock.h"
#include "../core/hash.h"
#include "../tcp/tcp.h"
#include "ctx.h"
#include "rsp.h"

enum { P_KEY, P_PRE, P_POST, P_BODY, P_ETAG, P_PRE304, P_POST304, RSP_NPARTS };

struct rsp_entry {
    struct rsp_entry *hnext;
    uint64_t hash;
    size_t weight;
    uint32_t off[RSP_NPARTS], len[RSP_NPARTS];
    uint8_t data[];
};

/* metrics slots: requests by (GET, HEAD) x (2xx, 3xx), bytes, duration sum, buckets */
#define RSP_M_REQ 0
#define RSP_M_BYTES 4
#define RSP_M_DUR_SUM 5
#define RSP_M_BUCKETS 6
#define RSP_NBUCKETS 15
#define RSP_NMETRICS (RSP_M_BUCKETS + RSP_NBUCKETS)
static const uint64_t BUCKET_NS[RSP_NBUCKETS - 1] = {
    500000ull,     1000000ull,     2500000ull,     5000000ull,    10000000ull,
    25000000ull,   50000000ull,    100000000ull,   250000000ull,  500000000ull,
    1000000000ull, 2500000000ull, 5000000000ull,  10000000000ull,
};


struct mtcp_responder {
    struct mtcp_rsp_conf conf;     /* mTCP thread's (set by JOB_RSP_ENABLE) */
    struct mtcp_rsp_conf app_conf; /* app thread's copy */
    /* ---- mTCP thread ---- */
    int active;                  /* adopted by the mTCP thread */
    int draining;
    struct rsp_entry **buckets;
    uint32_t nbuckets;
    uint32_t entries;
    uint64_t bytes;
    struct tcb *hdr_head, *hdr_tail; /* header timeout FIFO */
    struct tcb *ka_head, *ka_tail;   /* keep-alive timeout FIFO */
    int64_t date_sec;
    char date[29];
    uint8_t head[RSP_MAX_HEAD];
    uint8_t key[2 * RSP_MAX_HEAD + 16];
    /* ---- shared ---- */
    struct mtcp_bytering log;    /* mTCP thread writes, app thread reads */
    _Atomic uint64_t metrics[RSP_NMETRICS];
    _Atomic uint32_t conns;      /* connections the responder holds */
};

/* A log record: this header, then the request line, referer and user agent, padded to 8. */
struct rsp_logrec {
    uint32_t len;         /* whole record, padded */
    uint32_t raddr;
    uint16_t status;
    uint16_t line_len;
    uint16_t referer_len; /* 0xffff: absent */
    uint16_t agent_len;   /* 0xffff: absent */
    uint32_t body;
    uint32_t sent;
    uint64_t duration_ns;
    uint64_t wall_ns;     /* CLOCK_REALTIME when the response was handed to TCP */
    uint16_t host_len;    /* 0xffff: absent */
    uint16_t pad[3];
};

static const char DAYS[7][4] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
static const char MONTHS[12][4] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                   "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
static const char TR_CLOSE[] = "Connection: close\r\n\r\n";
static const char TR_KEEP[] = "Connection: keep-alive\r\n\r\n";
static const char TR_NONE[] = "\r\n";

/* ---------------------------------------------------------------- Date slot */

static void two(char *o, int v)
{
    o[0] = (char)('0' + v / 10 % 10);
    o[1] = (char)('0' + v % 10);
}

/* The per-core Date value (IMF-fixdate), formatted again only when the second changes. */
static void date_refresh(struct mtcp_responder *R)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    if ((int64_t)ts.tv_sec == R->date_sec)
        return;
    R->date_sec = (int64_t)ts.tv_sec;
    time_t s = ts.tv_sec;
    struct tm g;
    gmtime_r(&s, &g);
    char *o = R->date;
    memcpy(o, DAYS[g.tm_wday % 7], 3);
    o[3] = ',';
    o[4] = ' ';
    two(o + 5, g.tm_mday);
    o[7] = ' ';
    memcpy(o + 8, MONTHS[g.tm_mon % 12], 3);
    o[11] = ' ';
    int y = g.tm_year + 1900;
    two(o + 12, y / 100);
    two(o + 14, y % 100);
    o[16] = ' ';
    two(o + 17, g.tm_hour);
    o[19] = ':';
    two(o + 20, g.tm_min);
    o[22] = ':';
    two(o + 23, g.tm_sec);
    memcpy(o + 25, " GMT", 4);
}

/* ---------------------------------------------------------------- table */

static void table_gauges(struct mtcp_context *ctx, struct mtcp_responder *R)
{
    STAT_SET(&ctx->tcp.net.stats, rsp_entries, R->entries);
    STAT_SET(&ctx->tcp.net.stats, rsp_bytes, R->bytes);
}

static struct rsp_entry **table_slot(struct mtcp_responder *R, uint64_t hash, const uint8_t *key,
                                     uint32_t keylen)
{
    struct rsp_entry **pp = &R->buckets[hash & (R->nbuckets - 1)];
    for (; *pp; pp = &(*pp)->hnext) {
        struct rsp_entry *e = *pp;
        if (e->hash == hash && e->len[P_KEY] == keylen &&
            memcmp(e->data + e->off[P_KEY], key, keylen) == 0)
            break;
    }
    return pp;
}

static void table_remove(struct mtcp_responder *R, struct rsp_entry **pp)
{
    struct rsp_entry *e = *pp;
    *pp = e->hnext;
    R->entries--;
    R->bytes -= e->weight;
    free(e);
}

static void table_clear(struct mtcp_responder *R)
{
    for (uint32_t i = 0; R->buckets && i < R->nbuckets; i++)
        while (R->buckets[i])
            table_remove(R, &R->buckets[i]);
}

static void table_install(struct mtcp_context *ctx, struct mtcp_responder *R, struct rsp_entry *e)
{
    struct rsp_entry **pp = table_slot(R, e->hash, e->data + e->off[P_KEY], e->len[P_KEY]);
    if (*pp)
        table_remove(R, pp);
    if (R->entries >= R->conf.max_entries || R->bytes + e->weight > R->conf.max_bytes) {
        STAT_INC(&ctx->tcp.net.stats, rsp_install_refused); /* over the core's bound */
        free(e);
        return;
    }
    e->hnext = NULL;
    *pp = e;
    R->entries++;
    R->bytes += e->weight;
}

/* ---------------------------------------------------------------- timers */

static void tlist_unlink(struct mtcp_responder *R, struct tcb *t)
{
    struct tcb **head = t->rsp_tlist == 1 ? &R->hdr_head : &R->ka_head;
    struct tcb **tail = t->rsp_tlist == 1 ? &R->hdr_tail : &R->ka_tail;
    if (!t->rsp_tlist)
        return;
    if (t->rsp_tprev)
        t->rsp_tprev->rsp_tnext = t->rsp_tnext;
    else
        *head = t->rsp_tnext;
    if (t->rsp_tnext)
        t->rsp_tnext->rsp_tprev = t->rsp_tprev;
    else
        *tail = t->rsp_tprev;
    t->rsp_tnext = t->rsp_tprev = NULL;
    t->rsp_tlist = 0;
}

/* which: 1 header timeout, 2 keep-alive; deadline = now + that timeout */
static void tlist_append(struct mtcp_context *ctx, struct mtcp_responder *R, struct tcb *t,
                         int which, uint64_t from_ms)
{
    tlist_unlink(R, t);
    struct tcb **head = which == 1 ? &R->hdr_head : &R->ka_head;
    struct tcb **tail = which == 1 ? &R->hdr_tail : &R->ka_tail;
    t->rsp_deadline_ms =
        from_ms + (which == 1 ? R->conf.header_timeout_ms : R->conf.keepalive_timeout_ms);
    (void)ctx;
    t->rsp_tlist = (uint8_t)which;
    t->rsp_tprev = *tail;
    t->rsp_tnext = NULL;
    if (*tail)
        (*tail)->rsp_tnext = t;
    else
        *head = t;
    *tail = t;
}

/* ---------------------------------------------------------------- connections */

int tcp_app_takes(struct tcp_layer *tl, const struct mtcp_listener *l)
{
    struct mtcp_context *ctx = ctx_of_tcp(tl);
    struct mtcp_responder *R = ctx->rsp;
    return R && R->active && !R->draining && l->port == R->conf.port;
}

void tcp_app_adopt(struct tcp_layer *tl, struct tcb *t, struct mtcp_listener *l)
{
    struct mtcp_context *ctx = ctx_of_tcp(tl);
    struct mtcp_responder *R = ctx->rsp;
    t->rsp = 1;
    t->rsp_l = l;
    t->rsp_served = 0;
    t->rsp_started_ns = ctx->tcp.net.now_ns;
    t->rsp_req_started = 0;
    l->rsp_refs++;
    atomic_fetch_add_explicit(&R->conns, 1, memory_order_relaxed);
    tlist_append(ctx, R, t, 1, ctx->tcp.net.now_ms); /* Python: header timeout from the connect */
}

static void detach(struct mtcp_context *ctx, struct tcb *t)
{
    struct mtcp_responder *R = ctx->rsp;
    tlist_unlink(R, t);
    t->rsp = 0;
    t->rsp_l->rsp_refs--;
    atomic_fetch_sub_explicit(&R->conns, 1, memory_order_relaxed);
}

/* The responder lets go of the connection: FIN after what it sent (graceful), or RST. */
static void rsp_close(struct mtcp_context *ctx, struct tcb *t, int abort)
{
    detach(ctx, t);
    tcp_close_tcb(&ctx->tcp, t, abort);
}

/* The application takes the connection, with every unread byte (accept queue).
 * reason: RSP_FB_* or 0 for a miss (a request for nothing installed). */
static void handoff(struct mtcp_context *ctx, struct tcb *t, int reason)
{
    struct mtcp_listener *l = t->rsp_l;
    if (reason)
        ctx->tcp.net.stats.v[MTCP_STAT_rsp_fb_method + reason - 1]++;
    else
        STAT_INC(&ctx->tcp.net.stats, rsp_misses);
    detach(ctx, t);
    if (mtcp_spsc_push(&l->acceptq, &t) < 0) {
        STAT_INC(&ctx->tcp.net.stats, drop_tcp_backlog_full);
        tcp_close_tcb(&ctx->tcp, t, 1);
        return;
    }
    t->acc_queued = 1;
    atomic_fetch_add_explicit(&l->accept_ready, 1, memory_order_release);
    tcp_app_accept_ready(&ctx->tcp, l);
}

static size_t key_build(struct mtcp_responder *R, const uint8_t *h, const struct rsp_req *q)
{
    uint8_t *k = R->key;
    size_t n = 0;
    memcpy(k + n, h + q->method.off, q->method.len);
    n += q->method.len;
    k[n++] = ' ';
    memcpy(k + n, h + q->target.off, q->target.len);
    n += q->target.len;
    k[n++] = '\n';
    const struct rsp_span *parts[2] = {&q->accept_encoding, R->conf.key_host ? &q->host : NULL};
    for (int i = 0; i < 2 && parts[i]; i++) {
        k[n++] = parts[i]->present ? '1' : '0';
        memcpy(k + n, h + parts[i]->off, parts[i]->len);
        n += parts[i]->len;
        k[n++] = '\n';
    }
    return n;
}

static void add(struct mtcp_responder *R, int slot, uint64_t v)
{
    if (R->conf.hit_slots) /* shared memory, read by the metrics collector at any time */
        __atomic_fetch_add(&R->conf.hit_slots[slot], v, __ATOMIC_RELAXED);
    else
        atomic_fetch_add_explicit(&R->metrics[slot], v, memory_order_relaxed);
}

static void count_hit(struct mtcp_responder *R, int is_head, int status, uint64_t sent,
                      uint64_t dur)
{
    add(R, RSP_M_REQ + (is_head ? 2 : 0) + (status >= 300 ? 1 : 0), 1);
    add(R, RSP_M_BYTES, sent);
    add(R, RSP_M_DUR_SUM, dur);
    int b = 0;
    while (b < RSP_NBUCKETS - 1 && BUCKET_NS[b] < dur)
        b++;
    add(R, RSP_M_BUCKETS + b, 1);
}

static uint32_t log_size(const struct rsp_req *q)
{
    uint32_t n = (uint32_t)sizeof(struct rsp_logrec) + q->line.len + q->referer.len +
                 q->user_agent.len + q->host.len;
    return (n + 7u) & ~7u;
}

static void log_push(struct mtcp_context *ctx, struct mtcp_responder *R, struct tcb *t,
                     const uint8_t *h, const struct rsp_req *q, int status, uint32_t body,
                     uint32_t sent, uint64_t dur)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint8_t buf[sizeof(struct rsp_logrec) + RSP_MAX_HEAD + 8]; /* the spans lie in the head */
    struct rsp_logrec *rec = (struct rsp_logrec *)buf;
    memset(rec, 0, sizeof(*rec));
    rec->len = log_size(q);
    rec->raddr = t->raddr;
    rec->status = (uint16_t)status;
    rec->line_len = q->line.len;
    rec->referer_len = q->referer.present ? q->referer.len : 0xffff;
    rec->agent_len = q->user_agent.present ? q->user_agent.len : 0xffff;
    rec->host_len = q->host.present ? q->host.len : 0xffff;
    rec->body = body;
    rec->sent = sent;
    rec->duration_ns = dur;
    rec->wall_ns = (uint64_t)ts.tv_sec * MTCP_NS_PER_S + (uint64_t)ts.tv_nsec;
    uint8_t *p = buf + sizeof(*rec);
    memcpy(p, h + q->line.off, q->line.len);
    p += q->line.len;
    memcpy(p, h + q->referer.off, q->referer.len);
    p += q->referer.len;
    memcpy(p, h + q->user_agent.off, q->user_agent.len);
    p += q->user_agent.len;
    memcpy(p, h + q->host.off, q->host.len);
    p += q->host.len;
    while ((size_t)(p - buf) < rec->len)
        *p++ = 0;
    mtcp_bytering_write(&R->log, buf, rec->len);
    /* half full: wake the worker now rather than at its next poll timeout */
    if (mtcp_bytering_used(&R->log) > RSP_LOG_BYTES / 2 && atomic_load(&ctx->app_waiting)) {
        uint64_t one = 1;
        ssize_t w = write(ctx->app_efd, &one, sizeof(one));
        (void)w;
        STAT_INC(&ctx->tcp.net.stats, app_signals);
    }
}

/* Reading the head released receive space: a window update as mtcp_read would ask. */
static void window_opened(struct mtcp_context *ctx, struct tcb *t)
{
    if (!atomic_exchange_explicit(&t->wnd_job_wanted, 0, memory_order_acq_rel))
        return;
    if (t->state == TCP_CLOSED || t->state == TCP_TIME_WAIT)
        return;
    uint32_t opened = t->rcv_nxt + mtcp_bytering_free(&t->rcv) - t->rcv_adv;
    if ((int32_t)opened >= (int32_t)(2u * t->mss) || (int32_t)opened >= (int32_t)(t->rcv.limit / 2))
        tcp_schedule(&ctx->tcp, t, TCB_P_ACK);
    else
        atomic_store_explicit(&t->wnd_job_wanted, 1, memory_order_release);
}

static void wr(struct tcb *t, const void *p, uint32_t n)
{
    uint32_t w = mtcp_bytering_write(&t->snd, p, n);
    (void)w; /* room was checked for the whole response */
}

/* Everything the responder can do for t now. */
static void serve(struct mtcp_context *ctx, struct mtcp_responder *R, struct tcb *t)
{
    uint32_t fl = tcb_app_flags(t);
    if (fl & (TCB_AF_RESET | TCB_AF_CLOSED)) {
        rsp_close(ctx, t, 0); /* the stack is done with it: free */
        return;
    }
    struct rsp_limits lim = {R->conf.max_request_line, R->conf.max_header_bytes};
    uint8_t *h = R->head;
    for (;;) {
        uint32_t avail = mtcp_bytering_used(&t->rcv);
        if (avail == 0) {
            if (fl & TCB_AF_EOF)
                rsp_close(ctx, t, 0); /* the Python path closes at the end of stream */
            else if (R->draining)
                rsp_close(ctx, t, 0); /* idle while draining: closes at once */
            return;
        }
        if (!t->rsp_req_started) {
            t->rsp_req_started = 1;
            if (t->rsp_served) {
                /* Python: a later request's clock starts at its first byte */
                t->rsp_started_ns = ctx->tcp.net.now_ns;
                tlist_append(ctx, R, t, 1, ctx->tcp.net.now_ms);
            }
        }
        uint32_t n = avail < RSP_MAX_HEAD ? avail : RSP_MAX_HEAD;
        uint32_t head_idx = atomic_load_explicit(&t->rcv.head, memory_order_relaxed);
        mtcp_bytering_copy_out(&t->rcv, head_idx, h, n);
        struct rsp_req q;
        int r = rsp_parse(h, n, &lim, &q);
        if (r == 0) {
            if (fl & TCB_AF_EOF)
                handoff(ctx, t, RSP_FB_partial);
            return; /* wait for the rest (header timeout running) */
        }
        if (r < 0) {
            handoff(ctx, t, -r);
            return;
        }
        size_t keylen = key_build(R, h, &q);
        uint64_t hash = mtcp_fnv1a(R->key, keylen);
        struct rsp_entry *e = *table_slot(R, hash, R->key, (uint32_t)keylen);
        if (!e) {
            if (R->draining)
                handoff(ctx, t, RSP_FB_draining);
            else
                handoff(ctx, t, 0);
            return;
        }
        int status = 200;
        if (q.if_none_match.present) {
            if (!e->len[P_ETAG] || q.if_none_match.len != e->len[P_ETAG] ||
                memcmp(h + q.if_none_match.off, e->data + e->off[P_ETAG], e->len[P_ETAG]) != 0) {
                handoff(ctx, t, RSP_FB_conditional);
                return;
            }
            status = 304;
        }
        /* framing exactly as Connection._start decides it */
        int close = R->draining || t->rsp_served + 1 >= R->conf.max_keepalive_requests;
        int keep10 = !close && q.minor == 0 && q.conn_keep && !q.conn_close;
        int client_close = q.conn_close || q.minor == 0;
        int said_close = close || (client_close && !keep10);
        uint32_t leftover = avail - q.head_len;
        if (said_close && leftover) {
            handoff(ctx, t, RSP_FB_pipeline);
            return;
        }
        if (R->conf.log && mtcp_bytering_free(&R->log) < log_size(&q)) {
            handoff(ctx, t, RSP_FB_log_full);
            return;
        }
        const char *tr = said_close ? TR_CLOSE : keep10 ? TR_KEEP : TR_NONE;
        uint32_t trlen = (uint32_t)strlen(tr);
        int pre = status == 200 ? P_PRE : P_PRE304;
        int post = status == 200 ? P_POST : P_POST304;
        uint32_t body = status == 200 ? e->len[P_BODY] : 0;
        uint32_t headlen = e->len[pre] + 29 + e->len[post] + trlen;
        if (mtcp_bytering_free(&t->snd) < headlen + body) {
            if (mtcp_bytering_used(&t->snd) == 0) {
                handoff(ctx, t, RSP_FB_room);
                return;
            }
            return; /* earlier responses still in flight: again when ACKs free room */
        }
        wr(t, e->data + e->off[pre], e->len[pre]);
        wr(t, R->date, 29);
        wr(t, e->data + e->off[post], e->len[post]);
        wr(t, tr, trlen);
        if (body)
            wr(t, e->data + e->off[P_BODY], body);
        /* the request's bytes are consumed */
        atomic_store_explicit(&t->rcv.head, head_idx + q.head_len, memory_order_release);
        window_opened(ctx, t);
        uint64_t now_ns = ctx->tcp.net.now_ns;
        uint64_t dur = now_ns > t->rsp_started_ns ? now_ns - t->rsp_started_ns : 0;
        count_hit(R, q.is_head, status, headlen + body, dur);
        if (R->conf.log)
            log_push(ctx, R, t, h, &q, status, body, headlen + body, dur);
        STAT_INC(&ctx->tcp.net.stats, rsp_hits);
        t->rsp_served++;
        t->rsp_req_started = 0;
        tcp_schedule(&ctx->tcp, t, TCB_P_DATA);
        if (said_close) {
            rsp_close(ctx, t, 0); /* FIN after the response */
            return;
        }
        tlist_append(ctx, R, t, 2, ctx->tcp.net.now_ms); /* keep-alive timeout from the response */
    }
}

static void rsp_timers(struct mtcp_context *ctx, struct mtcp_responder *R)
{
    while (R->hdr_head && R->hdr_head->rsp_deadline_ms <= ctx->tcp.net.now_ms) {
        struct tcb *t = R->hdr_head;
        if (mtcp_bytering_used(&t->rcv))
            handoff(ctx, t, RSP_FB_partial); /* the application answers 408 at once */
        else
            rsp_close(ctx, t, 0);
    }
    while (R->ka_head && R->ka_head->rsp_deadline_ms <= ctx->tcp.net.now_ms) {
        struct tcb *t = R->ka_head;
        if (mtcp_bytering_used(&t->rcv))
            handoff(ctx, t, RSP_FB_partial);
        else
            rsp_close(ctx, t, 0);
    }
}

uint64_t rsp_round(struct mtcp_context *ctx)
{
    struct mtcp_responder *R = ctx->rsp;
    if (!R || !R->active)
        return UINT64_MAX;
    date_refresh(R);
    /* take the responder's connections off this round's event list */
    struct tcb_list list = ctx->ev;
    ctx->ev = (struct tcb_list){0};
    struct tcb *t;
    while ((t = tcb_list_pop_front(&list, TCB_EV))) {
        if (!t->rsp || !t->in_use) {
            tcb_list_push_front(&ctx->ev, t, TCB_EV); /* the app's: flushed as events */
            continue;
        }
        t->ev_pending = 0;
        serve(ctx, R, t);
    }
    rsp_timers(ctx, R);
    STAT_SET(&ctx->tcp.net.stats, rsp_conns, atomic_load_explicit(&R->conns, memory_order_relaxed));
    uint64_t next = UINT64_MAX;
    if (R->hdr_head)
        next = R->hdr_head->rsp_deadline_ms - ctx->tcp.net.now_ms;
    if (R->ka_head && R->ka_head->rsp_deadline_ms - ctx->tcp.net.now_ms < next)
        next = R->ka_head->rsp_deadline_ms - ctx->tcp.net.now_ms;
    return next;
}

/* Connections of a listener that goes away (not drained first): reset, as the
 * connections nobody accepted. */
void rsp_listener_gone(struct mtcp_context *ctx, struct mtcp_listener *l)
{
    struct mtcp_responder *R = ctx->rsp;
    if (!R || !l->rsp_refs)
        return;
    for (int which = 0; which < 2; which++) {
        struct tcb *t = which ? R->ka_head : R->hdr_head;
        while (t) {
            struct tcb *next = t->rsp_tnext;
            if (t->rsp_l == l)
                rsp_close(ctx, t, 1);
            t = next;
        }
    }
}

static void drain(struct mtcp_context *ctx, struct mtcp_responder *R)
{
    R->draining = 1;
    for (struct mtcp_listener *l = ctx->tcp.listeners; l; l = l->next)
        if (l->port == R->conf.port)
            l->draining = 1; /* no new connections, as a closed listener */
    for (int which = 0; which < 2; which++) {
        struct tcb *t = which ? R->ka_head : R->hdr_head;
        while (t) {
            struct tcb *next = t->rsp_tnext;
            if (!mtcp_bytering_used(&t->rcv))
                rsp_close(ctx, t, 0); /* idle: closes at once (Connection.drain) */
            t = next;
        }
    }
}

void rsp_job(struct mtcp_context *ctx, const struct mtcp_job *j)
{
    struct mtcp_responder *R = ctx->rsp;
    switch (j->type) {
    case JOB_RSP_ENABLE: {
        struct mtcp_responder *N = j->obj;
        struct mtcp_rsp_conf *conf = j->obj2;
        if (R && R != N) {
            free(conf);
            return; /* one responder per context */
        }
        ctx->rsp = R = N;
        R->conf = *conf; /* written here, by the thread that reads it */
        free(conf);
        R->active = 1;
        R->draining = 0;
        table_clear(R);
        break;
    }
    case JOB_RSP_INSTALL:
        if (R)
            table_install(ctx, R, j->obj);
        else
            free(j->obj);
        break;
    case JOB_RSP_REMOVE: {
        struct rsp_entry *k = j->obj;
        if (R) {
            struct rsp_entry **pp = table_slot(R, k->hash, k->data, k->len[P_KEY]);
            if (*pp)
                table_remove(R, pp);
        }
        free(k);
        break;
    }
    case JOB_RSP_CLEAR:
        if (R)
            table_clear(R);
        break;
    case JOB_RSP_DRAIN:
        if (R)
            drain(ctx, R);
        break;
    default:
        break;
    }
    if (R)
        table_gauges(ctx, R);
}

void rsp_free(struct mtcp_responder *R)
{
    if (!R)
        return;
    table_clear(R);
    free(R->buckets);
    free(R->log.buf);
    free(R);
}

/* ---------------------------------------------------------------- app thread API */

int mtcp_rsp_enable(mctx_t ctx, const struct mtcp_rsp_conf *conf)
{
    if (!ctx || !conf || !conf->port || !conf->max_entries || !conf->max_keepalive_requests) {
        errno = EINVAL;
        return -1;
    }
    struct mtcp_responder *R = ctx->rsp_app;
    if (!R) {
        R = calloc(1, sizeof(*R));
        if (!R) {
            errno = ENOMEM;
            return -1;
        }
        uint32_t nb = 64;
        while (nb < conf->max_entries && nb < (1u << 20))
            nb <<= 1;
        R->nbuckets = nb;
        R->buckets = calloc(nb, sizeof(*R->buckets));
        uint8_t *lb = malloc(RSP_LOG_BYTES);
        if (!R->buckets || !lb) {
            free(R->buckets);
            free(lb);
            free(R);
            errno = ENOMEM;
            return -1;
        }
        mtcp_bytering_init(&R->log, lb, RSP_LOG_BYTES);
        R->date_sec = -1;
        ctx->rsp_app = R;
    }
    /* the settings travel with the job: the mTCP thread may be reading the old ones; the
     * app thread's own reads (the entry bound) use its copy */
    struct mtcp_rsp_conf *copy = malloc(sizeof(*copy));
    if (!copy) {
        errno = ENOMEM;
        return -1;
    }
    *copy = *conf;
    R->app_conf = *conf;
    struct mtcp_job j = {.type = JOB_RSP_ENABLE, .obj = R, .obj2 = copy};
    ctx_push_job(ctx, &j);
    ctx_kick(ctx);
    return 0;
}

static int push_simple(mctx_t ctx, uint32_t type)
{
    if (!ctx || !ctx->rsp_app) {
        errno = EINVAL;
        return -1;
    }
    struct mtcp_job j = {.type = type};
    ctx_push_job(ctx, &j);
    ctx_kick(ctx);
    return 0;
}

int mtcp_rsp_clear(mctx_t ctx) { return push_simple(ctx, JOB_RSP_CLEAR); }
int mtcp_rsp_drain(mctx_t ctx) { return push_simple(ctx, JOB_RSP_DRAIN); }

int mtcp_rsp_install(mctx_t ctx, const char *const *parts, const size_t *lens)
{
    struct mtcp_responder *R = ctx ? ctx->rsp_app : NULL;
    if (!R || !parts || !lens || !lens[P_KEY] || lens[P_KEY] > sizeof(R->key)) {
        errno = EINVAL;
        return -1;
    }
    size_t total = 0;
    for (int i = 0; i < RSP_NPARTS; i++) {
        if (lens[i] > UINT32_MAX / 4) {
            errno = E2BIG;
            return -1;
        }
        total += lens[i];
    }
    size_t weight = sizeof(struct rsp_entry) + total;
    if (weight > R->app_conf.max_entry || weight > R->app_conf.max_bytes) {
        errno = E2BIG; /* files above the cap are never installed */
        return -1;
    }
    struct rsp_entry *e = malloc(weight);
    if (!e) {
        errno = ENOMEM;
        return -1;
    }
    e->hnext = NULL;
    e->weight = weight;
    size_t off = 0;
    for (int i = 0; i < RSP_NPARTS; i++) {
        e->off[i] = (uint32_t)off;
        e->len[i] = (uint32_t)lens[i];
        if (lens[i])
            memcpy(e->data + off, parts[i], lens[i]);
        off += lens[i];
    }
    e->hash = mtcp_fnv1a(e->data, e->len[P_KEY]);
    struct mtcp_job j = {.type = JOB_RSP_INSTALL, .obj = e};
    ctx_push_job(ctx, &j);
    ctx_kick(ctx);
    return 0;
}

int mtcp_rsp_remove(mctx_t ctx, const char *key, size_t keylen)
{
    struct mtcp_responder *R = ctx ? ctx->rsp_app : NULL;
    if (!R || !key || !keylen || keylen > sizeof(R->key)) {
        errno = EINVAL;
        return -1;
    }
    struct rsp_entry *e = calloc(1, sizeof(*e) + keylen);
    if (!e) {
        errno = ENOMEM;
        return -1;
    }
    e->len[P_KEY] = (uint32_t)keylen;
    memcpy(e->data, key, keylen);
    e->hash = mtcp_fnv1a(e->data, keylen);
    struct mtcp_job j = {.type = JOB_RSP_REMOVE, .obj = e};
    ctx_push_job(ctx, &j);
    ctx_kick(ctx);
    return 0;
}

int mtcp_rsp_conns(mctx_t ctx)
{
    struct mtcp_responder *R = ctx ? ctx->rsp_app : NULL;
    return R ? (int)atomic_load_explicit(&R->conns, memory_order_relaxed) : 0;
}

int mtcp_rsp_take_metrics(mctx_t ctx, uint64_t *out, int n)
{
    struct mtcp_responder *R = ctx ? ctx->rsp_app : NULL;
    if (!out || n < 0) {
        errno = EINVAL;
        return -1;
    }
    int cnt = n < RSP_NMETRICS ? n : RSP_NMETRICS;
    for (int i = 0; i < cnt; i++)
        out[i] = R ? atomic_exchange_explicit(&R->metrics[i], 0, memory_order_relaxed) : 0;
    return cnt;
}

size_t mtcp_rsp_read_log(mctx_t ctx, char *buf, size_t cap)
{
    struct mtcp_responder *R = ctx ? ctx->rsp_app : NULL;
    if (!R || !buf)
        return 0;
    size_t got = 0;
    for (;;) {
        uint32_t used = mtcp_bytering_used(&R->log);
        if (used < sizeof(struct rsp_logrec))
            break;
        uint32_t len;
        uint32_t h = atomic_load_explicit(&R->log.head, memory_order_relaxed);
        mtcp_bytering_copy_out(&R->log, h, &len, sizeof(len));
        if (len > used || got + len > cap)
            break;
        mtcp_bytering_read(&R->log, buf + got, len);
        got += len;
    }
    return got;
}

int mtcp_accept_batch_rsp(mctx_t ctx, int sockid, int *out, uint32_t *served,
                          uint64_t *started_ns, int max)
{
    int n = mtcp_accept_batch(ctx, sockid, out, max);
    for (int i = 0; i < n; i++) {
        struct tcb *t = atomic_load_explicit(&ctx->socks[out[i]].tcb, memory_order_acquire);
        /* written by the mTCP thread before the accept queue push (release/acquire) */
        served[i] = t->rsp_served;
        started_ns[i] = t->rsp_started_ns;
    }
    return n;
}
