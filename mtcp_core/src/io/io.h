/* Packet I/O: one vtable, batched in both directions (DESIGN.md "Packet I/O").
 *
 * Backends: afpacket (TPACKET_V3 RX ring, TX ring, fanout), tap (multi-queue
 * /dev/net/tun), pair (two stacks in one process, seeded fault injector).
 * Any backend can copy what it moves into a pcap file.
 *
 * Life cycle: io_group_open() opens the devices of every core of a stack in
 * core order (so fanout members / tap queues are numbered like cores), in the
 * process that creates the stack; io_dev_start() is then called in the process
 * (and thread) that runs that core, to map rings and take ownership. */
#ifndef MTCP_IO_H
#define MTCP_IO_H

#include <stddef.h>
#include <stdint.h>

#include "../opt.h"

/* io_frame.flags */
#define IO_FRAME_CSUM_PARTIAL 0x1u /* L4 checksum not filled in by the sender
                                      (veth/tap offload, TP_STATUS_CSUMNOTREADY):
                                      the frame is valid, do not verify it */
#define IO_FRAME_CSUM_VALID 0x2u   /* the kernel already verified the L4 checksum */
#define IO_FRAME_TSO 0x4u          /* TX only, where io_dev.tso_max allows it: a TCP/IPv4
                                      segment larger than one MSS that the device cuts into
                                      gso_size pieces (TCP segmentation offload). data/len
                                      hold the Ethernet, IPv4 and TCP headers, the payload
                                      follows in more[]; the TCP checksum field holds the
                                      pseudo-header sum only (the device completes it per
                                      piece, as for CHECKSUM_PARTIAL in the kernel's
                                      Documentation/networking/checksum-offloads.rst) */

struct io_frame {
    const uint8_t *data; /* RX: borrowed from the backend until rx_done(); TX: caller's */
    uint32_t len;
    uint32_t flags;
    /* IO_FRAME_TSO only (never set on RX): the payload in up to two pieces (a send ring
     * may wrap; an unused piece has length 0), the payload bytes per wire segment, and
     * where the TCP header starts in data. Valid until tx_burst returns. */
    const uint8_t *more[2];
    uint32_t more_len[2];
    uint16_t gso_size;
    uint16_t l4_off;
};

/* Fault injector of the pair link; rates are probabilities in [0, 1]. */
struct io_pair_faults {
    uint64_t seed;
    double loss;
    double duplicate;
    double reorder;  /* a frame is held back and sent after the next one */
    double corrupt;  /* one random bit of the frame flipped */
    uint32_t delay_us;  /* fixed one-way delay */
    uint32_t jitter_us; /* extra uniform random delay in [0, jitter_us] (reorders too) */
};

struct io_pair;                        /* opaque: the in-memory link */
struct io_pair *io_pair_create(const struct io_pair_faults *faults);
void io_pair_destroy(struct io_pair *p);
/* Change the faults while running (tests drop "the next SYN" etc.). */
void io_pair_set_faults(struct io_pair *p, const struct io_pair_faults *faults);
/* The same for the one direction sent by `side` (the link emulator shapes its two
 * directions apart); the other keeps its faults and its random stream. */
void io_pair_set_faults_side(struct io_pair *p, int side, const struct io_pair_faults *faults);
/* Per-direction counters of the link: side = sender side (0 or 1). */
struct io_pair_counters {
    uint64_t sent, delivered, lost, duplicated, reordered, corrupted, overflow;
    uint64_t targeted; /* dropped by an io_pair_drop_next rule (not counted in lost) */
};
void io_pair_get_counters(struct io_pair *p, int side, struct io_pair_counters *out);
/* Targeted drops: the next `count` frames sent by `side` that are TCP segments
 * with (flags & mask) == value and min_payload <= payload bytes <= max_payload
 * are dropped (e.g. mask SYN|ACK, value SYN: the next SYN). Arming the same rule
 * again adds to its count. 0, or -EINVAL (bad side, a rule that cannot match),
 * -ENOSPC (every rule slot of that side is armed). Thread-safe. */
int io_pair_drop_next(struct io_pair *p, int side, uint8_t mask, uint8_t value, uint32_t count,
                      uint32_t min_payload, uint32_t max_payload);

/* A side that no stack has open, driven by hand (tests), on the caller's clock:
 * io_pair_inject sends one frame as `side` (through that side's fault injector, due at
 * now_ns + the delay); io_pair_take copies the next frame sent to `side` that is due by
 * now_ns into buf and returns its length, 0 when none is due, -EMSGSIZE when it does not fit
 * (it stays queued). -EBUSY when a stack has that side open, -EINVAL for a bad side,
 * -ENOBUFS when the link is full (counted as overflow). io_pair_next_due: when the next
 * frame for `side` is due (ns), 0 when none is queued. Thread-safe. */
int io_pair_inject(struct io_pair *p, int side, const uint8_t *frame, uint32_t len,
                   uint64_t now_ns);
int io_pair_take(struct io_pair *p, int side, uint8_t *buf, uint32_t cap, uint64_t now_ns);
uint64_t io_pair_next_due(struct io_pair *p, int side);

struct io_config {
    const char *backend;     /* "afpacket" | "tap" | "pair" */
    const char *iface;       /* afpacket: interface to bind; tap: device name (created if absent) */
    unsigned nqueues;        /* number of cores of the stack = fanout members / tap queues */
    unsigned fanout_group;   /* afpacket: fanout group id (0 = derive from pid) */
    struct io_pair *pair;    /* pair: the link */
    int pair_side;           /* pair: 0 or 1 */
    const char *tap_host_cidr; /* tap: if set, e.g. "198.18.0.1/24", give the host side this
                                  address and bring it up */
    const char *pcap_path;   /* if set, every frame moved is copied there; "%u" in the path is
                                replaced by the core number */
    unsigned ring_frames;    /* afpacket: ring size hint in frames (0 = default) */
    int afpacket_rx_copy;    /* afpacket: receive with recvmmsg() instead of a V3 ring */
};

