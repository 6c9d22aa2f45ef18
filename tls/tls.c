/*
 * tls.c - server (listener) and client (upstream) TLS contexts.
 *
 * Server side: one SSL_CTX per certificate. The first is the default and the
 * one the listener hands to every SSL; it carries the SNI table (hung off its
 * ex_data, freed by OpenSSL when the default context's last reference goes)
 * and its servername callback moves each handshake onto the context of the
 * certificate the client asked for (SSL_set_SSL_CTX). Every per-certificate
 * context is configured identically, because after the switch OpenSSL reads
 * the ALPN callback and certificate from the new context, while session
 * tickets are still sealed and opened with the default context's keys
 * (s->session_ctx), so resumption works whatever name was asked for.
 */
#include "tls.h"

#include <arpa/inet.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "proxy/common.h"

/* TLS 1.2 suites: forward secrecy (ECDHE) and AEAD only, AES-GCM first
 * (hardware AES on every server CPU); with SSL_OP_PRIORITIZE_CHACHA a client
 * that lists ChaCha20 first (phones without AES instructions) gets it.
 * TLS 1.3 keeps OpenSSL's defaults, which are all AEAD. */
#define TLS12_SERVER_CIPHERS                                                                                                       \
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"                                                                   \
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"                                                                   \
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"

/* OpenSSL resumes a session only under the id context it was made in. Every
 * per-certificate context gets the same one, so the SSL_set_SSL_CTX() done
 * by SNI never makes a ticket unusable (and verifying client certificates
 * one day would need it set). */
#define SESSION_ID_CONTEXT "cutover"

/* Longest DNS name (RFC 1035 section 2.3.4: 253 characters without the
 * trailing dot), plus the NUL. */
#define NAME_MAX_LEN 253

/* ---------------------------------------------------------------- errors */

