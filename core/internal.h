/*
 * internal.h — small helpers every part of esim-mdm shares but that are not
 * public API (this header is not installed and nothing here is exported
 * from libesim-mdm): string hashing, growing arrays, and what a process
 * uses in memory and CPU. One copy here instead of one per file.
 */
#ifndef ESIM_CORE_INTERNAL_H
#define ESIM_CORE_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "core/esim.h"

/* |s| into |out| of |size| bytes (size > 0), cut to size - 1 bytes and
 * NUL-terminated, as snprintf(out, size, "%s", s) does, without its format
 * parsing: for text copied on every request (the access line). */
void esim_copy_text(char *out, size_t size, const char *s);
/* |v| in decimal into |out| (at least 21 bytes), NUL-terminated. */
void esim_format_u64(char out[21], uint64_t v);

/* Each byte's value as a base64 digit (0..63; core/encode.c, the plist
 * fast path's <data>): ESIM_BASE64_PAD for '=', ESIM_BASE64_SPACE for what
 * isspace() calls space in the C locale, ESIM_BASE64_BAD for anything else
 * (all three negative). */
#define ESIM_BASE64_BAD (-1)
#define ESIM_BASE64_PAD (-2)
#define ESIM_BASE64_SPACE (-3)
extern const signed char esim_base64_digit[256];

/* 64-bit FNV-1a of a NUL-terminated string: fast and well spread, for hash
 * tables keyed by UDIDs, tokens, ICCIDs. Not for anything an attacker must
 * not be able to collide on purpose. */
uint64_t esim_hash_str(const char *s);
/* The same over |len| bytes (addresses, binary keys). */
uint64_t esim_hash_bytes(const void *data, size_t len);

/*
 * Makes room for at least |need| items of |size| bytes in |items| (NULL for
 * none yet), whose capacity is *cap items: an empty array gets exactly
 * |need|, a full one doubles until it holds |need|. Returns the array, moved
 * or not, with *cap updated; or NULL when out of memory or |need| * |size|
 * overflows, and then |items| and *cap are untouched (the caller still owns
 * |items|). Typical use:
 *     if (n == cap) { T *g = esim_grow(arr, &cap, n + 1, sizeof *g); if (!g) ...; arr = g; }
 */
void *esim_grow(void *items, size_t *cap, size_t need, size_t size);

/* Replaces |path| with |data| as esim_write_file_atomic does (a temporary
 * renamed over it: a reader sees the old or the new content, never a
 * mix) but without its fsyncs, so a crash may lose the new content or leave
 * the file empty: for files that are made again when they are wrong (the
 * device simulator's identity files), where an fsync (≈ 10 ms on a busy
 * disk) would stall an event loop serving thousands of devices. */
esim_err esim_write_file_replace(const char *path, const void *data, size_t len, unsigned mode,
                                 esim_error *err);

/* What a process uses, from /proc (Linux). */
typedef struct {
    long rss_kb;      /* resident memory now (VmRSS) */
    long peak_rss_kb; /* the most it has been resident (VmHWM) */
    double cpu_s;     /* user + system CPU time so far */
} esim_proc_usage;

/* Reads |pid|'s usage (0: this process). ESIM_ENOTFOUND when there is no
 * such process (or /proc is not there); fields it cannot read stay 0. */
esim_err esim_proc_usage_read(pid_t pid, esim_proc_usage *out);
/* The CPU time (user + system, seconds) of thread |tid| of process |pid|
 * alone (/proc/PID/task/TID/stat; |tid| == |pid|: its main thread) into
 * *|cpu_s|. ESIM_ENOTFOUND when there is no such thread, ESIM_EINVAL when
 * its line cannot be read (*|cpu_s| 0 either way). */
esim_err esim_thread_cpu_read(pid_t pid, pid_t tid, double *cpu_s);

#endif
