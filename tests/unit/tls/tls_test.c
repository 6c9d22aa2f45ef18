/*
 * tls_test.c - tests for tls/tls.c: server contexts (loading, SNI, ALPN,
 * versions and suites, ticket resumption) and client contexts
 * (verification, hostname and IP checks, ALPN offer).
 *
 * Certificates are made at start by the openssl command line in a mkdtemp()
 * directory (EC P-256, about 10 ms each) and removed at the end; no
 * key material lives in the tree. Handshakes run in memory: a client SSL from
 * tls_client_ssl_new() and a server SSL from the server context talk over a
 * BIO pair, driven step by step by this file, without sockets or threads.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>

#include "tls/tls.h"

/* ------------------------------------------------------------------------- */
/* Certificates */

#define PATH_LEN 512

static char dir[256];

/* Paths under dir. */
static char ca_crt[PATH_LEN], ca_key[PATH_LEN];
static char a_crt[PATH_LEN], a_key[PATH_LEN];       /* DNS:a.test, signed by the CA */
static char wild_crt[PATH_LEN], wild_key[PATH_LEN]; /* DNS:*.wild.test, signed by the CA */
static char cn_crt[PATH_LEN], cn_key[PATH_LEN];     /* no subjectAltName, CN=cn.test, signed by the CA */
static char ip_crt[PATH_LEN], ip_key[PATH_LEN];     /* IP:127.0.0.1 + DNS:ip.test, signed by the CA */
static char self_crt[PATH_LEN], self_key[PATH_LEN]; /* DNS:a.test, self-signed (untrusted) */
static char rsa_key[PATH_LEN];                      /* an RSA key matching no certificate */
static char enc_key[PATH_LEN];                      /* a.key, encrypted with a passphrase */
static char junk[PATH_LEN];                         /* not PEM at all */
static char missing[PATH_LEN];                      /* does not exist */

static X509 *a_x509, *wild_x509, *cn_x509;

static void path(char *out, const char *name)
{
    snprintf(out, PATH_LEN, "%s/%s", dir, name);
}

/* Run one shell command (in a subshell, so it may redirect its own output);
 * stdout is dropped, stderr goes to dir/openssl.log, shown on failure. */
