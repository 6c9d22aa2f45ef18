/*
 * upstream_h2.h - HTTP/2 to upstream endpoints (nghttp2 client sessions),
 * many streams multiplexed per connection.
 */
#ifndef CUTOVER_UPSTREAM_H2_H
#define CUTOVER_UPSTREAM_H2_H

#include <stdbool.h>

struct stream;
struct ep_pool;
struct endpoint_conf;
struct bufferevent;

/* Start s on an HTTP/2 session to endpoint e of ep (reuse one with a free
 * stream slot, else open one). `fresh`: do not reuse (retry). */
void upstream_h2_start(struct stream *s, struct ep_pool *ep, const struct endpoint_conf *e, bool fresh);

/* A freshly connected bufferevent that negotiated ALPN h2: make it a session
 * of ep and start s on it. */
void upstream_h2_adopt(struct stream *s, struct ep_pool *ep, struct bufferevent *bev, const char *addr);

#endif
