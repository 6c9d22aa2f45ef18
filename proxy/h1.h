/*
 * h1.h - strict HTTP/1.1 message parsing (RFC 9110, RFC 9112), written for
 * cutover. Pure functions over byte buffers: no libevent, no allocation, so
 * they can be unit-tested and fuzzed on their own.
 *
 * The parsers refuse every shape that two HTTP implementations could read
 * differently (request smuggling): see h1_parse_request().
 */
#ifndef CUTOVER_H1_H
#define CUTOVER_H1_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Results. >= 0 means "head complete, this many bytes consumed". */
#define H1_INCOMPLETE (-1)      /* need more bytes */
#define H1_ERR_BAD (-400)       /* malformed / smuggling shape -> 400 */
#define H1_ERR_URI_LONG (-414)  /* request line longer than limit -> 414 */
#define H1_ERR_HDR_LARGE (-431) /* head bytes or field count over limit -> 431 */
#define H1_ERR_VERSION (-505)   /* HTTP/2.0, HTTP/3 etc. -> 505 */
#define H1_ERR_NOT_IMPL (-501)  /* Transfer-Encoding other than exactly "chunked" on a request -> 501 */

/* Hard cap for the header array; the configured max_headers must be <= this. */
#define H1_MAX_HEADERS 256

struct h1_header {
    const char *name; /* points into the caller's buffer, not NUL-terminated */
    size_t name_len;
    const char *value; /* OWS trimmed on both sides */
    size_t value_len;
};

struct h1_limits {
    size_t max_request_line; /* bytes of the request/status line incl. CRLF */
    size_t max_header_bytes; /* bytes of the whole head incl. the final CRLF */
    size_t max_headers;      /* number of header fields (<= H1_MAX_HEADERS) */
};

/* Framing and semantic flags derived from the head, shared by both directions. */
struct h1_message {
    int version_minor; /* HTTP/1.x: 0 or 1 */
    struct h1_header headers[H1_MAX_HEADERS];
    size_t n_headers;
    int64_t content_length; /* -1 when absent */
    bool chunked;           /* Transfer-Encoding: chunked (final coding) */
    bool keep_alive;        /* after this message the connection may be reused
                               (1.1 without "close", or 1.0 with "keep-alive") */
    bool connection_close;  /* Connection: close present */
    bool upgrade;           /* Connection: upgrade + Upgrade present */
    const char *error;      /* static text saying what was wrong when a parser fails */
};

struct h1_request {
    struct h1_message msg;
    const char *method; /* token, e.g. "GET" */
    size_t method_len;
    const char *target; /* request-target as sent (origin-form or absolute-form) */
    size_t target_len;
    const char *path; /* origin-form path+query (for absolute-form: the part after the authority, "/" if empty) */
    size_t path_len;
    const char *host; /* the Host field value (validated; exactly one Host) */
    size_t host_len;
    bool expect_continue; /* Expect: 100-continue (any other Expect value -> H1_ERR_BAD? no: 417 is not ours; treated as BAD) */
    bool is_connect;      /* CONNECT method (the proxy answers 405) */
};

struct h1_response {
    struct h1_message msg;
    int status; /* 100..599 */
    const char *reason;
    size_t reason_len;
};

/*
 * Parse a request head at the start of buf[0..len).
 * Returns the head length (bytes up to and including the empty line) when
 * complete, H1_INCOMPLETE when more bytes are needed (and no limit is yet
 * exceeded), or a negative H1_ERR_* (req->msg.error says why).
 *
 * Rejected (H1_ERR_BAD unless said otherwise):
 *  - a leading empty line is tolerated only as CRLF (RFC 9112 §2.2), at most one;
 *  - bare LF or bare CR anywhere in the head; NUL or other CTLs (except HTAB in values);
 *  - method not a token; target empty, containing SP/CTL, or not origin-form
 *    ("/..."), absolute-form ("http://" / "https://"), or "*" (OPTIONS only),
 *    authority-form (CONNECT only);
 *  - version not exactly "HTTP/1.0" or "HTTP/1.1" (HTTP/2.0 etc. -> H1_ERR_VERSION);
 *  - request line over limit -> H1_ERR_URI_LONG; head over limit or more
 *    fields than max_headers -> H1_ERR_HDR_LARGE;
 *  - obs-fold (a line starting with SP/HTAB), whitespace before the colon,
 *    empty field name, name not a token;
 *  - missing Host on HTTP/1.1, more than one Host, Host value not a valid
 *    uri-host[:port]; absolute-form whose authority differs from Host (case-insensitive);
 *  - Content-Length not 1*DIGIT, over 2^62, several different values (identical
 *    repeats, incl. comma lists "5, 5", are also rejected: cutover is strict);
 *  - Transfer-Encoding together with Content-Length; Transfer-Encoding in
 *    HTTP/1.0; any Transfer-Encoding value other than exactly "chunked"
 *    (case-insensitive) -> "chunked, chunked", "xchunked", "chunked, gzip",
 *    "gzip, chunked" are H1_ERR_BAD; more than one Transfer-Encoding field -> BAD;
 *  - Expect with a value other than "100-continue".
 */
