/* A load generator on the core's public C API (include/mtcp_public.h): short HTTP
 * connections in a closed loop, like `wrk -H 'Connection: close'`, as the mTCP paper's
 * clients ran on mTCP. It lives in C because the per-connection work (socket, connect,
 * write, read, parse, close) must cost less than a kernel client's system calls, which a
 * Python loop could never do. It only uses the app-side API, so it needs nothing from the
 * stack's internals, and it keeps all its state on the stack of mtcp_load_run's caller:
 * several cores run it at once, each on its own context, sharing nothing.
 *
 * One connection's life: IDLE -> CONNECTING (connect() queued) -> SENDING (established,
 * request partly written) -> READING (response headers and body) -> DRAINING (response
 * complete, waiting for the server's FIN) -> closed, and opened again. Waiting for the
 * FIN before closing leaves TIME_WAIT with the server (it closes first under
 * `Connection: close`), so the client's pools do not fill with TIME_WAIT connections. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "mtcp.h"

/* Response headers kept per connection (status line + header fields); a longer
 * header section counts as a bad response. */
#ifndef LOADGEN_HDR_MAX
#define LOADGEN_HDR_MAX 4096
#endif
/* Bytes read per mtcp_read call (the body is counted, not kept). */
#define LOADGEN_READ_CHUNK 65536
/* Events taken per mtcp_epoll_wait. */
#define LOADGEN_MAX_EVENTS 1024
/* The loop wakes at least this often to check the clock, timeouts and the stop flag. */
#define LOADGEN_TICK_MS 10
#define LOADGEN_DEFAULT_TIMEOUT_MS 2000
/* Histogram geometry (see mtcp_public.h): 2^LOADGEN_SUB_BITS buckets per power of two. */
#define LOADGEN_SUB_BITS 5
#define LOADGEN_SUB (1u << LOADGEN_SUB_BITS)
#define LOADGEN_LINEAR (2u * LOADGEN_SUB) /* values below this have their own bucket */
#define LOADGEN_MAX_EXP 39                /* values from 2^40 ns on share the last bucket */
#define LOADGEN_MAX_DEPTH MTCP_LOAD_MAX_PIPELINE

enum loadgen_state {
    LOADGEN_IDLE = 0,
    LOADGEN_CONNECTING,
    LOADGEN_SENDING,
    LOADGEN_READING,
    LOADGEN_DRAINING,
};

struct loadgen_conn {
    int sockid;                 /* -1 when IDLE */
    uint8_t state;              /* enum loadgen_state */
    uint8_t hdr_done;           /* the header section is complete */
    uint8_t until_eof;          /* the body ends at the server's FIN (no Content-Length) */
    int status;                 /* HTTP status code once hdr_done */
    uint64_t t_start;           /* connect() called */
    uint64_t t_sent;            /* the request's last byte handed to the stack */
    uint64_t deadline;          /* abort the connection at this time */
    size_t sent;                /* request bytes written */
    uint64_t body_left;         /* body bytes still to come (when !until_eof) */
    uint32_t hlen;              /* bytes in hdr */
    /* keep-alive mode: requests written and responses complete on this connection, and
     * when each request in flight was written (a ring of LOADGEN_MAX_DEPTH) */
    uint32_t reqs_sent, reqs_done;
    uint64_t t_req[LOADGEN_MAX_DEPTH];
    char hdr[LOADGEN_HDR_MAX];
};

/* Everything one run uses; on the caller's stack, so runs on several cores share nothing. */
struct loadgen_run {
    mctx_t mctx;
    struct mtcp_load_conf *conf;
    struct mtcp_load_result *res;
    struct loadgen_conn *conns;
    int epid;
    uint64_t timeout_ns;
    int stopping;               /* no new connections */
    uint32_t depth;             /* keep-alive: requests in flight per connection */
    unsigned active;            /* connections not IDLE */
    char *scratch;              /* LOADGEN_READ_CHUNK */
};

static uint64_t loadgen_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* ---------------------------------------------------------------- histogram */

