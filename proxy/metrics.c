/*
 * metrics.c - per-worker labelled counters. Only the owning worker writes;
 * the admin thread reads with relaxed loads after an acquire load of the
 * table size, so it never sees a half-built entry.
 */
#include "metrics.h"

#include <stdlib.h>
#include <string.h>

#include "common.h"

const uint64_t metrics_bucket_us[METRICS_BUCKETS] = {
    5000, 10000, 25000, 50000, 100000, 250000, 500000, 1000000, 2500000, 5000000, 10000000,
};

struct stats_table *stats_table_new(void)
{
    return co_calloc(1, sizeof(struct stats_table));
}

void stats_table_free(struct stats_table *t)
{
    size_t n = atomic_load(&t->n_routes);
    for (size_t i = 0; i < n; i++) {
        free(t->routes[i]->route);
        free(t->routes[i]->cluster);
        free(t->routes[i]);
    }
    n = atomic_load(&t->n_clusters);
    for (size_t i = 0; i < n; i++) {
        free(t->clusters[i]->cluster);
        free(t->clusters[i]);
    }
    free(t);
}

struct route_stats *stats_route(struct stats_table *t, const char *route, const char *cluster)
{
    size_t n = atomic_load_explicit(&t->n_routes, memory_order_relaxed);
    for (size_t i = 0; i < n; i++)
        if (strcmp(t->routes[i]->route, route) == 0 && strcmp(t->routes[i]->cluster, cluster) == 0)
            return t->routes[i];
    if (n == METRICS_MAX_ROUTE_STATS)
        return NULL;
    struct route_stats *rs = co_calloc(1, sizeof(*rs));
    rs->route = co_strdup(route);
    rs->cluster = co_strdup(cluster);
    t->routes[n] = rs;
    atomic_store_explicit(&t->n_routes, n + 1, memory_order_release);
    return rs;
}

struct cluster_stats *stats_cluster(struct stats_table *t, const char *cluster)
{
    size_t n = atomic_load_explicit(&t->n_clusters, memory_order_relaxed);
    for (size_t i = 0; i < n; i++)
        if (strcmp(t->clusters[i]->cluster, cluster) == 0)
            return t->clusters[i];
    if (n == METRICS_MAX_CLUSTER_STATS)
        return NULL;
    struct cluster_stats *cs = co_calloc(1, sizeof(*cs));
    cs->cluster = co_strdup(cluster);
    t->clusters[n] = cs;
    atomic_store_explicit(&t->n_clusters, n + 1, memory_order_release);
    return cs;
}

void stats_record(struct route_stats *rs, int reason, int status_class, uint64_t duration_us)
{
    if (rs == NULL)
        return;
    METRIC_INC(rs->requests[reason & 3][status_class % 6]);
    size_t b = 0;
    while (b < METRICS_BUCKETS && duration_us > metrics_bucket_us[b])
        b++;
    if (b < METRICS_BUCKETS)
        METRIC_INC(rs->duration_bucket[b]);
    METRIC_INC(rs->duration_count);
    METRIC_ADD(rs->duration_sum_us, duration_us);
}
