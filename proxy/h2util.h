/*
 * h2util.h - what the HTTP/2 server (conn_h2.c) and client (upstream_h2.c)
 * sides share: producing nghttp2 output into a bufferevent's output, bounded.
 */
#ifndef CUTOVER_H2UTIL_H
#define CUTOVER_H2UTIL_H

#include <event2/buffer.h>
#include <nghttp2/nghttp2.h>

/* Move session output into out until nghttp2 has nothing more or out holds
 * `high` bytes (the write callback asks again). Returns 0, or nghttp2's
 * (fatal) error code. */
static inline int h2_send_bounded(nghttp2_session *session, struct evbuffer *out, size_t high)
{
    while (evbuffer_get_length(out) < high) {
        const uint8_t *data;
        ssize_t n = nghttp2_session_mem_send(session, &data);
        if (n < 0)
            return (int)n;
        if (n == 0)
            break;
        evbuffer_add(out, data, (size_t)n);
    }
    return 0;
}

#endif
