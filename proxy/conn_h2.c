/*
 * conn_h2.c - a downstream HTTP/2 connection (nghttp2 server session).
 *
 * Each request stream becomes the same struct stream the HTTP/1.1 side uses,
 * so routing, the decision and the upstream are one code path.
 *
 * Flow control is tied to the upstream: automatic WINDOW_UPDATEs are off and
 * request DATA is consumed (nghttp2_session_consume) only when the stream has
 * moved it to the upstream, so a slow upstream stops the client by its own
 * window. Response bodies wait in a bounded per-stream buffer; the data
 * provider returns NGHTTP2_ERR_DEFERRED when it is empty and the stream stops
 * reading the upstream when it is full.
 *
 * nghttp2 calls happen only from this connection's own event callbacks
 * (read, write, post): stream operations never call nghttp2_session_send()
 * themselves but schedule `post`, so a stream is never freed (on_stream_close)
 * inside a call chain that still uses it.
 */
#include "conn_h2.h"

#include <arpa/inet.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <nghttp2/nghttp2.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "h2util.h"
#include "stream.h"
#include "worker.h"

/* Bytes of session output queued in the socket buffer before we stop
 * producing more (resumed from the write callback). */
#define H2_OUT_HIGH (256 * 1024)
/* Per-stream receive window we advertise; DATA beyond what the stream has
 * forwarded is refused by flow control, not buffered. */
#define H2_STREAM_WINDOW (256 * 1024)
#define H2_CONN_WINDOW (1024 * 1024)
#define H2_MAX_STREAMS 100

/* Glitch budget (a token bucket per connection): frames that cost us work
 * without carrying a request - PRIORITY, empty DATA without END_STREAM,
 * invalid frames or fields, streams we had to reset ourselves (MadeYouReset,
 * CVE-2025-8671), tiny WINDOW_UPDATEs, PING and SETTINGS beyond a few. A
 * well-behaved client never gets near it; exhausting it ends the connection
 * with GOAWAY ENHANCE_YOUR_CALM. */
#define H2_GLITCH_BURST 1000.0
#define H2_GLITCH_REFILL_PER_S 20.0
/* WINDOW_UPDATEs smaller than this (while data waits) count as dribble. */
#define H2_DRIBBLE_BYTES 256
/* More queued outbound frames than this: the client is not reading. */
#define H2_MAX_OUTBOUND_QUEUE 4096
/* How often stalled (zero-window) streams are checked. */
#define H2_STALL_CHECK_MS 1000

struct h2conn;

struct h2stream {
    struct h2conn *conn;
    int32_t id;
    struct stream *s;       /* the exchange, once the request head is complete */
    struct evbuffer *arena; /* request field bytes while headers arrive */
    struct hdr_ref {
        uint32_t name_off, name_len, value_off, value_len;
    } * refs;
    size_t n_refs, cap_refs;
    size_t header_bytes;
    int method_ref, path_ref, authority_ref, scheme_ref, host_ref; /* index into refs, -1 */
    int64_t content_length;                                        /* from the content-length field, -1 if absent */
    uint64_t received;                                             /* DATA payload bytes received */
    struct evbuffer *req_body;
    bool req_eof;
    bool bad; /* refused: answer with 400 once the head is complete */
    const char *bad_why;
    struct evbuffer *resp_body;
    struct h1_header *trailer_fields;
    char *trailer_arena;
    size_t n_trailers;
    bool resp_eof;
    bool resp_deferred; /* data provider returned DEFERRED */
    bool resp_full;     /* send_data said the client is full */
    bool want_writable; /* notify the stream that it may send again */
    bool want_body;     /* notify the stream that more request body is here */
    bool core_done;     /* the stream called done() */
    struct h2stream *next_pending;
    bool pending;
    struct h2stream *prev, *next; /* all streams of the connection */
    uint64_t last_send_ms;        /* last time response DATA moved to the client */
    uint64_t created_ms;          /* HEADERS began: the head must complete within timeouts.header */
    uint64_t last_recv_ms;        /* last request DATA: the body must progress within timeouts.body */
    int bad_status;               /* 400 or 431 for a refused head */
};

struct h2conn {
    struct conn_link link; /* first: the worker's list of connections */
    struct worker *worker;
    struct bufferevent *bev;
    nghttp2_session *session;
    struct event *post;
    struct event *timer; /* idle / preface */
    char client_ip[INET6_ADDRSTRLEN];
    bool tls;
    bool closing;
    unsigned n_streams;
    struct h2stream *pending; /* streams with want_* flags set */
    struct h2stream *streams; /* every open stream (nghttp2_session_del does not close them) */
    double glitch_tokens;     /* see H2_GLITCH_BURST */
    uint64_t glitch_refilled_ms;
    uint64_t glitches; /* total, for the log line */
    unsigned pings, settings;
    bool calm;           /* GOAWAY ENHANCE_YOUR_CALM sent */
    bool dead;           /* nghttp2 failed fatally: only our GOAWAY is left to write */
    struct event *stall; /* zero-window reader check */
};

/* Charge `n` glitches; false when the budget is gone (GOAWAY sent). */
static bool glitch(struct h2conn *c, const char *what, double n)
{
    uint64_t now = co_now_ms();
    c->glitch_tokens += (double)(now - c->glitch_refilled_ms) * H2_GLITCH_REFILL_PER_S / 1000.0;
    if (c->glitch_tokens > H2_GLITCH_BURST)
        c->glitch_tokens = H2_GLITCH_BURST;
    c->glitch_refilled_ms = now;
    c->glitch_tokens -= n;
    c->glitches++;
    if (c->glitch_tokens >= 0 || c->calm)
        return !c->calm;
    c->calm = true;
    METRIC_INC(c->worker->metrics.h2_calm);
    log_warn("client %s: HTTP/2 glitch budget exhausted (%llu glitches, last: %s); GOAWAY ENHANCE_YOUR_CALM", c->client_ip,
             (unsigned long long)c->glitches, what);
    nghttp2_session_terminate_session(c->session, NGHTTP2_ENHANCE_YOUR_CALM);
    return false;
}

