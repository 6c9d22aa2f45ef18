/*
 * h1.c - strict HTTP/1.1 head parser and chunked decoder (RFC 9112, RFC 9110).
 *
 * The parsers make one pass over the bytes, validating each one against a
 * character-class table as they go (long values and targets 16 bytes at a
 * time with SSE2); they allocate nothing, and every pointer they return
 * points into the caller's buffer. They are stateless: on
 * H1_INCOMPLETE the caller calls again with more bytes (the head is bounded by
 * max_header_bytes, so re-scanning is bounded too).
 *
 * Anything two implementations could frame differently is refused (request
 * smuggling): bare CR or LF, obs-fold, whitespace before the colon, several or
 * malformed Content-Length fields, Transfer-Encoding with Content-Length,
 * Transfer-Encoding other than a single final "chunked", and so on (see h1.h).
 *
 * Errors found in the bytes seen so far are reported at once, even before the
 * head is complete; a prefix of a valid head never yields an error.
 */
#include "h1.h"

#include <arpa/inet.h>
#include <limits.h>
#include <string.h>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

/* Character classes (RFC 9110 §5.1 token, §5.5 field-value, RFC 3986). */
#define C_TCHAR 0x01  /* tchar: "!#$%&'*+-.^_`|~" DIGIT ALPHA */
#define C_VALUE 0x02  /* field-value byte: HTAB SP VCHAR obs-text (no CTL) */
#define C_TARGET 0x04 /* request-target byte: VCHAR except "#" (no fragment) */
#define C_HOST 0x08   /* reg-name byte accepted in Host: ALPHA DIGIT "-._~" */
#define C_HEX 0x10    /* HEXDIG */

// clang-format off
static const unsigned char char_class[256] = {
    /* 00 */  0,  0,  0,  0,  0,  0,  0,  0,  0,  2,  0,  0,  0,  0,  0,  0,
    /* 10 */  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,
    /* 20 */  2,  7,  6,  3,  7,  7,  7,  7,  6,  6,  7,  7,  6, 15, 15,  6,
    /* 30 */ 31, 31, 31, 31, 31, 31, 31, 31, 31, 31,  6,  6,  6,  6,  6,  6,
    /* 40 */  6, 31, 31, 31, 31, 31, 31, 15, 15, 15, 15, 15, 15, 15, 15, 15,
    /* 50 */ 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15,  6,  6,  6,  7, 15,
    /* 60 */  7, 31, 31, 31, 31, 31, 31, 15, 15, 15, 15, 15, 15, 15, 15, 15,
    /* 70 */ 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15,  6,  7,  6, 15,  0,
    /* 80 */  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,
    /* 90 */  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,
    /* a0 */  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,
    /* b0 */  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,
    /* c0 */  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,
    /* d0 */  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,
    /* e0 */  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,
    /* f0 */  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,
};
// clang-format on

#define IS(c, cls) ((char_class[(unsigned char)(c)] & (cls)) != 0)
#define IS_WS(c) ((c) == ' ' || (c) == '\t')
#define IS_DIGIT(c) ((unsigned char)((c) - '0') < 10)

/*
 * Long runs (field values, request-targets) are skipped 16 bytes at a time
 * with SSE2 (baseline on x86-64); the byte loop handles the rest and any
 * byte the block test flags. The block test never reads past `end`.
 */
#if defined(__SSE2__)
/* First byte in [p, end) that is a CTL (incl. HTAB) or DEL, or the start of
 * the last partial block. */
static inline const unsigned char *skip_value_block(const unsigned char *p, const unsigned char *end)
{
    const __m128i ctl_max = _mm_set1_epi8(0x1f), del = _mm_set1_epi8(0x7f);
    while (end - p >= 16) {
        __m128i v = _mm_loadu_si128((const __m128i *)(const void *)p);
        __m128i bad = _mm_or_si128(_mm_cmpeq_epi8(_mm_min_epu8(v, ctl_max), v), _mm_cmpeq_epi8(v, del));
        int mask = _mm_movemask_epi8(bad);
        if (mask != 0)
            return p + __builtin_ctz((unsigned)mask);
        p += 16;
    }
    return p;
}

/* First byte in [p, end) that is not VCHAR (<= SP, >= DEL) or is "#". */
static inline const unsigned char *skip_target_block(const unsigned char *p, const unsigned char *end)
{
    const __m128i sp = _mm_set1_epi8(0x20), tilde = _mm_set1_epi8(0x7e), hash = _mm_set1_epi8('#');
    while (end - p >= 16) {
        __m128i v = _mm_loadu_si128((const __m128i *)(const void *)p);
        __m128i low = _mm_cmpeq_epi8(_mm_min_epu8(v, sp), v);
        __m128i high = _mm_cmpeq_epi8(_mm_max_epu8(v, tilde), v);
        high = _mm_andnot_si128(_mm_cmpeq_epi8(v, tilde), high);
        int mask = _mm_movemask_epi8(_mm_or_si128(_mm_or_si128(low, high), _mm_cmpeq_epi8(v, hash)));
        if (mask != 0)
            return p + __builtin_ctz((unsigned)mask);
        p += 16;
    }
    return p;
}
#else
static inline const unsigned char *skip_value_block(const unsigned char *p, const unsigned char *end)
{
    (void)end;
    return p;
}

static inline const unsigned char *skip_target_block(const unsigned char *p, const unsigned char *end)
{
    (void)end;
    return p;
}
#endif

