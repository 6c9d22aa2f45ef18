/*
 * mirror.c - shadow traffic (mirror.h).
 *
 * Objects and owners:
 *   struct mirror_pair  what the real exchange and its copy share: the route,
 *                       the request id, both outcomes and the counters. Two
 *                       references at most (the primary's s->mirror and the
 *                       shadow); whichever outcome comes last settles the
 *                       comparison. Neither side ever touches the other
 *                       stream: the primary may be gone long before the copy
 *                       ends, and the other way round.
 *   struct shadow       one copy in flight: its stream (whose `down` points
 *                       back here), its own copy of the request body, and
 *                       the one-shot event that starts it and later frees
 *                       it. Linked in the worker's list (w->mirror), counted
 *                       in w->n_shadows until it is freed.
 *
 * A copy starts from the event loop, not from inside the primary's
 * stream_start()/pump_body(): the real request goes out first, and the
 * shadow's own failures (which may answer it synchronously) never run inside
 * the primary's callback chain. Its stream is freed from the event loop too,
 * after ops->done(), as stream.h asks of every downstream.
 */
#include "mirror.h"

#include <event2/buffer.h>
#include <event2/event.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "stream.h"
#include "worker.h"

/* At most one "copies skipped at the in-flight cap" line per worker per
 * interval; every skip is counted in route_stats.mirror_skipped anyway. */
#define MIRROR_CAP_LOG_INTERVAL_MS 10000

struct mirror_pair {
    unsigned refs;                      /* primary (s->mirror) + shadow */
    struct config *cfg;                 /* reference: keeps route and cluster names valid */
    const struct route_conf *route;     /* in cfg */
    const struct cluster_conf *primary; /* cluster that gave the real answer (set at primary_done) */
    struct route_stats *rstats;         /* (route, mirror cluster), worker-owned; NULL when the table is full */
    char request_id[sizeof(((struct stream *)0)->request_id)];
    int primary_status; /* -1 unknown yet, 0 the real exchange was aborted */
    int shadow_status;  /* -1 unknown yet (or the copy was never answered) */
    bool shadow_known;  /* the copy's outcome is recorded */
    bool shadow_failed; /* the copy got no upstream response */
    bool compare;       /* route.mirror.compare */
};

struct shadow {
    struct shadow *prev, *next; /* in mirror_worker.list */
    struct worker *worker;
    struct stream *stream;    /* owned: freed by shadow_free() */
    struct mirror_pair *pair; /* reference, dropped at done() (or at free after an abort) */
    struct evbuffer *body;    /* the request body still to send; NULL without a body */
    struct event *ev;         /* one-shot: start, later free */
    int status;               /* from send_head */
    bool answered;            /* send_head came from an upstream response, not stream_respond() */
    bool started;
    bool done;
};

/* w->mirror. */
struct mirror_worker {
    struct shadow list;   /* sentinel */
    uint64_t cap_log_ms;  /* when the last cap line was written */
    uint64_t cap_skipped; /* copies skipped at the cap since that line */
};

/* Count on the pair's (route, mirror cluster) stats, if the table had room. */
#define PAIR_COUNT(p, field)                                                                                                       \
    do {                                                                                                                           \
        if ((p)->rstats)                                                                                                           \
            METRIC_INC((p)->rstats->field);                                                                                        \
    } while (0)

static struct mirror_worker *worker_state(struct worker *w)
{
    struct mirror_worker *mw = w->mirror;
    if (mw == NULL) {
        mw = co_calloc(1, sizeof(*mw));
        mw->list.prev = mw->list.next = &mw->list;
        w->mirror = mw;
    }
    return mw;
}

/* ---- the pair ---- */

static struct mirror_pair *pair_new(const struct stream *s, struct route_stats *rs)
{
    struct mirror_pair *p = co_calloc(1, sizeof(*p));
    p->refs = 1;
    p->cfg = config_ref(s->cfg);
    p->route = s->route;
    p->rstats = rs;
    memcpy(p->request_id, s->request_id, sizeof(p->request_id));
    p->primary_status = -1;
    p->shadow_status = -1;
    p->compare = s->route->mirror.compare;
    return p;
}

