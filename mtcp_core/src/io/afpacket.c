/* afpacket: AF_PACKET rings, one fanout member per core.
 *
 * Per core two sockets on the interface:
 *  - the data socket, bound to ETH_P_IP and a member of one PACKET_FANOUT_CBPF
 *    group, with a TPACKET_V3 TX ring (frames are copied into slots, then one
 *    send(fd, NULL, 0, MSG_DONTWAIT) flushes them). It receives either with
 *    recvmmsg() batches (copy mode, the default: every frame wakes the stack at
 *    once) or through a TPACKET_V3 RX ring (the kernel fills 256 KiB blocks and
 *    hands a whole block over when it is full or its 1 ms timer fires: zero
 *    copy, but at low rates every frame can wait that long);
 *  - the ARP socket, bound to ETH_P_ARP and in no fanout group, so every core
 *    sees every ARP frame (each core keeps its own ARP cache). It has a small
 *    TPACKET_V2 RX ring, so checking it costs a memory read, not a syscall.
 *    ARP frames the stack sends go out through it too: a frame sent through the
 *    data socket would get skb->protocol = ETH_P_IP (tpacket_snd uses the
 *    bound protocol).
 * Sockets bound to one protocol are not on ptype_all, so neither sees the
 * frames this stack transmits; PACKET_IGNORE_OUTGOING is set anyway.
 *
 * TCP segmentation offload: a third socket per core, never bound (it receives
 * nothing) and without a ring, has PACKET_VNET_HDR on. A TCP segment of up to
 * 64 KiB (IO_FRAME_TSO) goes out through it with one sendmsg(): a struct
 * virtio_net_hdr (gso_type TCPV4, gso_size = MSS, NEEDS_CSUM with csum_start/
 * csum_offset at the TCP checksum) in front of the frame, the payload gathered
 * straight from the send ring. The kernel makes it one GSO skb
 * (virtio_net_hdr_to_skb); a veth carries it whole to the peer, whose TCP takes
 * it as one unit like a GRO packet, and a real NIC cuts it (hardware TSO, or the
 * kernel's GSO before the driver). See packet(7) PACKET_VNET_HDR and the virtio
 * spec, "Packet Transmission" (5.1.6.2). The data socket keeps its TX ring for
 * everything else, and its receive path stays free of vnet headers. Before a
 * TSO frame the ring is flushed, so frames leave in the order they were queued
 * (control and ACK frames first, DESIGN.md) unless the ring's own send buffer
 * is full, in which case its frames follow with the next flush.
 *
 * Fanout: the kernel runs the group's cBPF program and uses
 * `return value % num_members` as the member index (fanout_demux_bpf), members
 * numbered in join order. open_all joins the sockets in core order, and the
 * program computes io_flow_core(), so core i receives exactly the flows the
 * stack maps to core i. Until all n members have joined, a drop-all filter on
 * each socket keeps frames from landing on the wrong member.
 *
 * Life cycle: open_all (creator process) sets up rings and joins the group;
 * start (the core's own process, possibly after fork) maps the rings and makes
 * the epoll fd that poll_fd returns. Rings must be configured before joining:
 * PACKET_RX_RING on a fanout member unhooks and re-links it, which would move
 * it to the end of the member array. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* Linux socket/tun APIs; the build passes it too */
#endif
#include <errno.h>
#include <linux/filter.h>
#include <linux/if_ether.h>
#include <linux/ethtool.h>
#include <linux/if_packet.h>
#include <linux/sockios.h>
#include <linux/virtio_net.h>
#include <net/if.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "../wire/bytes.h"
#include "../opt.h"
#include "io_internal.h"

#ifndef PACKET_IGNORE_OUTGOING
#define PACKET_IGNORE_OUTGOING 23
#endif
#ifndef TP_STATUS_CSUM_VALID
#define TP_STATUS_CSUM_VALID (1 << 7)
#endif
#ifndef PACKET_FANOUT_FLAG_UNIQUEID
#define PACKET_FANOUT_FLAG_UNIQUEID 0x2000
#endif
#ifndef PACKET_VNET_HDR
#define PACKET_VNET_HDR 15
#endif

/* Where frame data starts in a V3 TX slot (tpacket_parse_header without
 * PACKET_TX_HAS_OFF: tp_hdrlen - sizeof(struct sockaddr_ll)). */
#define AFP_TX_DATA_OFF (TPACKET3_HDRLEN - sizeof(struct sockaddr_ll))
/* TSO: the largest frame (an IPv4 datagram is at most 65535 bytes, RFC 791) and
 * the TSO socket's send buffer (a cwnd of such frames in flight on a real NIC;
 * over a veth the skb is orphaned when it crosses into the peer's namespace). */
#define AFP_TSO_MAX (14u + 65535u)

struct afp_dev {
    int fd;     /* data socket: fanout member, V3 RX + TX rings */
    int arp_fd; /* ARP socket: V2 RX ring */
    int ep;     /* epoll over both, made in start() */
    int tso_fd; /* TSO socket: PACKET_VNET_HDR, unbound, no ring; -1 without TSO */
    int ifindex;
    char ifname[IFNAMSIZ];
    uint32_t tso_fails; /* TSO sends refused in a row (any errno) */
    uint32_t empty_bursts; /* receive bursts in a row that found nothing */

    uint32_t rx_block_size, rx_block_nr;
    uint32_t tx_frame_size, tx_frame_nr, tx_block_size, tx_frames_per_block;
    uint32_t arp_frame_nr;
    uint8_t *map;     /* RX ring, then TX ring */
    size_t map_len;
    uint8_t *tx_ring; /* inside map */
    uint8_t *arp_map;
    size_t arp_map_len;

    /* RX walk */
    uint32_t blk;          /* block being walked, or next to look at */
    uint32_t pkts_left;    /* frames left in blk; 0 = blk not entered yet */
    uint8_t *pkt;          /* next frame header in blk */
    uint32_t release_from; /* first fully walked block not yet given back */
    uint32_t nrelease;     /* fully walked blocks waiting for rx_done */
    /* ARP ring walk */
    uint32_t arp_head;     /* next frame to look at */
    uint32_t arp_handed;   /* frames handed over since rx_done (those before arp_head) */
    /* TX */
    uint32_t tx_head;
    bool tx_backlog;       /* the last flush left frames in SEND_REQUEST */
    /* The rings outlive a worker (the creating process keeps the sockets): where the
     * user side stands is kept in memory shared with the processes that follow, so
     * that a restarted worker resumes at the kernel's position instead of waiting
     * at slot 0 for a block or a TX head the kernel has moved past. */
    struct afp_cursors *cur;
    /* RX without a ring (copy mode): recvmmsg() into buffers of our own. A V3 ring
     * hands a block over only when it is full or its timer (>= 1 ms) expires, which
     * adds up to a millisecond to every packet at low rates; a socket without a ring
     * wakes the stack per packet and still takes a batch per call. */
    bool rx_copy;
    uint8_t *rx_bufs;
    struct mmsghdr *rx_msgs;
    struct iovec *rx_iov;
    uint8_t *rx_cmsg;
};

