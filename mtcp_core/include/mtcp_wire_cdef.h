/* The wire layer (mtcp_core/src/wire/wire.h) as cffi sees it, for tests.
 *
 * Read by cffi's cdef only, after mtcp_public.h: never #include it from C (it
 * restates structs that wire.h defines). The C side of the build's set_source
 * must #include "wire/wire.h" (include path mtcp_core/src), which makes cffi
 * check in API mode that every struct, field, function and number here matches
 * the real header. Like mtcp_public.h it holds only declarations and
 * "#define NAME number" lines: no #include, no #if, no macros with arguments.
 *
 * Parse functions return 0 (MTCP_OK) or a drop reason: the index of counter
 * drop_<reason> in the stats block, so lib.mtcp_stats_name(code) names it.
 * Multi-byte fields are in host byte order; addresses are host-order uint32. */

#define WIRE_ETH_HLEN 14
#define WIRE_ETHERTYPE_IPV4 0x0800
#define WIRE_ETHERTYPE_ARP 0x0806
#define WIRE_ETHERTYPE_VLAN 0x8100
#define WIRE_ARP_LEN 28
#define WIRE_ARP_REQUEST 1
#define WIRE_ARP_REPLY 2
#define WIRE_IPV4_HLEN 20
#define WIRE_IPPROTO_ICMP 1
#define WIRE_IPPROTO_TCP 6
#define WIRE_ICMP_ECHO_REPLY 0
#define WIRE_ICMP_ECHO_REQUEST 8
#define WIRE_TCP_HLEN 20
#define WIRE_TCP_MAX_OPTLEN 40
#define WIRE_TCP_MAX_SACK 4
#define WIRE_TCP_FIN 0x01
#define WIRE_TCP_SYN 0x02
#define WIRE_TCP_RST 0x04
#define WIRE_TCP_PSH 0x08
#define WIRE_TCP_ACK 0x10
#define WIRE_TCP_URG 0x20
#define WIRE_TCP_ECE 0x40
#define WIRE_TCP_CWR 0x80

/* checksum (RFC 1071); chaining: only the last piece may have an odd length */
uint32_t wire_csum_add(uint32_t sum, const void *data, size_t len);
uint16_t wire_csum_fold(uint32_t sum);
uint32_t wire_csum_pseudo(uint32_t src, uint32_t dst, uint8_t proto, uint16_t l4_len);

struct wire_eth {
    uint8_t dst[6];
    uint8_t src[6];
    uint16_t type;
    uint16_t hlen;
};
int wire_eth_parse(const uint8_t *p, size_t len, struct wire_eth *out);
size_t wire_eth_emit(uint8_t *p, const uint8_t dst[6], const uint8_t src[6], uint16_t type);
int wire_mac_is_broadcast(const uint8_t mac[6]);
int wire_mac_is_multicast(const uint8_t mac[6]);

struct wire_arp {
    uint16_t op;
    uint8_t sha[6];
    uint32_t spa;
    uint8_t tha[6];
    uint32_t tpa;
};
int wire_arp_parse(const uint8_t *p, size_t len, struct wire_arp *out);
size_t wire_arp_emit(uint8_t *p, const struct wire_arp *a);

struct wire_ipv4 {
    uint8_t hlen;
    uint8_t tos;
    uint16_t total_len;
    uint16_t id;
    uint16_t frag;
    uint8_t ttl;
    uint8_t proto;
    uint32_t src;
    uint32_t dst;
    const uint8_t *payload;
    uint16_t payload_len;
};
int wire_ipv4_parse(const uint8_t *p, size_t len, struct wire_ipv4 *out);
size_t wire_ipv4_emit(uint8_t *p, uint32_t src, uint32_t dst, uint8_t proto, uint16_t payload_len,
                      uint16_t id, uint8_t ttl);

struct wire_icmp {
    uint8_t type;
    uint8_t code;
    uint16_t id;
    uint16_t seq;
    const uint8_t *data;
    size_t data_len;
};
int wire_icmp_parse(const uint8_t *p, size_t len, struct wire_icmp *out);
size_t wire_icmp_emit_echo_reply(uint8_t *p, const uint8_t *req, size_t len);

struct wire_sack_block {
    uint32_t left, right;
};
struct wire_tcp_opts {
    uint8_t has_mss, has_wscale, sack_ok, has_ts;
    uint16_t mss;
    uint8_t wscale;
    uint8_t nsack;
    uint32_t ts_val, ts_ecr;
    struct wire_sack_block sack[4];
};
struct wire_tcp {
    uint16_t sport, dport;
    uint32_t seq, ack;
    uint8_t hlen;
    uint8_t flags;
    uint16_t win;
    uint16_t urg;
    struct wire_tcp_opts opt;
    const uint8_t *payload;
    uint32_t payload_len;
};
int wire_tcp_parse(const uint8_t *seg, size_t len, uint32_t src, uint32_t dst, int verify_csum,
                   struct wire_tcp *out);
size_t wire_tcp_opts_emit(uint8_t *p, const struct wire_tcp_opts *o);
size_t wire_tcp_emit_hdr(uint8_t *seg, uint16_t sport, uint16_t dport, uint32_t seq, uint32_t ack,
                         uint8_t flags, uint16_t win, const struct wire_tcp_opts *o);
void wire_tcp_fill_csum(uint8_t *seg, size_t seg_len, uint32_t src, uint32_t dst);

struct wire_frame_info {
    struct wire_eth eth;
    int has_arp, has_ip, has_icmp, has_tcp;
    struct wire_arp arp;
    struct wire_ipv4 ip;
    struct wire_icmp icmp;
    struct wire_tcp tcp;
};
int wire_parse_frame(const uint8_t *p, size_t len, unsigned flags, struct wire_frame_info *out);
