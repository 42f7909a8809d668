/* FNV-1a, 64-bit, of a short byte string (the responder's table keys). */
#ifndef MTCP_CORE_HASH_H
#define MTCP_CORE_HASH_H
#include <stddef.h>
#include <stdint.h>

static inline uint64_t mtcp_fnv1a(const uint8_t *p, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 1099511628211ull;
    }
    return h;
}
#endif
