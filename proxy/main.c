/*
 * main.c - command line, start-up, signals and reload on the main thread.
 *
 *   cutover -c FILE            run
 *   cutover --check -c FILE    validate FILE and exit 0 (valid) or 1
 *   cutover token CLUSTER      print an override token (secret from $CUTOVER_OVERRIDE_SECRET)
 */
#include <errno.h>
#include <event2/event.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "../config/config.h"
#include "accesslog.h"
#include "admin.h"
#include "app.h"
#include "common.h"
#include "decide.h"
#include "health.h"
#include "ramp.h"
#include "worker.h"

/* How often the config file's identity is checked (a ConfigMap update swaps
 * a symlink: stat() follows it, so the new target's inode shows the change). */
#define WATCH_INTERVAL_MS 2000

struct file_id {
    dev_t dev;
    ino_t ino;
    off_t size;
    struct timespec mtime;
    bool ok;
};

static struct file_id watched;
static struct event *watch_ev;
static struct event *exit_poll_ev;
static uint64_t drain_deadline_ms;

static struct file_id file_identity(const char *path)
{
    struct file_id id = {0};
    struct stat st;
    if (stat(path, &st) == 0) {
        id.dev = st.st_dev;
        id.ino = st.st_ino;
        id.size = st.st_size;
        id.mtime = st.st_mtim;
        id.ok = true;
    }
    return id;
}

static bool same_file(const struct file_id *a, const struct file_id *b)
{
    return a->ok == b->ok && a->dev == b->dev && a->ino == b->ino && a->size == b->size && a->mtime.tv_sec == b->mtime.tv_sec &&
           a->mtime.tv_nsec == b->mtime.tv_nsec;
}

/* Loud about choices that weaken security, every time a config is taken. */
static void warn_insecure(const struct config *cfg)
{
    for (size_t i = 0; i < cfg->n_clusters; i++)
        if (cfg->clusters[i].tls.enabled && !cfg->clusters[i].tls.verify)
            log_warn("cluster %s: upstream TLS certificate verification is OFF (tls.verify: false); anyone on the path "
                     "can impersonate this upstream",
                     cfg->clusters[i].name);
}

static void usage(FILE *out)
{
    fprintf(out, "usage: cutover -c FILE [--workers N]    run the proxy\n"
                 "            [--time-scale X]              ramp clock runs X times faster (tests only)\n"
                 "       cutover --check -c FILE           validate FILE, exit 0 if valid, 1 if not\n"
                 "       cutover token CLUSTER             print an override token for CLUSTER\n"
                 "                                         (secret from $CUTOVER_OVERRIDE_SECRET)\n"
                 "       cutover --help | --version\n"
                 "\n"
                 "Signals: SIGHUP reloads the config (a bad file is refused, the running one keeps serving);\n"
                 "SIGTERM/SIGINT stop accepting, finish in-flight requests, exit 0.\n"
                 "Access log: one JSON line per request on stdout; diagnostics on stderr.\n");
}

static int cmd_token(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "cutover token: expected exactly one CLUSTER name\n");
        return 2;
    }
    const char *secret = getenv("CUTOVER_OVERRIDE_SECRET");
    if (secret == NULL || *secret == '\0') {
        fprintf(stderr, "cutover token: set CUTOVER_OVERRIDE_SECRET to the override secret of the route\n");
        return 1;
    }
    char out[512];
    if (decide_token(secret, strlen(secret), argv[2], out, sizeof(out)) != CO_OK) {
        fprintf(stderr, "cutover token: cluster name too long\n");
        return 1;
    }
    printf("%s\n", out);
    return 0;
}

/* Record and log a refused reload; the running config stays. */
static int refuse_reload(struct app *app, const char *why, const char *err)
{
    app->reloads_failed++;
    app->last_reload_ok = false;
    snprintf(app->last_reload_error, sizeof(app->last_reload_error), "%s", err);
    log_error("reload refused (%s), the running config (generation %llu) keeps serving: %s", why,
              (unsigned long long)app->generation, err);
    return CO_ERROR;
}

