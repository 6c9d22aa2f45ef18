/*
 * fuzz_config.c - libFuzzer target for the YAML config loader.
 *
 * Feeds arbitrary bytes to config_load_buffer(); a snapshot that loads is
 * released again, so LeakSanitizer checks both the success and the error
 * paths. Host names resolve through a stub to 127.0.0.1 (numeric, no DNS):
 * a fuzzer must never wait on, or send to, the network.
 *
 *   seed corpus: tests/fuzz/corpus/config/
 */
#include <netdb.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "config/config.h"
#include "proxy/common.h"

/* Names ending in ".invalid" fail (the error path); any other name is 127.0.0.1. */
static int offline_resolver(const char *host, const char *service, const struct addrinfo *hints, struct addrinfo **res)
{
    size_t len = strlen(host);
    if (len >= 8 && strcmp(host + len - 8, ".invalid") == 0)
        return EAI_NONAME;
    struct addrinfo numeric = *hints;
    numeric.ai_flags |= AI_NUMERICHOST;
    return getaddrinfo("127.0.0.1", service, &numeric, res);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static bool initialized;
    struct config *cfg = NULL;
    char err[512];

    if (!initialized) {
        config_set_resolver(offline_resolver);
        initialized = true;
    }
    if (config_load_buffer("fuzz.yaml", (const char *)data, size, &cfg, err, sizeof(err)) == CO_OK) {
        /* A loaded snapshot satisfies the documented invariants. */
        if (cfg->n_listeners < 1 || cfg->n_clusters < 1 || cfg->n_routes < 1)
            __builtin_trap();
        for (size_t i = 0; i < cfg->n_routes; i++)
            if (cfg->routes[i].n_split < 1 || cfg->routes[i].total_weight == 0 || cfg->routes[i].path == NULL)
                __builtin_trap();
        config_unref(cfg);
    } else if (cfg != NULL || memchr(err, '\n', strnlen(err, sizeof(err))) != NULL) {
        __builtin_trap(); /* errors leave *out NULL and are one line */
    }
    return 0;
}
