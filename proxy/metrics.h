/*
 * metrics.h - per-worker counters. Each worker increments its own struct
 * (no locks, no atomics on the request path); a scrape sums all workers.
 * A torn read of a 64-bit counter cannot happen on the 64-bit targets we run
 * on, and a scrape that is a few requests behind is acceptable.
 */
#ifndef CUTOVER_METRICS_H
#define CUTOVER_METRICS_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

/* A counter written by one worker and read by the scraper. Relaxed loads and
 * stores (no read-modify-write: there is a single writer) compile to plain
 * moves on x86-64 and keep the cross-thread read well defined. */
typedef _Atomic uint64_t metric_t;

#define METRIC_ADD(m, n) atomic_store_explicit(&(m), atomic_load_explicit(&(m), memory_order_relaxed) + (n), memory_order_relaxed)
#define METRIC_INC(m) METRIC_ADD(m, 1)
#define METRIC_SUB(m, n) atomic_store_explicit(&(m), atomic_load_explicit(&(m), memory_order_relaxed) - (n), memory_order_relaxed)
#define METRIC_GET(m) atomic_load_explicit(&(m), memory_order_relaxed)

struct metrics {
    metric_t requests;          /* requests answered (any status) */
    metric_t status_class[6];   /* index status/100 (0 = aborted before a status) */
    metric_t reason[4];         /* by enum decide_reason */
    metric_t override_rejected; /* override values that were present but invalid */
    metric_t no_route;          /* 404 because no route matched */
    metric_t bad_requests;      /* 4xx produced by the parser / limits */
    metric_t upstream_connect_errors;
    metric_t upstream_timeouts;
    metric_t upstream_bad_responses;
    metric_t upstream_retries;
    metric_t retry_budget_exhausted; /* retries refused because the route's budget was spent */
    metric_t conns_accepted;
    metric_t log_dropped;            /* access-log lines dropped because the writer fell behind */
    metric_t conns_h1;               /* open downstream HTTP/1.1 connections (gauge) */
    metric_t conns_h2;               /* open downstream HTTP/2 connections (gauge) */
    metric_t tls_handshake_failures; /* downstream TLS handshakes that failed or timed out */
    metric_t h2_calm;                /* HTTP/2 connections ended for abuse (glitch budget, outbound queue) */
};

/* Request duration histogram bounds, in microseconds (Prometheus `le` in seconds). */
#define METRICS_BUCKETS 11
extern const uint64_t metrics_bucket_us[METRICS_BUCKETS];

/* Counters of one (route, cluster) pair on one worker. Created on first use,
 * never freed before the worker: the scraper may read it at any time. */
struct route_stats {
    char *route;
    char *cluster;
    metric_t requests[4][6];                   /* [decide_reason][status class] */
    metric_t duration_bucket[METRICS_BUCKETS]; /* cumulative counts are computed at scrape */
    metric_t duration_count;
    metric_t duration_sum_us;
    /* Mirror copies of this route to this cluster (mirror.c). */
    metric_t mirror_sent;     /* copies started */
    metric_t mirror_skipped;  /* sampled but not sent (in-flight cap, body over max_body, request failed first) */
    metric_t mirror_failed;   /* copies that got no upstream response (connect error, timeout, reset) */
    metric_t mirror_mismatch; /* compare: status class differed from the real response */
};

/* Upstream counters of one cluster on one worker. */
struct cluster_stats {
    char *cluster;
    metric_t connect_errors;
    metric_t timeouts;
    metric_t retries;
    metric_t bad_responses;
};

#define METRICS_MAX_ROUTE_STATS 4096
#define METRICS_MAX_CLUSTER_STATS 1024

/* A worker's labelled counters: append-only tables (the count is published
 * with release order after the entry is complete) plus indexes for the
 * current config. */
struct stats_table {
    struct route_stats *routes[METRICS_MAX_ROUTE_STATS];
    _Atomic size_t n_routes;
    struct cluster_stats *clusters[METRICS_MAX_CLUSTER_STATS];
    _Atomic size_t n_clusters;
};

struct stats_table *stats_table_new(void);
void stats_table_free(struct stats_table *t);
/* Find or create (worker thread only). NULL when the table is full. */
struct route_stats *stats_route(struct stats_table *t, const char *route, const char *cluster);
struct cluster_stats *stats_cluster(struct stats_table *t, const char *cluster);
/* Record one finished request. */
void stats_record(struct route_stats *rs, int reason, int status_class, uint64_t duration_us);

#endif
