/*
 * pool.h - a worker's upstream connection pools, one per cluster endpoint,
 * keyed by (cluster name, endpoint name) so they can survive a config reload.
 * Only the owning worker touches its pool.
 */
#ifndef CUTOVER_POOL_H
#define CUTOVER_POOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/queue.h>

#include "../config/config.h"
#include "health.h"

struct upconn;
struct worker;
struct h2session;

TAILQ_HEAD(upconn_list, upconn);
LIST_HEAD(h2session_list, h2session);

/* One endpoint of a cluster as seen by one worker. */
struct ep_pool {
    char *cluster_name;
    char *endpoint_name; /* "HOST:PORT" */
    uint32_t max_idle;   /* from the newest config that has this endpoint */
    uint64_t idle_timeout_ms;
    bool retired;            /* left the config: connections are not parked */
    uint64_t max_age_ms;     /* cluster max_connection_age, 0 = unlimited */
    struct eject_conf eject; /* the cluster's passive ejection settings (a copy) */
    struct ep_state *st;     /* shared state: health, addresses (health.h) */
    /* This worker's copy of st's addresses, refreshed when st->addr_gen moves. */
    unsigned addr_gen;
    size_t n_addrs;
    size_t addr_rr; /* round robin over the addresses */
    struct sockaddr_storage addrs[EP_MAX_ADDRS];
    socklen_t addr_lens[EP_MAX_ADDRS];
    char addr_text[EP_MAX_ADDRS][64]; /* "ip:port" of each, to match connections */
    struct upconn_list idle;          /* idle keep-alive connections, most recent first */
    unsigned n_idle;
    unsigned n_active;
    /* HTTP/2 sessions of this worker to the endpoint (upstream_h2.c owns
     * them). A LIST so that the zeroed ep_pool is a valid empty list. */
    struct h2session_list h2_sessions;
    unsigned n_h2_sessions;
    bool h2; /* protocol auto: the endpoint chose h2 in ALPN, new streams go to upstream_h2_start */
};

struct cluster_pool {
    struct ep_pool **eps; /* one per endpoint of the cluster, config order */
    size_t n_eps;
    size_t rr; /* round robin over endpoints */
};

struct pool {
    struct worker *worker;
    const struct config *cfg;      /* config the index below was built for */
    struct cluster_pool *clusters; /* indexed by cluster_conf.index */
    size_t n_clusters;
    struct ep_pool **all; /* every ep_pool ever created and still referenced */
    size_t n_all;
    size_t rr; /* round robin for streams of older snapshots */
};

struct pool *pool_new(struct worker *w, const struct config *cfg);

/* Rebuild the index for a new config; endpoint pools carry over by name,
 * pools of endpoints that left the config close their idle connections. */
void pool_update(struct pool *p, const struct config *cfg);

/* Next endpoint of `cluster` (of any live config snapshot) by round robin
 * among the usable ones (health_usable), `avoid` (may be NULL) only when it
 * is the only usable one; with none usable, any endpoint that has addresses
 * (panic: better a try than a certain error). NULL when no endpoint has an
 * address yet (names never resolved). *endpoint is set to the endpoint's
 * config in that snapshot. */
struct ep_pool *pool_pick(struct pool *p, const struct cluster_conf *cluster, const struct ep_state *avoid,
                          const struct endpoint_conf **endpoint);

/* Next address of ep (round robin), after refreshing ep's copy when DNS
 * changed it (which also closes idle connections to addresses that left).
 * false when ep has no address. */
bool pool_next_addr(struct ep_pool *ep, const struct sockaddr **sa, socklen_t *len);

/* Whether "ip:port" is still one of ep's addresses. */
bool pool_addr_current(const struct ep_pool *ep, const char *addr);

/* A connection made at born_ms may carry another exchange (age cap). */
bool pool_young(const struct ep_pool *ep, uint64_t born_ms);

/* Pop an idle connection, or NULL. */
struct upconn *pool_take_idle(struct ep_pool *ep);

/* Park an idle connection; returns CO_DECLINED (caller closes it) when full. */
int pool_put_idle(struct ep_pool *ep, struct upconn *c);

/* Remove a parked connection (it closed or timed out). */
void pool_remove_idle(struct ep_pool *ep, struct upconn *c);

/* Close every idle connection and free the pool (worker exit). */
void pool_free(struct pool *p);

#endif
