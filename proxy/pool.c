/*
 * pool.c - per-worker upstream connection pools keyed by cluster and endpoint
 * name, so a config reload keeps warm connections to endpoints that stayed.
 */
#include "pool.h"

#include <string.h>

#include <stdlib.h>

#include "common.h"
#include "upconnect.h"
#include "upstream_h1.h"
#include "upstream_h2.h"
#include "worker.h"

/* An endpoint without shared state (a config that never went through
 * health_attach: the fuzzer, unit harnesses) uses its literal address. */
static void literal_addrs(struct ep_pool *ep, const struct endpoint_conf *e)
{
    if (ep->st != NULL || ep->n_addrs > 0)
        return;
    for (size_t i = 0; i < e->n_addrs && i < EP_MAX_ADDRS; i++) {
        ep->addrs[i] = e->addrs[i];
        ep->addr_lens[i] = e->addr_lens[i];
        upconnect_addr_text((const struct sockaddr *)&ep->addrs[i], ep->addr_text[i], sizeof(ep->addr_text[i]));
        ep->n_addrs = i + 1;
    }
}

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
            ep->max_age_ms = cl->max_connection_age_ms;
            ep->eject = cl->eject;
            ep->st = e->state;
            literal_addrs(ep, e);
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

/* Whether `cluster` belongs to the snapshot the pool was last updated to
 * (streams of an older snapshot may still be running). */
static bool is_current(const struct pool *p, const struct cluster_conf *cluster)
{
    return p->cfg != NULL && cluster->index < p->n_clusters && &p->cfg->clusters[cluster->index] == cluster;
}

static struct ep_pool *ep_for(struct pool *p, const struct cluster_conf *cluster, size_t i)
{
    if (is_current(p, cluster))
        return p->clusters[cluster->index].eps[i];
    /* A stream of an older config snapshot: find by name. */
    const struct endpoint_conf *e = &cluster->endpoints[i];
    struct ep_pool *ep = find_ep(p, cluster->name, e->name);
    if (ep == NULL) {
        ep = co_calloc(1, sizeof(*ep));
        ep->cluster_name = co_strdup(cluster->name);
        ep->endpoint_name = co_strdup(e->name);
        ep->retired = true; /* not in the current config */
        ep->st = e->state;
        literal_addrs(ep, e);
        ep->eject = cluster->eject;
        ep->max_age_ms = cluster->max_connection_age_ms;
        TAILQ_INIT(&ep->idle);
        p->all = co_realloc(p->all, (p->n_all + 1) * sizeof(*p->all));
        p->all[p->n_all++] = ep;
    }
    return ep;
}

struct ep_pool *pool_pick(struct pool *p, const struct cluster_conf *cluster, const struct ep_state *avoid,
                          const struct endpoint_conf **endpoint)
{
    size_t n = cluster->n_endpoints;
    size_t start = is_current(p, cluster) ? p->clusters[cluster->index].rr++ : p->rr++;
    uint64_t now = health_now_ms();
    int usable = -1, avoided = -1, panic = -1;
    for (size_t k = 0; k < n && usable < 0; k++) {
        size_t i = (start + k) % n;
        const struct ep_state *st = cluster->endpoints[i].state;
        if (health_usable(st, now)) {
            if (st == avoid && avoid != NULL) {
                if (avoided < 0)
                    avoided = (int)i;
            } else {
                usable = (int)i;
            }
        } else if (panic < 0 && (st == NULL || atomic_load_explicit(&st->resolved, memory_order_relaxed))) {
            panic = (int)i;
        }
    }
    int i = usable >= 0 ? usable : avoided >= 0 ? avoided : panic;
    if (i < 0)
        return NULL;
    *endpoint = &cluster->endpoints[i];
    return ep_for(p, cluster, (size_t)i);
}

/* If DNS moved the addresses: take the new list and close idle connections to
 * addresses that left (active ones finish their exchange and are not
 * reused: see pool_addr_current). */
static void refresh_addrs(struct ep_pool *ep)
{
    if (ep->st == NULL || !health_addrs(ep->st, &ep->addr_gen, ep->addrs, ep->addr_lens, &ep->n_addrs))
        return;
    for (size_t i = 0; i < ep->n_addrs; i++)
        upconnect_addr_text((const struct sockaddr *)&ep->addrs[i], ep->addr_text[i], sizeof(ep->addr_text[i]));
    struct upconn *c, *next;
    for (c = TAILQ_FIRST(&ep->idle); c; c = next) {
        next = TAILQ_NEXT(c, link);
        if (!pool_addr_current(ep, c->addr))
            upconn_free(c);
    }
#ifdef CUTOVER_H2_UPSTREAM
    upstream_h2_retire_gone(ep);
#endif
}

bool pool_next_addr(struct ep_pool *ep, const struct sockaddr **sa, socklen_t *len)
{
    refresh_addrs(ep);
    if (ep->n_addrs == 0)
        return false;
    size_t i = ep->addr_rr++ % ep->n_addrs;
    *sa = (const struct sockaddr *)&ep->addrs[i];
    *len = ep->addr_lens[i];
    return true;
}

bool pool_addr_current(const struct ep_pool *ep, const char *addr)
{
    for (size_t i = 0; i < ep->n_addrs; i++)
        if (strcmp(ep->addr_text[i], addr) == 0)
            return true;
    return false;
}

bool pool_young(const struct ep_pool *ep, uint64_t born_ms)
{
    return ep->max_age_ms == 0 || health_now_ms() - born_ms < ep->max_age_ms;
}

struct upconn *pool_take_idle(struct ep_pool *ep)
{
    refresh_addrs(ep);
    struct upconn *c;
    while ((c = TAILQ_FIRST(&ep->idle)) != NULL) {
        if (!pool_young(ep, c->born_ms)) {
            upconn_free(c); /* unlinks itself */
            continue;
        }
        TAILQ_REMOVE(&ep->idle, c, link);
        ep->n_idle--;
        return c;
    }
    return NULL;
}

int pool_put_idle(struct ep_pool *ep, struct upconn *c)
{
    if (ep->retired || ep->n_idle >= ep->max_idle || !pool_young(ep, c->born_ms) || !pool_addr_current(ep, c->addr))
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
