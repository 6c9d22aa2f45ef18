/*
 * mock-upstream: the stand-in for cutover's AWS and Azure back ends.
 *
 * It is the upstream in end-to-end tests and in load benchmarks against
 * nginx and haproxy, so it speaks HTTP/1.1 with keep-alive and pipelining,
 * keeps every buffer bounded, and allocates nothing per request once a
 * connection's head buffer has grown to fit its largest request head.
 *
 * Usage: mock-upstream --listen ADDR --name NAME [--threads N] [--record FILE]
 *
 *   ADDR is 127.0.0.1:9001 or [::1]:9001; port 0 picks a free port. Once
 *   listening, exactly one line "listening HOST:PORT" goes to stdout.
 *   --threads N runs N workers, each with its own event_base and its own
 *   SO_REUSEPORT listener on the same port.
 *   --record FILE appends one JSON line per request whose head was parsed:
 *     {"method":M,"target":T,"headers":[[name,value],...],"body_bytes":N,"complete":B}
 *   written when the request body has been fully received (complete:true;
 *   before any response byte is queued, or for /echo before the response
 *   ends) or when the connection ends before that, including a request
 *   rejected for its framing (complete:false). Opened with fopen "a"; each
 *   line is one write(2), so several processes may share one file.
 *   body_bytes counts decoded body bytes. Strings are JSON-escaped; bytes
 *   0x7f-0xff are written as \u00XX, so decode them as Latin-1.
 *
 * Routes (query string ignored except by /bytes; any method; HEAD gets the
 * same head as GET with no body):
 *   /bytes/N[?chunked=1]  200 with N body bytes (content-length, or 64 KiB
 *                         chunks when asked and the request is HTTP/1.1;
 *                         an HTTP/1.0 client gets content-length). Byte i of
 *                         the body is "abcdefghijklmnopqrstuvwxyz0123456789"
 *                         [i % 36]. Streamed: never more than ~320 KiB queued.
 *   /echo                 200, the request body streamed back as it arrives:
 *                         content-length in -> same content-length out,
 *                         chunked in -> chunked out.
 *   /status/CODE          CODE (200-599), body "status CODE\n"; 204 and 304
 *                         carry no body and no content-length.
 *   /delay/MS             200 "delayed MS\n" after MS ms (timer, max 1 h).
 *   /headers              200 JSON {"method":..,"target":..,"headers":[[n,v],...]}.
 *   /close                200 "NAME\n" with connection: close, then close.
 *   /drop                 read the request, close without a response.
 *   /garbage              "HTTP/1.1 2000 Bad\r\n\r\n", then close.
 *   /healthz              200 "ok\n".
 *   anything else         200 "NAME\n".
 * Every response carries x-served-by: NAME and echoes x-request-id. Bodies of
 * non-echo requests are read and discarded before the response is sent;
 * "Expect: 100-continue" gets "HTTP/1.1 100 Continue" first. A malformed
 * head, a head over 64 KiB, missing/duplicate Host on HTTP/1.1, CL+TE,
 * differing Content-Length values or a transfer coding other than a final
 * chunked get 400 and a close. A bad /bytes, /status or /delay argument
 * gets 400 on a kept-alive connection. Each connection that closes first
 * half-closes and drains input for up to 2 s, so pipelined bytes the server
 * never read cannot turn the close into a RST.
 *
 * Out of memory aborts (a test tool has nothing better to do).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/event_struct.h>
#include <event2/listener.h>
#include <event2/thread.h>
#include <event2/util.h>

#define HEAD_MAX (64 * 1024)        /* request line + headers + blank line */
#define OUT_HIGH (256 * 1024)       /* stop producing output above this */
#define OUT_LOW (64 * 1024)         /* resume producing when drained to this */
#define IN_HIGH (256 * 1024)        /* libevent stops reading above this */
#define CHUNK_LINE_MAX 4096         /* chunk-size line incl. extensions */
#define PIECE (64 * 1024)           /* /bytes piece and chunk size */
#define LINGER_SECONDS 2            /* wait for the peer's FIN after ours */
#define DELAY_MAX_MS 3600000ULL     /* /delay upper bound */
#define BYTES_MAX (1ULL << 40)      /* /bytes upper bound */
#define CHUNK_SIZE_MAX (1ULL << 60) /* refuse chunk sizes that could overflow */
#define NAME_MAX_LEN 200
#define THREADS_MAX 256

static const char PATTERN[] = "abcdefghijklmnopqrstuvwxyz0123456789";
#define PATTERN_LEN 36

/* PIECE bytes of the pattern starting at any phase 0..35: body offset i lives at
 * pattern_block + i % PATTERN_LEN. Read-only after startup; evbuffers reference it. */
static char pattern_block[PIECE + PATTERN_LEN];

static const char *server_name;
static int record_fd = -1;
static pthread_mutex_t record_lock = PTHREAD_MUTEX_INITIALIZER;
static bool tchar[256]; /* RFC 9110 §5.6.2 token characters */

/* ---- memory ------------------------------------------------------------ */

static void *xrealloc(void *p, size_t n)
{
    p = realloc(p, n);
    if (!p) {
        fprintf(stderr, "mock-upstream: out of memory allocating %zu bytes; aborting\n", n);
        abort();
    }
    return p;
}

/* A growable byte string; worker-owned scratch for JSON. */
struct strbuf {
    char *data;
    size_t len, cap;
};

static void sb_reserve(struct strbuf *sb, size_t extra)
{
    if (sb->len + extra <= sb->cap)
        return;
    size_t cap = sb->cap ? sb->cap : 4096;
    while (cap < sb->len + extra)
        cap *= 2;
    sb->data = xrealloc(sb->data, cap);
    sb->cap = cap;
}

static void sb_add(struct strbuf *sb, const char *s, size_t n)
{
    sb_reserve(sb, n);
    memcpy(sb->data + sb->len, s, n);
    sb->len += n;
}

#define SB_LIT(sb, lit) sb_add((sb), (lit), sizeof(lit) - 1)

/* Appends s as a JSON string; bytes outside printable ASCII become \u00XX. */
static void sb_json(struct strbuf *sb, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    sb_reserve(sb, n * 6 + 2);
    char *d = sb->data + sb->len;
    *d++ = '"';
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch == '"' || ch == '\\') {
            *d++ = '\\';
            *d++ = (char)ch;
        } else if (ch < 0x20 || ch >= 0x7f) {
            memcpy(d, "\\u00", 4);
            d[4] = hex[ch >> 4];
            d[5] = hex[ch & 15];
            d += 6;
        } else {
            *d++ = (char)ch;
        }
    }
    *d++ = '"';
    sb->len = (size_t)(d - sb->data);
}

