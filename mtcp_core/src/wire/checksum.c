/* Internet checksum (RFC 1071), on the per-packet path.
 *
 * Convention for the running sum passed between wire_csum_* calls: it is the
 * end-around-carry sum of the data's 16-bit words read in network (big-endian)
 * order, kept in 32 bits; only wire_csum_fold() reduces it to 16 bits and takes
 * the one's complement. So wire_csum_pseudo() (host-order addresses) and
 * wire_csum_add() (raw bytes) can be added in any order.
 *
 * Chaining: wire_csum_add(wire_csum_add(s, a, la), b, lb) equals one call over
 * a followed by b as long as la is even. Only the LAST piece of a chain may
 * have an odd length (its trailing byte is padded with a zero byte, RFC 1071
 * section 4.1); an odd piece in the middle would shift every later word by one
 * byte.
 *
 * Speed: the data are loaded 8 bytes at a time with memcpy (no unaligned
 * pointer casts) in the host's byte order, and each 64-bit load is split into
 * two 32-bit halves added into 64-bit accumulators, so the loop carries no
 * per-word carry chain. The one's complement sum is byte-order independent
 * (RFC 1071 section 2(B)): on a little-endian host the folded 16-bit result is
 * byte-swapped once at the end. */
#include <string.h>

#include "wire.h"

static inline int host_is_little_endian(void)
{
    const uint16_t one = 1;
    uint8_t b;
    memcpy(&b, &one, 1);
    return b == 1; /* constant-folded at -O2 */
}

/* Folds a 64-bit end-around-carry sum to 16 bits (not complemented).
 * 2^16 == 1 (mod 0xffff), so adding the high parts back in keeps the sum. */
static inline uint32_t fold64(uint64_t s)
{
    s = (s & 0xffffffffu) + (s >> 32);
    s = (s & 0xffffffffu) + (s >> 32);
    s = (s & 0xffffu) + (s >> 16);
    s = (s & 0xffffu) + (s >> 16);
    s = (s & 0xffffu) + (s >> 16);
    return (uint32_t)s;
}

/* Sum of the 16-bit words of data as they lie in memory (host order), folded. */
static uint32_t sum_native(const uint8_t *p, size_t len)
{
    uint64_t a = 0, b = 0, c = 0, d = 0;
    uint64_t w0, w1, w2, w3;

    /* Four independent accumulators of 32-bit halves (no carry chain between
     * loads): together they grow by < 2^35 per 32 bytes, so their sum cannot
     * overflow 64 bits below 16 GiB of data in one call. */
    while (len >= 32) {
        memcpy(&w0, p, 8);
        memcpy(&w1, p + 8, 8);
        memcpy(&w2, p + 16, 8);
        memcpy(&w3, p + 24, 8);
        a += (w0 & 0xffffffffu) + (w0 >> 32);
        b += (w1 & 0xffffffffu) + (w1 >> 32);
        c += (w2 & 0xffffffffu) + (w2 >> 32);
        d += (w3 & 0xffffffffu) + (w3 >> 32);
        p += 32;
        len -= 32;
    }
    while (len >= 8) {
        memcpy(&w0, p, 8);
        a += (w0 & 0xffffffffu) + (w0 >> 32);
        p += 8;
        len -= 8;
    }
    /* 0..7 bytes left, starting at an even offset: fixed-size loads only. */
    if (len & 4) {
        uint32_t w;
        memcpy(&w, p, 4);
        b += w;
        p += 4;
    }
    if (len & 2) {
        uint16_t w;
        memcpy(&w, p, 2);
        c += w;
        p += 2;
    }
    if (len & 1) {
        /* RFC 1071 4.1: the odd last byte is the first byte of a word padded
         * with zero; loading it into a zeroed word puts it there in host order. */
        uint16_t w = 0;
        memcpy(&w, p, 1);
        d += w;
    }
    return fold64(a + b + c + d);
}

uint32_t wire_csum_add(uint32_t sum, const void *data, size_t len)
{
    uint32_t s = sum_native((const uint8_t *)data, len);
    if (host_is_little_endian())
        s = ((s & 0xffu) << 8) | (s >> 8); /* native -> network word order */
    /* Keep the running sum in 32 bits with end-around carry (2^32 == 1 mod 0xffff). */
    uint64_t t = (uint64_t)sum + s;
    return (uint32_t)((t & 0xffffffffu) + (t >> 32));
}

uint16_t wire_csum_fold(uint32_t sum)
{
    return (uint16_t)~fold64(sum);
}

/* TCP/UDP pseudo header over IPv4: src, dst, zero, protocol, L4 length
 * (RFC 9293 section 3.1, "Checksum"). */
uint32_t wire_csum_pseudo(uint32_t src, uint32_t dst, uint8_t proto, uint16_t l4_len)
{
    return (src >> 16) + (src & 0xffffu) + (dst >> 16) + (dst & 0xffffu) + proto + l4_len;
}