static int run(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int run(const char *fmt, ...)
{
    char cmd[4096] = "(";
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(cmd + 1, sizeof(cmd) - 1, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof(cmd) - 128)
        return -1;
    snprintf(cmd + 1 + n, sizeof(cmd) - 1 - (size_t)n, ") >/dev/null 2>>%s/openssl.log", dir);
    int rc = system(cmd);
    if (rc != 0) {
        fprintf(stderr, "command failed (%d): %s\n", rc, cmd);
        char show[PATH_LEN];
        snprintf(show, sizeof(show), "cat %s/openssl.log >&2", dir);
        if (system(show) != 0)
            fprintf(stderr, "(no log)\n");
    }
    return rc;
}

/* A leaf signed by the test CA (ca_crt/ca_key), P-256, valid two days. ext is
 * a full -addext argument list for the names. */
static int make_leaf(const char *crt, const char *key, const char *cn, const char *ext)
{
    return run("openssl req -config %s/min.cnf -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2"
               " -keyout %s -out %s -subj '/CN=%s' -addext basicConstraints=critical,CA:FALSE"
               " -addext extendedKeyUsage=serverAuth %s -CA %s -CAkey %s",
               dir, key, crt, cn, ext, ca_crt, ca_key);
}

static X509 *load_x509(const char *file)
{
    FILE *f = fopen(file, "r");
    if (f == NULL)
        return NULL;
    X509 *x = PEM_read_X509(f, NULL, NULL, NULL);
    fclose(f);
    return x;
}

static int setup(void **state)
{
    (void)state;
    const char *tmp = getenv("TMPDIR");
    snprintf(dir, sizeof(dir), "%s/cutover-tls-test.XXXXXX", tmp != NULL && tmp[0] != '\0' ? tmp : "/tmp");
    if (mkdtemp(dir) == NULL)
        return -1;
    path(ca_crt, "ca.crt");
    path(ca_key, "ca.key");
    path(a_crt, "a.crt");
    path(a_key, "a.key");
    path(wild_crt, "wild.crt");
    path(wild_key, "wild.key");
    path(cn_crt, "cn.crt");
    path(cn_key, "cn.key");
    path(ip_crt, "ip.crt");
    path(ip_key, "ip.key");
    path(self_crt, "self.crt");
    path(self_key, "self.key");
    path(rsa_key, "rsa.key");
    path(enc_key, "enc.key");
    path(junk, "junk.txt");
    path(missing, "missing.pem");

    /* A minimal config so the system openssl.cnf cannot add extensions. */
    char cnf[PATH_LEN];
    path(cnf, "min.cnf");
    FILE *f = fopen(cnf, "w");
    if (f == NULL)
        return -1;
    fputs("[req]\ndistinguished_name = dn\n[dn]\n", f);
    fclose(f);
    f = fopen(junk, "w");
    if (f == NULL)
        return -1;
    fputs("this is not a certificate\n", f);
    fclose(f);

    if (run("openssl req -config %s/min.cnf -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2"
            " -keyout %s -out %s -subj '/CN=cutover test CA'"
            " -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign",
            dir, ca_key, ca_crt) != 0 ||
        make_leaf(a_crt, a_key, "a.test", "-addext subjectAltName=DNS:a.test") != 0 ||
        make_leaf(wild_crt, wild_key, "*.wild.test", "-addext subjectAltName=DNS:*.wild.test") != 0 ||
        make_leaf(cn_crt, cn_key, "cn.test", "") != 0 ||
        make_leaf(ip_crt, ip_key, "ip.test", "-addext subjectAltName=IP:127.0.0.1,DNS:ip.test") != 0 ||
        run("openssl req -config %s/min.cnf -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2"
            " -keyout %s -out %s -subj /CN=a.test -addext subjectAltName=DNS:a.test",
            dir, self_key, self_crt) != 0 ||
        run("openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out %s", rsa_key) != 0 ||
        run("openssl pkey -in %s -aes256 -passout pass:secret -out %s", a_key, enc_key) != 0)
        return -1;

    a_x509 = load_x509(a_crt);
    wild_x509 = load_x509(wild_crt);
    cn_x509 = load_x509(cn_crt);
    return a_x509 != NULL && wild_x509 != NULL && cn_x509 != NULL ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    X509_free(a_x509);
    X509_free(wild_x509);
    X509_free(cn_x509);
    char cmd[PATH_LEN + 16];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    return system(cmd) == 0 ? 0 : -1;
}

/* ------------------------------------------------------------------------- */
/* Handshakes in memory */

struct handshake {
    bool client_ok, server_ok;
    char client_why[512]; /* tls_describe_failure() of a failed side */
    char server_why[512];
};

/* Step one side; returns true once it has finished or failed. */
static bool step(SSL *ssl, bool *ok, bool *failed, char *why, size_t whylen)
{
    if (*ok || *failed)
        return true;
    ERR_clear_error();
    int r = SSL_do_handshake(ssl);
    if (r == 1) {
        *ok = true;
        return true;
    }
    int e = SSL_get_error(ssl, r);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
        return false;
    *failed = true;
    tls_describe_failure(ssl, 0, why, whylen);
    ERR_clear_error();
    return true;
}

/* Connect client and server over a BIO pair (each SSL takes one end) and run
 * the handshake until both sides are done or one gave up. */
static struct handshake run_handshake(SSL *client, SSL *server)
{
    struct handshake h;
    memset(&h, 0, sizeof(h));
    BIO *bc = NULL, *bs = NULL;
    assert_int_equal(BIO_new_bio_pair(&bc, 0, &bs, 0), 1);
    SSL_set_bio(client, bc, bc);
    SSL_set_bio(server, bs, bs);
    bool client_failed = false, server_failed = false;
    for (int round = 0; round < 50; round++) {
        bool c = step(client, &h.client_ok, &client_failed, h.client_why, sizeof(h.client_why));
        bool s = step(server, &h.server_ok, &server_failed, h.server_why, sizeof(h.server_why));
        if (c && s)
            break;
    }
    return h;
}

/* Let the client read what the server sent after the handshake: TLS 1.3
 * session tickets. Nothing else is pending, so the read would block. */
static void read_tickets(SSL *client)
{
    char byte;
    ERR_clear_error();
    int r = SSL_read(client, &byte, 1);
    assert_int_equal(r, -1);
    assert_int_equal(SSL_get_error(client, r), SSL_ERROR_WANT_READ);
}

static SSL_CTX *server_ctx(const struct tls_cert_files *certs, size_t n, int min_version, bool allow_h2)
{
    char err[512] = "";
    SSL_CTX *ctx = tls_server_ctx_new(certs, n, min_version, allow_h2, err, sizeof(err));
    if (ctx == NULL)
        fail_msg("tls_server_ctx_new: %s", err);
    return ctx;
}

static SSL_CTX *client_ctx(const char *ca_file, bool verify)
{
    char err[512] = "";
    SSL_CTX *ctx = tls_client_ctx_new(ca_file, verify, err, sizeof(err));
    if (ctx == NULL)
        fail_msg("tls_client_ctx_new: %s", err);
    return ctx;
}

static SSL *server_ssl(SSL_CTX *ctx)
{
    SSL *ssl = SSL_new(ctx);
    assert_non_null(ssl);
    SSL_set_accept_state(ssl);
    return ssl;
}

/* The usual listener: a.test (default), *.wild.test, cn.test. */
static const struct tls_cert_files *three_certs(void)
{
    static struct tls_cert_files certs[3];
    certs[0] = (struct tls_cert_files){a_crt, a_key};
    certs[1] = (struct tls_cert_files){wild_crt, wild_key};
    certs[2] = (struct tls_cert_files){cn_crt, cn_key};
    return certs;
}

/* One handshake of a non-verifying client sending sni (NULL = none) to sctx;
 * returns the certificate the server presented (owned by the caller). */
static X509 *served_cert(SSL_CTX *sctx, const char *sni)
{
    SSL_CTX *cctx = client_ctx(NULL, false);
    SSL *client = tls_client_ssl_new(cctx, sni, NULL, "http/1.1");
    assert_non_null(client);
    SSL *server = server_ssl(sctx);
    struct handshake h = run_handshake(client, server);
    if (!h.client_ok || !h.server_ok)
        fail_msg("handshake with SNI %s failed: client: %s / server: %s", sni != NULL ? sni : "(none)", h.client_why, h.server_why);
    X509 *peer = SSL_get1_peer_certificate(client);
    assert_non_null(peer);
    SSL_free(client);
    SSL_free(server);
    tls_ctx_free(cctx);
    return peer;
}

static void assert_served(SSL_CTX *sctx, const char *sni, const X509 *expected)
{
    X509 *peer = served_cert(sctx, sni);
    if (X509_cmp(peer, expected) != 0) {
        char got[256], want[256];
        X509_NAME_oneline(X509_get_subject_name(peer), got, sizeof(got));
        X509_NAME_oneline(X509_get_subject_name(expected), want, sizeof(want));
        X509_free(peer);
        fail_msg("SNI %s: served %s, expected %s", sni != NULL ? sni : "(none)", got, want);
    }
    X509_free(peer);
}

/* ALPN the server settles on when the client offers offer. */
struct alpn_result {
    bool ok;
    char client_alpn[16], server_alpn[16];
    char client_why[512];
};

static struct alpn_result alpn_with(bool allow_h2, const char *offer)
{
    struct alpn_result res;
    memset(&res, 0, sizeof(res));
    SSL_CTX *sctx = server_ctx(three_certs(), 3, TLS1_2_VERSION, allow_h2);
    SSL_CTX *cctx = client_ctx(ca_crt, true);
    SSL *client = tls_client_ssl_new(cctx, "a.test", NULL, offer);
    assert_non_null(client);
    SSL *server = server_ssl(sctx);
    struct handshake h = run_handshake(client, server);
    res.ok = h.client_ok && h.server_ok;
    snprintf(res.client_alpn, sizeof(res.client_alpn), "%s", tls_alpn(client));
    snprintf(res.server_alpn, sizeof(res.server_alpn), "%s", tls_alpn(server));
    snprintf(res.client_why, sizeof(res.client_why), "%s", h.client_why);
    SSL_free(client);
    SSL_free(server);
    tls_ctx_free(cctx);
    tls_ctx_free(sctx);
    return res;
}

/* A handshake between a verifying client (trusting ca_file) and a listener
 * serving certs; returns its outcome. */
static struct handshake verify_with(const struct tls_cert_files *cert, const char *ca_file, bool verify, const char *sni,
                                    const char *verify_name)
{
    SSL_CTX *sctx = server_ctx(cert, 1, TLS1_2_VERSION, true);
    SSL_CTX *cctx = client_ctx(ca_file, verify);
    SSL *client = tls_client_ssl_new(cctx, sni, verify_name, "h2,http/1.1");
    assert_non_null(client);
    SSL *server = server_ssl(sctx);
    struct handshake h = run_handshake(client, server);
    if (h.client_ok && verify)
        assert_int_equal(SSL_get_verify_result(client), X509_V_OK);
    SSL_free(client);
    SSL_free(server);
    tls_ctx_free(cctx);
    tls_ctx_free(sctx);
    return h;
}

static void assert_contains(const char *haystack, const char *needle)
{
    if (strstr(haystack, needle) == NULL)
        fail_msg("\"%s\" does not contain \"%s\"", haystack, needle);
}

/* ------------------------------------------------------------------------- */
/* Loading */

static void server_ctx_loads(void **state)
{
    (void)state;
    SSL_CTX *ctx = server_ctx(three_certs(), 3, TLS1_3_VERSION, true);
    assert_int_equal(SSL_CTX_get_min_proto_version(ctx), TLS1_3_VERSION);
    assert_true((SSL_CTX_get_options(ctx) & SSL_OP_NO_RENEGOTIATION) != 0);
    assert_true((SSL_CTX_get_options(ctx) & SSL_OP_NO_COMPRESSION) != 0);
    assert_true((SSL_CTX_get_options(ctx) & SSL_OP_CIPHER_SERVER_PREFERENCE) != 0);
    assert_true((SSL_CTX_get_options(ctx) & SSL_OP_NO_TICKET) == 0);
    assert_int_equal(X509_cmp(SSL_CTX_get0_certificate(ctx), a_x509), 0);
    tls_ctx_free(ctx);
    tls_ctx_free(NULL);
}

/* Expect tls_server_ctx_new to fail with every needle in its message. */
static void expect_server_error(const struct tls_cert_files *certs, size_t n, int min_version, const char *needle1,
                                const char *needle2)
{
    char err[512] = "";
    SSL_CTX *ctx = tls_server_ctx_new(certs, n, min_version, true, err, sizeof(err));
    if (ctx != NULL) {
        tls_ctx_free(ctx);
        fail_msg("expected an error containing \"%s\"", needle1);
    }
    assert_contains(err, needle1);
    if (needle2 != NULL)
        assert_contains(err, needle2);
    /* Nothing left behind for the next OpenSSL call of this thread. */
    assert_int_equal(ERR_peek_error(), 0);
}

static void server_ctx_errors(void **state)
{
    (void)state;
    char want[2 * PATH_LEN + 64];

    struct tls_cert_files no_cert = {missing, a_key};
    snprintf(want, sizeof(want), "cert %s: ", missing);
    expect_server_error(&no_cert, 1, TLS1_2_VERSION, want, "No such file or directory");

    struct tls_cert_files no_key = {a_crt, missing};
    snprintf(want, sizeof(want), "key %s: ", missing);
    expect_server_error(&no_key, 1, TLS1_2_VERSION, want, "No such file or directory");

    struct tls_cert_files junk_cert = {junk, a_key};
    snprintf(want, sizeof(want), "cert %s: ", junk);
    expect_server_error(&junk_cert, 1, TLS1_2_VERSION, want, NULL);

    struct tls_cert_files junk_key = {a_crt, junk};
    snprintf(want, sizeof(want), "key %s: ", junk);
    expect_server_error(&junk_key, 1, TLS1_2_VERSION, want, NULL);

    /* Refused, never prompted for (stdin is no terminal in a container). */
    struct tls_cert_files encrypted = {a_crt, enc_key};
    snprintf(want, sizeof(want), "key %s: no private key found", enc_key);
    expect_server_error(&encrypted, 1, TLS1_2_VERSION, want, "an unencrypted PEM key is needed");

    /* Same key type (both P-256) and another type (RSA for an EC cert). */
    struct tls_cert_files wrong_key = {a_crt, wild_key};
    snprintf(want, sizeof(want), "key %s does not match cert %s", wild_key, a_crt);
    expect_server_error(&wrong_key, 1, TLS1_2_VERSION, want, NULL);
    struct tls_cert_files rsa_for_ec = {a_crt, rsa_key};
    snprintf(want, sizeof(want), "key %s does not match cert %s", rsa_key, a_crt);
    expect_server_error(&rsa_for_ec, 1, TLS1_2_VERSION, want, NULL);

    /* The error names the second certificate, not the first. */
    struct tls_cert_files second_bad[2] = {{a_crt, a_key}, {wild_crt, missing}};
    snprintf(want, sizeof(want), "key %s: ", missing);
    expect_server_error(second_bad, 2, TLS1_2_VERSION, want, NULL);

    /* A second certificate no name can reach (the CA's CN has spaces). */
    struct tls_cert_files unreachable[2] = {{a_crt, a_key}, {ca_crt, ca_key}};
    snprintf(want, sizeof(want), "cert %s: no DNS name", ca_crt);
    expect_server_error(unreachable, 2, TLS1_2_VERSION, want, NULL);

    expect_server_error(three_certs(), 0, TLS1_2_VERSION, "no certificates", NULL);
    expect_server_error(three_certs(), 3, TLS1_1_VERSION, "min_version", NULL);

    /* The same nameless certificate is fine as the default. */
    struct tls_cert_files nameless_default[2] = {{ca_crt, ca_key}, {a_crt, a_key}};
    tls_ctx_free(server_ctx(nameless_default, 2, TLS1_2_VERSION, true));
}

static void server_ctx_key_in_cert_file(void **state)
{
    (void)state;
    char both[PATH_LEN];
    path(both, "both.pem");
    assert_int_equal(run("cat %s %s > %s", a_crt, a_key, both), 0);
    struct tls_cert_files c = {both, NULL};
    SSL_CTX *ctx = server_ctx(&c, 1, TLS1_2_VERSION, true);
    assert_served(ctx, "a.test", a_x509);
    tls_ctx_free(ctx);
}

static void client_ctx_errors(void **state)
{
    (void)state;
    char err[512] = "";
    assert_null(tls_client_ctx_new(missing, true, err, sizeof(err)));
    char want[2 * PATH_LEN + 64];
    snprintf(want, sizeof(want), "ca_file %s: ", missing);
    assert_contains(err, want);

    assert_null(tls_client_ctx_new(junk, true, err, sizeof(err)));
    snprintf(want, sizeof(want), "ca_file %s: ", junk);
    assert_contains(err, want);
    assert_int_equal(ERR_peek_error(), 0);

    /* The system store loads (whatever it holds); verify=false needs no file. */
    SSL_CTX *ctx = client_ctx(NULL, true);
    assert_true((SSL_CTX_get_verify_mode(ctx) & SSL_VERIFY_PEER) != 0);
    assert_int_equal(SSL_CTX_get_min_proto_version(ctx), TLS1_2_VERSION);
    tls_ctx_free(ctx);
    ctx = client_ctx(missing, false);
    assert_int_equal(SSL_CTX_get_verify_mode(ctx), SSL_VERIFY_NONE);
    tls_ctx_free(ctx);
}

static void client_ssl_arguments(void **state)
{
    (void)state;
    SSL_CTX *verifying = client_ctx(ca_crt, true);
    SSL_CTX *trusting = client_ctx(NULL, false);

    /* Malformed ALPN lists. */
    assert_null(tls_client_ssl_new(verifying, "a.test", NULL, ",h2"));
    assert_null(tls_client_ssl_new(verifying, "a.test", NULL, "h2,"));
    assert_null(tls_client_ssl_new(verifying, "a.test", NULL, "h2,,http/1.1"));
    /* Verification without a name to check is refused... */
    assert_null(tls_client_ssl_new(verifying, NULL, NULL, "h2"));
    assert_null(tls_client_ssl_new(verifying, "", "", "h2"));
    /* ...but fine when nothing is verified, or with the name apart from SNI. */
    SSL *ssl = tls_client_ssl_new(trusting, NULL, NULL, NULL);
    assert_non_null(ssl);
    assert_null(SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name));
    SSL_free(ssl);
    ssl = tls_client_ssl_new(verifying, NULL, "a.test", "");
    assert_non_null(ssl);
    SSL_free(ssl);
    ssl = tls_client_ssl_new(verifying, "a.test", NULL, "h2,http/1.1");
    assert_non_null(ssl);
    assert_string_equal(SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name), "a.test");
    assert_string_equal(tls_alpn(ssl), "");
    SSL_free(ssl);

    tls_ctx_free(verifying);
    tls_ctx_free(trusting);
}

