/*
 * upstream_h1.h - an HTTP/1.1 connection to one upstream endpoint. It carries
 * one stream at a time and returns to its endpoint pool when the exchange
 * ended cleanly (response fully framed, request fully sent, keep-alive).
 */
#ifndef CUTOVER_UPSTREAM_H1_H
#define CUTOVER_UPSTREAM_H1_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/queue.h>

#include "h1.h"
#include "upstream.h"

struct stream;
struct worker;
struct ep_pool;
struct upconnect;
struct endpoint_conf;
struct bufferevent;
struct evbuffer;

enum upconn_state {
    UP_CONNECTING,
    UP_ACTIVE, /* carrying a stream */
    UP_IDLE,   /* parked in the pool */
};

struct upconn {
    struct upstream base; /* first: the stream sees only this */
    struct worker *worker;
    struct bufferevent *bev;      /* NULL while connecting */
    struct upconnect *connecting; /* the connection attempt in progress */
    struct ep_pool *ep;           /* the endpoint pool it belongs to */
    struct stream *stream;        /* NULL when idle */
    TAILQ_ENTRY(upconn) link;     /* idle list */
    enum upconn_state state;
    bool reused;    /* carried an earlier exchange */
    bool head_done; /* response head parsed */
    bool resp_done;
    bool paused;     /* downstream full: not consuming input */
    bool keep_alive; /* upstream allows reuse */
    enum h1_body_kind body_kind;
    uint64_t remaining; /* LENGTH bodies */
    struct h1_chunked chunked;
    struct evbuffer *tmp; /* payload handed to the stream */
    char addr[64];        /* "ip:port" connected to */
    uint64_t born_ms;     /* health_now_ms() when it connected (max_connection_age) */
    unsigned exchanges;
};

/* Take an idle HTTP/1.1 connection to ep or open one (to addr), attach s,
 * send the request head. Failures are reported through stream_up_failed(). */
void upconn_start(struct stream *s, struct ep_pool *ep, const struct endpoint_conf *e, bool fresh);

/* Close and free now. */
void upconn_free(struct upconn *c);

#endif
