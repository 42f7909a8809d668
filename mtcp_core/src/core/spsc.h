/* Lock-free single-producer/single-consumer queue of fixed-size items (the
 * paper's job and event queues). Head and tail live on separate cache lines;
 * each side caches the other's index to touch the shared line rarely. */
#ifndef MTCP_CORE_SPSC_H
#define MTCP_CORE_SPSC_H
#include <stdalign.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

struct mtcp_spsc {
    alignas(64) _Atomic uint32_t head; /* consumer */
    uint32_t tail_cache;
    alignas(64) _Atomic uint32_t tail; /* producer */
    uint32_t head_cache;
    alignas(64) uint32_t mask;
    uint32_t item_size;
    uint8_t *items;
};

static inline int mtcp_spsc_init(struct mtcp_spsc *q, uint32_t size_pow2, uint32_t item_size)
{
    memset(q, 0, sizeof(*q));
    q->mask = size_pow2 - 1;
    q->item_size = item_size;
    q->items = calloc(size_pow2, item_size);
    return q->items ? 0 : -1;
}

static inline void mtcp_spsc_destroy(struct mtcp_spsc *q)
{
    free(q->items);
    q->items = NULL;
}

/* Producer side. 0 or -1 when full. */
static inline int mtcp_spsc_push(struct mtcp_spsc *q, const void *item)
{
    uint32_t t = atomic_load_explicit(&q->tail, memory_order_relaxed);
    if (t - q->head_cache > q->mask) {
        q->head_cache = atomic_load_explicit(&q->head, memory_order_acquire);
        if (t - q->head_cache > q->mask)
            return -1;
    }
    memcpy(q->items + (size_t)(t & q->mask) * q->item_size, item, q->item_size);
    atomic_store_explicit(&q->tail, t + 1, memory_order_release);
    return 0;
}

/* Consumer side. 1 when an item was taken, 0 when empty. */
static inline int mtcp_spsc_pop(struct mtcp_spsc *q, void *item)
{
    uint32_t h = atomic_load_explicit(&q->head, memory_order_relaxed);
    if (h == q->tail_cache) {
        q->tail_cache = atomic_load_explicit(&q->tail, memory_order_acquire);
        if (h == q->tail_cache)
            return 0;
    }
    memcpy(item, q->items + (size_t)(h & q->mask) * q->item_size, q->item_size);
    atomic_store_explicit(&q->head, h + 1, memory_order_release);
    return 1;
}

/* Either side: is anything queued (seq_cst, for the sleep/wake handshake). */
static inline int mtcp_spsc_empty(struct mtcp_spsc *q)
{
    return atomic_load(&q->head) == atomic_load(&q->tail);
}
#endif
