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
#include "outbuf.h"
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

/* Pick the split entry: override > sticky > weight (DESIGN.md). */
static void decide(struct stream *s)
{
    const struct route_conf *r = s->route;
    struct worker *w = s->worker;
    int idx = -1;

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
            idx = decide_sticky(r, decide_bucket(key, klen));
            s->reason = DECIDE_STICKY;
        }
    }

    if (idx < 0) {
        idx = decide_weight(&w->wrr[r->index], r);
        s->reason = DECIDE_WEIGHT;
    }
    s->split_index = idx;
    s->cluster = r->split[idx].cluster;
    METRIC_INC(w->metrics.reason[s->reason]);
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

void stream_start(struct stream *s)
{
    s->route = router_match(s->cfg, s->host, s->host_len, s->target, s->target_len);
    if (s->route == NULL) {
        METRIC_INC(s->worker->metrics.no_route);
        stream_respond(s, 404, "no route for this host and path\n");
        return;
    }
    decide(s);
    bind_stats(s);
    s->body_buf = evbuffer_new();
    s->attempts = 1;
    s->t_up_start_us = co_now_us();
    upstream_start(s, false);
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
    if (s->expect_continue && s->has_body && !s->body_started)
        s->ops->send_continue(s);
    if (!s->has_body)
        s->body_done = true;
    pump_body(s);
}

void stream_up_failed(struct stream *s, int status, const char *why, bool retryable)
{
    struct worker *w = s->worker;
    s->up = NULL;
    s->up_ready = false;
    if (retryable && !s->body_started && !s->resp_started && s->attempts < 2) {
        s->attempts++;
        stream_up_count(w, s, UPC_RETRY);
        log_warn("request %s to cluster %s: %s; retrying on a new connection", s->request_id, s->cluster->name, why);
        upstream_start(s, true);
        return;
    }
    log_warn("request %s to cluster %s endpoint %s: %s; answering %d", s->request_id, s->cluster->name, s->endpoint, why,
             s->resp_started ? 0 : status);
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
    if (s->method) {
        if (s->rstats)
            stats_record(s->rstats, (int)s->reason, s->resp_done ? s->status / 100 : 0, co_now_us() - s->t_start_us);
        METRIC_INC(w->metrics.requests);
        METRIC_INC(w->metrics.status_class[s->resp_done ? (unsigned)(s->status / 100) % 6 : 0]);
        log_line(s);
    }
    if (s->body_buf)
        evbuffer_free(s->body_buf);
    config_unref(s->cfg);
    free(s->head);
    free(s->fields);
    free(s);
}