#define AFP_COPY_FRAME (64u * 1024u + 256u) /* a GSO frame from a veth peer fits */
#define AFP_CMSG_SPACE 64u

struct afp_cursors {
    uint32_t started;      /* a worker has run on these rings before */
    uint32_t rx_blk;       /* first RX block not yet given back */
    uint32_t arp_head;     /* first ARP frame not yet given back */
    uint32_t tx_head;      /* next TX slot to fill */
};

static uint32_t load_acq(const volatile uint32_t *p)
{
    return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}

static void store_rel(volatile uint32_t *p, uint32_t v)
{
    __atomic_store_n(p, v, __ATOMIC_RELEASE);
}

static uint32_t csum_flags(uint32_t status)
{
    if (status & TP_STATUS_CSUMNOTREADY)
        return IO_FRAME_CSUM_PARTIAL;
    if (status & TP_STATUS_CSUM_VALID)
        return IO_FRAME_CSUM_VALID;
    return 0;
}

static int setopt(int fd, int level, int name, const void *v, socklen_t len)
{
    return setsockopt(fd, level, name, v, len) < 0 ? io_neg_errno() : 0;
}

static int setopt_int(int fd, int level, int name, int v)
{
    return setopt(fd, level, name, &v, sizeof v);
}

/* A setting the socket cannot work without: on failure, its error and *err_msg = msg. */
static int setopt_need(int fd, int level, int name, const void *v, socklen_t len,
                       const char **err_msg, const char *msg)
{
    int rc = setopt(fd, level, name, v, len);
    if (rc < 0)
        *err_msg = msg;
    return rc;
}

/* Optional: without them a socket still works, only slower or noisier (through the
 * qdisc; its own outgoing frames looped back to it). */
static void setopt_fast_path(int fd)
{
    (void)setopt_int(fd, SOL_PACKET, PACKET_QDISC_BYPASS, 1);
    (void)setopt_int(fd, SOL_PACKET, PACKET_IGNORE_OUTGOING, 1);
}

/* The fanout program: io_flow_core() over the IPv4 header. Offsets are taken
 * from the network header (SKF_NET_OFF): in the fanout path the kernel runs
 * the program on an skb whose data already starts at the IP header (the
 * Ethernet header was pulled), so SKF_NET_OFF + k says exactly what is meant
 * wherever skb->data points. Non-TCP/UDP frames and fragments hash with both
 * ports 0 (a non-first fragment has no ports; all fragments stay together). */
#define NET(k) ((uint32_t)SKF_NET_OFF + (uint32_t)(k))
#define FANOUT_PROG_LEN 27
static void build_fanout_prog(struct sock_filter prog[FANOUT_PROG_LEN], unsigned n)
{
    const struct sock_filter p[FANOUT_PROG_LEN] = {
        /*  0 */ BPF_STMT(BPF_LD | BPF_B | BPF_ABS, NET(9)),          /* A = protocol */
        /*  1 */ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, IPPROTO_TCP, 1, 0),
        /*  2 */ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, IPPROTO_UDP, 0, 9), /* -> 12 */
        /*  3 */ BPF_STMT(BPF_LD | BPF_H | BPF_ABS, NET(6)),          /* A = flags|frag off */
        /*  4 */ BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, 0x3fff, 7, 0),  /* MF or off -> 12 */
        /*  5 */ BPF_STMT(BPF_LDX | BPF_B | BPF_MSH, NET(0)),         /* X = 4 * ihl */
        /*  6 */ BPF_STMT(BPF_LD | BPF_H | BPF_IND, NET(0)),          /* A = sport */
        /*  7 */ BPF_STMT(BPF_ST, 0),                                  /* M[0] = sport */
        /*  8 */ BPF_STMT(BPF_LD | BPF_H | BPF_IND, NET(2)),          /* A = dport */
        /*  9 */ BPF_STMT(BPF_LDX | BPF_MEM, 0),                       /* X = sport */
        /* 10 */ BPF_STMT(BPF_ALU | BPF_XOR | BPF_X, 0),              /* A = sport ^ dport */
        /* 11 */ BPF_JUMP(BPF_JMP | BPF_JA, 1, 0, 0),                  /* -> 13 */
        /* 12 */ BPF_STMT(BPF_LD | BPF_IMM, 0),                        /* no ports */
        /* 13 */ BPF_STMT(BPF_ST, 0),                                  /* M[0] = ports */
        /* 14 */ BPF_STMT(BPF_LD | BPF_W | BPF_ABS, NET(12)),         /* A = saddr */
        /* 15 */ BPF_STMT(BPF_MISC | BPF_TAX, 0),
        /* 16 */ BPF_STMT(BPF_LD | BPF_W | BPF_ABS, NET(16)),         /* A = daddr */
        /* 17 */ BPF_STMT(BPF_ALU | BPF_XOR | BPF_X, 0),              /* A = saddr ^ daddr */
        /* 18 */ BPF_STMT(BPF_LDX | BPF_MEM, 0),
        /* 19 */ BPF_STMT(BPF_ALU | BPF_XOR | BPF_X, 0),              /* h */
        /* 20 */ BPF_STMT(BPF_MISC | BPF_TAX, 0),                     /* X = h */
        /* 21 */ BPF_STMT(BPF_ALU | BPF_RSH | BPF_K, 16),
        /* 22 */ BPF_STMT(BPF_ALU | BPF_XOR | BPF_X, 0),              /* h ^= h >> 16 */
        /* 23 */ BPF_STMT(BPF_ALU | BPF_MUL | BPF_K, 0x9e3779b1u),     /* mix all bits up */
        /* 24 */ BPF_STMT(BPF_ALU | BPF_RSH | BPF_K, 16),
        /* 25 */ BPF_STMT(BPF_ALU | BPF_MOD | BPF_K, n),              /* % n, as io_flow_core */
        /* 26 */ BPF_STMT(BPF_RET | BPF_A, 0),
    };
    memcpy(prog, p, sizeof p);
}
#undef NET

static int attach_drop_all(int fd)
{
    struct sock_filter drop[1] = {BPF_STMT(BPF_RET | BPF_K, 0)};
    struct sock_fprog fp = {.len = 1, .filter = drop};
    return setopt(fd, SOL_SOCKET, SO_ATTACH_FILTER, &fp, sizeof fp);
}

static int bind_to(int fd, int ifindex, uint16_t proto)
{
    struct sockaddr_ll sll;
    memset(&sll, 0, sizeof sll);
    sll.sll_family = AF_PACKET;
    sll.sll_protocol = htons(proto);
    sll.sll_ifindex = ifindex;
    return bind(fd, (struct sockaddr *)&sll, sizeof sll) < 0 ? io_neg_errno() : 0;
}

