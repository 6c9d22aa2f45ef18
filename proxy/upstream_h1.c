/*
 * upstream_h1.c - HTTP/1.1 to an upstream endpoint: connect, send the request
 * head and body, parse and relay the response, then park in the pool.
 */
#include "upconnect.h"
#include "upstream_h1.h"
#include "upstream_h2.h"

#include <arpa/inet.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <string.h>

#include <stdlib.h>

#include "common.h"
#include "outbuf.h"
#include "health.h"
#include "pool.h"
#include "stream.h"
#include "worker.h"

/* Response heads larger than this are refused (502). */
#define UP_MAX_HEAD (64 * 1024)
/* Read high-water mark: at most this much response is buffered per connection. */
#define UP_READ_HIGH (64 * 1024)

static void on_read(struct bufferevent *bev, void *arg);
static void on_write(struct bufferevent *bev, void *arg);
static void on_event(struct bufferevent *bev, short what, void *arg);
static size_t up_pending(struct upstream *u);
static void up_send_body(struct upstream *u, struct evbuffer *buf, bool eof);
static void up_resume(struct upstream *u);
static void up_release(struct upstream *u, bool reusable);

static const struct upstream_ops upconn_ops = {
    .send_body = up_send_body,
    .pending = up_pending,
    .resume = up_resume,
    .release = up_release,
};

static void set_timeout(struct bufferevent *bev, uint64_t read_ms, uint64_t write_ms)
{
    struct timeval r = {(time_t)(read_ms / 1000), (suseconds_t)((read_ms % 1000) * 1000)};
    struct timeval w = {(time_t)(write_ms / 1000), (suseconds_t)((write_ms % 1000) * 1000)};
    bufferevent_set_timeouts(bev, read_ms ? &r : NULL, write_ms ? &w : NULL);
}

void upconn_free(struct upconn *c)
{
    if (c->state == UP_IDLE && c->ep)
        pool_remove_idle(c->ep, c);
    else if (c->ep && c->ep->n_active > 0)
        c->ep->n_active--;
    if (c->connecting)
        upconnect_cancel(c->connecting);
    if (c->bev)
        bufferevent_free(c->bev);
    if (c->tmp)
        evbuffer_free(c->tmp);
    free(c);
}

static void reset_exchange(struct upconn *c)
{
    c->head_done = false;
    c->resp_done = false;
    c->paused = false;
    c->keep_alive = false;
    c->body_kind = H1_BODY_NONE;
    c->remaining = 0;
    h1_chunked_init(&c->chunked);
}

