/*
 * ramp.c - ramp schedules and their gates (see ramp.h).
 *
 * Everything here runs on the main thread: a 250 ms timer recomputes each
 * live ramp's step from the ramp clock, judges its gate from the workers'
 * route counters, and publishes the new side's share through two atomics
 * that workers read on every decision (share, then version with release:
 * a worker that sees a new version also sees the share stored before it).
 *
 * Entries live until ramps_free(): a worker may still be deciding with a
 * snapshot that points to an entry the running config no longer has.
 */
#include "ramp.h"

#include <event2/buffer.h>
#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "app.h"
#include "common.h"
#include "report.h"
#include "metrics.h"
#include "worker.h"

#define TICK_MS 250

/* base_new_hist holds split[0]'s duration buckets [0, METRICS_BUCKETS) and,
 * at HIST_INF, its +Inf bucket (duration_count): the p99 estimate needs the
 * requests beyond the last bound too. */
#define HIST_INF METRICS_BUCKETS
_Static_assert(METRICS_BUCKETS + 1 <= sizeof(((struct ramp_state *)0)->base_new_hist) / sizeof(uint64_t),
               "ramp_state.base_new_hist is too small for the duration histogram");

/* "not held" in ramp_state.held */
#define NOT_HELD (-2)

struct ramps {
    struct app *app;
    struct event *tick;          /* every TICK_MS on app->base */
    struct ramp_state **entries; /* every entry ever created, in creation order */
    size_t n_entries;
    struct config *cfg; /* running config (reference): route_conf pointers point into it */
};

/* ---- the ramp clock -------------------------------------------------- */

static double clock_scale = 1.0;
static int64_t clock_wall0_ns;
static int64_t clock_mono0_ns;

