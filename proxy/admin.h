/*
 * admin.h - the admin listener (main thread): GET /metrics (Prometheus text),
 * GET /status (JSON), GET /ready, GET /live, POST /reload. Calls that change
 * state need "Authorization: Bearer <token>" when admin.token is set; the
 * config refuses a non-loopback admin address without a token.
 */
#ifndef CUTOVER_ADMIN_H
#define CUTOVER_ADMIN_H

struct app;
struct admin;
struct evbuffer;

/* Bind the admin listener from app->cfg->admin. NULL (and a log line) on failure. */
struct admin *admin_new(struct app *app);
void admin_free(struct admin *a);

/* Write the Prometheus exposition / the status JSON into out (also used by tests). */
void admin_metrics(struct app *app, struct evbuffer *out);
void admin_status(struct app *app, struct evbuffer *out);

#endif
