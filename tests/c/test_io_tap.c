/* Tests of the tap backend inside a network namespace it creates (iot-t), with
 * 198.18.1.0/24 on the host side. Needs root (CAP_NET_ADMIN, setns). */
// Build and run from the repository root:
//   gcc -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -O2 -Imtcp_core/src -o /tmp/test_io_tap tests/c/test_io_tap.c mtcp_core/src/io/*.c && /tmp/test_io_tap
// With sanitizers add: -g -fsanitize=address,undefined -fno-omit-frame-pointer
#include <net/if.h>
#include <netinet/in.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/wait.h>

#include "io_test.h"

#define NS_T "iot-t"
#define TAP "iot-tap0"
#define HOST_IP 0xc6120101u  /* 198.18.1.1 */
#define STACK_IP 0xc6120102u /* 198.18.1.2 */
#define NQ 2

static void cleanup(void)
{
    t_leave_netns();
    t_sh("ip netns del " NS_T " 2>/dev/null");
}

/* Wait for a frame on any queue that `match` accepts; copy it out. */
typedef int (*match_fn)(const uint8_t *f, uint32_t len, const void *arg);

static int wait_frame(struct io_group *g, match_fn match, const void *arg, uint8_t *out,
                      uint32_t *out_len, unsigned *out_q, unsigned timeout_ms, unsigned *others)
{
    int ep = epoll_create1(EPOLL_CLOEXEC);
    for (unsigned i = 0; i < g->n; i++) {
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = i};
        epoll_ctl(ep, EPOLL_CTL_ADD, g->devs[i].ops->poll_fd(&g->devs[i]), &ev);
    }
    uint64_t deadline = t_now_ns() + (uint64_t)timeout_ms * 1000000ull;
    int found = 0;
    struct io_frame fr[16];
    while (!found && t_now_ns() < deadline) {
        struct epoll_event ev[4];
        epoll_wait(ep, ev, 4, 20);
        for (unsigned q = 0; q < g->n; q++) {
            int n = io_rx_burst(&g->devs[q], fr, 16);
            for (int i = 0; i < n; i++) {
                if (!found && match(fr[i].data, fr[i].len, arg)) {
                    memcpy(out, fr[i].data, fr[i].len);
                    *out_len = fr[i].len;
                    *out_q = q;
                    found = 1;
                    if (fr[i].flags != 0)
                        fprintf(stderr, "unexpected flags %#x on a tap frame\n", fr[i].flags);
                } else if (others) {
                    (*others)++;
                }
            }
            io_rx_done(&g->devs[q]);
        }
    }
    close(ep);
    return found;
}

static int is_arp_request_for_stack(const uint8_t *f, uint32_t len, const void *arg)
{
    (void)arg;
    return len >= 42 && rd16(f + 12) == 0x0806 && rd16(f + 20) == 1 &&
           rd32(f + 38) == STACK_IP;
}

struct l4match {
    uint8_t proto;
    uint16_t sport;
};

static int is_l4_to_stack(const uint8_t *f, uint32_t len, const void *arg)
{
    const struct l4match *m = arg;
    if (len < 14 + 20 + 8 || rd16(f + 12) != 0x0800)
        return 0;
    const uint8_t *ip = f + 14;
    unsigned ihl = (ip[0] & 0xfu) * 4;
    return ip[9] == m->proto && rd32(ip + 16) == STACK_IP && rd16(ip + ihl) == m->sport;
}

