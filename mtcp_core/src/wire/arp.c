/* ARP for Ethernet/IPv4 (RFC 826): the only hardware/protocol pair accepted. */
#include <string.h>

#include "bytes.h"
#include "wire.h"

#define ARP_HTYPE_ETHER 1 /* RFC 826 ar$hrd, "Ethernet (10Mb)" */

/* Layout (RFC 826 "Packet format"): hrd(2) pro(2) hln(1) pln(1) op(2)
 * sha(6) spa(4) tha(6) tpa(4) = 28 bytes; trailing link padding is ignored. */
mtcp_drop_t wire_arp_parse(const uint8_t *p, size_t len, struct wire_arp *out)
{
    memset(out, 0, sizeof(*out));
    if (len < WIRE_ARP_LEN)
        return MTCP_DROP(arp_malformed);
    if (rd16(p) != ARP_HTYPE_ETHER || rd16(p + 2) != WIRE_ETHERTYPE_IPV4 || p[4] != 6 ||
        p[5] != 4)
        return MTCP_DROP(arp_malformed);
    out->op = rd16(p + 6);
    if (out->op != WIRE_ARP_REQUEST && out->op != WIRE_ARP_REPLY)
        return MTCP_DROP(arp_malformed);
    memcpy(out->sha, p + 8, 6);
    out->spa = rd32(p + 14);
    memcpy(out->tha, p + 18, 6);
    out->tpa = rd32(p + 24);
    return MTCP_OK;
}

size_t wire_arp_emit(uint8_t *p, const struct wire_arp *a)
{
    wr16(p, ARP_HTYPE_ETHER);
    wr16(p + 2, WIRE_ETHERTYPE_IPV4);
    p[4] = 6;
    p[5] = 4;
    wr16(p + 6, a->op);
    memcpy(p + 8, a->sha, 6);
    wr32(p + 14, a->spa);
    memcpy(p + 18, a->tha, 6);
    wr32(p + 24, a->tpa);
    return WIRE_ARP_LEN;
}