/* ---- objects ----------------------------------------------------------- */

/* One worker thread: its loop, its listener, its connections. */
struct worker {
    struct event_base *base;
    struct evconnlistener *listener;
    pthread_t thread;
    struct conn *conns;    /* every live connection, for shutdown */
    struct strbuf scratch; /* JSON bodies and record lines */
};

enum conn_state {
    ST_HEAD,    /* waiting for / parsing a request head */
    ST_BODY,    /* reading the request body (echo also writes it back) */
    ST_BYTES,   /* streaming a /bytes response body */
    ST_DELAY,   /* waiting on the /delay timer */
    ST_CLOSING, /* flushing output before our FIN */
    ST_LINGER,  /* FIN sent; discarding input until the peer's FIN */
};

enum body_state { B_DONE, B_LENGTH, B_CHUNK_SIZE, B_CHUNK_DATA, B_CHUNK_CRLF, B_TRAILER };

enum route { R_DEFAULT, R_ECHO, R_BYTES, R_STATUS, R_DELAY, R_HEADERS, R_CLOSE, R_DROP, R_GARBAGE, R_HEALTHZ, R_BAD };

enum framing { F_NONE, F_LENGTH, F_CHUNKED };

/* One header field; name and value point into conn.head. */
struct header {
    const char *name, *value;
    size_t name_len, value_len;
};

/* One client connection; owned by its worker, freed only by conn_free. */
struct conn {
    struct worker *worker;
    struct bufferevent *bev;
    struct event timer; /* /delay, then linger */
    struct conn *prev, *next;
    enum conn_state state;
    bool peer_eof;     /* the client's FIN has been read */
    bool close_after;  /* close once the current response is written */
    bool req_active;   /* a head was parsed and its record line is still owed */
    bool resp_started; /* echo: the response head is already queued */
    bool echo;         /* the body goes back to the client, not to the bin */
    bool head_only;    /* HEAD request: response without body */
    bool resp_chunked; /* the response body in flight is chunked */
    bool want_chunked; /* /bytes?chunked=1 */
    bool expect_continue;
    size_t head_scanned; /* bytes of input already searched for the head end */

    /* The current request head, copied out of the input buffer so the record
     * line and /headers can use it after the input is drained. Grow-only. */
    char *head;
    size_t head_cap;
    struct header *headers;
    size_t nheaders, headers_cap;
    const char *method, *target;
    size_t method_len, target_len;
    int minor;      /* HTTP/1.minor */
    int request_id; /* index of x-request-id in headers, or -1 */
    enum route route;
    uint64_t route_arg;

    enum body_state body_state;
    uint64_t body_remaining; /* of the content-length or current chunk */
    uint64_t body_bytes;     /* decoded body bytes received so far */
    size_t trailer_bytes;

    uint64_t resp_remaining, resp_offset; /* /bytes progress */
};

static void conn_free(struct conn *c);

/* ---- record file ------------------------------------------------------- */

static void sb_head_json(struct strbuf *sb, const struct conn *c)
{
    SB_LIT(sb, "{\"method\":");
    sb_json(sb, c->method, c->method_len);
    SB_LIT(sb, ",\"target\":");
    sb_json(sb, c->target, c->target_len);
    SB_LIT(sb, ",\"headers\":[");
    for (size_t i = 0; i < c->nheaders; i++) {
        const struct header *h = &c->headers[i];
        SB_LIT(sb, "[");
        sb_json(sb, h->name, h->name_len);
        SB_LIT(sb, ",");
        sb_json(sb, h->value, h->value_len);
        sb_add(sb, i + 1 < c->nheaders ? "]," : "]", i + 1 < c->nheaders ? 2 : 1);
    }
    SB_LIT(sb, "]");
}

/* Appends the request's record line (if --record) and clears req_active. A
 * synchronous write on the worker: acceptable for a test tool, and it makes the
 * line visible before the client can see the response. */
static void record_request(struct conn *c, bool complete)
{
    c->req_active = false;
    if (record_fd < 0)
        return;
    struct strbuf *sb = &c->worker->scratch;
    sb->len = 0;
    sb_head_json(sb, c);
    char tail[64];
    int n =
        snprintf(tail, sizeof(tail), ",\"body_bytes\":%" PRIu64 ",\"complete\":%s}\n", c->body_bytes, complete ? "true" : "false");
    sb_add(sb, tail, (size_t)n);

    pthread_mutex_lock(&record_lock);
    size_t off = 0;
    while (off < sb->len) {
        ssize_t w = write(record_fd, sb->data + off, sb->len - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0) {
            fprintf(stderr, "mock-upstream: write(record file) failed: %s; line dropped\n", strerror(errno));
            break;
        }
        off += (size_t)w;
    }
    pthread_mutex_unlock(&record_lock);
}

/* ---- responses --------------------------------------------------------- */

static const struct {
    int status;
    const char *phrase;
} reasons[] = {
    {200, "OK"},
    {201, "Created"},
    {202, "Accepted"},
    {203, "Non-Authoritative Information"},
    {204, "No Content"},
    {205, "Reset Content"},
    {206, "Partial Content"},
    {300, "Multiple Choices"},
    {301, "Moved Permanently"},
    {302, "Found"},
    {303, "See Other"},
    {304, "Not Modified"},
    {307, "Temporary Redirect"},
    {308, "Permanent Redirect"},
    {400, "Bad Request"},
    {401, "Unauthorized"},
    {403, "Forbidden"},
    {404, "Not Found"},
    {405, "Method Not Allowed"},
    {408, "Request Timeout"},
    {409, "Conflict"},
    {410, "Gone"},
    {411, "Length Required"},
    {413, "Content Too Large"},
    {414, "URI Too Long"},
    {415, "Unsupported Media Type"},
    {417, "Expectation Failed"},
    {421, "Misdirected Request"},
    {422, "Unprocessable Content"},
    {425, "Too Early"},
    {426, "Upgrade Required"},
    {429, "Too Many Requests"},
    {431, "Request Header Fields Too Large"},
    {500, "Internal Server Error"},
    {501, "Not Implemented"},
    {502, "Bad Gateway"},
    {503, "Service Unavailable"},
    {504, "Gateway Timeout"},
    {505, "HTTP Version Not Supported"},
};

static const char *reason_phrase(int status)
{
    for (size_t i = 0; i < sizeof(reasons) / sizeof(reasons[0]); i++)
        if (reasons[i].status == status)
            return reasons[i].phrase;
    return "Unknown";
}