/* End of the field-value bytes starting at p (HTAB SP VCHAR obs-text). */
static inline const unsigned char *scan_value(const unsigned char *p, const unsigned char *end)
{
    for (;;) {
        p = skip_value_block(p, end);
        if (p == end || !IS(*p, C_VALUE))
            return p;
        p++; /* HTAB, or a byte of the last partial block */
    }
}

/* End of the request-target bytes starting at p. */
static inline const unsigned char *scan_target(const unsigned char *p, const unsigned char *end)
{
    p = skip_target_block(p, end);
    while (p < end && IS(*p, C_TARGET))
        p++;
    return p;
}

/* Content-Length and chunk sizes above this are refused (h1.h). */
#define H1_MAX_LENGTH ((uint64_t)1 << 62)

static inline unsigned char lower(unsigned char c)
{
    return (unsigned char)(c - 'A') < 26 ? (unsigned char)(c + 32) : c;
}

/* Case-insensitive compare of a counted string with a lowercase literal. */
static bool ieq(const unsigned char *s, size_t n, const char *lit, size_t lit_len)
{
    if (n != lit_len)
        return false;
    for (size_t i = 0; i < n; i++)
        if (lower(s[i]) != (unsigned char)lit[i])
            return false;
    return true;
}

#define IEQ(s, n, lit) ieq((s), (n), lit, sizeof(lit) - 1)

/* Case-insensitive equality of two counted strings. */
static bool ieq_counted(const char *a, size_t alen, const char *b, size_t blen)
{
    if (alen != blen)
        return false;
    for (size_t i = 0; i < alen; i++)
        if (lower((unsigned char)a[i]) != lower((unsigned char)b[i]))
            return false;
    return true;
}

static int fail(struct h1_message *msg, int code, const char *why)
{
    msg->error = why;
    return code;
}

/*
 * Host value or authority: uri-host [ ":" port ] (RFC 9110 §7.2, RFC 3986
 * §3.2.2). Stricter than RFC 3986: reg-name is limited to ALPHA DIGIT "-._~"
 * (no sub-delims, no pct-encoding, which no DNS name needs), IP-literal must
 * be an IPv6 address (no IPvFuture, no zone), and a ":" must be followed by
 * 1-5 digits <= 65535. Userinfo ("@") is refused (RFC 9110 §4.2.4).
 */
static bool valid_host(const unsigned char *h, size_t n, bool need_port)
{
    const unsigned char *p = h, *e = h + n;
    if (n == 0)
        return false;
    if (*p == '[') {
        const unsigned char *close = memchr(p, ']', n);
        char addr[INET6_ADDRSTRLEN];
        struct in6_addr in6;
        if (close == NULL)
            return false;
        size_t alen = (size_t)(close - p - 1);
        if (alen == 0 || alen >= sizeof(addr))
            return false;
        memcpy(addr, p + 1, alen);
        addr[alen] = '\0';
        if (inet_pton(AF_INET6, addr, &in6) != 1)
            return false;
        p = close + 1;
    } else {
        while (p < e && IS(*p, C_HOST))
            p++;
        if (p == h)
            return false;
    }
    if (p == e)
        return !need_port;
    if (*p++ != ':' || p == e || e - p > 5)
        return false;
    unsigned port = 0;
    for (; p < e; p++) {
        if (!IS_DIGIT(*p))
            return false;
        port = port * 10 + (unsigned)(*p - '0');
    }
    return port <= 65535;
}

/* Content-Length = 1*DIGIT (RFC 9110 §8.6), at most 2^62. Nothing else: no sign,
 * no list, no empty value. 19 digits cannot overflow uint64_t. */
static bool parse_length(const unsigned char *v, size_t n, int64_t *out)
{
    uint64_t x = 0;
    if (n == 0 || n > 19)
        return false;
    for (size_t i = 0; i < n; i++) {
        if (!IS_DIGIT(v[i]))
            return false;
        x = x * 10 + (uint64_t)(v[i] - '0');
    }
    if (x > H1_MAX_LENGTH)
        return false;
    *out = (int64_t)x;
    return true;
}

/* Per-parse bookkeeping for the fields with framing or routing meaning. */
struct head {
    bool is_request;
    bool host_seen;
    bool cl_seen;
    bool te_seen;
    bool expect_seen;
    bool conn_close;
    bool conn_keep_alive;
    bool conn_upgrade;
    bool upgrade_field;
    int te_rc;            /* verdict on the Transfer-Encoding value, applied after the head */
    const char *te_error; /* its message */
    const unsigned char *host;
    size_t host_len;
};

/* Connection = #connection-option (RFC 9110 §7.6.1): tokens separated by commas
 * with OWS; empty list elements are allowed (§5.6.1). */
static bool parse_connection(struct head *h, const unsigned char *v, size_t n)
{
    const unsigned char *p = v, *e = v + n;
    while (p < e) {
        if (*p == ',' || IS_WS(*p)) {
            p++;
            continue;
        }
        const unsigned char *tok = p;
        while (p < e && IS(*p, C_TCHAR))
            p++;
        size_t tok_len = (size_t)(p - tok);
        if (tok_len == 0)
            return false;
        while (p < e && IS_WS(*p))
            p++;
        if (p < e && *p != ',')
            return false;
        if (IEQ(tok, tok_len, "close"))
            h->conn_close = true;
        else if (IEQ(tok, tok_len, "keep-alive"))
            h->conn_keep_alive = true;
        else if (IEQ(tok, tok_len, "upgrade"))
            h->conn_upgrade = true;
    }
    return true;
}