static unsigned loadgen_bucket(uint64_t v)
{
    if (v < LOADGEN_LINEAR)
        return (unsigned)v;
    unsigned e = 63u - (unsigned)__builtin_clzll(v); /* v >= 64, so e >= 6 */
    if (e > LOADGEN_MAX_EXP)
        return MTCP_LOAD_HIST_BUCKETS - 1;
    unsigned sub = (unsigned)(v >> (e - LOADGEN_SUB_BITS)) & (LOADGEN_SUB - 1);
    return LOADGEN_LINEAR + (e - (LOADGEN_SUB_BITS + 1)) * LOADGEN_SUB + sub;
}

/* The highest value that falls into bucket i. */
static uint64_t loadgen_bucket_high(unsigned i)
{
    if (i < LOADGEN_LINEAR)
        return i;
    unsigned e = (i - LOADGEN_LINEAR) / LOADGEN_SUB + LOADGEN_SUB_BITS + 1;
    uint64_t sub = (i - LOADGEN_LINEAR) % LOADGEN_SUB;
    uint64_t width = 1ull << (e - LOADGEN_SUB_BITS);
    return ((LOADGEN_SUB + sub) << (e - LOADGEN_SUB_BITS)) + width - 1;
}

_Static_assert(LOADGEN_LINEAR + (LOADGEN_MAX_EXP - LOADGEN_SUB_BITS) * LOADGEN_SUB ==
                   MTCP_LOAD_HIST_BUCKETS,
               "MTCP_LOAD_HIST_BUCKETS must match the histogram geometry");

static void loadgen_record(uint64_t *hist, uint64_t *min, uint64_t *max, uint64_t *sum,
                           uint64_t *count, uint64_t v)
{
    hist[loadgen_bucket(v)]++;
    if (*count == 0 || v < *min)
        *min = v;
    if (v > *max)
        *max = v;
    *sum += v;
    (*count)++;
}

uint64_t mtcp_load_quantile(const uint64_t *hist, uint64_t max_ns, double q)
{
    if (!hist)
        return 0;
    uint64_t total = 0;
    for (unsigned i = 0; i < MTCP_LOAD_HIST_BUCKETS; i++)
        total += hist[i];
    if (total == 0)
        return 0;
    if (!(q > 0.0)) /* also NaN */
        q = 0.0;
    if (q > 1.0)
        q = 1.0;
    /* the rank of the value at q, 1-based: the smallest rank r with r >= q * total */
    double want = q * (double)total;
    uint64_t rank = (uint64_t)want;
    if ((double)rank < want)
        rank++;
    if (rank == 0)
        rank = 1;
    uint64_t seen = 0;
    for (unsigned i = 0; i < MTCP_LOAD_HIST_BUCKETS; i++) {
        seen += hist[i];
        if (seen >= rank) {
            uint64_t v = loadgen_bucket_high(i);
            return v < max_ns ? v : max_ns;
        }
    }
    return max_ns;
}

/* Widens [*lo, *hi] to take in [min, max]; first: the range is empty so far. */
static void merge_range(uint64_t *lo, uint64_t *hi, uint64_t min, uint64_t max, int first)
{
    if (first || min < *lo)
        *lo = min;
    if (max > *hi)
        *hi = max;
}

void mtcp_load_merge(struct mtcp_load_result *into, const struct mtcp_load_result *from)
{
    if (!into || !from)
        return;
    uint64_t completed_before = into->completed, conns_before = into->conn_count;
    into->started += from->started;
    into->completed += from->completed;
    for (int i = 0; i < 6; i++)
        into->status[i] += from->status[i];
    into->err_connect += from->err_connect;
    into->err_reset += from->err_reset;
    into->err_timeout += from->err_timeout;
    into->err_response += from->err_response;
    into->err_status += from->err_status;
    into->bytes_read += from->bytes_read;
    into->bytes_written += from->bytes_written;
    /* cores run side by side: the run lasted as long as the longest one */
    if (from->elapsed_ns > into->elapsed_ns)
        into->elapsed_ns = from->elapsed_ns;
    if (from->completed)
        merge_range(&into->lat_min_ns, &into->lat_max_ns, from->lat_min_ns, from->lat_max_ns,
                    completed_before == 0);
    into->lat_sum_ns += from->lat_sum_ns;
    if (from->conn_count)
        merge_range(&into->conn_min_ns, &into->conn_max_ns, from->conn_min_ns, from->conn_max_ns,
                    conns_before == 0);
    into->conn_sum_ns += from->conn_sum_ns;
    into->conn_count += from->conn_count;
    for (unsigned i = 0; i < MTCP_LOAD_HIST_BUCKETS; i++) {
        into->lat_hist[i] += from->lat_hist[i];
        into->conn_hist[i] += from->conn_hist[i];
    }
}

