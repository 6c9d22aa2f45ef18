/*
 * health.c - the endpoint registry (struct ep_state per cluster and
 * endpoint name), active health checks, passive ejection and the DNS
 * resolver, all on the main thread's event_base except health_report(),
 * health_usable() and health_addrs(), which workers call (see health.h for
 * the threading rules).
 *
 * Probes: one HTTP request per endpoint per interval over a new connection
 * (upconnect_start: TCP, then TLS with the cluster's SNI, verification and
 * ALPN). HTTP/1.1 for `protocol: http1`; HTTP/2 for `protocol: h2` (prior
 * knowledge in cleartext, ALPN h2 over TLS); `protocol: auto` over TLS
 * offers "h2,http/1.1" like the request path does and speaks what ALPN
 * chose, so the probe exercises the same protocol as the traffic.
 *
 * DNS: evdns on the main base. A and AAAA are asked together; the answers
 * are merged, sorted and de-duplicated so that a server rotating its
 * records is not a change. A family that fails for a transient reason
 * (timeout, SERVFAIL) keeps the addresses it had; a lookup that yields no
 * address at all keeps the last good list and retries after dns.min_ttl.
 */
#include "health.h"

#include <arpa/inet.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/dns.h>
#include <event2/event.h>
#include <netinet/in.h>
#include <nghttp2/nghttp2.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common.h"
#include "report.h"
#include "h1.h"
#include "h2util.h"
#include "upconnect.h"

/* A probe response head larger than this is a failed probe. */
#define PROBE_MAX_HEAD 65536
/* The first probe of an endpoint (and the first after a new interval) runs
 * within a quarter of the interval, at most this long, after it appears:
 * soon, but spread out over many endpoints. */
#define PROBE_FIRST_SPREAD_MS 250

enum probe_phase {
    PROBE_IDLE,
    PROBE_CONNECTING, /* upconnect in progress */
    PROBE_EXCHANGE,   /* request sent, waiting for the status */
};

/* Active check state of one endpoint (ep_state.probe). Exists while the
 * endpoint is in the running config and its cluster has `health:`. */
struct health_probe {
    struct health *h;
    struct ep_state *st;
    struct event *timer;    /* next probe */
    struct event *deadline; /* health.timeout of the probe in flight */
    uint64_t interval_ms;   /* interval the timer was armed with (retuned on reload) */
    size_t next_addr;       /* round robin over the endpoint's addresses */
    uint32_t passes;        /* consecutive passing probes */
    uint32_t failures;      /* consecutive failing probes */

    /* The probe in flight (phase != PROBE_IDLE). */
    enum probe_phase phase;
    struct config *cfg;            /* snapshot it started with (reference held) */
    const struct cluster_conf *cl; /* in cfg */
    struct upconnect *connecting;
    struct bufferevent *bev;
    nghttp2_session *ngh; /* HTTP/2 probes */
    int32_t stream_id;
    int h2_status; /* :status of the HEADERS being received */
    int status;    /* final status, 0 until seen */
    bool finished; /* set from nghttp2 callbacks; acted on after mem_recv */
    char why[256]; /* failure reason when finished without a status */
    char addr[64];
};

/* One A or AAAA question of a lookup. */
struct dns_query {
    struct dns_state *ds;
    int family; /* AF_INET or AF_INET6 */
    struct evdns_request *req;
    int err;
    uint32_t ttl;
    size_t n;
    struct sockaddr_storage addrs[EP_MAX_ADDRS];
};

/* Resolver state of a host-name endpoint (ep_state.dns_state). */
struct dns_state {
    struct health *h;
    struct ep_state *st;
    struct dns_query q[2]; /* A, AAAA */
    int pending;           /* answers still to come */
    bool in_flight;
    bool first_done;     /* had a first answer or failure (health_settle) */
    bool failing;        /* the last lookup failed (logged once per streak) */
    struct event *timer; /* next lookup */
    uint64_t lookups_ok, lookups_failed;
};

struct health {
    struct event_base *base;
    struct evdns_base *dns;
    bool have_nameservers;
    char **nameservers; /* cfg->dns.nameservers at start: fixed for the process */
    size_t n_nameservers;
    struct ep_state **entries;
    size_t n_entries;
    struct config *running; /* the config of health_apply (reference held) */
    uint64_t min_ttl_ms, max_ttl_ms, dns_timeout_ms;
    uint64_t rng;
    bool closing; /* health_free: callbacks that still arrive do nothing */
};

/* ---------------------------------------------------------------- helpers */

static struct timeval ms_tv(uint64_t ms)
{
    struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)((ms % 1000) * 1000)};
    return tv;
}

/* Jitter for timers (xorshift64*; main thread only, not security relevant). */
static uint64_t jitter(struct health *h, uint64_t below)
{
    if (below == 0)
        return 0;
    h->rng ^= h->rng >> 12;
    h->rng ^= h->rng << 25;
    h->rng ^= h->rng >> 27;
    return (h->rng * 0x2545F4914F6CDD1DULL) % below;
}

/* Appends ", item" (or "item" first) to a log text, truncating at outlen. */
static void list_add(char *out, size_t outlen, size_t *off, const char *item)
{
    if (*off + 1 >= outlen)
        return;
    int k = snprintf(out + *off, outlen - *off, "%s%s", *off ? ", " : "", item);
    if (k > 0)
        *off += (size_t)k < outlen - *off ? (size_t)k : outlen - *off - 1;
}

static void addr_list_text(const struct sockaddr_storage *addrs, size_t n, char *out, size_t outlen)
{
    size_t off = 0;
    co_strlcpy(out, n ? "" : "none", outlen);
    for (size_t i = 0; i < n; i++) {
        char a[64];
        upconnect_addr_text((const struct sockaddr *)&addrs[i], a, sizeof(a));
        list_add(out, outlen, &off, a);
    }
}

/* Order of addresses in an ep_state: IPv4 before IPv6, then by bytes. */
static int addr_cmp(const void *pa, const void *pb)
{
    const struct sockaddr_storage *a = pa, *b = pb;
    if (a->ss_family != b->ss_family)
        return a->ss_family == AF_INET ? -1 : 1;
    if (a->ss_family == AF_INET)
        return memcmp(&((const struct sockaddr_in *)a)->sin_addr, &((const struct sockaddr_in *)b)->sin_addr,
                      sizeof(struct in_addr));
    return memcmp(&((const struct sockaddr_in6 *)a)->sin6_addr, &((const struct sockaddr_in6 *)b)->sin6_addr,
                  sizeof(struct in6_addr));
}

static socklen_t addr_len(const struct sockaddr_storage *a)
{
    return a->ss_family == AF_INET ? (socklen_t)sizeof(struct sockaddr_in) : (socklen_t)sizeof(struct sockaddr_in6);
}

/* Replace the addresses (main thread): under addr_lock, then addr_gen moves
 * (release) so workers copy the new list. */
