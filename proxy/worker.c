/*
 * worker.c - a worker thread: event loop, SO_REUSEPORT listeners, accept
 * limits and drain.
 */
#include "worker.h"

#include <errno.h>
#include <arpa/inet.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

#include "accesslog.h"
#include <stdlib.h>

#include "common.h"
#include "conn_h1.h"
#include "conn_h2.h"
#include "mirror.h"
#include "../tls/tls.h"
#include "pool.h"
#include "stream.h"

/* How long accepting pauses after EMFILE/ENFILE before trying again. */
#define ACCEPT_PAUSE_MS 100

static void pause_accepting(struct worker *w);
static void wlistener_free(struct wlistener *wl);

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

/* A TLS handshake in progress (before we know h1 or h2 from ALPN). */
struct handshake {
    struct conn_link link; /* first */
    struct worker *worker;
    struct bufferevent *bev;
    struct event *deadline; /* the whole handshake, however slowly it trickles */
    char client_ip[INET6_ADDRSTRLEN];
};

static void handshake_free(struct handshake *hs, bool close_bev)
{
    worker_conn_unlink(&hs->link);
    event_free(hs->deadline);
    if (close_bev)
        bufferevent_free(hs->bev);
    free(hs);
}

static void on_handshake_deadline(evutil_socket_t fd, short what, void *arg)
{
    struct handshake *hs = arg;
    struct worker *w = hs->worker;
    log_info("client %s: TLS handshake failed: no handshake within %llu ms; connection closed", hs->client_ip,
             (unsigned long long)w->cfg->timeouts.handshake_ms);
    METRIC_INC(w->metrics.tls_handshake_failures);
    handshake_free(hs, true);
    worker_conn_closed(w);
}

static void on_handshake(struct bufferevent *bev, short what, void *arg)
{
    struct handshake *hs = arg;
    struct worker *w = hs->worker;
    if (what & BEV_EVENT_CONNECTED) {
        SSL *ssl = bufferevent_openssl_get_ssl(bev);
        bool h2 = strcmp(tls_alpn(ssl), "h2") == 0;
        bufferevent_set_timeouts(bev, NULL, NULL);
        char ip[INET6_ADDRSTRLEN];
        memcpy(ip, hs->client_ip, sizeof(ip));
        handshake_free(hs, false);
        if (h2)
            h2conn_start(w, bev, ip, true);
        else
            h1conn_start(w, bev, ip, true);
        return;
    }
    char why[256];
    if (what & BEV_EVENT_TIMEOUT)
        snprintf(why, sizeof(why), "no handshake within %llu ms", (unsigned long long)w->cfg->timeouts.handshake_ms);
    else
        tls_describe_failure(bufferevent_openssl_get_ssl(bev), bufferevent_get_openssl_error(bev), why, sizeof(why));
    log_info("client %s: TLS handshake failed: %s; connection closed", hs->client_ip, why);
    METRIC_INC(w->metrics.tls_handshake_failures);
    handshake_free(hs, true);
    worker_conn_closed(w);
}

static void handshake_drain(struct conn_link *link)
{
    /* Let it finish: the HTTP side will see the drain flag. */
}

static void handshake_kill(struct conn_link *link)
{
    struct handshake *hs = (struct handshake *)link;
    struct worker *w = hs->worker;
    handshake_free(hs, true);
    worker_conn_closed(w);
}

static void client_ip_text(const struct sockaddr *sa, char *out, size_t outlen)
{
    out[0] = '\0';
    if (sa->sa_family == AF_INET)
        inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, out, (socklen_t)outlen);
    else if (sa->sa_family == AF_INET6)
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, out, (socklen_t)outlen);
}

