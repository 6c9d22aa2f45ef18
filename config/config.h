/*
 * config.h - the configuration snapshot and its loader.
 *
 * A struct config is an immutable, reference-counted snapshot built by
 * config_load() on the main thread. Workers and streams hold references
 * (config_ref/config_unref); the last unref frees it. Nothing in a snapshot
 * changes after config_load() returns, so readers need no locks.
 *
 * Every string in the snapshot is owned by it (heap, NUL-terminated).
 */
#ifndef CUTOVER_CONFIG_H
#define CUTOVER_CONFIG_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

/* Number of sticky buckets; the first split cluster owns [0, share). */
#define CONFIG_BUCKETS 10000u

/* A socket address as written in the config ("127.0.0.1:8080", "[::1]:8443",
 * "0.0.0.0:80"). Listener and admin addresses must be IP literals. */
struct config_addr {
    struct sockaddr_storage sa; /* resolved address */
    socklen_t sa_len;
    char *text; /* as written, e.g. "127.0.0.1:8080" */
};

struct ep_state;
struct ramp_state;

/* One upstream endpoint of a cluster, "HOST:PORT" as written. */
struct endpoint_conf {
    char *host;    /* host part without brackets: "10.0.0.4", "::1", "api.example" */
    uint16_t port; /* required in the config */
    char *name;    /* "HOST:PORT" as written; the endpoint's identity across reloads */
    /* IP literal: exactly one address here (n_addrs == 1, dns false).
     * Host name: dns is true, n_addrs is 0 and the addresses come from the
     * asynchronous resolver at run time (proxy/health.c); config_load never
     * resolves names. */
    bool dns;
    struct sockaddr_storage *addrs;
    socklen_t *addr_lens;
    size_t n_addrs;
    /* Shared run-time state (health, ejection, resolved addresses), keyed by
     * (cluster name, endpoint name) so it survives reloads. NULL after
     * config_load; set by health_attach() on the main thread before the
     * snapshot is handed to any worker, never changed after that. */
    struct ep_state *state;
};

enum cluster_protocol {
    CLUSTER_PROTO_H1 = 0, /* "http1" (default) */
    CLUSTER_PROTO_H2,     /* "h2": HTTP/2 (h2c prior knowledge in cleartext, ALPN h2 over TLS) */
    CLUSTER_PROTO_AUTO,   /* "auto": over TLS, h2 when the upstream offers it in ALPN, else http/1.1;
                             in cleartext the same as http1 */
};

/* Upstream TLS of a cluster (`tls:` mapping present = on). */
struct cluster_tls_conf {
    bool enabled;
    char *sni;     /* SNI sent; default: the cluster's `host`, else the endpoint host */
    char *ca_file; /* PEM bundle to trust; NULL = the system store */
    bool verify;   /* default true; `verify: false` must be written and is warned about */
    void *ctx;     /* SSL_CTX*, built by config_load, freed with the snapshot */
};

/* Active health checks (`health:` mapping present = on). A probe is one
 * HTTP request over a new connection with the cluster's TLS, SNI, ALPN and
 * Host settings (HTTP/2 for protocol h2), run by the main thread. */
struct health_conf {
    bool enabled;
    char *path;           /* request target, default "/healthz"; starts with '/' */
    char *host;           /* Host / :authority; NULL = the cluster's `host`, else the endpoint's HOST:PORT */
    uint64_t interval_ms; /* default 5s, 100ms..1h */
    uint64_t timeout_ms;  /* default 2s, must be below interval */
    uint32_t healthy;     /* consecutive passes to return to service, default 2, 1..100 */
    uint32_t unhealthy;   /* consecutive failures to leave service, default 3, 1..100 */
    uint16_t expect_min;  /* expected status range, default 200..399: `expect: 200`, */
    uint16_t expect_max;  /* `expect: 200-299` or `expect: 2xx` */
};

/* Passive ejection (`eject:`; on by default). Counted per endpoint over all
 * workers; any other outcome resets the corresponding streak. */
struct eject_conf {
    uint32_t connect_failures; /* consecutive connect/TLS failures that eject, default 3, 0 = off */
    uint32_t consecutive_5xx;  /* consecutive 5xx responses that eject, default 5, 0 = off */
    uint64_t duration_ms;      /* ejected at least this long, default 30s; with active checks it
                                  returns only after a passing probe once the period is over */
};

struct cluster_conf {
    char *name;   /* unique among clusters */
    size_t index; /* position in config->clusters */
    struct endpoint_conf *endpoints;
    size_t n_endpoints; /* >= 1 */
    char *host;         /* Host header sent upstream; NULL = keep the client's */
    enum cluster_protocol protocol;
    uint64_t connect_timeout_ms;    /* default 3000: connect() failing/timing out -> 503 */
    uint64_t first_byte_timeout_ms; /* default 30000: no response head -> 504 */
    uint64_t idle_timeout_ms;       /* default 30000: pooled idle upstream connections closed after */
    uint32_t max_idle;              /* default 256: idle pooled connections per endpoint per worker */
    uint64_t max_connection_age_ms; /* default 10m, 0 = unlimited: older upstream connections are
                                       not reused (HTTP/2: no new streams) and close when idle */
    struct cluster_tls_conf tls;
    struct health_conf health;
    struct eject_conf eject;
};

