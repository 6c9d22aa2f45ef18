/*
 * decide_test.c - unit tests for proxy/decide.c: override tokens, sticky
 * buckets, smooth weighted round robin, cookie lookup.
 *
 * Routes and clusters are built by hand so these tests do not depend on the
 * YAML loader.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "proxy/common.h"
#include "proxy/decide.h"

/* ---- fixtures ---------------------------------------------------------- */

#define SECRET "s3cret-for-tests"

struct fixture {
    struct cluster_conf clusters[DECIDE_MAX_SPLIT];
    struct split_conf split[DECIDE_MAX_SPLIT];
    struct route_conf route;
};

/* A route whose split is names[i] with weights[i]; override on with SECRET. */
static void make_route(struct fixture *f, size_t n, const char *const *names, const uint32_t *weights)
{
    memset(f, 0, sizeof(*f));
    uint32_t total = 0;
    for (size_t i = 0; i < n; i++) {
        f->clusters[i].name = (char *)names[i];
        f->clusters[i].index = i;
        f->split[i].cluster = &f->clusters[i];
        f->split[i].weight = weights[i];
        total += weights[i];
    }
    f->route.name = (char *)"r";
    f->route.split = f->split;
    f->route.n_split = n;
    f->route.total_weight = total;
    f->route.override.enabled = true;
    f->route.override.header = (char *)"x-cutover-side";
    f->route.override.secret = (char *)SECRET;
    f->route.override.secret_len = strlen(SECRET);
}

static void make_two(struct fixture *f, uint32_t w0, uint32_t w1)
{
    static const char *const names[] = {"azure", "aws"};
    const uint32_t w[] = {w0, w1};
    make_route(f, 2, names, w);
}

static void make_weights(struct fixture *f, size_t n, const uint32_t *w)
{
    static const char *const names[DECIDE_MAX_SPLIT] = {"c0", "c1", "c2",  "c3",  "c4",  "c5",  "c6",  "c7",
                                                        "c8", "c9", "c10", "c11", "c12", "c13", "c14", "c15"};
    make_route(f, n, names, w);
}

static int check(const struct route_conf *route, const char *value)
{
    return decide_check_override(route, value, strlen(value));
}

static void token(const char *secret, const char *cluster, char *out, size_t outlen)
{
    assert_int_equal(decide_token(secret, strlen(secret), cluster, out, outlen), CO_OK);
}

/* ---- reason names ------------------------------------------------------ */

static void test_reason_names(void **state)
{
    (void)state;
    assert_string_equal(decide_reason_name(DECIDE_OVERRIDE), "override");
    assert_string_equal(decide_reason_name(DECIDE_STICKY), "sticky");
    assert_string_equal(decide_reason_name(DECIDE_WEIGHT), "weight");
    assert_string_equal(decide_reason_name(DECIDE_FAILOVER), "failover");
    assert_string_equal(decide_reason_name((enum decide_reason)42), "unknown");
}

/* ---- override token ---------------------------------------------------- */

static void test_token_format(void **state)
{
    (void)state;
    char out[128];
    token(SECRET, "azure", out, sizeof(out));
    assert_int_equal(strlen(out), strlen("azure") + 1 + DECIDE_TOKEN_HEXLEN);
    assert_memory_equal(out, "azure.", 6);
    for (size_t i = 6; i < strlen(out); i++)
        assert_true((out[i] >= '0' && out[i] <= '9') || (out[i] >= 'a' && out[i] <= 'f'));
}

static void test_token_known_vectors(void **state)
{
    (void)state;
    char out[160];
    /* Well-known HMAC-SHA256("key", "The quick brown fox jumps over the lazy dog"). */
    token("key", "The quick brown fox jumps over the lazy dog", out, sizeof(out));
    assert_string_equal(out, "The quick brown fox jumps over the lazy dog."
                             "f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8");
    /* Cross-checked with Python's hmac module. */
    token("s3cret", "azure", out, sizeof(out));
    assert_string_equal(out, "azure.aedd242fcac9a30169f5dfe30d203345b5b5c213e2fe8143c0a8cc4ebcf5f327");
}

static void test_token_buffer_size(void **state)
{
    (void)state;
    char out[5 + 1 + DECIDE_TOKEN_HEXLEN + 1];
    assert_int_equal(decide_token(SECRET, strlen(SECRET), "azure", out, sizeof(out)), CO_OK);
    assert_int_equal(strlen(out), sizeof(out) - 1);
    assert_int_equal(decide_token(SECRET, strlen(SECRET), "azure", out, sizeof(out) - 1), CO_ERROR);
    assert_int_equal(decide_token(SECRET, strlen(SECRET), "azure", out, 0), CO_ERROR);
}

static void test_override_valid(void **state)
{
    (void)state;
    struct fixture f;
    make_two(&f, 90, 10);
    char out[128];
    token(SECRET, "azure", out, sizeof(out));
    assert_int_equal(check(&f.route, out), 0);
    token(SECRET, "aws", out, sizeof(out));
    assert_int_equal(check(&f.route, out), 1);
}