/* Queues a response head. length is used only with F_LENGTH. */
static void put_head(struct conn *c, int status, enum framing framing, uint64_t length)
{
    struct evbuffer *out = bufferevent_get_output(c->bev);
    char buf[1024];
    size_t n =
        (size_t)snprintf(buf, sizeof(buf), "HTTP/1.1 %d %s\r\nx-served-by: %s\r\n", status, reason_phrase(status), server_name);
    if (framing == F_LENGTH)
        n += (size_t)snprintf(buf + n, sizeof(buf) - n, "content-length: %" PRIu64 "\r\n", length);
    else if (framing == F_CHUNKED)
        n += (size_t)snprintf(buf + n, sizeof(buf) - n, "transfer-encoding: chunked\r\n");
    if (c->close_after)
        n += (size_t)snprintf(buf + n, sizeof(buf) - n, "connection: close\r\n");
    else if (c->minor == 0)
        n += (size_t)snprintf(buf + n, sizeof(buf) - n, "connection: keep-alive\r\n");
    if (c->request_id >= 0) {
        const struct header *h = &c->headers[c->request_id];
        if (h->value_len + 20 > sizeof(buf) - n) { /* a huge id: flush what we have */
            evbuffer_add(out, buf, n);
            n = 0;
            evbuffer_add(out, "x-request-id: ", 14);
            evbuffer_add(out, h->value, h->value_len);
            evbuffer_add(out, "\r\n", 2);
        } else {
            memcpy(buf + n, "x-request-id: ", 14);
            memcpy(buf + n + 14, h->value, h->value_len);
            memcpy(buf + n + 14 + h->value_len, "\r\n", 2);
            n += 16 + h->value_len;
        }
    }
    memcpy(buf + n, "\r\n", 2);
    evbuffer_add(out, buf, n + 2);
}

/* Queues a complete response with a small body (none for 204/304 or HEAD). */
static void put_simple(struct conn *c, int status, const char *body, size_t len)
{
    bool bodiless = status == 204 || status == 304;
    put_head(c, status, bodiless ? F_NONE : F_LENGTH, len);
    if (!bodiless && !c->head_only && len > 0)
        evbuffer_add(bufferevent_get_output(c->bev), body, len);
}

static void conn_begin_close(struct conn *c)
{
    c->state = ST_CLOSING;
    c->close_after = true;
    /* The write callback must now fire only once the output is empty. */
    bufferevent_setwatermark(c->bev, EV_WRITE, 0, 0);
}

static void bad_request(struct conn *c)
{
    c->close_after = true;
    put_simple(c, 400, "bad request\n", 12);
    conn_begin_close(c);
}

static void response_done(struct conn *c)
{
    if (c->close_after)
        conn_begin_close(c);
    else
        c->state = ST_HEAD;
}

/* Tops the output up to OUT_HIGH with /bytes body; returns true when the whole
 * body (and the last chunk) is queued. */
static bool fill_bytes(struct conn *c)
{
    struct evbuffer *out = bufferevent_get_output(c->bev);
    while (c->resp_remaining > 0 && evbuffer_get_length(out) < OUT_HIGH) {
        size_t piece = c->resp_remaining < PIECE ? (size_t)c->resp_remaining : PIECE;
        const char *data = pattern_block + c->resp_offset % PATTERN_LEN;
        if (c->resp_chunked) {
            char line[24];
            int n = snprintf(line, sizeof(line), "%zx\r\n", piece);
            evbuffer_add(out, line, (size_t)n);
        }
        /* Large pieces reference the static block instead of copying it. */
        if (piece >= 4096)
            evbuffer_add_reference(out, data, piece, NULL, NULL);
        else
            evbuffer_add(out, data, piece);
        if (c->resp_chunked)
            evbuffer_add(out, "\r\n", 2);
        c->resp_remaining -= piece;
        c->resp_offset += piece;
    }
    if (c->resp_remaining > 0)
        return false;
    if (c->resp_chunked)
        evbuffer_add(out, "0\r\n\r\n", 5);
    return true;
}

/* ---- request parsing --------------------------------------------------- */

static bool name_is(const struct header *h, const char *lit, size_t len)
{
    return h->name_len == len && strncasecmp(h->name, lit, len) == 0;
}

#define NAME_IS(h, lit) name_is((h), (lit), sizeof(lit) - 1)

static bool token_is(const char *t, size_t n, const char *lit)
{
    return n == strlen(lit) && strncasecmp(t, lit, n) == 0;
}

/* Next element of a comma-separated list (RFC 9110 §5.6.1), OWS trimmed and
 * empty elements skipped; returns false at the end. */
static bool next_element(const char **pos, const char *end, const char **elem, size_t *len)
{
    const char *p = *pos;
    for (;;) {
        while (p < end && (*p == ' ' || *p == '\t' || *p == ','))
            p++;
        if (p == end) {
            *pos = p;
            return false;
        }
        const char *start = p;
        while (p < end && *p != ',')
            p++;
        const char *stop = p;
        while (stop > start && (stop[-1] == ' ' || stop[-1] == '\t'))
            stop--;
        if (stop > start) {
            *elem = start;
            *len = (size_t)(stop - start);
            *pos = p;
            return true;
        }
    }
}

/* Decimal digits only, no sign, at most 19 digits and at most max. */
static bool parse_u64(const char *s, size_t n, uint64_t max, uint64_t *out)
{
    if (n == 0 || n > 19)
        return false;
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        v = v * 10 + (uint64_t)(s[i] - '0');
    }
    if (v > max)
        return false;
    *out = v;
    return true;
}

/* Looks for the end of a request head in the input. Returns its length (the
 * head is then copied to c->head and drained), 0 if more bytes are needed, or
 * -1 when HEAD_MAX bytes hold no complete head. Accepts bare LF line ends and
 * skips empty lines before the request line (RFC 9112 §2.2). */
