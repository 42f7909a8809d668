/* Tests of the pair backend (in-memory link + fault injector), the pcap writer
 * and io_group_open's backend selection. Needs no privileges. */
// Build and run from the repository root:
//   gcc -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -O2 -Imtcp_core/src -o /tmp/test_io_pair tests/c/test_io_pair.c mtcp_core/src/io/*.c -lpthread && /tmp/test_io_pair
// With sanitizers add: -g -fsanitize=address,undefined -fno-omit-frame-pointer
// (or -fsanitize=thread, for the concurrency test). tests/c/run_io_tests.sh runs all of it.
#include <pthread.h>
#include <stdatomic.h>

#include "core/hash.h"
#include "io_test.h"

#define NFR 2048 /* frames per determinism run */

/* ---- frames that identify themselves ---- */

/* a frame's fingerprint: the low 32 bits of its FNV-1a hash */
static uint32_t fnv(const uint8_t *p, size_t n)
{
    return (uint32_t)mtcp_fnv1a(p, n);
}

/* [dst 6][src 6][type 2][seq 4][pattern ...][fnv 4] */
static uint32_t make_frame(uint8_t *buf, uint32_t seq, uint32_t len)
{
    memset(buf, 0xff, 6);
    memcpy(buf + 6, "\x02\x00\x00\x00\x00\x01", 6);
    wr16(buf + 12, 0x88b5); /* local experimental ethertype */
    wr32(buf + 14, seq);
    for (uint32_t i = 18; i < len - 4; i++)
        buf[i] = (uint8_t)(seq * 7 + i);
    wr32(buf + len - 4, fnv(buf, len - 4));
    return len;
}

static uint32_t frame_len_for(uint32_t seq)
{
    return 64 + (seq * 37u) % 1400u;
}

/* -1 if corrupted, else the sequence number. */
static int64_t frame_seq(const uint8_t *p, uint32_t len)
{
    if (len < 22 || rd32(p + len - 4) != fnv(p, len - 4))
        return -1;
    return rd32(p + 14);
}

/* ---- group helpers ---- */

struct side {
    struct io_group g;
    struct io_dev *d;
};

static int open_side(struct side *s, struct io_pair *p, int side, const char *pcap)
{
    struct io_config cfg = {.backend = "pair", .nqueues = 1, .pair = p, .pair_side = side,
                            .pcap_path = pcap};
    const char *msg = NULL;
    int rc = io_group_open(&s->g, &cfg, &msg);
    if (rc < 0) {
        fprintf(stderr, "io_group_open(pair side %d): %d %s\n", side, rc, msg ? msg : "");
        return rc;
    }
    s->d = &s->g.devs[0];
    return io_dev_start(s->d);
}

static int readable(int fd)
{
    struct pollfd pfd = {.fd = fd, .events = POLLIN};
    return poll(&pfd, 1, 0) == 1 && (pfd.revents & POLLIN);
}

/* Receive everything the link will ever deliver (sleeping until due times),
 * appending frame hashes to out (if given). Returns frames received. */
static size_t drain(struct io_dev *d, uint32_t *out, size_t cap, uint64_t deadline_ns)
{
    struct io_frame fr[64];
    size_t got = 0;
    for (;;) {
        int n = io_rx_burst(d, fr, 64);
        for (int i = 0; i < n; i++) {
            if (out && got < cap)
                out[got] = fnv(fr[i].data, fr[i].len);
            got++;
        }
        io_rx_done(d);
        if (n > 0)
            continue;
        uint64_t due = d->ops->next_due_ns(d);
        if (due == 0)
            break;
        uint64_t now = t_now_ns();
        if (now > deadline_ns)
            break;
        if (due > now) {
            uint64_t wait = due - now;
            struct timespec ts = {(time_t)(wait / 1000000000ull), (long)(wait % 1000000000ull)};
            nanosleep(&ts, NULL);
        }
    }
    return got;
}

/* ---- tests ---- */

