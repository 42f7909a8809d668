/* C users include this; it wraps the cdef-clean public header. */
#ifndef MTCP_H
#define MTCP_H
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include "mtcp_public.h"
#endif
