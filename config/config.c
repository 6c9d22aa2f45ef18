/*
 * config.c - load and validate the YAML configuration into a snapshot.
 *
 * Two passes. First, libyaml's event API builds a small tree of our own
 * (struct ynode): that is where untrusted input is bounded - input size,
 * nesting depth, node count, value length - aliases are refused (a few
 * bytes of "billion laughs" would otherwise expand into gigabytes), and
 * ${NAME} is substituted in every value (never in keys). Second, the tree
 * is walked into a struct config; every key is checked, and the first
 * problem becomes one line "FILE:LINE:COLUMN: what, expected what".
 * Endpoint host names are checked, never resolved: proxy/health.c resolves
 * them at run time, so loading never waits on DNS.
 *
 * The snapshot is allocated before the walk and filled in place, with
 * arrays zeroed at their final size, so a single config_free() releases
 * a partly built snapshot on any error path.
 */
#include "config/config.h"
#include "proxy/common.h"
#include "tls/tls.h"

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <yaml.h>

#define CONFIG_MAX_INPUT (1024u * 1024u) /* bytes of YAML */
#define MAX_DEPTH 32u                    /* nested mappings/lists; the schema needs 5 */
#define MAX_NODES 100000u                /* scalars + collections in the document */
#define MAX_VALUE (64u * 1024u)          /* bytes of one value, after ${NAME} substitution */
#define MAX_VAR_NAME 255u                /* bytes of NAME in ${NAME} */
#define MAX_SPLIT 16u
#define MAX_WEIGHT 1000000u
#define MAX_NAME 64u      /* cluster and route names */
#define MAX_TOKEN 256u    /* header and cookie names */
#define MAX_HOSTNAME 253u /* RFC 1035 §2.3.4, without the trailing dot */
#define MAX_PATH 4096u

#define MAX_NAMESERVERS 16u
#define MAX_RAMP_STEPS 64u
#define KIB ((uint64_t)1024)
#define MIB (KIB * 1024)
#define GIB (MIB * 1024)
#define MAX_BUFFERED_BODY (16 * MIB) /* retry.max_body, mirror.max_body */

#define DAY_MS ((uint64_t)86400 * 1000)

/* ------------------------------------------------------------------------- */
/* The intermediate tree. */

enum ynode_type {
    YN_SCALAR,
    YN_LIST,
    YN_MAP,
};

struct ynode {
    enum ynode_type type;
    unsigned line, column; /* 1-based, from libyaml's start_mark */
    bool plain;            /* scalar written without quotes (or block style) */
    char *value;           /* scalar bytes, NUL-terminated (may hold NULs inside) */
    size_t len;
    struct ynode **kids; /* list: items; map: key, value, key, value... */
    size_t n_kids, cap_kids;
};

struct loader {
    const char *file;
    char *err;
    size_t errlen;
    bool failed;
    size_t n_nodes;
    struct config *cfg;
};

/* ------------------------------------------------------------------------- */
/* Errors: one line, the first problem wins. */

static void one_line(char *s)
{
    for (; *s != '\0'; s++)
        if (*s == '\n' || *s == '\r')
            *s = ' ';
}

static void set_errv(struct loader *ld, unsigned line, unsigned column, const char *fmt, va_list ap)
{
    if (ld->failed)
        return;
    ld->failed = true;
    if (ld->err == NULL || ld->errlen == 0)
        return;
    int off = line > 0 ? snprintf(ld->err, ld->errlen, "%s:%u:%u: ", ld->file, line, column)
                       : snprintf(ld->err, ld->errlen, "%s: ", ld->file);
    if (off >= 0 && (size_t)off < ld->errlen)
        vsnprintf(ld->err + off, ld->errlen - (size_t)off, fmt, ap);
    one_line(ld->err);
}

__attribute__((format(printf, 4, 5))) static int fail_at(struct loader *ld, unsigned line, unsigned column, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    set_errv(ld, line, column, fmt, ap);
    va_end(ap);
    return CO_ERROR;
}

__attribute__((format(printf, 3, 4))) static int fail(struct loader *ld, const struct ynode *n, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    set_errv(ld, n->line, n->column, fmt, ap);
    va_end(ap);
    return CO_ERROR;
}

/* Render untrusted bytes for a message: quoted, escaped, shortened. */
#define QUOTE_MAX 64u
#define QUOTE_BUF (QUOTE_MAX * 4u + 8u)

static const char *quote(char *buf, const char *s, size_t len)
{
    size_t o = 0;
    buf[o++] = '"';
    for (size_t i = 0; i < len && i < QUOTE_MAX; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') {
            buf[o++] = '\\';
            buf[o++] = (char)c;
        } else if (c < 0x20 || c == 0x7f) {
            o += (size_t)snprintf(buf + o, 5, "\\x%02x", c);
        } else {
            buf[o++] = (char)c; /* UTF-8 bytes pass through */
        }
    }
    if (len > QUOTE_MAX) {
        memcpy(buf + o, "...", 3);
        o += 3;
    }
    buf[o++] = '"';
    buf[o] = '\0';
    return buf;
}

static const char *quote_node(char *buf, const struct ynode *n)
{
    return quote(buf, n->value, n->len);
}

static bool is_null(const struct ynode *n)
{
    if (n->type != YN_SCALAR || !n->plain)
        return false;
    return n->len == 0 || strcmp(n->value, "~") == 0 || strcmp(n->value, "null") == 0 || strcmp(n->value, "Null") == 0 ||
           strcmp(n->value, "NULL") == 0;
}

static const char *kind(const struct ynode *n)
{
    switch (n->type) {
    case YN_LIST:
        return "a list";
    case YN_MAP:
        return "a mapping";
    case YN_SCALAR:
        break;
    }
    return is_null(n) ? "empty" : "a scalar";
}

/* ------------------------------------------------------------------------- */
/* Pass 1: YAML events -> tree. */

static void ynode_free(struct ynode *n)
{
    if (n == NULL)
        return;
    for (size_t i = 0; i < n->n_kids; i++)
        ynode_free(n->kids[i]);
    free(n->kids);
    free(n->value);
    free(n);
}

static void ynode_add(struct ynode *parent, struct ynode *kid)
{
    if (parent->n_kids == parent->cap_kids) {
        parent->cap_kids = parent->cap_kids ? parent->cap_kids * 2 : 8;
        parent->kids = co_realloc(parent->kids, parent->cap_kids * sizeof(*parent->kids));
    }
    parent->kids[parent->n_kids++] = kid;
}

static bool is_var_start(char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_';
}

static bool is_var_char(char c)
{
    return is_var_start(c) || (c >= '0' && c <= '9');
}

/* First "${" in [p, end), or NULL. */
static const char *find_var(const char *p, const char *end)
{
    for (; p + 1 < end; p++)
        if (p[0] == '$' && p[1] == '{')
            return p;
    return NULL;
}

static bool append(char **out, size_t *len, size_t *cap, const char *s, size_t n)
{
    if (*len + n > MAX_VALUE)
        return false;
    if (*len + n + 1 > *cap) {
        while (*len + n + 1 > *cap)
            *cap *= 2;
        *out = co_realloc(*out, *cap);
    }
    memcpy(*out + *len, s, n);
    *len += n;
    (*out)[*len] = '\0';
    return true;
}

/*
 * Replace every ${NAME} in the scalar n with getenv(NAME). Values from the
 * environment are inserted as they are, never expanded again.
 */
static int substitute(struct loader *ld, struct ynode *n)
{
    char q[QUOTE_BUF];
    if (n->len > MAX_VALUE)
        return fail(ld, n, "value is %zu bytes long, expected at most %u bytes", n->len, MAX_VALUE);
    if (find_var(n->value, n->value + n->len) == NULL)
        return CO_OK;

    size_t cap = n->len + 64, len = 0;
    char *out = co_malloc(cap);
    out[0] = '\0';
    const char *p = n->value, *end = n->value + n->len;
    while (p < end) {
        const char *dollar = find_var(p, end);
        if (dollar == NULL) {
            if (!append(&out, &len, &cap, p, (size_t)(end - p)))
                goto too_long;
            break;
        }
        if (!append(&out, &len, &cap, p, (size_t)(dollar - p)))
            goto too_long;
        const char *name = dollar + 2;
        const char *close = memchr(name, '}', (size_t)(end - name));
        if (close == NULL) {
            free(out);
            return fail(ld, n, "unterminated \"${\" in value %s, expected ${NAME}", quote_node(q, n));
        }
        size_t name_len = (size_t)(close - name);
        bool valid = name_len > 0 && name_len <= MAX_VAR_NAME && is_var_start(name[0]);
        for (size_t i = 1; valid && i < name_len; i++)
            valid = is_var_char(name[i]);
        if (!valid) {
            free(out);
            return fail(ld, n, "bad variable %s, expected ${NAME} with NAME made of letters, digits and _",
                        quote(q, dollar, name_len + 3));
        }
        char var[MAX_VAR_NAME + 1];
        memcpy(var, name, name_len);
        var[name_len] = '\0';
        const char *val = getenv(var);
        if (val == NULL) {
            free(out);
            return fail(ld, n, "environment variable %s is not set, expected it to be set for ${%s}", var, var);
        }
        if (!append(&out, &len, &cap, val, strlen(val)))
            goto too_long;
        p = close + 1;
    }
    free(n->value);
    n->value = out;
    n->len = len;
    return CO_OK;

too_long:
    free(out);
    return fail(ld, n, "value is longer than %u bytes after ${NAME} substitution, expected at most %u bytes", MAX_VALUE, MAX_VALUE);
}

/* libyaml marks are 0-based; reader errors only carry a byte offset. */
static void offset_to_mark(const char *data, size_t len, size_t offset, unsigned *line, unsigned *column)
{
    *line = 1;
    *column = 1;
    for (size_t i = 0; i < offset && i < len; i++) {
        unsigned char c = (unsigned char)data[i];
        if (c == '\n') {
            (*line)++;
            *column = 1;
        } else if ((c & 0xc0) != 0x80) { /* count characters, like libyaml */
            (*column)++;
        }
    }
}

static int syntax_error(struct loader *ld, const yaml_parser_t *parser, const char *data, size_t len)
{
    unsigned line, column;
    const char *problem = parser->problem != NULL ? parser->problem : "unknown error";
    if (parser->error == YAML_MEMORY_ERROR) {
        return fail_at(ld, 0, 0, "out of memory while parsing YAML, expected a smaller document");
    } else if (parser->error == YAML_READER_ERROR) {
        offset_to_mark(data, len, parser->problem_offset, &line, &column);
        if (parser->problem_value != -1)
            return fail_at(ld, line, column, "invalid input: %s (value 0x%x), expected UTF-8 text", problem,
                           (unsigned)parser->problem_value);
        return fail_at(ld, line, column, "invalid input: %s, expected UTF-8 text", problem);
    }
    line = (unsigned)parser->problem_mark.line + 1;
    column = (unsigned)parser->problem_mark.column + 1;
    if (parser->context != NULL)
        return fail_at(ld, line, column, "YAML syntax error: %s %s (started at %u:%u), expected well-formed YAML", problem,
                       parser->context, (unsigned)parser->context_mark.line + 1, (unsigned)parser->context_mark.column + 1);
    return fail_at(ld, line, column, "YAML syntax error: %s, expected well-formed YAML", problem);
}

static struct ynode *node_new(struct loader *ld, enum ynode_type type, const yaml_mark_t *mark)
{
    ld->n_nodes++;
    struct ynode *n = co_calloc(1, sizeof(*n));
    n->type = type;
    n->line = (unsigned)mark->line + 1;
    n->column = (unsigned)mark->column + 1;
    return n;
}

/*
 * Put n in the tree (so it is freed with it, whatever happens next) and
 * check where it landed: mapping keys must be scalars and are taken
 * literally; every other scalar gets ${NAME} substitution.
 */
static int attach(struct loader *ld, struct ynode **root, struct ynode **stack, size_t depth, struct ynode *n)
{
    if (depth == 0) {
        *root = n;
    } else {
        struct ynode *parent = stack[depth - 1];
        bool is_key = parent->type == YN_MAP && parent->n_kids % 2 == 0;
        ynode_add(parent, n);
        if (is_key && n->type != YN_SCALAR)
            return fail(ld, n, "mapping key is %s, expected a plain key such as name:", kind(n));
        if (is_key)
            return CO_OK;
    }
    return n->type == YN_SCALAR ? substitute(ld, n) : CO_OK;
}