/*
 * Transfer-Encoding (RFC 9112 §6.1, §6.3). Sets msg->chunked and h->te_rc.
 * Requests: exactly "chunked". Otherwise the value is refused: malformed lists,
 * parameters, "chunked" twice, or "chunked" not final are 400 (§6.3 MUST); a
 * well-formed list ending in a single "chunked" after other codings
 * ("gzip, chunked") is a coding we do not implement: 501 (§6.1 SHOULD).
 * Responses: "chunked" at most once; if final the body is chunked, otherwise it
 * runs until close (§6.3 rule 7).
 */
static void parse_transfer_encoding(struct head *h, struct h1_message *msg, const unsigned char *v, size_t n)
{
    const unsigned char *p = v, *e = v + n;
    unsigned codings = 0, chunked = 0;
    bool last_chunked = false;

    h->te_rc = 0;
    for (;;) {
        const unsigned char *tok = p;
        while (p < e && IS(*p, C_TCHAR))
            p++;
        size_t tok_len = (size_t)(p - tok);
        while (p < e && IS_WS(*p))
            p++;
        if (tok_len == 0 || (p < e && *p != ',')) {
            h->te_rc = H1_ERR_BAD;
            h->te_error = "invalid Transfer-Encoding";
            return;
        }
        codings++;
        last_chunked = IEQ(tok, tok_len, "chunked");
        chunked += last_chunked;
        if (p == e)
            break;
        p++; /* ',' */
        while (p < e && IS_WS(*p))
            p++;
    }
    if (chunked > 1) {
        h->te_rc = H1_ERR_BAD;
        h->te_error = "chunked applied more than once";
    } else if (h->is_request && !last_chunked) {
        h->te_rc = H1_ERR_BAD;
        h->te_error = "chunked is not the final transfer coding";
    } else if (h->is_request && codings > 1) {
        h->te_rc = H1_ERR_NOT_IMPL;
        h->te_error = "unsupported transfer coding";
    } else if (chunked == 1 && !last_chunked) {
        /* response: close-delimited; chunked can only be the final coding
         * if it was applied last, so "chunked, gzip" means the sender chunked
         * and then compressed - legal, body runs to close. */
        msg->chunked = false;
    } else {
        msg->chunked = last_chunked;
    }
}

/* Apply one field with framing or routing meaning. Returns 0 or H1_ERR_*. */
static int on_field(struct head *h, struct h1_message *msg, const unsigned char *name, size_t name_len, const unsigned char *value,
                    size_t value_len)
{
    switch (name_len) {
    case 4:
        if (h->is_request && IEQ(name, name_len, "host")) {
            if (h->host_seen)
                return fail(msg, H1_ERR_BAD, "duplicate Host");
            if (!valid_host(value, value_len, false))
                return fail(msg, H1_ERR_BAD, "invalid Host");
            h->host_seen = true;
            h->host = value;
            h->host_len = value_len;
        }
        break;
    case 6:
        if (h->is_request && IEQ(name, name_len, "expect")) {
            /* RFC 9110 §10.1.1: 100-continue is the only expectation defined;
             * we refuse others (and repeats) rather than answer 417. */
            if (h->expect_seen)
                return fail(msg, H1_ERR_BAD, "duplicate Expect");
            if (!IEQ(value, value_len, "100-continue"))
                return fail(msg, H1_ERR_BAD, "unsupported Expect");
            h->expect_seen = true;
        }
        break;
    case 7:
        if (IEQ(name, name_len, "upgrade"))
            h->upgrade_field = true;
        break;
    case 10:
        if (IEQ(name, name_len, "connection") && !parse_connection(h, value, value_len))
            return fail(msg, H1_ERR_BAD, "invalid Connection");
        break;
    case 14:
        if (IEQ(name, name_len, "content-length")) {
            /* RFC 9112 §6.3: several lengths, even identical, are refused. */
            if (h->cl_seen)
                return fail(msg, H1_ERR_BAD, "duplicate Content-Length");
            if (!parse_length(value, value_len, &msg->content_length))
                return fail(msg, H1_ERR_BAD, "invalid Content-Length");
            h->cl_seen = true;
        }
        break;
    case 17:
        if (IEQ(name, name_len, "transfer-encoding")) {
            if (h->te_seen)
                return fail(msg, H1_ERR_BAD, "duplicate Transfer-Encoding");
            h->te_seen = true;
            parse_transfer_encoding(h, msg, value, value_len);
        }
        break;
    default:
        break;
    }
    return 0;
}

/* Why a field name ended at *p (not ':'). */
static const char *bad_name_reason(const unsigned char *p, const unsigned char *name)
{
    if (IS_WS(*p))
        return p == name ? "obs-fold or whitespace at line start" : "whitespace before colon";
    if (*p == '\n')
        return "bare LF";
    if (*p == '\r')
        return "field line without colon";
    return "invalid character in field name";
}

static const char *bad_value_reason(unsigned char c)
{
    if (c == '\n')
        return "bare LF";
    if (c == '\0')
        return "NUL in field value";
    return "control character in field value";
}

/*
 * Field lines up to and including the empty line (RFC 9112 §5):
 *   field-line = field-name ":" OWS field-value OWS CRLF
 * *pp starts at the first field line; end is the last byte we may look at
 * (capped says whether it is the head limit rather than the end of input).
 * Returns 0 with *pp after the final CRLF, H1_INCOMPLETE, or H1_ERR_*.
 */
