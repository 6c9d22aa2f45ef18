/*
 * stream.c - one exchange: route, decide the side, relay both ways.
 */
#include "stream.h"

#include <event2/buffer.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "accesslog.h"
#include <stdlib.h>

#include "common.h"
#include "health.h"
#include "mirror.h"
#include "outbuf.h"
#include "ramp.h"
#include "router.h"
#include "upstream.h"
#include "worker.h"

struct stream *stream_new(struct worker *w, const struct stream_down_ops *ops, void *down)
{
    struct stream *s = co_calloc(1, sizeof(*s));
    s->worker = w;
    s->cfg = config_ref(w->cfg);
    s->ops = ops;
    s->down = down;
    s->split_index = -1;
    s->content_length = -1;
    s->version_minor = 1;
    s->proto = "HTTP/1.1";
    s->t_start_us = co_now_us();
    return s;
}

static void finish(struct stream *s, bool abort)
{
    if (s->finished)
        return;
    s->finished = true;
    s->ops->done(s, abort);
}

static const struct h1_header *find_field(const struct stream *s, const char *name, size_t from)
{
    for (size_t i = from; i < s->n_fields; i++)
        if (co_strieq(s->fields[i].name, s->fields[i].name_len, name))
            return &s->fields[i];
    return NULL;
}

/* Value of cookie `name` in any Cookie field (HTTP/2 may split them). */
static bool find_cookie(const struct stream *s, const char *name, const char **val, size_t *len)
{
    for (size_t i = 0; i < s->n_fields; i++) {
        const struct h1_header *f = &s->fields[i];
        if (co_strieq(f->name, f->name_len, "cookie") && decide_find_cookie(f->value, f->value_len, name, val, len) == CO_OK)
            return true;
    }
    return false;
}

/* The split entry by weight: smooth WRR over the written weights, or over
 * share : 10000 - share while a ramp is in effect. */
static int pick_by_weight(struct stream *s, uint32_t share, uint32_t version)
{
    const struct route_conf *r = s->route;
    struct worker *w = s->worker;
    if (s->cfg != w->cfg) {
        /* The worker swapped configs between this stream's head and its
         * start: w->wrr is indexed for the new one. A random pick keeps
         * the proportions. */
        uint64_t x = worker_random(w);
        if (share != RAMP_SHARE_WEIGHTS)
            return x % CONFIG_BUCKETS < share ? 0 : 1;
        uint64_t t = x % r->total_weight;
        for (size_t i = 0; i < r->n_split; i++) {
            if (t < r->split[i].weight)
                return (int)i;
            t -= r->split[i].weight;
        }
        return 0;
    }
    if (r->ramp_state && w->ramp_seen[r->index] != version) {
        decide_wrr_init(&w->wrr[r->index], r); /* a new step (or the written weights again) starts a new cycle */
        w->ramp_seen[r->index] = version;
    }
    if (share == RAMP_SHARE_WEIGHTS)
        return decide_weight(&w->wrr[r->index], r);
    return decide_weight_share(&w->wrr[r->index], share);
}

/* Pick the split entry: override > sticky > weight (DESIGN.md); a ramp in
 * effect replaces the written weights by its share. */
