/*
 * report.c - text helpers for /status and /metrics.
 */
#include "report.h"

#include <event2/buffer.h>
#include <string.h>

#include "accesslog.h"
#include "common.h"

void report_json_str(struct evbuffer *b, const char *s)
{
    ADD_LIT(b, "\"");
    accesslog_json_str(b, s, strlen(s));
    ADD_LIT(b, "\"");
}

void report_label_value(struct evbuffer *b, const char *s)
{
    for (; *s; s++) {
        if (*s == '\\')
            ADD_LIT(b, "\\\\");
        else if (*s == '"')
            ADD_LIT(b, "\\\"");
        else if (*s == '\n')
            ADD_LIT(b, "\\n");
        else
            evbuffer_add(b, s, 1);
    }
}