static void test_override_cluster_name_with_dots(void **state)
{
    (void)state;
    struct fixture f;
    static const char *const names[] = {"eu.aws.prod", "eu.azure.prod"};
    const uint32_t w[] = {50, 50};
    make_route(&f, 2, names, w);
    char out[128];
    token(SECRET, "eu.azure.prod", out, sizeof(out));
    assert_int_equal(check(&f.route, out), 1);
    token(SECRET, "eu.aws.prod", out, sizeof(out));
    assert_int_equal(check(&f.route, out), 0);
}

static void test_override_wrong_secret(void **state)
{
    (void)state;
    struct fixture f;
    make_two(&f, 50, 50);
    char out[128];
    token("not-the-secret", "azure", out, sizeof(out));
    assert_int_equal(check(&f.route, out), -1);
    token(SECRET "x", "azure", out, sizeof(out));
    assert_int_equal(check(&f.route, out), -1);
}

static void test_override_tampered_hex(void **state)
{
    (void)state;
    struct fixture f;
    make_two(&f, 50, 50);
    char out[128];
    token(SECRET, "azure", out, sizeof(out));
    size_t hex = strlen("azure.");
    for (size_t i = hex; i < hex + DECIDE_TOKEN_HEXLEN; i++) {
        char saved = out[i];
        out[i] = saved == '0' ? '1' : '0';
        assert_int_equal(check(&f.route, out), -1);
        out[i] = saved;
    }
    assert_int_equal(check(&f.route, out), 0);
}

static void test_override_signature_of_other_cluster(void **state)
{
    (void)state;
    struct fixture f;
    make_two(&f, 50, 50);
    char azure[128], aws[128], mixed[192];
    token(SECRET, "azure", azure, sizeof(azure));
    token(SECRET, "aws", aws, sizeof(aws));
    /* aws's valid signature pasted after "azure." */
    snprintf(mixed, sizeof(mixed), "azure.%s", aws + strlen("aws."));
    assert_int_equal(check(&f.route, mixed), -1);
}

static void test_override_uppercase_hex(void **state)
{
    (void)state;
    struct fixture f;
    make_two(&f, 50, 50);
    char out[128];
    token(SECRET, "azure", out, sizeof(out));
    for (char *p = out + strlen("azure."); *p != '\0'; p++) {
        if (*p >= 'a' && *p <= 'f')
            *p = (char)(*p - 'a' + 'A');
    }
    assert_int_equal(check(&f.route, out), -1);
}

static void test_override_cluster_not_in_split(void **state)
{
    (void)state;
    struct fixture f;
    make_two(&f, 50, 50);
    char out[128];
    /* Correctly signed, but "gcp" is not a side of this route. */
    token(SECRET, "gcp", out, sizeof(out));
    assert_int_equal(check(&f.route, out), -1);
    /* Names that merely share a prefix or suffix with a side. */
    token(SECRET, "azure2", out, sizeof(out));
    assert_int_equal(check(&f.route, out), -1);
    token(SECRET, "zure", out, sizeof(out));
    assert_int_equal(check(&f.route, out), -1);
    token(SECRET, "AZURE", out, sizeof(out));
    assert_int_equal(check(&f.route, out), -1);
}

static void test_override_empty_and_short(void **state)
{
    (void)state;
    struct fixture f;
    make_two(&f, 50, 50);
    char out[128];
    token(SECRET, "azure", out, sizeof(out));
    assert_int_equal(check(&f.route, ""), -1);
    assert_int_equal(decide_check_override(&f.route, NULL, 0), -1);
    assert_int_equal(check(&f.route, "azure"), -1);
    assert_int_equal(check(&f.route, "azure."), -1);
    /* Signature alone, empty cluster name. */
    assert_int_equal(check(&f.route, out + strlen("azure")), -1);
    /* One hex digit missing. */
    assert_int_equal(decide_check_override(&f.route, out, strlen(out) - 1), -1);
}

static void test_override_no_dot(void **state)
{
    (void)state;
    struct fixture f;
    make_two(&f, 50, 50);
    char out[128];
    token(SECRET, "azure", out, sizeof(out));
    out[strlen("azure")] = '-';
    assert_int_equal(check(&f.route, out), -1);
    out[strlen("azure")] = 'a';
    assert_int_equal(check(&f.route, out), -1);
}

