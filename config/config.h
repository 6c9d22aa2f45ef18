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

/* One upstream endpoint of a cluster, "HOST:PORT" as written. */
struct endpoint_conf {
    char *host;    /* host part without brackets: "10.0.0.4", "::1", "api.example" */
    uint16_t port; /* required in the config */
    char *name;    /* "HOST:PORT" as written; the endpoint's identity across reloads */
    /* Addresses resolved at load time (IP literal: exactly one; host name:
     * getaddrinfo on the main thread, all addresses). n_addrs >= 1. */
    struct sockaddr_storage *addrs;
    socklen_t *addr_lens;
    size_t n_addrs;
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
    struct cluster_tls_conf tls;
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
};

/*
 * Load and validate FILE. On success returns CO_OK and *out holds a new
 * snapshot with refcount 1. On failure returns CO_ERROR, *out is NULL and
 * err holds one line "FILE:LINE:COLUMN: what was wrong, what was expected".
 * Runs on the main thread only (may read files and resolve host names).
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

/*
 * The resolver config_load uses for endpoint host names; getaddrinfo(3) by
 * default (called with AF_UNSPEC, SOCK_STREAM, AI_NUMERICSERV). The fuzzer
 * and unit tests install a stub so that loading never waits on DNS. A stub's
 * result must be freeable with freeaddrinfo(3) (e.g. it calls getaddrinfo
 * with a numeric host). NULL restores getaddrinfo. Main thread only.
 */
struct addrinfo;
typedef int (*config_resolver_fn)(const char *host, const char *service, const struct addrinfo *hints, struct addrinfo **res);
void config_set_resolver(config_resolver_fn fn);

#endif
