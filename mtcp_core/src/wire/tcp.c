/* TCP header and options (RFC 9293 section 3.1; options: MSS RFC 9293 3.7.1,
 * window scale and timestamps RFC 7323, SACK RFC 2018). */
#include <string.h>

#include "bytes.h"
#include "wire.h"

#define TCPOPT_EOL 0
#define TCPOPT_NOP 1
#define TCPOPT_MSS 2
#define TCPOPT_WSCALE 3
#define TCPOPT_SACK_PERM 4
#define TCPOPT_SACK 5
#define TCPOPT_TS 8

#define TCPOLEN_MSS 4
#define TCPOLEN_WSCALE 3
#define TCPOLEN_SACK_PERM 2
#define TCPOLEN_TS 10
#define TCPOLEN_SACK_BASE 2
#define TCPOLEN_SACK_BLOCK 8

#define TCP_MAX_WSCALE 14 /* RFC 7323 section 2.3 */

/* Option list (RFC 9293 section 3.2): EOL ends it, NOP is one byte, every other
 * kind has a length byte >= 2 covering kind and length, and must end inside the
 * header. Known kinds must have their exact length; unknown kinds are skipped.
 * A later copy of an option overrides an earlier one. */
static mtcp_drop_t parse_opts(const uint8_t *o, size_t n, struct wire_tcp_opts *opt)
{
    size_t i = 0;
    while (i < n) {
        uint8_t kind = o[i];
        if (kind == TCPOPT_EOL)
            break;
        if (kind == TCPOPT_NOP) {
            i++;
            continue;
        }
        if (n - i < 2)
            return MTCP_DROP(tcp_options);
        size_t olen = o[i + 1];
        if (olen < 2 || olen > n - i)
            return MTCP_DROP(tcp_options);
        const uint8_t *v = o + i + 2;
        switch (kind) {
        case TCPOPT_MSS:
            if (olen != TCPOLEN_MSS)
                return MTCP_DROP(tcp_options);
            opt->has_mss = 1;
            opt->mss = rd16(v);
            break;
        case TCPOPT_WSCALE:
            if (olen != TCPOLEN_WSCALE)
                return MTCP_DROP(tcp_options);
            opt->has_wscale = 1;
            /* RFC 7323 2.3: a shift > 14 is used as 14. */
            opt->wscale = v[0] > TCP_MAX_WSCALE ? TCP_MAX_WSCALE : v[0];
            break;
        case TCPOPT_SACK_PERM:
            if (olen != TCPOLEN_SACK_PERM)
                return MTCP_DROP(tcp_options);
            opt->sack_ok = 1;
            break;
        case TCPOPT_TS:
            if (olen != TCPOLEN_TS)
                return MTCP_DROP(tcp_options);
            opt->has_ts = 1;
            opt->ts_val = rd32(v);
            opt->ts_ecr = rd32(v + 4);
            break;
        case TCPOPT_SACK: {
            /* RFC 2018 section 3: length 2 + 8n, 1 <= n <= 4. */
            size_t body = olen - TCPOLEN_SACK_BASE;
            size_t nb = body / TCPOLEN_SACK_BLOCK;
            if (body % TCPOLEN_SACK_BLOCK || nb < 1 || nb > WIRE_TCP_MAX_SACK)
                return MTCP_DROP(tcp_options);
            opt->nsack = (uint8_t)nb;
            for (size_t b = 0; b < nb; b++) {
                opt->sack[b].left = rd32(v + b * TCPOLEN_SACK_BLOCK);
                opt->sack[b].right = rd32(v + b * TCPOLEN_SACK_BLOCK + 4);
            }
            break;
        }
        default:
            break; /* unknown kind: skipped by its length */
        }
        i += olen;
    }
    return MTCP_OK;
}

mtcp_drop_t wire_tcp_parse(const uint8_t *seg, size_t len, uint32_t src, uint32_t dst,
                           int verify_csum, struct wire_tcp *out)
{
    memset(out, 0, sizeof(*out));
    if (len < WIRE_TCP_HLEN)
        return MTCP_DROP(tcp_short);
    size_t hlen = (size_t)(seg[12] >> 4) * 4;
    /* The pseudo header carries a 16-bit length: a longer segment cannot come
     * out of an IPv4 datagram, so it is refused with the header-length reason. */
    if (hlen < WIRE_TCP_HLEN || hlen > len || len > 0xffffu)
        return MTCP_DROP(tcp_hdr_len);
    if (verify_csum &&
        wire_csum_fold(wire_csum_add(wire_csum_pseudo(src, dst, WIRE_IPPROTO_TCP, (uint16_t)len),
                                     seg, len)) != 0)
        return MTCP_DROP(tcp_checksum);
    mtcp_drop_t r = parse_opts(seg + WIRE_TCP_HLEN, hlen - WIRE_TCP_HLEN, &out->opt);
    if (r != MTCP_OK) {
        memset(&out->opt, 0, sizeof(out->opt));
        return r;
    }
    out->sport = rd16(seg);
    out->dport = rd16(seg + 2);
    out->seq = rd32(seg + 4);
    out->ack = rd32(seg + 8);
    out->hlen = (uint8_t)hlen;
    out->flags = seg[13];
    out->win = rd16(seg + 14);
    out->urg = rd16(seg + 18);
    out->payload = seg + hlen;
    out->payload_len = (uint32_t)(len - hlen);
    return MTCP_OK;
}

