/*
 * router.h - choose the route for a request: first match on host + path.
 */
#ifndef CUTOVER_ROUTER_H
#define CUTOVER_ROUTER_H

#include <stddef.h>

#include "../config/config.h"

/*
 * Return the first route of cfg (in config order) whose match accepts the
 * request, or NULL (the caller answers 404).
 *   host: the Host / :authority value as received; a ":port" suffix is
 *         ignored, comparison is case-insensitive, a trailing dot is ignored.
 *         Route host "*.example.com" matches any name ending in ".example.com"
 *         (at least one label before it). A route without host matches all.
 *   path: the request target path (query string, if any, is ignored for
 *         matching). path_exact: equal; otherwise prefix match on bytes.
 */
const struct route_conf *router_match(const struct config *cfg, const char *host, size_t host_len, const char *path,
                                      size_t path_len);

#endif