static void test_group_errors(void)
{
    struct io_group g;
    const char *msg = NULL;
    struct io_config cfg = {.backend = "bogus", .nqueues = 1};
    int rc = io_group_open(&g, &cfg, &msg);
    CHECK(rc == -EINVAL, "rc=%d", rc);
    CHECK(msg && strstr(msg, "unknown backend"), "msg=%s", msg ? msg : "(null)");
    cfg.backend = "pair";
    msg = NULL;
    rc = io_group_open(&g, &cfg, &msg);
    CHECK(rc == -EINVAL && msg, "pair without link: rc=%d", rc);

    struct io_pair *p = io_pair_create(NULL);
    CHECK(p != NULL, "io_pair_create");
    cfg.pair = p;
    cfg.nqueues = 2;
    rc = io_group_open(&g, &cfg, &msg);
    CHECK(rc == -EINVAL, "pair with 2 queues: rc=%d", rc);
    cfg.nqueues = 1;
    struct io_group g2;
    rc = io_group_open(&g, &cfg, &msg);
    CHECK(rc == 0, "open side 0: rc=%d", rc);
    rc = io_group_open(&g2, &cfg, &msg);
    CHECK(rc == -EBUSY, "side 0 twice: rc=%d", rc);
    io_group_close(&g);
    rc = io_group_open(&g2, &cfg, &msg);
    CHECK(rc == 0, "side 0 again after close: rc=%d", rc);
    io_group_close(&g2);
    io_pair_destroy(p);
}

static void test_byte_exact(void)
{
    struct io_pair *p = io_pair_create(NULL);
    struct side a, b;
    CHECK(open_side(&a, p, 0, NULL) == 0, "open a");
    CHECK(open_side(&b, p, 1, NULL) == 0, "open b");
    CHECK(memcmp(a.d->mac, b.d->mac, 6) != 0, "distinct MACs");
    CHECK((a.d->mac[0] & 3) == 2, "locally administered unicast");
    CHECK(a.d->has_peer_mac == 0 && a.d->mtu == MTCP_MTU, "peer mac / mtu");

    static uint8_t bufs[200][MTCP_MAX_FRAME];
    struct io_frame tx[200];
    for (int dir = 0; dir < 2; dir++) {
        struct io_dev *s = dir ? b.d : a.d, *r = dir ? a.d : b.d;
        CHECK(!readable(r->ops->poll_fd(r)), "not readable before send");
        for (uint32_t i = 0; i < 200; i++) {
            uint32_t len = i == 0 ? 14 : i == 1 ? MTCP_MAX_FRAME : frame_len_for(i);
            for (uint32_t k = 0; k < len; k++)
                bufs[i][k] = (uint8_t)(i * 31 + k * 7 + dir);
            tx[i].data = bufs[i];
            tx[i].len = len;
            tx[i].flags = 0;
        }
        int n = io_tx_burst(s, tx, 200);
        CHECK(n == 200, "tx_burst %d", n);
        CHECK(readable(r->ops->poll_fd(r)), "readable after send");
        struct io_frame rx[64];
        int got = 0, ok = 1;
        /* A partial burst leaves the eventfd readable: frames remain. */
        int k = io_rx_burst(r, rx, 10);
        CHECK(k == 10 && readable(r->ops->poll_fd(r)), "still readable after partial rx");
        for (int i = 0; i < k; i++, got++)
            ok &= rx[i].len == tx[got].len && memcmp(rx[i].data, tx[got].data, rx[i].len) == 0;
        while ((k = io_rx_burst(r, rx, 64)) > 0) {
            for (int i = 0; i < k; i++, got++)
                ok &= got < 200 && rx[i].len == tx[got].len &&
                      memcmp(rx[i].data, tx[got].data, rx[i].len) == 0;
            io_rx_done(r);
        }
        io_rx_done(r);
        CHECK(got == 200 && ok, "dir %d: got %d frames, byte-exact %d", dir, got, ok);
        CHECK(!readable(r->ops->poll_fd(r)), "not readable once drained");
        struct io_pair_counters c;
        io_pair_get_counters(p, dir, &c);
        CHECK(c.sent == 200 && c.delivered == 200 && c.lost == 0, "counters sent %llu del %llu",
              (unsigned long long)c.sent, (unsigned long long)c.delivered);
    }
    /* Oversized frames are refused, not truncated. */
    uint8_t big[MTCP_MAX_FRAME + 1] = {0};
    struct io_frame bf = {.data = big, .len = sizeof big};
    uint64_t before = a.d->tx_dropped;
    io_tx_burst(a.d, &bf, 1);
    CHECK(a.d->tx_dropped == before + 1, "oversized frame dropped");
    io_group_close(&a.g);
    io_group_close(&b.g);
    io_pair_destroy(p);
}

