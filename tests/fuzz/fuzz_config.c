/*
 * fuzz_config.c - libFuzzer target for the YAML config loader.
 *
 * Feeds arbitrary bytes to config_load_buffer(); a snapshot that loads is
 * released again, so LeakSanitizer checks both the success and the error
 * paths. config_load never resolves host names (that happens at run time,
 * in proxy/health.c), so the fuzzer never waits on, or sends to, the network.
 *
 *   seed corpus: tests/fuzz/corpus/config/
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "config/config.h"
#include "proxy/common.h"

/* The documented invariants of a loaded snapshot (config.h). */
static bool valid_snapshot(const struct config *cfg)
{
    if (cfg->n_listeners < 1 || cfg->n_clusters < 1 || cfg->n_routes < 1)
        return false;
    if (cfg->dns.min_ttl_ms > cfg->dns.max_ttl_ms || (cfg->dns.n_nameservers > 0) != (cfg->dns.nameservers != NULL))
        return false;
    for (size_t i = 0; i < cfg->n_clusters; i++) {
        const struct cluster_conf *c = &cfg->clusters[i];
        if (c->n_endpoints < 1 || c->health.path == NULL || c->health.path[0] != '/')
            return false;
        if (c->health.timeout_ms >= c->health.interval_ms || c->health.expect_min < 100 ||
            c->health.expect_min > c->health.expect_max || c->health.expect_max > 599)
            return false;
        for (size_t j = 0; j < c->n_endpoints; j++) {
            const struct endpoint_conf *e = &c->endpoints[j];
            /* Names are never resolved at load; literals have exactly one address. */
            if (e->dns ? e->n_addrs != 0 || e->addrs != NULL : e->n_addrs != 1 || e->addrs == NULL)
                return false;
        }
    }
    for (size_t i = 0; i < cfg->n_routes; i++) {
        const struct route_conf *r = &cfg->routes[i];
        if (r->n_split < 1 || r->total_weight == 0 || r->path == NULL)
            return false;
        if (r->retry.attempts > 4 || r->retry.budget > CONFIG_BUCKETS || r->mirror.share > CONFIG_BUCKETS)
            return false;
        const struct ramp_conf *rp = &r->ramp;
        if (!rp->enabled)
            continue;
        if (r->n_split != 2 || rp->n_steps < 1 || rp->n_steps > 64 || rp->hold_ms < 1000)
            return false;
        if (rp->steps[0] < (uint64_t)CONFIG_BUCKETS * r->split[0].weight / r->total_weight)
            return false;
        for (size_t k = 0; k < rp->n_steps; k++)
            if (rp->steps[k] > CONFIG_BUCKETS || (k > 0 && rp->steps[k] < rp->steps[k - 1]))
                return false;
    }
    return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct config *cfg = NULL;
    char err[512];

    if (config_load_buffer("fuzz.yaml", (const char *)data, size, &cfg, err, sizeof(err)) == CO_OK) {
        if (!valid_snapshot(cfg))
            __builtin_trap();
        config_unref(cfg);
    } else if (cfg != NULL || memchr(err, '\n', strnlen(err, sizeof(err))) != NULL) {
        __builtin_trap(); /* errors leave *out NULL and are one line */
    }
    return 0;
}