static void set_err(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (err == NULL || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* Text for one OpenSSL error code: its reason ("no start line"), the
 * strerror() text of a system error ("No such file or directory"), or the
 * full code when OpenSSL has no string for it. May use buf. Thread-safe. */
static const char *error_text(unsigned long e, char *buf, size_t len)
{
    if (ERR_SYSTEM_ERROR(e)) {
#if defined(__GLIBC__) && defined(_GNU_SOURCE)
        return strerror_r(ERR_GET_REASON(e), buf, len); /* the GNU one, returning the text */
#else
        if (strerror_r(ERR_GET_REASON(e), buf, len) != 0)
            snprintf(buf, len, "errno %d", ERR_GET_REASON(e));
        return buf;
#endif
    }
    const char *reason = ERR_reason_error_string(e);
    if (reason != NULL)
        return reason;
    ERR_error_string_n(e, buf, len);
    return buf;
}

/* The reason of the earliest error queued since the last ERR_clear_error():
 * when loading files, the first error is the specific one ("No such file or
 * directory") and the later ones only say which layer passed it up. Empties
 * the queue, so a failed load leaves nothing behind for the next caller. */
static const char *load_error(char *buf, size_t len)
{
    unsigned long e = ERR_get_error();
    const char *text = e != 0 ? error_text(e, buf, len) : "unknown error";
    if (text != buf) {
        /* Reason strings are static, but copy so that the buffer owns it. */
        snprintf(buf, len, "%s", text);
    }
    ERR_clear_error();
    return buf;
}

/* ---------------------------------------------------------------- names */

/* Is c allowed in a host name we match? Letters, digits, '-' (RFC 1123) and
 * '_' (seen in real certificates and SNI for service names). */
static bool is_host_char(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '_';
}

/*
 * Lowercase copy of the host name s[0..len) into out (NAME_MAX_LEN + 1
 * bytes), without one trailing dot. With allow_wildcard, a leading "*." is
 * accepted: *wildcard is set and out receives the rest ("*.Example.com" ->
 * "example.com"). Returns false for anything that is not a plain DNS name
 * (empty labels, other characters, NULs, too long), which then matches
 * nothing.
 */
static bool normalize_host(const unsigned char *s, size_t len, bool allow_wildcard, char *out, bool *wildcard)
{
    *wildcard = false;
    if (allow_wildcard && len >= 2 && s[0] == '*' && s[1] == '.') {
        *wildcard = true;
        s += 2;
        len -= 2;
    }
    if (len > 0 && s[len - 1] == '.')
        len--;
    if (len == 0 || len > NAME_MAX_LEN)
        return false;
    bool label_start = true;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = s[i];
        if (c == '.') {
            if (label_start)
                return false; /* empty label: "..", or a leading dot */
            label_start = true;
        } else if (is_host_char(c)) {
            label_start = false;
        } else {
            return false;
        }
        out[i] = (char)(c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c);
    }
    out[len] = '\0';
    return true;
}

/* ---------------------------------------------------------------- SNI table */

struct sni_name {
    char *name;    /* lowercase; for a wildcard, what follows "*." */
    bool wildcard; /* "*.name": matches exactly one label in front of name */
    SSL_CTX *ctx;  /* the certificate's context; not owned here */
};

/* Hung off the default context's ex_data; freed with it (on_ctx_free). */
struct sni_table {
    SSL_CTX **ctxs; /* contexts of certs[1..n-1], owned; certs[0] is the default context itself */
    size_t n_ctxs;
    struct sni_name *names; /* in certificate order, so the first certificate claiming a name wins */
    size_t n_names;
    size_t cap_names;
};

static CRYPTO_ONCE sni_index_once = CRYPTO_ONCE_STATIC_INIT;
static int sni_index = -1;

static void sni_table_free(struct sni_table *t)
{
    if (t == NULL)
        return;
    for (size_t i = 0; i < t->n_ctxs; i++)
        SSL_CTX_free(t->ctxs[i]);
    for (size_t i = 0; i < t->n_names; i++)
        free(t->names[i].name);
    free(t->ctxs);
    free(t->names);
    free(t);
}

/* ex_data destructor, run by SSL_CTX_free() when a context's last reference
 * goes (every SSL_CTX has the slot; only default server contexts fill it).
 * Tying the table to the context's reference count means a handshake still in
 * flight after tls_ctx_free() can look names up safely. */
static void on_ctx_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl, void *argp)
{
    (void)parent;
    (void)ad;
    (void)idx;
    (void)argl;
    (void)argp;
    sni_table_free(ptr);
}

static void init_sni_index(void)
{
    sni_index = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, on_ctx_free);
}

/* Add one name of a certificate; false (nothing added) when it is not a name
 * SNI can match, such as a partial wildcard "f*.example.com". */
static bool sni_add(struct sni_table *t, const unsigned char *s, size_t len, SSL_CTX *ctx)
{
    char name[NAME_MAX_LEN + 1];
    bool wildcard;
    if (!normalize_host(s, len, true, name, &wildcard))
        return false;
    if (t->n_names == t->cap_names) {
        t->cap_names = t->cap_names != 0 ? 2 * t->cap_names : 8;
        t->names = co_realloc(t->names, t->cap_names * sizeof(*t->names));
    }
    t->names[t->n_names++] = (struct sni_name){.name = co_strdup(name), .wildcard = wildcard, .ctx = ctx};
    return true;
}

/* Index the names of ctx's certificate: its subjectAltName DNS entries, or,
 * when it has none, its subject CN (the most specific, i.e. last, one), as
 * RFC 6125 section 6.4.4 says clients do. Returns how many were added. */