struct run_result {
    struct io_pair_counters c;
    size_t n;
    uint32_t seq[3 * NFR];
};

/* One seeded run: every fault on, frames sent in `bursts` bursts. */
static void seeded_run(uint64_t seed, int bursts, uint32_t delay_us, uint32_t jitter_us,
                       struct run_result *res)
{
    struct io_pair_faults f = {.seed = seed, .loss = 0.05, .duplicate = 0.05, .reorder = 0.05,
                               .corrupt = 0.05, .delay_us = delay_us, .jitter_us = jitter_us};
    struct io_pair *p = io_pair_create(&f);
    struct side a, b;
    open_side(&a, p, 0, NULL);
    open_side(&b, p, 1, NULL);
    static uint8_t bufs[NFR][1500];
    static struct io_frame tx[NFR];
    for (uint32_t i = 0; i < NFR; i++) {
        tx[i].len = make_frame(bufs[i], i, frame_len_for(i) > 1500 ? 1500 : frame_len_for(i));
        tx[i].data = bufs[i];
        tx[i].flags = 0;
    }
    int per = NFR / bursts;
    for (int k = 0; k < bursts; k++)
        io_tx_burst(a.d, tx + k * per, per);
    res->n = drain(b.d, res->seq, 3 * NFR, t_now_ns() + 5000000000ull);
    io_pair_get_counters(p, 0, &res->c);
    io_group_close(&a.g);
    io_group_close(&b.g);
    io_pair_destroy(p);
}

static void test_determinism(void)
{
    static struct run_result r1, r2, r3;
    struct {
        int bursts;
        uint32_t delay, jitter;
    } cases[] = {{1, 3000, 2000}, {32, 0, 0}};
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        seeded_run(42, cases[k].bursts, cases[k].delay, cases[k].jitter, &r1);
        seeded_run(42, cases[k].bursts, cases[k].delay, cases[k].jitter, &r2);
        seeded_run(43, cases[k].bursts, cases[k].delay, cases[k].jitter, &r3);
        CHECK(memcmp(&r1.c, &r2.c, sizeof r1.c) == 0,
              "case %zu: counters differ: lost %llu/%llu dup %llu/%llu", k,
              (unsigned long long)r1.c.lost, (unsigned long long)r2.c.lost,
              (unsigned long long)r1.c.duplicated, (unsigned long long)r2.c.duplicated);
        CHECK(r1.n == r2.n && memcmp(r1.seq, r2.seq, r1.n * sizeof r1.seq[0]) == 0,
              "case %zu: delivered sequences differ (%zu vs %zu frames)", k, r1.n, r2.n);
        CHECK(r1.n != r3.n || memcmp(r1.seq, r3.seq, r1.n * sizeof r1.seq[0]) != 0,
              "case %zu: another seed gives another run", k);
        CHECK(r1.c.sent == NFR && r1.c.delivered == r1.n &&
                  r1.c.delivered == r1.c.sent - r1.c.lost + r1.c.duplicated - r1.c.overflow,
              "case %zu: counters add up: sent %llu del %llu lost %llu dup %llu ovf %llu", k,
              (unsigned long long)r1.c.sent, (unsigned long long)r1.c.delivered,
              (unsigned long long)r1.c.lost, (unsigned long long)r1.c.duplicated,
              (unsigned long long)r1.c.overflow);
        CHECK(r1.c.lost && r1.c.duplicated && r1.c.reordered && r1.c.corrupted,
              "case %zu: every fault happened", k);
    }
}

/* Observed effect of one fault alone at rate 0.1 over N frames. */
struct observed {
    size_t delivered, dups, inversions, corrupt, unique;
    struct io_pair_counters c;
    double lat_min_us, lat_max_us, lat_mean_us;
};