static void pair_unref(struct mirror_pair *p)
{
    if (--p->refs > 0)
        return;
    config_unref(p->cfg);
    free(p);
}

/* Both outcomes known: compare the status classes. A copy that got no answer
 * was counted as failed, a real exchange that was aborted has no status:
 * neither is a mismatch. */
static void settle(struct mirror_pair *p)
{
    if (!p->compare || p->primary_status < 0 || !p->shadow_known)
        return;
    if (p->primary_status == 0 || p->shadow_failed)
        return;
    if (p->primary_status / 100 == p->shadow_status / 100)
        return;
    PAIR_COUNT(p, mirror_mismatch);
    log_warn("mirror mismatch on route %s: request %s got %d from %s, mirror %s answered %d", p->route->name, p->request_id,
             p->primary_status, p->primary ? p->primary->name : "-", p->route->mirror.cluster->name, p->shadow_status);
}

/* ---- skipping ---- */

static void skip_at_cap(struct worker *w, const struct route_conf *r, struct route_stats *rs)
{
    struct mirror_worker *mw = worker_state(w);
    if (rs)
        METRIC_INC(rs->mirror_skipped);
    mw->cap_skipped++;
    uint64_t now = co_now_ms();
    if (mw->cap_log_ms != 0 && now - mw->cap_log_ms < MIRROR_CAP_LOG_INTERVAL_MS)
        return;
    log_info("worker %u: %u mirror copies in flight (route %s allows %" PRIu32 " to cluster %s); skipped %" PRIu64
             " copies since the last such line, the real requests are unaffected",
             w->id, w->n_shadows, r->name, r->mirror.max_in_flight, r->mirror.cluster->name, mw->cap_skipped);
    mw->cap_log_ms = now ? now : 1;
    mw->cap_skipped = 0;
}

/* The primary gives up its copy before it started: count it, release. */
static void primary_skip(struct stream *s)
{
    struct mirror_pair *p = s->mirror;
    s->mirror = NULL;
    PAIR_COUNT(p, mirror_skipped);
    pair_unref(p);
}

/* ---- the shadow's downstream side: no client, the answer is discarded ---- */

static long shadow_read_body(struct stream *s, struct evbuffer *dst, size_t max, bool *eof)
{
    struct shadow *sh = s->down;
    int n = 0;
    if (sh->body) {
        n = evbuffer_remove_buffer(sh->body, dst, max);
        if (n < 0)
            n = 0;
    }
    *eof = sh->body == NULL || evbuffer_get_length(sh->body) == 0;
    return n;
}

static void shadow_send_head(struct stream *s, int status, const struct h1_header *fields, size_t n_fields, int64_t content_length)
{
    struct shadow *sh = s->down;
    (void)fields;
    (void)n_fields;
    (void)content_length;
    sh->status = status;
    /* Upstream answer or local error page? stream_up_head() is called by
     * the upstream side while the exchange is still attached (s->up set);
     * every local answer (stream_respond() after stream_up_failed(), a
     * missing endpoint, a body limit) comes after s->up was cleared, or
     * before it was ever set. A 5xx the mirror cluster really sent is an
     * answer (and may be a mismatch); a 502/503/504 we made up is not. */
    sh->answered = s->up != NULL;
}

static bool shadow_send_data(struct stream *s, struct evbuffer *src)
{
    (void)s;
    evbuffer_drain(src, evbuffer_get_length(src));
    return true;
}

static void shadow_send_trailers(struct stream *s, const struct h1_header *fields, size_t n_fields)
{
    (void)s;
    (void)fields;
    (void)n_fields;
}

static void shadow_send_end(struct stream *s)
{
    (void)s;
}

static void shadow_send_continue(struct stream *s)
{
    (void)s; /* expect_continue is never set on a copy */
}