static ssize_t read_head(struct conn *c)
{
    struct evbuffer *in = bufferevent_get_input(c->bev);
    size_t len = evbuffer_get_length(in);
    if (len == 0)
        return 0;
    size_t avail = len < HEAD_MAX ? len : HEAD_MAX;

    /* Search the first chain in place; linearize only if the head spans chains. */
    struct evbuffer_iovec first;
    evbuffer_peek(in, -1, NULL, &first, 1);
    size_t window = first.iov_len < avail ? first.iov_len : avail;
    const char *p = (const char *)evbuffer_pullup(in, (ssize_t)window);

    if (c->head_scanned == 0) {
        size_t skip = 0;
        while (skip < window) {
            if (p[skip] == '\n')
                skip++;
            else if (p[skip] == '\r' && skip + 1 < window && p[skip + 1] == '\n')
                skip += 2;
            else
                break;
        }
        if (skip > 0) {
            evbuffer_drain(in, skip);
            return read_head(c);
        }
        if (window == 1 && p[0] == '\r') /* maybe the CR of an empty line */
            return 0;
    }

    size_t end = 0;
    for (int pass = 0; pass < 2 && end == 0; pass++) {
        if (pass == 1) {
            if (window == avail)
                break;
            window = avail;
            p = (const char *)evbuffer_pullup(in, (ssize_t)window);
        }
        size_t i = c->head_scanned;
        while (i < window) {
            const char *nl = memchr(p + i, '\n', window - i);
            if (!nl) {
                i = window;
                break;
            }
            size_t k = (size_t)(nl - p);
            if ((k >= 1 && p[k - 1] == '\n') || (k >= 2 && p[k - 1] == '\r' && p[k - 2] == '\n')) {
                end = k + 1;
                break;
            }
            i = k + 1;
        }
        if (end == 0)
            c->head_scanned = i;
    }
    if (end == 0)
        return len >= HEAD_MAX ? -1 : 0;

    if (c->head_cap < end) {
        size_t cap = c->head_cap ? c->head_cap : 1024;
        while (cap < end)
            cap *= 2;
        free(c->head);
        c->head = xrealloc(NULL, cap);
        c->head_cap = cap;
    }
    memcpy(c->head, p, end);
    evbuffer_drain(in, end);
    c->head_scanned = 0;
    return (ssize_t)end;
}

/* Splits c->head (len bytes, ending in an empty line) into the request line
 * and header fields. Returns -1 for anything RFC 9112 calls invalid. */
static int parse_head(struct conn *c, size_t len)
{
    const char *p = c->head, *end = c->head + len;
    c->nheaders = 0;
    bool first = true;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *eol = nl;
        if (eol > p && eol[-1] == '\r')
            eol--;
        if (eol == p) /* the empty line */
            return first ? -1 : 0;
        if (first) {
            /* request-line = method SP request-target SP HTTP-version */
            const char *s = p;
            while (s < eol && tchar[(unsigned char)*s])
                s++;
            if (s == p || s == eol || *s != ' ')
                return -1;
            c->method = p;
            c->method_len = (size_t)(s - p);
            const char *t = ++s;
            while (s < eol && (unsigned char)*s > 0x20 && *s != 0x7f)
                s++;
            if (s == t || s == eol || *s != ' ')
                return -1;
            c->target = t;
            c->target_len = (size_t)(s - t);
            s++;
            if (eol - s != 8 || memcmp(s, "HTTP/1.", 7) != 0 || s[7] < '0' || s[7] > '9')
                return -1;
            c->minor = s[7] - '0';
            first = false;
        } else {
            /* field-line = field-name ":" OWS field-value OWS; no obs-fold
             * (RFC 9112 §5.2) and no space before the colon (§5.1). */
            const char *s = p;
            while (s < eol && tchar[(unsigned char)*s])
                s++;
            if (s == p || s == eol || *s != ':')
                return -1;
            const char *v = s + 1;
            while (v < eol && (*v == ' ' || *v == '\t'))
                v++;
            const char *ve = eol;
            while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t'))
                ve--;
            for (const char *q = v; q < ve; q++) {
                unsigned char ch = (unsigned char)*q;
                if ((ch < 0x20 && ch != '\t') || ch == 0x7f)
                    return -1;
            }
            if (c->nheaders == c->headers_cap) {
                c->headers_cap = c->headers_cap ? c->headers_cap * 2 : 32;
                c->headers = xrealloc(c->headers, c->headers_cap * sizeof(*c->headers));
            }
            struct header *h = &c->headers[c->nheaders++];
            h->name = p;
            h->name_len = (size_t)(s - p);
            h->value = v;
            h->value_len = (size_t)(ve - v);
        }
        p = nl + 1;
    }
    return -1;
}

/* Derives keep-alive, Expect and the body framing from the headers. Returns -1
 * when the framing is invalid or ambiguous (RFC 9112 §6.1, §6.3). */
static int analyze_head(struct conn *c)
{
    bool keep_alive = c->minor >= 1, have_cl = false, have_te = false, te_chunked_last = false;
    int hosts = 0, chunked_count = 0;
    uint64_t content_length = 0;
    c->expect_continue = false;
    c->request_id = -1;
    for (size_t i = 0; i < c->nheaders; i++) {
        const struct header *h = &c->headers[i];
        const char *pos = h->value, *end = h->value + h->value_len, *e;
        size_t n;
        if (NAME_IS(h, "content-length")) {
            bool any = false;
            while (next_element(&pos, end, &e, &n)) {
                uint64_t v;
                if (!parse_u64(e, n, UINT64_MAX / 16, &v) || (have_cl && v != content_length))
                    return -1;
                content_length = v;
                have_cl = any = true;
            }
            if (!any)
                return -1;
        } else if (NAME_IS(h, "transfer-encoding")) {
            have_te = true;
            while (next_element(&pos, end, &e, &n)) {
                const char *semi = memchr(e, ';', n);
                size_t coding = semi ? (size_t)(semi - e) : n;
                while (coding > 0 && (e[coding - 1] == ' ' || e[coding - 1] == '\t'))
                    coding--;
                te_chunked_last = token_is(e, coding, "chunked");
                chunked_count += te_chunked_last;
            }
        } else if (NAME_IS(h, "connection")) {
            while (next_element(&pos, end, &e, &n)) {
                if (token_is(e, n, "close"))
                    keep_alive = false;
                else if (token_is(e, n, "keep-alive") && c->minor == 0)
                    keep_alive = true;
            }
        } else if (NAME_IS(h, "expect")) {
            c->expect_continue = token_is(h->value, h->value_len, "100-continue");
        } else if (NAME_IS(h, "host")) {
            hosts++;
        } else if (NAME_IS(h, "x-request-id") && c->request_id < 0) {
            c->request_id = (int)i;
        }
    }
    /* Any close decided from here on must be announced in the response. */
    c->close_after = !keep_alive;
    if (c->minor >= 1 && hosts != 1) /* RFC 9112 §3.2 */
        return -1;
    if (c->minor == 0 && hosts > 1)
        return -1;
    if (have_te) {
        /* chunked must be last and only once; TE is undefined in HTTP/1.0
         * and TE with Content-Length smells of smuggling. */
        if (!te_chunked_last || chunked_count != 1 || have_cl || c->minor == 0)
            return -1;
        c->body_state = B_CHUNK_SIZE;
        c->body_remaining = 0;
    } else if (have_cl && content_length > 0) {
        c->body_state = B_LENGTH;
        c->body_remaining = content_length;
    } else {
        c->body_state = B_DONE;
        c->body_remaining = 0;
    }
    return 0;
}

