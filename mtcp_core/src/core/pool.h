/* Fixed-size object pools, allocated once per core at start (huge pages when
 * available) so that opening a connection allocates nothing. Single owner: a
 * pool is only touched by the thread that owns it. */
#ifndef MTCP_CORE_POOL_H
#define MTCP_CORE_POOL_H
#include <stddef.h>
#include <stdint.h>

struct mtcp_pool {
    uint8_t *mem;
    size_t mem_len;
    size_t obj_size;   /* rounded up to a cache line */
    uint32_t n;
    uint32_t nfree;
    uint32_t *free;    /* LIFO stack of free indices: reuse the warmest object first */
    int huge;          /* 1 when backed by huge pages */
};

/* 0 or -errno. want_huge: try MAP_HUGETLB first. */
int mtcp_pool_init(struct mtcp_pool *p, size_t obj_size, uint32_t n, int want_huge);
void mtcp_pool_destroy(struct mtcp_pool *p);
void *mtcp_pool_get(struct mtcp_pool *p);      /* NULL when empty */
void mtcp_pool_put(struct mtcp_pool *p, void *obj);
static inline uint32_t mtcp_pool_index(const struct mtcp_pool *p, const void *obj)
{
    return (uint32_t)(((const uint8_t *)obj - p->mem) / p->obj_size);
}
static inline void *mtcp_pool_at(const struct mtcp_pool *p, uint32_t i)
{
    return p->mem + (size_t)i * p->obj_size;
}
#endif