void mtcp_load_stop(struct mtcp_load_conf *conf)
{
    if (conf)
        __atomic_store_n(&conf->stop, 1, __ATOMIC_RELEASE);
}

/* ---------------------------------------------------------------- HTTP response */

static int loadgen_lower(int c)
{
    return c >= 'A' && c <= 'Z' ? c + ('a' - 'A') : c;
}

/* Does the header line [p, end) have the field name `name` (lower case)? Then *value
 * points after the colon and any blanks. */
static int loadgen_field(const char *p, const char *end, const char *name, const char **value)
{
    size_t n = strlen(name);
    if ((size_t)(end - p) <= n || p[n] != ':')
        return 0;
    for (size_t i = 0; i < n; i++)
        if (loadgen_lower((unsigned char)p[i]) != name[i])
            return 0;
    p += n + 1;
    while (p < end && (*p == ' ' || *p == '\t'))
        p++;
    *value = p;
    return 1;
}

/* Parses the complete header section hdr[0, len) (ending in CRLF CRLF): status code,
 * body framing. 0, or -1 when it is not an HTTP/1.x response we can frame. */
static int loadgen_parse_head(struct loadgen_conn *c, uint32_t len)
{
    const char *p = c->hdr, *end = c->hdr + len;
    /* status line: HTTP/1.x SP 3DIGIT SP reason CRLF */
    if (len < 12 || memcmp(p, "HTTP/1.", 7) != 0 || p[8] != ' ')
        return -1;
    int status = 0;
    for (int i = 9; i < 12; i++) {
        if (p[i] < '0' || p[i] > '9')
            return -1;
        status = status * 10 + (p[i] - '0');
    }
    c->status = status;
    int have_length = 0, chunked = 0;
    uint64_t length = 0;
    const char *line = memchr(p, '\n', (size_t)(end - p));
    while (line && ++line < end) {
        const char *eol = memchr(line, '\n', (size_t)(end - line));
        if (!eol)
            break;
        const char *stop = eol > line && eol[-1] == '\r' ? eol - 1 : eol;
        const char *v;
        if (loadgen_field(line, stop, "content-length", &v)) {
            uint64_t n = 0;
            const char *q = v;
            for (; q < stop && *q >= '0' && *q <= '9'; q++) {
                if (n > (UINT64_MAX - 9) / 10)
                    return -1;
                n = n * 10 + (uint64_t)(*q - '0');
            }
            while (q < stop && (*q == ' ' || *q == '\t'))
                q++;
            if (q == v || q != stop || (have_length && n != length))
                return -1; /* RFC 9112 6.3: invalid or conflicting lengths */
            have_length = 1;
            length = n;
        } else if (loadgen_field(line, stop, "transfer-encoding", &v)) {
            chunked = 1; /* framed by chunks; under Connection: close it ends at the FIN */
        }
        line = eol;
    }
    /* RFC 9112 6.3: no body for 1xx, 204 and 304; chunked wins over Content-Length;
     * otherwise the length, or the end of the connection */
    if ((status >= 100 && status < 200) || status == 204 || status == 304) {
        c->until_eof = 0;
        c->body_left = 0;
    } else if (chunked || !have_length) {
        c->until_eof = 1;
        c->body_left = 0;
    } else {
        c->until_eof = 0;
        c->body_left = length;
    }
    c->hdr_done = 1;
    return 0;
}

