/*
 * conn_h1.c - a downstream HTTP/1.1 connection: strict parsing of request
 * heads, one exchange at a time (pipelined requests wait in the input buffer,
 * which is bounded by the read high-water mark), response framing, timeouts
 * and lingering close after errors.
 */
#include "conn_h1.h"

#include <arpa/inet.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

#include <stdlib.h>

#include "common.h"
#include "outbuf.h"
#include "conn_h2.h"
#include "stream.h"
#include "worker.h"

enum h1_state {
    ST_HEAD,    /* waiting for (the rest of) a request head */
    ST_STREAM,  /* an exchange is in progress */
    ST_CLOSING, /* flushing the last response, then close */
    ST_LINGER,  /* write side shut; discarding input briefly so the peer reads our answer */
};

/* How long to keep discarding input after an error response (nginx lingering_close). */
#define LINGER_MS 2000
/* Low-water mark of the client's output: below it the upstream is read again. */
#define DOWN_WRITE_LOW (64 * 1024)

struct h1conn {
    struct conn_link link; /* first: the worker's list of connections */
    struct worker *worker;
    struct bufferevent *bev;
    struct stream *stream;
    struct event *timer; /* header deadline / idle / linger */
    struct event *post;  /* runs after a stream finished, outside its callbacks */
    enum h1_state state;
    bool head_deadline; /* timer currently counts a header deadline */
    bool close_after;   /* close once the current response is out */
    bool stream_done;   /* the stream called done() */
    bool stream_abort;
    bool resp_chunked; /* re-framing the response as chunked */
    bool resp_no_body; /* HEAD / 204 / 304: framing fields only */
    bool body_eof;     /* request body fully read */
    bool tls;
    bool allow_h2c;     /* cleartext listener: detect the HTTP/2 preface */
    bool tunnel;        /* WebSocket after 101: raw bytes both ways */
    bool trailers_sent; /* the chunked terminator with trailers is out */
    int version_minor;
    enum h1_body_kind body_kind;
    uint64_t body_remaining;
    struct h1_chunked chunked;
    char client_ip[INET6_ADDRSTRLEN];
    unsigned requests;
};

static void on_read(struct bufferevent *bev, void *arg);
static void on_write(struct bufferevent *bev, void *arg);
static void on_event(struct bufferevent *bev, short what, void *arg);
static void conn_free(struct h1conn *c);

static void arm(struct h1conn *c, uint64_t ms)
{
    struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)((ms % 1000) * 1000)};
    evtimer_add(c->timer, &tv);
}

static void set_timeouts(struct h1conn *c, uint64_t read_ms)
{
    uint64_t send_ms = c->worker->cfg->timeouts.send_ms;
    struct timeval r = {(time_t)(read_ms / 1000), (suseconds_t)((read_ms % 1000) * 1000)};
    struct timeval w = {(time_t)(send_ms / 1000), (suseconds_t)((send_ms % 1000) * 1000)};
    bufferevent_set_timeouts(c->bev, read_ms ? &r : NULL, send_ms ? &w : NULL);
}

static const char *reason_phrase(int status)
{
    switch (status) {
    case 100:
        return "Continue";
    case 101:
        return "Switching Protocols";
    case 200:
        return "OK";
    case 201:
        return "Created";
    case 204:
        return "No Content";
    case 206:
        return "Partial Content";
    case 301:
        return "Moved Permanently";
    case 302:
        return "Found";
    case 304:
        return "Not Modified";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 408:
        return "Request Timeout";
    case 413:
        return "Content Too Large";
    case 414:
        return "URI Too Long";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 501:
        return "Not Implemented";
    case 502:
        return "Bad Gateway";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    case 505:
        return "HTTP Version Not Supported";
    default:
        return "";
    }
}

/* Answer a request we refuse before any stream exists, then close. */
static void reject(struct h1conn *c, int status, const char *why)
{
    struct evbuffer *out = bufferevent_get_output(c->bev);
    size_t blen = strlen(why);
    METRIC_INC(c->worker->metrics.bad_requests);
    METRIC_INC(c->worker->metrics.requests);
    METRIC_INC(c->worker->metrics.status_class[status / 100]);
    evbuffer_add_printf(out,
                        "HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: %zu\r\n"
                        "connection: close\r\n\r\n%s\n",
                        status, reason_phrase(status), blen + 1, why);
    log_info("client %s: request refused with %d: %s", c->client_ip, status, why);
    c->state = ST_CLOSING;
    c->close_after = true;
    /* Nothing more from this connection is parsed or forwarded: pipelined
     * requests after a bad one are dropped with it. */
    evbuffer_drain(bufferevent_get_input(c->bev), evbuffer_get_length(bufferevent_get_input(c->bev)));
    evtimer_del(c->timer);
    bufferevent_enable(c->bev, EV_WRITE);
}