static size_t sni_add_cert(struct sni_table *t, SSL_CTX *ctx)
{
    X509 *cert = SSL_CTX_get0_certificate(ctx);
    size_t added = 0;
    bool has_dns = false;
    GENERAL_NAMES *sans = X509_get_ext_d2i(cert, NID_subject_alt_name, NULL, NULL);
    for (int i = 0; sans != NULL && i < sk_GENERAL_NAME_num(sans); i++) {
        const GENERAL_NAME *gn = sk_GENERAL_NAME_value(sans, i);
        if (gn->type != GEN_DNS)
            continue; /* IP addresses never arrive as SNI (RFC 6066 section 3) */
        has_dns = true;
        const ASN1_STRING *dns = gn->d.dNSName;
        added += sni_add(t, ASN1_STRING_get0_data(dns), (size_t)ASN1_STRING_length(dns), ctx);
    }
    GENERAL_NAMES_free(sans);
    if (has_dns)
        return added;

    const X509_NAME *subject = X509_get_subject_name(cert);
    int last = -1;
    for (int i = -1; (i = X509_NAME_get_index_by_NID(subject, NID_commonName, i)) >= 0;)
        last = i;
    if (last >= 0) {
        const ASN1_STRING *cn = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subject, last));
        added += sni_add(t, ASN1_STRING_get0_data(cn), (size_t)ASN1_STRING_length(cn), ctx);
    }
    return added;
}

/* The context for a normalized host name, or NULL. Exact names first, then
 * wildcards, which stand for exactly one leftmost label (RFC 6125 section
 * 6.4.3). */
static SSL_CTX *sni_lookup(const struct sni_table *t, const char *host)
{
    for (size_t i = 0; i < t->n_names; i++) {
        if (!t->names[i].wildcard && strcmp(t->names[i].name, host) == 0)
            return t->names[i].ctx;
    }
    const char *dot = strchr(host, '.');
    if (dot == NULL)
        return NULL;
    for (size_t i = 0; i < t->n_names; i++) {
        if (t->names[i].wildcard && strcmp(t->names[i].name, dot + 1) == 0)
            return t->names[i].ctx;
    }
    return NULL;
}

/* ---------------------------------------------------------------- server callbacks */

/* Runs once the ClientHello's extensions are parsed, on the default context. */
static int on_servername(SSL *ssl, int *alert, void *arg)
{
    const struct sni_table *t = arg;
    const char *host = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    char name[NAME_MAX_LEN + 1];
    bool wildcard;
    if (host == NULL || !normalize_host((const unsigned char *)host, strlen(host), false, name, &wildcard))
        return SSL_TLSEXT_ERR_OK; /* absent or not a host name: the default certificate */
    SSL_CTX *ctx = sni_lookup(t, name);
    if (ctx != NULL && ctx != SSL_get_SSL_CTX(ssl) && SSL_set_SSL_CTX(ssl, ctx) == NULL) {
        *alert = SSL_AD_INTERNAL_ERROR;
        return SSL_TLSEXT_ERR_ALERT_FATAL;
    }
    return SSL_TLSEXT_ERR_OK;
}

/* The server's ALPN preference, in wire format (length-prefixed strings).
 * Not const: it travels through OpenSSL's void * callback argument. */
struct alpn_prefs {
    const unsigned char *wire;
    size_t len;
};

static struct alpn_prefs alpn_h2_h1 = {(const unsigned char *)"\x02h2\x08http/1.1", 12};
static struct alpn_prefs alpn_h1 = {(const unsigned char *)"\x08http/1.1", 9};

/* Pick the first protocol of the server's list that the client offers
 * (RFC 7301 section 3.2: the server chooses). in is the client's list,
 * already checked for well-formedness by OpenSSL; *out points into it. */
