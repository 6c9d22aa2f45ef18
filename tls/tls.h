/*
 * tls.h - TLS contexts for both sides of the proxy (OpenSSL 3).
 *
 * Downstream (listeners): tls_server_ctx_new() builds one SSL_CTX per
 * certificate and picks among them by SNI during the handshake; ALPN chooses
 * "h2" or "http/1.1". Upstream (clusters): tls_client_ctx_new() builds the
 * trust side once per cluster, and tls_client_ssl_new() makes each
 * connection's SSL with its SNI, hostname check and ALPN offer.
 *
 * Threads: contexts are built on the main thread (they read files), then
 * shared read-only by every worker. OpenSSL reference-counts SSL_CTX and
 * each SSL holds its context, so tls_ctx_free() may run while connections
 * made from it are still open; the memory goes when the last one is freed.
 *
 * Errors: constructors write one line to err ("cert FILE: reason") that can
 * go into a config error or a log as is; they never log themselves.
 */
#ifndef CUTOVER_TLS_H
#define CUTOVER_TLS_H

#include <stdbool.h>
#include <stddef.h>

#include <openssl/ssl.h>

/* One certificate of a listener, as PEM file paths. */
struct tls_cert_files {
    const char *cert; /* leaf first, then any intermediates (a "fullchain" file) */
    const char *key;  /* its private key, unencrypted; NULL = the key is in the cert file */
};

/*
 * Server context for one listener, built from n >= 1 certificates.
 *
 * SNI: each certificate answers for the DNS names in its subjectAltName, or
 * for its subject CN when it has no DNS subjectAltName. A name matches the
 * client's SNI exactly (ASCII case-insensitive, trailing dot ignored) or as a
 * wildcard "*.example.com", which stands for exactly one label
 * ("a.example.com", not "example.com" nor "a.b.example.com"). Exact names win
 * over wildcards; when two certificates claim the same name, the earlier one
 * wins. certs[0] is the default, served when SNI is absent or matches nothing.
 * A certificate other than certs[0] without any usable name is an error
 * (nothing could ever select it).
 *
 * ALPN (RFC 7301): "h2" if the client offers it and allow_h2, else
 * "http/1.1" if offered. A client that offers ALPN but neither protocol is
 * refused with a no_application_protocol alert (RFC 7301 section 3.2); a
 * client that offers no ALPN is served HTTP/1.1.
 *
 * Protocol: min_version is TLS1_2_VERSION or TLS1_3_VERSION (TLS 1.3 is
 * preferred whenever both sides have it). TLS 1.2 uses ECDHE with AES-GCM or
 * ChaCha20-Poly1305 only, in server order (ChaCha20 first for clients that
 * prefer it, i.e. lack AES hardware). No compression, no renegotiation, no
 * 0-RTT. Sessions resume with stateless tickets only (no server-side cache,
 * so no lock shared by workers); the ticket keys are random per context, so
 * tickets stay valid until the context is replaced (a config reload) or the
 * process restarts.
 *
 * Returns a context to share between all workers of the listener, or NULL
 * with a reason in err ("cert FILE: reason", "key FILE does not match cert
 * FILE", ...). Free with tls_ctx_free(). Reads files: main thread only.
 */
SSL_CTX *tls_server_ctx_new(const struct tls_cert_files *certs, size_t n, int min_version, bool allow_h2, char *err, size_t errlen);

/*
 * Client context for connections to one upstream cluster. TLS 1.2 or newer,
 * no compression, no renegotiation.
 *
 * verify (the default in config): the peer's chain must lead to ca_file (PEM
 * bundle) when given, else to the system trust store, and its name is checked
 * per connection (tls_client_ssl_new). The system store is the bundle file
 * (SSL_CERT_FILE, else OpenSSL's default), read into memory here so that
 * handshakes on workers touch no files; only with SSL_CERT_DIR set, or
 * without a bundle file, is it SSL_CTX_set_default_verify_paths(), whose
 * hashed directory is searched during handshakes. verify = false accepts
 * any certificate (ca_file is then ignored); for test rigs only.
 *
 * Returns the context, or NULL with a reason in err ("ca_file FILE: reason").
 * Free with tls_ctx_free(). Reads files: main thread only.
 */
SSL_CTX *tls_client_ctx_new(const char *ca_file, bool verify, char *err, size_t errlen);

/*
 * A new client SSL for one upstream connection, in connect state, ready for
 * bufferevent_openssl_socket_new(..., BUFFEREVENT_SSL_CONNECTING, ...).
 *
 * sni: server name to send (NULL or "" = none). Not sent when it is an IP
 * literal ("10.0.0.4", "::1" or "[::1]"): RFC 6066 section 3 forbids it.
 * verify_name: the name the certificate must carry (a DNS name, matched with
 * RFC 6125 rules, no partial wildcards, or an IP literal, matched against IP
 * subjectAltNames); NULL or "" = sni. Used only when ctx verifies.
 * alpn: comma-separated offer in preference order, e.g. "h2", "http/1.1",
 * "h2,http/1.1"; NULL or "" = no ALPN.
 *
 * Returns the SSL (the caller owns it; a bufferevent created with
 * BEV_OPT_CLOSE_ON_FREE takes it over), or NULL when alpn is malformed or
 * ctx verifies but there is no name to verify against (a verified connection
 * that accepts any name from the trusted CAs is not one we will make).
 *
 * Session resumption is the caller's: keep SSL_get1_session() of a
 * connection (with TLS 1.3 the ticket arrives after the handshake, with the
 * first reads) and hand it to SSL_set_session() on the next one to the same
 * endpoint and name. Close with SSL_shutdown(), or at least
 * SSL_set_shutdown(ssl, SSL_SENT_SHUTDOWN), before freeing: OpenSSL marks
 * the session of an SSL freed without one not resumable, through every
 * reference (libevent's bufferevent_free() does not shut down).
 */
SSL *tls_client_ssl_new(SSL_CTX *ctx, const char *sni, const char *verify_name, const char *alpn);

/*
 * The protocol ALPN negotiated on ssl: "h2", "http/1.1", or "" when none was
 * (or something else was, which cutover never offers nor selects). A static
 * string; valid once the handshake is done.
 */
const char *tls_alpn(const SSL *ssl);

/*
 * Why a handshake failed, as text for a log line, written to out (always
 * NUL-terminated when outlen > 0):
 *   - "certificate verify failed: <X509 reason> (peer certificate <subject>)"
 *     when ssl verifies its peer and verification failed, e.g.
 *     "certificate verify failed: hostname mismatch (peer certificate CN=a.test)";
 *   - else the reason of error code err, e.g.
 *     "tlsv1 alert no application protocol". Pass the code libevent saved
 *     (bufferevent_get_openssl_error(): bufferevent_openssl drains the thread's
 *     error queue into the bufferevent), or 0 to use the most recent error of
 *     this thread's OpenSSL error queue, which is left untouched;
 *   - else "handshake failed".
 */
void tls_describe_failure(const SSL *ssl, unsigned long err, char *out, size_t outlen);

/*
 * Drop the caller's reference to a context from tls_server_ctx_new() or
 * tls_client_ctx_new(). A server context takes its per-certificate contexts
 * with it. Connections still open keep what they use alive. NULL is a no-op.
 */
void tls_ctx_free(SSL_CTX *ctx);

#endif