/* Takes n body bytes that follow skip bytes of this read: 1 when they complete the body,
 * *used then the read's bytes up to its end; 0 when more is to come. */
static inline int loadgen_take_body(struct loadgen_conn *c, size_t skip, size_t n, size_t *used)
{
    if (c->until_eof)
        return 0;
    if (n >= c->body_left) {
        *used = skip + (size_t)c->body_left;
        c->body_left = 0;
        return 1;
    }
    c->body_left -= n;
    return 0;
}

/* Takes received bytes of the response. 1: the response is complete, after *used of the
 * n bytes (the rest is the next response's); 0: all taken, more to come; -1: a bad
 * response. */
static int loadgen_take(struct loadgen_conn *c, const char *data, size_t n, size_t *used)
{
    *used = n;
    if (!c->hdr_done) {
        /* look for CRLF CRLF, also across the previous read's end */
        uint32_t old = c->hlen;
        size_t room = LOADGEN_HDR_MAX - old;
        size_t take = n < room ? n : room;
        memcpy(c->hdr + old, data, take);
        c->hlen = old + (uint32_t)take;
        uint32_t from = old >= 3 ? old - 3 : 0;
        uint32_t end = 0;
        for (uint32_t i = from; i + 4 <= c->hlen; i++) {
            if (c->hdr[i] == '\r' && c->hdr[i + 1] == '\n' && c->hdr[i + 2] == '\r' &&
                c->hdr[i + 3] == '\n') {
                end = i + 4;
                break;
            }
        }
        if (!end)
            return c->hlen == LOADGEN_HDR_MAX ? -1 : 0;
        if (loadgen_parse_head(c, end) < 0)
            return -1;
        /* the bytes after the header section, in this read, are body */
        size_t head = (size_t)(end - old);
        return loadgen_take_body(c, head, n - head, used);
    }
    return loadgen_take_body(c, 0, n, used);
}

/* ---------------------------------------------------------------- connections */

static int loadgen_may_start(const struct loadgen_run *r)
{
    if (r->stopping)
        return 0;
    return r->conf->max_requests == 0 || r->res->started < r->conf->max_requests;
}

/* Opens connection i (it is IDLE). Counts a connect error and leaves it IDLE when the
 * stack refuses at once (no socket id, no port): the loop tries again next round. */
static void loadgen_open(struct loadgen_run *r, unsigned i, uint64_t now)
{
    struct loadgen_conn *c = &r->conns[i];
    if (!loadgen_may_start(r))
        return;
    int s = mtcp_socket(r->mctx, AF_INET, SOCK_STREAM, 0);
    r->res->started++;
    if (s < 0) {
        r->res->err_connect++;
        return;
    }
    if (mtcp_connect(r->mctx, s, r->conf->addr, r->conf->port) < 0 && errno != EINPROGRESS) {
        r->res->err_connect++;
        mtcp_close(r->mctx, s);
        return;
    }
    /* registered after connect(), so that the first readiness is the connect's outcome;
     * edge-triggered: every event is followed by reading/writing until EAGAIN */
    uint64_t data = ((uint64_t)(uint32_t)s << 32) | i;
    if (mtcp_epoll_ctl(r->mctx, r->epid, MTCP_EPOLL_CTL_ADD, s,
                       MTCP_EPOLLIN | MTCP_EPOLLOUT | (uint32_t)MTCP_EPOLLET, data) < 0) {
        r->res->err_connect++;
        mtcp_abort(r->mctx, s);
        return;
    }
    c->sockid = s;
    c->state = LOADGEN_CONNECTING;
    c->hdr_done = 0;
    c->until_eof = 0;
    c->status = 0;
    c->t_start = now;
    c->t_sent = 0;
    c->deadline = now + r->timeout_ns;
    c->sent = 0;
    c->body_left = 0;
    c->hlen = 0;
    c->reqs_sent = c->reqs_done = 0;
    r->active++;
}

