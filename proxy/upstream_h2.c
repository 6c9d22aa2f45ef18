/*
 * upstream_h2.c - HTTP/2 to upstream endpoints: nghttp2 client sessions kept
 * in a worker's endpoint pools, one HTTP/2 stream per exchange.
 *
 * The same discipline as the downstream side (conn_h2.c):
 *  - nghttp2 is driven only from the session's own event callbacks (read,
 *    write, post, timers). nghttp2 callbacks only record what happened on the
 *    per-stream object and queue it; the queued work, which calls the stream
 *    (stream_up_*), runs after nghttp2_session_mem_recv() has returned. What
 *    the stream calls here (send_body, resume, release) only submits frames
 *    and schedules `post`; nothing here sends from inside a stream callback.
 *  - A per-stream object lives as long as the exchange or its HTTP/2 stream,
 *    whichever ends last: release() detaches it and, while the stream is still
 *    open on the wire, sends RST_STREAM(CANCEL) and keeps the object until
 *    on_stream_close. A session is freed only from its own event callbacks
 *    (settle()), once no stream is left; `busy` asserts that.
 *
 * Requests are submitted only after the upstream's SETTINGS arrived, so its
 * SETTINGS_MAX_CONCURRENT_STREAMS is known before the first HEADERS (nghttp2
 * queues requests beyond it). Until then a connecting session is assumed to
 * take H2U_MAX_STREAMS. A session full to min(peer limit, 100) makes the
 * next exchange open another connection.
 *
 * Failures: a stream the upstream never processed (REFUSED_STREAM, above a
 * GOAWAY's last stream id, or never written before the connection broke) is
 * reported retryable, so the stream retries it once on a fresh connection;
 * anything else answers 502 (504 on the first-byte timeout), or aborts the
 * client's response once its head went out. Response trailers are passed on
 * (stream_up_trailers) just before the end.
 *
 * Flow control: automatic WINDOW_UPDATEs are off. Response DATA is released
 * from the connection window as soon as it is buffered here, and from its
 * stream window only once the stream handed it to the downstream. A slow
 * client so holds back its own stream at the upstream (at most one stream
 * window, 256 KiB, waits here) without stalling the connection's other
 * streams, which a connection window held by one slow reader would do.
 */
#include "upstream_h2.h"

#include <assert.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <nghttp2/nghttp2.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>

#include "common.h"
#include "h2util.h"
#include "pool.h"
#include "stream.h"
#include "upconnect.h"
#include "upstream.h"
#include "worker.h"

/* Our own cap on concurrent streams per session, whatever the peer allows. */
#define H2U_MAX_STREAMS 100
/* Receive windows we advertise (RFC 9113 §6.9.2). */
#define H2U_STREAM_WINDOW (256 * 1024)
#define H2U_CONN_WINDOW (1024 * 1024)
/* Session output queued in the socket buffer before we stop producing more. */
#define H2U_OUT_HIGH (256 * 1024)
/* Response head (decoded field bytes, RFC 9113 §6.5.2 accounting) refused above this: 502. */
#define H2U_MAX_HEAD (64 * 1024)
/* Request heads the downstream accepted (limits.max_header_bytes <= 16 MiB)
 * are never refused by nghttp2 itself. */
#define H2U_MAX_SEND_HEAD ((16u << 20) + 65536)

struct h2session;

/* Where a response field's bytes sit in h2ustream.fields_buf. */
struct field_ref {
    uint32_t name_off, name_len, value_off, value_len;
};

/* One exchange on a session: what the stream holds as s->up. */
struct h2ustream {
    struct upstream base;        /* first: the stream sees only this */
    struct h2session *sess;      /* NULL after upstream_h2_free_all() */
    struct stream *s;            /* NULL once released or failed */
    TAILQ_ENTRY(h2ustream) link; /* sess->streams */
    int32_t id;                  /* HTTP/2 stream id, 0 before submit */
    struct event *timer;         /* response head, then body idle timeout */
    uint64_t timeout_ms;         /* cluster first_byte_timeout_ms (0 = none) */
    struct evbuffer *req_body;   /* request payload not yet framed */
    struct evbuffer *resp_body;  /* response payload not yet handed to the stream */
    char *fields_buf;            /* response head and trailer field bytes */
    size_t fields_len, fields_cap;
    struct field_ref *refs; /* head fields */
    size_t n_refs, cap_refs;
    struct field_ref *trefs; /* trailer fields */
    size_t n_trefs, cap_trefs;
    size_t head_bytes;      /* of the head, then of the trailers */
    int status;             /* :status of the response being collected */
    int64_t content_length; /* from the response, -1 if absent */
    uint32_t close_code;    /* RST_STREAM / GOAWAY code the stream closed with */
    int not_sent_error;     /* nghttp2 error when the request HEADERS could not be sent */
    bool submitted;         /* handed to nghttp2 (id valid) */
    bool sent;              /* request HEADERS went out */
    bool got_frame;         /* the upstream sent something on this stream */
    bool reused_idle;       /* attached to a session that was idle after earlier exchanges */
    bool req_eof;           /* whole request body queued */
    bool req_deferred;      /* data provider returned NGHTTP2_ERR_DEFERRED */
    bool req_high;          /* req_body went above half the high-water mark */
    bool want_writable;     /* tell the stream it may send more body */
    bool in_trailers;       /* the HEADERS being received are trailers */
    bool head_ready;        /* final response head received */
    bool head_sent;         /* ... and handed to the stream */
    bool head_bad;          /* response head refused (too large, 101) */
    bool resp_eof;          /* END_STREAM received */
    bool closed;            /* nghttp2 closed the stream */
    bool paused;            /* downstream full: deliver nothing until resume */
    bool timed_out;
    bool in_process; /* process() is running for it: free later */
    bool queued;     /* in sess->pending */
    struct h2ustream *next_pending;
};

/* One HTTP/2 connection to an endpoint. */
struct h2session {
    LIST_ENTRY(h2session) link; /* ep->h2_sessions */
    struct worker *worker;
    struct ep_pool *ep;
    struct upconnect *connecting; /* TCP/TLS setup under way */
    struct bufferevent *bev;      /* NULL while connecting and once dead */
    nghttp2_session *ngh;         /* NULL once dead */
    struct event *post;           /* deferred work: queued streams, output */
    struct event *idle_timer;
    TAILQ_HEAD(, h2ustream) streams; /* every per-stream object on it */
    unsigned n_streams;
    struct h2ustream *pending; /* streams with work queued, oldest first */
    struct h2ustream *pending_tail;
    unsigned busy;           /* our code is running inside it: do not free */
    unsigned long exchanges; /* requests submitted */
    bool tls;                /* cluster TLS: :scheme https */
    bool auto_proto;         /* protocol: auto (ALPN may say http/1.1 now) */
    bool ready;              /* connected and the peer's SETTINGS arrived */
    bool draining;           /* no new streams (GOAWAY either way, ids exhausted) */
    bool closing;            /* GOAWAY sent because idle: free once written */
    bool dead;               /* connection gone: free once the streams are done */
    char addr[64];           /* "ip:port", "" while connecting */
    uint64_t born_ms;        /* health_now_ms() at creation (max_connection_age) */
};