static int status_of(int code)
{
    switch (code) {
    case H1_ERR_URI_LONG:
        return 414;
    case H1_ERR_HDR_LARGE:
        return 431;
    case H1_ERR_VERSION:
        return 505;
    case H1_ERR_NOT_IMPL:
        return 501;
    default:
        return 400;
    }
}

/* Request fields a proxy must not forward as they are (RFC 9110 §7.6.1):
 * hop-by-hop ones, those named by Connection, and the framing fields that
 * we regenerate. */
static bool drop_request_field(const struct h1_request *req, const struct h1_header *f)
{
    if (h1_is_hop_by_hop(f->name, f->name_len))
        return true;
    if (co_strieq(f->name, f->name_len, "content-length") || co_strieq(f->name, f->name_len, "host") ||
        co_strieq(f->name, f->name_len, "expect"))
        return true;
    return h1_connection_lists(&req->msg, f->name, f->name_len);
}

extern const struct stream_down_ops h1_stream_ops;

/* Hand the socket to an HTTP/2 session; this h1conn ends without closing it. */
static void switch_to_h2(struct h1conn *c)
{
    struct bufferevent *bev = c->bev;
    struct worker *w = c->worker;
    char ip[INET6_ADDRSTRLEN];
    memcpy(ip, c->client_ip, sizeof(ip));
    bool tls = c->tls;
    worker_conn_unlink(&c->link);
    event_free(c->timer);
    event_free(c->post);
    free(c);
    METRIC_SUB(w->metrics.conns_h1, 1);
    h2conn_start(w, bev, ip, tls);
}

static void begin_stream(struct h1conn *c, const char *p, size_t head_len, const struct h1_request *req)
{
    struct worker *w = c->worker;
    struct stream *s = stream_new(w, &h1_stream_ops, c);
    c->stream = s;
    c->stream_done = false;
    c->stream_abort = false;
    c->requests++;

    /* Copy the head once; rebase pointers into the copy. */
    s->head = co_malloc(head_len);
    memcpy(s->head, p, head_len);
#define REBASE(ptr) (s->head + ((const char *)(ptr)-p))
    s->method = REBASE(req->method);
    s->method_len = req->method_len;
    s->target = REBASE(req->path);
    s->target_len = req->path_len;
    s->host = REBASE(req->host);
    s->host_len = req->host_len;
    s->fields = co_malloc((req->msg.n_headers ? req->msg.n_headers : 1) * sizeof(*s->fields));
    size_t k = 0;
    const char *rid = NULL;
    size_t rid_len = 0;
    for (size_t i = 0; i < req->msg.n_headers; i++) {
        const struct h1_header *f = &req->msg.headers[i];
        if (drop_request_field(req, f))
            continue;
        if (co_strieq(f->name, f->name_len, "x-request-id")) {
            rid = f->value;
            rid_len = f->value_len;
        }
        s->fields[k].name = REBASE(f->name);
        s->fields[k].name_len = f->name_len;
        s->fields[k].value = REBASE(f->value);
        s->fields[k].value_len = f->value_len;
        k++;
    }
#undef REBASE
    s->n_fields = k;
    s->version_minor = req->msg.version_minor;
    s->proto = req->msg.version_minor == 0 ? "HTTP/1.0" : "HTTP/1.1";
    s->is_head = req->method_len == 4 && memcmp(req->method, "HEAD", 4) == 0;
    s->expect_continue = req->expect_continue && req->msg.version_minor == 1;
    const struct h1_header *te = h1_find_header(&req->msg, "te");
    s->te_trailers = te && co_strieq(te->value, te->value_len, "trailers");
    /* WebSocket (RFC 6455 §4): the only upgrade we carry. "Upgrade: h2c" and
     * anything else is never honoured: the hop-by-hop fields are dropped. */
    if (req->msg.upgrade && req->method_len == 3 && memcmp(req->method, "GET", 3) == 0) {
        const struct h1_header *up = h1_find_header(&req->msg, "upgrade");
        if (up && co_strieq(up->value, up->value_len, "websocket") && h1_request_body_kind(req) == H1_BODY_NONE)
            s->websocket = true;
    }
    s->tls = c->tls;
    memcpy(s->client_ip, c->client_ip, sizeof(s->client_ip));
    stream_take_request_id(s, rid, rid_len);

    c->version_minor = req->msg.version_minor;
    c->close_after = !req->msg.keep_alive || w->draining;
    c->body_kind = h1_request_body_kind(req);
    c->body_eof = c->body_kind == H1_BODY_NONE;
    c->body_remaining = c->body_kind == H1_BODY_LENGTH ? (uint64_t)req->msg.content_length : 0;
    h1_chunked_init(&c->chunked);
    s->has_body = !c->body_eof;
    s->content_length = c->body_kind == H1_BODY_LENGTH ? req->msg.content_length : (c->body_kind == H1_BODY_NONE ? 0 : -1);
    c->resp_chunked = false;
    c->trailers_sent = false;
    c->resp_no_body = s->is_head;
    c->state = ST_STREAM;
    c->head_deadline = false;
    evtimer_del(c->timer);
    set_timeouts(c, c->body_eof ? 0 : w->cfg->timeouts.body_ms);
}

