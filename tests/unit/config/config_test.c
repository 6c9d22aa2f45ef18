/*
 * config_test.c - tests for config/config.c: the YAML loader, its error
 * messages (exact FILE:LINE:COLUMN), ${NAME} substitution, the duration and
 * address parsers and reference counting.
 *
 * Runs with tests/unit/config as the working directory (fixtures *.yaml).
 * config_load never resolves host names (proxy/health.c does, at run time),
 * so no test here touches DNS.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config/config.h"
#include "proxy/common.h"

/* ------------------------------------------------------------------------- */
/* Helpers */

static char err[1024];

static struct config *load_ok(const char *yaml)
{
    struct config *cfg = (struct config *)(uintptr_t)1;
    err[0] = '\0';
    int rc = config_load_buffer("t.yaml", yaml, strlen(yaml), &cfg, err, sizeof(err));
    if (rc != CO_OK)
        fail_msg("expected success, got: %s", err);
    assert_non_null(cfg);
    assert_string_equal(err, "");
    return cfg;
}

/* Loading fails and the message is exactly `expected`. */
static void load_fails(const char *yaml, const char *expected)
{
    struct config *cfg = (struct config *)(uintptr_t)1;
    err[0] = '\0';
    int rc = config_load_buffer("t.yaml", yaml, strlen(yaml), &cfg, err, sizeof(err));
    assert_int_equal(rc, CO_ERROR);
    assert_null(cfg);
    assert_string_equal(err, expected);
}

/* Loading fails at `where` ("t.yaml:L:C: ") and the message contains `what`. */
static void load_fails_at(const char *yaml, const char *where, const char *what)
{
    struct config *cfg = (struct config *)(uintptr_t)1;
    err[0] = '\0';
    int rc = config_load_buffer("t.yaml", yaml, strlen(yaml), &cfg, err, sizeof(err));
    assert_int_equal(rc, CO_ERROR);
    assert_null(cfg);
    if (strncmp(err, where, strlen(where)) != 0)
        fail_msg("expected error at \"%s\", got: %s", where, err);
    if (strstr(err, what) == NULL)
        fail_msg("expected \"%s\" in: %s", what, err);
    assert_null(strchr(err, '\n'));
    assert_non_null(strstr(err, ", expected "));
}

/* Lines 1-6 of most test documents; tests append from line 7. */
#define LISTEN "listen: [ { address: 127.0.0.1:8080 } ]\n"
#define CLUSTERS                                                                                                                   \
    "clusters:\n"                                                                                                                  \
    "  - { name: a, endpoints: [ 127.0.0.1:9001 ] }\n"                                                                             \
    "  - { name: b, endpoints: [ 127.0.0.1:9002 ] }\n"
#define ROUTES                                                                                                                     \
    "routes:\n"                                                                                                                    \
    "  - { name: r, split: [ { cluster: a, weight: 1 } ] }\n"
#define BASE LISTEN CLUSTERS ROUTES

/* ------------------------------------------------------------------------- */
/* Valid configurations */

static const char full_yaml[] = "workers: 4\n"
                                "listen:\n"
                                "  - address: 0.0.0.0:8080\n"
                                "  - address: \"[::1]:8443\"\n"
                                "admin: { address: 127.0.0.1:9901, token: s3cret }\n"
                                "limits:\n"
                                "  max_request_line: 4096\n"
                                "  max_header_bytes: 32768\n"
                                "  max_headers: 50\n"
                                "  max_body_bytes: 1048576\n"
                                "  max_connections: 500\n"
                                "timeouts: { header: 5s, idle: 2m, body: 250ms, send: 1h }\n"
                                "clusters:\n"
                                "  - name: aws\n"
                                "    endpoints: [ 127.0.0.1:9001, \"[::1]:9002\", two.test:9003 ]\n"
                                "    host: api.mmrv.example\n"
                                "    protocol: http1\n"
                                "    connect_timeout: 2s\n"
                                "    first_byte_timeout: 1m\n"
                                "    idle_timeout: 45s\n"
                                "    max_idle: 8\n"
                                "  - name: azure\n"
                                "    endpoints: [ 10.1.2.3:80 ]\n"
                                "routes:\n"
                                "  - name: api\n"
                                "    match: { host: API.MMRV.Example, path_prefix: /api/ }\n"
                                "    split: [ { cluster: azure, weight: 10 }, { cluster: aws, weight: 90 } ]\n"
                                "    sticky: { cookie: cutover_id, max_age: 7d }\n"
                                "    override: { header: X-Cutover-Cluster, cookie: cutover_force, secret: hunter2 }\n"
                                "  - name: wild.card_1\n"
                                "    match: { host: \"*.Example.COM\", path: /exact }\n"
                                "    split: [ { cluster: aws, weight: 0 }, { cluster: azure, weight: 1000000 } ]\n"
                                "    sticky: { header: X-User-Id }\n"
                                "  - name: by-ip\n"
                                "    split: [ { cluster: aws, weight: 1 } ]\n"
                                "    sticky: { client_ip: true }\n";

static void full_config_every_field(void **state)
{
    struct config *cfg = load_ok(full_yaml);

    assert_string_equal(cfg->file, "t.yaml");
    assert_int_equal(cfg->generation, 0);
    assert_int_equal(atomic_load(&cfg->refcount), 1);
    assert_int_equal(cfg->workers, 4);

    assert_int_equal(cfg->n_listeners, 2);
    assert_string_equal(cfg->listeners[0].addr.text, "0.0.0.0:8080");
    assert_int_equal(cfg->listeners[0].addr.sa.ss_family, AF_INET);
    assert_int_equal(cfg->listeners[0].addr.sa_len, sizeof(struct sockaddr_in));
    assert_int_equal(ntohs(((struct sockaddr_in *)&cfg->listeners[0].addr.sa)->sin_port), 8080);
    assert_string_equal(cfg->listeners[1].addr.text, "[::1]:8443");
    assert_int_equal(cfg->listeners[1].addr.sa.ss_family, AF_INET6);
    assert_int_equal(cfg->listeners[1].addr.sa_len, sizeof(struct sockaddr_in6));
    assert_int_equal(ntohs(((struct sockaddr_in6 *)&cfg->listeners[1].addr.sa)->sin6_port), 8443);

    assert_true(cfg->admin.enabled);
    assert_string_equal(cfg->admin.addr.text, "127.0.0.1:9901");
    assert_string_equal(cfg->admin.token, "s3cret");

    assert_int_equal(cfg->limits.max_request_line, 4096);
    assert_int_equal(cfg->limits.max_header_bytes, 32768);
    assert_int_equal(cfg->limits.max_headers, 50);
    assert_int_equal(cfg->limits.max_body_bytes, 1048576);
    assert_int_equal(cfg->limits.max_connections, 500);
    assert_int_equal(cfg->timeouts.header_ms, 5000);
    assert_int_equal(cfg->timeouts.idle_ms, 120000);
    assert_int_equal(cfg->timeouts.body_ms, 250);
    assert_int_equal(cfg->timeouts.send_ms, 3600000);

    assert_int_equal(cfg->n_clusters, 2);
    const struct cluster_conf *aws = &cfg->clusters[0], *azure = &cfg->clusters[1];
    assert_string_equal(aws->name, "aws");
    assert_int_equal(aws->index, 0);
    assert_int_equal(aws->n_endpoints, 3);
    assert_string_equal(aws->endpoints[0].name, "127.0.0.1:9001");
    assert_string_equal(aws->endpoints[0].host, "127.0.0.1");
    assert_int_equal(aws->endpoints[0].port, 9001);
    assert_int_equal(aws->endpoints[0].n_addrs, 1);
    assert_int_equal(aws->endpoints[0].addrs[0].ss_family, AF_INET);
    assert_int_equal(aws->endpoints[0].addr_lens[0], sizeof(struct sockaddr_in));
    assert_string_equal(aws->endpoints[1].name, "[::1]:9002");
    assert_string_equal(aws->endpoints[1].host, "::1");
    assert_int_equal(aws->endpoints[1].port, 9002);
    assert_int_equal(aws->endpoints[1].n_addrs, 1);
    assert_int_equal(aws->endpoints[1].addrs[0].ss_family, AF_INET6);
    assert_int_equal(ntohs(((struct sockaddr_in6 *)&aws->endpoints[1].addrs[0])->sin6_port), 9002);
    assert_false(aws->endpoints[0].dns);
    assert_false(aws->endpoints[1].dns);
    assert_string_equal(aws->endpoints[2].name, "two.test:9003");
    assert_string_equal(aws->endpoints[2].host, "two.test");
    assert_int_equal(aws->endpoints[2].port, 9003);
    assert_true(aws->endpoints[2].dns);
    assert_int_equal(aws->endpoints[2].n_addrs, 0);
    assert_null(aws->endpoints[2].addrs);
    assert_null(aws->endpoints[2].addr_lens);
    assert_null(aws->endpoints[2].state);
    assert_string_equal(aws->host, "api.mmrv.example");
    assert_int_equal(aws->protocol, CLUSTER_PROTO_H1);
    assert_int_equal(aws->connect_timeout_ms, 2000);
    assert_int_equal(aws->first_byte_timeout_ms, 60000);
    assert_int_equal(aws->idle_timeout_ms, 45000);
    assert_int_equal(aws->max_idle, 8);
    assert_string_equal(azure->name, "azure");
    assert_int_equal(azure->index, 1);
    assert_null(azure->host);
    assert_int_equal(azure->connect_timeout_ms, 3000);

    assert_int_equal(cfg->n_routes, 3);
    const struct route_conf *api = &cfg->routes[0], *wild = &cfg->routes[1], *ip = &cfg->routes[2];
    assert_string_equal(api->name, "api");
    assert_int_equal(api->index, 0);
    assert_string_equal(api->host, "api.mmrv.example");
    assert_false(api->host_suffix);
    assert_string_equal(api->path, "/api/");
    assert_false(api->path_exact);
    assert_int_equal(api->n_split, 2);
    assert_ptr_equal(api->split[0].cluster, azure);
    assert_int_equal(api->split[0].weight, 10);
    assert_ptr_equal(api->split[1].cluster, aws);
    assert_int_equal(api->split[1].weight, 90);
    assert_int_equal(api->total_weight, 100);
    assert_int_equal(api->sticky.kind, STICKY_COOKIE);
    assert_string_equal(api->sticky.name, "cutover_id");
    assert_int_equal(api->sticky.max_age_s, 7 * 86400);
    assert_true(api->override.enabled);
    assert_string_equal(api->override.header, "x-cutover-cluster");
    assert_string_equal(api->override.cookie, "cutover_force");
    assert_string_equal(api->override.secret, "hunter2");
    assert_int_equal(api->override.secret_len, 7);

    assert_string_equal(wild->name, "wild.card_1");
    assert_int_equal(wild->index, 1);
    assert_string_equal(wild->host, ".example.com");
    assert_true(wild->host_suffix);
    assert_string_equal(wild->path, "/exact");
    assert_true(wild->path_exact);
    assert_int_equal(wild->total_weight, 1000000);
    assert_int_equal(wild->sticky.kind, STICKY_HEADER);
    assert_string_equal(wild->sticky.name, "x-user-id");
    assert_false(wild->override.enabled);

    assert_int_equal(ip->sticky.kind, STICKY_CLIENT_IP);
    assert_null(ip->sticky.name);

    config_unref(cfg);
}

static void minimal_config_defaults(void **state)
{
    struct config *cfg = load_ok(BASE);
    assert_int_equal(cfg->workers, 0);
    assert_int_equal(cfg->generation, 0);
    assert_false(cfg->admin.enabled);
    assert_null(cfg->admin.token);
    assert_int_equal(cfg->limits.max_request_line, 8192);
    assert_int_equal(cfg->limits.max_header_bytes, 65536);
    assert_int_equal(cfg->limits.max_headers, 100);
    assert_int_equal(cfg->limits.max_body_bytes, 0);
    assert_int_equal(cfg->limits.max_connections, 10000);
    assert_int_equal(cfg->timeouts.header_ms, 10000);
    assert_int_equal(cfg->timeouts.idle_ms, 60000);
    assert_int_equal(cfg->timeouts.body_ms, 60000);
    assert_int_equal(cfg->timeouts.send_ms, 60000);
    const struct cluster_conf *c = &cfg->clusters[1];
    assert_int_equal(c->index, 1);
    assert_null(c->host);
    assert_int_equal(c->protocol, CLUSTER_PROTO_H1);
    assert_int_equal(c->connect_timeout_ms, 3000);
    assert_int_equal(c->first_byte_timeout_ms, 30000);
    assert_int_equal(c->idle_timeout_ms, 30000);
    assert_int_equal(c->max_idle, 256);
    const struct route_conf *r = &cfg->routes[0];
    assert_null(r->host);
    assert_false(r->host_suffix);
    assert_string_equal(r->path, "/");
    assert_false(r->path_exact);
    assert_int_equal(r->sticky.kind, STICKY_NONE);
    assert_null(r->sticky.name);
    assert_int_equal(r->sticky.max_age_s, 86400 * 30);
    assert_false(r->override.enabled);
    assert_null(r->override.header);
    assert_null(r->override.secret);
    assert_ptr_equal(r->split[0].cluster, &cfg->clusters[0]);
    config_unref(cfg);
}

static void workers_auto_and_number(void **state)
{
    struct config *cfg = load_ok("workers: auto\n" BASE);
    assert_int_equal(cfg->workers, 0);
    config_unref(cfg);
    cfg = load_ok("workers: 256\n" BASE);
    assert_int_equal(cfg->workers, 256);
    config_unref(cfg);
}

static void admin_defaults_address(void **state)
{
    struct config *cfg = load_ok(BASE "admin: { token: t }\n");
    assert_true(cfg->admin.enabled);
    assert_string_equal(cfg->admin.addr.text, "127.0.0.1:9901");
    assert_int_equal(ntohs(((struct sockaddr_in *)&cfg->admin.addr.sa)->sin_port), 9901);
    assert_string_equal(cfg->admin.token, "t");
    config_unref(cfg);
    cfg = load_ok(BASE "admin: { address: \"[::1]:9000\" }\n");
    assert_true(cfg->admin.enabled);
    assert_null(cfg->admin.token);
    assert_int_equal(cfg->admin.addr.sa.ss_family, AF_INET6);
    config_unref(cfg);
}

/* Host names are kept as written and resolved at run time (proxy/health.c):
 * loading never waits on DNS, and a name that does not resolve (yet) is no
 * reason to refuse a config. */