struct obs_state {
    struct observed *o;
    uint8_t *seen;
    uint64_t *sent_at;
    uint32_t N;
    int64_t maxseq;
    double lat_sum;
};

/* Receive whatever is due now and account for it. Returns frames received. */
static int obs_rx(struct io_dev *d, struct obs_state *st)
{
    struct io_frame rx[64];
    int total = 0, n;
    while ((n = io_rx_burst(d, rx, 64)) > 0) {
        uint64_t t = t_now_ns();
        for (int i = 0; i < n; i++) {
            struct observed *o = st->o;
            o->delivered++;
            int64_t s = frame_seq(rx[i].data, rx[i].len);
            if (s < 0 || s >= (int64_t)st->N) {
                o->corrupt++;
                continue;
            }
            if (st->seen[s]++)
                o->dups++;
            else
                o->unique++;
            if (s < st->maxseq)
                o->inversions++;
            else
                st->maxseq = s;
            double lat = (double)(t - st->sent_at[s]) / 1000.0;
            st->lat_sum += lat;
            if (lat < o->lat_min_us)
                o->lat_min_us = lat;
            if (lat > o->lat_max_us)
                o->lat_max_us = lat;
        }
        io_rx_done(d);
        total += n;
    }
    return total;
}

static void observe(const struct io_pair_faults *f, uint32_t N, struct observed *o)
{
    struct io_pair *p = io_pair_create(f);
    struct side a, b;
    open_side(&a, p, 0, NULL);
    open_side(&b, p, 1, NULL);
    memset(o, 0, sizeof *o);
    o->lat_min_us = 1e18;
    struct obs_state st = {.o = o, .seen = calloc(N, 1), .sent_at = calloc(N, sizeof(uint64_t)),
                           .N = N, .maxseq = -1};
    static uint8_t bufs[100][256];
    struct io_frame tx[100];
    for (uint32_t base = 0; base < N; base += 100) {
        uint64_t now = t_now_ns();
        for (uint32_t i = 0; i < 100; i++) {
            tx[i].len = make_frame(bufs[i], base + i, 64 + (base + i) % 150);
            tx[i].data = bufs[i];
            tx[i].flags = 0;
            st.sent_at[base + i] = now;
        }
        io_tx_burst(a.d, tx, 100);
        obs_rx(b.d, &st);
        if (f->delay_us)
            t_sleep_ms(1); /* spread the sends over time so delays overlap */
    }
    /* Wait out delays and the last held frame. */
    uint64_t deadline = t_now_ns() + 3000000000ull;
    while (t_now_ns() < deadline) {
        if (obs_rx(b.d, &st) == 0) {
            if (b.d->ops->next_due_ns(b.d) == 0)
                break;
            t_sleep_ms(1);
        }
    }
    size_t good = o->delivered - o->corrupt;
    o->lat_mean_us = good ? st.lat_sum / (double)good : 0;
    io_pair_get_counters(p, 0, &o->c);
    free(st.seen);
    free(st.sent_at);
    io_group_close(&a.g);
    io_group_close(&b.g);
    io_pair_destroy(p);
}

static int near(double x, double want, double tol)
{
    return x >= want - tol && x <= want + tol;
}

