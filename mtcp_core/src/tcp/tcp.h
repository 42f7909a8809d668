/* TCP: state machine (tcp_in.c), transmission (tcp_out.c), TCBs, flow table
 * and timers (tcp.c). Runs only on the mTCP thread of its core. */
#ifndef MTCP_TCP_H
#define MTCP_TCP_H

#include <stddef.h>
#include <stdint.h>

#include "../core/pool.h"
#include "../core/spsc.h"
#include "../net/net.h"
#include "../wire/wire.h"
#include "mtcp.h" /* the public API's event bits (MTCP_EPOLL*), for the events out */
#include "tcb.h"


/* The stack's settings TCP reads, copied into each core's state when the context is made
 * (api/ctx.c; the values are the stack's, api/stack.c). */
struct tcp_conf {
    uint32_t rcvbuf, sndbuf, time_wait_ms;
    uint32_t idle_timeout_ms, challenge_ack_limit;
    int sack, delayed_ack;
    int cc_algo;                 /* enum tcp_cc_algo of new connections */
    uint32_t fixed_isn;          /* tests: every ISN (mtcp_conf.fixed_isn), 0 = RFC 6528 */
    uint64_t isn_key[2];
    uint32_t orphan_retries, max_orphans, max_per_source;
    uint64_t mem_budget;
    int evict;
};

/* A listening port: registered in the stack's table by JOB_LISTEN (api/job.c); the app
 * side (api/socket.c) makes it and takes connections from its accept queue. */
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

/* TCP's per-core state: connections, listeners, the TX lists, the timers, the exhaustion
 * bounds. net/'s state comes first (the round's clock and stats are ctx->net.now_ms,
 * ctx->net.stats); the context (api/ctx.h) embeds this first. Only the mTCP thread. */
struct tcp_layer {
    struct net_layer net;
    struct tcp_conf conf;
    int priority;                /* control/ACK/data lists (1) or one FIFO (0) */
    struct mtcp_pool tcb_pool, sndbuf_pool, rcvbuf_pool;
    struct tcb **flow;           /* MTCP_FLOW_BUCKETS chains */
    uint32_t flow_count;
    struct mtcp_listener *listeners;
    struct tcb_list ctrl, ack, data;   /* TX lists (tcp_out.c) */
    struct tcb_list tw;                /* TIME_WAIT: FIFO, one fixed delay */
    struct tcb_list da;                /* delayed ACKs: FIFO, one fixed delay */
    struct tcb_list idle;              /* idle timeout: FIFO, touched on every segment */
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
    uint16_t next_port;
};

/* The TCP layer whose net/ state n is (net/ hands TCP a struct net_layer). */
static inline struct tcp_layer *tcp_of_net(struct net_layer *n)
{
    return (struct tcp_layer *)(void *)((char *)n - offsetof(struct tcp_layer, net));
}

/* Events out: implemented by the layer above (api/ctx.c, api/responder.c). */
/* t's socket gets events (EPOLL* bits) in this round's batch. */
void tcp_app_event(struct tcp_layer *ctx, struct tcb *t, uint32_t events);
/* l's accept queue has a new connection (one EPOLLIN per listener per round). */
void tcp_app_accept_ready(struct tcp_layer *ctx, struct mtcp_listener *l);
/* The static responder takes l's new connections itself (then tcp_app_adopt, not the
 * accept queue). */
int tcp_app_takes(struct tcp_layer *ctx, const struct mtcp_listener *l);
void tcp_app_adopt(struct tcp_layer *ctx, struct tcb *t, struct mtcp_listener *l);

/* The bytes the receive window may offer now (auto-tuned, RFC 9293 3.8.6.2.2 keeps the
 * right edge from moving back). */
uint32_t tcp_rcv_room(struct tcb *t);

/* input: tcp_input (net/net.h) */

/* TCBs and the flow table (tcp.c) */
struct tcb *tcb_alloc(struct tcp_layer *ctx, uint32_t laddr, uint16_t lport, uint32_t raddr,
                      uint16_t rport);
void tcb_free(struct tcp_layer *ctx, struct tcb *t);
/* SO_RCVBUF/SO_SNDBUF (0 = keep): shrink the rings' usable size, before the SYN
 * announces the window scale. */
void tcb_limit_buffers(struct tcb *t, uint32_t rcvbuf, uint32_t sndbuf);
/* A list dropped t: return it to the pool if it was freed meanwhile. */
void tcb_unlisted(struct tcp_layer *ctx, struct tcb *t);
struct tcb *flow_lookup(struct tcp_layer *ctx, uint32_t laddr, uint16_t lport, uint32_t raddr,
                        uint16_t rport);
struct mtcp_listener *listener_lookup(struct tcp_layer *ctx, uint32_t laddr, uint16_t port);
/* The one place a state changes (traceable "old -> new"). */
void tcp_set_state(struct tcp_layer *ctx, struct tcb *t, enum tcp_state s);
const char *tcp_state_name(int s);
uint32_t tcp_ts_offset(struct tcp_layer *ctx, uint32_t laddr, uint32_t raddr);
uint32_t tcp_isn(struct tcp_layer *ctx, uint32_t laddr, uint16_t lport, uint32_t raddr,
                 uint16_t rport);
