/* Ethernet II framing (IEEE 802.3 clause 3) with at most one IEEE 802.1Q tag.
 *
 * VLAN: a frame with TPID 0x8100 is parsed through its one tag (hlen 18) and
 * reported with the inner EtherType; the VLAN id and priority are not kept (the
 * stack runs on one untagged or one tagged segment). A second tag (QinQ) or an
 * 802.1ad outer tag (0x88a8) is left as the reported type, which the layer
 * above refuses with drop_eth_type. */
#include <string.h>

#include "bytes.h"
#include "wire.h"

mtcp_drop_t wire_eth_parse(const uint8_t *p, size_t len, struct wire_eth *out)
{
    memset(out, 0, sizeof(*out));
    if (len < WIRE_ETH_HLEN)
        return MTCP_DROP(eth_short);
    memcpy(out->dst, p, 6);
    memcpy(out->src, p + 6, 6);
    out->type = rd16(p + 12);
    out->hlen = WIRE_ETH_HLEN;
    if (out->type == WIRE_ETHERTYPE_VLAN) {
        /* 802.1Q: TPID 0x8100, 2 bytes TCI, then the real EtherType. */
        if (len < WIRE_ETH_HLEN + 4)
            return MTCP_DROP(eth_short);
        out->type = rd16(p + 16);
        out->hlen = WIRE_ETH_HLEN + 4;
    }
    return MTCP_OK;
}

/* Writes an untagged 14-byte header. dst/src may point into p itself (a reply
 * built in place swaps the two addresses), so both are copied out first. */
size_t wire_eth_emit(uint8_t *p, const uint8_t dst[6], const uint8_t src[6], uint16_t type)
{
    uint8_t d[6], s[6];
    memcpy(d, dst, 6);
    memcpy(s, src, 6);
    memcpy(p, d, 6);
    memcpy(p + 6, s, 6);
    wr16(p + 12, type);
    return WIRE_ETH_HLEN;
}

int wire_mac_is_broadcast(const uint8_t mac[6])
{
    static const uint8_t bcast[6] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
    return memcmp(mac, bcast, 6) == 0;
}

/* The I/G bit: least significant bit of the first octet (IEEE 802 section 8.2). */
int wire_mac_is_multicast(const uint8_t mac[6])
{
    return (mac[0] & 1u) != 0;
}
