/* The public C API of the mTCP core, in mTCP's spirit (mtcp_api.h/mtcp_epoll.h).
 *
 * This file is read twice: by the C compiler (through mtcp.h) and by cffi's cdef,
 * so it holds only declarations and "#define NAME number" lines: no #include,
 * no #if, no macros with arguments. Addresses and ports are host byte order.
 * Functions return -1 and set errno on failure, like the BSD calls they mirror. */

/* epoll events: the Linux values, so code written for select.epoll reads the same */
#define MTCP_EPOLLIN 1
#define MTCP_EPOLLPRI 2
#define MTCP_EPOLLOUT 4
#define MTCP_EPOLLERR 8
#define MTCP_EPOLLHUP 16
#define MTCP_EPOLLRDHUP 8192
#define MTCP_EPOLLET 2147483648
#define MTCP_EPOLL_CTL_ADD 1
#define MTCP_EPOLL_CTL_DEL 2
#define MTCP_EPOLL_CTL_MOD 3

#define MTCP_SHUT_RD 0
#define MTCP_SHUT_WR 1
#define MTCP_SHUT_RDWR 2

/* setsockopt levels and names (Linux values) */
#define MTCP_SOL_SOCKET 1
#define MTCP_SO_REUSEADDR 2
#define MTCP_SO_KEEPALIVE 9
#define MTCP_SO_SNDBUF 7
#define MTCP_SO_RCVBUF 8
#define MTCP_SO_LINGER 13
#define MTCP_SO_ERROR 4
#define MTCP_IPPROTO_TCP 6
#define MTCP_TCP_NODELAY 1
#define MTCP_TCP_MAXSEG 2
#define MTCP_TCP_KEEPIDLE 4
#define MTCP_TCP_KEEPINTVL 5
#define MTCP_TCP_KEEPCNT 6
#define MTCP_TCP_USER_TIMEOUT 18
/* Not a Linux option: the application lets the stack evict this connection (inherited from
 * a listener) when the pool nears full and the connection is idle at the TCP level (nothing
 * unsent, unacknowledged or unread), oldest first, as nginx reuses idle connections. */
#define MTCP_SO_EVICTABLE 0x4d01
#define MTCP_TCP_CONGESTION 13 /* a name, "cubic" or "newreno" (Linux's TCP_CONGESTION) */

/* TCP states (RFC 9293 names), as reported by mtcp_get_tcp_info */
#define MTCP_TCP_CLOSED 0
#define MTCP_TCP_LISTEN 1
#define MTCP_TCP_SYN_SENT 2
#define MTCP_TCP_SYN_RECEIVED 3
#define MTCP_TCP_ESTABLISHED 4
#define MTCP_TCP_FIN_WAIT_1 5
#define MTCP_TCP_FIN_WAIT_2 6
#define MTCP_TCP_CLOSE_WAIT 7
#define MTCP_TCP_CLOSING 8
#define MTCP_TCP_LAST_ACK 9
#define MTCP_TCP_TIME_WAIT 10

