/* The responder's request parser: one forward scan over the bytes received so far.
 *
 * It accepts a strict subset of what h11 accepts (RFC 9112 sections 3 and 5, h11's
 * _abnf.py): "GET" or "HEAD", one SP, a request-target of VCHARs, one SP, "HTTP/1.0" or
 * "HTTP/1.1", CRLF; then fields `token ":" OWS field-value OWS CRLF` whose values are
 * VCHAR / obs-text runs separated by SP or HTAB; then CRLF. Only CRLF line ends, no
 * obs-fold, no control bytes, fields from a short allow-list, none of the decisive ones
 * twice. Anything else is the application's: the scan stops at the first byte that rules
 * the request out, so a request the application must answer is handed over at once and
 * never waits here for bytes that cannot make it the responder's. */
#include "rsp.h"

#include "mtcp.h"

#include <string.h>

static const uint8_t TOKEN[256] = {
    ['!'] = 1, ['#'] = 1, ['$'] = 1, ['%'] = 1, ['&'] = 1, ['\''] = 1, ['*'] = 1, ['+'] = 1,
    ['-'] = 1, ['.'] = 1, ['^'] = 1, ['_'] = 1, ['`'] = 1, ['|'] = 1, ['~'] = 1,
    ['0'] = 1, ['1'] = 1, ['2'] = 1, ['3'] = 1, ['4'] = 1, ['5'] = 1, ['6'] = 1, ['7'] = 1,
    ['8'] = 1, ['9'] = 1,
    ['A'] = 1, ['B'] = 1, ['C'] = 1, ['D'] = 1, ['E'] = 1, ['F'] = 1, ['G'] = 1, ['H'] = 1,
    ['I'] = 1, ['J'] = 1, ['K'] = 1, ['L'] = 1, ['M'] = 1, ['N'] = 1, ['O'] = 1, ['P'] = 1,
    ['Q'] = 1, ['R'] = 1, ['S'] = 1, ['T'] = 1, ['U'] = 1, ['V'] = 1, ['W'] = 1, ['X'] = 1,
    ['Y'] = 1, ['Z'] = 1,
    ['a'] = 1, ['b'] = 1, ['c'] = 1, ['d'] = 1, ['e'] = 1, ['f'] = 1, ['g'] = 1, ['h'] = 1,
    ['i'] = 1, ['j'] = 1, ['k'] = 1, ['l'] = 1, ['m'] = 1, ['n'] = 1, ['o'] = 1, ['p'] = 1,
    ['q'] = 1, ['r'] = 1, ['s'] = 1, ['t'] = 1, ['u'] = 1, ['v'] = 1, ['w'] = 1, ['x'] = 1,
    ['y'] = 1, ['z'] = 1,
};

static int vchar(uint8_t c) { return c >= 0x21 && c <= 0x7e; }
static int field_vchar(uint8_t c) { return vchar(c) || c >= 0x80; }
static int ows(uint8_t c) { return c == ' ' || c == '\t'; }
static uint8_t lower(uint8_t c) { return c >= 'A' && c <= 'Z' ? (uint8_t)(c + 32) : c; }

/* 1: lit matches at buf[pos]; 0: the buffer ends inside a match; -1: mismatch */
static int literal(const uint8_t *buf, size_t len, size_t pos, const char *lit)
{
    size_t n = strlen(lit);
    for (size_t i = 0; i < n; i++) {
        if (pos + i >= len)
            return 0;
        if (buf[pos + i] != (uint8_t)lit[i])
            return -1;
    }
    return 1;
}

static int name_is(const uint8_t *p, size_t n, const char *lit)
{
    if (strlen(lit) != n)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (lower(p[i]) != (uint8_t)lit[i])
            return 0;
    return 1;
}

/* Fields the response never depends on: allowed, not looked at. */
static const char *const IGNORED[] = {
    "accept", "accept-language", "accept-charset", "cache-control", "pragma", "dnt",
    "upgrade-insecure-requests", "sec-fetch-dest", "sec-fetch-mode", "sec-fetch-site",
    "sec-fetch-user", "sec-gpc", "priority",
};

static int connection_tokens(const uint8_t *v, size_t n, struct rsp_req *out)
{
    size_t i = 0;
    while (i <= n) {
        size_t j = i;
        while (j < n && v[j] != ',')
            j++;
        size_t a = i, b = j;
        while (a < b && ows(v[a]))
            a++;
        while (b > a && ows(v[b - 1]))
            b--;
        if (b > a) {
            if (name_is(v + a, b - a, "close"))
                out->conn_close = 1;
            else if (name_is(v + a, b - a, "keep-alive"))
                out->conn_keep = 1;
            else
                return -1;
        }
        i = j + 1;
    }
    return 0;
}

/* One header field: a field the key or the framing uses goes into its slot (once), the
 * Connection tokens are read, a field on the allow-list is skipped; 0, or -RSP_FB_header
 * for any other (the application's). */