/* The connection is over for the stack: tell the app (if attached) or free it. */
void tcp_conn_done(struct tcp_layer *ctx, struct tcb *t, int err);
void tcp_enter_time_wait(struct tcp_layer *ctx, struct tcb *t);
/* User calls (tcp_user.c, RFC 9293 3.10), made by api/job.c for the app's jobs.
 * An ephemeral port for an active open to raddr:rport whose return traffic comes to this
 * core; 0 when none is free. */
uint16_t tcp_pick_port(struct tcp_layer *ctx, uint32_t raddr, uint16_t rport);
/* A TCB for an active open (ISN, timestamps offset, default MSS); NULL when out of TCBs.
 * The caller applies socket options, then tcp_connect sends the SYN. */
struct tcb *tcp_open_active(struct tcp_layer *ctx, uint16_t lport, uint32_t raddr,
                            uint16_t rport);
void tcp_connect(struct tcp_layer *ctx, struct tcb *t);
/* CLOSE (FIN after the data, or RST with unread data / SO_LINGER 0) or ABORT, for a TCB
 * the app (or the responder) releases. */
void tcp_close_tcb(struct tcp_layer *ctx, struct tcb *t, int abort);
/* The app read: send a window update when it opened enough (SWS avoidance). */
void tcp_window_update(struct tcp_layer *ctx, struct tcb *t);
/* SHUTDOWN(SHUT_WR): FIN after the queued data. */
void tcp_shutdown_wr(struct tcp_layer *ctx, struct tcb *t);
/* TCP_CONGESTION: another algorithm from now (an unknown one is ignored). */
void tcp_set_cc(struct tcb *t, uint32_t algo);
/* Keepalive / user-timeout settings changed: re-arm the idle timer. */
void tcp_timers_changed(struct tcp_layer *ctx, struct tcb *t);
/* Timers: TIME_WAIT FIFO and the RTO wheel; returns ms until the next deadline. */
uint64_t tcp_timers(struct tcp_layer *ctx);
void tcp_rto_arm(struct tcp_layer *ctx, struct tcb *t);
/* Arm the RTO unless it already runs (a persist/keepalive timer is replaced). */
void tcp_rto_ensure(struct tcp_layer *ctx, struct tcb *t);
void tcp_rto_disarm(struct tcp_layer *ctx, struct tcb *t);
/* With nothing in flight: the persist timer (zero window, data waiting) or the
 * keepalive timer, or none. */
void tcp_idle_timer(struct tcp_layer *ctx, struct tcb *t);
void tcp_delack_arm(struct tcp_layer *ctx, struct tcb *t);
void tcp_delack_cancel(struct tcp_layer *ctx, struct tcb *t);
/* A segment arrived for t: move it to the idle FIFO's tail. */
void tcp_idle_touch(struct tcp_layer *ctx, struct tcb *t);
/* RFC 5961 7: challenge ACKs, at most challenge_ack_limit per second per core. */
void tcp_challenge_ack(struct tcp_layer *ctx, struct tcb *t);
/* SYN cookies: ISN for a SYN we keep no state for; check returns the MSS or 0. */
uint32_t tcp_cookie_make(struct tcp_layer *ctx, uint32_t laddr, uint16_t lport, uint32_t raddr,
                         uint16_t rport, uint32_t client_isn, uint16_t mss);
uint16_t tcp_cookie_check(struct tcp_layer *ctx, uint32_t laddr, uint16_t lport,
                          uint32_t raddr, uint16_t rport, uint32_t client_isn, uint32_t cookie);
void tcp_rtt_sample(struct tcb *t, uint32_t rtt_ms);
void tcp_rtt_sample_us(struct tcb *t, uint32_t rtt_us);
/* Arm RACK's reordering timer (replaces the RTO/PTO until it fires). */
void tcp_reo_arm(struct tcp_layer *ctx, struct tcb *t, uint64_t delay_ms);
/* ARP outcome for SYNs held by net_resolve. */
void tcp_arp_resolved(struct net_layer *n, uint32_t ip, const uint8_t mac[6]);
void tcp_arp_failed(struct net_layer *n, uint32_t ip);
/* Fast retransmit of SND.UNA and NewReno recovery (tcp_in.c). */
void tcp_enter_recovery(struct tcp_layer *ctx, struct tcb *t);
/* Exhaustion bounds (tcp_mem.c). */
int tcp_mem_pressure(const struct tcp_layer *ctx);
int tcp_mem_caps(struct tcp_layer *ctx, uint32_t *snd_cap, uint32_t *rcv_cap);
void tcp_mem_charge(struct tcp_layer *ctx, struct tcb *t);
/* t's rings stop counting against the budget; their pages go back when used (madvise). */
void tcp_mem_uncharge(struct tcp_layer *ctx, struct tcb *t);
/* Uncharges t and drops it from the orphan, eviction and per-source counts. */
void tcp_mem_release(struct tcp_layer *ctx, struct tcb *t);
/* The app closed t and it lingers: -1 when too many orphans made it reset instead. */
int tcp_orphan_add(struct tcp_layer *ctx, struct tcb *t);
void tcp_orphan_clear(struct tcp_layer *ctx, struct tcb *t);
int tcp_evict_idle(struct tcp_layer *ctx, int max);
int tcp_source_init(struct tcp_layer *ctx);
void tcp_source_destroy(struct tcp_layer *ctx);
uint32_t tcp_source_conns(struct tcp_layer *ctx, uint32_t addr);
void tcp_source_count(struct tcp_layer *ctx, uint32_t addr, int delta);
int tcp_source_allowed(struct tcp_layer *ctx, uint32_t addr);
/* SND.UNA moved to ack: free the send ring, restart the RTO (tcp_in.c). */
void tcp_ack_advance(struct tcp_layer *ctx, struct tcb *t, uint32_t ack);

