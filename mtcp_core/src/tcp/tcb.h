/* Transmission control block and the per-core flow table. */
#ifndef MTCP_TCP_TCB_H
#define MTCP_TCP_TCB_H

#include <stdatomic.h>
#include <stdint.h>

#include "../core/bytering.h"
#include "../opt.h"
#include "tcb_list.h"

enum tcp_state {
    TCP_CLOSED = 0,
    TCP_LISTEN,
    TCP_SYN_SENT,
    TCP_SYN_RECEIVED,
    TCP_ESTABLISHED,
    TCP_FIN_WAIT_1,
    TCP_FIN_WAIT_2,
    TCP_CLOSE_WAIT,
    TCP_CLOSING,
    TCP_LAST_ACK,
    TCP_TIME_WAIT,
    TCP_NSTATES
};

/* Sequence arithmetic modulo 2^32 (RFC 9293 3.4). */
#define SEQ_LT(a, b) ((int32_t)((uint32_t)(a) - (uint32_t)(b)) < 0)
#define SEQ_LEQ(a, b) ((int32_t)((uint32_t)(a) - (uint32_t)(b)) <= 0)
#define SEQ_GT(a, b) SEQ_LT(b, a)
#define SEQ_GEQ(a, b) SEQ_LEQ(b, a)

/* tcb->app_flags: what the stack tells the app thread (atomic). */
#define TCB_AF_CONNECTED 0x01u /* reached ESTABLISHED at least once */
#define TCB_AF_EOF 0x02u       /* peer's FIN received, all data before it queued */
#define TCB_AF_RESET 0x04u     /* connection reset or aborted (so_error says why) */
#define TCB_AF_CLOSED 0x08u    /* the stack is done with the connection */
#define TCB_AF_WR_SHUT 0x10u   /* app shut down the write side */

/* tcb->pend: what the mTCP thread still has to transmit for this TCB. */
#define TCB_P_SYN 0x01u      /* SYN or SYN-ACK */
#define TCB_P_ACK 0x02u      /* a pure ACK (or window update) is owed */
#define TCB_P_FIN 0x04u      /* FIN once the send ring is drained */
#define TCB_P_RST 0x08u      /* RST, then free */
#define TCB_P_DATA 0x10u     /* unsent data in the send ring */

/* Which TX list a TCB sits on (priority queueing, DESIGN.md). */
#define TCB_L_CTRL 0x1u
#define TCB_L_ACK 0x2u
#define TCB_L_DATA 0x4u

struct mtcp_listener;

/* A range of sequence space [start, end). */
struct tcp_range {
    uint32_t start, end;
};

/* What the one wheel timer of a TCB is for (BSD-style multiplexing). REO: RACK's
 * reordering timer (RFC 8985 6.3). */
enum tcp_timer_kind {
    TCP_TIMER_RTO = 0,
    TCP_TIMER_PTO,
    TCP_TIMER_PERSIST,
    TCP_TIMER_KEEPALIVE,
    TCP_TIMER_REO
};

/* The sender's scoreboard (tcp_sb.c): what was sent in [SND.UNA, SND.MAX), in sequence
 * order, one entry per transmission burst with its time (RACK, RFC 8985) and state
 * (SACK scoreboard, RFC 6675). Entries are split where SACK blocks cut them and merged
 * when the table is full (bounded memory): TCP_SB_MAX entries (opt.h). */
_Static_assert(TCP_SB_MAX >= 2 && TCP_SB_MAX <= 255, "tcb->sb_n counts the entries in 8 bits");
#define TCP_SB_SACKED 0x01u  /* the peer holds it (SACK) */
#define TCP_SB_LOST 0x02u    /* marked lost, not retransmitted since */
#define TCP_SB_RETRANS 0x04u /* retransmitted and not known lost since (counts in pipe) */
#define TCP_SB_EVER 0x08u    /* retransmitted at least once (RACK, Karn, D-SACK undo) */
struct tcp_sb_seg {
    uint32_t start, end;
    uint32_t xmit_us;        /* low 32 bits of the time of its last transmission, us */
    uint8_t flags;           /* TCP_SB_* */
};

