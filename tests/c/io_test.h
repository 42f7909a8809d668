/* Tiny test helpers shared by the io/ tests (header only, no stack code). */
#ifndef IO_TEST_H
#define IO_TEST_H

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "io/io.h"
#include "wire/bytes.h" /* rd16/rd32/wr16/wr32: big-endian fields */

static int t_passed, t_failed;

#define CHECK(cond, ...)                                                                  \
    do {                                                                                  \
        if (cond) {                                                                       \
            t_passed++;                                                                   \
        } else {                                                                          \
            t_failed++;                                                                   \
            fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);               \
            fprintf(stderr, __VA_ARGS__);                                                 \
            fputc('\n', stderr);                                                          \
        }                                                                                 \
    } while (0)

static inline int t_summary(void)
{
    printf("%d passed, %d failed\n", t_passed, t_failed);
    return t_failed ? 1 : 0;
}

static inline uint64_t t_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static inline void t_sleep_ms(unsigned ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
    }
}

/* Run a shell command (test setup only: ip netns / ip link). */
static inline int t_sh(const char *fmt, ...)
{
    char cmd[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    int rc = system(cmd);
    return rc;
}

/* The network namespace the test started in (t_start_as_root keeps it). */
static int t_orig_ns = -1;

/* The namespace tests need root: 1 as root (the starting namespace kept, for
 * t_leave_netns), else the summary line of a skipped run and 0. */
static inline int t_start_as_root(void)
{
    if (geteuid() != 0) {
        printf("0 passed, 0 failed (skipped: needs root)\n");
        return 0;
    }
    t_orig_ns = open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC);
    return 1;
}

/* Back to the namespace the test started in. */
static inline void t_leave_netns(void)
{
    if (t_orig_ns >= 0)
        setns(t_orig_ns, CLONE_NEWNET);
}

/* Enter a named network namespace (created with `ip netns add`). */
static inline int t_enter_netns(const char *name)
{
    char path[128];
    snprintf(path, sizeof path, "/var/run/netns/%s", name);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    int rc = setns(fd, CLONE_NEWNET);
    close(fd);
    return rc;
}

/* ---- frame building ---- */

static inline uint16_t t_csum_fold(uint32_t sum)
{
    while (sum >> 16)
        sum = (sum & 0xffff) + (sum >> 16);
    return (uint16_t)~sum;
}

static inline uint32_t t_csum_add(uint32_t sum, const uint8_t *p, size_t n)
{
    for (size_t i = 0; i + 1 < n; i += 2)
        sum += (uint32_t)p[i] << 8 | p[i + 1];
    if (n & 1)
        sum += (uint32_t)p[n - 1] << 8;
    return sum;
}

/* As nobody (uid/gid 65534, in a child): io_group_open(cfg) must fail with -err1 or
 * -err2 and a message that names the capability it lacks. */
static inline void t_check_unprivileged_open(const struct io_config *cfg, int err1, int err2,
                                             const char *cap)
{
    pid_t pid = fork();
    if (pid == 0) {
        if (setgid(65534) < 0 || setuid(65534) < 0)
            _exit(2);
        struct io_group g;
        const char *msg = NULL;
        int rc = io_group_open(&g, cfg, &msg);
        int ok = (rc == -err1 || rc == -err2) && msg && strstr(msg, cap);
        if (!ok)
            fprintf(stderr, "unprivileged: %d %s\n", rc, msg ? msg : "");
        _exit(ok ? 0 : 1);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "unprivileged open says %s", cap);
}

/* Ethernet + IPv4 (ihl_words >= 5, options zero-filled) + UDP or TCP header +
 * payload, all checksums filled. Addresses/ports in host order. Returns length. */
