/*
 * router_test.c - unit tests for proxy/router.c (router_match).
 *
 * Configs are built by hand so these tests do not depend on the YAML loader.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "proxy/router.h"

#define MAX_ROUTES 8

struct fixture {
    struct config cfg;
    struct route_conf routes[MAX_ROUTES];
};

static struct fixture fx;

/* Append a route. host: NULL = any; "*.x" is stored as the loader does
 * (host_suffix, ".x"). path: prefix unless exact. */
static const struct route_conf *add_route(const char *name, const char *host, const char *path, bool exact)
{
    assert_true(fx.cfg.n_routes < MAX_ROUTES);
    struct route_conf *r = &fx.routes[fx.cfg.n_routes];
    memset(r, 0, sizeof(*r));
    r->name = (char *)name;
    r->index = fx.cfg.n_routes;
    if (host != NULL && host[0] == '*') {
        r->host = (char *)host + 1;
        r->host_suffix = true;
    } else {
        r->host = (char *)host;
    }
    r->path = (char *)path;
    r->path_exact = exact;
    fx.cfg.routes = fx.routes;
    fx.cfg.n_routes++;
    return r;
}

static int setup(void **state)
{
    (void)state;
    memset(&fx, 0, sizeof(fx));
    return 0;
}

static const struct route_conf *match(const char *host, const char *path)
{
    return router_match(&fx.cfg, host, host != NULL ? strlen(host) : 0, path, path != NULL ? strlen(path) : 0);
}

static void test_exact_host(void **state)
{
    (void)state;
    const struct route_conf *r = add_route("api", "api.example.com", "/", false);
    assert_ptr_equal(match("api.example.com", "/"), r);
    assert_ptr_equal(match("api.example.com", "/users/7"), r);
    assert_null(match("www.example.com", "/"));
    assert_null(match("example.com", "/"));
}

static void test_exact_host_is_not_suffix(void **state)
{
    (void)state;
    add_route("api", "example.com", "/", false);
    assert_null(match("api.example.com", "/"));
    assert_null(match("badexample.com", "/"));
    assert_null(match("example.co", "/"));
    assert_null(match("example.com.evil", "/"));
}

static void test_suffix_wildcard(void **state)
{
    (void)state;
    const struct route_conf *r = add_route("wild", "*.example.com", "/", false);
    assert_ptr_equal(match("a.example.com", "/"), r);
    assert_ptr_equal(match("a.b.example.com", "/"), r);
    assert_ptr_equal(match("x.example.com:8443", "/"), r);
    assert_ptr_equal(match("X.Example.COM.", "/"), r);
}

static void test_suffix_needs_a_label(void **state)
{
    (void)state;
    add_route("wild", "*.example.com", "/", false);
    assert_null(match("example.com", "/"));
    assert_null(match(".example.com", "/"));
    assert_null(match("badexample.com", "/"));
    assert_null(match("a.example.org", "/"));
    assert_null(match("", "/"));
}

static void test_port_ignored(void **state)
{
    (void)state;
    const struct route_conf *r = add_route("api", "api.example.com", "/", false);
    assert_ptr_equal(match("api.example.com:8080", "/"), r);
    assert_ptr_equal(match("api.example.com:443", "/"), r);
    assert_ptr_equal(match("api.example.com:", "/"), r);
    assert_null(match("api.example.co:m", "/"));
}

static void test_ipv4_literal_with_port(void **state)
{
    (void)state;
    const struct route_conf *r = add_route("ip", "10.0.0.4", "/", false);
    assert_ptr_equal(match("10.0.0.4:8080", "/"), r);
    assert_ptr_equal(match("10.0.0.4", "/"), r);
    assert_null(match("10.0.0.40", "/"));
}

static void test_ipv6_literal(void **state)
{
    (void)state;
    const struct route_conf *r = add_route("v6", "::1", "/", false);
    assert_ptr_equal(match("[::1]:8080", "/"), r);
    assert_ptr_equal(match("[::1]", "/"), r);
    assert_null(match("[::2]:8080", "/"));
    assert_null(match("[::1:8080]", "/")); /* the port is only after "]" */
}

static void test_ipv6_route_written_bracketed(void **state)
{
    (void)state;
    const struct route_conf *r = add_route("v6", "[2001:db8::1]", "/", false);
    assert_ptr_equal(match("[2001:db8::1]:443", "/"), r);
    assert_ptr_equal(match("[2001:DB8::1]", "/"), r);
    assert_null(match("[2001:db8::2]", "/"));
}

static void test_ipv6_unbracketed_not_split(void **state)
{
    (void)state;
    add_route("v6", "2001:db8", "/", false);
    add_route("v6-head", "2001", "/", false);
    /* Several ':' without brackets is not host:port; nothing is stripped. */
    assert_null(match("2001:db8::1", "/"));
}

static void test_trailing_dot(void **state)
{
    (void)state;
    const struct route_conf *r = add_route("api", "api.example.com", "/", false);
    assert_ptr_equal(match("api.example.com.", "/"), r);
    assert_ptr_equal(match("api.example.com.:8080", "/"), r);
    assert_null(match("api.example.com..", "/")); /* only one dot is ignored */
}

static void test_route_host_with_trailing_dot(void **state)
{
    (void)state;
    const struct route_conf *r = add_route("api", "api.example.com.", "/", false);
    assert_ptr_equal(match("api.example.com", "/"), r);
    assert_ptr_equal(match("api.example.com.", "/"), r);
}

static void test_host_case_insensitive(void **state)
{
    (void)state;
    const struct route_conf *r = add_route("api", "api.example.com", "/", false);
    assert_ptr_equal(match("API.Example.Com", "/"), r);
    assert_ptr_equal(match("api.EXAMPLE.COM:80", "/"), r);
}

