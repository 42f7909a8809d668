/* tls_load: a closed-loop HTTPS load generator for the handshake rows of bench/web_bench.py.
 *
 *   tls_load HOST PORT PATH full|resumed CONNECTIONS SECONDS MAX_REQUESTS
 *
 * CONNECTIONS connections at a time, each a new TCP connection and TLS handshake with one
 * "GET PATH" (Connection: close), read to the end of its Content-Length, then closed and
 * replaced, until SECONDS have passed or MAX_REQUESTS are done. "full": every handshake is
 * a full one; "resumed": one warm-up connection (not counted) takes a session ticket, and
 * every counted connection offers that ticket (each slot keeps its SSL object across its
 * connections, SSL_clear keeping the session, as `openssl s_time -reuse` does). After the
 * warm-up the client session cache is off: with it on, OpenSSL's client marks a TLS 1.3
 * session used once as not resumable (tls_finish_handshake: "only use TLSv1.3 tickets
 * once"), and every other connection would be a full handshake. wrk cannot do
 * either in a controlled way and `openssl s_time -time` counts CPU time, not wall time.
 * No certificate verification (like wrk). Prints one JSON line: connections, seconds,
 * resumed, errors, p50_ms, p99_ms (from connect() to the end of the response).
 * Build: gcc -O2 -o tls_load tls_load.c -lssl -lcrypto (web_bench.py does it). */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum { CONNECTING, HANDSHAKE, WRITING, READING };

struct conn {
    int fd;
    SSL *ssl;
    int state;
    double t0;
    size_t got;       /* bytes of the response so far */
    long need;        /* head + body length, -1 until the head is complete */
    char head[2048];  /* the start of the response, for its head */
    size_t headlen;
    int slot;
};

static SSL_CTX *ctx;
static SSL_SESSION *session; /* resumed mode: the warm-up connection's ticket */
static SSL **slot_ssl; /* resumed mode: each slot's SSL object, kept across connections */
static struct sockaddr_in addr;
static const char *host;
static char request[512];
static size_t request_len;
static int epfd;
static int resumed_mode;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int on_new_session(SSL *ssl, SSL_SESSION *sess) {
    (void)ssl;
    if (session == NULL) {
        session = sess; /* keeps the reference OpenSSL handed over */
        return 1;
    }
    return 0;
}

static void conn_free(struct conn *c) {
    if (c->ssl != NULL) {
        /* a quiet close: without it OpenSSL marks the session not resumable */
        SSL_set_shutdown(c->ssl, SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN);
        if (slot_ssl == NULL || slot_ssl[c->slot] != c->ssl) SSL_free(c->ssl);
        c->ssl = NULL;
    }
    if (c->fd >= 0) {
        close(c->fd);
        c->fd = -1;
    }
}

static int watch(struct conn *c, unsigned events, int op) {
    struct epoll_event ev = {.events = events, .data = {.ptr = c}};
    return epoll_ctl(epfd, op, c->fd, &ev);
}

static int conn_start(struct conn *c, int slot) {
    memset(c, 0, sizeof(*c));
    c->need = -1;
    c->slot = slot;
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) return -1;
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    c->t0 = now();
    if (connect(c->fd, (struct sockaddr *)&addr, sizeof(addr)) < 0 && errno != EINPROGRESS) {
        conn_free(c);
        return -1;
    }
    if (slot_ssl != NULL && slot_ssl[slot] != NULL) {
        c->ssl = slot_ssl[slot];
        if (SSL_clear(c->ssl) != 1) return -1; /* keeps its session */
    } else {
        c->ssl = SSL_new(ctx);
        if (c->ssl == NULL) {
            conn_free(c);
            return -1;
        }
        if (slot_ssl != NULL) {
            slot_ssl[slot] = c->ssl;
            SSL_set_session(c->ssl, session);
        }
    }
    if (SSL_set_fd(c->ssl, c->fd) != 1) {
        conn_free(c);
        return -1;
    }
    SSL_set_tlsext_host_name(c->ssl, host);
    SSL_set_connect_state(c->ssl);
    c->state = CONNECTING;
    if (watch(c, EPOLLOUT, EPOLL_CTL_ADD) < 0) {
        conn_free(c);
        return -1;
    }
    return 0;
}

/* The response's total length once its head is in (Content-Length), else -1. */
static long response_length(const struct conn *c) {
    const char *end = memmem(c->head, c->headlen, "\r\n\r\n", 4);
    if (end == NULL) return -1;
    long headlen = (long)(end - c->head) + 4;
    const char *p = c->head;
    while (p < end) {
        const char *eol = memmem(p, (size_t)(end - p) + 2, "\r\n", 2);
        if (eol == NULL) break;
        if ((size_t)(eol - p) > 15 && strncasecmp(p, "content-length:", 15) == 0)
            return headlen + strtol(p + 15, NULL, 10);
        p = eol + 2;
    }
    return headlen;
}

/* An SSL call that returned r did not finish: 0 once the connection waits for what the
 * call wants (readable or writable), -1 when the call failed (or the peer closed). */
static int ssl_wait(struct conn *c, int r) {
    int err = SSL_get_error(c->ssl, r);
    if (err == SSL_ERROR_WANT_READ) return watch(c, EPOLLIN, EPOLL_CTL_MOD) < 0 ? -1 : 0;
    if (err == SSL_ERROR_WANT_WRITE) return watch(c, EPOLLOUT, EPOLL_CTL_MOD) < 0 ? -1 : 0;
    return -1;
}