/* Ends connection i (abort: RST instead of FIN) and opens the next one in its place. */
static void loadgen_finish(struct loadgen_run *r, unsigned i, int abort, uint64_t now)
{
    struct loadgen_conn *c = &r->conns[i];
    if (c->sockid >= 0) {
        if (abort)
            mtcp_abort(r->mctx, c->sockid);
        else
            mtcp_close(r->mctx, c->sockid);
    }
    c->sockid = -1;
    c->state = LOADGEN_IDLE;
    r->active--;
    loadgen_open(r, i, now);
}

static void loadgen_complete(struct loadgen_run *r, struct loadgen_conn *c, uint64_t now)
{
    struct mtcp_load_result *res = r->res;
    uint64_t done = res->completed;
    uint64_t sent = r->conf->keepalive ? c->t_req[c->reqs_done % LOADGEN_MAX_DEPTH] : c->t_sent;
    loadgen_record(res->lat_hist, &res->lat_min_ns, &res->lat_max_ns, &res->lat_sum_ns, &done,
                   now - sent);
    res->completed = done;
    int cls = c->status / 100;
    res->status[cls >= 1 && cls <= 5 ? cls : 0]++;
    if (cls != 2 && cls != 3)
        res->err_status++;
    if (r->conf->keepalive) {
        /* the next response of this connection starts after this one */
        c->reqs_done++;
        c->hdr_done = 0;
        c->hlen = 0;
        c->body_left = 0;
        c->deadline = now + r->timeout_ns;
        if (c->reqs_done < r->conf->keepalive)
            return; /* still READING (more in flight, or the loop writes the next one) */
    }
    c->state = LOADGEN_DRAINING;
    c->deadline = now + r->timeout_ns; /* for the FIN; missing it is no error */
}

/* The error of a failed socket, from SO_ERROR (ECONNRESET when it has none). */
static int loadgen_sock_error(struct loadgen_run *r, int s)
{
    int err = 0;
    unsigned len = sizeof(err);
    if (mtcp_getsockopt(r->mctx, s, MTCP_SOL_SOCKET, MTCP_SO_ERROR, &err, &len) < 0 || !err)
        err = ECONNRESET;
    return err;
}

static void loadgen_event(struct loadgen_run *r, unsigned i, uint32_t events);

/* Reads what is there (edge-triggered: until EAGAIN). */
static void loadgen_read(struct loadgen_run *r, unsigned i)
{
    struct loadgen_conn *c = &r->conns[i];
    for (;;) {
        ssize_t n = mtcp_read(r->mctx, c->sockid, r->scratch, LOADGEN_READ_CHUNK);
        uint64_t now = loadgen_now_ns();
        if (n > 0) {
            r->res->bytes_read += (uint64_t)n;
            const char *p = r->scratch;
            size_t left = (size_t)n;
            while (left && c->state == LOADGEN_READING) {
                if (r->conf->keepalive && c->reqs_done == c->reqs_sent) {
                    r->res->err_response++; /* bytes nobody asked for */
                    loadgen_finish(r, i, 1, now);
                    return;
                }
                size_t used;
                int got = loadgen_take(c, p, left, &used);
                if (got < 0) {
                    r->res->err_response++;
                    loadgen_finish(r, i, 1, now);
                    return;
                }
                if (got == 0)
                    break;
                loadgen_complete(r, c, now);
                p += used;
                left -= used;
            }
            if (r->conf->keepalive && c->state == LOADGEN_DRAINING) {
                /* all N answered: the client closes (the server would wait) */
                loadgen_finish(r, i, 0, now);
                return;
            }
            if (r->conf->keepalive && c->state == LOADGEN_READING &&
                c->reqs_sent < r->conf->keepalive &&
                c->reqs_sent - c->reqs_done < r->depth) {
                loadgen_event(r, i, MTCP_EPOLLOUT); /* room in the pipeline: write more */
                return;
            }
            continue;
        }
        if (n == 0) { /* the server's FIN */
            int between = r->conf->keepalive && !c->hdr_done && c->hlen == 0 &&
                          c->reqs_done == c->reqs_sent; /* keep-alive: closed between responses */
            if (c->state == LOADGEN_READING && !between) {
                if (c->hdr_done && c->until_eof)
                    loadgen_complete(r, c, now);
                else
                    r->res->err_response++;
            }
            loadgen_finish(r, i, 0, now);
            return;
        }
        if (errno == EAGAIN)
            return;
        if (c->state == LOADGEN_READING)
            r->res->err_reset++;
        loadgen_finish(r, i, 0, now);
        return;
    }
}