static void test_tap(void)
{
    struct io_group g;
    struct io_config cfg = {.backend = "tap", .iface = TAP, .nqueues = NQ,
                            .tap_host_cidr = "198.18.1.1/24"};
    const char *msg = NULL;
    int rc = io_group_open(&g, &cfg, &msg);
    CHECK(rc == 0, "open tap: %d %s", rc, msg ? msg : "");
    if (rc < 0)
        return;
    for (unsigned i = 0; i < NQ; i++)
        CHECK(io_dev_start(&g.devs[i]) == 0, "start %u", i);

    /* Host side as the kernel sees it. */
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    snprintf(ifr.ifr_name, IFNAMSIZ, TAP);
    CHECK(ioctl(s, SIOCGIFADDR, &ifr) == 0 &&
              ntohl(((struct sockaddr_in *)(void *)&ifr.ifr_addr)->sin_addr.s_addr) == HOST_IP,
          "host address 198.18.1.1");
    CHECK(ioctl(s, SIOCGIFNETMASK, &ifr) == 0 &&
              ntohl(((struct sockaddr_in *)(void *)&ifr.ifr_netmask)->sin_addr.s_addr) ==
                  0xffffff00u,
          "netmask /24");
    CHECK(ioctl(s, SIOCGIFFLAGS, &ifr) == 0 && (ifr.ifr_flags & IFF_UP), "link up");
    CHECK(ioctl(s, SIOCGIFHWADDR, &ifr) == 0 &&
              memcmp(ifr.ifr_hwaddr.sa_data, g.devs[0].peer_mac, 6) == 0 &&
              g.devs[0].has_peer_mac == 1,
          "peer_mac = host side MAC");
    close(s);
    uint8_t host_mac[6];
    memcpy(host_mac, g.devs[0].peer_mac, 6);
    const uint8_t *mac = g.devs[0].mac;
    CHECK(mac[0] == 0x02 && mac[1] == 0x6d && mac[2] == 0x74 &&
              memcmp(g.devs[0].mac, g.devs[1].mac, 6) == 0 && memcmp(mac, host_mac, 6) != 0 &&
              g.devs[0].mtu == 1500,
          "stack MAC 02:6d:74:.. on every queue, mtu %u", g.devs[0].mtu);

    /* The host sends a datagram to the stack: first it asks for our MAC. */
    int u = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    struct sockaddr_in hs = {.sin_family = AF_INET, .sin_port = htons(5555),
                             .sin_addr.s_addr = htonl(HOST_IP)};
    struct sockaddr_in st = {.sin_family = AF_INET, .sin_port = htons(7777),
                             .sin_addr.s_addr = htonl(STACK_IP)};
    CHECK(bind(u, (struct sockaddr *)&hs, sizeof hs) == 0, "bind host UDP");
    char big[1400];
    memset(big, 'x', sizeof big);
    CHECK(sendto(u, big, sizeof big, 0, (struct sockaddr *)&st, sizeof st) == (ssize_t)sizeof big,
          "host sendto");
    uint8_t f[2048];
    uint32_t len = 0;
    unsigned q = 0, others = 0;
    int got = wait_frame(&g, is_arp_request_for_stack, NULL, f, &len, &q, 3000, &others);
    CHECK(got && memcmp(f + 6, host_mac, 6) == 0, "ARP request from the host arrived (queue %u)",
          q);
    printf("tap: ARP request for 198.18.1.2 arrived on queue %u (%u other frames seen)\n", q,
           others);
    if (!got)
        goto out;
    /* Answer it, on the queue it came in. */
    uint8_t reply[64];
    struct io_frame rf = {.data = reply,
                          .len = t_build_arp(reply, 2, host_mac, mac, STACK_IP, host_mac, HOST_IP)};
    CHECK(io_tx_burst(&g.devs[q], &rf, 1) == 1, "ARP reply written");
    /* Now the datagram comes, complete with its checksum. */
    struct l4match m = {.proto = 17, .sport = 5555};
    got = wait_frame(&g, is_l4_to_stack, &m, f, &len, &q, 3000, NULL);
    CHECK(got && len == 14 + 20 + 8 + sizeof big && memcmp(f, mac, 6) == 0,
          "UDP datagram to the stack (len %u)", len);
    CHECK(got && t_l4_csum_ok(f, len), "UDP checksum complete (no vnet header, no offload)");

    /* A TCP SYN from the host (TCP hands out CHECKSUM_PARTIAL skbs): also complete. */
    int t = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    struct sockaddr_in ts = {.sin_family = AF_INET, .sin_port = htons(5556),
                             .sin_addr.s_addr = htonl(HOST_IP)};
    struct sockaddr_in td = {.sin_family = AF_INET, .sin_port = htons(80),
                             .sin_addr.s_addr = htonl(STACK_IP)};
    bind(t, (struct sockaddr *)&ts, sizeof ts);
    connect(t, (struct sockaddr *)&td, sizeof td);
    m = (struct l4match){.proto = 6, .sport = 5556};
    got = wait_frame(&g, is_l4_to_stack, &m, f, &len, &q, 3000, NULL);
    CHECK(got && t_l4_csum_ok(f, len), "TCP SYN arrived with a complete checksum (queue %u)", q);
    close(t);

    /* Several flows: which queues do they land on? (informational) */
    unsigned perq[NQ] = {0};
    for (unsigned i = 0; i < 16; i++) {
        int s2 = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)(6000 + i)),
                                .sin_addr.s_addr = htonl(HOST_IP)};
        bind(s2, (struct sockaddr *)&a, sizeof a);
        sendto(s2, "hi", 2, 0, (struct sockaddr *)&st, sizeof st);
        close(s2);
        m = (struct l4match){.proto = 17, .sport = (uint16_t)(6000 + i)};
        if (wait_frame(&g, is_l4_to_stack, &m, f, &len, &q, 1000, NULL)) {
            perq[q]++;
            CHECK(t_l4_csum_ok(f, len), "flow %u checksum", i);
        }
    }
    printf("tap: 16 host flows landed on queues: q0 %u, q1 %u\n", perq[0], perq[1]);
    CHECK(perq[0] + perq[1] == 16, "all 16 flows arrived");

    /* The stack writes datagrams to the host, one per queue. */
    uint8_t out[NQ][128];
    for (unsigned i = 0; i < NQ; i++) {
        uint8_t payload[8] = {'f', 'r', 'o', 'm', ' ', 'q', (uint8_t)('0' + i), 0};
        struct io_frame of = {.data = out[i]};
        of.len = t_build_ip(out[i], host_mac, mac, 17, STACK_IP, HOST_IP, 7777, 5555, 5, payload,
                            sizeof payload);
        CHECK(io_tx_burst(&g.devs[i], &of, 1) == 1, "write on queue %u", i);
    }
    unsigned rcvd = 0;
    uint64_t deadline = t_now_ns() + 2000000000ull;
    while (rcvd < NQ && t_now_ns() < deadline) {
        char b[64];
        ssize_t r = recv(u, b, sizeof b, 0);
        if (r == 8 && memcmp(b, "from q", 6) == 0)
            rcvd++;
        else if (r < 0)
            t_sleep_ms(2);
    }
    CHECK(rcvd == NQ, "host socket got %u of %u datagrams from the stack", rcvd, NQ);