static void set_addrs(struct ep_state *st, const struct sockaddr_storage *addrs, size_t n)
{
    pthread_mutex_lock(&st->addr_lock);
    for (size_t i = 0; i < n; i++) {
        st->addrs[i] = addrs[i];
        st->addr_lens[i] = addr_len(&addrs[i]);
    }
    st->n_addrs = n;
    pthread_mutex_unlock(&st->addr_lock);
    atomic_fetch_add_explicit(&st->addr_gen, 1, memory_order_release);
    if (n > 0)
        atomic_store_explicit(&st->resolved, true, memory_order_release);
}

/* ---------------------------------------------------------------- workers */

uint64_t health_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

bool health_usable(const struct ep_state *st, uint64_t now_ms)
{
    if (st == NULL)
        return true;
    if (!atomic_load_explicit(&st->resolved, memory_order_acquire) || atomic_load_explicit(&st->probe_down, memory_order_relaxed))
        return false;
    uint64_t until = atomic_load_explicit(&st->ejected_until_ms, memory_order_relaxed);
    /* With active checks an ejection ends only with a passing probe after
     * the period (eject_conf.duration_ms); without, when the period ends. */
    return until == 0 || (!atomic_load_explicit(&st->has_probe, memory_order_relaxed) && now_ms >= until);
}

void health_report(struct ep_state *st, const struct eject_conf *ej, enum health_event ev)
{
    if (st == NULL || ej == NULL)
        return;
    atomic_uint *streak;
    uint32_t threshold;
    const char *what;
    switch (ev) {
    case HEV_CONNECTED:
        /* Read first: no cache-line write on every healthy connect. */
        if (atomic_load_explicit(&st->connect_streak, memory_order_relaxed) != 0)
            atomic_store_explicit(&st->connect_streak, 0, memory_order_relaxed);
        return;
    case HEV_RESPONSE:
        if (atomic_load_explicit(&st->fail5xx_streak, memory_order_relaxed) != 0)
            atomic_store_explicit(&st->fail5xx_streak, 0, memory_order_relaxed);
        return;
    case HEV_CONNECT_FAILED:
        streak = &st->connect_streak;
        threshold = ej->connect_failures;
        what = "consecutive connect failures";
        break;
    case HEV_5XX:
        streak = &st->fail5xx_streak;
        threshold = ej->consecutive_5xx;
        what = "consecutive 5xx responses";
        break;
    default:
        return;
    }
    unsigned n = atomic_fetch_add_explicit(streak, 1, memory_order_relaxed) + 1;
    if (threshold == 0)
        return;
    uint64_t now = health_now_ms();
    uint64_t until = atomic_load_explicit(&st->ejected_until_ms, memory_order_relaxed);
    bool has_probe = atomic_load_explicit(&st->has_probe, memory_order_relaxed);
    if (until != 0) {
        if (has_probe || now < until)
            return; /* ejected: outcomes of requests still in flight change nothing */
        /* Without active checks the ejection ended when its period did
         * (lazily cleared here): the streak starts again with this outcome,
         * not with what piled up while the endpoint was out. */
        if (atomic_compare_exchange_strong(&st->ejected_until_ms, &until, 0)) {
            atomic_store_explicit(streak, 1, memory_order_relaxed);
            n = 1;
        }
        until = 0;
    }
    if (n < threshold)
        return;
    /* Only the reporter whose compare-exchange wins ejects and logs. */
    uint64_t deadline = now + (ej->duration_ms ? ej->duration_ms : 1);
    if (!atomic_compare_exchange_strong(&st->ejected_until_ms, &until, deadline))
        return;
    atomic_fetch_add_explicit(&st->ejections, 1, memory_order_relaxed);
    atomic_store_explicit(streak, 0, memory_order_relaxed);
    log_warn("endpoint %s of cluster %s ejected for %llu ms: %u %s; %s", st->endpoint, st->cluster,
             (unsigned long long)ej->duration_ms, n, what,
             has_probe ? "it returns after a passing health check once the period is over"
                       : "it gets requests again once the period is over");
}

bool health_addrs(struct ep_state *st, unsigned *gen, struct sockaddr_storage *out, socklen_t *lens, size_t *n)
{
    unsigned g = atomic_load_explicit(&st->addr_gen, memory_order_acquire);
    if (g == *gen)
        return false;
    pthread_mutex_lock(&st->addr_lock);
    memcpy(out, st->addrs, st->n_addrs * sizeof(*out));
    memcpy(lens, st->addr_lens, st->n_addrs * sizeof(*lens));
    *n = st->n_addrs;
    *gen = atomic_load_explicit(&st->addr_gen, memory_order_acquire);
    pthread_mutex_unlock(&st->addr_lock);
    return true;
}

/* ---------------------------------------------------------------- probes */

static void probe_begin(struct health_probe *p);

/* Drop everything the probe in flight holds (connection, session,
 * deadline, snapshot). Safe from the probe's own callbacks: libevent
 * defers the bufferevent's destruction. */
static void probe_release(struct health_probe *p)
{
    if (p->connecting) {
        upconnect_cancel(p->connecting);
        p->connecting = NULL;
    }
    if (p->ngh) {
        nghttp2_session_del(p->ngh);
        p->ngh = NULL;
    }
    if (p->bev) {
        bufferevent_free(p->bev);
        p->bev = NULL;
    }
    event_del(p->deadline);
    if (p->cfg) {
        config_unref(p->cfg);
        p->cfg = NULL;
    }
    p->cl = NULL;
    p->phase = PROBE_IDLE;
}

static void expect_text(const struct health_conf *hc, char *out, size_t outlen)
{
    if (hc->expect_min == hc->expect_max)
        snprintf(out, outlen, "%u", hc->expect_min);
    else
        snprintf(out, outlen, "%u-%u", hc->expect_min, hc->expect_max);
}

/* The probe in flight ended: status > 0 (judged against expect), or a
 * failure `why`. Records the result, changes probe_down after enough
 * consecutive results, and ends an ejection whose period is over. */