static int on_alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen, const unsigned char *in, unsigned int inlen,
                          void *arg)
{
    (void)ssl;
    const struct alpn_prefs *prefs = arg;
    for (size_t i = 0; i < prefs->len; i += 1 + (size_t)prefs->wire[i]) {
        const unsigned char *want = prefs->wire + i + 1;
        size_t want_len = prefs->wire[i];
        for (size_t j = 0; j < inlen;) {
            size_t len = in[j];
            if (len == 0 || j + 1 + len > inlen)
                break;
            if (len == want_len && memcmp(in + j + 1, want, len) == 0) {
                *out = in + j + 1;
                *outlen = (unsigned char)len;
                return SSL_TLSEXT_ERR_OK;
            }
            j += 1 + len;
        }
    }
    /* RFC 7301 section 3.2: offered, but nothing we speak -> fatal
     * no_application_protocol alert (OpenSSL sends it for ALERT_FATAL). */
    return SSL_TLSEXT_ERR_ALERT_FATAL;
}

/* ---------------------------------------------------------------- server contexts */

/* The PEM password callback: encrypted keys are refused rather than letting
 * OpenSSL's default callback prompt on a terminal that is not there. */
static int no_password(char *buf, int size, int rwflag, void *u)
{
    (void)buf;
    (void)size;
    (void)rwflag;
    (void)u;
    return -1;
}

/* Load cert and key into ctx; false with err set. */
static bool load_cert(SSL_CTX *ctx, const struct tls_cert_files *c, char *err, size_t errlen)
{
    char reason[256];
    if (c->cert == NULL || c->cert[0] == '\0') {
        set_err(err, errlen, "cert: no file given");
        return false;
    }
    if (SSL_CTX_use_certificate_chain_file(ctx, c->cert) != 1) {
        set_err(err, errlen, "cert %s: %s", c->cert, load_error(reason, sizeof(reason)));
        return false;
    }

    const char *key_path = c->key != NULL && c->key[0] != '\0' ? c->key : c->cert;
    bool ok = false;
    EVP_PKEY *key = NULL;
    BIO *bio = BIO_new_file(key_path, "r");
    if (bio == NULL) {
        set_err(err, errlen, "key %s: %s", key_path, load_error(reason, sizeof(reason)));
        goto out;
    }
    key = PEM_read_bio_PrivateKey(bio, NULL, no_password, NULL);
    if (key == NULL) {
        set_err(err, errlen, "key %s: no private key found (%s); an unencrypted PEM key is needed", key_path,
                load_error(reason, sizeof(reason)));
        goto out;
    }
    /* Checked here rather than left to SSL_CTX_use_PrivateKey(), which only
     * compares keys of the same type: an RSA key for an ECDSA certificate
     * would load "fine" into another slot and fail at the first handshake. */
    if (X509_check_private_key(SSL_CTX_get0_certificate(ctx), key) != 1) {
        ERR_clear_error();
        set_err(err, errlen, "key %s does not match cert %s", key_path, c->cert);
        goto out;
    }
    if (SSL_CTX_use_PrivateKey(ctx, key) != 1 || SSL_CTX_check_private_key(ctx) != 1) {
        set_err(err, errlen, "key %s: %s", key_path, load_error(reason, sizeof(reason)));
        goto out;
    }
    ok = true;
out:
    EVP_PKEY_free(key);
    BIO_free(bio);
    return ok;
}