static void test_override_overlong(void **state)
{
    (void)state;
    struct fixture f;
    make_two(&f, 50, 50);
    char out[128], longer[160];
    token(SECRET, "azure", out, sizeof(out));
    snprintf(longer, sizeof(longer), "%s0", out);
    assert_int_equal(check(&f.route, longer), -1);
    snprintf(longer, sizeof(longer), "%s\n", out);
    assert_int_equal(check(&f.route, longer), -1);
    snprintf(longer, sizeof(longer), "%s ", out);
    assert_int_equal(check(&f.route, longer), -1);
    snprintf(longer, sizeof(longer), " %s", out);
    assert_int_equal(check(&f.route, longer), -1);
    /* Extra hex before the signature shifts the separator. */
    snprintf(longer, sizeof(longer), "azure.0%s", out + strlen("azure."));
    assert_int_equal(check(&f.route, longer), -1);
}

static void test_override_length_is_honoured(void **state)
{
    (void)state;
    struct fixture f;
    make_two(&f, 50, 50);
    char out[128];
    token(SECRET, "azure", out, sizeof(out));
    size_t n = strlen(out);
    /* A header value is not NUL-terminated where its length ends. */
    char buf[160];
    memcpy(buf, out, n);
    memcpy(buf + n, "trailing", 9);
    assert_int_equal(decide_check_override(&f.route, buf, n), 0);
    assert_int_equal(decide_check_override(&f.route, buf, n + 1), -1);
}

static void test_override_disabled(void **state)
{
    (void)state;
    struct fixture f;
    make_two(&f, 50, 50);
    char out[128];
    token(SECRET, "azure", out, sizeof(out));
    f.route.override.enabled = false;
    assert_int_equal(check(&f.route, out), -1);
}

/* ---- sticky bucket ----------------------------------------------------- */

/*
 * Regression anchor. These values were computed once (and cross-checked with
 * an independent Python implementation of FNV-1a 64 + fmix64 % 10000). If
 * this test fails, decide_bucket changed and every sticky user would move
 * sides: revert the change.
 */
static void test_bucket_pinned_values(void **state)
{
    (void)state;
    static const struct {
        const char *key;
        uint32_t bucket;
    } pins[] = {
        {"", 4342},
        {"a", 8315},
        {"user-42", 1453},
        {"alice@example.com", 3736},
        {"203.0.113.7", 462},
        {"2001:db8::1", 4615},
        {"0123456789abcdef0123456789abcdef", 2947},
    };
    for (size_t i = 0; i < CO_ARRAY_SIZE(pins); i++)
        assert_int_equal(decide_bucket(pins[i].key, strlen(pins[i].key)), pins[i].bucket);
}

static void test_bucket_stable_and_length_bound(void **state)
{
    (void)state;
    const char buf[] = "user-42XYZ";
    assert_int_equal(decide_bucket(buf, 7), decide_bucket("user-42", 7));
    assert_int_equal(decide_bucket(buf, 7), 1453);
    assert_int_not_equal(decide_bucket(buf, 8), decide_bucket(buf, 7));
    assert_int_equal(decide_bucket(NULL, 0), 4342);
}

static void test_bucket_in_range(void **state)
{
    (void)state;
    char key[32];
    for (int i = 0; i < 100000; i++) {
        int n = snprintf(key, sizeof(key), "k%d", i);
        assert_in_range(decide_bucket(key, (size_t)n), 0, CONFIG_BUCKETS - 1);
    }
}

static void test_bucket_distribution(void **state)
{
    (void)state;
    /* 200,000 similar keys into 100 groups of 100 buckets: expect 2,000 per
     * group (sd ~44); allow +-10%. Every one of the 10,000 buckets is hit. */
    static unsigned groups[100];
    static unsigned hits[CONFIG_BUCKETS];
    memset(groups, 0, sizeof(groups));
    memset(hits, 0, sizeof(hits));
    char key[32];
    for (int i = 0; i < 200000; i++) {
        int n = snprintf(key, sizeof(key), "user-%d", i);
        uint32_t b = decide_bucket(key, (size_t)n);
        groups[b / 100]++;
        hits[b]++;
    }
    for (size_t g = 0; g < 100; g++)
        assert_in_range(groups[g], 1800, 2200);
    for (size_t b = 0; b < CONFIG_BUCKETS; b++)
        assert_true(hits[b] > 0);
}

static void test_bucket_first_half_is_fair(void **state)
{
    (void)state;
    /* A 50/50 split of IPv4 client addresses in one /16. */
    unsigned low = 0;
    char key[32];
    for (int a = 0; a < 256; a++) {
        for (int b = 0; b < 256; b++) {
            int n = snprintf(key, sizeof(key), "10.1.%d.%d", a, b);
            if (decide_bucket(key, (size_t)n) < CONFIG_BUCKETS / 2)
                low++;
        }
    }
    assert_in_range(low, 65536 / 2 - 1000, 65536 / 2 + 1000);
}

/* ---- sticky split ------------------------------------------------------ */

static void test_sticky_boundaries_two_way(void **state)
{
    (void)state;
    struct fixture f;
    make_two(&f, 90, 10);
    assert_int_equal(decide_sticky(&f.route, 0), 0);
    assert_int_equal(decide_sticky(&f.route, 8999), 0);
    assert_int_equal(decide_sticky(&f.route, 9000), 1);
    assert_int_equal(decide_sticky(&f.route, 9999), 1);
    make_two(&f, 50, 50);
    assert_int_equal(decide_sticky(&f.route, 4999), 0);
    assert_int_equal(decide_sticky(&f.route, 5000), 1);
}