struct split_conf {
    struct cluster_conf *cluster; /* points into config->clusters */
    uint32_t weight;              /* >= 0; sum over a route's split > 0 */
};

enum sticky_kind {
    STICKY_NONE = 0,
    STICKY_COOKIE,    /* sticky: { cookie: NAME } - proxy sets the cookie on first response */
    STICKY_HEADER,    /* sticky: { header: NAME } - e.g. x-user-id (name stored lowercase) */
    STICKY_CLIENT_IP, /* sticky: { client_ip: true } */
};

struct sticky_conf {
    enum sticky_kind kind;
    char *name;         /* cookie or header name; NULL for client_ip */
    uint64_t max_age_s; /* cookie Max-Age, default 86400*30; `max_age: 30d` */
};

struct override_conf {
    bool enabled; /* true when the `override` mapping is present */
    char *header; /* lowercase header name, or NULL */
    char *cookie; /* cookie name, or NULL (at least one of header/cookie set) */
    char *secret; /* HMAC key, non-empty */
    size_t secret_len;
};

/* Shares are in basis points (1/10000): "12.5%" -> 1250, "100%" -> 10000.
 * Percent values accept "N%" or a bare number N, with up to two decimals. */

/* `retry:` of a route. */
struct retry_conf {
    uint32_t attempts; /* retries after the first try (DESIGN.md `retry: { attempts: 1 }`):
                          default 1, 0 = never retry, max 4 */
    uint32_t budget;   /* retries as a share of requests, basis points; default 2000 (20%) */
    uint64_t max_body; /* request bodies up to this are kept for a replay, default 64 KiB,
                          0..16 MiB (`max_body: 64KiB`) */
};

/* `mirror:` of a route (cluster NULL = no mirror). */
struct mirror_conf {
    struct cluster_conf *cluster; /* points into config->clusters */
    uint32_t share;               /* `percent:` of requests copied, basis points, default 10000 */
    uint64_t max_body;            /* larger request bodies are not mirrored, default 64 KiB */
    bool compare;                 /* compare status classes, count and log mismatches (default false) */
    uint32_t max_in_flight;       /* copies in flight per worker, default 64, 1..10000 */
};

/* `ramp: { gate: ... }`. Evaluated over the current step only. */
struct ramp_gate_conf {
    bool enabled;             /* `gate:` present */
    uint64_t min_requests;    /* new-side requests in the step before it is judged, default 100 */
    uint32_t max_5xx;         /* `max_5xx_ratio:` a ratio 0..1 (0.01) or a percentage ("1%"), stored
                                 in basis points of the new side's requests; default 10000 (off) */
    uint64_t max_p99_ms;      /* `max_p99_ms: 800` or `max_p99: 800ms`; 0 = off (default) */
    bool vs_old;              /* `old_side_margin:` present: the new side's 5xx ratio may exceed */
    uint32_t old_side_margin; /* the old side's (same route, same step) by at most this, basis points */
};

/* `ramp:` of a route: the share of split[0] (the new side) follows `steps`
 * by the wall clock: steps[k] from start + k * hold. Before start the
 * written weights apply. The split has exactly two entries; steps are
 * non-decreasing, in 0..10000, and steps[0] is not below the written share
 * of split[0] (so sticky users only ever move to the new side). */
struct ramp_conf {
    bool enabled;
    int64_t start_s;  /* `start: 2026-12-01T09:00:00Z` (UTC, RFC 3339 with Z), unix seconds */
    uint32_t *steps;  /* basis points, `steps: [5%, 25%, 50%, 100%]` */
    size_t n_steps;   /* 1..64 */
    uint64_t hold_ms; /* time on each step, >= 1s */
    struct ramp_gate_conf gate;
    uint64_t fingerprint; /* hash of the ramp, its gate and the route's split (cluster names and
                             weights): a rollback holds while this is unchanged across reloads */
};

struct route_conf {
    char *name;   /* unique among routes */
    size_t index; /* position in config->routes */
    /* match.host: NULL = any host. Lowercase. "*.example.com" is stored as
     * host_suffix=true, host=".example.com" (matches a.example.com and
     * a.b.example.com, not example.com). */
    char *host;
    bool host_suffix;
    /* match.path_prefix (path_exact=false) or match.path (path_exact=true);
     * default prefix "/". */
    char *path;
    bool path_exact;
    struct split_conf *split;
    size_t n_split;        /* >= 1 */
    uint32_t total_weight; /* > 0 */
    struct sticky_conf sticky;
    struct override_conf override;
    bool failover; /* default true: a side with no usable endpoint hands its requests to another */
    struct retry_conf retry;
    struct mirror_conf mirror;
    struct ramp_conf ramp;
    /* Shared ramp state (proxy/ramp.c), set like endpoint_conf.state before
     * the snapshot is handed out; NULL when the route has no ramp. */
    struct ramp_state *ramp_state;
};

