/*
 * report.h - text helpers shared by the /status (JSON) and /metrics
 * (Prometheus) writers of admin.c, health.c and ramp.c. Kept apart from
 * admin.c so that code linking health.c or ramp.c (the fuzzers) does not
 * pull in the admin listener.
 */
#ifndef CUTOVER_REPORT_H
#define CUTOVER_REPORT_H

struct evbuffer;

/* A JSON string, quotes included. */
void report_json_str(struct evbuffer *b, const char *s);

/* A Prometheus label value without its quotes: \\, \" and \n escaped. */
void report_label_value(struct evbuffer *b, const char *s);

#endif
