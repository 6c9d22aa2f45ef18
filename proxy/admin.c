/*
 * admin.c - the admin listener on the main thread (libevent's evhttp: the
 * admin side is loopback or token-protected, small and not on the request
 * path, so a general-purpose HTTP server is the right tool there).
 */
#include "admin.h"

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <openssl/crypto.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../config/config.h"
#include "accesslog.h"
#include "app.h"
#include "health.h"
#include "ramp.h"
#include "report.h"
#include "common.h"
#include "decide.h"
#include "worker.h"

struct admin {
    struct app *app;
    struct evhttp *http;
    char *token; /* fixed at start like the address: a reload that drops or
                    changes the token must not open the admin side */
};

/* Sum one counter over all workers (offset of the metric_t in struct metrics). */
static uint64_t sum_at(const struct app *app, size_t offset)
{
    uint64_t total = 0;
    for (unsigned i = 0; i < app->n_workers; i++)
        total += METRIC_GET(*(metric_t *)((char *)&app->workers[i]->metrics + offset));
    return total;
}
#define SUM(app, field) sum_at((app), offsetof(struct metrics, field))

static void metric_head(struct evbuffer *b, const char *name, const char *type, const char *help)
{
    evbuffer_add_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void metric_plain(struct evbuffer *b, const char *name, const char *type, const char *help, uint64_t v)
{
    metric_head(b, name, type, help);
    evbuffer_add_printf(b, "%s %llu\n", name, (unsigned long long)v);
}

/* Sum of one worker-table counter across workers, by labels. */
struct agg_route {
    const char *route, *cluster;
    uint64_t requests[4][6];
    uint64_t bucket[METRICS_BUCKETS];
    uint64_t count, sum_us;
    uint64_t mirror_sent, mirror_skipped, mirror_failed, mirror_mismatch;
};

struct agg_cluster {
    const char *cluster;
    uint64_t connect_errors, timeouts, retries, bad_responses;
};

static void labelled_metrics(struct app *app, struct evbuffer *b)
{
    static const char *classes[6] = {"aborted", "1xx", "2xx", "3xx", "4xx", "5xx"};
    struct agg_route *ar = NULL;
    size_t n_ar = 0;
    struct agg_cluster *ac = NULL;
    size_t n_ac = 0;
    for (unsigned w = 0; w < app->n_workers; w++) {
        struct stats_table *t = app->workers[w]->stats;
        size_t n = atomic_load_explicit(&t->n_routes, memory_order_acquire);
        for (size_t i = 0; i < n; i++) {
            struct route_stats *rs = t->routes[i];
            size_t k = 0;
            while (k < n_ar && (strcmp(ar[k].route, rs->route) != 0 || strcmp(ar[k].cluster, rs->cluster) != 0))
                k++;
            if (k == n_ar) {
                ar = co_realloc(ar, (n_ar + 1) * sizeof(*ar));
                memset(&ar[k], 0, sizeof(ar[k]));
                ar[k].route = rs->route;
                ar[k].cluster = rs->cluster;
                n_ar++;
            }
            for (int r = 0; r < 4; r++)
                for (int c = 0; c < 6; c++)
                    ar[k].requests[r][c] += METRIC_GET(rs->requests[r][c]);
            for (int q = 0; q < METRICS_BUCKETS; q++)
                ar[k].bucket[q] += METRIC_GET(rs->duration_bucket[q]);
            ar[k].count += METRIC_GET(rs->duration_count);
            ar[k].sum_us += METRIC_GET(rs->duration_sum_us);
            ar[k].mirror_sent += METRIC_GET(rs->mirror_sent);
            ar[k].mirror_skipped += METRIC_GET(rs->mirror_skipped);
            ar[k].mirror_failed += METRIC_GET(rs->mirror_failed);
            ar[k].mirror_mismatch += METRIC_GET(rs->mirror_mismatch);
        }
        n = atomic_load_explicit(&t->n_clusters, memory_order_acquire);
        for (size_t i = 0; i < n; i++) {
            struct cluster_stats *cs = t->clusters[i];
            size_t k = 0;
            while (k < n_ac && strcmp(ac[k].cluster, cs->cluster) != 0)
                k++;
            if (k == n_ac) {
                ac = co_realloc(ac, (n_ac + 1) * sizeof(*ac));
                memset(&ac[k], 0, sizeof(ac[k]));
                ac[k].cluster = cs->cluster;
                n_ac++;
            }
            ac[k].connect_errors += METRIC_GET(cs->connect_errors);
            ac[k].timeouts += METRIC_GET(cs->timeouts);
            ac[k].retries += METRIC_GET(cs->retries);
            ac[k].bad_responses += METRIC_GET(cs->bad_responses);
        }
    }
    metric_head(b, "cutover_requests_total", "counter", "Routed requests by route, cluster, decision reason and status class.");
    for (size_t k = 0; k < n_ar; k++)
        for (int r = 0; r < 4; r++)
            for (int c = 0; c < 6; c++)
                if (ar[k].requests[r][c])
                    evbuffer_add_printf(b,
                                        "cutover_requests_total{route=\"%s\",cluster=\"%s\",decision=\"%s\",class=\"%s\"} "
                                        "%llu\n",
                                        ar[k].route, ar[k].cluster, decide_reason_name((enum decide_reason)r), classes[c],
                                        (unsigned long long)ar[k].requests[r][c]);
    metric_head(b, "cutover_request_duration_seconds", "histogram",
                "Time from the request head to the end of the response, by route and cluster.");
    for (size_t k = 0; k < n_ar; k++) {
        uint64_t cum = 0;
        for (int q = 0; q < METRICS_BUCKETS; q++) {
            cum += ar[k].bucket[q];
            evbuffer_add_printf(b, "cutover_request_duration_seconds_bucket{route=\"%s\",cluster=\"%s\",le=\"%g\"} %llu\n",
                                ar[k].route, ar[k].cluster, (double)metrics_bucket_us[q] / 1e6, (unsigned long long)cum);
        }
        evbuffer_add_printf(b, "cutover_request_duration_seconds_bucket{route=\"%s\",cluster=\"%s\",le=\"+Inf\"} %llu\n",
                            ar[k].route, ar[k].cluster, (unsigned long long)ar[k].count);
        evbuffer_add_printf(b, "cutover_request_duration_seconds_sum{route=\"%s\",cluster=\"%s\"} %.6f\n", ar[k].route,
                            ar[k].cluster, (double)ar[k].sum_us / 1e6);
        evbuffer_add_printf(b, "cutover_request_duration_seconds_count{route=\"%s\",cluster=\"%s\"} %llu\n", ar[k].route,
                            ar[k].cluster, (unsigned long long)ar[k].count);
    }
    metric_head(b, "cutover_mirror_requests_total", "counter",
                "Mirror copies by route and mirror cluster: sent, skipped (in-flight cap, body over max_body) or failed "
                "(no upstream response).");
    for (size_t k = 0; k < n_ar; k++) {
        if (ar[k].mirror_sent + ar[k].mirror_skipped + ar[k].mirror_failed + ar[k].mirror_mismatch == 0)
            continue;
        evbuffer_add_printf(b, "cutover_mirror_requests_total{route=\"%s\",cluster=\"%s\",result=\"sent\"} %llu\n", ar[k].route,
                            ar[k].cluster, (unsigned long long)ar[k].mirror_sent);
        evbuffer_add_printf(b, "cutover_mirror_requests_total{route=\"%s\",cluster=\"%s\",result=\"skipped\"} %llu\n", ar[k].route,
                            ar[k].cluster, (unsigned long long)ar[k].mirror_skipped);
        evbuffer_add_printf(b, "cutover_mirror_requests_total{route=\"%s\",cluster=\"%s\",result=\"failed\"} %llu\n", ar[k].route,
                            ar[k].cluster, (unsigned long long)ar[k].mirror_failed);
    }
    metric_head(b, "cutover_mirror_mismatch_total", "counter",
                "Mirror copies whose status class differed from the real response, by route and mirror cluster.");
    for (size_t k = 0; k < n_ar; k++)
        if (ar[k].mirror_sent + ar[k].mirror_mismatch)
            evbuffer_add_printf(b, "cutover_mirror_mismatch_total{route=\"%s\",cluster=\"%s\"} %llu\n", ar[k].route, ar[k].cluster,
                                (unsigned long long)ar[k].mirror_mismatch);
    const struct {
        const char *name, *help;
        size_t off;
    } up[] = {
        {"cutover_upstream_connect_errors_total", "Upstream connections that failed, timed out or failed TLS, by cluster.",
         offsetof(struct agg_cluster, connect_errors)},
        {"cutover_upstream_timeouts_total", "Upstream responses that timed out, by cluster.",
         offsetof(struct agg_cluster, timeouts)},
        {"cutover_upstream_bad_responses_total", "Malformed or truncated upstream responses, by cluster.",
         offsetof(struct agg_cluster, bad_responses)},
        {"cutover_upstream_retries_total", "Requests retried upstream, by cluster.", offsetof(struct agg_cluster, retries)},
    };
    for (size_t m = 0; m < CO_ARRAY_SIZE(up); m++) {
        metric_head(b, up[m].name, "counter", up[m].help);
        for (size_t k = 0; k < n_ac; k++)
            evbuffer_add_printf(b, "%s{cluster=\"%s\"} %llu\n", up[m].name, ac[k].cluster,
                                (unsigned long long)*(uint64_t *)((char *)&ac[k] + up[m].off));
    }
    free(ar);
    free(ac);
}

/* Share of split entry k now: the ramp's, else the written weights'. */
static double live_share(const struct route_conf *rt, size_t k)
{
    if (rt->ramp_state) {
        uint32_t share = atomic_load(&rt->ramp_state->share);
        if (share != RAMP_SHARE_WEIGHTS)
            return (k == 0 ? (double)share : (double)(CONFIG_BUCKETS - share)) / CONFIG_BUCKETS;
    }
    return (double)rt->split[k].weight / (double)rt->total_weight;
}

void admin_metrics(struct app *app, struct evbuffer *b)
{
    static const char *classes[6] = {"aborted", "1xx", "2xx", "3xx", "4xx", "5xx"};
    const struct config *cfg = app->cfg;

    metric_head(b, "cutover_build_info", "gauge", "Version of this cutover binary.");
    evbuffer_add_printf(b, "cutover_build_info{version=\"%s\"} 1\n", CUTOVER_VERSION);

    metric_head(b, "cutover_responses_total", "counter",
                "Responses by status class, routed or not (aborted = no complete response).");
    for (int c = 0; c < 6; c++) {
        uint64_t v = 0;
        for (unsigned i = 0; i < app->n_workers; i++)
            v += METRIC_GET(app->workers[i]->metrics.status_class[c]);
        evbuffer_add_printf(b, "cutover_responses_total{class=\"%s\"} %llu\n", classes[c], (unsigned long long)v);
    }
    metric_head(b, "cutover_decisions_total", "counter", "Side decisions by reason.");
    for (int r = 0; r < 4; r++) {
        uint64_t v = 0;
        for (unsigned i = 0; i < app->n_workers; i++)
            v += METRIC_GET(app->workers[i]->metrics.reason[r]);
        evbuffer_add_printf(b, "cutover_decisions_total{reason=\"%s\"} %llu\n", decide_reason_name((enum decide_reason)r),
                            (unsigned long long)v);
    }
    labelled_metrics(app, b);
    metric_plain(b, "cutover_retry_budget_exhausted_total", "counter",
                 "Retries refused because the route's retry budget was spent.", SUM(app, retry_budget_exhausted));
    health_metrics(app->health, b);
    ramps_metrics(app->ramps, b);
    metric_plain(b, "cutover_override_rejected_total", "counter", "Override values present but not validly signed.",
                 SUM(app, override_rejected));
    metric_plain(b, "cutover_no_route_total", "counter", "Requests answered 404 because no route matched.", SUM(app, no_route));
    metric_plain(b, "cutover_bad_requests_total", "counter", "Requests refused by the parser or a limit.", SUM(app, bad_requests));
    metric_plain(b, "cutover_connections_accepted_total", "counter", "Downstream connections accepted.", SUM(app, conns_accepted));
    metric_head(b, "cutover_downstream_connections", "gauge", "Open downstream connections by protocol.");
    evbuffer_add_printf(b, "cutover_downstream_connections{protocol=\"http1\"} %llu\n", (unsigned long long)SUM(app, conns_h1));
    evbuffer_add_printf(b, "cutover_downstream_connections{protocol=\"http2\"} %llu\n", (unsigned long long)SUM(app, conns_h2));
    metric_plain(b, "cutover_tls_handshake_failures_total", "counter", "Downstream TLS handshakes that failed or timed out.",
                 SUM(app, tls_handshake_failures));
    metric_plain(b, "cutover_h2_abuse_closes_total", "counter",
                 "HTTP/2 connections ended for abuse (glitch budget exhausted, outbound queue over its cap).", SUM(app, h2_calm));
    metric_plain(b, "cutover_access_log_dropped_total", "counter", "Access-log lines dropped because stdout fell behind.",
                 SUM(app, log_dropped));

    metric_head(b, "cutover_route_share", "gauge",
                "Share of each route's traffic per cluster now (0..1): the written weights, or the ramp's step.");
    for (size_t r = 0; r < cfg->n_routes; r++) {
        const struct route_conf *rt = &cfg->routes[r];
        for (size_t k = 0; k < rt->n_split; k++)
            evbuffer_add_printf(b, "cutover_route_share{route=\"%s\",cluster=\"%s\"} %.6f\n", rt->name, rt->split[k].cluster->name,
                                live_share(rt, k));
    }
    metric_plain(b, "cutover_config_generation", "gauge", "Generation of the config in use (1 at start, +1 per reload).",
                 app->generation);
    metric_head(b, "cutover_config_reloads_total", "counter", "Reload attempts by result.");
    evbuffer_add_printf(b, "cutover_config_reloads_total{result=\"success\"} %llu\n", (unsigned long long)app->reloads_ok);
    evbuffer_add_printf(b, "cutover_config_reloads_total{result=\"failure\"} %llu\n", (unsigned long long)app->reloads_failed);
    metric_plain(b, "cutover_config_last_reload_success", "gauge", "1 if the last reload succeeded (or none happened).",
                 app->last_reload_ok ? 1 : 0);
    metric_plain(b, "cutover_ready", "gauge", "1 while accepting traffic, 0 while draining.", app->draining ? 0 : 1);
}

void admin_status(struct app *app, struct evbuffer *b)
{
    const struct config *cfg = app->cfg;
    evbuffer_add_printf(b, "{\"version\":\"%s\",\"generation\":%llu,\"config_file\":", CUTOVER_VERSION,
                        (unsigned long long)app->generation);
    report_json_str(b, app->config_path);
    evbuffer_add_printf(b, ",\"workers\":%u,\"ready\":%s,\"uptime_s\":%lld,\"last_reload\":{\"ok\":%s,\"time\":%lld,\"error\":",
                        app->n_workers, app->draining ? "false" : "true", (long long)(time(NULL) - app->started),
                        app->last_reload_ok ? "true" : "false", (long long)app->last_reload_time);
    if (app->last_reload_ok)
        ADD_LIT(b, "null");
    else
        report_json_str(b, app->last_reload_error);
    evbuffer_add_printf(b, ",\"successes\":%llu,\"failures\":%llu},\"routes\":[", (unsigned long long)app->reloads_ok,
                        (unsigned long long)app->reloads_failed);
    for (size_t r = 0; r < cfg->n_routes; r++) {
        const struct route_conf *rt = &cfg->routes[r];
        evbuffer_add_printf(b, "%s{\"name\":", r ? "," : "");
        report_json_str(b, rt->name);
        ADD_LIT(b, ",\"match\":{\"host\":");
        if (rt->host) {
            char host[300];
            snprintf(host, sizeof(host), "%s%s", rt->host_suffix ? "*" : "", rt->host);
            report_json_str(b, host);
        } else {
            ADD_LIT(b, "null");
        }
        evbuffer_add_printf(b, ",\"%s\":", rt->path_exact ? "path" : "path_prefix");
        report_json_str(b, rt->path);
        ADD_LIT(b, "},\"split\":[");
        for (size_t k = 0; k < rt->n_split; k++) {
            evbuffer_add_printf(b, "%s{\"cluster\":", k ? "," : "");
            report_json_str(b, rt->split[k].cluster->name);
            evbuffer_add_printf(b, ",\"weight\":%u,\"share\":%.6f}", rt->split[k].weight, live_share(rt, k));
        }
        static const char *sticky[] = {"none", "cookie", "header", "client_ip"};
        evbuffer_add_printf(b,
                            "],\"sticky\":\"%s\",\"override\":%s,\"failover\":%s,\"retry\":{\"attempts\":%u,\"budget\":%.4f},"
                            "\"mirror\":",
                            sticky[rt->sticky.kind], rt->override.enabled ? "true" : "false", rt->failover ? "true" : "false",
                            rt->retry.attempts, rt->retry.budget / 10000.0);
        if (rt->mirror.cluster) {
            ADD_LIT(b, "{\"cluster\":");
            report_json_str(b, rt->mirror.cluster->name);
            evbuffer_add_printf(b, ",\"percent\":%.2f,\"compare\":%s}", rt->mirror.share / 100.0,
                                rt->mirror.compare ? "true" : "false");
        } else {
            ADD_LIT(b, "null");
        }
        evbuffer_add_printf(b, ",\"ramp\":%s}", rt->ramp.enabled ? "true" : "false");
    }
    ADD_LIT(b, "],\"clusters\":[");
    for (size_t c = 0; c < cfg->n_clusters; c++) {
        const struct cluster_conf *cl = &cfg->clusters[c];
        evbuffer_add_printf(b, "%s{\"name\":", c ? "," : "");
        report_json_str(b, cl->name);
        ADD_LIT(b, ",\"host\":");
        if (cl->host)
            report_json_str(b, cl->host);
        else
            ADD_LIT(b, "null");
        ADD_LIT(b, ",\"endpoints\":[");
        for (size_t e = 0; e < cl->n_endpoints; e++) {
            evbuffer_add_printf(b, "%s{\"name\":", e ? "," : "");
            report_json_str(b, cl->endpoints[e].name);
            const struct ep_state *st = cl->endpoints[e].state;
            evbuffer_add_printf(b, ",\"usable\":%s}", health_usable(st, health_now_ms()) ? "true" : "false");
        }
        evbuffer_add_printf(b, "],\"health_checks\":%s}", cl->health.enabled ? "true" : "false");
    }
    ADD_LIT(b, "],\"endpoints\":");
    health_status_json(app->health, b);
    ADD_LIT(b, ",\"ramps\":");
    ramps_status_json(app->ramps, b);
    evbuffer_add_printf(b, ",\"requests\":%llu}\n", (unsigned long long)SUM(app, requests));
}

static void reply(struct evhttp_request *req, int code, const char *reason, const char *type, struct evbuffer *body)
{
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    evhttp_add_header(h, "Content-Type", type);
    evhttp_add_header(h, "Cache-Control", "no-store");
    evhttp_send_reply(req, code, reason, body);
}

static void reply_text(struct evhttp_request *req, int code, const char *reason, const char *text)
{
    struct evbuffer *b = evbuffer_new();
    evbuffer_add(b, text, strlen(text));
    reply(req, code, reason, "text/plain; charset=utf-8", b);
    evbuffer_free(b);
}

/* Bearer token check in constant time. True when no token is configured. */
static bool authorized(struct admin *a, struct evhttp_request *req)
{
    const char *token = a->token;
    if (token == NULL)
        return true;
    const char *h = evhttp_find_header(evhttp_request_get_input_headers(req), "Authorization");
    if (h == NULL || strncmp(h, "Bearer ", 7) != 0)
        return false;
    const char *given = h + 7;
    size_t n = strlen(token);
    return strlen(given) == n && CRYPTO_memcmp(given, token, n) == 0;
}

static void on_request(struct evhttp_request *req, void *arg)
{
    struct admin *a = arg;
    struct app *app = a->app;
    const char *uri = evhttp_request_get_uri(req);
    enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
    char path[256];
    size_t n = strcspn(uri, "?");
    if (n >= sizeof(path))
        n = sizeof(path) - 1;
    memcpy(path, uri, n);
    path[n] = '\0';
    bool get = cmd == EVHTTP_REQ_GET || cmd == EVHTTP_REQ_HEAD;

    if (strcmp(path, "/live") == 0 && get) {
        reply_text(req, 200, "OK", "live\n");
    } else if (strcmp(path, "/ready") == 0 && get) {
        if (app->draining)
            reply_text(req, 503, "Service Unavailable", "draining\n");
        else
            reply_text(req, 200, "OK", "ready\n");
    } else if (strcmp(path, "/metrics") == 0 && get) {
        struct evbuffer *b = evbuffer_new();
        admin_metrics(app, b);
        reply(req, 200, "OK", "text/plain; version=0.0.4; charset=utf-8", b);
        evbuffer_free(b);
    } else if (strcmp(path, "/status") == 0 && get) {
        struct evbuffer *b = evbuffer_new();
        admin_status(app, b);
        reply(req, 200, "OK", "application/json", b);
        evbuffer_free(b);
    } else if (strcmp(path, "/reload") == 0) {
        if (cmd != EVHTTP_REQ_POST) {
            evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", "POST");
            reply_text(req, 405, "Method Not Allowed", "use POST\n");
            return;
        }
        if (!authorized(a, req)) {
            evhttp_add_header(evhttp_request_get_output_headers(req), "WWW-Authenticate", "Bearer");
            reply_text(req, 401, "Unauthorized", "a valid bearer token is required\n");
            return;
        }
        int rc = app_reload(app, "admin");
        struct evbuffer *b = evbuffer_new();
        evbuffer_add_printf(b, "{\"ok\":%s,\"generation\":%llu,\"error\":", rc == CO_OK ? "true" : "false",
                            (unsigned long long)app->generation);
        if (rc == CO_OK)
            ADD_LIT(b, "null");
        else
            report_json_str(b, app->last_reload_error);
        ADD_LIT(b, "}\n");
        if (rc == CO_OK)
            reply(req, 200, "OK", "application/json", b);
        else if (app->draining)
            reply(req, 503, "Service Unavailable", "application/json", b);
        else
            reply(req, 422, "Unprocessable Content", "application/json", b);
        evbuffer_free(b);
    } else if (strcmp(path, "/live") == 0 || strcmp(path, "/ready") == 0 || strcmp(path, "/metrics") == 0 ||
               strcmp(path, "/status") == 0) {
        evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", "GET, HEAD");
        reply_text(req, 405, "Method Not Allowed", "use GET\n");
    } else {
        reply_text(req, 404, "Not Found", "not found: try /metrics, /status, /ready, /live, POST /reload\n");
    }
}

struct admin *admin_new(struct app *app)
{
    const struct admin_conf *conf = &app->cfg->admin;
    struct admin *a = co_calloc(1, sizeof(*a));
    a->app = app;
    a->token = conf->token ? co_strdup(conf->token) : NULL;
    a->http = evhttp_new(app->base);
    evhttp_set_allowed_methods(a->http, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD | EVHTTP_REQ_POST);
    evhttp_set_max_headers_size(a->http, 16 * 1024);
    evhttp_set_max_body_size(a->http, 64 * 1024);
    evhttp_set_timeout(a->http, 10);
    evhttp_set_gencb(a->http, on_request, a);
    /* evhttp binds by host string: split the address text. */
    char host[128];
    const char *text = conf->addr.text;
    const char *colon = strrchr(text, ':');
    size_t hl = colon ? (size_t)(colon - text) : 0;
    if (hl >= sizeof(host) || colon == NULL) {
        log_error("admin: bad address %s", text);
        admin_free(a);
        return NULL;
    }
    memcpy(host, text, hl);
    host[hl] = '\0';
    if (host[0] == '[') {
        memmove(host, host + 1, hl);
        host[strlen(host) - 1] = '\0';
    }
    if (evhttp_bind_socket(a->http, host, (uint16_t)atoi(colon + 1)) != 0) {
        log_error("admin: cannot listen on %s; admin endpoints are unavailable", text);
        admin_free(a);
        return NULL;
    }
    log_info("admin listening on %s%s", text, conf->token ? " (token required for writes)" : "");
    return a;
}

void admin_free(struct admin *a)
{
    if (a == NULL)
        return;
    if (a->http)
        evhttp_free(a->http);
    free(a->token);
    free(a);
}
