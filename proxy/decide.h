/*
 * decide.h - choosing the side (cluster) for a request. The heart of cutover.
 *
 * Order, first that applies wins (DESIGN.md):
 *   1. override: a header or cookie carrying "CLUSTER.HEX(HMAC-SHA256(secret, CLUSTER))"
 *   2. sticky:   a stable key hashed to one of CONFIG_BUCKETS buckets; the first
 *                split cluster owns [0, share0), the next [share0, share0+share1) ...
 *   3. weight:   smooth weighted round robin (nginx), exact over each cycle.
 *   (4. failover is applied later, by health.)
 * Pure functions plus a small per-worker state; no locks.
 */
#ifndef CUTOVER_DECIDE_H
#define CUTOVER_DECIDE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../config/config.h"

enum decide_reason {
    DECIDE_OVERRIDE = 0,
    DECIDE_STICKY,
    DECIDE_WEIGHT,
    DECIDE_FAILOVER,
};

/* "override", "sticky", "weight", "failover" */
const char *decide_reason_name(enum decide_reason r);

/* Length of a token for a cluster name of n bytes: n + 1 + 64. */
#define DECIDE_TOKEN_HEXLEN 64

/*
 * Write "CLUSTER.<64 lowercase hex of HMAC-SHA256(secret, CLUSTER)>" into out
 * (NUL-terminated). Returns CO_OK, or CO_ERROR when outlen is too small.
 */
int decide_token(const char *secret, size_t secret_len, const char *cluster, char *out, size_t outlen);

/*
 * Check an override value against a route. Returns the index into
 * route->split of the named cluster when the value is "CLUSTER.HMAC" with a
 * valid signature (constant-time compare) and CLUSTER is in the route's split;
 * -1 otherwise (unsigned, badly signed, unknown cluster: the caller ignores
 * it and counts a rejection).
 */
int decide_check_override(const struct route_conf *route, const char *value, size_t value_len);

/* Stable bucket in [0, CONFIG_BUCKETS) for a sticky key. Same key -> same
 * bucket on every replica and version (64-bit FNV-1a, then a murmur3 fmix64 finaliser). */
uint32_t decide_bucket(const char *key, size_t key_len);

/*
 * Split index owning `bucket` for this route: cumulative shares, where the
 * share of split i is floor(CONFIG_BUCKETS * weight_i / total) and the last
 * split with nonzero weight takes the rounding rest. A split entry with weight
 * 0 owns no bucket.
 */
int decide_sticky(const struct route_conf *route, uint32_t bucket);

/* Per-worker smooth-WRR state for one route (nginx ngx_http_upstream_get_peer). */
struct decide_wrr {
    size_t n;            /* number of split entries it was sized for */
    int64_t current[16]; /* current weights; routes have at most 16 split entries */
};

#define DECIDE_MAX_SPLIT 16

void decide_wrr_init(struct decide_wrr *w, const struct route_conf *route);

/* Next split index by smooth weighted round robin. Over any run of
 * total_weight consecutive picks starting at a cycle boundary, entry i is
 * picked exactly weight_i times. */
int decide_weight(struct decide_wrr *w, const struct route_conf *route);

/* Next of two entries by smooth WRR with weights share : CONFIG_BUCKETS -
 * share (a ramp in effect; share in 0..CONFIG_BUCKETS). */
int decide_weight_share(struct decide_wrr *w, uint32_t share);

/*
 * Find cookie `name` in a Cookie header value ("a=1; b=2"). Returns CO_OK and
 * sets *val and *val_len (pointing into `header`) or CO_DECLINED.
 */
int decide_find_cookie(const char *header, size_t header_len, const char *name, const char **val, size_t *val_len);

#endif
