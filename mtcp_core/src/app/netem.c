/* The link emulator: a two-port bridge that puts a bad link between two interfaces.
 *
 * Built from the core's own io pieces: each port is an afpacket device (io/afpacket.c,
 * copy mode, so a frame is taken the moment it arrives instead of when a ring block
 * retires), and the two directions are the two directions of one pair link
 * (io/pair.c): its seeded fault injector decides loss, duplication, reordering,
 * corruption and jitter per frame, and its timer-ordered queue (a heap on the due
 * time) is the delay line. A frame taken on port a is sent into the pair's side 0,
 * comes out of side 1 when it is due and leaves on port b; b -> a uses the other
 * direction. Each direction has its own faults and its own random stream of the one
 * seed.
 *
 * In front of the delay line a direction may have a rate limit: a token bucket
 * (`rate_bps`, depth `burst_bytes`) draining a FIFO of at most `queue_frames` frames;
 * a frame that finds the FIFO full is dropped (tail drop), as at a bottleneck router.
 * So the path is: bottleneck queue -> lossy link -> propagation delay. The rate counts
 * the Ethernet frame (header included, no preamble or gap).
 *
 * One thread runs everything (mtcp_netem_run): it sleeps in epoll on both ports, a
 * timerfd armed at the earliest due time (the delay line's head or the bucket's next
 * departure) with a 1 ns timer slack, and a stop eventfd; where allowed it runs
 * SCHED_FIFO (rt_priority), so that other load on the machine does not make it wake up
 * late. A frame is forwarded within the timer's wake-up latency (tens of microseconds;
 * measured: median 57 us, p99 145 us late) of its due time.
 *
 * Frames the sending kernel left with a partial checksum (veth TX checksum offload)
 * get it completed here, as the NIC would have done, so that the far end's checksum
 * check sees what the wire carried (and catches the corruption we inject). Frames
 * over the egress MTU (GSO/TSO super-frames from a peer with segmentation offload on,
 * which a veth carries whole) are cut into MTU-sized TCP segments here, as the NIC
 * would have (`segmented`); any other frame over the MTU is dropped (`oversize`).
 *
 * Counters are written by the loop thread only and read with atomic loads from any
 * thread; settings change from any thread (faults through the pair's lock, the rate
 * through a small mutex the loop checks once per round). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <net/if.h>
#include <pthread.h>
#include <sched.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include "../io/io_internal.h"
#include "../wire/bytes.h"
#include "../wire/wire.h"
#include "mtcp.h"

#define NETEM_BATCH 64
#define NETEM_DEFAULT_QUEUE 1000u
#define NETEM_MAX_QUEUE 1000000u
/* A port that wakes the loop this many times in a row with nothing to read has its sockets'
 * errors read: after its interface went down, the ARP socket's error (POLLERR) stays raised
 * until someone reads it, and would have the loop spin, at real-time priority, even after the
 * interface is up again. */
#define NETEM_EMPTY_WAKEUPS 16u

struct netem_rate {
    uint64_t rate_bps;   /* 0: no limit */
    uint32_t limit;      /* frames the FIFO may hold */
    uint32_t burst;      /* bucket depth, bytes */
};

struct netem_dir {
    /* rate limiter FIFO (capacity fixed at open) */
    uint8_t *slots;      /* cap * MTCP_MAX_FRAME */
    uint32_t *lens;
    uint32_t cap, head, count;
    struct netem_rate rate;
    double tokens;       /* bytes */
    uint64_t t_refill;   /* ns when tokens was computed */
    bool delaying;       /* the delay line adds time (delay or jitter set) */
    struct mtcp_netem_counters c; /* loop thread writes, others read atomically */
};

struct netem_watch {
    bool woke;       /* epoll reported it in the last sleep */
    uint32_t empty;  /* wake-ups in a row with nothing to read */
};

struct mtcp_netem {
    struct io_group port[2]; /* afpacket: [0] = a, [1] = b */
    struct netem_watch watch[2];
    struct io_group link[2]; /* pair: [0] = side 0 (a -> b enters here, b -> a leaves) */
    struct io_pair *pair;
    int promisc_fd[2];
    int ep, tfd, stop_fd;
    int stop;
    int running;
    int rt_priority, rt_active;
    struct netem_dir dir[2]; /* [0] = a -> b, [1] = b -> a */
    pthread_mutex_t lock;    /* guards pending and has_pending */
    struct netem_rate pending[2];
    bool delaying_pending[2];
    int has_pending;         /* atomic: set by mtcp_netem_set */
    uint8_t scratch[NETEM_BATCH][MTCP_MAX_FRAME];
};

