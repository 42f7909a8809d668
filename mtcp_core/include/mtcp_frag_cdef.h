/* IPv4 reassembly (mtcp_core/src/net/frag.h) as cffi sees it, for tests and the fuzzer.
 * Read by cffi's cdef only, like mtcp_wire_cdef.h: declarations only. */

#define MTCP_FRAG_SLOTS 8
#define MTCP_FRAG_TIMEOUT_MS 30000

struct frag_table;
struct frag_table *frag_table_new(unsigned slots, uint32_t timeout_ms);
void frag_table_free(struct frag_table *ft);
int frag_input(struct frag_table *ft, const uint8_t *p, size_t len, uint64_t now_ms,
               const uint8_t **out, size_t *out_len);
unsigned frag_expire(struct frag_table *ft, uint64_t now_ms);
unsigned frag_pending(const struct frag_table *ft);
uint64_t frag_next_deadline(const struct frag_table *ft);