static void decide(struct stream *s)
{
    const struct route_conf *r = s->route;
    struct worker *w = s->worker;
    int idx = -1;
    uint32_t share = RAMP_SHARE_WEIGHTS, version = 0;
    if (r->ramp_state) {
        version = atomic_load_explicit(&r->ramp_state->version, memory_order_acquire);
        share = atomic_load_explicit(&r->ramp_state->share, memory_order_relaxed);
    }

    if (r->override.enabled) {
        const char *v = NULL;
        size_t vlen = 0;
        bool present = false;
        if (r->override.header) {
            const struct h1_header *f = find_field(s, r->override.header, 0);
            if (f) {
                v = f->value;
                vlen = f->value_len;
                present = true;
            }
        }
        if (!present && r->override.cookie)
            present = find_cookie(s, r->override.cookie, &v, &vlen);
        if (present) {
            idx = decide_check_override(r, v, vlen);
            if (idx < 0) {
                s->override_rejected = true;
                METRIC_INC(w->metrics.override_rejected);
            } else {
                s->reason = DECIDE_OVERRIDE;
            }
        }
    }

    if (idx < 0 && r->sticky.kind != STICKY_NONE) {
        const char *key = NULL;
        size_t klen = 0;
        switch (r->sticky.kind) {
        case STICKY_COOKIE:
            if (!find_cookie(s, r->sticky.name, &key, &klen) || klen == 0 || klen > 128) {
                /* First visit (or a cookie we would not have issued): issue one. */
                co_hex128(s->new_cookie, worker_random(w), worker_random(w));
                key = s->new_cookie;
                klen = 32;
            }
            break;
        case STICKY_HEADER: {
            const struct h1_header *f = find_field(s, r->sticky.name, 0);
            if (f && f->value_len > 0) {
                key = f->value;
                klen = f->value_len;
            }
            break;
        }
        case STICKY_CLIENT_IP:
            key = s->client_ip;
            klen = strlen(s->client_ip);
            break;
        case STICKY_NONE:
            break;
        }
        if (key) {
            uint32_t bucket = decide_bucket(key, klen);
            idx = share == RAMP_SHARE_WEIGHTS ? decide_sticky(r, bucket) : bucket < share ? 0 : 1;
            s->reason = DECIDE_STICKY;
        }
    }

    if (idx < 0) {
        idx = pick_by_weight(s, share, version);
        s->reason = DECIDE_WEIGHT;
    }
    s->split_index = idx;
    s->cluster = r->split[idx].cluster;
}

static bool cluster_usable(const struct cluster_conf *cl, const struct ep_state *avoid, uint64_t now)
{
    for (size_t i = 0; i < cl->n_endpoints; i++) {
        const struct ep_state *st = cl->endpoints[i].state;
        if (st != avoid && health_usable(st, now))
            return true;
    }
    return false;
}

/* Failover (DESIGN.md, step 4): another split entry of the route whose
 * cluster has a usable endpoint, the written order first. -1 when none. */
static int failover_split(const struct stream *s, uint64_t now)
{
    const struct route_conf *r = s->route;
    for (size_t j = 0; j < r->n_split; j++)
        if (r->split[j].cluster != s->cluster && cluster_usable(r->split[j].cluster, NULL, now))
            return (int)j;
    return -1;
}

static void bind_stats(struct stream *s);

static void switch_side(struct stream *s, int j)
{
    s->split_index = j;
    s->cluster = s->route->split[j].cluster;
    s->reason = DECIDE_FAILOVER;
    s->failed_ep = NULL;
    bind_stats(s);
}