/* Serialise the request head (RFC 9112 §3) with the proxy's fields. */
static void write_head(struct upconn *c, struct stream *s)
{
    struct outbuf ob;
    struct outbuf *o = &ob;
    const struct cluster_conf *cl = s->cluster;
    const char *xff = NULL, *via = NULL;
    size_t xff_len = 0, via_len = 0;

    ob_init(o, bufferevent_get_output(c->bev));
    ob_put(o, s->method, s->method_len);
    OB_LIT(o, " ");
    ob_put(o, s->target, s->target_len);
    OB_LIT(o, " HTTP/1.1\r\nhost: ");
    if (cl->host)
        ob_str(o, cl->host);
    else
        ob_put(o, s->host, s->host_len);
    OB_LIT(o, "\r\n");
    for (size_t i = 0; i < s->n_fields; i++) {
        const struct h1_header *f = &s->fields[i];
        int which = stream_proxy_field(f);
        if (which) {
            if (which == 15 && xff == NULL) {
                xff = f->value;
                xff_len = f->value_len;
            } else if (which == 3 && via == NULL) {
                via = f->value;
                via_len = f->value_len;
            }
            continue;
        }
        ob_put(o, f->name, f->name_len);
        OB_LIT(o, ": ");
        ob_put(o, f->value, f->value_len);
        OB_LIT(o, "\r\n");
    }
    /* X-Forwarded-For: append the address we saw to what the client sent
     * (the usual proxy_add_x_forwarded_for semantics). */
    OB_LIT(o, "x-forwarded-for: ");
    if (xff_len) {
        ob_put(o, xff, xff_len);
        OB_LIT(o, ", ");
    }
    ob_str(o, s->client_ip);
    ob_str(o, s->tls ? "\r\nx-forwarded-proto: https\r\nx-forwarded-host: " : "\r\nx-forwarded-proto: http\r\nx-forwarded-host: ");
    ob_put(o, s->host, s->host_len);
    OB_LIT(o, "\r\nvia: ");
    if (via_len) {
        ob_put(o, via, via_len);
        OB_LIT(o, ", ");
    }
    /* RFC 9110 §7.6.3: received-protocol, then our pseudonym. */
    ob_str(o, stream_via(s));
    OB_LIT(o, "\r\nx-request-id: ");
    ob_str(o, s->request_id);
    if (s->websocket) {
        OB_LIT(o, "\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n");
    } else if (s->has_body) {
        if (s->content_length >= 0) {
            OB_LIT(o, "\r\ncontent-length: ");
            ob_u64(o, (uint64_t)s->content_length);
            OB_LIT(o, "\r\n\r\n");
        } else {
            OB_LIT(o, "\r\ntransfer-encoding: chunked\r\n\r\n");
        }
    } else if ((s->method_len == 4 && memcmp(s->method, "POST", 4) == 0) ||
               (s->method_len == 3 && memcmp(s->method, "PUT", 3) == 0)) {
        /* RFC 9110 §8.6: a POST or PUT without a body should say so. */
        OB_LIT(o, "\r\ncontent-length: 0\r\n\r\n");
    } else {
        OB_LIT(o, "\r\n\r\n");
    }
    ob_flush(o);
}

static void attach(struct upconn *c, struct stream *s)
{
    c->stream = s;
    s->up = &c->base;
    c->state = UP_ACTIVE;
    reset_exchange(c);
    co_strlcpy(s->endpoint, c->addr, sizeof(s->endpoint));
}

/* Connection ready (fresh or reused): send head, let the stream pump the body. */
static void begin(struct upconn *c)
{
    struct stream *s = c->stream;
    const struct cluster_conf *cl = s->cluster;
    set_timeout(c->bev, cl->first_byte_timeout_ms, s->cfg->timeouts.send_ms);
    bufferevent_setcb(c->bev, on_read, on_write, on_event, c);
    bufferevent_enable(c->bev, EV_READ | EV_WRITE);
    write_head(c, s);
    c->exchanges++;
    stream_up_connected(s);
}

void upstream_start(struct stream *s, bool fresh)
{
    const struct endpoint_conf *e;
    struct ep_pool *ep = pool_pick(s->worker->pool, s->cluster, s->failed_ep, &e);
    if (ep == NULL) {
        char why[200];
        snprintf(why, sizeof(why), "no endpoint of cluster %s has an address (DNS has not answered)", s->cluster->name);
        s->ep_state = NULL;
        co_strlcpy(s->endpoint, "-", sizeof(s->endpoint));
        stream_up_failed(s, 503, why, UPF_FATAL); /* failover was considered before */
        return;
    }
    s->ep_state = ep->st;
    /* HTTP/2 when configured, or when ALPN already told us this endpoint
     * speaks it (protocol: auto over TLS). */
#ifdef CUTOVER_H2_UPSTREAM
    if (s->cluster->protocol == CLUSTER_PROTO_H2 ||
        (s->cluster->protocol == CLUSTER_PROTO_AUTO && s->cluster->tls.enabled && ep->h2)) {
        upstream_h2_start(s, ep, e, fresh);
        return;
    }
#endif
    upconn_start(s, ep, e, fresh);
}

/* The connection is up (TLS handshaken): HTTP/1.1 on it, or hand it to
 * HTTP/2 when ALPN chose h2. */
static void fail(struct upconn *c, int status, const char *why, enum up_fail kind);