/* Moves a connection on; 1: its response is complete, 0: waiting, -1: failed. */
static int conn_step(struct conn *c) {
    for (;;) {
        int r;
        switch (c->state) {
        case CONNECTING: {
            int soerr = 0;
            socklen_t len = sizeof(soerr);
            if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &soerr, &len) < 0 || soerr != 0) return -1;
            c->state = HANDSHAKE;
            continue;
        }
        case HANDSHAKE:
            r = SSL_do_handshake(c->ssl);
            if (r == 1) {
                c->state = WRITING;
                continue;
            }
            return ssl_wait(c, r);
        case WRITING:
            r = SSL_write(c->ssl, request, (int)request_len);
            if (r == (int)request_len) {
                c->state = READING;
                continue;
            }
            return ssl_wait(c, r);
        case READING: {
            char buf[16384];
            r = SSL_read(c->ssl, buf, sizeof(buf));
            if (r > 0) {
                if (c->need < 0) {
                    size_t n = (size_t)r;
                    if (n > sizeof(c->head) - c->headlen) n = sizeof(c->head) - c->headlen;
                    memcpy(c->head + c->headlen, buf, n);
                    c->headlen += n;
                    c->need = response_length(c);
                }
                c->got += (size_t)r;
                if (c->need >= 0 && (long)c->got >= c->need) return 1;
                continue;
            }
            return ssl_wait(c, r); /* closed before the end of the response */
        }
        default:
            return -1;
        }
    }
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    if (argc != 8) {
        fprintf(stderr, "usage: %s HOST PORT PATH full|resumed CONNECTIONS SECONDS MAX\n", argv[0]);
        return 2;
    }
    host = argv[1];
    int port = atoi(argv[2]);
    const char *path = argv[3];
    resumed_mode = strcmp(argv[4], "resumed") == 0;
    int nconn = atoi(argv[5]);
    double seconds = atof(argv[6]);
    long max = atol(argv[7]);
    if (nconn < 1 || nconn > 4096 || seconds <= 0 || max < 1 || port < 1 || port > 65535) {
        fprintf(stderr, "tls_load: bad arguments\n");
        return 2;
    }
    memset(&addr, 0, sizeof(addr));
    addr.sin_family = AF_INET;
    addr.sin_port = htons((unsigned short)port);
    if (inet_pton(AF_INET, host, &addr.sin_addr) != 1) {
        fprintf(stderr, "tls_load: HOST must be an IPv4 address\n");
        return 2;
    }
    int n = snprintf(request, sizeof(request),
                     "GET %s HTTP/1.1\r\nHost: bench.test\r\nConnection: close\r\n\r\n", path);
    if (n < 0 || (size_t)n >= sizeof(request)) return 2;
    request_len = (size_t)n;
    ctx = SSL_CTX_new(TLS_client_method());
    if (ctx == NULL) return 1;
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
    SSL_CTX_sess_set_new_cb(ctx, on_new_session);
    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0) return 1;
    double *lat = malloc(sizeof(double) * (size_t)max);
    struct conn *conns = calloc((size_t)nconn, sizeof(struct conn));
    struct epoll_event *evs = calloc((size_t)nconn, sizeof(struct epoll_event));
    if (lat == NULL || conns == NULL || evs == NULL) return 1;
    long done = 0, errors = 0, resumed = 0;

    if (resumed_mode) { /* the warm-up: one full handshake that leaves a ticket */
        double until = now() + 10;
        while (session == NULL && now() < until) {
            struct conn *c = &conns[0];
            if (conn_start(c, 0) < 0) return 1;
            int r = 0;
            while (r == 0 && now() < until) {
                if (epoll_wait(epfd, evs, 1, 100) > 0) r = conn_step(c);
            }
            conn_free(c);
        }
        if (session == NULL) {
            fprintf(stderr, "tls_load: the server gave no session ticket\n");
            return 1;
        }
        SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    }
    if (resumed_mode) {
        slot_ssl = calloc((size_t)nconn, sizeof(SSL *));
        if (slot_ssl == NULL) return 1;
    }
    double start = now(), deadline = start + seconds;
    for (int i = 0; i < nconn; i++) {
        conns[i].fd = -1;
        if (conn_start(&conns[i], i) < 0) errors++;
    }
    while (done < max && now() < deadline) {
        int k = epoll_wait(epfd, evs, nconn, 100);
        for (int i = 0; i < k; i++) {
            struct conn *c = evs[i].data.ptr;
            int r = conn_step(c);
            if (r == 0) continue;
            if (r > 0 && done < max) {
                lat[done++] = now() - c->t0;
                if (SSL_session_reused(c->ssl)) resumed++;
            } else if (r < 0) {
                errors++;
            }
            conn_free(c);
            if (done < max && now() < deadline && conn_start(c, c->slot) < 0) errors++;
        }
    }
    double elapsed = now() - start;
    for (int i = 0; i < nconn; i++) conn_free(&conns[i]);
    qsort(lat, (size_t)done, sizeof(double), cmp);
    double p50 = done ? lat[(done - 1) / 2] * 1e3 : 0, p99 = done ? lat[(done * 99 - 1) / 100] * 1e3 : 0;
    printf("{\"connections\": %ld, \"seconds\": %.4f, \"resumed\": %ld, \"errors\": %ld, "
           "\"p50_ms\": %.3f, \"p99_ms\": %.3f}\n",
           done, elapsed, resumed, errors, p50, p99);
    free(lat);
    free(conns);
    free(evs);
    if (slot_ssl != NULL) {
        for (int i = 0; i < nconn; i++)
            if (slot_ssl[i] != NULL) SSL_free(slot_ssl[i]);
        free(slot_ssl);
    }
    if (session != NULL) SSL_SESSION_free(session);
    SSL_CTX_free(ctx);
    return 0;
}
