/* pair: two stacks in one process joined by an in-memory link.
 *
 * Each direction (named by its sender side) is a bounded set of frame slots
 * plus a min-heap ordered by (due time, sequence number), so frames are
 * delivered in due-time order and, for equal due times, in the order they were
 * enqueued. A direction is touched by two threads (the sender's tx_burst and
 * the receiver's rx_burst), hence one mutex per direction.
 *
 * The fault injector draws a fixed number of random numbers per frame from a
 * per-direction xoshiro256** stream seeded by splitmix64(seed), so for one
 * seed and one frame order the decisions are always the same, and changing
 * one rate does not shift the draws of the others.
 *
 * RX is zero-copy: rx_burst hands out pointers into the slots and rx_done
 * returns those slots to the free list.
 *
 * Targeted drops (io_pair_drop_next) remove chosen TCP segments: "the next N
 * frames of this side whose flags & mask == value and whose payload length is
 * in [min, max]". They are checked after the frame's six draws, so arming one
 * does not shift the random decisions of the frames around it. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* Linux socket/tun APIs; the build passes it too */
#endif
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "io_internal.h"

#define PAIR_CAP 4096u                       /* frames per direction, handed-out ones included */
#define PAIR_REORDER_TIMEOUT_NS 2000000ull   /* a held frame goes anyway after 2 ms */
#define PAIR_DROP_RULES 8u                   /* targeted drop rules armed per direction */

struct pair_drop_rule {
    uint8_t mask, value;      /* TCP flags: drop when (flags & mask) == value */
    uint32_t count;           /* frames still to drop; 0 = free rule */
    uint32_t min_payload, max_payload;
};

struct pair_entry {
    uint64_t due_ns;
    uint64_t seq;
    uint32_t slot;
};

struct pair_dir {
    pthread_mutex_t lock;
    struct io_pair_faults faults;
    uint64_t rng[4];
    uint8_t *pool;                 /* PAIR_CAP * MTCP_MAX_FRAME bytes, touched lazily */
    uint32_t len[PAIR_CAP];
    uint32_t free_slots[PAIR_CAP];
    uint32_t nfree;
    struct pair_entry heap[PAIR_CAP];
    uint32_t nheap;
    uint32_t handed[PAIR_CAP];     /* slots given to the receiver until rx_done */
    uint32_t nhanded;
    bool has_held;                 /* reorder: the frame waiting for the next one */
    struct pair_entry held;
    uint64_t held_deadline_ns;
    uint64_t next_seq;
    struct pair_drop_rule drops[PAIR_DROP_RULES];
    int efd;                       /* receiver's eventfd */
    bool signaled;                 /* efd holds a count not yet read */
    struct io_pair_counters c;
};

struct io_pair {
    struct pair_dir dir[2]; /* dir[s]: frames sent by side s */
    int open[2];            /* guarded by dir[s].lock for side s */
};

struct pair_dev {
    struct io_pair *p;
    int side;
};

/* ---- deterministic PRNG ---- */

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

static uint64_t xoshiro(uint64_t s[4])
{
    uint64_t r = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return r;
}

static void seed_dir(struct pair_dir *d, uint64_t seed, int side)
{
    /* Directions get different streams from one seed. */
    uint64_t x = seed ^ (side ? 0x5bd1e9955bd1e995ull : 0);
    for (int i = 0; i < 4; i++)
        d->rng[i] = splitmix64(&x);
}

static double unit(uint64_t r)
{
    return (double)(r >> 11) * 0x1.0p-53;
}

/* ---- heap on (due, seq) ---- */

static bool entry_before(const struct pair_entry *a, const struct pair_entry *b)
{
    return a->due_ns != b->due_ns ? a->due_ns < b->due_ns : a->seq < b->seq;
}

static void heap_push(struct pair_dir *d, struct pair_entry e)
{
    uint32_t i = d->nheap++;
    while (i > 0) {
        uint32_t parent = (i - 1) / 2;
        if (!entry_before(&e, &d->heap[parent]))
            break;
        d->heap[i] = d->heap[parent];
        i = parent;
    }
    d->heap[i] = e;
}

static struct pair_entry heap_pop(struct pair_dir *d)
{
    struct pair_entry top = d->heap[0];
    struct pair_entry last = d->heap[--d->nheap];
    uint32_t i = 0, n = d->nheap;
    for (;;) {
        uint32_t l = 2 * i + 1, r = l + 1, m = i;
        const struct pair_entry *best = &last;
        if (l < n && entry_before(&d->heap[l], best)) {
            m = l;
            best = &d->heap[l];
        }
        if (r < n && entry_before(&d->heap[r], best))
            m = r;
        if (m == i)
            break;
        d->heap[i] = d->heap[m];
        i = m;
    }
    if (n > 0)
        d->heap[i] = last;
    return top;
}

