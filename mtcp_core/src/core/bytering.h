/* Byte ring shared by exactly two threads: one producer advances tail, one
 * consumer advances head (socket buffers: the app writes the send ring and the
 * stack frees it on ACK; the stack fills the receive ring and the app reads it).
 * Indices run free (uint32 wrap-around); capacity is a power of two. */
#ifndef MTCP_CORE_BYTERING_H
#define MTCP_CORE_BYTERING_H
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

struct mtcp_bytering {
    _Atomic uint32_t head;
    _Atomic uint32_t tail;
    uint32_t cap;  /* power of two */
    uint32_t limit; /* usable bytes (SO_RCVBUF/SO_SNDBUF), <= cap */
    uint8_t *buf;
};

static inline void mtcp_bytering_init(struct mtcp_bytering *r, uint8_t *buf, uint32_t cap)
{
    atomic_store_explicit(&r->head, 0, memory_order_relaxed);
    atomic_store_explicit(&r->tail, 0, memory_order_relaxed);
    r->cap = cap;
    r->limit = cap;
    r->buf = buf;
}

static inline uint32_t mtcp_bytering_used(struct mtcp_bytering *r)
{
    return atomic_load_explicit(&r->tail, memory_order_acquire) -
           atomic_load_explicit(&r->head, memory_order_acquire);
}

static inline uint32_t mtcp_bytering_free(struct mtcp_bytering *r)
{
    uint32_t used = mtcp_bytering_used(r);
    return used >= r->limit ? 0 : r->limit - used;
}

/* Copy len bytes starting at absolute index idx out of the ring. */
static inline void mtcp_bytering_copy_out(const struct mtcp_bytering *r, uint32_t idx, void *dst,
                                          uint32_t len)
{
    uint32_t off = idx & (r->cap - 1);
    uint32_t first = r->cap - off < len ? r->cap - off : len;
    memcpy(dst, r->buf + off, first);
    if (len > first)
        memcpy((uint8_t *)dst + first, r->buf, len - first);
}

static inline void mtcp_bytering_copy_in(struct mtcp_bytering *r, uint32_t idx, const void *src,
                                         uint32_t len)
{
    uint32_t off = idx & (r->cap - 1);
    uint32_t first = r->cap - off < len ? r->cap - off : len;
    memcpy(r->buf + off, src, first);
    if (len > first)
        memcpy(r->buf, (const uint8_t *)src + first, len - first);
}

/* Producer: append up to len bytes; returns bytes taken. */
static inline uint32_t mtcp_bytering_write(struct mtcp_bytering *r, const void *src, uint32_t len)
{
    uint32_t t = atomic_load_explicit(&r->tail, memory_order_relaxed);
    uint32_t h = atomic_load_explicit(&r->head, memory_order_acquire);
    uint32_t room = (t - h) >= r->limit ? 0 : r->limit - (t - h);
    if (len > room)
        len = room;
    if (len) {
        mtcp_bytering_copy_in(r, t, src, len);
        atomic_store_explicit(&r->tail, t + len, memory_order_release);
    }
    return len;
}

/* Consumer: take up to len bytes; returns bytes taken. */
static inline uint32_t mtcp_bytering_read(struct mtcp_bytering *r, void *dst, uint32_t len)
{
    uint32_t h = atomic_load_explicit(&r->head, memory_order_relaxed);
    uint32_t t = atomic_load_explicit(&r->tail, memory_order_acquire);
    if (len > t - h)
        len = t - h;
    if (len) {
        mtcp_bytering_copy_out(r, h, dst, len);
        atomic_store_explicit(&r->head, h + len, memory_order_release);
    }
    return len;
}
#endif
