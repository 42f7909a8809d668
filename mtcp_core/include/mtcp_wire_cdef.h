/* The wire layer's declarations (mtcp_core/src/wire/): frame formats only, Ethernet, ARP,
 * IPv4, ICMP, TCP (+ options), checksums. The one copy of them: the C side includes it
 * through wire/wire.h, and cffi's cdef reads it (mtcp_core/_build.py), so tests build and
 * parse frames with the same C code. In API mode cffi checks every struct, field,
 * function and number here against the compiled C.
 *
 * Because cffi's cdef reads it, it holds only declarations, typedefs and
 * "#define NAME number" lines: no #include, no include guard, no #if, no macros with
 * arguments (wire/wire.h supplies the guard and the includes).
 *
 * No connection state here (smoltcp's wire/ idea): a length is checked once in a parse
 * function, then the view's fields are plain values. Parse functions return 0 (MTCP_OK)
 * or a drop reason: the index of counter drop_<reason> in the stats block (core/stats.h),
 * so lib.mtcp_stats_name(code) names it; they never crash on any input. Multi-byte fields
 * in the views are in host byte order; addresses are host-order uint32. */

typedef int mtcp_drop_t; /* as core/stats.h */

#define WIRE_ETH_HLEN 14
#define WIRE_ETHERTYPE_IPV4 0x0800
#define WIRE_ETHERTYPE_ARP 0x0806
#define WIRE_ETHERTYPE_VLAN 0x8100
#define WIRE_ARP_LEN 28
#define WIRE_IPV4_HLEN 20
#define WIRE_IPPROTO_ICMP 1
#define WIRE_IPPROTO_TCP 6
#define WIRE_TCP_HLEN 20
#define WIRE_TCP_MAX_OPTLEN 40

#define WIRE_TCP_FIN 0x01
#define WIRE_TCP_SYN 0x02
#define WIRE_TCP_RST 0x04
#define WIRE_TCP_PSH 0x08
#define WIRE_TCP_ACK 0x10
#define WIRE_TCP_URG 0x20
#define WIRE_TCP_ECE 0x40
#define WIRE_TCP_CWR 0x80

/* ---- checksum (RFC 1071) ---- */
uint32_t wire_csum_add(uint32_t sum, const void *data, size_t len);
uint16_t wire_csum_fold(uint32_t sum);
/* Sum of the TCP/UDP pseudo header (addresses host order). */
uint32_t wire_csum_pseudo(uint32_t src, uint32_t dst, uint8_t proto, uint16_t l4_len);

/* ---- Ethernet ---- */
struct wire_eth {
    uint8_t dst[6];
    uint8_t src[6];
    uint16_t type;
    uint16_t hlen;           /* 14, or 18 with one VLAN tag */
};
mtcp_drop_t wire_eth_parse(const uint8_t *p, size_t len, struct wire_eth *out);
size_t wire_eth_emit(uint8_t *p, const uint8_t dst[6], const uint8_t src[6], uint16_t type);
int wire_mac_is_broadcast(const uint8_t mac[6]);
int wire_mac_is_multicast(const uint8_t mac[6]);

/* ---- ARP (Ethernet/IPv4 only) ---- */
#define WIRE_ARP_REQUEST 1
#define WIRE_ARP_REPLY 2
struct wire_arp {
    uint16_t op;
    uint8_t sha[6];
    uint32_t spa;
    uint8_t tha[6];
    uint32_t tpa;
};
mtcp_drop_t wire_arp_parse(const uint8_t *p, size_t len, struct wire_arp *out);
size_t wire_arp_emit(uint8_t *p, const struct wire_arp *a); /* writes WIRE_ARP_LEN bytes */

/* ---- IPv4 ---- */
struct wire_ipv4 {
    uint8_t hlen;            /* bytes, 20..60 */
    uint8_t tos;
    uint16_t total_len;
    uint16_t id;
    uint16_t frag;           /* flags + offset as on the wire (host order) */
    uint8_t ttl;
    uint8_t proto;
    uint32_t src;
    uint32_t dst;
    const uint8_t *payload;
    uint16_t payload_len;    /* total_len - hlen (link padding excluded) */
};
/* Checks version, header length, total length against len, header checksum,
 * and refuses fragments (MF set or offset != 0: drop_ip_fragment). */
