/* Tests of the afpacket backend on a veth between two network namespaces it
 * creates itself (iot-a: the stack side, iot-b: the peer), 198.18.0.0/15 only.
 * Needs root (CAP_NET_ADMIN + CAP_NET_RAW + CAP_SYS_ADMIN for setns). */
// Build and run from the repository root:
//   gcc -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -O2 -Imtcp_core/src -o /tmp/test_io_afpacket tests/c/test_io_afpacket.c mtcp_core/src/io/*.c && /tmp/test_io_afpacket
// With sanitizers add: -g -fsanitize=address,undefined -fno-omit-frame-pointer
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <net/if.h>
#include <netinet/in.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/wait.h>

#include "io_test.h"

#define NS_A "iot-a"
#define NS_B "iot-b"
#define IF_A "iot-va"
#define IF_B "iot-vb"
#define IP_A 0xc6120002u /* 198.18.0.2: the stack */
#define IP_B 0xc6120001u /* 198.18.0.1: the peer's kernel */
#define NCORES 2

static void cleanup(void)
{
    t_leave_netns();
    t_sh("ip netns del " NS_A " 2>/dev/null; ip netns del " NS_B " 2>/dev/null");
}

static int setup(void)
{
    cleanup();
    if (t_sh("ip netns add " NS_A " && ip netns add " NS_B
             " && ip -n " NS_A " link add " IF_A " type veth peer name " IF_B " netns " NS_B
             " && ip -n " NS_A " link set " IF_A " up && ip -n " NS_B " link set " IF_B " up"
             " && ip -n " NS_B " addr add 198.18.0.1/24 dev " IF_B) != 0)
        return -1;
    return 0;
}

/* ---- the peer side (sockets created inside iot-b) ---- */

struct peer {
    int raw;     /* AF_PACKET sender */
    int sniff;   /* AF_PACKET ETH_P_ALL receiver, ignores its own output */
    int udp;     /* kernel UDP socket bound to 198.18.0.1:9000 */
    int ifindex;
    uint8_t mac[6];
};

static int peer_open(struct peer *p)
{
    if (t_enter_netns(NS_B) < 0)
        return -1;
    p->ifindex = (int)if_nametoindex(IF_B);
    p->raw = socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, 0);
    p->sniff = socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC | SOCK_NONBLOCK, htons(ETH_P_ALL));
    p->udp = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    struct sockaddr_ll sll = {.sll_family = AF_PACKET, .sll_ifindex = p->ifindex,
                              .sll_protocol = htons(ETH_P_ALL)};
    int one = 1;
    int ok = p->raw >= 0 && p->sniff >= 0 && p->udp >= 0 &&
             bind(p->sniff, (struct sockaddr *)&sll, sizeof sll) == 0 &&
             setsockopt(p->sniff, SOL_PACKET, PACKET_IGNORE_OUTGOING, &one, sizeof one) == 0;
    sll.sll_protocol = 0;
    ok = ok && bind(p->raw, (struct sockaddr *)&sll, sizeof sll) == 0;
    /* A whole TX burst lands in softirq before we read: room for all of it. */
    int big = 8 << 20;
    ok = ok && setsockopt(p->sniff, SOL_SOCKET, SO_RCVBUFFORCE, &big, sizeof big) == 0 &&
         setsockopt(p->udp, SOL_SOCKET, SO_RCVBUFFORCE, &big, sizeof big) == 0;
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons(9000),
                              .sin_addr.s_addr = htonl(IP_B)};
    ok = ok && bind(p->udp, (struct sockaddr *)&sin, sizeof sin) == 0;
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    snprintf(ifr.ifr_name, IFNAMSIZ, "%s", IF_B);
    ok = ok && ioctl(p->udp, SIOCGIFHWADDR, &ifr) == 0;
    memcpy(p->mac, ifr.ifr_hwaddr.sa_data, 6);
    t_enter_netns(NS_A);
    return ok ? 0 : -1;
}

static void peer_close(struct peer *p)
{
    close(p->raw);
    close(p->sniff);
    close(p->udp);
}