static int packet_socket(const char **err_msg)
{
    /* Protocol 0: receives nothing until bind(), after the rings are set.
     * Not SOCK_CLOEXEC: workers inherit it across fork. */
    int fd = socket(AF_PACKET, SOCK_RAW, 0);
    if (fd < 0) {
        int rc = io_neg_errno();
        *err_msg = rc == -EPERM || rc == -EACCES
                       ? "afpacket: AF_PACKET socket: Operation not permitted (needs CAP_NET_RAW)"
                   : rc == -EAFNOSUPPORT
                       ? "afpacket: AF_PACKET socket: Address family not supported by this kernel"
                       : "afpacket: AF_PACKET socket failed";
        return rc;
    }
    return fd;
}

/* Ring geometry from the ring_frames hint and the MTU. */
static void plan_rings(struct afp_dev *ad, unsigned ring_frames, unsigned mtu)
{
    unsigned frames = ring_frames ? ring_frames : AFP_DEFAULT_RING_FRAMES;
    uint64_t blocks = ((uint64_t)frames * AFP_RX_FRAME_SIZE + AFP_RX_BLOCK_SIZE - 1) /
                      AFP_RX_BLOCK_SIZE;
    ad->rx_block_size = AFP_RX_BLOCK_SIZE;
    ad->rx_block_nr = (uint32_t)(blocks < 8 ? 8 : blocks > 256 ? 256 : blocks);

    /* A TX slot holds the V3 header, then the frame (Ethernet + MTU + VLAN). */
    uint32_t need = (uint32_t)AFP_TX_DATA_OFF + mtu + 18u;
    uint32_t fs = 2048;
    while (fs < need)
        fs *= 2;
    ad->tx_frame_size = fs;
    ad->tx_block_size = fs > AFP_TX_BLOCK_SIZE ? fs : AFP_TX_BLOCK_SIZE;
    ad->tx_frames_per_block = ad->tx_block_size / fs;
    unsigned txf = frames / 4;
    txf = txf < 256 ? 256 : txf > 4096 ? 4096 : txf;
    uint32_t tx_blocks = (txf + ad->tx_frames_per_block - 1) / ad->tx_frames_per_block;
    ad->tx_frame_nr = tx_blocks * ad->tx_frames_per_block;
    ad->arp_frame_nr = AFP_ARP_BLOCKS * (AFP_ARP_BLOCK_SIZE / AFP_ARP_FRAME_SIZE);
}

/* Data socket of one core, up to (not including) the fanout join. */
static int open_data_socket(struct afp_dev *ad, int ifindex, bool hold_traffic,
                            const char **err_msg)
{
    int rc = setopt_int(ad->fd, SOL_PACKET, PACKET_VERSION, TPACKET_V3);
    if (rc < 0) {
        *err_msg = "afpacket: PACKET_VERSION TPACKET_V3 not supported";
        return rc;
    }
    if (ad->rx_copy) {
        ad->rx_block_nr = 0; /* no RX ring: the mapping holds the TX ring only */
        (void)setopt_int(ad->fd, SOL_PACKET, PACKET_AUXDATA, 1); /* checksum status */
        /* Without a ring, a burst waits in the socket's receive queue: give it room
         * like a ring's (the default ~200 KiB held ~270 small frames, and a burst of
         * 1,000 lost half). The forced variant needs CAP_NET_ADMIN. */
        if (setopt_int(ad->fd, SOL_SOCKET, SO_RCVBUFFORCE, (int)AFP_COPY_RCVBUF) < 0)
            (void)setopt_int(ad->fd, SOL_SOCKET, SO_RCVBUF, (int)AFP_COPY_RCVBUF);
    }
    struct tpacket_req3 rx = {
        .tp_block_size = ad->rx_block_size,
        .tp_block_nr = ad->rx_block_nr,
        .tp_frame_size = AFP_RX_FRAME_SIZE,
        .tp_frame_nr = (ad->rx_block_size / AFP_RX_FRAME_SIZE) * ad->rx_block_nr,
        .tp_retire_blk_tov = AFP_RETIRE_TOV_MS,
    };
    if (!ad->rx_copy) {
        rc = setopt_need(ad->fd, SOL_PACKET, PACKET_RX_RING, &rx, sizeof rx, err_msg,
                         "afpacket: PACKET_RX_RING failed (out of memory? lower ring_frames)");
        if (rc < 0)
            return rc;
    }
    struct tpacket_req3 tx = {
        .tp_block_size = ad->tx_block_size,
        .tp_block_nr = ad->tx_frame_nr / ad->tx_frames_per_block,
        .tp_frame_size = ad->tx_frame_size,
        .tp_frame_nr = ad->tx_frame_nr,
    };
    rc = setopt_need(ad->fd, SOL_PACKET, PACKET_TX_RING, &tx, sizeof tx, err_msg,
                     "afpacket: PACKET_TX_RING (TPACKET_V3) failed (kernel older than 4.11?)");
    if (rc < 0)
        return rc;
    setopt_fast_path(ad->fd);
    /* A malformed slot is skipped instead of stalling the TX ring forever. */
    (void)setopt_int(ad->fd, SOL_PACKET, PACKET_LOSS, 1);
    /* Room for a full TX ring in flight: send() with MSG_DONTWAIT stops at
     * the socket's send buffer and leaves the rest for the next flush. The
     * forced variant needs CAP_NET_ADMIN; the plain one is capped by wmem_max. */
    int sndbuf = (int)(ad->tx_frame_nr * (ad->tx_frame_size + 1024u));
    if (setopt_int(ad->fd, SOL_SOCKET, SO_SNDBUFFORCE, sndbuf) < 0)
        (void)setopt_int(ad->fd, SOL_SOCKET, SO_SNDBUF, sndbuf);
    if (hold_traffic) {
        rc = attach_drop_all(ad->fd);
        if (rc < 0) {
            *err_msg = "afpacket: SO_ATTACH_FILTER failed";
            return rc;
        }
    }
    rc = bind_to(ad->fd, ifindex, ETH_P_IP);
    if (rc < 0) {
        *err_msg = rc == -ENETDOWN ? "afpacket: bind: interface is down"
                                   : "afpacket: bind to the interface failed";
        return rc;
    }
    return 0;
}

