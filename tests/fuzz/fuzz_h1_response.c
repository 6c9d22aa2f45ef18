/*
 * fuzz_h1_response.c - libFuzzer target for h1_parse_response() and
 * h1_response_body_kind().
 *
 * Checks, beyond "does not crash": documented return codes with an error
 * string on failure; a complete head ends in CRLF CRLF inside the input;
 * status 100..599 and the reason inside the status line; header spans inside
 * the head with token names and CTL-free trimmed values; framing that agrees
 * with RFC 9112 §6.3 (no CL with TE, no length on 1xx/204, no TE on 304, body
 * kind NONE for HEAD/1xx/204/304); stability under truncation (exact head ->
 * same result, shorter prefix -> INCOMPLETE, prefix errors are final) and
 * tight limits never accepting what wide limits refuse.
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
static const struct h1_limits tight = {.max_request_line = 24, .max_header_bytes = 100, .max_headers = 3};

static struct h1_response first, other;

static bool span_in(const char *p, size_t n, const char *buf, size_t len)
{
    uintptr_t a = (uintptr_t)p, b = (uintptr_t)buf;
    return p != NULL && a >= b && n <= len && a - b <= len - n;
}

static bool is_tchar(unsigned char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

static int parse_copy(const uint8_t *data, size_t len, const struct h1_limits *lim, struct h1_response *resp)
{
    char *copy = malloc(len ? len : 1);
    memcpy(copy, data, len);
    int rc = h1_parse_response(copy, len, lim, resp);
    free(copy);
    return rc;
}

static void check_response(const struct h1_response *r, const char *buf, size_t head, const struct h1_limits *lim)
{
    const struct h1_message *m = &r->msg;
    CHECK(m->error == NULL);
    CHECK(head >= 4 && head <= lim->max_header_bytes && memcmp(buf + head - 4, "\r\n\r\n", 4) == 0);
    CHECK(memcmp(buf, "HTTP/1.", 7) == 0 && m->version_minor == buf[7] - '0');
    CHECK(r->status >= 100 && r->status <= 599);
    CHECK(r->reason_len == 0 || span_in(r->reason, r->reason_len, buf, head));
    CHECK(r->reason_len + 14 <= lim->max_request_line);
    CHECK(m->n_headers <= lim->max_headers);
    CHECK(m->content_length >= -1 && m->content_length <= INT64_C(4611686018427387904));
    CHECK(!(m->chunked && m->content_length >= 0));
    CHECK(!(m->keep_alive && m->connection_close));
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
    }
    const struct h1_header *cl = h1_find_header(m, "content-length");
    const struct h1_header *te = h1_find_header(m, "transfer-encoding");
    CHECK((cl != NULL) == (m->content_length >= 0));
    CHECK(!(cl != NULL && te != NULL));
    if (m->chunked)
        CHECK(te != NULL && m->version_minor == 1);
    if (r->status < 200 || r->status == 204)
        CHECK(cl == NULL && te == NULL);
    if (r->status == 304)
        CHECK(te == NULL);

    enum h1_body_kind kind = h1_response_body_kind(r, false);
    CHECK(h1_response_body_kind(r, true) == H1_BODY_NONE);
    if (r->status < 200 || r->status == 204 || r->status == 304)
        CHECK(kind == H1_BODY_NONE);
    else if (m->chunked)
        CHECK(kind == H1_BODY_CHUNKED);
    else if (m->content_length >= 0)
        CHECK(kind == H1_BODY_LENGTH);
    else
        CHECK(kind == H1_BODY_CLOSE);
}

static bool valid_code(int rc)
{
    return rc >= 0 || rc == H1_INCOMPLETE || rc == H1_ERR_BAD || rc == H1_ERR_HDR_LARGE;
}

static void run(const uint8_t *data, size_t len, const struct h1_limits *lim)
{
    char *buf = malloc(len ? len : 1);
    memcpy(buf, data, len);
    int rc = h1_parse_response(buf, len, lim, &first);
    CHECK(valid_code(rc));
    if (rc < H1_INCOMPLETE)
        CHECK(first.msg.error != NULL && first.msg.error[0] != '\0');

    if (rc >= 0) {
        size_t head = (size_t)rc;
        CHECK(head <= len);
        check_response(&first, buf, head, lim);
        char *exact = malloc(head);
        memcpy(exact, buf, head);
        CHECK(h1_parse_response(exact, head, lim, &other) == rc);
        CHECK(other.status == first.status && other.msg.n_headers == first.msg.n_headers);
        CHECK(other.msg.content_length == first.msg.content_length && other.msg.chunked == first.msg.chunked);
        free(exact);
        CHECK(parse_copy(data, head - 1, lim, &other) == H1_INCOMPLETE);
        CHECK(parse_copy(data, head / 2, lim, &other) == H1_INCOMPLETE);
    } else {
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
    if (rc_tight >= 0 || rc_tight == H1_ERR_BAD)
        CHECK(rc_wide == rc_tight);
    if (rc_wide >= 0 && (size_t)rc_wide <= tight.max_header_bytes && n_wide <= tight.max_headers)
        CHECK(rc_tight == rc_wide || rc_tight == H1_ERR_HDR_LARGE);
    return 0;
}
