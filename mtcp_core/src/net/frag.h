/* IPv4 reassembly: one bounded table per core. The declarations, with what they
 * promise, are in include/mtcp_frag_cdef.h, which cffi's cdef reads too; this header
 * gives them an include guard and what they use. */
#ifndef MTCP_NET_FRAG_H
#define MTCP_NET_FRAG_H

#include <stddef.h>
#include <stdint.h>

#include "../core/stats.h"
#include "../opt.h"
#include "../../include/mtcp_frag_cdef.h"

#endif