static void on_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int salen, void *arg)
{
    struct wlistener *wl = arg;
    struct worker *w = wl->worker;
    w->n_conns++;
    METRIC_INC(w->metrics.conns_accepted);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    char ip[INET6_ADDRSTRLEN];
    client_ip_text(sa, ip, sizeof(ip));
    if (wl->tls_ctx) {
        SSL *ssl = SSL_new(wl->tls_ctx);
        struct bufferevent *bev =
            bufferevent_openssl_socket_new(w->base, fd, ssl, BUFFEREVENT_SSL_ACCEPTING, BEV_OPT_CLOSE_ON_FREE);
        /* Clients that close without close_notify are common; the HTTP
         * framing, not the TLS close, tells us whether a request was whole. */
        bufferevent_openssl_set_allow_dirty_shutdown(bev, 1);
        struct handshake *hs = co_calloc(1, sizeof(*hs));
        hs->worker = w;
        hs->bev = bev;
        worker_conn_link(w, &hs->link, handshake_drain, handshake_kill);
        memcpy(hs->client_ip, ip, sizeof(ip));
        /* A deadline for the whole handshake (bufferevent timeouts restart
         * on every byte: a trickling client would never hit them). */
        uint64_t ms = w->cfg->timeouts.handshake_ms;
        struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)((ms % 1000) * 1000)};
        hs->deadline = evtimer_new(w->base, on_handshake_deadline, hs);
        evtimer_add(hs->deadline, &tv);
        bufferevent_setcb(bev, NULL, NULL, on_handshake, hs);
        bufferevent_enable(bev, EV_READ | EV_WRITE);
    } else {
        h1conn_start(w, bufferevent_socket_new(w->base, fd, BEV_OPT_CLOSE_ON_FREE), ip, false);
    }
    if (w->n_conns >= w->cfg->limits.max_connections)
        pause_accepting(w);
}

static void on_resume(evutil_socket_t fd, short what, void *arg)
{
    struct worker *w = arg;
    if (w->draining || w->n_conns >= w->cfg->limits.max_connections)
        return;
    for (size_t i = 0; i < w->n_listeners; i++)
        evconnlistener_enable(w->listeners[i]->listener);
}

static void pause_accepting(struct worker *w)
{
    for (size_t i = 0; i < w->n_listeners; i++)
        evconnlistener_disable(w->listeners[i]->listener);
}