/* ------------------------------------------------------------------------- */
/* SNI */

static void sni_selects_certificate(void **state)
{
    (void)state;
    SSL_CTX *ctx = server_ctx(three_certs(), 3, TLS1_2_VERSION, true);
    assert_served(ctx, "a.test", a_x509);
    assert_served(ctx, "A.Test", a_x509);  /* case-insensitive */
    assert_served(ctx, "a.test.", a_x509); /* trailing dot */
    assert_served(ctx, "x.wild.test", wild_x509);
    assert_served(ctx, "X.WILD.test", wild_x509);
    assert_served(ctx, "cn.test", cn_x509); /* CN, as there is no subjectAltName */
    /* Unknown, absent, and names a one-label wildcard does not cover. */
    assert_served(ctx, "unknown.test", a_x509);
    assert_served(ctx, NULL, a_x509);
    assert_served(ctx, "wild.test", a_x509);
    assert_served(ctx, "y.x.wild.test", a_x509);
    assert_served(ctx, "*.wild.test", a_x509);
    assert_served(ctx, "x.wild.test.evil", a_x509);
    tls_ctx_free(ctx);
}

static void sni_default_is_first_certificate(void **state)
{
    (void)state;
    struct tls_cert_files certs[2] = {{wild_crt, wild_key}, {a_crt, a_key}};
    SSL_CTX *ctx = server_ctx(certs, 2, TLS1_2_VERSION, true);
    assert_served(ctx, "unknown.test", wild_x509);
    assert_served(ctx, NULL, wild_x509);
    assert_served(ctx, "a.test", a_x509);
    tls_ctx_free(ctx);
}