static void on_read(struct bufferevent *bev, void *arg);
static void on_write(struct bufferevent *bev, void *arg);
static void on_event(struct bufferevent *bev, short what, void *arg);
static void on_post(evutil_socket_t fd, short what, void *arg);
static void on_idle(evutil_socket_t fd, short what, void *arg);
static void on_stream_timer(evutil_socket_t fd, short what, void *arg);
static void up_send_body(struct upstream *u, struct evbuffer *buf, bool eof);
static size_t up_pending(struct upstream *u);
static void up_resume(struct upstream *u);
static void up_release(struct upstream *u, bool reusable);
static int settle(struct h2session *sess);

static const struct upstream_ops h2u_ops = {
    .send_body = up_send_body,
    .pending = up_pending,
    .resume = up_resume,
    .release = up_release,
};

static void arm(struct event *ev, uint64_t ms)
{
    struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)((ms % 1000) * 1000)};
    evtimer_add(ev, &tv);
}

static void schedule(struct h2session *sess)
{
    event_active(sess->post, EV_TIMEOUT, 1);
}

/* Queue st for process() in the next run_pending(). */
static void mark(struct h2ustream *st)
{
    struct h2session *sess = st->sess;
    if (sess == NULL)
        return;
    if (!st->queued) {
        st->queued = true;
        st->next_pending = NULL;
        if (sess->pending_tail)
            sess->pending_tail->next_pending = st;
        else
            sess->pending = st;
        sess->pending_tail = st;
    }
    schedule(sess);
}

/* ---- per-stream objects ---- */

static struct h2ustream *h2ustream_new(struct h2session *sess, struct stream *s)
{
    struct h2ustream *st = co_calloc(1, sizeof(*st));
    st->base.ops = &h2u_ops;
    st->sess = sess;
    st->s = s;
    st->req_body = evbuffer_new();
    st->resp_body = evbuffer_new();
    st->content_length = -1;
    st->timeout_ms = s->cluster->first_byte_timeout_ms;
    st->timer = evtimer_new(sess->worker->base, on_stream_timer, st);
    st->reused_idle = sess->exchanges > 0 && sess->n_streams == 0;
    TAILQ_INSERT_TAIL(&sess->streams, st, link);
    sess->n_streams++;
    s->up = &st->base;
    if (sess->addr[0])
        co_strlcpy(s->endpoint, sess->addr, sizeof(s->endpoint));
    return st;
}

static void h2ustream_free(struct h2ustream *st)
{
    struct h2session *sess = st->sess;
    if (sess) {
        if (st->queued) {
            struct h2ustream **pp = &sess->pending, *prev = NULL;
            while (*pp && *pp != st) {
                prev = *pp;
                pp = &(*pp)->next_pending;
            }
            if (*pp)
                *pp = st->next_pending;
            if (sess->pending_tail == st)
                sess->pending_tail = prev;
        }
        TAILQ_REMOVE(&sess->streams, st, link);
        sess->n_streams--;
        if (sess->ngh && st->submitted && !st->closed)
            nghttp2_session_set_stream_user_data(sess->ngh, st->id, NULL);
    }
    if (st->timer)
        event_free(st->timer);
    evbuffer_free(st->req_body);
    evbuffer_free(st->resp_body);
    free(st->fields_buf);
    free(st->refs);
    free(st->trefs);
    free(st);
}

/* Can a detached st go now? Not while its HTTP/2 stream is open: nghttp2
 * still points at it (user data, data provider) until on_stream_close. */
static bool can_free(const struct h2ustream *st)
{
    return st->sess == NULL || st->sess->ngh == NULL || !st->submitted || st->closed;
}

/* The exchange is over for st (released or failed): stop the stream on the
 * wire if it is still open, and free st when nghttp2 is done with it. */
static void detach(struct h2ustream *st)
{
    struct h2session *sess = st->sess;
    st->s = NULL;
    if (st->timer)
        evtimer_del(st->timer);
    if (sess && sess->ngh && st->submitted && !st->closed) {
        /* A client reset or an abandoned exchange cancels upstream work at
         * once (RFC 9113 §8.7: CANCEL). */
        nghttp2_submit_rst_stream(sess->ngh, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_CANCEL);
        schedule(sess);
    }
    evbuffer_drain(st->req_body, evbuffer_get_length(st->req_body));
    evbuffer_drain(st->resp_body, evbuffer_get_length(st->resp_body));
    if (!can_free(st)) {
        return; /* freed on close */
    }
    if (st->in_process) {
        return; /* process() frees it when it returns */
    }
    h2ustream_free(st);
    if (sess)
        schedule(sess); /* the session may now be idle */
}

/* Detach st from its stream and report a failure to the stream. */
static void fail(struct h2ustream *st, int status, const char *why, enum up_fail kind)
{
    struct stream *s = st->s;
    if (s == NULL)
        return;
    detach(st);
    s->up = NULL;
    stream_up_failed(s, status, why, kind);
}

/* ---- request ---- */

static bool skip_request_field(const struct h1_header *f)
{
    if (h1_is_hop_by_hop(f->name, f->name_len))
        return true; /* RFC 9113 §8.2.2: connection-specific fields are malformed in HTTP/2 */
    switch (f->name_len) {
    case 4:
        return co_strieq(f->name, 4, "host"); /* :authority carries it (RFC 9113 §8.3.1) */
    case 14:
        return co_strieq(f->name, 14, "content-length");
    default:
        return false;
    }
}

static nghttp2_nv nv(const char *name, size_t name_len, const char *value, size_t value_len)
{
    return (nghttp2_nv){(uint8_t *)name, (uint8_t *)value, name_len, value_len, NGHTTP2_NV_FLAG_NONE};
}

#define NV_LIT(name, value, value_len) nv(name, sizeof(name) - 1, value, value_len)

