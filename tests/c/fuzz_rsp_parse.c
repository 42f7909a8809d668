/* Fuzz harness for the static responder's request parser (mtcp_core/src/api/rsp_parse.c).
 *
 * libFuzzer (clang -fsanitize=fuzzer,address,undefined) drives LLVMFuzzerTestOneInput; built
 * with -DFUZZ_STANDALONE (gcc, no libFuzzer) a small driver feeds it mutated seeds from a
 * fixed-seed generator instead. Besides the sanitizers' checks, every input checks the
 * parser's promises and aborts on a broken one:
 *   1: the head ends in CRLF CRLF within the bound, every span lies inside it, and every
 *      proper prefix of the head returns 0 (never handed over early);
 *   0: no complete head is in the bytes seen;
 *  <0: a known reason.
 * Usage: sh tests/c/fuzz_rsp_parse.sh [runs]. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/rsp.h"

static void check_span(const struct rsp_span *s, uint32_t head_len)
{
    if (s->present && (uint32_t)s->off + s->len > head_len)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* the first byte picks the site's limits: the defaults, or small ones */
    struct rsp_limits lim = {8192, 16384};
    if (size && data[0] < 32) {
        lim.max_request_line = 16u + data[0];
        lim.max_header_bytes = 8u + 4u * data[0];
    }
    struct rsp_req q;
    int r = rsp_parse(data, size, &lim, &q);
    if (r == 1) {
        uint32_t n = q.head_len;
        if (n < 4 || n > size || n > RSP_MAX_HEAD || memcmp(data + n - 4, "\r\n\r\n", 4) != 0)
            abort();
        check_span(&q.method, n);
        check_span(&q.target, n);
        check_span(&q.line, n);
        check_span(&q.host, n);
        check_span(&q.accept_encoding, n);
        check_span(&q.if_none_match, n);
        check_span(&q.user_agent, n);
        check_span(&q.referer, n);
        if (!q.is_head ? memcmp(data, "GET ", 4) != 0 : memcmp(data, "HEAD ", 5) != 0)
            abort();
        for (uint32_t i = 0; i < n; i += (n > 256 ? 7 : 1)) {
            struct rsp_req p;
            if (rsp_parse(data, i, &lim, &p) != 0)
                abort();
        }
    } else if (r == 0) {
        size_t end = size < RSP_MAX_HEAD ? size : RSP_MAX_HEAD;
        for (size_t i = 0; i + 4 <= end; i++)
            if (memcmp(data + i, "\r\n\r\n", 4) == 0)
                abort();
    } else if (r < -(int)RSP_FB__COUNT) {
        abort();
    }
    return 0;
}

#ifdef FUZZ_STANDALONE
static const char *const SEEDS[] = {
    "GET / HTTP/1.1\r\nHost: t\r\n\r\n",
    "HEAD /a.txt HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    "GET /x HTTP/1.1\r\nHost: t\r\nAccept-Encoding: gzip, br\r\nIf-None-Match: \"a\"\r\n"
    "User-Agent: u v\r\nReferer: r\r\nConnection: close\r\n\r\nGET / HTTP/1.1\r\n",
    "GET / HTTP/1.1\r\nHost: t\r\nRange: bytes=0-1\r\n\r\n",
};

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static uint64_t next(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

int main(int argc, char **argv)
{
    unsigned long long runs = argc > 1 ? strtoull(argv[1], NULL, 10) : 1000000ull;
    static uint8_t buf[RSP_MAX_HEAD + 64];
    const uint8_t pieces[] = "\r\n :\t,\"GETHEAD/HTTP1.0\x00\x7f\x80\xff";
    for (unsigned long long i = 0; i < runs; i++) {
        const char *seed = SEEDS[next() % (sizeof(SEEDS) / sizeof(SEEDS[0]))];
        size_t n = strlen(seed);
        memcpy(buf, seed, n);
        int edits = (int)(next() % 4);
        for (int e = 0; e < edits; e++) {
            size_t at = n ? next() % n : 0;
            switch (next() % 4) {
            case 0: buf[at] = (uint8_t)next(); break;
            case 1: buf[at] = pieces[next() % (sizeof(pieces) - 1)]; break;
            case 2: n = at; break; /* truncate */
            default:
                if (n < sizeof(buf) - 1) { /* insert */
                    memmove(buf + at + 1, buf + at, n - at);
                    buf[at] = pieces[next() % (sizeof(pieces) - 1)];
                    n++;
                }
            }
        }
        LLVMFuzzerTestOneInput(buf, n);
    }
    printf("%llu inputs, no failure\n", runs);
    return 0;
}
#endif
