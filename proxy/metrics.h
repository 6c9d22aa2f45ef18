/*
 * metrics.h - per-worker counters. Each worker increments its own struct
 * (no locks, no atomics on the request path); a scrape sums all workers.
 * A torn read of a 64-bit counter cannot happen on the 64-bit targets we run
 * on, and a scrape that is a few requests behind is acceptable.
 */
#ifndef CUTOVER_METRICS_H
#define CUTOVER_METRICS_H

#include <stdint.h>

struct metrics {
    uint64_t requests;            /* requests answered (any status) */
    uint64_t status_class[6];     /* index status/100 (0 = aborted before a status) */
    uint64_t reason[4];           /* by enum decide_reason */
    uint64_t override_rejected;   /* override values that were present but invalid */
    uint64_t no_route;            /* 404 because no route matched */
    uint64_t bad_requests;        /* 4xx produced by the parser / limits */
    uint64_t upstream_connect_errors;
    uint64_t upstream_timeouts;
    uint64_t upstream_bad_responses;
    uint64_t upstream_retries;
    uint64_t conns_accepted;
    uint64_t log_dropped;         /* access-log lines dropped because the writer fell behind */
};

#endif