struct mtcp_conf {
    const char *backend;       /* "afpacket" | "tap" | "pair" */
    const char *iface;         /* afpacket: interface; tap: device name */
    const char *ip;            /* the stack's IPv4 address, dotted */
    unsigned prefix;           /* subnet prefix length */
    const char *gateway;       /* default gateway, dotted, or NULL */
    const char *mac;           /* "aa:bb:.." or NULL: afpacket uses the interface's, tap/pair derive one */
    unsigned ncores;           /* cores (workers) of this stack */
    unsigned fanout_group;     /* afpacket fanout group id, 0 = derived from the pid */
    const char *tap_host_cidr; /* tap: host side address to set, or NULL */
    const char *pcap_path;     /* capture file, "%u" = core, or NULL */
    const char *stats_path;    /* shared stats block file, "%u" = core, or NULL */
    unsigned max_conns;        /* per core; 0 = default */
    unsigned rcvbuf;           /* per socket bytes; 0 = default */
    unsigned sndbuf;
    int no_priority;           /* 1: one FIFO TX list instead of control/ACK/data */
    unsigned time_wait_ms;     /* 0 = default */
    int hugepages;             /* 1: try huge pages for pools, 0: never */
    void *pair;                /* pair backend: from mtcp_pair_create */
    int pair_side;             /* 0 or 1 */
    int trace;                 /* 1: log every TCP state change to stderr */
    uint32_t fixed_isn;        /* tests only: nonzero = every connection's ISN (sequence
                                  wrap-around tests); 0 = RFC 6528 ISNs */
    unsigned idle_timeout_ms;  /* a connection with no segment in either direction for this
                                  long is reset (0 = default 300 s) */
    unsigned syn_backlog;      /* half-open connections per listener before SYN cookies
                                  (0 = default 256) */
    unsigned challenge_ack_limit; /* challenge ACKs per second per core (0 = default 1000) */
    int no_sack;               /* 1: do not negotiate SACK */
    int no_delayed_ack;        /* 1: acknowledge every segment at once */
    int afpacket_rx_ring;      /* afpacket: 1 = TPACKET_V3 RX ring (zero copy, but a block is
                                  handed over only when full or after its 1 ms timer), 0 =
                                  recvmmsg() batches (each frame reaches the stack at once) */
    unsigned tx_rate_mbps;     /* 0: send as fast as the device takes frames; N: a link of
                                  N Mb/s (a veth has no line rate: this gives the queue that
                                  forms at a real NIC, where priority queueing matters) */
    int shared_addr;           /* 1: the kernel keeps this address too (a container's eth0):
                                  a segment for a port with no listener and no connection is
                                  the kernel's and gets no RST, and pings are the kernel's */
    uint64_t secret_seed;      /* tests only: nonzero = the stack's secret key (ISNs,
                                  timestamp offsets, SYN cookies, the first ephemeral port)
                                  derived from this seed; 0 = getrandom() */
    /* Exhaustion bounds (as Linux's tcp_orphan_retries, tcp_max_orphans, tcp_mem): */
    unsigned orphan_retries;   /* retransmissions or zero-window probes of a connection the
                                  app has closed before it is aborted (0 = default 8) */
    unsigned max_orphans;      /* connections closed by the app but not done; past this a
                                  close with data unsent aborts (0 = default max_conns / 4) */
    unsigned long long mem_budget; /* socket buffer bytes per core (0 = default 512 MiB):
                                  from half of it on, new connections get small buffers
                                  (pressure); past it they are refused (or idle ones evicted) */
    unsigned max_conns_per_source; /* connections per peer address per core (0 = no limit):
                                  more SYNs from that address are answered with RST */
    int no_evict;              /* 1: never evict idle connections marked MTCP_SO_EVICTABLE */
    unsigned frag_timeout_ms;  /* IPv4 reassembly: a datagram still missing fragments this
                                  long after its first one is dropped (0 = default 30 s) */
    const char *congestion;    /* congestion control of new connections: "cubic" (NULL:
                                  the default) or "newreno" */
    unsigned busy_poll_us;     /* after a round that did work, poll the device and the job
                                  queue this long before sleeping (0: sleep at once) */
};

struct mtcp_stack;
struct mtcp_context;
typedef struct mtcp_context *mctx_t;

/* Opens the devices of every core (in the calling process, before workers fork).
 * On failure returns NULL with errno set and a message in err. */
struct mtcp_stack *mtcp_stack_create(const struct mtcp_conf *conf, char *err, size_t errlen);
void mtcp_stack_destroy(struct mtcp_stack *stack);
unsigned mtcp_stack_ncores(struct mtcp_stack *stack);
/* MAC the stack uses, "aa:bb:cc:dd:ee:ff" into out (18 bytes). */
int mtcp_stack_mac(struct mtcp_stack *stack, char *out, size_t outlen);

/* Starts core `core`'s mTCP thread (pinned to cpu when cpu >= 0). */
mctx_t mtcp_create_context(struct mtcp_stack *stack, unsigned core, int cpu);
/* Stops the thread, resets every open connection, frees the pools. */
void mtcp_destroy_context(mctx_t mctx);

/* A context with no mTCP thread, for tests: the caller runs its rounds with mtcp_ctx_step
 * on a clock of its own that starts at now_ns (> 0; monotonic ns, any origin), and the
 * stack reads no other clock (TCP timers, timestamps, ISNs, SYN cookies, ARP, the shaper,
 * the pair link's delays). The socket/epoll API works on it from the same thread: jobs
 * wait for the next step, mtcp_epoll_wait never waits (any timeout acts as 0), listen()
 * runs the round that registers the listener at the context's current time. */