int app_reload(struct app *app, const char *why)
{
    char err[1024];
    struct config *cfg = NULL;
    if (app->draining) {
        snprintf(app->last_reload_error, sizeof(app->last_reload_error), "draining for shutdown: reloads are refused");
        log_warn("reload refused (%s): draining for shutdown, the running config stays", why);
        return CO_ERROR;
    }
    app->last_reload_time = time(NULL);
    watched = file_identity(app->config_path);
    if (config_load(app->config_path, &cfg, err, sizeof(err)) != CO_OK)
        return refuse_reload(app, why, err);
    /* Endpoint state (health, DNS) for the new snapshot before anything
     * else can refuse it: nameservers are fixed at start. */
    if (health_attach(app->health, cfg, err, sizeof(err)) != CO_OK) {
        config_unref(cfg);
        return refuse_reload(app, why, err);
    }
    /* New listener addresses: bind them now, per worker, so a port that is
     * taken refuses the reload instead of failing later in a worker. */
    int **fds = co_calloc(app->n_workers, sizeof(*fds));
    for (unsigned i = 0; i < app->n_workers; i++) {
        fds[i] = co_malloc((cfg->n_listeners ? cfg->n_listeners : 1) * sizeof(int));
        for (size_t j = 0; j < cfg->n_listeners; j++)
            fds[i][j] = -1;
    }
    for (size_t j = 0; j < cfg->n_listeners; j++) {
        bool known = false;
        for (size_t k = 0; k < app->cfg->n_listeners && !known; k++)
            known = strcmp(cfg->listeners[j].addr.text, app->cfg->listeners[k].addr.text) == 0;
        for (unsigned i = 0; i < app->n_workers && !known; i++) {
            char bind_err[256];
            fds[i][j] = worker_bind(&cfg->listeners[j].addr, bind_err, sizeof(bind_err));
            if (fds[i][j] < 0) {
                snprintf(err, sizeof(err), "%s: %s", app->config_path, bind_err);
                for (unsigned a = 0; a < app->n_workers; a++) {
                    for (size_t b = 0; b < cfg->n_listeners; b++)
                        if (fds[a][b] >= 0)
                            close(fds[a][b]);
                    free(fds[a]);
                }
                free(fds);
                config_unref(cfg);
                return refuse_reload(app, why, err);
            }
        }
    }
    if (cfg->admin.enabled != app->cfg->admin.enabled ||
        (cfg->admin.enabled && strcmp(cfg->admin.addr.text, app->cfg->admin.addr.text) != 0) ||
        (cfg->admin.token == NULL) != (app->cfg->admin.token == NULL) ||
        (cfg->admin.token && app->cfg->admin.token && strcmp(cfg->admin.token, app->cfg->admin.token) != 0))
        log_warn("reload: admin address changed or admin token changed; the admin listener keeps its start-up address and "
                 "token until restart");
    warn_insecure(cfg);
    ramps_attach(app->ramps, cfg);
    cfg->generation = ++app->generation;
    for (unsigned i = 0; i < app->n_workers; i++)
        worker_set_config(app->workers[i], cfg, fds[i]);
    free(fds);
    config_unref(app->cfg);
    app->cfg = cfg;
    health_apply(app->health, cfg);
    ramps_apply(app->ramps, cfg);
    app->reloads_ok++;
    app->last_reload_ok = true;
    app->last_reload_error[0] = '\0';
    log_info("reloaded %s (%s): generation %llu", app->config_path, why, (unsigned long long)cfg->generation);
    return CO_OK;
}

static void on_watch(evutil_socket_t fd, short what, void *arg)
{
    struct app *app = arg;
    struct file_id now = file_identity(app->config_path);
    if (now.ok && !same_file(&now, &watched))
        app_reload(app, "file change");
    else if (!now.ok)
        watched = now;
}

/* While draining: exit the main loop once every worker has stopped. */
static void on_exit_poll(evutil_socket_t fd, short what, void *arg)
{
    struct app *app = arg;
    unsigned running = 0;
    for (unsigned i = 0; i < app->n_workers; i++)
        running += !atomic_load(&app->workers[i]->exited);
    if (running == 0)
        event_base_loopexit(app->base, NULL);
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    struct app *app = arg;
    if (sig == SIGHUP) {
        app_reload(app, "SIGHUP");
        return;
    }
    if (app->draining) {
        log_info("signal %d again: already draining", (int)sig);
        return;
    }
    log_info("signal %d: draining (up to %llu ms): no new connections, in-flight requests finish", (int)sig,
             (unsigned long long)app->cfg->timeouts.drain_ms);
    app->draining = true;
    drain_deadline_ms = co_now_ms() + app->cfg->timeouts.drain_ms;
    for (unsigned i = 0; i < app->n_workers; i++)
        worker_stop(app->workers[i]);
    struct timeval tv = {0, 50 * 1000};
    exit_poll_ev = event_new(app->base, -1, EV_PERSIST, on_exit_poll, app);
    event_add(exit_poll_ev, &tv);
}