static void peer_send(struct peer *p, const uint8_t *f, uint32_t len)
{
    if (send(p->raw, f, len, 0) != (ssize_t)len)
        perror("peer send");
}

/* ---- the stack side ---- */

static int open_group(struct io_group *g, unsigned n)
{
    struct io_config cfg = {.backend = "afpacket", .iface = IF_A, .nqueues = n};
    const char *msg = NULL;
    int rc = io_group_open(g, &cfg, &msg);
    if (rc < 0) {
        fprintf(stderr, "io_group_open: %d %s\n", rc, msg ? msg : "");
        return rc;
    }
    for (unsigned i = 0; i < n; i++)
        if ((rc = io_dev_start(&g->devs[i])) < 0) {
            fprintf(stderr, "io_dev_start(%u): %d\n", i, rc);
            return rc;
        }
    return 0;
}

/* The core io_flow_core() assigns to an IPv4 frame (ports 0 for non-TCP/UDP
 * and fragments, as the fanout program does). */
static unsigned expect_core(const uint8_t *f, unsigned n)
{
    const uint8_t *ip = f + 14;
    unsigned ihl = (ip[0] & 0xfu) * 4;
    uint16_t sport = 0, dport = 0;
    if ((ip[9] == 6 || ip[9] == 17) && (rd16(ip + 6) & 0x3fff) == 0) {
        sport = rd16(ip + ihl);
        dport = rd16(ip + ihl + 2);
    }
    return io_flow_core(rd32(ip + 12), rd32(ip + 16), sport, dport, n);
}

struct rx_stats {
    unsigned ip_total, ip_wrong_core, arp, own, marked, csum_partial, csum_valid, csum_none;
    unsigned per_core[NCORES];
    unsigned arp_per_core[NCORES];
    unsigned marked_seen[4096];
};

#define MARK 0x696f7421u /* "iot!" at the start of test payloads */

static void account(struct rx_stats *s, unsigned core, const struct io_frame *fr,
                    const uint8_t own_mac[6], unsigned n)
{
    const uint8_t *f = fr->data;
    if (fr->len < 14)
        return;
    if (memcmp(f + 6, own_mac, 6) == 0)
        s->own++;
    uint16_t type = rd16(f + 12);
    if (type == 0x0806) {
        s->arp++;
        s->arp_per_core[core]++;
        return;
    }
    if (type != 0x0800)
        return;
    s->ip_total++;
    s->per_core[core]++;
    if (expect_core(f, n) != core)
        s->ip_wrong_core++;
    if (fr->flags & IO_FRAME_CSUM_PARTIAL)
        s->csum_partial++;
    else if (fr->flags & IO_FRAME_CSUM_VALID)
        s->csum_valid++;
    else
        s->csum_none++;
    const uint8_t *ip = f + 14;
    unsigned ihl = (ip[0] & 0xfu) * 4;
    unsigned l4 = ip[9] == 6 ? 20 : 8;
    if (fr->len >= 14 + ihl + l4 + 8 && rd32(f + 14 + ihl + l4) == MARK) {
        uint32_t idx = rd32(f + 14 + ihl + l4 + 4);
        s->marked++;
        if (idx < 4096)
            s->marked_seen[idx]++;
    }
}

/* Receive on every core of g until `want` IPv4+ARP frames arrived or the
 * timeout passes; max_burst exercises partial block walks. */