/* Sets c->route and c->route_arg from the target. */
static void pick_route(struct conn *c)
{
    const char *t = c->target, *end = c->target + c->target_len;
    if (*t != '/') { /* absolute-form: skip scheme://authority */
        for (const char *s = t; s + 3 <= end; s++) {
            if (s[0] == ':' && s[1] == '/' && s[2] == '/') {
                const char *slash = memchr(s + 3, '/', (size_t)(end - s - 3));
                t = slash ? slash : end;
                break;
            }
        }
    }
    const char *q = memchr(t, '?', (size_t)(end - t));
    const char *path_end = q ? q : end;
    size_t n = (size_t)(path_end - t);
    c->want_chunked = false;
    c->route_arg = 0;

#define PATH_IS(lit) (n == sizeof(lit) - 1 && memcmp(t, lit, n) == 0)
#define PATH_PREFIX(lit) (n >= sizeof(lit) - 1 && memcmp(t, lit, sizeof(lit) - 1) == 0)
    if (PATH_IS("/echo")) {
        c->route = R_ECHO;
    } else if (PATH_PREFIX("/bytes/")) {
        c->route = parse_u64(t + 7, n - 7, BYTES_MAX, &c->route_arg) ? R_BYTES : R_BAD;
        for (const char *p = q ? q + 1 : end, *e; p < end; p = e + 1) {
            e = memchr(p, '&', (size_t)(end - p));
            if (!e)
                e = end;
            if (e - p == 9 && memcmp(p, "chunked=1", 9) == 0)
                c->want_chunked = true;
        }
    } else if (PATH_PREFIX("/status/")) {
        c->route = parse_u64(t + 8, n - 8, 599, &c->route_arg) && c->route_arg >= 200 ? R_STATUS : R_BAD;
    } else if (PATH_PREFIX("/delay/")) {
        c->route = parse_u64(t + 7, n - 7, DELAY_MAX_MS, &c->route_arg) ? R_DELAY : R_BAD;
    } else if (PATH_IS("/headers")) {
        c->route = R_HEADERS;
    } else if (PATH_IS("/close")) {
        c->route = R_CLOSE;
    } else if (PATH_IS("/drop")) {
        c->route = R_DROP;
    } else if (PATH_IS("/garbage")) {
        c->route = R_GARBAGE;
    } else if (PATH_IS("/healthz")) {
        c->route = R_HEALTHZ;
    } else {
        c->route = R_DEFAULT;
    }
#undef PATH_IS
#undef PATH_PREFIX
}

/* A parsed head: validate, record framing errors, start echo, go to ST_BODY. */
static void start_request(struct conn *c, size_t head_len)
{
    struct evbuffer *out = bufferevent_get_output(c->bev);
    c->request_id = -1;
    c->head_only = false;
    c->echo = c->resp_started = c->resp_chunked = false;
    c->body_bytes = 0;
    c->trailer_bytes = 0;
    if (parse_head(c, head_len) < 0) {
        c->minor = 1;
        bad_request(c);
        return;
    }
    c->head_only = c->method_len == 4 && memcmp(c->method, "HEAD", 4) == 0;
    int framing_ok = analyze_head(c);
    c->req_active = true;
    if (framing_ok < 0) {
        record_request(c, false);
        bad_request(c);
        return;
    }
    pick_route(c);
    if (c->expect_continue && c->minor >= 1 && c->body_state != B_DONE)
        evbuffer_add(out, "HTTP/1.1 100 Continue\r\n\r\n", 25);
    if (c->route == R_ECHO && !c->head_only) {
        c->echo = c->resp_started = true;
        if (c->body_state == B_CHUNK_SIZE) {
            c->resp_chunked = true;
            put_head(c, 200, F_CHUNKED, 0);
        } else {
            put_head(c, 200, F_LENGTH, c->body_remaining);
        }
    }
    c->state = ST_BODY;
}

enum { BODY_DONE, BODY_MORE, BODY_BLOCKED, BODY_ERROR };

/* Consumes as much request body as the input holds (and, for echo, as the
 * output has room for). Returns one of BODY_*. */
static int body_consume(struct conn *c)
{
    struct evbuffer *in = bufferevent_get_input(c->bev);
    struct evbuffer *out = bufferevent_get_output(c->bev);
    for (;;) {
        size_t avail = evbuffer_get_length(in);
        switch (c->body_state) {
        case B_DONE:
            return BODY_DONE;
        case B_LENGTH:
        case B_CHUNK_DATA: {
            if (c->body_remaining == 0) {
                c->body_state = c->body_state == B_LENGTH ? B_DONE : B_CHUNK_CRLF;
                continue;
            }
            if (avail == 0)
                return BODY_MORE;
            size_t n = avail < c->body_remaining ? avail : (size_t)c->body_remaining;
            if (c->echo) {
                size_t queued = evbuffer_get_length(out);
                if (queued >= OUT_HIGH)
                    return BODY_BLOCKED;
                if (n > OUT_HIGH - queued)
                    n = OUT_HIGH - queued;
                if (c->resp_chunked) {
                    char line[24];
                    int len = snprintf(line, sizeof(line), "%zx\r\n", n);
                    evbuffer_add(out, line, (size_t)len);
                }
                evbuffer_remove_buffer(in, out, n);
                if (c->resp_chunked)
                    evbuffer_add(out, "\r\n", 2);
            } else {
                evbuffer_drain(in, n);
            }
            c->body_remaining -= n;
            c->body_bytes += n;
            continue;
        }
        case B_CHUNK_CRLF: {
            unsigned char two[2];
            if (avail == 0)
                return BODY_MORE;
            evbuffer_copyout(in, two, avail < 2 ? avail : 2);
            if (two[0] == '\n') {
                evbuffer_drain(in, 1);
            } else if (two[0] != '\r') {
                return BODY_ERROR;
            } else if (avail < 2) {
                return BODY_MORE;
            } else if (two[1] != '\n') {
                return BODY_ERROR;
            } else {
                evbuffer_drain(in, 2);
            }
            c->body_state = B_CHUNK_SIZE;
            continue;
        }
        case B_CHUNK_SIZE:
        case B_TRAILER: {
            size_t eol_len = 0;
            struct evbuffer_ptr eol = evbuffer_search_eol(in, NULL, &eol_len, EVBUFFER_EOL_CRLF);
            size_t limit = c->body_state == B_CHUNK_SIZE ? CHUNK_LINE_MAX : HEAD_MAX - c->trailer_bytes;
            if (eol.pos < 0)
                return avail > limit ? BODY_ERROR : BODY_MORE;
            size_t line_len = (size_t)eol.pos;
            if (line_len > limit)
                return BODY_ERROR;
            const char *line = line_len ? (const char *)evbuffer_pullup(in, (ssize_t)line_len) : "";
            for (size_t i = 0; i < line_len; i++) {
                unsigned char ch = (unsigned char)line[i];
                if ((ch < 0x20 && ch != '\t') || ch == 0x7f)
                    return BODY_ERROR;
            }
            if (c->body_state == B_TRAILER) {
                /* trailer fields are discarded; an empty line ends the body */
                c->trailer_bytes += line_len + eol_len;
                evbuffer_drain(in, line_len + eol_len);
                if (line_len == 0)
                    c->body_state = B_DONE;
                continue;
            }
            /* chunk-size [ chunk-ext ] (RFC 9112 §7.1) */
            uint64_t size = 0;
            size_t i = 0;
            for (; i < line_len; i++) {
                char ch = line[i];
                int digit = ch >= '0' && ch <= '9'   ? ch - '0'
                            : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10
                            : ch >= 'A' && ch <= 'F' ? ch - 'A' + 10
                                                     : -1;
                if (digit < 0)
                    break;
                if (size >= CHUNK_SIZE_MAX / 16)
                    return BODY_ERROR;
                size = size * 16 + (uint64_t)digit;
            }
            if (i == 0)
                return BODY_ERROR;
            while (i < line_len && (line[i] == ' ' || line[i] == '\t'))
                i++;
            if (i < line_len && line[i] != ';')
                return BODY_ERROR;
            evbuffer_drain(in, line_len + eol_len);
            if (size == 0) {
                c->body_state = B_TRAILER;
            } else {
                c->body_state = B_CHUNK_DATA;
                c->body_remaining = size;
            }
            continue;
        }
        }
    }
}

