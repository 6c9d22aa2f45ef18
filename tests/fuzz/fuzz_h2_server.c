/*
 * fuzz_h2_server.c - bytes from an untrusted client into the proxy's HTTP/2
 * server side: a real worker, the real nghttp2 session and callbacks of
 * proxy/conn_h2.c, the stream path (router, decision, 404/400 answers), over
 * an in-memory bufferevent pair instead of a socket.
 *
 * The config routes only host "upstream.invalid" to a cluster, so requests
 * for any other authority are answered locally (404) and no upstream
 * connection is attempted per input; requests for that host try 127.0.0.1:9
 * (nothing listens) and get 503, exercising the upstream failure path.
 *
 * Invariants checked: the connection always ends (no leak of the worker's
 * connection count), and ASan/UBSan see nothing.
 */
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config/config.h"
#include "proxy/accesslog.h"
#include "proxy/conn_h2.h"
#include "proxy/worker.h"

static const char yaml_fmt[] = "workers: 1\n"
                           "listen: [ { address: 127.0.0.1:%u } ]\n"
                           "timeouts: { header: 1s, idle: 1s, send: 1s }\n"
                           "clusters: [ { name: up, endpoints: [ 127.0.0.1:9 ], connect_timeout: 50ms } ]\n"
                           "routes: [ { name: r, match: { host: upstream.invalid }, split: [ { cluster: up, weight: 1 } ] } ]\n";

static struct worker *w;

/* A free loopback port for the (unused) listener the worker insists on. */
static unsigned free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(a);
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) != 0 || getsockname(fd, (struct sockaddr *)&a, &len) != 0)
        abort();
    close(fd);
    return ntohs(a.sin_port);
}

static void setup(void)
{
    char err[512], yaml[1024];
    struct config *cfg = NULL;
    int n = snprintf(yaml, sizeof(yaml), yaml_fmt, free_port());
    if (config_load_buffer("fuzz.yaml", yaml, (size_t)n, &cfg, err, sizeof(err)) != 0) {
        fprintf(stderr, "fuzz config: %s\n", err);
        abort();
    }
    int devnull = open("/dev/null", O_WRONLY);
    accesslog_global_start(devnull);
    w = worker_new(0, cfg);
    config_unref(cfg);
    if (w == NULL)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (w == NULL)
        setup();
    struct bufferevent *pair[2];
    if (bufferevent_pair_new(w->base, 0, pair) != 0)
        abort();
    bufferevent_enable(pair[1], EV_READ | EV_WRITE);
    w->n_conns++;
    h2conn_start(w, pair[0], "127.0.0.1", false);

    /* The client preface first (most inputs would die at it otherwise),
     * unless the input already starts with it. */
    static const char preface[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    if (size < 24 || memcmp(data, preface, 24) != 0)
        bufferevent_write(pair[1], preface, 24);
    bufferevent_write(pair[1], data, size);
    for (int i = 0; i < 64 && w->n_conns > 0; i++) {
        event_base_loop(w->base, EVLOOP_NONBLOCK);
        struct evbuffer *in = bufferevent_get_input(pair[1]);
        evbuffer_drain(in, evbuffer_get_length(in));
    }
    /* The client goes away (EOF to the proxy side): everything must be released. */
    bufferevent_flush(pair[1], EV_WRITE, BEV_FINISHED);
    bufferevent_free(pair[1]);
    for (int i = 0; i < 10000 && w->n_conns > 0; i++)
        event_base_loop(w->base, EVLOOP_ONCE);
    if (w->n_conns != 0) {
        fprintf(stderr, "connection not released after the client closed\n");
        abort();
    }
    return 0;
}