static void probe_end(struct health_probe *p, int status, const char *why)
{
    struct ep_state *st = p->st;
    const struct cluster_conf *cl = st->cluster_conf; /* the running config's */
    const struct health_conf *hc = &cl->health;
    char reason[256];
    bool ok = false;
    if (status > 0) {
        ok = status >= hc->expect_min && status <= hc->expect_max;
        if (!ok) {
            char range[32];
            expect_text(hc, range, sizeof(range));
            snprintf(reason, sizeof(reason), "status %d not in %s", status, range);
        }
    } else {
        co_strlcpy(reason, why && *why ? why : "failed", sizeof(reason));
    }
    probe_release(p);

    if (ok) {
        st->probes_ok++;
        p->failures = 0;
        if (p->passes < UINT32_MAX)
            p->passes++;
        if (atomic_load(&st->probe_down) && p->passes >= hc->healthy) {
            atomic_store(&st->probe_down, false);
            log_info("endpoint %s of cluster %s: %u consecutive health checks passed (GET %s); back in service", st->endpoint,
                     st->cluster, p->passes, hc->path);
        }
        uint64_t until = atomic_load(&st->ejected_until_ms);
        if (until != 0 && health_now_ms() >= until && atomic_compare_exchange_strong(&st->ejected_until_ms, &until, 0)) {
            atomic_store(&st->connect_streak, 0);
            atomic_store(&st->fail5xx_streak, 0);
            log_info("endpoint %s of cluster %s: ejection period over and a health check passed; back in service", st->endpoint,
                     st->cluster);
        }
        return;
    }
    st->probes_failed++;
    co_strlcpy(st->last_probe_error, reason, sizeof(st->last_probe_error));
    p->passes = 0;
    if (p->failures < UINT32_MAX)
        p->failures++;
    if (!atomic_load(&st->probe_down) && p->failures >= hc->unhealthy) {
        atomic_store(&st->probe_down, true);
        log_warn("endpoint %s of cluster %s failed %u consecutive health checks (GET %s): %s; out of service until %u pass",
                 st->endpoint, st->cluster, p->failures, hc->path, reason, hc->healthy);
    }
}

