/*
 * upstream_h2.h - HTTP/2 to upstream endpoints (nghttp2 client sessions),
 * many streams multiplexed per connection.
 *
 * A session belongs to one endpoint pool (struct ep_pool, listed in
 * ep->h2_sessions) of one worker and lives until the connection fails, the
 * upstream sends GOAWAY and its streams are done, or it stays idle for the
 * cluster's idle_timeout. Each exchange is one HTTP/2 stream, seen by the
 * stream (stream.c) as a `struct upstream` (upstream.h).
 */
#ifndef CUTOVER_UPSTREAM_H2_H
#define CUTOVER_UPSTREAM_H2_H

#include <stdbool.h>

struct stream;
struct ep_pool;
struct endpoint_conf;
struct bufferevent;

/*
 * Start s on an HTTP/2 session to endpoint e of ep: a session of this worker
 * with a free stream slot (the peer's SETTINGS_MAX_CONCURRENT_STREAMS, at
 * most 100), else a new connection (ALPN "h2" over TLS, prior knowledge in
 * cleartext). `fresh`: do not reuse a session that has already carried
 * traffic (retry); a session still connecting may be joined. Sets s->up;
 * progress and failures come back through stream_up_*(), never before this
 * function returns except for a request HTTP/2 cannot carry (WebSocket).
 */
void upstream_h2_start(struct stream *s, struct ep_pool *ep, const struct endpoint_conf *e, bool fresh);

/*
 * A freshly connected bufferevent that negotiated ALPN h2 (protocol: auto):
 * make it a session of ep (which takes ownership of bev; callbacks must be
 * cleared) and start s on it. addr is the "ip:port" it is connected to.
 * Sets ep->h2.
 */
void upstream_h2_adopt(struct stream *s, struct ep_pool *ep, struct bufferevent *bev, const char *addr);

/* Close ep's sessions that carry no stream (pool_update for endpoints that
 * left the config, pool_free). Sessions with streams finish them and close
 * then if ep is retired. */
void upstream_h2_close_idle(struct ep_pool *ep);

/* ep's addresses changed (DNS): sessions to addresses that left take no
 * new streams and close once idle. */
void upstream_h2_retire_gone(struct ep_pool *ep);

/* Free every session of ep now (worker exit, from pool_free). Streams still
 * attached (a drain that timed out) keep their per-stream object, detached
 * from the session; releasing it later frees it. */
void upstream_h2_free_all(struct ep_pool *ep);

#endif
