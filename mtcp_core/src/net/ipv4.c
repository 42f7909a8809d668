/* Ethernet demux, IPv4 input and output (RFC 791, RFC 1122 3.2.1), ICMP echo
 * (RFC 792), and the round's TX batch. */
#include <string.h>

#include "../wire/wire.h"
#include "../wire/bytes.h"
#include "frag.h"
#include "net.h"

void arp_input(struct net_layer *ctx, const uint8_t *p, size_t len);
static void ipv4_dispatch(struct net_layer *ctx, const struct wire_eth *eth,
                          const struct wire_ipv4 *ip, unsigned flags);

uint8_t *net_tx_alloc(struct net_layer *ctx)
{
    if (ctx->tx_budget <= 0 || (ctx->tx_rate_Bps && ctx->tx_tokens <= 0))
        return NULL; /* this round's budget, or the shaped link's bytes, are spent */
    if (ctx->ntx == MTCP_TX_BATCH)
        net_tx_flush(ctx);
    return ctx->txbuf + (size_t)ctx->ntx * MTCP_MAX_FRAME;
}

void net_tx_commit(struct net_layer *ctx, uint32_t len)
{
    ctx->txf[ctx->ntx].data = ctx->txbuf + (size_t)ctx->ntx * MTCP_MAX_FRAME;
    ctx->txf[ctx->ntx].len = len;
    ctx->txf[ctx->ntx].flags = 0;
    ctx->ntx++;
    ctx->tx_budget--;
    if (ctx->tx_rate_Bps)
        ctx->tx_tokens -= (int64_t)len + MTCP_WIRE_OVERHEAD;
    STAT_INC(&ctx->stats, tx_packets);
    STAT_ADD(&ctx->stats, tx_bytes, len);
}

void net_tx_commit_tso(struct net_layer *ctx, uint32_t hdr_len, uint16_t l4_off,
                       uint16_t gso_size, const uint8_t *p0, uint32_t l0, const uint8_t *p1,
                       uint32_t l1)
{
    struct io_frame *f = &ctx->txf[ctx->ntx];
    net_tx_commit(ctx, hdr_len);
    f->flags = IO_FRAME_TSO;
    f->more[0] = p0;
    f->more_len[0] = l0;
    f->more[1] = p1;
    f->more_len[1] = l1;
    f->gso_size = gso_size;
    f->l4_off = l4_off;
    STAT_ADD(&ctx->stats, tx_bytes, (uint64_t)l0 + l1);
    if (ctx->tx_rate_Bps && gso_size) {
        /* the shaped link carries every wire segment with its own headers */
        uint32_t nsegs = (l0 + l1 + gso_size - 1u) / gso_size;
        ctx->tx_tokens -= (int64_t)l0 + l1 +
                          (int64_t)(nsegs ? nsegs - 1u : 0u) * (hdr_len + MTCP_WIRE_OVERHEAD);
    }
}

void net_tx_flush(struct net_layer *ctx)
{
    if (ctx->ntx == 0)
        return;
    /* the device counts what it could not send (ring full, oversize frame) */
    uint64_t dropped = ctx->dev->tx_dropped, reseg = ctx->dev->tx_resegmented;
    io_tx_burst(ctx->dev, ctx->txf, ctx->ntx);
    STAT_ADD(&ctx->stats, drop_tx_device, ctx->dev->tx_dropped - dropped);
    STAT_ADD(&ctx->stats, tx_tso_resegmented, ctx->dev->tx_resegmented - reseg);
    STAT_INC(&ctx->stats, tx_batches);
    ctx->ntx = 0;
}

uint32_t net_ipv4_headers(struct net_layer *ctx, uint8_t *frame, const uint8_t dst_mac[6],
                          uint32_t dst, uint8_t proto, uint16_t l4_len)
{
    size_t n = wire_eth_emit(frame, dst_mac, ctx->mac, WIRE_ETHERTYPE_IPV4);
    n += wire_ipv4_emit(frame + n, ctx->ip, dst, proto, l4_len, ctx->ip_id++, 64);
    return (uint32_t)n;
}

static void icmp_input(struct net_layer *ctx, const struct wire_eth *eth,
                       const struct wire_ipv4 *ip)
{
    struct wire_icmp ic;
    mtcp_drop_t r = wire_icmp_parse(ip->payload, ip->payload_len, &ic);
    if (r) {
        STAT_DROP(&ctx->stats, r);
        return;
    }
    if (ic.type != WIRE_ICMP_ECHO_REQUEST || ctx->shared_addr) {
        STAT_INC(&ctx->stats, drop_icmp_type); /* shared address: the kernel answers pings */
        return;
    }
    if ((size_t)ip->payload_len + WIRE_ETH_HLEN + WIRE_IPV4_HLEN > MTCP_MAX_FRAME) {
        STAT_INC(&ctx->stats, drop_icmp_malformed);
        return;
    }
    uint8_t *f = net_tx_alloc(ctx);
    if (!f)
        return;
    /* Reply to the MAC the request came from: no ARP lookup on this path. */
    uint32_t off = net_ipv4_headers(ctx, f, eth->src, ip->src, WIRE_IPPROTO_ICMP, ip->payload_len);
    size_t n = wire_icmp_emit_echo_reply(f + off, ip->payload, ip->payload_len);
    net_tx_commit(ctx, off + (uint32_t)n);
    STAT_INC(&ctx->stats, icmp_echo_replies);
}