struct tls_cert_conf {
    char *cert; /* PEM certificate (chain) path */
    char *key;  /* PEM private key path */
};

struct listener_conf {
    struct config_addr addr;
    bool tls;                    /* `tls:` present: TLS with ALPN h2 / http/1.1 */
    struct tls_cert_conf *certs; /* >= 1 when tls; chosen by SNI, the first is the default */
    size_t n_certs;
    int min_version; /* TLS1_2_VERSION (default, "1.2") or TLS1_3_VERSION ("1.3") */
    bool h2;         /* offer h2 in ALPN (default true) */
    void *ctx;       /* SSL_CTX*, built by config_load, freed with the snapshot */
};

struct admin_conf {
    bool enabled; /* admin mapping present (default: 127.0.0.1:9901) */
    struct config_addr addr;
    char *token; /* bearer token, NULL = none */
};

/* Downstream limits and timeouts (top-level `limits:` and `timeouts:`). */
struct limits_conf {
    uint32_t max_request_line; /* bytes, default 8192 -> 414 */
    uint32_t max_header_bytes; /* bytes of the whole head, default 65536 -> 431 */
    uint32_t max_headers;      /* header field count, default 100 -> 431 */
    uint64_t max_body_bytes;   /* 0 = unlimited (default); larger -> 413 */
    uint32_t max_connections;  /* per worker, default 10000 */
};

struct timeouts_conf {
    uint64_t header_ms;    /* default 10000: whole request head must arrive -> 408 */
    uint64_t idle_ms;      /* default 60000: keep-alive idle downstream -> close */
    uint64_t body_ms;      /* default 60000: no request body progress for this long -> 408 */
    uint64_t send_ms;      /* default 60000: client not reading for this long -> close */
    uint64_t drain_ms;     /* default 30000: SIGTERM waits this long for in-flight work */
    uint64_t handshake_ms; /* default 10000: TLS handshake must complete within */
};

/* `dns:` (top level). Fixed at start: a reload that changes nameservers is
 * refused with a message (like admin.address). */
struct dns_conf {
    char **nameservers; /* "IP" or "IP:PORT" / "[IPv6]:PORT"; none = /etc/resolv.conf */
    size_t n_nameservers;
    uint64_t min_ttl_ms; /* re-resolve no sooner than this, default 5s (also the retry after a failure) */
    uint64_t max_ttl_ms; /* and no later than this, default 5m */
    uint64_t timeout_ms; /* per query, default 2s */
};

struct config {
    atomic_uint refcount; /* config_ref / config_unref */
    char *file;           /* path it was loaded from */
    uint64_t generation;  /* set by the caller (reload counter), 0 from config_load */
    uint32_t workers;     /* `workers: auto` (=0 here, resolved by main) or N >= 1 */
    struct listener_conf *listeners;
    size_t n_listeners; /* >= 1 */
    struct admin_conf admin;
    struct cluster_conf *clusters;
    size_t n_clusters; /* >= 1 */
    struct route_conf *routes;
    size_t n_routes; /* >= 1 */
    struct limits_conf limits;
    struct timeouts_conf timeouts;
    struct dns_conf dns;
};

/*
 * Load and validate FILE. On success returns CO_OK and *out holds a new
 * snapshot with refcount 1. On failure returns CO_ERROR, *out is NULL and
 * err holds one line "FILE:LINE:COLUMN: what was wrong, what was expected".
 * Runs on the main thread only (may read files; never resolves host names).
 */
int config_load(const char *path, struct config **out, char *err, size_t errlen);

/* Same, from a memory buffer; `name` is used as FILE in messages (fuzzing, tests). */
int config_load_buffer(const char *name, const char *data, size_t len, struct config **out, char *err, size_t errlen);

struct config *config_ref(struct config *cfg);
void config_unref(struct config *cfg);

/* Lookup helpers (NULL / -1 when absent). */
const struct cluster_conf *config_find_cluster(const struct config *cfg, const char *name);

/* Parse "250ms", "5s", "2m", "1h", "30d" (a bare number is an error). CO_OK/CO_ERROR. */
int config_parse_duration(const char *s, uint64_t *ms);

/* Parse "IPv4:PORT" or "[IPv6]:PORT" into addr (addr->text is set). CO_OK/CO_ERROR. */
int config_parse_address(const char *s, struct config_addr *addr);

/* Parse a percentage ("20%", "20", "0.5%", "100%") into basis points
 * 0..10000. CO_OK/CO_ERROR. */
int config_parse_percent(const char *s, uint32_t *bp);

/* Parse "2026-12-01T09:00:00Z" into unix seconds. CO_OK/CO_ERROR. */
int config_parse_time(const char *s, int64_t *unix_s);

#endif
