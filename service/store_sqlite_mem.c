/*
 * store_sqlite_mem.c — SQLite's allocator (SQLITE_CONFIG_MALLOC): the
 * system's malloc behind a per-thread cache of freed small blocks.
 *
 * Debian's SQLite is built without lookaside (SQLITE_OMIT_LOOKASIDE), so a
 * statement mallocs for each cursor it opens, each text column it reads and
 * each record it makes, and frees them all when it ends: about 55 blocks a
 * check-in request, freed together. That is more blocks of one size than
 * glibc's per-thread cache holds (7 a size), so most went to malloc's slow
 * paths (about 190 instructions an allocation and its free, callgrind). Here
 * a freed block of up to STORE_MEM_SMALL bytes goes on its thread's list
 * for its size class and the next allocation of that class on the thread
 * takes it back: no lock, no search. The lists are bounded (STORE_MEM_KEEP
 * bytes a thread; past that a block goes back to malloc), and a thread's
 * lists are returned to malloc when it exits. Larger blocks (a B-tree
 * balance's scratch space, the page cache's pages) are malloc's own: keeping
 * a few of them measured no difference.
 */
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <sqlite3.h>

#include "service/store_internal.h"

/* Under AddressSanitizer a block on a list is poisoned past its link, as a
 * freed block of malloc's is: a read of a column's text after its statement
 * moved on, or of a freed value, is still reported rather than reading a
 * recycled block. The link stays readable, as the leak checker follows only
 * unpoisoned words (the lists would look leaked at exit). */
#if STORE_ASAN
#include <sanitizer/asan_interface.h>
#define MEM_POISON(p, n) ASAN_POISON_MEMORY_REGION((p), (n))
#define MEM_UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION((p), (n))
#else
#define MEM_POISON(p, n) ((void)(p), (void)(n))
#define MEM_UNPOISON(p, n) ((void)(p), (void)(n))
#endif

#define STORE_MEM_GRAIN 16
#define STORE_MEM_SMALL 1024 /* bytes: classes of 16, 32, ... 1024 */
#define STORE_MEM_CLASSES (STORE_MEM_SMALL / STORE_MEM_GRAIN)
#define STORE_MEM_KEEP (256 * 1024) /* bytes kept on one thread's lists at most */

/* Each block starts with its usable size (8 bytes: SQLite asks for 8-byte
 * alignment, which malloc's 16 plus 8 keeps). A freed small block's first
 * user bytes link it into its class's list. */
typedef struct {
    void *head[STORE_MEM_CLASSES]; /* user pointers of free blocks */
    size_t kept;                   /* bytes on the lists */
    bool registered;               /* the exit hook knows this thread */
} mem_cache;

static _Thread_local mem_cache cache;
static pthread_key_t cache_key;
static bool key_ok;

/* At a thread's exit: its free blocks back to malloc. */
static void cache_drain(void *arg)
{
    mem_cache *c = arg;
    for (size_t i = 0; i < STORE_MEM_CLASSES; i++) {
        while (c->head[i]) {
            void *p = c->head[i];
            MEM_UNPOISON(p, (i + 1) * STORE_MEM_GRAIN);
            memcpy(&c->head[i], p, sizeof(void *));
            free((uint64_t *)p - 1);
        }
    }
    c->kept = 0;
    c->registered = false; /* a later free on the way out registers again */
}

static void *mem_malloc(int n)
{
    if (n <= 0)
        return NULL;
    size_t size = (size_t)n;
    if (size <= STORE_MEM_SMALL) {
        size = (size + STORE_MEM_GRAIN - 1) & ~(size_t)(STORE_MEM_GRAIN - 1);
        void **slot = &cache.head[size / STORE_MEM_GRAIN - 1];
        if (*slot) {
            void *p = *slot;
            MEM_UNPOISON(p, size);
            memcpy(slot, p, sizeof(void *));
            cache.kept -= size;
            return p;
        }
    } else {
        size = (size + 7) & ~(size_t)7;
    }
    uint64_t *b = malloc(sizeof *b + size);
    if (!b)
        return NULL;
    *b = size;
    return b + 1;
}

static void mem_free(void *p)
{
    if (!p)
        return;
    uint64_t *b = (uint64_t *)p - 1;
    size_t size = (size_t)*b;
    if (size > STORE_MEM_SMALL || cache.kept + size > STORE_MEM_KEEP) {
        free(b);
        return;
    }
    if (!cache.registered) {
        /* Once a thread: its lists go back to malloc when it exits. Without
         * the hook (the key could not be made) the block goes back now. */
        if (!key_ok || pthread_setspecific(cache_key, &cache) != 0) {
            free(b);
            return;
        }
        cache.registered = true;
    }
    void **slot = &cache.head[size / STORE_MEM_GRAIN - 1];
    memcpy(p, slot, sizeof(void *));
    MEM_POISON((char *)p + sizeof(void *), size - sizeof(void *));
    *slot = p;
    cache.kept += size;
}

static int mem_size(void *p)
{
    return p ? (int)((uint64_t *)p)[-1] : 0;
}

static void *mem_realloc(void *p, int n)
{
    if (!p)
        return mem_malloc(n);
    if (n <= 0) {
        mem_free(p);
        return NULL;
    }
    size_t old = (size_t)((uint64_t *)p)[-1];
    if ((size_t)n <= old && (old <= STORE_MEM_SMALL || (size_t)n > old / 2))
        return p; /* fits where it is; its size stays what the header says */
    void *q = mem_malloc(n);
    if (!q)
        return NULL;
    memcpy(q, p, old < (size_t)n ? old : (size_t)n);
    mem_free(p);
    return q;
}

static int mem_roundup(int n)
{
    if (n <= 0)
        return n;
    if (n <= STORE_MEM_SMALL)
        return (n + STORE_MEM_GRAIN - 1) & ~(STORE_MEM_GRAIN - 1);
    return (n + 7) & ~7;
}

static int mem_init(void *arg)
{
    (void)arg;
    return SQLITE_OK;
}

static void mem_shutdown(void *arg)
{
    (void)arg;
}

void store_sqlite_mem_install(void)
{
    static const sqlite3_mem_methods methods = {
        mem_malloc, mem_free, mem_realloc, mem_size, mem_roundup, mem_init, mem_shutdown, NULL,
    };
    key_ok = pthread_key_create(&cache_key, cache_drain) == 0;
    /* Refused (SQLITE_MISUSE) once SQLite has initialised: then its own
     * allocator stays, which only costs the CPU above. */
    sqlite3_config(SQLITE_CONFIG_MALLOC, &methods);
}