static int build_tree(struct loader *ld, const char *data, size_t len, struct ynode **root)
{
    yaml_parser_t parser;
    yaml_event_t ev;
    struct ynode *stack[MAX_DEPTH];
    size_t depth = 0;
    unsigned n_docs = 0;
    int rc = CO_OK;

    *root = NULL;
    if (!yaml_parser_initialize(&parser))
        return fail_at(ld, 0, 0, "cannot initialize the YAML parser, expected enough memory");
    yaml_parser_set_input_string(&parser, (const unsigned char *)data, len);

    for (bool done = false; !done && rc == CO_OK;) {
        if (!yaml_parser_parse(&parser, &ev)) {
            rc = syntax_error(ld, &parser, data, len);
            break;
        }
        struct ynode *n = NULL;
        char q[QUOTE_BUF];
        switch (ev.type) {
        case YAML_STREAM_END_EVENT:
            done = true;
            break;
        case YAML_DOCUMENT_START_EVENT:
            if (++n_docs > 1)
                rc = fail_at(ld, (unsigned)ev.start_mark.line + 1, (unsigned)ev.start_mark.column + 1,
                             "second YAML document, expected a single document");
            break;
        case YAML_ALIAS_EVENT:
            rc = fail_at(ld, (unsigned)ev.start_mark.line + 1, (unsigned)ev.start_mark.column + 1,
                         "alias to anchor %s is not supported, expected values written out (no YAML aliases)",
                         quote(q, (const char *)ev.data.alias.anchor, strlen((const char *)ev.data.alias.anchor)));
            break;
        case YAML_SCALAR_EVENT:
            n = node_new(ld, YN_SCALAR, &ev.start_mark);
            n->value = co_strndup((const char *)ev.data.scalar.value, ev.data.scalar.length);
            n->len = ev.data.scalar.length;
            n->plain = ev.data.scalar.style == YAML_PLAIN_SCALAR_STYLE;
            rc = attach(ld, root, stack, depth, n);
            break;
        case YAML_SEQUENCE_START_EVENT:
        case YAML_MAPPING_START_EVENT:
            n = node_new(ld, ev.type == YAML_MAPPING_START_EVENT ? YN_MAP : YN_LIST, &ev.start_mark);
            rc = attach(ld, root, stack, depth, n);
            if (rc == CO_OK && depth == MAX_DEPTH)
                rc = fail(ld, n, "nesting is deeper than %u levels, expected a flatter document", MAX_DEPTH);
            if (rc == CO_OK)
                stack[depth++] = n;
            break;
        case YAML_SEQUENCE_END_EVENT:
        case YAML_MAPPING_END_EVENT:
            if (depth > 0)
                depth--;
            break;
        default:
            break;
        }
        if (rc == CO_OK && ld->n_nodes > MAX_NODES)
            rc = fail(ld, n, "more than %u values, expected a smaller document", MAX_NODES);
        yaml_event_delete(&ev);
    }
    yaml_parser_delete(&parser);
    if (rc != CO_OK) {
        ynode_free(*root);
        *root = NULL;
    }
    return rc;
}

/* ------------------------------------------------------------------------- */
/* Pass 2 helpers: mappings, scalars, numbers. */

static bool nodes_eq(const struct ynode *a, const struct ynode *b)
{
    return a->type == YN_SCALAR && b->type == YN_SCALAR && a->len == b->len && memcmp(a->value, b->value, a->len) == 0;
}

static bool node_eq(const struct ynode *n, const char *s)
{
    size_t len = strlen(s);
    return n->type == YN_SCALAR && n->len == len && memcmp(n->value, s, len) == 0;
}

/* The value for key in map, or NULL. Keys are unique (check_keys). */
static const struct ynode *mget(const struct ynode *map, const char *key)
{
    for (size_t i = 0; i + 1 < map->n_kids; i += 2)
        if (node_eq(map->kids[i], key))
            return map->kids[i + 1];
    return NULL;
}

static void join(char *buf, size_t size, const char *const *words)
{
    size_t o = 0;
    buf[0] = '\0';
    for (size_t i = 0; words[i] != NULL; i++) {
        int w = snprintf(buf + o, size - o, "%s%s", i ? ", " : "", words[i]);
        if (w < 0 || (size_t)w >= size - o)
            break;
        o += (size_t)w;
    }
}

static int expect_map(struct loader *ld, const struct ynode *n, const char *what, const char *const *keys)
{
    if (n->type == YN_MAP)
        return CO_OK;
    char list[256];
    join(list, sizeof(list), keys);
    return fail(ld, n, "%s is %s, expected a mapping with keys: %s", what, kind(n), list);
}

/* Unknown and repeated keys in map (which is a mapping). */
static int check_keys(struct loader *ld, const struct ynode *map, const char *what, const char *const *allowed)
{
    char q[QUOTE_BUF], list[256];
    for (size_t i = 0; i + 1 < map->n_kids; i += 2) {
        const struct ynode *key = map->kids[i];
        bool known = false;
        for (size_t a = 0; allowed[a] != NULL && !known; a++)
            known = node_eq(key, allowed[a]);
        if (!known) {
            join(list, sizeof(list), allowed);
            return fail(ld, key, "unknown key %s in %s, expected one of: %s", quote_node(q, key), what, list);
        }
        for (size_t j = 0; j < i; j += 2)
            if (nodes_eq(map->kids[j], key))
                return fail(ld, key, "duplicate key %s in %s (first at %u:%u), expected each key once", quote_node(q, key), what,
                            map->kids[j]->line, map->kids[j]->column);
    }
    return CO_OK;
}

static int expect_list(struct loader *ld, const struct ynode *n, const char *what, size_t min, size_t max, const char *of)
{
    if (n->type != YN_LIST)
        return fail(ld, n, "%s is %s, expected a list of %s", what, kind(n), of);
    if (n->n_kids < min)
        return fail(ld, n, "%s is an empty list, expected at least %zu %s", what, min, of);
    if (n->n_kids > max)
        return fail(ld, n, "%s has %zu entries, expected at most %zu %s", what, n->n_kids, max, of);
    return CO_OK;
}

/* A string value; NUL bytes (possible with "\0" escapes) are refused. */
static int get_string(struct loader *ld, const struct ynode *n, const char *what, const char *expected, const char **out)
{
    if (n->type != YN_SCALAR || is_null(n))
        return fail(ld, n, "%s is %s, expected %s", what, kind(n), expected);
    if (strlen(n->value) != n->len)
        return fail(ld, n, "%s contains a NUL byte, expected %s", what, expected);
    *out = n->value;
    return CO_OK;
}

static bool parse_u64(const char *s, size_t len, uint64_t *out)
{
    uint64_t v = 0;
    if (len == 0)
        return false;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        unsigned d = (unsigned)(s[i] - '0');
        if (v > (UINT64_MAX - d) / 10)
            return false;
        v = v * 10 + d;
    }
    *out = v;
    return true;
}

/* An unquoted decimal integer in [min, max]. */
static int get_uint(struct loader *ld, const struct ynode *n, const char *what, uint64_t min, uint64_t max, uint64_t *out)
{
    char q[QUOTE_BUF];
    uint64_t v;
    if (n->type != YN_SCALAR || is_null(n))
        return fail(ld, n, "%s is %s, expected an integer in %" PRIu64 "..%" PRIu64, what, kind(n), min, max);
    if (!n->plain)
        return fail(ld, n, "%s %s is a quoted string, expected an unquoted integer in %" PRIu64 "..%" PRIu64, what,
                    quote_node(q, n), min, max);
    if (!parse_u64(n->value, n->len, &v))
        return fail(ld, n, "%s %s is not an integer, expected an integer in %" PRIu64 "..%" PRIu64, what, quote_node(q, n), min,
                    max);
    if (v < min || v > max)
        return fail(ld, n, "%s %s is out of range, expected an integer in %" PRIu64 "..%" PRIu64, what, quote_node(q, n), min, max);
    *out = v;
    return CO_OK;
}

static int get_u32(struct loader *ld, const struct ynode *n, const char *what, uint32_t min, uint32_t max, uint32_t *out)
{
    uint64_t v;
    if (get_uint(ld, n, what, min, max, &v) != CO_OK)
        return CO_ERROR;
    *out = (uint32_t)v;
    return CO_OK;
}

/* YAML 1.2 core schema booleans, unquoted. */
static int get_bool(struct loader *ld, const struct ynode *n, const char *what, bool *out)
{
    char q[QUOTE_BUF];
    if (n->type == YN_SCALAR && n->plain) {
        if (node_eq(n, "true") || node_eq(n, "True") || node_eq(n, "TRUE")) {
            *out = true;
            return CO_OK;
        }
        if (node_eq(n, "false") || node_eq(n, "False") || node_eq(n, "FALSE")) {
            *out = false;
            return CO_OK;
        }
    }
    if (n->type != YN_SCALAR || is_null(n))
        return fail(ld, n, "%s is %s, expected true or false", what, kind(n));
    return fail(ld, n, "%s %s is not a boolean, expected true or false", what, quote_node(q, n));
}

int config_parse_duration(const char *s, uint64_t *ms)
{
    static const struct {
        const char *unit;
        uint64_t ms;
    } units[] = {{"ms", 1}, {"s", 1000}, {"m", 60 * 1000}, {"h", 3600 * 1000}, {"d", DAY_MS}};
    size_t digits = 0;
    uint64_t v;

    if (s == NULL)
        return CO_ERROR;
    while (s[digits] >= '0' && s[digits] <= '9')
        digits++;
    if (!parse_u64(s, digits, &v))
        return CO_ERROR;
    for (size_t i = 0; i < CO_ARRAY_SIZE(units); i++) {
        if (strcmp(s + digits, units[i].unit) == 0) {
            if (v > UINT64_MAX / units[i].ms)
                return CO_ERROR;
            if (ms != NULL)
                *ms = v * units[i].ms;
            return CO_OK;
        }
    }
    return CO_ERROR;
}

/* ms in the largest unit that divides it exactly: "30d", "1h", "100ms". */
static const char *duration_text(char *buf, size_t size, uint64_t ms)
{
    static const struct {
        const char *unit;
        uint64_t ms;
    } units[] = {{"d", DAY_MS}, {"h", 3600 * 1000}, {"m", 60 * 1000}, {"s", 1000}};
    for (size_t i = 0; i < CO_ARRAY_SIZE(units); i++) {
        if (ms != 0 && ms % units[i].ms == 0) {
            snprintf(buf, size, "%" PRIu64 "%s", ms / units[i].ms, units[i].unit);
            return buf;
        }
    }
    snprintf(buf, size, "%" PRIu64 "ms", ms);
    return buf;
}

static int get_duration(struct loader *ld, const struct ynode *n, const char *what, uint64_t min_ms, uint64_t max_ms, uint64_t *out)
{
    static const char expected[] = "a duration such as 250ms, 5s, 2m, 1h or 30d";
    char q[QUOTE_BUF], max[32];
    const char *s = NULL;
    uint64_t v;
    if (get_string(ld, n, what, expected, &s) != CO_OK)
        return CO_ERROR;
    if (config_parse_duration(s, &v) != CO_OK)
        return fail(ld, n, "%s %s is not a duration, expected %s", what, quote_node(q, n), expected);
    if (v < min_ms || v > max_ms)
        return fail(ld, n, "%s %s is out of range, expected a duration from %" PRIu64 "ms to %s", what, quote_node(q, n), min_ms,
                    duration_text(max, sizeof(max), max_ms));
    *out = v;
    return CO_OK;
}

/* Sizes: a whole number of bytes, or with a binary unit (64KiB, 16MiB, 1GiB).
 * Decimal units (KB, MB) are refused rather than guessed at. */
static bool parse_size(const char *s, uint64_t *bytes)
{
    static const struct {
        const char *unit;
        uint64_t bytes;
    } units[] = {{"", 1}, {"KiB", KIB}, {"MiB", MIB}, {"GiB", GIB}};
    size_t digits = 0;
    uint64_t v;
    while (s[digits] >= '0' && s[digits] <= '9')
        digits++;
    if (!parse_u64(s, digits, &v))
        return false;
    for (size_t i = 0; i < CO_ARRAY_SIZE(units); i++) {
        if (strcmp(s + digits, units[i].unit) == 0) {
            if (v > UINT64_MAX / units[i].bytes)
                return false;
            *bytes = v * units[i].bytes;
            return true;
        }
    }
    return false;
}

/* bytes in the largest binary unit that divides it exactly: "16MiB", "100". */
static const char *size_text(char *buf, size_t size, uint64_t bytes)
{
    if (bytes != 0 && bytes % GIB == 0)
        snprintf(buf, size, "%" PRIu64 "GiB", bytes / GIB);
    else if (bytes != 0 && bytes % MIB == 0)
        snprintf(buf, size, "%" PRIu64 "MiB", bytes / MIB);
    else if (bytes != 0 && bytes % KIB == 0)
        snprintf(buf, size, "%" PRIu64 "KiB", bytes / KIB);
    else
        snprintf(buf, size, "%" PRIu64, bytes);
    return buf;
}

