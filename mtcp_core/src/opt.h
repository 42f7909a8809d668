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

/* ---- TCP (tcp/) ---- */
/* RTO bounds (RFC 6298 2.4 recommends a 1 s minimum; Linux uses 200 ms). */
#ifndef TCP_RTO_INIT_MS
#define TCP_RTO_INIT_MS 1000
#endif
#ifndef TCP_RTO_MIN_MS
#define TCP_RTO_MIN_MS 200
#endif
#ifndef TCP_RTO_MAX_MS
#define TCP_RTO_MAX_MS 60000
#endif
#ifndef TCP_MAX_RETRIES
#define TCP_MAX_RETRIES 8
#endif
#ifndef TCP_SYN_RETRIES
#define TCP_SYN_RETRIES 6
#endif
/* Receive-window auto-tuning: the window a connection starts with (bytes, at most its
 * ring), and the RTT assumed for it before one is measured. */
#ifndef TCP_RCV_SPACE_INIT
#define TCP_RCV_SPACE_INIT (64u * 1024u)
#endif
#ifndef TCP_RCV_RTT_DEFAULT_MS
#define TCP_RCV_RTT_DEFAULT_MS 200u
#endif
/* segments ACKed at once at the start and after out-of-order data */
#ifndef TCP_QUICKACKS
#define TCP_QUICKACKS 16
#endif
/* initial window in segments (RFC 6928) */
#ifndef TCP_INIT_CWND_SEGS
#define TCP_INIT_CWND_SEGS 10
#endif

#ifndef TCP_OOO_RANGES
#define TCP_OOO_RANGES 8   /* out-of-order islands kept per connection (bounded memory) */
#endif
#ifndef TCP_SACK_RANGES
#define TCP_SACK_RANGES 8  /* peer's SACKed ranges remembered by the sender */
#endif
/* Scoreboard entries per connection (tcp_sb.c; merged when full). Every hole between
 * SACKed islands costs two entries and neighbours of different state cannot merge: a full
 * table drops SACK information and RACK then marks SACKed data lost (spurious
 * retransmissions). A slow-start overshoot into a tail-drop queue loses every other
 * segment of a flight: with 64 entries, a 320-segment flight with 160 holes had 124
 * spurious retransmissions. 255 (the most tcb->sb_n counts; ~4 KB per TCB) hold 127. */
#ifndef TCP_SB_MAX
#define TCP_SB_MAX 255
#endif
/* ---- afpacket (io/afpacket.c) ---- */
/* RX block retire timeout: a block that is not full is handed over after at
 * most this long, which bounds the added latency at low load. */
#ifndef AFP_RETIRE_TOV_MS
#define AFP_RETIRE_TOV_MS 1
#endif
/* Blocks must hold the largest frame: a peer kernel's TSO/GSO segments cross a veth
 * unsegmented (seen: 31922-byte frames), up to 64 KiB; a smaller block truncates
 * them ("packet too big, clamped") and the transfer stalls. */
#ifndef AFP_RX_BLOCK_SIZE
#define AFP_RX_BLOCK_SIZE (256u * 1024u)
#endif
#ifndef AFP_RX_FRAME_SIZE
#define AFP_RX_FRAME_SIZE 2048u
#endif
#ifndef AFP_DEFAULT_RING_FRAMES
#define AFP_DEFAULT_RING_FRAMES 4096u
#endif
#ifndef AFP_TX_BLOCK_SIZE
#define AFP_TX_BLOCK_SIZE (64u * 1024u)
#endif
#ifndef AFP_ARP_FRAME_SIZE
#define AFP_ARP_FRAME_SIZE 512u
#endif
#ifndef AFP_ARP_BLOCK_SIZE
#define AFP_ARP_BLOCK_SIZE 4096u
#endif
#ifndef AFP_ARP_BLOCKS
#define AFP_ARP_BLOCKS 4u
#endif
/* The TSO socket's send buffer (a cwnd of 64 KiB frames in flight on a real NIC; over a
 * veth the skb is orphaned when it crosses into the peer's namespace). */
#ifndef AFP_TSO_SNDBUF
#define AFP_TSO_SNDBUF (8u * 1024u * 1024u)
#endif
/* recvmmsg() copy mode: frames per call and the data socket's SO_RCVBUF */
#ifndef AFP_COPY_BATCH
#define AFP_COPY_BATCH 64
#endif
#ifndef AFP_COPY_RCVBUF
#define AFP_COPY_RCVBUF (32u * 1024u * 1024u)
#endif

/* ---- IPv4 reassembly (net/frag.c) ---- */
#ifndef MTCP_FRAG_SLOTS
#define MTCP_FRAG_SLOTS 8 /* datagrams in reassembly per core */
#endif
#ifndef MTCP_FRAG_TIMEOUT_MS
#define MTCP_FRAG_TIMEOUT_MS 30000 /* from the first fragment (Linux: ipfrag_time 30 s) */
#endif
#ifndef MTCP_FRAG_RANGES
#define MTCP_FRAG_RANGES 32 /* disjoint pieces held per datagram (adjacent ones merge) */
#endif

/* ---- the round (api/ctx.c) ---- */
/* Shaping (tx_rate_mbps): what a frame costs the link beyond its bytes (preamble, start
 * delimiter, FCS, inter-frame gap), and the largest burst, in time at the link's rate. */
#ifndef MTCP_WIRE_OVERHEAD
#define MTCP_WIRE_OVERHEAD 24
#endif
#ifndef MTCP_SHAPE_BURST_NS
#define MTCP_SHAPE_BURST_NS 1000000u
#endif
/* Jobs taken from the app's queue in one round. */
#ifndef MTCP_JOBS_PER_ROUND
#define MTCP_JOBS_PER_ROUND 4096
#endif
/* Millisecond slots of the TCP timing wheel (RTO, PTO, persist, keepalive, REO). */
#ifndef MTCP_WHEEL_SLOTS
#define MTCP_WHEEL_SLOTS 4096
#endif

/* TIME_WAIT connections reclaimed (oldest first) when a new one finds the pool empty. */
#ifndef TCB_TW_RECLAIM_TRIES
#define TCB_TW_RECLAIM_TRIES 4
#endif
/* SYN cookies' time counter tick (a cookie is valid for two ticks). */
#ifndef COOKIE_TICK_MS
#define COOKIE_TICK_MS 64000u
#endif
/* RACK: the min RTT filter's window (Linux: 300 s). */
#ifndef RACK_MIN_RTT_WIN_MS
#define RACK_MIN_RTT_WIN_MS 300000u
#endif
/* Duplicate ACKs / SACKed segments that mean a loss (RFC 6675 DupThresh). */
#ifndef TCP_DUPTHRESH
#define TCP_DUPTHRESH 3u
#endif
/* ---- static responder (api/responder.c) ---- */
/* The per-core access-log ring the worker drains. */
#ifndef RSP_LOG_BYTES
#define RSP_LOG_BYTES (1u << 20)
#endif

#endif
