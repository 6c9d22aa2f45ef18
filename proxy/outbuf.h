/*
 * outbuf.h - build a message in a stack buffer and hand it to an evbuffer in
 * one evbuffer_add. Every evbuffer_add on a bufferevent's output runs its
 * callbacks; a request head written field by field cost more than the rest
 * of the exchange (callgrind). Spills to the evbuffer when the stack part
 * is full, so any size works.
 */
#ifndef CUTOVER_OUTBUF_H
#define CUTOVER_OUTBUF_H

#include <event2/buffer.h>
#include <stdint.h>
#include <string.h>

struct outbuf {
    struct evbuffer *out;
    size_t n;
    char buf[4096];
};

static inline void ob_init(struct outbuf *o, struct evbuffer *out)
{
    o->out = out;
    o->n = 0;
}

static inline void ob_flush(struct outbuf *o)
{
    if (o->n)
        evbuffer_add(o->out, o->buf, o->n);
    o->n = 0;
}

static inline void ob_put(struct outbuf *o, const char *s, size_t n)
{
    if (o->n + n > sizeof(o->buf)) {
        ob_flush(o);
        if (n > sizeof(o->buf)) {
            evbuffer_add(o->out, s, n);
            return;
        }
    }
    memcpy(o->buf + o->n, s, n);
    o->n += n;
}

#define OB_LIT(o, lit) ob_put((o), (lit), sizeof(lit) - 1)

static inline void ob_str(struct outbuf *o, const char *s)
{
    ob_put(o, s, strlen(s));
}

static inline void ob_u64(struct outbuf *o, uint64_t v)
{
    char tmp[24];
    size_t i = sizeof(tmp);
    do {
        tmp[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    ob_put(o, tmp + i, sizeof(tmp) - i);
}

static inline void ob_hex(struct outbuf *o, uint64_t v)
{
    static const char digits[] = "0123456789abcdef";
    char tmp[20];
    size_t i = sizeof(tmp);
    do {
        tmp[--i] = digits[v & 15];
        v >>= 4;
    } while (v);
    ob_put(o, tmp + i, sizeof(tmp) - i);
}

#endif