static int parse_fields(struct head *h, struct h1_message *msg, const unsigned char **pp, const unsigned char *end, bool capped,
                        size_t max_headers)
{
    const unsigned char *p = *pp;
    for (;;) {
        if (p == end)
            goto more;
        if (*p == '\r') {
            if (++p == end)
                goto more;
            if (*p != '\n')
                return fail(msg, H1_ERR_BAD, "bare CR");
            *pp = p + 1;
            return 0;
        }
        if (msg->n_headers == max_headers)
            return fail(msg, H1_ERR_HDR_LARGE, "too many header fields");

        const unsigned char *name = p;
        while (p < end && IS(*p, C_TCHAR))
            p++;
        if (p == end)
            goto more;
        if (*p != ':')
            return fail(msg, H1_ERR_BAD, bad_name_reason(p, name));
        if (p == name)
            return fail(msg, H1_ERR_BAD, "empty field name");
        size_t name_len = (size_t)(p - name);

        p++;
        while (p < end && IS_WS(*p))
            p++;
        const unsigned char *value = p;
        p = scan_value(p, end);
        if (p == end)
            goto more;
        if (*p != '\r')
            return fail(msg, H1_ERR_BAD, bad_value_reason(*p));
        const unsigned char *value_end = p;
        while (value_end > value && IS_WS(value_end[-1]))
            value_end--;
        if (++p == end)
            goto more;
        if (*p != '\n')
            return fail(msg, H1_ERR_BAD, "bare CR");
        p++;

        size_t value_len = (size_t)(value_end - value);
        struct h1_header *hd = &msg->headers[msg->n_headers++];
        hd->name = (const char *)name;
        hd->name_len = name_len;
        hd->value = (const char *)value;
        hd->value_len = value_len;
        int rc = on_field(h, msg, name, name_len, value, value_len);
        if (rc != 0)
            return rc;
    }
more:
    if (capped)
        return fail(msg, H1_ERR_HDR_LARGE, "head too large");
    return H1_INCOMPLETE;
}

static void message_reset(struct h1_message *msg)
{
    msg->version_minor = 0;
    msg->n_headers = 0;
    msg->content_length = -1;
    msg->chunked = false;
    msg->keep_alive = false;
    msg->connection_close = false;
    msg->upgrade = false;
    msg->error = NULL;
}

/*
 * HTTP-version = "HTTP/" DIGIT "." DIGIT (RFC 9112 §2.3), case-sensitive.
 * 1.0 and 1.1 are accepted; other well-formed versions (HTTP/2.0, HTTP/3,
 * HTTP/1.2, HTTP/0.9) are H1_ERR_VERSION; anything else H1_ERR_BAD.
 */
static int parse_version(const unsigned char *v, size_t n, int *minor)
{
    if (n == 8 && memcmp(v, "HTTP/1.", 7) == 0 && (v[7] == '0' || v[7] == '1')) {
        *minor = v[7] - '0';
        return 0;
    }
    if (n >= 6 && memcmp(v, "HTTP/", 5) == 0 && IS_DIGIT(v[5])) {
        if (n == 8 && v[6] == '.' && IS_DIGIT(v[7]))
            return H1_ERR_VERSION;
        if (n == 6 && v[5] != '1') /* "HTTP/2", "HTTP/3" */
            return H1_ERR_VERSION;
    }
    return H1_ERR_BAD;
}

/* Limits as used: the head length must fit the int return value. */
static size_t head_limit(const struct h1_limits *limits)
{
    return limits->max_header_bytes < (size_t)INT_MAX ? limits->max_header_bytes : (size_t)INT_MAX;
}

static size_t fields_limit(const struct h1_limits *limits)
{
    return limits->max_headers < H1_MAX_HEADERS ? limits->max_headers : H1_MAX_HEADERS;
}