static void on_accept_error(struct evconnlistener *l, void *arg)
{
    struct wlistener *wl = arg;
    struct worker *w = wl->worker;
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

void worker_conn_link(struct worker *w, struct conn_link *link, void (*drain)(struct conn_link *), void (*kill)(struct conn_link *))
{
    link->drain = drain;
    link->kill = kill;
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
    for (size_t i = 0; i < w->n_listeners; i++)
        wlistener_free(w->listeners[i]);
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

int worker_bind(const struct config_addr *a, char *err, size_t errlen)
{
    int fd = socket(a->sa.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    if (fd < 0) {
        snprintf(err, errlen, "socket() for %s: %s", a->text, strerror(errno));
        return -1;
    }
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
    if (a->sa.ss_family == AF_INET6)
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
    if (bind(fd, (const struct sockaddr *)&a->sa, a->sa_len) != 0 || listen(fd, 1024) != 0) {
        snprintf(err, errlen, "cannot listen on %s: %s", a->text, strerror(errno));
        close(fd);
        return -1;
    }
    return fd;
}

/* Wrap a listening socket (owned from now on) for listener config lc. */
static struct wlistener *wlistener_new(struct worker *w, const struct listener_conf *lc, int fd)
{
    struct wlistener *wl = co_calloc(1, sizeof(*wl));
    wl->worker = w;
    wl->address = co_strdup(lc->addr.text);
    if (lc->ctx) {
        SSL_CTX_up_ref(lc->ctx);
        wl->tls_ctx = lc->ctx;
    }
    wl->listener = evconnlistener_new(w->base, on_accept, wl, LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC, -1, fd);
    evconnlistener_set_error_cb(wl->listener, on_accept_error);
    return wl;
}

static void wlistener_free(struct wlistener *wl)
{
    if (wl->listener)
        evconnlistener_free(wl->listener);
    if (wl->tls_ctx)
        SSL_CTX_free(wl->tls_ctx);
    free(wl->address);
    free(wl);
}

/* Index the labelled counters by the config's route/split and cluster
 * positions (entries carry over by name). */
static void index_stats(struct worker *w, const struct config *cfg)
{
    free(w->rs_index);
    free(w->cs_index);
    w->rs_index = co_calloc(cfg->n_routes * DECIDE_MAX_SPLIT, sizeof(*w->rs_index));
    w->cs_index = co_calloc(cfg->n_clusters, sizeof(*w->cs_index));
    for (size_t r = 0; r < cfg->n_routes; r++)
        for (size_t k = 0; k < cfg->routes[r].n_split && k < DECIDE_MAX_SPLIT; k++)
            w->rs_index[r * DECIDE_MAX_SPLIT + k] =
                stats_route(w->stats, cfg->routes[r].name, cfg->routes[r].split[k].cluster->name);
    for (size_t c = 0; c < cfg->n_clusters; c++)
        w->cs_index[c] = stats_cluster(w->stats, cfg->clusters[c].name);
}

static void on_swap(evutil_socket_t fd, short what, void *arg)
{
    struct worker *w = arg;
    pthread_mutex_lock(&w->swap_lock);
    struct config *cfg = w->pending;
    int *fds = w->pending_fds;
    w->pending = NULL;
    w->pending_fds = NULL;
    pthread_mutex_unlock(&w->swap_lock);
    if (cfg == NULL)
        return;
    stream_worker_routes(w, cfg);
    pool_update(w->pool, cfg);
    index_stats(w, cfg);
    /* Listeners: those whose address stayed keep their socket (no refused
     * connection during a reload) and take the new certificates; new ones
     * use the socket the main thread bound; removed ones close (connections
     * they accepted go on). */
    struct wlistener **next = co_calloc(cfg->n_listeners ? cfg->n_listeners : 1, sizeof(*next));
    size_t n_next = 0;
    for (size_t j = 0; j < cfg->n_listeners && !w->draining; j++) {
        const struct listener_conf *lc = &cfg->listeners[j];
        struct wlistener *wl = NULL;
        for (size_t i = 0; i < w->n_listeners; i++)
            if (w->listeners[i] && strcmp(w->listeners[i]->address, lc->addr.text) == 0) {
                wl = w->listeners[i];
                w->listeners[i] = NULL;
                break;
            }
        if (wl) {
            if (wl->tls_ctx)
                SSL_CTX_free(wl->tls_ctx);
            wl->tls_ctx = NULL;
            if (lc->ctx) {
                SSL_CTX_up_ref(lc->ctx);
                wl->tls_ctx = lc->ctx;
            }
        } else {
            int lfd = fds && fds[j] >= 0 ? fds[j] : -1;
            if (fds)
                fds[j] = -1;
            if (lfd < 0) {
                char err[256];
                lfd = worker_bind(&lc->addr, err, sizeof(err));
                if (lfd < 0) {
                    log_error("worker %u: reload: %s; that listener stays closed", w->id, err);
                    continue;
                }
            }
            wl = wlistener_new(w, lc, lfd);
            log_info("worker %u: now listening on %s", w->id, lc->addr.text);
        }
        next[n_next++] = wl;
    }
    for (size_t i = 0; i < w->n_listeners; i++)
        if (w->listeners[i]) {
            log_info("worker %u: stopped listening on %s", w->id, w->listeners[i]->address);
            wlistener_free(w->listeners[i]);
        }
    free(w->listeners);
    w->listeners = next;
    w->n_listeners = n_next;
    if (fds) {
        for (size_t j = 0; j < cfg->n_listeners; j++)
            if (fds[j] >= 0)
                close(fds[j]);
        free(fds);
    }
    config_unref(w->cfg);
    w->cfg = cfg;
}

static void drop_pending(struct worker *w)
{
    if (w->pending_fds) {
        for (size_t j = 0; j < w->pending->n_listeners; j++)
            if (w->pending_fds[j] >= 0)
                close(w->pending_fds[j]);
        free(w->pending_fds);
        w->pending_fds = NULL;
    }
    if (w->pending)
        config_unref(w->pending);
    w->pending = NULL;
}

static void worker_notify(struct worker *w)
{
    uint64_t one = 1;
    ssize_t r = write(w->notify_fd, &one, sizeof(one));
    (void)r; /* a full counter (EAGAIN) already means "wake up" */
}

/* The main thread poked us: a new config and/or a stop request. */
static void on_notify(evutil_socket_t fd, short what, void *arg)
{
    struct worker *w = arg;
    uint64_t n;
    ssize_t r = read(fd, &n, sizeof(n));
    (void)r;
    on_swap(-1, 0, w);
    if (atomic_load(&w->stop_requested))
        on_stop(-1, 0, w);
}

void worker_set_config(struct worker *w, struct config *cfg, int *fds)
{
    pthread_mutex_lock(&w->swap_lock);
    drop_pending(w);
    w->pending = config_ref(cfg);
    w->pending_fds = fds;
    pthread_mutex_unlock(&w->swap_lock);
    worker_notify(w);
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
    stream_worker_routes(w, cfg);
    w->pool = pool_new(w, cfg);
    w->stats = stats_table_new();
    index_stats(w, cfg);
    w->log = accesslog_new(w);
    w->notify_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    w->notify_ev = event_new(w->base, w->notify_fd, EV_READ | EV_PERSIST, on_notify, w);
    event_add(w->notify_ev, NULL);
    pthread_mutex_init(&w->swap_lock, NULL);

    w->listeners = co_calloc(cfg->n_listeners, sizeof(*w->listeners));
    for (size_t i = 0; i < cfg->n_listeners; i++) {
        char err[256];
        int fd = worker_bind(&cfg->listeners[i].addr, err, sizeof(err));
        if (fd < 0) {
            log_error("worker %u: %s", id, err);
            worker_join_free(w);
            return NULL;
        }
        w->listeners[i] = wlistener_new(w, &cfg->listeners[i], fd);
        w->n_listeners = i + 1;
    }
    w->n_listeners = cfg->n_listeners;
    return w;
}

static void *run(void *arg)
{
    struct worker *w = arg;
    event_base_dispatch(w->base);
    /* Past the drain timeout: close what is left, so every exchange is
     * logged and nothing is left half-owned at exit. */
    while (w->conns.next != &w->conns)
        w->conns.next->kill(w->conns.next);
    mirror_worker_free(w); /* shadow copies still in flight */
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
    atomic_store(&w->stop_requested, true);
    worker_notify(w);
}

void worker_join_free(struct worker *w)
{
    if (w->thread)
        pthread_join(w->thread, NULL);
    for (size_t i = 0; i < w->n_listeners; i++)
        if (w->listeners[i])
            wlistener_free(w->listeners[i]);
    free(w->listeners);
    if (w->drain_timer)
        event_free(w->drain_timer);
    if (w->notify_ev)
        event_free(w->notify_ev);
    if (w->notify_fd > 0)
        close(w->notify_fd);
    drop_pending(w);
    pthread_mutex_destroy(&w->swap_lock);
    if (w->log)
        accesslog_free(w->log);
    if (w->pool)
        pool_free(w->pool);
    free(w->wrr);
    free(w->budgets);
    free(w->ramp_seen);
    free(w->rs_index);
    free(w->cs_index);
    if (w->stats)
        stats_table_free(w->stats);
    config_unref(w->cfg);
    event_base_free(w->base);
    free(w);
}
