/*
 * upstream.h - the upstream side of one exchange, as the stream sees it.
 * HTTP/1.1 connections (upstream_h1.c) and, later, HTTP/2 streams implement
 * the same small table; the stream never knows which protocol it talks.
 */
#ifndef CUTOVER_UPSTREAM_H
#define CUTOVER_UPSTREAM_H

#include <stdbool.h>
#include <stddef.h>

struct stream;
struct upstream;
struct evbuffer;

struct upstream_ops {
    /* Queue request-body payload (moved out of buf; NULL allowed) and, with
     * eof, the end of the body. */
    void (*send_body)(struct upstream *u, struct evbuffer *buf, bool eof);
    /* Request bytes queued towards the upstream and not yet written. */
    size_t (*pending)(struct upstream *u);
    /* The downstream drained: deliver buffered response bytes again. */
    void (*resume)(struct upstream *u);
    /* The stream is done with it: keep the connection for reuse when
     * `reusable` (and the protocol state allows), else close/reset it. */
    void (*release)(struct upstream *u, bool reusable);
};

struct upstream {
    const struct upstream_ops *ops;
};

/* Choose an endpoint of s->cluster and start the exchange on a pooled or new
 * connection. Progress and failures come back through stream_up_*().
 * `fresh`: do not reuse a pooled connection (retry after a stale one). */
void upstream_start(struct stream *s, bool fresh);

static inline void upstream_send_body(struct upstream *u, struct evbuffer *buf, bool eof)
{
    u->ops->send_body(u, buf, eof);
}

static inline size_t upstream_pending(struct upstream *u)
{
    return u->ops->pending(u);
}

static inline void upstream_resume(struct upstream *u)
{
    u->ops->resume(u);
}

static inline void upstream_release(struct upstream *u, bool reusable)
{
    u->ops->release(u, reusable);
}

#endif