static void sni_first_claim_wins(void **state)
{
    (void)state;
    /* self.crt also says a.test; the earlier certificate keeps the name. */
    struct tls_cert_files certs[3] = {{wild_crt, wild_key}, {a_crt, a_key}, {self_crt, self_key}};
    SSL_CTX *ctx = server_ctx(certs, 3, TLS1_2_VERSION, true);
    assert_served(ctx, "a.test", a_x509);
    tls_ctx_free(ctx);
}

/* The SNI table lives as long as the default context, not as long as the
 * listener's reference: a handshake may still be running after a reload. */
static void sni_outlives_tls_ctx_free(void **state)
{
    (void)state;
    SSL_CTX *sctx = server_ctx(three_certs(), 3, TLS1_2_VERSION, true);
    SSL *server = server_ssl(sctx);
    tls_ctx_free(sctx);
    SSL_CTX *cctx = client_ctx(ca_crt, true);
    SSL *client = tls_client_ssl_new(cctx, "x.wild.test", NULL, "h2");
    struct handshake h = run_handshake(client, server);
    assert_true(h.client_ok && h.server_ok);
    assert_string_equal(tls_alpn(client), "h2");
    SSL_free(client);
    SSL_free(server);
    tls_ctx_free(cctx);
}

/* ------------------------------------------------------------------------- */
/* ALPN */