static ssize_t on_read_body(nghttp2_session *session, int32_t id, uint8_t *buf, size_t length, uint32_t *flags,
                            nghttp2_data_source *source, void *user)
{
    struct h2ustream *st = source->ptr;
    if (st->s == NULL) {
        /* Released: RST_STREAM is queued and will close the stream. */
        st->req_deferred = true;
        return NGHTTP2_ERR_DEFERRED;
    }
    size_t avail = evbuffer_get_length(st->req_body);
    size_t n = avail < length ? avail : length;
    if (n)
        evbuffer_remove(st->req_body, buf, n);
    if (st->req_high && evbuffer_get_length(st->req_body) < STREAM_HIGH_WATER / 2) {
        st->req_high = false;
        st->want_writable = true;
        mark(st);
    }
    if (evbuffer_get_length(st->req_body) == 0) {
        if (st->req_eof) {
            *flags |= NGHTTP2_DATA_FLAG_EOF;
            return (ssize_t)n;
        }
        if (n == 0) {
            st->req_deferred = true;
            return NGHTTP2_ERR_DEFERRED;
        }
    }
    return (ssize_t)n;
}

/* Hand st's request to nghttp2: pseudo-headers, the client's end-to-end
 * fields (lowercased, RFC 9113 §8.2.1) and the proxy's fields, as
 * upstream_h1.c's write_head does. Returns CO_OK or CO_ERROR (*why set). */
static int submit(struct h2session *sess, struct h2ustream *st, const char **why)
{
    struct stream *s = st->s;
    const struct cluster_conf *cl = s->cluster;
    size_t cap = s->n_fields + 12;
    nghttp2_nv *nva = co_malloc(cap * sizeof(*nva));
    size_t names_len = 0;
    for (size_t i = 0; i < s->n_fields; i++)
        names_len += s->fields[i].name_len;
    char *names = co_malloc(names_len + 1);
    struct evbuffer *scratch = evbuffer_new();
    const char *xff = NULL, *via = NULL;
    size_t xff_len = 0, via_len = 0, k = 0, off = 0;

    const char *authority = cl->host ? cl->host : s->host;
    size_t authority_len = cl->host ? strlen(cl->host) : s->host_len;
    if (authority == NULL || authority_len == 0) {
        authority = sess->ep->endpoint_name;
        authority_len = strlen(authority);
    }
    nva[k++] = NV_LIT(":method", s->method, s->method_len);
    nva[k++] = sess->tls ? NV_LIT(":scheme", "https", 5) : NV_LIT(":scheme", "http", 4);
    nva[k++] = NV_LIT(":authority", authority, authority_len);
    nva[k++] = NV_LIT(":path", s->target, s->target_len);
    for (size_t i = 0; i < s->n_fields; i++) {
        const struct h1_header *f = &s->fields[i];
        if (skip_request_field(f))
            continue;
        int which = stream_proxy_field(f);
        if (which == 15 && xff == NULL) {
            xff = f->value;
            xff_len = f->value_len;
        } else if (which == 3 && via == NULL) {
            via = f->value;
            via_len = f->value_len;
        }
        if (which)
            continue;
        for (size_t j = 0; j < f->name_len; j++) {
            char ch = f->name[j];
            names[off + j] = (ch >= 'A' && ch <= 'Z') ? (char)(ch + 32) : ch;
        }
        nva[k++] = nv(names + off, f->name_len, f->value, f->value_len);
        off += f->name_len;
    }
    /* RFC 9113 §8.2.2: "te" may only say "trailers" (gRPC needs it). */
    if (s->te_trailers)
        nva[k++] = NV_LIT("te", "trailers", 8);

    /* The proxy's values go into one scratch buffer; offsets are taken
     * after it is complete (an evbuffer may move its bytes while growing). */
    size_t xff_off = evbuffer_get_length(scratch);
    if (xff_len) {
        evbuffer_add(scratch, xff, xff_len);
        ADD_LIT(scratch, ", ");
    }
    evbuffer_add(scratch, s->client_ip, strlen(s->client_ip));
    size_t via_off = evbuffer_get_length(scratch);
    if (via_len) {
        evbuffer_add(scratch, via, via_len);
        ADD_LIT(scratch, ", ");
    }
    /* RFC 9110 §7.6.3: received-protocol, then our pseudonym. */
    const char *me = stream_via(s);
    evbuffer_add(scratch, me, strlen(me));
    size_t cl_off = evbuffer_get_length(scratch);
    bool send_cl = s->has_body && s->content_length >= 0;
    if (send_cl)
        evbuffer_add_printf(scratch, "%lld", (long long)s->content_length);
    size_t end = evbuffer_get_length(scratch);
    const char *p = (const char *)evbuffer_pullup(scratch, -1);
    nva[k++] = NV_LIT("x-forwarded-for", p + xff_off, via_off - xff_off);
    nva[k++] = s->tls ? NV_LIT("x-forwarded-proto", "https", 5) : NV_LIT("x-forwarded-proto", "http", 4);
    nva[k++] = NV_LIT("x-forwarded-host", s->host ? s->host : "", s->host ? s->host_len : 0);
    nva[k++] = NV_LIT("via", p + via_off, cl_off - via_off);
    nva[k++] = NV_LIT("x-request-id", s->request_id, strlen(s->request_id));
    if (send_cl)
        nva[k++] = NV_LIT("content-length", p + cl_off, end - cl_off);
    assert(k <= cap);

    nghttp2_data_provider prd = {.source.ptr = st, .read_callback = on_read_body};
    int32_t id = nghttp2_submit_request(sess->ngh, NULL, nva, k, s->has_body ? &prd : NULL, st);
    evbuffer_free(scratch);
    free(names);
    free(nva);
    if (id < 0) {
        *why = nghttp2_strerror(id);
        return CO_ERROR;
    }
    st->id = id;
    st->submitted = true;
    sess->exchanges++;
    if (!s->has_body)
        st->req_eof = true;
    return CO_OK;
}

/* ---- stream ops ---- */

static void up_send_body(struct upstream *u, struct evbuffer *buf, bool eof)
{
    struct h2ustream *st = (struct h2ustream *)u;
    struct h2session *sess = st->sess;
    if (buf && evbuffer_get_length(buf))
        evbuffer_add_buffer(st->req_body, buf);
    if (eof)
        st->req_eof = true;
    if (evbuffer_get_length(st->req_body) >= STREAM_HIGH_WATER / 2)
        st->req_high = true;
    if (sess == NULL || sess->ngh == NULL)
        return;
    if (st->req_deferred && st->submitted && !st->closed) {
        st->req_deferred = false;
        nghttp2_session_resume_data(sess->ngh, st->id);
    }
    schedule(sess);
}

static size_t up_pending(struct upstream *u)
{
    struct h2ustream *st = (struct h2ustream *)u;
    return evbuffer_get_length(st->req_body);
}

static void up_resume(struct upstream *u)
{
    struct h2ustream *st = (struct h2ustream *)u;
    if (!st->paused)
        return;
    st->paused = false;
    if (st->timer && st->timeout_ms && !st->resp_eof)
        arm(st->timer, st->timeout_ms);
    mark(st);
}

static void up_release(struct upstream *u, bool reusable)
{
    /* The session's reuse does not depend on one stream: a stream that did
     * not end cleanly is reset on its own (detach). */
    detach((struct h2ustream *)u);
}

