/* Network layer: ARP table, IPv4 input/output, ICMP echo. */
#ifndef MTCP_NET_H
#define MTCP_NET_H

#include <stdint.h>

#include "../io/io.h"

struct mtcp_context;

/* What net/ tells the layer above about next hops (registered by api/ when the context is
 * made: TCP's tcp_arp_resolved/tcp_arp_failed). net/ calls no TCP function for ARP: the
 * answer to a request, or its last retry running out, goes through these. */
struct net_upcalls {
    /* an address that was resolving now has a MAC: frames held for it may go */
    void (*arp_resolved)(struct mtcp_context *ctx, uint32_t ip, const uint8_t mac[6]);
    /* nobody answered MTCP_ARP_TRIES requests: whoever waits for ip fails */
    void (*arp_failed)(struct mtcp_context *ctx, uint32_t ip);
};

/* One received frame: Ethernet demux down to ARP / IPv4 / ICMP / TCP. */
void net_input(struct mtcp_context *ctx, const struct io_frame *f);

/* TX batch: a frame buffer to fill (NULL when this round's budget is spent),
 * then commit its length. Full batches are flushed with one tx_burst. */
uint8_t *net_tx_alloc(struct mtcp_context *ctx);
void net_tx_commit(struct mtcp_context *ctx, uint32_t len);
void net_tx_flush(struct mtcp_context *ctx);
/* Commit a TSO frame (IO_FRAME_TSO, only where ctx->dev->tso_max allows): hdr_len
 * bytes of headers in the buffer from net_tx_alloc, the TCP header at l4_off, the
 * payload in one or two pieces that stay untouched until the next net_tx_flush. */
void net_tx_commit_tso(struct mtcp_context *ctx, uint32_t hdr_len, uint16_t l4_off,
                       uint16_t gso_size, const uint8_t *p0, uint32_t l0, const uint8_t *p1,
                       uint32_t l1);

/* Ethernet + IPv4 headers for an L4 payload of l4_len bytes; returns the L4 offset. */
uint32_t net_ipv4_headers(struct mtcp_context *ctx, uint8_t *frame, const uint8_t dst_mac[6],
                          uint32_t dst, uint8_t proto, uint16_t l4_len);

/* Next-hop MAC for dst: 0 and mac filled, or -1 while it resolves (a request is
 * sent; the arp_resolved upcall says when the answer comes). */
int net_resolve(struct mtcp_context *ctx, uint32_t dst, uint8_t mac[6]);
/* Announces our address (a gratuitous ARP request), once when the stack starts. */
void arp_announce(struct mtcp_context *ctx);
/* Expire entries and resend pending requests; returns ms until the next ARP deadline. */
uint64_t arp_timer(struct mtcp_context *ctx);
/* Drops IPv4 datagrams whose reassembly timer ran out; returns ms until the next one
 * (UINT64_MAX: none waiting). */
uint64_t net_frag_timer(struct mtcp_context *ctx);

#endif