static int get_size(struct loader *ld, const struct ynode *n, const char *what, uint64_t max, uint64_t *out)
{
    static const char expected[] = "a size in bytes such as 65536, 64KiB or 16MiB";
    char q[QUOTE_BUF], text[32];
    const char *s = NULL;
    uint64_t v;
    if (get_string(ld, n, what, expected, &s) != CO_OK)
        return CO_ERROR;
    if (!parse_size(s, &v))
        return fail(ld, n, "%s %s is not a size, expected %s", what, quote_node(q, n), expected);
    if (v > max)
        return fail(ld, n, "%s %s is out of range, expected a size from 0 to %s", what, quote_node(q, n),
                    size_text(text, sizeof(text), max));
    *out = v;
    return CO_OK;
}

enum parse_result {
    PARSE_OK,
    PARSE_SYNTAX, /* not the expected form */
    PARSE_RANGE,  /* the right form, too large */
};

/*
 * DIGITS[.D[D...]] with at most `decimals` decimals, scaled by 10^decimals
 * ("12.5" with 2 decimals -> 1250). Values above `max` (after scaling) are
 * PARSE_RANGE; `end` gets the first byte after the number.
 */
static enum parse_result parse_fixed(const char *s, unsigned decimals, uint64_t max, uint64_t *out, const char **end)
{
    size_t digits = 0;
    uint64_t whole, frac = 0, scale = 1;
    for (unsigned i = 0; i < decimals; i++)
        scale *= 10;
    while (s[digits] >= '0' && s[digits] <= '9')
        digits++;
    if (digits == 0)
        return PARSE_SYNTAX;
    const char *p = s + digits;
    if (*p == '.') {
        size_t n = 0;
        p++;
        while (p[n] >= '0' && p[n] <= '9')
            n++;
        if (n == 0 || n > decimals)
            return PARSE_SYNTAX;
        for (size_t i = 0; i < decimals; i++)
            frac = frac * 10 + (i < n ? (uint64_t)(p[i] - '0') : 0);
        p += n;
    }
    *end = p;
    if (!parse_u64(s, digits, &whole) || whole > max / scale || whole * scale + frac > max)
        return PARSE_RANGE;
    *out = whole * scale + frac;
    return PARSE_OK;
}

/* "12.5%" or "12.5" -> 1250 basis points. */
static enum parse_result parse_percent(const char *s, uint32_t *bp)
{
    uint64_t v;
    const char *end = NULL;
    enum parse_result r = parse_fixed(s, 2, CONFIG_BUCKETS, &v, &end);
    if (r == PARSE_SYNTAX)
        return r;
    /* A number too large is "out of range" only when the rest is well formed. */
    if (*end == '%')
        end++;
    if (*end != '\0')
        return PARSE_SYNTAX;
    if (r == PARSE_OK)
        *bp = (uint32_t)v;
    return r;
}

int config_parse_percent(const char *s, uint32_t *bp)
{
    uint32_t v;
    if (s == NULL || parse_percent(s, &v) != PARSE_OK)
        return CO_ERROR;
    if (bp != NULL)
        *bp = v;
    return CO_OK;
}

static int get_percent(struct loader *ld, const struct ynode *n, const char *what, uint32_t *out)
{
    static const char expected[] = "a percentage from 0% to 100% with at most two decimals, such as 20%, 0.5% or 100";
    char q[QUOTE_BUF];
    const char *s = NULL;
    if (get_string(ld, n, what, expected, &s) != CO_OK)
        return CO_ERROR;
    switch (parse_percent(s, out)) {
    case PARSE_OK:
        return CO_OK;
    case PARSE_RANGE:
        return fail(ld, n, "%s %s is above 100%%, expected %s", what, quote_node(q, n), expected);
    case PARSE_SYNTAX:
        break;
    }
    return fail(ld, n, "%s %s is not a percentage, expected %s", what, quote_node(q, n), expected);
}

/* A ratio 0..1 with at most four decimals ("0.01") or a percentage ("1%"), in basis points. */
static int get_ratio(struct loader *ld, const struct ynode *n, const char *what, uint32_t *out)
{
    static const char expected[] = "a ratio from 0 to 1 such as 0.01 (at most four decimals), or a percentage such as 1%";
    char q[QUOTE_BUF];
    const char *s = NULL;
    enum parse_result r;
    if (get_string(ld, n, what, expected, &s) != CO_OK)
        return CO_ERROR;
    size_t len = strlen(s);
    if (len > 0 && s[len - 1] == '%') {
        r = parse_percent(s, out);
    } else {
        uint64_t v;
        const char *end = NULL;
        r = parse_fixed(s, 4, CONFIG_BUCKETS, &v, &end);
        if (r != PARSE_SYNTAX && *end != '\0')
            r = PARSE_SYNTAX;
        if (r == PARSE_OK)
            *out = (uint32_t)v;
    }
    switch (r) {
    case PARSE_OK:
        return CO_OK;
    case PARSE_RANGE:
        return fail(ld, n, "%s %s is out of range, expected %s", what, quote_node(q, n), expected);
    case PARSE_SYNTAX:
        break;
    }
    return fail(ld, n, "%s %s is not a ratio, expected %s", what, quote_node(q, n), expected);
}

/* Basis points as a percentage with two decimals: 1250 -> "12.50%". */
static const char *percent_text(char *buf, size_t size, uint64_t bp)
{
    snprintf(buf, size, "%" PRIu64 ".%02" PRIu64 "%%", bp / 100, bp % 100);
    return buf;
}

/*
 * "YYYY-MM-DDTHH:MM:SSZ": RFC 3339 restricted to UTC ("Z"), uppercase T and
 * Z, no fractional seconds, no leap second, years 1970..9999.
 */
int config_parse_time(const char *s, int64_t *unix_s)
{
    static const char form[] = "dddd-dd-ddTdd:dd:ddZ";
    int f[6] = {0};
    static const size_t at[6] = {0, 5, 8, 11, 14, 17}, width[6] = {4, 2, 2, 2, 2, 2};

    if (s == NULL || strlen(s) != sizeof(form) - 1)
        return CO_ERROR;
    for (size_t i = 0; form[i] != '\0'; i++) {
        bool digit = s[i] >= '0' && s[i] <= '9';
        if (form[i] == 'd' ? !digit : s[i] != form[i])
            return CO_ERROR;
    }
    for (size_t k = 0; k < 6; k++)
        for (size_t i = 0; i < width[k]; i++)
            f[k] = f[k] * 10 + (s[at[k] + i] - '0');
    if (f[0] < 1970 || f[1] < 1 || f[1] > 12 || f[2] < 1 || f[2] > 31 || f[3] > 23 || f[4] > 59 || f[5] > 59)
        return CO_ERROR;
    struct tm tm;
    memset(&tm, 0, sizeof(tm));
    tm.tm_year = f[0] - 1900;
    tm.tm_mon = f[1] - 1;
    tm.tm_mday = f[2];
    tm.tm_hour = f[3];
    tm.tm_min = f[4];
    tm.tm_sec = f[5];
    time_t t = timegm(&tm);
    /* timegm() normalises 2026-02-30 into March: refuse days the month lacks. */
    if (t == (time_t)-1 || tm.tm_mday != f[2] || tm.tm_mon != f[1] - 1)
        return CO_ERROR;
    if (unix_s != NULL)
        *unix_s = (int64_t)t;
    return CO_OK;
}

static int get_time(struct loader *ld, const struct ynode *n, const char *what, int64_t *out)
{
    static const char expected[] = "a UTC time such as 2026-12-01T09:00:00Z";
    char q[QUOTE_BUF];
    const char *s = NULL;
    if (get_string(ld, n, what, expected, &s) != CO_OK)
        return CO_ERROR;
    if (config_parse_time(s, out) != CO_OK)
        return fail(ld, n, "%s %s is not a valid time, expected %s", what, quote_node(q, n), expected);
    return CO_OK;
}

/* ------------------------------------------------------------------------- */
/* Names, tokens, hosts, addresses. */

static bool valid_name(const char *s)
{
    size_t len = strlen(s);
    if (len == 0 || len > MAX_NAME)
        return false;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '.' || c == '-'))
            return false;
    }
    return true;
}

/* tchar, RFC 9110 §5.6.2; cookie-name is a token too (RFC 6265 §4.1.1). */
static bool valid_token(const char *s)
{
    size_t len = strlen(s);
    if (len == 0 || len > MAX_TOKEN)
        return false;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || strchr("!#$%&'*+-.^_`|~", c) != NULL))
            return false;
    }
    return true;
}

static char *lowercase_dup(const char *s)
{
    char *d = co_strdup(s);
    for (char *p = d; *p != '\0'; p++)
        if (*p >= 'A' && *p <= 'Z')
            *p = (char)(*p + ('a' - 'A'));
    return d;
}

/*
 * A DNS host name (RFC 1123 §2.1): labels of letters, digits, '-' (and '_',
 * common in internal names), 1..63 each, 253 in all, one trailing dot
 * allowed. An all-numeric last label is refused (RFC 3696 §2), so that a
 * mistyped "10.0.1" is not silently resolved as an inet_aton() address.
 */
static bool valid_hostname(const char *s, size_t len)
{
    if (len > 0 && s[len - 1] == '.')
        len--;
    if (len == 0 || len > MAX_HOSTNAME)
        return false;
    size_t label = 0;
    bool numeric = true;
    for (size_t i = 0; i <= len; i++) {
        if (i == len || s[i] == '.') {
            if (label == 0 || label > 63 || s[i - 1] == '-')
                return false;
            if (i == len && numeric)
                return false;
            label = 0;
            numeric = true;
            continue;
        }
        char c = s[i];
        bool alpha = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_';
        bool digit = c >= '0' && c <= '9';
        if (!alpha && !digit && c != '-')
            return false;
        if (c == '-' && label == 0)
            return false;
        if (!digit)
            numeric = false;
        label++;
    }
    return true;
}

/* "HOST:PORT" split into its parts; host is the text inside brackets if any. */
struct hostport {
    const char *host;
    size_t host_len;
    bool bracketed;
    uint16_t port;
};

static const char *split_hostport(const char *s, struct hostport *hp)
{
    const char *port;
    memset(hp, 0, sizeof(*hp));
    if (s[0] == '[') {
        const char *close = strchr(s, ']');
        if (close == NULL)
            return "missing ']' after the IPv6 address";
        if (close[1] != ':')
            return "missing :PORT after ']'";
        hp->host = s + 1;
        hp->host_len = (size_t)(close - s - 1);
        hp->bracketed = true;
        port = close + 2;
    } else {
        const char *colon = strrchr(s, ':');
        if (colon == NULL)
            return "missing :PORT";
        if (memchr(s, ':', (size_t)(colon - s)) != NULL)
            return "an IPv6 address must be in brackets";
        hp->host = s;
        hp->host_len = (size_t)(colon - s);
        port = colon + 1;
    }
    if (hp->host_len == 0)
        return "empty host";
    uint64_t p;
    if (strlen(port) > 5 || !parse_u64(port, strlen(port), &p) || p < 1 || p > 65535)
        return "port must be a number in 1..65535";
    hp->port = (uint16_t)p;
    return NULL;
}

/* An IP literal into sa; false if host is not one. */
static bool ip_literal(const struct hostport *hp, struct sockaddr_storage *sa, socklen_t *sa_len)
{
    char host[INET6_ADDRSTRLEN + 1];
    if (hp->host_len >= sizeof(host))
        return false;
    memcpy(host, hp->host, hp->host_len);
    host[hp->host_len] = '\0';
    memset(sa, 0, sizeof(*sa));
    if (hp->bracketed) {
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)sa;
        if (inet_pton(AF_INET6, host, &sin6->sin6_addr) != 1)
            return false;
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons(hp->port);
        *sa_len = sizeof(*sin6);
        return true;
    }
    struct sockaddr_in *sin = (struct sockaddr_in *)sa;
    if (inet_pton(AF_INET, host, &sin->sin_addr) != 1)
        return false;
    sin->sin_family = AF_INET;
    sin->sin_port = htons(hp->port);
    *sa_len = sizeof(*sin);
    return true;
}

static const char *parse_address(const char *s, struct config_addr *addr)
{
    struct hostport hp;
    const char *why = split_hostport(s, &hp);
    if (why != NULL)
        return why;
    if (!ip_literal(&hp, &addr->sa, &addr->sa_len))
        return hp.bracketed ? "not an IPv6 address" : "host is not an IPv4 address (IPv6 goes in brackets)";
    return NULL;
}

int config_parse_address(const char *s, struct config_addr *addr)
{
    if (s == NULL || addr == NULL)
        return CO_ERROR;
    memset(addr, 0, sizeof(*addr));
    if (parse_address(s, addr) != NULL) {
        memset(addr, 0, sizeof(*addr));
        return CO_ERROR;
    }
    addr->text = co_strdup(s);
    return CO_OK;
}

