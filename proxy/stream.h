/*
 * stream.h - one request/response exchange, independent of the downstream
 * protocol. A downstream connection (HTTP/1.1 today, HTTP/2 next) creates a
 * stream once a request head is complete and valid, and drives it through
 * the ops below; the stream routes it, decides the side, takes an upstream
 * connection from the worker's pool and relays both bodies with bounded
 * buffers (backpressure both ways).
 *
 * Ownership: the downstream owns the stream. The stream calls ops->done()
 * exactly once when it has nothing more to do; the downstream then calls
 * stream_free() (possibly later, never from inside a stream callback chain
 * that continues to use the stream - stream code returns right after done()).
 */
#ifndef CUTOVER_STREAM_H
#define CUTOVER_STREAM_H

#include <netinet/in.h>
#include <stdbool.h>
#include <stdint.h>

#include "decide.h"
#include "h1.h"
#include "metrics.h"

struct worker;
struct config;
struct evbuffer;
struct upstream;
struct stream;

/* Bound on bytes queued towards a peer before the other side stops reading. */
#define STREAM_HIGH_WATER (256 * 1024)

struct stream_down_ops {
    /* Move up to `max` decoded request-body bytes into dst. Sets *eof when the
     * body is complete. Returns bytes moved (>= 0), or -1 on a framing error
     * (the downstream has then already answered/closed and called nothing). */
    long (*read_body)(struct stream *s, struct evbuffer *dst, size_t max, bool *eof);
    /* Send the response head. Fields are end-to-end fields only (hop-by-hop
     * removed); content_length is -1 when unknown (the downstream frames it). */
    void (*send_head)(struct stream *s, int status, const struct h1_header *fields, size_t n_fields, int64_t content_length);
    /* Move all of src (response payload) to the client. Returns false when
     * the client is above its high-water mark: the stream stops reading the
     * upstream until stream_on_down_writable(). */
    bool (*send_data)(struct stream *s, struct evbuffer *src);
    /* Response trailer fields (before send_end). Downstreams that cannot
     * carry them (HTTP/1.1 with a Content-Length) drop them. */
    void (*send_trailers)(struct stream *s, const struct h1_header *fields, size_t n_fields);
    /* The response is complete. */
    void (*send_end)(struct stream *s);
    /* Send "100 Continue" (the client sent Expect: 100-continue). */
    void (*send_continue)(struct stream *s);
    /* The stream is finished. `abort` is true when the response could not be
     * completed after its head was sent (the downstream must reset/close). */
    void (*done)(struct stream *s, bool abort);
};

struct stream {
    struct worker *worker;
    struct config *cfg; /* snapshot this exchange started with (reference held) */
    const struct stream_down_ops *ops;
    void *down; /* the downstream connection object */

    /* Request (owned copies). */
    char *head; /* arena holding method/target/host/field bytes */
    const char *method;
    size_t method_len;
    const char *target; /* path+query sent upstream */
    size_t target_len;
    const char *host; /* Host / :authority */
    size_t host_len;
    struct h1_header *fields; /* end-to-end request fields, hop-by-hop removed */
    size_t n_fields;
    int version_minor; /* client's HTTP/1.x minor; 1 for HTTP/2 */
    bool is_head;
    bool has_body;          /* a request body follows */
    int64_t content_length; /* -1 when the length is unknown (chunked / h2 without c-l) */
    bool expect_continue;
    bool te_trailers;  /* the client sent "TE: trailers" (gRPC): passed on where allowed (HTTP/2 upstreams) */
    bool websocket;    /* Upgrade: websocket requested (HTTP/1.1 GET); a tunnel after 101 */
    bool tunnel;       /* 101 received: bytes flow both ways unframed until either side closes */
    bool tls;          /* downstream is TLS (X-Forwarded-Proto) */
    const char *proto; /* "HTTP/1.1", "HTTP/1.0", "HTTP/2" for logs */
    char client_ip[INET6_ADDRSTRLEN];
    char request_id[72];

    /* Decision. */
    const struct route_conf *route;
    const struct cluster_conf *cluster;
    int split_index;
    enum decide_reason reason;
    struct route_stats *rstats; /* labelled counters (worker-owned) */
    struct cluster_stats *cstats;
    char new_cookie[40]; /* sticky cookie value issued with this response, "" if none */
    bool override_rejected;

    /* Upstream. */
    struct upstream *up;
    bool up_ready;      /* the request head went out on `up`: body may follow */
    char endpoint[80];  /* "name (addr)" of the endpoint used, for logs */
    bool body_done;     /* whole request body forwarded */
    bool body_started;  /* some request-body bytes were taken from the client */
    uint64_t bytes_in;  /* request body bytes */
    uint64_t bytes_out; /* response body bytes */
    unsigned attempts;
    struct evbuffer *body_buf;  /* scratch for request-body moves */
    struct ep_state *ep_state;  /* endpoint of the current attempt (health.h) */
    struct ep_state *failed_ep; /* endpoint of the last failed attempt: a retry avoids it */
    bool continue_sent;         /* "100 Continue" went to the client */

