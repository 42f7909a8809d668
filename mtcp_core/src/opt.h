/* Tunables of the mTCP core, in one place (lwIP's opt.h idea).
 * Every value can be overridden at compile time with -DNAME=value. */
#ifndef MTCP_OPT_H
#define MTCP_OPT_H

/* Largest frame the core builds or accepts (Ethernet header + 1500 MTU + slack). */
#ifndef MTCP_MAX_FRAME
#define MTCP_MAX_FRAME 2048
#endif
#ifndef MTCP_MTU
#define MTCP_MTU 1500
#endif
/* TCP segmentation offload: where the device can cut large segments (io_dev.tso_max;
 * afpacket with PACKET_VNET_HDR), the sender hands it TCP segments of up to this many
 * bytes (Ethernet, IPv4 and TCP headers included) instead of MSS-sized ones. 0 turns
 * it off. MTCP_AFP_TSO 0 keeps the afpacket backend from offering it at all. */
#ifndef MTCP_TSO_MAX
#define MTCP_TSO_MAX 65536
#endif
#ifndef MTCP_AFP_TSO
#define MTCP_AFP_TSO 1
#endif
/* Frames taken from the device in one round. */
#ifndef MTCP_RX_BATCH
#define MTCP_RX_BATCH 64
#endif
/* Frames the core can queue for one TX flush. */
#ifndef MTCP_TX_BATCH
#define MTCP_TX_BATCH 256
#endif
/* Jobs (app -> stack) and events (stack -> app) queue sizes; powers of two. */
#ifndef MTCP_JOBQ_SIZE
#define MTCP_JOBQ_SIZE 65536
#endif
#ifndef MTCP_EVQ_SIZE
#define MTCP_EVQ_SIZE 65536
#endif
/* Defaults for a context's pools (connections: sized from mem_budget, see below). */
#ifndef MTCP_DEFAULT_RCVBUF
#define MTCP_DEFAULT_RCVBUF (64 * 1024)
#endif
#ifndef MTCP_DEFAULT_SNDBUF
#define MTCP_DEFAULT_SNDBUF (64 * 1024)
#endif
/* Exhaustion bounds (issue 15). Socket-buffer memory per core: a connection's rings are
 * sized when it opens, from the full rcvbuf/sndbuf while less than half of the budget is
 * committed, from the pressure sizes beyond that; past the budget a new connection needs an
 * idle one evicted. The pool of TCBs is sized from the budget and the pressure sizes. */
#ifndef MTCP_DEFAULT_MEM_BUDGET
#define MTCP_DEFAULT_MEM_BUDGET (512ull * 1024 * 1024)
#endif
#ifndef MTCP_PRESSURE_SNDBUF
#define MTCP_PRESSURE_SNDBUF (16 * 1024)
#endif
#ifndef MTCP_PRESSURE_RCVBUF
#define MTCP_PRESSURE_RCVBUF (16 * 1024)
#endif
#ifndef MTCP_MAX_POOL
#define MTCP_MAX_POOL 65536
#endif
/* Pages of a closed connection's ring are given back (madvise) when it used this much. */
#ifndef MTCP_RELEASE_MIN
#define MTCP_RELEASE_MIN (8 * 1024)
#endif
#ifndef MTCP_DEFAULT_ORPHAN_RETRIES
#define MTCP_DEFAULT_ORPHAN_RETRIES 8
#endif
/* Evictable connections looked at per allocation, and the free share below which the pool
 * counts as nearly full (nginx drains reusable connections below 1/16 free). */
#ifndef MTCP_EVICT_SCAN
#define MTCP_EVICT_SCAN 256
#endif
#ifndef MTCP_EVICT_FREE_SHARE
#define MTCP_EVICT_FREE_SHARE 16
#endif
/* Flow hash table buckets per core (power of two). */
#ifndef MTCP_FLOW_BUCKETS
#define MTCP_FLOW_BUCKETS 16384
#endif
/* TIME_WAIT length: 2 * MSL. Short by default like most user-level stacks. */
#ifndef MTCP_DEFAULT_TIME_WAIT_MS
#define MTCP_DEFAULT_TIME_WAIT_MS 2000
#endif
/* A connection silent in both directions this long is reset (RFC 9293 leaves it to
 * the implementation; it bounds what abandoned peers can hold). */
#ifndef MTCP_DEFAULT_IDLE_TIMEOUT_MS
#define MTCP_DEFAULT_IDLE_TIMEOUT_MS 300000
#endif
/* Half-open connections per listener before answering SYNs with cookies. */
#ifndef MTCP_DEFAULT_SYN_BACKLOG
#define MTCP_DEFAULT_SYN_BACKLOG 256
#endif
/* Challenge ACKs per second per core (RFC 5961 7). */
#ifndef MTCP_DEFAULT_CHALLENGE_ACKS
#define MTCP_DEFAULT_CHALLENGE_ACKS 1000
#endif
/* Delayed ACK: at most this long, and at least every second full segment (RFC 5681 4.2). */
#ifndef MTCP_DELACK_MS
#define MTCP_DELACK_MS 40
#endif
/* Keepalive defaults (RFC 1122 4.2.3.6: no less than two hours idle). */
#ifndef MTCP_KEEPIDLE_MS
#define MTCP_KEEPIDLE_MS 7200000
#endif
#ifndef MTCP_KEEPINTVL_MS
#define MTCP_KEEPINTVL_MS 75000
#endif
#ifndef MTCP_KEEPCNT
#define MTCP_KEEPCNT 9
#endif
/* ARP cache: entry lifetime and how often an unresolved address is asked again. */
#ifndef MTCP_ARP_ENTRIES
#define MTCP_ARP_ENTRIES 256
#endif
#ifndef MTCP_ARP_TTL_MS
#define MTCP_ARP_TTL_MS 60000
#endif
#ifndef MTCP_ARP_RETRY_MS
#define MTCP_ARP_RETRY_MS 1000
#endif
/* Requests sent for an address before connections waiting on it fail. */
#ifndef MTCP_ARP_TRIES
#define MTCP_ARP_TRIES 5
#endif
/* Frames held per ARP entry while it resolves. */
#ifndef MTCP_ARP_PENDING
#define MTCP_ARP_PENDING 4
#endif
/* Default MSS we announce and assume when the peer sends none (RFC 9293 3.7.1). */
#ifndef MTCP_DEFAULT_MSS
#define MTCP_DEFAULT_MSS 1460
#endif
#ifndef MTCP_PEER_DEFAULT_MSS
#define MTCP_PEER_DEFAULT_MSS 536
#endif
/* Ephemeral ports for active opens. */
#ifndef MTCP_EPHEMERAL_LO
#define MTCP_EPHEMERAL_LO 32768
#endif
#ifndef MTCP_EPHEMERAL_HI
#define MTCP_EPHEMERAL_HI 60999
#endif
/* Default listen backlog cap. */
#ifndef MTCP_MAX_BACKLOG
#define MTCP_MAX_BACKLOG 65535
#endif
/* Epoll instances per context. */
#ifndef MTCP_MAX_EPOLL
#define MTCP_MAX_EPOLL 16
#endif

/* afpacket: after this many receive bursts in a row that found nothing, the packet
 * sockets' pending errors are read (an interface that went down leaves ENETDOWN on a
 * socket nothing reads, and its poll stays readable until then). */
#ifndef MTCP_AFP_EMPTY_BURSTS_ERRCHECK
#define MTCP_AFP_EMPTY_BURSTS_ERRCHECK 64
#endif

#endif