void stream_take_request_id(struct stream *s, const char *rid, size_t len)
{
    bool ok = rid != NULL && len > 0 && len <= 64;
    for (size_t i = 0; ok && i < len; i++) {
        char ch = rid[i];
        ok =
            (ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || ch == '-' || ch == '_' || ch == '.';
    }
    if (ok) {
        memcpy(s->request_id, rid, len);
        s->request_id[len] = '\0';
        return;
    }
    uint64_t a = worker_random(s->worker);
    co_hex128(s->request_id, a, worker_random(s->worker));
}

int stream_proxy_field(const struct h1_header *f)
{
    static const char *const names[] = {"via", "x-request-id", "x-forwarded-for", "x-forwarded-host", "x-forwarded-proto"};
    for (size_t i = 0; i < CO_ARRAY_SIZE(names); i++)
        if (co_strieq(f->name, f->name_len, names[i]))
            return (int)f->name_len;
    return 0;
}

const char *stream_via(const struct stream *s)
{
    if (s->version_minor == 0)
        return "1.0 cutover";
    return s->proto[5] == '2' ? "2 cutover" : "1.1 cutover";
}

void stream_up_count(struct worker *w, struct stream *s, enum up_counter which)
{
    if (s && s->shadow)
        return; /* mirror copies have their own counters (mirror_failed) */
    struct cluster_stats *cs = s ? s->cstats : NULL;
    switch (which) {
    case UPC_CONNECT_ERROR:
        METRIC_INC(w->metrics.upstream_connect_errors);
        if (cs)
            METRIC_INC(cs->connect_errors);
        break;
    case UPC_TIMEOUT:
        METRIC_INC(w->metrics.upstream_timeouts);
        if (cs)
            METRIC_INC(cs->timeouts);
        break;
    case UPC_BAD_RESPONSE:
        METRIC_INC(w->metrics.upstream_bad_responses);
        if (cs)
            METRIC_INC(cs->bad_responses);
        break;
    case UPC_RETRY:
        METRIC_INC(w->metrics.upstream_retries);
        if (cs)
            METRIC_INC(cs->retries);
        break;
    }
}

/* Labelled counters for this exchange's route and cluster. */
static void bind_stats(struct stream *s)
{
    struct worker *w = s->worker;
    if (s->cfg == w->cfg && w->rs_index && w->cs_index) {
        s->rstats = w->rs_index[s->route->index * DECIDE_MAX_SPLIT + (size_t)s->split_index];
        s->cstats = w->cs_index[s->cluster->index];
    } else {
        s->rstats = stats_route(w->stats, s->route->name, s->cluster->name);
        s->cstats = stats_cluster(w->stats, s->cluster->name);
    }
}

static struct retry_budget *route_budget(struct stream *s)
{
    struct worker *w = s->worker;
    return s->cfg == w->cfg && w->budgets ? &w->budgets[s->route->index] : NULL;
}

void stream_worker_routes(struct worker *w, const struct config *cfg)
{
    size_t n = cfg->n_routes ? cfg->n_routes : 1;
    struct decide_wrr *wrr = co_calloc(n, sizeof(*wrr));
    struct retry_budget *budgets = co_calloc(n, sizeof(*budgets));
    for (size_t i = 0; i < cfg->n_routes; i++) {
        decide_wrr_init(&wrr[i], &cfg->routes[i]);
        budgets[i].milli = STREAM_RETRY_RESERVE * 1000;
    }
    free(w->wrr);
    free(w->budgets);
    free(w->ramp_seen);
    w->wrr = wrr;
    w->budgets = budgets;
    w->ramp_seen = co_calloc(n, sizeof(*w->ramp_seen));
}

static void first_attempt(struct stream *s)
{
    s->body_buf = evbuffer_new();
    s->attempts = 1;
    s->t_up_start_us = co_now_us();
    upstream_start(s, false);
}

void stream_start(struct stream *s)
{
    const struct route_conf *r;
    s->route = r = router_match(s->cfg, s->host, s->host_len, s->target, s->target_len);
    if (r == NULL) {
        METRIC_INC(s->worker->metrics.no_route);
        stream_respond(s, 404, "no route for this host and path\n");
        return;
    }
    decide(s);
    uint64_t now = health_now_ms();
    int j = r->failover && !cluster_usable(s->cluster, NULL, now) ? failover_split(s, now) : -1;
    if (j >= 0)
        switch_side(s, j);
    else
        bind_stats(s);
    struct retry_budget *b = route_budget(s);
    if (b) {
        b->milli += r->retry.budget / 10;
        if (b->milli > STREAM_RETRY_RESERVE * 1000)
            b->milli = STREAM_RETRY_RESERVE * 1000;
    }
    /* Keep the request body for a replay (and the mirror) while it is
     * small enough; a known larger length is not kept at all. */
    if (s->has_body && !s->websocket) {
        uint64_t limit = r->retry.attempts > 0 ? r->retry.max_body : 0;
        if (r->mirror.cluster != NULL)
            mirror_begin(s);
        if (s->mirror && r->mirror.max_body > limit)
            limit = r->mirror.max_body;
        if (limit > 0 && (s->content_length < 0 || (uint64_t)s->content_length <= limit)) {
            s->body_copy = evbuffer_new();
            s->body_copy_limit = limit;
        }
        if (s->mirror) {
            s->mirror_waiting = true;
            if (s->body_copy == NULL || (s->content_length >= 0 && (uint64_t)s->content_length > r->mirror.max_body)) {
                s->mirror_waiting = false;
                mirror_drop(s, "request body larger than mirror.max_body");
            }
        }
    } else if (r->mirror.cluster != NULL && !s->websocket) {
        mirror_begin(s); /* no body: the copy starts now */
    }
    first_attempt(s);
}

void stream_start_shadow(struct stream *s)
{
    s->shadow = true;
    first_attempt(s);
}

void stream_copy_buffer(struct evbuffer *dst, struct evbuffer *src)
{
    struct evbuffer_ptr pos;
    evbuffer_ptr_set(src, &pos, 0, EVBUFFER_PTR_SET);
    for (;;) {
        struct evbuffer_iovec v[8];
        int k = evbuffer_peek(src, -1, &pos, v, 8);
        if (k <= 0)
            return;
        size_t moved = 0;
        for (int i = 0; i < k; i++) {
            evbuffer_add(dst, v[i].iov_base, v[i].iov_len);
            moved += v[i].iov_len;
        }
        if (k < 8 || evbuffer_ptr_set(src, &pos, moved, EVBUFFER_PTR_ADD) < 0)
            return;
    }
}

/* Append the last n bytes of s->body_buf to the replay/mirror copy, or drop
 * the copy once the body outgrew its bound. */
static void keep_copy(struct stream *s, size_t n)
{
    if (s->bytes_in > s->body_copy_limit) {
        evbuffer_free(s->body_copy);
        s->body_copy = NULL;
        if (s->mirror_waiting) {
            s->mirror_waiting = false;
            mirror_drop(s, "request body larger than mirror.max_body");
        }
        return;
    }
    size_t len = evbuffer_get_length(s->body_buf);
    struct evbuffer_ptr pos;
    evbuffer_ptr_set(s->body_buf, &pos, len - n, EVBUFFER_PTR_SET);
    while (n > 0) {
        struct evbuffer_iovec v[8];
        int k = evbuffer_peek(s->body_buf, (ev_ssize_t)n, &pos, v, 8);
        if (k <= 0)
            break;
        for (int i = 0; i < k && n > 0; i++) {
            size_t take = v[i].iov_len < n ? v[i].iov_len : n;
            evbuffer_add(s->body_copy, v[i].iov_base, take);
            n -= take;
            evbuffer_ptr_set(s->body_buf, &pos, take, EVBUFFER_PTR_ADD);
        }
    }
}

/* The request body is complete: hand the copy to the mirror. */
static void body_complete(struct stream *s)
{
    if (!s->mirror_waiting)
        return;
    s->mirror_waiting = false;
    if (s->body_copy != NULL && s->bytes_in <= s->route->mirror.max_body)
        mirror_body_done(s);
    else
        mirror_drop(s, "request body larger than mirror.max_body");
}

static void pump_body(struct stream *s)
{
    /* Never before the head: body bytes sent first would be read by the
     * upstream as a request of their own. */
    if (!s->has_body || s->body_done || s->up == NULL || !s->up_ready || s->finished)
        return;
    uint64_t max_body = s->cfg->limits.max_body_bytes;
    for (;;) {
        size_t pending = upstream_pending(s->up);
        if (pending >= STREAM_HIGH_WATER)
            return; /* resumed from stream_up_writable() */
        bool eof = false;
        long n = s->ops->read_body(s, s->body_buf, STREAM_HIGH_WATER - pending, &eof);
        if (n < 0) {
            /* Framing error in the request body: never forward the rest. */
            struct upstream *up = s->up;
            s->up = NULL;
            upstream_release(up, false);
            if (!s->resp_started)
                stream_respond(s, 400, "malformed request body\n");
            else
                finish(s, true);
            return;
        }
        if (n > 0) {
            s->body_started = true;
            s->bytes_in += (uint64_t)n;
            if (s->body_copy)
                keep_copy(s, (size_t)n);
            if (max_body && s->bytes_in > max_body) {
                struct upstream *up = s->up;
                s->up = NULL;
                upstream_release(up, false);
                METRIC_INC(s->worker->metrics.bad_requests);
                if (!s->resp_started)
                    stream_respond(s, 413, "request body too large\n");
                else
                    finish(s, true);
                return;
            }
        }
        if (n > 0 || eof)
            upstream_send_body(s->up, s->body_buf, eof);
        if (eof) {
            s->body_done = true;
            body_complete(s);
            return;
        }
        if (n == 0)
            return; /* wait for stream_on_body_readable() */
    }
}

void stream_on_body_readable(struct stream *s)
{
    pump_body(s);
}

void stream_up_writable(struct stream *s)
{
    pump_body(s);
}

void stream_up_connected(struct stream *s)
{
    s->up_ready = true;
    if (s->expect_continue && s->has_body && !s->body_started && !s->continue_sent) {
        s->continue_sent = true;
        s->ops->send_continue(s);
    }
    if (!s->has_body) {
        s->body_done = true;
    } else if (s->attempts > 1 && (s->body_started || s->body_done)) {
        /* A retry: replay what the client sent so far (stream_up_failed
         * only retries when the copy holds all of it). */
        if (s->body_copy)
            stream_copy_buffer(s->body_buf, s->body_copy);
        upstream_send_body(s->up, s->body_buf, s->body_done);
        if (s->up == NULL || s->finished)
            return;
    }
    pump_body(s);
}

static bool idempotent(const struct stream *s)
{
    switch (s->method_len) {
    case 3:
        return memcmp(s->method, "GET", 3) == 0 || memcmp(s->method, "PUT", 3) == 0;
    case 4:
        return memcmp(s->method, "HEAD", 4) == 0;
    case 6:
        return memcmp(s->method, "DELETE", 6) == 0;
    case 7:
        return memcmp(s->method, "OPTIONS", 7) == 0;
    default:
        return false;
    }
}

/* Upstream failure warnings: at most STREAM_WARN_PER_S a second per worker;
 * the rest are counted and summed up in the next line, so an outage under
 * load does not make stderr the bottleneck. */
#define STREAM_WARN_PER_S 20
static bool warn_allowed(void)
{
    static _Thread_local uint64_t window;
    static _Thread_local unsigned n, suppressed;
    uint64_t now = co_now_ms() / 1000;
    if (now != window) {
        if (suppressed)
            log_warn("%u upstream failure warnings were suppressed (more than %d a second on this worker)", suppressed,
                     STREAM_WARN_PER_S);
        window = now;
        n = suppressed = 0;
    }
    if (n < STREAM_WARN_PER_S) {
        n++;
        return true;
    }
    suppressed++;
    return false;
}

/* Why the failed attempt is not tried again, or NULL when it is (and then
 * the retry has been paid from the route's budget). */
static const char *no_retry(struct stream *s, enum up_fail kind)
{
    const struct retry_conf *rc = &s->route->retry;
    if (kind == UPF_FATAL || s->shadow)
        return "not retryable";
    if (s->resp_started || s->finished)
        return "the response had started";
    if (rc->attempts == 0)
        return "retries are off for this route";
    if (s->attempts > rc->attempts)
        return "retries exhausted";
    if (kind == UPF_MAYBE_SENT && !idempotent(s))
        return "the upstream may have received it and the method is not idempotent";
    if (s->body_started && (s->body_copy == NULL || s->bytes_in > rc->max_body))
        return "the request body was not kept for a replay (larger than retry.max_body)";
    struct retry_budget *b = route_budget(s);
    if (b) {
        if (b->milli < 1000) {
            METRIC_INC(s->worker->metrics.retry_budget_exhausted);
            return "retry budget exhausted";
        }
        b->milli -= 1000;
    }
    return NULL;
}

void stream_up_failed(struct stream *s, int status, const char *why, enum up_fail kind)
{
    struct worker *w = s->worker;
    s->up = NULL;
    s->up_ready = false;
    const char *no = no_retry(s, kind);
    if (no == NULL) {
        /* On another usable endpoint, else the other side, else the same
         * endpoint on a new connection. Even a reused keep-alive connection
         * the upstream closed (the pool race) moves on: the same endpoint
         * may as well be going down. */
        const char *from = s->cluster->name;
        const char *where;
        s->attempts++;
        stream_up_count(w, s, UPC_RETRY);
        s->failed_ep = s->ep_state;
        uint64_t now = health_now_ms();
        if (cluster_usable(s->cluster, s->failed_ep, now)) {
            where = "another endpoint";
        } else {
            int j = s->route->failover ? failover_split(s, now) : -1;
            if (j >= 0) {
                switch_side(s, j);
                where = "the other side";
            } else {
                where = "a new connection (no other usable endpoint)";
            }
        }
        if (warn_allowed())
            log_warn("request %s to cluster %s: %s; retrying (attempt %u) on %s%s%s", s->request_id, from, why, s->attempts, where,
                     s->cluster->name != from ? ", cluster " : "", s->cluster->name != from ? s->cluster->name : "");
        upstream_start(s, true);
        return;
    }
    /* Mirror copies are counted (cutover_mirror_requests_total{result="failed"}), not logged one by one. */
    bool say = !s->shadow && warn_allowed();
    if (say && kind == UPF_FATAL)
        log_warn("request %s to cluster %s endpoint %s: %s; answering %d", s->request_id, s->cluster->name, s->endpoint, why,
                 s->resp_started ? 0 : status);
    else if (say)
        log_warn("request %s to cluster %s endpoint %s: %s; answering %d (not retried: %s)", s->request_id, s->cluster->name,
                 s->endpoint, why, s->resp_started ? 0 : status, no);
    s->t_up_end_us = co_now_us();
    if (!s->resp_started)
        stream_respond(s, status, status == 504 ? "upstream timed out\n" : "upstream unavailable\n");
    else
        finish(s, true);
}

void stream_up_head(struct stream *s, int status, const struct h1_header *fields, size_t n, int64_t content_length)
{
    struct h1_header out[H1_MAX_HEADERS + 2];
    char cookie[256];
    size_t k = 0;
    for (size_t i = 0; i < n && k < H1_MAX_HEADERS; i++)
        out[k++] = fields[i];
    if (s->new_cookie[0]) {
        const struct sticky_conf *st = &s->route->sticky;
        int len = snprintf(cookie, sizeof(cookie), "%s=%s; Path=/; Max-Age=%" PRIu64 "; HttpOnly; SameSite=Lax%s", st->name,
                           s->new_cookie, st->max_age_s, s->tls ? "; Secure" : "");
        out[k].name = "set-cookie";
        out[k].name_len = 10;
        out[k].value = cookie;
        out[k].value_len = (size_t)len < sizeof(cookie) ? (size_t)len : sizeof(cookie) - 1;
        k++;
    }
    s->t_up_end_us = co_now_us();
    s->status = status;
    s->resp_started = true;
    if (s->ep_state && !s->tunnel)
        health_report(s->ep_state, &s->cluster->eject, status >= 500 ? HEV_5XX : HEV_RESPONSE);
    s->ops->send_head(s, status, out, k, content_length);
}

bool stream_up_data(struct stream *s, struct evbuffer *src)
{
    s->bytes_out += evbuffer_get_length(src);
    return s->ops->send_data(s, src);
}

void stream_up_trailers(struct stream *s, const struct h1_header *fields, size_t n)
{
    s->ops->send_trailers(s, fields, n);
}

void stream_up_end(struct stream *s)
{
    struct upstream *up = s->up;
    s->up = NULL;
    s->resp_done = true;
    /* Reusable only when the request went out whole: otherwise the upstream
     * may still be waiting for body bytes that will never come. */
    if (up)
        upstream_release(up, s->body_done || !s->has_body);
    s->ops->send_end(s);
    finish(s, false);
}

void stream_on_down_writable(struct stream *s)
{
    if (s->up && !s->finished)
        upstream_resume(s->up);
}

void stream_abort(struct stream *s)
{
    if (s->up) {
        struct upstream *up = s->up;
        s->up = NULL;
        upstream_release(up, false);
    }
    s->finished = true;
}

void stream_respond(struct stream *s, int status, const char *body)
{
    struct h1_header f[2];
    size_t len = strlen(body);
    f[0].name = "content-type";
    f[0].name_len = 12;
    f[0].value = "text/plain; charset=utf-8";
    f[0].value_len = 25;
    f[1].name = "cache-control";
    f[1].name_len = 13;
    f[1].value = "no-store";
    f[1].value_len = 8;
    s->status = status;
    s->resp_started = true;
    s->ops->send_head(s, status, f, 2, (int64_t)len);
    if (!s->is_head && len) {
        struct evbuffer *b = evbuffer_new();
        evbuffer_add_reference(b, body, len, NULL, NULL);
        s->bytes_out += len;
        s->ops->send_data(s, b);
        evbuffer_free(b);
    }
    s->resp_done = true;
    s->ops->send_end(s);
    finish(s, false);
}

/* The access line is assembled in a stack buffer (outbuf.h) and handed to
 * the log buffer in one evbuffer_add: printf-family formatting was a fifth of
 * the proxy's instructions per request (callgrind), so numbers are
 * formatted by hand. */
/* Microseconds as milliseconds with three decimals ("12.345"). */
static void line_ms(struct outbuf *l, uint64_t us)
{
    ob_u64(l, us / 1000);
    char frac[4] = {'.', (char)('0' + us / 100 % 10), (char)('0' + us / 10 % 10), (char)('0' + us % 10)};
    ob_put(l, frac, 4);
}

static void line_json(struct outbuf *l, const char *s, size_t n)
{
    /* Worst case 6 bytes out per byte in; long values go straight out. */
    if (n * 6 > sizeof(l->buf) - l->n) {
        ob_flush(l);
        if (n * 6 > sizeof(l->buf)) {
            accesslog_json_str(l->out, s, n);
            return;
        }
    }
    static const char hex[] = "0123456789abcdef";
    char *o = l->buf + l->n;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch >= 0x20 && ch < 0x7f && ch != '"' && ch != '\\') {
            *o++ = (char)ch;
        } else if (ch == '"' || ch == '\\') {
            *o++ = '\\';
            *o++ = (char)ch;
        } else {
            memcpy(o, "\\u00", 4);
            o[4] = hex[ch >> 4];
            o[5] = hex[ch & 15];
            o += 6;
        }
    }
    l->n = (size_t)(o - l->buf);
}