static void endpoint_names_not_resolved_at_load(void **state)
{
    struct config *cfg =
        load_ok(LISTEN "clusters:\n"
                       "  - name: a\n"
                       "    endpoints: [ localhost:9003, backend.invalid:443, Api.Example.COM.:80, \"[::1]:81\" ]\n" ROUTES);
    const struct cluster_conf *c = &cfg->clusters[0];
    assert_int_equal(c->n_endpoints, 4);
    static const struct {
        const char *name, *host;
        uint16_t port;
    } want[] = {{"localhost:9003", "localhost", 9003},
                {"backend.invalid:443", "backend.invalid", 443},
                {"Api.Example.COM.:80", "Api.Example.COM.", 80}};
    for (size_t i = 0; i < 3; i++) {
        const struct endpoint_conf *e = &c->endpoints[i];
        assert_string_equal(e->name, want[i].name);
        assert_string_equal(e->host, want[i].host);
        assert_int_equal(e->port, want[i].port);
        assert_true(e->dns);
        assert_int_equal(e->n_addrs, 0);
        assert_null(e->addrs);
        assert_null(e->addr_lens);
        assert_null(e->state);
    }
    /* An IP literal has its one address and no DNS. */
    const struct endpoint_conf *lit = &c->endpoints[3];
    assert_false(lit->dns);
    assert_int_equal(lit->n_addrs, 1);
    assert_int_equal(lit->addrs[0].ss_family, AF_INET6);
    assert_int_equal(lit->addr_lens[0], sizeof(struct sockaddr_in6));
    assert_int_equal(ntohs(((struct sockaddr_in6 *)&lit->addrs[0])->sin6_port), 81);
    config_unref(cfg);
}

static void demo_yaml_loads(void **state)
{
    struct config *cfg = NULL;
    /* The demo's TLS listener uses a self-signed certificate made at demo
     * start; make one the same way. */
    char dir[] = "/tmp/cutover-demo-tls-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char cmd[512];
    snprintf(cmd, sizeof(cmd),
             "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=localhost "
             "-keyout %s/demo.key -out %s/demo.crt >/dev/null 2>&1",
             dir, dir);
    assert_int_equal(system(cmd), 0);
    setenv("CUTOVER_OVERRIDE_SECRET", "demo-secret", 1);
    setenv("CUTOVER_DEMO_TLS_DIR", dir, 1);
    int rc = config_load("../../../config/examples/demo.yaml", &cfg, err, sizeof(err));
    unsetenv("CUTOVER_OVERRIDE_SECRET");
    unsetenv("CUTOVER_DEMO_TLS_DIR");
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
    if (rc != CO_OK)
        fail_msg("demo.yaml: %s", err);
    assert_int_equal(cfg->n_listeners, 2);
    assert_true(cfg->listeners[1].tls);
    assert_string_equal(cfg->listeners[1].addr.text, "127.0.0.1:8443");
    assert_int_equal(cfg->workers, 0);
    assert_string_equal(cfg->listeners[0].addr.text, "127.0.0.1:8080");
    assert_true(cfg->admin.enabled);
    assert_string_equal(cfg->admin.addr.text, "127.0.0.1:9901");
    assert_int_equal(cfg->n_clusters, 2);
    assert_non_null(config_find_cluster(cfg, "aws"));
    assert_non_null(config_find_cluster(cfg, "azure"));
    assert_int_equal(cfg->n_routes, 1);
    const struct route_conf *r = &cfg->routes[0];
    assert_string_equal(r->name, "all");
    assert_null(r->host);
    assert_string_equal(r->path, "/");
    assert_string_equal(r->split[0].cluster->name, "azure");
    assert_int_equal(r->split[0].weight, 10);
    assert_string_equal(r->split[1].cluster->name, "aws");
    assert_int_equal(r->split[1].weight, 90);
    assert_int_equal(r->sticky.kind, STICKY_COOKIE);
    assert_string_equal(r->sticky.name, "cutover_id");
    assert_string_equal(r->override.header, "x-cutover-cluster");
    assert_string_equal(r->override.cookie, "cutover_force");
    assert_string_equal(r->override.secret, "demo-secret");
    config_unref(cfg);
}

/* ------------------------------------------------------------------------- */
/* Files */

static void file_valid_fixture(void **state)
{
    struct config *cfg = NULL;
    assert_int_equal(config_load("valid.yaml", &cfg, err, sizeof(err)), CO_OK);
    assert_string_equal(cfg->file, "valid.yaml");
    assert_int_equal(cfg->n_routes, 2);
    assert_string_equal(cfg->routes[1].name, "fallback");
    config_unref(cfg);
}

static void file_new_keys_fixture(void **state)
{
    struct config *cfg = NULL;
    if (config_load("new_keys.yaml", &cfg, err, sizeof(err)) != CO_OK)
        fail_msg("new_keys.yaml: %s", err);
    assert_int_equal(cfg->dns.n_nameservers, 2);
    assert_string_equal(cfg->dns.nameservers[1], "[fd00::53]:53");
    const struct cluster_conf *aws = config_find_cluster(cfg, "aws");
    assert_non_null(aws);
    assert_true(aws->endpoints[0].dns);
    assert_false(aws->endpoints[1].dns);
    assert_true(aws->health.enabled);
    assert_int_equal(aws->health.expect_min, 200);
    assert_int_equal(aws->health.expect_max, 299);
    assert_int_equal(aws->max_connection_age_ms, 600000);
    const struct route_conf *r = &cfg->routes[0];
    assert_ptr_equal(r->mirror.cluster, config_find_cluster(cfg, "azure"));
    assert_int_equal(r->mirror.share, 500);
    assert_true(r->mirror.compare);
    assert_true(r->ramp.enabled);
    assert_int_equal(r->ramp.n_steps, 4);
    assert_int_equal(r->ramp.steps[3], 10000);
    assert_int_equal(r->ramp.gate.old_side_margin, 100);
    config_unref(cfg);
}

static void file_error_names_file_line_column(void **state)
{
    struct config *cfg = (struct config *)(uintptr_t)1;
    assert_int_equal(config_load("bad_weight.yaml", &cfg, err, sizeof(err)), CO_ERROR);
    assert_null(cfg);
    assert_string_equal(err, "bad_weight.yaml:13:25: unknown key \"wieght\" in split entry, expected one of: cluster, weight");
}

static void file_missing(void **state)
{
    struct config *cfg = (struct config *)(uintptr_t)1;
    assert_int_equal(config_load("no-such-file.yaml", &cfg, err, sizeof(err)), CO_ERROR);
    assert_null(cfg);
    assert_string_equal(err, "no-such-file.yaml: cannot open: No such file or directory");
}

static void file_is_directory(void **state)
{
    struct config *cfg = NULL;
    assert_int_equal(config_load(".", &cfg, err, sizeof(err)), CO_ERROR);
    assert_null(cfg);
    assert_string_equal(err, ".: cannot read: Is a directory");
}

/* ------------------------------------------------------------------------- */
/* YAML-level errors */

static void yaml_syntax_error_position(void **state)
{
    /* The unclosed flow sequence on line 2 is reported where the parser
     * gives up: the ':' of line 3. */
    load_fails_at(BASE "workers: [ 1, 2\nadmin: x\n", "t.yaml:8:6: ", "YAML syntax error: ");
    load_fails_at("listen: a\n  bad: b\n", "t.yaml:2:6: ", "mapping values are not allowed in this context");
}

static void yaml_invalid_utf8(void **state)
{
    load_fails_at(BASE "workers: \"\xff\"\n", "t.yaml:7:11: ", "invalid input: invalid leading UTF-8 octet");
}

static void yaml_empty_document(void **state)
{
    load_fails("", "t.yaml:1:1: the configuration is empty, expected a mapping with keys listen, clusters, routes");
    load_fails("# nothing\n", "t.yaml:1:1: the configuration is empty, expected a mapping with keys listen, clusters, routes");
    load_fails("- a\n", "t.yaml:1:1: the configuration is a list, expected a mapping with keys listen, clusters, routes");
}

static void yaml_alias_rejected(void **state)
{
    load_fails(LISTEN "clusters:\n  - &c { name: a, endpoints: [ 127.0.0.1:1 ] }\n  - *c\n" ROUTES,
               "t.yaml:4:5: alias to anchor \"c\" is not supported, expected values written out (no YAML aliases)");
    /* An anchor alone expands nothing and is harmless. */
    struct config *cfg = load_ok(LISTEN "clusters:\n  - &c { name: a, endpoints: [ 127.0.0.1:1 ] }\n" ROUTES);
    config_unref(cfg);
}

static void yaml_billion_laughs_rejected_fast(void **state)
{
    load_fails_at("a: &a [x, x, x, x, x, x, x, x, x]\n"
                  "b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
                  "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\n",
                  "t.yaml:2:8: ", "alias to anchor \"a\" is not supported");
}

static void yaml_depth_capped(void **state)
{
    char yaml[256];
    memset(yaml, '[', 40);
    memset(yaml + 40, ']', 40);
    yaml[80] = '\0';
    load_fails(yaml, "t.yaml:1:33: nesting is deeper than 32 levels, expected a flatter document");
}

static void yaml_input_size_capped(void **state)
{
    size_t len = 1024 * 1024 + 1;
    char *big = malloc(len);
    assert_non_null(big);
    memset(big, '#', len);
    struct config *cfg = (struct config *)(uintptr_t)1;
    assert_int_equal(config_load_buffer("big.yaml", big, len, &cfg, err, sizeof(err)), CO_ERROR);
    assert_null(cfg);
    assert_string_equal(err, "big.yaml: input is 1048577 bytes, expected at most 1048576 bytes");
    free(big);
}

static void yaml_two_documents(void **state)
{
    load_fails(BASE "---\nworkers: 1\n", "t.yaml:7:1: second YAML document, expected a single document");
}

static void yaml_duplicate_key(void **state)
{
    load_fails(BASE "workers: 1\nworkers: 2\n",
               "t.yaml:8:1: duplicate key \"workers\" in the configuration (first at 7:1), expected each key once");
}

static void yaml_complex_key(void **state)
{
    load_fails(BASE "? [a]\n: b\n", "t.yaml:7:3: mapping key is a list, expected a plain key such as name:");
}

static void yaml_nul_in_value(void **state)
{
    load_fails(LISTEN "clusters: [ { name: \"a\\0b\", endpoints: [ 127.0.0.1:1 ] } ]\n" ROUTES,
               "t.yaml:2:21: cluster name contains a NUL byte, expected a name");
}

static void error_is_one_line_and_escaped(void **state)
{
    load_fails(BASE "\"wor\\nkers\": 1\n",
               "t.yaml:7:1: unknown key \"wor\\x0akers\" in the configuration, expected one of: workers, listen, admin, limits, "
               "timeouts, dns, clusters, routes");
}

static void error_buffer_small_or_null(void **state)
{
    char small[12];
    struct config *cfg = NULL;
    const char *yaml = BASE "bogus: 1\n";
    assert_int_equal(config_load_buffer("t.yaml", yaml, strlen(yaml), &cfg, small, sizeof(small)), CO_ERROR);
    assert_string_equal(small, "t.yaml:7:1:");
    assert_int_equal(config_load_buffer("t.yaml", yaml, strlen(yaml), &cfg, NULL, 0), CO_ERROR);
    assert_null(cfg);
}

/* ------------------------------------------------------------------------- */
/* Schema errors */

static void unknown_top_level_key(void **state)
{
    load_fails(BASE "listeners: []\n", "t.yaml:7:1: unknown key \"listeners\" in the configuration, expected one of: workers, "
                                       "listen, admin, limits, timeouts, dns, clusters, routes");
}

static void unknown_key_in_split_entry(void **state)
{
    load_fails(LISTEN CLUSTERS "routes:\n"
                               "  - name: r\n"
                               "    split: [ { cluster: a, wieght: 1 } ]\n",
               "t.yaml:7:28: unknown key \"wieght\" in split entry, expected one of: cluster, weight");
}

static void unknown_keys_everywhere(void **state)
{
    load_fails_at(BASE "admin: { adress: 127.0.0.1:1 }\n", "t.yaml:7:10: ", "unknown key \"adress\" in admin");
    load_fails_at(BASE "limits: { max_body: 1 }\n", "t.yaml:7:11: ", "unknown key \"max_body\" in limits");
    load_fails_at(BASE "timeouts: { connect: 1s }\n", "t.yaml:7:13: ", "unknown key \"connect\" in timeouts");
    load_fails_at("listen: [ { address: 127.0.0.1:1, tsl: {} } ]\n" CLUSTERS ROUTES,
                  "t.yaml:1:35: ", "unknown key \"tsl\" in listener, expected one of: address, tls");
    load_fails_at("listen: [ { address: 127.0.0.1:1, tls: {} } ]\n" CLUSTERS ROUTES,
                  "t.yaml:1:40: ", "missing required key \"certs\" in listener tls");
    load_fails_at(
        "listen: [ { address: 127.0.0.1:1, tls: { certs: [ { cert: /nonexistent.crt, key: /nonexistent.key } ] } } ]\n" CLUSTERS
            ROUTES,
        "t.yaml:1:49: ", "tls: cert /nonexistent.crt");
    load_fails_at(LISTEN "clusters: [ { name: a, endpoint: [] } ]\n" ROUTES,
                  "t.yaml:2:24: ", "unknown key \"endpoint\" in cluster");
    load_fails_at(LISTEN CLUSTERS "routes: [ { name: r, spilt: [] } ]\n", "t.yaml:5:22: ", "unknown key \"spilt\" in route");
    load_fails_at(LISTEN CLUSTERS "routes:\n  - name: r\n    match: { prefix: / }\n",
                  "t.yaml:7:14: ", "unknown key \"prefix\" in match");
}

static void wrong_types(void **state)
{
    load_fails("listen: 127.0.0.1:8080\n" CLUSTERS ROUTES,
               "t.yaml:1:9: listen is a scalar, expected a list of listeners ({ address: IP:PORT })");
    load_fails(BASE "admin: [ 127.0.0.1:1 ]\n", "t.yaml:7:8: admin is a list, expected a mapping with keys: address, token");
    load_fails(BASE "admin:\n", "t.yaml:7:7: admin is empty, expected a mapping with keys: address, token");
    load_fails(LISTEN CLUSTERS "routes:\n  - name: r\n    split: [ a ]\n",
               "t.yaml:7:14: split entry is a scalar, expected a mapping with keys: cluster, weight");
    load_fails(LISTEN "clusters: [ { name: a, endpoints: 127.0.0.1:1 } ]\n" ROUTES,
               "t.yaml:2:35: endpoints is a scalar, expected a list of HOST:PORT");
    load_fails(LISTEN "clusters: [ { name: { x: y }, endpoints: [ 127.0.0.1:1 ] } ]\n" ROUTES,
               "t.yaml:2:21: cluster name is a mapping, expected a name");
}