/* One certificate's context with the listener's protocol settings. */
static SSL_CTX *cert_ctx_new(const struct tls_cert_files *c, int min_version, struct alpn_prefs *alpn, char *err, size_t errlen)
{
    char reason[256];
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (ctx == NULL) {
        set_err(err, errlen, "SSL_CTX_new: %s", load_error(reason, sizeof(reason)));
        return NULL;
    }
    /* Renegotiation is a DoS lever and HTTP/2 forbids it (RFC 9113 section
     * 9.2.1); compression invites CRIME. */
    SSL_CTX_set_options(ctx, SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_PRIORITIZE_CHACHA | SSL_OP_NO_COMPRESSION |
                                 SSL_OP_NO_RENEGOTIATION);
    if (SSL_CTX_set_min_proto_version(ctx, min_version) != 1 || SSL_CTX_set_cipher_list(ctx, TLS12_SERVER_CIPHERS) != 1 ||
        SSL_CTX_set_session_id_context(ctx, (const unsigned char *)SESSION_ID_CONTEXT, strlen(SESSION_ID_CONTEXT)) != 1) {
        set_err(err, errlen, "cert %s: setting up TLS: %s", c->cert != NULL ? c->cert : "(none)",
                load_error(reason, sizeof(reason)));
        goto fail;
    }
    /* Stateless tickets only: nothing to share (or lock) between workers. */
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    /* No 0-RTT: early data can be replayed (RFC 8446 section 8). 0 is the
     * default; said here so nobody turns it on without reading this. */
    SSL_CTX_set_max_early_data(ctx, 0);
    /* Idle keep-alive connections give back their 34 KB of record buffers. */
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_alpn_select_cb(ctx, on_alpn_select, alpn);
    if (!load_cert(ctx, c, err, errlen))
        goto fail;
    return ctx;
fail:
    SSL_CTX_free(ctx);
    return NULL;
}

SSL_CTX *tls_server_ctx_new(const struct tls_cert_files *certs, size_t n, int min_version, bool allow_h2, char *err, size_t errlen)
{
    if (certs == NULL || n == 0) {
        set_err(err, errlen, "no certificates");
        return NULL;
    }
    if (min_version != TLS1_2_VERSION && min_version != TLS1_3_VERSION) {
        set_err(err, errlen, "min_version 0x%x: only TLS 1.2 (0x%x) and TLS 1.3 (0x%x) are allowed", (unsigned)min_version,
                TLS1_2_VERSION, TLS1_3_VERSION);
        return NULL;
    }
    if (CRYPTO_THREAD_run_once(&sni_index_once, init_sni_index) != 1 || sni_index < 0) {
        set_err(err, errlen, "SSL_CTX_get_ex_new_index failed");
        return NULL;
    }
    ERR_clear_error();

    struct alpn_prefs *alpn = allow_h2 ? &alpn_h2_h1 : &alpn_h1;
    SSL_CTX *def = cert_ctx_new(&certs[0], min_version, alpn, err, errlen);
    if (def == NULL)
        return NULL;
    struct sni_table *t = co_calloc(1, sizeof(*t));
    t->ctxs = co_calloc(n, sizeof(*t->ctxs));
    if (SSL_CTX_set_ex_data(def, sni_index, t) != 1) {
        sni_table_free(t);
        set_err(err, errlen, "SSL_CTX_set_ex_data failed");
        goto fail;
    }
    /* From here on, SSL_CTX_free(def) frees the table and its contexts. */
    SSL_CTX_set_tlsext_servername_callback(def, on_servername);
    SSL_CTX_set_tlsext_servername_arg(def, t);
    sni_add_cert(t, def); /* the default may have no name: it serves whatever matches nothing */

    for (size_t i = 1; i < n; i++) {
        SSL_CTX *ctx = cert_ctx_new(&certs[i], min_version, alpn, err, errlen);
        if (ctx == NULL)
            goto fail;
        t->ctxs[t->n_ctxs++] = ctx;
        if (sni_add_cert(t, ctx) == 0) {
            set_err(err, errlen,
                    "cert %s: no DNS name in subjectAltName nor in subject CN, so no SNI can select it "
                    "(only the first certificate serves clients without a matching name)",
                    certs[i].cert);
            goto fail;
        }
    }
    return def;
fail:
    SSL_CTX_free(def);
    return NULL;
}

/* ---------------------------------------------------------------- client */

/* If s is an IP literal ("10.0.0.4", "::1", "[::1]"), copy it without
 * brackets to out (INET6_ADDRSTRLEN bytes) and return true. */
