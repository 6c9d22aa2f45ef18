/*
 * accesslog.c - per-worker line buffers handed to one writer thread.
 *
 * Workers never write(2) to stdout themselves: a pipe or terminal that is
 * slow would stall the event loop. They append to a private evbuffer and,
 * every FLUSH_MS or FLUSH_BYTES, move it under a mutex into the shared
 * queue (one lock per flush, not per request). The queue is bounded by
 * QUEUE_MAX; beyond it lines are dropped and counted.
 */
#include "accesslog.h"

#include <event2/buffer.h>
#include <event2/event.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <unistd.h>

#include "common.h"
#include "worker.h"

#define FLUSH_MS 100
#define FLUSH_BYTES (64 * 1024)
#define QUEUE_MAX (16 * 1024 * 1024)

struct accesslog {
    struct worker *worker;
    struct evbuffer *buf;
    struct event *timer;
    bool timer_armed;
};

static struct {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    struct evbuffer *queue;
    pthread_t thread;
    bool running;
    bool stop;
    int fd;
} g = {.lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER, .fd = 1};

static void write_all(struct evbuffer *b)
{
    while (evbuffer_get_length(b) > 0) {
        int n = evbuffer_write(b, g.fd);
        if (n <= 0) {
            /* stdout closed or broken: discard rather than spin. */
            evbuffer_drain(b, evbuffer_get_length(b));
            return;
        }
    }
}

static void *writer(void *arg)
{
    struct evbuffer *local = evbuffer_new();
    pthread_mutex_lock(&g.lock);
    for (;;) {
        while (evbuffer_get_length(g.queue) == 0 && !g.stop)
            pthread_cond_wait(&g.cond, &g.lock);
        evbuffer_add_buffer(local, g.queue);
        bool stop = g.stop;
        pthread_mutex_unlock(&g.lock);
        write_all(local);
        pthread_mutex_lock(&g.lock);
        if (stop && evbuffer_get_length(g.queue) == 0)
            break;
    }
    pthread_mutex_unlock(&g.lock);
    evbuffer_free(local);
    return NULL;
}

int accesslog_global_start(int fd)
{
    g.fd = fd;
    g.queue = evbuffer_new();
    g.stop = false;
    if (pthread_create(&g.thread, NULL, writer, NULL) != 0) {
        log_error("cannot start the access-log writer thread");
        return CO_ERROR;
    }
    g.running = true;
    return CO_OK;
}

void accesslog_global_stop(void)
{
    if (!g.running)
        return;
    pthread_mutex_lock(&g.lock);
    g.stop = true;
    pthread_cond_signal(&g.cond);
    pthread_mutex_unlock(&g.lock);
    pthread_join(g.thread, NULL);
    evbuffer_free(g.queue);
    g.queue = NULL;
    g.running = false;
}

static void flush(struct accesslog *log)
{
    size_t len = evbuffer_get_length(log->buf);
    if (len == 0)
        return;
    if (!g.running) {
        write_all(log->buf);
        return;
    }
    pthread_mutex_lock(&g.lock);
    if (evbuffer_get_length(g.queue) + len > QUEUE_MAX) {
        pthread_mutex_unlock(&g.lock);
        /* Count dropped lines (one newline each). */
        struct evbuffer_ptr p = evbuffer_search(log->buf, "\n", 1, NULL);
        uint64_t lines = 0;
        while (p.pos >= 0) {
            lines++;
            evbuffer_ptr_set(log->buf, &p, 1, EVBUFFER_PTR_ADD);
            p = evbuffer_search(log->buf, "\n", 1, &p);
        }
        METRIC_ADD(log->worker->metrics.log_dropped, lines);
        evbuffer_drain(log->buf, len);
        return;
    }
    evbuffer_add_buffer(g.queue, log->buf);
    pthread_cond_signal(&g.cond);
    pthread_mutex_unlock(&g.lock);
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    struct accesslog *log = arg;
    log->timer_armed = false;
    flush(log);
}

struct accesslog *accesslog_new(struct worker *w)
{
    struct accesslog *log = co_calloc(1, sizeof(*log));
    log->worker = w;
    log->buf = evbuffer_new();
    log->timer = evtimer_new(w->base, on_timer, log);
    return log;
}

void accesslog_free(struct accesslog *log)
{
    flush(log);
    event_free(log->timer);
    evbuffer_free(log->buf);
    free(log);
}

struct evbuffer *accesslog_buffer(struct accesslog *log)
{
    return log->buf;
}

void accesslog_commit(struct accesslog *log)
{
    if (evbuffer_get_length(log->buf) >= FLUSH_BYTES) {
        flush(log);
        return;
    }
    if (!log->timer_armed) {
        struct timeval tv = {0, FLUSH_MS * 1000};
        evtimer_add(log->timer, &tv);
        log->timer_armed = true;
    }
}

void accesslog_json_str(struct evbuffer *b, const char *s, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    size_t start = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch >= 0x20 && ch != '"' && ch != '\\' && ch < 0x7f)
            continue;
        if (i > start)
            evbuffer_add(b, s + start, i - start);
        char esc[6] = {'\\', 'u', '0', '0', hex[ch >> 4], hex[ch & 15]};
        if (ch == '"' || ch == '\\') {
            esc[1] = (char)ch;
            evbuffer_add(b, esc, 2);
        } else {
            evbuffer_add(b, esc, 6);
        }
        start = i + 1;
    }
    if (len > start)
        evbuffer_add(b, s + start, len - start);
}
