/*
 * worker.h - one worker thread: its event_base, listeners, connections,
 * upstream pools and counters. Everything reachable from a worker is touched
 * only by that worker's thread; the main thread talks to it through an
 * eventfd (so the worker's event_base needs no locks at all).
 */
#ifndef CUTOVER_WORKER_H
#define CUTOVER_WORKER_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "../config/config.h"
#include "decide.h"
#include "metrics.h"

struct event_base;
struct evconnlistener;
struct event;
struct accesslog;
struct pool;

/* Every downstream connection is linked in its worker's list so a drain can
 * reach it (close idle HTTP/1.1 connections, GOAWAY on HTTP/2). */
struct conn_link {
    struct conn_link *prev, *next;
    void (*drain)(struct conn_link *link); /* called once when the worker starts draining */
    void (*kill)(struct conn_link *link);  /* close now (drain timeout passed); must unlink */
};

/* One listening socket of a worker. */
struct wlistener {
    struct worker *worker;
    struct evconnlistener *listener;
    char *address; /* as in the config: identity across reloads */
    void *tls_ctx; /* SSL_CTX* (a reference) for TLS listeners, else NULL */
};

struct worker {
    unsigned id;
    pthread_t thread;
    struct event_base *base;
    struct config *cfg; /* current snapshot; new streams take a reference */
    struct wlistener **listeners;
    size_t n_listeners;
    struct pool *pool;               /* upstream connection pools (pool.c) */
    struct decide_wrr *wrr;          /* per route index of cfg: smooth WRR state */
    struct accesslog *log;           /* buffered access log (accesslog.c) */
    struct metrics metrics;          /* this worker's counters; summed at scrape */
    struct stats_table *stats;       /* labelled counters by route/cluster */
    struct route_stats **rs_index;   /* [route index * DECIDE_MAX_SPLIT + split index] for cfg */
    struct cluster_stats **cs_index; /* [cluster index] for cfg */
    int notify_fd;                   /* eventfd: the main thread wakes the worker (new config, stop) */
    struct event *notify_ev;         /* reads notify_fd on the worker's loop */
    atomic_bool stop_requested;      /* set by the main thread before a notify */
    pthread_mutex_t swap_lock;       /* guards `pending` only (main thread -> worker hand-off) */
    struct config *pending;          /* next snapshot, owned reference */
    int *pending_fds;                /* listening sockets bound for it: [listener index] or -1 (owned) */
    struct event *drain_timer;       /* forced exit after the drain timeout */
    unsigned n_conns;                /* open downstream connections */
    struct conn_link conns;          /* list head (sentinel) of open connections */
    int draining;                    /* stop accepting; exit when n_conns == 0 */
    atomic_bool exited;              /* the loop has returned (read by the main thread) */
    uint64_t rng[2];                 /* xorshift128+ state for request ids and cookies */
    void *mirror;                    /* mirror.c's per-worker state (shadow exchanges in flight) */
    unsigned n_shadows;              /* shadow exchanges in flight */
    struct retry_budget *budgets;    /* per route index of cfg (stream.c) */
    uint32_t *ramp_seen;             /* per route index of cfg: ramp_state.version the WRR was set up for */
};

/* Create worker `id` for cfg: event_base, listeners bound (SO_REUSEPORT).
 * Returns NULL and logs why on failure. Runs on the main thread. */
struct worker *worker_new(unsigned id, struct config *cfg);

/* Start the thread. CO_OK / CO_ERROR. */
int worker_start(struct worker *w);

/* Hand the worker a new snapshot (thread-safe; takes a reference). New
 * streams use it; streams in flight keep theirs. `fds` (owned, may be NULL):
 * a listening socket per listener of cfg that is new to this worker, or -1. */
void worker_set_config(struct worker *w, struct config *cfg, int *fds);

/* Bind and listen (SO_REUSEPORT, non-blocking) on a; -1 and err on failure. */
int worker_bind(const struct config_addr *a, char *err, size_t errlen);

/* Ask the worker to drain and exit (thread-safe). */
void worker_stop(struct worker *w);

/* Join and free. */
void worker_join_free(struct worker *w);

/* Next 64 random bits from the worker's PRNG (not for secrets). */
uint64_t worker_random(struct worker *w);

/* Called by connections when they close, to finish a drain. */
void worker_conn_closed(struct worker *w);

/* Link / unlink a connection (its drain callback runs when the worker drains). */
void worker_conn_link(struct worker *w, struct conn_link *link, void (*drain)(struct conn_link *),
                      void (*kill)(struct conn_link *));
void worker_conn_unlink(struct conn_link *link);

#endif
