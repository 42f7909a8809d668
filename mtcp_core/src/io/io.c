/* Device groups, backend selection and the pcap-copying wrappers. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* Linux socket/tun APIs; the build passes it too */
#endif
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "io_internal.h"

/* The group's config lives in one heap block with its strings, so devices can
 * point at it and callers may free their own strings after io_group_open(). */
struct cfg_block {
    struct io_config cfg;
    char strings[];
};

static const struct io_ops *find_ops(const char *name)
{
    if (!name)
        return NULL;
    if (strcmp(name, "afpacket") == 0)
        return &io_afpacket_ops;
    if (strcmp(name, "tap") == 0)
        return &io_tap_ops;
    if (strcmp(name, "pair") == 0)
        return &io_pair_ops;
    return NULL;
}

static size_t slen(const char *s)
{
    return s ? strlen(s) + 1 : 0;
}

static const char *copy_str(char **dst, const char *s)
{
    if (!s)
        return NULL;
    size_t n = strlen(s) + 1;
    memcpy(*dst, s, n);
    const char *r = *dst;
    *dst += n;
    return r;
}

static struct cfg_block *cfg_copy(const struct io_config *cfg)
{
    size_t n = slen(cfg->backend) + slen(cfg->iface) + slen(cfg->tap_host_cidr) +
               slen(cfg->pcap_path);
    struct cfg_block *b = malloc(sizeof *b + n);
    if (!b)
        return NULL;
    b->cfg = *cfg;
    char *s = b->strings;
    b->cfg.backend = copy_str(&s, cfg->backend);
    b->cfg.iface = copy_str(&s, cfg->iface);
    b->cfg.tap_host_cidr = copy_str(&s, cfg->tap_host_cidr);
    b->cfg.pcap_path = copy_str(&s, cfg->pcap_path);
    return b;
}

static void close_devs(struct io_group *g)
{
    for (unsigned i = 0; i < g->n; i++) {
        struct io_dev *d = &g->devs[i];
        if (d->ops && d->priv)
            d->ops->close(d);
        d->priv = NULL;
        if (d->pcap) {
            io_pcap_close(d->pcap);
            d->pcap = NULL;
        }
    }
}

int io_group_open(struct io_group *g, const struct io_config *cfg, const char **err_msg)
{
    const char *dummy;
    if (!err_msg)
        err_msg = &dummy;
    *err_msg = NULL;
    memset(g, 0, sizeof *g);
    if (!cfg) {
        *err_msg = "io: no config";
        return -EINVAL;
    }
    const struct io_ops *ops = find_ops(cfg->backend);
    if (!ops) {
        *err_msg = "io: unknown backend (expected \"afpacket\", \"tap\" or \"pair\")";
        return -EINVAL;
    }
    unsigned n = cfg->nqueues ? cfg->nqueues : 1;
    if (n > 256) { /* PACKET_FANOUT_MAX and MAX_TAP_QUEUES are both 256 */
        *err_msg = "io: at most 256 queues";
        return -EINVAL;
    }
    struct cfg_block *b = cfg_copy(cfg);
    struct io_dev *devs = calloc(n, sizeof *devs);
    if (!b || !devs) {
        free(b);
        free(devs);
        *err_msg = "io: out of memory";
        return -ENOMEM;
    }
    b->cfg.nqueues = n;
    g->cfg = b->cfg;
    g->n = n;
    g->devs = devs;
    for (unsigned i = 0; i < n; i++) {
        devs[i].ops = ops;
        devs[i].queue = i;
        devs[i].cfg = &b->cfg;
    }
    int rc = ops->open_all(g, err_msg);
    if (rc < 0) {
        if (!*err_msg)
            *err_msg = "io: opening the devices failed";
        close_devs(g);
        free(devs);
        free(b);
        memset(g, 0, sizeof *g);
        return rc;
    }
    return 0;
}

void io_group_close(struct io_group *g)
{
    if (!g || !g->devs)
        return;
    /* cfg points into the block allocated by io_group_open (first member). */
    struct cfg_block *b = (struct cfg_block *)(void *)(uintptr_t)g->devs[0].cfg;
    close_devs(g);
    free(g->devs);
    free(b);
    memset(g, 0, sizeof *g);
}

void io_dev_stop(struct io_dev *dev)
{
    /* the capture is this process's (a forked worker's): flush and close it here */
    if (dev && dev->pcap) {
        io_pcap_close(dev->pcap);
        dev->pcap = NULL;
    }
}

int io_dev_start(struct io_dev *dev)
{
    if (!dev || !dev->ops)
        return -EINVAL;
    int rc = dev->ops->start(dev);
    if (rc < 0)
        return rc;
    const struct io_config *cfg = dev->cfg;
    /* A capture records the frames the stack moves one record each, MSS-sized as the peer
     * sees them on the wire: no segmentation offload while capturing. */
    if (cfg && cfg->pcap_path)
        dev->tso_max = 0;
    if (cfg && cfg->pcap_path && !dev->pcap) {
        const char *path = cfg->pcap_path;
        char *tmp = NULL;
        /* Several cores writing one file would interleave two headers and
         * records: without "%u" each core still gets its own file. */
        if (cfg->nqueues > 1 && !strstr(path, "%u")) {
            size_t l = strlen(path);
            static const char suffix[] = ".%u";
            tmp = malloc(l + sizeof suffix);
            if (!tmp)
                return -ENOMEM;
            memcpy(tmp, path, l);
            memcpy(tmp + l, suffix, sizeof suffix);
            path = tmp;
        }
        dev->pcap = io_pcap_open(path, dev->queue);
        int e = errno;
        free(tmp);
        if (!dev->pcap)
            return e > 0 ? -e : -EIO;
    }
    return 0;
}

int io_rx_burst(struct io_dev *dev, struct io_frame *frames, int max)
{
    int n = dev->ops->rx_burst(dev, frames, max);
    if (dev->pcap) {
        for (int i = 0; i < n; i++)
            io_pcap_write(dev->pcap, frames[i].data, frames[i].len,
                          dev->manual_clock ? dev->now_ns : 0);
        io_pcap_poll(dev->pcap);
    }
    return n;
}

void io_rx_done(struct io_dev *dev)
{
    dev->ops->rx_done(dev);
}

int io_tx_burst(struct io_dev *dev, const struct io_frame *frames, int n)
{
    int sent = dev->ops->tx_burst(dev, frames, n);
    if (dev->pcap)
        for (int i = 0; i < sent; i++)
            io_pcap_write(dev->pcap, frames[i].data, frames[i].len,
                          dev->manual_clock ? dev->now_ns : 0);
    return sent;
}