static void probe_fail(struct health_probe *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void probe_fail(struct health_probe *p, const char *fmt, ...)
{
    char why[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof(why), fmt, ap);
    va_end(ap);
    probe_end(p, 0, why);
}

static void on_probe_deadline(evutil_socket_t fd, short what, void *arg)
{
    struct health_probe *p = arg;
    uint64_t ms = p->cl ? p->cl->health.timeout_ms : 0;
    if (p->phase == PROBE_CONNECTING)
        probe_fail(p, "timed out after %llu ms connecting to %s", (unsigned long long)ms, p->addr);
    else
        probe_fail(p, "timed out after %llu ms waiting for the response from %s", (unsigned long long)ms, p->addr);
}

/* -- HTTP/1.1 */

static void on_h1_read(struct bufferevent *bev, void *arg)
{
    struct health_probe *p = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    static const struct h1_limits limits = {8192, PROBE_MAX_HEAD, 100};
    for (;;) {
        size_t len = evbuffer_get_length(in);
        if (len == 0)
            return;
        size_t n = len < PROBE_MAX_HEAD ? len : PROBE_MAX_HEAD;
        const char *data = (const char *)evbuffer_pullup(in, (ev_ssize_t)n);
        struct h1_response resp;
        int r = h1_parse_response(data, n, &limits, &resp);
        if (r == H1_INCOMPLETE) {
            if (len >= PROBE_MAX_HEAD)
                probe_fail(p, "response head from %s over %d bytes", p->addr, PROBE_MAX_HEAD);
            return;
        }
        if (r < 0) {
            probe_fail(p, "malformed response from %s: %s", p->addr, resp.msg.error ? resp.msg.error : "bad head");
            return;
        }
        if (resp.status >= 200) {
            probe_end(p, resp.status, NULL);
            return;
        }
        evbuffer_drain(in, (size_t)r); /* 1xx: an interim response, the final one follows (RFC 9110 §15.2) */
    }
}

static void on_bev_event(struct bufferevent *bev, short what, void *arg)
{
    struct health_probe *p = arg;
    if (what & BEV_EVENT_EOF) {
        probe_fail(p, "%s closed the connection before the response head", p->addr);
    } else {
        int err = EVUTIL_SOCKET_ERROR();
        probe_fail(p, "reading from %s failed: %s", p->addr, err ? evutil_socket_error_to_string(err) : "connection error");
    }
}

static const char *probe_host(const struct ep_state *st, const struct cluster_conf *cl)
{
    if (cl->health.host)
        return cl->health.host;
    if (cl->host)
        return cl->host;
    return st->endpoint;
}

static void h1_send(struct health_probe *p)
{
    struct evbuffer *out = bufferevent_get_output(p->bev);
    evbuffer_add_printf(out, "GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\nUser-Agent: cutover-health\r\n\r\n",
                        p->cl->health.path, probe_host(p->st, p->cl));
    bufferevent_setcb(p->bev, on_h1_read, NULL, on_bev_event, p);
    bufferevent_enable(p->bev, EV_READ | EV_WRITE);
}

/* -- HTTP/2 */

static int on_h2_header(nghttp2_session *session, const nghttp2_frame *frame, const uint8_t *name, size_t namelen,
                        const uint8_t *value, size_t valuelen, uint8_t flags, void *user_data)
{
    struct health_probe *p = user_data;
    if (frame->hd.type == NGHTTP2_HEADERS && frame->hd.stream_id == p->stream_id && namelen == 7 &&
        memcmp(name, ":status", 7) == 0) {
        int status = 0;
        for (size_t i = 0; i < valuelen && i < 3; i++)
            status = status * 10 + (value[i] >= '0' && value[i] <= '9' ? value[i] - '0' : 0);
        p->h2_status = valuelen == 3 ? status : 0;
    }
    return 0;
}

static int on_h2_frame_recv(nghttp2_session *session, const nghttp2_frame *frame, void *user_data)
{
    struct health_probe *p = user_data;
    if (p->finished)
        return 0;
    if (frame->hd.type == NGHTTP2_HEADERS && frame->hd.stream_id == p->stream_id) {
        if (p->h2_status >= 200) {
            p->status = p->h2_status;
            p->finished = true;
        } else if (p->h2_status < 100) {
            snprintf(p->why, sizeof(p->why), "response from %s without a valid :status", p->addr);
            p->finished = true;
        }
        p->h2_status = 0; /* 1xx: the final head follows */
    } else if (frame->hd.type == NGHTTP2_GOAWAY && frame->goaway.last_stream_id < p->stream_id) {
        snprintf(p->why, sizeof(p->why), "%s sent GOAWAY (%s) before the response", p->addr,
                 nghttp2_http2_strerror(frame->goaway.error_code));
        p->finished = true;
    }
    return 0;
}

static int on_h2_stream_close(nghttp2_session *session, int32_t stream_id, uint32_t error_code, void *user_data)
{
    struct health_probe *p = user_data;
    if (stream_id == p->stream_id && !p->finished) {
        snprintf(p->why, sizeof(p->why), "%s reset the stream (%s) before the response", p->addr,
                 nghttp2_http2_strerror(error_code));
        p->finished = true;
    }
    return 0;
}

/* Act on what the nghttp2 callbacks found, or flush the session output. */
static void h2_after(struct health_probe *p)
{
    if (!p->finished) {
        int rv = h2_send_bounded(p->ngh, bufferevent_get_output(p->bev), 65536);
        if (rv != 0) {
            probe_fail(p, "HTTP/2 session with %s failed: %s", p->addr, nghttp2_strerror(rv));
            return;
        }
        if (!nghttp2_session_want_read(p->ngh) && !nghttp2_session_want_write(p->ngh)) {
            probe_fail(p, "HTTP/2 session with %s ended before the response", p->addr);
            return;
        }
        return;
    }
    if (p->status > 0)
        probe_end(p, p->status, NULL);
    else
        probe_end(p, 0, p->why);
}

static void on_h2_read(struct bufferevent *bev, void *arg)
{
    struct health_probe *p = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    while (evbuffer_get_length(in) > 0 && !p->finished) {
        struct evbuffer_iovec v;
        if (evbuffer_peek(in, -1, NULL, &v, 1) < 1)
            break;
        ssize_t n = nghttp2_session_mem_recv(p->ngh, v.iov_base, v.iov_len);
        if (n < 0) {
            probe_fail(p, "HTTP/2 error from %s: %s", p->addr, nghttp2_strerror((int)n));
            return;
        }
        evbuffer_drain(in, (size_t)n);
    }
    h2_after(p);
}

/* A header field for nghttp2_submit_request (which copies name and value). */
static nghttp2_nv h2_nv(const char *name, const char *value)
{
    nghttp2_nv nv = {(uint8_t *)name, (uint8_t *)value, strlen(name), strlen(value), NGHTTP2_NV_FLAG_NONE};
    return nv;
}

static void h2_send(struct health_probe *p, bool tls)
{
    nghttp2_session_callbacks *cbs;
    nghttp2_session_callbacks_new(&cbs);
    nghttp2_session_callbacks_set_on_header_callback(cbs, on_h2_header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, on_h2_frame_recv);
    nghttp2_session_callbacks_set_on_stream_close_callback(cbs, on_h2_stream_close);
    int rv = nghttp2_session_client_new(&p->ngh, cbs, p);
    nghttp2_session_callbacks_del(cbs);
    if (rv != 0) {
        p->ngh = NULL;
        probe_fail(p, "cannot start an HTTP/2 session: %s", nghttp2_strerror(rv));
        return;
    }
    nghttp2_settings_entry iv[] = {{NGHTTP2_SETTINGS_ENABLE_PUSH, 0}};
    nghttp2_submit_settings(p->ngh, NGHTTP2_FLAG_NONE, iv, CO_ARRAY_SIZE(iv));
    const char *host = probe_host(p->st, p->cl);
    const char *path = p->cl->health.path;
    const char *scheme = tls ? "https" : "http";
    nghttp2_nv nva[] = {h2_nv(":method", "GET"), h2_nv(":scheme", scheme), h2_nv(":authority", host), h2_nv(":path", path),
                        h2_nv("user-agent", "cutover-health")};
    p->stream_id = nghttp2_submit_request(p->ngh, NULL, nva, CO_ARRAY_SIZE(nva), NULL, p);
    if (p->stream_id < 0) {
        probe_fail(p, "cannot submit the HTTP/2 probe request: %s", nghttp2_strerror(p->stream_id));
        return;
    }
    bufferevent_setcb(p->bev, on_h2_read, NULL, on_bev_event, p);
    bufferevent_enable(p->bev, EV_READ | EV_WRITE);
    h2_after(p);
}

static void on_probe_connected(void *arg, struct bufferevent *bev, const char *alpn, const char *addr, int status, const char *why)
{
    struct health_probe *p = arg;
    p->connecting = NULL;
    co_strlcpy(p->addr, addr, sizeof(p->addr));
    if (bev == NULL) {
        probe_end(p, 0, why);
        return;
    }
    p->bev = bev;
    p->phase = PROBE_EXCHANGE;
    bool tls = p->cl->tls.enabled;
    bool h2 = tls ? strcmp(alpn, "h2") == 0 : p->cl->protocol == CLUSTER_PROTO_H2;
    if (tls && p->cl->protocol == CLUSTER_PROTO_H2 && !h2) {
        probe_fail(p, "%s did not negotiate h2 in ALPN (chose \"%s\") for a protocol: h2 cluster", addr, alpn);
        return;
    }
    if (h2)
        h2_send(p, tls);
    else
        h1_send(p);
}

static void probe_begin(struct health_probe *p)
{
    struct health *h = p->h;
    struct ep_state *st = p->st;
    const struct cluster_conf *cl = st->cluster_conf;
    const struct endpoint_conf *e = st->endpoint_conf;
    /* A name without an address yet: nothing to probe (the endpoint is
     * unusable anyway until DNS answers). */
    if (cl == NULL || e == NULL || h->running == NULL || st->n_addrs == 0)
        return;
    size_t i = p->next_addr++ % st->n_addrs;
    struct sockaddr_storage sa = st->addrs[i]; /* the main thread is the only writer */
    socklen_t sa_len = st->addr_lens[i];
    upconnect_addr_text((const struct sockaddr *)&sa, p->addr, sizeof(p->addr));
    p->cfg = config_ref(h->running);
    p->cl = cl;
    p->status = 0;
    p->h2_status = 0;
    p->stream_id = -1;
    p->finished = false;
    p->why[0] = '\0';
    p->phase = PROBE_CONNECTING;
    const char *alpn = NULL;
    if (cl->tls.enabled)
        alpn = cl->protocol == CLUSTER_PROTO_H2 ? "h2" : cl->protocol == CLUSTER_PROTO_AUTO ? "h2,http/1.1" : "http/1.1";
    struct timeval tv = ms_tv(cl->health.timeout_ms);
    event_add(p->deadline, &tv);
    p->connecting = upconnect_start(h->base, (const struct sockaddr *)&sa, sa_len, e, cl, alpn, on_probe_connected, p);
}

static void on_probe_timer(evutil_socket_t fd, short what, void *arg)
{
    struct health_probe *p = arg;
    const struct cluster_conf *cl = p->st->cluster_conf;
    if (cl == NULL || !cl->health.enabled)
        return;
    /* One probe per interval, plus up to 10 % so endpoints drift apart. */
    p->interval_ms = cl->health.interval_ms;
    struct timeval tv = ms_tv(p->interval_ms + jitter(p->h, p->interval_ms / 10 + 1));
    event_add(p->timer, &tv);
    if (p->phase == PROBE_IDLE) /* timeout < interval: the previous one has ended */
        probe_begin(p);
}

static void probe_arm_first(struct health_probe *p, uint64_t interval_ms)
{
    uint64_t spread = interval_ms / 4 < PROBE_FIRST_SPREAD_MS ? interval_ms / 4 : PROBE_FIRST_SPREAD_MS;
    p->interval_ms = interval_ms;
    struct timeval tv = ms_tv(jitter(p->h, spread + 1));
    event_add(p->timer, &tv);
}

static void probe_start(struct health *h, struct ep_state *st)
{
    struct health_probe *p = co_calloc(1, sizeof(*p));
    p->h = h;
    p->st = st;
    p->phase = PROBE_IDLE;
    p->timer = evtimer_new(h->base, on_probe_timer, p);
    p->deadline = evtimer_new(h->base, on_probe_deadline, p);
    st->probe = p;
    probe_arm_first(p, st->cluster_conf->health.interval_ms);
}

static void probe_stop(struct ep_state *st)
{
    struct health_probe *p = st->probe;
    if (p == NULL)
        return;
    probe_release(p);
    event_free(p->timer);
    event_free(p->deadline);
    free(p);
    st->probe = NULL;
}

/* ---------------------------------------------------------------- DNS */

static void dns_lookup(struct dns_state *ds);

static void on_dns_timer(evutil_socket_t fd, short what, void *arg)
{
    dns_lookup(arg);
}

/* A question evdns did not accept (no nameserver, a name too long). */
#define DNS_NOT_ASKED (-1)

static const char *dns_err_text(int err)
{
    if (err == DNS_NOT_ASKED)
        return "not asked (no nameserver, or the name is not valid)";
    /* evdns reports a SERVFAIL as a timeout once its attempts are used up. */
    if (err == DNS_ERR_TIMEOUT)
        return "no answer (timed out or SERVFAIL)";
    if (err == DNS_ERR_NOTEXIST)
        return "NXDOMAIN";
    if (err == DNS_ERR_NODATA)
        return "no records";
    return evdns_err_to_string(err);
}

/* An answer that says "no such address" (as opposed to "could not ask"). */
static bool dns_authoritative_empty(const struct dns_query *q)
{
    return (q->err == DNS_ERR_NONE && q->n == 0) || q->err == DNS_ERR_NOTEXIST || q->err == DNS_ERR_NODATA;
}

static void dns_schedule(struct dns_state *ds, uint64_t delay_ms)
{
    struct ep_state *st = ds->st;
    st->dns_expires_s = (int64_t)time(NULL) + (int64_t)((delay_ms + 999) / 1000);
    /* Only names of the running config are re-resolved; health_attach
     * starts a lookup again if a later config brings the name back. */
    if (st->cluster_conf == NULL)
        return;
    struct timeval tv = ms_tv(delay_ms);
    event_add(ds->timer, &tv);
}

/* Both answers are in: merge, compare, publish, schedule the next lookup. */
static void dns_finish(struct dns_state *ds)
{
    struct health *h = ds->h;
    struct ep_state *st = ds->st;
    struct sockaddr_storage merged[2 * EP_MAX_ADDRS];
    size_t n = 0;
    bool answered = false, transient = false;
    uint64_t ttl_ms = UINT64_MAX;
    ds->in_flight = false;
    ds->first_done = true;
    for (int k = 0; k < 2; k++) {
        struct dns_query *q = &ds->q[k];
        if (q->err == DNS_ERR_NONE && q->n > 0) {
            answered = true;
            if ((uint64_t)q->ttl * 1000 < ttl_ms)
                ttl_ms = (uint64_t)q->ttl * 1000;
            for (size_t i = 0; i < q->n; i++)
                merged[n++] = q->addrs[i];
        } else if (!dns_authoritative_empty(q)) {
            /* Could not ask (timeout, SERVFAIL, refused): keep what this
             * family had, and look again soon. */
            transient = true;
            for (size_t i = 0; i < st->n_addrs; i++)
                if (st->addrs[i].ss_family == q->family)
                    merged[n++] = st->addrs[i];
        }
    }
    char why[160];
    snprintf(why, sizeof(why), "%s: A %s, AAAA %s", st->host,
             ds->q[0].err == DNS_ERR_NONE ? "no records" : dns_err_text(ds->q[0].err),
             ds->q[1].err == DNS_ERR_NONE ? "no records" : dns_err_text(ds->q[1].err));
    if (!answered) {
        ds->lookups_failed++;
        co_strlcpy(st->last_dns_error, why, sizeof(st->last_dns_error));
        if (!ds->failing)
            log_warn("endpoint %s of cluster %s: DNS lookup failed (%s); %s, retrying every %llu ms", st->endpoint, st->cluster,
                     why, st->n_addrs ? "keeping the last good addresses" : "no address yet, requests to it answer 503",
                     (unsigned long long)h->min_ttl_ms);
        ds->failing = true;
        dns_schedule(ds, h->min_ttl_ms);
        return;
    }
    ds->lookups_ok++;
    if (ds->failing)
        log_info("endpoint %s of cluster %s: DNS lookup of %s works again", st->endpoint, st->cluster, st->host);
    ds->failing = false;
    qsort(merged, n, sizeof(merged[0]), addr_cmp);
    size_t m = 0;
    for (size_t i = 0; i < n; i++)
        if (m == 0 || addr_cmp(&merged[m - 1], &merged[i]) != 0)
            merged[m++] = merged[i];
    if (m > EP_MAX_ADDRS)
        m = EP_MAX_ADDRS;
    bool same = m == st->n_addrs;
    for (size_t i = 0; same && i < m; i++)
        same = addr_cmp(&merged[i], &st->addrs[i]) == 0;
    if (!same) {
        char was[512], now[512];
        addr_list_text(st->addrs, st->n_addrs, was, sizeof(was));
        addr_list_text(merged, m, now, sizeof(now));
        set_addrs(st, merged, m);
        log_info("endpoint %s of cluster %s: %s resolves to %s (was %s)", st->endpoint, st->cluster, st->host, now, was);
    }
    if (transient || ttl_ms < h->min_ttl_ms)
        ttl_ms = h->min_ttl_ms;
    if (ttl_ms > h->max_ttl_ms)
        ttl_ms = h->max_ttl_ms;
    dns_schedule(ds, ttl_ms);
}

static void on_dns_answer(int result, char type, int count, int ttl, void *addresses, void *arg)
{
    struct dns_query *q = arg;
    struct dns_state *ds = q->ds;
    if (ds->h->closing)
        return;
    q->req = NULL;
    q->err = result;
    q->ttl = ttl > 0 ? (uint32_t)ttl : 0;
    q->n = 0;
    if (result == DNS_ERR_NONE && addresses != NULL) {
        for (int i = 0; i < count && q->n < EP_MAX_ADDRS; i++) {
            struct sockaddr_storage *sa = &q->addrs[q->n];
            memset(sa, 0, sizeof(*sa));
            if (type == DNS_IPv4_A && q->family == AF_INET) {
                struct sockaddr_in *in = (struct sockaddr_in *)sa;
                in->sin_family = AF_INET;
                in->sin_port = htons(ds->st->port);
                memcpy(&in->sin_addr, (const char *)addresses + 4 * i, 4);
                q->n++;
            } else if (type == DNS_IPv6_AAAA && q->family == AF_INET6) {
                struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)sa;
                in6->sin6_family = AF_INET6;
                in6->sin6_port = htons(ds->st->port);
                memcpy(&in6->sin6_addr, (const char *)addresses + 16 * i, 16);
                q->n++;
            }
        }
    }
    if (--ds->pending == 0)
        dns_finish(ds);
}