static void test_fault_rates(void)
{
    const uint32_t N = 20000;
    struct observed o;
    struct io_pair_faults f;

    f = (struct io_pair_faults){.seed = 7, .loss = 0.1};
    observe(&f, N, &o);
    printf("pair loss 0.1: %.4f missing\n", (double)(N - o.unique) / N);
    CHECK(near((double)(N - o.unique) / N, 0.1, 0.02) && o.c.lost == N - o.unique,
          "loss: %zu of %u missing, counter %llu", N - o.unique, N, (unsigned long long)o.c.lost);

    f = (struct io_pair_faults){.seed = 7, .duplicate = 0.1};
    observe(&f, N, &o);
    printf("pair duplicate 0.1: %.4f seen twice\n", (double)o.dups / N);
    CHECK(near((double)o.dups / N, 0.1, 0.02) && o.c.duplicated == o.dups && o.unique == N,
          "duplicate: %zu seen twice, counter %llu", o.dups, (unsigned long long)o.c.duplicated);

    f = (struct io_pair_faults){.seed = 7, .reorder = 0.1};
    observe(&f, N, &o);
    /* A held frame is overtaken by exactly one frame: one inversion each. */
    printf("pair reorder 0.1: %.4f inversions, %.4f counted\n", (double)o.inversions / N,
           (double)o.c.reordered / N);
    CHECK(near((double)o.inversions / N, 0.1 * 0.9, 0.02) && o.unique == N &&
              o.c.reordered >= o.inversions,
          "reorder: %zu inversions, counter %llu, unique %zu", o.inversions,
          (unsigned long long)o.c.reordered, o.unique);

    f = (struct io_pair_faults){.seed = 7, .corrupt = 0.1};
    observe(&f, N, &o);
    printf("pair corrupt 0.1: %.4f bad\n", (double)o.corrupt / N);
    CHECK(near((double)o.corrupt / N, 0.1, 0.02) && o.c.corrupted == o.corrupt,
          "corrupt: %zu bad frames, counter %llu", o.corrupt, (unsigned long long)o.c.corrupted);

    f = (struct io_pair_faults){.seed = 7, .delay_us = 5000};
    observe(&f, 2000, &o);
    printf("pair delay 5000us: latency min %.0f max %.0f us\n", o.lat_min_us, o.lat_max_us);
    CHECK(o.unique == 2000 && o.lat_min_us >= 5000 && o.inversions == 0,
          "delay: %zu frames, latency min %.0f us max %.0f us", o.unique, o.lat_min_us,
          o.lat_max_us);

    f = (struct io_pair_faults){.seed = 7, .delay_us = 2000, .jitter_us = 4000};
    observe(&f, 2000, &o);
    printf("pair delay 2000us jitter 4000us: latency min %.0f max %.0f mean %.0f us\n",
           o.lat_min_us, o.lat_max_us, o.lat_mean_us);
    /* Lower bounds only: the receiver's own pacing (and sanitizers) only add
     * latency, so an upper bound would measure the test, not the link. */
    CHECK(o.unique == 2000 && o.lat_min_us >= 2000 && o.lat_max_us - o.lat_min_us >= 2000 &&
              o.inversions > 0 && o.lat_mean_us >= 3000,
          "jitter: latency min %.0f max %.0f mean %.0f us, %zu inversions", o.lat_min_us,
          o.lat_max_us, o.lat_mean_us, o.inversions);
}

static void test_next_due(void)
{
    struct io_pair_faults f = {.seed = 1, .delay_us = 20000};
    struct io_pair *p = io_pair_create(&f);
    struct side a, b;
    open_side(&a, p, 0, NULL);
    open_side(&b, p, 1, NULL);
    uint8_t buf[64];
    struct io_frame fr = {.data = buf, .len = make_frame(buf, 1, 64)}, rx[4];
    uint64_t t0 = t_now_ns();
    io_tx_burst(a.d, &fr, 1);
    CHECK(readable(b.d->ops->poll_fd(b.d)), "eventfd wakes the receiver for a delayed frame");
    CHECK(io_rx_burst(b.d, rx, 4) == 0, "not due yet");
    CHECK(!readable(b.d->ops->poll_fd(b.d)), "nothing due: eventfd drained");
    uint64_t due = b.d->ops->next_due_ns(b.d);
    CHECK(due >= t0 + 20000000ull && due <= t0 + 21000000ull, "next_due %lld ns after send",
          (long long)(due - t0));
    while (t_now_ns() < due)
        t_sleep_ms(1);
    CHECK(io_rx_burst(b.d, rx, 4) == 1, "due frame delivered");
    io_rx_done(b.d);
    CHECK(b.d->ops->next_due_ns(b.d) == 0, "nothing pending");
    io_group_close(&a.g);
    io_group_close(&b.g);
    io_pair_destroy(p);
}

