/* IPv4 header (RFC 791 section 3.1). wire_ipv4_parse refuses fragments;
 * wire_ipv4_parse_any takes them too (the stack reassembles them, net/frag.c). */
#include <string.h>

#include "bytes.h"
#include "wire.h"

#define IP_FLAG_DF 0x4000u
#define IP_FLAG_MF 0x2000u
#define IP_OFFSET_MASK 0x1fffu
#define IP_MAX_TOTAL 65535u

/* Checks in this order, each length once: len < 20 (drop_ip_short), version,
 * IHL (>= 5 words and within len), total length (>= IHL, <= len; bytes past it
 * are link padding and excluded), header checksum (RFC 791 "Header Checksum",
 * always verified: no NIC offload claims it), then fragments (MF or offset).
 * Options (IHL > 5) are skipped, not interpreted. */
mtcp_drop_t wire_ipv4_parse(const uint8_t *p, size_t len, struct wire_ipv4 *out)
{
    mtcp_drop_t r = wire_ipv4_parse_any(p, len, out);
    if (r == MTCP_OK && ((out->frag & IP_FLAG_MF) || (out->frag & IP_OFFSET_MASK)))
        return MTCP_DROP(ip_fragment);
    return r;
}

mtcp_drop_t wire_ipv4_parse_any(const uint8_t *p, size_t len, struct wire_ipv4 *out)
{
    memset(out, 0, sizeof(*out));
    if (len < WIRE_IPV4_HLEN)
        return MTCP_DROP(ip_short);
    if ((p[0] >> 4) != 4)
        return MTCP_DROP(ip_version);
    size_t hlen = (size_t)(p[0] & 0x0fu) * 4;
    if (hlen < WIRE_IPV4_HLEN || hlen > len)
        return MTCP_DROP(ip_hdr_len);
    size_t total = rd16(p + 2);
    if (total < hlen || total > len)
        return MTCP_DROP(ip_total_len);
    if (wire_csum_fold(wire_csum_add(0, p, hlen)) != 0)
        return MTCP_DROP(ip_checksum);
    uint16_t frag = rd16(p + 6);

    out->hlen = (uint8_t)hlen;
    out->tos = p[1];
    out->total_len = (uint16_t)total;
    out->id = rd16(p + 4);
    out->frag = frag;
    out->ttl = p[8];
    out->proto = p[9];
    out->src = rd32(p + 12);
    out->dst = rd32(p + 16);
    out->payload = p + hlen;
    out->payload_len = (uint16_t)(total - hlen);
    return MTCP_OK;
}

/* Returns 20, or 0 (nothing written) when payload_len does not fit a datagram. */
size_t wire_ipv4_emit(uint8_t *p, uint32_t src, uint32_t dst, uint8_t proto, uint16_t payload_len,
                      uint16_t id, uint8_t ttl)
{
    if (payload_len > IP_MAX_TOTAL - WIRE_IPV4_HLEN)
        return 0;
    p[0] = 0x45; /* version 4, IHL 5 */
    p[1] = 0;    /* DSCP/ECN */
    wr16(p + 2, (uint16_t)(WIRE_IPV4_HLEN + payload_len));
    wr16(p + 4, id);
    wr16(p + 6, IP_FLAG_DF);
    p[8] = ttl;
    p[9] = proto;
    wr16(p + 10, 0);
    wr32(p + 12, src);
    wr32(p + 16, dst);
    wr16(p + 10, wire_csum_fold(wire_csum_add(0, p, WIRE_IPV4_HLEN)));
    return WIRE_IPV4_HLEN;
}