static void schedule(struct h2conn *c)
{
    event_active(c->post, EV_TIMEOUT, 1);
}

static void mark(struct h2stream *st)
{
    if (!st->pending) {
        st->pending = true;
        st->next_pending = st->conn->pending;
        st->conn->pending = st;
    }
    schedule(st->conn);
}

static void conn_free(struct h2conn *c);

/* Produce session output into the socket buffer (bounded). Returns CO_ERROR
 * when the connection should close. */
static int flush_session(struct h2conn *c)
{
    struct evbuffer *out = bufferevent_get_output(c->bev);
    if (h2_send_bounded(c->session, out, H2_OUT_HIGH) != 0)
        return CO_ERROR;
    if (!nghttp2_session_want_read(c->session) && !nghttp2_session_want_write(c->session) && evbuffer_get_length(out) == 0)
        return CO_ERROR;
    return CO_OK;
}

static void arm_idle(struct h2conn *c)
{
    uint64_t ms = c->worker->cfg->timeouts.idle_ms;
    struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)((ms % 1000) * 1000)};
    evtimer_add(c->timer, &tv);
}

/* ---- stream ops ---- */

static long h2_read_body(struct stream *s, struct evbuffer *dst, size_t max, bool *eof)
{
    struct h2stream *st = s->down;
    size_t n = evbuffer_get_length(st->req_body);
    if (n > max)
        n = max;
    if (n) {
        evbuffer_remove_buffer(st->req_body, dst, n);
        /* Forwarded: now the client may send this much more. */
        nghttp2_session_consume(st->conn->session, st->id, n);
        schedule(st->conn);
    }
    *eof = st->req_eof && evbuffer_get_length(st->req_body) == 0;
    return (long)n;
}

static ssize_t on_read_data(nghttp2_session *session, int32_t id, uint8_t *buf, size_t length, uint32_t *flags,
                            nghttp2_data_source *source, void *user)
{
    struct h2stream *st = source->ptr;
    size_t avail = evbuffer_get_length(st->resp_body);
    size_t n = avail < length ? avail : length;
    if (n) {
        evbuffer_remove(st->resp_body, buf, n);
        st->last_send_ms = co_now_ms();
    }
    if (st->resp_full && evbuffer_get_length(st->resp_body) < STREAM_HIGH_WATER / 2) {
        st->resp_full = false;
        st->want_writable = true;
        mark(st);
    }
    if (evbuffer_get_length(st->resp_body) == 0) {
        if (st->resp_eof) {
            *flags |= NGHTTP2_DATA_FLAG_EOF;
            if (st->n_trailers) {
                /* gRPC status travels here: HEADERS with END_STREAM after the data. */
                nghttp2_nv *nva = co_malloc(st->n_trailers * sizeof(*nva));
                for (size_t i = 0; i < st->n_trailers; i++)
                    nva[i] = (nghttp2_nv){(uint8_t *)st->trailer_fields[i].name, (uint8_t *)st->trailer_fields[i].value,
                                          st->trailer_fields[i].name_len, st->trailer_fields[i].value_len, NGHTTP2_NV_FLAG_NONE};
                if (nghttp2_submit_trailer(session, id, nva, st->n_trailers) == 0)
                    *flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
                free(nva);
            }
            return (ssize_t)n;
        }
        if (n == 0) {
            st->resp_deferred = true;
            return NGHTTP2_ERR_DEFERRED;
        }
    }
    return (ssize_t)n;
}

static void lower_copy(char *dst, const char *src, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        char ch = src[i];
        dst[i] = (ch >= 'A' && ch <= 'Z') ? (char)(ch + 32) : ch;
    }
}

static void h2_send_head(struct stream *s, int status, const struct h1_header *fields, size_t n, int64_t content_length)
{
    struct h2stream *st = s->down;
    struct h2conn *c = st->conn;
    nghttp2_nv *nva = co_malloc((n + 2) * sizeof(*nva));
    size_t names_len = 0;
    for (size_t i = 0; i < n; i++)
        names_len += fields[i].name_len;
    char *names = co_malloc(names_len + 1);
    char status_buf[4], cl_buf[24];
    status_buf[0] = (char)('0' + status / 100 % 10);
    status_buf[1] = (char)('0' + status / 10 % 10);
    status_buf[2] = (char)('0' + status % 10);
    status_buf[3] = '\0';
    size_t k = 0, off = 0;
    nva[k++] = (nghttp2_nv){(uint8_t *)":status", (uint8_t *)status_buf, 7, 3, NGHTTP2_NV_FLAG_NONE};
    for (size_t i = 0; i < n; i++) {
        /* HTTP/2 field names are lowercase (RFC 9113 §8.2.1). */
        lower_copy(names + off, fields[i].name, fields[i].name_len);
        nva[k++] = (nghttp2_nv){(uint8_t *)names + off, (uint8_t *)fields[i].value, fields[i].name_len, fields[i].value_len,
                                NGHTTP2_NV_FLAG_NONE};
        off += fields[i].name_len;
    }
    bool no_body = s->is_head || status == 204 || status == 304;
    if (content_length >= 0 && status != 204 && status != 304) {
        size_t len = co_u64_dec(cl_buf, (uint64_t)content_length);
        nva[k++] = (nghttp2_nv){(uint8_t *)"content-length", (uint8_t *)cl_buf, 14, (size_t)len, NGHTTP2_NV_FLAG_NONE};
    }
    nghttp2_data_provider prd = {.source.ptr = st, .read_callback = on_read_data};
    int rv = nghttp2_submit_response(c->session, st->id, nva, k, no_body ? NULL : &prd);
    if (rv != 0)
        log_warn("client %s: nghttp2_submit_response(stream %d): %s", c->client_ip, st->id, nghttp2_strerror(rv));
    if (no_body)
        st->resp_eof = true;
    free(names);
    free(nva);
    schedule(c);
}