static int64_t timespec_ns(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

void ramp_clock_init(double scale)
{
    clock_scale = scale > 0 ? scale : 1.0;
    clock_wall0_ns = timespec_ns(CLOCK_REALTIME);
    clock_mono0_ns = timespec_ns(CLOCK_MONOTONIC);
}

int64_t ramp_now_ms(void)
{
    /* At scale 1 the plain wall clock: every replica must compute the same
     * step, so follow NTP corrections rather than our own start time. */
    if (clock_scale == 1.0 || clock_mono0_ns == 0)
        return timespec_ns(CLOCK_REALTIME) / 1000000;
    double elapsed_ns = (double)(timespec_ns(CLOCK_MONOTONIC) - clock_mono0_ns) * clock_scale;
    return (clock_wall0_ns + (int64_t)elapsed_ns) / 1000000;
}

/* ---- formatting ------------------------------------------------------- */

/* "25.00%" from basis points. */
static const char *pct(char *out, size_t len, uint32_t bp)
{
    snprintf(out, len, "%u.%02u%%", bp / 100, bp % 100);
    return out;
}

/* Share of split[0] from the written weights, as decide.c's sticky buckets see it. */
static uint32_t written_share(const struct route_conf *rt)
{
    return (uint32_t)((uint64_t)CONFIG_BUCKETS * rt->split[0].weight / rt->total_weight);
}

static int effective_step(const struct ramp_state *st)
{
    return st->held != NOT_HELD ? st->held : st->step;
}

/* "before start", "ramping", "done" (last step) or "rolled back" (held). */
static const char *state_name(const struct ramp_state *st, const struct route_conf *rt)
{
    if (st->held != NOT_HELD)
        return "rolled back";
    if (st->step < 0)
        return "before start";
    if (st->step + 1 >= (int)rt->ramp.n_steps)
        return "done";
    return "ramping";
}

/* Basis points of split[0] at step k (-1 = the written weights). */
static uint32_t step_share(const struct route_conf *rt, int k)
{
    return k < 0 ? written_share(rt) : rt->ramp.steps[k];
}

/* "step 2 (25.00%)" or "the written weights (0.00%)". */
static const char *step_text(char *out, size_t len, const struct route_conf *rt, int k)
{
    char p[16];
    if (k < 0)
        snprintf(out, len, "the written weights (%s)", pct(p, sizeof(p), written_share(rt)));
    else
        snprintf(out, len, "step %d (%s)", k, pct(p, sizeof(p), rt->ramp.steps[k]));
    return out;
}

/* Prometheus label value: backslash, double quote and newline escaped. */
/* ---- schedule --------------------------------------------------------- */

/* floor((now - start) / hold), -1 before start, at most n_steps - 1. */
static int schedule_step(const struct ramp_conf *rp, int64_t now_ms)
{
    int64_t start_ms = rp->start_s * 1000;
    if (now_ms < start_ms)
        return -1;
    uint64_t k = (uint64_t)(now_ms - start_ms) / rp->hold_ms;
    return k >= rp->n_steps ? (int)rp->n_steps - 1 : (int)k;
}

/* Virtual milliseconds until the schedule's next step, -1 when there is none. */
static int64_t next_step_in_ms(const struct ramp_conf *rp, int k, int64_t now_ms)
{
    if (k + 1 >= (int)rp->n_steps)
        return -1;
    int64_t at = rp->start_s * 1000 + (int64_t)(k + 1) * (int64_t)rp->hold_ms;
    return at > now_ms ? at - now_ms : 0;
}

/* ---- counters --------------------------------------------------------- */

/* One side of a route summed over this process's workers. */
struct side_counts {
    uint64_t requests; /* answered: status classes 1..5, every decision reason */
    uint64_t x5xx;
    uint64_t hist[METRICS_BUCKETS + 1]; /* per-bucket counts, [HIST_INF] = all timed requests */
};

static void sum_side(const struct app *app, const char *route, const char *cluster, struct side_counts *out)
{
    memset(out, 0, sizeof(*out));
    if (app->workers == NULL) /* start-up: ramps_attach runs before the workers exist */
        return;
    for (unsigned w = 0; w < app->n_workers; w++) {
        if (app->workers[w] == NULL || app->workers[w]->stats == NULL)
            continue;
        struct stats_table *t = app->workers[w]->stats;
        /* The worker may be appending: entries below the published count are complete. */
        size_t n = atomic_load_explicit(&t->n_routes, memory_order_acquire);
        for (size_t i = 0; i < n; i++) {
            struct route_stats *rs = t->routes[i];
            if (strcmp(rs->route, route) != 0 || strcmp(rs->cluster, cluster) != 0)
                continue;
            for (int r = 0; r < 4; r++)
                for (int c = 1; c < 6; c++)
                    out->requests += METRIC_GET(rs->requests[r][c]);
            for (int r = 0; r < 4; r++)
                out->x5xx += METRIC_GET(rs->requests[r][5]);
            for (int q = 0; q < METRICS_BUCKETS; q++)
                out->hist[q] += METRIC_GET(rs->duration_bucket[q]);
            out->hist[HIST_INF] += METRIC_GET(rs->duration_count);
        }
    }
}

/* a - b for counters read at different moments (never below zero). */
static uint64_t delta(uint64_t a, uint64_t b)
{
    return a > b ? a - b : 0;
}

/* Counters now become the start of the current step. */
static void baseline(struct ramps *r, struct ramp_state *st, const struct route_conf *rt)
{
    struct side_counts n, o;
    sum_side(r->app, rt->name, rt->split[0].cluster->name, &n);
    sum_side(r->app, rt->name, rt->split[1].cluster->name, &o);
    st->base_new_req = n.requests;
    st->base_new_5xx = n.x5xx;
    st->base_old_req = o.requests;
    st->base_old_5xx = o.x5xx;
    memcpy(st->base_new_hist, n.hist, sizeof(n.hist));
}

/* ---- publishing ------------------------------------------------------- */

static void publish(struct ramp_state *st, const struct route_conf *rt)
{
    int k = effective_step(st);
    uint32_t share = k < 0 ? RAMP_SHARE_WEIGHTS : rt->ramp.steps[k];
    if (atomic_load_explicit(&st->share, memory_order_relaxed) == share)
        return;
    atomic_store_explicit(&st->share, share, memory_order_relaxed);
    atomic_fetch_add_explicit(&st->version, 1, memory_order_release);
}

static void log_step(const struct ramp_state *st, const struct route_conf *rt)
{
    char p[16];
    const char *new_side = rt->split[0].cluster->name;
    if (st->step < 0)
        log_info("ramp on route %s: before start, written weights (%s share %s)", st->route, new_side,
                 pct(p, sizeof(p), written_share(rt)));
    else
        log_info("ramp on route %s: step %d/%zu, %s share %s%s", st->route, st->step, rt->ramp.n_steps, new_side,
                 pct(p, sizeof(p), rt->ramp.steps[st->step]), st->step + 1 == (int)rt->ramp.n_steps ? " (last step)" : "");
}

/* ---- the gate --------------------------------------------------------- */

/* The smallest bucket bound (µs) under which at least 99% of the step's
 * timed requests of the new side finished; UINT64_MAX beyond the last bound. */
static uint64_t p99_us(const struct side_counts *n, const struct ramp_state *st)
{
    uint64_t total = delta(n->hist[HIST_INF], st->base_new_hist[HIST_INF]);
    uint64_t cum = 0;
    for (int q = 0; q < METRICS_BUCKETS; q++) {
        cum += delta(n->hist[q], st->base_new_hist[q]);
        if (cum * 100 >= total * 99)
            return metrics_bucket_us[q];
    }
    return UINT64_MAX;
}

static void rollback(struct ramps *r, struct ramp_state *st, const struct route_conf *rt, const char *why, int64_t now_ms)
{
    char from[48], to[48];
    st->held = st->step - 1;
    st->rollbacks++;
    st->rolled_back_at_s = now_ms / 1000;
    snprintf(st->reason, sizeof(st->reason), "%s at %s; rolled back to %s", why, step_text(from, sizeof(from), rt, st->step),
             step_text(to, sizeof(to), rt, st->held));
    log_warn("ramp on route %s: %s; held there until the route's ramp changes in the config", st->route, st->reason);
    baseline(r, st, rt); /* step_requests now counts the step it holds */
    publish(st, rt);
}

/* Judge the current step from the counters; roll back on a breach. */
static void judge(struct ramps *r, struct ramp_state *st, const struct route_conf *rt, int64_t now_ms)
{
    const struct ramp_gate_conf *g = &rt->ramp.gate;
    struct side_counts n, o;
    sum_side(r->app, rt->name, rt->split[0].cluster->name, &n);
    uint64_t req = delta(n.requests, st->base_new_req);
    if (req < g->min_requests || req == 0)
        return;
    uint64_t x5xx = delta(n.x5xx, st->base_new_5xx);
    double ratio = (double)x5xx / (double)req;
    char why[160], a[16];

    if (g->max_5xx < CONFIG_BUCKETS && x5xx * CONFIG_BUCKETS > (uint64_t)g->max_5xx * req) {
        snprintf(why, sizeof(why), "5xx ratio %.2f%% of %llu requests > %s", ratio * 100, (unsigned long long)req,
                 pct(a, sizeof(a), g->max_5xx));
        rollback(r, st, rt, why, now_ms);
        return;
    }
    if (g->max_p99_ms > 0) {
        uint64_t p99 = p99_us(&n, st);
        if (p99 > g->max_p99_ms * 1000) {
            if (p99 == UINT64_MAX)
                snprintf(why, sizeof(why), "p99 latency above %llu ms of %llu requests > %llu ms",
                         (unsigned long long)(metrics_bucket_us[METRICS_BUCKETS - 1] / 1000), (unsigned long long)req,
                         (unsigned long long)g->max_p99_ms);
            else
                snprintf(why, sizeof(why), "p99 latency up to %llu ms of %llu requests > %llu ms", (unsigned long long)(p99 / 1000),
                         (unsigned long long)req, (unsigned long long)g->max_p99_ms);
            rollback(r, st, rt, why, now_ms);
            return;
        }
    }
    if (g->vs_old) {
        sum_side(r->app, rt->name, rt->split[1].cluster->name, &o);
        uint64_t old_req = delta(o.requests, st->base_old_req);
        uint64_t old_5xx = delta(o.x5xx, st->base_old_5xx);
        double old_ratio = old_req ? (double)old_5xx / (double)old_req : 0.0;
        if (ratio > old_ratio + g->old_side_margin / 10000.0) {
            snprintf(why, sizeof(why), "5xx ratio %.2f%% of %llu requests > the old side's %.2f%% of %llu requests + %s margin",
                     ratio * 100, (unsigned long long)req, old_ratio * 100, (unsigned long long)old_req,
                     pct(a, sizeof(a), g->old_side_margin));
            rollback(r, st, rt, why, now_ms);
        }
    }
}

/* ---- the timer -------------------------------------------------------- */

/* Bring one entry up to date for rt at now: follow the schedule unless
 * held, re-baseline on a new step. From the timer (the entry is live) also
 * log step changes and judge the gate; from ramps_attach, silently. */
static void update(struct ramps *r, struct ramp_state *st, const struct route_conf *rt, int64_t now_ms, bool from_timer)
{
    if (st->held == NOT_HELD) {
        int k = schedule_step(&rt->ramp, now_ms);
        /* Within one entry the schedule only moves forward; a wall clock
         * stepped back (NTP) must not move sticky users back to the old side. */
        if (k > st->step) {
            st->step = k;
            baseline(r, st, rt);
            if (from_timer)
                log_step(st, rt);
        } else if (from_timer && st->step >= 0 && rt->ramp.gate.enabled) {
            judge(r, st, rt, now_ms);
        }
    }
    publish(st, rt);
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    struct ramps *r = arg;
    int64_t now = ramp_now_ms();
    for (size_t i = 0; i < r->n_entries; i++) {
        struct ramp_state *st = r->entries[i];
        if (st->route_conf != NULL)
            update(r, st, st->route_conf, now, true);
    }
}

/* ---- registry --------------------------------------------------------- */

struct ramps *ramps_new(struct app *app)
{
    struct ramps *r = co_calloc(1, sizeof(*r));
    r->app = app;
    r->tick = event_new(app->base, -1, EV_PERSIST, on_tick, r);
    if (r->tick == NULL) {
        log_error("event_new for the ramp timer failed: out of memory");
        abort();
    }
    struct timeval tv = {TICK_MS / 1000, (TICK_MS % 1000) * 1000};
    event_add(r->tick, &tv);
    return r;
}

static struct ramp_state *find(struct ramps *r, const char *route, uint64_t fingerprint)
{
    for (size_t i = 0; i < r->n_entries; i++)
        if (r->entries[i]->fingerprint == fingerprint && strcmp(r->entries[i]->route, route) == 0)
            return r->entries[i];
    return NULL;
}

/* The live entry of a route name, if any (the running config's). */
static struct ramp_state *find_live(struct ramps *r, const char *route)
{
    for (size_t i = 0; i < r->n_entries; i++)
        if (r->entries[i]->route_conf != NULL && strcmp(r->entries[i]->route, route) == 0)
            return r->entries[i];
    return NULL;
}

static struct ramp_state *create(struct ramps *r, const struct route_conf *rt)
{
    struct ramp_state *st = co_calloc(1, sizeof(*st));
    atomic_init(&st->share, RAMP_SHARE_WEIGHTS);
    atomic_init(&st->version, 0);
    st->route = co_strdup(rt->name);
    st->fingerprint = rt->ramp.fingerprint;
    st->step = -1;
    st->held = NOT_HELD;
    r->entries = co_realloc(r->entries, (r->n_entries + 1) * sizeof(*r->entries));
    r->entries[r->n_entries++] = st;
    return st;
}

void ramps_attach(struct ramps *r, struct config *cfg)
{
    int64_t now = ramp_now_ms();
    for (size_t i = 0; i < cfg->n_routes; i++) {
        struct route_conf *rt = &cfg->routes[i];
        if (!rt->ramp.enabled)
            continue;
        struct ramp_state *st = find(r, rt->name, rt->ramp.fingerprint);
        if (st == NULL)
            st = create(r, rt);
        if (st->route_conf == NULL) {
            /* New, or back in a config after an absence (or from a refused
             * reload): its step counts from now. A live entry is kept up to
             * date by the timer already. Logged by ramps_apply, once the
             * config is sure to run. */
            baseline(r, st, rt);
            update(r, st, rt, now, false);
        }
        rt->ramp_state = st;
    }
}

/* An entry of cfg that was not live before starts: say so. `old` is the
 * route's entry in the previous config, if any (still valid here). */
static void log_start(const struct ramp_state *st, const struct route_conf *rt, const struct ramp_state *old)
{
    char start[32];
    struct tm tm;
    time_t t = (time_t)rt->ramp.start_s;
    gmtime_r(&t, &tm);
    strftime(start, sizeof(start), "%Y-%m-%dT%H:%M:%SZ", &tm);
    if (old != NULL) {
        char held[48];
        if (old->held != NOT_HELD)
            log_info("ramp on route %s changed in the config: its new ramp replaces the one held at %s since a rollback", st->route,
                     step_text(held, sizeof(held), old->route_conf, old->held));
        else
            log_info("ramp on route %s changed in the config: its new ramp replaces the previous one", st->route);
    }
    char now_at[48];
    log_info("ramp on route %s: %zu steps every %llu s from %s, new side %s, old side %s%s; now %s, at %s", st->route,
             rt->ramp.n_steps, (unsigned long long)(rt->ramp.hold_ms / 1000), start, rt->split[0].cluster->name,
             rt->split[1].cluster->name, rt->ramp.gate.enabled ? ", gated" : "", state_name(st, rt),
             step_text(now_at, sizeof(now_at), rt, effective_step(st)));
}

void ramps_apply(struct ramps *r, struct config *cfg)
{
    for (size_t i = 0; i < cfg->n_routes; i++) {
        const struct route_conf *rt = &cfg->routes[i];
        struct ramp_state *st = rt->ramp_state;
        if (st != NULL && st->route_conf == NULL) {
            const struct ramp_state *old = find_live(r, rt->name);
            log_start(st, rt, old);
        }
    }
    for (size_t i = 0; i < r->n_entries; i++)
        r->entries[i]->route_conf = NULL;
    for (size_t i = 0; i < cfg->n_routes; i++)
        if (cfg->routes[i].ramp_state)
            cfg->routes[i].ramp_state->route_conf = &cfg->routes[i];
    config_ref(cfg); /* before the unref: cfg may be the running config */
    if (r->cfg)
        config_unref(r->cfg);
    r->cfg = cfg;
}

/* ---- admin ------------------------------------------------------------ */

void ramps_status_json(struct ramps *r, struct evbuffer *b)
{
    int64_t now = ramp_now_ms();
    bool first = true;
    ADD_LIT(b, "{");
    for (size_t i = 0; i < r->n_entries; i++) {
        const struct ramp_state *st = r->entries[i];
        const struct route_conf *rt = st->route_conf;
        if (rt == NULL)
            continue;
        int k = effective_step(st);
        int sched = schedule_step(&rt->ramp, now);
        if (sched < st->step)
            sched = st->step;
        char p[16];
        struct side_counts n;
        sum_side(r->app, rt->name, rt->split[0].cluster->name, &n);
        if (!first)
            ADD_LIT(b, ",");
        first = false;
        report_json_str(b, st->route);
        evbuffer_add_printf(b, ":{\"step\":%d,\"steps\":%zu,\"share\":\"%s\",\"state\":\"%s\",\"next_step_in_s\":", k,
                            rt->ramp.n_steps, pct(p, sizeof(p), step_share(rt, k)), state_name(st, rt));
        int64_t next = st->held == NOT_HELD ? next_step_in_ms(&rt->ramp, st->step, now) : -1;
        if (next < 0)
            ADD_LIT(b, "null");
        else
            evbuffer_add_printf(b, "%lld", (long long)((next + 999) / 1000));
        evbuffer_add_printf(b, ",\"schedule_step\":%d,\"new_cluster\":", sched);
        report_json_str(b, rt->split[0].cluster->name);
        ADD_LIT(b, ",\"old_cluster\":");
        report_json_str(b, rt->split[1].cluster->name);
        evbuffer_add_printf(b, ",\"rollbacks\":%llu,\"reason\":", (unsigned long long)st->rollbacks);
        report_json_str(b, st->reason);
        ADD_LIT(b, ",\"rolled_back_at_s\":");
        if (st->rollbacks)
            evbuffer_add_printf(b, "%lld", (long long)st->rolled_back_at_s);
        else
            ADD_LIT(b, "null");
        evbuffer_add_printf(b, ",\"step_requests\":%llu,\"step_5xx\":%llu}",
                            (unsigned long long)delta(n.requests, st->base_new_req),
                            (unsigned long long)delta(n.x5xx, st->base_new_5xx));
    }
    ADD_LIT(b, "}");
}

void ramps_metrics(struct ramps *r, struct evbuffer *b)
{
    static const struct {
        const char *name, *type, *help;
    } fam[] = {
        {"cutover_ramp_share_ratio", "gauge",
         "Share of a ramped route's traffic given to its new side (first split cluster) now, 0..1: the ramp's step, or the "
         "written weights before the start or after a rollback to them."},
        {"cutover_ramp_step", "gauge", "Step of the ramp in effect (0-based; -1 = the written weights)."},
        {"cutover_ramp_rolled_back", "gauge", "1 while the ramp is held after its gate rolled it back, else 0."},
        {"cutover_ramp_rollbacks_total", "counter", "Gate breaches that rolled the route's ramp back, since the process started."},
    };
    for (size_t f = 0; f < CO_ARRAY_SIZE(fam); f++) {
        evbuffer_add_printf(b, "# HELP %s %s\n# TYPE %s %s\n", fam[f].name, fam[f].help, fam[f].name, fam[f].type);
        for (size_t i = 0; i < r->n_entries; i++) {
            const struct ramp_state *st = r->entries[i];
            const struct route_conf *rt = st->route_conf;
            if (rt == NULL)
                continue;
            int k = effective_step(st);
            evbuffer_add_printf(b, "%s{route=\"", fam[f].name);
            report_label_value(b, st->route);
            ADD_LIT(b, "\"} ");
            switch (f) {
            case 0:
                evbuffer_add_printf(b, "%.4f\n", step_share(rt, k) / 10000.0);
                break;
            case 1:
                evbuffer_add_printf(b, "%d\n", k);
                break;
            case 2:
                evbuffer_add_printf(b, "%d\n", st->held != NOT_HELD ? 1 : 0);
                break;
            default: {
                /* Over every ramp this route has had, so the counter never
                 * goes down when the ramp changes in the config. */
                uint64_t total = 0;
                for (size_t j = 0; j < r->n_entries; j++)
                    if (strcmp(r->entries[j]->route, st->route) == 0)
                        total += r->entries[j]->rollbacks;
                evbuffer_add_printf(b, "%llu\n", (unsigned long long)total);
            }
            }
        }
    }
}

void ramps_free(struct ramps *r)
{
    if (r == NULL)
        return;
    if (r->tick)
        event_free(r->tick);
    for (size_t i = 0; i < r->n_entries; i++) {
        free(r->entries[i]->route);
        free(r->entries[i]);
    }
    free(r->entries);
    if (r->cfg)
        config_unref(r->cfg);
    free(r);
}