static bool sockaddr_equal(const struct sockaddr_storage *a, const struct sockaddr_storage *b)
{
    if (a->ss_family != b->ss_family)
        return false;
    if (a->ss_family == AF_INET) {
        const struct sockaddr_in *x = (const struct sockaddr_in *)a, *y = (const struct sockaddr_in *)b;
        return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
    }
    if (a->ss_family == AF_INET6) {
        const struct sockaddr_in6 *x = (const struct sockaddr_in6 *)a, *y = (const struct sockaddr_in6 *)b;
        return x->sin6_port == y->sin6_port && memcmp(&x->sin6_addr, &y->sin6_addr, sizeof(x->sin6_addr)) == 0 &&
               x->sin6_scope_id == y->sin6_scope_id;
    }
    return false;
}

static bool sockaddr_is_loopback(const struct sockaddr_storage *sa)
{
    if (sa->ss_family == AF_INET)
        return (ntohl(((const struct sockaddr_in *)sa)->sin_addr.s_addr) >> 24) == 127;
    if (sa->ss_family == AF_INET6) {
        const struct in6_addr *a = &((const struct sockaddr_in6 *)sa)->sin6_addr;
        return IN6_IS_ADDR_LOOPBACK(a) || (IN6_IS_ADDR_V4MAPPED(a) && a->s6_addr[12] == 127);
    }
    return false;
}

static int get_address(struct loader *ld, const struct ynode *n, const char *what, struct config_addr *addr)
{
    static const char expected[] = "IP:PORT such as 127.0.0.1:8080 or [::1]:8080";
    char q[QUOTE_BUF];
    const char *s = NULL, *why;
    if (get_string(ld, n, what, expected, &s) != CO_OK)
        return CO_ERROR;
    if ((why = parse_address(s, addr)) != NULL)
        return fail(ld, n, "bad %s %s: %s, expected %s", what, quote_node(q, n), why, expected);
    addr->text = co_strdup(s);
    return CO_OK;
}

/* ------------------------------------------------------------------------- */
/* Freeing. */

static void endpoint_free(struct endpoint_conf *e)
{
    free(e->host);
    free(e->name);
    free(e->addrs);
    free(e->addr_lens);
}

static void config_free(struct config *cfg)
{
    if (cfg == NULL)
        return;
    for (size_t i = 0; i < cfg->n_listeners; i++) {
        struct listener_conf *l = &cfg->listeners[i];
        free(l->addr.text);
        for (size_t j = 0; j < l->n_certs; j++) {
            free(l->certs[j].cert);
            free(l->certs[j].key);
        }
        free(l->certs);
        if (l->ctx)
            tls_ctx_free(l->ctx);
    }
    free(cfg->listeners);
    free(cfg->admin.addr.text);
    free(cfg->admin.token);
    for (size_t i = 0; i < cfg->n_clusters; i++) {
        struct cluster_conf *c = &cfg->clusters[i];
        free(c->name);
        for (size_t j = 0; j < c->n_endpoints; j++)
            endpoint_free(&c->endpoints[j]);
        free(c->endpoints);
        free(c->host);
        free(c->tls.sni);
        free(c->tls.ca_file);
        if (c->tls.ctx)
            tls_ctx_free(c->tls.ctx);
        free(c->health.path);
        free(c->health.host);
    }
    free(cfg->clusters);
    for (size_t i = 0; i < cfg->n_routes; i++) {
        struct route_conf *r = &cfg->routes[i];
        free(r->name);
        free(r->host);
        free(r->path);
        free(r->split);
        free(r->sticky.name);
        free(r->override.header);
        free(r->override.cookie);
        if (r->override.secret != NULL) {
            /* Not left behind in freed memory. */
            volatile char *p = r->override.secret;
            for (size_t k = 0; k < r->override.secret_len; k++)
                p[k] = 0;
        }
        free(r->override.secret);
        free(r->ramp.steps);
    }
    free(cfg->routes);
    for (size_t i = 0; i < cfg->dns.n_nameservers; i++)
        free(cfg->dns.nameservers[i]);
    free(cfg->dns.nameservers);
    free(cfg->file);
    free(cfg);
}

/* ------------------------------------------------------------------------- */
/* Pass 2: the schema. */

static const char *const top_keys[] = {"workers", "listen", "admin", "limits", "timeouts", "dns", "clusters", "routes", NULL};
static const char *const listener_keys[] = {"address", "tls", NULL};
static const char *const listener_tls_keys[] = {"certs", "min_version", "h2", NULL};
static const char *const cert_keys[] = {"cert", "key", NULL};
static const char *const cluster_tls_keys[] = {"sni", "ca_file", "verify", NULL};
static const char *const admin_keys[] = {"address", "token", NULL};
static const char *const limits_keys[] = {"max_request_line", "max_header_bytes", "max_headers",
                                          "max_body_bytes",   "max_connections",  NULL};
static const char *const timeouts_keys[] = {"header", "idle", "body", "send", "drain", "handshake", NULL};
static const char *const dns_keys[] = {"nameservers", "min_ttl", "max_ttl", "timeout", NULL};
static const char *const cluster_keys[] = {"name",
                                           "endpoints",
                                           "host",
                                           "protocol",
                                           "connect_timeout",
                                           "first_byte_timeout",
                                           "idle_timeout",
                                           "max_idle",
                                           "tls",
                                           "health",
                                           "eject",
                                           "max_connection_age",
                                           NULL};
static const char *const health_keys[] = {"path", "host", "interval", "timeout", "healthy", "unhealthy", "expect", NULL};
static const char *const eject_keys[] = {"connect_failures", "consecutive_5xx", "duration", NULL};
static const char *const route_keys[] = {"name",     "match", "split",  "sticky", "override",
                                         "failover", "retry", "mirror", "ramp",   NULL};
static const char *const retry_keys[] = {"attempts", "budget", "max_body", NULL};
static const char *const mirror_keys[] = {"cluster", "percent", "max_body", "compare", "max_in_flight", NULL};
static const char *const ramp_keys[] = {"start", "steps", "hold", "gate", NULL};
static const char *const gate_keys[] = {"min_requests", "max_5xx_ratio", "max_p99", "max_p99_ms", "old_side_margin", NULL};
static const char *const match_keys[] = {"host", "path_prefix", "path", NULL};
static const char *const split_keys[] = {"cluster", "weight", NULL};
static const char *const sticky_keys[] = {"cookie", "header", "client_ip", "max_age", NULL};
static const char *const override_keys[] = {"header", "cookie", "secret", NULL};

#define TIMEOUT_MIN_MS ((uint64_t)1)
#define TIMEOUT_MAX_MS (30 * DAY_MS)

static int load_workers(struct loader *ld, const struct ynode *n)
{
    if (n->type == YN_SCALAR && node_eq(n, "auto")) {
        ld->cfg->workers = 0;
        return CO_OK;
    }
    uint64_t v;
    if (n->type == YN_SCALAR && !is_null(n) && !(n->plain && parse_u64(n->value, n->len, &v))) {
        char q[QUOTE_BUF];
        return fail(ld, n, "workers %s is not valid, expected auto or an unquoted integer in 1..256", quote_node(q, n));
    }
    return get_u32(ld, n, "workers", 1, 256, &ld->cfg->workers);
}

static int load_listener_tls(struct loader *ld, const struct ynode *m, struct listener_conf *l);

static int load_listeners(struct loader *ld, const struct ynode *list)
{
    struct config *cfg = ld->cfg;
    if (expect_list(ld, list, "listen", 1, SIZE_MAX, "listeners ({ address: IP:PORT })") != CO_OK)
        return CO_ERROR;
    cfg->listeners = co_calloc(list->n_kids, sizeof(*cfg->listeners));
    for (size_t i = 0; i < list->n_kids; i++) {
        const struct ynode *m = list->kids[i], *v;
        cfg->n_listeners = i + 1;
        if (expect_map(ld, m, "listener", listener_keys) != CO_OK || check_keys(ld, m, "listener", listener_keys) != CO_OK)
            return CO_ERROR;
        if ((v = mget(m, "address")) == NULL)
            return fail(ld, m, "missing required key \"address\" in listener, expected address: IP:PORT");
        if (get_address(ld, v, "listen address", &cfg->listeners[i].addr) != CO_OK)
            return CO_ERROR;
        for (size_t j = 0; j < i; j++)
            if (sockaddr_equal(&cfg->listeners[j].addr.sa, &cfg->listeners[i].addr.sa))
                return fail(ld, v, "duplicate listen address \"%s\" (same as \"%s\"), expected each address once",
                            cfg->listeners[i].addr.text, cfg->listeners[j].addr.text);
        if ((v = mget(m, "tls")) != NULL && load_listener_tls(ld, v, &cfg->listeners[i]) != CO_OK)
            return CO_ERROR;
    }
    return CO_OK;
}

static int load_admin(struct loader *ld, const struct ynode *m)
{
    struct admin_conf *admin = &ld->cfg->admin;
    const struct ynode *v, *address;
    const char *s;
    if (expect_map(ld, m, "admin", admin_keys) != CO_OK || check_keys(ld, m, "admin", admin_keys) != CO_OK)
        return CO_ERROR;
    admin->enabled = true;
    if ((address = mget(m, "address")) != NULL) {
        if (get_address(ld, address, "admin address", &admin->addr) != CO_OK)
            return CO_ERROR;
    } else {
        config_parse_address("127.0.0.1:9901", &admin->addr);
    }
    if ((v = mget(m, "token")) != NULL) {
        /* An empty token (say, an unset secret mounted as "") must not turn
         * authentication off: fail closed. */
        if (get_string(ld, v, "admin token", "a non-empty token (or no token key)", &s) != CO_OK)
            return CO_ERROR;
        if (s[0] == '\0')
            return fail(ld, v, "admin token is empty, expected a non-empty token (or no token key)");
        admin->token = co_strdup(s);
    }
    /* Admin writes (reload) from outside the machine need a token. */
    if (admin->token == NULL && !sockaddr_is_loopback(&admin->addr.sa))
        return fail(ld, address != NULL ? address : m,
                    "admin address \"%s\" is not a loopback address and admin has no token, expected a loopback address "
                    "or a token",
                    admin->addr.text);
    for (size_t i = 0; i < ld->cfg->n_listeners; i++)
        if (sockaddr_equal(&ld->cfg->listeners[i].addr.sa, &admin->addr.sa))
            return fail(ld, address != NULL ? address : m,
                        "admin address \"%s\" is also a listen address, expected a separate address", admin->addr.text);
    return CO_OK;
}

static int load_limits(struct loader *ld, const struct ynode *m)
{
    struct limits_conf *l = &ld->cfg->limits;
    const struct ynode *v;
    if (expect_map(ld, m, "limits", limits_keys) != CO_OK || check_keys(ld, m, "limits", limits_keys) != CO_OK)
        return CO_ERROR;
    if ((v = mget(m, "max_request_line")) && get_u32(ld, v, "max_request_line", 64, 1u << 20, &l->max_request_line) != CO_OK)
        return CO_ERROR;
    if ((v = mget(m, "max_header_bytes")) && get_u32(ld, v, "max_header_bytes", 1024, 1u << 24, &l->max_header_bytes) != CO_OK)
        return CO_ERROR;
    if ((v = mget(m, "max_headers")) && get_u32(ld, v, "max_headers", 1, 100000, &l->max_headers) != CO_OK)
        return CO_ERROR;
    if ((v = mget(m, "max_body_bytes")) && get_uint(ld, v, "max_body_bytes", 0, INT64_MAX, &l->max_body_bytes) != CO_OK)
        return CO_ERROR;
    if ((v = mget(m, "max_connections")) && get_u32(ld, v, "max_connections", 1, 1000000, &l->max_connections) != CO_OK)
        return CO_ERROR;
    return CO_OK;
}

static int load_timeouts(struct loader *ld, const struct ynode *m)
{
    struct timeouts_conf *t = &ld->cfg->timeouts;
    const struct {
        const char *key, *what;
        uint64_t *ms;
    } fields[] = {
        {"header", "timeouts.header", &t->header_ms}, {"idle", "timeouts.idle", &t->idle_ms},
        {"body", "timeouts.body", &t->body_ms},       {"send", "timeouts.send", &t->send_ms},
        {"drain", "timeouts.drain", &t->drain_ms},    {"handshake", "timeouts.handshake", &t->handshake_ms},
    };
    if (expect_map(ld, m, "timeouts", timeouts_keys) != CO_OK || check_keys(ld, m, "timeouts", timeouts_keys) != CO_OK)
        return CO_ERROR;
    for (size_t i = 0; i < CO_ARRAY_SIZE(fields); i++) {
        const struct ynode *v = mget(m, fields[i].key);
        if (v != NULL && get_duration(ld, v, fields[i].what, TIMEOUT_MIN_MS, TIMEOUT_MAX_MS, fields[i].ms) != CO_OK)
            return CO_ERROR;
    }
    return CO_OK;
}