static void alpn_selection(void **state)
{
    (void)state;
    struct alpn_result r = alpn_with(true, "h2,http/1.1");
    assert_true(r.ok);
    assert_string_equal(r.server_alpn, "h2");
    assert_string_equal(r.client_alpn, "h2");

    /* The server's preference wins over the client's order. */
    r = alpn_with(true, "http/1.1,h2");
    assert_true(r.ok);
    assert_string_equal(r.client_alpn, "h2");

    r = alpn_with(true, "http/1.1");
    assert_true(r.ok);
    assert_string_equal(r.client_alpn, "http/1.1");

    r = alpn_with(false, "h2,http/1.1");
    assert_true(r.ok);
    assert_string_equal(r.client_alpn, "http/1.1");
    assert_string_equal(r.server_alpn, "http/1.1");

    /* No ALPN at all: served, HTTP/1.1 by convention, nothing negotiated. */
    r = alpn_with(true, NULL);
    assert_true(r.ok);
    assert_string_equal(r.client_alpn, "");
    assert_string_equal(r.server_alpn, "");
}

static void alpn_no_overlap_is_fatal(void **state)
{
    (void)state;
    /* RFC 7301 section 3.2: no_application_protocol alert. */
    struct alpn_result r = alpn_with(false, "h2");
    assert_false(r.ok);
    assert_contains(r.client_why, "no application protocol");
    r = alpn_with(true, "spdy/3,http/1.0");
    assert_false(r.ok);
    assert_contains(r.client_why, "no application protocol");
}

/* ------------------------------------------------------------------------- */
/* Client verification */