int h1_parse_request(const char *buf, size_t len, const struct h1_limits *limits, struct h1_request *req)
{
    struct h1_message *msg = &req->msg;
    const unsigned char *start = (const unsigned char *)buf;
    size_t max_head = head_limit(limits);
    bool capped = len >= max_head;
    const unsigned char *end = start + (capped ? max_head : len);
    const unsigned char *p = start;
    struct head h = {.is_request = true};
    int rc;

    message_reset(msg);
    req->method = req->target = req->path = req->host = NULL;
    req->method_len = req->target_len = req->path_len = req->host_len = 0;
    req->expect_continue = false;
    req->is_connect = false;

    /* RFC 9112 §2.2: ignore at least one empty line before the request-line;
     * we ignore exactly one, and only as CRLF. */
    if (p == end)
        goto more;
    if (*p == '\r') {
        if (++p == end)
            goto more;
        if (*p != '\n')
            return fail(msg, H1_ERR_BAD, "bare CR");
        p++;
    }

    /* request-line = method SP request-target SP HTTP-version CRLF, with
     * exactly one SP each (RFC 9112 §3), bounded by max_request_line. */
    const unsigned char *line = p;
    const unsigned char *line_end = end;
    bool line_capped = false;
    if ((size_t)(end - line) >= limits->max_request_line) {
        line_end = line + limits->max_request_line;
        line_capped = true;
    }

    while (p < line_end && IS(*p, C_TCHAR))
        p++;
    if (p == line_end)
        goto line_more;
    if (*p != ' ' || p == line)
        return fail(msg, H1_ERR_BAD, *p == '\n' ? "bare LF" : "invalid method");
    const unsigned char *method = line;
    size_t method_len = (size_t)(p - line);

    const unsigned char *target = ++p;
    p = scan_target(p, line_end);
    if (p == line_end)
        goto line_more;
    if (*p != ' ' || p == target)
        return fail(msg, H1_ERR_BAD, "invalid request-target");
    size_t target_len = (size_t)(p - target);

    const unsigned char *version = ++p;
    while (p < line_end && (IS(*p, C_TCHAR) || *p == '/'))
        p++;
    if (p == line_end)
        goto line_more;
    if (*p != '\r')
        return fail(msg, H1_ERR_BAD, *p == '\n' ? "bare LF" : "invalid HTTP version");
    size_t version_len = (size_t)(p - version);
    if (++p == line_end)
        goto line_more;
    if (*p != '\n')
        return fail(msg, H1_ERR_BAD, "bare CR");
    p++;

    rc = parse_version(version, version_len, &msg->version_minor);
    if (rc != 0)
        return fail(msg, rc, rc == H1_ERR_VERSION ? "unsupported HTTP version" : "invalid HTTP version");

    req->method = (const char *)method;
    req->method_len = method_len;
    req->target = (const char *)target;
    req->target_len = target_len;

    /* request-target forms (RFC 9112 §3.2). */
    const unsigned char *authority = NULL;
    size_t authority_len = 0;
    if (method_len == 7 && memcmp(method, "CONNECT", 7) == 0) {
        /* authority-form: uri-host ":" port, CONNECT only (§3.2.3). */
        if (!valid_host(target, target_len, true))
            return fail(msg, H1_ERR_BAD, "CONNECT needs authority-form host:port");
        req->is_connect = true;
        req->path = (const char *)target;
        req->path_len = target_len;
    } else if (target[0] == '/') {
        req->path = (const char *)target;
        req->path_len = target_len;
    } else if (target_len == 1 && target[0] == '*') {
        if (!(method_len == 7 && memcmp(method, "OPTIONS", 7) == 0))
            return fail(msg, H1_ERR_BAD, "asterisk-form only with OPTIONS");
        req->path = (const char *)target;
        req->path_len = 1;
    } else {
        /* absolute-form (§3.2.2): scheme case-insensitive (RFC 3986 §3.1). */
        size_t skip = 0;
        if (target_len >= 7 && IEQ(target, 7, "http://"))
            skip = 7;
        else if (target_len >= 8 && IEQ(target, 8, "https://"))
            skip = 8;
        else
            return fail(msg, H1_ERR_BAD, "invalid request-target form");
        authority = target + skip;
        const unsigned char *slash = memchr(authority, '/', target_len - skip);
        authority_len = slash != NULL ? (size_t)(slash - authority) : target_len - skip;
        if (!valid_host(authority, authority_len, false))
            return fail(msg, H1_ERR_BAD, "invalid authority in request-target");
        if (slash != NULL) {
            req->path = (const char *)slash;
            req->path_len = (size_t)(target + target_len - slash);
        } else {
            req->path = "/";
            req->path_len = 1;
        }
    }

    rc = parse_fields(&h, msg, &p, end, capped, fields_limit(limits));
    if (rc != 0)
        return rc;

    /* RFC 9112 §6.1, §6.3: ambiguous framing. */
    if (h.te_seen && h.cl_seen)
        return fail(msg, H1_ERR_BAD, "Content-Length with Transfer-Encoding");
    if (h.te_seen && msg->version_minor == 0)
        return fail(msg, H1_ERR_BAD, "Transfer-Encoding in HTTP/1.0");
    if (h.te_rc != 0)
        return fail(msg, h.te_rc, h.te_error);
    /* RFC 9112 §3.2: HTTP/1.1 requests carry exactly one Host. */
    if (!h.host_seen && msg->version_minor == 1)
        return fail(msg, H1_ERR_BAD, "missing Host");
    if (authority != NULL) {
        /* RFC 9112 §3.2.2 lets a proxy replace Host with the authority; we
         * refuse the disagreement instead, so no two hops can route the request
         * differently. An HTTP/1.0 request without Host routes by the authority. */
        if (!h.host_seen) {
            h.host = authority;
            h.host_len = authority_len;
        } else if (!ieq_counted((const char *)authority, authority_len, (const char *)h.host, h.host_len)) {
            return fail(msg, H1_ERR_BAD, "request-target authority differs from Host");
        }
    }
    req->host = (const char *)h.host;
    req->host_len = h.host_len;

    msg->connection_close = h.conn_close;
    msg->keep_alive = !h.conn_close && (msg->version_minor == 1 || h.conn_keep_alive);
    /* RFC 9110 §7.8: Upgrade in an HTTP/1.0 request is ignored. */
    msg->upgrade = msg->version_minor == 1 && h.conn_upgrade && h.upgrade_field;
    /* RFC 9110 §10.1.1: 100-continue in an HTTP/1.0 request is ignored. */
    req->expect_continue = msg->version_minor == 1 && h.expect_seen;
    return (int)(p - start);

line_more:
    if (line_capped)
        return fail(msg, H1_ERR_URI_LONG, "request line too long");
more:
    if (capped)
        return fail(msg, H1_ERR_HDR_LARGE, "head too large");
    return H1_INCOMPLETE;
}