static void cadd(uint64_t *p, uint64_t n)
{
    if (n)
        __atomic_store_n(p, *p + n, __ATOMIC_RELAXED);
}

static void set_err(char *err, size_t errlen, const char *msg, const char *detail)
{
    if (err && errlen)
        snprintf(err, errlen, "%s%s%s", msg, detail ? ": " : "", detail ? detail : "");
}

static struct netem_rate rate_of(const struct mtcp_netem_dir *d, uint32_t cap)
{
    struct netem_rate r = {d->rate_bps, d->queue_frames ? d->queue_frames : cap, d->burst_bytes};
    if (r.burst == 0) {
        /* two full frames, or 1 ms at the rate, whichever is more */
        uint64_t ms = d->rate_bps / 8000u;
        r.burst = ms > 2u * 1514u ? (uint32_t)(ms > UINT32_MAX ? UINT32_MAX : ms) : 2u * 1514u;
    }
    if (r.burst < MTCP_MAX_FRAME)
        r.burst = MTCP_MAX_FRAME; /* a frame must fit in a full bucket */
    return r;
}

static struct io_pair_faults faults_of(const struct mtcp_pair_faults *f)
{
    struct io_pair_faults pf = {f->seed,     f->loss,     f->duplicate, f->reorder,
                                f->corrupt,  f->delay_us, f->jitter_us};
    return pf;
}

static int check_dir(const struct mtcp_netem_dir *d)
{
    const struct mtcp_pair_faults *f = &d->faults;
    const double p[4] = {f->loss, f->duplicate, f->reorder, f->corrupt};
    for (int i = 0; i < 4; i++)
        if (!(p[i] >= 0.0 && p[i] <= 1.0))
            return -EINVAL;
    if (d->queue_frames > NETEM_MAX_QUEUE)
        return -EINVAL;
    return 0;
}

/* Promiscuous mode for as long as this socket lives (a real NIC filters by MAC; a
 * bridge must see every frame). */