mctx_t mtcp_create_stepped_context(struct mtcp_stack *stack, unsigned core, uint64_t now_ns);
/* One round at now_ns (not before the last step's): receive, the app's jobs, timers,
 * transmit, events. Returns when the next round is due (ns, now_ns when at once: more
 * work is waiting), or 0 with errno EINVAL (a threaded context, time going backwards). */
uint64_t mtcp_ctx_step(mctx_t mctx, uint64_t now_ns);

int mtcp_socket(mctx_t mctx, int domain, int type, int protocol);
int mtcp_bind(mctx_t mctx, int sockid, uint32_t addr, uint16_t port);
int mtcp_listen(mctx_t mctx, int sockid, int backlog);
/* Non-blocking (EAGAIN when nothing is pending). */
int mtcp_accept(mctx_t mctx, int sockid, uint32_t *addr, uint16_t *port);
/* Up to max accepted sockets into out; returns how many (0 and EAGAIN when none). */
int mtcp_accept_batch(mctx_t mctx, int sockid, int *out, int max);
/* Non-blocking: returns -1/EINPROGRESS; EPOLLOUT (or EPOLLERR) tells the outcome. */
int mtcp_connect(mctx_t mctx, int sockid, uint32_t addr, uint16_t port);
/* 0 = end of stream; -1/EAGAIN when nothing to read yet. */
ssize_t mtcp_read(mctx_t mctx, int sockid, char *buf, size_t len);
ssize_t mtcp_write(mctx_t mctx, int sockid, const char *buf, size_t len);
struct mtcp_iovec {
    const void *base;
    size_t len;
};
ssize_t mtcp_writev(mctx_t mctx, int sockid, const struct mtcp_iovec *iov, int iovcnt);
int mtcp_close(mctx_t mctx, int sockid);
/* Close with RST (SO_LINGER 0 semantics). */
int mtcp_abort(mctx_t mctx, int sockid);
int mtcp_shutdown(mctx_t mctx, int sockid, int how);
int mtcp_getsockname(mctx_t mctx, int sockid, uint32_t *addr, uint16_t *port);
int mtcp_getpeername(mctx_t mctx, int sockid, uint32_t *addr, uint16_t *port);
int mtcp_setsockopt(mctx_t mctx, int sockid, int level, int optname, const void *optval,
                    unsigned optlen);
int mtcp_getsockopt(mctx_t mctx, int sockid, int level, int optname, void *optval,
                    unsigned *optlen);

/* Batched crossings: one call reads (writes) several sockets.
 * read: for socket i, up to cap bytes into buf + i*cap; out_len[i] = bytes, 0 at EOF,
 * -errno on error (-EAGAIN when nothing yet). Returns n. */
int mtcp_read_batch(mctx_t mctx, const int *sockids, int n, char *buf, size_t cap,
                    ssize_t *out_len);
/* write: bufs[i]/lens[i] to sockids[i]; out[i] = bytes taken or -errno. Returns n. */
int mtcp_write_batch(mctx_t mctx, const int *sockids, const char *const *bufs,
                     const size_t *lens, int n, ssize_t *out);
/* close several sockets in one crossing. */
int mtcp_close_batch(mctx_t mctx, const int *sockids, int n);
/* write as mtcp_write_batch, then close each socket i with close[i] set whose buffer was
 * taken whole (out[i] == lens[i]) and that has no unread data, in the same crossing: the
 * mTCP thread sees the data and the close in one round, so the FIN rides on the last data
 * segment. close[i] is cleared for a socket left open (a close with unread data is an
 * abort, RFC 2525 2.17: the caller decides when). Returns n. */
int mtcp_write_close_batch(mctx_t mctx, const int *sockids, const char *const *bufs,
                           const size_t *lens, unsigned char *close, int n, ssize_t *out);

struct mtcp_epoll_event {
    uint32_t events;
    uint64_t data;
};
int mtcp_epoll_create(mctx_t mctx, int size);
int mtcp_epoll_close(mctx_t mctx, int epid);
int mtcp_epoll_ctl(mctx_t mctx, int epid, int op, int sockid, uint32_t events, uint64_t data);
/* timeout_ms < 0 waits forever; blocks on an eventfd, never spins. Call without
 * holding the GIL (cffi releases it). */
