/*
 * p256_cache.c — the set-associative cache of P-256 key tables (see
 * p256_cache.h): sets of four slots, least recently used replaced, by a
 * 32-byte key the caller gives.
 *
 * Why sets and not one slot per key's hash: a phone's messages of one
 * phase come seconds apart while hundreds of other keys pass; with one
 * slot per hash a table was lost whenever any other key of its slot came
 * between (docs/scaling.md, "The service's kept P-256 key tables").
 */
#include "core/p256_cache.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
    unsigned char key[32];
    bool ready;           /* |table| holds the table of |key|'s point */
    uint64_t used;        /* the cache's clock at the slot's last use */
    esim_p256_key *table; /* NULL: never used */
} slot;

struct esim_p256_cache {
    size_t sets;
    uint64_t clock; /* counts the slots' uses (slot.used) */
    esim_p256_cache_counts n;
    slot slot[];
};

esim_p256_cache *esim_p256_cache_new(size_t slots)
{
    size_t sets = slots ? (slots - 1) / ESIM_P256_CACHE_WAYS + 1 : 1;
    if (sets > (SIZE_MAX - sizeof(esim_p256_cache)) / (ESIM_P256_CACHE_WAYS * sizeof(slot)))
        return NULL;
    esim_p256_cache *c = calloc(1, sizeof *c + sets * ESIM_P256_CACHE_WAYS * sizeof(slot));
    if (c)
        c->sets = sets;
    return c;
}

void esim_p256_cache_free(esim_p256_cache *c)
{
    if (!c)
        return;
    for (size_t i = 0; i < c->sets * ESIM_P256_CACHE_WAYS; i++)
        free(c->slot[i].table);
    free(c);
}

const esim_p256_key *esim_p256_cache_get(esim_p256_cache *c, const unsigned char key[32],
                                         const unsigned char point[65], bool *built)
{
    uint64_t h; /* the key's first eight bytes, little-endian */
    memcpy(&h, key, sizeof h);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    h = __builtin_bswap64(h);
#endif
    slot *set = &c->slot[(size_t)(h % c->sets) * ESIM_P256_CACHE_WAYS], *old = set;
    c->n.lookups++;
    if (built)
        *built = false;
    for (int w = 0; w < ESIM_P256_CACHE_WAYS; w++) {
        slot *s = &set[w];
        if (s->ready && memcmp(s->key, key, sizeof s->key) == 0) {
            s->used = ++c->clock;
            c->n.hits++;
            return s->table;
        }
        /* An empty slot first, else the least recently used. */
        if (old->ready && (!s->ready || s->used < old->used))
            old = s;
    }
    old->ready = false;
    if (!old->table && !(old->table = malloc(sizeof *old->table)))
        return NULL;
    /* Refuses a point that is not on the curve. */
    if (!esim_p256_key_init(old->table, point))
        return NULL;
    memcpy(old->key, key, sizeof old->key);
    old->ready = true;
    old->used = ++c->clock;
    c->n.builds++;
    if (built)
        *built = true;
    return old->table;
}

void esim_p256_cache_counts_of(const esim_p256_cache *c, esim_p256_cache_counts *out)
{
    *out = c->n;
}

size_t esim_p256_cache_slots(const esim_p256_cache *c)
{
    return c->sets * ESIM_P256_CACHE_WAYS;
}
