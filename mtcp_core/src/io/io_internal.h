/* Helpers shared by the io/ backends only (not part of the io.h interface). */
#ifndef MTCP_IO_INTERNAL_H
#define MTCP_IO_INTERNAL_H

#include <errno.h>
#include <stdint.h>
#include <time.h>
#include <unistd.h>

#include "../core/clock.h"
#include "io.h"

/* The device's time: the round's on a stepped context, else the monotonic clock. */
static inline uint64_t io_dev_now_ns(const struct io_dev *dev)
{
    return dev->manual_clock ? dev->now_ns : mtcp_now_ns();
}

/* Closes fd if it is open (>= 0; -1 stands for none). */
static inline void io_close_fd(int fd)
{
    if (fd >= 0)
        close(fd);
}

/* errno as a negative return value; never 0 even if errno was not set. */
static inline int io_neg_errno(void)
{
    return errno > 0 ? -errno : -EIO;
}

/* Flush the pcap buffer if it has been waiting for about a second; cheap to
 * call every round (io_rx_burst does), so an idle capture still reaches disk. */
void io_pcap_poll(struct io_pcap *p);

#endif