static bool ip_literal(const char *s, char *out)
{
    size_t len = strlen(s);
    if (len >= 2 && s[0] == '[' && s[len - 1] == ']') {
        s++;
        len -= 2;
    }
    if (len == 0 || len >= INET6_ADDRSTRLEN)
        return false;
    memcpy(out, s, len);
    out[len] = '\0';
    unsigned char addr[sizeof(struct in6_addr)];
    return inet_pton(AF_INET, out, addr) == 1 || inet_pton(AF_INET6, out, addr) == 1;
}

/* "h2,http/1.1" -> "\x02h2\x08http/1.1" in out; false when malformed (an
 * empty or over-long name) or too long for out. */
static bool alpn_to_wire(const char *list, unsigned char *out, size_t outsize, size_t *outlen)
{
    *outlen = 0;
    if (list == NULL || list[0] == '\0')
        return true;
    size_t pos = 0;
    for (const char *p = list;;) {
        const char *end = strchr(p, ',');
        size_t len = end != NULL ? (size_t)(end - p) : strlen(p);
        if (len == 0 || len > 255 || pos + 1 + len > outsize)
            return false;
        out[pos++] = (unsigned char)len;
        memcpy(out + pos, p, len);
        pos += len;
        if (end == NULL)
            break;
        p = end + 1;
    }
    *outlen = pos;
    return true;
}

SSL_CTX *tls_client_ctx_new(const char *ca_file, bool verify, char *err, size_t errlen)
{
    char reason[256];
    ERR_clear_error();
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (ctx == NULL) {
        set_err(err, errlen, "SSL_CTX_new: %s", load_error(reason, sizeof(reason)));
        return NULL;
    }
    if (SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) != 1) {
        set_err(err, errlen, "SSL_CTX_set_min_proto_version: %s", load_error(reason, sizeof(reason)));
        goto fail;
    }
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
    /* Pooled idle connections give back their record buffers. */
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
    if (!verify) {
        SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
        return ctx;
    }

    if (ca_file != NULL && ca_file[0] != '\0') {
        if (SSL_CTX_load_verify_file(ctx, ca_file) != 1) {
            set_err(err, errlen, "ca_file %s: %s", ca_file, load_error(reason, sizeof(reason)));
            goto fail;
        }
    } else {
        /* The system store, read into memory now: the bundle file that
         * SSL_CTX_set_default_verify_paths() would use (SSL_CERT_FILE, else
         * OpenSSL's default, /usr/lib/ssl/cert.pem on Debian). The hashed
         * directory that call also adds is searched lazily, i.e. with file
         * I/O on a worker during handshakes (for every issuer not already in
         * memory, such as each intermediate), so it is used only when asked
         * for (SSL_CERT_DIR) or when there is no bundle file. */
        const char *bundle = getenv(X509_get_default_cert_file_env());
        const char *dir = getenv(X509_get_default_cert_dir_env());
        if (bundle == NULL || bundle[0] == '\0')
            bundle = X509_get_default_cert_file();
        if ((dir != NULL && dir[0] != '\0') || SSL_CTX_load_verify_file(ctx, bundle) != 1) {
            ERR_clear_error();
            if (SSL_CTX_set_default_verify_paths(ctx) != 1) {
                set_err(err, errlen, "system CA store: %s", load_error(reason, sizeof(reason)));
                goto fail;
            }
        }
    }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    return ctx;
fail:
    SSL_CTX_free(ctx);
    return NULL;
}