static void verify_succeeds(void **state)
{
    (void)state;
    struct tls_cert_files a = {a_crt, a_key}, wild = {wild_crt, wild_key};
    struct handshake h = verify_with(&a, ca_crt, true, "a.test", NULL);
    assert_true(h.client_ok && h.server_ok);
    h = verify_with(&a, ca_crt, true, "a.test", "A.TEST");
    assert_true(h.client_ok && h.server_ok);
    h = verify_with(&wild, ca_crt, true, "x.wild.test", NULL);
    assert_true(h.client_ok && h.server_ok);
    /* SNI and checked name differ: an ingress answering to one name with a
     * certificate for another. */
    h = verify_with(&a, ca_crt, true, "ingress.internal", "a.test");
    assert_true(h.client_ok && h.server_ok);
}

static void verify_wrong_name_fails(void **state)
{
    (void)state;
    struct tls_cert_files a = {a_crt, a_key}, wild = {wild_crt, wild_key};
    struct handshake h = verify_with(&a, ca_crt, true, "b.test", NULL);
    assert_false(h.client_ok);
    assert_false(h.server_ok);
    assert_contains(h.client_why, "certificate verify failed: hostname mismatch");
    assert_contains(h.client_why, "CN=a.test");

    h = verify_with(&a, ca_crt, true, "a.test", "b.test");
    assert_false(h.client_ok);
    assert_contains(h.client_why, "hostname mismatch");

    /* A wildcard covers one label only. */
    h = verify_with(&wild, ca_crt, true, "y.x.wild.test", NULL);
    assert_false(h.client_ok);
    assert_contains(h.client_why, "hostname mismatch");
    h = verify_with(&wild, ca_crt, true, "wild.test", NULL);
    assert_false(h.client_ok);
    assert_contains(h.client_why, "hostname mismatch");
}

static void verify_untrusted_fails(void **state)
{
    (void)state;
    struct tls_cert_files self = {self_crt, self_key}, a = {a_crt, a_key};
    /* Self-signed, with the right name. */
    struct handshake h = verify_with(&self, ca_crt, true, "a.test", NULL);
    assert_false(h.client_ok);
    assert_contains(h.client_why, "certificate verify failed: self-signed certificate");
    /* Signed by a CA the system store does not know. */
    h = verify_with(&a, NULL, true, "a.test", NULL);
    assert_false(h.client_ok);
    assert_contains(h.client_why, "certificate verify failed: unable to get local issuer certificate");
    /* A ca_file replaces the system store rather than adding to it: the
     * self-signed certificate's own file does not vouch for a.crt. */
    h = verify_with(&a, self_crt, true, "a.test", NULL);
    assert_false(h.client_ok);
    assert_contains(h.client_why, "certificate verify failed");
}

static void verify_off_accepts_anything(void **state)
{
    (void)state;
    struct tls_cert_files self = {self_crt, self_key}, a = {a_crt, a_key};
    struct handshake h = verify_with(&self, NULL, false, "a.test", NULL);
    assert_true(h.client_ok && h.server_ok);
    h = verify_with(&a, NULL, false, "other.test", "b.test");
    assert_true(h.client_ok && h.server_ok);
}

static void verify_ip_literal(void **state)
{
    (void)state;
    struct tls_cert_files ip = {ip_crt, ip_key};
    SSL_CTX *sctx = server_ctx(&ip, 1, TLS1_2_VERSION, true);
    SSL_CTX *cctx = client_ctx(ca_crt, true);

    /* No SNI for an IP (RFC 6066 section 3); the certificate's IP entry
     * is checked. */
    SSL *client = tls_client_ssl_new(cctx, "127.0.0.1", NULL, "h2");
    assert_non_null(client);
    assert_null(SSL_get_servername(client, TLSEXT_NAMETYPE_host_name));
    SSL *server = server_ssl(sctx);
    struct handshake h = run_handshake(client, server);
    assert_true(h.client_ok && h.server_ok);
    assert_null(SSL_get_servername(server, TLSEXT_NAMETYPE_host_name));
    SSL_free(client);
    SSL_free(server);

    client = tls_client_ssl_new(cctx, "[::1]", "127.0.0.2", "h2");
    assert_non_null(client);
    assert_null(SSL_get_servername(client, TLSEXT_NAMETYPE_host_name));
    server = server_ssl(sctx);
    h = run_handshake(client, server);
    assert_false(h.client_ok);
    assert_contains(h.client_why, "IP address mismatch");
    SSL_free(client);
    SSL_free(server);

    /* The DNS name in the same certificate still works. */
    client = tls_client_ssl_new(cctx, "ip.test", NULL, "h2");
    server = server_ssl(sctx);
    h = run_handshake(client, server);
    assert_true(h.client_ok && h.server_ok);
    SSL_free(client);
    SSL_free(server);

    tls_ctx_free(cctx);
    tls_ctx_free(sctx);
}

/* ------------------------------------------------------------------------- */
/* Versions and suites */

/* A handshake of a verifying client to the three-cert listener, after
 * adjust(client) had its say. */
static struct handshake handshake_with(int server_min, void (*adjust)(SSL *), int *version, char *cipher, size_t cipherlen)
{
    SSL_CTX *sctx = server_ctx(three_certs(), 3, server_min, true);
    SSL_CTX *cctx = client_ctx(ca_crt, true);
    SSL *client = tls_client_ssl_new(cctx, "a.test", NULL, "h2,http/1.1");
    assert_non_null(client);
    if (adjust != NULL)
        adjust(client);
    SSL *server = server_ssl(sctx);
    struct handshake h = run_handshake(client, server);
    if (version != NULL)
        *version = SSL_version(client);
    if (cipher != NULL)
        snprintf(cipher, cipherlen, "%s", h.client_ok ? SSL_get_cipher_name(client) : "");
    SSL_free(client);
    SSL_free(server);
    tls_ctx_free(cctx);
    tls_ctx_free(sctx);
    return h;
}

