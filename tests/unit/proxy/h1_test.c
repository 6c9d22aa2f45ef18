/*
 * h1_test.c - unit tests for proxy/h1.c: the strict HTTP/1.1 head parsers and
 * the chunked decoder. Every rejected shape listed in proxy/h1.h and the usual
 * request-smuggling vectors get their own test with the exact return code.
 *
 * Messages are written as C string literals and parsed with their exact
 * length (sizeof - 1), so embedded NULs and missing terminators are tested
 * as the bytes they are.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "proxy/h1.h"

static const struct h1_limits limits = {
    .max_request_line = 8192,
    .max_header_bytes = 16384,
    .max_headers = 100,
};

/* h1_request holds H1_MAX_HEADERS headers: keep them off the stack. */
static struct h1_request req;
static struct h1_response resp;

static int parse_req_n(const char *s, size_t n, const struct h1_limits *lim)
{
    memset(&req, 0xAA, sizeof(req)); /* the parser must set every result field */
    return h1_parse_request(s, n, lim, &req);
}

static int parse_resp_n(const char *s, size_t n, const struct h1_limits *lim)
{
    memset(&resp, 0xAA, sizeof(resp));
    return h1_parse_response(s, n, lim, &resp);
}

/* Parse a literal request; failures must say why. */
#define REQ(lit) parse_req_n(lit, sizeof(lit) - 1, &limits)
#define RESP(lit) parse_resp_n(lit, sizeof(lit) - 1, &limits)

static void expect_req_n(const char *s, size_t n, int code)
{
    int rc = parse_req_n(s, n, &limits);
    if (rc != code)
        print_error("request %.*s\n -> %d (%s), want %d\n", (int)n, s, rc, rc < -1 ? req.msg.error : "-", code);
    assert_int_equal(rc, code);
    if (code < H1_INCOMPLETE) {
        assert_non_null(req.msg.error);
        assert_true(strlen(req.msg.error) > 0);
    }
}

static void expect_resp_n(const char *s, size_t n, int code)
{
    int rc = parse_resp_n(s, n, &limits);
    if (rc != code)
        print_error("response %.*s\n -> %d (%s), want %d\n", (int)n, s, rc, rc < -1 ? resp.msg.error : "-", code);
    assert_int_equal(rc, code);
    if (code < H1_INCOMPLETE) {
        assert_non_null(resp.msg.error);
        assert_true(strlen(resp.msg.error) > 0);
    }
}

#define EXPECT_REQ(lit, code) expect_req_n(lit, sizeof(lit) - 1, code)
#define EXPECT_RESP(lit, code) expect_resp_n(lit, sizeof(lit) - 1, code)
#define OK_REQ(lit) EXPECT_REQ(lit, (int)(sizeof(lit) - 1))
#define OK_RESP(lit) EXPECT_RESP(lit, (int)(sizeof(lit) - 1))

/* Every strict prefix of a complete head is INCOMPLETE, never an error. */
static void expect_prefixes_incomplete_req(const char *s, size_t n)
{
    for (size_t k = 0; k < n; k++) {
        int rc = parse_req_n(s, k, &limits);
        if (rc != H1_INCOMPLETE)
            print_error("prefix %zu of %zu -> %d (%s)\n", k, n, rc, rc < -1 ? req.msg.error : "-");
        assert_int_equal(rc, H1_INCOMPLETE);
    }
}

static void assert_span(const char *p, size_t n, const char *want)
{
    assert_non_null(p);
    if (n != strlen(want) || memcmp(p, want, n) != 0)
        print_error("got \"%.*s\", want \"%s\"\n", (int)n, p, want);
    assert_int_equal(n, strlen(want));
    assert_memory_equal(p, want, n);
}

/* ---------------------------------------------------------------- valid requests */

static void test_req_get(void **state)
{
    (void)state;
    static const char s[] = "GET /index.html?a=1 HTTP/1.1\r\nHost: example.com\r\nUser-Agent: t\r\nAccept: */*\r\n\r\n";
    assert_int_equal(REQ(s), sizeof(s) - 1);
    assert_span(req.method, req.method_len, "GET");
    assert_span(req.target, req.target_len, "/index.html?a=1");
    assert_span(req.path, req.path_len, "/index.html?a=1");
    assert_span(req.host, req.host_len, "example.com");
    assert_ptr_equal(req.host, s + 36);
    assert_int_equal(req.msg.version_minor, 1);
    assert_int_equal(req.msg.n_headers, 3);
    assert_span(req.msg.headers[1].name, req.msg.headers[1].name_len, "User-Agent");
    assert_span(req.msg.headers[1].value, req.msg.headers[1].value_len, "t");
    assert_int_equal(req.msg.content_length, -1);
    assert_false(req.msg.chunked);
    assert_true(req.msg.keep_alive);
    assert_false(req.msg.connection_close);
    assert_false(req.msg.upgrade);
    assert_false(req.expect_continue);
    assert_false(req.is_connect);
    assert_null(req.msg.error);
    assert_int_equal(h1_request_body_kind(&req), H1_BODY_NONE);
}

static void test_req_post_content_length(void **state)
{
    (void)state;
    static const char s[] = "POST /submit HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello";
    assert_int_equal(REQ(s), sizeof(s) - 1 - 5);
    assert_int_equal(req.msg.content_length, 5);
    assert_false(req.msg.chunked);
    assert_int_equal(h1_request_body_kind(&req), H1_BODY_LENGTH);
}

static void test_req_content_length_zero(void **state)
{
    (void)state;
    OK_REQ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n");
    assert_int_equal(req.msg.content_length, 0);
    assert_int_equal(h1_request_body_kind(&req), H1_BODY_NONE);
}

static void test_req_content_length_max(void **state)
{
    (void)state;
    OK_REQ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4611686018427387904\r\n\r\n");
    assert_int_equal(req.msg.content_length, INT64_C(4611686018427387904));
    OK_REQ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 007\r\n\r\n");
    assert_int_equal(req.msg.content_length, 7);
}

static void test_req_chunked(void **state)
{
    (void)state;
    OK_REQ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n");
    assert_true(req.msg.chunked);
    assert_int_equal(req.msg.content_length, -1);
    assert_int_equal(h1_request_body_kind(&req), H1_BODY_CHUNKED);
    OK_REQ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: CHUNKED \r\n\r\n");
    assert_true(req.msg.chunked);
}

static void test_req_pipelined(void **state)
{
    (void)state;
    static const char one[] = "GET /1 HTTP/1.1\r\nHost: a\r\n\r\n";
    static const char s[] = "GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: b\r\n\r\n";
    assert_int_equal(REQ(s), sizeof(one) - 1);
    assert_span(req.path, req.path_len, "/1");
    int rc = parse_req_n(s + sizeof(one) - 1, sizeof(s) - sizeof(one), &limits);
    assert_int_equal(rc, sizeof(s) - sizeof(one));
    assert_span(req.path, req.path_len, "/2");
    assert_span(req.host, req.host_len, "b");
}

static void test_req_absolute_form(void **state)
{
    (void)state;
    OK_REQ("GET http://example.com:8080/p?q=1 HTTP/1.1\r\nHost: Example.COM:8080\r\n\r\n");
    assert_span(req.path, req.path_len, "/p?q=1");
    assert_span(req.target, req.target_len, "http://example.com:8080/p?q=1");
    assert_span(req.host, req.host_len, "Example.COM:8080");
}

static void test_req_absolute_form_no_path(void **state)
{
    (void)state;
    OK_REQ("GET HTTPS://example.com HTTP/1.1\r\nHost: example.com\r\n\r\n");
    assert_span(req.path, req.path_len, "/");
}

static void test_req_absolute_form_http10_without_host(void **state)
{
    (void)state;
    OK_REQ("GET http://example.com/x HTTP/1.0\r\n\r\n");
    assert_span(req.host, req.host_len, "example.com");
    assert_span(req.path, req.path_len, "/x");
}