uint64_t net_frag_timer(struct net_layer *ctx)
{
    unsigned n = frag_expire(ctx->frag, ctx->now_ms);
    STAT_ADD(&ctx->stats, drop_frag_timeout, n);
    STAT_SET(&ctx->stats, frag_pending, frag_pending(ctx->frag));
    uint64_t d = frag_next_deadline(ctx->frag);
    return d == UINT64_MAX ? UINT64_MAX : d > ctx->now_ms ? d - ctx->now_ms : 0;
}

/* A fragment: into the core's reassembly table; a datagram it completes goes on as if
 * it had come whole (its checksum verified in full: the frame's offload flags were
 * about one fragment). */
static void ipv4_fragment(struct net_layer *ctx, const struct wire_eth *eth, const uint8_t *p,
                          size_t len)
{
    const uint8_t *dg;
    size_t dlen;
    mtcp_drop_t r = frag_input(ctx->frag, p, len, ctx->now_ms, &dg, &dlen);
    STAT_SET(&ctx->stats, frag_pending, frag_pending(ctx->frag));
    if (r) {
        STAT_DROP(&ctx->stats, r);
        return;
    }
    if (!dg)
        return;
    struct wire_ipv4 ip;
    r = wire_ipv4_parse(dg, dlen, &ip);
    if (r) {
        STAT_DROP(&ctx->stats, r);
        return;
    }
    STAT_INC(&ctx->stats, ip_reassembled);
    /* afpacket fanout steers every fragment by addresses alone (no ports in the later
     * ones): a TCP datagram of a flow that belongs to another core cannot be handed
     * over, and answering it here would reset that core's connection */
    if (ip.proto == WIRE_IPPROTO_TCP && ctx->ncores > 1 && ip.payload_len >= 4 &&
        io_flow_core(ip.src, ip.dst, rd16(ip.payload), rd16(ip.payload + 2), ctx->ncores) !=
            ctx->core) {
        STAT_INC(&ctx->stats, drop_frag_other_core);
        return;
    }
    ipv4_dispatch(ctx, eth, &ip, 0);
}

static void ipv4_input(struct net_layer *ctx, const struct wire_eth *eth, const uint8_t *p,
                       size_t len, unsigned flags)
{
    struct wire_ipv4 ip;
    mtcp_drop_t r = wire_ipv4_parse_any(p, len, &ip);
    if (r) {
        STAT_DROP(&ctx->stats, r);
        return;
    }
    if (ip.dst != ctx->ip) {
        STAT_INC(&ctx->stats, drop_ip_not_for_us);
        return;
    }
    if (ip.frag & 0x3fffu) { /* MF or a fragment offset (RFC 791 3.1) */
        ipv4_fragment(ctx, eth, p, len);
        return;
    }
    ipv4_dispatch(ctx, eth, &ip, flags);
}

static void ipv4_dispatch(struct net_layer *ctx, const struct wire_eth *eth,
                          const struct wire_ipv4 *ipp, unsigned flags)
{
    struct wire_ipv4 ip = *ipp;
    switch (ip.proto) {
    case WIRE_IPPROTO_TCP:
        tcp_input(ctx, eth->src, &ip, flags);
        break;
    case WIRE_IPPROTO_ICMP:
        icmp_input(ctx, eth, &ip);
        break;
    default:
        STAT_INC(&ctx->stats, drop_ip_proto);
    }
}

void net_input(struct net_layer *ctx, const struct io_frame *f)
{
    struct wire_eth eth;
    STAT_INC(&ctx->stats, rx_packets);
    STAT_ADD(&ctx->stats, rx_bytes, f->len);
    if (f->flags & IO_FRAME_CSUM_PARTIAL)
        STAT_INC(&ctx->stats, rx_csum_partial);
    mtcp_drop_t r = wire_eth_parse(f->data, f->len, &eth);
    if (r) {
        STAT_DROP(&ctx->stats, r);
        return;
    }
    if (memcmp(eth.dst, ctx->mac, 6) != 0 && !wire_mac_is_broadcast(eth.dst)) {
        STAT_INC(&ctx->stats, drop_eth_not_for_us);
        return;
    }
    const uint8_t *p = f->data + eth.hlen;
    size_t len = f->len - eth.hlen;
    switch (eth.type) {
    case WIRE_ETHERTYPE_IPV4:
        ipv4_input(ctx, &eth, p, len, f->flags);
        break;
    case WIRE_ETHERTYPE_ARP:
        arp_input(ctx, p, len);
        break;
    default:
        STAT_INC(&ctx->stats, drop_eth_type);
    }
}