static void missing_required_keys_use_mapping_mark(void **state)
{
    load_fails(CLUSTERS ROUTES, "t.yaml:1:1: missing required key \"listen\", expected a list of listeners ({ address: IP:PORT })");
    load_fails(LISTEN ROUTES, "t.yaml:1:1: missing required key \"clusters\", expected a list of clusters");
    load_fails(LISTEN CLUSTERS, "t.yaml:1:1: missing required key \"routes\", expected a list of routes");
    load_fails(LISTEN "clusters:\n  - name: a\n" ROUTES,
               "t.yaml:3:5: missing required key \"endpoints\" in cluster \"a\", expected a list of HOST:PORT");
    load_fails("listen: [ { } ]\n" CLUSTERS ROUTES,
               "t.yaml:1:11: missing required key \"address\" in listener, expected address: IP:PORT");
    load_fails(LISTEN CLUSTERS "routes: [ { split: [ { cluster: a, weight: 1 } ] } ]\n",
               "t.yaml:5:11: missing required key \"name\" in route, expected name: NAME");
    load_fails(LISTEN CLUSTERS "routes: [ { name: r } ]\n",
               "t.yaml:5:11: missing required key \"split\" in route \"r\", expected a list of { cluster: NAME, weight: N }");
    load_fails(LISTEN CLUSTERS "routes: [ { name: r, split: [ { weight: 1 } ] } ]\n",
               "t.yaml:5:31: missing required key \"cluster\" in split entry, expected cluster: NAME");
    load_fails(LISTEN CLUSTERS "routes: [ { name: r, split: [ { cluster: a } ] } ]\n",
               "t.yaml:5:31: missing required key \"weight\" in split entry, expected weight: 0..1000000");
}

static void empty_lists(void **state)
{
    load_fails("listen: []\n" CLUSTERS ROUTES,
               "t.yaml:1:9: listen is an empty list, expected at least 1 listeners ({ address: IP:PORT })");
    load_fails(LISTEN "clusters: []\n" ROUTES, "t.yaml:2:11: clusters is an empty list, expected at least 1 clusters");
    load_fails(LISTEN CLUSTERS "routes: []\n", "t.yaml:5:9: routes is an empty list, expected at least 1 routes");
    load_fails(LISTEN "clusters: [ { name: a, endpoints: [] } ]\n" ROUTES,
               "t.yaml:2:35: endpoints is an empty list, expected at least 1 HOST:PORT");
}

static void unknown_cluster_in_split(void **state)
{
    load_fails(LISTEN CLUSTERS "routes: [ { name: r, split: [ { cluster: gcp, weight: 1 } ] } ]\n",
               "t.yaml:5:42: unknown cluster \"gcp\" in split, expected one of: a, b");
}

static void cluster_twice_in_split(void **state)
{
    load_fails(LISTEN CLUSTERS "routes:\n  - name: r\n    split: [ { cluster: a, weight: 1 }, { cluster: a, weight: 2 } ]\n",
               "t.yaml:7:52: cluster \"a\" appears twice in split, expected each cluster once");
}

static void split_too_many_entries(void **state)
{
    char yaml[2048];
    int n = snprintf(yaml, sizeof(yaml), "%s", LISTEN "clusters:\n");
    for (int i = 0; i < 17; i++)
        n += snprintf(yaml + n, sizeof(yaml) - (size_t)n, "  - { name: c%d, endpoints: [ 127.0.0.1:1 ] }\n", i);
    n += snprintf(yaml + n, sizeof(yaml) - (size_t)n, "routes:\n  - name: r\n    split:\n");
    for (int i = 0; i < 17; i++)
        n += snprintf(yaml + n, sizeof(yaml) - (size_t)n, "      - { cluster: c%d, weight: 1 }\n", i);
    /* Line 1 listen, 2 clusters, 3..19 clusters, 20 routes, 21 name, 22 split, 23 first entry. */
    load_fails(yaml, "t.yaml:23:7: split has 17 entries, expected at most 16 { cluster: NAME, weight: N }");
}

static void split_weights_sum_to_zero(void **state)
{
    load_fails(LISTEN CLUSTERS "routes:\n  - name: r\n    split: [ { cluster: a, weight: 0 }, { cluster: b, weight: 0 } ]\n",
               "t.yaml:7:12: split weights sum to 0, expected at least one weight above 0");
}

static void split_weight_values(void **state)
{
#define SPLIT_WITH(w) LISTEN CLUSTERS "routes:\n  - name: r\n    split: [ { cluster: a, weight: " w " } ]\n"
    load_fails(SPLIT_WITH("1000001"), "t.yaml:7:36: weight \"1000001\" is out of range, expected an integer in 0..1000000");
    load_fails(SPLIT_WITH("-1"), "t.yaml:7:36: weight \"-1\" is not an integer, expected an integer in 0..1000000");
    load_fails(SPLIT_WITH("1.5"), "t.yaml:7:36: weight \"1.5\" is not an integer, expected an integer in 0..1000000");
    load_fails(SPLIT_WITH("0x10"), "t.yaml:7:36: weight \"0x10\" is not an integer, expected an integer in 0..1000000");
    load_fails(SPLIT_WITH("\"10\""), "t.yaml:7:36: weight \"10\" is a quoted string, expected an unquoted integer in 0..1000000");
    load_fails(SPLIT_WITH("99999999999999999999999"),
               "t.yaml:7:36: weight \"99999999999999999999999\" is not an integer, expected an integer in 0..1000000");
    load_fails(SPLIT_WITH("[]"), "t.yaml:7:36: weight is a list, expected an integer in 0..1000000");
#undef SPLIT_WITH
}

static void duplicate_cluster_names(void **state)
{
    load_fails(LISTEN
               "clusters:\n  - { name: a, endpoints: [ 127.0.0.1:1 ] }\n  - { name: a, endpoints: [ 127.0.0.1:2 ] }\n" ROUTES,
               "t.yaml:4:13: duplicate cluster name \"a\", expected unique cluster names");
}

static void duplicate_route_names(void **state)
{
    load_fails(LISTEN CLUSTERS "routes:\n"
                               "  - { name: r, split: [ { cluster: a, weight: 1 } ] }\n"
                               "  - { name: r, split: [ { cluster: b, weight: 1 } ] }\n",
               "t.yaml:7:13: duplicate route name \"r\", expected unique route names");
}

static void bad_names(void **state)
{
    load_fails(LISTEN "clusters: [ { name: \"a b\", endpoints: [ 127.0.0.1:1 ] } ]\n" ROUTES,
               "t.yaml:2:21: bad cluster name \"a b\", expected 1 to 64 characters from A-Z a-z 0-9 _ . -");
    /* 65 characters */
    load_fails(
        LISTEN CLUSTERS
        "routes: [ { name: "
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa, split: [ { cluster: a, weight: 1 } ] } ]\n",
        "t.yaml:5:19: bad route name \"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa...\", expected 1 to 64 "
        "characters from A-Z a-z 0-9 _ . -");
    load_fails(LISTEN CLUSTERS "routes: [ { name: \"\", split: [ { cluster: a, weight: 1 } ] } ]\n",
               "t.yaml:5:19: bad route name \"\", expected 1 to 64 characters from A-Z a-z 0-9 _ . -");
}

static void duplicate_listener_addresses(void **state)
{
    load_fails("listen:\n  - address: 127.0.0.1:80\n  - address: \"[::1]:443\"\n  - address: 127.0.0.1:80\n" CLUSTERS ROUTES,
               "t.yaml:4:14: duplicate listen address \"127.0.0.1:80\" (same as \"127.0.0.1:80\"), expected each address once");
    /* Compared as addresses, not as text. */
    load_fails_at("listen:\n  - address: \"[::1]:443\"\n  - address: \"[0:0::1]:443\"\n" CLUSTERS ROUTES,
                  "t.yaml:3:14: ", "duplicate listen address \"[0:0::1]:443\" (same as \"[::1]:443\")");
    /* The admin listener must not take a listen address either. */
    load_fails_at(BASE "admin: { address: 127.0.0.1:8080 }\n",
                  "t.yaml:7:19: ", "admin address \"127.0.0.1:8080\" is also a listen address");
}

static void bad_listen_addresses(void **state)
{
#define LISTEN_AT(a) "listen: [ { address: " a " } ]\n" CLUSTERS ROUTES
    static const char expected[] = ", expected IP:PORT such as 127.0.0.1:8080 or [::1]:8080";
    load_fails_at(LISTEN_AT("localhost:80"), "t.yaml:1:22: ", "bad listen address \"localhost:80\": host is not an IPv4 address");
    load_fails_at(LISTEN_AT("127.0.0.1:0"), "t.yaml:1:22: ", "port must be a number in 1..65535");
    load_fails_at(LISTEN_AT("127.0.0.1:65536"), "t.yaml:1:22: ", "port must be a number in 1..65535");
    load_fails_at(LISTEN_AT("127.0.0.1"), "t.yaml:1:22: ", "missing :PORT");
    load_fails_at(LISTEN_AT("\"::1:80\""), "t.yaml:1:22: ", "an IPv6 address must be in brackets");
    load_fails_at(LISTEN_AT("\"[::g]:80\""), "t.yaml:1:22: ", "not an IPv6 address");
    load_fails_at(LISTEN_AT("256.0.0.1:80"), "t.yaml:1:22: ", expected);
    load_fails_at(BASE "admin: { address: \"10.0.0.1:\" }\n", "t.yaml:7:19: ", "bad admin address \"10.0.0.1:\"");
#undef LISTEN_AT
}

static void bad_endpoints(void **state)
{
#define ENDPOINT(e) LISTEN "clusters: [ { name: a, endpoints: [ " e " ] } ]\n" ROUTES
    load_fails_at(ENDPOINT("10.0.0.1"), "t.yaml:2:37: ", "bad endpoint \"10.0.0.1\": missing :PORT");
    load_fails_at(ENDPOINT("\"[::1]\""), "t.yaml:2:37: ", "missing :PORT after ']'");
    load_fails_at(ENDPOINT("\"[nope]:80\""), "t.yaml:2:37: ", "not an IPv6 address in brackets");
    load_fails_at(ENDPOINT("bad_-host-.example:80"), "t.yaml:2:37: ", "host is neither an IPv4 address nor a DNS name");
    load_fails_at(ENDPOINT("\"a b:80\""), "t.yaml:2:37: ", "host is neither an IPv4 address nor a DNS name");
    load_fails_at(ENDPOINT("10.0.1:80"), "t.yaml:2:37: ", "host is neither an IPv4 address nor a DNS name");
    load_fails_at(ENDPOINT("api.example:0"), "t.yaml:2:37: ", "port must be a number in 1..65535");
    load_fails(ENDPOINT("127.0.0.1:1, 127.0.0.1:1"),
               "t.yaml:2:50: duplicate endpoint \"127.0.0.1:1\" in cluster \"a\", expected each endpoint once");
#undef ENDPOINT
}

/* Names that are no valid DNS name are still refused at load. */
static void bad_endpoint_names_refused(void **state)
{
#define ENDPOINT(e) LISTEN "clusters:\n  - name: a\n    endpoints:\n      - 127.0.0.1:1\n      - " e "\n" ROUTES
    static const char *const bad[] = {"-backend.example:443", "backend-.example:443",     "back..end:443",      "backend.123:443",
                                      "\"back end:443\"",     "\"b\\u00e9.example:443\"", "\"a*.example:443\"", ".example:443"};
    for (size_t i = 0; i < CO_ARRAY_SIZE(bad); i++) {
        char yaml[512];
        snprintf(yaml, sizeof(yaml), ENDPOINT("%s"), bad[i]);
        load_fails_at(yaml, "t.yaml:6:9: ", "host is neither an IPv4 address nor a DNS name");
    }
    /* 64-character label, 254-character name */
    char label[65], yaml[1024], name[300];
    memset(label, 'a', 64);
    label[64] = '\0';
    snprintf(yaml, sizeof(yaml), ENDPOINT("%s.example:443"), label);
    load_fails_at(yaml, "t.yaml:6:9: ", "host is neither an IPv4 address nor a DNS name");
    memset(name, 'a', 254);
    for (size_t i = 63; i < 254; i += 64)
        name[i] = '.';
    name[254] = '\0';
    snprintf(yaml, sizeof(yaml), ENDPOINT("%s:443"), name);
    load_fails_at(yaml, "t.yaml:6:9: ", "host is neither an IPv4 address nor a DNS name");
    name[253] = '\0'; /* 253 is the limit */
    snprintf(yaml, sizeof(yaml), ENDPOINT("%s:443"), name);
    config_unref(load_ok(yaml));
    load_fails(ENDPOINT("backend.example:0"),
               "t.yaml:6:9: bad endpoint \"backend.example:0\": port must be a number in 1..65535, expected HOST:PORT such as "
               "10.0.0.4:443, [::1]:8080 or api.example.com:443");
#undef ENDPOINT
}

static void bad_durations_in_config(void **state)
{
    load_fails(BASE "timeouts: { header: 10 }\n",
               "t.yaml:7:21: timeouts.header \"10\" is not a duration, expected a duration such as 250ms, 5s, 2m, 1h or 30d");
    load_fails(BASE "timeouts: { idle: -5s }\n",
               "t.yaml:7:19: timeouts.idle \"-5s\" is not a duration, expected a duration such as 250ms, 5s, 2m, 1h or 30d");
    load_fails(BASE "timeouts: { send: 0s }\n",
               "t.yaml:7:19: timeouts.send \"0s\" is out of range, expected a duration from 1ms to 30d");
    load_fails(BASE "timeouts: { body: }\n",
               "t.yaml:7:19: timeouts.body is empty, expected a duration such as 250ms, 5s, 2m, 1h or 30d");
    load_fails(LISTEN "clusters: [ { name: a, endpoints: [ 127.0.0.1:1 ], connect_timeout: 3 } ]\n" ROUTES,
               "t.yaml:2:69: connect_timeout \"3\" is not a duration, expected a duration such as 250ms, 5s, 2m, 1h or 30d");
}