/* congestion control algorithms (tcp_cc.c) */
enum tcp_cc_algo { TCP_CC_CUBIC = 0, TCP_CC_NEWRENO = 1, TCP_CC_COUNT };

struct tcb {
    /* --- hot on every segment --- */
    struct tcb *hnext;          /* flow table chain */
    uint32_t laddr, raddr;      /* host order */
    uint16_t lport, rport;
    uint8_t state;
    uint8_t snd_wscale, rcv_wscale;
    uint8_t ts_ok, sack_ok, wscale_ok;
    uint8_t rmac[6];            /* next hop MAC, fixed for the connection's life */
    uint8_t lists;              /* TCB_L_* */
    uint8_t pend;               /* TCB_P_* */
    uint8_t in_use;
    uint8_t app_closed;         /* the app released its socket */
    uint8_t arp_wait;           /* SYN held until the next hop resolves */
    uint8_t zombie;             /* freed, but a TX/event list still points at it */
    uint8_t acc_queued;         /* pushed into a listener's accept queue */
    uint8_t fin_sent;           /* our FIN is in flight (fin_seq valid) */
    uint8_t in_flow;            /* linked in the flow table */

    /* send sequence space (RFC 9293 3.3.1) */
    uint32_t iss, snd_una, snd_nxt, snd_max, snd_wnd, snd_wl1, snd_wl2;
    uint32_t snd_head_seq;      /* sequence number of the send ring's head byte */
    uint16_t mss;               /* effective send MSS (peer's MSS, our MTU) */
    uint32_t fin_seq;           /* sequence number our FIN occupies */
    uint32_t cwnd, ssthresh;
    uint32_t bytes_acked;       /* congestion avoidance: bytes ACKed toward the next SMSS
                                   of cwnd (RFC 3465 2.1) */
    uint32_t snd_sml;           /* end of the last small segment sent (Nagle, Minshall) */
    uint8_t sml_out;            /* ... and it is not acknowledged yet */

    /* receive sequence space */
    uint32_t irs, rcv_nxt;
    uint32_t rcv_adv;           /* right edge of the window last advertised */
    /* receive-window auto-tuning (dynamic right-sizing, as Linux's tcp_rcv_space_adjust):
     * the window offered is at most rcv_space less what the app has not read; once per
     * receiver RTT rcv_space grows to twice (four times while growing) what arrived in
     * that RTT, up to the ring (rcv.limit, which the window scale was chosen for) */
    uint32_t rcv_space;
    uint32_t rcv_space_seq;     /* rcv_nxt when the current measurement began */
    uint32_t rcv_space_last;    /* bytes of the previous measurement */
    uint64_t rcv_space_ms;      /* when it began; 0: not yet */
    uint32_t rcv_rtt_ms;        /* receiver's RTT estimate from TSecr (0: none yet) */
    uint32_t ts_recent, ts_offset, last_ack_sent;

    /* retransmission (timing wheel slot list) */
    struct tcb *rto_next, *rto_prev;
    uint64_t rto_expire_ms;
    uint32_t rto_ms;
    uint16_t rto_backoff;
    uint8_t rto_armed;
    uint8_t rtt_timing;         /* an RTT sample is being timed (Karn) */
    uint8_t timer_kind;         /* enum tcp_timer_kind of the armed wheel entry */
    uint16_t probes;            /* persist/keepalive probes without an answer */
    uint32_t rtt_seq;
    uint64_t rtt_start_ms;
    uint32_t srtt_us, rttvar_us;
    uint64_t retransmits;