struct io_dev;

struct io_group;

struct io_ops {
    const char *name;
    /* Open the devices of all g->n cores in core order: fill g->devs[i] (ops, priv,
     * queue, mac, mtu, peer_mac). Runs in the process that creates the stack, before
     * any fork. 0 or -errno; *err_msg (static string) says what failed. */
    int (*open_all)(struct io_group *g, const char **err_msg);
    /* Take ownership in the running process/thread: map rings, allocate. 0 or -errno. */
    int (*start)(struct io_dev *dev);
    /* Hand over up to max received frames; they stay valid until rx_done(). Never blocks. */
    int (*rx_burst)(struct io_dev *dev, struct io_frame *frames, int max);
    /* Give back every frame handed over since the last rx_done(). */
    void (*rx_done)(struct io_dev *dev);
    /* Copy n frames out and flush once. Returns frames accepted (rest dropped: ring full). */
    int (*tx_burst)(struct io_dev *dev, const struct io_frame *frames, int n);
    /* A file descriptor that polls readable when rx_burst has something (or may have). */
    int (*poll_fd)(struct io_dev *dev);
    /* Monotonic ns when a delayed frame becomes due (pair with delay), 0 if none.
     * NULL for a device that never delays a frame: call io_next_due_ns(). */
    uint64_t (*next_due_ns)(struct io_dev *dev);
    void (*close)(struct io_dev *dev);
};

struct io_pcap; /* pcap writer, see io/pcap.c */

struct io_dev {
    const struct io_ops *ops;
    void *priv;
    unsigned queue;          /* this device's core number */
    uint8_t mac[6];          /* MAC the stack uses on this device */
    uint8_t peer_mac[6];     /* tap: the host side MAC (known without ARP); else zero */
    int has_peer_mac;
    unsigned mtu;
    uint32_t tso_max;        /* largest IO_FRAME_TSO frame the device takes (bytes, Ethernet
                                header included); 0: none, every frame fits the MTU */
    struct io_pcap *pcap;    /* NULL when not capturing */
    int manual_clock;        /* 1: the device's time is now_ns, set by the context's round
                                (a stepped context); 0: the monotonic clock */
    uint64_t now_ns;
    uint64_t rx_frames, tx_frames, tx_dropped; /* backend's own counts */
    uint64_t tx_resegmented; /* IO_FRAME_TSO frames the backend cut into MSS-sized frames
                                itself because the device refused the offload */
    const struct io_config *cfg; /* the group's config (heap copy owned by the group; stays
                                    valid if the io_group struct itself is copied) */
};

/* A stack's devices, one per core, opened in core order. */
struct io_group {
    struct io_config cfg;
    unsigned n;
    struct io_dev *devs;     /* n devices */
};

/* Open every core's device. 0 or -errno; on error *err_msg (static string or NULL) says what. */
int io_group_open(struct io_group *g, const struct io_config *cfg, const char **err_msg);
void io_group_close(struct io_group *g);
/* Called by the core that owns g->devs[core] before first use. 0 or -errno. */
int io_dev_start(struct io_dev *dev);
/* Called by the core that started dev when it stops: flushes what it owns (pcap). */
void io_dev_stop(struct io_dev *dev);

/* Wrappers that also copy into the pcap file when capturing. */
int io_rx_burst(struct io_dev *dev, struct io_frame *frames, int max);
void io_rx_done(struct io_dev *dev);
int io_tx_burst(struct io_dev *dev, const struct io_frame *frames, int n);

/* When dev's next delayed frame becomes due (monotonic ns), 0 if none. */
static inline uint64_t io_next_due_ns(struct io_dev *dev)
{
    return dev->ops->next_due_ns ? dev->ops->next_due_ns(dev) : 0;
}

/* The flow->core function the afpacket fanout program computes and the stack
 * can compute too (symmetric in source/destination): addresses and ports in
 * host byte order. */
static inline unsigned io_flow_core(uint32_t saddr, uint32_t daddr, uint16_t sport, uint16_t dport,
                                    unsigned ncores)
{
    uint32_t h = saddr ^ daddr ^ (uint32_t)sport ^ (uint32_t)dport;
    h ^= h >> 16;
    /* multiply, then take the high half: every input bit moves the result, so one
     * client's ports (Linux picks only even ones) spread over all cores */
    h *= 0x9e3779b1u;
    h >>= 16;
    return ncores ? (unsigned)(h % ncores) : 0;
}

/* afpacket: reads (and so clears) the pending errors of the device's sockets, SO_ERROR.
 * After the interface went down, the ARP socket (a ring, never read with recv) keeps its
 * ENETDOWN and with it POLLERR, so its poll fd reports ready until someone reads it. Returns
 * how many sockets had one; 0 for other backends. */
int io_afpacket_clear_errors(struct io_dev *dev);

/* pcap writer */
struct io_pcap *io_pcap_open(const char *path, unsigned core);
/* at_ns: the record's time in ns since the epoch of the capture's clock; 0 = now on the
 * wall clock. A stepped context's device passes its manual time, so its captures are as
 * deterministic as its frames. */
void io_pcap_write(struct io_pcap *p, const uint8_t *data, uint32_t len, uint64_t at_ns);
void io_pcap_close(struct io_pcap *p);

/* backends */
extern const struct io_ops io_afpacket_ops;
extern const struct io_ops io_tap_ops;
extern const struct io_ops io_pair_ops;

#endif
