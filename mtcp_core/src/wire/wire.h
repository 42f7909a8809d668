/* Frame formats only: Ethernet, ARP, IPv4, ICMP, TCP (+ options), checksums.
 * The declarations are in include/mtcp_wire_cdef.h, which cffi's cdef reads too;
 * this header gives them an include guard and what they use. */
#ifndef MTCP_WIRE_H
#define MTCP_WIRE_H

#include <stddef.h>
#include <stdint.h>

#include "../core/stats.h"
#include "../../include/mtcp_wire_cdef.h"

#endif