static void on_connected(void *arg, struct bufferevent *bev, const char *alpn, const char *addr, int status, const char *why)
{
    struct upconn *c = arg;
    struct stream *s = c->stream;
    c->connecting = NULL;
    co_strlcpy(c->addr, addr, sizeof(c->addr));
    if (s)
        co_strlcpy(s->endpoint, addr, sizeof(s->endpoint));
    if (bev == NULL) {
        stream_up_count(c->worker, c->stream, UPC_CONNECT_ERROR);
        health_report(c->ep->st, &c->ep->eject, HEV_CONNECT_FAILED);
        fail(c, status, why, UPF_UNSENT);
        return;
    }
    health_report(c->ep->st, &c->ep->eject, HEV_CONNECTED);
    c->born_ms = health_now_ms();
#ifdef CUTOVER_H2_UPSTREAM
    if (strcmp(alpn, "h2") == 0 && s) {
        struct ep_pool *ep = c->ep;
        ep->h2 = true;
        c->stream = NULL;
        s->up = NULL;
        upconn_free(c);
        upstream_h2_adopt(s, ep, bev, addr);
        return;
    }
#endif
    c->bev = bev;
    c->state = UP_ACTIVE;
    bufferevent_setwatermark(bev, EV_READ, 0, UP_READ_HIGH);
    bufferevent_setwatermark(bev, EV_WRITE, STREAM_HIGH_WATER / 2, 0);
    if (s)
        begin(c);
}

void upconn_start(struct stream *s, struct ep_pool *ep, const struct endpoint_conf *e, bool fresh)
{
    struct worker *w = s->worker;
    struct upconn *c = fresh ? NULL : pool_take_idle(ep);
    if (c) {
        c->reused = true;
        attach(c, s);
        ep->n_active++;
        begin(c);
        return;
    }
    c = co_calloc(1, sizeof(*c));
    c->base.ops = &upconn_ops;
    c->worker = w;
    c->ep = ep;
    c->tmp = evbuffer_new();
    ep->n_active++;
    attach(c, s);
    c->state = UP_CONNECTING;
    const char *alpn = s->cluster->protocol == CLUSTER_PROTO_AUTO ? "h2,http/1.1" : "http/1.1";
    const struct sockaddr *sa;
    socklen_t sa_len;
    if (!pool_next_addr(ep, &sa, &sa_len)) {
        /* pool_pick only returns endpoints with addresses; a DNS update
         * may race it. */
        c->connecting = NULL;
        fail(c, 503, "endpoint has no address", UPF_UNSENT);
        return;
    }
    c->connecting = upconnect_start(w->base, sa, sa_len, e, s->cluster, alpn, on_connected, c);
}

static size_t up_pending(struct upstream *u)
{
    struct upconn *c = (struct upconn *)u;
    return evbuffer_get_length(bufferevent_get_output(c->bev));
}

static void up_send_body(struct upstream *u, struct evbuffer *buf, bool eof)
{
    struct upconn *c = (struct upconn *)u;
    struct stream *s = c->stream;
    struct evbuffer *out = bufferevent_get_output(c->bev);
    size_t len = buf ? evbuffer_get_length(buf) : 0;
    if (s->content_length >= 0 || s->tunnel) {
        if (len)
            evbuffer_add_buffer(out, buf);
        return;
    }
    if (len) {
        struct outbuf ob;
        ob_init(&ob, out);
        ob_hex(&ob, len);
        OB_LIT(&ob, "\r\n");
        ob_flush(&ob);
        evbuffer_add_buffer(out, buf);
        ADD_LIT(out, "\r\n");
    }
    if (eof)
        ADD_LIT(out, "0\r\n\r\n");
}

/* Detach from the stream and report a failure to it. */
static void fail(struct upconn *c, int status, const char *why, enum up_fail kind)
{
    struct stream *s = c->stream;
    c->stream = NULL;
    upconn_free(c);
    if (s) {
        s->up = NULL;
        stream_up_failed(s, status, why, kind);
    }
}