static void bad_integers_in_config(void **state)
{
    load_fails("workers: 0\n" BASE, "t.yaml:1:10: workers \"0\" is out of range, expected an integer in 1..256");
    load_fails("workers: 257\n" BASE, "t.yaml:1:10: workers \"257\" is out of range, expected an integer in 1..256");
    load_fails("workers: many\n" BASE,
               "t.yaml:1:10: workers \"many\" is not valid, expected auto or an unquoted integer in 1..256");
    load_fails(BASE "limits: { max_headers: 0 }\n",
               "t.yaml:7:24: max_headers \"0\" is out of range, expected an integer in 1..100000");
    load_fails(BASE "limits: { max_connections: lots }\n",
               "t.yaml:7:28: max_connections \"lots\" is not an integer, expected an integer in 1..1000000");
    load_fails(LISTEN "clusters: [ { name: a, endpoints: [ 127.0.0.1:1 ], max_idle: -1 } ]\n" ROUTES,
               "t.yaml:2:62: max_idle \"-1\" is not an integer, expected an integer in 0..100000");
}

static void bad_protocol(void **state)
{
    load_fails(LISTEN "clusters: [ { name: a, endpoints: [ 127.0.0.1:1 ], protocol: h3 } ]\n" ROUTES,
               "t.yaml:2:62: unknown protocol \"h3\", expected one of: http1, h2, auto");
}

static void bad_cluster_host(void **state)
{
    load_fails(LISTEN "clusters: [ { name: a, endpoints: [ 127.0.0.1:1 ], host: \"a b\" } ]\n" ROUTES,
               "t.yaml:2:58: bad cluster host \"a b\", expected a Host header value such as api.example.com");
}

/* ------------------------------------------------------------------------- */
/* Route match, sticky, override */

#define ROUTE_WITH(extra)                                                                                                          \
    LISTEN CLUSTERS "routes:\n"                                                                                                    \
                    "  - name: r\n"                                                                                                \
                    "    split: [ { cluster: a, weight: 1 } ]\n"                                                                   \
                    "    " extra "\n"

static void match_host_forms(void **state)
{
    struct config *cfg = load_ok(ROUTE_WITH("match: { host: Api.Example.COM. }"));
    assert_string_equal(cfg->routes[0].host, "api.example.com");
    assert_false(cfg->routes[0].host_suffix);
    config_unref(cfg);
    cfg = load_ok(ROUTE_WITH("match: { host: \"*.a.b\" }"));
    assert_string_equal(cfg->routes[0].host, ".a.b");
    assert_true(cfg->routes[0].host_suffix);
    config_unref(cfg);
}

static void match_host_bad_wildcards(void **state)
{
    load_fails(ROUTE_WITH("match: { host: \"a.*.com\" }"),
               "t.yaml:8:20: bad match host \"a.*.com\": only a leading \"*.\" wildcard is allowed, expected a host name such "
               "as api.example.com or *.example.com");
    load_fails_at(ROUTE_WITH("match: { host: \"*\" }"), "t.yaml:8:20: ", "bad match host \"*\"");
    load_fails_at(ROUTE_WITH("match: { host: \"*example.com\" }"), "t.yaml:8:20: ", "bad match host \"*example.com\"");
    load_fails_at(ROUTE_WITH("match: { host: \"a..b\" }"), "t.yaml:8:20: ", "bad match host \"a..b\"");
    load_fails_at(ROUTE_WITH("match: { host: \"a:80\" }"), "t.yaml:8:20: ", "bad match host \"a:80\"");
}

static void match_paths(void **state)
{
    struct config *cfg = load_ok(ROUTE_WITH("match: { path: /healthz }"));
    assert_string_equal(cfg->routes[0].path, "/healthz");
    assert_true(cfg->routes[0].path_exact);
    config_unref(cfg);
    load_fails(ROUTE_WITH("match: { path: /a, path_prefix: /b }"),
               "t.yaml:8:12: match has both path_prefix and path, expected at most one of them");
    load_fails(ROUTE_WITH("match: { path_prefix: api }"),
               "t.yaml:8:27: bad path_prefix \"api\", expected a path starting with / and without spaces");
    load_fails_at(ROUTE_WITH("match: { path: \"/a b\" }"), "t.yaml:8:20: ", "bad path \"/a b\"");
    load_fails_at(ROUTE_WITH("match: /api"), "t.yaml:8:12: ", "match is a scalar, expected a mapping");
}

static void sticky_forms(void **state)
{
    struct config *cfg = load_ok(ROUTE_WITH("sticky: { header: X-User-ID }"));
    assert_int_equal(cfg->routes[0].sticky.kind, STICKY_HEADER);
    assert_string_equal(cfg->routes[0].sticky.name, "x-user-id");
    config_unref(cfg);
    cfg = load_ok(ROUTE_WITH("sticky: { cookie: Sess, max_age: 90m }"));
    assert_int_equal(cfg->routes[0].sticky.kind, STICKY_COOKIE);
    assert_string_equal(cfg->routes[0].sticky.name, "Sess"); /* cookie names are case-sensitive */
    assert_int_equal(cfg->routes[0].sticky.max_age_s, 5400);
    config_unref(cfg);
}

static void sticky_errors(void **state)
{
    static const char one_of[] = "expected exactly one of: cookie: NAME, header: NAME, client_ip: true";
    load_fails_at(ROUTE_WITH("sticky: { cookie: a, header: b }"), "t.yaml:8:13: ", "sticky sets more than one of");
    load_fails_at(ROUTE_WITH("sticky: { client_ip: false }"), "t.yaml:8:13: ", one_of);
    load_fails_at(ROUTE_WITH("sticky: { max_age: 1d }"), "t.yaml:8:13: ", "sticky sets none of cookie, header, client_ip");
    load_fails(ROUTE_WITH("sticky: { client_ip: yes }"), "t.yaml:8:26: client_ip \"yes\" is not a boolean, expected true or false");
    load_fails(ROUTE_WITH("sticky: { header: x-id, max_age: 1d }"),
               "t.yaml:8:38: max_age is set without a sticky cookie, expected max_age only with cookie: NAME");
    load_fails(ROUTE_WITH("sticky: { cookie: \"a;b\" }"),
               "t.yaml:8:23: bad sticky cookie name \"a;b\", expected a cookie name (an RFC 9110 token)");
    load_fails(ROUTE_WITH("sticky: { header: \"x:y\" }"),
               "t.yaml:8:23: bad sticky header name \"x:y\", expected a header name (an RFC 9110 token)");
    load_fails(ROUTE_WITH("sticky: { cookie: c, max_age: 401d }"),
               "t.yaml:8:35: max_age \"401d\" is out of range, expected a duration from 1000ms to 400d");
}

static void override_errors(void **state)
{
    load_fails(ROUTE_WITH("override: { secret: s }"),
               "t.yaml:8:15: override has neither header nor cookie, expected at least one of them");
    load_fails(ROUTE_WITH("override: { header: x-force }"),
               "t.yaml:8:15: missing required key \"secret\" in override, expected secret: \"${ENV_VAR}\"");
    load_fails(ROUTE_WITH("override: { cookie: c, secret: \"\" }"),
               "t.yaml:8:36: override secret is empty, expected a non-empty secret");
    load_fails(ROUTE_WITH("override: { header: \"x force\", secret: s }"),
               "t.yaml:8:25: bad override header name \"x force\", expected a header name (an RFC 9110 token)");
    load_fails(ROUTE_WITH("override: { cookie: \"c=1\", secret: s }"),
               "t.yaml:8:25: bad override cookie name \"c=1\", expected a cookie name (an RFC 9110 token)");
}

static void override_cookie_only(void **state)
{
    struct config *cfg = load_ok(ROUTE_WITH("override: { cookie: force, secret: k }"));
    assert_true(cfg->routes[0].override.enabled);
    assert_null(cfg->routes[0].override.header);
    assert_string_equal(cfg->routes[0].override.cookie, "force");
    assert_int_equal(cfg->routes[0].override.secret_len, 1);
    config_unref(cfg);
}

static void admin_token_empty_rejected(void **state)
{
    load_fails(BASE "admin: { token: \"\" }\n", "t.yaml:7:17: admin token is empty, expected a non-empty token (or no token key)");
}

/* ------------------------------------------------------------------------- */
/* dns, cluster health / eject / max_connection_age, route failover / retry /
 * mirror / ramp */

/* Cluster a with `extra` on line 5 (column 5); cluster b on line 6; routes on 7-8. */
#define CLUSTER_WITH(extra)                                                                                                        \
    LISTEN "clusters:\n"                                                                                                           \
           "  - name: a\n"                                                                                                         \
           "    endpoints: [ 127.0.0.1:9001 ]\n"                                                                                   \
           "    " extra "\n"                                                                                                       \
           "  - { name: b, endpoints: [ 127.0.0.1:9002 ] }\n" ROUTES

/* A route splitting 10/90 between a (the new side) and b, `extra` on line 8 (column 5). */
#define RAMP_ROUTE(extra)                                                                                                          \
    LISTEN CLUSTERS "routes:\n"                                                                                                    \
                    "  - name: r\n"                                                                                                \
                    "    split: [ { cluster: a, weight: 10 }, { cluster: b, weight: 90 } ]\n"                                      \
                    "    " extra "\n"

#define RAMP_HEAD "ramp: { start: 2026-12-01T09:00:00Z, "
#define T_2026_12_01_0900 INT64_C(1796115600)

static void new_keys_defaults(void **state)
{
    struct config *cfg = load_ok(BASE);
    assert_null(cfg->dns.nameservers);
    assert_int_equal(cfg->dns.n_nameservers, 0);
    assert_int_equal(cfg->dns.min_ttl_ms, 5000);
    assert_int_equal(cfg->dns.max_ttl_ms, 300000);
    assert_int_equal(cfg->dns.timeout_ms, 2000);
    for (size_t i = 0; i < cfg->n_clusters; i++) {
        const struct cluster_conf *c = &cfg->clusters[i];
        assert_false(c->health.enabled);
        assert_string_equal(c->health.path, "/healthz");
        assert_null(c->health.host);
        assert_int_equal(c->health.interval_ms, 5000);
        assert_int_equal(c->health.timeout_ms, 2000);
        assert_int_equal(c->health.healthy, 2);
        assert_int_equal(c->health.unhealthy, 3);
        assert_int_equal(c->health.expect_min, 200);
        assert_int_equal(c->health.expect_max, 399);
        /* Passive ejection is on without an `eject:` key. */
        assert_int_equal(c->eject.connect_failures, 3);
        assert_int_equal(c->eject.consecutive_5xx, 5);
        assert_int_equal(c->eject.duration_ms, 30000);
        assert_int_equal(c->max_connection_age_ms, 600000);
        assert_null(c->endpoints[0].state);
    }
    const struct route_conf *r = &cfg->routes[0];
    assert_true(r->failover);
    assert_int_equal(r->retry.attempts, 1);
    assert_int_equal(r->retry.budget, 2000);
    assert_int_equal(r->retry.max_body, 65536);
    assert_null(r->mirror.cluster);
    assert_int_equal(r->mirror.share, 10000);
    assert_int_equal(r->mirror.max_body, 65536);
    assert_false(r->mirror.compare);
    assert_int_equal(r->mirror.max_in_flight, 64);
    assert_false(r->ramp.enabled);
    assert_null(r->ramp.steps);
    assert_int_equal(r->ramp.n_steps, 0);
    assert_false(r->ramp.gate.enabled);
    assert_int_equal(r->ramp.gate.min_requests, 100);
    assert_int_equal(r->ramp.gate.max_5xx, 10000);
    assert_int_equal(r->ramp.gate.max_p99_ms, 0);
    assert_false(r->ramp.gate.vs_old);
    assert_int_equal(r->ramp.fingerprint, 0);
    assert_null(r->ramp_state);
    config_unref(cfg);
}

static void dns_forms(void **state)
{
    struct config *cfg = load_ok(BASE "dns:\n"
                                      "  nameservers:\n"
                                      "    - 10.0.0.2\n"
                                      "    - 10.0.0.3:5353\n"
                                      "    - \"[fd00::53]:53\"\n"
                                      "    - fd00::54\n"
                                      "  min_ttl: 1s\n"
                                      "  max_ttl: 1h\n"
                                      "  timeout: 500ms\n");
    assert_int_equal(cfg->dns.n_nameservers, 4);
    assert_string_equal(cfg->dns.nameservers[0], "10.0.0.2");
    assert_string_equal(cfg->dns.nameservers[1], "10.0.0.3:5353");
    assert_string_equal(cfg->dns.nameservers[2], "[fd00::53]:53");
    assert_string_equal(cfg->dns.nameservers[3], "fd00::54");
    assert_int_equal(cfg->dns.min_ttl_ms, 1000);
    assert_int_equal(cfg->dns.max_ttl_ms, 3600000);
    assert_int_equal(cfg->dns.timeout_ms, 500);
    config_unref(cfg);

    /* An empty list = the system's resolv.conf; equal TTL bounds are fine. */
    cfg = load_ok(BASE "dns: { nameservers: [], min_ttl: 1m, max_ttl: 60s }\n");
    assert_int_equal(cfg->dns.n_nameservers, 0);
    assert_null(cfg->dns.nameservers);
    assert_int_equal(cfg->dns.min_ttl_ms, 60000);
    assert_int_equal(cfg->dns.max_ttl_ms, 60000);
    assert_int_equal(cfg->dns.timeout_ms, 2000);
    config_unref(cfg);

    /* Sections whose keys are all optional may be written empty. */
    cfg = load_ok(BASE "dns:\n");
    assert_int_equal(cfg->dns.min_ttl_ms, 5000);
    assert_int_equal(cfg->dns.max_ttl_ms, 300000);
    config_unref(cfg);
    cfg = load_ok(ROUTE_WITH("retry:"));
    assert_int_equal(cfg->routes[0].retry.attempts, 1);
    assert_int_equal(cfg->routes[0].retry.budget, 2000);
    config_unref(cfg);
    cfg = load_ok(CLUSTER_WITH("eject:"));
    assert_int_equal(cfg->clusters[0].eject.connect_failures, 3);
    config_unref(cfg);
}

