/*
 * common.h - return codes, allocation and logging shared by the whole proxy.
 *
 * Return codes (nginx style). Functions that can fail return one of these;
 * NGHTTP2_ERR_* values stay at the nghttp2 boundary.
 *   CO_OK        success
 *   CO_ERROR     failure; the caller unwinds
 *   CO_AGAIN     not enough input yet / would block; call again later
 *   CO_DECLINED  not applicable here (e.g. no route matched)
 *
 * Out of memory: cutover aborts (like h2o's h2o_mem_alloc). A proxy that
 * cannot allocate a few bytes cannot serve anyone; failing fast lets the
 * supervisor (Kubernetes, systemd) restart it with a clean heap.
 */
#ifndef CUTOVER_COMMON_H
#define CUTOVER_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>

#define CO_OK 0
#define CO_ERROR -1
#define CO_AGAIN -2
#define CO_DECLINED -3

#define CUTOVER_VERSION "0.1.0"

#define CO_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

/* Append a string literal to an evbuffer (length computed at compile time). */
#define ADD_LIT(buf, lit) evbuffer_add((buf), (lit), sizeof(lit) - 1)

/* Allocation wrappers: never return NULL (abort on exhaustion). */
void *co_malloc(size_t size);
void *co_calloc(size_t n, size_t size);
void *co_realloc(void *p, size_t size);
char *co_strdup(const char *s);
char *co_strndup(const char *s, size_t n);

/* Diagnostics go to stderr (the access log owns stdout). One line each,
 * prefixed with a timestamp and level. Thread-safe (one write(2) per line). */
void co_log(const char *level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
#define log_error(...) co_log("error", __VA_ARGS__)
#define log_warn(...) co_log("warn", __VA_ARGS__)
#define log_info(...) co_log("info", __VA_ARGS__)

/* Monotonic clock in milliseconds / microseconds. */
uint64_t co_now_ms(void);
uint64_t co_now_us(void);

/* Write 32 lowercase hex digits of (a, b) and a NUL into out[33]. */
void co_hex128(char *out, uint64_t a, uint64_t b);

/* Decimal digits of v into out (no NUL); returns the length (<= 20). */
size_t co_u64_dec(char *out, uint64_t v);

/* Copy a NUL-terminated string into out[outlen], truncating. */
void co_strlcpy(char *out, const char *s, size_t outlen);

/* Case-insensitive compare of a counted string with a NUL-terminated literal. */
bool co_strieq(const char *a, size_t alen, const char *lit);

#endif