static void test_path_prefix(void **state)
{
    (void)state;
    const struct route_conf *r = add_route("api", NULL, "/api/", false);
    assert_ptr_equal(match("h", "/api/"), r);
    assert_ptr_equal(match("h", "/api/v1/users"), r);
    assert_null(match("h", "/api"));
    assert_null(match("h", "/API/v1"));  /* paths are case-sensitive */
    assert_null(match("h", "/v1/api/")); /* prefix, not substring */
}

static void test_path_prefix_is_bytes(void **state)
{
    (void)state;
    const struct route_conf *r = add_route("api", NULL, "/api", false);
    assert_ptr_equal(match("h", "/api"), r);
    assert_ptr_equal(match("h", "/apix"), r); /* documented: byte prefix */
}

static void test_path_exact(void **state)
{
    (void)state;
    const struct route_conf *r = add_route("health", NULL, "/health", true);
    assert_ptr_equal(match("h", "/health"), r);
    assert_null(match("h", "/health/"));
    assert_null(match("h", "/healthz"));
    assert_null(match("h", "/heal"));
    assert_null(match("h", "/"));
}

static void test_query_ignored(void **state)
{
    (void)state;
    const struct route_conf *exact = add_route("health", NULL, "/health", true);
    const struct route_conf *prefix = add_route("v2", NULL, "/api/v2", false);
    assert_ptr_equal(match("h", "/health?verbose=1"), exact);
    assert_ptr_equal(match("h", "/health?"), exact);
    assert_ptr_equal(match("h", "/api/v2/x?y=1"), prefix);
    /* The query must not satisfy the path. */
    assert_null(match("h", "/api?next=/api/v2"));
    assert_null(match("h", "/?/health"));
}

static void test_first_match_wins(void **state)
{
    (void)state;
    const struct route_conf *a = add_route("a", "api.example.com", "/api/", false);
    const struct route_conf *b = add_route("b", "*.example.com", "/", false);
    const struct route_conf *c = add_route("c", NULL, "/", false);
    assert_ptr_equal(match("api.example.com", "/api/x"), a);
    assert_ptr_equal(match("api.example.com", "/other"), b); /* host ok, path not: next route */
    assert_ptr_equal(match("www.example.com", "/api/x"), b);
    assert_ptr_equal(match("other.org", "/api/x"), c);
}

static void test_order_matters(void **state)
{
    (void)state;
    const struct route_conf *catchall = add_route("all", NULL, "/", false);
    add_route("api", "api.example.com", "/api/", false);
    assert_ptr_equal(match("api.example.com", "/api/x"), catchall);
}

static void test_no_route(void **state)
{
    (void)state;
    add_route("a", "a.example.com", "/", false);
    add_route("b", NULL, "/b/", false);
    assert_null(match("c.example.com", "/"));
    assert_null(match("a.example.org", "/b"));
}

static void test_route_without_host(void **state)
{
    (void)state;
    const struct route_conf *r = add_route("any", NULL, "/", false);
    assert_ptr_equal(match("anything.test", "/"), r);
    assert_ptr_equal(match("[::1]:1", "/x"), r);
    assert_ptr_equal(match("", "/"), r);
    assert_ptr_equal(match(NULL, "/"), r);
}

static void test_missing_host_needs_hostless_route(void **state)
{
    (void)state;
    add_route("named", "api.example.com", "/", false);
    assert_null(match(NULL, "/"));
    assert_null(match("", "/"));
    assert_null(match(":8080", "/"));
}

static void test_lengths_respected(void **state)
{
    (void)state;
    const struct route_conf *r = add_route("api", "api.example.com", "/health", true);
    /* Buffers are not NUL-terminated where the lengths end. */
    const char host[] = "api.example.comXYZ";
    const char path[] = "/healthXYZ";
    assert_ptr_equal(router_match(&fx.cfg, host, 15, path, 7), r);
    assert_null(router_match(&fx.cfg, host, 16, path, 7));
    assert_null(router_match(&fx.cfg, host, 15, path, 8));
    assert_null(router_match(&fx.cfg, host, 14, path, 7));
}

static void test_empty_path(void **state)
{
    (void)state;
    add_route("root", NULL, "/", false);
    const struct route_conf *all = add_route("all", NULL, "", false);
    assert_ptr_equal(match("h", ""), all);
    assert_ptr_equal(router_match(&fx.cfg, "h", 1, NULL, 0), all);
}

static void test_null_config(void **state)
{
    (void)state;
    assert_null(router_match(NULL, "h", 1, "/", 1));
    assert_null(match("h", "/")); /* zero routes */
}

#define T(f) cmocka_unit_test_setup(f, setup)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_exact_host),
        T(test_exact_host_is_not_suffix),
        T(test_suffix_wildcard),
        T(test_suffix_needs_a_label),
        T(test_port_ignored),
        T(test_ipv4_literal_with_port),
        T(test_ipv6_literal),
        T(test_ipv6_route_written_bracketed),
        T(test_ipv6_unbracketed_not_split),
        T(test_trailing_dot),
        T(test_route_host_with_trailing_dot),
        T(test_host_case_insensitive),
        T(test_path_prefix),
        T(test_path_prefix_is_bytes),
        T(test_path_exact),
        T(test_query_ignored),
        T(test_first_match_wins),
        T(test_order_matters),
        T(test_no_route),
        T(test_route_without_host),
        T(test_missing_host_needs_hostless_route),
        T(test_lengths_respected),
        T(test_empty_path),
        T(test_null_config),
    };
    return cmocka_run_group_tests_name("router", tests, NULL, NULL);
}