/* ---- link ---- */

static void dir_signal(struct pair_dir *d)
{
    if (!d->signaled && d->efd >= 0) {
        uint64_t one = 1;
        /* Cannot fail short of a counter overflow, which `signaled` prevents. */
        if (write(d->efd, &one, sizeof one) == (ssize_t)sizeof one)
            d->signaled = true;
    }
}

static void dir_unsignal(struct pair_dir *d)
{
    if (d->signaled) {
        uint64_t v;
        if (read(d->efd, &v, sizeof v) == (ssize_t)sizeof v || errno == EAGAIN)
            d->signaled = false;
    }
}

/* Move the held frame into the heap, due no earlier than `after_due`. */
static void release_held(struct pair_dir *d, uint64_t after_due)
{
    struct pair_entry e = d->held;
    if (e.due_ns < after_due)
        e.due_ns = after_due;
    e.seq = d->next_seq++;
    heap_push(d, e);
    d->has_held = false;
}

static void dir_init(struct pair_dir *d, const struct io_pair_faults *f, int side)
{
    pthread_mutex_init(&d->lock, NULL);
    if (f)
        d->faults = *f;
    seed_dir(d, d->faults.seed, side);
    for (uint32_t i = 0; i < PAIR_CAP; i++)
        d->free_slots[i] = PAIR_CAP - 1 - i;
    d->nfree = PAIR_CAP;
    d->efd = -1;
}

struct io_pair *io_pair_create(const struct io_pair_faults *faults)
{
    struct io_pair *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    for (int s = 0; s < 2; s++) {
        dir_init(&p->dir[s], faults, s);
        p->dir[s].pool = malloc((size_t)PAIR_CAP * MTCP_MAX_FRAME);
        p->dir[s].efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        if (!p->dir[s].pool || p->dir[s].efd < 0) {
            int e = errno;
            io_pair_destroy(p);
            errno = e;
            return NULL;
        }
    }
    return p;
}

void io_pair_destroy(struct io_pair *p)
{
    if (!p)
        return;
    for (int s = 0; s < 2; s++) {
        free(p->dir[s].pool);
        io_close_fd(p->dir[s].efd);
        pthread_mutex_destroy(&p->dir[s].lock);
    }
    free(p);
}

void io_pair_set_faults(struct io_pair *p, const struct io_pair_faults *faults)
{
    for (int s = 0; s < 2; s++) {
        struct pair_dir *d = &p->dir[s];
        pthread_mutex_lock(&d->lock);
        /* Same seed: the streams go on, so "drop the next SYN" keeps the rest
         * of the run identical; a new seed restarts them. */
        if (faults->seed != d->faults.seed)
            seed_dir(d, faults->seed, s);
        d->faults = *faults;
        pthread_mutex_unlock(&d->lock);
    }
}

void io_pair_set_faults_side(struct io_pair *p, int side, const struct io_pair_faults *faults)
{
    struct pair_dir *d = &p->dir[side ? 1 : 0];
    pthread_mutex_lock(&d->lock);
    if (faults->seed != d->faults.seed)
        seed_dir(d, faults->seed, side ? 1 : 0);
    d->faults = *faults;
    pthread_mutex_unlock(&d->lock);
}

void io_pair_get_counters(struct io_pair *p, int side, struct io_pair_counters *out)
{
    struct pair_dir *d = &p->dir[side ? 1 : 0];
    pthread_mutex_lock(&d->lock);
    *out = d->c;
    pthread_mutex_unlock(&d->lock);
}

int io_pair_drop_next(struct io_pair *p, int side, uint8_t mask, uint8_t value, uint32_t count,
                      uint32_t min_payload, uint32_t max_payload)
{
    if (side != 0 && side != 1)
        return -EINVAL;
    if (count == 0)
        return 0;
    if (min_payload > max_payload || (value & ~mask) != 0)
        return -EINVAL; /* could never match */
    struct pair_dir *d = &p->dir[side];
    int rc = -ENOSPC;
    pthread_mutex_lock(&d->lock);
    struct pair_drop_rule *free_rule = NULL;
    for (uint32_t i = 0; i < PAIR_DROP_RULES; i++) {
        struct pair_drop_rule *r = &d->drops[i];
        if (r->count == 0) {
            if (!free_rule)
                free_rule = r;
        } else if (r->mask == mask && r->value == value && r->min_payload == min_payload &&
                   r->max_payload == max_payload) {
            /* The same rule again: drop that many more. */
            r->count = count > UINT32_MAX - r->count ? UINT32_MAX : r->count + count;
            rc = 0;
            break;
        }
    }
    if (rc != 0 && free_rule) {
        *free_rule = (struct pair_drop_rule){mask, value, count, min_payload, max_payload};
        rc = 0;
    }
    pthread_mutex_unlock(&d->lock);
    return rc;
}