/* A section such as `health:` that may be written empty (all defaults) or as a mapping. */
static int expect_section(struct loader *ld, const struct ynode *n, const char *what, const char *const *keys)
{
    if (is_null(n))
        return CO_OK; /* no kids: every mget() on it is NULL */
    if (expect_map(ld, n, what, keys) != CO_OK || check_keys(ld, n, what, keys) != CO_OK)
        return CO_ERROR;
    return CO_OK;
}

/* A nameserver for evdns: "IP" (port 53), "IPv4:PORT" or "[IPv6]:PORT". */
static bool parse_nameserver(const char *s, struct sockaddr_storage *sa)
{
    struct sockaddr_in *sin = (struct sockaddr_in *)sa;
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)sa;
    struct hostport hp;
    socklen_t sa_len;
    memset(sa, 0, sizeof(*sa));
    if (inet_pton(AF_INET, s, &sin->sin_addr) == 1) {
        sin->sin_family = AF_INET;
        sin->sin_port = htons(53);
        return true;
    }
    if (inet_pton(AF_INET6, s, &sin6->sin6_addr) == 1) {
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons(53);
        return true;
    }
    return split_hostport(s, &hp) == NULL && ip_literal(&hp, sa, &sa_len);
}

static int load_dns(struct loader *ld, const struct ynode *m)
{
    static const char expected[] = "IP, IP:PORT or [IPv6]:PORT such as 10.0.0.2, 10.0.0.2:53 or [fd00::53]:53";
    struct dns_conf *d = &ld->cfg->dns;
    const struct ynode *v, *min_ttl, *max_ttl;
    char q[QUOTE_BUF], a[32], b[32];
    if (expect_section(ld, m, "dns", dns_keys) != CO_OK)
        return CO_ERROR;
    if ((v = mget(m, "nameservers")) != NULL) {
        if (expect_list(ld, v, "dns.nameservers", 0, MAX_NAMESERVERS, expected) != CO_OK)
            return CO_ERROR;
        struct sockaddr_storage sa[MAX_NAMESERVERS];
        if (v->n_kids > 0) /* an empty list leaves nameservers NULL, as without the key */
            d->nameservers = co_calloc(v->n_kids, sizeof(*d->nameservers));
        for (size_t i = 0; i < v->n_kids; i++) {
            const struct ynode *n = v->kids[i];
            const char *s;
            if (get_string(ld, n, "nameserver", expected, &s) != CO_OK)
                return CO_ERROR;
            if (!parse_nameserver(s, &sa[i]))
                return fail(ld, n, "bad nameserver %s, expected %s", quote_node(q, n), expected);
            for (size_t j = 0; j < i; j++)
                if (sockaddr_equal(&sa[j], &sa[i]))
                    return fail(ld, n, "duplicate nameserver %s (same as \"%s\"), expected each nameserver once", quote_node(q, n),
                                d->nameservers[j]);
            d->nameservers[i] = co_strdup(s);
            d->n_nameservers = i + 1;
        }
    }
    if ((min_ttl = mget(m, "min_ttl")) != NULL && get_duration(ld, min_ttl, "dns.min_ttl", 1000, DAY_MS, &d->min_ttl_ms) != CO_OK)
        return CO_ERROR;
    if ((max_ttl = mget(m, "max_ttl")) != NULL &&
        get_duration(ld, max_ttl, "dns.max_ttl", 1000, 7 * DAY_MS, &d->max_ttl_ms) != CO_OK)
        return CO_ERROR;
    if ((v = mget(m, "timeout")) != NULL && get_duration(ld, v, "dns.timeout", 100, 60 * 1000, &d->timeout_ms) != CO_OK)
        return CO_ERROR;
    if (d->min_ttl_ms > d->max_ttl_ms)
        return fail(ld, max_ttl != NULL ? max_ttl : min_ttl, "dns.min_ttl %s is above dns.max_ttl %s, expected min_ttl <= max_ttl",
                    duration_text(a, sizeof(a), d->min_ttl_ms), duration_text(b, sizeof(b), d->max_ttl_ms));
    return CO_OK;
}

static int load_endpoint(struct loader *ld, const struct ynode *n, struct endpoint_conf *e)
{
    static const char expected[] = "HOST:PORT such as 10.0.0.4:443, [::1]:8080 or api.example.com:443";
    char q[QUOTE_BUF];
    const char *s, *why;
    struct hostport hp;
    if (get_string(ld, n, "endpoint", expected, &s) != CO_OK)
        return CO_ERROR;
    if ((why = split_hostport(s, &hp)) != NULL)
        return fail(ld, n, "bad endpoint %s: %s, expected %s", quote_node(q, n), why, expected);
    e->name = co_strdup(s);
    e->host = co_strndup(hp.host, hp.host_len);
    e->port = hp.port;

    struct sockaddr_storage sa;
    socklen_t sa_len;
    if (ip_literal(&hp, &sa, &sa_len)) {
        e->addrs = co_calloc(1, sizeof(*e->addrs));
        e->addr_lens = co_calloc(1, sizeof(*e->addr_lens));
        e->addrs[0] = sa;
        e->addr_lens[0] = sa_len;
        e->n_addrs = 1;
        return CO_OK;
    }
    if (hp.bracketed)
        return fail(ld, n, "bad endpoint %s: not an IPv6 address in brackets, expected %s", quote_node(q, n), expected);
    if (!valid_hostname(hp.host, hp.host_len))
        return fail(ld, n, "bad endpoint %s: host is neither an IPv4 address nor a DNS name, expected %s", quote_node(q, n),
                    expected);
    e->dns = true; /* resolved at run time (proxy/health.c) */
    return CO_OK;
}

/* Host header value sent upstream: a host name or IP, optional :port. */
static bool valid_host_header(const char *s)
{
    size_t len = strlen(s);
    if (len == 0 || len > 255)
        return false;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || strchr("-._:[]", c) != NULL))
            return false;
    }
    return true;
}

static int load_cluster_tls(struct loader *ld, const struct ynode *m, struct cluster_conf *c)
{
    const struct ynode *v;
    const char *s;
    char q[QUOTE_BUF];
    char err[512];
    if (is_null(m)) {
        c->tls.enabled = true; /* `tls:` alone = TLS with defaults */
    } else {
        if (expect_map(ld, m, "cluster tls", cluster_tls_keys) != CO_OK ||
            check_keys(ld, m, "cluster tls", cluster_tls_keys) != CO_OK)
            return CO_ERROR;
        c->tls.enabled = true;
    }
    c->tls.verify = true;
    if (!is_null(m)) {
        if ((v = mget(m, "sni")) != NULL) {
            if (get_string(ld, v, "tls sni", "a host name", &s) != CO_OK)
                return CO_ERROR;
            if (!valid_hostname(s, strlen(s)))
                return fail(ld, v, "bad tls sni %s, expected a host name", quote_node(q, v));
            c->tls.sni = co_strdup(s);
        }
        if ((v = mget(m, "ca_file")) != NULL) {
            if (get_string(ld, v, "tls ca_file", "a path to a PEM file", &s) != CO_OK)
                return CO_ERROR;
            c->tls.ca_file = co_strdup(s);
        }
        if ((v = mget(m, "verify")) != NULL && get_bool(ld, v, "tls verify", &c->tls.verify) != CO_OK)
            return CO_ERROR;
    }
    c->tls.ctx = tls_client_ctx_new(c->tls.ca_file, c->tls.verify, err, sizeof(err));
    if (c->tls.ctx == NULL)
        return fail(ld, m, "cluster \"%s\" tls: %s, expected a readable PEM CA file", c->name, err);
    return CO_OK;
}

static int load_listener_tls(struct loader *ld, const struct ynode *m, struct listener_conf *l)
{
    const struct ynode *v, *list;
    const char *s;
    char q[QUOTE_BUF];
    char err[512];
    if (expect_map(ld, m, "listener tls", listener_tls_keys) != CO_OK ||
        check_keys(ld, m, "listener tls", listener_tls_keys) != CO_OK)
        return CO_ERROR;
    l->tls = true;
    l->h2 = true;
    l->min_version = TLS1_2_VERSION;
    if ((list = mget(m, "certs")) == NULL)
        return fail(ld, m, "missing required key \"certs\" in listener tls, expected certs: [ { cert: FILE, key: FILE } ]");
    if (expect_list(ld, list, "certs", 1, 256, "{ cert: FILE, key: FILE }") != CO_OK)
        return CO_ERROR;
    l->certs = co_calloc(list->n_kids, sizeof(*l->certs));
    for (size_t i = 0; i < list->n_kids; i++) {
        const struct ynode *cm = list->kids[i];
        l->n_certs = i + 1;
        if (expect_map(ld, cm, "certificate", cert_keys) != CO_OK || check_keys(ld, cm, "certificate", cert_keys) != CO_OK)
            return CO_ERROR;
        if ((v = mget(cm, "cert")) == NULL || get_string(ld, v, "cert", "a path to a PEM certificate", &s) != CO_OK)
            return v ? CO_ERROR : fail(ld, cm, "missing required key \"cert\" in certificate, expected cert: FILE");
        l->certs[i].cert = co_strdup(s);
        if ((v = mget(cm, "key")) == NULL || get_string(ld, v, "key", "a path to a PEM private key", &s) != CO_OK)
            return v ? CO_ERROR : fail(ld, cm, "missing required key \"key\" in certificate, expected key: FILE");
        l->certs[i].key = co_strdup(s);
    }
    if ((v = mget(m, "min_version")) != NULL) {
        if (get_string(ld, v, "min_version", "1.2 or 1.3", &s) != CO_OK)
            return CO_ERROR;
        if (strcmp(s, "1.2") == 0)
            l->min_version = TLS1_2_VERSION;
        else if (strcmp(s, "1.3") == 0)
            l->min_version = TLS1_3_VERSION;
        else
            return fail(ld, v, "unknown min_version %s, expected \"1.2\" or \"1.3\"", quote_node(q, v));
    }
    if ((v = mget(m, "h2")) != NULL && get_bool(ld, v, "tls h2", &l->h2) != CO_OK)
        return CO_ERROR;
    struct tls_cert_files *files = co_calloc(l->n_certs, sizeof(*files));
    for (size_t i = 0; i < l->n_certs; i++) {
        files[i].cert = l->certs[i].cert;
        files[i].key = l->certs[i].key;
    }
    l->ctx = tls_server_ctx_new(files, l->n_certs, l->min_version, l->h2, err, sizeof(err));
    free(files);
    if (l->ctx == NULL)
        return fail(ld, list, "listener %s tls: %s, expected readable PEM certificate and matching key files", l->addr.text, err);
    return CO_OK;
}

/* A request-target path for a health probe: starts with '/', no spaces or controls. */
static bool valid_probe_path(const char *s)
{
    bool ok = s[0] == '/' && strlen(s) <= MAX_PATH;
    for (const char *p = s; ok && *p != '\0'; p++)
        ok = (unsigned char)*p > 0x20 && *p != 0x7f;
    return ok;
}

/* `expect:` 200, "200-299" or "2xx" (100..599). */
static bool parse_expect(const char *s, uint16_t *lo, uint16_t *hi)
{
    uint64_t a, b;
    size_t len = strlen(s);
    if (len == 3 && s[0] >= '1' && s[0] <= '5' && (strcmp(s + 1, "xx") == 0 || strcmp(s + 1, "XX") == 0)) {
        *lo = (uint16_t)((s[0] - '0') * 100);
        *hi = (uint16_t)(*lo + 99);
        return true;
    }
    if (len == 3 && parse_u64(s, 3, &a))
        b = a;
    else if (len != 7 || s[3] != '-' || !parse_u64(s, 3, &a) || !parse_u64(s + 4, 3, &b))
        return false;
    if (a < 100 || b > 599 || a > b)
        return false;
    *lo = (uint16_t)a;
    *hi = (uint16_t)b;
    return true;
}

