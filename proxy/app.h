/*
 * app.h - the process-wide state owned by the main thread: current config,
 * workers, reload history, drain state. Only the main thread touches it
 * (signals, the config file watch and the admin listener all run on the
 * main thread's event_base).
 */
#ifndef CUTOVER_APP_H
#define CUTOVER_APP_H

#include <stdbool.h>
#include <stdint.h>
#include <time.h>

struct config;
struct worker;
struct event_base;
struct admin;
struct health;
struct ramps;

struct app {
    const char *config_path;
    struct config *cfg; /* newest accepted snapshot (reference held) */
    struct worker **workers;
    unsigned n_workers;
    uint64_t generation; /* 1 for the config at start, +1 per accepted reload */
    uint64_t reloads_ok;
    uint64_t reloads_failed;
    bool last_reload_ok; /* true until a reload fails */
    char last_reload_error[1024];
    time_t last_reload_time; /* wall clock of the last reload attempt, 0 = none */
    time_t started;
    bool draining; /* SIGTERM seen: /ready answers 503 */
    struct event_base *base;
    struct admin *admin;
    struct health *health; /* endpoint state, probes, DNS (health.c) */
    struct ramps *ramps;   /* ramp schedules and gates (ramp.c) */
};

/*
 * Re-read and validate the config file and hand it to the workers. On
 * failure the running config stays, the error is logged and recorded
 * (last_reload_error, reloads_failed). `why` names the trigger for the log
 * ("SIGHUP", "admin", "file change"). Returns CO_OK / CO_ERROR.
 */
int app_reload(struct app *app, const char *why);

#endif