static void shadow_done(struct stream *s, bool abort)
{
    struct shadow *sh = s->down;
    struct mirror_pair *p = sh->pair;
    sh->done = true;
    sh->pair = NULL;
    p->shadow_known = true;
    p->shadow_failed = abort || !sh->answered;
    p->shadow_status = p->shadow_failed ? -1 : sh->status;
    if (p->shadow_failed)
        PAIR_COUNT(p, mirror_failed);
    settle(p);
    pair_unref(p);
    /* Freed from the loop: we are inside the stream's callback chain. */
    event_active(sh->ev, EV_TIMEOUT, 0);
}

static const struct stream_down_ops shadow_ops = {
    .read_body = shadow_read_body,
    .send_head = shadow_send_head,
    .send_data = shadow_send_data,
    .send_trailers = shadow_send_trailers,
    .send_end = shadow_send_end,
    .send_continue = shadow_send_continue,
    .done = shadow_done,
};

/* ---- shadow life ---- */

static void shadow_free(struct shadow *sh)
{
    struct worker *w = sh->worker;
    sh->prev->next = sh->next;
    sh->next->prev = sh->prev;
    w->n_shadows--;
    event_free(sh->ev);
    stream_free(sh->stream);
    if (sh->body)
        evbuffer_free(sh->body);
    if (sh->pair)
        pair_unref(sh->pair); /* aborted before done(): no outcome to record */
    free(sh);
}

static void on_shadow_event(evutil_socket_t fd, short what, void *arg)
{
    struct shadow *sh = arg;
    (void)fd;
    (void)what;
    if (!sh->started) {
        sh->started = true;
        stream_start_shadow(sh->stream); /* may call done() at once: that activates ev again */
        return;
    }
    if (sh->done)
        shadow_free(sh);
}

/* Copy of src's request head into c: one arena for every byte (NUL after
 * each string), a fields array of its own; both freed by stream_free(). */
static void copy_head(struct stream *c, const struct stream *src)
{
    size_t size = src->method_len + 1 + src->target_len + 1 + src->host_len + 1;
    for (size_t i = 0; i < src->n_fields; i++)
        size += src->fields[i].name_len + 1 + src->fields[i].value_len + 1;
    char *arena = co_malloc(size);
    char *at = arena;
#define TAKE(dst, p, n)                                                                                                            \
    do {                                                                                                                           \
        if ((n) > 0)                                                                                                               \
            memcpy(at, (p), (n));                                                                                                  \
        at[(n)] = '\0';                                                                                                            \
        (dst) = at;                                                                                                                \
        at += (n) + 1;                                                                                                             \
    } while (0)
    c->head = arena;
    TAKE(c->method, src->method, src->method_len);
    c->method_len = src->method_len;
    TAKE(c->target, src->target, src->target_len);
    c->target_len = src->target_len;
    if (src->host != NULL) {
        TAKE(c->host, src->host, src->host_len);
    } else {
        c->host = NULL;
    }
    c->host_len = src->host_len;
    c->fields = co_malloc((src->n_fields ? src->n_fields : 1) * sizeof(*c->fields));
    for (size_t i = 0; i < src->n_fields; i++) {
        const struct h1_header *f = &src->fields[i];
        TAKE(c->fields[i].name, f->name, f->name_len);
        c->fields[i].name_len = f->name_len;
        TAKE(c->fields[i].value, f->value, f->value_len);
        c->fields[i].value_len = f->value_len;
    }
#undef TAKE
    c->n_fields = src->n_fields;
    c->version_minor = src->version_minor;
    c->is_head = src->is_head;
    c->has_body = src->has_body;
    c->content_length = src->content_length;
    c->expect_continue = false; /* nobody waits for a 100 */
    c->te_trailers = src->te_trailers;
    c->websocket = false;
    c->tls = src->tls;
    c->proto = src->proto; /* a string literal */
    memcpy(c->client_ip, src->client_ip, sizeof(c->client_ip));
    memcpy(c->request_id, src->request_id, sizeof(c->request_id)); /* the same id: correlation */
}

/* Start the copy of s (its body, if any, is complete in s->body_copy), or
 * skip it at the in-flight cap. Releases s->mirror when it does not start. */