/* ---- delivering to the stream (outside nghttp2 callbacks) ---- */

/* The collected fields as the stream takes them (caller frees). */
static struct h1_header *field_list(const struct h2ustream *st, const struct field_ref *refs, size_t n)
{
    struct h1_header *fields = co_malloc((n ? n : 1) * sizeof(*fields));
    for (size_t i = 0; i < n; i++) {
        fields[i].name = st->fields_buf + refs[i].name_off;
        fields[i].name_len = refs[i].name_len;
        fields[i].value = st->fields_buf + refs[i].value_off;
        fields[i].value_len = refs[i].value_len;
    }
    return fields;
}

static void deliver_head(struct h2ustream *st)
{
    struct h1_header *fields = field_list(st, st->refs, st->n_refs);
    int64_t cl = st->content_length;
    if (st->status == 204 || st->status == 304)
        cl = -1;
    st->head_sent = true;
    stream_up_head(st->s, st->status, fields, st->n_refs, cl);
    free(fields);
}

/* Why a stream that closed before its response ended failed, and whether
 * the exchange may be retried (RFC 9113 §8.7: REFUSED_STREAM means the
 * request was not processed; so does a HEADERS that never went out). */
static void fail_closed(struct h2session *sess, struct h2ustream *st)
{
    char why[240];
    struct stream *s = st->s;
    enum up_fail retry = UPF_FATAL;
    if (st->head_sent) {
        snprintf(why, sizeof(why), "upstream %s reset the stream in the response body (%s)", sess->addr,
                 nghttp2_http2_strerror(st->close_code));
    } else if (st->head_bad) {
        stream_up_count(sess->worker, s, UPC_BAD_RESPONSE);
        snprintf(why, sizeof(why), "response head from %s refused: %s", sess->addr,
                 st->status == 101 ? "101 is not allowed in HTTP/2" : "larger than 64 KiB or too many fields");
    } else if (st->not_sent_error && st->not_sent_error != NGHTTP2_ERR_START_STREAM_NOT_ALLOWED) {
        snprintf(why, sizeof(why), "request to %s could not be sent: %s", sess->addr, nghttp2_strerror(st->not_sent_error));
    } else if (st->close_code == NGHTTP2_REFUSED_STREAM) {
        retry = UPF_UNSENT; /* RFC 9113 §8.7: not processed */
        snprintf(why, sizeof(why), "upstream %s refused the stream (%s)", sess->addr,
                 st->sent ? "REFUSED_STREAM or beyond GOAWAY's last stream" : "GOAWAY before it was sent");
    } else {
        stream_up_count(sess->worker, s, UPC_BAD_RESPONSE);
        snprintf(why, sizeof(why), "upstream %s reset the stream before the response head (%s)", sess->addr,
                 nghttp2_http2_strerror(st->close_code));
        retry = UPF_MAYBE_SENT;
    }
    fail(st, 502, why, retry);
}

/* Run what nghttp2 callbacks and stream ops queued for st. */
static void process(struct h2session *sess, struct h2ustream *st)
{
    char why[200];
    st->in_process = true;
    if (st->s == NULL)
        goto out;
    if (!st->submitted) {
        const char *err = NULL;
        if (!sess->ready)
            goto out; /* connecting, or waiting for the peer's SETTINGS */
        if (submit(sess, st, &err) != CO_OK) {
            snprintf(why, sizeof(why), "cannot start an HTTP/2 stream to %s: %s", sess->addr, err);
            sess->draining = true;
            fail(st, 502, why, UPF_UNSENT);
            goto out;
        }
        stream_up_connected(st->s); /* may send body, or release st */
        if (st->s == NULL)
            goto out;
    }
    if (st->timed_out) {
        stream_up_count(sess->worker, st->s, UPC_TIMEOUT);
        snprintf(why, sizeof(why), "%s from %s timed out after %llu ms", st->head_sent ? "response body" : "response head",
                 sess->addr, (unsigned long long)st->timeout_ms);
        fail(st, 504, why, UPF_FATAL);
        goto out;
    }
    if (st->closed && !st->resp_eof) {
        fail_closed(sess, st);
        goto out;
    }
    if (st->head_ready && !st->head_sent) {
        deliver_head(st);
        if (st->s == NULL)
            goto out;
    }
    if (st->head_sent && !st->paused) {
        size_t n = evbuffer_get_length(st->resp_body);
        if (n) {
            bool more = stream_up_data(st->s, st->resp_body);
            /* Delivered: the upstream may send this much more on the stream. */
            if (sess->ngh && !st->closed) {
                nghttp2_session_consume_stream(sess->ngh, st->id, n);
                schedule(sess);
            }
            if (!more) {
                st->paused = true;
                evtimer_del(st->timer); /* the client is slow, not the upstream */
            }
            if (st->s == NULL)
                goto out;
        }
    }
    if (st->head_sent && st->resp_eof && evbuffer_get_length(st->resp_body) == 0) {
        evtimer_del(st->timer);
        if (st->n_trefs) {
            /* gRPC status and the like (RFC 9110 §6.5). */
            struct h1_header *fields = field_list(st, st->trefs, st->n_trefs);
            size_t n = st->n_trefs;
            st->n_trefs = 0;
            stream_up_trailers(st->s, fields, n);
            free(fields);
            if (st->s == NULL)
                goto out;
        }
        stream_up_end(st->s); /* releases st */
        goto out;
    }
    if (st->want_writable) {
        st->want_writable = false;
        stream_up_writable(st->s);
    }
out:
    st->in_process = false;
    if (st->s == NULL && can_free(st))
        h2ustream_free(st);
}

static void run_pending(struct h2session *sess)
{
    sess->busy++;
    while (sess->pending) {
        struct h2ustream *st = sess->pending;
        sess->pending = st->next_pending;
        if (sess->pending == NULL)
            sess->pending_tail = NULL;
        st->queued = false;
        st->next_pending = NULL;
        process(sess, st);
    }
    sess->busy--;
}

/* ---- nghttp2 callbacks: record and queue only ---- */

static struct h2ustream *stream_of(nghttp2_session *ngh, int32_t id)
{
    return id > 0 ? nghttp2_session_get_stream_user_data(ngh, id) : NULL;
}

static int on_begin_headers(nghttp2_session *ngh, const nghttp2_frame *frame, void *user)
{
    struct h2ustream *st = stream_of(ngh, frame->hd.stream_id);
    if (st == NULL || frame->hd.type != NGHTTP2_HEADERS)
        return 0;
    st->got_frame = true;
    if (st->head_ready) {
        st->in_trailers = true;
        st->head_bytes = 0;
        return 0;
    }
    /* A new (final or interim) response head: start collecting afresh. */
    st->n_refs = 0;
    st->fields_len = 0;
    st->head_bytes = 0;
    st->status = 0;
    st->content_length = -1;
    return 0;
}