static void dns_lookup(struct dns_state *ds)
{
    struct health *h = ds->h;
    if (ds->in_flight || h->closing)
        return;
    event_del(ds->timer);
    ds->in_flight = true;
    ds->pending = 2;
    /* A name with a dot is taken as written: search domains would only
     * add queries (and surprises) for names an operator wrote in full. */
    int flags = strchr(ds->st->host, '.') ? DNS_QUERY_NO_SEARCH : 0;
    for (int k = 0; k < 2; k++) {
        struct dns_query *q = &ds->q[k];
        q->err = DNS_NOT_ASKED;
        q->n = 0;
        q->ttl = 0;
        q->req = NULL;
        if (h->have_nameservers)
            q->req = q->family == AF_INET ? evdns_base_resolve_ipv4(h->dns, ds->st->host, flags, on_dns_answer, q)
                                          : evdns_base_resolve_ipv6(h->dns, ds->st->host, flags, on_dns_answer, q);
        /* evdns answers from the loop, never from inside resolve_*; NULL
         * means it did not even start (no nameserver, name too long). */
        if (q->req == NULL)
            ds->pending--;
    }
    if (ds->pending == 0)
        dns_finish(ds);
}

/* ---------------------------------------------------------------- registry */

static struct ep_state *entry_find(struct health *h, const char *cluster, const char *endpoint)
{
    for (size_t i = 0; i < h->n_entries; i++)
        if (strcmp(h->entries[i]->cluster, cluster) == 0 && strcmp(h->entries[i]->endpoint, endpoint) == 0)
            return h->entries[i];
    return NULL;
}