int mtcp_epoll_wait(mctx_t mctx, int epid, struct mtcp_epoll_event *events, int maxevents,
                    int timeout_ms);
/* Wakes a blocked mtcp_epoll_wait on this context (from any thread). */
void mtcp_epoll_interrupt(mctx_t mctx);

struct mtcp_tcp_info {
    int state;
    uint32_t snd_una, snd_nxt, snd_wnd, rcv_nxt, rcv_wnd;
    uint32_t mss, snd_wscale, rcv_wscale;
    uint32_t cwnd, ssthresh, srtt_us, rto_ms;
    uint32_t sndbuf_used, rcvbuf_used;
    uint64_t retransmits;
    uint32_t sack_ok, ts_ok, in_recovery, ooo_ranges;
    uint32_t dup_acks, rto_backoff;
    uint32_t sndbuf_cap, rcvbuf_cap; /* bytes of buffer this connection may touch */
    uint32_t rttvar_us, min_rtt_us;
    uint32_t lost_segs, reordering;      /* marked lost (lifetime), reordering seen (segments) */
    uint32_t sacked_bytes, lost_bytes, pipe;
    uint32_t reo_wnd_mult;
    char congestion[16];                 /* "cubic" | "newreno" */
};
int mtcp_get_tcp_info(mctx_t mctx, int sockid, struct mtcp_tcp_info *out);

/* Test support (src/tcp/tcp_cc_sim.c): runs congestion control `algo` on a synthetic ACK
 * clock: `rounds` rounds of one window of SMSS-sized segments each, ACKed one by one over
 * rtt_us[i]; one loss at the start of round loss_round (-1: none). Writes each round's
 * final cwnd, ssthresh and elapsed time; returns rounds, or -1 (EINVAL). */
int mtcp_cc_simulate(const char *algo, uint32_t mss, uint32_t init_cwnd_segs,
                     const uint32_t *rtt_us, int rounds, int loss_round, uint32_t *cwnd_out,
                     uint32_t *ssthresh_out, uint64_t *time_us_out, uint64_t *hystart_exits);

/* Counters: names and kinds of the per-core stats block (core/stats.h). */
int mtcp_stats_count(void);
const char *mtcp_stats_name(int i);
int mtcp_stats_is_gauge(int i);
/* A fresh snapshot of this context's counters (published once per round). */
int mtcp_ctx_stats(mctx_t mctx, uint64_t *out, int n);
/* Reads a stats block file written by another process; returns counters read or -1. */
int mtcp_stats_read_file(const char *path, uint64_t *out, int n, unsigned *core, unsigned *pid);

/* The in-memory link of the pair backend and its fault injector. */
struct mtcp_pair_faults {
    uint64_t seed;
    double loss;
    double duplicate;
    double reorder;
    double corrupt;
    uint32_t delay_us;
    uint32_t jitter_us;
};
struct mtcp_pair_counters {
    uint64_t sent, delivered, lost, duplicated, reordered, corrupted, overflow;
    uint64_t targeted; /* dropped by mtcp_pair_drop_next rules */
};
void *mtcp_pair_create(const struct mtcp_pair_faults *faults);
void mtcp_pair_destroy(void *pair);
void mtcp_pair_set_faults(void *pair, const struct mtcp_pair_faults *faults);
void mtcp_pair_counters(void *pair, int side, struct mtcp_pair_counters *out);
/* TCP flag bits for mtcp_pair_drop_next */
#define MTCP_TCP_FLAG_FIN 1
#define MTCP_TCP_FLAG_SYN 2
#define MTCP_TCP_FLAG_RST 4
#define MTCP_TCP_FLAG_PSH 8
#define MTCP_TCP_FLAG_ACK 16
#define MTCP_TCP_FLAG_URG 32
/* Drops the next `count` TCP segments sent by `side` with (flags & mask) == value
 * and a payload of min_payload..max_payload bytes (the next SYN: mask SYN|ACK,
 * value SYN). Arming the same rule again adds to its count; up to 8 different
 * rules per side. 0, or -1 with errno EINVAL / ENOSPC. */
