/* IPv4 reassembly: see frag.h. */
#include "frag.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "../wire/bytes.h"
#include "../wire/wire.h"

#define IP_MF 0x2000u
#define IP_OFF_MASK 0x1fffu
#define FRAG_HDR_ROOM 60u                  /* the largest IPv4 header */
#define FRAG_MAX_PAYLOAD (65535u - 20u)    /* a datagram's payload at most (RFC 791) */

struct frag_range {
    uint32_t start, end; /* payload bytes [start, end) received */
};

struct frag_slot {
    bool used;
    uint8_t proto;
    uint8_t hlen;               /* of the first fragment; 0 until it came */
    uint8_t nranges;
    uint16_t id;
    uint32_t src, dst;
    uint32_t total;             /* payload length once the last fragment came; else 0 */
    uint64_t expire_ms;
    struct frag_range r[MTCP_FRAG_RANGES]; /* sorted, disjoint, not adjacent */
    uint8_t *buf;               /* FRAG_HDR_ROOM + FRAG_MAX_PAYLOAD bytes */
};

struct frag_table {
    unsigned nslots;
    uint32_t timeout_ms;
    struct frag_slot slots[];
};

struct frag_table *frag_table_new(unsigned slots, uint32_t timeout_ms)
{
    if (slots == 0 || slots > 1024)
        return NULL;
    struct frag_table *ft = calloc(1, sizeof *ft + (size_t)slots * sizeof(struct frag_slot));
    if (!ft)
        return NULL;
    ft->nslots = slots;
    ft->timeout_ms = timeout_ms ? timeout_ms : MTCP_FRAG_TIMEOUT_MS;
    return ft;
}

void frag_table_free(struct frag_table *ft)
{
    if (!ft)
        return;
    for (unsigned i = 0; i < ft->nslots; i++)
        free(ft->slots[i].buf);
    free(ft);
}

static void slot_drop(struct frag_slot *s)
{
    s->used = false; /* the buffer stays for the next datagram */
}

unsigned frag_expire(struct frag_table *ft, uint64_t now_ms)
{
    unsigned n = 0;
    for (unsigned i = 0; i < ft->nslots; i++) {
        struct frag_slot *s = &ft->slots[i];
        if (s->used && now_ms >= s->expire_ms) {
            slot_drop(s);
            n++;
        }
    }
    return n;
}

unsigned frag_pending(const struct frag_table *ft)
{
    unsigned n = 0;
    for (unsigned i = 0; i < ft->nslots; i++)
        n += ft->slots[i].used;
    return n;
}

uint64_t frag_next_deadline(const struct frag_table *ft)
{
    uint64_t d = UINT64_MAX;
    for (unsigned i = 0; i < ft->nslots; i++)
        if (ft->slots[i].used && ft->slots[i].expire_ms < d)
            d = ft->slots[i].expire_ms;
    return d;
}

/* Adds [start, end) to the sorted range list, merging with neighbours it touches.
 * The caller checked that it overlaps none. false when the list is full. */
static bool range_insert(struct frag_slot *s, uint32_t start, uint32_t end)
{
    uint8_t i = 0;
    while (i < s->nranges && s->r[i].end < start)
        i++;
    /* i: the first range that ends at or after start */
    bool join_prev = i < s->nranges && s->r[i].end == start;
    if (join_prev) {
        s->r[i].end = end;
        if (i + 1 < s->nranges && s->r[i + 1].start == end) { /* closes the hole */
            s->r[i].end = s->r[i + 1].end;
            memmove(&s->r[i + 1], &s->r[i + 2],
                    (size_t)(s->nranges - i - 2) * sizeof(struct frag_range));
            s->nranges--;
        }
        return true;
    }
    if (i < s->nranges && s->r[i].start == end) {
        s->r[i].start = start;
        return true;
    }
    if (s->nranges == MTCP_FRAG_RANGES)
        return false;
    memmove(&s->r[i + 1], &s->r[i], (size_t)(s->nranges - i) * sizeof(struct frag_range));
    s->r[i].start = start;
    s->r[i].end = end;
    s->nranges++;
    return true;
}

