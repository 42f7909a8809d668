/* Network layer: ARP table, IPv4 input/output, ICMP echo. */
#ifndef MTCP_NET_H
#define MTCP_NET_H

#include <stdint.h>

#include "../core/stats.h"
#include "../io/io.h"
#include "../opt.h"
#include "../wire/wire.h"
#include "frag.h"

struct net_layer;

struct arp_entry {
    uint32_t ip;
    uint8_t mac[6];
    uint8_t state;               /* 0 free, 1 resolving, 2 resolved */
    uint8_t tries;               /* requests sent while resolving */
    uint64_t expire_ms;          /* resolved: until; resolving: next retry */
};


/* What net/ tells the layer above about next hops (registered by api/ when the context is
 * made: TCP's tcp_arp_resolved/tcp_arp_failed). net/ calls no TCP function for ARP: the
 * answer to a request, or its last retry running out, goes through these. */
struct net_upcalls {
    /* an address that was resolving now has a MAC: frames held for it may go */
    void (*arp_resolved)(struct net_layer *ctx, uint32_t ip, const uint8_t mac[6]);
    /* nobody answered MTCP_ARP_TRIES requests: whoever waits for ip fails */
    void (*arp_failed)(struct net_layer *ctx, uint32_t ip);
};

/* net/'s per-core state, and what every layer of the core reads: the round's clock, the
 * stats block, the device and the stack's address. Embedded first in TCP's state
 * (tcp/tcp.h struct tcp_layer), which is embedded first in the context (api/ctx.h). */
struct net_layer {
    uint64_t now_ns;             /* the round's time: the only clock the stack reads */
    uint64_t now_ms;             /* now_ns in ms (TCP's timers, ARP) */
    uint64_t now_us;             /* now_ns in us (RACK's transmit times, RTT samples) */
    struct mtcp_stats stats;
    unsigned core, ncores;
    struct io_dev *dev;
    int trace;
    int shared_addr;             /* the kernel keeps the address too: no pings, no RSTs */
    uint32_t ip, netmask, gateway;
    uint8_t mac[6];
    int announce;                /* a gratuitous ARP is due (the first round sends it) */
    struct frag_table *frag;     /* IPv4 reassembly (net/frag.h) */
    struct arp_entry arp[MTCP_ARP_ENTRIES];
    struct net_upcalls net_up;   /* ARP -> the layer above */
    uint16_t ip_id;
    /* the round's TX batch */
    uint8_t *txbuf;              /* MTCP_TX_BATCH * MTCP_MAX_FRAME */
    struct io_frame txf[MTCP_TX_BATCH];
    int ntx;
    int tx_budget;               /* frames this round may still send */
    uint64_t tx_rate_Bps;        /* link rate in bytes/s; 0 = no shaping */
    int64_t tx_tokens;           /* shaping: bytes the link may still take (can go negative) */
    uint64_t tx_tokens_ns;       /* when tx_tokens was last refilled */
};

/* The transport net/ hands IPv4 TCP segments to (tcp/tcp_in.c): the one protocol
 * demultiplexing call net/ makes upward, direct on the per-packet path (as ip4_input
 * calls tcp_input in lwIP). */
void tcp_input(struct net_layer *n, const uint8_t src_mac[6], const struct wire_ipv4 *ip,
               unsigned frame_flags);


/* One received frame: Ethernet demux down to ARP / IPv4 / ICMP / TCP. */
void net_input(struct net_layer *ctx, const struct io_frame *f);

/* TX batch: a frame buffer to fill (NULL when this round's budget is spent),
 * then commit its length. Full batches are flushed with one tx_burst. */
uint8_t *net_tx_alloc(struct net_layer *ctx);
void net_tx_commit(struct net_layer *ctx, uint32_t len);
void net_tx_flush(struct net_layer *ctx);
/* Commit a TSO frame (IO_FRAME_TSO, only where ctx->dev->tso_max allows): hdr_len
 * bytes of headers in the buffer from net_tx_alloc, the TCP header at l4_off, the
 * payload in one or two pieces that stay untouched until the next net_tx_flush. */
void net_tx_commit_tso(struct net_layer *ctx, uint32_t hdr_len, uint16_t l4_off,
                       uint16_t gso_size, const uint8_t *p0, uint32_t l0, const uint8_t *p1,
                       uint32_t l1);

/* Ethernet + IPv4 headers for an L4 payload of l4_len bytes; returns the L4 offset. */
uint32_t net_ipv4_headers(struct net_layer *ctx, uint8_t *frame, const uint8_t dst_mac[6],
                          uint32_t dst, uint8_t proto, uint16_t l4_len);

/* Next-hop MAC for dst: 0 and mac filled, or -1 while it resolves (a request is
 * sent; the arp_resolved upcall says when the answer comes). */
int net_resolve(struct net_layer *ctx, uint32_t dst, uint8_t mac[6]);
/* Announces our address (a gratuitous ARP request), once when the stack starts. */
void arp_announce(struct net_layer *ctx);
/* Expire entries and resend pending requests; returns ms until the next ARP deadline. */
uint64_t arp_timer(struct net_layer *ctx);
/* Drops IPv4 datagrams whose reassembly timer ran out; returns ms until the next one
 * (UINT64_MAX: none waiting). */
uint64_t net_frag_timer(struct net_layer *ctx);

#endif
