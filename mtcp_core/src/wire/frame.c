/* One-call parse of a whole frame: Ethernet -> ARP | IPv4 -> ICMP | TCP.
 *
 * Returns MTCP_OK only when every layer down to a known top layer (ARP, ICMP,
 * TCP) parsed; otherwise the first layer's drop reason: an EtherType other than
 * ARP/IPv4 (after at most one 802.1Q tag, see eth.c) is drop_eth_type, an IP
 * protocol other than ICMP/TCP is drop_ip_proto. The has_* flags say which
 * layers parsed, so a caller can see how far a refused frame got.
 *
 * flags are io_frame.flags: IO_FRAME_CSUM_PARTIAL (0x1: the sender left the
 * TCP checksum for offload) or IO_FRAME_CSUM_VALID (0x2: the kernel verified
 * it) skip the TCP checksum check. The IPv4 header checksum and the ICMP
 * checksum are always verified. */
#include <string.h>

#include "wire.h"

#define FRAME_L4_CSUM_TRUSTED 0x3u /* IO_FRAME_CSUM_PARTIAL | IO_FRAME_CSUM_VALID (io/io.h) */

mtcp_drop_t wire_parse_frame(const uint8_t *p, size_t len, unsigned flags, struct wire_frame_info *out)
{
    memset(out, 0, sizeof(*out));
    mtcp_drop_t r = wire_eth_parse(p, len, &out->eth);
    if (r != MTCP_OK)
        return r;
    const uint8_t *l3 = p + out->eth.hlen;
    size_t l3_len = len - out->eth.hlen;

    if (out->eth.type == WIRE_ETHERTYPE_ARP) {
        r = wire_arp_parse(l3, l3_len, &out->arp);
        out->has_arp = r == MTCP_OK;
        return r;
    }
    if (out->eth.type != WIRE_ETHERTYPE_IPV4)
        return MTCP_DROP(eth_type);

    r = wire_ipv4_parse(l3, l3_len, &out->ip);
    if (r != MTCP_OK)
        return r;
    out->has_ip = 1;

    switch (out->ip.proto) {
    case WIRE_IPPROTO_ICMP:
        r = wire_icmp_parse(out->ip.payload, out->ip.payload_len, &out->icmp);
        out->has_icmp = r == MTCP_OK;
        return r;
    case WIRE_IPPROTO_TCP:
        r = wire_tcp_parse(out->ip.payload, out->ip.payload_len, out->ip.src, out->ip.dst,
                           (flags & FRAME_L4_CSUM_TRUSTED) == 0, &out->tcp);
        out->has_tcp = r == MTCP_OK;
        return r;
    default:
        return MTCP_DROP(ip_proto);
    }
}