static void start_shadow(struct stream *s)
{
    struct worker *w = s->worker;
    const struct route_conf *r = s->route;
    struct mirror_pair *p = s->mirror;
    if (w->n_shadows >= r->mirror.max_in_flight) {
        s->mirror = NULL;
        skip_at_cap(w, r, p->rstats);
        pair_unref(p);
        return;
    }
    struct mirror_worker *mw = worker_state(w);
    struct shadow *sh = co_calloc(1, sizeof(*sh));
    sh->worker = w;
    struct stream *c = stream_new(w, &shadow_ops, sh);
    /* The copy runs on the primary's snapshot: route and cluster point into it. */
    if (c->cfg != s->cfg) {
        config_unref(c->cfg);
        c->cfg = config_ref(s->cfg);
    }
    copy_head(c, s);
    c->shadow = true; /* also before it starts: never logged or counted as a request */
    c->route = r;
    c->cluster = r->mirror.cluster;
    c->split_index = 0;
    c->reason = s->reason;
    if (s->has_body) {
        /* A copy: the primary's body_copy may still serve a replay. */
        sh->body = evbuffer_new();
        if (s->body_copy)
            stream_copy_buffer(sh->body, s->body_copy);
        c->content_length = (int64_t)evbuffer_get_length(sh->body);
    }
    sh->stream = c;
    sh->pair = p;
    p->refs++;
    sh->ev = event_new(w->base, -1, 0, on_shadow_event, sh);
    if (sh->ev == NULL) {
        log_error("event_new failed for a mirror copy; out of memory");
        abort();
    }
    sh->next = mw->list.next;
    sh->prev = &mw->list;
    mw->list.next->prev = sh;
    mw->list.next = sh;
    w->n_shadows++;
    PAIR_COUNT(p, mirror_sent);
    event_active(sh->ev, EV_TIMEOUT, 0);
}

/* ---- mirror.h ---- */

void mirror_begin(struct stream *s)
{
    const struct route_conf *r = s->route;
    if (s->shadow || s->mirror || r == NULL || r->mirror.cluster == NULL || s->websocket)
        return;
    struct worker *w = s->worker;
    const struct mirror_conf *m = &r->mirror;
    if (worker_random(w) % CONFIG_BUCKETS >= m->share)
        return;
    struct route_stats *rs = stats_route(w->stats, r->name, m->cluster->name);
    if (s->has_body && s->content_length >= 0 && (uint64_t)s->content_length > m->max_body) {
        if (rs)
            METRIC_INC(rs->mirror_skipped);
        return;
    }
    if (w->n_shadows >= m->max_in_flight) {
        /* Checked again when a body is complete; no copy of the body is
         * kept for a copy that could not start now. */
        skip_at_cap(w, r, rs);
        return;
    }
    s->mirror = pair_new(s, rs);
    if (!s->has_body)
        start_shadow(s);
}

void mirror_body_done(struct stream *s)
{
    if (s->mirror == NULL)
        return;
    if (s->body_copy == NULL || evbuffer_get_length(s->body_copy) > s->route->mirror.max_body) {
        primary_skip(s); /* stream.c checks this; never send a partial body */
        return;
    }
    start_shadow(s);
}

void mirror_drop(struct stream *s, const char *why)
{
    (void)why; /* counted, not logged: one line per oversized request would flood stderr */
    if (s->mirror)
        primary_skip(s);
}

void mirror_primary_done(struct stream *s)
{
    struct mirror_pair *p = s->mirror;
    if (p == NULL)
        return;
    s->mirror = NULL;
    p->primary_status = s->resp_done ? s->status : 0;
    p->primary = s->cluster;
    settle(p);
    pair_unref(p);
}

void mirror_worker_free(struct worker *w)
{
    struct mirror_worker *mw = w->mirror;
    if (mw == NULL)
        return;
    while (mw->list.next != &mw->list) {
        struct shadow *sh = mw->list.next;
        if (!sh->done)
            stream_abort(sh->stream);
        shadow_free(sh);
    }
    w->mirror = NULL;
    free(mw);
}