static void parse_request(struct h1conn *c)
{
    struct evbuffer *in = bufferevent_get_input(c->bev);
    size_t avail = evbuffer_get_length(in);
    if (avail == 0)
        return;
    const struct config *cfg = c->worker->cfg;
    if (!c->head_deadline) {
        /* The whole head must arrive within header_ms of its first byte,
         * however slowly it trickles (slowloris). */
        c->head_deadline = true;
        arm(c, cfg->timeouts.header_ms);
    }
    struct h1_limits lim = {cfg->limits.max_request_line, cfg->limits.max_header_bytes, cfg->limits.max_headers};
    size_t n = avail < lim.max_header_bytes ? avail : lim.max_header_bytes;
    const char *p = (const char *)evbuffer_pullup(in, (ev_ssize_t)n);
    if (c->requests == 0 && c->allow_h2c) {
        /* HTTP/2 with prior knowledge (RFC 9113 §3.3): the client preface. */
        static const char preface[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
        size_t m = n < 24 ? n : 24;
        if (memcmp(p, preface, m) == 0) {
            if (n < 24)
                return; /* wait for the whole preface */
            switch_to_h2(c);
            return;
        }
    }
    struct h1_request req;
    int r = h1_parse_request(p, n, &lim, &req);
    if (r == H1_INCOMPLETE) {
        if (avail >= lim.max_header_bytes)
            reject(c, 431, "request head too large");
        return;
    }
    if (r < 0) {
        reject(c, status_of(r), req.msg.error ? req.msg.error : "malformed request");
        return;
    }
    if (req.is_connect) {
        reject(c, 405, "CONNECT is not supported");
        return;
    }
    begin_stream(c, p, (size_t)r, &req);
    /* The head is copied into the stream; drop it from the input before the
     * stream starts reading the body that follows it. */
    evbuffer_drain(in, (size_t)r);
    struct stream *s = c->stream;
    uint64_t max_body = cfg->limits.max_body_bytes;
    if (max_body && c->body_kind == H1_BODY_LENGTH && c->body_remaining > max_body) {
        c->close_after = true;
        METRIC_INC(c->worker->metrics.bad_requests);
        stream_respond(s, 413, "request body too large\n");
        return;
    }
    /* stream_start may finish the stream at once (404, 503): that only
     * schedules c->post, so c and s stay valid until this callback returns. */
    stream_start(s);
}

/* ---- stream ops ---- */

static long h1_read_body(struct stream *s, struct evbuffer *dst, size_t max, bool *eof)
{
    struct h1conn *c = s->down;
    struct evbuffer *in = bufferevent_get_input(c->bev);
    size_t moved = 0;
    if (s->tunnel) {
        /* WebSocket: raw bytes, the end is the client's close. */
        size_t avail = evbuffer_get_length(in);
        size_t n = avail < max ? avail : max;
        if (n)
            evbuffer_remove_buffer(in, dst, n);
        *eof = false;
        return (long)n;
    }
    *eof = c->body_eof;
    if (c->body_eof)
        return 0;
    if (c->body_kind == H1_BODY_LENGTH) {
        size_t avail = evbuffer_get_length(in);
        size_t n = avail < max ? avail : max;
        if (n > c->body_remaining)
            n = (size_t)c->body_remaining;
        if (n)
            evbuffer_remove_buffer(in, dst, n);
        c->body_remaining -= n;
        if (c->body_remaining == 0)
            c->body_eof = true;
        *eof = c->body_eof;
        return (long)n;
    }
    while (moved < max && !c->chunked.done) {
        struct evbuffer_iovec v;
        if (evbuffer_peek(in, -1, NULL, &v, 1) < 1 || v.iov_len == 0)
            break;
        size_t len = v.iov_len;
        if (len > max - moved + 64)
            len = max - moved + 64; /* payload bounded; framing may overrun a little */
        size_t off = 0, dlen = 0;
        long used = h1_chunked_feed(&c->chunked, v.iov_base, len, &off, &dlen);
        if (used < 0) {
            log_info("client %s: bad chunked request body: %s", c->client_ip, c->chunked.error ? c->chunked.error : "?");
            c->close_after = true;
            METRIC_INC(c->worker->metrics.bad_requests);
            return -1;
        }
        if (dlen) {
            evbuffer_drain(in, off);
            evbuffer_remove_buffer(in, dst, dlen);
            evbuffer_drain(in, (size_t)used - off - dlen);
            moved += dlen;
        } else {
            evbuffer_drain(in, (size_t)used);
        }
        if (used == 0)
            break;
    }
    if (c->chunked.done)
        c->body_eof = true;
    *eof = c->body_eof;
    return (long)moved;
}

static void h1_send_head(struct stream *s, int status, const struct h1_header *fields, size_t n, int64_t content_length)
{
    struct h1conn *c = s->down;
    struct outbuf ob;
    struct outbuf *o = &ob;
    ob_init(o, bufferevent_get_output(c->bev));
    OB_LIT(o, "HTTP/1.1 ");
    ob_u64(o, (uint64_t)status);
    OB_LIT(o, " ");
    ob_str(o, reason_phrase(status));
    OB_LIT(o, "\r\n");
    for (size_t i = 0; i < n; i++) {
        ob_put(o, fields[i].name, fields[i].name_len);
        OB_LIT(o, ": ");
        ob_put(o, fields[i].value, fields[i].value_len);
        OB_LIT(o, "\r\n");
    }
    if (status == 101 && s->websocket) {
        /* Switching to a tunnel: the hop-by-hop upgrade fields are ours to send. */
        OB_LIT(o, "connection: upgrade\r\nupgrade: websocket\r\n\r\n");
        ob_flush(o);
        c->tunnel = true;
        c->body_eof = false;
        c->close_after = true;
        set_timeouts(c, c->worker->cfg->timeouts.idle_ms);
        return;
    } else if (status == 204 || status == 304 || status < 200) {
        c->resp_no_body = true;
    } else if (content_length >= 0) {
        OB_LIT(o, "content-length: ");
        ob_u64(o, (uint64_t)content_length);
        OB_LIT(o, "\r\n");
    } else if (c->resp_no_body) {
        /* HEAD without a known length: nothing to frame. */
    } else if (c->version_minor >= 1) {
        OB_LIT(o, "transfer-encoding: chunked\r\n");
        c->resp_chunked = true;
    } else {
        c->close_after = true; /* HTTP/1.0: the body ends with the connection */
    }
    if (c->close_after)
        OB_LIT(o, "connection: close\r\n\r\n");
    else if (c->version_minor == 0)
        OB_LIT(o, "connection: keep-alive\r\n\r\n");
    else
        OB_LIT(o, "\r\n");
    ob_flush(o);
}

static bool h1_send_data(struct stream *s, struct evbuffer *src)
{
    struct h1conn *c = s->down;
    struct evbuffer *out = bufferevent_get_output(c->bev);
    size_t len = evbuffer_get_length(src);
    if (c->resp_no_body) {
        evbuffer_drain(src, len);
    } else if (len) {
        if (c->resp_chunked) {
            struct outbuf ob;
            ob_init(&ob, out);
            ob_hex(&ob, len);
            OB_LIT(&ob, "\r\n");
            ob_flush(&ob);
            evbuffer_add_buffer(out, src);
            ADD_LIT(out, "\r\n");
        } else {
            evbuffer_add_buffer(out, src);
        }
    }
    return evbuffer_get_length(out) < STREAM_HIGH_WATER;
}

static void h1_send_trailers(struct stream *s, const struct h1_header *fields, size_t n)
{
    struct h1conn *c = s->down;
    if (!c->resp_chunked || c->trailers_sent)
        return; /* a Content-Length body has no place for trailers */
    struct evbuffer *out = bufferevent_get_output(c->bev);
    ADD_LIT(out, "0\r\n");
    for (size_t i = 0; i < n; i++) {
        evbuffer_add(out, fields[i].name, fields[i].name_len);
        ADD_LIT(out, ": ");
        evbuffer_add(out, fields[i].value, fields[i].value_len);
        ADD_LIT(out, "\r\n");
    }
    ADD_LIT(out, "\r\n");
    c->trailers_sent = true;
}

static void h1_send_end(struct stream *s)
{
    struct h1conn *c = s->down;
    if (c->resp_chunked && !c->trailers_sent)
        ADD_LIT(bufferevent_get_output(c->bev), "0\r\n\r\n");
}

static void h1_send_continue(struct stream *s)
{
    struct h1conn *c = s->down;
    ADD_LIT(bufferevent_get_output(c->bev), "HTTP/1.1 100 Continue\r\n\r\n");
}

static void h1_done(struct stream *s, bool abort)
{
    struct h1conn *c = s->down;
    c->stream_done = true;
    c->stream_abort = abort;
    event_active(c->post, EV_TIMEOUT, 1);
}

const struct stream_down_ops h1_stream_ops = {
    .read_body = h1_read_body,
    .send_head = h1_send_head,
    .send_data = h1_send_data,
    .send_trailers = h1_send_trailers,
    .send_end = h1_send_end,
    .send_continue = h1_send_continue,
    .done = h1_done,
};

/* ---- connection life ---- */

static void start_close(struct h1conn *c)
{
    c->state = ST_CLOSING;
    evtimer_del(c->timer);
    if (evbuffer_get_length(bufferevent_get_output(c->bev)) == 0)
        on_write(c->bev, c);
}

/* After a stream finished: free it, then close or read the next request. */
static void on_post(evutil_socket_t fd, short what, void *arg)
{
    struct h1conn *c = arg;
    struct stream *s = c->stream;
    if (s == NULL || !c->stream_done)
        return;
    c->stream = NULL;
    bool abort = c->stream_abort;
    stream_free(s);
    if (abort) {
        conn_free(c);
        return;
    }
    /* A request body the upstream did not wait for leaves the framing of the
     * next request unknown: close. */
    if (!c->body_eof)
        c->close_after = true;
    if (c->close_after) {
        start_close(c);
        return;
    }
    c->state = ST_HEAD;
    c->head_deadline = false;
    set_timeouts(c, 0);
    bufferevent_enable(c->bev, EV_READ);
    if (evbuffer_get_length(bufferevent_get_input(c->bev)) > 0)
        parse_request(c); /* pipelined */
    else
        arm(c, c->worker->cfg->timeouts.idle_ms);
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    struct h1conn *c = arg;
    if (c->state == ST_HEAD) {
        if (c->head_deadline && evbuffer_get_length(bufferevent_get_input(c->bev)) > 0) {
            reject(c, 408, "request head not received in time");
            if (evbuffer_get_length(bufferevent_get_output(c->bev)) == 0)
                on_write(c->bev, c);
            return;
        }
        conn_free(c); /* idle keep-alive connection */
        return;
    }
    if (c->state == ST_LINGER || c->state == ST_CLOSING)
        conn_free(c);
}

static void on_read(struct bufferevent *bev, void *arg)
{
    struct h1conn *c = arg;
    switch (c->state) {
    case ST_HEAD:
        parse_request(c);
        break;
    case ST_STREAM:
        if (c->stream && !c->stream_done && !c->body_eof)
            stream_on_body_readable(c->stream);
        break;
    case ST_CLOSING:
    case ST_LINGER: {
        struct evbuffer *in = bufferevent_get_input(bev);
        evbuffer_drain(in, evbuffer_get_length(in));
        break;
    }
    }
}

static void on_write(struct bufferevent *bev, void *arg)
{
    struct h1conn *c = arg;
    size_t pending = evbuffer_get_length(bufferevent_get_output(bev));
    if (c->state == ST_STREAM) {
        if (c->stream && !c->stream_done)
            stream_on_down_writable(c->stream);
        return;
    }
    if (c->state == ST_CLOSING && pending == 0) {
        /* Lingering close: shut our side so the client sees the whole
         * response, keep reading briefly so unread input does not turn our
         * close into a reset that destroys it. */
        shutdown(bufferevent_getfd(bev), SHUT_WR);
        c->state = ST_LINGER;
        bufferevent_enable(bev, EV_READ);
        bufferevent_set_timeouts(bev, NULL, NULL);
        arm(c, LINGER_MS);
    }
}

static void on_event(struct bufferevent *bev, short what, void *arg)
{
    struct h1conn *c = arg;
    if (c->state == ST_LINGER || c->state == ST_CLOSING) {
        conn_free(c);
        return;
    }
    if ((what & BEV_EVENT_TIMEOUT) && (what & BEV_EVENT_READING) && c->state == ST_STREAM && c->stream && !c->stream_done &&
        !c->stream->resp_started && !c->body_eof) {
        /* Request body stalled. */
        struct stream *s = c->stream;
        c->close_after = true;
        METRIC_INC(c->worker->metrics.bad_requests);
        stream_abort(s);
        s->finished = false;
        stream_respond(s, 408, "request body not received in time\n");
        bufferevent_enable(bev, EV_WRITE);
        return;
    }
    if ((what & BEV_EVENT_EOF) && !c->tls && c->state == ST_STREAM && c->body_eof && c->stream && !c->stream_done) {
        /* The client half-closed (TCP FIN) after a complete request: answer,
         * then close; a peer that is really gone makes the write fail. Over
         * TLS an EOF is the end of the session (a reset reads as one with
         * dirty shutdowns allowed): nobody is left to answer. */
        c->close_after = true;
        return;
    }
    if (c->stream) {
        struct stream *s = c->stream;
        c->stream = NULL;
        if (!c->stream_done)
            stream_abort(s);
        stream_free(s);
    }
    conn_free(c);
}

static void conn_free(struct h1conn *c)
{
    struct worker *w = c->worker;
    worker_conn_unlink(&c->link);
    if (c->stream) {
        struct stream *s = c->stream;
        c->stream = NULL;
        if (!c->stream_done)
            stream_abort(s);
        stream_free(s);
    }
    event_free(c->timer);
    event_free(c->post);
    bufferevent_free(c->bev);
    free(c);
    METRIC_SUB(w->metrics.conns_h1, 1);
    worker_conn_closed(w);
}

/* The worker drains: an idle connection closes now, a busy one after its
 * current response (which then says "connection: close"). */
static void on_drain(struct conn_link *link)
{
    struct h1conn *c = (struct h1conn *)link;
    c->close_after = true;
    if (c->state == ST_HEAD && evbuffer_get_length(bufferevent_get_input(c->bev)) == 0)
        conn_free(c);
}

static void on_kill(struct conn_link *link)
{
    conn_free((struct h1conn *)link);
}

void h1conn_start(struct worker *w, struct bufferevent *bev, const char *client_ip, bool tls)
{
    struct h1conn *c = co_calloc(1, sizeof(*c));
    METRIC_INC(w->metrics.conns_h1);
    worker_conn_link(w, &c->link, on_drain, on_kill);
    c->worker = w;
    c->tls = tls;
    c->allow_h2c = !tls;
    co_strlcpy(c->client_ip, client_ip, sizeof(c->client_ip));
    c->bev = bev;
    c->timer = evtimer_new(w->base, on_timer, c);
    c->post = event_new(w->base, -1, 0, on_post, c);
    bufferevent_setcb(c->bev, on_read, on_write, on_event, c);
    bufferevent_setwatermark(c->bev, EV_READ, 0, w->cfg->limits.max_header_bytes);
    bufferevent_setwatermark(c->bev, EV_WRITE, DOWN_WRITE_LOW, 0);
    set_timeouts(c, 0);
    bufferevent_enable(c->bev, EV_READ | EV_WRITE);
    c->state = ST_HEAD;
    arm(c, w->cfg->timeouts.header_ms);
    c->head_deadline = true;
    /* Bytes read during a TLS handshake are already waiting. */
    if (evbuffer_get_length(bufferevent_get_input(bev)) > 0)
        parse_request(c);
}