static void dns_errors(void **state)
{
    static const char ns[] = ", expected IP, IP:PORT or [IPv6]:PORT such as 10.0.0.2, 10.0.0.2:53 or [fd00::53]:53";
    char want[256];
    snprintf(want, sizeof(want), "t.yaml:7:23: bad nameserver \"10.0.0.256\"%s", ns);
    load_fails(BASE "dns: { nameservers: [ 10.0.0.256 ] }\n", want);
    snprintf(want, sizeof(want), "t.yaml:7:23: bad nameserver \"dns.example\"%s", ns);
    load_fails(BASE "dns: { nameservers: [ dns.example ] }\n", want);
    snprintf(want, sizeof(want), "t.yaml:7:23: bad nameserver \"[fd00::53]\"%s", ns);
    load_fails(BASE "dns: { nameservers: [ \"[fd00::53]\" ] }\n", want);
    load_fails_at(BASE "dns: { nameservers: [ \"10.0.0.2:0\" ] }\n", "t.yaml:7:23: ", "bad nameserver \"10.0.0.2:0\"");
    load_fails(BASE "dns: { nameservers: [ 10.0.0.2, \"10.0.0.2:53\" ] }\n",
               "t.yaml:7:33: duplicate nameserver \"10.0.0.2:53\" (same as \"10.0.0.2\"), expected each nameserver once");
    load_fails_at(BASE "dns: { nameservers: [ \"::1\", \"[0::1]:53\" ] }\n",
                  "t.yaml:7:30: ", "duplicate nameserver \"[0::1]:53\" (same as \"::1\")");
    load_fails(BASE "dns: { nameservers: 10.0.0.2 }\n",
               "t.yaml:7:21: dns.nameservers is a scalar, expected a list of IP, IP:PORT or [IPv6]:PORT such as 10.0.0.2, "
               "10.0.0.2:53 or [fd00::53]:53");
    load_fails_at(BASE "dns:\n  nameservers: [ 10.0.0.1, 10.0.0.2, 10.0.0.3, 10.0.0.4, 10.0.0.5, 10.0.0.6, 10.0.0.7, 10.0.0.8,\n"
                       "    10.0.0.9, 10.0.0.10, 10.0.0.11, 10.0.0.12, 10.0.0.13, 10.0.0.14, 10.0.0.15, 10.0.0.16, 10.0.0.17 ]\n",
                  "t.yaml:8:16: ", "dns.nameservers has 17 entries, expected at most 16");
    /* min_ttl <= max_ttl, reported at the key that was written (max_ttl when both were). */
    load_fails(BASE "dns: { min_ttl: 10m }\n", "t.yaml:7:17: dns.min_ttl 10m is above dns.max_ttl 5m, expected min_ttl <= max_ttl");
    load_fails(BASE "dns: { max_ttl: 2s }\n", "t.yaml:7:17: dns.min_ttl 5s is above dns.max_ttl 2s, expected min_ttl <= max_ttl");
    load_fails(BASE "dns: { min_ttl: 2m, max_ttl: 1m }\n",
               "t.yaml:7:30: dns.min_ttl 2m is above dns.max_ttl 1m, expected min_ttl <= max_ttl");
    load_fails(BASE "dns: { timeout: 0s }\n",
               "t.yaml:7:17: dns.timeout \"0s\" is out of range, expected a duration from 100ms to 1m");
    load_fails(BASE "dns: { max_ttl: 8d }\n",
               "t.yaml:7:17: dns.max_ttl \"8d\" is out of range, expected a duration from 1000ms to 7d");
    load_fails(BASE "dns: { min_ttl: 5 }\n",
               "t.yaml:7:17: dns.min_ttl \"5\" is not a duration, expected a duration such as 250ms, 5s, 2m, 1h or 30d");
    load_fails(BASE "dns: [ 10.0.0.2 ]\n",
               "t.yaml:7:6: dns is a list, expected a mapping with keys: nameservers, min_ttl, max_ttl, timeout");
    load_fails(BASE "dns: { servers: [] }\n",
               "t.yaml:7:8: unknown key \"servers\" in dns, expected one of: nameservers, min_ttl, max_ttl, timeout");
}

static void health_forms(void **state)
{
    struct config *cfg = load_ok(CLUSTER_WITH("health: {}"));
    const struct health_conf *h = &cfg->clusters[0].health;
    assert_true(h->enabled);
    assert_string_equal(h->path, "/healthz");
    assert_null(h->host);
    assert_int_equal(h->interval_ms, 5000);
    assert_int_equal(h->timeout_ms, 2000);
    assert_int_equal(h->healthy, 2);
    assert_int_equal(h->unhealthy, 3);
    assert_int_equal(h->expect_min, 200);
    assert_int_equal(h->expect_max, 399);
    assert_false(cfg->clusters[1].health.enabled);
    config_unref(cfg);

    cfg = load_ok(CLUSTER_WITH("health:")); /* written empty, like `tls:` */
    assert_true(cfg->clusters[0].health.enabled);
    config_unref(cfg);

    cfg = load_ok(CLUSTER_WITH("health: { path: \"/ready?deep=1\", host: api.example:8443, interval: 100ms, timeout: 99ms, "
                               "healthy: 1, unhealthy: 100, expect: 204 }"));
    h = &cfg->clusters[0].health;
    assert_true(h->enabled);
    assert_string_equal(h->path, "/ready?deep=1");
    assert_string_equal(h->host, "api.example:8443");
    assert_int_equal(h->interval_ms, 100);
    assert_int_equal(h->timeout_ms, 99);
    assert_int_equal(h->healthy, 1);
    assert_int_equal(h->unhealthy, 100);
    assert_int_equal(h->expect_min, 204);
    assert_int_equal(h->expect_max, 204);
    config_unref(cfg);

    static const struct {
        const char *expect;
        uint16_t lo, hi;
    } forms[] = {{"200-299", 200, 299}, {"\"200-204\"", 200, 204}, {"2xx", 200, 299}, {"5XX", 500, 599},
                 {"1xx", 100, 199},     {"100-599", 100, 599},     {"599", 599, 599}, {"\"301\"", 301, 301}};
    for (size_t i = 0; i < CO_ARRAY_SIZE(forms); i++) {
        char yaml[512];
        snprintf(yaml, sizeof(yaml), CLUSTER_WITH("health: { expect: %s, interval: 1h, timeout: 59m }"), forms[i].expect);
        cfg = load_ok(yaml);
        assert_int_equal(cfg->clusters[0].health.expect_min, forms[i].lo);
        assert_int_equal(cfg->clusters[0].health.expect_max, forms[i].hi);
        assert_int_equal(cfg->clusters[0].health.interval_ms, 3600000);
        config_unref(cfg);
    }
}

static void health_errors(void **state)
{
    load_fails(CLUSTER_WITH("health: { path: healthz }"),
               "t.yaml:5:21: bad health.path \"healthz\", expected a path starting with / and without spaces");
    load_fails_at(CLUSTER_WITH("health: { path: \"/a b\" }"), "t.yaml:5:21: ", "bad health.path \"/a b\"");
    load_fails(CLUSTER_WITH("health: { host: \"a b\" }"),
               "t.yaml:5:21: bad health.host \"a b\", expected a Host header value such as api.example.com");
    load_fails(CLUSTER_WITH("health: { interval: 50ms }"),
               "t.yaml:5:25: health.interval \"50ms\" is out of range, expected a duration from 100ms to 1h");
    load_fails(CLUSTER_WITH("health: { interval: 2h }"),
               "t.yaml:5:25: health.interval \"2h\" is out of range, expected a duration from 100ms to 1h");
    load_fails(
        CLUSTER_WITH("health: { timeout: 5s }"),
        "t.yaml:5:24: health.timeout \"5s\" is not below health.interval (5s), expected a timeout shorter than the interval");
    load_fails(
        CLUSTER_WITH("health: { interval: 1s, timeout: 1s }"),
        "t.yaml:5:38: health.timeout \"1s\" is not below health.interval (1s), expected a timeout shorter than the interval");
    load_fails(CLUSTER_WITH("health: { interval: 2s }"),
               "t.yaml:5:25: health.interval \"2s\" is not above health.timeout (2s by default), expected a longer interval or a "
               "shorter health.timeout");
    load_fails(CLUSTER_WITH("health: { healthy: 0 }"),
               "t.yaml:5:24: health.healthy \"0\" is out of range, expected an integer in 1..100");
    load_fails(CLUSTER_WITH("health: { unhealthy: 101 }"),
               "t.yaml:5:26: health.unhealthy \"101\" is out of range, expected an integer in 1..100");
    static const char expect_form[] =
        ", expected a status such as 200, a range such as 200-299, or a class such as 2xx (statuses 100..599)";
    char want[256];
    snprintf(want, sizeof(want), "t.yaml:5:23: bad health.expect \"600\"%s", expect_form);
    load_fails(CLUSTER_WITH("health: { expect: 600 }"), want);
    static const char *const bad_expect[] = {"99",   "0200", "299-200", "200-600", "6xx",      "0xx", "2x",
                                             "2xxx", "abc",  "200-",    "-299",    "200..299", "\"\""};
    for (size_t i = 0; i < CO_ARRAY_SIZE(bad_expect); i++) {
        char yaml[512];
        snprintf(yaml, sizeof(yaml), CLUSTER_WITH("health: { expect: %s }"), bad_expect[i]);
        load_fails_at(yaml, "t.yaml:5:23: ", "bad health.expect");
    }
    load_fails(CLUSTER_WITH("health: [ /healthz ]"),
               "t.yaml:5:13: health is a list, expected a mapping with keys: path, host, interval, timeout, healthy, unhealthy, "
               "expect");
    load_fails(CLUSTER_WITH("health: { paht: /x }"),
               "t.yaml:5:15: unknown key \"paht\" in health, expected one of: path, host, interval, timeout, healthy, unhealthy, "
               "expect");
}

static void eject_forms_and_errors(void **state)
{
    struct config *cfg = load_ok(CLUSTER_WITH("eject: { connect_failures: 0, consecutive_5xx: 1000, duration: 1d }"));
    const struct eject_conf *e = &cfg->clusters[0].eject;
    assert_int_equal(e->connect_failures, 0); /* off */
    assert_int_equal(e->consecutive_5xx, 1000);
    assert_int_equal(e->duration_ms, 86400000);
    assert_int_equal(cfg->clusters[1].eject.connect_failures, 3);
    config_unref(cfg);
    cfg = load_ok(CLUSTER_WITH("eject: { consecutive_5xx: 0 }"));
    e = &cfg->clusters[0].eject;
    assert_int_equal(e->connect_failures, 3);
    assert_int_equal(e->consecutive_5xx, 0);
    assert_int_equal(e->duration_ms, 30000);
    config_unref(cfg);
    cfg = load_ok(CLUSTER_WITH("eject: {}"));
    assert_int_equal(cfg->clusters[0].eject.consecutive_5xx, 5);
    config_unref(cfg);

    load_fails(CLUSTER_WITH("eject: { connect_failures: 1001 }"),
               "t.yaml:5:32: eject.connect_failures \"1001\" is out of range, expected an integer in 0..1000");
    load_fails(CLUSTER_WITH("eject: { consecutive_5xx: -1 }"),
               "t.yaml:5:31: eject.consecutive_5xx \"-1\" is not an integer, expected an integer in 0..1000");
    load_fails(CLUSTER_WITH("eject: { duration: 500ms }"),
               "t.yaml:5:24: eject.duration \"500ms\" is out of range, expected a duration from 1000ms to 1d");
    load_fails(CLUSTER_WITH("eject: { duration: 2d }"),
               "t.yaml:5:24: eject.duration \"2d\" is out of range, expected a duration from 1000ms to 1d");
    load_fails(CLUSTER_WITH("eject: { after: 3 }"),
               "t.yaml:5:14: unknown key \"after\" in eject, expected one of: connect_failures, consecutive_5xx, duration");
    load_fails(CLUSTER_WITH("eject: true"),
               "t.yaml:5:12: eject is a scalar, expected a mapping with keys: connect_failures, consecutive_5xx, duration");
}

static void max_connection_age_forms_and_errors(void **state)
{
    struct config *cfg = load_ok(CLUSTER_WITH("max_connection_age: 0s"));
    assert_int_equal(cfg->clusters[0].max_connection_age_ms, 0); /* unlimited */
    assert_int_equal(cfg->clusters[1].max_connection_age_ms, 600000);
    config_unref(cfg);
    cfg = load_ok(CLUSTER_WITH("max_connection_age: 1s"));
    assert_int_equal(cfg->clusters[0].max_connection_age_ms, 1000);
    config_unref(cfg);
    cfg = load_ok(CLUSTER_WITH("max_connection_age: 30d"));
    assert_int_equal(cfg->clusters[0].max_connection_age_ms, 30ull * 86400000);
    config_unref(cfg);
    load_fails(CLUSTER_WITH("max_connection_age: 500ms"),
               "t.yaml:5:25: max_connection_age \"500ms\" is out of range, expected 0s (unlimited) or a duration from 1s to 30d");
    load_fails(CLUSTER_WITH("max_connection_age: 31d"),
               "t.yaml:5:25: max_connection_age \"31d\" is out of range, expected 0s (unlimited) or a duration from 1s to 30d");
    load_fails(CLUSTER_WITH("max_connection_age: 10"),
               "t.yaml:5:25: max_connection_age \"10\" is not a duration, expected a duration such as 250ms, 5s, 2m, 1h or 30d");
}

static void failover_forms(void **state)
{
    struct config *cfg = load_ok(ROUTE_WITH("failover: false"));
    assert_false(cfg->routes[0].failover);
    config_unref(cfg);
    cfg = load_ok(ROUTE_WITH("failover: true"));
    assert_true(cfg->routes[0].failover);
    config_unref(cfg);
    load_fails(ROUTE_WITH("failover: no"), "t.yaml:8:15: failover \"no\" is not a boolean, expected true or false");
}

static void retry_forms(void **state)
{
    struct config *cfg = load_ok(ROUTE_WITH("retry: { attempts: 0, budget: 12.5%, max_body: 1MiB }"));
    const struct retry_conf *rt = &cfg->routes[0].retry;
    assert_int_equal(rt->attempts, 0);
    assert_int_equal(rt->budget, 1250);
    assert_int_equal(rt->max_body, 1048576);
    config_unref(cfg);
    cfg = load_ok(ROUTE_WITH("retry: { attempts: 4 }"));
    rt = &cfg->routes[0].retry;
    assert_int_equal(rt->attempts, 4);
    assert_int_equal(rt->budget, 2000);
    assert_int_equal(rt->max_body, 65536);
    config_unref(cfg);

    static const struct {
        const char *text;
        uint64_t bytes;
    } sizes[] = {{"0", 0}, {"1024", 1024}, {"64KiB", 65536}, {"16MiB", 16777216}, {"\"100\"", 100}, {"0KiB", 0}};
    for (size_t i = 0; i < CO_ARRAY_SIZE(sizes); i++) {
        char yaml[512];
        snprintf(yaml, sizeof(yaml), ROUTE_WITH("retry: { max_body: %s, budget: 100 }"), sizes[i].text);
        cfg = load_ok(yaml);
        assert_int_equal(cfg->routes[0].retry.max_body, sizes[i].bytes);
        assert_int_equal(cfg->routes[0].retry.budget, 10000);
        config_unref(cfg);
    }
}