static int load_health(struct loader *ld, const struct ynode *m, struct cluster_conf *c)
{
    static const char expect_form[] = "a status such as 200, a range such as 200-299, or a class such as 2xx (statuses 100..599)";
    struct health_conf *h = &c->health;
    const struct ynode *v, *interval, *timeout;
    const char *s;
    char q[QUOTE_BUF], a[32], b[32];
    if (expect_section(ld, m, "health", health_keys) != CO_OK)
        return CO_ERROR;
    h->enabled = true;
    if ((v = mget(m, "path")) != NULL) {
        if (get_string(ld, v, "health.path", "a path starting with /", &s) != CO_OK)
            return CO_ERROR;
        if (!valid_probe_path(s))
            return fail(ld, v, "bad health.path %s, expected a path starting with / and without spaces", quote_node(q, v));
        free(h->path);
        h->path = co_strdup(s);
    }
    if ((v = mget(m, "host")) != NULL) {
        if (get_string(ld, v, "health.host", "a Host header value such as api.example.com", &s) != CO_OK)
            return CO_ERROR;
        if (!valid_host_header(s))
            return fail(ld, v, "bad health.host %s, expected a Host header value such as api.example.com", quote_node(q, v));
        h->host = co_strdup(s);
    }
    if ((interval = mget(m, "interval")) != NULL &&
        get_duration(ld, interval, "health.interval", 100, 3600 * 1000, &h->interval_ms) != CO_OK)
        return CO_ERROR;
    if ((timeout = mget(m, "timeout")) != NULL &&
        get_duration(ld, timeout, "health.timeout", TIMEOUT_MIN_MS, 3600 * 1000, &h->timeout_ms) != CO_OK)
        return CO_ERROR;
    if (h->timeout_ms >= h->interval_ms) {
        /* A probe must end before the next one starts. */
        if (timeout != NULL)
            return fail(ld, timeout,
                        "health.timeout %s is not below health.interval (%s), expected a timeout shorter than the interval",
                        quote_node(q, timeout), duration_text(a, sizeof(a), h->interval_ms));
        return fail(ld, interval,
                    "health.interval %s is not above health.timeout (%s by default), expected a longer interval or a shorter "
                    "health.timeout",
                    quote_node(q, interval), duration_text(b, sizeof(b), h->timeout_ms));
    }
    if ((v = mget(m, "healthy")) != NULL && get_u32(ld, v, "health.healthy", 1, 100, &h->healthy) != CO_OK)
        return CO_ERROR;
    if ((v = mget(m, "unhealthy")) != NULL && get_u32(ld, v, "health.unhealthy", 1, 100, &h->unhealthy) != CO_OK)
        return CO_ERROR;
    if ((v = mget(m, "expect")) != NULL) {
        if (get_string(ld, v, "health.expect", expect_form, &s) != CO_OK)
            return CO_ERROR;
        if (!parse_expect(s, &h->expect_min, &h->expect_max))
            return fail(ld, v, "bad health.expect %s, expected %s", quote_node(q, v), expect_form);
    }
    return CO_OK;
}

static int load_eject(struct loader *ld, const struct ynode *m, struct cluster_conf *c)
{
    struct eject_conf *e = &c->eject;
    const struct ynode *v;
    if (expect_section(ld, m, "eject", eject_keys) != CO_OK)
        return CO_ERROR;
    if ((v = mget(m, "connect_failures")) != NULL &&
        get_u32(ld, v, "eject.connect_failures", 0, 1000, &e->connect_failures) != CO_OK)
        return CO_ERROR;
    if ((v = mget(m, "consecutive_5xx")) != NULL && get_u32(ld, v, "eject.consecutive_5xx", 0, 1000, &e->consecutive_5xx) != CO_OK)
        return CO_ERROR;
    if ((v = mget(m, "duration")) != NULL && get_duration(ld, v, "eject.duration", 1000, DAY_MS, &e->duration_ms) != CO_OK)
        return CO_ERROR;
    return CO_OK;
}

/* 0s = unlimited, else 1s..30d: a shorter age would open a connection per request. */
static int load_max_connection_age(struct loader *ld, const struct ynode *v, struct cluster_conf *c)
{
    char q[QUOTE_BUF];
    uint64_t ms;
    if (get_duration(ld, v, "max_connection_age", 0, UINT64_MAX, &ms) != CO_OK)
        return CO_ERROR;
    if (ms > TIMEOUT_MAX_MS || (ms > 0 && ms < 1000))
        return fail(ld, v, "max_connection_age %s is out of range, expected 0s (unlimited) or a duration from 1s to 30d",
                    quote_node(q, v));
    c->max_connection_age_ms = ms;
    return CO_OK;
}

static int load_cluster(struct loader *ld, const struct ynode *m, struct cluster_conf *c)
{
    const struct ynode *v;
    const char *s;
    char q[QUOTE_BUF];
    if (expect_map(ld, m, "cluster", cluster_keys) != CO_OK || check_keys(ld, m, "cluster", cluster_keys) != CO_OK)
        return CO_ERROR;
    c->connect_timeout_ms = 3000;
    c->first_byte_timeout_ms = 30000;
    c->idle_timeout_ms = 30000;
    c->max_idle = 256;
    c->protocol = CLUSTER_PROTO_H1;
    c->max_connection_age_ms = 600000;
    c->eject.connect_failures = 3;
    c->eject.consecutive_5xx = 5;
    c->eject.duration_ms = 30000;
    c->health.path = co_strdup("/healthz");
    c->health.interval_ms = 5000;
    c->health.timeout_ms = 2000;
    c->health.healthy = 2;
    c->health.unhealthy = 3;
    c->health.expect_min = 200;
    c->health.expect_max = 399;

    if ((v = mget(m, "name")) == NULL)
        return fail(ld, m, "missing required key \"name\" in cluster, expected name: NAME");
    if (get_string(ld, v, "cluster name", "a name", &s) != CO_OK)
        return CO_ERROR;
    if (!valid_name(s))
        return fail(ld, v, "bad cluster name %s, expected 1 to 64 characters from A-Z a-z 0-9 _ . -", quote_node(q, v));
    for (size_t i = 0; i < c->index; i++)
        if (strcmp(ld->cfg->clusters[i].name, s) == 0)
            return fail(ld, v, "duplicate cluster name %s, expected unique cluster names", quote_node(q, v));
    c->name = co_strdup(s);

    if ((v = mget(m, "endpoints")) == NULL)
        return fail(ld, m, "missing required key \"endpoints\" in cluster \"%s\", expected a list of HOST:PORT", c->name);
    if (expect_list(ld, v, "endpoints", 1, SIZE_MAX, "HOST:PORT") != CO_OK)
        return CO_ERROR;
    c->endpoints = co_calloc(v->n_kids, sizeof(*c->endpoints));
    for (size_t i = 0; i < v->n_kids; i++) {
        c->n_endpoints = i + 1;
        if (load_endpoint(ld, v->kids[i], &c->endpoints[i]) != CO_OK)
            return CO_ERROR;
        for (size_t j = 0; j < i; j++)
            if (strcmp(c->endpoints[j].name, c->endpoints[i].name) == 0)
                return fail(ld, v->kids[i], "duplicate endpoint %s in cluster \"%s\", expected each endpoint once",
                            quote_node(q, v->kids[i]), c->name);
    }

    if ((v = mget(m, "host")) != NULL) {
        if (get_string(ld, v, "cluster host", "a Host header value such as api.example.com", &s) != CO_OK)
            return CO_ERROR;
        if (!valid_host_header(s))
            return fail(ld, v, "bad cluster host %s, expected a Host header value such as api.example.com", quote_node(q, v));
        c->host = co_strdup(s);
    }
    if ((v = mget(m, "protocol")) != NULL) {
        if (get_string(ld, v, "protocol", "one of: http1, h2, auto", &s) != CO_OK)
            return CO_ERROR;
        if (strcmp(s, "http1") == 0)
            c->protocol = CLUSTER_PROTO_H1;
        else if (strcmp(s, "h2") == 0)
            c->protocol = CLUSTER_PROTO_H2;
        else if (strcmp(s, "auto") == 0)
            c->protocol = CLUSTER_PROTO_AUTO;
        else
            return fail(ld, v, "unknown protocol %s, expected one of: http1, h2, auto", quote_node(q, v));
    }
    if ((v = mget(m, "tls")) != NULL && load_cluster_tls(ld, v, c) != CO_OK)
        return CO_ERROR;
    if ((v = mget(m, "connect_timeout")) != NULL &&
        get_duration(ld, v, "connect_timeout", TIMEOUT_MIN_MS, TIMEOUT_MAX_MS, &c->connect_timeout_ms) != CO_OK)
        return CO_ERROR;
    if ((v = mget(m, "first_byte_timeout")) != NULL &&
        get_duration(ld, v, "first_byte_timeout", TIMEOUT_MIN_MS, TIMEOUT_MAX_MS, &c->first_byte_timeout_ms) != CO_OK)
        return CO_ERROR;
    if ((v = mget(m, "idle_timeout")) != NULL &&
        get_duration(ld, v, "idle_timeout", TIMEOUT_MIN_MS, TIMEOUT_MAX_MS, &c->idle_timeout_ms) != CO_OK)
        return CO_ERROR;
    if ((v = mget(m, "max_idle")) != NULL && get_u32(ld, v, "max_idle", 0, 100000, &c->max_idle) != CO_OK)
        return CO_ERROR;
    if ((v = mget(m, "max_connection_age")) != NULL && load_max_connection_age(ld, v, c) != CO_OK)
        return CO_ERROR;
    if ((v = mget(m, "health")) != NULL && load_health(ld, v, c) != CO_OK)
        return CO_ERROR;
    if ((v = mget(m, "eject")) != NULL && load_eject(ld, v, c) != CO_OK)
        return CO_ERROR;
    return CO_OK;
}

static int load_clusters(struct loader *ld, const struct ynode *list)
{
    struct config *cfg = ld->cfg;
    if (expect_list(ld, list, "clusters", 1, SIZE_MAX, "clusters") != CO_OK)
        return CO_ERROR;
    cfg->clusters = co_calloc(list->n_kids, sizeof(*cfg->clusters));
    for (size_t i = 0; i < list->n_kids; i++) {
        cfg->n_clusters = i + 1;
        cfg->clusters[i].index = i;
        if (load_cluster(ld, list->kids[i], &cfg->clusters[i]) != CO_OK)
            return CO_ERROR;
    }
    return CO_OK;
}

/* match.host: "api.example.com" or "*.example.com"; stored lowercase without a trailing dot. */
static int load_match_host(struct loader *ld, const struct ynode *v, struct route_conf *r)
{
    static const char expected[] = "a host name such as api.example.com or *.example.com";
    char q[QUOTE_BUF];
    const char *s;
    if (get_string(ld, v, "match host", expected, &s) != CO_OK)
        return CO_ERROR;
    bool suffix = strncmp(s, "*.", 2) == 0;
    const char *name = suffix ? s + 2 : s;
    if (strchr(name, '*') != NULL)
        return fail(ld, v, "bad match host %s: only a leading \"*.\" wildcard is allowed, expected %s", quote_node(q, v), expected);
    size_t len = strlen(name);
    bool ok = len > 0 && len <= MAX_HOSTNAME + 1 && name[0] != '.';
    for (size_t i = 0; ok && i < len; i++) {
        char c = name[i];
        ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.' || c == '_';
        if (ok && c == '.')
            ok = i + 1 == len || name[i + 1] != '.';
    }
    if (!ok)
        return fail(ld, v, "bad match host %s, expected %s", quote_node(q, v), expected);
    if (name[len - 1] == '.') /* the router ignores a trailing dot in Host too */
        len--;
    if (len == 0)
        return fail(ld, v, "bad match host %s, expected %s", quote_node(q, v), expected);
    char *lower = lowercase_dup(name);
    lower[len] = '\0';
    if (suffix) {
        r->host = co_malloc(len + 2);
        r->host[0] = '.';
        memcpy(r->host + 1, lower, len + 1);
        free(lower);
    } else {
        r->host = lower;
    }
    r->host_suffix = suffix;
    return CO_OK;
}

static int load_match(struct loader *ld, const struct ynode *m, struct route_conf *r)
{
    static const char expected[] = "a path starting with /";
    const struct ynode *v, *prefix, *exact;
    const char *s;
    char q[QUOTE_BUF];
    if (expect_map(ld, m, "match", match_keys) != CO_OK || check_keys(ld, m, "match", match_keys) != CO_OK)
        return CO_ERROR;
    if ((v = mget(m, "host")) != NULL && load_match_host(ld, v, r) != CO_OK)
        return CO_ERROR;
    prefix = mget(m, "path_prefix");
    exact = mget(m, "path");
    if (prefix != NULL && exact != NULL)
        return fail(ld, m, "match has both path_prefix and path, expected at most one of them");
    if ((v = prefix != NULL ? prefix : exact) == NULL)
        return CO_OK;
    if (get_string(ld, v, prefix != NULL ? "path_prefix" : "path", expected, &s) != CO_OK)
        return CO_ERROR;
    bool ok = s[0] == '/' && strlen(s) <= MAX_PATH;
    for (const char *p = s; ok && *p != '\0'; p++)
        ok = (unsigned char)*p > 0x20 && *p != 0x7f; /* no spaces or controls in a request-target */
    if (!ok)
        return fail(ld, v, "bad %s %s, expected %s and without spaces", prefix != NULL ? "path_prefix" : "path", quote_node(q, v),
                    expected);
    free(r->path);
    r->path = co_strdup(s);
    r->path_exact = exact != NULL;
    return CO_OK;
}

