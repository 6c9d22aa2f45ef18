/*
 * accesslog.h - one JSON line per request on stdout. Workers append to their
 * own buffer and hand full buffers to a writer thread, so a slow stdout never
 * blocks a worker's loop. The hand-off queue is bounded: lines beyond it are
 * dropped and counted (metrics.log_dropped), never buffered without limit.
 */
#ifndef CUTOVER_ACCESSLOG_H
#define CUTOVER_ACCESSLOG_H

#include <stddef.h>

struct accesslog;
struct event_base;
struct evbuffer;
struct worker;

/* Start the writer thread (main thread, once). */
int accesslog_global_start(int fd);
/* Flush everything and stop the writer thread (after workers have exited). */
void accesslog_global_stop(void);

/* Per-worker buffer; flushed every 100 ms and when it exceeds 64 KiB. */
struct accesslog *accesslog_new(struct worker *w);
void accesslog_free(struct accesslog *log);

/* The worker's line buffer: append one complete line, then call accesslog_commit(). */
struct evbuffer *accesslog_buffer(struct accesslog *log);
void accesslog_commit(struct accesslog *log);

/* Append s as the body of a JSON string (escaped, without quotes). */
void accesslog_json_str(struct evbuffer *b, const char *s, size_t len);

#endif
