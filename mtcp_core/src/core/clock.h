#ifndef MTCP_CORE_CLOCK_H
#define MTCP_CORE_CLOCK_H
#include <stdint.h>
#include <time.h>

static inline uint64_t mtcp_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}
#define MTCP_NS_PER_MS 1000000ull
#define MTCP_NS_PER_S 1000000000ull
#endif