static int open_arp_socket(struct afp_dev *ad, int ifindex, const char **err_msg)
{
    int rc = setopt_int(ad->arp_fd, SOL_PACKET, PACKET_VERSION, TPACKET_V2);
    if (rc < 0) {
        *err_msg = "afpacket: PACKET_VERSION TPACKET_V2 (ARP socket) failed";
        return rc;
    }
    struct tpacket_req req = {
        .tp_block_size = AFP_ARP_BLOCK_SIZE,
        .tp_block_nr = AFP_ARP_BLOCKS,
        .tp_frame_size = AFP_ARP_FRAME_SIZE,
        .tp_frame_nr = ad->arp_frame_nr,
    };
    rc = setopt_need(ad->arp_fd, SOL_PACKET, PACKET_RX_RING, &req, sizeof req, err_msg,
                     "afpacket: PACKET_RX_RING (ARP socket) failed");
    if (rc < 0)
        return rc;
    setopt_fast_path(ad->arp_fd);
    rc = bind_to(ad->arp_fd, ifindex, ETH_P_ARP);
    if (rc < 0) {
        *err_msg = "afpacket: bind of the ARP socket failed";
        return rc;
    }
    return 0;
}

/* The TSO socket of one core, or -1 when the kernel cannot take vnet headers (the
 * stack then sends MSS-sized frames only). Protocol 0 and never bound: it is on no
 * receive list. */
static int open_tso_socket(void)
{
#if MTCP_AFP_TSO
    int fd = socket(AF_PACKET, SOCK_RAW, 0);
    if (fd < 0)
        return -1;
    if (setopt_int(fd, SOL_PACKET, PACKET_VNET_HDR, 1) < 0) {
        close(fd);
        return -1;
    }
    (void)setopt_int(fd, SOL_PACKET, PACKET_QDISC_BYPASS, 1);
    if (setopt_int(fd, SOL_SOCKET, SO_SNDBUFFORCE, (int)AFP_TSO_SNDBUF) < 0)
        (void)setopt_int(fd, SOL_SOCKET, SO_SNDBUF, (int)AFP_TSO_SNDBUF);
    return fd;
#else
    return -1;
#endif
}

/* Whether the interface has TCP segmentation offload on (ETHTOOL_GTSO: NETIF_F_TSO in
 * its features), asked through the data socket. A failed query counts as no. */
static bool device_offers_tso(const struct afp_dev *ad)
{
    struct ethtool_value ev = {.cmd = ETHTOOL_GTSO, .data = 0};
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    memcpy(ifr.ifr_name, ad->ifname, sizeof ad->ifname);
    ifr.ifr_data = (char *)&ev;
    return ioctl(ad->fd, SIOCETHTOOL, &ifr) == 0 && ev.data != 0;
}

static int join_fanout(int fd, uint32_t id, uint32_t flags)
{
    int v = (int)((id & 0xffffu) | ((PACKET_FANOUT_CBPF | flags) << 16));
    return setopt_int(fd, SOL_PACKET, PACKET_FANOUT, v);
}

