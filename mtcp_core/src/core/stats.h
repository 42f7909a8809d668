/* Per-core counters, kept in a shared-memory block written only by that core's
 * mTCP thread and readable from another process (the supervisor, metrics). */
#ifndef MTCP_CORE_STATS_H
#define MTCP_CORE_STATS_H

#include <stdint.h>

/* X(name, kind): kind is C (counter, only grows) or G (gauge). The order is the
 * block's layout; append only, never reorder (readers index by position). */
#define MTCP_STATS_LIST(X) \
    X(rx_packets, C) X(rx_bytes, C) X(tx_packets, C) X(tx_bytes, C) \
    X(rx_batches, C) X(tx_batches, C) \
    X(rx_batch_1, C) X(rx_batch_2_3, C) X(rx_batch_4_7, C) X(rx_batch_8_15, C) \
    X(rx_batch_16_31, C) X(rx_batch_32_63, C) X(rx_batch_64_up, C) \
    X(rounds, C) X(sleeps, C) X(wakeups_app, C) \
    X(rx_csum_partial, C) \
    X(arp_requests_rx, C) X(arp_replies_rx, C) X(arp_requests_tx, C) X(arp_replies_tx, C) \
    X(icmp_echo_replies, C) \
    X(tcp_segs_rx, C) X(tcp_segs_tx, C) \
    X(tx_control_pkts, C) X(tx_ack_pkts, C) X(tx_data_pkts, C) \
    X(txq_control, G) X(txq_ack, G) X(txq_data, G) \
    X(conn_passive_opens, C) X(conn_active_opens, C) X(conn_closed, C) \
    X(rst_rx, C) X(rst_tx, C) \
    X(retransmits, C) X(syn_cookies_sent, C) \
    X(jobs, C) X(events, C) \
    X(pool_tcb_free, G) X(pool_tcb_total, G) X(pool_sndbuf_free, G) X(pool_sndbuf_total, G) \
    X(pool_rcvbuf_free, G) X(pool_rcvbuf_total, G) X(hugepages, G) X(flows, G) \
    X(state_closed, G) X(state_listen, G) X(state_syn_sent, G) X(state_syn_received, G) \
    X(state_established, G) X(state_fin_wait_1, G) X(state_fin_wait_2, G) \
    X(state_close_wait, G) X(state_closing, G) X(state_last_ack, G) X(state_time_wait, G) \
    X(drop_eth_short, C) X(drop_eth_not_for_us, C) X(drop_eth_type, C) \
    X(drop_arp_malformed, C) X(drop_arp_not_for_us, C) \
    X(drop_ip_short, C) X(drop_ip_version, C) X(drop_ip_hdr_len, C) X(drop_ip_total_len, C) \
    X(drop_ip_checksum, C) X(drop_ip_fragment, C) X(drop_ip_not_for_us, C) X(drop_ip_proto, C) \
    X(drop_icmp_malformed, C) X(drop_icmp_checksum, C) X(drop_icmp_type, C) \
    X(drop_tcp_short, C) X(drop_tcp_hdr_len, C) X(drop_tcp_checksum, C) X(drop_tcp_options, C) \
    X(drop_tcp_no_socket, C) X(drop_tcp_bad_segment, C) X(drop_tcp_out_of_window, C) \
    X(drop_tcp_backlog_full, C) X(drop_tcp_no_memory, C) X(drop_tcp_rcvbuf_full, C) \
    X(drop_tx_device, C) X(drop_arp_unresolved, C) \
    X(drop_tcp_paws, C) X(drop_tcp_ooo_full, C) X(drop_tcp_rst_time_wait, C) \
    X(rto_timeouts, C) X(fast_retransmits, C) X(sack_retransmits, C) X(recoveries, C) \
    X(dup_acks_rx, C) X(ooo_segments, C) X(delayed_acks, C) X(zero_window_probes, C) \
    X(keepalive_probes, C) X(idle_timeouts, C) X(conn_timeouts, C) \
    X(challenge_acks, C) X(challenge_acks_suppressed, C) \
    X(syn_cookies_ok, C) X(syn_cookies_bad, C) X(loss_probes, C) X(time_wait_reclaimed, C) \
    X(tx_tso_frames, C) \
    X(orphans, G) X(orphan_aborts, C) X(orphan_overflows, C) X(user_timeouts, C) \
    X(zero_window_aborts, C) X(evictions, C) X(drop_tcp_source_limit, C) \
    X(buf_mem_used, G) X(buf_mem_budget, G) X(buf_mem_pressure, G) X(buf_pressure_opens, C) \
    X(buf_released_bytes, C) X(tx_tso_resegmented, C) \
    X(ip_reassembled, C) X(frag_pending, G) \
    X(drop_frag_overlap, C) X(drop_frag_timeout, C) X(drop_frag_no_slot, C) \
    X(drop_frag_malformed, C) X(drop_frag_duplicate, C) X(drop_frag_other_core, C) \
    X(rcv_space_grows, C) \
    X(rack_marked_lost, C) X(rack_reo_timeouts, C) X(tlp_recoveries, C) \
    X(retrans_spurious, C) X(undo_dsack, C) X(dsacks_rx, C) X(dsacks_tx, C) \
    X(hystart_css, C) X(hystart_exits, C) \
    X(app_signals, C) X(stack_kicks, C) X(app_waits, C) X(busy_polls, C) \
    X(rsp_hits, C) X(rsp_misses, C) \
    X(rsp_fb_method, C) X(rsp_fb_grammar, C) X(rsp_fb_header, C) X(rsp_fb_size, C) \
    X(rsp_fb_conditional, C) X(rsp_fb_partial, C) X(rsp_fb_pipeline, C) X(rsp_fb_log_full, C) \
    X(rsp_fb_room, C) X(rsp_fb_draining, C) \
    X(rsp_install_refused, C) X(rsp_entries, G) X(rsp_bytes, G) X(rsp_conns, G)