static void receive(struct io_group *g, struct rx_stats *s, unsigned want, unsigned timeout_ms,
                    int max_burst, const uint8_t own_mac[6])
{
    int ep = epoll_create1(EPOLL_CLOEXEC);
    for (unsigned i = 0; i < g->n; i++) {
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = i};
        epoll_ctl(ep, EPOLL_CTL_ADD, g->devs[i].ops->poll_fd(&g->devs[i]), &ev);
    }
    uint64_t deadline = t_now_ns() + (uint64_t)timeout_ms * 1000000ull;
    struct io_frame fr[64];
    while (t_now_ns() < deadline && s->ip_total + s->arp < want) {
        int got = 0;
        for (unsigned c = 0; c < g->n; c++) {
            struct io_dev *d = &g->devs[c];
            /* Several bursts before one rx_done, as a stack round may do. */
            for (int k = 0; k < 3; k++) {
                int n = io_rx_burst(d, fr, max_burst);
                for (int i = 0; i < n; i++)
                    account(s, c, &fr[i], own_mac, g->n);
                got += n;
                if (n == 0)
                    break;
            }
            io_rx_done(d);
        }
        if (got == 0) {
            struct epoll_event ev[4];
            epoll_wait(ep, ev, 4, 20);
        }
    }
    close(ep);
}

static uint64_t rng_state = 0x1234567;
static uint32_t rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)rng_state;
}

/* Crafted frames of many flows, from the peer's AF_PACKET socket. */
static void test_fanout_crafted(struct io_group *g, struct peer *p)
{
    const unsigned N = 3000;
    uint8_t f[256], payload[16];
    unsigned icmp = 0, frags = 0, opts = 0;
    for (unsigned i = 0; i < N; i++) {
        uint32_t r = rnd();
        uint8_t proto = r % 20 == 0 ? 1 : (r & 1) ? 6 : 17;
        unsigned ihl = (rnd() % 3 == 0) ? 5 + rnd() % 4 : 5;
        uint32_t saddr = 0xc6120000u | (rnd() & 0x1ffffu); /* 198.18.0.0/15 */
        uint16_t sport = (uint16_t)(1024 + rnd() % 64000);
        uint16_t dport = (rnd() & 1) ? 80 : (uint16_t)(1024 + rnd() % 64000);
        wr32(payload, MARK);
        wr32(payload + 4, i);
        memset(payload + 8, 0, 8);
        uint32_t len = t_build_ip(f, g->devs[0].mac, p->mac, proto, saddr, IP_A, sport, dport,
                                  ihl, payload, sizeof payload);
        if (proto == 17 && rnd() % 10 == 0) {
            f[14 + 6] |= 0x20; /* MF: a first fragment hashes without ports */
            frags++;
        }
        icmp += proto == 1;
        opts += ihl > 5;
        peer_send(p, f, len);
    }
    static struct rx_stats s;
    memset(&s, 0, sizeof s);
    receive(g, &s, N, 3000, 64, g->devs[0].mac);
    unsigned missing = 0, dup = 0;
    for (unsigned i = 0; i < N; i++) {
        missing += s.marked_seen[i] == 0;
        dup += s.marked_seen[i] > 1;
    }
    printf("afpacket crafted: %u frames (%u ICMP, %u fragments, %u with IP options): "
           "core0 %u core1 %u, wrong core %u, missing %u, dup %u; flags: CSUM_PARTIAL %u, "
           "CSUM_VALID %u, none %u\n",
           N, icmp, frags, opts, s.per_core[0], s.per_core[1], s.ip_wrong_core, missing, dup,
           s.csum_partial, s.csum_valid, s.csum_none);
    CHECK(s.marked == N && missing == 0 && dup == 0, "all %u crafted frames once (got %u)", N,
          s.marked);
    CHECK(s.ip_wrong_core == 0, "%u frames on the wrong core", s.ip_wrong_core);
    CHECK(s.per_core[0] > N / 4 && s.per_core[1] > N / 4, "both cores used: %u/%u",
          s.per_core[0], s.per_core[1]);
    CHECK(s.arp == 0, "no ARP in this test: %u", s.arp);
}