static inline uint32_t t_build_ip(uint8_t *buf, const uint8_t dst[6], const uint8_t src[6],
                                  uint8_t proto, uint32_t saddr, uint32_t daddr, uint16_t sport,
                                  uint16_t dport, unsigned ihl_words, const void *payload,
                                  uint32_t plen)
{
    memcpy(buf, dst, 6);
    memcpy(buf + 6, src, 6);
    wr16(buf + 12, 0x0800);
    uint8_t *ip = buf + 14;
    uint32_t ihl = ihl_words * 4;
    uint32_t l4len = (proto == 6 ? 20u : 8u) + plen;
    memset(ip, 0, ihl);
    ip[0] = (uint8_t)(0x40 | ihl_words);
    wr16(ip + 2, (uint16_t)(ihl + l4len));
    wr16(ip + 6, 0x4000); /* DF */
    ip[8] = 64;
    ip[9] = proto;
    wr32(ip + 12, saddr);
    wr32(ip + 16, daddr);
    if (ihl > 20)
        ip[20] = 1; /* NOP options */
    for (uint32_t i = 21; i < ihl; i++)
        ip[i] = 1;
    wr16(ip + 10, t_csum_fold(t_csum_add(0, ip, ihl)));
    uint8_t *l4 = ip + ihl;
    memset(l4, 0, proto == 6 ? 20 : 8);
    wr16(l4, sport);
    wr16(l4 + 2, dport);
    if (proto == 6) {
        l4[12] = 5 << 4;
        l4[13] = 0x10; /* ACK */
        wr16(l4 + 14, 1024);
        memcpy(l4 + 20, payload, plen);
    } else {
        wr16(l4 + 4, (uint16_t)l4len);
        memcpy(l4 + 8, payload, plen);
    }
    uint8_t pseudo[12];
    memcpy(pseudo, ip + 12, 8);
    pseudo[8] = 0;
    pseudo[9] = proto;
    wr16(pseudo + 10, (uint16_t)l4len);
    uint16_t c = t_csum_fold(t_csum_add(t_csum_add(0, pseudo, 12), l4, l4len));
    if (proto == 17 && c == 0)
        c = 0xffff;
    wr16(l4 + (proto == 6 ? 16 : 6), c);
    return 14 + ihl + l4len;
}

/* Does the TCP/UDP checksum of an IPv4 frame verify? */
static inline int t_l4_csum_ok(const uint8_t *f, uint32_t len)
{
    const uint8_t *ip = f + 14;
    uint32_t ihl = (ip[0] & 0xfu) * 4;
    uint32_t tot = rd16(ip + 2);
    if (len < 14 + tot || tot < ihl)
        return 0;
    uint32_t l4len = tot - ihl;
    uint8_t pseudo[12];
    memcpy(pseudo, ip + 12, 8);
    pseudo[8] = 0;
    pseudo[9] = ip[9];
    wr16(pseudo + 10, (uint16_t)l4len);
    return t_csum_fold(t_csum_add(t_csum_add(0, pseudo, 12), ip + ihl, l4len)) == 0;
}

/* ARP request/reply frame (42 bytes). Addresses in host order. */
static inline uint32_t t_build_arp(uint8_t *buf, uint16_t op, const uint8_t eth_dst[6],
                                   const uint8_t sha[6], uint32_t spa, const uint8_t tha[6],
                                   uint32_t tpa)
{
    memcpy(buf, eth_dst, 6);
    memcpy(buf + 6, sha, 6);
    wr16(buf + 12, 0x0806);
    uint8_t *a = buf + 14;
    wr16(a, 1);
    wr16(a + 2, 0x0800);
    a[4] = 6;
    a[5] = 4;
    wr16(a + 6, op);
    memcpy(a + 8, sha, 6);
    wr32(a + 14, spa);
    memcpy(a + 18, tha, 6);
    wr32(a + 24, tpa);
    return 42;
}

/* Records in a classic pcap file, -1 if it is not one (LINKTYPE_ETHERNET, usec). */
static inline long t_pcap_records(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return -1;
    uint32_t h[6], r[4];
    long n = -1;
    if (fread(h, 4, 6, f) == 6 && h[0] == 0xa1b2c3d4u && h[5] == 1) {
        n = 0;
        while (fread(r, 4, 4, f) == 4 && fseek(f, (long)r[2], SEEK_CUR) == 0)
            n++;
    }
    fclose(f);
    return n;
}

#endif
