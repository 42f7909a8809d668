/* Per-core context: everything one core's mTCP thread and app thread share,
 * and nothing that another core touches (DESIGN.md "Per-core, shared nothing"). */
#ifndef MTCP_API_CTX_H
#define MTCP_API_CTX_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "../core/pool.h"
#include "../core/spsc.h"
#include "../core/stats.h"
#include "../io/io.h"
#include "../net/frag.h"
#include "../net/net.h"
#include "../opt.h"
#include "../tcp/tcb.h"
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

/* A listening port: registered in the stack's table by JOB_LISTEN. */
struct mtcp_listener {
    struct mtcp_listener *next;
    uint32_t addr;
    uint16_t port;
    int sockid;
    uint32_t sock_gen;
    uint32_t backlog;
    uint32_t syn_backlog;       /* half-open connections before SYN cookies */
    uint32_t rcvbuf, sndbuf;    /* SO_RCVBUF/SO_SNDBUF set before listen(), 0 = default */
    uint8_t cc;                 /* TCP_CONGESTION set before listen(): algo + 1, 0 = default */
    uint32_t pending;           /* SYN_RECEIVED (mTCP thread only) */
    uint32_t rsp_refs;          /* connections the responder holds (mTCP thread only) */
    uint8_t draining;           /* the responder drains: no new connections */
    uint8_t ev_queued;          /* an EPOLLIN event is in this round's batch */
    _Atomic int registered;     /* the mTCP thread has it in its table */
    struct mtcp_spsc acceptq;   /* struct tcb * of established connections */
    _Atomic uint32_t accept_ready; /* queued items, for readiness checks */
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

struct arp_entry {
    uint32_t ip;
    uint8_t mac[6];
    uint8_t state;               /* 0 free, 1 resolving, 2 resolved */
    uint8_t tries;               /* requests sent while resolving */
    uint64_t expire_ms;          /* resolved: until; resolving: next retry */
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
    struct mtcp_stack *stack;
    unsigned core;
    unsigned ncores;
    struct io_dev *dev;
    uint32_t ip, netmask, gateway;
    uint8_t mac[6];
    int priority;                /* control/ACK/data lists (1) or one FIFO (0) */
    int trace;
    struct frag_table *frag;     /* IPv4 reassembly (net/frag.h) */

    pthread_t thread;
    int thread_started;
    int stepped;                 /* no thread: the caller runs rounds (mtcp_ctx_step) on its
                                    own clock; nothing on the app side may wait for a round */
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

    /* ---- mTCP thread only ---- */
    uint64_t now_ns;             /* the round's time: the only clock the stack reads */
    uint64_t now_ms;             /* now_ns in ms (TCP's timers, ARP) */
    uint64_t now_us;             /* now_ns in us (RACK's transmit times, RTT samples) */
    uint64_t last_publish_ns;    /* when the stats block was last published */
    int announce;                /* a gratuitous ARP is due (the first round sends it) */
    struct mtcp_responder *rsp;  /* static responder, once enabled (api/responder.c) */
    uint64_t busy_poll_ns;       /* poll this long after a round that did work */
    struct mtcp_stats stats;
    struct mtcp_pool tcb_pool, sndbuf_pool, rcvbuf_pool;
    struct tcb **flow;           /* MTCP_FLOW_BUCKETS chains */
    uint32_t flow_count;
    struct mtcp_listener *listeners;
    struct tcb *ctrl_head, *ctrl_tail, *ack_head, *ack_tail, *data_head, *data_tail;
    uint32_t nctrl, nack, ndata;
    struct tcb *ev_head;
    struct tcb *tw_head, *tw_tail;
    struct tcb *da_head, *da_tail;     /* delayed ACKs: FIFO, one fixed delay */
    struct tcb *idle_head, *idle_tail; /* idle timeout: FIFO, touched on every segment */
    uint64_t cack_window_ms;           /* challenge ACK rate limit (RFC 5961 7) */
    uint32_t cack_count;
    struct tcb **wheel;          /* RTO timing wheel, MTCP_WHEEL_SLOTS */
    uint64_t wheel_ms;           /* last slot processed */
    uint32_t wheel_count;
    uint32_t state_count[TCP_NSTATES];
    /* exhaustion bounds (tcp/tcp_mem.c) */
    uint32_t orphans;
    uint64_t mem_used;           /* ring bytes of live connections */
    uint32_t evicted_pending;    /* evicted, waiting for the app's close */
    uint32_t *src_addr, *src_cnt; /* per-source counts, open addressing (max_per_source) */
    uint32_t src_mask;
    struct arp_entry arp[MTCP_ARP_ENTRIES];
    struct net_upcalls net_up;   /* ARP -> the layer above (set by api/ctx.c) */
    uint16_t next_port;
    uint16_t ip_id;
    /* the round's TX batch */
    uint8_t *txbuf;              /* MTCP_TX_BATCH * MTCP_MAX_FRAME */
    struct io_frame txf[MTCP_TX_BATCH];
    int ntx;
    int tx_budget;               /* frames this round may still send */
    int64_t tx_tokens;           /* shaping: bytes the link may still take (can go negative) */
    uint64_t tx_tokens_ns;       /* when tx_tokens was last refilled */

    /* ---- app thread only ---- */
    struct msock *socks;
    int nsocks;
    int sock_free_head;
    int nzombies;
    struct mtcp_epoll ep[MTCP_MAX_EPOLL];
    struct mtcp_event *evbuf;    /* scratch for draining evq */
};



/* app side helpers (api/) */
void ctx_push_job(struct mtcp_context *ctx, const struct mtcp_job *job);
/* mTCP thread: one job from the app (api/job.c) */
void ctx_handle_job(struct mtcp_context *ctx, const struct mtcp_job *job);
/* wake the mTCP thread if it sleeps (after a batch of pushes) */
void ctx_kick(struct mtcp_context *ctx);

/* One round of the mTCP thread at now_ns (RX, jobs, timers, TX, events, stats); returns
 * when the next is due, now_ns when at once (api/ctx.c). */
uint64_t ctx_round(struct mtcp_context *ctx, uint64_t now_ns);

/* mTCP thread helpers */
void ctx_add_event(struct mtcp_context *ctx, struct tcb *t, uint32_t events);
void ctx_listener_event(struct mtcp_context *ctx, struct mtcp_listener *l);

/* static responder (api/responder.c), mTCP thread */
struct mtcp_responder;
int rsp_takes(struct mtcp_context *ctx, const struct mtcp_listener *l);
void rsp_adopt(struct mtcp_context *ctx, struct tcb *t, struct mtcp_listener *l);
/* One call per round, after the received frames and the jobs: answers what it can,
 * runs its timers; returns ms until its next deadline (UINT64_MAX: none). */
uint64_t rsp_round(struct mtcp_context *ctx);
void rsp_job(struct mtcp_context *ctx, const struct mtcp_job *j);
void rsp_listener_gone(struct mtcp_context *ctx, struct mtcp_listener *l);
void rsp_free(struct mtcp_responder *r);

#endif