static void keep_bytes(struct h2ustream *st, const uint8_t *p, size_t n, uint32_t *off)
{
    if (st->fields_len + n > st->fields_cap) {
        size_t cap = st->fields_cap ? st->fields_cap : 1024;
        while (cap < st->fields_len + n)
            cap *= 2;
        st->fields_buf = co_realloc(st->fields_buf, cap);
        st->fields_cap = cap;
    }
    memcpy(st->fields_buf + st->fields_len, p, n);
    *off = (uint32_t)st->fields_len;
    st->fields_len += n;
}

static void keep_field(struct h2ustream *st, struct field_ref **refs, size_t *n, size_t *cap, const uint8_t *name, size_t namelen,
                       const uint8_t *value, size_t valuelen)
{
    if (*n == *cap) {
        *cap = *cap ? *cap * 2 : 16;
        *refs = co_realloc(*refs, *cap * sizeof(**refs));
    }
    struct field_ref *r = &(*refs)[(*n)++];
    keep_bytes(st, name, namelen, &r->name_off);
    r->name_len = (uint32_t)namelen;
    keep_bytes(st, value, valuelen, &r->value_off);
    r->value_len = (uint32_t)valuelen;
}

static int on_header(nghttp2_session *ngh, const nghttp2_frame *frame, const uint8_t *name, size_t namelen, const uint8_t *value,
                     size_t valuelen, uint8_t flags, void *user)
{
    struct h2ustream *st = stream_of(ngh, frame->hd.stream_id);
    if (st == NULL || st->s == NULL)
        return 0;
    st->head_bytes += namelen + valuelen + 32;
    if (st->head_bytes > H2U_MAX_HEAD || (st->in_trailers ? st->n_trefs : st->n_refs) >= H1_MAX_HEADERS) {
        st->head_bad = true;
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE; /* resets the stream */
    }
    if (st->in_trailers) {
        /* nghttp2 refused pseudo-headers here; framing and routing fields
         * have no place in trailers (RFC 9110 §6.5.1). */
        if (h1_is_hop_by_hop((const char *)name, namelen) || (namelen == 14 && memcmp(name, "content-length", 14) == 0))
            return 0;
        keep_field(st, &st->trefs, &st->n_trefs, &st->cap_trefs, name, namelen, value, valuelen);
        return 0;
    }
    if (namelen > 0 && name[0] == ':') {
        /* nghttp2 checked the pseudo-headers (RFC 9113 §8.3.2). */
        if (namelen == 7 && memcmp(name, ":status", 7) == 0 && valuelen == 3)
            st->status = (value[0] - '0') * 100 + (value[1] - '0') * 10 + (value[2] - '0');
        return 0;
    }
    if (namelen == 14 && memcmp(name, "content-length", 14) == 0) {
        /* Validated by nghttp2, which also checks it against the DATA. */
        int64_t v = 0;
        for (size_t i = 0; i < valuelen; i++) {
            if (value[i] < '0' || value[i] > '9' || v > (INT64_MAX - 9) / 10) {
                st->head_bad = true;
                return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
            }
            v = v * 10 + (value[i] - '0');
        }
        st->content_length = v;
        return 0;
    }
    if (h1_is_hop_by_hop((const char *)name, namelen))
        return 0;
    keep_field(st, &st->refs, &st->n_refs, &st->cap_refs, name, namelen, value, valuelen);
    return 0;
}

static int on_frame_recv(nghttp2_session *ngh, const nghttp2_frame *frame, void *user)
{
    struct h2session *sess = user;
    switch (frame->hd.type) {
    case NGHTTP2_SETTINGS:
        if (!(frame->hd.flags & NGHTTP2_FLAG_ACK) && !sess->ready) {
            /* The server's preface: its stream limit is known now. */
            sess->ready = true;
            struct h2ustream *st;
            TAILQ_FOREACH(st, &sess->streams, link)
            {
                mark(st);
            }
        }
        return 0;
    case NGHTTP2_GOAWAY:
        /* nghttp2 closes the streams above last_stream_id with
         * REFUSED_STREAM (never processed: retried); the rest finish. */
        if (!sess->draining)
            log_info("upstream %s (cluster %s) sent GOAWAY (last stream %d, %s); no new streams on this connection", sess->addr,
                     sess->ep->cluster_name, frame->goaway.last_stream_id, nghttp2_http2_strerror(frame->goaway.error_code));
        sess->draining = true;
        return 0;
    case NGHTTP2_HEADERS:
    case NGHTTP2_DATA:
        break;
    default:
        return 0;
    }
    struct h2ustream *st = stream_of(ngh, frame->hd.stream_id);
    if (st == NULL || st->s == NULL)
        return 0; /* released: on_stream_close frees it */
    st->got_frame = true;
    if (frame->hd.type == NGHTTP2_HEADERS && !st->in_trailers && !st->head_ready) {
        if (st->status >= 200) {
            st->head_ready = true;
            /* Past the head, the same timeout guards a stalled body (as upstream_h1.c). */
            if (st->timeout_ms)
                arm(st->timer, st->timeout_ms);
        } else if (st->status == 101) {
            st->head_bad = true;
            nghttp2_submit_rst_stream(ngh, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_PROTOCOL_ERROR);
        }
        /* 100 (we answered the client ourselves) and other interim
         * responses (102, 103) are dropped. */
    }
    if (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) {
        st->resp_eof = st->head_ready;
        evtimer_del(st->timer);
    }
    mark(st);
    return 0;
}

static int on_data_chunk(nghttp2_session *ngh, uint8_t flags, int32_t id, const uint8_t *data, size_t len, void *user)
{
    struct h2ustream *st = stream_of(ngh, id);
    if (st == NULL || st->s == NULL) {
        nghttp2_session_consume(ngh, id, len); /* nobody wants it */
        return 0;
    }
    st->got_frame = true;
    evbuffer_add(st->resp_body, data, len);
    /* Buffered: the connection window reopens now, the stream's once delivered. */
    nghttp2_session_consume_connection(ngh, len);
    if (st->timeout_ms && !st->paused)
        arm(st->timer, st->timeout_ms);
    mark(st);
    return 0;
}

static int on_frame_send(nghttp2_session *ngh, const nghttp2_frame *frame, void *user)
{
    if (frame->hd.type == NGHTTP2_HEADERS && frame->headers.cat == NGHTTP2_HCAT_REQUEST) {
        struct h2ustream *st = stream_of(ngh, frame->hd.stream_id);
        if (st)
            st->sent = true;
    }
    return 0;
}