static int field_store(const uint8_t *buf, size_t nstart, size_t nlen, size_t vstart,
                       size_t vend, struct rsp_req *out)
{
    const uint8_t *name = buf + nstart;
    struct rsp_span sp = {(uint16_t)vstart, (uint16_t)(vend - vstart), 1};
    struct rsp_span *slot = NULL;
    if (name_is(name, nlen, "host"))
        slot = &out->host;
    else if (name_is(name, nlen, "accept-encoding"))
        slot = &out->accept_encoding;
    else if (name_is(name, nlen, "if-none-match"))
        slot = &out->if_none_match;
    else if (name_is(name, nlen, "user-agent"))
        slot = &out->user_agent;
    else if (name_is(name, nlen, "referer"))
        slot = &out->referer;
    else if (name_is(name, nlen, "connection")) {
        if (connection_tokens(buf + vstart, vend - vstart, out) < 0)
            return -RSP_FB_header;
        return 0;
    } else {
        int ok = 0;
        for (size_t i = 0; i < sizeof(IGNORED) / sizeof(IGNORED[0]); i++)
            if (name_is(name, nlen, IGNORED[i])) {
                ok = 1;
                break;
            }
        if (!ok)
            return -RSP_FB_header;
        return 0;
    }
    if (slot->present)
        return -RSP_FB_header; /* repeated: the application joins them */
    *slot = sp;
    return 0;
}

int rsp_parse(const uint8_t *buf, size_t len, const struct rsp_limits *lim, struct rsp_req *out)
{
    memset(out, 0, sizeof(*out));
    size_t pos;
    int r = literal(buf, len, 0, "GET ");
    if (r == 1) {
        pos = 4;
    } else {
        int h = literal(buf, len, 0, "HEAD ");
        if (h < 0 && r < 0)
            return -RSP_FB_method;
        if (h == 0 || r == 0)
            return 0;
        pos = 5;
        out->is_head = 1;
    }
    out->method = (struct rsp_span){0, (uint16_t)(pos - 1), 1};
    /* request-target: VCHAR+ */
    size_t tstart = pos;
    while (pos < len && vchar(buf[pos])) {
        pos++;
        if ((pos - tstart) + (tstart - 1) + 10 > lim->max_request_line || pos >= RSP_MAX_HEAD)
            return -RSP_FB_size; /* 414 or past the bound: the application's */
    }
    if (pos == len)
        return 0;
    if (buf[pos] != ' ' || pos == tstart)
        return -RSP_FB_grammar;
    out->target = (struct rsp_span){(uint16_t)tstart, (uint16_t)(pos - tstart), 1};
    pos++;
    r = literal(buf, len, pos, "HTTP/1.");
    if (r <= 0)
        return r < 0 ? -RSP_FB_method : 0;
    pos += 7;
    if (pos == len)
        return 0;
    if (buf[pos] != '0' && buf[pos] != '1')
        return -RSP_FB_method;
    out->minor = (uint8_t)(buf[pos] - '0');
    pos++;
    out->line = (struct rsp_span){0, (uint16_t)pos, 1};
    r = literal(buf, len, pos, "\r\n");
    if (r <= 0)
        return r < 0 ? -RSP_FB_grammar : 0;
    pos += 2;

    uint32_t head_bytes = 0;
    for (;;) {
        if (pos >= RSP_MAX_HEAD)
            return -RSP_FB_size;
        if (pos == len)
            return 0;
        if (buf[pos] == '\r') {
            if (pos + 1 == len)
                return 0;
            if (buf[pos + 1] != '\n')
                return -RSP_FB_grammar;
            pos += 2;
            break;
        }
        size_t nstart = pos;
        while (pos < len && TOKEN[buf[pos]])
            pos++;
        if (pos == len)
            return pos >= RSP_MAX_HEAD ? -RSP_FB_size : 0;
        if (buf[pos] != ':' || pos == nstart)
            return -RSP_FB_grammar; /* obs-fold, whitespace before ':', a bad byte */
        size_t nlen = pos - nstart;
        pos++;
        while (pos < len && ows(buf[pos]))
            pos++;
        size_t vstart = pos;
        while (pos < len && (field_vchar(buf[pos]) || ows(buf[pos])))
            pos++;
        if (pos >= RSP_MAX_HEAD)
            return -RSP_FB_size;
        if (pos == len)
            return 0;
        if (buf[pos] != '\r')
            return -RSP_FB_grammar; /* a bare LF, a control byte, NUL */
        if (pos + 1 == len)
            return 0;
        if (buf[pos + 1] != '\n')
            return -RSP_FB_grammar;
        size_t vend = pos;
        while (vend > vstart && ows(buf[vend - 1]))
            vend--;
        pos += 2;
        head_bytes += (uint32_t)(nlen + (vend - vstart) + 4);
        if (head_bytes > lim->max_header_bytes)
            return -RSP_FB_size;
        int fr = field_store(buf, nstart, nlen, vstart, vend, out);
        if (fr < 0)
            return fr;
    }
    if (!out->host.present && out->minor == 1)
        return -RSP_FB_header; /* RFC 9112 3.2: a 400, the application's */
    out->head_len = (uint32_t)pos;
    return 1;
}

int mtcp_rsp_parse(const char *buf, size_t len, unsigned max_request_line,
                   unsigned max_header_bytes, unsigned *head_len)
{
    struct rsp_limits lim = {max_request_line, max_header_bytes};
    struct rsp_req q;
    int r = rsp_parse((const uint8_t *)buf, len, &lim, &q);
    if (head_len)
        *head_len = r == 1 ? q.head_len : 0;
    return r;
}