/* ARP frames reach every core, each exactly once. */
static void test_arp_all_cores(struct io_group *g, struct peer *p)
{
    uint8_t f[64];
    static const uint8_t bcast[6] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
    static const uint8_t zero[6] = {0};
    for (unsigned i = 0; i < 5; i++) {
        uint32_t len = t_build_arp(f, 1, bcast, p->mac, IP_B, zero, IP_A);
        peer_send(p, f, len);
        len = t_build_arp(f, 2, g->devs[0].mac, p->mac, IP_B + 100 + i, g->devs[0].mac, IP_A);
        peer_send(p, f, len);
    }
    static struct rx_stats s;
    memset(&s, 0, sizeof s);
    receive(g, &s, 10 * NCORES, 2000, 64, g->devs[0].mac);
    printf("afpacket ARP: core0 %u core1 %u\n", s.arp_per_core[0], s.arp_per_core[1]);
    CHECK(s.arp_per_core[0] == 10 && s.arp_per_core[1] == 10, "ARP per core %u/%u",
          s.arp_per_core[0], s.arp_per_core[1]);
    CHECK(s.ip_total == 0, "ARP did not go through the fanout (%u IPv4)", s.ip_total);
}

/* Datagrams sent by the peer's kernel: checksum offload flags, and flows of a
 * real stack (many source ports). */
static void test_kernel_udp(struct io_group *g)
{
    char cmd[160];
    const uint8_t *m = g->devs[0].mac;
    snprintf(cmd, sizeof cmd,
             "ip -n " NS_B " neigh replace 198.18.0.2 lladdr %02x:%02x:%02x:%02x:%02x:%02x dev "
             IF_B, m[0], m[1], m[2], m[3], m[4], m[5]);
    CHECK(t_sh("%s", cmd) == 0, "static neighbour");
    if (t_enter_netns(NS_B) < 0)
        return;
    const unsigned N = 400;
    uint8_t payload[100];
    for (unsigned i = 0; i < N; i++) {
        int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        struct sockaddr_in src = {.sin_family = AF_INET, .sin_port = htons((uint16_t)(20000 + i)),
                                  .sin_addr.s_addr = htonl(IP_B)};
        struct sockaddr_in dst = {.sin_family = AF_INET,
                                  .sin_port = htons((uint16_t)(80 + (i % 3) * 1000)),
                                  .sin_addr.s_addr = htonl(IP_A)};
        wr32(payload, MARK);
        wr32(payload + 4, i);
        memset(payload + 8, (int)i, sizeof payload - 8);
        if (bind(s, (struct sockaddr *)&src, sizeof src) < 0 ||
            sendto(s, payload, sizeof payload, 0, (struct sockaddr *)&dst, sizeof dst) < 0)
            perror("udp send");
        close(s);
    }
    t_enter_netns(NS_A);
    static struct rx_stats s;
    memset(&s, 0, sizeof s);
    receive(g, &s, N, 3000, 64, g->devs[0].mac);
    printf("afpacket kernel UDP: %u frames, core0 %u core1 %u, wrong core %u, flags: "
           "CSUM_PARTIAL %u, CSUM_VALID %u, none %u\n",
           s.ip_total, s.per_core[0], s.per_core[1], s.ip_wrong_core, s.csum_partial,
           s.csum_valid, s.csum_none);
    CHECK(s.marked == N && s.ip_wrong_core == 0, "kernel UDP: %u of %u, %u wrong core",
          s.marked, N, s.ip_wrong_core);
}

/* TX ring: frames from both cores reach the peer's kernel (which verifies the
 * checksums) and its sniffer; an ARP request we send is answered, and the
 * answer reaches both cores; our own frames never come back to us. */