int frag_input(struct frag_table *ft, const uint8_t *p, size_t len, uint64_t now_ms,
               const uint8_t **out, size_t *out_len)
{
    *out = NULL;
    *out_len = 0;
    struct wire_ipv4 ip;
    mtcp_drop_t r = wire_ipv4_parse_any(p, len, &ip);
    if (r)
        return r;
    uint32_t off = (uint32_t)(ip.frag & IP_OFF_MASK) * 8u;
    uint32_t n = ip.payload_len;
    bool more = (ip.frag & IP_MF) != 0;
    /* RFC 791: every fragment but the last carries a multiple of 8 bytes; nothing may
     * reach past the largest datagram; an empty fragment says nothing */
    if (n == 0 || (more && (n % 8u) != 0) || off + n > FRAG_MAX_PAYLOAD)
        return MTCP_DROP(frag_malformed);

    /* expiry is frag_expire's alone (the caller counts it): a datagram past its time
     * that completes before the timer ran is still whole */
    struct frag_slot *s = NULL, *free_slot = NULL;
    for (unsigned i = 0; i < ft->nslots; i++) {
        struct frag_slot *c = &ft->slots[i];
        if (!c->used) {
            if (!free_slot)
                free_slot = c;
            continue;
        }
        /* RFC 791: source, destination, protocol and identification name a datagram */
        if (c->id == ip.id && c->src == ip.src && c->dst == ip.dst && c->proto == ip.proto) {
            s = c;
            break;
        }
    }
    if (!s) {
        if (!free_slot)
            return MTCP_DROP(frag_no_slot);
        if (!free_slot->buf) {
            free_slot->buf = malloc(FRAG_HDR_ROOM + FRAG_MAX_PAYLOAD);
            if (!free_slot->buf)
                return MTCP_DROP(frag_no_slot);
        }
        s = free_slot;
        s->used = true;
        s->id = ip.id;
        s->src = ip.src;
        s->dst = ip.dst;
        s->proto = ip.proto;
        s->hlen = 0;
        s->nranges = 0;
        s->total = 0;
        s->expire_ms = now_ms + ft->timeout_ms;
    }
    uint8_t *data = s->buf + FRAG_HDR_ROOM;
    uint32_t end = off + n;
    /* the last fragment fixes the length; the others must agree with it */
    if ((!more && ((s->total && s->total != end) ||
                   (s->nranges && s->r[s->nranges - 1].end > end))) ||
        (more && s->total && end > s->total)) {
        slot_drop(s);
        return MTCP_DROP(frag_malformed);
    }
    for (uint8_t i = 0; i < s->nranges; i++) {
        if (s->r[i].start >= end || off >= s->r[i].end)
            continue;
        /* bytes already here: the same bytes again is a duplicate (the network copied
         * a fragment); anything else rewrites what arrived, which RFC 5722 forbids */
        if (off >= s->r[i].start && end <= s->r[i].end && (more || s->total == end) &&
            memcmp(data + off, ip.payload, n) == 0)
            return MTCP_DROP(frag_duplicate);
        slot_drop(s);
        return MTCP_DROP(frag_overlap);
    }
    if (!range_insert(s, off, end)) {
        slot_drop(s);
        return MTCP_DROP(frag_no_slot);
    }
    memcpy(data + off, ip.payload, n);
    if (!more)
        s->total = end;
    if (off == 0) {
        s->hlen = ip.hlen;
        memcpy(data - ip.hlen, p, ip.hlen);
    }
    if (!s->total || !s->hlen || s->nranges != 1 || s->r[0].start != 0 || s->r[0].end != s->total)
        return MTCP_OK; /* holes remain */
    uint8_t *h = data - s->hlen;
    uint32_t tot = s->hlen + s->total;
    if (tot > 65535u) { /* a first fragment with options leaves less room (RFC 791) */
        slot_drop(s);
        return MTCP_DROP(frag_malformed);
    }
    wr16(h + 2, (uint16_t)tot);
    wr16(h + 6, 0); /* no MF, offset 0 (DF as the first fragment had it is moot now) */
    wr16(h + 10, 0);
    wr16(h + 10, wire_csum_fold(wire_csum_add(0, h, s->hlen)));
    slot_drop(s);
    *out = h;
    *out_len = tot;
    return MTCP_OK;
}