static bool h2_send_data(struct stream *s, struct evbuffer *src)
{
    struct h2stream *st = s->down;
    if (st->resp_eof && s->is_head) {
        evbuffer_drain(src, evbuffer_get_length(src));
        return true;
    }
    evbuffer_add_buffer(st->resp_body, src);
    if (st->resp_deferred) {
        st->resp_deferred = false;
        nghttp2_session_resume_data(st->conn->session, st->id);
    }
    schedule(st->conn);
    if (evbuffer_get_length(st->resp_body) >= STREAM_HIGH_WATER) {
        st->resp_full = true;
        return false;
    }
    return true;
}

static void h2_send_trailers(struct stream *s, const struct h1_header *fields, size_t n)
{
    struct h2stream *st = s->down;
    if (st->n_trailers || n == 0 || (st->resp_eof && s->is_head))
        return;
    /* Copy: the caller's fields point into its own buffers. Names lowercase. */
    size_t total = 0;
    for (size_t i = 0; i < n; i++)
        total += fields[i].name_len + fields[i].value_len;
    char *arena = co_malloc(total + 1);
    st->trailer_fields = co_malloc(n * sizeof(*st->trailer_fields));
    size_t off = 0;
    for (size_t i = 0; i < n; i++) {
        lower_copy(arena + off, fields[i].name, fields[i].name_len);
        st->trailer_fields[i].name = arena + off;
        st->trailer_fields[i].name_len = fields[i].name_len;
        off += fields[i].name_len;
        memcpy(arena + off, fields[i].value, fields[i].value_len);
        st->trailer_fields[i].value = arena + off;
        st->trailer_fields[i].value_len = fields[i].value_len;
        off += fields[i].value_len;
    }
    st->trailer_arena = arena;
    st->n_trailers = n;
}

static void h2_send_end(struct stream *s)
{
    struct h2stream *st = s->down;
    st->resp_eof = true;
    if (st->resp_deferred) {
        st->resp_deferred = false;
        nghttp2_session_resume_data(st->conn->session, st->id);
    }
    schedule(st->conn);
}

static void h2_send_continue(struct stream *s)
{
    struct h2stream *st = s->down;
    nghttp2_nv nv = {(uint8_t *)":status", (uint8_t *)"100", 7, 3, NGHTTP2_NV_FLAG_NONE};
    nghttp2_submit_headers(st->conn->session, NGHTTP2_FLAG_NONE, st->id, NULL, &nv, 1, NULL);
    schedule(st->conn);
}

static void h2_done(struct stream *s, bool abort)
{
    struct h2stream *st = s->down;
    st->core_done = true;
    if (abort)
        nghttp2_submit_rst_stream(st->conn->session, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_INTERNAL_ERROR);
    schedule(st->conn);
}

static const struct stream_down_ops h2_stream_ops = {
    .read_body = h2_read_body,
    .send_head = h2_send_head,
    .send_data = h2_send_data,
    .send_trailers = h2_send_trailers,
    .send_end = h2_send_end,
    .send_continue = h2_send_continue,
    .done = h2_done,
};

/* ---- request assembly ---- */

static struct h2stream *h2stream_new(struct h2conn *c, int32_t id)
{
    struct h2stream *st = co_calloc(1, sizeof(*st));
    st->conn = c;
    st->id = id;
    st->arena = evbuffer_new();
    st->req_body = evbuffer_new();
    st->resp_body = evbuffer_new();
    st->content_length = -1;
    st->created_ms = st->last_recv_ms = co_now_ms();
    st->method_ref = st->path_ref = st->authority_ref = st->scheme_ref = st->host_ref = -1;
    st->next = c->streams;
    if (c->streams)
        c->streams->prev = st;
    c->streams = st;
    c->n_streams++;
    return st;
}

static void h2stream_free(struct h2stream *st)
{
    struct h2conn *c = st->conn;
    if (st->pending) {
        struct h2stream **pp = &c->pending;
        while (*pp && *pp != st)
            pp = &(*pp)->next_pending;
        if (*pp)
            *pp = st->next_pending;
    }
    if (st->s) {
        if (!st->core_done)
            stream_abort(st->s); /* reset by the client: cancel upstream work now */
        stream_free(st->s);
    }
    /* Bytes the client sent that we never forwarded still count against the
     * connection window: give them back. */
    size_t unconsumed = evbuffer_get_length(st->req_body);
    if (unconsumed && c->session)
        nghttp2_session_consume_connection(c->session, unconsumed);
    if (st->prev)
        st->prev->next = st->next;
    else
        c->streams = st->next;
    if (st->next)
        st->next->prev = st->prev;
    evbuffer_free(st->arena);
    evbuffer_free(st->req_body);
    evbuffer_free(st->resp_body);
    free(st->trailer_fields);
    free(st->trailer_arena);
    free(st->refs);
    free(st);
    c->n_streams--;
}

static int refuse(struct h2stream *st, const char *why)
{
    if (!st->bad) {
        st->bad = true;
        st->bad_why = why;
    }
    return 0;
}

