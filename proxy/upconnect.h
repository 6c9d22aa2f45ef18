/*
 * upconnect.h - opening a connection to an upstream endpoint: TCP connect,
 * then (for TLS clusters) the handshake with SNI, certificate and hostname
 * verification and ALPN. Shared by the HTTP/1.1 and HTTP/2 upstream sides,
 * so `protocol: auto` can pick the side after ALPN.
 */
#ifndef CUTOVER_UPCONNECT_H
#define CUTOVER_UPCONNECT_H

#include <stdbool.h>
#include <sys/socket.h>

struct event_base;
struct sockaddr;
struct endpoint_conf;
struct cluster_conf;
struct bufferevent;
struct upconnect;

/*
 * Completion. On success bev is the connected (and, for TLS, handshaken)
 * bufferevent, now owned by the callee, with callbacks cleared; `alpn` is the
 * negotiated protocol ("h2", "http/1.1" or "" for cleartext/no ALPN) and
 * `addr` the "ip:port" connected to. On failure bev is NULL, `status` is 503
 * (connect refused/failed/timed out: nothing was sent) or 502 (TLS handshake
 * or certificate failure: nothing was sent) and `why` is a log-ready reason.
 * The upconnect object is freed before the callback runs.
 */
typedef void (*upconnect_cb)(void *arg, struct bufferevent *bev, const char *alpn, const char *addr, int status, const char *why);

/*
 * Start connecting to address sa (one of endpoint e's) for cluster cl on
 * `base` (a worker's, or the main thread's for health probes). `alpn`: NULL for cleartext, else the ALPN offer ("h2",
 * "http/1.1" or "h2,http/1.1"; ignored when the cluster has no TLS).
 * Never calls cb before returning (failures are reported from the event
 * loop), so the caller can finish its own bookkeeping first.
 */
struct upconnect *upconnect_start(struct event_base *base, const struct sockaddr *sa, socklen_t sa_len,
                                  const struct endpoint_conf *e, const struct cluster_conf *cl, const char *alpn, upconnect_cb cb,
                                  void *arg);

/* Abandon a connection attempt (the caller's owner went away); cb is not called. */
void upconnect_cancel(struct upconnect *u);

/* "1.2.3.4:80" / "[::1]:80" (at most 64 bytes with the NUL). */
void upconnect_addr_text(const struct sockaddr *sa, char *out, size_t outlen);

#endif