static void retry_errors(void **state)
{
    load_fails(ROUTE_WITH("retry: { attempts: 5 }"),
               "t.yaml:8:24: retry.attempts \"5\" is out of range, expected an integer in 0..4");
    load_fails(ROUTE_WITH("retry: { budget: 101% }"),
               "t.yaml:8:22: retry.budget \"101%\" is above 100%, expected a percentage from 0% to 100% with at most two decimals, "
               "such as 20%, 0.5% or 100");
    load_fails(ROUTE_WITH("retry: { budget: -1% }"),
               "t.yaml:8:22: retry.budget \"-1%\" is not a percentage, expected a percentage from 0% to 100% with at most two "
               "decimals, such as 20%, 0.5% or 100");
    load_fails(ROUTE_WITH("retry: { max_body: 17MiB }"),
               "t.yaml:8:24: retry.max_body \"17MiB\" is out of range, expected a size from 0 to 16MiB");
    load_fails(ROUTE_WITH("retry: { max_body: 16777217 }"),
               "t.yaml:8:24: retry.max_body \"16777217\" is out of range, expected a size from 0 to 16MiB");
    static const char *const bad_sizes[] = {"64KB", "64kib", "1.5MiB", "\"64 KiB\"", "-1",
                                            "KiB",  "64K",   "0x10",   "1TiB",       "99999999999999999999"};
    for (size_t i = 0; i < CO_ARRAY_SIZE(bad_sizes); i++) {
        char yaml[512];
        snprintf(yaml, sizeof(yaml), ROUTE_WITH("retry: { max_body: %s }"), bad_sizes[i]);
        load_fails_at(yaml, "t.yaml:8:24: ", "is not a size, expected a size in bytes such as 65536, 64KiB or 16MiB");
    }
    load_fails(ROUTE_WITH("retry: { tries: 1 }"),
               "t.yaml:8:14: unknown key \"tries\" in retry, expected one of: attempts, budget, max_body");
}

static void mirror_forms(void **state)
{
    struct config *cfg = load_ok(ROUTE_WITH("mirror: { cluster: b }"));
    const struct mirror_conf *mi = &cfg->routes[0].mirror;
    assert_ptr_equal(mi->cluster, &cfg->clusters[1]);
    assert_int_equal(mi->share, 10000);
    assert_int_equal(mi->max_body, 65536);
    assert_false(mi->compare);
    assert_int_equal(mi->max_in_flight, 64);
    config_unref(cfg);
    /* Any cluster, including one of the split. */
    cfg = load_ok(ROUTE_WITH("mirror: { cluster: a, percent: 0.05%, max_body: 0, compare: true, max_in_flight: 10000 }"));
    mi = &cfg->routes[0].mirror;
    assert_ptr_equal(mi->cluster, &cfg->clusters[0]);
    assert_int_equal(mi->share, 5);
    assert_int_equal(mi->max_body, 0);
    assert_true(mi->compare);
    assert_int_equal(mi->max_in_flight, 10000);
    config_unref(cfg);
    cfg = load_ok(ROUTE_WITH("mirror: { cluster: b, percent: 5, max_in_flight: 1 }"));
    assert_int_equal(cfg->routes[0].mirror.share, 500);
    assert_int_equal(cfg->routes[0].mirror.max_in_flight, 1);
    config_unref(cfg);
}

static void mirror_errors(void **state)
{
    load_fails(ROUTE_WITH("mirror: { percent: 5 }"),
               "t.yaml:8:13: missing required key \"cluster\" in mirror, expected cluster: NAME");
    load_fails(ROUTE_WITH("mirror: { cluster: gcp }"), "t.yaml:8:24: unknown cluster \"gcp\" in mirror, expected one of: a, b");
    load_fails_at(ROUTE_WITH("mirror: { cluster: b, percent: 150 }"), "t.yaml:8:36: ", "mirror.percent \"150\" is above 100%");
    load_fails(ROUTE_WITH("mirror: { cluster: b, max_in_flight: 0 }"),
               "t.yaml:8:42: mirror.max_in_flight \"0\" is out of range, expected an integer in 1..10000");
    load_fails(ROUTE_WITH("mirror: { cluster: b, max_in_flight: 10001 }"),
               "t.yaml:8:42: mirror.max_in_flight \"10001\" is out of range, expected an integer in 1..10000");
    load_fails(ROUTE_WITH("mirror: { cluster: b, compare: yes }"),
               "t.yaml:8:36: mirror.compare \"yes\" is not a boolean, expected true or false");
    load_fails(ROUTE_WITH("mirror: { cluster: b, max_body: 1GiB }"),
               "t.yaml:8:37: mirror.max_body \"1GiB\" is out of range, expected a size from 0 to 16MiB");
    load_fails(ROUTE_WITH("mirror: b"),
               "t.yaml:8:13: mirror is a scalar, expected a mapping with keys: cluster, percent, max_body, compare, max_in_flight");
    load_fails(ROUTE_WITH("mirror: { cluster: b, share: 5 }"),
               "t.yaml:8:27: unknown key \"share\" in mirror, expected one of: cluster, percent, max_body, compare, max_in_flight");
}

static void ramp_forms(void **state)
{
    struct config *cfg =
        load_ok(RAMP_ROUTE("ramp:\n"
                           "      start: 2026-12-01T09:00:00Z\n"
                           "      steps: [ 10%, 10.5, 25.5%, 50, 100% ]\n"
                           "      hold: 30m\n"
                           "      gate: { min_requests: 200, max_5xx_ratio: 0.01, max_p99_ms: 800, old_side_margin: \"0.5%\" }"));
    const struct ramp_conf *rp = &cfg->routes[0].ramp;
    assert_true(rp->enabled);
    assert_true(rp->start_s == T_2026_12_01_0900);
    assert_int_equal(rp->n_steps, 5);
    static const uint32_t want[] = {1000, 1050, 2550, 5000, 10000};
    for (size_t i = 0; i < 5; i++)
        assert_int_equal(rp->steps[i], want[i]);
    assert_int_equal(rp->hold_ms, 1800000);
    assert_true(rp->gate.enabled);
    assert_int_equal(rp->gate.min_requests, 200);
    assert_int_equal(rp->gate.max_5xx, 100);
    assert_int_equal(rp->gate.max_p99_ms, 800);
    assert_true(rp->gate.vs_old);
    assert_int_equal(rp->gate.old_side_margin, 50);
    assert_true(rp->fingerprint != 0);
    assert_null(cfg->routes[0].ramp_state);
    config_unref(cfg);

    /* No gate: the defaults (judging nothing). A quoted start is fine too. */
    cfg = load_ok(RAMP_ROUTE("ramp: { start: \"2026-12-01T09:00:00Z\", steps: [ 100 ], hold: 1s }"));
    rp = &cfg->routes[0].ramp;
    assert_true(rp->enabled);
    assert_true(rp->start_s == T_2026_12_01_0900);
    assert_int_equal(rp->n_steps, 1);
    assert_int_equal(rp->steps[0], 10000);
    assert_int_equal(rp->hold_ms, 1000);
    assert_false(rp->gate.enabled);
    assert_int_equal(rp->gate.min_requests, 100);
    assert_int_equal(rp->gate.max_5xx, 10000);
    assert_int_equal(rp->gate.max_p99_ms, 0);
    assert_false(rp->gate.vs_old);
    config_unref(cfg);

    /* Gate forms: max_p99 as a duration, max_5xx_ratio as a percentage, empty gate. */
    cfg =
        load_ok(RAMP_ROUTE(RAMP_HEAD "steps: [ 50 ], hold: 1m, gate: { max_p99: 1s, max_5xx_ratio: 2.5%, old_side_margin: 0 } }"));
    rp = &cfg->routes[0].ramp;
    assert_int_equal(rp->gate.max_p99_ms, 1000);
    assert_int_equal(rp->gate.max_5xx, 250);
    assert_true(rp->gate.vs_old);
    assert_int_equal(rp->gate.old_side_margin, 0);
    config_unref(cfg);
    cfg = load_ok(RAMP_ROUTE(RAMP_HEAD "steps: [ 50 ], hold: 1m, gate: {} }"));
    assert_true(cfg->routes[0].ramp.gate.enabled);
    assert_int_equal(cfg->routes[0].ramp.gate.min_requests, 100);
    assert_int_equal(cfg->routes[0].ramp.gate.max_5xx, 10000);
    config_unref(cfg);
    static const struct {
        const char *text;
        uint32_t bp;
    } ratios[] = {{"0", 0},          {"1", 10000},    {"0.5", 5000}, {"0.0001", 1},
                  {"1.0000", 10000}, {"100%", 10000}, {"0.01%", 1},  {"\"0.25\"", 2500}};
    for (size_t i = 0; i < CO_ARRAY_SIZE(ratios); i++) {
        char yaml[512];
        snprintf(yaml, sizeof(yaml), RAMP_ROUTE(RAMP_HEAD "steps: [ 50 ], hold: 1m, gate: { max_5xx_ratio: %s } }"),
                 ratios[i].text);
        cfg = load_ok(yaml);
        assert_int_equal(cfg->routes[0].ramp.gate.max_5xx, ratios[i].bp);
        config_unref(cfg);
    }
}

static void ramp_first_step_and_written_share(void **state)
{
    /* a has 10 of 100: 10.00%; a first step of exactly that is fine. */
    struct config *cfg = load_ok(RAMP_ROUTE(RAMP_HEAD "steps: [ 10, 10, 10 ], hold: 1m }"));
    assert_int_equal(cfg->routes[0].ramp.n_steps, 3);
    config_unref(cfg);
    load_fails(RAMP_ROUTE(RAMP_HEAD "steps: [ 9.99%, 50 ], hold: 1m }"),
               "t.yaml:8:51: first ramp step \"9.99%\" is below the written share of cluster \"a\" (10.00% from its weight), "
               "expected a first step of at least that (a ramp only moves users to the new side)");
    /* The share is floor(10000 * weight / total), as decide.c computes it: 1 of 3 = 33.33%. */
    cfg = load_ok(LISTEN CLUSTERS "routes:\n  - name: r\n    split: [ { cluster: a, weight: 1 }, { cluster: b, weight: 2 } ]\n"
                                  "    " RAMP_HEAD "steps: [ 33.33% ], hold: 1m }\n");
    config_unref(cfg);
    load_fails_at(
        LISTEN CLUSTERS "routes:\n  - name: r\n    split: [ { cluster: a, weight: 1 }, { cluster: b, weight: 2 } ]\n"
                        "    " RAMP_HEAD "steps: [ 33.32% ], hold: 1m }\n",
        "t.yaml:8:51: ", "first ramp step \"33.32%\" is below the written share of cluster \"a\" (33.33% from its weight)");
    /* A new side written at 0 may start anywhere. */
    cfg = load_ok(LISTEN CLUSTERS "routes:\n  - name: r\n    split: [ { cluster: b, weight: 0 }, { cluster: a, weight: 1 } ]\n"
                                  "    " RAMP_HEAD "steps: [ 0, 1 ], hold: 1m }\n");
    assert_int_equal(cfg->routes[0].ramp.steps[0], 0);
    config_unref(cfg);
}

