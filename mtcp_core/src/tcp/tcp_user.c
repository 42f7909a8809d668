/* RFC 9293 3.10's user calls on the TCP side: OPEN (active), CLOSE, ABORT, the window
 * update after RECEIVE and SHUTDOWN of the write side. api/job.c turns the app's jobs into
 * these; the responder (api/responder.c) closes the connections it holds with them. */
#include <string.h>

#include "tcp.h"

/* An ephemeral port whose 4-tuple is free and whose return traffic the device
 * steers to this core (mTCP's mtcp_init_rss idea). 0 when none is left. */
uint16_t tcp_pick_port(struct tcp_layer *ctx, uint32_t raddr, uint16_t rport)
{
    const uint32_t span = MTCP_EPHEMERAL_HI - MTCP_EPHEMERAL_LO + 1;
    if (ctx->next_port < MTCP_EPHEMERAL_LO || ctx->next_port > MTCP_EPHEMERAL_HI)
        ctx->next_port = (uint16_t)(MTCP_EPHEMERAL_LO + (ctx->conf.isn_key[0] % span));
    for (uint32_t i = 0; i < span; i++) {
        uint16_t p = ctx->next_port;
        ctx->next_port = p == MTCP_EPHEMERAL_HI ? MTCP_EPHEMERAL_LO : (uint16_t)(p + 1);
        if (ctx->net.ncores > 1 && io_flow_core(ctx->net.ip, raddr, p, rport, ctx->net.ncores) != ctx->net.core)
            continue;
        if (listener_lookup(ctx, ctx->net.ip, p) || flow_lookup(ctx, ctx->net.ip, p, raddr, rport))
            continue;
        return p;
    }
    return 0;
}

struct tcb *tcp_open_active(struct tcp_layer *ctx, uint16_t lport, uint32_t raddr,
                            uint16_t rport)
{
    struct tcb *t = tcb_alloc(ctx, ctx->net.ip, lport, raddr, rport);
    if (!t)
        return NULL;
    t->iss = tcp_isn(ctx, ctx->net.ip, lport, raddr, rport);
    t->snd_una = t->snd_nxt = t->snd_max = t->iss;
    t->snd_head_seq = t->iss + 1;
    t->ts_offset = tcp_ts_offset(ctx, t->laddr, t->raddr);
    t->mss = MTCP_PEER_DEFAULT_MSS;
    t->recover = t->iss;
    return t;
}

void tcp_connect(struct tcp_layer *ctx, struct tcb *t)
{
    tcp_set_state(ctx, t, TCP_SYN_SENT);
    tcp_schedule(ctx, t, TCB_P_SYN);
}

void tcp_close_tcb(struct tcp_layer *ctx, struct tcb *t, int abort)
{
    if (!t || !t->in_use)
        return;
    t->app_closed = 1;
    t->acc_queued = 0;
    if (t->state == TCP_CLOSED) {
        tcb_free(ctx, t);
        return;
    }
    if (t->state == TCP_SYN_SENT) {
        tcp_conn_done(ctx, t, 0);
        return;
    }
    if (t->state == TCP_TIME_WAIT) {
        if (abort)
            tcp_conn_done(ctx, t, 0);
        else
            tcp_mem_uncharge(ctx, t); /* nothing more to send or read: freed when it ends */
        return;
    }
    /* RFC 9293 3.10.4 / RFC 2525 2.17: closing with unread data, or SO_LINGER 0,
     * aborts with RST */
    if (abort || t->linger0 || mtcp_bytering_used(&t->rcv)) {
        tcp_send_rst_now(ctx, t);
        tcp_conn_done(ctx, t, 0);
        return;
    }
    /* it lingers without its app: bounded in number (max_orphans) and in retries */
    if (tcp_orphan_add(ctx, t) < 0)
        return;
    if (t->state == TCP_ESTABLISHED || t->state == TCP_CLOSE_WAIT ||
        t->state == TCP_SYN_RECEIVED)
        tcp_schedule(ctx, t, TCB_P_FIN | TCB_P_DATA);
    /* FIN-WAIT-*, CLOSING, LAST-ACK: already closing; freed when done */
}

void tcp_window_update(struct tcp_layer *ctx, struct tcb *t)
{
    if (!t->in_use || t->state == TCP_CLOSED || t->state == TCP_TIME_WAIT)
        return;
    /* a window update is worth a segment when it opens by 2 MSS or half the
     * buffer (RFC 9293 3.8.6.2.2, receiver-side SWS avoidance) */
    uint32_t opened = t->rcv_nxt + tcp_rcv_room(t) - t->rcv_adv;
    if ((int32_t)opened >= (int32_t)(2u * t->mss) ||
        (int32_t)opened >= (int32_t)(t->rcv_space / 2))
        tcp_schedule(ctx, t, TCB_P_ACK);
    else
        atomic_store_explicit(&t->wnd_job_wanted, 1, memory_order_release);
}

void tcp_shutdown_wr(struct tcp_layer *ctx, struct tcb *t)
{
    if (t->in_use && (t->state == TCP_ESTABLISHED || t->state == TCP_CLOSE_WAIT ||
                      t->state == TCP_SYN_RECEIVED || t->state == TCP_SYN_SENT))
        tcp_schedule(ctx, t, TCB_P_FIN | TCB_P_DATA);
}

void tcp_set_cc(struct tcb *t, uint32_t algo)
{
    if (algo < TCP_CC_COUNT && algo != t->cc_algo) {
        t->cc_algo = (uint8_t)algo;
        t->cub_w_max = 0; /* CUBIC starts its curve from the current window */
        t->cub_epoch_ok = 0;
    }
}

void tcp_timers_changed(struct tcp_layer *ctx, struct tcb *t)
{
    if (t->state == TCP_ESTABLISHED || t->state == TCP_CLOSE_WAIT) {
        if (t->rto_armed && t->timer_kind == TCP_TIMER_KEEPALIVE)
            tcp_rto_disarm(ctx, t); /* re-armed with the new settings */
        tcp_idle_timer(ctx, t);
    }
}