static int promisc_socket(const char *iface)
{
    int fd = socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    struct packet_mreq mr;
    memset(&mr, 0, sizeof mr);
    mr.mr_ifindex = (int)if_nametoindex(iface);
    mr.mr_type = PACKET_MR_PROMISC;
    if (mr.mr_ifindex == 0 ||
        setsockopt(fd, SOL_PACKET, PACKET_ADD_MEMBERSHIP, &mr, sizeof mr) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static int open_ports(struct mtcp_netem *nm, const struct mtcp_netem_conf *conf, char *err,
                      size_t errlen)
{
    const char *ifaces[2] = {conf->iface_a, conf->iface_b};
    const char *pcaps[2] = {conf->pcap_a, conf->pcap_b};
    for (int i = 0; i < 2; i++) {
        struct io_config cfg;
        memset(&cfg, 0, sizeof cfg);
        cfg.backend = "afpacket";
        cfg.iface = ifaces[i];
        cfg.nqueues = 1;
        cfg.afpacket_rx_copy = 1;
        cfg.pcap_path = pcaps[i] && pcaps[i][0] ? pcaps[i] : NULL;
        const char *msg = NULL;
        int rc = io_group_open(&nm->port[i], &cfg, &msg);
        if (rc < 0) {
            set_err(err, errlen, ifaces[i], msg);
            return rc;
        }
        nm->promisc_fd[i] = promisc_socket(ifaces[i]);
    }
    return 0;
}

static int enter_netns(const char *netns, int *own_fd)
{
    char path[512];
    if (strchr(netns, '/'))
        snprintf(path, sizeof path, "%s", netns);
    else
        snprintf(path, sizeof path, "/run/netns/%s", netns);
    *own_fd = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
    if (*own_fd < 0)
        return io_neg_errno();
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int rc = io_neg_errno();
        close(*own_fd);
        return rc;
    }
    int rc = setns(fd, CLONE_NEWNET) < 0 ? io_neg_errno() : 0;
    close(fd);
    if (rc < 0)
        close(*own_fd);
    return rc;
}

void mtcp_netem_close(struct mtcp_netem *nm)
{
    if (!nm)
        return;
    for (int i = 0; i < 2; i++) {
        if (nm->port[i].devs)
            io_dev_stop(&nm->port[i].devs[0]);
        io_group_close(&nm->port[i]);
        io_group_close(&nm->link[i]);
        io_close_fd(nm->promisc_fd[i]);
        free(nm->dir[i].slots);
        free(nm->dir[i].lens);
    }
    io_pair_destroy(nm->pair);
    io_close_fd(nm->ep);
    io_close_fd(nm->tfd);
    io_close_fd(nm->stop_fd);
    pthread_mutex_destroy(&nm->lock);
    free(nm);
}

/* Each direction's rate limiter: its bounded FIFO and token bucket (0, or -ENOMEM). */
static int netem_queues(struct mtcp_netem *nm, const struct mtcp_netem_conf *conf, char *err,
                        size_t errlen)
{
    for (int d = 0; d < 2; d++) {
        struct netem_dir *nd = &nm->dir[d];
        nd->cap = conf->dir[d].queue_frames ? conf->dir[d].queue_frames : NETEM_DEFAULT_QUEUE;
        nd->slots = malloc((size_t)nd->cap * MTCP_MAX_FRAME);
        nd->lens = calloc(nd->cap, sizeof *nd->lens);
        if (!nd->slots || !nd->lens) {
            set_err(err, errlen, "netem: out of memory (rate limiter queue)", NULL);
            return -ENOMEM;
        }
        nd->rate = rate_of(&conf->dir[d], nd->cap);
        nd->tokens = nd->rate.burst;
        nd->t_refill = mtcp_now_ns();
        nd->delaying = conf->dir[d].faults.delay_us || conf->dir[d].faults.jitter_us;
    }

    return 0;
}

struct mtcp_netem *mtcp_netem_open(const struct mtcp_netem_conf *conf, char *err, size_t errlen)
{
    set_err(err, errlen, "", NULL);
    if (!conf || !conf->iface_a || !conf->iface_b || !conf->iface_a[0] || !conf->iface_b[0]) {
        set_err(err, errlen, "netem: two interfaces are needed (a and b)", NULL);
        errno = EINVAL;
        return NULL;
    }
    if (strcmp(conf->iface_a, conf->iface_b) == 0) {
        set_err(err, errlen, "netem: a and b must be different interfaces", NULL);
        errno = EINVAL;
        return NULL;
    }
    for (int i = 0; i < 2; i++)
        if (check_dir(&conf->dir[i]) < 0) {
            set_err(err, errlen,
                    "netem: rates must lie in [0, 1] and queue_frames at most 1000000", NULL);
            errno = EINVAL;
            return NULL;
        }
    struct mtcp_netem *nm = calloc(1, sizeof *nm);
    if (!nm) {
        set_err(err, errlen, "netem: out of memory", NULL);
        errno = ENOMEM;
        return NULL;
    }
    pthread_mutex_init(&nm->lock, NULL);
    nm->rt_priority = conf->rt_priority;
    nm->ep = nm->tfd = nm->stop_fd = -1;
    nm->promisc_fd[0] = nm->promisc_fd[1] = -1;
    int rc = 0;

    struct io_pair_faults f0 = faults_of(&conf->dir[0].faults);
    struct io_pair_faults f1 = faults_of(&conf->dir[1].faults);
    nm->pair = io_pair_create(&f0);
    if (!nm->pair) {
        rc = io_neg_errno();
        set_err(err, errlen, "netem: cannot make the delay line", strerror(-rc));
        goto fail;
    }
    io_pair_set_faults_side(nm->pair, 1, &f1);
    for (int s = 0; s < 2; s++) {
        struct io_config cfg;
        memset(&cfg, 0, sizeof cfg);
        cfg.backend = "pair";
        cfg.nqueues = 1;
        cfg.pair = nm->pair;
        cfg.pair_side = s;
        const char *msg = NULL;
        if ((rc = io_group_open(&nm->link[s], &cfg, &msg)) < 0) {
            set_err(err, errlen, "netem", msg);
            goto fail;
        }
        if ((rc = io_dev_start(&nm->link[s].devs[0])) < 0) {
            set_err(err, errlen, "netem: starting the delay line failed", strerror(-rc));
            goto fail;
        }
    }
    if ((rc = netem_queues(nm, conf, err, errlen)) < 0)
        goto fail;

    /* The ports, inside the namespace if one is named; this thread comes back. */
    int own = -1;
    if (conf->netns && conf->netns[0]) {
        if ((rc = enter_netns(conf->netns, &own)) < 0) {
            set_err(err, errlen, "netem: cannot enter the network namespace", conf->netns);
            goto fail;
        }
    }
    rc = open_ports(nm, conf, err, errlen);
    if (rc == 0) {
        for (int i = 0; i < 2 && rc == 0; i++)
            if ((rc = io_dev_start(&nm->port[i].devs[0])) < 0)
                set_err(err, errlen, "netem: starting the port failed", strerror(-rc));
    }
    if (own >= 0) {
        if (setns(own, CLONE_NEWNET) < 0 && rc == 0) {
            rc = io_neg_errno();
            set_err(err, errlen, "netem: cannot return to the caller's namespace", NULL);
        }
        close(own);
    }
    if (rc < 0)
        goto fail;

    nm->ep = epoll_create1(EPOLL_CLOEXEC);
    nm->tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    nm->stop_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (nm->ep < 0 || nm->tfd < 0 || nm->stop_fd < 0) {
        rc = io_neg_errno();
        set_err(err, errlen, "netem: epoll/timerfd/eventfd", strerror(-rc));
        goto fail;
    }
    struct io_dev *pa = &nm->port[0].devs[0], *pb = &nm->port[1].devs[0];
    int fds[4] = {pa->ops->poll_fd(pa), pb->ops->poll_fd(pb), nm->tfd, nm->stop_fd};
    for (int i = 0; i < 4; i++) {
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
        if (epoll_ctl(nm->ep, EPOLL_CTL_ADD, fds[i], &ev) < 0) {
            rc = io_neg_errno();
            set_err(err, errlen, "netem: epoll_ctl", strerror(-rc));
            goto fail;
        }
    }
    return nm;
fail:
    mtcp_netem_close(nm);
    errno = rc < 0 ? -rc : EIO;
    return NULL;
}

/* ---- the forwarding loop ---- */

/* A partial L4 checksum (the sender's kernel offloaded it) completed as the NIC would:
 * the field holds the pseudo-header sum, the device sums from the L4 header to the end
 * and stores the complement there. IPv4 TCP and UDP only (what a veth offloads here). */
int mtcp_netem_complete_csum(uint8_t *f, uint32_t len)
{
    if (!f || len < 14 + 20 || f[12] != 0x08 || f[13] != 0x00)
        return 0;
    uint8_t *ip = f + 14;
    uint32_t ihl = (uint32_t)(ip[0] & 0x0f) * 4;
    uint32_t total = rd16(ip + 2);
    if ((ip[0] >> 4) != 4 || ihl < 20 || total > len - 14 || total < ihl)
        return 0;
    if (rd16(ip + 6) & 0x3fff)
        return 0; /* a fragment: its L4 header is not (all) here */
    uint32_t off = ip[9] == 6 ? 16 : ip[9] == 17 ? 6 : 0;
    uint32_t l4len = total - ihl;
    if (off == 0 || l4len < off + 2)
        return 0;
    uint8_t *l4 = ip + ihl;
    uint16_t c = wire_csum_fold(wire_csum_add(0, l4, l4len));
    if (ip[9] == 17 && c == 0)
        c = 0xffff; /* RFC 768: a computed zero is sent as all ones */
    wr16(l4 + off, c);
    return 1;
}

static void rate_refill(struct netem_dir *d, uint64_t now)
{
    if (now <= d->t_refill)
        return;
    double add = (double)(now - d->t_refill) * (double)d->rate.rate_bps / 8e9;
    d->tokens += add;
    if (d->tokens > d->rate.burst)
        d->tokens = d->rate.burst;
    d->t_refill = now;
}

/* The ns at which the FIFO's head may leave, 0 when the FIFO is empty. */
static uint64_t rate_next_ns(const struct netem_dir *d)
{
    if (d->count == 0)
        return 0;
    double need = (double)d->lens[d->head] - d->tokens;
    if (need <= 0 || d->rate.rate_bps == 0)
        return d->t_refill;
    return d->t_refill + (uint64_t)(need * 8e9 / (double)d->rate.rate_bps) + 1;
}

/* Sends what the bucket lets go from the FIFO into the delay line. */
static void rate_drain(struct mtcp_netem *nm, int di, uint64_t now)
{
    struct netem_dir *d = &nm->dir[di];
    struct io_dev *in = &nm->link[di].devs[0];
    if (d->rate.rate_bps)
        rate_refill(d, now);
    while (d->count > 0) {
        struct io_frame fr[NETEM_BATCH];
        int n = 0;
        while (n < NETEM_BATCH && d->count > 0) {
            uint32_t len = d->lens[d->head];
            if (d->rate.rate_bps) {
                if (d->tokens < (double)len)
                    break;
                d->tokens -= (double)len;
            }
            memset(&fr[n], 0, sizeof fr[n]);
            fr[n].data = d->slots + (size_t)d->head * MTCP_MAX_FRAME;
            fr[n].len = len;
            n++;
            d->head = (d->head + 1) % d->cap;
            d->count--;
        }
        if (n == 0)
            break;
        /* the pair takes the whole burst (a full delay line counts its overflow) */
        (void)io_tx_burst(in, fr, n);
    }
}

/* The frames of one round on their way into a direction: a batch for the delay line,
 * built in nm->scratch where a frame had to change (checksum, segmentation). */
struct intake {
    struct io_frame out[NETEM_BATCH];
    int m;
    uint64_t queued, qdrop;
};

static void intake_flush(struct mtcp_netem *nm, int di, struct intake *st)
{
    if (st->m > 0)
        (void)io_tx_burst(&nm->link[di].devs[0], st->out, st->m); /* a full delay line
                                                                      counts its overflow */
    st->m = 0;
}

/* The scratch buffer the next frame of this round may be built in. */
static uint8_t *intake_buf(struct mtcp_netem *nm, const struct intake *st)
{
    return nm->scratch[st->m];
}

/* One wire-sized frame into direction di: the rate limiter's FIFO (tail drop) when a rate
 * is set or frames wait there, else the delay line. */
static void intake_push(struct mtcp_netem *nm, int di, struct intake *st, const uint8_t *data,
                        uint32_t len)
{
    struct netem_dir *d = &nm->dir[di];
    if (d->rate.rate_bps || d->count > 0) {
        if (d->count >= d->rate.limit || d->count >= d->cap) {
            st->qdrop++;
            return;
        }
        uint32_t slot = (d->head + d->count) % d->cap;
        memcpy(d->slots + (size_t)slot * MTCP_MAX_FRAME, data, len);
        d->lens[slot] = len;
        d->count++;
        st->queued++;
        return;
    }
    memset(&st->out[st->m], 0, sizeof st->out[st->m]);
    st->out[st->m].data = data;
    st->out[st->m].len = len;
    if (++st->m == NETEM_BATCH)
        intake_flush(nm, di, st);
}

int mtcp_netem_segment(const uint8_t *f, uint32_t len, uint32_t mtu, uint32_t index,
                       uint8_t *out, uint32_t out_size)
{
    if (!f || len < 14 + 20 + 20 || f[12] != 0x08 || f[13] != 0x00)
        return -1;
    const uint8_t *ip = f + 14;
    uint32_t ihl = (uint32_t)(ip[0] & 0x0f) * 4;
    uint32_t total = rd16(ip + 2);
    if ((ip[0] >> 4) != 4 || ihl < 20 || ip[9] != 6 || total > len - 14 || total < ihl + 20)
        return -1;
    if (rd16(ip + 6) & 0x3fff)
        return -1; /* a fragment: not a whole TCP segment */
    const uint8_t *tcp = ip + ihl;
    uint32_t doff = (uint32_t)(tcp[12] >> 4) * 4;
    if (doff < 20 || ihl + doff > total || mtu <= ihl + doff || mtu > 65535)
        return -1;
    uint32_t hdrs = 14 + ihl + doff, payload = total - ihl - doff, mss = mtu - ihl - doff;
    uint32_t pieces = payload == 0 ? 1 : (payload + mss - 1) / mss;
    if (index >= pieces)
        return 0;
    uint32_t off = index * mss;
    uint32_t n = payload - off < mss ? payload - off : mss;
    if (!out || out_size < hdrs + n)
        return -1;
    bool last = index + 1 == pieces;
    memcpy(out, f, hdrs);
    memcpy(out + hdrs, f + hdrs + off, n);
    uint8_t *bip = out + 14, *btcp = bip + ihl;
    wr16(bip + 2, (uint16_t)(ihl + doff + n));
    wr16(bip + 4, (uint16_t)(rd16(ip + 4) + index));
    wr16(bip + 10, 0);
    wr16(bip + 10, wire_csum_fold(wire_csum_add(0, bip, ihl)));
    wr32(btcp + 4, rd32(tcp + 4) + off);
    uint8_t fl = tcp[13];
    if (!last)
        fl &= (uint8_t)~(WIRE_TCP_FIN | WIRE_TCP_PSH);
    if (index > 0)
        fl &= (uint8_t)~WIRE_TCP_CWR;
    btcp[13] = fl;
    wr16(btcp + 16, 0);
    uint32_t sum = wire_csum_pseudo(rd32(ip + 12), rd32(ip + 16), 6, (uint16_t)(doff + n));
    wr16(btcp + 16, wire_csum_fold(wire_csum_add(sum, btcp, doff + n)));
    return (int)(hdrs + n);
}

/* A frame over the MTU (a GSO frame of a sender with segmentation offload, which a veth
 * carries whole) cut into MTU-sized TCP segments as the NIC would have; false when it is
 * not TCP/IPv4 (it is then dropped). */
static bool intake_segment(struct mtcp_netem *nm, int di, struct intake *st, const uint8_t *f,
                           uint32_t len, uint32_t mtu)
{
    if (mtu > MTCP_MAX_FRAME - 14)
        return false; /* a piece would not fit a delay-line slot */
    for (uint32_t k = 0;; k++) {
        uint8_t *b = intake_buf(nm, st);
        int n = mtcp_netem_segment(f, len, mtu, k, b, MTCP_MAX_FRAME);
        if (n < 0)
            return k > 0;
        if (n == 0)
            return true;
        intake_push(nm, di, st, b, (uint32_t)n);
    }
}

/* Takes frames from port `di` into direction di (a->b for port a). */
static int take_in(struct mtcp_netem *nm, int di, uint64_t now)
{
    struct netem_dir *d = &nm->dir[di];
    struct io_dev *port = &nm->port[di].devs[0];
    uint32_t mtu = nm->port[1 - di].devs[0].mtu; /* the egress port's */
    struct io_frame fr[NETEM_BATCH];
    int n = io_rx_burst(port, fr, NETEM_BATCH);
    struct intake st;
    st.m = 0;
    st.queued = st.qdrop = 0;
    uint64_t oversize = 0, csum = 0, segmented = 0;
    for (int i = 0; i < n; i++) {
        const uint8_t *data = fr[i].data;
        uint32_t len = fr[i].len;
        if (len == 0)
            continue;
        if (len > 14 + mtu || len > MTCP_MAX_FRAME) {
            if (intake_segment(nm, di, &st, data, len, mtu))
                segmented++;
            else
                oversize++;
            continue;
        }
        if (fr[i].flags & IO_FRAME_CSUM_PARTIAL) {
            uint8_t *b = intake_buf(nm, &st);
            memcpy(b, data, len);
            if (mtcp_netem_complete_csum(b, len))
                csum++;
            data = b;
        }
        intake_push(nm, di, &st, data, len);
    }
    intake_flush(nm, di, &st);
    io_rx_done(port);
    cadd(&d->c.received, (uint64_t)n);
    cadd(&d->c.oversize, oversize);
    cadd(&d->c.segmented, segmented);
    cadd(&d->c.checksummed, csum);
    cadd(&d->c.queue_drops, st.qdrop);
    if (st.queued) {
        /* of the frames queued now, those still there had to wait for tokens */
        rate_drain(nm, di, now);
        cadd(&d->c.rate_delayed, d->count < st.queued ? d->count : st.queued);
    }
    return n;
}

/* Forwards what the delay line of direction di has due onto the far port. */
static bool give_out(struct mtcp_netem *nm, int di)
{
    struct netem_dir *d = &nm->dir[di];
    struct io_dev *outl = &nm->link[1 - di].devs[0];
    struct io_dev *port = &nm->port[1 - di].devs[0];
    struct io_frame fr[NETEM_BATCH];
    int n = io_rx_burst(outl, fr, NETEM_BATCH);
    if (n > 0) {
        int sent = io_tx_burst(port, fr, n);
        uint64_t bytes = 0;
        for (int i = 0; i < sent; i++)
            bytes += fr[i].len;
        cadd(&d->c.forwarded, (uint64_t)sent);
        if (d->delaying)
            cadd(&d->c.delayed, (uint64_t)sent);
        cadd(&d->c.bytes_forwarded, bytes);
        cadd(&d->c.tx_errors, (uint64_t)(n - sent));
    }
    io_rx_done(outl);
    return n == NETEM_BATCH;
}

static void apply_pending(struct mtcp_netem *nm, uint64_t now)
{
    if (!__atomic_load_n(&nm->has_pending, __ATOMIC_ACQUIRE))
        return;
    pthread_mutex_lock(&nm->lock);
    for (int i = 0; i < 2; i++) {
        struct netem_dir *d = &nm->dir[i];
        if (d->rate.rate_bps)
            rate_refill(d, now);
        d->rate = nm->pending[i];
        d->t_refill = now;
        if (d->tokens > d->rate.burst)
            d->tokens = d->rate.burst;
        d->delaying = nm->delaying_pending[i];
    }
    __atomic_store_n(&nm->has_pending, 0, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&nm->lock);
}

/* After a round: a port that keeps waking the loop with nothing to read has its sockets'
 * errors read (counted in its ingress direction's port_errors). */
static void watch_port(struct mtcp_netem *nm, int i, int taken)
{
    struct netem_watch *w = &nm->watch[i];
    bool woke = w->woke;
    w->woke = false;
    if (taken > 0) {
        w->empty = 0;
        return;
    }
    if (!woke || ++w->empty < NETEM_EMPTY_WAKEUPS)
        return;
    w->empty = 0;
    int n = io_afpacket_clear_errors(&nm->port[i].devs[0]);
    if (n > 0)
        cadd(&nm->dir[i].c.port_errors, (uint64_t)n);
}

static void arm_timer(struct mtcp_netem *nm, uint64_t due_ns)
{
    struct itimerspec its;
    memset(&its, 0, sizeof its);
    if (due_ns) {
        its.it_value.tv_sec = (time_t)(due_ns / 1000000000ull);
        its.it_value.tv_nsec = (long)(due_ns % 1000000000ull);
    }
    (void)timerfd_settime(nm->tfd, TFD_TIMER_ABSTIME, &its, NULL);
}

int mtcp_netem_run(struct mtcp_netem *nm)
{
    if (!nm)
        return -EINVAL;
    if (__atomic_exchange_n(&nm->running, 1, __ATOMIC_ACQ_REL))
        return -EBUSY;
    /* Wake-ups on time: the default 50 us timer slack would be added to every delay. */
    (void)prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);
    /* And ahead of ordinary threads: on a loaded machine the scheduler would otherwise add
     * its own latency (milliseconds) to the delay. The loop sleeps whenever it has nothing
     * due, so it takes only the CPU its frames need. */
    int policy;
    struct sched_param saved;
    bool restore = false;
    if (nm->rt_priority > 0 && pthread_getschedparam(pthread_self(), &policy, &saved) == 0) {
        struct sched_param sp = {.sched_priority = nm->rt_priority};
        restore = pthread_setschedparam(pthread_self(), SCHED_FIFO, &sp) == 0;
    }
    __atomic_store_n(&nm->rt_active, restore ? 1 : 0, __ATOMIC_RELEASE);
    uint64_t armed = 0;
    while (!__atomic_load_n(&nm->stop, __ATOMIC_ACQUIRE)) {
        uint64_t now = mtcp_now_ns();
        apply_pending(nm, now);
        bool busy = false;
        for (int di = 0; di < 2; di++) {
            int taken = take_in(nm, di, now);
            busy |= taken == NETEM_BATCH;
            watch_port(nm, di, taken);
            if (nm->dir[di].count > 0)
                rate_drain(nm, di, now);
        }
        for (int di = 0; di < 2; di++)
            busy |= give_out(nm, di);
        if (busy)
            continue;
        /* Sleep until a port has frames, the next frame is due, or stop. */
        uint64_t due = 0;
        for (int di = 0; di < 2; di++) {
            struct io_dev *outl = &nm->link[1 - di].devs[0];
            uint64_t t = io_next_due_ns(outl);
            uint64_t r = rate_next_ns(&nm->dir[di]);
            if (t && (!due || t < due))
                due = t;
            if (r && (!due || r < due))
                due = r;
        }
        now = mtcp_now_ns();
        if (due && due <= now)
            continue;
        if (due != armed) {
            arm_timer(nm, due);
            armed = due;
        }
        struct epoll_event evs[4];
        int ne = epoll_wait(nm->ep, evs, 4, -1);
        for (int i = 0; i < ne; i++) {
            if (evs[i].data.u32 < 2)
                nm->watch[evs[i].data.u32].woke = true;
            if (evs[i].data.u32 == 2) {
                uint64_t v;
                if (read(nm->tfd, &v, sizeof v) == (ssize_t)sizeof v)
                    armed = 0; /* fired: it is disarmed now */
            }
        }
    }
    for (int i = 0; i < 2; i++)
        io_dev_stop(&nm->port[i].devs[0]); /* flush the captures */
    if (restore)
        (void)pthread_setschedparam(pthread_self(), policy, &saved);
    __atomic_store_n(&nm->rt_active, 0, __ATOMIC_RELEASE);
    __atomic_store_n(&nm->running, 0, __ATOMIC_RELEASE);
    return 0;
}