mtcp_drop_t wire_ipv4_parse(const uint8_t *p, size_t len, struct wire_ipv4 *out);
/* The same checks, but a fragment is accepted (out->frag says which it is). */
mtcp_drop_t wire_ipv4_parse_any(const uint8_t *p, size_t len, struct wire_ipv4 *out);
/* Writes a 20-byte header with its checksum; DF set. */
size_t wire_ipv4_emit(uint8_t *p, uint32_t src, uint32_t dst, uint8_t proto, uint16_t payload_len,
                      uint16_t id, uint8_t ttl);

/* ---- ICMP ---- */
#define WIRE_ICMP_ECHO_REPLY 0
#define WIRE_ICMP_ECHO_REQUEST 8
struct wire_icmp {
    uint8_t type;
    uint8_t code;
    uint16_t id;
    uint16_t seq;
    const uint8_t *data;     /* after the 8-byte header */
    size_t data_len;
};
mtcp_drop_t wire_icmp_parse(const uint8_t *p, size_t len, struct wire_icmp *out);
/* Echo reply to the request in req (len bytes of ICMP); returns bytes written. */
size_t wire_icmp_emit_echo_reply(uint8_t *p, const uint8_t *req, size_t len);

/* ---- TCP ---- */
#define WIRE_TCP_MAX_SACK 4
struct wire_sack_block {
    uint32_t left, right;
};
struct wire_tcp_opts {
    uint8_t has_mss, has_wscale, sack_ok, has_ts;
    uint16_t mss;
    uint8_t wscale;
    uint8_t nsack;
    uint32_t ts_val, ts_ecr;
    struct wire_sack_block sack[WIRE_TCP_MAX_SACK];
};
struct wire_tcp {
    uint16_t sport, dport;
    uint32_t seq, ack;
    uint8_t hlen;            /* bytes */
    uint8_t flags;
    uint16_t win;
    uint16_t urg;
    struct wire_tcp_opts opt;
    const uint8_t *payload;
    uint32_t payload_len;
};
/* seg/len: the TCP segment (IPv4 payload). verify_csum: check the checksum against
 * the pseudo header of src/dst (0 when the frame carries a partial checksum).
 * Malformed options (length running past the header, length < 2) -> drop_tcp_options. */
mtcp_drop_t wire_tcp_parse(const uint8_t *seg, size_t len, uint32_t src, uint32_t dst,
                           int verify_csum, struct wire_tcp *out);
/* Options as they would be emitted: MSS, wscale, SACK-permitted, timestamps, SACK
 * blocks (as many as fit), NOP-padded to a multiple of 4. Returns length (<= 40). */
size_t wire_tcp_opts_emit(uint8_t *p, const struct wire_tcp_opts *o);
/* Writes the TCP header (with options) at seg; returns its length. Checksum left 0. */
size_t wire_tcp_emit_hdr(uint8_t *seg, uint16_t sport, uint16_t dport, uint32_t seq, uint32_t ack,
                         uint8_t flags, uint16_t win, const struct wire_tcp_opts *o);
/* Fills the checksum of a complete segment of seg_len bytes (header + payload). */
void wire_tcp_fill_csum(uint8_t *seg, size_t seg_len, uint32_t src, uint32_t dst);

/* ---- one-call frame parse, used by tests through the binding ---- */
struct wire_frame_info {
    struct wire_eth eth;
    int has_arp, has_ip, has_icmp, has_tcp;
    struct wire_arp arp;
    struct wire_ipv4 ip;
    struct wire_icmp icmp;
    struct wire_tcp tcp;
};
/* Parses every layer it recognises; flags as io_frame.flags. */
mtcp_drop_t wire_parse_frame(const uint8_t *p, size_t len, unsigned flags,
                             struct wire_frame_info *out);