static void test_tx(struct io_group *g, struct peer *p)
{
    static uint8_t bufs[NCORES][200][128];
    struct io_frame fr[200];
    const unsigned per_core = 150;
    unsigned accepted = 0;
    for (unsigned c = 0; c < NCORES; c++) {
        for (unsigned i = 0; i < per_core; i++) {
            uint8_t payload[16];
            wr32(payload, MARK);
            wr32(payload + 4, c * 1000 + i);
            memset(payload + 8, 0, 8);
            fr[i].len = t_build_ip(bufs[c][i], p->mac, g->devs[c].mac, 17, IP_A, IP_B,
                                   (uint16_t)(40000 + c * 1000 + i), 9000, 5, payload,
                                   sizeof payload);
            fr[i].data = bufs[c][i];
            fr[i].flags = 0;
        }
        accepted += (unsigned)io_tx_burst(&g->devs[c], fr, (int)per_core);
    }
    CHECK(accepted == NCORES * per_core, "tx accepted %u", accepted);
    /* ARP request for the peer through core 1's TX path. */
    static const uint8_t bcast[6] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
    static const uint8_t zero[6] = {0};
    uint8_t arp[64];
    struct io_frame af = {.data = arp,
                          .len = t_build_arp(arp, 1, bcast, g->devs[1].mac, IP_A, zero, IP_B)};
    CHECK(io_tx_burst(&g->devs[1], &af, 1) == 1, "ARP tx accepted");

    unsigned udp_got = 0, sniffed = 0, sniffed_arp = 0;
    uint64_t deadline = t_now_ns() + 2000000000ull;
    uint8_t buf[2048];
    while (t_now_ns() < deadline && (udp_got < accepted || sniffed < accepted + 1)) {
        ssize_t r;
        while ((r = recv(p->udp, buf, sizeof buf, 0)) > 0)
            if (r == 16 && rd32(buf) == MARK)
                udp_got++;
        while ((r = recv(p->sniff, buf, sizeof buf, 0)) > 0) {
            if (r >= 42 && rd16(buf + 12) == 0x0806 && rd16(buf + 20) == 1 &&
                memcmp(buf + 6, g->devs[1].mac, 6) == 0) {
                sniffed_arp++;
                sniffed++;
            } else if (r >= 14 + 28 + 8 && rd16(buf + 12) == 0x0800 &&
                       rd32(buf + 14 + 28) == MARK && t_l4_csum_ok(buf, (uint32_t)r)) {
                sniffed++;
            }
        }
        t_sleep_ms(2);
    }
    printf("afpacket TX: dev tx_frames %llu/%llu, tx_dropped %llu/%llu\n",
           (unsigned long long)g->devs[0].tx_frames, (unsigned long long)g->devs[1].tx_frames,
           (unsigned long long)g->devs[0].tx_dropped, (unsigned long long)g->devs[1].tx_dropped);
    printf("afpacket TX: %u UDP datagrams reached the peer's socket, sniffer saw %u frames "
           "(%u ARP)\n", udp_got, sniffed, sniffed_arp);
    CHECK(udp_got == accepted, "peer UDP socket got %u of %u", udp_got, accepted);
    CHECK(sniffed_arp == 1, "ARP request seen by the peer: %u", sniffed_arp);

    /* The peer kernel answers the ARP request: the reply reaches both cores;
     * none of our own frames come back. */
    static struct rx_stats s;
    memset(&s, 0, sizeof s);
    receive(g, &s, NCORES, 2000, 64, g->devs[0].mac);
    t_sleep_ms(20);
    receive(g, &s, 1000, 50, 64, g->devs[0].mac);
    CHECK(s.arp_per_core[0] == 1 && s.arp_per_core[1] == 1, "ARP reply on both cores: %u/%u",
          s.arp_per_core[0], s.arp_per_core[1]);
    CHECK(s.own == 0, "own frames seen on RX: %u", s.own);
}

/* Many more frames than the ring holds, received with small bursts: blocks
 * wrap around and are given back in order. */
