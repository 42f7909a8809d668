/* Per-core context: everything one core's mTCP thread and app thread share,
 * and nothing that another core touches (DESIGN.md "Per-core, shared nothing"). */
#ifndef MTCP_API_CTX_H
#define MTCP_API_CTX_H

#include <pthread.h>
#include <stddef.h>
#include <stdatomic.h>
#include <stdint.h>

#include "../core/pool.h"
#include "../core/spsc.h"
#include "../core/stats.h"
#include "../io/io.h"
#include "../net/frag.h"
#include "../net/net.h"
#include "../opt.h"
#include "../tcp/tcp.h"
#include "mtcp.h"

/* ---- jobs: app -> mTCP thread ---- */
enum mtcp_job_type {
    JOB_LISTEN = 1, /* listener ready: register it */
    JOB_UNLISTEN,   /* listener closed: reset pending connections, free it */
    JOB_CONNECT,    /* sock: open actively */
    JOB_SEND,       /* tcb: new data in the send ring */
    JOB_WINDOW,     /* tcb: the app read, the receive window reopened */
    JOB_SHUT_WR,    /* tcb: send FIN after the data */
    JOB_CLOSE,      /* tcb: the app released it; FIN (graceful) */
    JOB_ABORT,      /* tcb: the app released it; RST */
    JOB_SOCKOPT,    /* tcb: an option the mTCP thread applies (value in .value) */
    JOB_RSP_ENABLE, /* obj: the responder (api/responder.c) */
    JOB_RSP_INSTALL, /* obj: an entry, built whole by the app */
    JOB_RSP_REMOVE, /* obj: an entry holding only the key */
    JOB_RSP_CLEAR,
    JOB_RSP_DRAIN,
};

/* JOB_SOCKOPT options (in .addr) */
enum mtcp_job_opt { OPT_NODELAY = 1, OPT_LINGER0, OPT_KEEPALIVE, OPT_KEEPIDLE, OPT_KEEPINTVL,
                    OPT_KEEPCNT, OPT_USER_TIMEOUT, OPT_EVICTABLE, OPT_CONGESTION };

struct mtcp_job {
    uint32_t type;
    int sockid;
    uint32_t gen;   /* socket generation (CONNECT) */
    struct tcb *tcb;
    void *obj;      /* listener (LISTEN/UNLISTEN) or msock (CONNECT/CLOSE of a connecting socket) */
    void *obj2;     /* JOB_RSP_ENABLE: the new settings (a copy the mTCP thread frees) */
    uint32_t addr;
    uint16_t port;
    uint32_t value;
};

/* ---- events: mTCP thread -> app ---- */
struct mtcp_event {
    int sockid;
    uint32_t gen;   /* the socket generation the event was meant for */
    uint32_t events;
};

enum msock_type { MSOCK_FREE = 0, MSOCK_STREAM, MSOCK_LISTENER, MSOCK_ZOMBIE };

/* A socket id of the app thread. Touched only by the app thread, except the
 * tcb pointer the mTCP thread publishes when an active open gets its TCB. */
struct msock {
    uint8_t type;
    uint8_t connecting;
    uint8_t rd_shut;
    uint16_t lport;
    uint32_t laddr;
    uint32_t gen;
    int next_free;
    int epid;                    /* epoll it is registered with, -1 if none */
    uint32_t ep_events;          /* interest (incl. EPOLLET) */
    uint64_t ep_data;
    uint32_t ep_pending;         /* edge events not yet reported */
    int ep_ready_next;           /* ready list link; -2 when not on the list */
    _Atomic(struct tcb *) tcb;   /* set by the app (accept) or the mTCP thread (connect) */
    _Atomic int conn_err;        /* connect failed before a TCB existed */
    _Atomic int released;        /* ZOMBIE: the mTCP thread is done with it */
    struct mtcp_listener *listener;
    uint32_t want_rcvbuf, want_sndbuf;
    uint8_t cc;                  /* TCP_CONGESTION: enum tcp_cc_algo + 1, 0 = the stack's */
    uint8_t nodelay, keepalive, linger0, reuseaddr;
    uint32_t ka_idle_ms, ka_intvl_ms, ka_cnt;
    uint8_t evictable;
    uint32_t user_timeout_ms;
};

struct mtcp_epoll {
    int used;
    int ready_head, ready_tail;  /* list of socket ids, linked by ep_ready_next */
    uint32_t nready;
};

