/*
 * pool.c - per-worker upstream connection pools keyed by cluster and endpoint
 * name, so a config reload keeps warm connections to endpoints that stayed.
 */
#include "pool.h"

#include <string.h>

#include <stdlib.h>

#include "common.h"
#include "upstream_h1.h"
#include "upstream_h2.h"
#include "worker.h"

static struct ep_pool *find_ep(struct pool *p, const char *cluster, const char *endpoint)
{
    for (size_t i = 0; i < p->n_all; i++)
        if (strcmp(p->all[i]->cluster_name, cluster) == 0 && strcmp(p->all[i]->endpoint_name, endpoint) == 0)
            return p->all[i];
    return NULL;
}

static void close_idle(struct ep_pool *ep)
{
    while (!TAILQ_EMPTY(&ep->idle))
        upconn_free(TAILQ_FIRST(&ep->idle)); /* unlinks itself */
#ifdef CUTOVER_H2_UPSTREAM
    upstream_h2_close_idle(ep);
#endif
}

struct pool *pool_new(struct worker *w, const struct config *cfg)
{
    struct pool *p = co_calloc(1, sizeof(*p));
    p->worker = w;
    pool_update(p, cfg);
    return p;
}

void pool_update(struct pool *p, const struct config *cfg)
{
    struct cluster_pool *clusters = co_calloc(cfg->n_clusters, sizeof(*clusters));
    bool *keep = co_calloc(p->n_all + 1, sizeof(bool));
    size_t old_n = p->n_all;

    for (size_t i = 0; i < cfg->n_clusters; i++) {
        const struct cluster_conf *cl = &cfg->clusters[i];
        struct cluster_pool *cp = &clusters[i];
        cp->eps = co_calloc(cl->n_endpoints, sizeof(*cp->eps));
        cp->n_eps = cl->n_endpoints;
        for (size_t j = 0; j < cl->n_endpoints; j++) {
            const struct endpoint_conf *e = &cl->endpoints[j];
            struct ep_pool *ep = find_ep(p, cl->name, e->name);
            if (ep == NULL) {
                ep = co_calloc(1, sizeof(*ep));
                ep->cluster_name = co_strdup(cl->name);
                ep->endpoint_name = co_strdup(e->name);
                TAILQ_INIT(&ep->idle);
                p->all = co_realloc(p->all, (p->n_all + 1) * sizeof(*p->all));
                p->all[p->n_all++] = ep;
            } else {
                for (size_t k = 0; k < old_n; k++)
                    if (p->all[k] == ep)
                        keep[k] = true;
            }
            ep->max_idle = cl->max_idle;
            ep->idle_timeout_ms = cl->idle_timeout_ms;
            ep->retired = false;
            cp->eps[j] = ep;
        }
    }
    /* Endpoints that left the config: close idle connections; active ones
     * finish their exchange and are then closed (their ep pointer stays
     * valid because ep_pools are freed only with the pool). */
    for (size_t k = 0; k < old_n; k++)
        if (!keep[k]) {
            p->all[k]->retired = true;
            close_idle(p->all[k]);
        }
    free(keep);
    for (size_t i = 0; i < p->n_clusters; i++)
        free(p->clusters[i].eps);
    free(p->clusters);
    p->clusters = clusters;
    p->n_clusters = cfg->n_clusters;
    p->cfg = cfg;
}

struct ep_pool *pool_pick(struct pool *p, const struct cluster_conf *cluster, const struct endpoint_conf **endpoint)
{
    if (p->cfg != NULL && cluster->index < p->n_clusters && &p->cfg->clusters[cluster->index] == cluster) {
        struct cluster_pool *cp = &p->clusters[cluster->index];
        size_t i = cp->rr++ % cp->n_eps;
        *endpoint = &cluster->endpoints[i];
        return cp->eps[i];
    }
    /* A stream of an older config snapshot: find by name. */
    const struct endpoint_conf *e = &cluster->endpoints[p->rr++ % cluster->n_endpoints];
    struct ep_pool *ep = find_ep(p, cluster->name, e->name);
    if (ep == NULL) {
        ep = co_calloc(1, sizeof(*ep));
        ep->cluster_name = co_strdup(cluster->name);
        ep->endpoint_name = co_strdup(e->name);
        ep->retired = true; /* not in the current config */
        TAILQ_INIT(&ep->idle);
        p->all = co_realloc(p->all, (p->n_all + 1) * sizeof(*p->all));
        p->all[p->n_all++] = ep;
    }
    *endpoint = e;
    return ep;
}

struct upconn *pool_take_idle(struct ep_pool *ep)
{
    struct upconn *c = TAILQ_FIRST(&ep->idle);
    if (c == NULL)
        return NULL;
    TAILQ_REMOVE(&ep->idle, c, link);
    ep->n_idle--;
    return c;
}

int pool_put_idle(struct ep_pool *ep, struct upconn *c)
{
    if (ep->retired || ep->n_idle >= ep->max_idle)
        return CO_DECLINED;
    TAILQ_INSERT_HEAD(&ep->idle, c, link);
    ep->n_idle++;
    return CO_OK;
}

void pool_remove_idle(struct ep_pool *ep, struct upconn *c)
{
    TAILQ_REMOVE(&ep->idle, c, link);
    ep->n_idle--;
}

void pool_free(struct pool *p)
{
    for (size_t i = 0; i < p->n_all; i++) {
        close_idle(p->all[i]);
#ifdef CUTOVER_H2_UPSTREAM
        upstream_h2_free_all(p->all[i]);
#endif
        free(p->all[i]->cluster_name);
        free(p->all[i]->endpoint_name);
        free(p->all[i]);
    }
    free(p->all);
    for (size_t i = 0; i < p->n_clusters; i++)
        free(p->clusters[i].eps);
    free(p->clusters);
    free(p);
}