/* The request is fully received: record it and respond. */
static void finish_request(struct conn *c)
{
    struct evbuffer *out = bufferevent_get_output(c->bev);
    char body[64];
    int n;
    record_request(c, true);
    switch (c->route) {
    case R_ECHO:
        if (!c->resp_started)
            put_head(c, 200, F_LENGTH, 0);
        else if (c->resp_chunked)
            evbuffer_add(out, "0\r\n\r\n", 5);
        break;
    case R_BYTES: {
        bool chunked = c->want_chunked && c->minor >= 1;
        put_head(c, 200, chunked ? F_CHUNKED : F_LENGTH, c->route_arg);
        if (c->head_only)
            break;
        c->resp_remaining = c->route_arg;
        c->resp_offset = 0;
        c->resp_chunked = chunked;
        c->state = ST_BYTES;
        return;
    }
    case R_STATUS:
        n = snprintf(body, sizeof(body), "status %d\n", (int)c->route_arg);
        put_simple(c, (int)c->route_arg, body, (size_t)n);
        break;
    case R_DELAY: {
        struct timeval tv = {(time_t)(c->route_arg / 1000), (suseconds_t)(c->route_arg % 1000) * 1000};
        c->state = ST_DELAY;
        evtimer_add(&c->timer, &tv);
        return;
    }
    case R_HEADERS: {
        struct strbuf *sb = &c->worker->scratch;
        sb->len = 0;
        sb_head_json(sb, c);
        SB_LIT(sb, "}\n");
        put_head(c, 200, F_LENGTH, sb->len);
        if (!c->head_only)
            evbuffer_add(out, sb->data, sb->len);
        break;
    }
    case R_DROP:
        conn_begin_close(c);
        return;
    case R_GARBAGE:
        evbuffer_add(out, "HTTP/1.1 2000 Bad\r\n\r\n", 21);
        conn_begin_close(c);
        return;
    case R_HEALTHZ:
        put_simple(c, 200, "ok\n", 3);
        break;
    case R_BAD:
        put_simple(c, 400, "bad request\n", 12);
        break;
    case R_CLOSE:
        /* same body as the default route, then close */
        c->close_after = true;
        /* fall through */
    case R_DEFAULT: {
        size_t len = strlen(server_name);
        put_head(c, 200, F_LENGTH, len + 1);
        if (!c->head_only) {
            evbuffer_add(out, server_name, len);
            evbuffer_add(out, "\n", 1);
        }
        break;
    }
    }
    response_done(c);
}

/* ---- connection -------------------------------------------------------- */

/* Runs the connection's state machine as far as its buffers allow. Returns -1
 * if it freed c. */
static int conn_process(struct conn *c)
{
    struct evbuffer *in = bufferevent_get_input(c->bev);
    struct evbuffer *out = bufferevent_get_output(c->bev);
    for (;;) {
        switch (c->state) {
        case ST_HEAD: {
            /* Bound pipelining: no new request while the output is full. */
            if (evbuffer_get_length(out) >= OUT_HIGH)
                return 0;
            ssize_t len = read_head(c);
            if (len == 0) {
                if (!c->peer_eof)
                    return 0;
                conn_begin_close(c);
                continue;
            }
            if (len < 0) {
                c->request_id = -1;
                c->head_only = false;
                c->minor = 1;
                bad_request(c);
                continue;
            }
            start_request(c, (size_t)len);
            continue;
        }
        case ST_BODY:
            switch (body_consume(c)) {
            case BODY_DONE:
                finish_request(c);
                continue;
            case BODY_BLOCKED:
                return 0;
            case BODY_MORE:
                if (!c->peer_eof)
                    return 0;
                record_request(c, false);
                conn_begin_close(c);
                continue;
            default: /* BODY_ERROR */
                record_request(c, false);
                if (c->resp_started)
                    conn_begin_close(c);
                else
                    bad_request(c);
                continue;
            }
        case ST_BYTES:
            if (!fill_bytes(c))
                return 0;
            response_done(c);
            continue;
        case ST_DELAY:
            return 0;
        case ST_CLOSING:
            if (evbuffer_get_length(out) > 0)
                return 0;
            if (c->peer_eof) {
                conn_free(c);
                return -1;
            }
            /* Half-close and read until the peer's FIN, so unread pipelined
             * input does not turn our close into a RST that could destroy the
             * response before the client reads it. */
            shutdown(bufferevent_getfd(c->bev), SHUT_WR);
            c->state = ST_LINGER;
            {
                struct timeval linger = {LINGER_SECONDS, 0};
                evtimer_add(&c->timer, &linger);
            }
            continue;
        case ST_LINGER:
            evbuffer_drain(in, evbuffer_get_length(in));
            return 0;
        }
    }
}