static void test_overflow_and_set_faults(void)
{
    struct io_pair *p = io_pair_create(NULL);
    struct side a, b;
    open_side(&a, p, 0, NULL);
    open_side(&b, p, 1, NULL);
    static uint8_t buf[5000][64];
    static struct io_frame tx[5000];
    for (uint32_t i = 0; i < 5000; i++) {
        tx[i].len = make_frame(buf[i], i, 64);
        tx[i].data = buf[i];
    }
    int n = io_tx_burst(a.d, tx, 5000);
    struct io_pair_counters c;
    io_pair_get_counters(p, 0, &c);
    CHECK(n == 4096 && c.overflow == 904 && a.d->tx_dropped == 904, "overflow: accepted %d, "
          "overflow %llu", n, (unsigned long long)c.overflow);
    CHECK(drain(b.d, NULL, 0, t_now_ns() + 1000000000ull) == 4096, "the queued ones arrive");

    struct io_pair_faults f = {.loss = 1.0};
    io_pair_set_faults(p, &f);
    io_tx_burst(a.d, tx, 10);
    CHECK(drain(b.d, NULL, 0, t_now_ns() + 1000000000ull) == 0, "loss=1 drops all");
    f.loss = 0;
    io_pair_set_faults(p, &f);
    io_tx_burst(a.d, tx, 10);
    CHECK(drain(b.d, NULL, 0, t_now_ns() + 1000000000ull) == 10, "loss=0 again");
    io_group_close(&a.g);
    io_group_close(&b.g);
    io_pair_destroy(p);
}

/* Sender, receiver and fault-changer on three threads. */
struct conc {
    struct io_pair *p;
    struct io_dev *a;
    atomic_int done;
    uint64_t accepted;
};

static void *conc_sender(void *arg)
{
    struct conc *c = arg;
    static uint8_t buf[32][128];
    struct io_frame tx[32];
    for (uint32_t k = 0; k < 6000; k++) {
        for (uint32_t i = 0; i < 32; i++) {
            tx[i].len = make_frame(buf[i], k * 32 + i, 128);
            tx[i].data = buf[i];
        }
        int off = 0;
        while (off < 32) { /* on overflow, wait for room and send the rest again */
            int n = io_tx_burst(c->a, tx + off, 32 - off);
            if (n == 0)
                sched_yield();
            off += n;
        }
        c->accepted += 32;
    }
    atomic_store(&c->done, 1);
    return NULL;
}

static void *conc_faults(void *arg)
{
    struct conc *c = arg;
    for (int i = 0; !atomic_load(&c->done); i++) {
        struct io_pair_faults f = {.seed = 9, .loss = (i & 1) ? 0.0 : 0.3, .duplicate = 0.01};
        io_pair_set_faults(c->p, &f);
        t_sleep_ms(1);
    }
    return NULL;
}

static void test_concurrency(void)
{
    struct io_pair *p = io_pair_create(NULL);
    struct side a, b;
    open_side(&a, p, 0, NULL);
    open_side(&b, p, 1, NULL);
    struct conc c = {.p = p, .a = a.d};
    pthread_t ts, tf;
    pthread_create(&ts, NULL, conc_sender, &c);
    pthread_create(&tf, NULL, conc_faults, &c);
    size_t got = 0, bad = 0;
    struct io_frame rx[64];
    int fd = b.d->ops->poll_fd(b.d);
    for (;;) {
        int n = io_rx_burst(b.d, rx, 64);
        for (int i = 0; i < n; i++)
            bad += frame_seq(rx[i].data, rx[i].len) < 0;
        got += (size_t)n;
        io_rx_done(b.d);
        if (n == 0) {
            if (atomic_load(&c.done) && b.d->ops->next_due_ns(b.d) == 0)
                break;
            struct pollfd pfd = {.fd = fd, .events = POLLIN};
            poll(&pfd, 1, 10);
        }
    }
    pthread_join(ts, NULL);
    pthread_join(tf, NULL);
    got += drain(b.d, NULL, 0, t_now_ns() + 1000000000ull);
    struct io_pair_counters k;
    io_pair_get_counters(p, 0, &k);
    CHECK(k.sent >= 6000 * 32 && k.sent <= 6000 * 32 + k.overflow && got == k.delivered && bad == 0 &&
              k.delivered + k.lost + k.overflow == k.sent + k.duplicated && k.lost > 0,
          "concurrent: sent %llu delivered %llu (got %zu) lost %llu dup %llu ovf %llu bad %zu",
          (unsigned long long)k.sent, (unsigned long long)k.delivered, got,
          (unsigned long long)k.lost, (unsigned long long)k.duplicated,
          (unsigned long long)k.overflow, bad);
    io_group_close(&a.g);
    io_group_close(&b.g);
    io_pair_destroy(p);
}

