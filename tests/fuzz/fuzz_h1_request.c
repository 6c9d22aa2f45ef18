/*
 * fuzz_h1_request.c - libFuzzer target for h1_parse_request().
 *
 * Beyond "does not crash", it checks the contract in proxy/h1.h:
 *  - the result is a head length or one of the documented codes, and every
 *    failure carries an error string;
 *  - a complete head ends in CRLF CRLF inside the input, every span the
 *    result points at lies inside the head, names are tokens, values carry no
 *    CTL and no surrounding OWS, and the framing flags agree with the fields;
 *  - the parser is stable under truncation and extension: re-parsing exactly
 *    the head gives the same result, a shorter prefix is INCOMPLETE, and an
 *    error seen in a prefix is the error of the whole input;
 *  - tight limits never accept what generous limits refuse.
 * Each parse runs on an exact-size heap copy so ASan catches any over-read.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proxy/h1.h"

#define CHECK(cond)                                                                                                                \
    do {                                                                                                                           \
        if (!(cond)) {                                                                                                             \
            fprintf(stderr, "invariant failed: %s (%s:%d)\n", #cond, __FILE__, __LINE__);                                          \
            abort();                                                                                                               \
        }                                                                                                                          \
    } while (0)

static const struct h1_limits wide = {.max_request_line = 8192, .max_header_bytes = 65536, .max_headers = H1_MAX_HEADERS};
static const struct h1_limits tight = {.max_request_line = 40, .max_header_bytes = 120, .max_headers = 4};

static struct h1_request first, other;

static bool span_in(const char *p, size_t n, const char *buf, size_t len)
{
    uintptr_t a = (uintptr_t)p, b = (uintptr_t)buf;
    return p != NULL && a >= b && n <= len && a - b <= len - n;
}

static bool is_tchar(unsigned char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

static bool ieq(const char *a, size_t n, const char *lit)
{
    size_t m = strlen(lit);
    if (n != m)
        return false;
    for (size_t i = 0; i < n; i++) {
        char x = a[i] >= 'A' && a[i] <= 'Z' ? (char)(a[i] + 32) : a[i];
        if (x != lit[i])
            return false;
    }
    return true;
}

static int parse_copy(const uint8_t *data, size_t len, const struct h1_limits *lim, struct h1_request *req)
{
    char *copy = malloc(len ? len : 1);
    memcpy(copy, data, len);
    int rc = h1_parse_request(copy, len, lim, req);
    /* results point into copy: callers compare only codes and lengths */
    free(copy);
    return rc;
}

static void check_message(const struct h1_message *m, const char *buf, size_t head, const struct h1_limits *lim)
{
    CHECK(m->error == NULL);
    CHECK(m->version_minor == 0 || m->version_minor == 1);
    CHECK(m->n_headers <= lim->max_headers && m->n_headers <= H1_MAX_HEADERS);
    CHECK(m->content_length >= -1 && m->content_length <= INT64_C(4611686018427387904));
    CHECK(!(m->chunked && m->content_length >= 0));
    CHECK(!(m->keep_alive && m->connection_close));
    size_t n_cl = 0, n_te = 0;
    for (size_t i = 0; i < m->n_headers; i++) {
        const struct h1_header *h = &m->headers[i];
        CHECK(h->name_len > 0 && span_in(h->name, h->name_len, buf, head));
        CHECK(h->value_len == 0 || span_in(h->value, h->value_len, buf, head));
        for (size_t j = 0; j < h->name_len; j++)
            CHECK(is_tchar((unsigned char)h->name[j]));
        for (size_t j = 0; j < h->value_len; j++) {
            unsigned char c = (unsigned char)h->value[j];
            CHECK(c == '\t' || (c >= 0x20 && c != 0x7f));
        }
        if (h->value_len > 0) {
            CHECK(h->value[0] != ' ' && h->value[0] != '\t');
            CHECK(h->value[h->value_len - 1] != ' ' && h->value[h->value_len - 1] != '\t');
        }
        if (ieq(h->name, h->name_len, "content-length")) {
            n_cl++;
            int64_t v = 0;
            for (size_t j = 0; j < h->value_len; j++)
                v = v * 10 + (h->value[j] - '0');
            CHECK(v == m->content_length);
        }
        if (ieq(h->name, h->name_len, "transfer-encoding"))
            n_te++;
    }
    CHECK(n_cl <= 1 && n_te <= 1 && n_cl + n_te <= 1);
    CHECK((n_cl == 1) == (m->content_length >= 0));
}