static void cluster_names(const struct config *cfg, char *buf, size_t size)
{
    size_t o = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < cfg->n_clusters && cfg->clusters[i].name != NULL; i++) {
        int w = snprintf(buf + o, size - o, "%s%s", i ? ", " : "", cfg->clusters[i].name);
        if (w < 0 || (size_t)w >= size - o) {
            if (size > 4)
                memcpy(buf + size - 4, "...", 4);
            return;
        }
        o += (size_t)w;
    }
}

static int load_split(struct loader *ld, const struct ynode *list, struct route_conf *r)
{
    char q[QUOTE_BUF], names[256];
    uint64_t total = 0;
    if (expect_list(ld, list, "split", 1, MAX_SPLIT, "{ cluster: NAME, weight: N }") != CO_OK)
        return CO_ERROR;
    r->split = co_calloc(list->n_kids, sizeof(*r->split));
    r->n_split = list->n_kids;
    for (size_t i = 0; i < list->n_kids; i++) {
        const struct ynode *m = list->kids[i], *v;
        struct split_conf *sp = &r->split[i];
        const char *s;
        if (expect_map(ld, m, "split entry", split_keys) != CO_OK || check_keys(ld, m, "split entry", split_keys) != CO_OK)
            return CO_ERROR;
        if ((v = mget(m, "cluster")) == NULL)
            return fail(ld, m, "missing required key \"cluster\" in split entry, expected cluster: NAME");
        if (get_string(ld, v, "split cluster", "a cluster name", &s) != CO_OK)
            return CO_ERROR;
        sp->cluster = (struct cluster_conf *)config_find_cluster(ld->cfg, s);
        if (sp->cluster == NULL) {
            cluster_names(ld->cfg, names, sizeof(names));
            return fail(ld, v, "unknown cluster %s in split, expected one of: %s", quote_node(q, v), names);
        }
        for (size_t j = 0; j < i; j++)
            if (r->split[j].cluster == sp->cluster)
                return fail(ld, v, "cluster %s appears twice in split, expected each cluster once", quote_node(q, v));
        if ((v = mget(m, "weight")) == NULL)
            return fail(ld, m, "missing required key \"weight\" in split entry, expected weight: 0..%u", MAX_WEIGHT);
        if (get_u32(ld, v, "weight", 0, MAX_WEIGHT, &sp->weight) != CO_OK)
            return CO_ERROR;
        total += sp->weight;
    }
    if (total == 0)
        return fail(ld, list, "split weights sum to 0, expected at least one weight above 0");
    r->total_weight = (uint32_t)total;
    return CO_OK;
}

static int load_sticky(struct loader *ld, const struct ynode *m, struct route_conf *r)
{
    struct sticky_conf *st = &r->sticky;
    const struct ynode *cookie, *header, *client_ip, *max_age;
    const char *s;
    char q[QUOTE_BUF];
    bool by_ip = false;
    if (expect_map(ld, m, "sticky", sticky_keys) != CO_OK || check_keys(ld, m, "sticky", sticky_keys) != CO_OK)
        return CO_ERROR;
    cookie = mget(m, "cookie");
    header = mget(m, "header");
    client_ip = mget(m, "client_ip");
    max_age = mget(m, "max_age");
    if (client_ip != NULL && get_bool(ld, client_ip, "client_ip", &by_ip) != CO_OK)
        return CO_ERROR;
    int kinds = (cookie != NULL) + (header != NULL) + by_ip;
    if (kinds != 1)
        return fail(
            ld, m,
            "sticky sets %s of cookie, header, client_ip, expected exactly one of: cookie: NAME, header: NAME, client_ip: true",
            kinds == 0 ? "none" : "more than one");
    if (cookie != NULL) {
        if (get_string(ld, cookie, "sticky cookie", "a cookie name (an RFC 9110 token)", &s) != CO_OK)
            return CO_ERROR;
        if (!valid_token(s))
            return fail(ld, cookie, "bad sticky cookie name %s, expected a cookie name (an RFC 9110 token)", quote_node(q, cookie));
        st->kind = STICKY_COOKIE;
        st->name = co_strdup(s);
    } else if (header != NULL) {
        if (get_string(ld, header, "sticky header", "a header name (an RFC 9110 token)", &s) != CO_OK)
            return CO_ERROR;
        if (!valid_token(s))
            return fail(ld, header, "bad sticky header name %s, expected a header name (an RFC 9110 token)", quote_node(q, header));
        st->kind = STICKY_HEADER;
        st->name = lowercase_dup(s);
    } else {
        st->kind = STICKY_CLIENT_IP;
    }
    if (max_age != NULL) {
        uint64_t ms;
        if (st->kind != STICKY_COOKIE)
            return fail(ld, max_age, "max_age is set without a sticky cookie, expected max_age only with cookie: NAME");
        /* User agents cap Max-Age at 400 days (RFC 6265bis §5.6.2). */
        if (get_duration(ld, max_age, "max_age", 1000, 400 * DAY_MS, &ms) != CO_OK)
            return CO_ERROR;
        st->max_age_s = ms / 1000;
    }
    return CO_OK;
}

static int load_override(struct loader *ld, const struct ynode *m, struct route_conf *r)
{
    struct override_conf *o = &r->override;
    const struct ynode *v;
    const char *s;
    char q[QUOTE_BUF];
    if (expect_map(ld, m, "override", override_keys) != CO_OK || check_keys(ld, m, "override", override_keys) != CO_OK)
        return CO_ERROR;
    if (mget(m, "header") == NULL && mget(m, "cookie") == NULL)
        return fail(ld, m, "override has neither header nor cookie, expected at least one of them");
    if ((v = mget(m, "secret")) == NULL)
        return fail(ld, m, "missing required key \"secret\" in override, expected secret: \"${ENV_VAR}\"");
    if ((v = mget(m, "header")) != NULL) {
        if (get_string(ld, v, "override header", "a header name (an RFC 9110 token)", &s) != CO_OK)
            return CO_ERROR;
        if (!valid_token(s))
            return fail(ld, v, "bad override header name %s, expected a header name (an RFC 9110 token)", quote_node(q, v));
        o->header = lowercase_dup(s);
    }
    if ((v = mget(m, "cookie")) != NULL) {
        if (get_string(ld, v, "override cookie", "a cookie name (an RFC 9110 token)", &s) != CO_OK)
            return CO_ERROR;
        if (!valid_token(s))
            return fail(ld, v, "bad override cookie name %s, expected a cookie name (an RFC 9110 token)", quote_node(q, v));
        o->cookie = co_strdup(s);
    }
    v = mget(m, "secret");
    if (get_string(ld, v, "override secret", "a non-empty secret", &s) != CO_OK)
        return CO_ERROR;
    if (s[0] == '\0')
        return fail(ld, v, "override secret is empty, expected a non-empty secret");
    o->secret = co_strdup(s);
    o->secret_len = strlen(s);
    o->enabled = true;
    return CO_OK;
}

static int load_retry(struct loader *ld, const struct ynode *m, struct route_conf *r)
{
    struct retry_conf *rt = &r->retry;
    const struct ynode *v;
    if (expect_section(ld, m, "retry", retry_keys) != CO_OK)
        return CO_ERROR;
    if ((v = mget(m, "attempts")) != NULL && get_u32(ld, v, "retry.attempts", 0, 4, &rt->attempts) != CO_OK)
        return CO_ERROR;
    if ((v = mget(m, "budget")) != NULL && get_percent(ld, v, "retry.budget", &rt->budget) != CO_OK)
        return CO_ERROR;
    if ((v = mget(m, "max_body")) != NULL && get_size(ld, v, "retry.max_body", MAX_BUFFERED_BODY, &rt->max_body) != CO_OK)
        return CO_ERROR;
    return CO_OK;
}

static int load_mirror(struct loader *ld, const struct ynode *m, struct route_conf *r)
{
    struct mirror_conf *mi = &r->mirror;
    const struct ynode *v;
    const char *s;
    char q[QUOTE_BUF], names[256];
    if (expect_map(ld, m, "mirror", mirror_keys) != CO_OK || check_keys(ld, m, "mirror", mirror_keys) != CO_OK)
        return CO_ERROR;
    if ((v = mget(m, "cluster")) == NULL)
        return fail(ld, m, "missing required key \"cluster\" in mirror, expected cluster: NAME");
    if (get_string(ld, v, "mirror cluster", "a cluster name", &s) != CO_OK)
        return CO_ERROR;
    if ((mi->cluster = (struct cluster_conf *)config_find_cluster(ld->cfg, s)) == NULL) {
        cluster_names(ld->cfg, names, sizeof(names));
        return fail(ld, v, "unknown cluster %s in mirror, expected one of: %s", quote_node(q, v), names);
    }
    if ((v = mget(m, "percent")) != NULL && get_percent(ld, v, "mirror.percent", &mi->share) != CO_OK)
        return CO_ERROR;
    if ((v = mget(m, "max_body")) != NULL && get_size(ld, v, "mirror.max_body", MAX_BUFFERED_BODY, &mi->max_body) != CO_OK)
        return CO_ERROR;
    if ((v = mget(m, "compare")) != NULL && get_bool(ld, v, "mirror.compare", &mi->compare) != CO_OK)
        return CO_ERROR;
    if ((v = mget(m, "max_in_flight")) != NULL && get_u32(ld, v, "mirror.max_in_flight", 1, 10000, &mi->max_in_flight) != CO_OK)
        return CO_ERROR;
    return CO_OK;
}

static int load_gate(struct loader *ld, const struct ynode *m, struct ramp_gate_conf *g)
{
    const struct ynode *v, *p99, *p99_ms;
    if (expect_section(ld, m, "ramp gate", gate_keys) != CO_OK)
        return CO_ERROR;
    g->enabled = true;
    if ((v = mget(m, "min_requests")) != NULL && get_uint(ld, v, "gate.min_requests", 1, 1000000000, &g->min_requests) != CO_OK)
        return CO_ERROR;
    if ((v = mget(m, "max_5xx_ratio")) != NULL && get_ratio(ld, v, "gate.max_5xx_ratio", &g->max_5xx) != CO_OK)
        return CO_ERROR;
    p99 = mget(m, "max_p99");
    p99_ms = mget(m, "max_p99_ms");
    if (p99 != NULL && p99_ms != NULL)
        return fail(ld, m, "gate has both max_p99 and max_p99_ms, expected at most one of them");
    if (p99 != NULL && get_duration(ld, p99, "gate.max_p99", 0, 3600 * 1000, &g->max_p99_ms) != CO_OK)
        return CO_ERROR;
    if (p99_ms != NULL && get_uint(ld, p99_ms, "gate.max_p99_ms", 0, 3600 * 1000, &g->max_p99_ms) != CO_OK)
        return CO_ERROR;
    if ((v = mget(m, "old_side_margin")) != NULL) {
        if (get_ratio(ld, v, "gate.old_side_margin", &g->old_side_margin) != CO_OK)
            return CO_ERROR;
        g->vs_old = true;
    }
    return CO_OK;
}

/* FNV-1a, 64 bits. Integers are hashed as 8 little-endian bytes so the
 * fingerprint is the same on every platform. */
#define FNV_OFFSET UINT64_C(0xcbf29ce484222325)
#define FNV_PRIME UINT64_C(0x100000001b3)

static uint64_t fnv_bytes(uint64_t h, const void *data, size_t len)
{
    const unsigned char *p = data;
    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= FNV_PRIME;
    }
    return h;
}

static uint64_t fnv_u64(uint64_t h, uint64_t v)
{
    unsigned char b[8];
    for (size_t i = 0; i < 8; i++)
        b[i] = (unsigned char)(v >> (8 * i));
    return fnv_bytes(h, b, sizeof(b));
}

/* Everything that defines the ramp's schedule and its judgement, plus the split it ramps. */
static uint64_t ramp_fingerprint(const struct route_conf *r)
{
    const struct ramp_conf *rp = &r->ramp;
    uint64_t h = FNV_OFFSET;
    h = fnv_u64(h, (uint64_t)rp->start_s);
    h = fnv_u64(h, rp->n_steps);
    for (size_t i = 0; i < rp->n_steps; i++)
        h = fnv_u64(h, rp->steps[i]);
    h = fnv_u64(h, rp->hold_ms);
    h = fnv_u64(h, rp->gate.enabled);
    h = fnv_u64(h, rp->gate.min_requests);
    h = fnv_u64(h, rp->gate.max_5xx);
    h = fnv_u64(h, rp->gate.max_p99_ms);
    h = fnv_u64(h, rp->gate.vs_old);
    h = fnv_u64(h, rp->gate.old_side_margin);
    h = fnv_u64(h, r->n_split);
    for (size_t i = 0; i < r->n_split; i++) {
        const char *name = r->split[i].cluster->name;
        h = fnv_u64(h, strlen(name)); /* length first: ("ab","c") differs from ("a","bc") */
        h = fnv_bytes(h, name, strlen(name));
        h = fnv_u64(h, r->split[i].weight);
    }
    return h;
}