void mtcp_netem_stop(struct mtcp_netem *nm)
{
    __atomic_store_n(&nm->stop, 1, __ATOMIC_RELEASE);
    uint64_t one = 1;
    if (write(nm->stop_fd, &one, sizeof one) < 0) {
        /* a full eventfd is already readable: the loop wakes anyway */
    }
}

int mtcp_netem_realtime(struct mtcp_netem *nm)
{
    return __atomic_load_n(&nm->rt_active, __ATOMIC_ACQUIRE);
}

int mtcp_netem_set(struct mtcp_netem *nm, int dir, const struct mtcp_netem_dir *d)
{
    if (!nm || !d || (dir != 0 && dir != 1) || check_dir(d) < 0)
        return -EINVAL;
    struct netem_dir *nd = &nm->dir[dir];
    if (d->queue_frames > nd->cap)
        return -EINVAL; /* the FIFO's capacity is fixed when the emulator opens */
    struct io_pair_faults f = faults_of(&d->faults);
    io_pair_set_faults_side(nm->pair, dir, &f);
    pthread_mutex_lock(&nm->lock);
    if (!__atomic_load_n(&nm->has_pending, __ATOMIC_ACQUIRE)) {
        for (int i = 0; i < 2; i++) {
            nm->pending[i] = nm->dir[i].rate;
            nm->delaying_pending[i] = nm->dir[i].delaying;
        }
    }
    nm->pending[dir] = rate_of(d, nd->cap);
    nm->delaying_pending[dir] = d->faults.delay_us || d->faults.jitter_us;
    __atomic_store_n(&nm->has_pending, 1, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&nm->lock);
    return 0;
}