static void ramp_errors(void **state)
{
    /* The split must have exactly two entries: reported at steps. */
    load_fails(LISTEN "clusters:\n"
                      "  - { name: a, endpoints: [ 127.0.0.1:9001 ] }\n"
                      "  - { name: b, endpoints: [ 127.0.0.1:9002 ] }\n"
                      "  - { name: c, endpoints: [ 127.0.0.1:9003 ] }\n"
                      "routes:\n"
                      "  - name: r\n"
                      "    split: [ { cluster: a, weight: 1 }, { cluster: b, weight: 1 }, { cluster: c, weight: 1 } ]\n"
                      "    ramp: { start: 2026-12-01T09:00:00Z, steps: [ 50 ], hold: 1m }\n",
               "t.yaml:9:49: ramp on route \"r\" whose split has 3 entries, expected a split of exactly 2 clusters (the new side "
               "first)");
    load_fails_at(ROUTE_WITH(RAMP_HEAD "steps: [ 50 ], hold: 1m }"),
                  "t.yaml:8:49: ", "ramp on route \"r\" whose split has 1 entries, expected a split of exactly 2 clusters");
    load_fails(RAMP_ROUTE(RAMP_HEAD "steps: [ 10, 25, 20 ], hold: 1m }"),
               "t.yaml:8:59: ramp step \"20\" is below the step before it (25.00%), expected non-decreasing steps");
    load_fails(
        RAMP_ROUTE(RAMP_HEAD "steps: [ 10, 101 ], hold: 1m }"),
        "t.yaml:8:55: ramp step \"101\" is above 100%, expected a percentage from 0% to 100% with at most two decimals, such "
        "as 20%, 0.5% or 100");
    load_fails(RAMP_ROUTE(RAMP_HEAD "steps: [], hold: 1m }"),
               "t.yaml:8:49: ramp.steps is an empty list, expected at least 1 percentages such as [5%, 25%, 100%]");
    load_fails(RAMP_ROUTE(RAMP_HEAD "steps: 50, hold: 1m }"),
               "t.yaml:8:49: ramp.steps is a scalar, expected a list of percentages such as [5%, 25%, 100%]");
    char yaml[2048];
    int n = snprintf(yaml, sizeof(yaml), "%s", RAMP_ROUTE(RAMP_HEAD "hold: 1m, steps: ["));
    yaml[--n] = '\0'; /* drop the newline */
    for (int i = 0; i < 65; i++)
        n += snprintf(yaml + n, sizeof(yaml) - (size_t)n, "%s50", i ? ", " : " ");
    snprintf(yaml + n, sizeof(yaml) - (size_t)n, " ] }\n");
    load_fails(yaml, "t.yaml:8:59: ramp.steps has 65 entries, expected at most 64 percentages such as [5%, 25%, 100%]");
    load_fails(RAMP_ROUTE("ramp: { steps: [ 50 ], hold: 1m }"),
               "t.yaml:8:11: missing required key \"start\" in ramp, expected start: a UTC time such as 2026-12-01T09:00:00Z");
    load_fails(
        RAMP_ROUTE(RAMP_HEAD "hold: 1m }"),
        "t.yaml:8:11: missing required key \"steps\" in ramp, expected steps: a list of percentages such as [5%, 25%, 100%]");
    load_fails(RAMP_ROUTE(RAMP_HEAD "steps: [ 50 ] }"),
               "t.yaml:8:11: missing required key \"hold\" in ramp, expected hold: the time on each step such as 30m");
    load_fails(RAMP_ROUTE("ramp: { start: \"2026-12-01 09:00:00\", steps: [ 50 ], hold: 1m }"),
               "t.yaml:8:20: ramp.start \"2026-12-01 09:00:00\" is not a valid time, expected a UTC time such as "
               "2026-12-01T09:00:00Z");
    static const char *const bad_start[] = {"2026-02-30T09:00:00Z",
                                            "2026-12-01T09:00:00+01:00",
                                            "2026-12-01T09:00:00.5Z",
                                            "2026-12-01t09:00:00z",
                                            "1969-12-31T23:59:59Z",
                                            "2026-12-01T24:00:00Z",
                                            "2026-12-01",
                                            "1796115600"};
    for (size_t i = 0; i < CO_ARRAY_SIZE(bad_start); i++) {
        snprintf(yaml, sizeof(yaml), RAMP_ROUTE("ramp: { start: \"%s\", steps: [ 50 ], hold: 1m }"), bad_start[i]);
        load_fails_at(yaml, "t.yaml:8:20: ", "is not a valid time, expected a UTC time such as 2026-12-01T09:00:00Z");
    }
    load_fails(RAMP_ROUTE(RAMP_HEAD "steps: [ 50 ], hold: 500ms }"),
               "t.yaml:8:63: ramp.hold \"500ms\" is out of range, expected a duration from 1000ms to 30d");
    load_fails(RAMP_ROUTE(RAMP_HEAD "steps: [ 50 ], hold: 1m, gate: { max_p99: 1s, max_p99_ms: 800 } }"),
               "t.yaml:8:73: gate has both max_p99 and max_p99_ms, expected at most one of them");
    load_fails(RAMP_ROUTE(RAMP_HEAD "steps: [ 50 ], hold: 1m, gate: { max_5xx_ratio: 1.5 } }"),
               "t.yaml:8:90: gate.max_5xx_ratio \"1.5\" is out of range, expected a ratio from 0 to 1 such as 0.01 (at most four "
               "decimals), or a percentage such as 1%");
    load_fails_at(RAMP_ROUTE(RAMP_HEAD "steps: [ 50 ], hold: 1m, gate: { max_5xx_ratio: 5 } }"),
                  "t.yaml:8:90: ", "gate.max_5xx_ratio \"5\" is out of range");
    load_fails(
        RAMP_ROUTE(RAMP_HEAD "steps: [ 50 ], hold: 1m, gate: { max_5xx_ratio: 0.00001 } }"),
        "t.yaml:8:90: gate.max_5xx_ratio \"0.00001\" is not a ratio, expected a ratio from 0 to 1 such as 0.01 (at most four "
        "decimals), or a percentage such as 1%");
    static const char *const bad_ratio[] = {"-0.1", ".5", "1.", "abc", "0.5%%", "0.001%", "1e-2", "\"\""};
    for (size_t i = 0; i < CO_ARRAY_SIZE(bad_ratio); i++) {
        snprintf(yaml, sizeof(yaml), RAMP_ROUTE(RAMP_HEAD "steps: [ 50 ], hold: 1m, gate: { max_5xx_ratio: %s } }"), bad_ratio[i]);
        load_fails_at(yaml, "t.yaml:8:90: ", "gate.max_5xx_ratio");
    }
    load_fails_at(RAMP_ROUTE(RAMP_HEAD "steps: [ 50 ], hold: 1m, gate: { max_5xx_ratio: 101% } }"),
                  "t.yaml:8:90: ", "gate.max_5xx_ratio \"101%\" is out of range");
    load_fails(RAMP_ROUTE(RAMP_HEAD "steps: [ 50 ], hold: 1m, gate: { min_requests: 0 } }"),
               "t.yaml:8:89: gate.min_requests \"0\" is out of range, expected an integer in 1..1000000000");
    load_fails(RAMP_ROUTE(RAMP_HEAD "steps: [ 50 ], hold: 1m, gate: { old_side_margin: 2%, max_p99_ms: 1h } }"),
               "t.yaml:8:108: gate.max_p99_ms \"1h\" is not an integer, expected an integer in 0..3600000");
    load_fails(RAMP_ROUTE(RAMP_HEAD "steps: [ 50 ], hold: 1m, gate: { max_5xx: 1% } }"),
               "t.yaml:8:75: unknown key \"max_5xx\" in ramp gate, expected one of: min_requests, max_5xx_ratio, max_p99, "
               "max_p99_ms, old_side_margin");
    load_fails(RAMP_ROUTE("ramp: { begin: 2026-12-01T09:00:00Z }"),
               "t.yaml:8:13: unknown key \"begin\" in ramp, expected one of: start, steps, hold, gate");
    load_fails(RAMP_ROUTE("ramp: []"), "t.yaml:8:11: ramp is a list, expected a mapping with keys: start, steps, hold, gate");
}

static uint64_t ramp_fingerprint_of(const char *yaml)
{
    struct config *cfg = load_ok(yaml);
    assert_true(cfg->routes[0].ramp.enabled);
    uint64_t fp = cfg->routes[0].ramp.fingerprint;
    config_unref(cfg);
    return fp;
}

static void ramp_fingerprint(void **state)
{
#define FP_ROUTE(split, ramp) LISTEN CLUSTERS "routes:\n  - name: r\n    split: " split "\n    ramp: " ramp "\n"
#define SPLIT_10_90 "[ { cluster: a, weight: 10 }, { cluster: b, weight: 90 } ]"
#define RAMP_BASE "{ start: 2026-12-01T09:00:00Z, steps: [ 10, 50, 100 ], hold: 30m, gate: { max_5xx_ratio: 0.01 } }"
    uint64_t base = ramp_fingerprint_of(FP_ROUTE(SPLIT_10_90, RAMP_BASE));
    /* The same ramp, written differently, in another snapshot. */
    assert_true(ramp_fingerprint_of(FP_ROUTE(SPLIT_10_90, "{ hold: 1800s, steps: [ 10%, 50.00, 100 ], gate: { max_5xx_ratio: 1% }, "
                                                          "start: \"2026-12-01T09:00:00Z\" }")) == base);
    /* Anything else that defines the ramp changes it. */
    static const char *const changed[] = {
        FP_ROUTE(SPLIT_10_90, "{ start: 2026-12-01T09:00:00Z, steps: [ 10, 60, 100 ], hold: 30m, gate: { max_5xx_ratio: 0.01 } }"),
        FP_ROUTE(SPLIT_10_90, "{ start: 2026-12-01T09:00:00Z, steps: [ 10, 50 ], hold: 30m, gate: { max_5xx_ratio: 0.01 } }"),
        FP_ROUTE(SPLIT_10_90, "{ start: 2026-12-01T09:00:01Z, steps: [ 10, 50, 100 ], hold: 30m, gate: { max_5xx_ratio: 0.01 } }"),
        FP_ROUTE(SPLIT_10_90, "{ start: 2026-12-01T09:00:00Z, steps: [ 10, 50, 100 ], hold: 31m, gate: { max_5xx_ratio: 0.01 } }"),
        FP_ROUTE(SPLIT_10_90, "{ start: 2026-12-01T09:00:00Z, steps: [ 10, 50, 100 ], hold: 30m, gate: { max_5xx_ratio: 0.02 } }"),
        FP_ROUTE(SPLIT_10_90, "{ start: 2026-12-01T09:00:00Z, steps: [ 10, 50, 100 ], hold: 30m }"),
        FP_ROUTE(SPLIT_10_90, "{ start: 2026-12-01T09:00:00Z, steps: [ 10, 50, 100 ], hold: 30m, gate: { max_5xx_ratio: 0.01, "
                              "min_requests: 101 } }"),
        FP_ROUTE(SPLIT_10_90, "{ start: 2026-12-01T09:00:00Z, steps: [ 10, 50, 100 ], hold: 30m, gate: { max_5xx_ratio: 0.01, "
                              "max_p99_ms: 1 } }"),
        FP_ROUTE(SPLIT_10_90, "{ start: 2026-12-01T09:00:00Z, steps: [ 10, 50, 100 ], hold: 30m, gate: { max_5xx_ratio: 0.01, "
                              "old_side_margin: 0 } }"),
        FP_ROUTE("[ { cluster: a, weight: 1 }, { cluster: b, weight: 9 } ]", RAMP_BASE),
        FP_ROUTE("[ { cluster: a, weight: 10 }, { cluster: b, weight: 91 } ]", RAMP_BASE),
        FP_ROUTE("[ { cluster: b, weight: 10 }, { cluster: a, weight: 90 } ]", RAMP_BASE),
    };
    for (size_t i = 0; i < CO_ARRAY_SIZE(changed); i++)
        if (ramp_fingerprint_of(changed[i]) == base)
            fail_msg("fingerprint unchanged for: %s", changed[i]);
    /* Two routes with the same ramp and split share a fingerprint. */
    struct config *cfg = load_ok(LISTEN CLUSTERS "routes:\n"
                                                 "  - { name: r1, split: " SPLIT_10_90 ", ramp: " RAMP_BASE " }\n"
                                                 "  - { name: r2, split: " SPLIT_10_90 ", ramp: " RAMP_BASE " }\n");
    assert_true(cfg->routes[0].ramp.fingerprint == base);
    assert_true(cfg->routes[1].ramp.fingerprint == base);
    config_unref(cfg);
#undef FP_ROUTE
#undef SPLIT_10_90
#undef RAMP_BASE
}

static void new_keys_in_unknown_key_lists(void **state)
{
    load_fails(CLUSTER_WITH("healthcheck: {}"),
               "t.yaml:5:5: unknown key \"healthcheck\" in cluster, expected one of: name, endpoints, host, protocol, "
               "connect_timeout, first_byte_timeout, idle_timeout, max_idle, tls, health, eject, max_connection_age");
    load_fails(ROUTE_WITH("retries: {}"), "t.yaml:8:5: unknown key \"retries\" in route, expected one of: name, match, split, "
                                          "sticky, override, failover, retry, mirror, ramp");
}

/* ------------------------------------------------------------------------- */
/* ${NAME} substitution */

static void env_substitution(void **state)
{
    setenv("CO_TEST_A", "one", 1);
    setenv("CO_TEST_B", "two", 1);
    setenv("CO_TEST_PORT", "8081", 1);
    setenv("CO_TEST_W", "7", 1);
    struct config *cfg = load_ok("listen: [ { address: \"127.0.0.1:${CO_TEST_PORT}\" } ]\n" CLUSTERS ROUTES
                                 "admin: { token: \"pre-${CO_TEST_A}-${CO_TEST_B}-post$\" }\n"
                                 "workers: ${CO_TEST_W}\n");
    assert_string_equal(cfg->listeners[0].addr.text, "127.0.0.1:8081");
    assert_string_equal(cfg->admin.token, "pre-one-two-post$");
    assert_int_equal(cfg->workers, 7);
    config_unref(cfg);
    unsetenv("CO_TEST_A");
    unsetenv("CO_TEST_B");
    unsetenv("CO_TEST_PORT");
    unsetenv("CO_TEST_W");
}

static void env_substitution_not_in_keys_nor_recursive(void **state)
{
    setenv("CO_TEST_K", "workers", 1);
    setenv("CO_TEST_REC", "${CO_TEST_K}", 1);
    /* A key is taken literally. */
    load_fails_at(BASE "${CO_TEST_K}: 1\n", "t.yaml:7:1: ", "unknown key \"${CO_TEST_K}\"");
    /* A value from the environment is not expanded again. */
    struct config *cfg = load_ok(BASE "admin: { token: \"${CO_TEST_REC}\" }\n");
    assert_string_equal(cfg->admin.token, "${CO_TEST_K}");
    config_unref(cfg);
    unsetenv("CO_TEST_K");
    unsetenv("CO_TEST_REC");
}

static void env_missing_variable(void **state)
{
    unsetenv("CUTOVER_OVERRIDE_SECRET");
    load_fails(ROUTE_WITH("override: { header: x-c, secret: \"${CUTOVER_OVERRIDE_SECRET}\" }"),
               "t.yaml:8:38: environment variable CUTOVER_OVERRIDE_SECRET is not set, expected it to be set for "
               "${CUTOVER_OVERRIDE_SECRET}");
}

static void env_empty_secret_rejected(void **state)
{
    setenv("CO_TEST_EMPTY", "", 1);
    load_fails(ROUTE_WITH("override: { header: x-c, secret: \"${CO_TEST_EMPTY}\" }"),
               "t.yaml:8:38: override secret is empty, expected a non-empty secret");
    unsetenv("CO_TEST_EMPTY");
}

static void env_bad_syntax(void **state)
{
    load_fails(BASE "admin: { token: \"a${B\" }\n", "t.yaml:7:17: unterminated \"${\" in value \"a${B\", expected ${NAME}");
    load_fails(BASE "admin: { token: \"${}\" }\n",
               "t.yaml:7:17: bad variable \"${}\", expected ${NAME} with NAME made of letters, digits and _");
    load_fails(BASE "admin: { token: \"${1X}\" }\n",
               "t.yaml:7:17: bad variable \"${1X}\", expected ${NAME} with NAME made of letters, digits and _");
    load_fails(BASE "admin: { token: \"${A-B}\" }\n",
               "t.yaml:7:17: bad variable \"${A-B}\", expected ${NAME} with NAME made of letters, digits and _");
}

static void env_result_bounded(void **state)
{
    char *big = malloc(40000);
    assert_non_null(big);
    memset(big, 'x', 39999);
    big[39999] = '\0';
    setenv("CO_TEST_BIG", big, 1);
    free(big);
    load_fails(BASE "admin: { token: \"${CO_TEST_BIG}${CO_TEST_BIG}\" }\n",
               "t.yaml:7:17: value is longer than 65536 bytes after ${NAME} substitution, expected at most 65536 bytes");
    struct config *cfg = load_ok(BASE "admin: { token: \"${CO_TEST_BIG}\" }\n");
    assert_int_equal(strlen(cfg->admin.token), 39999);
    config_unref(cfg);
    unsetenv("CO_TEST_BIG");
}

/* ------------------------------------------------------------------------- */
/* Parsers */

static void parse_duration_valid(void **state)
{
    uint64_t ms = 12345;
    assert_int_equal(config_parse_duration("250ms", &ms), CO_OK);
    assert_int_equal(ms, 250);
    assert_int_equal(config_parse_duration("5s", &ms), CO_OK);
    assert_int_equal(ms, 5000);
    assert_int_equal(config_parse_duration("2m", &ms), CO_OK);
    assert_int_equal(ms, 120000);
    assert_int_equal(config_parse_duration("1h", &ms), CO_OK);
    assert_int_equal(ms, 3600000);
    assert_int_equal(config_parse_duration("30d", &ms), CO_OK);
    assert_int_equal(ms, 30ull * 86400 * 1000);
    assert_int_equal(config_parse_duration("0ms", &ms), CO_OK);
    assert_int_equal(ms, 0);
    assert_int_equal(config_parse_duration("18446744073709551615ms", &ms), CO_OK);
    assert_true(ms == UINT64_MAX);
}