/* The TCP flags and payload length of an Ethernet/IPv4/TCP frame; false for
 * anything else (ARP, a truncated or bad header, a non-first fragment). */
static bool frame_tcp(const uint8_t *f, uint32_t len, uint8_t *flags, uint32_t *payload)
{
    if (len < 14 + 20 || f[12] != 0x08 || f[13] != 0x00)
        return false;
    const uint8_t *ip = f + 14;
    uint32_t ihl = (uint32_t)(ip[0] & 0x0f) * 4;
    uint32_t total = (uint32_t)ip[2] << 8 | ip[3];
    if ((ip[0] >> 4) != 4 || ihl < 20 || ip[9] != 6 || ((ip[6] & 0x1f) | ip[7]) != 0)
        return false;
    if (total > len - 14)
        total = len - 14; /* the injector looks at what is there, it does not validate */
    if (total < ihl + 20)
        return false;
    const uint8_t *tcp = ip + ihl;
    uint32_t doff = (uint32_t)(tcp[12] >> 4) * 4;
    if (doff < 20 || ihl + doff > total)
        return false;
    *flags = tcp[13];
    *payload = total - ihl - doff;
    return true;
}

/* Whether an armed rule takes this frame (it then counts one drop less). */
static bool dir_targeted(struct pair_dir *d, const uint8_t *data, uint32_t len)
{
    uint8_t flags;
    uint32_t payload;
    bool parsed = false;
    for (uint32_t i = 0; i < PAIR_DROP_RULES; i++) {
        struct pair_drop_rule *r = &d->drops[i];
        if (r->count == 0)
            continue;
        if (!parsed) {
            if (!frame_tcp(data, len, &flags, &payload))
                return false;
            parsed = true;
        }
        if ((flags & r->mask) == r->value && payload >= r->min_payload &&
            payload <= r->max_payload) {
            r->count--;
            return true;
        }
    }
    return false;
}

/* Enqueue one copy of src; false when no slot is free. */
static bool dir_enqueue(struct pair_dir *d, const uint8_t *src, uint32_t len, uint64_t due,
                        struct pair_entry *out)
{
    if (d->nfree == 0)
        return false;
    uint32_t slot = d->free_slots[--d->nfree];
    memcpy(d->pool + (size_t)slot * MTCP_MAX_FRAME, src, len);
    d->len[slot] = len;
    out->due_ns = due;
    out->seq = d->next_seq++;
    out->slot = slot;
    return true;
}

/* The fault injector for one frame; called with d->lock held. */
static void dir_send(struct pair_dir *d, const uint8_t *data, uint32_t len, uint64_t now)
{
    const struct io_pair_faults *f = &d->faults;
    /* Always the same six draws per frame (see the top of the file). */
    double u_loss = unit(xoshiro(d->rng));
    double u_dup = unit(xoshiro(d->rng));
    double u_reorder = unit(xoshiro(d->rng));
    double u_corrupt = unit(xoshiro(d->rng));
    uint64_t r_jitter = xoshiro(d->rng);
    uint64_t r_bit = xoshiro(d->rng);

    d->c.sent++;
    uint64_t due = now + (uint64_t)f->delay_us * 1000u;
    if (f->jitter_us)
        due += (r_jitter % ((uint64_t)f->jitter_us + 1)) * 1000u;

    bool targeted = dir_targeted(d, data, len);
    if (targeted || u_loss < f->loss) {
        if (targeted)
            d->c.targeted++;
        else
            d->c.lost++;
        /* The frame after a held one releases it, even when itself lost. */
        if (d->has_held)
            release_held(d, due);
        return;
    }
    struct pair_entry e;
    if (!dir_enqueue(d, data, len, due, &e)) {
        d->c.overflow++;
        if (d->has_held)
            release_held(d, due);
        return;
    }
    if (u_corrupt < f->corrupt && len > 0) {
        uint64_t bit = r_bit % ((uint64_t)len * 8);
        d->pool[(size_t)e.slot * MTCP_MAX_FRAME + bit / 8] ^= (uint8_t)(1u << (bit % 8));
        d->c.corrupted++;
    }
    bool dup = u_dup < f->duplicate;
    if (!d->has_held && u_reorder < f->reorder) {
        /* Hold this one; the next frame of this direction overtakes it. */
        d->held = e;
        d->has_held = true;
        d->held_deadline_ns = due + PAIR_REORDER_TIMEOUT_NS;
        d->c.reordered++;
    } else {
        heap_push(d, e);
        if (d->has_held)
            release_held(d, due);
    }
    if (dup) {
        struct pair_entry e2;
        d->c.duplicated++;
        if (dir_enqueue(d, d->pool + (size_t)e.slot * MTCP_MAX_FRAME, len, due, &e2))
            heap_push(d, e2);
        else
            d->c.overflow++;
    }
}

