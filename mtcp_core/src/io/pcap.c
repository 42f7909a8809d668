/* Classic pcap writer (not pcapng): LINKTYPE_ETHERNET, microsecond timestamps,
 * the format every tcpdump/Wireshark reads. Records are buffered and written
 * in large chunks; the buffer goes to disk when full, when a write finds it
 * older than ~1 s, from io_pcap_poll() (called every RX round), and on close. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* Linux socket/tun APIs; the build passes it too */
#endif
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "io_internal.h"

#define PCAP_MAGIC_USEC 0xa1b2c3d4u
#define PCAP_LINKTYPE_ETHERNET 1u
#define PCAP_SNAPLEN 262144u /* what tcpdump uses; frames above it are cut */
#define PCAP_BUF_SIZE (256u * 1024u)
#define PCAP_FLUSH_NS 1000000000ull

struct io_pcap {
    int fd;
    uint32_t used;
    uint64_t last_flush_ns;
    uint8_t buf[PCAP_BUF_SIZE];
};

/* Host byte order on purpose: readers detect the order from the magic. */
struct pcap_file_hdr {
    uint32_t magic;
    uint16_t version_major, version_minor;
    int32_t thiszone;
    uint32_t sigfigs, snaplen, linktype;
};

struct pcap_rec_hdr {
    uint32_t ts_sec, ts_usec, incl_len, orig_len;
};

static int write_all(int fd, const uint8_t *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += (size_t)w;
        n -= (size_t)w;
    }
    return 0;
}

static void pcap_flush(struct io_pcap *p)
{
    /* A failed write (disk full) loses the capture, never the traffic. */
    if (p->used > 0)
        (void)write_all(p->fd, p->buf, p->used);
    p->used = 0;
    p->last_flush_ns = mtcp_now_ns();
}

/* "%u" -> core number (every occurrence); other characters are kept as they are. */
static char *expand_path(const char *path, unsigned core)
{
    char num[16];
    size_t nlen = (size_t)snprintf(num, sizeof num, "%u", core);
    size_t count = 0;
    for (const char *s = path; (s = strstr(s, "%u")) != NULL; s += 2)
        count++;
    size_t len = strlen(path) + count * nlen + 1;
    char *out = malloc(len);
    if (!out)
        return NULL;
    char *o = out;
    for (const char *s = path; *s;) {
        if (s[0] == '%' && s[1] == 'u') {
            memcpy(o, num, nlen);
            o += nlen;
            s += 2;
        } else {
            *o++ = *s++;
        }
    }
    *o = '\0';
    return out;
}

struct io_pcap *io_pcap_open(const char *path, unsigned core)
{
    char *name = expand_path(path, core);
    if (!name)
        return NULL;
    struct io_pcap *p = malloc(sizeof *p);
    if (!p) {
        free(name);
        return NULL;
    }
    p->fd = open(name, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    free(name);
    if (p->fd < 0) {
        int e = errno;
        free(p);
        errno = e;
        return NULL;
    }
    struct pcap_file_hdr h = {
        .magic = PCAP_MAGIC_USEC,
        .version_major = 2,
        .version_minor = 4,
        .thiszone = 0,
        .sigfigs = 0,
        .snaplen = PCAP_SNAPLEN,
        .linktype = PCAP_LINKTYPE_ETHERNET,
    };
    memcpy(p->buf, &h, sizeof h);
    p->used = sizeof h;
    pcap_flush(p); /* the header is on disk at once: an empty capture is still valid */
    return p;
}

void io_pcap_write(struct io_pcap *p, const uint8_t *data, uint32_t len, uint64_t at_ns)
{
    if (!p)
        return;
    uint32_t incl = len < PCAP_SNAPLEN ? len : PCAP_SNAPLEN;
    struct timespec ts;
    if (at_ns) {
        ts.tv_sec = (time_t)(at_ns / 1000000000u);
        ts.tv_nsec = (long)(at_ns % 1000000000u);
    } else {
        clock_gettime(CLOCK_REALTIME, &ts);
    }
    struct pcap_rec_hdr r = {
        .ts_sec = (uint32_t)ts.tv_sec,
        .ts_usec = (uint32_t)(ts.tv_nsec / 1000),
        .incl_len = incl,
        .orig_len = len,
    };
    size_t need = sizeof r + incl;
    if (p->used + need > PCAP_BUF_SIZE)
        pcap_flush(p);
    if (need > PCAP_BUF_SIZE) { /* cannot happen with these sizes; stay safe */
        (void)write_all(p->fd, (const uint8_t *)&r, sizeof r);
        (void)write_all(p->fd, data, incl);
        return;
    }
    memcpy(p->buf + p->used, &r, sizeof r);
    memcpy(p->buf + p->used + sizeof r, data, incl);
    p->used += (uint32_t)need;
    io_pcap_poll(p);
}

void io_pcap_poll(struct io_pcap *p)
{
    if (p && p->used > 0 && mtcp_now_ns() - p->last_flush_ns >= PCAP_FLUSH_NS)
        pcap_flush(p);
}

void io_pcap_close(struct io_pcap *p)
{
    if (!p)
        return;
    pcap_flush(p);
    close(p->fd);
    free(p);
}