    /* loss recovery (RFC 5681 / 6582 NewReno, RFC 2018 SACK) */
    uint8_t in_recovery;
    uint8_t dupacks;
    uint8_t lt_extra;           /* segments limited transmit may send past cwnd (RFC 3042) */
    uint8_t pto_left;           /* loss probes allowed before the RTO (RFC 8985 TLP) */
    uint8_t quickacks;          /* segments still ACKed at once (start, after a loss) */
    uint8_t nsacked;
    uint8_t nooo;
    uint8_t ooo_last;           /* index of the island the latest segment went to */
    uint8_t nsack_prev;         /* blocks in sack_prev */
    uint8_t rfin;               /* the peer's FIN arrived out of order at rfin_seq */
    uint32_t rfin_seq;
    uint32_t recover;           /* snd_max when recovery began */
    uint32_t rexmit_nxt;        /* next sequence number to consider for a hole retransmit */
    struct tcp_range sacked[TCP_SACK_RANGES];
    struct tcp_range ooo[TCP_OOO_RANGES];
    struct tcp_range sack_prev[4]; /* SACK blocks of the last ACK sent, in its order */
    uint64_t ts_recent_ms;      /* when ts_recent was taken (PAWS, RFC 7323 5.5) */

    /* scoreboard, RACK-TLP (RFC 8985), PRR (RFC 6937), undo (RFC 3708) */
    uint8_t sb_n;
    uint8_t rack_reord;         /* RACK.reordering_seen */
    uint8_t rack_reo_mult;      /* RACK.reo_wnd_mult */
    uint8_t rack_reo_persist;   /* recoveries left before reo_wnd_mult resets */
    uint8_t rack_dsack_valid;   /* rack_dsack_round holds a value */
    uint8_t tlp_out;            /* a TLP is outstanding (TLP.end_seq valid) */
    uint8_t tlp_retrans;        /* ... and it was a retransmission */
    uint8_t in_loss;            /* after an RTO until SND.UNA passes recover */
    uint8_t undo_ok;            /* the last reduction may still be undone (D-SACK) */
    uint8_t cc_algo;            /* enum tcp_cc_algo */
    uint8_t rack_fack_ok;       /* rack_fack holds a value */
    uint8_t rack_ok;            /* RACK.xmit_ts/end_seq/rtt hold a delivered segment's */
    uint32_t rack_xmit_us, rack_end_seq, rack_rtt_us, rack_min_rtt_us, rack_fack;
    uint32_t rack_min_rtt_at_ms; /* (low 32 bits of ms) when rack_min_rtt_us was taken */
    uint32_t rack_dsack_round;
    uint32_t tlp_end_seq;
    uint32_t lost_bytes;        /* bytes in LOST entries (not yet retransmitted) */
    uint32_t sacked_bytes_sb;   /* bytes in SACKED entries */
    uint32_t retrans_bytes;     /* bytes in RETRANS entries */
    uint32_t prr_delivered, prr_out, recover_fs;
    uint32_t undo_marker;       /* SND.UNA when the reduction began */
    uint32_t undo_retrans;      /* retransmissions of this episode not yet proved spurious */
    uint32_t prior_cwnd, prior_ssthresh;
    uint64_t lost_total;        /* segments marked lost, connection lifetime */
    uint32_t reordering;        /* largest reordering seen, in segments */
    /* CUBIC (RFC 9438) and HyStart++ (RFC 9406); windows in bytes, times in us */
    uint32_t cub_w_max, cub_prior_w_max, cub_epoch_us, cub_rem;
    uint8_t cub_epoch_ok;       /* cub_epoch_us holds the start of this epoch */
    double cub_w_est, cub_k_s;  /* Reno-friendly estimate (bytes), K (seconds) */
    uint32_t last_rtt_us;       /* RTT sample of the ACK being processed, 0 = none */
    /* cwnd-limited, decided when sending (Linux's tcp_cwnd_validate): the most in flight
     * in this window, and whether cwnd stopped a send since it began */
    uint32_t max_flight, cwnd_usage_seq;
    uint8_t is_cwnd_limited;
    uint32_t hs_window_end, hs_cur_min_us, hs_last_min_us, hs_css_base_us;
    uint16_t hs_samples;
    uint8_t hs_css_rounds;      /* 0: slow start; 1..: rounds in conservative slow start */
    uint8_t hs_done;            /* slow start over for HyStart++ (loss or exit) */
    struct tcp_sb_seg sb[TCP_SB_MAX];

