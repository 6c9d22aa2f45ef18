/*
 * upstream.h - an HTTP/1.1 connection to one upstream endpoint. It carries
 * one stream at a time and returns to its endpoint pool when the exchange
 * ended cleanly (response fully framed, request fully sent, keep-alive).
 */
#ifndef CUTOVER_UPSTREAM_H
#define CUTOVER_UPSTREAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/queue.h>

#include "h1.h"

struct stream;
struct worker;
struct ep_pool;
struct bufferevent;
struct evbuffer;

enum upconn_state {
    UP_CONNECTING,
    UP_ACTIVE, /* carrying a stream */
    UP_IDLE,   /* parked in the pool */
};

struct upconn {
    struct worker *worker;
    struct bufferevent *bev;
    struct ep_pool *ep;       /* the endpoint pool it belongs to */
    struct stream *stream;    /* NULL when idle */
    TAILQ_ENTRY(upconn) link; /* idle list */
    enum upconn_state state;
    bool reused;              /* carried an earlier exchange */
    bool head_done;           /* response head parsed */
    bool resp_done;
    bool paused;              /* downstream full: not consuming input */
    bool keep_alive;          /* upstream allows reuse */
    enum h1_body_kind body_kind;
    uint64_t remaining;       /* LENGTH bodies */
    struct h1_chunked chunked;
    struct evbuffer *tmp;     /* payload handed to the stream */
    char addr[64];            /* "ip:port" connected to */
    unsigned exchanges;
};

/* Choose an endpoint for s->cluster, take an idle connection or open one,
 * send the request head. Failures are reported through stream_up_failed(). */
void upconn_start(struct stream *s, bool fresh);

/* Queue request-body payload (moved out of buf; NULL allowed) and, with eof,
 * the end of the body (chunked terminator). */
void upconn_send_body(struct upconn *c, struct evbuffer *buf, bool eof);

/* Bytes queued towards the upstream. */
size_t upconn_pending(struct upconn *c);

/* The downstream drained: consume buffered response bytes again. */
void upconn_resume(struct upconn *c);

/* The stream is finished with the connection: park it when reusable, else close. */
void upconn_release(struct upconn *c, bool reusable);

/* Close and free now. */
void upconn_free(struct upconn *c);

#endif
