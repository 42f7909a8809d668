/* A stack: configuration, addresses and the devices of every core. Created in
 * the process that later forks one worker per core. */
#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "../tcp/tcp.h"
#include "ctx.h"

static char *dup_or_null(const char *s)
{
    return s ? strdup(s) : NULL;
}

static int parse_ip(const char *s, uint32_t *out)
{
    struct in_addr a;
    if (!s || inet_pton(AF_INET, s, &a) != 1)
        return -1;
    *out = ntohl(a.s_addr);
    return 0;
}

static int parse_mac(const char *s, uint8_t mac[6])
{
    unsigned v[6];
    char extra;
    if (sscanf(s, "%x:%x:%x:%x:%x:%x%c", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5], &extra) != 6)
        return -1;
    for (int i = 0; i < 6; i++) {
        if (v[i] > 255)
            return -1;
        mac[i] = (uint8_t)v[i];
    }
    return 0;
}

static uint32_t round_pow2_down(uint32_t v)
{
    uint32_t p = 1;
    while (p * 2 <= v && p < (1u << 30))
        p *= 2;
    return p;
}

static void fail(char *err, size_t errlen, const char *msg)
{
    if (err && errlen)
        snprintf(err, errlen, "%s", msg);
}

/* The stack's addresses and core count from conf (0, or -1 with err filled). */
static int stack_addresses(struct mtcp_stack *s, const struct mtcp_conf *conf, char *err,
                           size_t errlen)
{
    char msg[256];
    if (!conf->backend) {
        fail(err, errlen, "backend: missing (afpacket, tap or pair)");
        return -1;
    }
    if (parse_ip(conf->ip, &s->ip) < 0) {
        snprintf(msg, sizeof(msg), "ip: not an IPv4 address: %s", conf->ip ? conf->ip : "(none)");
        fail(err, errlen, msg);
        return -1;
    }
    if (conf->prefix > 32) {
        fail(err, errlen, "prefix: must be 0..32");
        return -1;
    }
    s->netmask = conf->prefix ? ~0u << (32 - conf->prefix) : 0;
    if (conf->gateway && parse_ip(conf->gateway, &s->gateway) < 0) {
        snprintf(msg, sizeof(msg), "gateway: not an IPv4 address: %s", conf->gateway);
        fail(err, errlen, msg);
        return -1;
    }
    s->ncores = conf->ncores ? conf->ncores : 1;
    if (s->ncores > 256) {
        fail(err, errlen, "ncores: at most 256");
        return -1;
    }
    return 0;
}

/* Socket-buffer sizes, the memory budget and the connection pool it gives. */
static int stack_buffers(struct mtcp_stack *s, const struct mtcp_conf *conf, char *err,
                         size_t errlen)
{
    s->rcvbuf = round_pow2_down(conf->rcvbuf ? conf->rcvbuf : MTCP_DEFAULT_RCVBUF);
    s->sndbuf = round_pow2_down(conf->sndbuf ? conf->sndbuf : MTCP_DEFAULT_SNDBUF);
    if (s->rcvbuf < 4096 || s->sndbuf < 4096) {
        fail(err, errlen, "rcvbuf/sndbuf: at least 4096 bytes");
        return -1;
    }
    s->mem_budget = conf->mem_budget ? conf->mem_budget : MTCP_DEFAULT_MEM_BUDGET;
    {
        /* the pool sized by memory: as many connections as the budget holds at the
         * pressure sizes (pages are touched only as buffers are used) */
        uint64_t per = (uint64_t)(s->sndbuf < MTCP_PRESSURE_SNDBUF ? s->sndbuf : MTCP_PRESSURE_SNDBUF) +
                       (s->rcvbuf < MTCP_PRESSURE_RCVBUF ? s->rcvbuf : MTCP_PRESSURE_RCVBUF);
        uint64_t n = s->mem_budget / per;
        if (n > MTCP_MAX_POOL)
            n = MTCP_MAX_POOL;
        if (n < 64)
            n = 64;
        s->max_conns = conf->max_conns ? conf->max_conns : (uint32_t)n;
    }
    if (s->mem_budget < (uint64_t)s->sndbuf + s->rcvbuf) {
        fail(err, errlen, "mem_budget: smaller than one connection's sndbuf + rcvbuf");
        return -1;
    }
    return 0;
}

/* TCP's settings (exhaustion bounds, timers, SACK, delayed ACK, congestion control) and
 * the ISN / SYN cookie key. */
