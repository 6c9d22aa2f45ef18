/*
 * ramp.h - routes whose new-side share rises on a schedule and falls back
 * by itself when the new side misbehaves.
 *
 * The schedule is a function of the wall clock (config `ramp.start`,
 * `steps`, `hold`), so every replica computes the same share without
 * talking to the others. The gate is judged per replica: the main thread
 * sums this process's per-worker route counters for the current step and,
 * on a breach, moves the route back one step and holds it there until the
 * route's ramp (its fingerprint) changes in the config.
 *
 * One struct ramp_state per (route name, ramp fingerprint), owned by the
 * registry (struct ramps, main thread), never freed before the process
 * ends, pointed to by route_conf.ramp_state of every snapshot. Workers only
 * read `share` and `version`.
 */
#ifndef CUTOVER_RAMP_H
#define CUTOVER_RAMP_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "../config/config.h"

struct app;
struct ramps;
struct evbuffer;

/* share value meaning "the ramp has not started: use the written weights". */
#define RAMP_SHARE_WEIGHTS UINT32_MAX

struct ramp_state {
    /* Read by workers (acquire on version, then share). */
    _Atomic uint32_t share;   /* basis points of split[0] now, or RAMP_SHARE_WEIGHTS */
    _Atomic uint32_t version; /* incremented after every change of share */

    /* Main thread only (ramp.c). */
    char *route;
    uint64_t fingerprint;
    int step; /* current step index, -1 before start */
    int held; /* -2 = not held; else the step (-1 = written weights) it rolled back to */
    uint64_t rollbacks;
    char reason[256];         /* why it rolled back, "" when it did not */
    int64_t rolled_back_at_s; /* wall clock (virtual under --time-scale) */
    /* Counters at the start of the current step (sums over workers) for
     * the gate: requests and 5xx of split[0] and split[1], and split[0]'s
     * duration histogram. */
    uint64_t base_new_req, base_new_5xx, base_old_req, base_old_5xx;
    uint64_t base_new_hist[16];
    const struct route_conf *route_conf; /* of the running config, NULL when retired */
};

/*
 * The ramp clock: wall-clock unix milliseconds, running `scale` times
 * faster than real time from the moment ramp_clock_init() was called
 * (scale 1 = the real wall clock). `--time-scale` exists for tests only.
 */
void ramp_clock_init(double scale);
int64_t ramp_now_ms(void);

/* Registry; ticks on app->base (every 250 ms of real time), reads the
 * workers' route_stats through app. */
struct ramps *ramps_new(struct app *app);

/* Set route_conf.ramp_state for every route of cfg with a ramp (new entry
 * when the route name or fingerprint is new), with share already computed
 * for now - before cfg is handed to workers. */
void ramps_attach(struct ramps *r, struct config *cfg);

/* cfg is now running: entries not in it are retired. */
void ramps_apply(struct ramps *r, struct config *cfg);

/* /status: a JSON object keyed by route name:
 * {"canary":{"step":2,"steps":5,"share":"25.00%","state":"ramping"|"before start"|"done"|"rolled back",
 *   "next_step_in_s":12,"rollbacks":1,"reason":"...","step_requests":140,"step_5xx":0}} */
void ramps_status_json(struct ramps *r, struct evbuffer *b);

/* /metrics: cutover_ramp_share_ratio{route}, cutover_ramp_step{route},
 * cutover_ramp_rolled_back{route} (0/1), cutover_ramp_rollbacks_total{route}. */
void ramps_metrics(struct ramps *r, struct evbuffer *b);

void ramps_free(struct ramps *r);

#endif
