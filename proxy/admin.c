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
#include "common.h"
#include "decide.h"
#include "worker.h"

struct admin {
    struct app *app;
    struct evhttp *http;
};

static void json_str(struct evbuffer *b, const char *s)
{
    ADD_LIT(b, "\"");
    accesslog_json_str(b, s, strlen(s));
    ADD_LIT(b, "\"");
}

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

void admin_metrics(struct app *app, struct evbuffer *b)
{
    static const char *classes[6] = {"aborted", "1xx", "2xx", "3xx", "4xx", "5xx"};
    const struct config *cfg = app->cfg;

    metric_head(b, "cutover_build_info", "gauge", "Version of this cutover binary.");
    evbuffer_add_printf(b, "cutover_build_info{version=\"%s\"} 1\n", CUTOVER_VERSION);

    metric_head(b, "cutover_requests_total", "counter", "Requests answered, by status class (aborted = no complete response).");
    for (int c = 0; c < 6; c++) {
        uint64_t v = 0;
        for (unsigned i = 0; i < app->n_workers; i++)
            v += METRIC_GET(app->workers[i]->metrics.status_class[c]);
        evbuffer_add_printf(b, "cutover_requests_total{class=\"%s\"} %llu\n", classes[c], (unsigned long long)v);
    }
    metric_head(b, "cutover_decisions_total", "counter", "Side decisions by reason.");
    for (int r = 0; r < 4; r++) {
        uint64_t v = 0;
        for (unsigned i = 0; i < app->n_workers; i++)
            v += METRIC_GET(app->workers[i]->metrics.reason[r]);
        evbuffer_add_printf(b, "cutover_decisions_total{reason=\"%s\"} %llu\n", decide_reason_name((enum decide_reason)r),
                            (unsigned long long)v);
    }
    metric_plain(b, "cutover_override_rejected_total", "counter", "Override values present but not validly signed.",
                 SUM(app, override_rejected));
    metric_plain(b, "cutover_no_route_total", "counter", "Requests answered 404 because no route matched.", SUM(app, no_route));
    metric_plain(b, "cutover_bad_requests_total", "counter", "Requests refused by the parser or a limit.", SUM(app, bad_requests));
    metric_plain(b, "cutover_upstream_connect_errors_total", "counter", "Upstream connections that failed or timed out.",
                 SUM(app, upstream_connect_errors));
    metric_plain(b, "cutover_upstream_timeouts_total", "counter", "Upstream responses that timed out.",
                 SUM(app, upstream_timeouts));
    metric_plain(b, "cutover_upstream_bad_responses_total", "counter", "Malformed or truncated upstream responses.",
                 SUM(app, upstream_bad_responses));
    metric_plain(b, "cutover_upstream_retries_total", "counter", "Requests retried on a new upstream connection.",
                 SUM(app, upstream_retries));
    metric_plain(b, "cutover_connections_accepted_total", "counter", "Downstream connections accepted.",
                 SUM(app, conns_accepted));
    metric_head(b, "cutover_downstream_connections", "gauge", "Open downstream connections by protocol.");
    evbuffer_add_printf(b, "cutover_downstream_connections{protocol=\"http1\"} %llu\n",
                        (unsigned long long)SUM(app, conns_h1));
    evbuffer_add_printf(b, "cutover_downstream_connections{protocol=\"http2\"} %llu\n",
                        (unsigned long long)SUM(app, conns_h2));
    metric_plain(b, "cutover_tls_handshake_failures_total", "counter", "Downstream TLS handshakes that failed or timed out.",
                 SUM(app, tls_handshake_failures));
    metric_plain(b, "cutover_access_log_dropped_total", "counter", "Access-log lines dropped because stdout fell behind.",
                 SUM(app, log_dropped));

    metric_head(b, "cutover_route_share", "gauge", "Configured share of each route's traffic per cluster (0..1).");
    for (size_t r = 0; r < cfg->n_routes; r++) {
        const struct route_conf *rt = &cfg->routes[r];
        for (size_t k = 0; k < rt->n_split; k++)
            evbuffer_add_printf(b, "cutover_route_share{route=\"%s\",cluster=\"%s\"} %.6f\n", rt->name,
                                rt->split[k].cluster->name, (double)rt->split[k].weight / (double)rt->total_weight);
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
    json_str(b, app->config_path);
    evbuffer_add_printf(b, ",\"workers\":%u,\"ready\":%s,\"uptime_s\":%lld,\"last_reload\":{\"ok\":%s,\"time\":%lld,\"error\":",
                        app->n_workers, app->draining ? "false" : "true", (long long)(time(NULL) - app->started),
                        app->last_reload_ok ? "true" : "false", (long long)app->last_reload_time);
    if (app->last_reload_ok)
        ADD_LIT(b, "null");
    else
        json_str(b, app->last_reload_error);
    evbuffer_add_printf(b, ",\"successes\":%llu,\"failures\":%llu},\"routes\":[", (unsigned long long)app->reloads_ok,
                        (unsigned long long)app->reloads_failed);
    for (size_t r = 0; r < cfg->n_routes; r++) {
        const struct route_conf *rt = &cfg->routes[r];
        evbuffer_add_printf(b, "%s{\"name\":", r ? "," : "");
        json_str(b, rt->name);
        ADD_LIT(b, ",\"match\":{\"host\":");
        if (rt->host) {
            char host[300];
            snprintf(host, sizeof(host), "%s%s", rt->host_suffix ? "*" : "", rt->host);
            json_str(b, host);
        } else {
            ADD_LIT(b, "null");
        }
        evbuffer_add_printf(b, ",\"%s\":", rt->path_exact ? "path" : "path_prefix");
        json_str(b, rt->path);
        ADD_LIT(b, "},\"split\":[");
        for (size_t k = 0; k < rt->n_split; k++) {
            evbuffer_add_printf(b, "%s{\"cluster\":", k ? "," : "");
            json_str(b, rt->split[k].cluster->name);
            evbuffer_add_printf(b, ",\"weight\":%u,\"share\":%.6f}", rt->split[k].weight,
                                (double)rt->split[k].weight / (double)rt->total_weight);
        }
        static const char *sticky[] = {"none", "cookie", "header", "client_ip"};
        evbuffer_add_printf(b, "],\"sticky\":\"%s\",\"override\":%s}", sticky[rt->sticky.kind],
                            rt->override.enabled ? "true" : "false");
    }
    ADD_LIT(b, "],\"clusters\":[");
    for (size_t c = 0; c < cfg->n_clusters; c++) {
        const struct cluster_conf *cl = &cfg->clusters[c];
        evbuffer_add_printf(b, "%s{\"name\":", c ? "," : "");
        json_str(b, cl->name);
        ADD_LIT(b, ",\"host\":");
        if (cl->host)
            json_str(b, cl->host);
        else
            ADD_LIT(b, "null");
        ADD_LIT(b, ",\"endpoints\":[");
        for (size_t e = 0; e < cl->n_endpoints; e++) {
            evbuffer_add_printf(b, "%s{\"name\":", e ? "," : "");
            json_str(b, cl->endpoints[e].name);
            evbuffer_add_printf(b, ",\"addresses\":%zu}", cl->endpoints[e].n_addrs);
        }
        ADD_LIT(b, "]}");
    }
    evbuffer_add_printf(b, "],\"requests\":%llu}\n", (unsigned long long)SUM(app, requests));
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
static bool authorized(struct app *app, struct evhttp_request *req)
{
    const char *token = app->cfg->admin.token;
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
        if (!authorized(app, req)) {
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
            json_str(b, app->last_reload_error);
        ADD_LIT(b, "}\n");
        reply(req, rc == CO_OK ? 200 : 422, rc == CO_OK ? "OK" : "Unprocessable Content", "application/json", b);
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
    free(a);
}