static struct ep_state *entry_new(struct health *h, const struct cluster_conf *cl, const struct endpoint_conf *e)
{
    struct ep_state *st = co_calloc(1, sizeof(*st));
    st->cluster = co_strdup(cl->name);
    st->endpoint = co_strdup(e->name);
    st->host = co_strdup(e->host);
    st->port = e->port;
    st->dns = e->dns;
    pthread_mutex_init(&st->addr_lock, NULL);
    atomic_init(&st->resolved, false);
    atomic_init(&st->probe_down, false);
    atomic_init(&st->has_probe, false);
    atomic_init(&st->ejected_until_ms, 0);
    atomic_init(&st->connect_streak, 0);
    atomic_init(&st->fail5xx_streak, 0);
    atomic_init(&st->ejections, 0);
    atomic_init(&st->addr_gen, 0);
    if (e->dns) {
        struct dns_state *ds = co_calloc(1, sizeof(*ds));
        ds->h = h;
        ds->st = st;
        ds->q[0].ds = ds;
        ds->q[0].family = AF_INET;
        ds->q[1].ds = ds;
        ds->q[1].family = AF_INET6;
        ds->timer = evtimer_new(h->base, on_dns_timer, ds);
        st->dns_state = ds;
    } else {
        size_t n = e->n_addrs < EP_MAX_ADDRS ? e->n_addrs : EP_MAX_ADDRS;
        set_addrs(st, e->addrs, n);
    }
    h->entries = co_realloc(h->entries, (h->n_entries + 1) * sizeof(*h->entries));
    h->entries[h->n_entries++] = st;
    return st;
}

static void entry_free(struct ep_state *st)
{
    probe_stop(st);
    struct dns_state *ds = st->dns_state;
    if (ds) {
        event_free(ds->timer);
        free(ds);
    }
    pthread_mutex_destroy(&st->addr_lock);
    free(st->cluster);
    free(st->endpoint);
    free(st->host);
    free(st);
}

/* evdns diagnostics into cutover's log. It passes its debug chatter here
 * too, at the same "not a warning" level as the nameserver state changes;
 * only the latter are worth a line. */
static void on_evdns_log(int is_warn, const char *msg)
{
    if (is_warn)
        log_warn("DNS: %s", msg);
    else if (strncmp(msg, "Nameserver", 10) == 0 || strncmp(msg, "All nameservers", 15) == 0)
        log_info("DNS: %s", msg);
}

static void set_dns_options(struct health *h, uint64_t timeout_ms)
{
    /* Two tries per question within dns.timeout (evdns retransmits after a
     * try's timeout, and at once after a SERVFAIL). */
    char v[32];
    h->dns_timeout_ms = timeout_ms;
    snprintf(v, sizeof(v), "%.3f", (double)(timeout_ms / 2 ? timeout_ms / 2 : 1) / 1000.0);
    evdns_base_set_option(h->dns, "timeout:", v);
    evdns_base_set_option(h->dns, "attempts:", "2");
}

struct health *health_new(struct event_base *base, const struct config *cfg, char *err, size_t errlen)
{
    struct health *h = co_calloc(1, sizeof(*h));
    h->base = base;
    h->rng = ((uint64_t)time(NULL) << 20) ^ (uint64_t)getpid() ^ health_now_ms() ^ 0x9E3779B97F4A7C15ULL;
    h->min_ttl_ms = cfg->dns.min_ttl_ms;
    h->max_ttl_ms = cfg->dns.max_ttl_ms;
    evdns_set_log_fn(on_evdns_log); /* process-wide; this is the only resolver */
    h->dns = evdns_base_new(base, 0);
    if (h->dns == NULL) {
        snprintf(err, errlen, "cannot start the DNS resolver (evdns_base_new failed)");
        free(h);
        return NULL;
    }
    if (cfg->dns.n_nameservers > 0) {
        h->nameservers = co_calloc(cfg->dns.n_nameservers, sizeof(*h->nameservers));
        for (size_t i = 0; i < cfg->dns.n_nameservers; i++) {
            h->nameservers[i] = co_strdup(cfg->dns.nameservers[i]);
            h->n_nameservers = i + 1;
            int rc = evdns_base_nameserver_ip_add(h->dns, cfg->dns.nameservers[i]);
            if (rc != 0 && rc != 3 /* already added */) {
                snprintf(err, errlen, "%s: dns.nameservers: cannot use %s (evdns error %d)", cfg->file ? cfg->file : "config",
                         cfg->dns.nameservers[i], rc);
                health_free(h);
                return NULL;
            }
        }
    } else {
        /* The system's resolver settings. A machine without a usable
         * resolv.conf still starts (IP-literal endpoints need no DNS);
         * evdns then asks 127.0.0.1. */
        int rc =
            evdns_base_resolv_conf_parse(h->dns, DNS_OPTION_NAMESERVERS | DNS_OPTION_SEARCH | DNS_OPTION_MISC, "/etc/resolv.conf");
        if (rc != 0)
            log_warn("DNS: /etc/resolv.conf %s (evdns error %d); host-name endpoints are resolved through %s",
                     rc == 1   ? "cannot be opened"
                     : rc == 6 ? "lists no nameserver"
                               : "could not be read",
                     rc,
                     evdns_base_count_nameservers(h->dns) > 0 ? "the default nameserver 127.0.0.1"
                                                              : "nothing: they stay unresolved");
    }
    h->have_nameservers = evdns_base_count_nameservers(h->dns) > 0;
    set_dns_options(h, cfg->dns.timeout_ms);
    return h;
}