int h1_parse_response(const char *buf, size_t len, const struct h1_limits *limits, struct h1_response *resp)
{
    struct h1_message *msg = &resp->msg;
    const unsigned char *start = (const unsigned char *)buf;
    size_t max_head = head_limit(limits);
    bool capped = len >= max_head;
    const unsigned char *end = start + (capped ? max_head : len);
    const unsigned char *p = start;
    struct head h = {.is_request = false};
    int rc;

    message_reset(msg);
    resp->status = 0;
    resp->reason = NULL;
    resp->reason_len = 0;

    /* status-line = HTTP-version SP status-code SP [ reason-phrase ] CRLF
     * (RFC 9112 §4); the SP before an empty reason is tolerated when absent.
     * No leading empty line: from an upstream it would mean a framing error. */
    const unsigned char *line_end = end;
    bool line_capped = false;
    if ((size_t)(end - p) >= limits->max_request_line) {
        line_end = p + limits->max_request_line;
        line_capped = true;
    }

    const unsigned char *version = p;
    while (p < line_end && (IS(*p, C_TCHAR) || *p == '/'))
        p++;
    if (p == line_end)
        goto line_more;
    if (*p != ' ')
        return fail(msg, H1_ERR_BAD, *p == '\n' ? "bare LF" : "invalid status line");
    if (parse_version(version, (size_t)(p - version), &msg->version_minor) != 0)
        return fail(msg, H1_ERR_BAD, "invalid HTTP version");
    p++;

    int status = 0;
    for (int i = 0; i < 3; i++, p++) {
        if (p == line_end)
            goto line_more;
        if (!IS_DIGIT(*p))
            return fail(msg, H1_ERR_BAD, "invalid status code");
        status = status * 10 + (*p - '0');
    }
    if (p == line_end)
        goto line_more;
    const unsigned char *reason = p;
    if (*p == ' ') {
        reason = ++p;
        p = scan_value(p, line_end);
        if (p == line_end)
            goto line_more;
    }
    if (*p != '\r')
        return fail(msg, H1_ERR_BAD, *p == '\n' ? "bare LF" : IS_DIGIT(*p) ? "invalid status code" : "invalid status line");
    const unsigned char *reason_end = p;
    if (++p == line_end)
        goto line_more;
    if (*p != '\n')
        return fail(msg, H1_ERR_BAD, "bare CR");
    p++;
    if (status < 100 || status > 599)
        return fail(msg, H1_ERR_BAD, "status code out of range");
    resp->status = status;
    resp->reason = (const char *)reason;
    resp->reason_len = (size_t)(reason_end - reason);

    rc = parse_fields(&h, msg, &p, end, capped, fields_limit(limits));
    if (rc != 0)
        return rc;

    if (h.te_seen && h.cl_seen)
        return fail(msg, H1_ERR_BAD, "Content-Length with Transfer-Encoding");
    /* RFC 9112 §6.1: Transfer-Encoding in an HTTP/1.0 message means faulty framing. */
    if (h.te_seen && msg->version_minor == 0)
        return fail(msg, H1_ERR_BAD, "Transfer-Encoding in HTTP/1.0");
    if (h.te_rc != 0)
        return fail(msg, h.te_rc, h.te_error);
    /* RFC 9110 §8.6, RFC 9112 §6.1: 1xx and 204 have no body and may not
     * announce one; 304 may carry the Content-Length of the representation. */
    if ((status < 200 || status == 204) && (h.cl_seen || h.te_seen))
        return fail(msg, H1_ERR_BAD, "1xx/204 response with a body length");
    if (status == 304 && h.te_seen)
        return fail(msg, H1_ERR_BAD, "304 response with Transfer-Encoding");

    msg->connection_close = h.conn_close;
    msg->keep_alive = !h.conn_close && (msg->version_minor == 1 || h.conn_keep_alive);
    msg->upgrade = msg->version_minor == 1 && h.conn_upgrade && h.upgrade_field;
    return (int)(p - start);

line_more:
    /* An over-long status line is a head-size problem: there is no 414 for responses. */
    if (line_capped)
        return fail(msg, H1_ERR_HDR_LARGE, "status line too long");
    if (capped)
        return fail(msg, H1_ERR_HDR_LARGE, "head too large");
    return H1_INCOMPLETE;
}

enum h1_body_kind h1_request_body_kind(const struct h1_request *req)
{
    if (req->msg.chunked)
        return H1_BODY_CHUNKED;
    if (req->msg.content_length > 0)
        return H1_BODY_LENGTH;
    return H1_BODY_NONE;
}

enum h1_body_kind h1_response_body_kind(const struct h1_response *resp, bool is_head)
{
    /* RFC 9112 §6.3 rules 1-2. */
    if (is_head || resp->status < 200 || resp->status == 204 || resp->status == 304)
        return H1_BODY_NONE;
    if (resp->msg.chunked)
        return H1_BODY_CHUNKED;
    if (resp->msg.content_length >= 0)
        return H1_BODY_LENGTH;
    return H1_BODY_CLOSE;
}

/* Chunked decoder states; 0 must be the initial state (zero-initialised). */
enum {
    CS_SIZE_START = 0,   /* first HEXDIG of a chunk-size */
    CS_SIZE,             /* more HEXDIG, or what follows the size */
    CS_EXT_WS,           /* BWS before ";" */
    CS_EXT_NAME_START,   /* after ";": BWS then chunk-ext-name */
    CS_EXT_NAME,         /* in chunk-ext-name */
    CS_EXT_NAME_WS,      /* BWS after the name: "=" or ";" must follow */
    CS_EXT_VALUE_START,  /* after "=": BWS then token or quoted-string */
    CS_EXT_TOKEN,        /* in a token value */
    CS_EXT_QUOTED,       /* in a quoted-string value */
    CS_EXT_QUOTED_PAIR,  /* after "\" in a quoted-string */
    CS_EXT_AFTER_QUOTED, /* after the closing DQUOTE */
    CS_SIZE_LF,          /* CR of the chunk-size line seen */
    CS_DATA,             /* chunk-data, c->remaining bytes left */
    CS_DATA_CR,          /* CRLF after chunk-data */
    CS_DATA_LF,
    CS_TRAILER_START, /* start of a trailer field line or of the final CRLF */
    CS_TRAILER_NAME,
    CS_TRAILER_VALUE,
    CS_TRAILER_LF,
    CS_END_LF, /* CR of the final empty line seen */
    CS_DONE,
    CS_ERROR,
};