/* "2026-11-26T15:01:57.813Z"; the date part is formatted once per second. */
static void line_time(struct outbuf *l)
{
    static _Thread_local time_t cached_sec = -1;
    static _Thread_local char cached[24];
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    if (now.tv_sec != cached_sec) {
        struct tm tm;
        gmtime_r(&now.tv_sec, &tm);
        strftime(cached, sizeof(cached), "%Y-%m-%dT%H:%M:%S", &tm);
        cached_sec = now.tv_sec;
    }
    ob_str(l, cached);
    unsigned ms = (unsigned)(now.tv_nsec / 1000000);
    char frac[5] = {'.', (char)('0' + ms / 100), (char)('0' + ms / 10 % 10), (char)('0' + ms % 10), 'Z'};
    ob_put(l, frac, 5);
}

static void log_line(struct stream *s)
{
    struct accesslog *log = s->worker->log;
    struct outbuf l;
    ob_init(&l, accesslog_buffer(log));
    uint64_t end = co_now_us();
    uint64_t up_us = s->t_up_start_us && s->t_up_end_us > s->t_up_start_us ? s->t_up_end_us - s->t_up_start_us : 0;

    OB_LIT(&l, "{\"time\":\"");
    line_time(&l);
    OB_LIT(&l, "\",\"request_id\":\"");
    line_json(&l, s->request_id, strlen(s->request_id));
    OB_LIT(&l, "\",\"client\":\"");
    ob_str(&l, s->client_ip);
    OB_LIT(&l, "\",\"proto\":\"");
    ob_str(&l, s->proto);
    OB_LIT(&l, "\",\"method\":\"");
    line_json(&l, s->method ? s->method : "", s->method_len);
    OB_LIT(&l, "\",\"host\":\"");
    line_json(&l, s->host ? s->host : "", s->host_len);
    OB_LIT(&l, "\",\"path\":\"");
    line_json(&l, s->target ? s->target : "", s->target_len);
    OB_LIT(&l, "\",\"route\":");
    if (s->route) {
        OB_LIT(&l, "\"");
        line_json(&l, s->route->name, strlen(s->route->name));
        OB_LIT(&l, "\"");
    } else {
        OB_LIT(&l, "null");
    }
    if (s->cluster) {
        OB_LIT(&l, ",\"cluster\":\"");
        ob_str(&l, s->cluster->name);
        OB_LIT(&l, "\",\"endpoint\":\"");
        ob_str(&l, s->endpoint);
        OB_LIT(&l, "\",\"decision\":\"");
        ob_str(&l, decide_reason_name(s->reason));
        OB_LIT(&l, "\"");
    } else {
        OB_LIT(&l, ",\"cluster\":null,\"endpoint\":null,\"decision\":null");
    }
    if (s->override_rejected)
        OB_LIT(&l, ",\"override_rejected\":true,\"status\":");
    else
        OB_LIT(&l, ",\"override_rejected\":false,\"status\":");
    ob_u64(&l, (uint64_t)s->status);
    OB_LIT(&l, ",\"bytes_in\":");
    ob_u64(&l, s->bytes_in);
    OB_LIT(&l, ",\"bytes_out\":");
    ob_u64(&l, s->bytes_out);
    OB_LIT(&l, ",\"duration_ms\":");
    line_ms(&l, end - s->t_start_us);
    OB_LIT(&l, ",\"upstream_ms\":");
    line_ms(&l, up_us);
    OB_LIT(&l, ",\"attempts\":");
    ob_u64(&l, s->attempts);
    if (s->resp_done)
        OB_LIT(&l, ",\"completed\":true}\n");
    else
        OB_LIT(&l, ",\"completed\":false}\n");
    ob_flush(&l);
    accesslog_commit(log);
}

void stream_free(struct stream *s)
{
    struct worker *w = s->worker;
    if (s->up) {
        struct upstream *up = s->up;
        s->up = NULL;
        upstream_release(up, false);
    }
    if (s->mirror_waiting) {
        s->mirror_waiting = false;
        mirror_drop(s, "the request ended before its body was complete");
    }
    if (s->mirror)
        mirror_primary_done(s);
    if (s->method && !s->shadow) {
        if (s->route)
            METRIC_INC(w->metrics.reason[s->reason]);
        if (s->rstats)
            stats_record(s->rstats, (int)s->reason, s->resp_done ? s->status / 100 : 0, co_now_us() - s->t_start_us);
        METRIC_INC(w->metrics.requests);
        METRIC_INC(w->metrics.status_class[s->resp_done ? (unsigned)(s->status / 100) % 6 : 0]);
        log_line(s);
    }
    if (s->body_buf)
        evbuffer_free(s->body_buf);
    if (s->body_copy)
        evbuffer_free(s->body_copy);
    config_unref(s->cfg);
    free(s->head);
    free(s->fields);
    free(s);
}