static void cap_tls12(SSL *ssl)
{
    assert_int_equal(SSL_set_max_proto_version(ssl, TLS1_2_VERSION), 1);
}

static void cap_tls12_cbc_only(SSL *ssl)
{
    cap_tls12(ssl);
    assert_int_equal(SSL_set_cipher_list(ssl, "ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA384"), 1);
}

static void cap_tls12_chacha_first(SSL *ssl)
{
    cap_tls12(ssl);
    assert_int_equal(SSL_set_cipher_list(ssl, "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-ECDSA-AES128-GCM-SHA256"), 1);
}

static void versions_and_suites(void **state)
{
    (void)state;
    int version = 0;
    char cipher[64];

    struct handshake h = handshake_with(TLS1_2_VERSION, NULL, &version, cipher, sizeof(cipher));
    assert_true(h.client_ok && h.server_ok);
    assert_int_equal(version, TLS1_3_VERSION); /* preferred when both have it */

    h = handshake_with(TLS1_2_VERSION, cap_tls12, &version, cipher, sizeof(cipher));
    assert_true(h.client_ok && h.server_ok);
    assert_int_equal(version, TLS1_2_VERSION);
    assert_string_equal(cipher, "ECDHE-ECDSA-AES128-GCM-SHA256"); /* the server's order */

    h = handshake_with(TLS1_2_VERSION, cap_tls12_chacha_first, &version, cipher, sizeof(cipher));
    assert_true(h.client_ok && h.server_ok);
    assert_string_equal(cipher, "ECDHE-ECDSA-CHACHA20-POLY1305");

    /* CBC suites are not offered by the server at all. */
    h = handshake_with(TLS1_2_VERSION, cap_tls12_cbc_only, &version, cipher, sizeof(cipher));
    assert_false(h.server_ok);
    assert_contains(h.server_why, "no shared cipher");

    /* min_version TLS 1.3 turns a TLS 1.2 client away. */
    h = handshake_with(TLS1_3_VERSION, cap_tls12, &version, cipher, sizeof(cipher));
    assert_false(h.client_ok);
    assert_false(h.server_ok);
    assert_contains(h.server_why, "unsupported protocol");
    assert_contains(h.client_why, "protocol version");
    h = handshake_with(TLS1_3_VERSION, NULL, &version, cipher, sizeof(cipher));
    assert_true(h.client_ok && h.server_ok);
    assert_int_equal(version, TLS1_3_VERSION);
}

/* ------------------------------------------------------------------------- */
/* Session resumption (stateless tickets) */

/* Two handshakes with sni to the same listener, the second offering the
 * first's session. Returns whether it was resumed. */
static bool resumed(int max_version, const char *sni)
{
    SSL_CTX *sctx = server_ctx(three_certs(), 3, TLS1_2_VERSION, true);
    SSL_CTX *cctx = client_ctx(ca_crt, true);

    SSL *client = tls_client_ssl_new(cctx, sni, NULL, "h2");
    assert_int_equal(SSL_set_max_proto_version(client, max_version), 1);
    SSL *server = server_ssl(sctx);
    struct handshake h = run_handshake(client, server);
    assert_true(h.client_ok && h.server_ok);
    assert_int_equal(SSL_session_reused(client), 0);
    read_tickets(client);
    SSL_SESSION *session = SSL_get1_session(client);
    assert_non_null(session);
    assert_int_equal(SSL_SESSION_is_resumable(session), 1);
    assert_true(SSL_SESSION_has_ticket(session));
    /* Freed without a shutdown, OpenSSL would mark the session not resumable. */
    assert_int_equal(SSL_shutdown(client), 0);
    SSL_free(client);
    SSL_free(server);

    client = tls_client_ssl_new(cctx, sni, NULL, "h2");
    assert_int_equal(SSL_set_max_proto_version(client, max_version), 1);
    assert_int_equal(SSL_set_session(client, session), 1);
    server = server_ssl(sctx);
    h = run_handshake(client, server);
    assert_true(h.client_ok && h.server_ok);
    bool reused = SSL_session_reused(client) == 1;
    assert_int_equal(SSL_session_reused(server), SSL_session_reused(client));
    assert_string_equal(tls_alpn(client), "h2");
    SSL_free(client);
    SSL_free(server);
    SSL_SESSION_free(session);
    tls_ctx_free(cctx);
    tls_ctx_free(sctx);
    return reused;
}

static void resumption_with_tickets(void **state)
{
    (void)state;
    assert_true(resumed(TLS1_3_VERSION, "a.test"));
    assert_true(resumed(TLS1_2_VERSION, "a.test"));
    /* After SNI moved the handshake to another certificate's context. */
    assert_true(resumed(TLS1_3_VERSION, "x.wild.test"));
    assert_true(resumed(TLS1_2_VERSION, "x.wild.test"));
}