void mtcp_netem_counters(struct mtcp_netem *nm, int dir, struct mtcp_netem_counters *out)
{
    const struct netem_dir *d = &nm->dir[dir ? 1 : 0];
    out->received = __atomic_load_n(&d->c.received, __ATOMIC_RELAXED);
    out->forwarded = __atomic_load_n(&d->c.forwarded, __ATOMIC_RELAXED);
    out->bytes_forwarded = __atomic_load_n(&d->c.bytes_forwarded, __ATOMIC_RELAXED);
    out->delayed = __atomic_load_n(&d->c.delayed, __ATOMIC_RELAXED);
    out->rate_delayed = __atomic_load_n(&d->c.rate_delayed, __ATOMIC_RELAXED);
    out->queue_drops = __atomic_load_n(&d->c.queue_drops, __ATOMIC_RELAXED);
    out->oversize = __atomic_load_n(&d->c.oversize, __ATOMIC_RELAXED);
    out->checksummed = __atomic_load_n(&d->c.checksummed, __ATOMIC_RELAXED);
    out->segmented = __atomic_load_n(&d->c.segmented, __ATOMIC_RELAXED);
    out->tx_errors = __atomic_load_n(&d->c.tx_errors, __ATOMIC_RELAXED);
    out->port_errors = __atomic_load_n(&d->c.port_errors, __ATOMIC_RELAXED);
    struct io_pair_counters pc;
    io_pair_get_counters(nm->pair, dir ? 1 : 0, &pc);
    out->dropped = pc.lost;
    out->duplicated = pc.duplicated;
    out->reordered = pc.reordered;
    out->corrupted = pc.corrupted;
    out->overflow = pc.overflow;
}
