/*
 * router.c - choose the route for a request: first match on host + path.
 *
 * Runs once per request on a worker, so it allocates nothing and copies
 * nothing: the Host value is narrowed in place to its name part, then every
 * route is compared in config order with an ASCII case-insensitive compare.
 */
#include "router.h"

#include <stdbool.h>
#include <string.h>

/* ASCII lowercase; host names are compared without the locale (RFC 4343). */
static inline unsigned char ascii_lower(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') ? (unsigned char)(c + ('a' - 'A')) : c;
}

static bool ascii_ieq(const char *a, const char *b, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (ascii_lower((unsigned char)a[i]) != ascii_lower((unsigned char)b[i]))
            return false;
    }
    return true;
}

/*
 * Narrow a host value to the name that routes compare against:
 *   "[::1]:8080" -> "::1"  (RFC 3986 §3.2.2: an IPv6 literal is bracketed and
 *                           its port, if any, follows the "]")
 *   "Example.COM.:443" -> "Example.COM"  (port stripped, one trailing dot of a
 *                                          fully qualified name ignored)
 * A value with two or more ':' and no brackets is not host:port; it is left
 * as it is (it will simply not match a named route).
 */
static void host_name(const char **host, size_t *len)
{
    const char *h = *host;
    size_t n = *len;

    if (n > 0 && h[0] == '[') {
        const char *close = memchr(h, ']', n);
        if (close != NULL) {
            *host = h + 1;
            *len = (size_t)(close - h) - 1;
            return;
        }
        return; /* unterminated literal: compare as given */
    }

    const char *colon = memchr(h, ':', n);
    if (colon != NULL) {
        size_t rest = n - (size_t)(colon - h) - 1;
        if (memchr(colon + 1, ':', rest) == NULL)
            n = (size_t)(colon - h);
    }
    if (n > 1 && h[n - 1] == '.')
        n--;
    *len = n;
}

/* Does the request host name (already narrowed) satisfy the route's host? */
static bool host_matches(const struct route_conf *route, const char *name, size_t name_len)
{
    const char *want = route->host;
    size_t want_len = strlen(want);

    /* The loader stores names lowercase and "*.x" as ".x"; tolerate a
     * bracketed IPv6 literal or a trailing dot as written in the config. */
    if (want_len >= 2 && want[0] == '[' && want[want_len - 1] == ']') {
        want++;
        want_len -= 2;
    } else if (want_len > 1 && want[want_len - 1] == '.') {
        want_len--;
    }

    if (route->host_suffix) {
        /* ".example.com" needs at least one byte of label in front of it. */
        return name_len > want_len && ascii_ieq(name + (name_len - want_len), want, want_len);
    }
    return name_len == want_len && ascii_ieq(name, want, want_len);
}

static bool path_matches(const struct route_conf *route, const char *path, size_t path_len)
{
    if (route->path == NULL)
        return true; /* loader default is prefix "/"; treat an unset path the same */
    size_t want_len = strlen(route->path);
    if (route->path_exact)
        return path_len == want_len && memcmp(path, route->path, want_len) == 0;
    return path_len >= want_len && memcmp(path, route->path, want_len) == 0;
}

const struct route_conf *router_match(const struct config *cfg, const char *host, size_t host_len, const char *path,
                                      size_t path_len)
{
    if (cfg == NULL)
        return NULL;
    if (host == NULL)
        host_len = 0;
    if (path == NULL) {
        path = "";
        path_len = 0;
    }

    const char *name = host;
    size_t name_len = host_len;
    if (name_len > 0)
        host_name(&name, &name_len);

    /* RFC 9110 §4.2.2 / RFC 3986 §3.4: the query is not part of the path. */
    if (path_len > 0) {
        const char *q = memchr(path, '?', path_len);
        if (q != NULL)
            path_len = (size_t)(q - path);
    }

    for (size_t i = 0; i < cfg->n_routes; i++) {
        const struct route_conf *route = &cfg->routes[i];
        if (route->host != NULL && !host_matches(route, name, name_len))
            continue;
        if (!path_matches(route, path, path_len))
            continue;
        return route;
    }
    return NULL;
}