int mtcp_pair_drop_next(void *pair, int side, unsigned mask, unsigned value, unsigned count,
                        unsigned min_payload, unsigned max_payload);

/* A side of the link that no stack has open, driven by hand (tests), on the caller's
 * clock. inject: sends one frame as `side` (through its fault injector; due at now_ns
 * plus the delay): 0, or -1 with errno EBUSY (a stack has that side), EMSGSIZE, ENOBUFS
 * (the link is full). take: copies the next frame sent to `side` that is due by now_ns
 * into buf: its length, 0 when none is due, -1 with errno EMSGSIZE (it stays) or EBUSY.
 * next_due: when the next frame for `side` is due (ns), 0 when none is queued. */
int mtcp_pair_inject(void *pair, int side, const void *frame, size_t len, uint64_t now_ns);
int mtcp_pair_take(void *pair, int side, void *buf, size_t cap, uint64_t now_ns);
uint64_t mtcp_pair_next_due(void *pair, int side);

/* ---- Link emulator (src/app/netem.c): a two-port bridge with a bad link between ----
 * Frames taken on interface a leave on b and the other way round, through the pair
 * link's fault injector and delay line (one direction each) and, where a rate is set,
 * a token bucket with a bounded FIFO in front (tail drop). dir[0] shapes a -> b,
 * dir[1] b -> a; each direction draws from its own stream of its faults' seed. */
struct mtcp_netem_dir {
    struct mtcp_pair_faults faults; /* loss, duplicate, reorder, corrupt, delay, jitter */
    uint64_t rate_bps;              /* bits of Ethernet frames per second; 0 = no limit */
    uint32_t queue_frames;          /* rate limiter FIFO, frames; 0 = 1000 */
    uint32_t burst_bytes;           /* bucket depth; 0 = max(2 frames, 1 ms at the rate) */
};
struct mtcp_netem_conf {
    const char *iface_a, *iface_b;
    const char *netns;              /* open the ports in this namespace (a name under
                                       /run/netns or a path); NULL = the caller's */
    const char *pcap_a, *pcap_b;    /* capture what each port receives and sends; NULL = no */
    int rt_priority;                /* > 0: the loop runs SCHED_FIFO at this priority where
                                       allowed (CAP_SYS_NICE), so that a busy machine does not
                                       delay its wake-ups; 0: an ordinary thread */
    struct mtcp_netem_dir dir[2];
};
struct mtcp_netem_counters {
    uint64_t received;        /* frames taken on the ingress port */
    uint64_t forwarded;       /* frames sent on the egress port */
    uint64_t bytes_forwarded;
    uint64_t dropped;         /* random loss */
    uint64_t duplicated, reordered, corrupted;
    uint64_t delayed;         /* forwarded after the delay line held them (delay/jitter set) */
    uint64_t rate_delayed;    /* waited in the rate limiter's FIFO for tokens */
    uint64_t queue_drops;     /* rate limiter FIFO full: tail drop */
    uint64_t overflow;        /* the delay line was full (4096 frames per direction) */
    uint64_t oversize;        /* over the MTU and not TCP/IPv4: dropped */
    uint64_t segmented;       /* TCP GSO frames over the MTU, cut into segments (as TSO) */
    uint64_t checksummed;     /* partial checksums completed (sender's TX offload) */
    uint64_t tx_errors;       /* the egress port refused the frame (ring full, too big) */
    uint64_t port_errors;     /* socket errors read on the ingress port (its interface went
                                 down: ENETDOWN) */
};
struct mtcp_netem;
/* Opens both ports (needs CAP_NET_RAW). NULL with errno set and err holding the reason. */
struct mtcp_netem *mtcp_netem_open(const struct mtcp_netem_conf *conf, char *err, size_t errlen);
/* Forwards until mtcp_netem_stop; call it on a thread of its own (cffi drops the GIL).
 * 0, or -EBUSY when it already runs. */
int mtcp_netem_run(struct mtcp_netem *nm);
void mtcp_netem_stop(struct mtcp_netem *nm); /* any thread; run returns within a round */
/* 1 when the running loop got its real-time priority, 0 when not (or not asked). */
int mtcp_netem_realtime(struct mtcp_netem *nm);
/* New settings for one direction (0: a -> b) while it runs; a new seed restarts that
 * direction's random stream. 0 or -EINVAL (bad rate, queue_frames above the FIFO the
 * emulator opened with). */