static void test_sticky_rounding_rest_to_last(void **state)
{
    (void)state;
    struct fixture f;
    const uint32_t w[] = {1, 1, 1};
    make_weights(&f, 3, w);
    /* 3333 + 3333 + 3334 */
    assert_int_equal(decide_sticky(&f.route, 3332), 0);
    assert_int_equal(decide_sticky(&f.route, 3333), 1);
    assert_int_equal(decide_sticky(&f.route, 6665), 1);
    assert_int_equal(decide_sticky(&f.route, 6666), 2);
    assert_int_equal(decide_sticky(&f.route, 9999), 2);
}

static void test_sticky_shares_exact(void **state)
{
    (void)state;
    struct fixture f;
    const uint32_t w[] = {7, 13, 0, 29, 51, 0};
    make_weights(&f, 6, w);
    unsigned count[6] = {0};
    for (uint32_t b = 0; b < CONFIG_BUCKETS; b++)
        count[decide_sticky(&f.route, b)]++;
    /* floor(10000 * w / 100); the last nonzero (index 4) takes the rest. */
    assert_int_equal(count[0], 700);
    assert_int_equal(count[1], 1300);
    assert_int_equal(count[2], 0);
    assert_int_equal(count[3], 2900);
    assert_int_equal(count[4], 5100);
    assert_int_equal(count[5], 0);

    const uint32_t w2[] = {1, 2, 4};
    make_weights(&f, 3, w2);
    memset(count, 0, sizeof(count));
    for (uint32_t b = 0; b < CONFIG_BUCKETS; b++)
        count[decide_sticky(&f.route, b)]++;
    assert_int_equal(count[0], 1428); /* floor(10000/7) */
    assert_int_equal(count[1], 2857); /* floor(20000/7) */
    assert_int_equal(count[2], 10000 - 1428 - 2857);
}

static void test_sticky_contiguous_in_split_order(void **state)
{
    (void)state;
    struct fixture f;
    const uint32_t w[] = {3, 5, 2, 9};
    make_weights(&f, 4, w);
    int prev = 0;
    for (uint32_t b = 0; b < CONFIG_BUCKETS; b++) {
        int s = decide_sticky(&f.route, b);
        assert_true(s >= prev);
        prev = s;
    }
    assert_int_equal(prev, 3);
}

static void test_sticky_zero_weights(void **state)
{
    (void)state;
    struct fixture f;
    make_two(&f, 0, 100);
    for (uint32_t b = 0; b < CONFIG_BUCKETS; b++)
        assert_int_equal(decide_sticky(&f.route, b), 1);
    make_two(&f, 100, 0);
    for (uint32_t b = 0; b < CONFIG_BUCKETS; b++)
        assert_int_equal(decide_sticky(&f.route, b), 0);

    const uint32_t mid[] = {50, 0, 50};
    make_weights(&f, 3, mid);
    for (uint32_t b = 0; b < CONFIG_BUCKETS; b++)
        assert_int_equal(decide_sticky(&f.route, b), b < 5000 ? 0 : 2);

    const uint32_t tail[] = {1, 1, 1, 0};
    make_weights(&f, 4, tail);
    assert_int_equal(decide_sticky(&f.route, 9999), 2); /* last nonzero takes the rest */
}

static void test_sticky_single_entry(void **state)
{
    (void)state;
    struct fixture f;
    const uint32_t w[] = {1};
    make_weights(&f, 1, w);
    for (uint32_t b = 0; b < CONFIG_BUCKETS; b++)
        assert_int_equal(decide_sticky(&f.route, b), 0);
}

static void test_sticky_all_zero_rejected(void **state)
{
    (void)state;
    struct fixture f;
    make_two(&f, 0, 0);
    assert_int_equal(decide_sticky(&f.route, 0), -1);
}

/*
 * The ramp property (DESIGN.md): raising split[0]'s weight only moves buckets
 * from the other side INTO split[0]; a bucket already on split[0] stays.
 */
static void assert_only_moves_into_first(const struct route_conf *before, const struct route_conf *after)
{
    unsigned moved = 0;
    for (uint32_t b = 0; b < CONFIG_BUCKETS; b++) {
        int x = decide_sticky(before, b);
        int y = decide_sticky(after, b);
        if (x != y) {
            assert_int_equal(y, 0);
            moved++;
        }
    }
    assert_true(moved > 0); /* the weights given really moved someone */
}