/* Each core's afp_dev and its shared cursors page. */
static int afp_alloc_devs(struct io_group *g, const char **err_msg)
{
    unsigned n = g->n;
    for (unsigned i = 0; i < n; i++) {
        struct afp_dev *ad = calloc(1, sizeof *ad);
        if (!ad) {
            *err_msg = "afpacket: out of memory";
            return -ENOMEM;
        }
        ad->fd = ad->arp_fd = ad->ep = ad->tso_fd = -1;
        g->devs[i].priv = ad;
        void *cur = mmap(NULL, sizeof(struct afp_cursors), PROT_READ | PROT_WRITE,
                         MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        if (cur == MAP_FAILED) {
            *err_msg = "afpacket: out of memory";
            return -ENOMEM;
        }
        ad->cur = cur;
    }
    return 0;
}

/* The interface's index, MAC and MTU, through the socket fd; it must be up. */
static int afp_iface_facts(int fd, const char *iface, int *ifindex_out, uint8_t mac[6],
                           unsigned *mtu_out, const char **err_msg)
{
    int ifindex = (int)if_nametoindex(iface);
    if (ifindex == 0) {
        *err_msg = "afpacket: no such interface";
        return -ENODEV;
    }
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    memcpy(ifr.ifr_name, iface, strlen(iface));
    if (ioctl(fd, SIOCGIFHWADDR, &ifr) < 0) {
        *err_msg = "afpacket: SIOCGIFHWADDR failed";
        return io_neg_errno();
    }
    memcpy(mac, ifr.ifr_hwaddr.sa_data, 6);
    if (ioctl(fd, SIOCGIFMTU, &ifr) < 0) {
        *err_msg = "afpacket: SIOCGIFMTU failed";
        return io_neg_errno();
    }
    *mtu_out = (unsigned)ifr.ifr_mtu;
    /* A down interface leaves bound sockets "not running", and joining a
     * fanout group then fails with a bare EINVAL: say what is wrong instead. */
    if (ioctl(fd, SIOCGIFFLAGS, &ifr) < 0) {
        *err_msg = "afpacket: SIOCGIFFLAGS failed";
        return io_neg_errno();
    }
    if (!(ifr.ifr_flags & IFF_UP)) {
        *err_msg = "afpacket: interface is down (ip link set IFACE up)";
        return -ENETDOWN;
    }
    *ifindex_out = ifindex;
    return 0;
}

/* Core i's data socket joins the fanout group (the first one creates it and installs
 * the cBPF program that computes io_flow_core). */
static int afp_join_fanout(struct afp_dev *ad, unsigned i, unsigned n, uint32_t *group_io,
                           const char **err_msg)
{
    int rc;
    uint32_t group = *group_io;
    /* Join in core order: member index = core number. */
    if (i == 0 && group == 0) {
        /* Let the kernel pick an id no other group in this netns uses;
         * fall back to one derived from the pid on kernels without it. */
        rc = join_fanout(ad->fd, 0, PACKET_FANOUT_FLAG_UNIQUEID);
        if (rc == 0) {
            int v = 0;
            socklen_t len = sizeof v;
            if (getsockopt(ad->fd, SOL_PACKET, PACKET_FANOUT, &v, &len) < 0) {
                *err_msg = "afpacket: getsockopt(PACKET_FANOUT) failed";
                return io_neg_errno();
            }
            group = (uint32_t)v & 0xffffu;
        } else {
            group = ((uint32_t)getpid() & 0xffffu) | 1u;
            rc = join_fanout(ad->fd, group, 0);
        }
    } else {
        rc = join_fanout(ad->fd, group, 0);
    }
    if (rc < 0) {
        *err_msg = rc == -EINVAL ? "afpacket: PACKET_FANOUT: group id already used with "
                                   "other settings (choose another fanout_group)"
                                 : "afpacket: PACKET_FANOUT failed";
        return rc;
    }
    if (i == 0) {
        struct sock_filter prog[FANOUT_PROG_LEN];
        build_fanout_prog(prog, n);
        struct sock_fprog fp = {.len = FANOUT_PROG_LEN, .filter = prog};
        rc = setopt(ad->fd, SOL_PACKET, PACKET_FANOUT_DATA, &fp, sizeof fp);
        if (rc < 0) {
            *err_msg = "afpacket: PACKET_FANOUT_DATA (cBPF fanout program) rejected";
            return rc;
        }
    }
    *group_io = group;
    return 0;
}

static int afp_open_all(struct io_group *g, const char **err_msg)
{
    const char *iface = g->cfg.iface;
    if (!iface || !iface[0]) {
        *err_msg = "afpacket: no interface given (cfg.iface)";
        return -EINVAL;
    }
    if (strlen(iface) >= IFNAMSIZ) {
        *err_msg = "afpacket: interface name longer than 15 characters";
        return -EINVAL;
    }
    unsigned n = g->n;
    int rc = afp_alloc_devs(g, err_msg);
    if (rc < 0)
        return rc;
    /* Interface facts, through the first socket. */
    struct afp_dev *ad0 = g->devs[0].priv;
    if ((rc = packet_socket(err_msg)) < 0)
        return rc;
    ad0->fd = rc;
    int ifindex;
    uint8_t mac[6];
    unsigned mtu;
    if ((rc = afp_iface_facts(ad0->fd, iface, &ifindex, mac, &mtu, err_msg)) < 0)
        return rc;
    bool fanout = n > 1;
    uint32_t group = g->cfg.fanout_group & 0xffffu;
    for (unsigned i = 0; i < n; i++) {
        struct io_dev *dev = &g->devs[i];
        struct afp_dev *ad = dev->priv;
        memcpy(dev->mac, mac, 6);
        memset(dev->peer_mac, 0, 6);
        dev->has_peer_mac = 0;
        dev->mtu = mtu;
        plan_rings(ad, g->cfg.ring_frames, mtu);
        if (ad->fd < 0) {
            if ((rc = packet_socket(err_msg)) < 0)
                return rc;
            ad->fd = rc;
        }
        if ((rc = packet_socket(err_msg)) < 0)
            return rc;
        ad->arp_fd = rc;
        if ((rc = open_arp_socket(ad, ifindex, err_msg)) < 0)
            return rc;
        ad->rx_copy = g->cfg.afpacket_rx_copy != 0;
        if ((rc = open_data_socket(ad, ifindex, fanout, err_msg)) < 0)
            return rc;
        ad->ifindex = ifindex;
        memcpy(ad->ifname, iface, strlen(iface) + 1);
        /* TSO only where the device offers it (ethtool -k: tcp-segmentation-offload;
         * `ethtool -K IF tx off` turns it off too): the kernel refuses GSO frames for
         * a device without it (ENOBUFS), and each would be a lost transmission. */
        ad->tso_fd = device_offers_tso(ad) ? open_tso_socket() : -1;
        dev->tso_max = ad->tso_fd >= 0 ? AFP_TSO_MAX : 0;
        if (!fanout)
            break;
        if ((rc = afp_join_fanout(ad, i, n, &group, err_msg)) < 0)
            return rc;
    }
    /* Every member is in place: let traffic through. */
    if (fanout) {
        for (unsigned i = 0; i < n; i++) {
            struct afp_dev *ad = g->devs[i].priv;
            /* sk_setsockopt wants an int-sized optval even here. */
            if ((rc = setopt_int(ad->fd, SOL_SOCKET, SO_DETACH_FILTER, 0)) < 0) {
                *err_msg = "afpacket: SO_DETACH_FILTER failed";
                return rc;
            }
        }
    }
    return 0;
}

static int afp_start(struct io_dev *dev)
{
    struct afp_dev *ad = dev->priv;
    if (ad->map)
        return -EALREADY;
    size_t rx_len = (size_t)ad->rx_block_size * ad->rx_block_nr;
    size_t tx_len = (size_t)ad->tx_block_size * (ad->tx_frame_nr / ad->tx_frames_per_block);
    /* One mapping: the RX ring first, the TX ring right after it. */
    void *m = mmap(NULL, rx_len + tx_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE,
                   ad->fd, 0);
    if (m == MAP_FAILED)
        return io_neg_errno();
    ad->map = m;
    ad->map_len = rx_len + tx_len;
    ad->tx_ring = ad->map + rx_len;
    size_t arp_len = (size_t)AFP_ARP_BLOCK_SIZE * AFP_ARP_BLOCKS;
    m = mmap(NULL, arp_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, ad->arp_fd, 0);
    if (m == MAP_FAILED)
        return io_neg_errno();
    ad->arp_map = m;
    ad->arp_map_len = arp_len;

    ad->ep = epoll_create1(EPOLL_CLOEXEC);
    if (ad->ep < 0)
        return io_neg_errno();
    struct epoll_event ev = {.events = EPOLLIN};
    ev.data.u32 = 0;
    if (epoll_ctl(ad->ep, EPOLL_CTL_ADD, ad->fd, &ev) < 0)
        return io_neg_errno();
    ev.data.u32 = 1;
    if (epoll_ctl(ad->ep, EPOLL_CTL_ADD, ad->arp_fd, &ev) < 0)
        return io_neg_errno();
    if (ad->rx_copy) {
        ad->rx_bufs = malloc((size_t)AFP_COPY_BATCH * AFP_COPY_FRAME);
        ad->rx_msgs = calloc(AFP_COPY_BATCH, sizeof *ad->rx_msgs);
        ad->rx_iov = calloc(AFP_COPY_BATCH, sizeof *ad->rx_iov);
        ad->rx_cmsg = calloc(AFP_COPY_BATCH, AFP_CMSG_SPACE);
        if (!ad->rx_bufs || !ad->rx_msgs || !ad->rx_iov || !ad->rx_cmsg)
            return -ENOMEM;
    }
    if (__atomic_load_n(&ad->cur->started, __ATOMIC_ACQUIRE)) {
        /* a previous worker died here: continue from its last positions; frames it
         * took but had not given back are read again (a fresh stack answers stale
         * segments with RST, as after any restart) */
        if (ad->rx_block_nr)
            ad->blk = ad->release_from = ad->cur->rx_blk % ad->rx_block_nr;
        ad->arp_head = ad->cur->arp_head % ad->arp_frame_nr;
        ad->tx_head = ad->cur->tx_head % ad->tx_frame_nr;
        (void)send(ad->fd, NULL, 0, MSG_DONTWAIT); /* what it queued but never flushed */
    }
    __atomic_store_n(&ad->cur->started, 1, __ATOMIC_RELEASE);
    return 0;
}

static struct tpacket_block_desc *rx_block(struct afp_dev *ad, uint32_t i)
{
    return (struct tpacket_block_desc *)(void *)(ad->map + (size_t)i * ad->rx_block_size);
}

static uint8_t *arp_frame(struct afp_dev *ad, uint32_t i)
{
    const uint32_t per_block = AFP_ARP_BLOCK_SIZE / AFP_ARP_FRAME_SIZE;
    return ad->arp_map + (size_t)(i / per_block) * AFP_ARP_BLOCK_SIZE +
           (size_t)(i % per_block) * AFP_ARP_FRAME_SIZE;
}

static uint8_t *tx_slot(struct afp_dev *ad, uint32_t i)
{
    return ad->tx_ring + (size_t)(i / ad->tx_frames_per_block) * ad->tx_block_size +
           (size_t)(i % ad->tx_frames_per_block) * ad->tx_frame_size;
}

static void tx_flush(struct afp_dev *ad)
{
    /* Errors (ENOBUFS, ENETDOWN...) leave the slots queued: they go out with
     * a later flush, which tx_burst and rx_burst issue while tx_backlog is set
     * (checked below: the newest slot not yet taken by the kernel). */
    (void)send(ad->fd, NULL, 0, MSG_DONTWAIT);
    uint32_t last = (ad->tx_head + ad->tx_frame_nr - 1) % ad->tx_frame_nr;
    struct tpacket3_hdr *h = (struct tpacket3_hdr *)(void *)tx_slot(ad, last);
    ad->tx_backlog = load_acq(&h->tp_status) == TP_STATUS_SEND_REQUEST;
}

/* One IO_FRAME_TSO frame through the TSO socket: 0, or -errno (the frame is lost;
 * TCP retransmits it). */
static int tx_tso(struct afp_dev *ad, const struct io_frame *f)
{
    uint32_t payload = f->more_len[0] + f->more_len[1];
    /* virtio spec 5.1.6.2: csum_start/csum_offset say where the device computes the
     * checksum (from csum_start to the end, stored at csum_start + csum_offset, the
     * field holding the pseudo-header sum); gso_size is the payload per segment and
     * hdr_len the bytes of headers. Fields in native order (legacy virtio header, as
     * the kernel reads it with vio_le() on a little-endian host). */
    struct virtio_net_hdr vh;
    memset(&vh, 0, sizeof vh);
    vh.flags = VIRTIO_NET_HDR_F_NEEDS_CSUM;
    vh.gso_type = payload > f->gso_size ? VIRTIO_NET_HDR_GSO_TCPV4 : VIRTIO_NET_HDR_GSO_NONE;
    vh.gso_size = vh.gso_type == VIRTIO_NET_HDR_GSO_NONE ? 0 : f->gso_size;
    vh.hdr_len = (uint16_t)f->len;
    vh.csum_start = f->l4_off;
    vh.csum_offset = 16; /* TCP checksum field (RFC 9293 3.1) */
    struct iovec iov[4] = {
        {.iov_base = &vh, .iov_len = sizeof vh},
        {.iov_base = (void *)(uintptr_t)f->data, .iov_len = f->len},
        {.iov_base = (void *)(uintptr_t)f->more[0], .iov_len = f->more_len[0]},
        {.iov_base = (void *)(uintptr_t)f->more[1], .iov_len = f->more_len[1]},
    };
    struct sockaddr_ll sll;
    memset(&sll, 0, sizeof sll);
    sll.sll_family = AF_PACKET;
    sll.sll_protocol = htons(ETH_P_IP);
    sll.sll_ifindex = ad->ifindex;
    struct msghdr mh = {
        .msg_name = &sll,
        .msg_namelen = sizeof sll,
        .msg_iov = iov,
        .msg_iovlen = f->more_len[1] ? 4 : f->more_len[0] ? 3 : 2,
    };
    ssize_t want = (ssize_t)(sizeof vh + f->len + payload);
    ssize_t rc = sendmsg(ad->tso_fd, &mh, MSG_DONTWAIT);
    return rc == want ? 0 : rc < 0 ? io_neg_errno() : -EIO;
}

/* RFC 1071 checksum over bytes (io/ keeps to itself: it links without wire/). */
static uint32_t sw_csum_add(uint32_t sum, const uint8_t *p, size_t len)
{
    for (; len > 1; p += 2, len -= 2)
        sum += (uint32_t)rd16(p);
    if (len)
        sum += (uint32_t)p[0] << 8;
    return sum;
}

static uint16_t sw_csum_fold(uint32_t sum)
{
    while (sum >> 16)
        sum = (sum & 0xffffu) + (sum >> 16);
    return (uint16_t)~sum;
}

/* A TSO frame cut in software into MSS-sized frames in the TX ring, where the TSO
 * socket refused it (or the device lost TSO since the stack built it): what the
 * device would have done (RFC 9293 3.1 fields per segment: sequence number, FIN and
 * PSH on the last piece only, CWR on the first; IPv4 total length, a fresh ID per
 * piece as Linux's GSO gives, both checksums in full). Returns the frames queued,
 * or -1 when the frame is malformed or the ring has no room for all of its pieces
 * (then nothing is queued). */
static int tx_segment(struct afp_dev *ad, const struct io_frame *f, uint32_t max_len)
{
    uint32_t payload = f->more_len[0] + f->more_len[1];
    uint32_t hlen = f->len, l4 = f->l4_off;
    if (f->gso_size == 0 || hlen < 14u + 20u + 20u || l4 < 14u + 20u || l4 + 20u > hlen ||
        payload == 0)
        return -1;
    uint32_t ihl = (uint32_t)(f->data[14] & 0x0fu) * 4u;
    if (14u + ihl != l4 || (f->data[14] >> 4) != 4)
        return -1;
    uint32_t gso = f->gso_size;
    if (hlen + gso > max_len)
        gso = max_len - hlen; /* never larger than the device takes */
    uint32_t nsegs = (payload + gso - 1u) / gso;
    if (nsegs > ad->tx_frame_nr)
        return -1;
    for (uint32_t k = 0; k < nsegs; k++) { /* room for every piece, or none is sent */
        struct tpacket3_hdr *h =
            (struct tpacket3_hdr *)(void *)tx_slot(ad, (ad->tx_head + k) % ad->tx_frame_nr);
        if (load_acq(&h->tp_status) & (TP_STATUS_SEND_REQUEST | TP_STATUS_SENDING))
            return -1;
    }
    uint32_t src = rd32(f->data + 26), dst = rd32(f->data + 30);
    uint16_t id = rd16(f->data + 18);
    uint32_t seq = rd32(f->data + l4 + 4);
    uint8_t flags = f->data[l4 + 13];
    for (uint32_t k = 0, off = 0; k < nsegs; k++, off += gso) {
        uint32_t len = payload - off < gso ? payload - off : gso;
        struct tpacket3_hdr *h = (struct tpacket3_hdr *)(void *)tx_slot(ad, ad->tx_head);
        uint8_t *p = (uint8_t *)h + AFP_TX_DATA_OFF;
        memcpy(p, f->data, hlen);
        /* payload bytes [off, off + len) of the two pieces */
        uint32_t a = off < f->more_len[0] ? f->more_len[0] - off : 0;
        if (a > len)
            a = len;
        if (a)
            memcpy(p + hlen, f->more[0] + off, a);
        if (len > a)
            memcpy(p + hlen + a, f->more[1] + (off + a - f->more_len[0]), len - a);
        wr16(p + 16, (uint16_t)(hlen - 14u + len));
        wr16(p + 18, (uint16_t)(id + k));
        wr16(p + 24, 0);
        wr16(p + 24, sw_csum_fold(sw_csum_add(0, p + 14, ihl)));
        wr32(p + l4 + 4, seq + off);
        uint8_t fl = flags;
        if (k + 1 < nsegs)
            fl &= (uint8_t)~(0x01u | 0x08u); /* FIN, PSH: the last piece only */
        if (k > 0)
            fl &= (uint8_t)~0x80u; /* CWR: the first piece only */
        p[l4 + 13] = fl;
        /* TCP checksum in full: pseudo-header (RFC 9293 3.1), header and payload */
        uint32_t tcp_len = hlen - l4 + len;
        uint32_t sum = (src >> 16) + (src & 0xffffu) + (dst >> 16) + (dst & 0xffffu) + 6u + tcp_len;
        wr16(p + l4 + 16, 0);
        wr16(p + l4 + 16, sw_csum_fold(sw_csum_add(sum, p + l4, tcp_len)));
        uint32_t flen = hlen + len;
        h->tp_len = flen;
        h->tp_snaplen = flen;
        h->tp_next_offset = 0;
        store_rel(&h->tp_status, TP_STATUS_SEND_REQUEST);
        ad->tx_head = (ad->tx_head + 1) % ad->tx_frame_nr;
    }
    return (int)nsegs;
}

/* A TSO send failed: ask the device again. Without TSO now (`ethtool -K IF tx off` while
 * running), or after errors that say the kernel refuses these frames, or after several
 * refusals in a row, the stack sends MSS-sized frames from here on. */
static void tso_failed(struct io_dev *dev, struct afp_dev *ad, int rc)
{
    ad->tso_fails++;
    if (rc == -EINVAL || rc == -EOPNOTSUPP || rc == -EMSGSIZE || rc == -EIO ||
        ad->tso_fails >= 8 || !device_offers_tso(ad))
        dev->tso_max = 0;
}

static int afp_rx_copy(struct afp_dev *ad, struct io_frame *frames, int max)
{
    if (max > AFP_COPY_BATCH)
        max = AFP_COPY_BATCH;
    for (int i = 0; i < max; i++) {
        ad->rx_iov[i].iov_base = ad->rx_bufs + (size_t)i * AFP_COPY_FRAME;
        ad->rx_iov[i].iov_len = AFP_COPY_FRAME;
        ad->rx_msgs[i].msg_hdr = (struct msghdr){
            .msg_iov = &ad->rx_iov[i],
            .msg_iovlen = 1,
            .msg_control = ad->rx_cmsg + (size_t)i * AFP_CMSG_SPACE,
            .msg_controllen = AFP_CMSG_SPACE,
        };
    }
    int n = recvmmsg(ad->fd, ad->rx_msgs, (unsigned)max, MSG_DONTWAIT, NULL);
    if (n <= 0)
        return 0;
    int out = 0;
    for (int i = 0; i < n; i++) {
        struct msghdr *mh = &ad->rx_msgs[i].msg_hdr;
        if (mh->msg_flags & MSG_TRUNC)
            continue;
        uint32_t status = 0;
        for (struct cmsghdr *c = CMSG_FIRSTHDR(mh); c; c = CMSG_NXTHDR(mh, c))
            if (c->cmsg_level == SOL_PACKET && c->cmsg_type == PACKET_AUXDATA) {
                struct tpacket_auxdata aux;
                memcpy(&aux, CMSG_DATA(c), sizeof aux);
                status = aux.tp_status;
            }
        frames[out].data = ad->rx_iov[i].iov_base;
        frames[out].len = ad->rx_msgs[i].msg_len;
        frames[out].flags = csum_flags(status);
        out++;
    }
    return out;
}

/* The end of a receive burst: n frames. Bursts that keep finding nothing while the device's
 * poll wakes the thread are what a pending socket error looks like (ENETDOWN after the
 * interface went down: it stays until read, also once the interface is up again), so after
 * a run of empty bursts the errors are read. An idle thread's rare empty rounds cost one
 * getsockopt per MTCP_AFP_EMPTY_BURSTS_ERRCHECK of them. */
static int rx_burst_end(struct io_dev *dev, struct afp_dev *ad, int n)
{
    dev->rx_frames += (uint64_t)n;
    if (n > 0) {
        ad->empty_bursts = 0;
    } else if (++ad->empty_bursts >= MTCP_AFP_EMPTY_BURSTS_ERRCHECK) {
        ad->empty_bursts = 0;
        io_afpacket_clear_errors(dev);
    }
    return n;
}

static int afp_rx_burst(struct io_dev *dev, struct io_frame *frames, int max)
{
    struct afp_dev *ad = dev->priv;
    int n = 0;
    if (!ad->map)
        return 0; /* not started: no ring mapped in this process */
    if (ad->tx_backlog)
        tx_flush(ad);

    /* ARP first: a few frames at most, and every core sees them. */
    while (n < max && ad->arp_handed < ad->arp_frame_nr) {
        struct tpacket2_hdr *h = (struct tpacket2_hdr *)(void *)arp_frame(ad, ad->arp_head);
        uint32_t st = load_acq(&h->tp_status);
        if (!(st & TP_STATUS_USER))
            break;
        ad->arp_head = (ad->arp_head + 1) % ad->arp_frame_nr;
        ad->arp_handed++;
        if (h->tp_snaplen < h->tp_len)
            continue; /* cut by the small slot: not an ARP frame we could use */
        frames[n].data = (const uint8_t *)h + h->tp_mac;
        frames[n].len = h->tp_snaplen;
        frames[n].flags = csum_flags(st);
        n++;
    }

    if (ad->rx_copy) {
        n += afp_rx_copy(ad, frames + n, max - n);
        return rx_burst_end(dev, ad, n);
    }
    while (n < max) {
        if (ad->pkts_left == 0) {
            if (ad->nrelease == ad->rx_block_nr)
                break; /* every block walked and still held by the caller */
            struct tpacket_block_desc *bd = rx_block(ad, ad->blk);
            if (!(load_acq(&bd->hdr.bh1.block_status) & TP_STATUS_USER))
                break;
            ad->pkts_left = bd->hdr.bh1.num_pkts;
            ad->pkt = (uint8_t *)bd + bd->hdr.bh1.offset_to_first_pkt;
            if (ad->pkts_left == 0) { /* empty block: nothing to hand over */
                ad->nrelease++;
                ad->blk = (ad->blk + 1) % ad->rx_block_nr;
                continue;
            }
        }
        struct tpacket3_hdr *h = (struct tpacket3_hdr *)(void *)ad->pkt;
        if (h->tp_snaplen == h->tp_len) { /* a cut frame cannot be used; V3 cuts only
                                             frames larger than a block */
            frames[n].data = ad->pkt + h->tp_mac;
            frames[n].len = h->tp_snaplen;
            frames[n].flags = csum_flags(h->tp_status);
            n++;
        }
        ad->pkt += h->tp_next_offset;
        if (--ad->pkts_left == 0) {
            /* Walked to the end; the block goes back in rx_done, when the
             * caller is done with the frames in it. */
            ad->nrelease++;
            ad->blk = (ad->blk + 1) % ad->rx_block_nr;
        }
    }
    return rx_burst_end(dev, ad, n);
}

static void afp_rx_done(struct io_dev *dev)
{
    struct afp_dev *ad = dev->priv;
    if (!ad->map)
        return;
    for (uint32_t i = 0; i < ad->nrelease; i++) {
        struct tpacket_block_desc *bd = rx_block(ad, (ad->release_from + i) % ad->rx_block_nr);
        store_rel(&bd->hdr.bh1.block_status, TP_STATUS_KERNEL);
    }
    if (ad->rx_block_nr) {
        ad->release_from = (ad->release_from + ad->nrelease) % ad->rx_block_nr;
        ad->nrelease = 0;
        ad->cur->rx_blk = ad->release_from;
    }
    for (uint32_t i = ad->arp_handed; i > 0; i--) {
        uint32_t idx = (ad->arp_head + ad->arp_frame_nr - i) % ad->arp_frame_nr;
        struct tpacket2_hdr *h = (struct tpacket2_hdr *)(void *)arp_frame(ad, idx);
        store_rel(&h->tp_status, TP_STATUS_KERNEL);
    }
    ad->arp_handed = 0;
    ad->cur->arp_head = ad->arp_head;
}

static int afp_tx_burst(struct io_dev *dev, const struct io_frame *frames, int n)
{
    struct afp_dev *ad = dev->priv;
    if (!ad->map) {
        dev->tx_dropped += n > 0 ? (uint64_t)n : 0;
        return 0;
    }
    uint32_t max_len = dev->mtu + 18u; /* Ethernet header + MTU + one VLAN tag */
    if (max_len > ad->tx_frame_size - (uint32_t)AFP_TX_DATA_OFF)
        max_len = ad->tx_frame_size - (uint32_t)AFP_TX_DATA_OFF;
    int queued = 0, unflushed = 0, i;
    for (i = 0; i < n; i++) {
        const struct io_frame *f = &frames[i];
        if (f->flags & IO_FRAME_TSO) {
            uint64_t total = (uint64_t)f->len + f->more_len[0] + f->more_len[1];
            bool offload = ad->tso_fd >= 0 && f->len >= 14u + 20u + 20u &&
                           f->l4_off + 20u <= f->len && f->gso_size != 0 &&
                           total <= dev->tso_max;
            if (offload) {
                /* what the ring holds goes first: the wire order stays the queue's */
                if (unflushed) {
                    tx_flush(ad);
                    unflushed = 0;
                }
                int rc = tx_tso(ad, f);
                if (rc == 0) {
                    ad->tso_fails = 0;
                    dev->tx_frames++;
                    continue;
                }
                /* Any error (ENOBUFS from a device without TSO, a full queue...) is a
                 * refused frame, never a lost one: it goes out cut in the ring below. */
                tso_failed(dev, ad, rc);
            }
            int k = tx_segment(ad, f, max_len);
            if (k < 0 && unflushed) { /* the ring is full: let the kernel take it, retry */
                tx_flush(ad);
                unflushed = 0;
                k = tx_segment(ad, f, max_len);
            }
            if (k < 0) {
                dev->tx_dropped++;
                continue;
            }
            dev->tx_frames += (uint64_t)k;
            dev->tx_resegmented++;
            unflushed += k;
            continue;
        }
        if (f->len < 14 || f->len > max_len) {
            dev->tx_dropped++;
            continue;
        }
        if (f->data[12] == 0x08 && f->data[13] == 0x06) {
            /* ARP: through the ARP socket so skb->protocol is right. Rare,
             * so one plain send each is fine. */
            if (send(ad->arp_fd, f->data, f->len, MSG_DONTWAIT) == (ssize_t)f->len)
                dev->tx_frames++;
            else
                dev->tx_dropped++;
            continue;
        }
        struct tpacket3_hdr *h = (struct tpacket3_hdr *)(void *)tx_slot(ad, ad->tx_head);
        uint32_t st = load_acq(&h->tp_status);
        if (st & (TP_STATUS_SEND_REQUEST | TP_STATUS_SENDING))
            break; /* ring full */
        memcpy((uint8_t *)h + AFP_TX_DATA_OFF, f->data, f->len);
        h->tp_len = f->len;
        h->tp_snaplen = f->len;
        h->tp_next_offset = 0;
        store_rel(&h->tp_status, TP_STATUS_SEND_REQUEST);
        ad->tx_head = (ad->tx_head + 1) % ad->tx_frame_nr;
        queued++;
        unflushed++;
    }
    ad->cur->tx_head = ad->tx_head;
    if (unflushed > 0 || ad->tx_backlog)
        tx_flush(ad);
    dev->tx_frames += (uint64_t)queued;
    if (i < n)
        dev->tx_dropped += (uint64_t)(n - i);
    return i;
}

static int afp_poll_fd(struct io_dev *dev)
{
    struct afp_dev *ad = dev->priv;
    return ad->ep >= 0 ? ad->ep : ad->fd;
}

static void afp_close(struct io_dev *dev)
{
    struct afp_dev *ad = dev->priv;
    if (!ad)
        return;
    if (ad->map)
        munmap(ad->map, ad->map_len);
    if (ad->arp_map)
        munmap(ad->arp_map, ad->arp_map_len);
    io_close_fd(ad->ep);
    io_close_fd(ad->fd);
    io_close_fd(ad->arp_fd);
    io_close_fd(ad->tso_fd);
    if (ad->cur)
        munmap(ad->cur, sizeof(struct afp_cursors));
    free(ad->rx_bufs);
    free(ad->rx_msgs);
    free(ad->rx_iov);
    free(ad->rx_cmsg);
    free(ad);
    dev->priv = NULL;
}

int io_afpacket_clear_errors(struct io_dev *dev)
{
    struct afp_dev *ad = dev && dev->ops == &io_afpacket_ops ? dev->priv : NULL;
    if (!ad)
        return 0;
    int n = 0;
    const int fds[3] = {ad->fd, ad->arp_fd, ad->tso_fd};
    for (int i = 0; i < 3; i++) {
        int err = 0;
        socklen_t len = sizeof err;
        if (fds[i] >= 0 && getsockopt(fds[i], SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err)
            n++;
    }
    return n;
}

const struct io_ops io_afpacket_ops = {
    .name = "afpacket",
    .open_all = afp_open_all,
    .start = afp_start,
    .rx_burst = afp_rx_burst,
    .rx_done = afp_rx_done,
    .tx_burst = afp_tx_burst,
    .poll_fd = afp_poll_fd,
    .close = afp_close,
};
