/* ICMP (RFC 792): header parse with checksum, and echo replies. The checksum
 * covers the whole ICMP message and is always verified (kernels never hand
 * ICMP over with a partial checksum). */
#include <string.h>

#include "bytes.h"
#include "wire.h"

#define ICMP_HLEN 8

/* type(1) code(1) checksum(2) rest(4): id/seq for echo (RFC 792 "Echo"). */
mtcp_drop_t wire_icmp_parse(const uint8_t *p, size_t len, struct wire_icmp *out)
{
    memset(out, 0, sizeof(*out));
    if (len < ICMP_HLEN)
        return MTCP_DROP(icmp_malformed);
    if (wire_csum_fold(wire_csum_add(0, p, len)) != 0)
        return MTCP_DROP(icmp_checksum);
    out->type = p[0];
    out->code = p[1];
    out->id = rd16(p + 4);
    out->seq = rd16(p + 6);
    out->data = p + ICMP_HLEN;
    out->data_len = len - ICMP_HLEN;
    return MTCP_OK;
}

/* RFC 792 "Echo or Echo Reply Message": the reply carries the request's
 * identifier, sequence number and data, type 0, and a fresh checksum. p may be
 * req itself (reply built in place). Returns len, or 0 when len < 8. */
size_t wire_icmp_emit_echo_reply(uint8_t *p, const uint8_t *req, size_t len)
{
    if (len < ICMP_HLEN)
        return 0;
    if (p != req)
        memmove(p, req, len);
    p[0] = WIRE_ICMP_ECHO_REPLY;
    p[1] = 0;
    wr16(p + 2, 0);
    wr16(p + 2, wire_csum_fold(wire_csum_add(0, p, len)));
    return len;
}
