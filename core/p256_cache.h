/*
 * p256_cache.h — P-256 key tables (p256.h's esim_p256_key, 2 KiB each)
 * kept for keys that verify again and again, in one set-associative cache
 * shared by the service (kept identity keys), the SM-DP+ simulator (eUICC
 * keys) and the device simulator (the keys of its trust anchors and of the
 * SM-DP+). Not installed, nothing exported from libesim-mdm.
 *
 * A table is found by a 32-byte key the caller chooses: a SHA-256 digest
 * of the certificate that carries the point, or of the point itself. The
 * key must name one point: a table found by its key is used without
 * looking at the point again, so two points under one key would verify
 * each other's signatures. The slots are in sets of ESIM_P256_CACHE_WAYS
 * (the set from the key's first eight bytes, little-endian, modulo the
 * number of sets); a key not found takes its set's empty slot, else the
 * least recently used one, and its table is made there from the point.
 * A table is a property of the public key, never a verdict: every
 * signature is still verified with it.
 *
 * Memory: esim_p256_cache_new(n) takes about 56 bytes a slot at once, and
 * each slot's table (sizeof(esim_p256_key), 2 KiB) when the slot is first
 * used; it keeps it for the slot's next keys. So a cache of n slots holds
 * at most n × (2 KiB + 56 bytes), about 2.1 MiB per 1,024 slots.
 *
 * A cache is not locked: one thread uses it at a time (each owner keeps
 * its cache on the thread that verifies).
 */
#ifndef ESIM_CORE_P256_CACHE_H
#define ESIM_CORE_P256_CACHE_H

#include "core/p256.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define ESIM_P256_CACHE_WAYS 4

typedef struct esim_p256_cache esim_p256_cache;

/* What a cache has done since it was made. */
typedef struct {
    uint64_t lookups; /* esim_p256_cache_get calls */
    uint64_t hits;    /* ... that found their key's table */
    uint64_t builds;  /* tables made (a miss whose point made a table) */
} esim_p256_cache_counts;

/* A cache of |slots| tables, rounded up to whole sets of four (0 gives one
 * set). The caller frees it with esim_p256_cache_free. NULL: out of
 * memory, or |slots| too large to count. */
esim_p256_cache *esim_p256_cache_new(size_t slots);

/* Frees |c| and every table in it. NULL is fine. */
void esim_p256_cache_free(esim_p256_cache *c);

/* The table for |key|: the one kept under it, or one made now from
 * |point| (65 bytes: 0x04, X, Y) in its set's empty or least recently
 * used slot; either way the slot becomes its set's most recently used.
 * *built (may be NULL) says whether a table was made. The table belongs
 * to |c| and is good until the next call on |c|. NULL when no table could
 * be made (out of memory, or |point| is not an uncompressed point on the
 * curve): the slot is left empty and the caller verifies some other way. */
const esim_p256_key *esim_p256_cache_get(esim_p256_cache *c, const unsigned char key[32],
                                         const unsigned char point[65], bool *built);

/* The cache's counts into |out|. */
void esim_p256_cache_counts_of(const esim_p256_cache *c, esim_p256_cache_counts *out);

/* How many slots |c| has (a multiple of ESIM_P256_CACHE_WAYS). */
size_t esim_p256_cache_slots(const esim_p256_cache *c);

#endif