static int stack_tcp_settings(struct mtcp_stack *s, const struct mtcp_conf *conf, char *err,
                              size_t errlen)
{
    s->orphan_retries = conf->orphan_retries ? conf->orphan_retries : MTCP_DEFAULT_ORPHAN_RETRIES;
    s->max_orphans = conf->max_orphans ? conf->max_orphans : s->max_conns / 4;
    s->max_per_source = conf->max_conns_per_source;
    s->evict = !conf->no_evict;
    s->time_wait_ms = conf->time_wait_ms ? conf->time_wait_ms : MTCP_DEFAULT_TIME_WAIT_MS;
    s->idle_timeout_ms = conf->idle_timeout_ms ? conf->idle_timeout_ms : MTCP_DEFAULT_IDLE_TIMEOUT_MS;
    s->syn_backlog = conf->syn_backlog ? conf->syn_backlog : MTCP_DEFAULT_SYN_BACKLOG;
    s->challenge_ack_limit =
        conf->challenge_ack_limit ? conf->challenge_ack_limit : MTCP_DEFAULT_CHALLENGE_ACKS;
    s->tx_rate_Bps = (uint64_t)conf->tx_rate_mbps * 1000000u / 8u;
    s->shared_addr = conf->shared_addr != 0;
    s->frag_timeout_ms = conf->frag_timeout_ms ? conf->frag_timeout_ms : MTCP_FRAG_TIMEOUT_MS;
    s->sack = !conf->no_sack;
    s->delayed_ack = !conf->no_delayed_ack;
    s->cc_algo = TCP_CC_CUBIC;
    if (conf->congestion) {
        int cc = tcp_cc_from_name(conf->congestion, strlen(conf->congestion));
        if (cc < 0) {
            fail(err, errlen, "congestion: \"cubic\" or \"newreno\"");
            return -1;
        }
        s->cc_algo = cc;
    }
    if (conf->secret_seed) {
        /* tests: a key from the seed (splitmix64), so a stepped run repeats exactly */
        uint64_t x = conf->secret_seed;
        for (int i = 0; i < 2; i++) {
            uint64_t z = (x += 0x9e3779b97f4a7c15ull);
            z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
            z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
            s->isn_key[i] = z ^ (z >> 31);
        }
    } else if (getrandom(s->isn_key, sizeof(s->isn_key), 0) != sizeof(s->isn_key)) {
        fail(err, errlen, "getrandom failed");
        return -1;
    }
    return 0;
}

struct mtcp_stack *mtcp_stack_create(const struct mtcp_conf *conf, char *err, size_t errlen)
{
    char msg[256];
    struct mtcp_stack *s = calloc(1, sizeof(*s));
    if (!s) {
        errno = ENOMEM;
        fail(err, errlen, "out of memory");
        return NULL;
    }
    s->conf = *conf;
    s->conf.backend = s->s_backend = dup_or_null(conf->backend);
    s->conf.iface = s->s_iface = dup_or_null(conf->iface);
    s->conf.ip = s->s_ip = dup_or_null(conf->ip);
    s->conf.gateway = s->s_gateway = dup_or_null(conf->gateway);
    s->conf.mac = s->s_mac = dup_or_null(conf->mac);
    s->conf.tap_host_cidr = s->s_tap = dup_or_null(conf->tap_host_cidr);
    s->conf.pcap_path = s->s_pcap = dup_or_null(conf->pcap_path);
    s->conf.stats_path = s->s_stats = dup_or_null(conf->stats_path);

    if (stack_addresses(s, conf, err, errlen) < 0 || stack_buffers(s, conf, err, errlen) < 0 ||
        stack_tcp_settings(s, conf, err, errlen) < 0)
        goto einval;

    struct io_config ioc = {
        .backend = s->conf.backend,
        .iface = s->conf.iface,
        .nqueues = s->ncores,
        .fanout_group = conf->fanout_group,
        .pair = conf->pair,
        .pair_side = conf->pair_side,
        .tap_host_cidr = s->conf.tap_host_cidr,
        .pcap_path = s->conf.pcap_path,
        .afpacket_rx_copy = !conf->afpacket_rx_ring,
    };
    const char *iomsg = NULL;
    int rc = io_group_open(&s->io, &ioc, &iomsg);
    if (rc < 0) {
        snprintf(msg, sizeof(msg), "%s backend: %s", conf->backend,
                 iomsg ? iomsg : strerror(-rc));
        fail(err, errlen, msg);
        errno = -rc;
        mtcp_stack_destroy(s);
        return NULL;
    }
    if (conf->mac) {
        if (parse_mac(conf->mac, s->mac) < 0) {
            snprintf(msg, sizeof(msg), "mac: not a MAC address: %s", conf->mac);
            fail(err, errlen, msg);
            goto einval;
        }
        for (unsigned i = 0; i < s->io.n; i++)
            memcpy(s->io.devs[i].mac, s->mac, 6);
    } else {
        memcpy(s->mac, s->io.devs[0].mac, 6);
    }
    return s;
einval:
    mtcp_stack_destroy(s);
    errno = EINVAL;
    return NULL;
}