static int on_frame_not_send(nghttp2_session *ngh, const nghttp2_frame *frame, int lib_error, void *user)
{
    if (frame->hd.type == NGHTTP2_HEADERS && frame->headers.cat == NGHTTP2_HCAT_REQUEST) {
        /* nghttp2 closes the stream next (on_stream_close). */
        struct h2ustream *st = stream_of(ngh, frame->hd.stream_id);
        if (st)
            st->not_sent_error = lib_error;
    }
    return 0;
}

static int on_stream_close(nghttp2_session *ngh, int32_t id, uint32_t error_code, void *user)
{
    struct h2ustream *st = stream_of(ngh, id);
    if (st == NULL)
        return 0;
    st->closed = true;
    st->close_code = error_code;
    mark(st);
    return 0;
}

static ssize_t on_send_unused(nghttp2_session *ngh, const uint8_t *data, size_t length, int flags, void *user)
{
    return NGHTTP2_ERR_CALLBACK_FAILURE; /* we use mem_send */
}

/* ---- sessions ---- */

static struct h2session *session_new(struct worker *w, struct ep_pool *ep, const struct cluster_conf *cl)
{
    struct h2session *sess = co_calloc(1, sizeof(*sess));
    sess->worker = w;
    sess->ep = ep;
    sess->tls = cl->tls.enabled;
    sess->auto_proto = cl->protocol == CLUSTER_PROTO_AUTO;
    sess->born_ms = health_now_ms();
    TAILQ_INIT(&sess->streams);
    sess->post = event_new(w->base, -1, 0, on_post, sess);
    sess->idle_timer = evtimer_new(w->base, on_idle, sess);

    nghttp2_session_callbacks *cbs;
    nghttp2_session_callbacks_new(&cbs);
    nghttp2_session_callbacks_set_send_callback(cbs, on_send_unused);
    nghttp2_session_callbacks_set_on_begin_headers_callback(cbs, on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(cbs, on_header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, on_frame_recv);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, on_data_chunk);
    nghttp2_session_callbacks_set_on_frame_send_callback(cbs, on_frame_send);
    nghttp2_session_callbacks_set_on_frame_not_send_callback(cbs, on_frame_not_send);
    nghttp2_session_callbacks_set_on_stream_close_callback(cbs, on_stream_close);

    nghttp2_option *opt;
    nghttp2_option_new(&opt);
    nghttp2_option_set_no_auto_window_update(opt, 1);
    /* Until the server's SETTINGS say otherwise (RFC 9113 §6.5.2 leaves it
     * unlimited; we assume our own cap). */
    nghttp2_option_set_peer_max_concurrent_streams(opt, H2U_MAX_STREAMS);
    nghttp2_option_set_max_send_header_block_length(opt, H2U_MAX_SEND_HEAD);
    /* Abuse limits nghttp2 1.52 enforces when asked (as conn_h2.c). */
    nghttp2_option_set_max_outbound_ack(opt, 1000);
    nghttp2_option_set_max_settings(opt, 32);
    nghttp2_option_set_max_continuations(opt, 8);
    nghttp2_session_client_new2(&sess->ngh, cbs, sess, opt);
    nghttp2_option_del(opt);
    nghttp2_session_callbacks_del(cbs);

    nghttp2_settings_entry iv[] = {
        {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, H2U_STREAM_WINDOW},
        {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, H2U_MAX_HEAD},
    };
    nghttp2_submit_settings(sess->ngh, NGHTTP2_FLAG_NONE, iv, CO_ARRAY_SIZE(iv));
    nghttp2_session_set_local_window_size(sess->ngh, NGHTTP2_FLAG_NONE, 0, H2U_CONN_WINDOW);

    LIST_INSERT_HEAD(&ep->h2_sessions, sess, link);
    ep->n_h2_sessions++;
    return sess;
}

/* Free now. The session has no stream left, or (worker exit) its streams
 * were detached by the caller. */
static void session_free(struct h2session *sess)
{
    assert(sess->busy == 0);
    assert(sess->n_streams == 0);
    LIST_REMOVE(sess, link);
    sess->ep->n_h2_sessions--;
    if (sess->connecting)
        upconnect_cancel(sess->connecting);
    if (sess->ngh)
        nghttp2_session_del(sess->ngh);
    if (sess->bev)
        bufferevent_free(sess->bev);
    event_free(sess->post);
    event_free(sess->idle_timer);
    free(sess);
}

enum lost_kind {
    LOST_CONNECT, /* connect or TLS failed: nothing was sent */
    LOST_RETRY,   /* nothing was sent and another protocol may work (ALPN said http/1.1) */
    LOST_MIDWAY,  /* an established connection ended */
};

/* The connection is gone: every exchange that has not received its whole
 * response fails with `status`; complete ones are still delivered (settle()
 * frees the session after them). `what` says what happened, for the logs. */
static void session_lost(struct h2session *sess, int status, const char *what, enum lost_kind kind)
{
    char why[320];
    sess->dead = true;
    sess->draining = true;
    sess->ready = false;
    if (sess->ngh) {
        nghttp2_session_del(sess->ngh);
        sess->ngh = NULL;
    }
    if (sess->bev) {
        bufferevent_free(sess->bev);
        sess->bev = NULL;
    }
    evtimer_del(sess->idle_timer);
    sess->busy++;
    struct h2ustream *st, *next;
    for (st = TAILQ_FIRST(&sess->streams); st; st = next) {
        next = TAILQ_NEXT(st, link);
        if (st->s == NULL) {
            if (!st->in_process)
                h2ustream_free(st);
            continue;
        }
        if (st->head_ready && st->resp_eof) {
            mark(st); /* complete: deliver what is buffered */
            continue;
        }
        enum up_fail retry = UPF_UNSENT; /* LOST_CONNECT, LOST_RETRY: nothing was sent */
        const char *where = "";
        if (kind == LOST_MIDWAY) {
            /* Before the response head nothing reached the client: unsent, or
             * replayable when idempotent. A session that had been idle and
             * got no answer at all is the pool race upstream_h1.c knows. */
            retry = st->head_ready ? UPF_FATAL : !st->sent ? UPF_UNSENT : UPF_MAYBE_SENT;
            where = st->head_ready ? " in the response body" : " before the response head";
            if (!st->head_ready)
                stream_up_count(sess->worker, st->s, UPC_BAD_RESPONSE);
        }
        snprintf(why, sizeof(why), "%s%s", what, where);
        fail(st, status, why, retry);
    }
    sess->busy--;
}

/* Produce session output into the socket buffer, bounded by H2U_OUT_HIGH
 * (on_write asks for more). CO_ERROR on a fatal nghttp2 error. */
static int flush(struct h2session *sess)
{
    int rv = h2_send_bounded(sess->ngh, bufferevent_get_output(sess->bev), H2U_OUT_HIGH);
    if (rv != 0) {
        log_warn("upstream %s: nghttp2_session_mem_send: %s; closing the connection", sess->addr, nghttp2_strerror(rv));
        return CO_ERROR;
    }
    return CO_OK;
}