static void test_sticky_ramp_10_to_30(void **state)
{
    (void)state;
    struct fixture a, b;
    /* Other side's weight kept at 90. */
    make_two(&a, 10, 90);
    make_two(&b, 30, 90);
    assert_only_moves_into_first(&a.route, &b.route);
    /* Other side's weight lowered so the pair sums to 100. */
    make_two(&b, 30, 70);
    assert_only_moves_into_first(&a.route, &b.route);
    unsigned first = 0;
    for (uint32_t k = 0; k < CONFIG_BUCKETS; k++)
        first += decide_sticky(&b.route, k) == 0;
    assert_int_equal(first, 3000);
}

static void test_sticky_ramp_steps(void **state)
{
    (void)state;
    static const uint32_t steps[] = {1, 5, 25, 50, 100};
    struct fixture a, b;
    /* Percentages: split[1] gets 100 - step (100% ends with split[1] at 0). */
    for (size_t i = 0; i + 1 < CO_ARRAY_SIZE(steps); i++) {
        make_two(&a, steps[i], 100 - steps[i]);
        make_two(&b, steps[i + 1], 100 - steps[i + 1]);
        assert_only_moves_into_first(&a.route, &b.route);
    }
    /* Relative weights: split[1] fixed at 100. */
    for (size_t i = 0; i + 1 < CO_ARRAY_SIZE(steps); i++) {
        make_two(&a, steps[i], 100);
        make_two(&b, steps[i + 1], 100);
        assert_only_moves_into_first(&a.route, &b.route);
    }
    /* Skipping steps (a rollback in reverse is the same pairs). */
    make_two(&a, 1, 99);
    make_two(&b, 100, 0);
    assert_only_moves_into_first(&a.route, &b.route);
}

static void test_sticky_ramp_every_percent(void **state)
{
    (void)state;
    struct fixture a, b;
    for (uint32_t p = 0; p < 100; p++) {
        make_two(&a, p, 100 - p);
        make_two(&b, p + 1, 99 - p);
        assert_only_moves_into_first(&a.route, &b.route);
    }
    /* Fine-grained weights out of 10,000. */
    for (uint32_t p = 0; p < 10000; p += 37) {
        make_two(&a, p, 10000 - p);
        make_two(&b, p + 37 > 10000 ? 10000 : p + 37, p + 37 > 10000 ? 0 : 10000 - p - 37);
        assert_only_moves_into_first(&a.route, &b.route);
    }
}

static void test_sticky_ramp_first_never_loses_multiway(void **state)
{
    (void)state;
    /* With three or more sides, raising split[0] still never takes a bucket
     * away from split[0] (the others shrink proportionally). */
    struct fixture a, b;
    const uint32_t wa[] = {10, 45, 45};
    const uint32_t wb[] = {30, 45, 45};
    make_weights(&a, 3, wa);
    make_weights(&b, 3, wb);
    for (uint32_t k = 0; k < CONFIG_BUCKETS; k++) {
        if (decide_sticky(&a.route, k) == 0)
            assert_int_equal(decide_sticky(&b.route, k), 0);
    }
}

static void test_sticky_equal_shares_same_side_across_routes(void **state)
{
    (void)state;
    struct fixture a, b;
    static const char *const names_b[] = {"new", "old"};
    const uint32_t w[] = {25, 75};
    make_two(&a, 25, 75);
    make_route(&b, 2, names_b, w);
    char key[32];
    for (int i = 0; i < 5000; i++) {
        int n = snprintf(key, sizeof(key), "user-%d", i);
        uint32_t bucket = decide_bucket(key, (size_t)n);
        assert_int_equal(decide_sticky(&a.route, bucket), decide_sticky(&b.route, bucket));
    }
}

/* ---- weighted round robin ---------------------------------------------- */

static void count_picks(const struct route_conf *route, struct decide_wrr *w, unsigned n, unsigned *count)
{
    for (unsigned i = 0; i < n; i++) {
        int s = decide_weight(w, route);
        assert_in_range(s, 0, (int)route->n_split - 1);
        count[s]++;
    }
}

static void test_wrr_90_10_exact(void **state)
{
    (void)state;
    struct fixture f;
    make_two(&f, 90, 10);
    struct decide_wrr w;
    decide_wrr_init(&w, &f.route);
    unsigned count[2] = {0};
    count_picks(&f.route, &w, 10000, count);
    assert_int_equal(count[0], 9000);
    assert_int_equal(count[1], 1000);
}

static void test_wrr_exact_every_cycle(void **state)
{
    (void)state;
    struct fixture f;
    make_two(&f, 90, 10);
    struct decide_wrr w;
    decide_wrr_init(&w, &f.route);
    for (int cycle = 0; cycle < 100; cycle++) {
        unsigned count[2] = {0};
        count_picks(&f.route, &w, 100, count);
        assert_int_equal(count[0], 90);
        assert_int_equal(count[1], 10);
        /* The state returns to all zero at each cycle boundary. */
        assert_int_equal(w.current[0], 0);
        assert_int_equal(w.current[1], 0);
    }
}