static bool same_nameservers(const struct health *h, const struct config *cfg)
{
    if (cfg->dns.n_nameservers != h->n_nameservers)
        return false;
    for (size_t i = 0; i < h->n_nameservers; i++)
        if (strcmp(cfg->dns.nameservers[i], h->nameservers[i]) != 0)
            return false;
    return true;
}

static void nameservers_text(char **items, size_t n, char *out, size_t outlen)
{
    size_t off = 0;
    co_strlcpy(out, n ? "" : "/etc/resolv.conf", outlen);
    for (size_t i = 0; i < n; i++)
        list_add(out, outlen, &off, items[i]);
}

int health_attach(struct health *h, struct config *cfg, char *err, size_t errlen)
{
    if (!same_nameservers(h, cfg)) {
        char was[256], now[256];
        nameservers_text(h->nameservers, h->n_nameservers, was, sizeof(was));
        nameservers_text(cfg->dns.nameservers, cfg->dns.n_nameservers, now, sizeof(now));
        snprintf(err, errlen,
                 "%s: dns.nameservers changed (running with [%s], the file says [%s]); nameservers are fixed at start: restart "
                 "cutover to change them",
                 cfg->file ? cfg->file : "config", was, now);
        return CO_ERROR;
    }
    for (size_t i = 0; i < cfg->n_clusters; i++) {
        const struct cluster_conf *cl = &cfg->clusters[i];
        for (size_t j = 0; j < cl->n_endpoints; j++) {
            struct endpoint_conf *e = &cl->endpoints[j];
            struct ep_state *st = entry_find(h, cl->name, e->name);
            if (st == NULL)
                st = entry_new(h, cl, e);
            e->state = st;
            /* A new name (or one coming back) is looked up now; running
             * ones keep their schedule. */
            struct dns_state *ds = st->dns_state;
            if (ds && !ds->in_flight && !evtimer_pending(ds->timer, NULL))
                dns_lookup(ds);
        }
    }
    return CO_OK;
}

void health_apply(struct health *h, struct config *cfg)
{
    struct config *old = h->running;
    h->running = config_ref(cfg);
    h->min_ttl_ms = cfg->dns.min_ttl_ms;
    h->max_ttl_ms = cfg->dns.max_ttl_ms;
    if (cfg->dns.timeout_ms != h->dns_timeout_ms)
        set_dns_options(h, cfg->dns.timeout_ms);

    bool *was_running = co_calloc(h->n_entries + 1, sizeof(bool));
    for (size_t i = 0; i < h->n_entries; i++) {
        was_running[i] = h->entries[i]->cluster_conf != NULL;
        h->entries[i]->cluster_conf = NULL;
        h->entries[i]->endpoint_conf = NULL;
    }
    for (size_t i = 0; i < cfg->n_clusters; i++) {
        const struct cluster_conf *cl = &cfg->clusters[i];
        for (size_t j = 0; j < cl->n_endpoints; j++) {
            struct ep_state *st = cl->endpoints[j].state;
            if (st == NULL) /* not attached: nothing to run for it */
                continue;
            st->cluster_conf = cl;
            st->endpoint_conf = &cl->endpoints[j];
        }
    }
    for (size_t i = 0; i < h->n_entries; i++) {
        struct ep_state *st = h->entries[i];
        struct dns_state *ds = st->dns_state;
        const struct cluster_conf *cl = st->cluster_conf;
        if (cl == NULL) {
            /* Left the config: no probes, no re-resolution; the state stays
             * (and carries over if the endpoint comes back). */
            if (was_running[i]) {
                probe_stop(st);
                if (ds)
                    event_del(ds->timer);
                log_info("endpoint %s of cluster %s left the config: health checks and DNS refresh stop", st->endpoint,
                         st->cluster);
            }
            continue;
        }
        if (cl->health.enabled) {
            atomic_store(&st->has_probe, true);
            if (st->probe == NULL) {
                probe_start(h, st);
            } else if (st->probe->interval_ms != cl->health.interval_ms) {
                /* Retune: the next probe within the new interval. */
                event_del(st->probe->timer);
                probe_arm_first(st->probe, cl->health.interval_ms);
            }
        } else {
            probe_stop(st);
            atomic_store(&st->has_probe, false);
            atomic_store(&st->probe_down, false);
        }
        if (ds && !ds->in_flight && !evtimer_pending(ds->timer, NULL))
            dns_lookup(ds);
    }
    free(was_running);
    if (old)
        config_unref(old);
}

static bool settled(const struct health *h)
{
    const struct config *cfg = h->running;
    if (cfg == NULL)
        return true;
    for (size_t i = 0; i < cfg->n_clusters; i++)
        for (size_t j = 0; j < cfg->clusters[i].n_endpoints; j++) {
            const struct ep_state *st = cfg->clusters[i].endpoints[j].state;
            if (st && st->dns_state && !((const struct dns_state *)st->dns_state)->first_done)
                return false;
        }
    return true;
}

static void on_settle_wake(evutil_socket_t fd, short what, void *arg)
{
}

void health_settle(struct health *h, uint64_t timeout_ms)
{
    uint64_t deadline = health_now_ms() + timeout_ms;
    struct event *wake = evtimer_new(h->base, on_settle_wake, NULL);
    while (!settled(h)) {
        uint64_t now = health_now_ms();
        if (now >= deadline)
            break;
        struct timeval tv = ms_tv(deadline - now);
        event_add(wake, &tv);
        event_base_loop(h->base, EVLOOP_ONCE);
    }
    event_free(wake);
    if (!settled(h))
        log_warn("DNS: not every host name had an answer within %llu ms; those endpoints answer 503 until they do",
                 (unsigned long long)timeout_ms);
}

/* ---------------------------------------------------------------- status and metrics */