/*
 * After every event of the session: run the queued stream work, write what
 * nghttp2 has to send, and close the session once it has nothing left to
 * do. The only place a session is freed (besides pool cleanup). Returns
 * CO_ERROR when sess was freed.
 */
static int settle(struct h2session *sess)
{
    char what[160];
    run_pending(sess);
    if (sess->dead) {
        if (sess->n_streams == 0) {
            session_free(sess);
            return CO_ERROR;
        }
        return CO_OK; /* complete responses still being delivered */
    }
    if (sess->bev == NULL)
        return CO_OK; /* connecting */
    if (flush(sess) != CO_OK) {
        snprintf(what, sizeof(what), "HTTP/2 session with upstream %s failed", sess->addr);
        session_lost(sess, 502, what, LOST_MIDWAY);
        return settle(sess);
    }
    bool finished = !nghttp2_session_want_read(sess->ngh) && !nghttp2_session_want_write(sess->ngh);
    if (sess->n_streams > 0) {
        evtimer_del(sess->idle_timer);
        if (finished) {
            /* nghttp2 ended the session (GOAWAY both ways, or its own after
             * a connection error) while exchanges still wait on it. */
            snprintf(what, sizeof(what), "HTTP/2 session with upstream %s ended", sess->addr);
            session_lost(sess, 502, what, LOST_MIDWAY);
            return settle(sess);
        }
        return CO_OK;
    }
    if (sess->closing || sess->draining || sess->ep->retired || finished) {
        if (!sess->closing) {
            /* RFC 9113 §6.8: say goodbye, then close once it is written. */
            sess->closing = true;
            sess->draining = true;
            nghttp2_session_terminate_session(sess->ngh, NGHTTP2_NO_ERROR);
            if (flush(sess) != CO_OK) {
                session_free(sess);
                return CO_ERROR;
            }
        }
        if (evbuffer_get_length(bufferevent_get_output(sess->bev)) == 0) {
            session_free(sess);
            return CO_ERROR;
        }
        return CO_OK; /* on_write comes back here */
    }
    if (sess->ep->idle_timeout_ms && !evtimer_pending(sess->idle_timer, NULL))
        arm(sess->idle_timer, sess->ep->idle_timeout_ms);
    return CO_OK;
}

/* Feed buffered input to nghttp2, then settle. */
static void on_read(struct bufferevent *bev, void *arg)
{
    struct h2session *sess = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    while (evbuffer_get_length(in) > 0) {
        struct evbuffer_iovec v;
        if (evbuffer_peek(in, -1, NULL, &v, 1) < 1)
            break;
        ssize_t n = nghttp2_session_mem_recv(sess->ngh, v.iov_base, v.iov_len);
        if (n < 0) {
            char what[200];
            snprintf(what, sizeof(what), "HTTP/2 error on the connection to upstream %s (%s)", sess->addr,
                     nghttp2_strerror((int)n));
            log_warn("%s; closing it", what);
            session_lost(sess, 502, what, LOST_MIDWAY);
            settle(sess);
            return;
        }
        evbuffer_drain(in, (size_t)n);
    }
    settle(sess);
}

static void on_write(struct bufferevent *bev, void *arg)
{
    settle(arg);
}

static void on_event(struct bufferevent *bev, short what, void *arg)
{
    struct h2session *sess = arg;
    char text[200];
    int err = EVUTIL_SOCKET_ERROR();
    if (sess->closing && sess->n_streams == 0) {
        sess->dead = true;
        settle(sess);
        return;
    }
    if (what & BEV_EVENT_EOF)
        snprintf(text, sizeof(text), "upstream %s closed the connection", sess->addr);
    else
        snprintf(text, sizeof(text), "connection to upstream %s failed: %s", sess->addr,
                 err ? evutil_socket_error_to_string(err) : "error");
    session_lost(sess, 502, text, LOST_MIDWAY);
    settle(sess);
}

static void on_post(evutil_socket_t fd, short what, void *arg)
{
    struct h2session *sess = arg;
    if (sess->bev && evbuffer_get_length(bufferevent_get_input(sess->bev)) > 0)
        on_read(sess->bev, sess); /* bytes that came with the connection (adopt) */
    else
        settle(sess);
}

static void on_idle(evutil_socket_t fd, short what, void *arg)
{
    struct h2session *sess = arg;
    if (sess->n_streams > 0)
        return;
    sess->draining = true; /* settle() says GOAWAY and closes */
    settle(sess);
}

static void on_stream_timer(evutil_socket_t fd, short what, void *arg)
{
    struct h2ustream *st = arg;
    st->timed_out = true;
    mark(st); /* process() resets the stream and answers 504 */
}

/* The connection is up: speak HTTP/2 on it. */
static void session_begin(struct h2session *sess, struct bufferevent *bev)
{
    sess->bev = bev;
    bufferevent_setcb(bev, on_read, on_write, on_event, sess);
    bufferevent_setwatermark(bev, EV_READ, 0, 0);
    bufferevent_setwatermark(bev, EV_WRITE, H2U_OUT_HIGH / 2, 0);
    bufferevent_set_timeouts(bev, NULL, NULL);
    bufferevent_enable(bev, EV_READ | EV_WRITE);
    struct h2ustream *st;
    TAILQ_FOREACH(st, &sess->streams, link)
    {
        if (st->s) {
            co_strlcpy(st->s->endpoint, sess->addr, sizeof(st->s->endpoint));
            if (st->timeout_ms)
                arm(st->timer, st->timeout_ms);
        }
    }
}

static void on_connected(void *arg, struct bufferevent *bev, const char *alpn, const char *addr, int status, const char *why)
{
    struct h2session *sess = arg;
    sess->connecting = NULL;
    co_strlcpy(sess->addr, addr, sizeof(sess->addr));
    struct h2ustream *st;
    TAILQ_FOREACH(st, &sess->streams, link)
    {
        if (st->s)
            co_strlcpy(st->s->endpoint, addr, sizeof(st->s->endpoint));
    }
    if (bev == NULL) {
        st = TAILQ_FIRST(&sess->streams);
        stream_up_count(sess->worker, st ? st->s : NULL, UPC_CONNECT_ERROR);
        health_report(sess->ep->st, &sess->ep->eject, HEV_CONNECT_FAILED);
        session_lost(sess, status, why, LOST_CONNECT);
        settle(sess);
        return;
    }
    if (sess->tls && strcmp(alpn, "h2") != 0) {
        char what[240];
        enum lost_kind kind = LOST_CONNECT;
        if (sess->auto_proto) {
            /* protocol: auto - the endpoint went back to HTTP/1.1. */
            sess->ep->h2 = false;
            kind = LOST_RETRY;
            snprintf(what, sizeof(what), "upstream %s no longer offers h2 in ALPN (chose \"%s\"); using HTTP/1.1", addr, alpn);
        } else {
            snprintf(what, sizeof(what), "upstream %s did not negotiate h2 in ALPN (chose \"%s\") for a protocol: h2 cluster", addr,
                     alpn);
        }
        bufferevent_free(bev);
        session_lost(sess, 502, what, kind);
        settle(sess);
        return;
    }
    health_report(sess->ep->st, &sess->ep->eject, HEV_CONNECTED);
    session_begin(sess, bev);
    on_read(bev, sess); /* the server's SETTINGS may already be here */
}