void h1_chunked_init(struct h1_chunked *c)
{
    memset(c, 0, sizeof(*c));
}

static long chunk_fail(struct h1_chunked *c, const char *why)
{
    c->state = CS_ERROR;
    c->error = why;
    return H1_ERR_BAD;
}

static inline unsigned hex_value(unsigned char ch)
{
    return ch <= '9' ? (unsigned)(ch - '0') : (unsigned)(lower(ch) - 'a' + 10);
}

/*
 * chunked-body = *chunk last-chunk trailer-section CRLF (RFC 9112 §7.1)
 *   chunk      = chunk-size [ chunk-ext ] CRLF chunk-data CRLF
 *   chunk-ext  = *( BWS ";" BWS chunk-ext-name [ BWS "=" BWS chunk-ext-val ] )
 * Extensions are validated and ignored; trailer fields are validated and
 * discarded (RFC 9112 §7.1.2 lets a recipient drop them).
 */
long h1_chunked_feed(struct h1_chunked *c, const char *in, size_t len, size_t *data_off, size_t *data_len)
{
    const unsigned char *s = (const unsigned char *)in;
    size_t i = 0;

    *data_off = 0;
    *data_len = 0;
    if (c->state == CS_ERROR)
        return H1_ERR_BAD;

    while (i < len) {
        unsigned char ch = s[i];

        if (c->state == CS_DATA) {
            size_t n = len - i;
            if ((uint64_t)n > c->remaining)
                n = (size_t)c->remaining;
            *data_off = i;
            *data_len = n;
            c->remaining -= n;
            if (c->remaining == 0)
                c->state = CS_DATA_CR;
            return (long)(i + n); /* at most one run of payload per call */
        }
        if (c->state == CS_DONE)
            return (long)i;

        if (c->state < CS_SIZE_LF) {
            /* the chunk-size line: size and extensions, CR ends it */
            if (ch != '\r' && ++c->line_len > H1_CHUNK_MAX_LINE)
                return chunk_fail(c, "chunk-size line too long");
            if (ch == '\n')
                return chunk_fail(c, "bare LF in chunk-size line");
        } else if (c->state >= CS_TRAILER_START) {
            if (++c->trailer_bytes > H1_CHUNK_MAX_TRAILER)
                return chunk_fail(c, "trailer section too large");
        }

        switch (c->state) {
        case CS_SIZE_START:
            if (!IS(ch, C_HEX))
                return chunk_fail(c, "invalid chunk size");
            c->remaining = hex_value(ch);
            c->state = CS_SIZE;
            break;
        case CS_SIZE:
            if (IS(ch, C_HEX)) {
                if (c->remaining > (H1_MAX_LENGTH >> 4))
                    return chunk_fail(c, "chunk size too large");
                c->remaining = (c->remaining << 4) | hex_value(ch);
                if (c->remaining > H1_MAX_LENGTH)
                    return chunk_fail(c, "chunk size too large");
            } else if (ch == ';') {
                c->state = CS_EXT_NAME_START;
            } else if (IS_WS(ch)) {
                c->state = CS_EXT_WS;
            } else if (ch == '\r') {
                c->state = CS_SIZE_LF;
            } else {
                return chunk_fail(c, "invalid chunk size");
            }
            break;
        case CS_EXT_WS:
            if (ch == ';')
                c->state = CS_EXT_NAME_START;
            else if (!IS_WS(ch))
                return chunk_fail(c, "invalid chunk extension");
            break;
        case CS_EXT_NAME_START:
            if (IS(ch, C_TCHAR))
                c->state = CS_EXT_NAME;
            else if (!IS_WS(ch))
                return chunk_fail(c, "invalid chunk extension");
            break;
        case CS_EXT_NAME:
            if (IS(ch, C_TCHAR))
                break;
            if (IS_WS(ch))
                c->state = CS_EXT_NAME_WS;
            else if (ch == '=')
                c->state = CS_EXT_VALUE_START;
            else if (ch == ';')
                c->state = CS_EXT_NAME_START;
            else if (ch == '\r')
                c->state = CS_SIZE_LF;
            else
                return chunk_fail(c, "invalid chunk extension");
            break;
        case CS_EXT_NAME_WS:
            if (ch == '=')
                c->state = CS_EXT_VALUE_START;
            else if (ch == ';')
                c->state = CS_EXT_NAME_START;
            else if (!IS_WS(ch))
                return chunk_fail(c, "invalid chunk extension");
            break;
        case CS_EXT_VALUE_START:
            if (IS(ch, C_TCHAR))
                c->state = CS_EXT_TOKEN;
            else if (ch == '"')
                c->state = CS_EXT_QUOTED;
            else if (!IS_WS(ch))
                return chunk_fail(c, "invalid chunk extension");
            break;
        case CS_EXT_TOKEN:
            if (IS(ch, C_TCHAR))
                break;
            if (IS_WS(ch))
                c->state = CS_EXT_WS;
            else if (ch == ';')
                c->state = CS_EXT_NAME_START;
            else if (ch == '\r')
                c->state = CS_SIZE_LF;
            else
                return chunk_fail(c, "invalid chunk extension");
            break;
        case CS_EXT_QUOTED:
            /* qdtext / quoted-pair (RFC 9110 §5.6.4) */
            if (ch == '"')
                c->state = CS_EXT_AFTER_QUOTED;
            else if (ch == '\\')
                c->state = CS_EXT_QUOTED_PAIR;
            else if (!IS(ch, C_VALUE))
                return chunk_fail(c, "invalid chunk extension");
            break;
        case CS_EXT_QUOTED_PAIR:
            if (!IS(ch, C_VALUE))
                return chunk_fail(c, "invalid chunk extension");
            c->state = CS_EXT_QUOTED;
            break;
        case CS_EXT_AFTER_QUOTED:
            if (IS_WS(ch))
                c->state = CS_EXT_WS;
            else if (ch == ';')
                c->state = CS_EXT_NAME_START;
            else if (ch == '\r')
                c->state = CS_SIZE_LF;
            else
                return chunk_fail(c, "invalid chunk extension");
            break;
        case CS_SIZE_LF:
            if (ch != '\n')
                return chunk_fail(c, "bare CR in chunk-size line");
            c->line_len = 0;
            c->state = c->remaining == 0 ? CS_TRAILER_START : CS_DATA;
            break;
        case CS_DATA_CR:
            if (ch != '\r')
                return chunk_fail(c, "missing CRLF after chunk data");
            c->state = CS_DATA_LF;
            break;
        case CS_DATA_LF:
            if (ch != '\n')
                return chunk_fail(c, "missing CRLF after chunk data");
            c->state = CS_SIZE_START;
            break;
        case CS_TRAILER_START:
            if (ch == '\r')
                c->state = CS_END_LF;
            else if (IS(ch, C_TCHAR))
                c->state = CS_TRAILER_NAME;
            else
                return chunk_fail(c, IS_WS(ch) ? "obs-fold in trailer section" : "invalid trailer field");
            break;
        case CS_TRAILER_NAME:
            if (ch == ':')
                c->state = CS_TRAILER_VALUE;
            else if (!IS(ch, C_TCHAR))
                return chunk_fail(c, IS_WS(ch) ? "whitespace before colon in trailer" : "invalid trailer field name");
            break;
        case CS_TRAILER_VALUE:
            if (ch == '\r')
                c->state = CS_TRAILER_LF;
            else if (!IS(ch, C_VALUE))
                return chunk_fail(c, ch == '\n' ? "bare LF in trailer" : "control character in trailer value");
            break;
        case CS_TRAILER_LF:
            if (ch != '\n')
                return chunk_fail(c, "bare CR in trailer");
            c->state = CS_TRAILER_START;
            break;
        case CS_END_LF:
            if (ch != '\n')
                return chunk_fail(c, "bare CR after trailer section");
            c->state = CS_DONE;
            c->done = true;
            return (long)(i + 1); /* bytes after the body belong to the next message */
        default:
            return chunk_fail(c, "invalid decoder state");
        }
        i++;
    }
    return (long)i;
}

