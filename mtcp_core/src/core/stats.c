#include "stats.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static const char *const stat_names[] = {
#define MTCP_STAT_NAME(name, kind) #name,
    MTCP_STATS_LIST(MTCP_STAT_NAME)
#undef MTCP_STAT_NAME
};

#define KIND_C 0
#define KIND_G 1
static const unsigned char stat_kinds[] = {
#define MTCP_STAT_KIND(name, kind) KIND_##kind,
    MTCP_STATS_LIST(MTCP_STAT_KIND)
#undef MTCP_STAT_KIND
};

const char *mtcp_stats_name_of(int i)
{
    return (i >= 0 && i < MTCP_STAT__COUNT) ? stat_names[i] : NULL;
}

int mtcp_stats_is_gauge(int i)
{
    return (i >= 0 && i < MTCP_STAT__COUNT) ? stat_kinds[i] == KIND_G : 0;
}

int mtcp_stats_open(struct mtcp_stats *st, const char *path, unsigned core)
{
    memset(st, 0, sizeof(*st));
    st->shm_fd = -1;
    if (!path || !*path)
        return 0;
    /* "%u" in the path is the core number. */
    const char *pct = strstr(path, "%u");
    if (pct)
        snprintf(st->path, sizeof(st->path), "%.*s%u%s", (int)(pct - path), path, core, pct + 2);
    else
        snprintf(st->path, sizeof(st->path), "%s", path);
    int fd = open(st->path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0)
        return -errno;
    if (ftruncate(fd, sizeof(struct mtcp_stats_block)) < 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    void *m = mmap(NULL, sizeof(struct mtcp_stats_block), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (m == MAP_FAILED) {
        int e = errno;
        close(fd);
        return -e;
    }
    st->shm = m;
    st->shm_fd = fd;
    memset(st->shm, 0, sizeof(*st->shm));
    st->shm->version = MTCP_STATS_VERSION;
    st->shm->ncounters = MTCP_STAT__COUNT;
    st->shm->core = core;
    st->shm->pid = (uint32_t)getpid();
    __atomic_store_n(&st->shm->magic, MTCP_STATS_MAGIC, __ATOMIC_RELEASE);
    return 0;
}

void mtcp_stats_publish(struct mtcp_stats *st, uint64_t now_ns)
{
    /* Each counter is one aligned 64-bit store: a reader may see a round half
     * published, but never a torn counter. */
    for (int i = 0; i < MTCP_STAT__COUNT; i++)
        __atomic_store_n(&st->pub[i], st->v[i], __ATOMIC_RELAXED);
    if (!st->shm)
        return;
    for (int i = 0; i < MTCP_STAT__COUNT; i++)
        __atomic_store_n(&st->shm->v[i], st->v[i], __ATOMIC_RELAXED);
    __atomic_store_n(&st->shm->updated_ns, now_ns, __ATOMIC_RELEASE);
}

void mtcp_stats_close(struct mtcp_stats *st)
{
    if (st->shm)
        munmap(st->shm, sizeof(*st->shm));
    if (st->shm_fd >= 0)
        close(st->shm_fd);
    st->shm = NULL;
    st->shm_fd = -1;
}

int mtcp_stats_read_file(const char *path, uint64_t *out, int n, unsigned *core, unsigned *pid)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    struct mtcp_stats_block *b =
        mmap(NULL, sizeof(struct mtcp_stats_block), PROT_READ, MAP_SHARED, fd, 0);
    close(fd);
    if (b == MAP_FAILED)
        return -1;
    int got = -1;
    if (__atomic_load_n(&b->magic, __ATOMIC_ACQUIRE) == MTCP_STATS_MAGIC &&
        b->version == MTCP_STATS_VERSION) {
        got = (int)b->ncounters < n ? (int)b->ncounters : n;
        for (int i = 0; i < got; i++)
            out[i] = __atomic_load_n(&b->v[i], __ATOMIC_RELAXED);
        if (core)
            *core = b->core;
        if (pid)
            *pid = b->pid;
    } else {
        errno = EINVAL;
    }
    munmap(b, sizeof(struct mtcp_stats_block));
    return got;
}