SSL *tls_client_ssl_new(SSL_CTX *ctx, const char *sni, const char *verify_name, const char *alpn)
{
    unsigned char wire[256];
    size_t wire_len;
    if (!alpn_to_wire(alpn, wire, sizeof(wire), &wire_len))
        return NULL;
    bool verify = (SSL_CTX_get_verify_mode(ctx) & SSL_VERIFY_PEER) != 0;
    const char *name = verify_name != NULL && verify_name[0] != '\0' ? verify_name : sni;
    if (verify && (name == NULL || name[0] == '\0'))
        return NULL;

    SSL *ssl = SSL_new(ctx);
    if (ssl == NULL)
        return NULL;
    SSL_set_connect_state(ssl);
    char ip[INET6_ADDRSTRLEN];
    if (sni != NULL && sni[0] != '\0' && !ip_literal(sni, ip) && SSL_set_tlsext_host_name(ssl, sni) != 1)
        goto fail;
    if (verify) {
        if (ip_literal(name, ip)) {
            if (X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), ip) != 1)
                goto fail;
        } else {
            /* RFC 6125 section 7.2: "f*.example.com" is too loose to honour. */
            SSL_set_hostflags(ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
            if (SSL_set1_host(ssl, name) != 1)
                goto fail;
        }
    }
    /* SSL_set_alpn_protos() returns 0 on success. */
    if (wire_len > 0 && SSL_set_alpn_protos(ssl, wire, (unsigned int)wire_len) != 0)
        goto fail;
    return ssl;
fail:
    SSL_free(ssl);
    ERR_clear_error();
    return NULL;
}

/* ---------------------------------------------------------------- both */

const char *tls_alpn(const SSL *ssl)
{
    const unsigned char *p = NULL;
    unsigned int len = 0;
    SSL_get0_alpn_selected(ssl, &p, &len);
    if (len == 2 && memcmp(p, "h2", 2) == 0)
        return "h2";
    if (len == 8 && memcmp(p, "http/1.1", 8) == 0)
        return "http/1.1";
    return "";
}

void tls_describe_failure(const SSL *ssl, unsigned long err, char *out, size_t outlen)
{
    if (out == NULL || outlen == 0)
        return;
    long verify = ssl != NULL ? SSL_get_verify_result(ssl) : X509_V_OK;
    if (ssl != NULL && (SSL_get_verify_mode(ssl) & SSL_VERIFY_PEER) != 0 && verify != X509_V_OK) {
        /* The subject tells the operator which certificate came back (often
         * the load balancer's default one). The peer chain is kept even when
         * verification failed, unlike SSL_get0_peer_certificate(); on a
         * client its first element is the leaf. */
        char subject[256] = "";
        STACK_OF(X509) *chain = SSL_get_peer_cert_chain(ssl);
        if (chain != NULL && sk_X509_num(chain) > 0) {
            BIO *bio = BIO_new(BIO_s_mem());
            /* RFC 2253 form escapes control and non-ASCII bytes, which come
             * from the peer and must not reach the log raw. */
            if (bio != NULL && X509_NAME_print_ex(bio, X509_get_subject_name(sk_X509_value(chain, 0)), 0, XN_FLAG_RFC2253) >= 0) {
                char *data;
                long len = BIO_get_mem_data(bio, &data);
                if (len > 0)
                    snprintf(subject, sizeof(subject), " (peer certificate %.*s)", (int)(len > 200 ? 200 : len), data);
            }
            BIO_free(bio);
        }
        snprintf(out, outlen, "certificate verify failed: %s%s", X509_verify_cert_error_string(verify), subject);
        return;
    }
    unsigned long e = err != 0 ? err : ERR_peek_last_error();
    /* libevent's bufferevent_get_openssl_error() also queues SSL_get_error()
     * codes (library 0, small values) when no OpenSSL error was recorded. */
    if (e == SSL_ERROR_SYSCALL) {
        snprintf(out, outlen, "the peer closed or reset the connection during the handshake");
        return;
    }
    if (e == SSL_ERROR_ZERO_RETURN) {
        snprintf(out, outlen, "the peer sent close_notify during the handshake");
        return;
    }
    if (e != 0) {
        char buf[256];
        snprintf(out, outlen, "%s", error_text(e, buf, sizeof(buf)));
        return;
    }
    snprintf(out, outlen, "handshake failed");
}

void tls_ctx_free(SSL_CTX *ctx)
{
    SSL_CTX_free(ctx);
}
