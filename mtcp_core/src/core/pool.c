#include "pool.h"

#include <errno.h>
#include <stdlib.h>
#include <sys/mman.h>

#define CACHE_LINE 64
#define HUGE_PAGE (2u * 1024 * 1024)

static void *map_region(size_t len, int huge)
{
    /* Huge pages are reserved at mmap time (no MAP_NORESERVE: without a reservation a
     * later fault would SIGBUS); normal pages are only touched when used. */
    int flags = MAP_PRIVATE | MAP_ANONYMOUS | (huge ? MAP_HUGETLB : MAP_NORESERVE);
    void *m = mmap(NULL, len, PROT_READ | PROT_WRITE, flags, -1, 0);
    return m == MAP_FAILED ? NULL : m;
}

int mtcp_pool_init(struct mtcp_pool *p, size_t obj_size, uint32_t n, int want_huge)
{
    p->obj_size = (obj_size + CACHE_LINE - 1) & ~(size_t)(CACHE_LINE - 1);
    p->n = n;
    p->nfree = n;
    p->huge = 0;
    size_t len = p->obj_size * (size_t)(n ? n : 1);
    p->mem = NULL;
    if (want_huge) {
        /* Huge pages only when the kernel has some reserved; otherwise MAP_HUGETLB
         * fails with ENOMEM and we fall back to normal pages. */
        size_t hlen = (len + HUGE_PAGE - 1) & ~(size_t)(HUGE_PAGE - 1);
        p->mem = map_region(hlen, 1);
        if (p->mem) {
            p->mem_len = hlen;
            p->huge = 1;
        }
    }
    if (!p->mem) {
        p->mem = map_region(len, 0);
        p->mem_len = len;
    }
    if (!p->mem)
        return -ENOMEM;
    p->free = malloc(sizeof(uint32_t) * (n ? n : 1));
    if (!p->free) {
        munmap(p->mem, p->mem_len);
        p->mem = NULL;
        return -ENOMEM;
    }
    /* Index 0 on top of the stack: the first objects handed out are the first pages. */
    for (uint32_t i = 0; i < n; i++)
        p->free[i] = n - 1 - i;
    return 0;
}

void mtcp_pool_destroy(struct mtcp_pool *p)
{
    if (p->mem)
        munmap(p->mem, p->mem_len);
    free(p->free);
    p->mem = NULL;
    p->free = NULL;
    p->n = p->nfree = 0;
}

void *mtcp_pool_get(struct mtcp_pool *p)
{
    if (p->nfree == 0)
        return NULL;
    return mtcp_pool_at(p, p->free[--p->nfree]);
}

void mtcp_pool_put(struct mtcp_pool *p, void *obj)
{
    p->free[p->nfree++] = mtcp_pool_index(p, obj);
}