/* Layout, as Linux sends it (every option 4-byte aligned by its NOPs):
 *   SYN:     MSS | SACK_PERM TS (or NOP NOP TS, or NOP NOP SACK_PERM) | NOP WS
 *   non-SYN: NOP NOP TS | NOP NOP SACK(n blocks)
 * The caller sets has_mss, has_wscale and sack_ok only on SYN segments (RFC 9293
 * 3.7.1, RFC 7323 2.2, RFC 2018 section 2). SACK blocks: as many of o->sack as
 * fit in the 40 bytes (3 with timestamps, 4 without, RFC 2018 section 3).
 * Padded with NOPs to a multiple of 4. Returns 0 when nothing is set. */
size_t wire_tcp_opts_emit(uint8_t *p, const struct wire_tcp_opts *o)
{
    size_t n = 0;
    if (o->has_mss) {
        p[n++] = TCPOPT_MSS;
        p[n++] = TCPOLEN_MSS;
        wr16(p + n, o->mss);
        n += 2;
    }
    if (o->sack_ok && o->has_ts) {
        p[n++] = TCPOPT_SACK_PERM;
        p[n++] = TCPOLEN_SACK_PERM;
    } else if (o->sack_ok) {
        p[n++] = TCPOPT_NOP;
        p[n++] = TCPOPT_NOP;
        p[n++] = TCPOPT_SACK_PERM;
        p[n++] = TCPOLEN_SACK_PERM;
    } else if (o->has_ts) {
        p[n++] = TCPOPT_NOP;
        p[n++] = TCPOPT_NOP;
    }
    if (o->has_ts) {
        p[n++] = TCPOPT_TS;
        p[n++] = TCPOLEN_TS;
        wr32(p + n, o->ts_val);
        wr32(p + n + 4, o->ts_ecr);
        n += 8;
    }
    if (o->has_wscale) {
        p[n++] = TCPOPT_NOP;
        p[n++] = TCPOPT_WSCALE;
        p[n++] = TCPOLEN_WSCALE;
        p[n++] = o->wscale > TCP_MAX_WSCALE ? TCP_MAX_WSCALE : o->wscale;
    }
    if (o->nsack) {
        size_t room = WIRE_TCP_MAX_OPTLEN - n;
        size_t nb = o->nsack < WIRE_TCP_MAX_SACK ? o->nsack : WIRE_TCP_MAX_SACK;
        if (room < 4 + TCPOLEN_SACK_BLOCK)
            nb = 0;
        else if (nb > (room - 4) / TCPOLEN_SACK_BLOCK)
            nb = (room - 4) / TCPOLEN_SACK_BLOCK;
        if (nb) {
            p[n++] = TCPOPT_NOP;
            p[n++] = TCPOPT_NOP;
            p[n++] = TCPOPT_SACK;
            p[n++] = (uint8_t)(TCPOLEN_SACK_BASE + nb * TCPOLEN_SACK_BLOCK);
            for (size_t b = 0; b < nb; b++) {
                wr32(p + n, o->sack[b].left);
                wr32(p + n + 4, o->sack[b].right);
                n += TCPOLEN_SACK_BLOCK;
            }
        }
    }
    while (n % 4)
        p[n++] = TCPOPT_NOP;
    return n;
}

/* o may be NULL (no options). */
size_t wire_tcp_emit_hdr(uint8_t *seg, uint16_t sport, uint16_t dport, uint32_t seq, uint32_t ack,
                         uint8_t flags, uint16_t win, const struct wire_tcp_opts *o)
{
    size_t hlen = WIRE_TCP_HLEN + (o ? wire_tcp_opts_emit(seg + WIRE_TCP_HLEN, o) : 0);
    wr16(seg, sport);
    wr16(seg + 2, dport);
    wr32(seg + 4, seq);
    wr32(seg + 8, ack);
    seg[12] = (uint8_t)((hlen / 4) << 4);
    seg[13] = flags;
    wr16(seg + 14, win);
    wr16(seg + 16, 0); /* checksum: wire_tcp_fill_csum */
    wr16(seg + 18, 0); /* urgent pointer: never sent */
    return hlen;
}

void wire_tcp_fill_csum(uint8_t *seg, size_t seg_len, uint32_t src, uint32_t dst)
{
    if (seg_len < WIRE_TCP_HLEN || seg_len > 0xffffu)
        return;
    wr16(seg + 16, 0);
    uint32_t s = wire_csum_pseudo(src, dst, WIRE_IPPROTO_TCP, (uint16_t)seg_len);
    wr16(seg + 16, wire_csum_fold(wire_csum_add(s, seg, seg_len)));
}
