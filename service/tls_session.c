/*
 * tls_session.c — the server-side TLS session table (tls_session.h).
 * Chained hashing on the ID (esim_hash_bytes), and one list from the
 * oldest session to the newest for expiry and eviction: every session lives
 * as long as the others, so the oldest is also the first to expire.
 */
#include <stdlib.h>
#include <string.h>

#include "core/internal.h"
#include "service/tls_session.h"

#define ID_MAX 32

typedef struct tls_node {
    struct tls_node *chain;         /* next in its bucket */
    struct tls_node *older, *newer; /* the age list */
    int64_t expires_ms;
    uint16_t der_len;
    unsigned char id_len;
    unsigned char id[ID_MAX];
    unsigned char der[];
} tls_node;

struct tls_sessions {
    tls_node **bucket;
    size_t cap; /* buckets, a power of two */
    size_t len, max;
    tls_node *oldest, *newest;
};

static size_t bucket_of(const unsigned char *id, size_t id_len, size_t cap)
{
    return (size_t)esim_hash_bytes(id, id_len) & (cap - 1);
}

tls_sessions *tls_sessions_new(size_t max)
{
    tls_sessions *t = calloc(1, sizeof *t);
    if (!t)
        return NULL;
    t->max = max ? max : 1;
    t->cap = 256;
    t->bucket = calloc(t->cap, sizeof *t->bucket);
    if (!t->bucket) {
        free(t);
        return NULL;
    }
    return t;
}

void tls_sessions_clear(tls_sessions *t)
{
    if (!t)
        return;
    for (tls_node *n = t->oldest, *next; n; n = next) {
        next = n->newer;
        free(n);
    }
    memset(t->bucket, 0, t->cap * sizeof *t->bucket);
    t->oldest = t->newest = NULL;
    t->len = 0;
}

void tls_sessions_free(tls_sessions *t)
{
    if (!t)
        return;
    tls_sessions_clear(t);
    free(t->bucket);
    free(t);
}

size_t tls_sessions_count(const tls_sessions *t)
{
    return t ? t->len : 0;
}

/* The link that points at the node with |id| (or at the NULL ending its
 * bucket). */
static tls_node **find(tls_sessions *t, const unsigned char *id, size_t id_len)
{
    tls_node **p = &t->bucket[bucket_of(id, id_len, t->cap)];
    while (*p && ((*p)->id_len != id_len || memcmp((*p)->id, id, id_len) != 0))
        p = &(*p)->chain;
    return p;
}

static void unlink_node(tls_sessions *t, tls_node **link)
{
    tls_node *n = *link;
    *link = n->chain;
    if (n->older)
        n->older->newer = n->newer;
    else
        t->oldest = n->newer;
    if (n->newer)
        n->newer->older = n->older;
    else
        t->newest = n->older;
    t->len--;
    free(n);
}

void tls_sessions_remove(tls_sessions *t, const unsigned char *id, size_t id_len)
{
    if (!t || !id || id_len == 0 || id_len > ID_MAX)
        return;
    tls_node **link = find(t, id, id_len);
    if (*link)
        unlink_node(t, link);
}

/* Doubles the buckets (best effort: chains just get longer without). */
static void grow(tls_sessions *t)
{
    size_t cap = t->cap * 2;
    tls_node **b = calloc(cap, sizeof *b);
    if (!b)
        return;
    for (tls_node *n = t->oldest; n; n = n->newer) {
        size_t i = bucket_of(n->id, n->id_len, cap);
        n->chain = b[i];
        b[i] = n;
    }
    free(t->bucket);
    t->bucket = b;
    t->cap = cap;
}

bool tls_sessions_put(tls_sessions *t, const unsigned char *id, size_t id_len,
                      const unsigned char *der, size_t der_len, int64_t expires_ms, int64_t now_ms)
{
    if (!t || !id || id_len == 0 || id_len > ID_MAX || !der || der_len == 0 || der_len > UINT16_MAX)
        return false;
    tls_node *n = malloc(sizeof *n + der_len);
    if (!n)
        return false;
    tls_sessions_remove(t, id, id_len);
    while (t->oldest && (t->oldest->expires_ms <= now_ms || t->len >= t->max))
        unlink_node(t, find(t, t->oldest->id, t->oldest->id_len));
    if (t->len >= t->cap)
        grow(t);
    n->expires_ms = expires_ms;
    n->der_len = (uint16_t)der_len;
    n->id_len = (unsigned char)id_len;
    memcpy(n->id, id, id_len);
    memcpy(n->der, der, der_len);
    size_t i = bucket_of(id, id_len, t->cap);
    n->chain = t->bucket[i];
    t->bucket[i] = n;
    n->newer = NULL;
    n->older = t->newest;
    if (t->newest)
        t->newest->newer = n;
    else
        t->oldest = n;
    t->newest = n;
    t->len++;
    return true;
}

const unsigned char *tls_sessions_get(tls_sessions *t, const unsigned char *id, size_t id_len,
                                      int64_t now_ms, size_t *der_len)
{
    if (!t || !id || id_len == 0 || id_len > ID_MAX)
        return NULL;
    tls_node *n = *find(t, id, id_len);
    if (!n || n->expires_ms <= now_ms)
        return NULL;
    *der_len = n->der_len;
    return n->der;
}
