/*
 * mirror.h - shadow traffic: a share of a route's requests is copied to
 * another cluster. The copy is a stream of its own on the same worker with
 * no downstream: its response is read and discarded, it never delays or
 * changes the real exchange, and at most route.mirror.max_in_flight copies
 * per worker are in flight (more are skipped and counted).
 *
 * With `compare`, the status classes of the real and the shadow response
 * are compared once both are known; a mismatch is counted in the route's
 * stats (route_stats.mirror_mismatch for the pair (route, mirror cluster))
 * and logged with both statuses and the request id.
 */
#ifndef CUTOVER_MIRROR_H
#define CUTOVER_MIRROR_H

#include <stdbool.h>

struct stream;
struct worker;
struct mirror_pair;

/*
 * Called by stream_start() after the decision when the route has a mirror.
 * Samples (route.mirror.share); on a hit sets s->mirror. A request without a
 * body is copied at once. A request with a body waits: stream.c keeps a copy
 * of the body in s->body_copy (while it stays within the bound) and calls
 * mirror_body_done() when the body is complete, or mirror_drop() when the
 * body outgrew route.mirror.max_body (or the request failed first).
 */
void mirror_begin(struct stream *s);

/* The whole request body is in s->body_copy (not consumed: the mirror
 * copies it). Starts the shadow exchange. */
void mirror_body_done(struct stream *s);

/* The copy will not be sent (body too large, request failed before its
 * body was complete). Counts it as skipped. */
void mirror_drop(struct stream *s, const char *why);

/* The real exchange is over (stream_free): record its status for the
 * comparison and release s->mirror. */
void mirror_primary_done(struct stream *s);

/* Worker exit: abort and free every shadow exchange still in flight. */
void mirror_worker_free(struct worker *w);

#endif