static bool is_token_lower(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        uint8_t ch = p[i];
        if (ch >= 'A' && ch <= 'Z')
            return false;
        if (ch <= 0x20 || ch >= 0x7f || ch == ':')
            return false;
    }
    return n > 0;
}

static bool value_ok(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] == '\0' || p[i] == '\r' || p[i] == '\n')
            return false;
    return true;
}

static int on_begin_headers(nghttp2_session *session, const nghttp2_frame *frame, void *user)
{
    struct h2conn *c = user;
    if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0;
    struct h2stream *st = h2stream_new(c, frame->hd.stream_id);
    nghttp2_session_set_stream_user_data(session, frame->hd.stream_id, st);
    return 0;
}

static int on_header(nghttp2_session *session, const nghttp2_frame *frame, const uint8_t *name, size_t namelen,
                     const uint8_t *value, size_t valuelen, uint8_t flags, void *user)
{
    struct h2conn *c = user;
    struct h2stream *st = nghttp2_session_get_stream_user_data(session, frame->hd.stream_id);
    if (st == NULL)
        return 0;
    if (frame->headers.cat != NGHTTP2_HCAT_REQUEST) {
        /* Trailers: validated by nghttp2; not forwarded to HTTP/1.1 upstreams. */
        return 0;
    }
    const struct limits_conf *lim = &c->worker->cfg->limits;
    st->header_bytes += namelen + valuelen + 32;
    if (st->header_bytes > lim->max_header_bytes || st->n_refs >= lim->max_headers) {
        if (!st->bad)
            st->bad_status = 431;
        return refuse(st, "header list too large");
    }
    /* nghttp2 (RFC 9113 §8.2) already refuses uppercase names, connection-
     * specific fields and bad pseudo-headers; check again what an HTTP/1.1
     * upstream would read differently. */
    if (!value_ok(value, valuelen))
        return refuse(st, "CR, LF or NUL in a field value");
    if (namelen == 0 || (name[0] != ':' && !is_token_lower(name, namelen)))
        return refuse(st, "invalid field name");
    if (st->n_refs == st->cap_refs) {
        st->cap_refs = st->cap_refs ? st->cap_refs * 2 : 16;
        st->refs = co_realloc(st->refs, st->cap_refs * sizeof(*st->refs));
    }
    struct hdr_ref *r = &st->refs[st->n_refs];
    r->name_off = (uint32_t)evbuffer_get_length(st->arena);
    r->name_len = (uint32_t)namelen;
    evbuffer_add(st->arena, name, namelen);
    r->value_off = (uint32_t)evbuffer_get_length(st->arena);
    r->value_len = (uint32_t)valuelen;
    evbuffer_add(st->arena, value, valuelen);
    int idx = (int)st->n_refs++;
    if (name[0] == ':') {
        if (namelen == 7 && memcmp(name, ":method", 7) == 0)
            st->method_ref = idx;
        else if (namelen == 5 && memcmp(name, ":path", 5) == 0)
            st->path_ref = idx;
        else if (namelen == 10 && memcmp(name, ":authority", 10) == 0)
            st->authority_ref = idx;
        else if (namelen == 7 && memcmp(name, ":scheme", 7) == 0)
            st->scheme_ref = idx;
        else
            return refuse(st, "unknown pseudo-header");
    } else if (namelen == 4 && memcmp(name, "host", 4) == 0) {
        if (st->host_ref >= 0)
            return refuse(st, "more than one host field");
        st->host_ref = idx;
    } else if (namelen == 14 && memcmp(name, "content-length", 14) == 0) {
        int64_t v = 0;
        if (valuelen == 0 || valuelen > 18 || st->content_length >= 0)
            return refuse(st, "invalid content-length");
        for (size_t i = 0; i < valuelen; i++) {
            if (value[i] < '0' || value[i] > '9')
                return refuse(st, "invalid content-length");
            v = v * 10 + (value[i] - '0');
        }
        st->content_length = v;
    }
    return 0;
}

