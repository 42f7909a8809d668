/* tap: /dev/net/tun with IFF_TAP|IFF_NO_PI|IFF_MULTI_QUEUE, one queue per core.
 *
 * No IFF_VNET_HDR and no TUNSETOFFLOAD: the tap then advertises no checksum
 * offload, so the kernel completes every checksum (skb_checksum_help in
 * validate_xmit_skb) before tun_net_xmit queues a frame for us; frames read
 * here are complete and carry no partial-checksum flag. In the other
 * direction the kernel verifies the checksums of what we write (the skb
 * arrives as CHECKSUM_NONE), so the stack must fill them in.
 *
 * The kernel picks the queue a host->stack frame lands on (the flow hash or
 * the queue that last sent for that flow), not io_flow_core(); a broadcast
 * such as an ARP request reaches one queue only. The host side MAC is known
 * (peer_mac), so the stack needs no ARP to reach the host. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* Linux socket/tun APIs; the build passes it too */
#endif
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/if_tun.h>
#include <net/if.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "io_internal.h"

#define TAP_DEFAULT_NAME "mtcp0"
#define TAP_RX_SLOTS MTCP_RX_BATCH

struct tap_dev {
    int fd;
    uint32_t slot_size;
    uint32_t used;      /* slots handed out since the last rx_done */
    uint8_t *bufs;      /* TAP_RX_SLOTS * slot_size, allocated in start() */
};

/* Locally administered unicast 02:6d:74 ("mt") + 24 bits of FNV-1a(name): the
 * same device name gives the same MAC in every run and every core. */
static void derive_mac(const char *name, uint8_t mac[6])
{
    uint32_t h = 2166136261u;
    for (const char *s = name; *s; s++) {
        h ^= (uint8_t)*s;
        h *= 16777619u;
    }
    mac[0] = 0x02;
    mac[1] = 0x6d;
    mac[2] = 0x74;
    mac[3] = (uint8_t)(h >> 16);
    mac[4] = (uint8_t)(h >> 8);
    mac[5] = (uint8_t)h;
}

static int if_ioctl(int s, unsigned long req, struct ifreq *ifr, const char *name)
{
    snprintf(ifr->ifr_name, IFNAMSIZ, "%s", name);
    return ioctl(s, req, ifr) < 0 ? io_neg_errno() : 0;
}

/* Give the host side "a.b.c.d/len" and bring the link up. */
static int set_host_addr(int s, const char *name, const char *cidr, const char **err_msg)
{
    char ip[INET_ADDRSTRLEN];
    const char *slash = strchr(cidr, '/');
    size_t iplen = slash ? (size_t)(slash - cidr) : strlen(cidr);
    long plen = 32;
    if (slash) {
        char *end;
        plen = strtol(slash + 1, &end, 10);
        if (*end != '\0' || end == slash + 1)
            plen = -1;
    }
    struct in_addr addr;
    if (iplen >= sizeof ip || plen < 0 || plen > 32) {
        *err_msg = "tap: tap_host_cidr must look like 198.18.0.1/24";
        return -EINVAL;
    }
    memcpy(ip, cidr, iplen);
    ip[iplen] = '\0';
    if (inet_pton(AF_INET, ip, &addr) != 1) {
        *err_msg = "tap: tap_host_cidr must look like 198.18.0.1/24";
        return -EINVAL;
    }
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    struct sockaddr_in *sin = (struct sockaddr_in *)(void *)&ifr.ifr_addr;
    sin->sin_family = AF_INET;
    sin->sin_addr = addr;
    int rc = if_ioctl(s, SIOCSIFADDR, &ifr, name);
    if (rc < 0) {
        *err_msg = "tap: SIOCSIFADDR (host address) failed";
        return rc;
    }
    memset(&ifr, 0, sizeof ifr);
    sin->sin_family = AF_INET;
    sin->sin_addr.s_addr = plen ? htonl(0xffffffffu << (32 - plen)) : 0;
    rc = if_ioctl(s, SIOCSIFNETMASK, &ifr, name);
    if (rc < 0) {
        *err_msg = "tap: SIOCSIFNETMASK (host netmask) failed";
        return rc;
    }
    return 0;
}

/* The host would otherwise send router solicitations and MLD reports into
 * the stack; best effort (no /proc or no IPv6 is fine). */
static void disable_ipv6(const char *name)
{
    char path[96];
    snprintf(path, sizeof path, "/proc/sys/net/ipv6/conf/%s/disable_ipv6", name);
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd >= 0) {
        if (write(fd, "1", 1) != 1) {
            /* ignored: only noise reduction */
        }
        close(fd);
    }
}