/* Moves connection i on after an event. */
static void loadgen_event(struct loadgen_run *r, unsigned i, uint32_t events)
{
    struct loadgen_conn *c = &r->conns[i];
    uint64_t now = loadgen_now_ns();
    if (c->state == LOADGEN_CONNECTING) {
        if (events & MTCP_EPOLLERR) {
            int err = loadgen_sock_error(r, c->sockid);
            if (err == ECONNRESET || err == EPIPE)
                r->res->err_reset++;
            else
                r->res->err_connect++; /* ECONNREFUSED, ETIMEDOUT, EHOSTUNREACH, ... */
            loadgen_finish(r, i, 0, now);
            return;
        }
        if (!(events & MTCP_EPOLLOUT))
            return;
        struct mtcp_load_result *res = r->res;
        loadgen_record(res->conn_hist, &res->conn_min_ns, &res->conn_max_ns, &res->conn_sum_ns,
                       &res->conn_count, now - c->t_start);
        c->state = LOADGEN_SENDING;
    }
    if (r->conf->keepalive && (c->state == LOADGEN_SENDING || c->state == LOADGEN_READING)) {
        /* keep-alive: write requests while the pipeline has room */
        size_t len = r->conf->request_len;
        while (c->reqs_sent < r->conf->keepalive && c->reqs_sent - c->reqs_done < r->depth) {
            while (c->sent < len) {
                ssize_t w = mtcp_write(r->mctx, c->sockid, r->conf->request + c->sent,
                                       len - c->sent);
                if (w < 0) {
                    if (errno == EAGAIN) {
                        c->state = LOADGEN_READING;
                        goto read; /* the next EPOLLOUT goes on */
                    }
                    r->res->err_reset++;
                    loadgen_finish(r, i, 0, now);
                    return;
                }
                c->sent += (size_t)w;
                r->res->bytes_written += (uint64_t)w;
            }
            c->sent = 0;
            c->t_req[c->reqs_sent % LOADGEN_MAX_DEPTH] = loadgen_now_ns();
            c->reqs_sent++;
        }
        c->state = LOADGEN_READING;
    read:
        loadgen_read(r, i);
        return;
    }
    if (c->state == LOADGEN_SENDING) {
        size_t len = r->conf->request_len;
        while (c->sent < len) {
            ssize_t w = mtcp_write(r->mctx, c->sockid, r->conf->request + c->sent, len - c->sent);
            if (w < 0) {
                if (errno == EAGAIN)
                    return; /* the next EPOLLOUT goes on */
                r->res->err_reset++;
                loadgen_finish(r, i, 0, now);
                return;
            }
            c->sent += (size_t)w;
            r->res->bytes_written += (uint64_t)w;
        }
        c->t_sent = loadgen_now_ns();
        c->state = LOADGEN_READING;
    }
    loadgen_read(r, i);
}

/* Aborts connections past their deadline. */
static void loadgen_expire(struct loadgen_run *r, uint64_t now)
{
    unsigned n = r->conf->connections;
    for (unsigned i = 0; i < n; i++) {
        struct loadgen_conn *c = &r->conns[i];
        if (c->state == LOADGEN_IDLE || now < c->deadline)
            continue;
        if (c->state != LOADGEN_DRAINING)
            r->res->err_timeout++;
        loadgen_finish(r, i, 1, now);
    }
}

/* ---------------------------------------------------------------- the run */

static int loadgen_check(mctx_t mctx, const struct mtcp_load_conf *conf,
                         const struct mtcp_load_result *out)
{
    if (!mctx || !conf || !out || !conf->request || conf->request_len == 0 || conf->addr == 0 ||
        conf->port == 0 || conf->connections == 0 ||
        conf->connections > MTCP_LOAD_MAX_CONNECTIONS || conf->duration_ms == 0 ||
        conf->pipeline > MTCP_LOAD_MAX_PIPELINE)
        return -1;
    return 0;
}