int main(int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "token") == 0)
        return cmd_token(argc, argv);

    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'},
        {"check", no_argument, NULL, 'k'},
        {"workers", required_argument, NULL, 'w'},
        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'},
        {"time-scale", required_argument, NULL, 't'},
        {NULL, 0, NULL, 0},
    };
    double time_scale = 1.0;
    struct app app = {0};
    bool check = false;
    long workers_override = 0;
    int opt;
    while ((opt = getopt_long(argc, argv, "c:w:hV", opts, NULL)) != -1) {
        switch (opt) {
        case 'c':
            app.config_path = optarg;
            break;
        case 'k':
            check = true;
            break;
        case 'w': {
            char *end;
            workers_override = strtol(optarg, &end, 10);
            if (*end || workers_override < 1 || workers_override > 256) {
                fprintf(stderr, "cutover: --workers expects 1..256\n");
                return 2;
            }
            break;
        }
        case 't': {
            char *end;
            time_scale = strtod(optarg, &end);
            if (*end || !(time_scale > 0 && time_scale <= 1e6)) {
                fprintf(stderr, "cutover: --time-scale expects a number in (0, 1000000]\n");
                return 2;
            }
            break;
        }
        case 'h':
            usage(stdout);
            return 0;
        case 'V':
            printf("cutover %s\n", CUTOVER_VERSION);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind != argc || app.config_path == NULL) {
        usage(stderr);
        return 2;
    }

    char err[1024];
    if (config_load(app.config_path, &app.cfg, err, sizeof(err)) != CO_OK) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    if (check) {
        printf("%s: ok (%zu listeners, %zu clusters, %zu routes)\n", app.config_path, app.cfg->n_listeners, app.cfg->n_clusters,
               app.cfg->n_routes);
        config_unref(app.cfg);
        return 0;
    }
    warn_insecure(app.cfg);
    app.cfg->generation = app.generation = 1;
    app.last_reload_ok = true;
    app.started = time(NULL);

    signal(SIGPIPE, SIG_IGN);
    /* No evthread_use_pthreads(): every event_base is used by one thread
     * only (workers are woken through an eventfd), so libevent needs no
     * locks on the request path. */
    app.base = event_base_new();
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    app.n_workers =
        workers_override ? (unsigned)workers_override : (app.cfg->workers ? app.cfg->workers : (unsigned)(ncpu > 0 ? ncpu : 1));
    if (accesslog_global_start(1) != CO_OK)
        return 1;
    ramp_clock_init(time_scale);
    if (time_scale != 1.0)
        log_warn("--time-scale %g: the ramp clock runs %g times faster than real time (for tests only)", time_scale, time_scale);
    if ((app.health = health_new(app.base, app.cfg, err, sizeof(err))) == NULL ||
        health_attach(app.health, app.cfg, err, sizeof(err)) != CO_OK) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    health_apply(app.health, app.cfg);
    /* First DNS answers before serving, so start-up does not answer 503
     * for names; bounded by the query timeout. */
    health_settle(app.health, app.cfg->dns.timeout_ms + 500);
    app.ramps = ramps_new(&app);
    ramps_attach(app.ramps, app.cfg);
    app.workers = co_calloc(app.n_workers, sizeof(*app.workers));
    for (unsigned i = 0; i < app.n_workers; i++) {
        app.workers[i] = worker_new(i, app.cfg);
        if (app.workers[i] == NULL) {
            for (unsigned j = 0; j < i; j++)
                worker_join_free(app.workers[j]);
            return 1;
        }
    }
    struct event *sigs[3];
    int signums[3] = {SIGTERM, SIGINT, SIGHUP};
    for (int i = 0; i < 3; i++) {
        sigs[i] = evsignal_new(app.base, signums[i], on_signal, &app);
        evsignal_add(sigs[i], NULL);
    }
    for (unsigned i = 0; i < app.n_workers; i++)
        if (worker_start(app.workers[i]) != CO_OK)
            return 1;
    ramps_apply(app.ramps, app.cfg);

    for (size_t i = 0; i < app.cfg->n_listeners; i++)
        log_info("listening on %s (%u workers)", app.cfg->listeners[i].addr.text, app.n_workers);
    if (app.cfg->admin.enabled && (app.admin = admin_new(&app)) == NULL)
        return 1;
    watched = file_identity(app.config_path);
    watch_ev = event_new(app.base, -1, EV_PERSIST, on_watch, &app);
    struct timeval wtv = {WATCH_INTERVAL_MS / 1000, (WATCH_INTERVAL_MS % 1000) * 1000};
    event_add(watch_ev, &wtv);

    event_base_dispatch(app.base);
    admin_free(app.admin);
    event_free(watch_ev);
    if (exit_poll_ev)
        event_free(exit_poll_ev);

    for (unsigned i = 0; i < app.n_workers; i++)
        worker_join_free(app.workers[i]);
    free(app.workers);
    app.workers = NULL;
    app.n_workers = 0;
    ramps_free(app.ramps);
    health_free(app.health);
    for (int i = 0; i < 3; i++)
        event_free(sigs[i]);
    event_base_free(app.base);
    config_unref(app.cfg);
    accesslog_global_stop();
    log_info("stopped");
    return 0;
}