/* ---- a side with no stack: frames in and out by hand (tests) ---- */

int io_pair_inject(struct io_pair *p, int side, const uint8_t *frame, uint32_t len,
                   uint64_t now_ns)
{
    if (side != 0 && side != 1)
        return -EINVAL;
    if (len == 0 || len > MTCP_MAX_FRAME)
        return -EMSGSIZE;
    struct pair_dir *d = &p->dir[side];
    pthread_mutex_lock(&d->lock);
    int rc = 0;
    if (p->open[side])
        rc = -EBUSY; /* a stack sends on this side */
    else if (d->nfree == 0) {
        d->c.sent++;
        d->c.overflow++;
        rc = -ENOBUFS;
    } else {
        dir_send(d, frame, len, now_ns);
        if (d->nheap > 0)
            dir_signal(d);
    }
    pthread_mutex_unlock(&d->lock);
    return rc;
}

int io_pair_take(struct io_pair *p, int side, uint8_t *buf, uint32_t cap, uint64_t now_ns)
{
    if (side != 0 && side != 1)
        return -EINVAL;
    struct pair_dir *d = &p->dir[1 - side];
    pthread_mutex_lock(&d->lock);
    int rc = 0;
    if (p->open[side]) {
        rc = -EBUSY; /* a stack receives on this side */
    } else {
        if (d->has_held && now_ns >= d->held_deadline_ns)
            release_held(d, d->held_deadline_ns);
        if (d->nheap > 0 && d->heap[0].due_ns <= now_ns) {
            uint32_t slot = d->heap[0].slot;
            uint32_t len = d->len[slot];
            if (len > cap) {
                rc = -EMSGSIZE;
            } else {
                heap_pop(d);
                memcpy(buf, d->pool + (size_t)slot * MTCP_MAX_FRAME, len);
                d->free_slots[d->nfree++] = slot;
                d->c.delivered++;
                rc = (int)len;
            }
        }
        if (d->nheap == 0 || d->heap[0].due_ns > now_ns)
            dir_unsignal(d);
    }
    pthread_mutex_unlock(&d->lock);
    return rc;
}

uint64_t io_pair_next_due(struct io_pair *p, int side)
{
    struct pair_dir *d = &p->dir[side ? 0 : 1];
    uint64_t due = 0;
    pthread_mutex_lock(&d->lock);
    if (d->nheap > 0)
        due = d->heap[0].due_ns;
    if (d->has_held && (due == 0 || d->held_deadline_ns < due))
        due = d->held_deadline_ns;
    pthread_mutex_unlock(&d->lock);
    return due;
}

/* ---- io_ops ---- */

static int pair_open_all(struct io_group *g, const char **err_msg)
{
    struct io_pair *p = g->cfg.pair;
    int side = g->cfg.pair_side;
    if (!p) {
        *err_msg = "pair: no link (cfg.pair is NULL)";
        return -EINVAL;
    }
    if (side != 0 && side != 1) {
        *err_msg = "pair: pair_side must be 0 or 1";
        return -EINVAL;
    }
    if (g->n != 1) {
        *err_msg = "pair: the in-memory link has one queue per side (nqueues must be 1)";
        return -EINVAL;
    }
    struct pair_dir *d = &p->dir[side];
    pthread_mutex_lock(&d->lock);
    int busy = p->open[side];
    p->open[side] = 1;
    pthread_mutex_unlock(&d->lock);
    if (busy) {
        *err_msg = "pair: this side of the link is already open";
        return -EBUSY;
    }
    struct pair_dev *pd = malloc(sizeof *pd);
    if (!pd) {
        pthread_mutex_lock(&d->lock);
        p->open[side] = 0;
        pthread_mutex_unlock(&d->lock);
        *err_msg = "pair: out of memory";
        return -ENOMEM;
    }
    pd->p = p;
    pd->side = side;
    struct io_dev *dev = &g->devs[0];
    dev->priv = pd;
    static const uint8_t mac0[6] = {0x02, 0x00, 0x00, 0x00, 0x00, 0x01};
    memcpy(dev->mac, mac0, 6);
    dev->mac[5] = (uint8_t)(1 + side);
    memset(dev->peer_mac, 0, 6);
    dev->has_peer_mac = 0;
    dev->mtu = MTCP_MTU;
    return 0;
}