/* scoreboard, RACK-TLP, PRR, D-SACK undo (tcp_sb.c) */
void tcp_sb_on_send(struct tcp_layer *ctx, struct tcb *t, uint32_t seq, uint32_t len);
void tcp_sb_reset(struct tcb *t);
uint32_t tcp_pipe(const struct tcb *t);
uint32_t tcp_sb_next_lost(const struct tcb *t, uint32_t *seq);
void tcp_sack_ack(struct tcp_layer *ctx, struct tcb *t, const struct wire_tcp *seg);
void tcp_rack_timeout(struct tcp_layer *ctx, struct tcb *t);
int tcp_tlp_allowed(const struct tcb *t);
uint64_t tcp_pto_ms(const struct tcb *t);
void tcp_tlp_fire(struct tcp_layer *ctx, struct tcb *t);
void tcp_sack_rto(struct tcp_layer *ctx, struct tcb *t);

/* The cumulative ACK reached ack: scoreboard entries wholly below it go, one that
 * straddles it keeps its unacknowledged part (per ACK: inline, one pass). */
static inline void tcp_sb_drop_acked(struct tcb *t, uint32_t ack)
{
    uint8_t k = 0;
    for (uint8_t i = 0; i < t->sb_n; i++) {
        if (SEQ_LEQ(t->sb[i].end, ack))
            continue;
        t->sb[k] = t->sb[i];
        if (SEQ_LT(t->sb[k].start, ack))
            t->sb[k].start = ack;
        k++;
    }
    t->sb_n = k;
}

/* congestion control (tcp_cc.c) */
const char *tcp_cc_name(int algo);
int tcp_cc_from_name(const char *name, size_t len);
void tcp_cc_init(struct tcb *t);
void tcp_cc_on_ack(struct tcp_layer *ctx, struct tcb *t, uint32_t acked, uint32_t flight);
uint32_t tcp_cc_ssthresh(struct tcb *t);
void tcp_cc_undo(struct tcb *t);

/* Tear everything down (context destroy). */
void tcp_abort_all(struct tcp_layer *ctx);

/* output (tcp_out.c) */
void tcp_schedule(struct tcp_layer *ctx, struct tcb *t, uint8_t pend);
void tcp_output_round(struct tcp_layer *ctx);
/* RST in answer to a segment that has no connection (RFC 9293 3.10.7.1). */
void tcp_send_rst_for(struct tcp_layer *ctx, const uint8_t dst_mac[6], const struct wire_ipv4 *ip,
                      const struct wire_tcp *seg);
/* An immediate ACK without TCB state change (challenge ACKs, TIME_WAIT). */
void tcp_send_ack_now(struct tcp_layer *ctx, struct tcb *t);
/* RST for a connection that is being torn down now (not queued: the TCB may be
 * freed right after). */
void tcp_send_rst_now(struct tcp_layer *ctx, struct tcb *t);
uint16_t tcp_rcv_window(struct tcb *t, uint32_t *right_edge);
void tcp_retransmit(struct tcp_layer *ctx, struct tcb *t);
/* One segment from the first byte at or after seq that the peer has not SACKed.
 * Returns 1 when it sent, 0 when there was nothing to send, -1 when out of budget. */
int tcp_retransmit_from(struct tcp_layer *ctx, struct tcb *t, uint32_t seq, int below_sacked);
/* A probe that makes the peer answer with an ACK (persist, keepalive). */
void tcp_send_probe(struct tcp_layer *ctx, struct tcb *t);
/* SYN-ACK carrying a cookie, for a SYN we keep no state for. */
void tcp_send_cookie_synack(struct tcp_layer *ctx, const uint8_t dst_mac[6],
                            const struct wire_ipv4 *ip, const struct wire_tcp *seg, uint32_t isn,
                            uint16_t mss);
/* Payload bytes a segment of t can carry (MSS less the options it carries). */
uint32_t tcp_seg_max(const struct tcb *t);
/* Payload bytes one TSO frame of t may carry on this core's device (a multiple of
 * tcp_seg_max), or 0 when the device cannot segment (io_dev.tso_max). */
uint32_t tcp_tso_max(const struct tcp_layer *ctx, const struct tcb *t);

#endif