/*
 * Hop-by-hop fields (RFC 9110 §7.6.1, RFC 9112 §9.6, RFC 9113 §8.2.2 for
 * HTTP2-Settings). Proxy-Authorization and Proxy-Authenticate are included
 * although h1.h lists the latter as end-to-end: RFC 9110 §11.7.1-2 says both
 * apply to the next hop only, and a reverse proxy relaying an upstream's
 * Proxy-Authenticate would ask the client to authenticate to a proxy it never
 * chose.
 */
bool h1_is_hop_by_hop(const char *name, size_t name_len)
{
    const unsigned char *n = (const unsigned char *)name;
    switch (name_len) {
    case 2:
        return IEQ(n, name_len, "te");
    case 7:
        return IEQ(n, name_len, "trailer") || IEQ(n, name_len, "upgrade");
    case 10:
        return IEQ(n, name_len, "connection") || IEQ(n, name_len, "keep-alive");
    case 14:
        return IEQ(n, name_len, "http2-settings");
    case 16:
        return IEQ(n, name_len, "proxy-connection");
    case 17:
        return IEQ(n, name_len, "transfer-encoding");
    case 18:
        return IEQ(n, name_len, "proxy-authenticate");
    case 19:
        return IEQ(n, name_len, "proxy-authorization");
    default:
        return false;
    }
}

bool h1_connection_lists(const struct h1_message *msg, const char *name, size_t name_len)
{
    for (size_t i = 0; i < msg->n_headers; i++) {
        const struct h1_header *hd = &msg->headers[i];
        if (!IEQ((const unsigned char *)hd->name, hd->name_len, "connection"))
            continue;
        const char *p = hd->value, *e = hd->value + hd->value_len;
        while (p < e) {
            if (*p == ',' || IS_WS(*p)) {
                p++;
                continue;
            }
            const char *tok = p;
            while (p < e && *p != ',' && !IS_WS(*p))
                p++;
            if (ieq_counted(tok, (size_t)(p - tok), name, name_len))
                return true;
        }
    }
    return false;
}

const struct h1_header *h1_find_header(const struct h1_message *msg, const char *name)
{
    size_t name_len = strlen(name);
    for (size_t i = 0; i < msg->n_headers; i++) {
        const struct h1_header *hd = &msg->headers[i];
        if (ieq_counted(hd->name, hd->name_len, name, name_len))
            return hd;
    }
    return NULL;
}