void mtcp_stack_destroy(struct mtcp_stack *s)
{
    if (!s)
        return;
    if (s->io.devs)
        io_group_close(&s->io);
    free(s->s_backend);
    free(s->s_iface);
    free(s->s_ip);
    free(s->s_gateway);
    free(s->s_mac);
    free(s->s_tap);
    free(s->s_pcap);
    free(s->s_stats);
    free(s);
}

unsigned mtcp_stack_ncores(struct mtcp_stack *s)
{
    return s->ncores;
}

int mtcp_stack_mac(struct mtcp_stack *s, char *out, size_t outlen)
{
    snprintf(out, outlen, "%02x:%02x:%02x:%02x:%02x:%02x", s->mac[0], s->mac[1], s->mac[2],
             s->mac[3], s->mac[4], s->mac[5]);
    return 0;
}

/* ---- small exports for the binding ---- */

int mtcp_stats_count(void)
{
    return MTCP_STAT__COUNT;
}

const char *mtcp_stats_name(int i)
{
    return mtcp_stats_name_of(i);
}

unsigned mtcp_flow_core(uint32_t saddr, uint32_t daddr, uint16_t sport, uint16_t dport,
                        unsigned ncores)
{
    return io_flow_core(saddr, daddr, sport, dport, ncores);
}

void *mtcp_pair_create(const struct mtcp_pair_faults *f)
{
    struct io_pair_faults pf = {f->seed, f->loss, f->duplicate, f->reorder, f->corrupt,
                                f->delay_us, f->jitter_us};
    return io_pair_create(&pf);
}

void mtcp_pair_destroy(void *pair)
{
    io_pair_destroy(pair);
}

void mtcp_pair_set_faults(void *pair, const struct mtcp_pair_faults *f)
{
    struct io_pair_faults pf = {f->seed, f->loss, f->duplicate, f->reorder, f->corrupt,
                                f->delay_us, f->jitter_us};
    io_pair_set_faults(pair, &pf);
}

void mtcp_pair_counters(void *pair, int side, struct mtcp_pair_counters *out)
{
    struct io_pair_counters c;
    io_pair_get_counters(pair, side, &c);
    out->sent = c.sent;
    out->delivered = c.delivered;
    out->lost = c.lost;
    out->duplicated = c.duplicated;
    out->reordered = c.reordered;
    out->corrupted = c.corrupted;
    out->overflow = c.overflow;
    out->targeted = c.targeted;
}

int mtcp_pair_drop_next(void *pair, int side, unsigned mask, unsigned value, unsigned count,
                        unsigned min_payload, unsigned max_payload)
{
    if (mask > 0xff || value > 0xff) {
        errno = EINVAL;
        return -1;
    }
    int rc = io_pair_drop_next(pair, side, (uint8_t)mask, (uint8_t)value, count, min_payload,
                               max_payload);
    if (rc < 0) {
        errno = -rc;
        return -1;
    }
    return 0;
}

int mtcp_pair_inject(void *pair, int side, const void *frame, size_t len, uint64_t now_ns)
{
    int rc = len > UINT32_MAX ? -EMSGSIZE
                              : io_pair_inject(pair, side, frame, (uint32_t)len, now_ns);
    if (rc < 0) {
        errno = -rc;
        return -1;
    }
    return 0;
}

int mtcp_pair_take(void *pair, int side, void *buf, size_t cap, uint64_t now_ns)
{
    uint32_t c = cap > UINT32_MAX ? UINT32_MAX : (uint32_t)cap;
    int rc = io_pair_take(pair, side, buf, c, now_ns);
    if (rc < 0) {
        errno = -rc;
        return -1;
    }
    return rc;
}

uint64_t mtcp_pair_next_due(void *pair, int side)
{
    return io_pair_next_due(pair, side);
}
