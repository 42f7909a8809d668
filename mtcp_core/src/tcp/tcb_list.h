/* One intrusive list type for TCB lists: the TX lists (control, ACK, data), the FIFO
 * timers (TIME_WAIT, delayed ACK, idle), the round's events (api/ctx.c). A TCB has one
 * struct tcb_link per list it can be on; a list is a struct tcb_list (first, last,
 * length). Append, push at the front, removal and pop are O(1); the link's offset in
 * struct tcb is a compile-time constant at every call, so these inline to the pointer
 * moves the hand-written lists made. Whether a TCB is on a list is the caller's flag
 * (t->lists, t->on_tw, t->ev_pending, ...). The timing wheel's slots stay a bare head
 * pointer each (tcp.c): 4096 of them, a list head with a tail and a count would triple
 * the wheel for nothing it uses. */
#ifndef MTCP_TCP_TCB_LIST_H
#define MTCP_TCP_TCB_LIST_H

#include <stddef.h>
#include <stdint.h>

struct tcb;

struct tcb_link {
    struct tcb *next, *prev;
};

struct tcb_list {
    struct tcb *first, *last;
    uint32_t n;
};

#define TCB_LINK(t, off) ((struct tcb_link *)(void *)((char *)(t) + (off)))

/* Links t between prev and next, neighbours on l (NULL: t becomes that end). */
static inline void tcb_list_link(struct tcb_list *l, struct tcb *t, size_t off,
                                 struct tcb *prev, struct tcb *next)
{
    struct tcb_link *k = TCB_LINK(t, off);
    k->prev = prev;
    k->next = next;
    if (prev)
        TCB_LINK(prev, off)->next = t;
    else
        l->first = t;
    if (next)
        TCB_LINK(next, off)->prev = t;
    else
        l->last = t;
    l->n++;
}

static inline void tcb_list_append(struct tcb_list *l, struct tcb *t, size_t off)
{
    tcb_list_link(l, t, off, l->last, NULL);
}

static inline void tcb_list_push_front(struct tcb_list *l, struct tcb *t, size_t off)
{
    tcb_list_link(l, t, off, NULL, l->first);
}

/* t must be on l. */
static inline void tcb_list_remove(struct tcb_list *l, struct tcb *t, size_t off)
{
    struct tcb_link *k = TCB_LINK(t, off);
    if (k->prev)
        TCB_LINK(k->prev, off)->next = k->next;
    else
        l->first = k->next;
    if (k->next)
        TCB_LINK(k->next, off)->prev = k->prev;
    else
        l->last = k->prev;
    k->next = k->prev = NULL;
    l->n--;
}

static inline struct tcb *tcb_list_pop_front(struct tcb_list *l, size_t off)
{
    struct tcb *t = l->first;
    if (t)
        tcb_list_remove(l, t, off);
    return t;
}

static inline struct tcb *tcb_list_next(struct tcb *t, size_t off)
{
    return TCB_LINK(t, off)->next;
}

#endif