int h1_parse_request(const char *buf, size_t len, const struct h1_limits *limits, struct h1_request *req);

/*
 * Parse a response head (from an upstream). Same rules for fields; status
 * line "HTTP/1.x SP 3DIGIT SP reason CRLF" (reason may be empty; the SP before
 * it is required per RFC 9112 §4 but tolerated when absent). Also rejected:
 *  - Content-Length with Transfer-Encoding; two different or repeated lengths;
 *  - Transfer-Encoding whose final coding is not chunked is allowed for
 *    responses (body until close) - h1_message.chunked=false, content_length=-1;
 *  - 1xx/204 with Content-Length or Transfer-Encoding are BAD; 304 with
 *    Transfer-Encoding is BAD (304 with Content-Length is allowed: it describes
 *    the selected representation, and the body is empty anyway).
 * The caller decides body length (HEAD requests, 1xx/204/304 have none) with
 * h1_response_body_kind().
 */
int h1_parse_response(const char *buf, size_t len, const struct h1_limits *limits, struct h1_response *resp);

enum h1_body_kind {
    H1_BODY_NONE,    /* no body */
    H1_BODY_LENGTH,  /* exactly content_length bytes */
    H1_BODY_CHUNKED, /* chunked coding */
    H1_BODY_CLOSE,   /* until the connection closes (responses only) */
};

/* Body framing for a request (NONE, LENGTH or CHUNKED). */
enum h1_body_kind h1_request_body_kind(const struct h1_request *req);
/* Body framing for a response to a request whose method was HEAD (is_head). */
enum h1_body_kind h1_response_body_kind(const struct h1_response *resp, bool is_head);

/*
 * Streaming chunked-coding decoder (RFC 9112 §7.1).
 * Zero-initialise (or h1_chunked_init) before the first call.
 */
struct h1_chunked {
    int state;            /* internal */
    uint64_t remaining;   /* payload bytes left in the current chunk */
    size_t line_len;      /* bytes of the current size/ext/trailer line so far */
    size_t trailer_bytes; /* bytes of the trailer section so far */
    bool done;            /* last-chunk and trailer section fully consumed */
    const char *error;    /* static text when h1_chunked_feed returns H1_ERR_BAD */
};

/* Bounds: a chunk-size line (size + extensions) longer than this, or a
 * trailer section bigger than H1_CHUNK_MAX_TRAILER, is an error. */
#define H1_CHUNK_MAX_LINE 4096
#define H1_CHUNK_MAX_TRAILER 16384

void h1_chunked_init(struct h1_chunked *c);

/*
 * Feed in[0..len). Consumes framing bytes and at most one run of payload.
 * Returns the number of bytes consumed from `in` (0..len), or H1_ERR_BAD.
 * When payload was found, *data_off and *data_len give it (relative to `in`,
 * inside the consumed range); otherwise *data_len = 0.
 * The caller loops while bytes remain and !c->done; the decoder stops
 * consuming at the end of the chunked body (bytes after it are not consumed).
 * Rejected: size not 1*HEXDIG, size over 2^62 (so 2^63 and more too),
 * leading "0x" or sign, bare LF/CR, missing CRLF after chunk data, extension
 * lines over H1_CHUNK_MAX_LINE, trailer section over H1_CHUNK_MAX_TRAILER,
 * malformed trailer fields (same field rules as the head).
 * Trailer fields are validated and discarded.
 */
long h1_chunked_feed(struct h1_chunked *c, const char *in, size_t len, size_t *data_off, size_t *data_len);

/* Is `name` (case-insensitive) a hop-by-hop field that a proxy must not forward
 * (Connection, Keep-Alive, Proxy-Connection, TE, Trailer, Transfer-Encoding, Upgrade,
 * Proxy-Authenticate? no - end-to-end; Proxy-Authorization)? */
bool h1_is_hop_by_hop(const char *name, size_t name_len);

/* Does the Connection field value (comma list) name `name`? For removing fields
 * listed in Connection (RFC 9110 §7.6.1). */
bool h1_connection_lists(const struct h1_message *msg, const char *name, size_t name_len);

/* Find the first header named `name` (case-insensitive); NULL if none. */
const struct h1_header *h1_find_header(const struct h1_message *msg, const char *name);

#endif