static void test_wrr_interleaves(void **state)
{
    (void)state;
    struct fixture f;
    make_two(&f, 10, 90);
    struct decide_wrr w;
    decide_wrr_init(&w, &f.route);
    int prev = -1;
    unsigned count[2] = {0};
    for (int i = 0; i < 10000; i++) {
        int s = decide_weight(&w, &f.route);
        if (s == 0)
            assert_int_not_equal(prev, 0);
        prev = s;
        count[s]++;
    }
    assert_int_equal(count[0], 1000);
    assert_int_equal(count[1], 9000);
}

static void test_wrr_nginx_sequence(void **state)
{
    (void)state;
    /* nginx's documented order for weights a=5, b=1, c=1: a a b a c a a. */
    struct fixture f;
    const uint32_t wt[] = {5, 1, 1};
    make_weights(&f, 3, wt);
    struct decide_wrr w;
    decide_wrr_init(&w, &f.route);
    static const int expect[] = {0, 0, 1, 0, 2, 0, 0};
    for (int round = 0; round < 3; round++) {
        for (size_t i = 0; i < CO_ARRAY_SIZE(expect); i++)
            assert_int_equal(decide_weight(&w, &f.route), expect[i]);
    }
}

static void test_wrr_three_way(void **state)
{
    (void)state;
    struct fixture f;
    const uint32_t wt[] = {50, 30, 20};
    make_weights(&f, 3, wt);
    struct decide_wrr w;
    decide_wrr_init(&w, &f.route);
    unsigned count[3] = {0};
    count_picks(&f.route, &w, 10000, count);
    assert_int_equal(count[0], 5000);
    assert_int_equal(count[1], 3000);
    assert_int_equal(count[2], 2000);

    const uint32_t odd[] = {1, 2, 4};
    make_weights(&f, 3, odd);
    decide_wrr_init(&w, &f.route);
    for (int cycle = 0; cycle < 50; cycle++) {
        unsigned c[3] = {0};
        count_picks(&f.route, &w, 7, c);
        assert_int_equal(c[0], 1);
        assert_int_equal(c[1], 2);
        assert_int_equal(c[2], 4);
    }
}

static void test_wrr_zero_weights(void **state)
{
    (void)state;
    struct fixture f;
    const uint32_t wt[] = {0, 60, 0, 40, 0};
    make_weights(&f, 5, wt);
    struct decide_wrr w;
    decide_wrr_init(&w, &f.route);
    unsigned count[5] = {0};
    count_picks(&f.route, &w, 10000, count);
    assert_int_equal(count[0], 0);
    assert_int_equal(count[1], 6000);
    assert_int_equal(count[2], 0);
    assert_int_equal(count[3], 4000);
    assert_int_equal(count[4], 0);

    make_two(&f, 100, 0);
    decide_wrr_init(&w, &f.route);
    for (int i = 0; i < 1000; i++)
        assert_int_equal(decide_weight(&w, &f.route), 0);
}

static void test_wrr_single_entry(void **state)
{
    (void)state;
    struct fixture f;
    const uint32_t wt[] = {7};
    make_weights(&f, 1, wt);
    struct decide_wrr w;
    decide_wrr_init(&w, &f.route);
    for (int i = 0; i < 1000; i++)
        assert_int_equal(decide_weight(&w, &f.route), 0);
    assert_int_equal(w.current[0], 0);
}

static void test_wrr_max_split(void **state)
{
    (void)state;
    struct fixture f;
    uint32_t wt[DECIDE_MAX_SPLIT];
    uint32_t total = 0;
    for (size_t i = 0; i < DECIDE_MAX_SPLIT; i++) {
        wt[i] = (uint32_t)(i + 1);
        total += wt[i];
    }
    make_weights(&f, DECIDE_MAX_SPLIT, wt);
    struct decide_wrr w;
    decide_wrr_init(&w, &f.route);
    unsigned count[DECIDE_MAX_SPLIT] = {0};
    count_picks(&f.route, &w, total * 3, count);
    for (size_t i = 0; i < DECIDE_MAX_SPLIT; i++)
        assert_int_equal(count[i], wt[i] * 3);
}

static void test_wrr_resizes_on_other_route(void **state)
{
    (void)state;
    struct fixture two, three;
    make_two(&two, 90, 10);
    const uint32_t wt[] = {1, 1, 1};
    make_weights(&three, 3, wt);
    struct decide_wrr w;
    decide_wrr_init(&w, &two.route);
    (void)decide_weight(&w, &two.route);
    /* State sized for 2 entries, used with a 3-entry route: starts a new
     * cycle instead of reading stale weights. */
    unsigned count[3] = {0};
    count_picks(&three.route, &w, 3, count);
    assert_int_equal(w.n, 3);
    assert_int_equal(count[0], 1);
    assert_int_equal(count[1], 1);
    assert_int_equal(count[2], 1);
}