static void test_ring_wrap(struct peer *p)
{
    struct io_group g;
    struct io_config cfg = {.backend = "afpacket", .iface = IF_A, .nqueues = 1,
                            .ring_frames = 64};
    const char *msg = NULL;
    int rc = io_group_open(&g, &cfg, &msg);
    CHECK(rc == 0, "open 1 core: %d %s", rc, msg ? msg : "");
    if (rc < 0)
        return;
    CHECK(io_dev_start(&g.devs[0]) == 0, "start");
    const unsigned N = 4000; /* 8 blocks of 256 KiB hold ~1400 of these */
    static uint8_t f[1500];
    uint8_t payload[1200];
    static struct rx_stats s;
    memset(&s, 0, sizeof s);
    for (unsigned i = 0; i < N; i++) {
        wr32(payload, MARK);
        wr32(payload + 4, i);
        memset(payload + 8, (int)i, sizeof payload - 8);
        uint32_t len = t_build_ip(f, g.devs[0].mac, p->mac, 17, IP_B, IP_A, 5000, 6000, 5,
                                  payload, sizeof payload);
        peer_send(p, f, len);
        if (i % 500 == 499)
            receive(&g, &s, s.ip_total + 500, 200, 7, g.devs[0].mac);
    }
    receive(&g, &s, N, 2000, 7, g.devs[0].mac);
    unsigned missing = 0;
    for (unsigned i = 0; i < N; i++)
        missing += s.marked_seen[i] != 1;
    CHECK(s.marked == N && missing == 0, "ring wrap: %u of %u, %u missing", s.marked, N, missing);
    io_group_close(&g);
}