/* Request head complete: build the stream and start it. */
static void begin_request(struct h2conn *c, struct h2stream *st, bool end_stream)
{
    struct worker *w = c->worker;
    struct stream *s = stream_new(w, &h2_stream_ops, st);
    st->s = s;
    size_t alen = evbuffer_get_length(st->arena);
    s->head = co_malloc(alen + 1);
    evbuffer_remove(st->arena, s->head, alen);
    s->fields = co_malloc((st->n_refs ? st->n_refs : 1) * sizeof(*s->fields));
    size_t k = 0;
    for (size_t i = 0; i < st->n_refs; i++) {
        const struct hdr_ref *r = &st->refs[i];
        const char *name = s->head + r->name_off;
        if (name[0] == ':' || (int)i == st->host_ref)
            continue;
        if (r->name_len == 14 && memcmp(name, "content-length", 14) == 0)
            continue;
        if (r->name_len == 2 && memcmp(name, "te", 2) == 0) {
            /* Only "trailers" is allowed in HTTP/2 (nghttp2 checks); it is
             * hop-by-hop, re-sent by HTTP/2 upstreams when the client asked. */
            s->te_trailers = true;
            continue;
        }
        s->fields[k].name = name;
        s->fields[k].name_len = r->name_len;
        s->fields[k].value = s->head + r->value_off;
        s->fields[k].value_len = r->value_len;
        k++;
    }
    s->n_fields = k;
    s->proto = "HTTP/2";
    s->version_minor = 1;
    s->tls = c->tls;
    memcpy(s->client_ip, c->client_ip, sizeof(s->client_ip));

    const char *why = st->bad ? st->bad_why : NULL;
    if (!why && (st->method_ref < 0 || st->path_ref < 0 || st->scheme_ref < 0))
        why = "missing :method, :scheme or :path";
    if (st->method_ref >= 0) {
        s->method = s->head + st->refs[st->method_ref].value_off;
        s->method_len = st->refs[st->method_ref].value_len;
    }
    if (st->path_ref >= 0) {
        s->target = s->head + st->refs[st->path_ref].value_off;
        s->target_len = st->refs[st->path_ref].value_len;
        if (!why && (s->target_len == 0 || s->target[0] != '/'))
            why = "invalid :path";
    }
    /* Route by :authority; a host field must agree with it (RFC 9113 §8.3.1). */
    if (st->authority_ref >= 0) {
        s->host = s->head + st->refs[st->authority_ref].value_off;
        s->host_len = st->refs[st->authority_ref].value_len;
        if (!why && st->host_ref >= 0) {
            const struct hdr_ref *h = &st->refs[st->host_ref];
            if (h->value_len != s->host_len || strncasecmp(s->head + h->value_off, s->host, s->host_len) != 0)
                why = ":authority and host disagree";
        }
    } else if (st->host_ref >= 0) {
        s->host = s->head + st->refs[st->host_ref].value_off;
        s->host_len = st->refs[st->host_ref].value_len;
    } else if (!why) {
        why = "missing :authority and host";
    }
    if (s->host && !why) {
        for (size_t i = 0; i < s->host_len; i++) {
            char ch = s->host[i];
            if (ch <= ' ' || ch == '/' || ch == '@' || ch == '?' || ch == '#' || ch == '\\' || ch >= 0x7f) {
                why = "invalid authority";
                break;
            }
        }
    }
    s->is_head = s->method_len == 4 && memcmp(s->method, "HEAD", 4) == 0;
    if (!why && s->method_len == 7 && memcmp(s->method, "CONNECT", 7) == 0)
        why = "CONNECT is not supported";
    s->has_body = !end_stream;
    s->content_length = end_stream ? 0 : st->content_length;
    if (!why && end_stream && st->content_length > 0)
        why = "content-length does not match the DATA received";

    const char *rid = NULL;
    size_t rid_len = 0;
    for (size_t i = 0; i < s->n_fields; i++)
        if (s->fields[i].name_len == 12 && memcmp(s->fields[i].name, "x-request-id", 12) == 0) {
            rid = s->fields[i].value;
            rid_len = s->fields[i].value_len;
        }
    stream_take_request_id(s, rid, rid_len);

    if (why) {
        glitch(c, why, 1);
        METRIC_INC(w->metrics.bad_requests);
        log_info("client %s: HTTP/2 stream %d refused with 400: %s", c->client_ip, st->id, why);
        s->has_body = false;
        st->req_eof = true;
        if (st->bad_status == 431)
            stream_respond(s, 431, "request header fields too large\n");
        else
            stream_respond(s, 400, "bad request\n");
        return;
    }
    uint64_t max_body = w->cfg->limits.max_body_bytes;
    if (max_body && st->content_length >= 0 && (uint64_t)st->content_length > max_body) {
        METRIC_INC(w->metrics.bad_requests);
        s->has_body = false;
        stream_respond(s, 413, "request body too large\n");
        return;
    }
    stream_start(s);
}