static void test_wrr_all_zero(void **state)
{
    (void)state;
    struct fixture f;
    make_two(&f, 0, 0);
    struct decide_wrr w;
    decide_wrr_init(&w, &f.route);
    assert_int_equal(decide_weight(&w, &f.route), -1);
}

/* ---- cookies ----------------------------------------------------------- */

static int find(const char *header, const char *name, const char **v, size_t *n)
{
    return decide_find_cookie(header, strlen(header), name, v, n);
}

static void assert_cookie(const char *header, const char *name, const char *want)
{
    const char *v = NULL;
    size_t n = 0;
    assert_int_equal(find(header, name, &v, &n), CO_OK);
    assert_int_equal(n, strlen(want));
    assert_memory_equal(v, want, n);
    /* The value points into the header. */
    assert_true(v >= header && v + n <= header + strlen(header));
}

static void assert_no_cookie(const char *header, const char *name)
{
    const char *v = NULL;
    size_t n = 0;
    assert_int_equal(find(header, name, &v, &n), CO_DECLINED);
}

static void test_cookie_positions(void **state)
{
    (void)state;
    assert_cookie("sid=1", "sid", "1");
    assert_cookie("sid=1; b=2; c=3", "sid", "1");
    assert_cookie("a=1; sid=22; c=3", "sid", "22");
    assert_cookie("a=1; b=2; sid=333", "sid", "333");
}

static void test_cookie_whitespace(void **state)
{
    (void)state;
    assert_cookie("a=1;sid=x", "sid", "x");
    assert_cookie("a=1;   sid = x  ; b=2", "sid", "x");
    assert_cookie("\tsid=x\t", "sid", "x");
    assert_cookie("a=1 ;sid=x;", "sid", "x");
}

static void test_cookie_quoted(void **state)
{
    (void)state;
    assert_cookie("sid=\"abc\"", "sid", "abc");
    assert_cookie("a=1; sid=\"\"; b=2", "sid", "");
    assert_cookie("sid=\"", "sid", "\""); /* a lone DQUOTE is not a pair */
    assert_cookie("sid=a\"b", "sid", "a\"b");
    assert_cookie("sid=\"abc", "sid", "\"abc"); /* unbalanced: kept as sent */
    assert_cookie("sid=abc\"", "sid", "abc\"");
}

static void test_cookie_name_exact(void **state)
{
    (void)state;
    assert_cookie("xsid=1; sid=2", "sid", "2");
    assert_cookie("sid2=1; sid=2", "sid", "2");
    assert_no_cookie("xsid=1", "sid");
    assert_no_cookie("sid2=1", "sid");
    assert_no_cookie("a=sid=1", "sid"); /* in a value, not a name */
    assert_no_cookie("SID=1", "sid");   /* case-sensitive */
    assert_cookie("SID=1; sid=2", "sid", "2");
}

static void test_cookie_first_wins(void **state)
{
    (void)state;
    assert_cookie("sid=first; sid=second", "sid", "first");
}

static void test_cookie_value_edge_cases(void **state)
{
    (void)state;
    assert_cookie("sid=", "sid", "");
    assert_cookie("sid=; b=2", "sid", "");
    assert_cookie("sid=a=b", "sid", "a=b");
    assert_cookie("garbage; sid=ok", "sid", "ok");
    assert_cookie(";;; sid=ok;;", "sid", "ok");
}

static void test_cookie_absent(void **state)
{
    (void)state;
    const char *v = NULL;
    size_t n = 0;
    assert_no_cookie("", "sid");
    assert_no_cookie("a=1; b=2", "sid");
    assert_no_cookie("sid", "sid");
    assert_no_cookie(";", "sid");
    assert_no_cookie("sid=1", "");
    assert_int_equal(decide_find_cookie(NULL, 0, "sid", &v, &n), CO_DECLINED);
}

static void test_cookie_length_honoured(void **state)
{
    (void)state;
    const char header[] = "a=1; sid=abcdef";
    const char *v = NULL;
    size_t n = 0;
    assert_int_equal(decide_find_cookie(header, strlen(header) - 3, "sid", &v, &n), CO_OK);
    assert_int_equal(n, 3);
    assert_memory_equal(v, "abc", 3);
    assert_int_equal(decide_find_cookie(header, 6, "sid", &v, &n), CO_DECLINED);
}

static void test_cookie_carries_override_token(void **state)
{
    (void)state;
    struct fixture f;
    make_two(&f, 50, 50);
    char tok[128], header[256];
    token(SECRET, "aws", tok, sizeof(tok));
    snprintf(header, sizeof(header), "theme=dark; cutover_side=\"%s\"; sid=1", tok);
    const char *v = NULL;
    size_t n = 0;
    assert_int_equal(find(header, "cutover_side", &v, &n), CO_OK);
    assert_int_equal(decide_check_override(&f.route, v, n), 1);
}

/* A ramp's share: exact over each cycle of CONFIG_BUCKETS picks, evenly
 * spread, and the extremes never pick the empty side. */
