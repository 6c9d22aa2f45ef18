/*
 * upconnect.c - TCP connect + optional TLS handshake to an upstream endpoint.
 */
#include "upconnect.h"

#include <arpa/inet.h>
#include <errno.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../config/config.h"
#include "../tls/tls.h"
#include "common.h"

struct upconnect {
    struct bufferevent *bev;
    struct event *fail_ev; /* reports an immediate failure from the loop */
    upconnect_cb cb;
    void *arg;
    bool tls;
    int status;
    char addr[64];
    char why[512];
    uint64_t timeout_ms;
};

void upconnect_addr_text(const struct sockaddr *sa, char *out, size_t outlen)
{
    char ip[INET6_ADDRSTRLEN] = "?";
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
        inet_ntop(AF_INET, &in->sin_addr, ip, sizeof(ip));
        snprintf(out, outlen, "%s:%u", ip, ntohs(in->sin_port));
    } else {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
        inet_ntop(AF_INET6, &in6->sin6_addr, ip, sizeof(ip));
        snprintf(out, outlen, "[%s]:%u", ip, ntohs(in6->sin6_port));
    }
}

static void finish(struct upconnect *u, struct bufferevent *bev, const char *alpn)
{
    upconnect_cb cb = u->cb;
    void *arg = u->arg;
    char addr[64], why[512];
    int status = u->status;
    memcpy(addr, u->addr, sizeof(addr));
    memcpy(why, u->why, sizeof(why));
    if (u->fail_ev)
        event_free(u->fail_ev);
    free(u);
    cb(arg, bev, alpn, addr, status, why);
}

static void on_fail_ev(evutil_socket_t fd, short what, void *arg)
{
    struct upconnect *u = arg;
    if (u->bev) {
        bufferevent_free(u->bev);
        u->bev = NULL;
    }
    finish(u, NULL, "");
}

static void on_event(struct bufferevent *bev, short what, void *arg)
{
    struct upconnect *u = arg;
    if (what & BEV_EVENT_CONNECTED) {
        int one = 1;
        setsockopt(bufferevent_getfd(bev), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        bufferevent_setcb(bev, NULL, NULL, NULL, NULL);
        bufferevent_set_timeouts(bev, NULL, NULL);
        const char *alpn = u->tls ? tls_alpn(bufferevent_openssl_get_ssl(bev)) : "";
        u->bev = NULL;
        finish(u, bev, alpn);
        return;
    }
    int err = EVUTIL_SOCKET_ERROR();
    unsigned long ssl_err = u->tls ? bufferevent_get_openssl_error(bev) : 0;
    SSL *ssl = u->tls ? bufferevent_openssl_get_ssl(bev) : NULL;
    bool tls_failed = ssl && (ssl_err != 0 || SSL_get_verify_result(ssl) != X509_V_OK);
    if (what & BEV_EVENT_TIMEOUT) {
        u->status = 503;
        snprintf(u->why, sizeof(u->why), "connect(%s) timed out after %llu ms", u->addr, (unsigned long long)u->timeout_ms);
    } else if (tls_failed) {
        char desc[300];
        tls_describe_failure(ssl, ssl_err, desc, sizeof(desc));
        u->status = 502;
        snprintf(u->why, sizeof(u->why), "TLS handshake with %s failed: %s; no request bytes were sent", u->addr, desc);
    } else if (ssl && (what & BEV_EVENT_EOF)) {
        u->status = 502;
        snprintf(u->why, sizeof(u->why), "TLS handshake with %s failed: the upstream closed the connection", u->addr);
    } else {
        u->status = 503;
        snprintf(u->why, sizeof(u->why), "connect(%s) failed: %s", u->addr,
                 err ? evutil_socket_error_to_string(err) : "connection closed");
    }
    u->bev = NULL;
    bufferevent_free(bev);
    finish(u, NULL, "");
}

struct upconnect *upconnect_start(struct event_base *base, const struct sockaddr *sa, socklen_t sa_len,
                                  const struct endpoint_conf *e, const struct cluster_conf *cl, const char *alpn, upconnect_cb cb,
                                  void *arg)
{
    struct upconnect *u = co_calloc(1, sizeof(*u));
    u->cb = cb;
    u->arg = arg;
    u->timeout_ms = cl->connect_timeout_ms;
    upconnect_addr_text(sa, u->addr, sizeof(u->addr));

    if (cl->tls.enabled) {
        /* SNI and the name checked: tls.sni, else the cluster's Host, else the
         * endpoint's host (cloud load balancers answer to their own name). */
        const char *name = cl->tls.sni ? cl->tls.sni : (cl->host ? cl->host : e->host);
        SSL *ssl = tls_client_ssl_new(cl->tls.ctx, name, name, alpn ? alpn : "http/1.1");
        if (ssl == NULL) {
            u->status = 502;
            snprintf(u->why, sizeof(u->why), "cannot set up TLS to %s (name %s)", u->addr, name);
            u->fail_ev = event_new(base, -1, 0, on_fail_ev, u);
            event_active(u->fail_ev, EV_TIMEOUT, 1);
            return u;
        }
        u->tls = true;
        u->bev = bufferevent_openssl_socket_new(base, -1, ssl, BUFFEREVENT_SSL_CONNECTING,
                                                BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
        /* A close_notify-less close must stay an error upstream: it could hide
         * a truncated close-delimited response. */
    } else {
        u->bev = bufferevent_socket_new(base, -1, BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
    }
    struct timeval tv = {(time_t)(u->timeout_ms / 1000), (suseconds_t)((u->timeout_ms % 1000) * 1000)};
    bufferevent_set_timeouts(u->bev, &tv, &tv);
    bufferevent_setcb(u->bev, NULL, NULL, on_event, u);
    if (bufferevent_socket_connect(u->bev, sa, (int)sa_len) < 0) {
        int err = errno;
        u->status = 503;
        snprintf(u->why, sizeof(u->why), "connect(%s) for endpoint %s failed: %s", u->addr, e->name, strerror(err));
        u->fail_ev = event_new(base, -1, 0, on_fail_ev, u);
        event_active(u->fail_ev, EV_TIMEOUT, 1);
    }
    return u;
}

void upconnect_cancel(struct upconnect *u)
{
    if (u->bev)
        bufferevent_free(u->bev);
    if (u->fail_ev)
        event_free(u->fail_ev);
    free(u);
}