enum mtcp_stat {
#define MTCP_STAT_ENUM(name, kind) MTCP_STAT_##name,
    MTCP_STATS_LIST(MTCP_STAT_ENUM)
#undef MTCP_STAT_ENUM
    MTCP_STAT__COUNT
};

/* Reasons a frame is dropped map 1:1 onto the drop_* counters; wire/ and net/
 * functions return one of these (0 = accepted). */
typedef int mtcp_drop_t;
#define MTCP_OK 0
#define MTCP_DROP(reason) ((mtcp_drop_t)MTCP_STAT_drop_##reason)

#define MTCP_STATS_MAGIC 0x5354415450435445ULL /* "ETCPTATS" little-endian-ish tag */
#define MTCP_STATS_VERSION 1

struct mtcp_stats_block {
    uint64_t magic;
    uint32_t version;
    uint32_t ncounters;
    uint32_t core;
    uint32_t pid;
    uint64_t updated_ns; /* CLOCK_MONOTONIC of the last flush */
    uint64_t v[MTCP_STAT__COUNT];
};

/* The mTCP thread counts into a private copy and publishes it once per round,
 * so the shared block costs one memcpy per round, not an atomic per packet. */
struct mtcp_stats {
    uint64_t v[MTCP_STAT__COUNT];   /* mTCP thread's working copy */
    uint64_t pub[MTCP_STAT__COUNT]; /* last published copy, read by other threads */
    struct mtcp_stats_block *shm;   /* NULL when no block is mapped */
    int shm_fd;
    char path[256];
};

#define STAT_INC(st, name) ((st)->v[MTCP_STAT_##name]++)
#define STAT_ADD(st, name, n) ((st)->v[MTCP_STAT_##name] += (uint64_t)(n))
#define STAT_SET(st, name, n) ((st)->v[MTCP_STAT_##name] = (uint64_t)(n))
#define STAT_DROP(st, reason) ((st)->v[(reason)]++)

int mtcp_stats_open(struct mtcp_stats *st, const char *path, unsigned core);
void mtcp_stats_publish(struct mtcp_stats *st, uint64_t now_ns);
void mtcp_stats_close(struct mtcp_stats *st);
const char *mtcp_stats_name_of(int i);
int mtcp_stats_is_gauge(int i);

#endif
