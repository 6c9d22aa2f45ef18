/*
 * worker.c - a worker thread: event loop, SO_REUSEPORT listeners, accept
 * limits and drain.
 */
#include "worker.h"

#include <errno.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>

#include "accesslog.h"
#include <stdlib.h>

#include "common.h"
#include "conn_h1.h"
#include "pool.h"

/* How long accepting pauses after EMFILE/ENFILE before trying again. */
#define ACCEPT_PAUSE_MS 100

static void pause_accepting(struct worker *w);

uint64_t worker_random(struct worker *w)
{
    /* xorshift128+ */
    uint64_t s1 = w->rng[0];
    const uint64_t s0 = w->rng[1];
    w->rng[0] = s0;
    s1 ^= s1 << 23;
    w->rng[1] = s1 ^ s0 ^ (s1 >> 17) ^ (s0 >> 26);
    return w->rng[1] + s0;
}

static void on_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int salen, void *arg)
{
    struct worker *w = arg;
    w->n_conns++;
    METRIC_INC(w->metrics.conns_accepted);
    h1conn_accept(w, fd, sa, false);
    if (w->n_conns >= w->cfg->limits.max_connections)
        pause_accepting(w);
}

static void on_resume(evutil_socket_t fd, short what, void *arg)
{
    struct worker *w = arg;
    if (w->draining || w->n_conns >= w->cfg->limits.max_connections)
        return;
    for (size_t i = 0; i < w->n_listeners; i++)
        evconnlistener_enable(w->listeners[i]);
}

static void pause_accepting(struct worker *w)
{
    for (size_t i = 0; i < w->n_listeners; i++)
        evconnlistener_disable(w->listeners[i]);
}

static void on_accept_error(struct evconnlistener *l, void *arg)
{
    struct worker *w = arg;
    int err = EVUTIL_SOCKET_ERROR();
    if (err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM) {
        /* Out of descriptors: stop accepting for a moment instead of spinning
         * on a listener that stays readable. */
        log_warn("worker %u: accept failed: %s; pausing accepts for %d ms", w->id, strerror(err), ACCEPT_PAUSE_MS);
        pause_accepting(w);
        struct timeval tv = {0, ACCEPT_PAUSE_MS * 1000};
        event_base_once(w->base, -1, EV_TIMEOUT, on_resume, w, &tv);
        return;
    }
    log_warn("worker %u: accept failed: %s", w->id, strerror(err));
}

void worker_conn_closed(struct worker *w)
{
    w->n_conns--;
    if (w->draining) {
        if (w->n_conns == 0)
            event_base_loopexit(w->base, NULL);
        return;
    }
    if (w->n_conns + 1 == w->cfg->limits.max_connections)
        on_resume(-1, 0, w);
}

void worker_conn_link(struct worker *w, struct conn_link *link, void (*drain)(struct conn_link *))
{
    link->drain = drain;
    link->next = w->conns.next;
    link->prev = &w->conns;
    w->conns.next->prev = link;
    w->conns.next = link;
}

void worker_conn_unlink(struct conn_link *link)
{
    link->prev->next = link->next;
    link->next->prev = link->prev;
    link->prev = link->next = link;
}

static void on_drain_timeout(evutil_socket_t fd, short what, void *arg)
{
    struct worker *w = arg;
    log_warn("worker %u: drain timeout with %u connections still open; closing them", w->id, w->n_conns);
    event_base_loopexit(w->base, NULL);
}

static void on_stop(evutil_socket_t fd, short what, void *arg)
{
    struct worker *w = arg;
    if (w->draining)
        return;
    w->draining = 1;
    for (size_t i = 0; i < w->n_listeners; i++) {
        evconnlistener_free(w->listeners[i]);
        w->listeners[i] = NULL;
    }
    w->n_listeners = 0;
    /* Tell every connection (a drain callback may close its connection). */
    for (struct conn_link *l = w->conns.next, *next; l != &w->conns; l = next) {
        next = l->next;
        l->drain(l);
    }
    if (w->n_conns == 0) {
        event_base_loopexit(w->base, NULL);
        return;
    }
    uint64_t ms = w->cfg->timeouts.drain_ms;
    struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)((ms % 1000) * 1000)};
    w->drain_timer = evtimer_new(w->base, on_drain_timeout, w);
    evtimer_add(w->drain_timer, &tv);
}