/* ---- pcap ---- */

static uint8_t *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *b = malloc((size_t)n + 1);
    *len = fread(b, 1, (size_t)n, f);
    fclose(f);
    return b;
}

/* Check a classic pcap file holds exactly these frames. */
static int pcap_matches(const char *path, const struct io_frame *fr, int n)
{
    size_t len;
    uint8_t *b = slurp(path, &len);
    if (!b)
        return 0;
    int ok = len >= 24;
    uint32_t magic, snaplen, linktype;
    uint16_t vmaj, vmin;
    if (ok) {
        memcpy(&magic, b, 4);
        memcpy(&vmaj, b + 4, 2);
        memcpy(&vmin, b + 6, 2);
        memcpy(&snaplen, b + 16, 4);
        memcpy(&linktype, b + 20, 4);
        ok = magic == 0xa1b2c3d4u && vmaj == 2 && vmin == 4 && linktype == 1 && snaplen >= 65535;
    }
    size_t off = 24;
    for (int i = 0; ok && i < n; i++) {
        uint32_t h[4];
        if (off + 16 > len) {
            ok = 0;
            break;
        }
        memcpy(h, b + off, 16);
        ok = h[1] < 1000000 && h[2] == fr[i].len && h[3] == fr[i].len &&
             off + 16 + h[2] <= len && memcmp(b + off + 16, fr[i].data, fr[i].len) == 0;
        off += 16 + h[2];
    }
    ok = ok && off == len;
    free(b);
    return ok;
}

static void test_pcap(void)
{
    char tmpl[] = "/tmp/iot-pcap-XXXXXX";
    char *dir = mkdtemp(tmpl);
    CHECK(dir != NULL, "mkdtemp");
    char pa[128], pb[128], fa[160], fb[160];
    snprintf(pa, sizeof pa, "%s/a-%%u.pcap", dir);
    snprintf(pb, sizeof pb, "%s/b.pcap", dir);
    snprintf(fa, sizeof fa, "%s/a-0.pcap", dir);
    snprintf(fb, sizeof fb, "%s/b.pcap", dir);
    struct io_pair *p = io_pair_create(NULL);
    struct side a, b;
    CHECK(open_side(&a, p, 0, pa) == 0, "open a with pcap");
    CHECK(open_side(&b, p, 1, pb) == 0, "open b with pcap");
    static uint8_t buf[10][1500];
    struct io_frame tx[10], rx[10];
    for (uint32_t i = 0; i < 10; i++) {
        tx[i].len = make_frame(buf[i], i, 60 + i * 140);
        tx[i].data = buf[i];
    }
    CHECK(io_tx_burst(a.d, tx, 10) == 10, "tx");
    CHECK(io_rx_burst(b.d, rx, 10) == 10, "rx");
    io_rx_done(b.d);
    io_group_close(&a.g);
    io_group_close(&b.g);
    io_pair_destroy(p);
    CHECK(pcap_matches(fa, tx, 10), "%s holds the sent frames", fa);
    CHECK(pcap_matches(fb, tx, 10), "%s holds the received frames", fb);
    if (getenv("IOT_KEEP_PCAP")) {
        printf("pcap files kept in %s\n", dir);
    } else {
        unlink(fa);
        unlink(fb);
        rmdir(dir);
    }
}

int main(void)
{
    test_group_errors();
    test_byte_exact();
    test_determinism();
    test_fault_rates();
    test_next_due();
    test_overflow_and_set_faults();
    test_concurrency();
    test_pcap();
    return t_summary();
}