/* ---- entry points ---- */

/* HTTP/2 has no Upgrade (RFC 9113 §8.6); WebSocket over it needs extended
 * CONNECT (RFC 8441), which we do not speak to upstreams. */
static bool refuse_websocket(struct stream *s)
{
    if (!s->websocket)
        return false;
    char why[200];
    snprintf(why, sizeof(why), "WebSocket upgrade requested but cluster %s speaks HTTP/2 upstream (RFC 8441 not supported)",
             s->cluster->name);
    s->up = NULL;
    stream_up_failed(s, 502, why, UPF_FATAL);
    return true;
}

/* A session of ep that can take one more stream now. */
static struct h2session *pick(struct ep_pool *ep, const struct cluster_conf *cl, bool fresh)
{
    struct h2session *sess;
    LIST_FOREACH(sess, &ep->h2_sessions, link)
    {
        if (sess->dead || sess->draining || sess->closing || sess->tls != cl->tls.enabled)
            continue;
        /* A retry goes to a connection that has carried nothing yet. */
        if (fresh && sess->exchanges > 0)
            continue;
        /* Too old, or DNS no longer lists its address: no new streams; it
         * closes when its streams are done (settle). */
        if (!pool_young(ep, sess->born_ms) || (sess->addr[0] && !pool_addr_current(ep, sess->addr))) {
            sess->draining = true;
            continue;
        }
        if (!nghttp2_session_check_request_allowed(sess->ngh)) {
            sess->draining = true; /* stream ids exhausted */
            continue;
        }
        uint32_t limit = nghttp2_session_get_remote_settings(sess->ngh, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS);
        if (limit > H2U_MAX_STREAMS)
            limit = H2U_MAX_STREAMS;
        if (sess->n_streams < limit)
            return sess;
    }
    return NULL;
}

void upstream_h2_start(struct stream *s, struct ep_pool *ep, const struct endpoint_conf *e, bool fresh)
{
    struct worker *w = s->worker;
    const struct cluster_conf *cl = s->cluster;
    if (refuse_websocket(s))
        return;
    struct h2session *sess = pick(ep, cl, fresh);
    if (sess == NULL) {
        sess = session_new(w, ep, cl);
        const char *alpn = NULL;
        if (cl->tls.enabled)
            alpn = sess->auto_proto ? "h2,http/1.1" : "h2";
        /* Cleartext: prior knowledge (RFC 9113 §3.3), the preface goes first. */
        const struct sockaddr *sa;
        socklen_t sa_len;
        if (pool_next_addr(ep, &sa, &sa_len)) {
            sess->connecting = upconnect_start(w->base, sa, sa_len, e, cl, alpn, on_connected, sess);
        } else {
            struct h2ustream *st = h2ustream_new(sess, s);
            (void)st;
            session_lost(sess, 503, "endpoint has no address", LOST_CONNECT);
            settle(sess);
            return;
        }
    }
    struct h2ustream *st = h2ustream_new(sess, s);
    evtimer_del(sess->idle_timer);
    if (sess->bev && st->timeout_ms)
        arm(st->timer, st->timeout_ms);
    if (sess->ready)
        mark(st);
}

void upstream_h2_adopt(struct stream *s, struct ep_pool *ep, struct bufferevent *bev, const char *addr)
{
    ep->h2 = true;
    if (refuse_websocket(s)) {
        /* The connection is still good for the next streams. */
        struct h2session *sess = session_new(s->worker, ep, s->cluster);
        co_strlcpy(sess->addr, addr, sizeof(sess->addr));
        session_begin(sess, bev);
        schedule(sess);
        return;
    }
    struct h2session *sess = session_new(s->worker, ep, s->cluster);
    co_strlcpy(sess->addr, addr, sizeof(sess->addr));
    h2ustream_new(sess, s);
    session_begin(sess, bev);
    schedule(sess); /* reads what is buffered, from the event loop */
}

void upstream_h2_close_idle(struct ep_pool *ep)
{
    struct h2session *sess, *next;
    for (sess = LIST_FIRST(&ep->h2_sessions); sess; sess = next) {
        next = LIST_NEXT(sess, link);
        if (sess->n_streams > 0 || sess->busy > 0)
            continue; /* finishes its streams; settle() closes it then if ep is retired */
        if (sess->bev == NULL || sess->ngh == NULL) {
            session_free(sess);
            continue;
        }
        if (!sess->closing) {
            sess->closing = true;
            sess->draining = true;
            nghttp2_session_terminate_session(sess->ngh, NGHTTP2_NO_ERROR);
        }
        schedule(sess); /* GOAWAY written, then freed (settle) */
    }
}

void upstream_h2_retire_gone(struct ep_pool *ep)
{
    struct h2session *sess, *next;
    for (sess = LIST_FIRST(&ep->h2_sessions); sess; sess = next) {
        next = LIST_NEXT(sess, link);
        if (sess->addr[0] == '\0' || pool_addr_current(ep, sess->addr))
            continue;
        sess->draining = true;
        if (sess->n_streams > 0 || sess->busy > 0 || sess->closing)
            continue; /* settle() closes it after its streams */
        if (sess->bev == NULL || sess->ngh == NULL) {
            session_free(sess);
            continue;
        }
        sess->closing = true;
        nghttp2_session_terminate_session(sess->ngh, NGHTTP2_NO_ERROR);
        schedule(sess);
    }
}

void upstream_h2_free_all(struct ep_pool *ep)
{
    struct h2session *sess;
    while ((sess = LIST_FIRST(&ep->h2_sessions)) != NULL) {
        struct h2ustream *st;
        while ((st = TAILQ_FIRST(&sess->streams)) != NULL) {
            TAILQ_REMOVE(&sess->streams, st, link);
            sess->n_streams--;
            st->queued = false;
            st->sess = NULL;
            event_free(st->timer);
            st->timer = NULL;
            if (st->s == NULL)
                h2ustream_free(st);
            /* else the stream still holds it (drain timed out): its release frees it */
        }
        sess->pending = sess->pending_tail = NULL;
        session_free(sess);
    }
}