static int on_frame_recv(nghttp2_session *session, const nghttp2_frame *frame, void *user)
{
    struct h2conn *c = user;
    int32_t id = frame->hd.stream_id;
    switch (frame->hd.type) {
    case NGHTTP2_PRIORITY:
        glitch(c, "PRIORITY frame", 1);
        return 0;
    case NGHTTP2_PING:
        if (!(frame->hd.flags & NGHTTP2_FLAG_ACK) && ++c->pings > 10)
            glitch(c, "PING frame", 1);
        return 0;
    case NGHTTP2_SETTINGS:
        if (!(frame->hd.flags & NGHTTP2_FLAG_ACK) && ++c->settings > 10)
            glitch(c, "SETTINGS frame", 1);
        return 0;
    case NGHTTP2_WINDOW_UPDATE:
        if (frame->window_update.window_size_increment < H2_DRIBBLE_BYTES)
            glitch(c, "tiny WINDOW_UPDATE", 1);
        return 0;
    case NGHTTP2_DATA:
        if (frame->hd.length == 0 && !(frame->hd.flags & NGHTTP2_FLAG_END_STREAM))
            glitch(c, "empty DATA frame", 1);
        break;
    case NGHTTP2_RST_STREAM:
        return 0;
    default:
        break;
    }
    struct h2stream *st = id ? nghttp2_session_get_stream_user_data(session, id) : NULL;
    if (st == NULL)
        return 0;
    bool end = (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0;
    switch (frame->hd.type) {
    case NGHTTP2_HEADERS:
        if (frame->headers.cat == NGHTTP2_HCAT_REQUEST && st->s == NULL) {
            evtimer_del(c->timer);
            begin_request(c, st, end);
            if (end)
                st->req_eof = true;
            return 0;
        }
        break; /* trailers */
    case NGHTTP2_DATA:
        break;
    default:
        return 0;
    }
    if (end && st->s) {
        st->req_eof = true;
        if (st->content_length >= 0 && st->received != (uint64_t)st->content_length) {
            /* RFC 9113 §8.1.1: malformed; never let the upstream see a short body. */
            nghttp2_submit_rst_stream(session, NGHTTP2_FLAG_NONE, id, NGHTTP2_PROTOCOL_ERROR);
            glitch(c, "content-length larger than DATA", 1);
            return 0;
        }
        st->want_body = true;
        mark(st);
    }
    return 0;
}

static int on_invalid_frame(nghttp2_session *session, const nghttp2_frame *frame, int lib_error_code, void *user)
{
    glitch(user, nghttp2_strerror(lib_error_code), 1);
    return 0;
}

/* Invalid regular fields are refused, never silently dropped: the stream
 * is reset (PROTOCOL_ERROR) and the upstream sees nothing of it. */
static int on_invalid_header(nghttp2_session *session, const nghttp2_frame *frame, const uint8_t *name, size_t namelen,
                             const uint8_t *value, size_t valuelen, uint8_t flags, void *user)
{
    struct h2conn *c = user;
    log_info("client %s: HTTP/2 stream %d: invalid header field; stream reset", c->client_ip, frame->hd.stream_id);
    glitch(c, "invalid header field", 1);
    return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
}

/* Frames of unknown types cost parsing and nothing else. nghttp2 only
 * reports extension types that are registered, so every unassigned type is
 * registered (nghttp2_option_set_user_recv_extension_type) and discarded
 * here after being charged. */
static int on_extension_chunk(nghttp2_session *session, const nghttp2_frame_hd *hd, const uint8_t *data, size_t len, void *user)
{
    return 0;
}

static int on_unpack_extension(nghttp2_session *session, void **payload, const nghttp2_frame_hd *hd, void *user)
{
    glitch(user, "unknown frame type", 1);
    *payload = NULL;
    return NGHTTP2_ERR_CANCEL; /* ignore the frame */
}

/* Every stream the server resets for a protocol reason (nghttp2's own
 * checks included: content-length, flow control, stream state) was caused
 * by the client: MadeYouReset (CVE-2025-8671) is paid for here. */
static int on_frame_send(nghttp2_session *session, const nghttp2_frame *frame, void *user)
{
    if (frame->hd.type == NGHTTP2_RST_STREAM) {
        uint32_t code = frame->rst_stream.error_code;
        if (code != NGHTTP2_NO_ERROR && code != NGHTTP2_CANCEL && code != NGHTTP2_INTERNAL_ERROR)
            glitch(user, "stream reset by the server", 1);
    }
    return 0;
}

static int on_data_chunk(nghttp2_session *session, uint8_t flags, int32_t id, const uint8_t *data, size_t len, void *user)
{
    struct h2stream *st = nghttp2_session_get_stream_user_data(session, id);
    if (st == NULL || st->s == NULL || st->core_done) {
        nghttp2_session_consume(session, id, len);
        return 0;
    }
    st->received += len;
    st->last_recv_ms = co_now_ms();
    if (st->content_length >= 0 && st->received > (uint64_t)st->content_length) {
        nghttp2_session_consume(session, id, len);
        nghttp2_submit_rst_stream(session, NGHTTP2_FLAG_NONE, id, NGHTTP2_PROTOCOL_ERROR);
        glitch(user, "DATA beyond content-length", 1);
        return 0;
    }
    evbuffer_add(st->req_body, data, len);
    st->want_body = true;
    mark(st);
    return 0;
}

static int on_stream_close(nghttp2_session *session, int32_t id, uint32_t error_code, void *user)
{
    struct h2stream *st = nghttp2_session_get_stream_user_data(session, id);
    if (st == NULL)
        return 0;
    nghttp2_session_set_stream_user_data(session, id, NULL);
    h2stream_free(st);
    struct h2conn *c = user;
    if (c->n_streams == 0 && !c->closing)
        arm_idle(c);
    return 0;
}

/* ---- connection ---- */

static void run_pending(struct h2conn *c)
{
    while (c->pending) {
        struct h2stream *st = c->pending;
        c->pending = st->next_pending;
        st->pending = false;
        st->next_pending = NULL;
        if (st->s == NULL || st->core_done)
            continue;
        if (st->want_body) {
            st->want_body = false;
            stream_on_body_readable(st->s);
        }
        if (st->want_writable && !st->core_done) {
            st->want_writable = false;
            stream_on_down_writable(st->s);
        }
    }
}

static void on_post(evutil_socket_t fd, short what, void *arg)
{
    struct h2conn *c = arg;
    if (c->dead)
        return;
    run_pending(c);
    if (flush_session(c) != CO_OK)
        conn_free(c);
}

/* nghttp2 gave up on the session (fatal error: CONTINUATION or other
 * floods, bad framing). It can no longer write, so the GOAWAY (RFC 9113
 * §6.8) is composed here; the connection closes once it is out. */
static void fatal_goaway(struct h2conn *c, int lib_error)
{
    uint32_t code = (lib_error == NGHTTP2_ERR_FLOODED || lib_error == NGHTTP2_ERR_TOO_MANY_CONTINUATIONS ||
                     lib_error == NGHTTP2_ERR_TOO_MANY_SETTINGS)
                        ? NGHTTP2_ENHANCE_YOUR_CALM
                        : NGHTTP2_PROTOCOL_ERROR;
    if (code == NGHTTP2_ENHANCE_YOUR_CALM)
        METRIC_INC(c->worker->metrics.h2_calm);
    int32_t last = nghttp2_session_get_last_proc_stream_id(c->session);
    uint8_t f[17] = {0, 0, 8, NGHTTP2_GOAWAY, 0, 0, 0, 0, 0};
    f[9] = (uint8_t)(last >> 24) & 0x7f;
    f[10] = (uint8_t)(last >> 16);
    f[11] = (uint8_t)(last >> 8);
    f[12] = (uint8_t)last;
    f[13] = (uint8_t)(code >> 24);
    f[14] = (uint8_t)(code >> 16);
    f[15] = (uint8_t)(code >> 8);
    f[16] = (uint8_t)code;
    c->dead = true;
    c->closing = true;
    bufferevent_disable(c->bev, EV_READ);
    evbuffer_add(bufferevent_get_output(c->bev), f, sizeof(f));
}

static void on_read(struct bufferevent *bev, void *arg)
{
    struct h2conn *c = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    while (evbuffer_get_length(in) > 0) {
        struct evbuffer_iovec v;
        if (evbuffer_peek(in, -1, NULL, &v, 1) < 1)
            break;
        ssize_t n = nghttp2_session_mem_recv(c->session, v.iov_base, v.iov_len);
        if (n < 0) {
            log_info("client %s: HTTP/2 connection error: %s", c->client_ip, nghttp2_strerror((int)n));
            fatal_goaway(c, (int)n);
            return;
        }
        evbuffer_drain(in, (size_t)n);
        /* PING/SETTINGS floods from a client that does not read: the
         * answers queue up inside nghttp2. Cap them. */
        if (nghttp2_session_get_outbound_queue_size(c->session) > H2_MAX_OUTBOUND_QUEUE) {
            log_warn("client %s: HTTP/2 outbound queue over %d frames (client not reading); closing", c->client_ip,
                     H2_MAX_OUTBOUND_QUEUE);
            METRIC_INC(c->worker->metrics.h2_calm);
            conn_free(c);
            return;
        }
        if (c->calm)
            break; /* GOAWAY queued: read nothing more */
    }
    run_pending(c);
    if (flush_session(c) != CO_OK)
        conn_free(c);
}

static void on_write(struct bufferevent *bev, void *arg)
{
    struct h2conn *c = arg;
    if (c->dead) {
        if (evbuffer_get_length(bufferevent_get_output(bev)) == 0)
            conn_free(c);
        return;
    }
    if (flush_session(c) != CO_OK) {
        conn_free(c);
        return;
    }
    if (c->closing && evbuffer_get_length(bufferevent_get_output(bev)) == 0 && c->n_streams == 0)
        conn_free(c);
}

static void on_event(struct bufferevent *bev, short what, void *arg)
{
    conn_free(arg);
}

/* Zero-window readers: a stream whose response waits and has not moved for
 * timeouts.send is reset, so a client that never opens its window cannot
 * pin upstream work and buffers forever. */
static void on_stall_check(evutil_socket_t fd, short what, void *arg)
{
    struct h2conn *c = arg;
    if (c->dead)
        return;
    const struct timeouts_conf *to = &c->worker->cfg->timeouts;
    uint64_t now = co_now_ms(), limit = to->send_ms;
    bool reset = false;
    for (struct h2stream *st = c->streams, *next; st; st = next) {
        next = st->next;
        if (st->s == NULL) {
            /* HTTP/2 slowloris: a header block never finished. Nothing else
             * can happen on the connection meanwhile (CONTINUATION must
             * follow), so end it. */
            if (now - st->created_ms > to->header_ms) {
                log_info("client %s: HTTP/2 request head not complete within %llu ms; GOAWAY", c->client_ip,
                         (unsigned long long)to->header_ms);
                nghttp2_session_terminate_session(c->session, NGHTTP2_NO_ERROR);
                c->closing = true;
                reset = true;
                break;
            }
            continue;
        }
        if (!st->core_done && !st->req_eof && now - st->last_recv_ms > to->body_ms) {
            /* The request body stalled: 408 if nothing was answered yet. */
            struct stream *s = st->s;
            st->last_recv_ms = now;
            st->req_eof = true;
            METRIC_INC(c->worker->metrics.bad_requests);
            log_info("client %s: HTTP/2 stream %d: request body stalled for %llu ms", c->client_ip, st->id,
                     (unsigned long long)to->body_ms);
            if (!s->resp_started) {
                stream_abort(s);
                s->finished = false;
                stream_respond(s, 408, "request body not received in time\n");
            } else {
                nghttp2_submit_rst_stream(c->session, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_CANCEL);
            }
            reset = true;
            continue;
        }
        if (evbuffer_get_length(st->resp_body) == 0)
            continue;
        if (st->last_send_ms == 0)
            st->last_send_ms = now;
        if (now - st->last_send_ms > limit && nghttp2_session_get_stream_remote_window_size(c->session, st->id) <= 0) {
            log_info("client %s: HTTP/2 stream %d: no flow-control window for %llu ms; stream reset", c->client_ip, st->id,
                     (unsigned long long)limit);
            nghttp2_submit_rst_stream(c->session, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_CANCEL);
            st->last_send_ms = now;
            reset = true;
            glitch(c, "zero-window stream", 10);
        }
    }
    if (reset && flush_session(c) != CO_OK) {
        conn_free(c);
        return;
    }
    struct timeval tv = {H2_STALL_CHECK_MS / 1000, (H2_STALL_CHECK_MS % 1000) * 1000};
    evtimer_add(c->stall, &tv);
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    struct h2conn *c = arg;
    if (c->dead) {
        conn_free(c);
        return;
    }
    if (c->n_streams > 0)
        return;
    /* Idle: say goodbye properly, then close once it is written. */
    c->closing = true;
    nghttp2_session_terminate_session(c->session, NGHTTP2_NO_ERROR);
    if (flush_session(c) != CO_OK || evbuffer_get_length(bufferevent_get_output(c->bev)) == 0)
        conn_free(c);
}

static void conn_free(struct h2conn *c)
{
    struct worker *w = c->worker;
    worker_conn_unlink(&c->link);
    /* nghttp2_session_del() frees its streams without calling
     * on_stream_close: end ours first (upstream work is cancelled). */
    nghttp2_session *session = c->session;
    c->session = NULL;
    while (c->streams) {
        struct h2stream *st = c->streams;
        h2stream_free(st);
    }
    nghttp2_session_del(session);
    event_free(c->post);
    event_free(c->timer);
    event_free(c->stall);
    bufferevent_free(c->bev);
    free(c);
    METRIC_SUB(w->metrics.conns_h2, 1);
    worker_conn_closed(w);
}

static ssize_t on_send_unused(nghttp2_session *session, const uint8_t *data, size_t length, int flags, void *user)
{
    return NGHTTP2_ERR_CALLBACK_FAILURE; /* we use mem_send */
}

/* The worker drains: GOAWAY with the last stream we took; streams in flight
 * finish, then the session has nothing to read or write and closes. */
static void on_drain(struct conn_link *link)
{
    struct h2conn *c = (struct h2conn *)link;
    if (c->dead)
        return;
    c->closing = true;
    nghttp2_submit_goaway(c->session, NGHTTP2_FLAG_NONE, nghttp2_session_get_last_proc_stream_id(c->session), NGHTTP2_NO_ERROR,
                          NULL, 0);
    if (flush_session(c) != CO_OK || (c->n_streams == 0 && evbuffer_get_length(bufferevent_get_output(c->bev)) == 0))
        conn_free(c);
}

static void on_kill(struct conn_link *link)
{
    conn_free((struct h2conn *)link);
}

void h2conn_start(struct worker *w, struct bufferevent *bev, const char *client_ip, bool tls)
{
    struct h2conn *c = co_calloc(1, sizeof(*c));
    METRIC_INC(w->metrics.conns_h2);
    worker_conn_link(w, &c->link, on_drain, on_kill);
    c->worker = w;
    c->bev = bev;
    c->tls = tls;
    co_strlcpy(c->client_ip, client_ip, sizeof(c->client_ip));
    c->post = event_new(w->base, -1, 0, on_post, c);
    c->timer = evtimer_new(w->base, on_timer, c);
    c->stall = evtimer_new(w->base, on_stall_check, c);
    c->glitch_tokens = H2_GLITCH_BURST;
    c->glitch_refilled_ms = co_now_ms();
    struct timeval stv = {H2_STALL_CHECK_MS / 1000, (H2_STALL_CHECK_MS % 1000) * 1000};
    evtimer_add(c->stall, &stv);

    nghttp2_session_callbacks *cbs;
    nghttp2_session_callbacks_new(&cbs);
    nghttp2_session_callbacks_set_send_callback(cbs, on_send_unused);
    nghttp2_session_callbacks_set_on_begin_headers_callback(cbs, on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(cbs, on_header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, on_frame_recv);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, on_data_chunk);
    nghttp2_session_callbacks_set_on_stream_close_callback(cbs, on_stream_close);
    nghttp2_session_callbacks_set_on_invalid_frame_recv_callback(cbs, on_invalid_frame);
    nghttp2_session_callbacks_set_on_invalid_header_callback(cbs, on_invalid_header);
    nghttp2_session_callbacks_set_on_extension_chunk_recv_callback(cbs, on_extension_chunk);
    nghttp2_session_callbacks_set_unpack_extension_callback(cbs, on_unpack_extension);
    nghttp2_session_callbacks_set_on_frame_send_callback(cbs, on_frame_send);

    nghttp2_option *opt;
    nghttp2_option_new(&opt);
    nghttp2_option_set_no_auto_window_update(opt, 1);
    /* Abuse limits nghttp2 1.52 (Debian 12) enforces when asked; set them
     * explicitly rather than rely on defaults. */
    nghttp2_option_set_max_outbound_ack(opt, 1000);
    nghttp2_option_set_max_settings(opt, 32);
    nghttp2_option_set_max_continuations(opt, 8);
    nghttp2_option_set_stream_reset_rate_limit(opt, 1000, 33);
    nghttp2_option_set_max_send_header_block_length(opt, 64 * 1024);
    for (unsigned type = 0x0a; type <= 0xff; type++)
        if (type != 0x0a /* ALTSVC */ && type != 0x0c /* ORIGIN */ && type != 0x10 /* PRIORITY_UPDATE */)
            nghttp2_option_set_user_recv_extension_type(opt, (uint8_t)type);
    nghttp2_session_server_new2(&c->session, cbs, c, opt);
    nghttp2_option_del(opt);
    nghttp2_session_callbacks_del(cbs);

    const struct limits_conf *lim = &w->cfg->limits;
    nghttp2_settings_entry iv[] = {
        {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, H2_MAX_STREAMS},
        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, H2_STREAM_WINDOW},
        {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, lim->max_header_bytes},
        {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
    };
    nghttp2_submit_settings(c->session, NGHTTP2_FLAG_NONE, iv, CO_ARRAY_SIZE(iv));
    nghttp2_session_set_local_window_size(c->session, NGHTTP2_FLAG_NONE, 0, H2_CONN_WINDOW);

    bufferevent_setcb(bev, on_read, on_write, on_event, c);
    bufferevent_setwatermark(bev, EV_READ, 0, 0);
    bufferevent_setwatermark(bev, EV_WRITE, H2_OUT_HIGH / 2, 0);
    uint64_t send_ms = w->cfg->timeouts.send_ms;
    struct timeval wtv = {(time_t)(send_ms / 1000), (suseconds_t)((send_ms % 1000) * 1000)};
    bufferevent_set_timeouts(bev, NULL, &wtv); /* a client that stops reading entirely */
    bufferevent_enable(bev, EV_READ | EV_WRITE);
    uint64_t ms = w->cfg->timeouts.header_ms;
    struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)((ms % 1000) * 1000)};
    evtimer_add(c->timer, &tv);
    if (flush_session(c) != CO_OK) {
        conn_free(c);
        return;
    }
    /* Bytes already read (the client preface, maybe more) are processed now. */
    if (evbuffer_get_length(bufferevent_get_input(bev)) > 0)
        on_read(bev, c);
}
