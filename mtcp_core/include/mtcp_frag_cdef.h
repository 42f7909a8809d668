/* IPv4 reassembly's declarations (mtcp_core/src/net/frag.c; RFC 791 3.2 "Fragmentation
 * and Reassembly", RFC 815's hole list; RFC 1122 3.3.2: a host MUST reassemble). One table per core, bounded: at most
 * `slots` datagrams at once, each in a buffer of its own (taken on first use and
 * kept), dropped whole when its timer runs out (timeout_ms from its first fragment),
 * when a fragment overlaps what arrived with other bytes (RFC 5722's rule for IPv6,
 * which Linux applies to IPv4 too), or when its fragments contradict each other. An
 * exact duplicate of received bytes is dropped alone.
 *
 * Not thread-safe: the core's own mTCP thread uses its table.
 *
 * The one copy of them: the C side includes it through net/frag.h, and cffi's cdef
 * reads it (for the tests and the fuzzer), so like mtcp_wire_cdef.h it holds only
 * declarations: no #include, no include guard, no #if. Its tunables
 * (MTCP_FRAG_SLOTS, MTCP_FRAG_TIMEOUT_MS) stay in opt.h, overridable there; the build
 * hands cffi their compiled values (_build.py, CDEF_TUNABLES). */

struct frag_table;

struct frag_table *frag_table_new(unsigned slots, uint32_t timeout_ms);
void frag_table_free(struct frag_table *ft);
/* One IPv4 fragment: p/len the datagram as received (header first; link padding past
 * the total length is ignored). Returns 0 or a drop reason (drop_ip_* for a bad header,
 * drop_frag_* for the reassembly's own). With 0, *out is NULL while the datagram is
 * incomplete, or the whole datagram (first fragment's header with total length, flags
 * and checksum rewritten; valid until the next call on this table) and *out_len its
 * length. */
int frag_input(struct frag_table *ft, const uint8_t *p, size_t len, uint64_t now_ms,
               const uint8_t **out, size_t *out_len);
/* Drops every datagram whose timer ran out by now_ms; returns how many. */
unsigned frag_expire(struct frag_table *ft, uint64_t now_ms);
/* Datagrams in reassembly, and the earliest deadline among them (UINT64_MAX: none). */
unsigned frag_pending(const struct frag_table *ft);
uint64_t frag_next_deadline(const struct frag_table *ft);