static void parse_duration_invalid(void **state)
{
    static const char *const bad[] = {"",
                                      "5",
                                      "-5s",
                                      "+5s",
                                      "5 s",
                                      " 5s",
                                      "5s ",
                                      "1.5s",
                                      "5S",
                                      "5sec",
                                      "1h30m",
                                      "ms",
                                      "s",
                                      "5ss",
                                      "5us",
                                      "0x5s",
                                      "5d1",
                                      "∞s",
                                      "18446744073709551616ms",
                                      "18446744073709551615s",
                                      "213503982335d"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        uint64_t ms = 777;
        if (config_parse_duration(bad[i], &ms) != CO_ERROR)
            fail_msg("\"%s\" was accepted", bad[i]);
        assert_int_equal(ms, 777);
    }
    assert_int_equal(config_parse_duration(NULL, NULL), CO_ERROR);
}

static void parse_address_valid(void **state)
{
    struct config_addr a;
    assert_int_equal(config_parse_address("10.1.2.3:443", &a), CO_OK);
    assert_string_equal(a.text, "10.1.2.3:443");
    assert_int_equal(a.sa.ss_family, AF_INET);
    assert_int_equal(a.sa_len, sizeof(struct sockaddr_in));
    const struct sockaddr_in *sin = (const struct sockaddr_in *)&a.sa;
    assert_int_equal(ntohs(sin->sin_port), 443);
    assert_int_equal(ntohl(sin->sin_addr.s_addr), 0x0a010203);
    free(a.text);

    assert_int_equal(config_parse_address("[2001:db8::1]:65535", &a), CO_OK);
    assert_string_equal(a.text, "[2001:db8::1]:65535");
    assert_int_equal(a.sa.ss_family, AF_INET6);
    assert_int_equal(a.sa_len, sizeof(struct sockaddr_in6));
    const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)&a.sa;
    assert_int_equal(ntohs(sin6->sin6_port), 65535);
    struct in6_addr want;
    assert_int_equal(inet_pton(AF_INET6, "2001:db8::1", &want), 1);
    assert_memory_equal(&sin6->sin6_addr, &want, sizeof(want));
    free(a.text);

    assert_int_equal(config_parse_address("0.0.0.0:1", &a), CO_OK);
    free(a.text);
    assert_int_equal(config_parse_address("[::]:80", &a), CO_OK);
    free(a.text);
}

static void parse_address_invalid(void **state)
{
    static const char *const bad[] = {"",
                                      ":80",
                                      "127.0.0.1",
                                      "127.0.0.1:",
                                      "127.0.0.1:0",
                                      "127.0.0.1:65536",
                                      "127.0.0.1:123456",
                                      "127.0.0.1:-1",
                                      "127.0.0.1:+80",
                                      "127.0.0.1:8o",
                                      "localhost:80",
                                      "::1:80",
                                      "[::1]",
                                      "[::1]80",
                                      "[]:80",
                                      "[::1:80",
                                      "1.2.3:80",
                                      "1.2.3.4.5:80",
                                      "[127.0.0.1]:80",
                                      "127.0.0.1 :80"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct config_addr a;
        if (config_parse_address(bad[i], &a) != CO_ERROR) {
            free(a.text);
            fail_msg("\"%s\" was accepted", bad[i]);
        }
        assert_null(a.text);
    }
    struct config_addr a;
    assert_int_equal(config_parse_address(NULL, &a), CO_ERROR);
}

static void parse_percent_valid(void **state)
{
    static const struct {
        const char *s;
        uint32_t bp;
    } ok[] = {{"20%", 2000},   {"20", 2000},    {"0.5%", 50}, {"100%", 10000}, {"100", 10000},     {"0", 0},      {"0%", 0},
              {"12.5%", 1250}, {"12.50", 1250}, {"0.01%", 1}, {"99.99", 9999}, {"100.00%", 10000}, {"007%", 700}, {"33.33%", 3333}};
    for (size_t i = 0; i < CO_ARRAY_SIZE(ok); i++) {
        uint32_t bp = 77777;
        if (config_parse_percent(ok[i].s, &bp) != CO_OK)
            fail_msg("\"%s\" was refused", ok[i].s);
        if (bp != ok[i].bp)
            fail_msg("\"%s\" gave %u, expected %u", ok[i].s, bp, ok[i].bp);
    }
    assert_int_equal(config_parse_percent("50%", NULL), CO_OK);
}

static void parse_percent_invalid(void **state)
{
    static const char *const bad[] = {"",
                                      "%",
                                      "-1%",
                                      "-0",
                                      "+5%",
                                      "100.01%",
                                      "101",
                                      "1000%",
                                      "5%%",
                                      "0.001",
                                      "0.005%",
                                      ".5%",
                                      "5.%",
                                      "5 %",
                                      " 5%",
                                      "5% ",
                                      "5.5.5",
                                      "1e2",
                                      "0x10",
                                      "five",
                                      "50%x",
                                      "½%",
                                      "99999999999999999999999%",
                                      "18446744073709551616"};
    for (size_t i = 0; i < CO_ARRAY_SIZE(bad); i++) {
        uint32_t bp = 777;
        if (config_parse_percent(bad[i], &bp) != CO_ERROR)
            fail_msg("\"%s\" was accepted", bad[i]);
        assert_int_equal(bp, 777);
    }
    assert_int_equal(config_parse_percent(NULL, NULL), CO_ERROR);
}

static void parse_time_valid(void **state)
{
    static const struct {
        const char *s;
        int64_t t;
    } ok[] = {{"2026-12-01T09:00:00Z", INT64_C(1796115600)},
              {"1970-01-01T00:00:00Z", 0},
              {"2024-02-29T23:59:59Z", INT64_C(1709251199)},
              {"2000-01-01T00:00:00Z", INT64_C(946684800)},
              {"9999-12-31T23:59:59Z", INT64_C(253402300799)}};
    for (size_t i = 0; i < CO_ARRAY_SIZE(ok); i++) {
        int64_t t = -1;
        if (config_parse_time(ok[i].s, &t) != CO_OK)
            fail_msg("\"%s\" was refused", ok[i].s);
        if (t != ok[i].t)
            fail_msg("\"%s\" gave %" PRId64 ", expected %" PRId64, ok[i].s, t, ok[i].t);
    }
    assert_int_equal(config_parse_time("2026-12-01T09:00:00Z", NULL), CO_OK);
}

static void parse_time_invalid(void **state)
{
    static const char *const bad[] = {"",
                                      "2026-12-01",
                                      "2026-12-01T09:00Z",
                                      "2026-12-01T09:00:00",
                                      "2026-12-01T09:00:00z",
                                      "2026-12-01t09:00:00Z",
                                      "2026-12-01 09:00:00Z",
                                      "2026-12-01T09:00:00+00:00",
                                      "2026-12-01T09:00:00.000Z",
                                      "2026-12-01T09:00:00.5Z",
                                      "2026-13-01T09:00:00Z",
                                      "2026-00-01T09:00:00Z",
                                      "2026-12-00T09:00:00Z",
                                      "2026-12-32T09:00:00Z",
                                      "2026-02-29T09:00:00Z",
                                      "2026-04-31T09:00:00Z",
                                      "2100-02-29T09:00:00Z",
                                      "2026-12-01T24:00:00Z",
                                      "2026-12-01T09:60:00Z",
                                      "2026-12-01T09:00:60Z",
                                      "1969-12-31T23:59:59Z",
                                      "0000-01-01T00:00:00Z",
                                      "26-12-01T09:00:00Z",
                                      "+2026-12-01T09:00:00Z",
                                      "2026-1-01T09:00:00Z",
                                      "2026-12-01T9:00:00Z",
                                      "2026-12-01T09:00:00Z ",
                                      " 2026-12-01T09:00:00Z",
                                      "2026/12/01T09:00:00Z",
                                      "1796115600"};
    for (size_t i = 0; i < CO_ARRAY_SIZE(bad); i++) {
        int64_t t = 777;
        if (config_parse_time(bad[i], &t) != CO_ERROR)
            fail_msg("\"%s\" was accepted", bad[i]);
        assert_int_equal(t, 777);
    }
    assert_int_equal(config_parse_time(NULL, NULL), CO_ERROR);
}

/* ------------------------------------------------------------------------- */
/* Lifetime */

static void refcount(void **state)
{
    struct config *cfg = load_ok(BASE);
    assert_int_equal(atomic_load(&cfg->refcount), 1);
    assert_ptr_equal(config_ref(cfg), cfg);
    assert_ptr_equal(config_ref(cfg), cfg);
    assert_int_equal(atomic_load(&cfg->refcount), 3);
    config_unref(cfg);
    config_unref(cfg);
    assert_int_equal(atomic_load(&cfg->refcount), 1);
    assert_string_equal(cfg->clusters[0].name, "a"); /* still alive */
    config_unref(cfg);                               /* freed: LSan would report a leak otherwise */
    config_unref(NULL);
    assert_null(config_ref(NULL));
}

static void find_cluster(void **state)
{
    struct config *cfg = load_ok(BASE);
    assert_ptr_equal(config_find_cluster(cfg, "a"), &cfg->clusters[0]);
    assert_ptr_equal(config_find_cluster(cfg, "b"), &cfg->clusters[1]);
    assert_null(config_find_cluster(cfg, "c"));
    assert_null(config_find_cluster(cfg, "A"));
    assert_null(config_find_cluster(cfg, NULL));
    config_unref(cfg);
}

static void reload_gives_independent_snapshots(void **state)
{
    struct config *a = load_ok(BASE);
    struct config *b = load_ok(BASE "workers: 2\n");
    assert_ptr_not_equal(a, b);
    assert_ptr_not_equal(a->clusters, b->clusters);
    config_unref(a);
    assert_int_equal(b->workers, 2);
    assert_string_equal(b->routes[0].split[0].cluster->name, "a");
    config_unref(b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(full_config_every_field),
        cmocka_unit_test(minimal_config_defaults),
        cmocka_unit_test(workers_auto_and_number),
        cmocka_unit_test(admin_defaults_address),
        cmocka_unit_test(endpoint_names_not_resolved_at_load),
        cmocka_unit_test(demo_yaml_loads),
        cmocka_unit_test(file_valid_fixture),
        cmocka_unit_test(file_new_keys_fixture),
        cmocka_unit_test(file_error_names_file_line_column),
        cmocka_unit_test(file_missing),
        cmocka_unit_test(file_is_directory),
        cmocka_unit_test(yaml_syntax_error_position),
        cmocka_unit_test(yaml_invalid_utf8),
        cmocka_unit_test(yaml_empty_document),
        cmocka_unit_test(yaml_alias_rejected),
        cmocka_unit_test(yaml_billion_laughs_rejected_fast),
        cmocka_unit_test(yaml_depth_capped),
        cmocka_unit_test(yaml_input_size_capped),
        cmocka_unit_test(yaml_two_documents),
        cmocka_unit_test(yaml_duplicate_key),
        cmocka_unit_test(yaml_complex_key),
        cmocka_unit_test(yaml_nul_in_value),
        cmocka_unit_test(error_is_one_line_and_escaped),
        cmocka_unit_test(error_buffer_small_or_null),
        cmocka_unit_test(unknown_top_level_key),
        cmocka_unit_test(unknown_key_in_split_entry),
        cmocka_unit_test(unknown_keys_everywhere),
        cmocka_unit_test(wrong_types),
        cmocka_unit_test(missing_required_keys_use_mapping_mark),
        cmocka_unit_test(empty_lists),
        cmocka_unit_test(unknown_cluster_in_split),
        cmocka_unit_test(cluster_twice_in_split),
        cmocka_unit_test(split_too_many_entries),
        cmocka_unit_test(split_weights_sum_to_zero),
        cmocka_unit_test(split_weight_values),
        cmocka_unit_test(duplicate_cluster_names),
        cmocka_unit_test(duplicate_route_names),
        cmocka_unit_test(bad_names),
        cmocka_unit_test(duplicate_listener_addresses),
        cmocka_unit_test(bad_listen_addresses),
        cmocka_unit_test(bad_endpoints),
        cmocka_unit_test(bad_endpoint_names_refused),
        cmocka_unit_test(bad_durations_in_config),
        cmocka_unit_test(bad_integers_in_config),
        cmocka_unit_test(bad_protocol),
        cmocka_unit_test(bad_cluster_host),
        cmocka_unit_test(match_host_forms),
        cmocka_unit_test(match_host_bad_wildcards),
        cmocka_unit_test(match_paths),
        cmocka_unit_test(sticky_forms),
        cmocka_unit_test(sticky_errors),
        cmocka_unit_test(override_errors),
        cmocka_unit_test(override_cookie_only),
        cmocka_unit_test(admin_token_empty_rejected),
        cmocka_unit_test(new_keys_defaults),
        cmocka_unit_test(dns_forms),
        cmocka_unit_test(dns_errors),
        cmocka_unit_test(health_forms),
        cmocka_unit_test(health_errors),
        cmocka_unit_test(eject_forms_and_errors),
        cmocka_unit_test(max_connection_age_forms_and_errors),
        cmocka_unit_test(failover_forms),
        cmocka_unit_test(retry_forms),
        cmocka_unit_test(retry_errors),
        cmocka_unit_test(mirror_forms),
        cmocka_unit_test(mirror_errors),
        cmocka_unit_test(ramp_forms),
        cmocka_unit_test(ramp_first_step_and_written_share),
        cmocka_unit_test(ramp_errors),
        cmocka_unit_test(ramp_fingerprint),
        cmocka_unit_test(new_keys_in_unknown_key_lists),
        cmocka_unit_test(env_substitution),
        cmocka_unit_test(env_substitution_not_in_keys_nor_recursive),
        cmocka_unit_test(env_missing_variable),
        cmocka_unit_test(env_empty_secret_rejected),
        cmocka_unit_test(env_bad_syntax),
        cmocka_unit_test(env_result_bounded),
        cmocka_unit_test(parse_duration_valid),
        cmocka_unit_test(parse_duration_invalid),
        cmocka_unit_test(parse_address_valid),
        cmocka_unit_test(parse_address_invalid),
        cmocka_unit_test(parse_percent_valid),
        cmocka_unit_test(parse_percent_invalid),
        cmocka_unit_test(parse_time_valid),
        cmocka_unit_test(parse_time_invalid),
        cmocka_unit_test(refcount),
        cmocka_unit_test(find_cluster),
        cmocka_unit_test(reload_gives_independent_snapshots),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
