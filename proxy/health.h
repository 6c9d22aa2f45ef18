/*
 * health.h - what cutover knows about each upstream endpoint at run time:
 * its addresses (DNS), whether active health checks pass, and whether
 * passive ejection took it out of service.
 *
 * One struct ep_state per (cluster name, endpoint name), owned by the
 * process-wide registry (struct health, main thread). Entries are created
 * on first sight and never freed before the process ends, so pointers to
 * them (endpoint_conf.state in every config snapshot) stay valid across
 * reloads and the state carries over.
 *
 * Threads: the main thread runs the probes and the resolver (both on its
 * event_base, off the request path) and is the only writer of addresses and
 * probe results. Workers read with relaxed/acquire atomics, report request
 * outcomes with atomic read-modify-writes, and copy the address list under
 * addr_lock only when addr_gen changed (rare: a DNS answer that differs).
 */
#ifndef CUTOVER_HEALTH_H
#define CUTOVER_HEALTH_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "../config/config.h"

#define EP_MAX_ADDRS 16

struct health;
struct event_base;
struct evbuffer;
struct health_probe; /* health.c */

struct ep_state {
    char *cluster;  /* identity */
    char *endpoint; /* "HOST:PORT" as written */
    char *host;     /* HOST part (name or literal) */
    uint16_t port;
    bool dns; /* host is a name resolved at run time */

    /* Written by the main thread, read by workers. */
    atomic_bool resolved;              /* has had at least one address (always true for literals) */
    atomic_bool probe_down;            /* active checks: `unhealthy` consecutive failures (cleared by `healthy` passes) */
    atomic_bool has_probe;             /* the cluster runs active checks (ejection then ends with a passing probe) */
    _Atomic uint64_t ejected_until_ms; /* passive ejection: co_now_ms() deadline, 0 = not ejected */

    /* Written by workers (atomic RMW), read by all. */
    atomic_uint connect_streak; /* consecutive connect/TLS failures */
    atomic_uint fail5xx_streak; /* consecutive 5xx responses */
    _Atomic uint64_t ejections; /* times ejected (metric) */

    /* Addresses: written by the main thread under addr_lock, then addr_gen
     * is incremented (release). Workers compare addr_gen (acquire) with the
     * generation they copied and copy again under addr_lock when it moved. */
    pthread_mutex_t addr_lock;
    struct sockaddr_storage addrs[EP_MAX_ADDRS];
    socklen_t addr_lens[EP_MAX_ADDRS];
    size_t n_addrs;
    atomic_uint addr_gen;

    /* Main thread only (health.c). */
    const struct cluster_conf *cluster_conf; /* of the newest config that has it, NULL when retired */
    const struct endpoint_conf *endpoint_conf;
    struct health_probe *probe; /* active check state, NULL when off */
    void *dns_state;            /* resolver state, NULL for literals */
    uint64_t probes_ok, probes_failed;
    char last_probe_error[160];
    char last_dns_error[160];
    int64_t dns_expires_s; /* wall clock when the current answer expires (status) */
};

/* ---- workers ---- */

/* Monotonic milliseconds (CLOCK_MONOTONIC), the clock of ejected_until_ms. */
uint64_t health_now_ms(void);

/* The endpoint may get new requests: it has addresses, active checks (if
 * any) pass, and it is not ejected (see eject_conf for when that ends).
 * st == NULL (a config that never went through health_attach, as in the
 * fuzzer) is usable. */
bool health_usable(const struct ep_state *st, uint64_t now_ms);

enum health_event {
    HEV_CONNECT_FAILED, /* TCP connect or TLS handshake failed / timed out */
    HEV_CONNECTED,      /* a new connection came up: ends the connect-failure streak */
    HEV_5XX,            /* a 5xx response head from the upstream */
    HEV_RESPONSE,       /* any other response head: ends the 5xx streak */
};

/* Report a request outcome (any thread; st == NULL: nothing). May eject the endpoint (logged
 * once, by the reporter that crossed the threshold, with the cluster's
 * eject_conf `ej`). */
void health_report(struct ep_state *st, const struct eject_conf *ej, enum health_event ev);

/* Copy the addresses when *gen differs from addr_gen; returns true (and
 * updates *gen, out, lens, *n) when it copied. */
bool health_addrs(struct ep_state *st, unsigned *gen, struct sockaddr_storage *out, socklen_t *lens, size_t *n);

/* ---- main thread ---- */

/* The registry, probes and resolver on `base`. Nameservers come from
 * cfg->dns (or /etc/resolv.conf). NULL and err on failure. */
struct health *health_new(struct event_base *base, const struct config *cfg, char *err, size_t errlen);

/* Set endpoint_conf.state for every endpoint of cfg (creating entries for
 * new ones) - before cfg is handed to workers. A new host name starts
 * resolving right away. CO_ERROR and err when cfg changes dns.nameservers. */
int health_attach(struct health *h, struct config *cfg, char *err, size_t errlen);

/* cfg is now the running config: start, retune or stop probes; endpoints
 * that left it stop being probed and resolved (their state stays). */
void health_apply(struct health *h, struct config *cfg);

/* Run `base` until every host name of the running config has had a first
 * answer (or failed), at most timeout_ms. For start-up only. */
void health_settle(struct health *h, uint64_t timeout_ms);

/* /status: a JSON array of endpoints, e.g.
 * [{"cluster":"aws","endpoint":"10.0.0.4:80","usable":true,"resolved":true,
 *   "addresses":["10.0.0.4:80"],"probe":"passing"|"failing"|"off",
 *   "ejected_ms":0,"ejections":0,"probes_ok":12,"probes_failed":0,
 *   "last_probe_error":"","last_dns_error":"","dns_expires_in_s":30}] */
void health_status_json(struct health *h, struct evbuffer *b);

/* /metrics: cutover_endpoint_usable, cutover_endpoint_ejections_total,
 * cutover_health_checks_total{result}, cutover_dns_lookups_total{result},
 * cutover_endpoint_addresses, labelled {cluster,endpoint}. */
void health_metrics(struct health *h, struct evbuffer *b);

void health_free(struct health *h);

#endif