/* The production layout: open in the parent, start core 1 in a forked child. */
static void test_fork(struct peer *p)
{
    struct io_group g;
    /* pcap without "%u" on a 2-core group: each core writes <path>.<core>. */
    char tmpl[] = "/tmp/iot-afp-XXXXXX";
    char *dir = mkdtemp(tmpl);
    char pcap[64], pcap0[80], pcap1[80];
    snprintf(pcap, sizeof pcap, "%s/c.pcap", dir ? dir : "/tmp");
    snprintf(pcap0, sizeof pcap0, "%s.0", pcap);
    snprintf(pcap1, sizeof pcap1, "%s.1", pcap);
    struct io_config cfg = {.backend = "afpacket", .iface = IF_A, .nqueues = NCORES,
                            .pcap_path = pcap};
    const char *msg = NULL;
    int rc = io_group_open(&g, &cfg, &msg);
    CHECK(rc == 0, "open: %d %s", rc, msg ? msg : "");
    if (rc < 0)
        return;
    int ready[2], go[2];
    if (pipe(ready) < 0 || pipe(go) < 0)
        return;
    const unsigned N = 1000;
    /* Which core each frame belongs to (same flows in parent and child). */
    uint32_t saddr[1000];
    uint16_t sport[1000];
    unsigned want[NCORES] = {0};
    for (unsigned i = 0; i < N; i++) {
        saddr[i] = 0xc6130000u | (rnd() & 0xffffu);
        sport[i] = (uint16_t)(1024 + rnd() % 60000);
        want[io_flow_core(saddr[i], IP_A, sport[i], 443, NCORES)]++;
    }
    pid_t pid = fork();
    if (pid == 0) {
        int ok = io_dev_start(&g.devs[1]) == 0;
        char c = 1;
        if (write(ready[1], &c, 1) != 1)
            _exit(3);
        static struct rx_stats s;
        memset(&s, 0, sizeof s);
        struct io_group one = {.cfg = g.cfg, .n = 1, .devs = &g.devs[1]};
        /* receive() numbers the cores from 0: account against core 1 by hand. */
        uint64_t deadline = t_now_ns() + 3000000000ull;
        struct io_frame fr[64];
        unsigned got = 0, wrong = 0;
        while (t_now_ns() < deadline && got < want[1]) {
            int n = io_rx_burst(one.devs, fr, 64);
            for (int i = 0; i < n; i++) {
                if (rd16(fr[i].data + 12) != 0x0800)
                    continue;
                got++;
                wrong += expect_core(fr[i].data, NCORES) != 1;
            }
            io_rx_done(one.devs);
            if (n == 0)
                t_sleep_ms(1);
        }
        io_group_close(&g); /* flushes core 1's pcap; the parent keeps its own fds */
        _exit(ok && got == want[1] && wrong == 0 ? 0 : 1);
    }
    char c;
    CHECK(read(ready[0], &c, 1) == 1, "child started");
    CHECK(io_dev_start(&g.devs[0]) == 0, "parent start");
    uint8_t f[128], payload[8];
    for (unsigned i = 0; i < N; i++) {
        wr32(payload, MARK);
        wr32(payload + 4, i);
        uint32_t len = t_build_ip(f, g.devs[0].mac, p->mac, 6, saddr[i], IP_A, sport[i], 443, 5,
                                  payload, sizeof payload);
        peer_send(p, f, len);
    }
    unsigned got = 0, wrong = 0;
    uint64_t deadline = t_now_ns() + 3000000000ull;
    struct io_frame fr[64];
    while (t_now_ns() < deadline && got < want[0]) {
        int n = io_rx_burst(&g.devs[0], fr, 64);
        for (int i = 0; i < n; i++) {
            if (rd16(fr[i].data + 12) != 0x0800)
                continue;
            got++;
            wrong += expect_core(fr[i].data, NCORES) != 0;
        }
        io_rx_done(&g.devs[0]);
        if (n == 0)
            t_sleep_ms(1);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    printf("afpacket fork: parent core 0 got %u/%u, child core 1 %s\n", got, want[0],
           WIFEXITED(status) && WEXITSTATUS(status) == 0 ? "ok" : "FAILED");
    CHECK(got == want[0] && wrong == 0, "parent core 0: %u of %u, %u wrong", got, want[0], wrong);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child on core 1: status %d", status);
    close(ready[0]);
    close(ready[1]);
    close(go[0]);
    close(go[1]);
    io_group_close(&g);
    long r0 = t_pcap_records(pcap0), r1 = t_pcap_records(pcap1);
    printf("afpacket fork: pcap records core0 %ld core1 %ld\n", r0, r1);
    CHECK(r0 == (long)want[0] && r1 == (long)want[1], "pcap per core: %ld/%ld, want %u/%u", r0,
          r1, want[0], want[1]);
    if (t_sh("command -v tcpdump >/dev/null") == 0)
        CHECK(t_sh("tcpdump -nn -r %s 2>/dev/null | grep -q '198.19.* > 198.18.0.2.443: Flags'",
                   pcap1) == 0,
              "tcpdump reads %s", pcap1);
    unlink(pcap0);
    unlink(pcap1);
    if (dir)
        rmdir(dir);
}

static void test_errors(void)
{
    struct io_group g;
    const char *msg = NULL;
    struct io_config cfg = {.backend = "afpacket", .iface = "iot-nonexist", .nqueues = 2};
    int rc = io_group_open(&g, &cfg, &msg);
    CHECK(rc == -ENODEV && msg && strstr(msg, "no such interface"), "missing iface: %d %s", rc,
          msg ? msg : "");
    t_sh("ip link set " IF_A " down");
    cfg.iface = IF_A;
    rc = io_group_open(&g, &cfg, &msg);
    CHECK(rc == -ENETDOWN && msg && strstr(msg, "down"), "down iface: %d %s", rc, msg ? msg : "");
    t_sh("ip link set " IF_A " up");
    /* Without privileges: the message names the capability. */
    t_check_unprivileged_open(&cfg, EPERM, EPERM, "CAP_NET_RAW");
}

int main(void)
{
    if (!t_start_as_root())
        return 0;
    if (setup() < 0 || t_enter_netns(NS_A) < 0) {
        fprintf(stderr, "cannot create the namespaces/veth\n");
        cleanup();
        return 1;
    }
    atexit(cleanup);
    struct peer p;
    CHECK(peer_open(&p) == 0, "peer sockets");
    struct io_group g;
    int rc = open_group(&g, NCORES);
    CHECK(rc == 0, "open %d cores", NCORES);
    if (rc == 0) {
        CHECK(g.devs[0].mtu == 1500 && memcmp(g.devs[0].mac, g.devs[1].mac, 6) == 0 &&
                  g.devs[0].has_peer_mac == 0,
              "mac/mtu");
        test_fanout_crafted(&g, &p);
        test_arp_all_cores(&g, &p);
        test_kernel_udp(&g);
        test_tx(&g, &p);
        io_group_close(&g);
    }
    test_ring_wrap(&p);
    test_fork(&p);
    test_errors();
    peer_close(&p);
    return t_summary();
}
