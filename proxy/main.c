/*
 * main.c - command line, start-up, signals and reload on the main thread.
 *
 *   cutover -c FILE            run
 *   cutover --check -c FILE    validate FILE and exit 0 (valid) or 1
 *   cutover token CLUSTER      print an override token (secret from $CUTOVER_OVERRIDE_SECRET)
 */
#include <errno.h>
#include <event2/event.h>
#include <event2/thread.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../config/config.h"
#include "accesslog.h"
#include "common.h"
#include "decide.h"
#include "worker.h"

struct app {
    const char *config_path;
    struct config *cfg;
    struct worker **workers;
    unsigned n_workers;
    uint64_t generation;
    struct event_base *base;
};

static void usage(FILE *out)
{
    fprintf(out, "usage: cutover -c FILE [--workers N]    run the proxy\n"
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

static void reload(struct app *app)
{
    char err[1024];
    struct config *cfg = NULL;
    if (config_load(app->config_path, &cfg, err, sizeof(err)) != CO_OK) {
        log_error("reload refused, the running config (generation %llu) keeps serving: %s", (unsigned long long)app->generation,
                  err);
        return;
    }
    bool same_listeners = cfg->n_listeners == app->cfg->n_listeners;
    for (size_t i = 0; same_listeners && i < cfg->n_listeners; i++)
        same_listeners = strcmp(cfg->listeners[i].addr.text, app->cfg->listeners[i].addr.text) == 0;
    if (!same_listeners)
        log_warn("reload: listener addresses changed; they take effect on restart");
    cfg->generation = ++app->generation;
    for (unsigned i = 0; i < app->n_workers; i++)
        worker_set_config(app->workers[i], cfg);
    config_unref(app->cfg);
    app->cfg = cfg;
    log_info("reloaded %s: generation %llu", app->config_path, (unsigned long long)cfg->generation);
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    struct app *app = arg;
    if (sig == SIGHUP) {
        reload(app);
        return;
    }
    log_info("signal %d: draining", (int)sig);
    for (unsigned i = 0; i < app->n_workers; i++)
        worker_stop(app->workers[i]);
    event_base_loopexit(app->base, NULL);
}

int main(int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "token") == 0)
        return cmd_token(argc, argv);

    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'}, {"check", no_argument, NULL, 'k'},    {"workers", required_argument, NULL, 'w'},
        {"help", no_argument, NULL, 'h'},         {"version", no_argument, NULL, 'V'}, {NULL, 0, NULL, 0},
    };
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
        printf("%s: ok (%zu listeners, %zu clusters, %zu routes)\n", app.config_path, app.cfg->n_listeners,
               app.cfg->n_clusters, app.cfg->n_routes);
        config_unref(app.cfg);
        return 0;
    }
    app.cfg->generation = app.generation = 1;

    signal(SIGPIPE, SIG_IGN);
    evthread_use_pthreads();
    app.base = event_base_new();
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    app.n_workers = workers_override ? (unsigned)workers_override
                                     : (app.cfg->workers ? app.cfg->workers : (unsigned)(ncpu > 0 ? ncpu : 1));
    if (accesslog_global_start(1) != CO_OK)
        return 1;
    app.workers = co_calloc(app.n_workers, sizeof(*app.workers));
    for (unsigned i = 0; i < app.n_workers; i++) {
        app.workers[i] = worker_new(i, app.cfg);
        if (app.workers[i] == NULL) {
            for (unsigned j = 0; j < i; j++)
                worker_join_free(app.workers[j]);
            return 1;
        }
    }
    for (unsigned i = 0; i < app.n_workers; i++)
        if (worker_start(app.workers[i]) != CO_OK)
            return 1;

    struct event *sigs[3];
    int signums[3] = {SIGTERM, SIGINT, SIGHUP};
    for (int i = 0; i < 3; i++) {
        sigs[i] = evsignal_new(app.base, signums[i], on_signal, &app);
        evsignal_add(sigs[i], NULL);
    }
    for (size_t i = 0; i < app.cfg->n_listeners; i++)
        log_info("listening on %s (%u workers)", app.cfg->listeners[i].addr.text, app.n_workers);

    event_base_dispatch(app.base);

    for (unsigned i = 0; i < app.n_workers; i++)
        worker_join_free(app.workers[i]);
    free(app.workers);
    for (int i = 0; i < 3; i++)
        event_free(sigs[i]);
    event_base_free(app.base);
    config_unref(app.cfg);
    accesslog_global_stop();
    log_info("stopped");
    return 0;
}