/* After load_split: the ramp moves split[0]'s share up through `steps`. */
static int load_ramp(struct loader *ld, const struct ynode *m, struct route_conf *r)
{
    struct ramp_conf *rp = &r->ramp;
    const struct ynode *v, *steps;
    char q[QUOTE_BUF], a[32];
    if (expect_map(ld, m, "ramp", ramp_keys) != CO_OK || check_keys(ld, m, "ramp", ramp_keys) != CO_OK)
        return CO_ERROR;
    if ((v = mget(m, "start")) == NULL)
        return fail(ld, m, "missing required key \"start\" in ramp, expected start: a UTC time such as 2026-12-01T09:00:00Z");
    if (get_time(ld, v, "ramp.start", &rp->start_s) != CO_OK)
        return CO_ERROR;
    if ((steps = mget(m, "steps")) == NULL)
        return fail(ld, m,
                    "missing required key \"steps\" in ramp, expected steps: a list of percentages such as [5%%, 25%%, 100%%]");
    if (expect_list(ld, steps, "ramp.steps", 1, MAX_RAMP_STEPS, "percentages such as [5%, 25%, 100%]") != CO_OK)
        return CO_ERROR;
    if (r->n_split != 2)
        return fail(ld, steps,
                    "ramp on route \"%s\" whose split has %zu entries, expected a split of exactly 2 clusters (the new side "
                    "first)",
                    r->name, r->n_split);
    rp->steps = co_calloc(steps->n_kids, sizeof(*rp->steps));
    rp->n_steps = steps->n_kids;
    for (size_t i = 0; i < steps->n_kids; i++) {
        const struct ynode *n = steps->kids[i];
        if (get_percent(ld, n, "ramp step", &rp->steps[i]) != CO_OK)
            return CO_ERROR;
        if (i > 0 && rp->steps[i] < rp->steps[i - 1])
            return fail(ld, n, "ramp step %s is below the step before it (%s), expected non-decreasing steps", quote_node(q, n),
                        percent_text(a, sizeof(a), rp->steps[i - 1]));
    }
    /* The sticky share of split[0] as decide.c computes it; a first step below
     * it would move users back to the old side. */
    uint32_t written = (uint32_t)((uint64_t)CONFIG_BUCKETS * r->split[0].weight / r->total_weight);
    if (rp->steps[0] < written)
        return fail(
            ld, steps->kids[0],
            "first ramp step %s is below the written share of cluster \"%s\" (%s from its weight), expected a first step of "
            "at least that (a ramp only moves users to the new side)",
            quote_node(q, steps->kids[0]), r->split[0].cluster->name, percent_text(a, sizeof(a), written));
    if ((v = mget(m, "hold")) == NULL)
        return fail(ld, m, "missing required key \"hold\" in ramp, expected hold: the time on each step such as 30m");
    if (get_duration(ld, v, "ramp.hold", 1000, TIMEOUT_MAX_MS, &rp->hold_ms) != CO_OK)
        return CO_ERROR;
    if ((v = mget(m, "gate")) != NULL && load_gate(ld, v, &rp->gate) != CO_OK)
        return CO_ERROR;
    rp->enabled = true;
    rp->fingerprint = ramp_fingerprint(r);
    return CO_OK;
}

static int load_route(struct loader *ld, const struct ynode *m, struct route_conf *r)
{
    const struct ynode *v;
    const char *s;
    char q[QUOTE_BUF];
    if (expect_map(ld, m, "route", route_keys) != CO_OK || check_keys(ld, m, "route", route_keys) != CO_OK)
        return CO_ERROR;
    r->path = co_strdup("/");
    r->sticky.max_age_s = 86400u * 30u;
    r->failover = true;
    r->retry.attempts = 1;
    r->retry.budget = 2000;
    r->retry.max_body = 64 * KIB;
    r->mirror.share = CONFIG_BUCKETS;
    r->mirror.max_body = 64 * KIB;
    r->mirror.max_in_flight = 64;
    r->ramp.gate.min_requests = 100;
    r->ramp.gate.max_5xx = CONFIG_BUCKETS;

    if ((v = mget(m, "name")) == NULL)
        return fail(ld, m, "missing required key \"name\" in route, expected name: NAME");
    if (get_string(ld, v, "route name", "a name", &s) != CO_OK)
        return CO_ERROR;
    if (!valid_name(s))
        return fail(ld, v, "bad route name %s, expected 1 to 64 characters from A-Z a-z 0-9 _ . -", quote_node(q, v));
    for (size_t i = 0; i < r->index; i++)
        if (strcmp(ld->cfg->routes[i].name, s) == 0)
            return fail(ld, v, "duplicate route name %s, expected unique route names", quote_node(q, v));
    r->name = co_strdup(s);

    if ((v = mget(m, "match")) != NULL && load_match(ld, v, r) != CO_OK)
        return CO_ERROR;
    if ((v = mget(m, "split")) == NULL)
        return fail(ld, m, "missing required key \"split\" in route \"%s\", expected a list of { cluster: NAME, weight: N }",
                    r->name);
    if (load_split(ld, v, r) != CO_OK)
        return CO_ERROR;
    if ((v = mget(m, "sticky")) != NULL && load_sticky(ld, v, r) != CO_OK)
        return CO_ERROR;
    if ((v = mget(m, "override")) != NULL && load_override(ld, v, r) != CO_OK)
        return CO_ERROR;
    if ((v = mget(m, "failover")) != NULL && get_bool(ld, v, "failover", &r->failover) != CO_OK)
        return CO_ERROR;
    if ((v = mget(m, "retry")) != NULL && load_retry(ld, v, r) != CO_OK)
        return CO_ERROR;
    if ((v = mget(m, "mirror")) != NULL && load_mirror(ld, v, r) != CO_OK)
        return CO_ERROR;
    if ((v = mget(m, "ramp")) != NULL && load_ramp(ld, v, r) != CO_OK)
        return CO_ERROR;
    return CO_OK;
}

static int load_routes(struct loader *ld, const struct ynode *list)
{
    struct config *cfg = ld->cfg;
    if (expect_list(ld, list, "routes", 1, SIZE_MAX, "routes") != CO_OK)
        return CO_ERROR;
    cfg->routes = co_calloc(list->n_kids, sizeof(*cfg->routes));
    for (size_t i = 0; i < list->n_kids; i++) {
        cfg->n_routes = i + 1;
        cfg->routes[i].index = i;
        if (load_route(ld, list->kids[i], &cfg->routes[i]) != CO_OK)
            return CO_ERROR;
    }
    return CO_OK;
}

static int load_root(struct loader *ld, const struct ynode *root)
{
    struct config *cfg = ld->cfg;
    const struct ynode *v;
    cfg->limits.max_request_line = 8192;
    cfg->limits.max_header_bytes = 65536;
    cfg->limits.max_headers = 100;
    cfg->limits.max_body_bytes = 0;
    cfg->limits.max_connections = 10000;
    cfg->timeouts.header_ms = 10000;
    cfg->timeouts.idle_ms = 60000;
    cfg->timeouts.body_ms = 60000;
    cfg->timeouts.send_ms = 60000;
    cfg->timeouts.drain_ms = 30000;
    cfg->timeouts.handshake_ms = 10000;
    cfg->dns.min_ttl_ms = 5000;
    cfg->dns.max_ttl_ms = 300000;
    cfg->dns.timeout_ms = 2000;

    if (root == NULL)
        return fail_at(ld, 1, 1, "the configuration is empty, expected a mapping with keys listen, clusters, routes");
    if (root->type != YN_MAP)
        return fail(ld, root, "the configuration is %s, expected a mapping with keys listen, clusters, routes", kind(root));
    if (check_keys(ld, root, "the configuration", top_keys) != CO_OK)
        return CO_ERROR;
    if ((v = mget(root, "workers")) != NULL && load_workers(ld, v) != CO_OK)
        return CO_ERROR;
    if ((v = mget(root, "listen")) == NULL)
        return fail(ld, root, "missing required key \"listen\", expected a list of listeners ({ address: IP:PORT })");
    if (load_listeners(ld, v) != CO_OK)
        return CO_ERROR;
    if ((v = mget(root, "admin")) != NULL && load_admin(ld, v) != CO_OK)
        return CO_ERROR;
    if ((v = mget(root, "limits")) != NULL && load_limits(ld, v) != CO_OK)
        return CO_ERROR;
    if ((v = mget(root, "timeouts")) != NULL && load_timeouts(ld, v) != CO_OK)
        return CO_ERROR;
    if ((v = mget(root, "dns")) != NULL && load_dns(ld, v) != CO_OK)
        return CO_ERROR;
    if ((v = mget(root, "clusters")) == NULL)
        return fail(ld, root, "missing required key \"clusters\", expected a list of clusters");
    if (load_clusters(ld, v) != CO_OK)
        return CO_ERROR;
    if ((v = mget(root, "routes")) == NULL)
        return fail(ld, root, "missing required key \"routes\", expected a list of routes");
    return load_routes(ld, v);
}

/* ------------------------------------------------------------------------- */
/* The API. */

static int load(const char *name, const char *data, size_t len, struct config **out, char *err, size_t errlen)
{
    struct loader ld = {.file = name, .err = err, .errlen = errlen};
    struct ynode *root = NULL;
    if (err != NULL && errlen > 0)
        err[0] = '\0';
    if (build_tree(&ld, data, len, &root) != CO_OK)
        return CO_ERROR;
    ld.cfg = co_calloc(1, sizeof(*ld.cfg));
    atomic_init(&ld.cfg->refcount, 1);
    ld.cfg->file = co_strdup(name);
    int rc = load_root(&ld, root);
    ynode_free(root);
    if (rc != CO_OK) {
        config_free(ld.cfg);
        return CO_ERROR;
    }
    *out = ld.cfg;
    return CO_OK;
}

int config_load_buffer(const char *name, const char *data, size_t len, struct config **out, char *err, size_t errlen)
{
    struct loader ld = {.file = name != NULL ? name : "(buffer)", .err = err, .errlen = errlen};
    if (out != NULL)
        *out = NULL;
    if (out == NULL || (data == NULL && len > 0))
        return fail_at(&ld, 0, 0, "invalid arguments, expected a buffer and an output pointer");
    if (len > CONFIG_MAX_INPUT)
        return fail_at(&ld, 0, 0, "input is %zu bytes, expected at most %u bytes", len, CONFIG_MAX_INPUT);
    return load(ld.file, data != NULL ? data : "", len, out, err, errlen);
}

int config_load(const char *path, struct config **out, char *err, size_t errlen)
{
    struct loader ld = {.file = path != NULL ? path : "(null)", .err = err, .errlen = errlen};
    if (out != NULL)
        *out = NULL;
    if (path == NULL || out == NULL)
        return fail_at(&ld, 0, 0, "invalid arguments, expected a path and an output pointer");
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return fail_at(&ld, 0, 0, "cannot open: %s", strerror(errno));
    /* One byte more than allowed tells "too large" from "exactly at the cap"
     * without trusting st_size (pipes, /proc files). */
    char *buf = co_malloc(CONFIG_MAX_INPUT + 1);
    size_t n = fread(buf, 1, CONFIG_MAX_INPUT + 1, f);
    int read_errno = errno;
    bool read_failed = ferror(f) != 0;
    fclose(f);
    int rc;
    if (read_failed)
        rc = fail_at(&ld, 0, 0, "cannot read: %s", strerror(read_errno));
    else if (n > CONFIG_MAX_INPUT)
        rc = fail_at(&ld, 0, 0, "file is larger than %u bytes, expected a smaller configuration", CONFIG_MAX_INPUT);
    else
        rc = load(path, buf, n, out, err, errlen);
    free(buf);
    return rc;
}

struct config *config_ref(struct config *cfg)
{
    if (cfg != NULL)
        atomic_fetch_add_explicit(&cfg->refcount, 1, memory_order_relaxed);
    return cfg;
}

void config_unref(struct config *cfg)
{
    if (cfg == NULL)
        return;
    /* acq_rel: every reader's last access happens before the free. */
    unsigned prev = atomic_fetch_sub_explicit(&cfg->refcount, 1, memory_order_acq_rel);
    if (prev == 1)
        config_free(cfg);
}

const struct cluster_conf *config_find_cluster(const struct config *cfg, const char *name)
{
    if (cfg == NULL || name == NULL)
        return NULL;
    for (size_t i = 0; i < cfg->n_clusters; i++)
        if (cfg->clusters[i].name != NULL && strcmp(cfg->clusters[i].name, name) == 0)
            return &cfg->clusters[i];
    return NULL;
}