static void end_response(struct upconn *c)
{
    struct stream *s = c->stream;
    c->resp_done = true;
    /* Bytes beyond the framed body mean the upstream and we disagree on
     * framing: never reuse that connection (RFC 9112 §6.3). */
    if (evbuffer_get_length(bufferevent_get_input(c->bev)) > 0)
        c->keep_alive = false;
    stream_up_end(s); /* calls up_release() */
}

/* Relay buffered body bytes to the stream until input runs out, the body
 * ends, or the downstream is full. */
static void pump(struct upconn *c)
{
    struct evbuffer *in = bufferevent_get_input(c->bev);
    while (!c->resp_done && c->stream) {
        size_t avail = evbuffer_get_length(in);
        if (avail == 0)
            return;
        bool more = true;
        switch (c->body_kind) {
        case H1_BODY_LENGTH: {
            size_t n = avail < c->remaining ? avail : (size_t)c->remaining;
            evbuffer_remove_buffer(in, c->tmp, n);
            c->remaining -= n;
            more = stream_up_data(c->stream, c->tmp);
            if (c->remaining == 0) {
                end_response(c);
                return;
            }
            break;
        }
        case H1_BODY_CLOSE:
            evbuffer_remove_buffer(in, c->tmp, avail);
            more = stream_up_data(c->stream, c->tmp);
            break;
        case H1_BODY_CHUNKED: {
            struct evbuffer_iovec v;
            if (evbuffer_peek(in, -1, NULL, &v, 1) < 1)
                return;
            size_t off = 0, dlen = 0;
            long used = h1_chunked_feed(&c->chunked, v.iov_base, v.iov_len, &off, &dlen);
            if (used < 0) {
                char why[160];
                snprintf(why, sizeof(why), "malformed chunked response body from %s: %s", c->addr,
                         c->chunked.error ? c->chunked.error : "?");
                stream_up_count(c->worker, c->stream, UPC_BAD_RESPONSE);
                fail(c, 502, why, UPF_FATAL);
                return;
            }
            if (dlen) {
                evbuffer_drain(in, off);
                evbuffer_remove_buffer(in, c->tmp, dlen);
                evbuffer_drain(in, (size_t)used - off - dlen);
                more = stream_up_data(c->stream, c->tmp);
            } else {
                evbuffer_drain(in, (size_t)used);
            }
            if (c->chunked.done) {
                end_response(c);
                return;
            }
            break;
        }
        case H1_BODY_NONE:
            end_response(c);
            return;
        }
        if (!more) {
            c->paused = true;
            return;
        }
    }
}

static void up_resume(struct upstream *u)
{
    struct upconn *c = (struct upconn *)u;
    if (!c->paused)
        return;
    c->paused = false;
    pump(c);
}

static bool copy_response_field(const struct h1_response *r, const struct h1_header *f)
{
    if (h1_is_hop_by_hop(f->name, f->name_len))
        return false;
    if (co_strieq(f->name, f->name_len, "content-length"))
        return false;
    return !h1_connection_lists(&r->msg, f->name, f->name_len);
}

/* Returns CO_OK when the head is in, CO_AGAIN when more bytes are needed,
 * CO_ERROR when the connection failed and was freed. */