static void check_request(const struct h1_request *r, const char *buf, size_t head, const struct h1_limits *lim)
{
    const struct h1_message *m = &r->msg;
    check_message(m, buf, head, lim);
    CHECK(head >= 4 && head <= lim->max_header_bytes && memcmp(buf + head - 4, "\r\n\r\n", 4) == 0);
    CHECK(r->method_len > 0 && span_in(r->method, r->method_len, buf, head));
    CHECK(r->target_len > 0 && span_in(r->target, r->target_len, buf, head));
    CHECK(r->method + r->method_len + 1 == r->target);
    /* request-line = method SP target SP "HTTP/1.x" CRLF, after at most one leading CRLF */
    CHECK((size_t)(r->target - buf) + r->target_len + 11 <= lim->max_request_line + (buf[0] == '\r' ? 2 : 0));
    CHECK(r->path_len > 0);
    CHECK(span_in(r->path, r->path_len, r->target, r->target_len) || (r->path_len == 1 && r->path[0] == '/'));
    CHECK(r->path[0] == '/' || r->path[0] == '*' || r->is_connect);
    CHECK(r->is_connect == (r->method_len == 7 && memcmp(r->method, "CONNECT", 7) == 0));
    if (m->version_minor == 1)
        CHECK(r->host != NULL);
    if (r->host != NULL) {
        CHECK(r->host_len > 0 && span_in(r->host, r->host_len, buf, head));
        for (size_t j = 0; j < r->host_len; j++)
            CHECK(r->host[j] != '@' && r->host[j] != '/' && r->host[j] != ' ' && r->host[j] != ',');
    }
    if (m->chunked) {
        const struct h1_header *te = h1_find_header(m, "Transfer-Encoding");
        CHECK(te != NULL && ieq(te->value, te->value_len, "chunked") && m->version_minor == 1);
        CHECK(h1_request_body_kind(r) == H1_BODY_CHUNKED);
    } else {
        CHECK(h1_find_header(m, "transfer-encoding") == NULL);
        CHECK(h1_request_body_kind(r) == (m->content_length > 0 ? H1_BODY_LENGTH : H1_BODY_NONE));
    }
    if (r->expect_continue)
        CHECK(m->version_minor == 1 && h1_find_header(m, "expect") != NULL);
    if (m->upgrade)
        CHECK(h1_connection_lists(m, "UPGRADE", 7) && h1_find_header(m, "upgrade") != NULL);
    if (m->connection_close)
        CHECK(h1_connection_lists(m, "close", 5));
}

static bool valid_code(int rc)
{
    return rc >= 0 || rc == H1_INCOMPLETE || rc == H1_ERR_BAD || rc == H1_ERR_URI_LONG || rc == H1_ERR_HDR_LARGE ||
           rc == H1_ERR_VERSION || rc == H1_ERR_NOT_IMPL;
}

static void run(const uint8_t *data, size_t len, const struct h1_limits *lim)
{
    char *buf = malloc(len ? len : 1);
    memcpy(buf, data, len);
    int rc = h1_parse_request(buf, len, lim, &first);
    CHECK(valid_code(rc));
    if (rc < H1_INCOMPLETE)
        CHECK(first.msg.error != NULL && first.msg.error[0] != '\0');

    if (rc >= 0) {
        size_t head = (size_t)rc;
        CHECK(head <= len);
        check_request(&first, buf, head, lim);
        /* exactly the head: same answer */
        char *exact = malloc(head);
        memcpy(exact, buf, head);
        CHECK(h1_parse_request(exact, head, lim, &other) == rc);
        CHECK(other.msg.n_headers == first.msg.n_headers);
        CHECK(other.msg.content_length == first.msg.content_length);
        CHECK(other.msg.chunked == first.msg.chunked && other.msg.keep_alive == first.msg.keep_alive);
        CHECK(other.path_len == first.path_len && other.host_len == first.host_len);
        free(exact);
        /* any shorter prefix is incomplete */
        CHECK(parse_copy(data, head - 1, lim, &other) == H1_INCOMPLETE);
        CHECK(parse_copy(data, head / 2, lim, &other) == H1_INCOMPLETE);
    } else {
        /* a prefix never succeeds where the whole fails; its errors are final */
        size_t cuts[2] = {len ? len - 1 : 0, len / 2};
        for (int i = 0; i < 2; i++) {
            int prc = parse_copy(data, cuts[i], lim, &other);
            CHECK(prc < 0);
            if (prc < H1_INCOMPLETE) {
                CHECK(prc == rc);
                CHECK(strcmp(other.msg.error, first.msg.error) == 0);
            }
        }
        if (rc == H1_INCOMPLETE)
            CHECK(len < lim->max_header_bytes);
    }
    free(buf);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t len)
{
    run(data, len, &wide);
    int rc_wide = parse_copy(data, len, &wide, &other);
    size_t n_wide = other.msg.n_headers;
    run(data, len, &tight);
    int rc_tight = parse_copy(data, len, &tight, &other);
    /* tight limits only ever turn an answer into a limit error */
    if (rc_tight >= 0)
        CHECK(rc_wide == rc_tight);
    if (rc_tight == H1_ERR_BAD || rc_tight == H1_ERR_VERSION || rc_tight == H1_ERR_NOT_IMPL)
        CHECK(rc_wide == rc_tight);
    if (rc_wide >= 0 && (size_t)rc_wide <= tight.max_header_bytes && n_wide <= tight.max_headers)
        CHECK(rc_tight == rc_wide || rc_tight == H1_ERR_URI_LONG);
    return 0;
}
