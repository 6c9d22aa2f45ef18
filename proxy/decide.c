/*
 * decide.c - choosing the side (cluster) for a request (DESIGN.md "Choosing
 * the side"): override token, sticky bucket, smooth weighted round robin.
 *
 * Everything here is a pure function of its arguments except struct
 * decide_wrr, which each worker keeps per route; nothing is shared between
 * threads, so there are no locks.
 */
#include "decide.h"

#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "common.h"

#define HMAC_SHA256_LEN 32

const char *decide_reason_name(enum decide_reason r)
{
    switch (r) {
    case DECIDE_OVERRIDE:
        return "override";
    case DECIDE_STICKY:
        return "sticky";
    case DECIDE_WEIGHT:
        return "weight";
    case DECIDE_FAILOVER:
        return "failover";
    }
    return "unknown";
}

/* ---- override token -------------------------------------------------- */

/* HMAC-SHA256(secret, cluster) as 64 lowercase hex digits (not terminated). */
static int token_hex(const char *secret, size_t secret_len, const char *cluster, size_t cluster_len, char hex[DECIDE_TOKEN_HEXLEN])
{
    static const char digits[] = "0123456789abcdef";
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int md_len = 0;

    /* HMAC() one-shot is not deprecated in OpenSSL 3 (only HMAC_CTX_* are). */
    if (HMAC(EVP_sha256(), secret, (int)secret_len, (const unsigned char *)cluster, cluster_len, md, &md_len) == NULL ||
        md_len != HMAC_SHA256_LEN)
        return CO_ERROR;
    for (unsigned int i = 0; i < HMAC_SHA256_LEN; i++) {
        hex[2 * i] = digits[md[i] >> 4];
        hex[2 * i + 1] = digits[md[i] & 0x0f];
    }
    OPENSSL_cleanse(md, sizeof(md));
    return CO_OK;
}

int decide_token(const char *secret, size_t secret_len, const char *cluster, char *out, size_t outlen)
{
    if (secret == NULL || cluster == NULL || out == NULL || secret_len > INT32_MAX)
        return CO_ERROR;
    size_t n = strlen(cluster);
    if (outlen < n + 1 + DECIDE_TOKEN_HEXLEN + 1) {
        if (outlen > 0)
            out[0] = '\0';
        return CO_ERROR;
    }
    memcpy(out, cluster, n);
    out[n] = '.';
    if (token_hex(secret, secret_len, cluster, n, out + n + 1) != CO_OK) {
        out[0] = '\0';
        return CO_ERROR;
    }
    out[n + 1 + DECIDE_TOKEN_HEXLEN] = '\0';
    return CO_OK;
}

static bool is_lower_hex(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')))
            return false;
    }
    return true;
}

int decide_check_override(const struct route_conf *route, const char *value, size_t value_len)
{
    if (route == NULL || value == NULL || !route->override.enabled || route->override.secret == NULL ||
        route->override.secret_len == 0 || route->override.secret_len > INT32_MAX)
        return -1;

    /* "CLUSTER.HEX": the hex part has no '.', so the separator is the last
     * '.', exactly DECIDE_TOKEN_HEXLEN bytes from the end. Cluster names may
     * themselves contain '.'. Wrong shapes are rejected before any hashing. */
    if (value_len < 1 + 1 + DECIDE_TOKEN_HEXLEN)
        return -1;
    size_t cluster_len = value_len - 1 - DECIDE_TOKEN_HEXLEN;
    const char *given = value + cluster_len + 1;
    if (value[cluster_len] != '.' || !is_lower_hex(given, DECIDE_TOKEN_HEXLEN))
        return -1;

    /* Only clusters of this route's split can be forced. The cluster name is
     * public, so looking it up before the MAC check leaks nothing. */
    size_t n = route->n_split > DECIDE_MAX_SPLIT ? DECIDE_MAX_SPLIT : route->n_split;
    int found = -1;
    for (size_t i = 0; i < n; i++) {
        const struct cluster_conf *c = route->split[i].cluster;
        if (c == NULL || c->name == NULL)
            continue;
        if (strlen(c->name) == cluster_len && memcmp(c->name, value, cluster_len) == 0) {
            found = (int)i;
            break;
        }
    }
    if (found < 0)
        return -1;

    char expect[DECIDE_TOKEN_HEXLEN];
    if (token_hex(route->override.secret, route->override.secret_len, value, cluster_len, expect) != CO_OK)
        return -1;
    /* Constant time: the comparison must not tell an attacker how many
     * leading digits of a forged signature were right. */
    int differ = CRYPTO_memcmp(expect, given, DECIDE_TOKEN_HEXLEN);
    OPENSSL_cleanse(expect, sizeof(expect));
    return differ == 0 ? found : -1;
}

/* ---- sticky ------------------------------------------------------------ */

/*
 * FROZEN. The bucket of a key decides which side a sticky user lands on, on
 * every replica and across versions. Changing anything here (hash, seed,
 * finaliser, modulus, byte order) would move every sticky user at once during
 * a rollout. tests/unit/proxy/decide_test.c pins known values; if that test
 * fails, the change is wrong, not the test.
 *
 * 64-bit FNV-1a (offset basis 14695981039346656037, prime 1099511628211) over
 * the key bytes, then the murmur3 fmix64 finaliser (FNV-1a alone mixes its
 * low bits poorly for short, similar keys), then % CONFIG_BUCKETS.
 */