static void test_req_options_asterisk(void **state)
{
    (void)state;
    OK_REQ("OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_span(req.path, req.path_len, "*");
}

static void test_req_connect(void **state)
{
    (void)state;
    OK_REQ("CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n");
    assert_true(req.is_connect);
    assert_span(req.target, req.target_len, "example.com:443");
}

static void test_req_http10_keep_alive(void **state)
{
    (void)state;
    OK_REQ("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n");
    assert_int_equal(req.msg.version_minor, 0);
    assert_true(req.msg.keep_alive);
    assert_null(req.host);
    OK_REQ("GET / HTTP/1.0\r\nHost: a\r\n\r\n");
    assert_false(req.msg.keep_alive);
    OK_REQ("GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n");
    assert_false(req.msg.keep_alive);
    assert_true(req.msg.connection_close);
}

static void test_req_connection_close(void **state)
{
    (void)state;
    OK_REQ("GET / HTTP/1.1\r\nHost: a\r\nConnection: foo, ,CLOSE\r\n\r\n");
    assert_true(req.msg.connection_close);
    assert_false(req.msg.keep_alive);
    assert_true(h1_connection_lists(&req.msg, "Foo", 3));
    assert_true(h1_connection_lists(&req.msg, "close", 5));
    assert_false(h1_connection_lists(&req.msg, "fo", 2));
}

static void test_req_upgrade(void **state)
{
    (void)state;
    OK_REQ("GET /ws HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n");
    assert_true(req.msg.upgrade);
    assert_true(req.msg.keep_alive);
    /* Connection: upgrade without an Upgrade field is not an upgrade */
    OK_REQ("GET /ws HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\n\r\n");
    assert_false(req.msg.upgrade);
    /* RFC 9110 §7.8: ignored in HTTP/1.0 */
    OK_REQ("GET /ws HTTP/1.0\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n");
    assert_false(req.msg.upgrade);
}

static void test_req_expect_continue(void **state)
{
    (void)state;
    OK_REQ("PUT /x HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\nContent-Length: 3\r\n\r\n");
    assert_true(req.expect_continue);
    OK_REQ("PUT /x HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n");
    assert_false(req.expect_continue);
}

static void test_req_incremental_byte_by_byte(void **state)
{
    (void)state;
    static const char s[] = "POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nX: y\r\n\r\n";
    expect_prefixes_incomplete_req(s, sizeof(s) - 1);
    assert_int_equal(REQ(s), sizeof(s) - 1);
    assert_int_equal(req.msg.content_length, 2);
}

static void test_req_incremental_with_leading_crlf(void **state)
{
    (void)state;
    static const char s[] = "\r\nGET http://h/ HTTP/1.1\r\nHost: h\r\n\r\n";
    expect_prefixes_incomplete_req(s, sizeof(s) - 1);
    OK_REQ(s);
}

static void test_req_leading_crlf(void **state)
{
    (void)state;
    OK_REQ("\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_span(req.method, req.method_len, "GET");
    EXPECT_REQ("\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", H1_ERR_BAD);
    EXPECT_REQ("\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", H1_ERR_BAD);
}

static void test_req_value_ows_trimmed(void **state)
{
    (void)state;
    OK_REQ("GET / HTTP/1.1\r\nHost:a\r\nX-A: \t a \t b \t \r\nX-Empty:\r\nX-Spaces:   \r\n\r\n");
    assert_span(req.host, req.host_len, "a");
    assert_span(req.msg.headers[1].value, req.msg.headers[1].value_len, "a \t b");
    assert_int_equal(req.msg.headers[2].value_len, 0);
    assert_int_equal(req.msg.headers[3].value_len, 0);
}

static void test_req_obs_text_value(void **state)
{
    (void)state;
    OK_REQ("GET / HTTP/1.1\r\nHost: a\r\nX-Name: caf\xc3\xa9 \xff\x80\r\n\r\n");
    assert_span(req.msg.headers[1].value, req.msg.headers[1].value_len, "caf\xc3\xa9 \xff\x80");
}

static void test_req_host_forms(void **state)
{
    (void)state;
    OK_REQ("GET / HTTP/1.1\r\nHost: 10.0.0.1:8080\r\n\r\n");
    OK_REQ("GET / HTTP/1.1\r\nHost: [::1]:8443\r\n\r\n");
    OK_REQ("GET / HTTP/1.1\r\nHost: [2001:db8::1]\r\n\r\n");
    OK_REQ("GET / HTTP/1.1\r\nHost: my_svc-1.example.com.\r\n\r\n");
}

static void test_req_limits_at_boundary(void **state)
{
    (void)state;
    static const char s[] = "GET /abc HTTP/1.1\r\nHost: a\r\nX: 1\r\n\r\n";
    const size_t n = sizeof(s) - 1;
    struct h1_limits lim = {.max_request_line = 19, .max_header_bytes = n, .max_headers = 2};
    assert_int_equal(parse_req_n(s, n, &lim), (int)n);
    lim.max_request_line = 18;
    assert_int_equal(parse_req_n(s, n, &lim), H1_ERR_URI_LONG);
    lim.max_request_line = 19;
    lim.max_header_bytes = n - 1;
    assert_int_equal(parse_req_n(s, n, &lim), H1_ERR_HDR_LARGE);
    lim.max_header_bytes = n;
    lim.max_headers = 1;
    assert_int_equal(parse_req_n(s, n, &lim), H1_ERR_HDR_LARGE);
}

static void test_req_limits_larger_than_cap(void **state)
{
    (void)state;
    /* max_headers above H1_MAX_HEADERS is clamped, never overflows the array */
    static char s[32 + (H1_MAX_HEADERS + 1) * 6];
    struct h1_limits lim = {.max_request_line = 100, .max_header_bytes = sizeof(s), .max_headers = 100000};
    size_t n = (size_t)sprintf(s, "GET / HTTP/1.1\r\nHost: a\r\n");
    for (int i = 0; i < H1_MAX_HEADERS; i++)
        n += (size_t)sprintf(s + n, "X: 1\r\n");
    n += (size_t)sprintf(s + n, "\r\n");
    assert_int_equal(parse_req_n(s, n, &lim), H1_ERR_HDR_LARGE);
}

static void test_req_find_header(void **state)
{
    (void)state;
    OK_REQ("GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 1.2.3.4\r\nx-forwarded-for: 5.6.7.8\r\n\r\n");
    const struct h1_header *hd = h1_find_header(&req.msg, "X-FORWARDED-FOR");
    assert_non_null(hd);
    assert_span(hd->value, hd->value_len, "1.2.3.4");
    assert_null(h1_find_header(&req.msg, "X-Forwarded"));
    assert_null(h1_find_header(&req.msg, "X-Forwarded-For2"));
}

static void test_hop_by_hop(void **state)
{
    (void)state;
    static const char *const hop[] = {
        "Connection",          "keep-alive",         "Proxy-Connection", "TE", "Trailer", "Transfer-Encoding", "UPGRADE",
        "Proxy-Authorization", "Proxy-Authenticate", "HTTP2-Settings"};
    for (size_t i = 0; i < sizeof(hop) / sizeof(hop[0]); i++)
        assert_true(h1_is_hop_by_hop(hop[i], strlen(hop[i])));
    static const char *const e2e[] = {"Host",
                                      "Content-Length",
                                      "Trailers",
                                      "T",
                                      "TEE",
                                      "Connectio",
                                      "Upgrade-Insecure-Requests",
                                      "X-Proxy-Authorization",
                                      "Authorization",
                                      ""};
    for (size_t i = 0; i < sizeof(e2e) / sizeof(e2e[0]); i++)
        assert_false(h1_is_hop_by_hop(e2e[i], strlen(e2e[i])));
    /* counted, not NUL-terminated */
    assert_true(h1_is_hop_by_hop("te-xyz", 2));
}

/*
 * Field values and request-targets are scanned 16 bytes at a time where the
 * CPU allows: put every byte value at every offset across two blocks and
 * check the verdict against the byte-level rule.
 */
static bool value_byte_ok(int b)
{
    return b == '\t' || (b >= 0x20 && b != 0x7f);
}

static bool target_byte_ok(int b)
{
    return b > 0x20 && b < 0x7f && b != '#';
}

static void test_req_value_every_byte_every_offset(void **state)
{
    (void)state;
    char s[128];
    for (int b = 0; b < 256; b++) {
        for (int k = 0; k <= 40; k++) {
            int n = sprintf(s, "GET / HTTP/1.1\r\nHost: a\r\nX: ");
            memset(s + n, 'v', 41);
            s[n + k] = (char)b;
            n += 41;
            n += sprintf(s + n, "\r\n\r\n");
            int rc = parse_req_n(s, (size_t)n, &limits);
            if ((rc == n) != value_byte_ok(b))
                print_error("byte 0x%02x at %d -> %d\n", b, k, rc);
            assert_int_equal(rc == n, value_byte_ok(b));
            if (rc != n)
                assert_int_equal(rc, H1_ERR_BAD);
        }
    }
}

static void test_req_target_every_byte_every_offset(void **state)
{
    (void)state;
    char s[128];
    for (int b = 0; b < 256; b++) {
        for (int k = 0; k <= 40; k++) {
            int n = sprintf(s, "GET /");
            memset(s + n, 't', 41);
            s[n + k] = (char)b;
            n += 41;
            n += sprintf(s + n, " HTTP/1.1\r\nHost: a\r\n\r\n");
            int rc = parse_req_n(s, (size_t)n, &limits);
            if ((rc == n) != target_byte_ok(b))
                print_error("byte 0x%02x at %d -> %d\n", b, k, rc);
            assert_int_equal(rc == n, target_byte_ok(b));
            if (rc == n)
                assert_int_equal(req.target_len, 42);
        }
    }
}

static void test_resp_reason_every_byte_every_offset(void **state)
{
    (void)state;
    char s[128];
    for (int b = 0; b < 256; b++) {
        for (int k = 0; k <= 40; k++) {
            int n = sprintf(s, "HTTP/1.1 200 ");
            memset(s + n, 'r', 41);
            s[n + k] = (char)b;
            n += 41;
            n += sprintf(s + n, "\r\n\r\n");
            int rc = parse_resp_n(s, (size_t)n, &limits);
            assert_int_equal(rc == n, value_byte_ok(b));
        }
    }
}

/* A long value split anywhere is INCOMPLETE, never an error (block scan vs end of input). */
static void test_req_long_value_prefixes(void **state)
{
    (void)state;
    static const char s[] = "GET /0123456789abcdef0123456789abcdef HTTP/1.1\r\nHost: a\r\n"
                            "Cookie: a=0123456789abcdef0123456789abcdef;\tb=0123456789abcdef0123456789abcdef\r\n\r\n";
    expect_prefixes_incomplete_req(s, sizeof(s) - 1);
    OK_REQ(s);
    assert_span(req.msg.headers[1].value, req.msg.headers[1].value_len,
                "a=0123456789abcdef0123456789abcdef;\tb=0123456789abcdef0123456789abcdef");
}

/* ---------------------------------------------------------------- request line rejections */

#define REJECT_REQ(name, lit, code)                                                                                                \
    static void name(void **state)                                                                                                 \
    {                                                                                                                              \
        (void)state;                                                                                                               \
        EXPECT_REQ(lit, code);                                                                                                     \
    }

#define H "Host: a\r\n"

REJECT_REQ(test_req_method_ctl, "G\x01T / HTTP/1.1\r\n" H "\r\n", H1_ERR_BAD)
REJECT_REQ(test_req_method_del, "GE\x7f / HTTP/1.1\r\n" H "\r\n", H1_ERR_BAD)
REJECT_REQ(test_req_method_empty, " / HTTP/1.1\r\n" H "\r\n", H1_ERR_BAD)
REJECT_REQ(test_req_method_non_token, "GE(T / HTTP/1.1\r\n" H "\r\n", H1_ERR_BAD)
REJECT_REQ(test_req_double_space, "GET  / HTTP/1.1\r\n" H "\r\n", H1_ERR_BAD)
REJECT_REQ(test_req_tab_separator, "GET\t/ HTTP/1.1\r\n" H "\r\n", H1_ERR_BAD)
REJECT_REQ(test_req_trailing_space, "GET / HTTP/1.1 \r\n" H "\r\n", H1_ERR_BAD)
REJECT_REQ(test_req_target_space, "GET /a b HTTP/1.1\r\n" H "\r\n", H1_ERR_BAD)
REJECT_REQ(test_req_target_ctl, "GET /a\x01 HTTP/1.1\r\n" H "\r\n", H1_ERR_BAD)
REJECT_REQ(test_req_target_non_ascii, "GET /caf\xc3\xa9 HTTP/1.1\r\n" H "\r\n", H1_ERR_BAD)
REJECT_REQ(test_req_target_fragment, "GET /a#b HTTP/1.1\r\n" H "\r\n", H1_ERR_BAD)
REJECT_REQ(test_req_target_no_form, "GET index.html HTTP/1.1\r\n" H "\r\n", H1_ERR_BAD)
REJECT_REQ(test_req_target_other_scheme, "GET ftp://a/x HTTP/1.1\r\n" H "\r\n", H1_ERR_BAD)
REJECT_REQ(test_req_asterisk_not_options, "GET * HTTP/1.1\r\n" H "\r\n", H1_ERR_BAD)
REJECT_REQ(test_req_authority_form_not_connect, "GET a:80 HTTP/1.1\r\n" H "\r\n", H1_ERR_BAD)
REJECT_REQ(test_req_connect_origin_form, "CONNECT / HTTP/1.1\r\n" H "\r\n", H1_ERR_BAD)
REJECT_REQ(test_req_connect_no_port, "CONNECT example.com HTTP/1.1\r\n" H "\r\n", H1_ERR_BAD)
REJECT_REQ(test_req_http09, "GET /\r\n\r\n", H1_ERR_BAD)
REJECT_REQ(test_req_version_http2, "GET / HTTP/2.0\r\n" H "\r\n", H1_ERR_VERSION)
REJECT_REQ(test_req_version_http3, "GET / HTTP/3\r\n" H "\r\n", H1_ERR_VERSION)
REJECT_REQ(test_req_version_http12, "GET / HTTP/1.2\r\n" H "\r\n", H1_ERR_VERSION)
REJECT_REQ(test_req_version_lowercase, "GET / http/1.1\r\n" H "\r\n", H1_ERR_BAD)
REJECT_REQ(test_req_version_two_digit_minor, "GET / HTTP/1.10\r\n" H "\r\n", H1_ERR_BAD)
REJECT_REQ(test_req_version_no_minor, "GET / HTTP/1\r\n" H "\r\n", H1_ERR_BAD)
REJECT_REQ(test_req_version_garbage, "GET / HTTX/1.1\r\n" H "\r\n", H1_ERR_BAD)
REJECT_REQ(test_req_line_bare_lf, "GET / HTTP/1.1\n" H "\r\n", H1_ERR_BAD)
REJECT_REQ(test_req_line_bare_cr, "GET / HTTP/1.1\rHost: a\r\n\r\n", H1_ERR_BAD)

static void test_req_line_too_long(void **state)
{
    (void)state;
    struct h1_limits lim = limits;
    lim.max_request_line = 32;
    static const char s[] = "GET /0123456789012345678901234567890123456789 HTTP/1.1\r\nHost: a\r\n\r\n";
    assert_int_equal(parse_req_n(s, sizeof(s) - 1, &lim), H1_ERR_URI_LONG);
    /* known as soon as the limit is passed, before the line ends */
    assert_int_equal(parse_req_n(s, 33, &lim), H1_ERR_URI_LONG);
    assert_int_equal(parse_req_n(s, 31, &lim), H1_INCOMPLETE);
}

/* ---------------------------------------------------------------- field rejections */

REJECT_REQ(test_req_field_bare_lf, "GET / HTTP/1.1\r\nHost: a\nX: 1\r\n\r\n", H1_ERR_BAD)
REJECT_REQ(test_req_final_bare_lf, "GET / HTTP/1.1\r\nHost: a\r\n\n", H1_ERR_BAD)
REJECT_REQ(test_req_all_bare_lf, "GET / HTTP/1.1\nHost: a\n\n", H1_ERR_BAD)
REJECT_REQ(test_req_field_bare_cr, "GET / HTTP/1.1\r\nHost: a\rX: 1\r\n\r\n", H1_ERR_BAD)
REJECT_REQ(test_req_final_bare_cr, "GET / HTTP/1.1\r\nHost: a\r\n\rX", H1_ERR_BAD)
REJECT_REQ(test_req_value_nul, "GET / HTTP/1.1\r\nHost: a\r\nX: a\0b\r\n\r\n", H1_ERR_BAD)
REJECT_REQ(test_req_value_ctl_01,
           "GET / HTTP/1.1\r\nHost: a\r\nX: a\x01"
           "b\r\n\r\n",
           H1_ERR_BAD)
REJECT_REQ(test_req_value_ctl_vt,
           "GET / HTTP/1.1\r\nHost: a\r\nX: a\x0b"
           "b\r\n\r\n",
           H1_ERR_BAD)
REJECT_REQ(test_req_value_ctl_esc, "GET / HTTP/1.1\r\nHost: a\r\nX: \x1b[31m\r\n\r\n", H1_ERR_BAD)
REJECT_REQ(test_req_value_del, "GET / HTTP/1.1\r\nHost: a\r\nX: a\x7f\r\n\r\n", H1_ERR_BAD)
REJECT_REQ(test_req_name_nul, "GET / HTTP/1.1\r\nHost: a\r\nX\0Y: 1\r\n\r\n", H1_ERR_BAD)
REJECT_REQ(test_req_name_non_token, "GET / HTTP/1.1\r\nHost: a\r\nX(Y): 1\r\n\r\n", H1_ERR_BAD)
REJECT_REQ(test_req_name_empty, "GET / HTTP/1.1\r\nHost: a\r\n: 1\r\n\r\n", H1_ERR_BAD)
REJECT_REQ(test_req_name_no_colon, "GET / HTTP/1.1\r\nHost: a\r\nX-No-Colon\r\n\r\n", H1_ERR_BAD)
REJECT_REQ(test_req_space_before_colon, "GET / HTTP/1.1\r\nHost: a\r\nX : 1\r\n\r\n", H1_ERR_BAD)
REJECT_REQ(test_req_obs_fold_space, "GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\n 2\r\n\r\n", H1_ERR_BAD)
REJECT_REQ(test_req_obs_fold_tab, "GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\n\t2\r\n\r\n", H1_ERR_BAD)
REJECT_REQ(test_req_first_field_leading_space, "GET / HTTP/1.1\r\n Host: a\r\n\r\n", H1_ERR_BAD)
REJECT_REQ(test_req_expect_other, "GET / HTTP/1.1\r\nHost: a\r\nExpect: 200-ok\r\n\r\n", H1_ERR_BAD)
REJECT_REQ(test_req_expect_duplicate, "GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nExpect: 100-continue\r\n\r\n",
           H1_ERR_BAD)
REJECT_REQ(test_req_connection_not_token, "GET / HTTP/1.1\r\nHost: a\r\nConnection: close;x\r\n\r\n", H1_ERR_BAD)

/* ---------------------------------------------------------------- Host */

REJECT_REQ(test_req_missing_host, "GET / HTTP/1.1\r\nX: 1\r\n\r\n", H1_ERR_BAD)
REJECT_REQ(test_req_duplicate_host, "GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", H1_ERR_BAD)
REJECT_REQ(test_req_duplicate_host_case, "GET / HTTP/1.1\r\nHost: a\r\nhOST: b\r\n\r\n", H1_ERR_BAD)
REJECT_REQ(test_req_host_space, "GET / HTTP/1.1\r\nHost: a b\r\n\r\n", H1_ERR_BAD)
REJECT_REQ(test_req_host_empty, "GET / HTTP/1.1\r\nHost:\r\n\r\n", H1_ERR_BAD)
REJECT_REQ(test_req_host_empty_http10, "GET / HTTP/1.0\r\nHost: \r\n\r\n", H1_ERR_BAD)
REJECT_REQ(test_req_host_userinfo, "GET / HTTP/1.1\r\nHost: user@a\r\n\r\n", H1_ERR_BAD)
REJECT_REQ(test_req_host_slash, "GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", H1_ERR_BAD)
REJECT_REQ(test_req_host_comma, "GET / HTTP/1.1\r\nHost: a, b\r\n\r\n", H1_ERR_BAD)
REJECT_REQ(test_req_host_port_empty, "GET / HTTP/1.1\r\nHost: a:\r\n\r\n", H1_ERR_BAD)
REJECT_REQ(test_req_host_port_alpha, "GET / HTTP/1.1\r\nHost: a:8o\r\n\r\n", H1_ERR_BAD)
REJECT_REQ(test_req_host_port_too_big, "GET / HTTP/1.1\r\nHost: a:65536\r\n\r\n", H1_ERR_BAD)
REJECT_REQ(test_req_host_bad_ipv6, "GET / HTTP/1.1\r\nHost: [::g]\r\n\r\n", H1_ERR_BAD)
REJECT_REQ(test_req_host_unclosed_ipv6, "GET / HTTP/1.1\r\nHost: [::1\r\n\r\n", H1_ERR_BAD)
REJECT_REQ(test_req_absolute_form_host_mismatch, "GET http://evil.com/ HTTP/1.1\r\nHost: good.com\r\n\r\n", H1_ERR_BAD)
REJECT_REQ(test_req_absolute_form_port_mismatch, "GET http://a:8080/ HTTP/1.1\r\nHost: a\r\n\r\n", H1_ERR_BAD)
REJECT_REQ(test_req_absolute_form_userinfo, "GET http://u@a/ HTTP/1.1\r\nHost: u@a\r\n\r\n", H1_ERR_BAD)
REJECT_REQ(test_req_absolute_form_empty_authority, "GET http:///x HTTP/1.1\r\nHost: a\r\n\r\n", H1_ERR_BAD)
REJECT_REQ(test_req_absolute_form_query_no_path, "GET http://a?x HTTP/1.1\r\nHost: a\r\n\r\n", H1_ERR_BAD)

/* ---------------------------------------------------------------- Content-Length */

REJECT_REQ(test_req_cl_plus, "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n", H1_ERR_BAD)
REJECT_REQ(test_req_cl_hex, "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x5\r\n\r\n", H1_ERR_BAD)
REJECT_REQ(test_req_cl_empty, "POST / HTTP/1.1\r\nHost: a\r\nContent-Length:\r\n\r\n", H1_ERR_BAD)
REJECT_REQ(test_req_cl_space_only, "POST / HTTP/1.1\r\nHost: a\r\nContent-Length:  \r\n\r\n", H1_ERR_BAD)
REJECT_REQ(test_req_cl_20_digits, "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 00000000000000000005\r\n\r\n", H1_ERR_BAD)
REJECT_REQ(test_req_cl_over_2_62, "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4611686018427387905\r\n\r\n", H1_ERR_BAD)
REJECT_REQ(test_req_cl_two_fields, "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\n", H1_ERR_BAD)
REJECT_REQ(test_req_cl_two_same_fields, "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\ncontent-length: 5\r\n\r\n", H1_ERR_BAD)
REJECT_REQ(test_req_cl_list, "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n", H1_ERR_BAD)
REJECT_REQ(test_req_cl_negative, "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", H1_ERR_BAD)
REJECT_REQ(test_req_cl_inner_space, "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1 2\r\n\r\n", H1_ERR_BAD)
REJECT_REQ(test_req_cl_decimal, "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5.0\r\n\r\n", H1_ERR_BAD)

/* ---------------------------------------------------------------- Transfer-Encoding (smuggling) */

REJECT_REQ(test_req_cl_te, "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", H1_ERR_BAD)
REJECT_REQ(test_req_te_cl, "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n", H1_ERR_BAD)
REJECT_REQ(test_req_te_cl_zero, "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n", H1_ERR_BAD)
REJECT_REQ(test_req_te_chunked_chunked, "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", H1_ERR_BAD)
REJECT_REQ(test_req_te_xchunked, "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n", H1_ERR_BAD)
REJECT_REQ(test_req_te_chunked_gzip, "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", H1_ERR_BAD)
/* RFC 9112 §6.1: a well-formed coding we do not implement -> 501 */
REJECT_REQ(test_req_te_gzip_chunked, "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", H1_ERR_NOT_IMPL)
REJECT_REQ(test_req_te_gzip, "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", H1_ERR_BAD)
REJECT_REQ(test_req_te_identity, "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n", H1_ERR_BAD)
REJECT_REQ(test_req_te_empty, "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n\r\n", H1_ERR_BAD)
REJECT_REQ(test_req_te_trailing_comma, "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked,\r\n\r\n", H1_ERR_BAD)
REJECT_REQ(test_req_te_leading_comma, "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: , chunked\r\n\r\n", H1_ERR_BAD)
REJECT_REQ(test_req_te_parameter, "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked;q=1\r\n\r\n", H1_ERR_BAD)
REJECT_REQ(test_req_te_quoted, "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \"chunked\"\r\n\r\n", H1_ERR_BAD)
REJECT_REQ(test_req_te_vtab,
           "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \x0b"
           "chunked\r\n\r\n",
           H1_ERR_BAD)
REJECT_REQ(test_req_te_two_fields, "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
           H1_ERR_BAD)
REJECT_REQ(test_req_te_two_fields_identity,
           "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n", H1_ERR_BAD)
REJECT_REQ(test_req_te_http10, "POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n", H1_ERR_BAD)
REJECT_REQ(test_req_te_obs_fold_value, "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n chunked\r\n\r\n", H1_ERR_BAD)
REJECT_REQ(test_req_te_obs_fold_tab_value, "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n\tchunked\r\n\r\n", H1_ERR_BAD)
REJECT_REQ(test_req_te_leading_space_name, "POST / HTTP/1.1\r\nHost: a\r\n Transfer-Encoding: chunked\r\n\r\n", H1_ERR_BAD)
REJECT_REQ(test_req_te_leading_tab_name, "POST / HTTP/1.1\r\nHost: a\r\n\tTransfer-Encoding: chunked\r\n\r\n", H1_ERR_BAD)
REJECT_REQ(test_req_te_space_before_colon, "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n", H1_ERR_BAD)
REJECT_REQ(test_req_te_tab_before_colon, "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding\t: chunked\r\n\r\n", H1_ERR_BAD)
REJECT_REQ(test_req_te_bad_before_cl, "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 3\r\n\r\n",
           H1_ERR_BAD)

/* ---------------------------------------------------------------- head limits */

static void test_req_too_many_headers(void **state)
{
    (void)state;
    struct h1_limits lim = limits;
    lim.max_headers = 3;
    static const char s[] = "GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n";
    assert_int_equal(parse_req_n(s, sizeof(s) - 1, &lim), H1_ERR_HDR_LARGE);
    assert_non_null(req.msg.error);
    lim.max_headers = 4;
    assert_int_equal(parse_req_n(s, sizeof(s) - 1, &lim), (int)sizeof(s) - 1);
}

static void test_req_head_too_large(void **state)
{
    (void)state;
    struct h1_limits lim = limits;
    lim.max_header_bytes = 40;
    static const char s[] = "GET / HTTP/1.1\r\nHost: a\r\nX-Long: 0123456789012345678901234567890123456789\r\n\r\n";
    assert_int_equal(parse_req_n(s, sizeof(s) - 1, &lim), H1_ERR_HDR_LARGE);
    assert_non_null(req.msg.error);
    /* a partial head already at the limit cannot complete within it */
    assert_int_equal(parse_req_n(s, 40, &lim), H1_ERR_HDR_LARGE);
    assert_int_equal(parse_req_n(s, 39, &lim), H1_INCOMPLETE);
}

static void test_req_incomplete_shapes(void **state)
{
    (void)state;
    EXPECT_REQ("", H1_INCOMPLETE);
    EXPECT_REQ("\r", H1_INCOMPLETE);
    EXPECT_REQ("GET / HTTP/1.1\r", H1_INCOMPLETE);
    EXPECT_REQ("GET / HTTP/1.1\r\nHost: a\r\n", H1_INCOMPLETE);
    EXPECT_REQ("GET / HTTP/1.1\r\nHost: a\r\n\r", H1_INCOMPLETE);
    /* errors in the bytes seen so far are reported without waiting for the rest */
    EXPECT_REQ("GET / HTTP/1.1\r\nX: \x01", H1_ERR_BAD);
    EXPECT_REQ("G\0", H1_ERR_BAD);
}

/* ---------------------------------------------------------------- responses */

static void test_resp_200(void **state)
{
    (void)state;
    static const char s[] = "HTTP/1.1 200 OK\r\nContent-Length: 12\r\nContent-Type: text/plain\r\n\r\nhello world!";
    assert_int_equal(RESP(s), sizeof(s) - 1 - 12);
    assert_int_equal(resp.status, 200);
    assert_span(resp.reason, resp.reason_len, "OK");
    assert_int_equal(resp.msg.version_minor, 1);
    assert_int_equal(resp.msg.content_length, 12);
    assert_int_equal(resp.msg.n_headers, 2);
    assert_true(resp.msg.keep_alive);
    assert_null(resp.msg.error);
    assert_int_equal(h1_response_body_kind(&resp, false), H1_BODY_LENGTH);
    assert_int_equal(h1_response_body_kind(&resp, true), H1_BODY_NONE);
}

static void test_resp_200_chunked(void **state)
{
    (void)state;
    OK_RESP("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
    assert_true(resp.msg.chunked);
    assert_int_equal(h1_response_body_kind(&resp, false), H1_BODY_CHUNKED);
    assert_int_equal(h1_response_body_kind(&resp, true), H1_BODY_NONE);
}

static void test_resp_200_close_delimited(void **state)
{
    (void)state;
    OK_RESP("HTTP/1.0 200 OK\r\nServer: x\r\n\r\n");
    assert_false(resp.msg.keep_alive);
    assert_int_equal(h1_response_body_kind(&resp, false), H1_BODY_CLOSE);
    OK_RESP("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n");
    assert_false(resp.msg.chunked);
    assert_int_equal(resp.msg.content_length, -1);
    assert_int_equal(h1_response_body_kind(&resp, false), H1_BODY_CLOSE);
    OK_RESP("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n");
    assert_int_equal(h1_response_body_kind(&resp, false), H1_BODY_CLOSE);
    OK_RESP("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n");
    assert_int_equal(h1_response_body_kind(&resp, false), H1_BODY_CHUNKED);
}

static void test_resp_204(void **state)
{
    (void)state;
    OK_RESP("HTTP/1.1 204 No Content\r\nDate: x\r\n\r\n");
    assert_int_equal(resp.status, 204);
    assert_int_equal(h1_response_body_kind(&resp, false), H1_BODY_NONE);
}

static void test_resp_304_with_length(void **state)
{
    (void)state;
    OK_RESP("HTTP/1.1 304 Not Modified\r\nContent-Length: 1234\r\nETag: \"x\"\r\n\r\n");
    assert_int_equal(resp.msg.content_length, 1234);
    assert_int_equal(h1_response_body_kind(&resp, false), H1_BODY_NONE);
}

static void test_resp_101(void **state)
{
    (void)state;
    OK_RESP("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n");
    assert_int_equal(resp.status, 101);
    assert_true(resp.msg.upgrade);
    assert_int_equal(h1_response_body_kind(&resp, false), H1_BODY_NONE);
}

static void test_resp_100_then_200(void **state)
{
    (void)state;
    static const char s[] = "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
    assert_int_equal(RESP(s), 25);
    assert_int_equal(resp.status, 100);
    assert_int_equal(h1_response_body_kind(&resp, false), H1_BODY_NONE);
    assert_int_equal(parse_resp_n(s + 25, sizeof(s) - 1 - 25, &limits), (int)sizeof(s) - 1 - 25);
    assert_int_equal(resp.status, 200);
    assert_int_equal(h1_response_body_kind(&resp, false), H1_BODY_LENGTH);
}

static void test_resp_reason_shapes(void **state)
{
    (void)state;
    OK_RESP("HTTP/1.1 200 \r\n\r\n");
    assert_int_equal(resp.reason_len, 0);
    OK_RESP("HTTP/1.1 200\r\n\r\n"); /* SP before an empty reason tolerated */
    assert_int_equal(resp.reason_len, 0);
    assert_int_equal(resp.status, 200);
    OK_RESP("HTTP/1.1 404 Not \t Found \xe9\r\n\r\n");
    assert_span(resp.reason, resp.reason_len, "Not \t Found \xe9");
    OK_RESP("HTTP/1.1 599 x\r\n\r\n");
    OK_RESP("HTTP/1.1 100 x\r\n\r\n");
}

static void test_resp_keep_alive(void **state)
{
    (void)state;
    OK_RESP("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
    assert_false(resp.msg.keep_alive);
    assert_true(resp.msg.connection_close);
    OK_RESP("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n");
    assert_true(resp.msg.keep_alive);
}

static void test_resp_incremental(void **state)
{
    (void)state;
    static const char s[] = "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n";
    for (size_t k = 0; k < sizeof(s) - 1; k++)
        assert_int_equal(parse_resp_n(s, k, &limits), H1_INCOMPLETE);
    OK_RESP(s);
}

#define REJECT_RESP(name, lit, code)                                                                                               \
    static void name(void **state)                                                                                                 \
    {                                                                                                                              \
        (void)state;                                                                                                               \
        EXPECT_RESP(lit, code);                                                                                                    \
    }

REJECT_RESP(test_resp_cl_te, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", H1_ERR_BAD)
REJECT_RESP(test_resp_te_cl, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n", H1_ERR_BAD)
REJECT_RESP(test_resp_two_lengths, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", H1_ERR_BAD)
REJECT_RESP(test_resp_repeated_length, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n", H1_ERR_BAD)
REJECT_RESP(test_resp_length_list, "HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n", H1_ERR_BAD)
REJECT_RESP(test_resp_length_garbage, "HTTP/1.1 200 OK\r\nContent-Length: 5x\r\n\r\n", H1_ERR_BAD)
REJECT_RESP(test_resp_two_te, "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n", H1_ERR_BAD)
REJECT_RESP(test_resp_te_chunked_twice, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", H1_ERR_BAD)
REJECT_RESP(test_resp_te_http10, "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", H1_ERR_BAD)
REJECT_RESP(test_resp_204_with_cl, "HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n", H1_ERR_BAD)
REJECT_RESP(test_resp_204_with_te, "HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\n\r\n", H1_ERR_BAD)
REJECT_RESP(test_resp_100_with_cl, "HTTP/1.1 100 Continue\r\nContent-Length: 5\r\n\r\n", H1_ERR_BAD)
REJECT_RESP(test_resp_101_with_te, "HTTP/1.1 101 Switching\r\nTransfer-Encoding: chunked\r\n\r\n", H1_ERR_BAD)
REJECT_RESP(test_resp_304_with_te, "HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n", H1_ERR_BAD)
REJECT_RESP(test_resp_status_99, "HTTP/1.1 99 Low\r\n\r\n", H1_ERR_BAD)
REJECT_RESP(test_resp_status_099, "HTTP/1.1 099 Low\r\n\r\n", H1_ERR_BAD)
REJECT_RESP(test_resp_status_600, "HTTP/1.1 600 High\r\n\r\n", H1_ERR_BAD)
REJECT_RESP(test_resp_status_2000, "HTTP/1.1 2000 OK\r\n\r\n", H1_ERR_BAD)
REJECT_RESP(test_resp_status_alpha, "HTTP/1.1 2x0 OK\r\n\r\n", H1_ERR_BAD)
REJECT_RESP(test_resp_status_missing, "HTTP/1.1 \r\n\r\n", H1_ERR_BAD)
REJECT_RESP(test_resp_double_space, "HTTP/1.1  200 OK\r\n\r\n", H1_ERR_BAD)
REJECT_RESP(test_resp_version_http2, "HTTP/2.0 200 OK\r\n\r\n", H1_ERR_BAD)
REJECT_RESP(test_resp_version_lowercase, "http/1.1 200 OK\r\n\r\n", H1_ERR_BAD)
REJECT_RESP(test_resp_version_missing, "200 OK\r\n\r\n", H1_ERR_BAD)
REJECT_RESP(test_resp_garbage, "<html>\r\n\r\n", H1_ERR_BAD)
REJECT_RESP(test_resp_leading_crlf, "\r\nHTTP/1.1 200 OK\r\n\r\n", H1_ERR_BAD)
REJECT_RESP(test_resp_status_bare_lf, "HTTP/1.1 200 OK\nContent-Length: 0\r\n\r\n", H1_ERR_BAD)
REJECT_RESP(test_resp_reason_ctl, "HTTP/1.1 200 O\x01K\r\n\r\n", H1_ERR_BAD)
REJECT_RESP(test_resp_field_bare_lf, "HTTP/1.1 200 OK\r\nContent-Length: 0\n\r\n", H1_ERR_BAD)
REJECT_RESP(test_resp_obs_fold, "HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n", H1_ERR_BAD)
REJECT_RESP(test_resp_space_before_colon, "HTTP/1.1 200 OK\r\nContent-Length : 0\r\n\r\n", H1_ERR_BAD)
REJECT_RESP(test_resp_value_nul, "HTTP/1.1 200 OK\r\nX: a\0\r\n\r\n", H1_ERR_BAD)

static void test_resp_limits(void **state)
{
    (void)state;
    struct h1_limits lim = {.max_request_line = 10, .max_header_bytes = 64, .max_headers = 1};
    static const char s[] = "HTTP/1.1 200 OK\r\n\r\n";
    assert_int_equal(parse_resp_n(s, sizeof(s) - 1, &lim), H1_ERR_HDR_LARGE);
    lim.max_request_line = 17;
    assert_int_equal(parse_resp_n(s, sizeof(s) - 1, &lim), (int)sizeof(s) - 1);
    static const char two[] = "HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\n\r\n";
    assert_int_equal(parse_resp_n(two, sizeof(two) - 1, &lim), H1_ERR_HDR_LARGE);
    lim.max_headers = 2;
    lim.max_header_bytes = sizeof(two) - 2;
    assert_int_equal(parse_resp_n(two, sizeof(two) - 1, &lim), H1_ERR_HDR_LARGE);
}

/* ---------------------------------------------------------------- chunked decoder */

struct decoded {
    long rc; /* bytes consumed in total, or H1_ERR_BAD */
    bool done;
    char data[65536];
    size_t data_len;
    const char *error;
};

static struct decoded dec;

/*
 * Decode s[0..n) as a peer would deliver it: first `first` bytes, then `step`
 * more at a time. Checks the feed contract on every call.
 */
static void decode_split(const char *s, size_t n, size_t first, size_t step)
{
    struct h1_chunked c;
    size_t pos = 0, avail = first < n ? first : n;

    h1_chunked_init(&c);
    dec.done = false;
    dec.data_len = 0;
    dec.error = NULL;
    for (;;) {
        size_t off = 99, len = 99;
        long r = h1_chunked_feed(&c, s + pos, avail - pos, &off, &len);
        if (r < 0) {
            assert_int_equal(r, H1_ERR_BAD);
            assert_non_null(c.error);
            dec.rc = r;
            dec.error = c.error;
            return;
        }
        assert_true((size_t)r <= avail - pos);
        if (len > 0) {
            assert_true(off + len <= (size_t)r);
            assert_true(dec.data_len + len <= sizeof(dec.data));
            memcpy(dec.data + dec.data_len, s + pos + off, len);
            dec.data_len += len;
        }
        pos += (size_t)r;
        if (c.done)
            break;
        if (pos == avail) {
            if (avail == n)
                break;
            avail = avail + step < n ? avail + step : n;
        } else {
            assert_true(r > 0); /* must make progress while input remains */
        }
    }
    dec.done = c.done;
    dec.rc = (long)pos;
    /* once done, nothing more is consumed */
    if (c.done) {
        size_t off, len;
        assert_int_equal(h1_chunked_feed(&c, "5\r\n", 3, &off, &len), 0);
        assert_int_equal(len, 0);
    }
}

static void decode_all(const char *s, size_t n)
{
    decode_split(s, n, n, n);
}

/* Decoding must not depend on how the bytes are split. */
static void expect_chunked_n(const char *s, size_t n, long rc, bool done, const char *data, size_t data_len)
{
    const size_t steps[] = {1, 2, 3, n > 0 ? n : 1};
    for (size_t first = 0; first <= n; first++) {
        for (size_t si = 0; si < sizeof(steps) / sizeof(steps[0]); si++) {
            size_t step = steps[si];
            decode_split(s, n, first, step);
            if (dec.rc != rc || dec.done != done)
                print_error("split %zu/%zu: rc %ld (%s) done %d\n", first, step, dec.rc, dec.error ? dec.error : "-", dec.done);
            assert_int_equal(dec.rc, rc);
            assert_int_equal(dec.done, done);
            if (rc >= 0) {
                assert_int_equal(dec.data_len, data_len);
                assert_memory_equal(dec.data, data, data_len);
            }
        }
    }
}

#define EXPECT_CHUNKED_OK(lit, payload) expect_chunked_n(lit, sizeof(lit) - 1, sizeof(lit) - 1, true, payload, sizeof(payload) - 1)
#define EXPECT_CHUNKED_BAD(lit) expect_chunked_n(lit, sizeof(lit) - 1, H1_ERR_BAD, false, NULL, 0)

static void test_chunked_normal(void **state)
{
    (void)state;
    EXPECT_CHUNKED_OK("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", "hello world");
}

static void test_chunked_hex_sizes(void **state)
{
    (void)state;
    EXPECT_CHUNKED_OK("a\r\n0123456789\r\nA\r\nabcdefghij\r\n0000\r\n\r\n", "0123456789abcdefghij");
    EXPECT_CHUNKED_OK("0005\r\nhello\r\n0\r\n\r\n", "hello");
}

static void test_chunked_empty_body(void **state)
{
    (void)state;
    EXPECT_CHUNKED_OK("0\r\n\r\n", "");
}

static void test_chunked_byte_by_byte(void **state)
{
    (void)state;
    static const char s[] = "3\r\nabc\r\n1;x=y\r\nd\r\n0\r\nT: v\r\n\r\n";
    decode_split(s, sizeof(s) - 1, 0, 1);
    assert_true(dec.done);
    assert_int_equal(dec.rc, sizeof(s) - 1);
    assert_int_equal(dec.data_len, 4);
    assert_memory_equal(dec.data, "abcd", 4);
}

static void test_chunked_one_data_run_per_call(void **state)
{
    (void)state;
    static const char s[] = "2\r\nab\r\n2\r\ncd\r\n0\r\n\r\n";
    struct h1_chunked c;
    size_t off, len;
    h1_chunked_init(&c);
    long r = h1_chunked_feed(&c, s, sizeof(s) - 1, &off, &len);
    assert_int_equal(r, 5);
    assert_int_equal(off, 3);
    assert_int_equal(len, 2);
    r = h1_chunked_feed(&c, s + 5, sizeof(s) - 1 - 5, &off, &len);
    assert_int_equal(r, 7);
    assert_int_equal(off, 5);
    assert_int_equal(len, 2);
    assert_memory_equal(s + 5 + off, "cd", 2);
    assert_false(c.done);
    r = h1_chunked_feed(&c, s + 12, sizeof(s) - 1 - 12, &off, &len);
    assert_int_equal(r, sizeof(s) - 1 - 12);
    assert_int_equal(len, 0);
    assert_true(c.done);
}

static void test_chunked_extensions(void **state)
{
    (void)state;
    EXPECT_CHUNKED_OK("5;name=value\r\nhello\r\n0;last\r\n\r\n", "hello");
    EXPECT_CHUNKED_OK("5 ; a = \"q \\\" ;x\" ; b ;c=d\r\nhello\r\n0\r\n\r\n", "hello");
    EXPECT_CHUNKED_OK("5;a;b;c\r\nhello\r\n0\r\n\r\n", "hello");
}

static void test_chunked_extension_over_bound(void **state)
{
    (void)state;
    static char s[H1_CHUNK_MAX_LINE + 64];
    size_t n = (size_t)sprintf(s, "1;a=");
    memset(s + n, 'x', H1_CHUNK_MAX_LINE - n);
    n = H1_CHUNK_MAX_LINE;
    memcpy(s + n, "\r\nx\r\n0\r\n\r\n", 10);
    decode_all(s, n + 10);
    assert_true(dec.done); /* exactly at the bound */
    memmove(s + n + 1, s + n, 10);
    s[n] = 'x';
    decode_all(s, n + 11);
    assert_int_equal(dec.rc, H1_ERR_BAD);
    assert_non_null(dec.error);
}

static void test_chunked_bad_extensions(void **state)
{
    (void)state;
    EXPECT_CHUNKED_BAD("5;\r\nhello\r\n0\r\n\r\n");
    EXPECT_CHUNKED_BAD("5;=x\r\nhello\r\n0\r\n\r\n");
    EXPECT_CHUNKED_BAD("5;a=\r\nhello\r\n0\r\n\r\n");
    EXPECT_CHUNKED_BAD("5;a=\"x\r\nhello\r\n0\r\n\r\n");
    EXPECT_CHUNKED_BAD("5;a \r\nhello\r\n0\r\n\r\n");
    EXPECT_CHUNKED_BAD("5;a=b c\r\nhello\r\n0\r\n\r\n");
    EXPECT_CHUNKED_BAD("5;a=\"\x01\"\r\nhello\r\n0\r\n\r\n");
    EXPECT_CHUNKED_BAD("5;a\nhello\r\n0\r\n\r\n");
}

static void test_chunked_size_2_63(void **state)
{
    (void)state;
    EXPECT_CHUNKED_BAD("10000000000000000\r\n");
    EXPECT_CHUNKED_BAD("8000000000000000\r\n");
    EXPECT_CHUNKED_BAD("4000000000000001\r\n");
    EXPECT_CHUNKED_BAD("ffffffffffffffffffffffff\r\n");
}

static void test_chunked_size_2_62_accepted(void **state)
{
    (void)state;
    struct h1_chunked c;
    size_t off, len;
    h1_chunked_init(&c);
    assert_int_equal(h1_chunked_feed(&c, "4000000000000000\r\nab", 20, &off, &len), 20);
    assert_int_equal(off, 18);
    assert_int_equal(len, 2);
    assert_true(c.remaining == ((uint64_t)1 << 62) - 2);
    assert_int_equal(h1_chunked_feed(&c, "cd", 2, &off, &len), 2);
    assert_int_equal(off, 0);
    assert_int_equal(len, 2);
    assert_true(c.remaining == ((uint64_t)1 << 62) - 4);
}

static void test_chunked_size_0x(void **state)
{
    (void)state;
    EXPECT_CHUNKED_BAD("0x10\r\n0123456789abcdef\r\n0\r\n\r\n");
}

static void test_chunked_size_negative(void **state)
{
    (void)state;
    EXPECT_CHUNKED_BAD("-1\r\n\r\n");
    EXPECT_CHUNKED_BAD("+1\r\nx\r\n0\r\n\r\n");
}

static void test_chunked_size_empty(void **state)
{
    (void)state;
    EXPECT_CHUNKED_BAD("\r\nhello\r\n0\r\n\r\n");
    EXPECT_CHUNKED_BAD(";a\r\n\r\n");
}

static void test_chunked_size_whitespace(void **state)
{
    (void)state;
    EXPECT_CHUNKED_BAD(" 5\r\nhello\r\n0\r\n\r\n");
    EXPECT_CHUNKED_BAD("5 \r\nhello\r\n0\r\n\r\n");
    EXPECT_CHUNKED_BAD("5\t\r\nhello\r\n0\r\n\r\n");
    EXPECT_CHUNKED_BAD("5 5\r\nhello\r\n0\r\n\r\n");
}

static void test_chunked_size_garbage(void **state)
{
    (void)state;
    EXPECT_CHUNKED_BAD("g\r\n");
    EXPECT_CHUNKED_BAD("5g\r\nhello\r\n0\r\n\r\n");
    EXPECT_CHUNKED_BAD("5\0\r\nhello\r\n0\r\n\r\n");
}

static void test_chunked_missing_crlf_after_data(void **state)
{
    (void)state;
    EXPECT_CHUNKED_BAD("5\r\nhelloX\r\n0\r\n\r\n");
    EXPECT_CHUNKED_BAD("5\r\nhello0\r\n\r\n");
    EXPECT_CHUNKED_BAD("5\r\nhello\n0\r\n\r\n");
    EXPECT_CHUNKED_BAD("5\r\nhello\rX0\r\n\r\n");
    EXPECT_CHUNKED_BAD("3\r\nhello\r\n0\r\n\r\n"); /* size smaller than the data */
}

static void test_chunked_bare_lf_in_size_line(void **state)
{
    (void)state;
    EXPECT_CHUNKED_BAD("5\nhello\r\n0\r\n\r\n");
    EXPECT_CHUNKED_BAD("5\r\nhello\r\n0\n\r\n");
}

static void test_chunked_bare_cr_in_size_line(void **state)
{
    (void)state;
    EXPECT_CHUNKED_BAD("5\rhello\r\n0\r\n\r\n");
    EXPECT_CHUNKED_BAD("5;a\rhello\r\n0\r\n\r\n");
}

static void test_chunked_trailers_valid(void **state)
{
    (void)state;
    EXPECT_CHUNKED_OK("5\r\nhello\r\n0\r\nX-Checksum: abc\r\nX-Empty:\r\nX-Obs: \xff\t1\r\n\r\n", "hello");
}

static void test_chunked_trailers_malformed(void **state)
{
    (void)state;
    EXPECT_CHUNKED_BAD("0\r\nX-T: a\r\n b\r\n\r\n"); /* obs-fold */
    EXPECT_CHUNKED_BAD("0\r\n X-T: a\r\n\r\n");
    EXPECT_CHUNKED_BAD("0\r\nX-T : a\r\n\r\n");
    EXPECT_CHUNKED_BAD("0\r\nX-T\r\n\r\n");
    EXPECT_CHUNKED_BAD("0\r\n: a\r\n\r\n");
    EXPECT_CHUNKED_BAD("0\r\nX-T: a\n\r\n");
    EXPECT_CHUNKED_BAD("0\r\nX-T: a\rb\r\n\r\n");
    EXPECT_CHUNKED_BAD("0\r\nX-T: a\0\r\n\r\n");
    EXPECT_CHUNKED_BAD("0\r\nX-T: \x7f\r\n\r\n");
    EXPECT_CHUNKED_BAD("0\r\n\n");
    EXPECT_CHUNKED_BAD("0\r\n\rX");
}

static void test_chunked_trailers_over_bound(void **state)
{
    (void)state;
    static char s[H1_CHUNK_MAX_TRAILER + 64];
    /* trailer section of exactly H1_CHUNK_MAX_TRAILER bytes: one field + CRLF */
    size_t n = (size_t)sprintf(s, "0\r\nX: ");
    size_t value = H1_CHUNK_MAX_TRAILER - 3 /* "X: " */ - 2 /* CRLF */ - 2 /* final CRLF */;
    memset(s + n, 'v', value);
    n += value;
    memcpy(s + n, "\r\n\r\n", 4);
    n += 4;
    decode_all(s, n);
    assert_true(dec.done);
    assert_int_equal(dec.rc, (long)n);
    /* one byte more */
    memcpy(s + n - 4, "v\r\n\r\n", 5);
    decode_all(s, n + 1);
    assert_int_equal(dec.rc, H1_ERR_BAD);
    assert_non_null(dec.error);
}

static void test_chunked_stops_at_end(void **state)
{
    (void)state;
    static const char s[] = "3\r\nabc\r\n0\r\n\r\nGET / HTTP/1.1\r\n";
    decode_all(s, sizeof(s) - 1);
    assert_true(dec.done);
    assert_int_equal(dec.rc, 13);
    /* also when the end arrives together with the next message in one call */
    struct h1_chunked c;
    size_t off, len;
    h1_chunked_init(&c);
    assert_int_equal(h1_chunked_feed(&c, s + 8, sizeof(s) - 1 - 8, &off, &len), 5);
    assert_int_equal(len, 0);
}

static void test_chunked_error_is_sticky(void **state)
{
    (void)state;
    struct h1_chunked c;
    size_t off, len;
    h1_chunked_init(&c);
    assert_int_equal(h1_chunked_feed(&c, "z", 1, &off, &len), H1_ERR_BAD);
    assert_non_null(c.error);
    assert_int_equal(h1_chunked_feed(&c, "0\r\n\r\n", 5, &off, &len), H1_ERR_BAD);
    assert_false(c.done);
}

static void test_chunked_zero_init_equals_init(void **state)
{
    (void)state;
    struct h1_chunked c = {0};
    size_t off, len;
    assert_int_equal(h1_chunked_feed(&c, "1\r\nx\r\n0\r\n\r\n", 11, &off, &len), 4);
    assert_int_equal(len, 1);
    assert_int_equal(h1_chunked_feed(&c, "", 0, &off, &len), 0);
    assert_int_equal(len, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_req_get),
        cmocka_unit_test(test_req_post_content_length),
        cmocka_unit_test(test_req_content_length_zero),
        cmocka_unit_test(test_req_content_length_max),
        cmocka_unit_test(test_req_chunked),
        cmocka_unit_test(test_req_pipelined),
        cmocka_unit_test(test_req_absolute_form),
        cmocka_unit_test(test_req_absolute_form_no_path),
        cmocka_unit_test(test_req_absolute_form_http10_without_host),
        cmocka_unit_test(test_req_options_asterisk),
        cmocka_unit_test(test_req_connect),
        cmocka_unit_test(test_req_http10_keep_alive),
        cmocka_unit_test(test_req_connection_close),
        cmocka_unit_test(test_req_upgrade),
        cmocka_unit_test(test_req_expect_continue),
        cmocka_unit_test(test_req_incremental_byte_by_byte),
        cmocka_unit_test(test_req_incremental_with_leading_crlf),
        cmocka_unit_test(test_req_leading_crlf),
        cmocka_unit_test(test_req_value_ows_trimmed),
        cmocka_unit_test(test_req_obs_text_value),
        cmocka_unit_test(test_req_host_forms),
        cmocka_unit_test(test_req_limits_at_boundary),
        cmocka_unit_test(test_req_limits_larger_than_cap),
        cmocka_unit_test(test_req_find_header),
        cmocka_unit_test(test_hop_by_hop),
        cmocka_unit_test(test_req_value_every_byte_every_offset),
        cmocka_unit_test(test_req_target_every_byte_every_offset),
        cmocka_unit_test(test_resp_reason_every_byte_every_offset),
        cmocka_unit_test(test_req_long_value_prefixes),

        cmocka_unit_test(test_req_method_ctl),
        cmocka_unit_test(test_req_method_del),
        cmocka_unit_test(test_req_method_empty),
        cmocka_unit_test(test_req_method_non_token),
        cmocka_unit_test(test_req_double_space),
        cmocka_unit_test(test_req_tab_separator),
        cmocka_unit_test(test_req_trailing_space),
        cmocka_unit_test(test_req_target_space),
        cmocka_unit_test(test_req_target_ctl),
        cmocka_unit_test(test_req_target_non_ascii),
        cmocka_unit_test(test_req_target_fragment),
        cmocka_unit_test(test_req_target_no_form),
        cmocka_unit_test(test_req_target_other_scheme),
        cmocka_unit_test(test_req_asterisk_not_options),
        cmocka_unit_test(test_req_authority_form_not_connect),
        cmocka_unit_test(test_req_connect_origin_form),
        cmocka_unit_test(test_req_connect_no_port),
        cmocka_unit_test(test_req_http09),
        cmocka_unit_test(test_req_version_http2),
        cmocka_unit_test(test_req_version_http3),
        cmocka_unit_test(test_req_version_http12),
        cmocka_unit_test(test_req_version_lowercase),
        cmocka_unit_test(test_req_version_two_digit_minor),
        cmocka_unit_test(test_req_version_no_minor),
        cmocka_unit_test(test_req_version_garbage),
        cmocka_unit_test(test_req_line_bare_lf),
        cmocka_unit_test(test_req_line_bare_cr),
        cmocka_unit_test(test_req_line_too_long),

        cmocka_unit_test(test_req_field_bare_lf),
        cmocka_unit_test(test_req_final_bare_lf),
        cmocka_unit_test(test_req_all_bare_lf),
        cmocka_unit_test(test_req_field_bare_cr),
        cmocka_unit_test(test_req_final_bare_cr),
        cmocka_unit_test(test_req_value_nul),
        cmocka_unit_test(test_req_value_ctl_01),
        cmocka_unit_test(test_req_value_ctl_vt),
        cmocka_unit_test(test_req_value_ctl_esc),
        cmocka_unit_test(test_req_value_del),
        cmocka_unit_test(test_req_name_nul),
        cmocka_unit_test(test_req_name_non_token),
        cmocka_unit_test(test_req_name_empty),
        cmocka_unit_test(test_req_name_no_colon),
        cmocka_unit_test(test_req_space_before_colon),
        cmocka_unit_test(test_req_obs_fold_space),
        cmocka_unit_test(test_req_obs_fold_tab),
        cmocka_unit_test(test_req_first_field_leading_space),
        cmocka_unit_test(test_req_expect_other),
        cmocka_unit_test(test_req_expect_duplicate),
        cmocka_unit_test(test_req_connection_not_token),

        cmocka_unit_test(test_req_missing_host),
        cmocka_unit_test(test_req_duplicate_host),
        cmocka_unit_test(test_req_duplicate_host_case),
        cmocka_unit_test(test_req_host_space),
        cmocka_unit_test(test_req_host_empty),
        cmocka_unit_test(test_req_host_empty_http10),
        cmocka_unit_test(test_req_host_userinfo),
        cmocka_unit_test(test_req_host_slash),
        cmocka_unit_test(test_req_host_comma),
        cmocka_unit_test(test_req_host_port_empty),
        cmocka_unit_test(test_req_host_port_alpha),
        cmocka_unit_test(test_req_host_port_too_big),
        cmocka_unit_test(test_req_host_bad_ipv6),
        cmocka_unit_test(test_req_host_unclosed_ipv6),
        cmocka_unit_test(test_req_absolute_form_host_mismatch),
        cmocka_unit_test(test_req_absolute_form_port_mismatch),
        cmocka_unit_test(test_req_absolute_form_userinfo),
        cmocka_unit_test(test_req_absolute_form_empty_authority),
        cmocka_unit_test(test_req_absolute_form_query_no_path),

        cmocka_unit_test(test_req_cl_plus),
        cmocka_unit_test(test_req_cl_hex),
        cmocka_unit_test(test_req_cl_empty),
        cmocka_unit_test(test_req_cl_space_only),
        cmocka_unit_test(test_req_cl_20_digits),
        cmocka_unit_test(test_req_cl_over_2_62),
        cmocka_unit_test(test_req_cl_two_fields),
        cmocka_unit_test(test_req_cl_two_same_fields),
        cmocka_unit_test(test_req_cl_list),
        cmocka_unit_test(test_req_cl_negative),
        cmocka_unit_test(test_req_cl_inner_space),
        cmocka_unit_test(test_req_cl_decimal),

        cmocka_unit_test(test_req_cl_te),
        cmocka_unit_test(test_req_te_cl),
        cmocka_unit_test(test_req_te_cl_zero),
        cmocka_unit_test(test_req_te_chunked_chunked),
        cmocka_unit_test(test_req_te_xchunked),
        cmocka_unit_test(test_req_te_chunked_gzip),
        cmocka_unit_test(test_req_te_gzip_chunked),
        cmocka_unit_test(test_req_te_gzip),
        cmocka_unit_test(test_req_te_identity),
        cmocka_unit_test(test_req_te_empty),
        cmocka_unit_test(test_req_te_trailing_comma),
        cmocka_unit_test(test_req_te_leading_comma),
        cmocka_unit_test(test_req_te_parameter),
        cmocka_unit_test(test_req_te_quoted),
        cmocka_unit_test(test_req_te_vtab),
        cmocka_unit_test(test_req_te_two_fields),
        cmocka_unit_test(test_req_te_two_fields_identity),
        cmocka_unit_test(test_req_te_http10),
        cmocka_unit_test(test_req_te_obs_fold_value),
        cmocka_unit_test(test_req_te_obs_fold_tab_value),
        cmocka_unit_test(test_req_te_leading_space_name),
        cmocka_unit_test(test_req_te_leading_tab_name),
        cmocka_unit_test(test_req_te_space_before_colon),
        cmocka_unit_test(test_req_te_tab_before_colon),
        cmocka_unit_test(test_req_te_bad_before_cl),

        cmocka_unit_test(test_req_too_many_headers),
        cmocka_unit_test(test_req_head_too_large),
        cmocka_unit_test(test_req_incomplete_shapes),

        cmocka_unit_test(test_resp_200),
        cmocka_unit_test(test_resp_200_chunked),
        cmocka_unit_test(test_resp_200_close_delimited),
        cmocka_unit_test(test_resp_204),
        cmocka_unit_test(test_resp_304_with_length),
        cmocka_unit_test(test_resp_101),
        cmocka_unit_test(test_resp_100_then_200),
        cmocka_unit_test(test_resp_reason_shapes),
        cmocka_unit_test(test_resp_keep_alive),
        cmocka_unit_test(test_resp_incremental),
        cmocka_unit_test(test_resp_cl_te),
        cmocka_unit_test(test_resp_te_cl),
        cmocka_unit_test(test_resp_two_lengths),
        cmocka_unit_test(test_resp_repeated_length),
        cmocka_unit_test(test_resp_length_list),
        cmocka_unit_test(test_resp_length_garbage),
        cmocka_unit_test(test_resp_two_te),
        cmocka_unit_test(test_resp_te_chunked_twice),
        cmocka_unit_test(test_resp_te_http10),
        cmocka_unit_test(test_resp_204_with_cl),
        cmocka_unit_test(test_resp_204_with_te),
        cmocka_unit_test(test_resp_100_with_cl),
        cmocka_unit_test(test_resp_101_with_te),
        cmocka_unit_test(test_resp_304_with_te),
        cmocka_unit_test(test_resp_status_99),
        cmocka_unit_test(test_resp_status_099),
        cmocka_unit_test(test_resp_status_600),
        cmocka_unit_test(test_resp_status_2000),
        cmocka_unit_test(test_resp_status_alpha),
        cmocka_unit_test(test_resp_status_missing),
        cmocka_unit_test(test_resp_double_space),
        cmocka_unit_test(test_resp_version_http2),
        cmocka_unit_test(test_resp_version_lowercase),
        cmocka_unit_test(test_resp_version_missing),
        cmocka_unit_test(test_resp_garbage),
        cmocka_unit_test(test_resp_leading_crlf),
        cmocka_unit_test(test_resp_status_bare_lf),
        cmocka_unit_test(test_resp_reason_ctl),
        cmocka_unit_test(test_resp_field_bare_lf),
        cmocka_unit_test(test_resp_obs_fold),
        cmocka_unit_test(test_resp_space_before_colon),
        cmocka_unit_test(test_resp_value_nul),
        cmocka_unit_test(test_resp_limits),

        cmocka_unit_test(test_chunked_normal),
        cmocka_unit_test(test_chunked_hex_sizes),
        cmocka_unit_test(test_chunked_empty_body),
        cmocka_unit_test(test_chunked_byte_by_byte),
        cmocka_unit_test(test_chunked_one_data_run_per_call),
        cmocka_unit_test(test_chunked_extensions),
        cmocka_unit_test(test_chunked_extension_over_bound),
        cmocka_unit_test(test_chunked_bad_extensions),
        cmocka_unit_test(test_chunked_size_2_63),
        cmocka_unit_test(test_chunked_size_2_62_accepted),
        cmocka_unit_test(test_chunked_size_0x),
        cmocka_unit_test(test_chunked_size_negative),
        cmocka_unit_test(test_chunked_size_empty),
        cmocka_unit_test(test_chunked_size_whitespace),
        cmocka_unit_test(test_chunked_size_garbage),
        cmocka_unit_test(test_chunked_missing_crlf_after_data),
        cmocka_unit_test(test_chunked_bare_lf_in_size_line),
        cmocka_unit_test(test_chunked_bare_cr_in_size_line),
        cmocka_unit_test(test_chunked_trailers_valid),
        cmocka_unit_test(test_chunked_trailers_malformed),
        cmocka_unit_test(test_chunked_trailers_over_bound),
        cmocka_unit_test(test_chunked_stops_at_end),
        cmocka_unit_test(test_chunked_error_is_sticky),
        cmocka_unit_test(test_chunked_zero_init_equals_init),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