static int pair_start(struct io_dev *dev)
{
    (void)dev;
    return 0;
}

/* The direction this device receives from. */
static struct pair_dir *rx_dir(struct io_dev *dev)
{
    struct pair_dev *pd = dev->priv;
    return &pd->p->dir[1 - pd->side];
}

static int pair_rx_burst(struct io_dev *dev, struct io_frame *frames, int max)
{
    struct pair_dir *d = rx_dir(dev);
    uint64_t now = io_dev_now_ns(dev);
    int n = 0;
    pthread_mutex_lock(&d->lock);
    if (d->has_held && now >= d->held_deadline_ns)
        release_held(d, d->held_deadline_ns);
    while (n < max && d->nheap > 0 && d->heap[0].due_ns <= now) {
        struct pair_entry e = heap_pop(d);
        d->handed[d->nhanded++] = e.slot;
        frames[n].data = d->pool + (size_t)e.slot * MTCP_MAX_FRAME;
        frames[n].len = d->len[e.slot];
        frames[n].flags = 0;
        n++;
    }
    d->c.delivered += (uint64_t)n;
    /* Keep the eventfd readable while due frames remain, so a caller that
     * stopped at `max` and then polls does not sleep on them. */
    if (d->nheap == 0 || d->heap[0].due_ns > now)
        dir_unsignal(d);
    pthread_mutex_unlock(&d->lock);
    dev->rx_frames += (uint64_t)n;
    return n;
}

static void pair_rx_done(struct io_dev *dev)
{
    struct pair_dir *d = rx_dir(dev);
    pthread_mutex_lock(&d->lock);
    for (uint32_t i = 0; i < d->nhanded; i++)
        d->free_slots[d->nfree++] = d->handed[i];
    d->nhanded = 0;
    pthread_mutex_unlock(&d->lock);
}

static int pair_tx_burst(struct io_dev *dev, const struct io_frame *frames, int n)
{
    struct pair_dev *pd = dev->priv;
    struct pair_dir *d = &pd->p->dir[pd->side];
    /* One time base per burst: a burst's delays do not depend on how long the
     * loop below takes, which keeps seeded runs reproducible. */
    uint64_t now = io_dev_now_ns(dev);
    int i;
    pthread_mutex_lock(&d->lock);
    for (i = 0; i < n; i++) {
        if (frames[i].len == 0 || frames[i].len > MTCP_MAX_FRAME) {
            dev->tx_dropped++;
            continue;
        }
        if (d->nfree == 0)
            break; /* full: the rest of the burst is dropped (counted below) */
        dir_send(d, frames[i].data, frames[i].len, now);
    }
    if (i < n) {
        d->c.sent += (uint64_t)(n - i);
        d->c.overflow += (uint64_t)(n - i);
        dev->tx_dropped += (uint64_t)(n - i);
    }
    if (d->nheap > 0)
        dir_signal(d);
    pthread_mutex_unlock(&d->lock);
    dev->tx_frames += (uint64_t)i;
    return i;
}

static int pair_poll_fd(struct io_dev *dev)
{
    return rx_dir(dev)->efd;
}

static uint64_t pair_next_due_ns(struct io_dev *dev)
{
    struct pair_dev *pd = dev->priv;
    return io_pair_next_due(pd->p, pd->side);
}

static void pair_close(struct io_dev *dev)
{
    struct pair_dev *pd = dev->priv;
    if (!pd)
        return;
    pair_rx_done(dev); /* slots still handed out go back */
    struct pair_dir *d = &pd->p->dir[pd->side];
    pthread_mutex_lock(&d->lock);
    pd->p->open[pd->side] = 0;
    pthread_mutex_unlock(&d->lock);
    free(pd);
    dev->priv = NULL;
}

const struct io_ops io_pair_ops = {
    .name = "pair",
    .open_all = pair_open_all,
    .start = pair_start,
    .rx_burst = pair_rx_burst,
    .rx_done = pair_rx_done,
    .tx_burst = pair_tx_burst,
    .poll_fd = pair_poll_fd,
    .next_due_ns = pair_next_due_ns,
    .close = pair_close,
};