    /* delayed ACK FIFO */
    struct tcb_link da_link;
    uint64_t da_expire_ms;
    uint8_t on_da;
    /* D-SACK to report (RFC 2883): a duplicate that arrived, for the next ACK */
    uint8_t dsack_pend;
    uint32_t dsack_start, dsack_end;

    /* keepalive (SO_KEEPALIVE, TCP_KEEPIDLE/INTVL/CNT) */
    uint8_t keepalive;
    uint8_t ka_cnt;
    uint32_t ka_idle_ms, ka_intvl_ms;

    /* idle-timeout FIFO */
    struct tcb_link idle_link;
    uint64_t last_rx_ms;
    uint8_t on_idle;

    /* TIME_WAIT FIFO */
    struct tcb_link tw_link;
    uint64_t tw_expire_ms;
    uint8_t on_tw;

    /* TX lists: control, ACK, data */
    struct tcb_link ctrl_link, ack_link, data_link;
    /* round's events to hand to the app */
    struct tcb_link ev_link;
    uint32_t ev_pending;

    /* exhaustion bounds (issue 15) */
    uint32_t user_timeout_ms;   /* TCP_USER_TIMEOUT: unacknowledged data or a zero window
                                   this long aborts (0 = none) */
    uint64_t persist_since_ms;  /* the current zero-window episode's first probe */
    uint64_t rexmit_since_ms;   /* the current run of retransmission timeouts' first */
    uint8_t orphan;             /* counted in ctx->orphans */
    uint8_t evictable;          /* MTCP_SO_EVICTABLE */
    uint8_t evicted;            /* reset by eviction, the app has not closed it yet */
    uint8_t src_counted;        /* counted in the per-source table */
    uint32_t mem_charge;        /* ring bytes charged to ctx->mem_used */
    /* static responder (api/responder.c): the connection is the mTCP thread's own until
     * a request goes to the application */
    uint8_t rsp;                    /* held by the responder */
    uint8_t rsp_tlist;              /* on its timer list: 1 header, 2 keep-alive */
    uint8_t rsp_req_started;        /* bytes of the next request have arrived */
    uint32_t rsp_served;            /* responses the responder sent on it */
    uint64_t rsp_started_ns;        /* the current request's start (the connect, or its
                                       first byte), CLOCK_MONOTONIC */
    uint64_t rsp_deadline_ms;
    struct tcb *rsp_tnext, *rsp_tprev;
    struct mtcp_listener *rsp_l;

    struct mtcp_listener *listener; /* passive, until accepted */
    struct tcb *acc_next;           /* embryonic list of the listener */

    /* --- shared with the app thread --- */
    _Atomic int sockid;             /* -1 when no socket holds this TCB */
    _Atomic uint32_t sock_gen;
    _Atomic uint32_t app_flags;     /* TCB_AF_* */
    _Atomic int so_error;
    _Atomic int send_job_pending;   /* a SEND job is queued; the app need not push another */
    _Atomic int wnd_job_wanted;     /* stack advertised a small window; app reads reopen it */
    uint8_t nodelay;
    uint8_t linger0;
    struct mtcp_bytering snd, rcv;
};

static inline uint32_t tcb_app_flags(struct tcb *t)
{
    return atomic_load_explicit(&t->app_flags, memory_order_acquire);
}

/* Link offsets of the TCB lists (tcb_list.h). */
#define TCB_CTRL offsetof(struct tcb, ctrl_link)
#define TCB_ACK offsetof(struct tcb, ack_link)
#define TCB_DATA offsetof(struct tcb, data_link)
#define TCB_TW offsetof(struct tcb, tw_link)
#define TCB_DA offsetof(struct tcb, da_link)
#define TCB_IDLE offsetof(struct tcb, idle_link)
#define TCB_EV offsetof(struct tcb, ev_link)

#endif