static void on_read(struct bufferevent *bev, void *arg)
{
    (void)bev;
    conn_process(arg);
}

static void on_write(struct bufferevent *bev, void *arg)
{
    struct conn *c = arg;
    if (c->state != ST_HEAD || evbuffer_get_length(bufferevent_get_input(bev)) > 0)
        conn_process(c);
}

static void on_event(struct bufferevent *bev, short what, void *arg)
{
    (void)bev;
    struct conn *c = arg;
    if (what & BEV_EVENT_ERROR) {
        conn_free(c);
        return;
    }
    if (what & BEV_EVENT_EOF) {
        c->peer_eof = true;
        if (c->state == ST_LINGER) {
            conn_free(c);
            return;
        }
        conn_process(c);
    }
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct conn *c = arg;
    if (c->state == ST_LINGER) {
        conn_free(c);
        return;
    }
    if (c->state == ST_DELAY) {
        char body[64];
        int n = snprintf(body, sizeof(body), "delayed %" PRIu64 "\n", c->route_arg);
        put_simple(c, 200, body, (size_t)n);
        response_done(c);
        conn_process(c);
    }
}

/* Frees c and its bufferevent; owes a complete:false record line if a request
 * was in progress. Callable from c's own bufferevent callbacks: libevent holds
 * a reference on the bufferevent while it runs them and clears the callbacks
 * on free; every caller returns straight after (conn_process returns -1). */
static void conn_free(struct conn *c)
{
    if (c->req_active)
        record_request(c, false);
    event_del(&c->timer);
    bufferevent_free(c->bev);
    if (c->prev)
        c->prev->next = c->next;
    else
        c->worker->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    free(c->head);
    free(c->headers);
    free(c);
}

static void on_accept(struct evconnlistener *listener, evutil_socket_t fd, struct sockaddr *sa, int socklen, void *arg)
{
    struct worker *w = arg;
    (void)listener;
    (void)sa;
    (void)socklen;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    struct conn *c = calloc(1, sizeof(*c));
    if (!c) {
        fprintf(stderr, "mock-upstream: out of memory accepting a connection; aborting\n");
        abort();
    }
    c->bev = bufferevent_socket_new(w->base, fd, BEV_OPT_CLOSE_ON_FREE);
    if (!c->bev) {
        fprintf(stderr, "mock-upstream: bufferevent_socket_new failed; connection closed\n");
        evutil_closesocket(fd);
        free(c);
        return;
    }
    c->worker = w;
    c->request_id = -1;
    c->minor = 1;
    event_assign(&c->timer, w->base, -1, 0, on_timer, c);
    bufferevent_setcb(c->bev, on_read, on_write, on_event, c);
    bufferevent_setwatermark(c->bev, EV_READ, 0, IN_HIGH);
    bufferevent_setwatermark(c->bev, EV_WRITE, OUT_LOW, 0);
    bufferevent_set_max_single_read(c->bev, 64 * 1024);
    bufferevent_set_max_single_write(c->bev, OUT_HIGH);
    c->next = w->conns;
    if (w->conns)
        w->conns->prev = c;
    w->conns = c;
    bufferevent_enable(c->bev, EV_READ | EV_WRITE);
}

static void on_accept_error(struct evconnlistener *listener, void *arg)
{
    (void)listener;
    (void)arg;
    int err = EVUTIL_SOCKET_ERROR();
    fprintf(stderr, "mock-upstream: accept failed: %s; still listening\n", evutil_socket_error_to_string(err));
}

/* ---- process ----------------------------------------------------------- */

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    event_base_dispatch(w->base);
    return NULL;
}

static struct worker *workers;
static int nworkers;

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    (void)sig;
    (void)what;
    for (int i = 0; i < nworkers; i++)
        event_base_loopexit(workers[i].base, NULL);
    event_base_loopbreak(arg);
}

static int listen_on(const struct sockaddr *sa, socklen_t len, const char *addr)
{
    int one = 1;
    int fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        fprintf(stderr, "mock-upstream: socket() for %s failed: %s; exiting\n", addr, strerror(errno));
        return -1;
    }
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0)
        fprintf(stderr, "mock-upstream: SO_REUSEPORT on %s failed: %s; continuing\n", addr, strerror(errno));
    if (sa->sa_family == AF_INET6)
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
    if (bind(fd, sa, len) < 0 || listen(fd, 4096) < 0) {
        fprintf(stderr, "mock-upstream: bind/listen(%s) failed: %s; exiting\n", addr, strerror(errno));
        close(fd);
        return -1;
    }
    return fd;
}

/* Parses "1.2.3.4:PORT" or "[v6]:PORT" (numeric only; PORT may be 0, which
 * evutil_parse_sockaddr_port refuses). Returns 0 or -1. */
static int parse_listen(const char *addr, struct sockaddr_storage *ss, int *len)
{
    char host[INET6_ADDRSTRLEN + 2];
    const char *colon = strrchr(addr, ':');
    if (!colon || (size_t)(colon - addr) >= sizeof(host))
        return -1;
    memcpy(host, addr, (size_t)(colon - addr));
    host[colon - addr] = '\0';
    uint64_t port;
    if (!parse_u64(colon + 1, strlen(colon + 1), 65535, &port))
        return -1;
    memset(ss, 0, sizeof(*ss));
    size_t hl = strlen(host);
    if (hl >= 2 && host[0] == '[' && host[hl - 1] == ']') {
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;
        host[hl - 1] = '\0';
        if (inet_pton(AF_INET6, host + 1, &sin6->sin6_addr) != 1)
            return -1;
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons((uint16_t)port);
        *len = sizeof(*sin6);
        return 0;
    }
    struct sockaddr_in *sin = (struct sockaddr_in *)ss;
    if (inet_pton(AF_INET, host, &sin->sin_addr) != 1)
        return -1;
    sin->sin_family = AF_INET;
    sin->sin_port = htons((uint16_t)port);
    *len = sizeof(*sin);
    return 0;
}

static void usage(void)
{
    fprintf(stderr, "usage: mock-upstream --listen ADDR --name NAME [--threads N] [--record FILE]\n"
                    "  ADDR: 127.0.0.1:9001 or [::1]:9001 (port 0 picks one)\n");
}