static int parse_head(struct upconn *c)
{
    struct evbuffer *in = bufferevent_get_input(c->bev);
    struct stream *s = c->stream;
    struct h1_limits lim = {UP_MAX_HEAD, UP_MAX_HEAD, H1_MAX_HEADERS};
    for (;;) {
        size_t avail = evbuffer_get_length(in);
        if (avail == 0)
            return CO_AGAIN;
        size_t n = avail < UP_MAX_HEAD ? avail : UP_MAX_HEAD;
        const char *p = (const char *)evbuffer_pullup(in, (ev_ssize_t)n);
        struct h1_response resp;
        int r = h1_parse_response(p, n, &lim, &resp);
        if (r == H1_INCOMPLETE) {
            if (avail >= UP_MAX_HEAD) {
                stream_up_count(c->worker, c->stream, UPC_BAD_RESPONSE);
                fail(c, 502, "response head from upstream too large", UPF_FATAL);
                return CO_ERROR;
            }
            return CO_AGAIN;
        }
        if (r < 0) {
            char why[200];
            snprintf(why, sizeof(why), "malformed response from %s: %s", c->addr, resp.msg.error ? resp.msg.error : "bad head");
            stream_up_count(c->worker, c->stream, UPC_BAD_RESPONSE);
            fail(c, 502, why, UPF_FATAL);
            return CO_ERROR;
        }
        if (resp.status < 200) {
            /* 100 Continue was already sent by us; other interim responses
             * (102, 103) are dropped. 101 only answers a WebSocket upgrade. */
            if (resp.status == 101 && s->websocket) {
                struct h1_header *f = resp.msg.headers;
                size_t k = 0;
                for (size_t i = 0; i < resp.msg.n_headers; i++)
                    if (copy_response_field(&resp, &f[i]))
                        f[k++] = f[i];
                c->head_done = true;
                c->keep_alive = false;
                c->body_kind = H1_BODY_CLOSE; /* the tunnel ends with the connection */
                s->tunnel = true;
                stream_up_head(s, 101, f, k, -1);
                evbuffer_drain(in, (size_t)r);
                /* A tunnel may be quiet for long: the idle timeout, not first-byte, applies. */
                set_timeout(c->bev, s->cfg->timeouts.idle_ms, s->cfg->timeouts.send_ms);
                /* Client-to-upstream bytes now flow as the "body". */
                s->has_body = true;
                s->body_done = false;
                stream_up_writable(s);
                return CO_OK;
            }
            if (resp.status == 101) {
                stream_up_count(c->worker, c->stream, UPC_BAD_RESPONSE);
                fail(c, 502, "upstream switched protocols without being asked", UPF_FATAL);
                return CO_ERROR;
            }
            evbuffer_drain(in, (size_t)r);
            continue;
        }
        c->head_done = true;
        c->keep_alive = resp.msg.keep_alive;
        c->body_kind = h1_response_body_kind(&resp, s->is_head);
        if (c->body_kind == H1_BODY_CLOSE)
            c->keep_alive = false;
        c->remaining = c->body_kind == H1_BODY_LENGTH ? (uint64_t)resp.msg.content_length : 0;
        if (c->body_kind == H1_BODY_LENGTH && c->remaining == 0)
            c->body_kind = H1_BODY_NONE;
        /* We send one request at a time, so nothing may follow the response
         * on this connection. Bytes already here beyond its framing (a 204 or
         * 304 with a body, a body longer than its Content-Length) mean the
         * upstream frames differently than we read: refuse it whole (502)
         * before anything reaches the client (RFC 9112 §6.3). */
        size_t after = avail - (size_t)r;
        if ((c->body_kind == H1_BODY_NONE && after > 0 && !s->is_head) ||
            (c->body_kind == H1_BODY_LENGTH && after > c->remaining)) {
            char why[200];
            snprintf(why, sizeof(why), "response from %s has %zu bytes beyond its framing (status %d)", c->addr,
                     c->body_kind == H1_BODY_NONE ? after : after - (size_t)c->remaining, resp.status);
            stream_up_count(c->worker, s, UPC_BAD_RESPONSE);
            fail(c, 502, why, UPF_FATAL);
            return CO_ERROR;
        }
        /* Filter in place: fields are end-to-end only. */
        struct h1_header *f = resp.msg.headers;
        size_t k = 0;
        for (size_t i = 0; i < resp.msg.n_headers; i++)
            if (copy_response_field(&resp, &f[i]))
                f[k++] = f[i];
        int64_t cl = -1;
        if (resp.msg.content_length >= 0 && !resp.msg.chunked)
            cl = resp.msg.content_length;
        if (resp.status == 204 || resp.status == 304)
            cl = -1;
        stream_up_head(s, resp.status, f, k, cl);
        evbuffer_drain(in, (size_t)r);
        /* Past the head: an idle read timeout guards a stalled body. */
        set_timeout(c->bev, c->stream ? s->cluster->first_byte_timeout_ms : 0, s->cfg->timeouts.send_ms);
        return CO_OK;
    }
}