struct mtcp_stack {
    struct mtcp_conf conf;       /* strings below are owned copies */
    char *s_backend, *s_iface, *s_ip, *s_gateway, *s_mac, *s_tap, *s_pcap, *s_stats;
    uint32_t ip, netmask, gateway;
    uint8_t mac[6];
    struct io_group io;
    unsigned ncores;
    uint32_t max_conns, rcvbuf, sndbuf, time_wait_ms;
    uint32_t idle_timeout_ms, syn_backlog, challenge_ack_limit;
    int sack, delayed_ack;
    int cc_algo;                 /* enum tcp_cc_algo of new connections */
    uint64_t tx_rate_Bps;        /* link rate in bytes/s; 0 = no shaping */
    int shared_addr;             /* the kernel keeps the address too (conf.shared_addr) */
    uint32_t frag_timeout_ms;    /* IPv4 reassembly timer (net/frag.h) */
    uint64_t isn_key[2];
    uint32_t orphan_retries, max_orphans, max_per_source;
    uint64_t mem_budget;
    int evict;
};

struct mtcp_context {
    struct tcp_layer tcp;        /* first: TCP's state, with net/'s inside it (tcp/tcp.h) */
    struct mtcp_stack *stack;
    int stepped;                 /* no thread: the caller runs rounds (mtcp_ctx_step) on its
                                    own clock; nothing on the app side may wait for a round */
    pthread_t thread;
    int thread_started;
    _Atomic int stop;
    int cpu;

    /* wake-ups: the stack sleeps on dev + stack_efd, the app on app_efd */
    int stack_efd, app_efd, epfd;
    _Atomic int stack_sleeping;
    _Atomic int app_waiting;
    _Atomic int interrupted;     /* mtcp_epoll_interrupt was called */

    struct mtcp_spsc jobq;       /* struct mtcp_job */
    struct mtcp_spsc evq;        /* struct mtcp_event */

    struct mtcp_responder *rsp_app; /* the app thread's handle on the responder */
    _Atomic uint64_t app_kicks, app_waits; /* wake-ups counted by the app thread */

    /* ---- mTCP thread only (the round's clock, stats, ARP, TX batch: tcp.net) ---- */
    uint64_t last_publish_ns;    /* when the stats block was last published */
    struct mtcp_responder *rsp;  /* static responder, once enabled (api/responder.c) */
    uint64_t busy_poll_ns;       /* poll this long after a round that did work */
    struct tcb_list ev;          /* the round's events (tcp_app_event), one per TCB, newest first */

    /* ---- app thread only ---- */
    struct msock *socks;
    int nsocks;
    int sock_free_head;
    int nzombies;
    struct mtcp_epoll ep[MTCP_MAX_EPOLL];
    struct mtcp_event *evbuf;    /* scratch for draining evq */
};

/* The context that holds a TCP layer (tcp_app_* upcalls, implemented here in api/). */
static inline struct mtcp_context *ctx_of_tcp(struct tcp_layer *tl)
{
    return (struct mtcp_context *)(void *)((char *)tl - offsetof(struct mtcp_context, tcp));
}



/* app side helpers (api/) */
void ctx_push_job(struct mtcp_context *ctx, const struct mtcp_job *job);
/* mTCP thread: one job from the app (api/job.c) */
void ctx_handle_job(struct mtcp_context *ctx, const struct mtcp_job *job);
/* wake the mTCP thread if it sleeps (after a batch of pushes) */
void ctx_kick(struct mtcp_context *ctx);

/* One round of the mTCP thread at now_ns (RX, jobs, timers, TX, events, stats); returns
 * when the next is due, now_ns when at once (api/ctx.c). */
uint64_t ctx_round(struct mtcp_context *ctx, uint64_t now_ns);


/* static responder (api/responder.c), mTCP thread */
struct mtcp_responder;
/* One call per round, after the received frames and the jobs: answers what it can,
 * runs its timers; returns ms until its next deadline (UINT64_MAX: none). */
uint64_t rsp_round(struct mtcp_context *ctx);
void rsp_job(struct mtcp_context *ctx, const struct mtcp_job *j);
void rsp_listener_gone(struct mtcp_context *ctx, struct mtcp_listener *l);
void rsp_free(struct mtcp_responder *r);

#endif