static void on_swap(evutil_socket_t fd, short what, void *arg)
{
    struct worker *w = arg;
    pthread_mutex_lock(&w->swap_lock);
    struct config *cfg = w->pending;
    w->pending = NULL;
    pthread_mutex_unlock(&w->swap_lock);
    if (cfg == NULL)
        return;
    struct decide_wrr *wrr = co_calloc(cfg->n_routes, sizeof(*wrr));
    for (size_t i = 0; i < cfg->n_routes; i++)
        decide_wrr_init(&wrr[i], &cfg->routes[i]);
    free(w->wrr);
    w->wrr = wrr;
    pool_update(w->pool, cfg);
    config_unref(w->cfg);
    w->cfg = cfg;
}

void worker_set_config(struct worker *w, struct config *cfg)
{
    pthread_mutex_lock(&w->swap_lock);
    if (w->pending)
        config_unref(w->pending);
    w->pending = config_ref(cfg);
    pthread_mutex_unlock(&w->swap_lock);
    event_active(w->swap_ev, EV_READ, 1);
}

struct worker *worker_new(unsigned id, struct config *cfg)
{
    struct worker *w = co_calloc(1, sizeof(*w));
    w->id = id;
    w->conns.next = w->conns.prev = &w->conns;
    w->base = event_base_new();
    if (w->base == NULL) {
        log_error("worker %u: event_base_new failed", id);
        free(w);
        return NULL;
    }
    w->cfg = config_ref(cfg);
    if (getrandom(w->rng, sizeof(w->rng), 0) != sizeof(w->rng) || (w->rng[0] | w->rng[1]) == 0) {
        w->rng[0] = co_now_us() ^ ((uint64_t)id << 32);
        w->rng[1] = 0x9e3779b97f4a7c15ull;
    }
    w->wrr = co_calloc(cfg->n_routes, sizeof(*w->wrr));
    for (size_t i = 0; i < cfg->n_routes; i++)
        decide_wrr_init(&w->wrr[i], &cfg->routes[i]);
    w->pool = pool_new(w, cfg);
    w->log = accesslog_new(w);
    w->stop_ev = event_new(w->base, -1, 0, on_stop, w);
    w->swap_ev = event_new(w->base, -1, 0, on_swap, w);
    pthread_mutex_init(&w->swap_lock, NULL);

    w->listeners = co_calloc(cfg->n_listeners, sizeof(*w->listeners));
    for (size_t i = 0; i < cfg->n_listeners; i++) {
        const struct config_addr *a = &cfg->listeners[i].addr;
        struct evconnlistener *l =
            evconnlistener_new_bind(w->base, on_accept, w,
                                    LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC | LEV_OPT_REUSEABLE | LEV_OPT_REUSEABLE_PORT,
                                    1024, (const struct sockaddr *)&a->sa, (int)a->sa_len);
        if (l == NULL) {
            log_error("worker %u: cannot listen on %s: %s", id, a->text, strerror(errno));
            w->n_listeners = i;
            worker_join_free(w);
            return NULL;
        }
        evconnlistener_set_error_cb(l, on_accept_error);
        w->listeners[i] = l;
    }
    w->n_listeners = cfg->n_listeners;
    return w;
}

static void *run(void *arg)
{
    struct worker *w = arg;
    event_base_dispatch(w->base);
    atomic_store(&w->exited, true);
    return NULL;
}

int worker_start(struct worker *w)
{
    if (pthread_create(&w->thread, NULL, run, w) != 0) {
        log_error("worker %u: pthread_create failed", w->id);
        return CO_ERROR;
    }
    return CO_OK;
}

void worker_stop(struct worker *w)
{
    event_active(w->stop_ev, EV_READ, 1);
}

void worker_join_free(struct worker *w)
{
    if (w->thread)
        pthread_join(w->thread, NULL);
    for (size_t i = 0; i < w->n_listeners; i++)
        if (w->listeners[i])
            evconnlistener_free(w->listeners[i]);
    free(w->listeners);
    if (w->drain_timer)
        event_free(w->drain_timer);
    if (w->stop_ev)
        event_free(w->stop_ev);
    if (w->swap_ev)
        event_free(w->swap_ev);
    if (w->pending)
        config_unref(w->pending);
    pthread_mutex_destroy(&w->swap_lock);
    if (w->log)
        accesslog_free(w->log);
    if (w->pool)
        pool_free(w->pool);
    free(w->wrr);
    config_unref(w->cfg);
    event_base_free(w->base);
    free(w);
}