int mtcp_load_run(mctx_t mctx, struct mtcp_load_conf *conf, struct mtcp_load_result *out)
{
    if (loadgen_check(mctx, conf, out) < 0) {
        errno = EINVAL;
        return -1;
    }
    memset(out, 0, sizeof(*out));
    struct loadgen_run r = {
        .mctx = mctx,
        .conf = conf,
        .res = out,
        .timeout_ns = (uint64_t)(conf->timeout_ms ? conf->timeout_ms : LOADGEN_DEFAULT_TIMEOUT_MS) *
                      1000000u,
        .depth = conf->pipeline ? conf->pipeline : 1,
    };
    unsigned n = conf->connections;
    int maxev = n < LOADGEN_MAX_EVENTS ? (int)n : LOADGEN_MAX_EVENTS;
    r.conns = calloc(n, sizeof(*r.conns));
    r.scratch = malloc(LOADGEN_READ_CHUNK);
    struct mtcp_epoll_event *events = calloc((size_t)maxev, sizeof(*events));
    r.epid = -1;
    int rc = -1, err = ENOMEM;
    if (!r.conns || !r.scratch || !events)
        goto done;
    r.epid = mtcp_epoll_create(mctx, (int)n);
    if (r.epid < 0) {
        err = errno;
        goto done;
    }
    for (unsigned i = 0; i < n; i++)
        r.conns[i].sockid = -1;

    uint64_t t0 = loadgen_now_ns();
    uint64_t end = t0 + conf->duration_ms * 1000000u;
    uint64_t next_expire = t0 + LOADGEN_TICK_MS * 1000000u;
    for (unsigned i = 0; i < n; i++)
        loadgen_open(&r, i, t0);
    uint64_t now = t0;
    for (;;) {
        now = loadgen_now_ns();
        if (now >= end || __atomic_load_n(&conf->stop, __ATOMIC_ACQUIRE))
            break;
        if (r.active == 0 && !loadgen_may_start(&r))
            break; /* every capped request is done */
        /* connections the stack refused at once are retried here, once per round */
        if (r.active < n && loadgen_may_start(&r))
            for (unsigned i = 0; i < n && loadgen_may_start(&r); i++)
                if (r.conns[i].state == LOADGEN_IDLE)
                    loadgen_open(&r, i, now);
        uint64_t wake = end < next_expire ? end : next_expire;
        int wait_ms = wake > now ? (int)((wake - now + 999999u) / 1000000u) : 0;
        int got = mtcp_epoll_wait(mctx, r.epid, events, maxev, wait_ms);
        if (got < 0) {
            if (errno == EINTR)
                continue;
            err = errno;
            goto done;
        }
        for (int k = 0; k < got; k++) {
            unsigned i = (unsigned)(events[k].data & 0xffffffffu);
            int s = (int)(uint32_t)(events[k].data >> 32);
            if (i < n && r.conns[i].state != LOADGEN_IDLE && r.conns[i].sockid == s)
                loadgen_event(&r, i, events[k].events);
        }
        now = loadgen_now_ns();
        if (now >= next_expire) {
            loadgen_expire(&r, now);
            next_expire = now + LOADGEN_TICK_MS * 1000000u;
        }
    }
    out->elapsed_ns = now - t0;
    rc = 0;
done:
    /* what is still in flight is not counted; RST frees both ends at once */
    r.stopping = 1;
    if (r.conns)
        for (unsigned i = 0; i < n; i++)
            if (r.conns[i].state != LOADGEN_IDLE && r.conns[i].sockid >= 0)
                mtcp_abort(mctx, r.conns[i].sockid);
    if (r.epid >= 0)
        mtcp_epoll_close(mctx, r.epid);
    free(events);
    free(r.scratch);
    free(r.conns);
    if (rc < 0)
        errno = err;
    return rc;
}