int main(int argc, char **argv)
{
    const char *listen_addr = NULL, *record_path = NULL;
    long threads = 1;
    for (int i = 1; i < argc; i++) {
        const char *opt = argv[i];
        if (strcmp(opt, "--help") == 0 || strcmp(opt, "-h") == 0) {
            usage();
            return 0;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "mock-upstream: %s needs a value\n", opt);
            usage();
            return 2;
        }
        const char *val = argv[++i];
        if (strcmp(opt, "--listen") == 0) {
            listen_addr = val;
        } else if (strcmp(opt, "--name") == 0) {
            server_name = val;
        } else if (strcmp(opt, "--record") == 0) {
            record_path = val;
        } else if (strcmp(opt, "--threads") == 0) {
            char *endp;
            threads = strtol(val, &endp, 10);
            if (*endp != '\0' || threads < 1 || threads > THREADS_MAX) {
                fprintf(stderr, "mock-upstream: --threads must be 1..%d, got '%s'\n", THREADS_MAX, val);
                return 2;
            }
        } else {
            fprintf(stderr, "mock-upstream: unknown option '%s'\n", opt);
            usage();
            return 2;
        }
    }
    if (!listen_addr || !server_name) {
        usage();
        return 2;
    }
    size_t name_len = strlen(server_name);
    bool name_ok = name_len > 0 && name_len <= NAME_MAX_LEN;
    for (size_t i = 0; i < name_len; i++)
        name_ok = name_ok && (unsigned char)server_name[i] > 0x20 && (unsigned char)server_name[i] < 0x7f;
    if (!name_ok) {
        fprintf(stderr, "mock-upstream: --name must be 1..%d visible ASCII characters\n", NAME_MAX_LEN);
        return 2;
    }

    struct sockaddr_storage ss;
    int sslen = 0;
    if (parse_listen(listen_addr, &ss, &sslen) < 0) {
        fprintf(stderr, "mock-upstream: --listen '%s' is not IPV4:PORT or [IPV6]:PORT\n", listen_addr);
        return 2;
    }

    for (size_t i = 0; i < sizeof(pattern_block); i++)
        pattern_block[i] = PATTERN[i % PATTERN_LEN];
    for (int ch = 0; ch < 256; ch++)
        tchar[ch] = (ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
                    (ch && strchr("!#$%&'*+-.^_`|~", ch));
    signal(SIGPIPE, SIG_IGN);

    if (record_path) {
        FILE *f = fopen(record_path, "a");
        if (!f) {
            fprintf(stderr, "mock-upstream: fopen(%s, \"a\") failed: %s; exiting\n", record_path, strerror(errno));
            return 1;
        }
        /* Lines go out with write(2) on the O_APPEND descriptor, one call per
         * line, so concurrent writers never interleave within a line. */
        record_fd = dup(fileno(f));
        fclose(f);
        if (record_fd < 0) {
            fprintf(stderr, "mock-upstream: dup(record file) failed: %s; exiting\n", strerror(errno));
            return 1;
        }
    }

    if (evthread_use_pthreads() < 0) {
        fprintf(stderr, "mock-upstream: evthread_use_pthreads failed; exiting\n");
        return 1;
    }
    nworkers = (int)threads;
    workers = calloc((size_t)nworkers, sizeof(*workers));
    if (!workers)
        abort();

    int rc = 1;
    int started = 0;
    struct event_base *main_base = NULL;
    struct event *sigterm = NULL, *sigint = NULL;
    for (int i = 0; i < nworkers; i++) {
        struct worker *w = &workers[i];
        w->base = event_base_new();
        if (!w->base) {
            fprintf(stderr, "mock-upstream: event_base_new failed; exiting\n");
            goto fail_workers;
        }
        int fd = listen_on((struct sockaddr *)&ss, (socklen_t)sslen, listen_addr);
        if (fd < 0)
            goto fail_workers;
        if (i == 0) { /* port 0: every other listener reuses the port chosen here */
            socklen_t len = sizeof(ss);
            getsockname(fd, (struct sockaddr *)&ss, &len);
            sslen = (int)len;
        }
        w->listener = evconnlistener_new(w->base, on_accept, w, LEV_OPT_CLOSE_ON_FREE, 0, fd);
        if (!w->listener) {
            fprintf(stderr, "mock-upstream: evconnlistener_new failed; exiting\n");
            close(fd);
            goto fail_workers;
        }
        evconnlistener_set_error_cb(w->listener, on_accept_error);
    }

    main_base = event_base_new();
    if (!main_base)
        goto fail_workers;
    sigterm = evsignal_new(main_base, SIGTERM, on_signal, main_base);
    sigint = evsignal_new(main_base, SIGINT, on_signal, main_base);
    if (!sigterm || !sigint || evsignal_add(sigterm, NULL) < 0 || evsignal_add(sigint, NULL) < 0) {
        fprintf(stderr, "mock-upstream: installing signal handlers failed; exiting\n");
        goto fail_signals;
    }

    /* Workers never take SIGTERM/SIGINT: the main thread handles them. */
    sigset_t block, old;
    sigemptyset(&block);
    sigaddset(&block, SIGTERM);
    sigaddset(&block, SIGINT);
    pthread_sigmask(SIG_BLOCK, &block, &old);
    for (; started < nworkers; started++) {
        int err = pthread_create(&workers[started].thread, NULL, worker_main, &workers[started]);
        if (err) {
            fprintf(stderr, "mock-upstream: pthread_create failed: %s; exiting\n", strerror(err));
            break;
        }
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);

    if (started == nworkers) {
        char host[INET6_ADDRSTRLEN];
        uint16_t port;
        if (ss.ss_family == AF_INET6) {
            struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;
            inet_ntop(AF_INET6, &sin6->sin6_addr, host, sizeof(host));
            port = ntohs(sin6->sin6_port);
            printf("listening [%s]:%u\n", host, port);
        } else {
            struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
            inet_ntop(AF_INET, &sin->sin_addr, host, sizeof(host));
            port = ntohs(sin->sin_port);
            printf("listening %s:%u\n", host, port);
        }
        fflush(stdout);
        event_base_dispatch(main_base);
        rc = 0;
    } else {
        on_signal(SIGTERM, 0, main_base);
    }
    for (int i = 0; i < started; i++)
        pthread_join(workers[i].thread, NULL);

fail_signals:
    if (sigterm)
        event_free(sigterm);
    if (sigint)
        event_free(sigint);
    if (main_base)
        event_base_free(main_base);
fail_workers:
    for (int i = 0; i < nworkers; i++) {
        struct worker *w = &workers[i];
        while (w->conns)
            conn_free(w->conns);
        if (w->listener)
            evconnlistener_free(w->listener);
        if (w->base)
            event_base_free(w->base);
        free(w->scratch.data);
    }
    free(workers);
    if (record_fd >= 0)
        close(record_fd);
    libevent_global_shutdown();
    return rc;
}
