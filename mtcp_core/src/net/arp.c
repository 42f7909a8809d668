/* ARP (RFC 826): answer requests for our address, resolve next hops, and keep a
 * small per-core cache whose entries expire. */
#include <string.h>

#include "../wire/wire.h"
#include "net.h"

#define ARP_FREE 0
#define ARP_RESOLVING 1
#define ARP_RESOLVED 2

static const uint8_t bcast[6] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff};

static struct arp_entry *arp_find(struct net_layer *ctx, uint32_t ip)
{
    for (int i = 0; i < MTCP_ARP_ENTRIES; i++)
        if (ctx->arp[i].state != ARP_FREE && ctx->arp[i].ip == ip)
            return &ctx->arp[i];
    return NULL;
}

/* A free slot, or the one that expires first. */
static struct arp_entry *arp_slot(struct net_layer *ctx)
{
    struct arp_entry *victim = &ctx->arp[0];
    for (int i = 0; i < MTCP_ARP_ENTRIES; i++) {
        if (ctx->arp[i].state == ARP_FREE)
            return &ctx->arp[i];
        if (ctx->arp[i].expire_ms < victim->expire_ms)
            victim = &ctx->arp[i];
    }
    return victim;
}

static void arp_send(struct net_layer *ctx, uint16_t op, const uint8_t dst_mac[6],
                     const uint8_t tha[6], uint32_t tpa)
{
    uint8_t *f = net_tx_alloc(ctx);
    if (!f)
        return;
    struct wire_arp a = {.op = op, .spa = ctx->ip, .tpa = tpa};
    memcpy(a.sha, ctx->mac, 6);
    memcpy(a.tha, tha, 6);
    size_t n = wire_eth_emit(f, dst_mac, ctx->mac, WIRE_ETHERTYPE_ARP);
    n += wire_arp_emit(f + n, &a);
    /* pad to the Ethernet minimum (60 bytes without FCS) */
    if (n < 60) {
        memset(f + n, 0, 60 - n);
        n = 60;
    }
    net_tx_commit(ctx, (uint32_t)n);
    if (op == WIRE_ARP_REQUEST)
        STAT_INC(&ctx->stats, arp_requests_tx);
    else
        STAT_INC(&ctx->stats, arp_replies_tx);
}

static void arp_learn(struct net_layer *ctx, uint32_t ip, const uint8_t mac[6], int create)
{
    struct arp_entry *e = arp_find(ctx, ip);
    if (!e && !create)
        return;
    int was_resolving = e && e->state == ARP_RESOLVING;
    if (!e)
        e = arp_slot(ctx);
    e->ip = ip;
    memcpy(e->mac, mac, 6);
    e->state = ARP_RESOLVED;
    e->expire_ms = ctx->now_ms + MTCP_ARP_TTL_MS;
    if (was_resolving)
        ctx->net_up.arp_resolved(ctx, ip, mac);
}

void arp_input(struct net_layer *ctx, const uint8_t *p, size_t len)
{
    struct wire_arp a;
    mtcp_drop_t r = wire_arp_parse(p, len, &a);
    if (r) {
        STAT_DROP(&ctx->stats, r);
        return;
    }
    if (a.op == WIRE_ARP_REQUEST)
        STAT_INC(&ctx->stats, arp_requests_rx);
    else
        STAT_INC(&ctx->stats, arp_replies_rx);
    int for_us = a.tpa == ctx->ip;
    /* RFC 826 "merge": update a known sender; add it when the packet is for us. */
    if (a.spa != 0)
        arp_learn(ctx, a.spa, a.sha, for_us);
    if (!for_us) {
        STAT_INC(&ctx->stats, drop_arp_not_for_us);
        return;
    }
    if (a.op == WIRE_ARP_REQUEST)
        arp_send(ctx, WIRE_ARP_REPLY, a.sha, a.sha, a.spa);
}

void arp_announce(struct net_layer *ctx)
{
    /* RFC 5227 2.3: a request for our own address, broadcast. A neighbour still resolving
     * us (it asked before this stack ran, and would ask again only after its retransmit
     * timer, a second on Linux) takes our MAC at once, as does one that cached another. */
    arp_send(ctx, WIRE_ARP_REQUEST, bcast, (const uint8_t[6]){0}, ctx->ip);
}

int net_resolve(struct net_layer *ctx, uint32_t dst, uint8_t mac[6])
{
    if (ctx->dev->has_peer_mac) {
        /* tap: everything goes to the host side, whose MAC we know. */
        memcpy(mac, ctx->dev->peer_mac, 6);
        return 0;
    }
    uint32_t nh = ((dst ^ ctx->ip) & ctx->netmask) == 0 || !ctx->gateway ? dst : ctx->gateway;
    struct arp_entry *e = arp_find(ctx, nh);
    if (e && e->state == ARP_RESOLVED && e->expire_ms > ctx->now_ms) {
        memcpy(mac, e->mac, 6);
        return 0;
    }
    if (e && e->state == ARP_RESOLVED) {
        /* Stale: keep using it while we ask again (RFC 1122 2.3.2.1 allows it). */
        memcpy(mac, e->mac, 6);
        e->expire_ms = ctx->now_ms + MTCP_ARP_RETRY_MS;
        arp_send(ctx, WIRE_ARP_REQUEST, bcast, (const uint8_t[6]){0}, nh);
        return 0;
    }
    if (!e) {
        e = arp_slot(ctx);
        e->ip = nh;
        e->state = ARP_RESOLVING;
        e->tries = 1;
        e->expire_ms = ctx->now_ms + MTCP_ARP_RETRY_MS;
        arp_send(ctx, WIRE_ARP_REQUEST, bcast, (const uint8_t[6]){0}, nh);
    }
    return -1;
}

uint64_t arp_timer(struct net_layer *ctx)
{
    uint64_t next = UINT64_MAX;
    for (int i = 0; i < MTCP_ARP_ENTRIES; i++) {
        struct arp_entry *e = &ctx->arp[i];
        if (e->state != ARP_RESOLVING)
            continue;
        if (e->expire_ms <= ctx->now_ms && e->tries >= MTCP_ARP_TRIES) {
            /* Nobody answers: fail whoever waits and forget the entry. */
            e->state = ARP_FREE;
            ctx->net_up.arp_failed(ctx, e->ip);
            continue;
        }
        if (e->expire_ms <= ctx->now_ms) {
            e->tries++;
            arp_send(ctx, WIRE_ARP_REQUEST, bcast, (const uint8_t[6]){0}, e->ip);
            e->expire_ms = ctx->now_ms + MTCP_ARP_RETRY_MS;
        }
        if (e->expire_ms - ctx->now_ms < next)
            next = e->expire_ms - ctx->now_ms;
    }
    return next;
}