/* A ticket only works with the listener that issued it (per-context keys). */
static void ticket_from_other_listener_not_resumed(void **state)
{
    (void)state;
    SSL_CTX *sctx1 = server_ctx(three_certs(), 3, TLS1_2_VERSION, true);
    SSL_CTX *sctx2 = server_ctx(three_certs(), 3, TLS1_2_VERSION, true);
    SSL_CTX *cctx = client_ctx(ca_crt, true);

    SSL *client = tls_client_ssl_new(cctx, "a.test", NULL, "h2");
    SSL *server = server_ssl(sctx1);
    struct handshake h = run_handshake(client, server);
    assert_true(h.client_ok && h.server_ok);
    read_tickets(client);
    SSL_SESSION *session = SSL_get1_session(client);
    assert_int_equal(SSL_shutdown(client), 0);
    SSL_free(client);
    SSL_free(server);
    assert_int_equal(SSL_SESSION_is_resumable(session), 1);

    client = tls_client_ssl_new(cctx, "a.test", NULL, "h2");
    assert_int_equal(SSL_set_session(client, session), 1);
    server = server_ssl(sctx2);
    h = run_handshake(client, server);
    assert_true(h.client_ok && h.server_ok);
    assert_int_equal(SSL_session_reused(client), 0);
    SSL_free(client);
    SSL_free(server);
    SSL_SESSION_free(session);
    tls_ctx_free(cctx);
    tls_ctx_free(sctx1);
    tls_ctx_free(sctx2);
}

/* Not ours but the pool's to know: OpenSSL marks the session of an SSL freed
 * without SSL_shutdown() (or SSL_set_shutdown(ssl, SSL_SENT_SHUTDOWN)) as not
 * resumable, even through references taken with SSL_get1_session(). */
static void session_of_ssl_freed_without_shutdown_not_resumable(void **state)
{
    (void)state;
    SSL_CTX *sctx = server_ctx(three_certs(), 3, TLS1_2_VERSION, true);
    SSL_CTX *cctx = client_ctx(ca_crt, true);
    SSL *client = tls_client_ssl_new(cctx, "a.test", NULL, "h2");
    SSL *server = server_ssl(sctx);
    struct handshake h = run_handshake(client, server);
    assert_true(h.client_ok && h.server_ok);
    read_tickets(client);
    SSL_SESSION *session = SSL_get1_session(client);
    assert_int_equal(SSL_SESSION_is_resumable(session), 1);
    SSL_free(client);
    assert_int_equal(SSL_SESSION_is_resumable(session), 0);
    SSL_free(server);
    SSL_SESSION_free(session);
    tls_ctx_free(cctx);
    tls_ctx_free(sctx);
}

/* ------------------------------------------------------------------------- */
/* tls_describe_failure fallbacks */

static void describe_failure_fallbacks(void **state)
{
    (void)state;
    char out[256];
    SSL_CTX *cctx = client_ctx(ca_crt, true);
    SSL *client = tls_client_ssl_new(cctx, "a.test", NULL, "h2");

    ERR_clear_error();
    tls_describe_failure(client, 0, out, sizeof(out));
    assert_string_equal(out, "handshake failed");

    /* A code saved by libevent (bufferevent_get_openssl_error). */
    tls_describe_failure(client, ERR_PACK(ERR_LIB_SSL, 0, SSL_R_NO_SHARED_CIPHER), out, sizeof(out));
    assert_string_equal(out, "no shared cipher");

    /* The thread's queue, left as it was. */
    ERR_raise(ERR_LIB_SSL, SSL_R_UNEXPECTED_EOF_WHILE_READING);
    tls_describe_failure(client, 0, out, sizeof(out));
    assert_string_equal(out, "unexpected eof while reading");
    assert_int_not_equal(ERR_peek_error(), 0);
    ERR_clear_error();

    /* Truncation is safe. */
    char tiny[8];
    tls_describe_failure(client, 0, tiny, sizeof(tiny));
    assert_string_equal(tiny, "handsha");
    tls_describe_failure(client, 0, tiny, 0);

    SSL_free(client);
    tls_ctx_free(cctx);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(server_ctx_loads),
        cmocka_unit_test(server_ctx_errors),
        cmocka_unit_test(server_ctx_key_in_cert_file),
        cmocka_unit_test(client_ctx_errors),
        cmocka_unit_test(client_ssl_arguments),
        cmocka_unit_test(sni_selects_certificate),
        cmocka_unit_test(sni_default_is_first_certificate),
        cmocka_unit_test(sni_first_claim_wins),
        cmocka_unit_test(sni_outlives_tls_ctx_free),
        cmocka_unit_test(alpn_selection),
        cmocka_unit_test(alpn_no_overlap_is_fatal),
        cmocka_unit_test(verify_succeeds),
        cmocka_unit_test(verify_wrong_name_fails),
        cmocka_unit_test(verify_untrusted_fails),
        cmocka_unit_test(verify_off_accepts_anything),
        cmocka_unit_test(verify_ip_literal),
        cmocka_unit_test(versions_and_suites),
        cmocka_unit_test(resumption_with_tickets),
        cmocka_unit_test(ticket_from_other_listener_not_resumed),
        cmocka_unit_test(session_of_ssl_freed_without_shutdown_not_resumable),
        cmocka_unit_test(describe_failure_fallbacks),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