void health_status_json(struct health *h, struct evbuffer *b)
{
    const struct config *cfg = h ? h->running : NULL;
    ADD_LIT(b, "[");
    if (cfg == NULL) {
        ADD_LIT(b, "]");
        return;
    }
    uint64_t now = health_now_ms();
    time_t wall = time(NULL);
    bool first = true;
    for (size_t i = 0; i < cfg->n_clusters; i++) {
        const struct cluster_conf *cl = &cfg->clusters[i];
        for (size_t j = 0; j < cl->n_endpoints; j++) {
            const struct ep_state *st = cl->endpoints[j].state;
            if (st == NULL)
                continue;
            evbuffer_add_printf(b, "%s{\"cluster\":", first ? "" : ",");
            first = false;
            report_json_str(b, st->cluster);
            ADD_LIT(b, ",\"endpoint\":");
            report_json_str(b, st->endpoint);
            bool resolved = atomic_load(&st->resolved);
            evbuffer_add_printf(b, ",\"usable\":%s,\"resolved\":%s,\"addresses\":[", health_usable(st, now) ? "true" : "false",
                                resolved ? "true" : "false");
            for (size_t k = 0; k < st->n_addrs; k++) {
                char a[64];
                upconnect_addr_text((const struct sockaddr *)&st->addrs[k], a, sizeof(a));
                if (k)
                    ADD_LIT(b, ",");
                report_json_str(b, a);
            }
            bool has_probe = atomic_load(&st->has_probe);
            const char *probe = !has_probe ? "off" : atomic_load(&st->probe_down) ? "failing" : "passing";
            uint64_t until = atomic_load(&st->ejected_until_ms);
            bool ejected = until != 0 && (has_probe || now < until);
            evbuffer_add_printf(b,
                                "],\"probe\":\"%s\",\"ejected\":%s,\"ejected_ms\":%llu,\"ejections\":%llu,\"probes_ok\":%llu,"
                                "\"probes_failed\":%llu,\"last_probe_error\":",
                                probe, ejected ? "true" : "false", (unsigned long long)(until > now ? until - now : 0),
                                (unsigned long long)atomic_load(&st->ejections), (unsigned long long)st->probes_ok,
                                (unsigned long long)st->probes_failed);
            report_json_str(b, st->last_probe_error);
            ADD_LIT(b, ",\"last_dns_error\":");
            report_json_str(b, st->last_dns_error);
            if (st->dns)
                evbuffer_add_printf(b, ",\"dns_expires_in_s\":%lld}",
                                    (long long)(st->dns_expires_s > wall ? st->dns_expires_s - wall : 0));
            else
                ADD_LIT(b, ",\"dns_expires_in_s\":null}");
        }
    }
    ADD_LIT(b, "]");
}

/* A Prometheus label value: backslash, double quote and newline escaped. */

static void prom_labels(struct evbuffer *b, const struct ep_state *st)
{
    ADD_LIT(b, "{cluster=\"");
    report_label_value(b, st->cluster);
    ADD_LIT(b, "\",endpoint=\"");
    report_label_value(b, st->endpoint);
    ADD_LIT(b, "\"");
}

enum metric_kind { M_USABLE, M_EJECTIONS, M_CHECKS, M_DNS, M_ADDRESSES };

void health_metrics(struct health *h, struct evbuffer *b)
{
    static const struct {
        const char *name, *type, *help;
    } metrics[] = {
        [M_USABLE] = {"cutover_endpoint_usable", "gauge",
                      "1 if the endpoint may get new requests (addresses known, health checks passing, not ejected)."},
        [M_EJECTIONS] = {"cutover_endpoint_ejections_total", "counter",
                         "Passive ejections of the endpoint (consecutive connect failures or 5xx responses)."},
        [M_CHECKS] = {"cutover_health_checks_total", "counter", "Active health checks of the endpoint by result (ok, failed)."},
        [M_DNS] = {"cutover_dns_lookups_total", "counter",
                   "DNS lookups (A and AAAA) of the endpoint's host name by result (ok, failed)."},
        [M_ADDRESSES] = {"cutover_endpoint_addresses", "gauge", "Addresses the endpoint has now (from DNS or the IP literal)."},
    };
    const struct config *cfg = h ? h->running : NULL;
    uint64_t now = health_now_ms();
    for (int m = 0; m < (int)CO_ARRAY_SIZE(metrics); m++) {
        evbuffer_add_printf(b, "# HELP %s %s\n# TYPE %s %s\n", metrics[m].name, metrics[m].help, metrics[m].name, metrics[m].type);
        if (cfg == NULL)
            continue;
        for (size_t i = 0; i < cfg->n_clusters; i++) {
            const struct cluster_conf *cl = &cfg->clusters[i];
            for (size_t j = 0; j < cl->n_endpoints; j++) {
                const struct ep_state *st = cl->endpoints[j].state;
                if (st == NULL)
                    continue;
                const struct dns_state *ds = st->dns_state;
                uint64_t ok = 0, failed = 0;
                switch ((enum metric_kind)m) {
                case M_USABLE:
                    evbuffer_add_printf(b, "%s", metrics[m].name);
                    prom_labels(b, st);
                    evbuffer_add_printf(b, "} %d\n", health_usable(st, now) ? 1 : 0);
                    continue;
                case M_EJECTIONS:
                    evbuffer_add_printf(b, "%s", metrics[m].name);
                    prom_labels(b, st);
                    evbuffer_add_printf(b, "} %llu\n", (unsigned long long)atomic_load(&st->ejections));
                    continue;
                case M_ADDRESSES:
                    evbuffer_add_printf(b, "%s", metrics[m].name);
                    prom_labels(b, st);
                    evbuffer_add_printf(b, "} %zu\n", st->n_addrs);
                    continue;
                case M_CHECKS:
                    if (!cl->health.enabled && st->probes_ok + st->probes_failed == 0)
                        continue;
                    ok = st->probes_ok;
                    failed = st->probes_failed;
                    break;
                case M_DNS:
                    if (ds == NULL)
                        continue;
                    ok = ds->lookups_ok;
                    failed = ds->lookups_failed;
                    break;
                }
                evbuffer_add_printf(b, "%s", metrics[m].name);
                prom_labels(b, st);
                evbuffer_add_printf(b, ",result=\"ok\"} %llu\n", (unsigned long long)ok);
                evbuffer_add_printf(b, "%s", metrics[m].name);
                prom_labels(b, st);
                evbuffer_add_printf(b, ",result=\"failed\"} %llu\n", (unsigned long long)failed);
            }
        }
    }
}

void health_free(struct health *h)
{
    if (h == NULL)
        return;
    h->closing = true;
    for (size_t i = 0; i < h->n_entries; i++) {
        probe_stop(h->entries[i]);
        if (h->entries[i]->dns_state)
            event_del(((struct dns_state *)h->entries[i]->dns_state)->timer);
    }
    if (h->dns) {
        /* Requests in flight are dropped without callbacks. A request
         * evdns cancels itself (a nameserver probe) schedules its callback
         * on the loop: run what is already scheduled once, so those are
         * freed too (our own callbacks see `closing` and do nothing). */
        evdns_base_free(h->dns, 0);
        h->dns = NULL;
        event_base_loop(h->base, EVLOOP_NONBLOCK);
    }
    for (size_t i = 0; i < h->n_entries; i++)
        entry_free(h->entries[i]);
    free(h->entries);
    for (size_t i = 0; i < h->n_nameservers; i++)
        free(h->nameservers[i]);
    free(h->nameservers);
    if (h->running)
        config_unref(h->running);
    free(h);
}