uint32_t decide_bucket(const char *key, size_t key_len)
{
    uint64_t h = UINT64_C(14695981039346656037);
    for (size_t i = 0; i < key_len; i++) {
        h ^= (unsigned char)key[i];
        h *= UINT64_C(1099511628211);
    }
    h ^= h >> 33;
    h *= UINT64_C(0xff51afd7ed558ccd);
    h ^= h >> 33;
    h *= UINT64_C(0xc4ceb9fe1a85ec53);
    h ^= h >> 33;
    return (uint32_t)(h % CONFIG_BUCKETS);
}

/*
 * Split i owns floor(CONFIG_BUCKETS * weight_i / total) buckets laid out in
 * split order; the last entry with nonzero weight also takes the rounding
 * rest, up to CONFIG_BUCKETS. Raising split[0]'s weight only grows [0, share0),
 * so with two sides users only move from the old side to the new one.
 * Returns -1 only for a route the loader rejects (no split, all weights 0).
 */
int decide_sticky(const struct route_conf *route, uint32_t bucket)
{
    size_t n = route->n_split;
    if (n > DECIDE_MAX_SPLIT)
        n = DECIDE_MAX_SPLIT;

    uint64_t total = 0;
    size_t last = 0;
    for (size_t i = 0; i < n; i++) {
        if (route->split[i].weight > 0) {
            total += route->split[i].weight;
            last = i;
        }
    }
    if (total == 0)
        return -1;

    uint64_t start = 0;
    for (size_t i = 0; i < last; i++) {
        uint64_t w = route->split[i].weight;
        if (w == 0)
            continue;
        uint64_t share = (uint64_t)CONFIG_BUCKETS * w / total;
        if (bucket < start + share)
            return (int)i;
        start += share;
    }
    return (int)last;
}

/* ---- weight ------------------------------------------------------------ */

void decide_wrr_init(struct decide_wrr *w, const struct route_conf *route)
{
    memset(w, 0, sizeof(*w));
    w->n = route->n_split > DECIDE_MAX_SPLIT ? DECIDE_MAX_SPLIT : route->n_split;
}

/*
 * nginx smooth weighted round robin (ngx_http_upstream_get_peer): every entry
 * gains its weight, the largest current value wins (first on a tie) and pays
 * back the total. The currents always sum to 0 after a pick and return to all
 * zero after exactly `total` picks, which makes each cycle exact and
 * interleaved (90/10 never picks the 10 twice in a row).
 */
static int wrr_next(struct decide_wrr *w, const int64_t *weight, size_t n)
{
    int64_t total = 0;
    int best = -1;
    for (size_t i = 0; i < n; i++) {
        if (weight[i] == 0)
            continue;
        w->current[i] += weight[i];
        total += weight[i];
        if (best < 0 || w->current[i] > w->current[best])
            best = (int)i;
    }
    if (best >= 0)
        w->current[best] -= total;
    return best;
}

int decide_weight(struct decide_wrr *w, const struct route_conf *route)
{
    size_t n = route->n_split > DECIDE_MAX_SPLIT ? DECIDE_MAX_SPLIT : route->n_split;
    if (w->n != n)
        decide_wrr_init(w, route); /* state sized for another split: start a new cycle */
    int64_t weight[DECIDE_MAX_SPLIT];
    for (size_t i = 0; i < n; i++)
        weight[i] = route->split[i].weight;
    return wrr_next(w, weight, n);
}

int decide_weight_share(struct decide_wrr *w, uint32_t share)
{
    if (w->n != 2) {
        memset(w, 0, sizeof(*w));
        w->n = 2;
    }
    if (share > CONFIG_BUCKETS)
        share = CONFIG_BUCKETS;
    int64_t weight[2] = {share, CONFIG_BUCKETS - share};
    return wrr_next(w, weight, 2);
}

/* ---- cookies ----------------------------------------------------------- */

static bool is_ows(char c)
{
    return c == ' ' || c == '\t';
}

/*
 * RFC 6265 §4.2.1 / §5.4, read loosely: "name=value" pairs separated by ';'
 * with optional whitespace; a value may be wrapped in DQUOTEs, which are not
 * part of it. Names compare exactly (case-sensitive), whole name only: "xsid"
 * is not "sid". The first pair with the name wins. Pairs without '=' are
 * skipped.
 */
int decide_find_cookie(const char *header, size_t header_len, const char *name, const char **val, size_t *val_len)
{
    if (header == NULL || name == NULL)
        return CO_DECLINED;
    size_t name_len = strlen(name);
    if (name_len == 0)
        return CO_DECLINED;

    const char *p = header;
    const char *end = header + header_len;
    while (p < end) {
        const char *semi = memchr(p, ';', (size_t)(end - p));
        const char *pair_end = semi != NULL ? semi : end;

        const char *s = p;
        while (s < pair_end && is_ows(*s))
            s++;
        const char *eq = memchr(s, '=', (size_t)(pair_end - s));
        if (eq != NULL) {
            const char *ne = eq;
            while (ne > s && is_ows(ne[-1]))
                ne--;
            if ((size_t)(ne - s) == name_len && memcmp(s, name, name_len) == 0) {
                const char *v = eq + 1;
                const char *ve = pair_end;
                while (v < ve && is_ows(*v))
                    v++;
                while (ve > v && is_ows(ve[-1]))
                    ve--;
                if (ve - v >= 2 && v[0] == '"' && ve[-1] == '"') {
                    v++;
                    ve--;
                }
                *val = v;
                *val_len = (size_t)(ve - v);
                return CO_OK;
            }
        }
        if (semi == NULL)
            break;
        p = semi + 1;
    }
    return CO_DECLINED;
}