int mtcp_netem_set(struct mtcp_netem *nm, int dir, const struct mtcp_netem_dir *d);
void mtcp_netem_counters(struct mtcp_netem *nm, int dir, struct mtcp_netem_counters *out);
void mtcp_netem_close(struct mtcp_netem *nm); /* after run has returned */
/* What the loop does to one frame, for tests and fuzzing. Completes a partial TCP/UDP
 * checksum of an IPv4 frame in place (the field holds the pseudo-header sum): 1, or 0
 * when the frame is not one (left as it is). */
int mtcp_netem_complete_csum(uint8_t *frame, uint32_t len);
/* Piece `index` of a TCP/IPv4 frame cut into segments of at most `mtu` IP bytes (as TSO
 * would) written to out: its length, 0 when there is no such piece, -1 when the frame
 * cannot be cut (not TCP/IPv4, bad lengths, a fragment) or out_size is too small. */
int mtcp_netem_segment(const uint8_t *frame, uint32_t len, uint32_t mtu, uint32_t index,
                       uint8_t *out, uint32_t out_size);
/* ---- Static responder (src/api/responder.c) ----
 * Complete responses the application installed, answered by the mTCP thread in the round
 * that received the request. Connections accepted on `port` stay with the responder until
 * a request is not one it answers; then they reach accept() with every unread byte. */
struct mtcp_rsp_conf {
    uint16_t port;                  /* the listener it answers on */
    unsigned max_entries;           /* table bound (per core) */
    size_t max_bytes;               /* bytes of all entries (per core) */
    size_t max_entry;               /* one entry's bytes; larger ones are refused (E2BIG) */
    unsigned max_request_line;      /* the site's limits: beyond them, the application */
    unsigned max_header_bytes;
    unsigned header_timeout_ms;     /* as the application's timeouts */
    unsigned keepalive_timeout_ms;
    unsigned max_keepalive_requests;
    int log;                        /* 1: a record per hit for the access log */
    int key_host;                   /* 1: the Host field is part of the key */
    uint64_t *hit_slots;            /* NULL, or 21 counters the mTCP thread adds every hit
                                       to at once (the layout of mtcp_rsp_take_metrics; the
                                       worker's shared HTTP block), its only writer */
};
/* App thread. Enable (again: new settings, empty table, not draining). */
int mtcp_rsp_enable(mctx_t mctx, const struct mtcp_rsp_conf *conf);
/* parts: key, head before Date, head after Date (without the Connection framing), body,
 * ETag (empty: no 304), the 304's head before Date, after Date. */
int mtcp_rsp_install(mctx_t mctx, const char *const *parts, const size_t *lens);
int mtcp_rsp_remove(mctx_t mctx, const char *key, size_t keylen);
int mtcp_rsp_clear(mctx_t mctx);
/* No new connections on the port; idle ones close, the rest after their response. */
int mtcp_rsp_drain(mctx_t mctx);
/* Connections the responder holds now. */
int mtcp_rsp_conns(mctx_t mctx);
/* Takes (and zeroes) the hit metrics: requests GET 2xx, GET 3xx, HEAD 2xx, HEAD 3xx,
 * response bytes, duration sum (ns), then 15 duration buckets. Returns how many. */
int mtcp_rsp_take_metrics(mctx_t mctx, uint64_t *out, int n);
/* Whole access-log records into buf (at most cap bytes); returns the bytes. */
size_t mtcp_rsp_read_log(mctx_t mctx, char *buf, size_t cap);
/* mtcp_accept_batch, also giving per connection the responses the responder already sent
 * on it and when its current request started (CLOCK_MONOTONIC ns). */
int mtcp_accept_batch_rsp(mctx_t mctx, int sockid, int *out, uint32_t *served,
                          uint64_t *started_ns, int max);
/* The request parser alone (tests, fuzzing): 1 a head it takes (*head_len set), 0 needs
 * more bytes, -reason (1 method, 2 grammar, 3 header, 4 size) otherwise. */
