/*
 * fuzz_h1_chunked.c - libFuzzer target for the chunked decoder
 * (h1_chunked_feed).
 *
 * The input is decoded three ways: in one piece, byte by byte, and in pieces
 * whose sizes come from a PRNG seeded by the input. All three must agree on
 * the outcome (error, incomplete, or done after the same number of bytes) and
 * on the payload; the split must never matter to a streaming decoder. Every
 * call is checked against the contract in proxy/h1.h: consumed <= offered,
 * payload span inside the consumed range, progress while bytes remain,
 * nothing consumed once done, errors sticky with a message. Each piece is
 * handed over in an exact-size heap copy so ASan catches any over-read.
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

struct outcome {
    long rc; /* total consumed, or H1_ERR_BAD */
    bool done;
    char *payload;
    size_t payload_len;
};

static uint64_t rng_next(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

/* Feed data as pieces of 1..max_piece bytes (max_piece 0 = all at once). */
static void decode(const uint8_t *data, size_t len, size_t max_piece, uint64_t seed, struct outcome *out)
{
    struct h1_chunked c;
    size_t pos = 0, avail = 0;

    h1_chunked_init(&c);
    out->payload = malloc(len ? len : 1);
    out->payload_len = 0;
    out->done = false;
    for (;;) {
        if (pos == avail) {
            if (avail == len)
                break;
            size_t piece = max_piece == 0 ? len : 1 + (size_t)(rng_next(&seed) % max_piece);
            avail = piece < len - avail ? avail + piece : len;
        }
        size_t n = avail - pos;
        char *piece = malloc(n);
        memcpy(piece, data + pos, n);
        size_t off = 7777, dlen = 7777;
        long r = h1_chunked_feed(&c, piece, n, &off, &dlen);
        if (r < 0) {
            free(piece);
            CHECK(r == H1_ERR_BAD);
            CHECK(c.error != NULL && c.error[0] != '\0');
            CHECK(!c.done);
            /* sticky */
            size_t o2, l2;
            CHECK(h1_chunked_feed(&c, "0\r\n\r\n", 5, &o2, &l2) == H1_ERR_BAD);
            out->rc = H1_ERR_BAD;
            return;
        }
        CHECK((size_t)r <= n);
        CHECK(r > 0 || c.done); /* progress while bytes remain */
        if (dlen > 0) {
            CHECK(off + dlen <= (size_t)r);
            memcpy(out->payload + out->payload_len, piece + off, dlen);
            out->payload_len += dlen;
        }
        free(piece);
        pos += (size_t)r;
        if (c.done)
            break;
    }
    if (c.done) {
        size_t o2, l2;
        CHECK(h1_chunked_feed(&c, "1\r\nx\r\n", 6, &o2, &l2) == 0 && l2 == 0);
    }
    CHECK(out->payload_len <= pos);
    out->rc = (long)pos;
    out->done = c.done;
}

static void same(const struct outcome *a, const struct outcome *b)
{
    CHECK(a->rc == b->rc);
    CHECK(a->done == b->done);
    if (a->rc >= 0) {
        CHECK(a->payload_len == b->payload_len);
        CHECK(memcmp(a->payload, b->payload, a->payload_len) == 0);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t len)
{
    struct outcome whole, bytes, random;
    uint64_t seed = 0x9E3779B97F4A7C15ull ^ len;
    for (size_t i = 0; i < len && i < 16; i++)
        seed = seed * 131 + data[i];
    if (seed == 0)
        seed = 1;

    decode(data, len, 0, 0, &whole);
    decode(data, len, 1, 0, &bytes);
    decode(data, len, 7, seed, &random);
    same(&whole, &bytes);
    same(&whole, &random);

    /* done means the body ended exactly there: the consumed prefix alone is done too */
    if (whole.done) {
        struct outcome prefix;
        decode(data, (size_t)whole.rc, 0, 0, &prefix);
        same(&whole, &prefix);
        free(prefix.payload);
    } else if (whole.rc >= 0) {
        CHECK(whole.rc == (long)len); /* not done and no error: everything consumed */
    }
    free(whole.payload);
    free(bytes.payload);
    free(random.payload);
    return 0;
}
