/* The static responder (issue 13): complete responses that the HTTP application (Python)
 * installed, answered by the mTCP thread in the round that received the request, with no
 * event to the app thread. The application stays in charge: it decides what may be
 * answered (it installs, replaces and removes whole responses), and every request the
 * responder does not fully understand goes to it with every byte intact. */
#ifndef MTCP_API_RSP_H
#define MTCP_API_RSP_H

#include <stddef.h>
#include <stdint.h>

/* ---- the request parser (rsp_parse.c): pure, no state, fuzzed on its own ---- */

/* Why a request is not the responder's: each one a counter (rsp_fb_<name>). */
#define RSP_FALLBACK_LIST(X) \
    X(method)      /* not GET or HEAD, or not HTTP/1.0 / 1.1 */ \
    X(grammar)     /* not well-formed by h11's grammar, or not the strict subset taken here */ \
    X(header)      /* a field outside the allow-list, a repeated one, a Connection token */ \
    X(size)        /* head over the bound, request line or fields over the site's limits */ \
    X(conditional) /* If-None-Match that is not exactly the entry's ETag */ \
    X(partial)     /* end of stream or the header timeout with a partial head */ \
    X(pipeline)    /* a response that closes with more requests behind it */ \
    X(log_full)    /* the access-log ring is full */ \
    X(room)        /* the send buffer cannot take the response */ \
    X(draining)    /* not found while draining */

enum rsp_fallback {
    RSP_FB_NONE = 0,
#define RSP_FB_ENUM(name) RSP_FB_##name,
    RSP_FALLBACK_LIST(RSP_FB_ENUM)
#undef RSP_FB_ENUM
    RSP_FB__COUNT
};

/* Largest request head the responder looks at (the rest goes to the application). */
#ifndef RSP_MAX_HEAD
#define RSP_MAX_HEAD 4096
#endif

struct rsp_limits {
    uint32_t max_request_line; /* the site's (414 beyond: the application words it) */
    uint32_t max_header_bytes; /* sum of name + value + 4 per field (431 beyond) */
};

struct rsp_span {
    uint16_t off, len; /* into the head */
    uint8_t present;
};

struct rsp_req {
    uint32_t head_len;     /* bytes of the head, CRLF CRLF included */
    uint8_t is_head;       /* HEAD (else GET) */
    uint8_t minor;         /* HTTP/1.<minor> */
    uint8_t conn_close;    /* Connection: close */
    uint8_t conn_keep;     /* Connection: keep-alive */
    struct rsp_span method, target, line; /* line: "METHOD TARGET HTTP/1.x" */
    struct rsp_span host, accept_encoding, if_none_match, user_agent, referer;
};

/* Parses one request head at buf[0..len). Returns 1 with *out filled (out->head_len bytes
 * are the head), 0 when the bytes so far may still become a request the responder takes
 * (wait for more), or -RSP_FB_<reason>: the request is the application's. */
int rsp_parse(const uint8_t *buf, size_t len, const struct rsp_limits *lim, struct rsp_req *out);

#endif