static void on_read(struct bufferevent *bev, void *arg)
{
    struct upconn *c = arg;
    if (c->state == UP_IDLE || c->stream == NULL) {
        /* An idle upstream must not speak: it is broken or closing. */
        upconn_free(c);
        return;
    }
    if (!c->head_done && parse_head(c) != CO_OK)
        return; /* incomplete, or c was freed */
    if (!c->paused)
        pump(c);
}

static void on_write(struct bufferevent *bev, void *arg)
{
    struct upconn *c = arg;
    if (c->stream && c->state == UP_ACTIVE)
        stream_up_writable(c->stream);
}

static void on_event(struct bufferevent *bev, short what, void *arg)
{
    struct upconn *c = arg;
    struct stream *s = c->stream;
    char why[200];

    if (what & BEV_EVENT_CONNECTED) {
        int one = 1;
        setsockopt(bufferevent_getfd(bev), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        c->state = UP_ACTIVE;
        if (s)
            begin(c);
        return;
    }
    if (c->state == UP_IDLE || s == NULL) {
        upconn_free(c);
        return;
    }
    if (c->state == UP_CONNECTING) {
        int err = EVUTIL_SOCKET_ERROR();
        stream_up_count(c->worker, c->stream, UPC_CONNECT_ERROR);
        if (what & BEV_EVENT_TIMEOUT)
            snprintf(why, sizeof(why), "connect(%s) timed out after %llu ms", c->addr,
                     (unsigned long long)s->cluster->connect_timeout_ms);
        else
            snprintf(why, sizeof(why), "connect(%s) failed: %s", c->addr, evutil_socket_error_to_string(err));
        health_report(c->ep->st, &c->ep->eject, HEV_CONNECT_FAILED);
        fail(c, 503, why, UPF_UNSENT);
        return;
    }
    if (what & BEV_EVENT_TIMEOUT) {
        stream_up_count(c->worker, c->stream, UPC_TIMEOUT);
        snprintf(why, sizeof(why), "%s from %s timed out", c->head_done ? "response body" : "response head", c->addr);
        fail(c, 504, why, UPF_FATAL);
        return;
    }
    if ((what & BEV_EVENT_EOF) && c->head_done && c->body_kind == H1_BODY_CLOSE) {
        /* Close-delimited body: EOF is its end. Relay what is left first. */
        struct evbuffer *in = bufferevent_get_input(bev);
        if (evbuffer_get_length(in) > 0) {
            evbuffer_remove_buffer(in, c->tmp, evbuffer_get_length(in));
            stream_up_data(s, c->tmp);
        }
        c->keep_alive = false;
        end_response(c);
        return;
    }
    /* EOF or error before the response was complete. Before the response
     * head nothing reached the client: the stream may replay an idempotent
     * request (this covers the pool race too: a reused keep-alive
     * connection the upstream closed as we sent). */
    enum up_fail retry = c->head_done ? UPF_FATAL : UPF_MAYBE_SENT;
    snprintf(why, sizeof(why), "upstream %s %s %s", c->addr, (what & BEV_EVENT_EOF) ? "closed the connection" : "connection error",
             c->head_done ? "in the response body" : "before a complete response head");
    if (!c->head_done)
        stream_up_count(c->worker, c->stream, UPC_BAD_RESPONSE);
    fail(c, 502, why, retry);
}

static void up_release(struct upstream *u, bool reusable)
{
    struct upconn *c = (struct upconn *)u;
    c->stream = NULL;
    if (!reusable || !c->keep_alive || !c->resp_done || c->ep == NULL || c->state != UP_ACTIVE) {
        upconn_free(c);
        return;
    }
    c->ep->n_active--;
    c->state = UP_IDLE;
    if (pool_put_idle(c->ep, c) != CO_OK) {
        c->state = UP_ACTIVE;
        c->ep->n_active++;
        upconn_free(c);
        return;
    }
    reset_exchange(c);
    set_timeout(c->bev, c->ep->idle_timeout_ms, 0);
    bufferevent_enable(c->bev, EV_READ);
}