    /* Replay and mirroring: every request-body byte taken from the client is
     * also appended to body_copy while bytes_in <= body_copy_limit; past the
     * bound the copy is dropped (no replay, no mirror). NULL = no copy. */
    struct evbuffer *body_copy;
    uint64_t body_copy_limit;
    bool shadow;                /* a mirror copy (mirror.c): no client, no metrics, no access log */
    struct mirror_pair *mirror; /* set by mirror_begin() on a sampled request */
    bool mirror_waiting;        /* the mirror waits for the whole body (mirror_body_done / mirror_drop pending) */

    /* Response. */
    int status;
    bool resp_started; /* head sent downstream */
    bool resp_done;
    bool finished; /* ops->done() was called */

    uint64_t t_start_us;
    uint64_t t_up_start_us;
    uint64_t t_up_end_us;
};

/* Retry budget of one route on one worker, in thousandths of a retry:
 * every request adds retry.budget / 10, a retry takes 1000; it starts full
 * and holds at most STREAM_RETRY_RESERVE retries. */
struct retry_budget {
    int64_t milli;
};
#define STREAM_RETRY_RESERVE 10

/* (Re)build w's per-route state for cfg (the smooth-WRR state, retry
 * budgets, ramp versions seen). Worker thread; at start and on a swap. */
void stream_worker_routes(struct worker *w, const struct config *cfg);

/* Allocate a stream for `down` on worker w with the worker's current config. */
struct stream *stream_new(struct worker *w, const struct stream_down_ops *ops, void *down);

/*
 * The request head is filled in (method, target, host, fields, body info):
 * route, decide, connect. May call ops->done() before returning (e.g. 404).
 */
void stream_start(struct stream *s);

/* More request-body bytes are available from the downstream. */
void stream_on_body_readable(struct stream *s);

/* The downstream drained below its low-water mark: resume the response. */
void stream_on_down_writable(struct stream *s);

/* The client went away: cancel upstream work now. ops->done() is not called. */
void stream_abort(struct stream *s);

/* Start a mirror copy: s->route, s->cluster, the request head and (for a
 * body) the downstream ops are filled in by mirror.c. No retries. */
void stream_start_shadow(struct stream *s);

/* Append a copy of all of src to dst (src unchanged). */
void stream_copy_buffer(struct evbuffer *dst, struct evbuffer *src);

/* Answer with a locally generated response (error pages, 404). */
void stream_respond(struct stream *s, int status, const char *body);

/* Free (after done or abort). Writes the access log line. */
void stream_free(struct stream *s);

/* Request fields the proxy replaces with its own values upstream: returns
 * the field's name length (3 via, 12 x-request-id, 15 x-forwarded-for,
 * 16 x-forwarded-host, 17 x-forwarded-proto) or 0 for any other field.
 * Shared by the HTTP/1.1 and HTTP/2 upstream sides. */
int stream_proxy_field(const struct h1_header *f);

/* Set s->request_id: the client's x-request-id value when it is sane
 * (1..64 of [A-Za-z0-9._-]; rid may be NULL), else 32 random hex digits. */
void stream_take_request_id(struct stream *s, const char *rid, size_t len);

/* Our Via entry (RFC 9110 §7.6.3): received-protocol and pseudonym,
 * "1.0 cutover", "1.1 cutover" or "2 cutover". */
const char *stream_via(const struct stream *s);

/* Whether the failed attempt may be tried again (stream_up_failed). */
enum up_fail {
    UPF_FATAL,      /* never (timeouts, malformed responses, response already relayed) */
    UPF_UNSENT,     /* nothing reached the upstream: connect/TLS failure, REFUSED_STREAM,
                       GOAWAY below the stream id, a stream never submitted - safe for any method */
    UPF_MAYBE_SENT, /* the request may have reached the upstream, no response byte was relayed:
                       safe only for idempotent methods with a replayable body */
};

enum up_counter {
    UPC_CONNECT_ERROR,
    UPC_TIMEOUT,
    UPC_BAD_RESPONSE,
    UPC_RETRY,
};

/* Count an upstream event globally and for the stream's cluster (s may be NULL). */
void stream_up_count(struct worker *w, struct stream *s, enum up_counter which);

/* Callbacks from the upstream connection (upstream_h1.c). */
void stream_up_connected(struct stream *s);
void stream_up_failed(struct stream *s, int status, const char *why, enum up_fail kind);
void stream_up_head(struct stream *s, int status, const struct h1_header *fields, size_t n, int64_t content_length);
/* Response payload in src; returns false if the downstream is full (stop reading). */
bool stream_up_data(struct stream *s, struct evbuffer *src);
void stream_up_trailers(struct stream *s, const struct h1_header *fields, size_t n);
void stream_up_end(struct stream *s);
/* The upstream can take more request body. */
void stream_up_writable(struct stream *s);

#endif