static void test_weight_share_exact(void **state)
{
    (void)state;
    static const uint32_t shares[] = {0, 1, 500, 2500, 5000, 9999, 10000};
    for (size_t k = 0; k < sizeof(shares) / sizeof(shares[0]); k++) {
        struct decide_wrr w;
        memset(&w, 0, sizeof(w));
        unsigned first = 0, first_in_100 = 0;
        for (unsigned i = 0; i < CONFIG_BUCKETS; i++) {
            int idx = decide_weight_share(&w, shares[k]);
            assert_true(idx == 0 || idx == 1);
            first += idx == 0;
            if (i < 100)
                first_in_100 += idx == 0;
        }
        assert_int_equal(first, shares[k]);
        /* Smooth: the first 100 picks already carry the share (+-1). */
        assert_true(first_in_100 + 1 >= shares[k] / 100 && first_in_100 <= shares[k] / 100 + 1);
    }
}

/* Changing the share mid-cycle keeps picking both sides sanely (the state
 * is reset by the caller on a new ramp step, but must not break if not). */
static void test_weight_share_resized_state(void **state)
{
    (void)state;
    struct decide_wrr w;
    memset(&w, 0, sizeof(w));
    w.n = 3; /* sized for another split */
    w.current[2] = 12345;
    unsigned first = 0;
    for (unsigned i = 0; i < CONFIG_BUCKETS; i++)
        first += decide_weight_share(&w, 2000) == 0;
    assert_int_equal(first, 2000);
    assert_int_equal(w.n, 2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reason_names),
        cmocka_unit_test(test_token_format),
        cmocka_unit_test(test_token_known_vectors),
        cmocka_unit_test(test_token_buffer_size),
        cmocka_unit_test(test_override_valid),
        cmocka_unit_test(test_override_cluster_name_with_dots),
        cmocka_unit_test(test_override_wrong_secret),
        cmocka_unit_test(test_override_tampered_hex),
        cmocka_unit_test(test_override_signature_of_other_cluster),
        cmocka_unit_test(test_override_uppercase_hex),
        cmocka_unit_test(test_override_cluster_not_in_split),
        cmocka_unit_test(test_override_empty_and_short),
        cmocka_unit_test(test_override_no_dot),
        cmocka_unit_test(test_override_overlong),
        cmocka_unit_test(test_override_length_is_honoured),
        cmocka_unit_test(test_override_disabled),
        cmocka_unit_test(test_bucket_pinned_values),
        cmocka_unit_test(test_bucket_stable_and_length_bound),
        cmocka_unit_test(test_bucket_in_range),
        cmocka_unit_test(test_bucket_distribution),
        cmocka_unit_test(test_bucket_first_half_is_fair),
        cmocka_unit_test(test_sticky_boundaries_two_way),
        cmocka_unit_test(test_sticky_rounding_rest_to_last),
        cmocka_unit_test(test_sticky_shares_exact),
        cmocka_unit_test(test_sticky_contiguous_in_split_order),
        cmocka_unit_test(test_sticky_zero_weights),
        cmocka_unit_test(test_sticky_single_entry),
        cmocka_unit_test(test_sticky_all_zero_rejected),
        cmocka_unit_test(test_sticky_ramp_10_to_30),
        cmocka_unit_test(test_sticky_ramp_steps),
        cmocka_unit_test(test_sticky_ramp_every_percent),
        cmocka_unit_test(test_sticky_ramp_first_never_loses_multiway),
        cmocka_unit_test(test_sticky_equal_shares_same_side_across_routes),
        cmocka_unit_test(test_wrr_90_10_exact),
        cmocka_unit_test(test_wrr_exact_every_cycle),
        cmocka_unit_test(test_wrr_interleaves),
        cmocka_unit_test(test_wrr_nginx_sequence),
        cmocka_unit_test(test_wrr_three_way),
        cmocka_unit_test(test_wrr_zero_weights),
        cmocka_unit_test(test_wrr_single_entry),
        cmocka_unit_test(test_wrr_max_split),
        cmocka_unit_test(test_wrr_resizes_on_other_route),
        cmocka_unit_test(test_wrr_all_zero),
        cmocka_unit_test(test_cookie_positions),
        cmocka_unit_test(test_cookie_whitespace),
        cmocka_unit_test(test_cookie_quoted),
        cmocka_unit_test(test_cookie_name_exact),
        cmocka_unit_test(test_cookie_first_wins),
        cmocka_unit_test(test_cookie_value_edge_cases),
        cmocka_unit_test(test_cookie_absent),
        cmocka_unit_test(test_cookie_length_honoured),
        cmocka_unit_test(test_cookie_carries_override_token),
        cmocka_unit_test(test_weight_share_exact),
        cmocka_unit_test(test_weight_share_resized_state),
    };
    return cmocka_run_group_tests_name("decide", tests, NULL, NULL);
}