static int tap_open_all(struct io_group *g, const char **err_msg)
{
    const char *name = g->cfg.iface && g->cfg.iface[0] ? g->cfg.iface : TAP_DEFAULT_NAME;
    if (strlen(name) >= IFNAMSIZ) {
        *err_msg = "tap: device name longer than 15 characters";
        return -EINVAL;
    }
    for (unsigned i = 0; i < g->n; i++) {
        struct tap_dev *td = calloc(1, sizeof *td);
        if (!td) {
            *err_msg = "tap: out of memory";
            return -ENOMEM;
        }
        td->fd = -1;
        g->devs[i].priv = td;
        /* Not O_CLOEXEC: workers inherit the queues across fork. */
        td->fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK);
        if (td->fd < 0) {
            int rc = io_neg_errno();
            *err_msg = rc == -ENOENT ? "tap: /dev/net/tun: No such file (tun module missing?)"
                       : rc == -EACCES || rc == -EPERM
                           ? "tap: /dev/net/tun: Permission denied (needs access to the device "
                             "node and CAP_NET_ADMIN)"
                           : "tap: open /dev/net/tun failed";
            return rc;
        }
        struct ifreq ifr;
        memset(&ifr, 0, sizeof ifr);
        ifr.ifr_flags = IFF_TAP | IFF_NO_PI | IFF_MULTI_QUEUE;
        /* Queues attach in this order, so queue i is core i. The first call
         * creates the device when it does not exist. */
        if (if_ioctl(td->fd, TUNSETIFF, &ifr, name) < 0) {
            int rc = io_neg_errno();
            *err_msg = rc == -EPERM ? "tap: TUNSETIFF: Operation not permitted (needs CAP_NET_ADMIN)"
                       : rc == -EINVAL
                           ? "tap: TUNSETIFF: Invalid argument (name taken by a non-tap or "
                             "single-queue device?)"
                       : rc == -EBUSY ? "tap: TUNSETIFF: Device busy (queue limit reached?)"
                                      : "tap: TUNSETIFF failed";
            return rc;
        }
    }

    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0) {
        *err_msg = "tap: socket(AF_INET) for interface ioctls failed";
        return io_neg_errno();
    }
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    int rc = if_ioctl(s, SIOCGIFHWADDR, &ifr, name);
    if (rc < 0) {
        *err_msg = "tap: SIOCGIFHWADDR failed";
        goto out;
    }
    uint8_t host_mac[6];
    memcpy(host_mac, ifr.ifr_hwaddr.sa_data, 6);
    memset(&ifr, 0, sizeof ifr);
    rc = if_ioctl(s, SIOCGIFMTU, &ifr, name);
    if (rc < 0) {
        *err_msg = "tap: SIOCGIFMTU failed";
        goto out;
    }
    unsigned mtu = (unsigned)ifr.ifr_mtu;

    disable_ipv6(name);
    if (g->cfg.tap_host_cidr && g->cfg.tap_host_cidr[0]) {
        rc = set_host_addr(s, name, g->cfg.tap_host_cidr, err_msg);
        if (rc < 0)
            goto out;
    }
    memset(&ifr, 0, sizeof ifr);
    rc = if_ioctl(s, SIOCGIFFLAGS, &ifr, name);
    if (rc == 0 && !(ifr.ifr_flags & IFF_UP)) {
        ifr.ifr_flags |= IFF_UP;
        rc = if_ioctl(s, SIOCSIFFLAGS, &ifr, name);
    }
    if (rc < 0) {
        *err_msg = "tap: bringing the device up failed";
        goto out;
    }

    uint8_t mac[6];
    derive_mac(name, mac);
    if (memcmp(mac, host_mac, 6) == 0)
        mac[5] ^= 1; /* never the host side's own address */
    for (unsigned i = 0; i < g->n; i++) {
        struct io_dev *dev = &g->devs[i];
        struct tap_dev *td = dev->priv;
        memcpy(dev->mac, mac, 6);
        memcpy(dev->peer_mac, host_mac, 6);
        dev->has_peer_mac = 1;
        dev->mtu = mtu;
        /* Room for the Ethernet header and a VLAN tag on top of the MTU. */
        uint32_t need = mtu + 18u;
        td->slot_size = need <= MTCP_MAX_FRAME ? MTCP_MAX_FRAME : (need + 63u) & ~63u;
    }
out:
    close(s);
    return rc;
}

static int tap_start(struct io_dev *dev)
{
    struct tap_dev *td = dev->priv;
    if (td->bufs)
        return -EALREADY;
    td->bufs = malloc((size_t)TAP_RX_SLOTS * td->slot_size);
    return td->bufs ? 0 : -ENOMEM;
}

static int tap_rx_burst(struct io_dev *dev, struct io_frame *frames, int max)
{
    struct tap_dev *td = dev->priv;
    int n = 0;
    while (n < max && td->used < TAP_RX_SLOTS) {
        uint8_t *buf = td->bufs + (size_t)td->used * td->slot_size;
        ssize_t r = read(td->fd, buf, td->slot_size);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            break; /* EAGAIN: empty; anything else: try again next round */
        }
        if (r == 0)
            break;
        td->used++;
        frames[n].data = buf;
        frames[n].len = (uint32_t)r;
        frames[n].flags = 0; /* checksums complete, see the top of the file */
        n++;
    }
    dev->rx_frames += (uint64_t)n;
    return n;
}

static void tap_rx_done(struct io_dev *dev)
{
    struct tap_dev *td = dev->priv;
    td->used = 0;
}

static int tap_tx_burst(struct io_dev *dev, const struct io_frame *frames, int n)
{
    struct tap_dev *td = dev->priv;
    int i;
    for (i = 0; i < n; i++) {
        ssize_t w;
        do
            w = write(td->fd, frames[i].data, frames[i].len);
        while (w < 0 && errno == EINTR);
        if (w < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                break; /* queue full: the rest is dropped */
            dev->tx_dropped++; /* a bad frame (EINVAL, EIO while down): skip it */
            continue;
        }
        dev->tx_frames++;
    }
    if (i < n)
        dev->tx_dropped += (uint64_t)(n - i);
    return i;
}

static int tap_poll_fd(struct io_dev *dev)
{
    struct tap_dev *td = dev->priv;
    return td->fd;
}

static void tap_close(struct io_dev *dev)
{
    struct tap_dev *td = dev->priv;
    if (!td)
        return;
    io_close_fd(td->fd);
    free(td->bufs);
    free(td);
    dev->priv = NULL;
}

const struct io_ops io_tap_ops = {
    .name = "tap",
    .open_all = tap_open_all,
    .start = tap_start,
    .rx_burst = tap_rx_burst,
    .rx_done = tap_rx_done,
    .tx_burst = tap_tx_burst,
    .poll_fd = tap_poll_fd,
    .close = tap_close,
};