out:
    close(u);
    io_group_close(&g);
    CHECK(if_nametoindex(TAP) == 0, "tap device gone once every queue is closed");
}

static void test_tap_errors(void)
{
    struct io_group g;
    const char *msg = NULL;
    struct io_config cfg = {.backend = "tap", .iface = "iot-name-far-too-long", .nqueues = 1};
    int rc = io_group_open(&g, &cfg, &msg);
    CHECK(rc == -EINVAL && msg, "long name: %d", rc);
    cfg.iface = TAP;
    cfg.tap_host_cidr = "198.18.1.1/33";
    rc = io_group_open(&g, &cfg, &msg);
    CHECK(rc == -EINVAL && msg && strstr(msg, "tap_host_cidr"), "bad cidr: %d %s", rc,
          msg ? msg : "");
    cfg.tap_host_cidr = NULL;
    cfg.iface = "iot-tap1";
    /* EACCES when /dev/net/tun is not world-accessible, else EPERM at TUNSETIFF. */
    t_check_unprivileged_open(&cfg, EPERM, EACCES, "CAP_NET_ADMIN");
}

int main(void)
{
    if (!t_start_as_root())
        return 0;
    cleanup();
    if (t_sh("ip netns add " NS_T " && ip -n " NS_T " link set lo up") != 0 ||
        t_enter_netns(NS_T) < 0) {
        fprintf(stderr, "cannot create the namespace\n");
        cleanup();
        return 1;
    }
    atexit(cleanup);
    test_tap();
    test_tap_errors();
    return t_summary();
}