int mtcp_rsp_parse(const char *buf, size_t len, unsigned max_request_line,
                   unsigned max_header_bytes, unsigned *head_len);

/* The flow -> core function shared with the afpacket fanout program. */
unsigned mtcp_flow_core(uint32_t saddr, uint32_t daddr, uint16_t sport, uint16_t dport,
                        unsigned ncores);

/* ---- Load generator (src/app/loadgen.c): short HTTP connections on this core ----
 * A closed loop of `connections` connections, each: active open, write `request`, read
 * the response until it is complete (Content-Length) and the server's FIN, close, open
 * again; like `wrk -H 'Connection: close'`. Latency runs from the request's last byte
 * handed to the stack to the response's last byte read (wrk's definition); connect time
 * from connect() to the connection being established. Histograms are log-linear over
 * nanoseconds: values below 64 have their own bucket, above that 32 buckets per power
 * of two (at most 1/32 relative error), up to 2^40 ns. */
#define MTCP_LOAD_HIST_BUCKETS 1152
#define MTCP_LOAD_MAX_CONNECTIONS 16384
#define MTCP_LOAD_MAX_PIPELINE 64

struct mtcp_load_conf {
    uint32_t addr;              /* server address (host order) */
    uint16_t port;              /* server port */
    const char *request;        /* the bytes written on every connection */
    size_t request_len;
    unsigned connections;       /* concurrent connections, 1..MTCP_LOAD_MAX_CONNECTIONS */
    uint64_t duration_ms;       /* run this long (> 0: every run is bounded in time) */
    uint64_t max_requests;      /* open at most this many connections (0 = no cap); the
                                   run ends early when all of them are done */
    unsigned timeout_ms;        /* a connection not done this long after its connect()
                                   is aborted (RST) and counted as a timeout; 0 = 2000 */
    int stop;                   /* set with mtcp_load_stop (another thread) to end early */
    unsigned keepalive;         /* 0: one request per connection, then the server's FIN
                                   (short connections); N: N requests per connection (the
                                   request must not ask for a close), then the client
                                   closes; latency per request, `completed` counts them */
    unsigned pipeline;          /* keep-alive: requests in flight per connection, 1 (0) to
                                   MTCP_LOAD_MAX_PIPELINE */
};

struct mtcp_load_result {
    uint64_t started;           /* connections opened (connect() called) */
    uint64_t completed;         /* complete responses, whatever their status */
    uint64_t status[6];         /* completed by status class: [1]..[5] = 1xx..5xx, [0] other */
    uint64_t err_connect;       /* connect failed: refused (RST), timed out, no route, ... */
    uint64_t err_reset;         /* reset or failed after the connection was established */
    uint64_t err_timeout;       /* not done within timeout_ms */
    uint64_t err_response;      /* closed before a complete response, or not HTTP/1.x */
    uint64_t err_status;        /* completed with a status other than 2xx/3xx */
    uint64_t bytes_read, bytes_written;
    uint64_t elapsed_ns;        /* from the first connect() to the end of the run */
    uint64_t lat_min_ns, lat_max_ns, lat_sum_ns;
    uint64_t lat_hist[MTCP_LOAD_HIST_BUCKETS];
    uint64_t conn_min_ns, conn_max_ns, conn_sum_ns, conn_count;
    uint64_t conn_hist[MTCP_LOAD_HIST_BUCKETS];
};

/* Runs the loop on this context; call it from the context's app thread (cffi releases
 * the GIL). Returns 0 with *out filled, or -1 with errno (EINVAL: bad settings). In-flight
 * connections are aborted when the run ends. */
int mtcp_load_run(mctx_t mctx, struct mtcp_load_conf *conf, struct mtcp_load_result *out);
/* Asks a running mtcp_load_run to end (safe from any thread); it returns within ~10 ms. */
void mtcp_load_stop(struct mtcp_load_conf *conf);
/* Adds `from` into `into` (counters, histograms, min/max): results of several cores. */
void mtcp_load_merge(struct mtcp_load_result *into, const struct mtcp_load_result *from);
/* The latency at quantile q (0..1) of a histogram, in ns: the highest value of the bucket
 * holding it, at most max_ns; 0 for an empty histogram. */
uint64_t mtcp_load_quantile(const uint64_t *hist, uint64_t max_ns, double q);
