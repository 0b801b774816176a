/*
 * util.c — the shared helpers of core/internal.h: FNV-1a, growing arrays,
 * and a process's memory and CPU time read from /proc.
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/internal.h"

uint64_t esim_hash_str(const char *s)
{
    uint64_t h = 14695981039346656037ull; /* FNV-1a offset basis */
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull; /* FNV prime */
    return h;
}

uint64_t esim_hash_bytes(const void *data, size_t len)
{
    const unsigned char *p = data;
    uint64_t h = 14695981039346656037ull;
    for (size_t i = 0; i < len; i++)
        h = (h ^ p[i]) * 1099511628211ull;
    return h;
}

void *esim_grow(void *items, size_t *cap, size_t need, size_t size)
{
    if (need <= *cap)
        return items;
    size_t n = *cap ? *cap : need;
    while (n < need)
        n = n > SIZE_MAX / 2 ? need : n * 2;
    if (size && n > SIZE_MAX / size)
        return NULL;
    void *grown = realloc(items, n * size);
    if (grown)
        *cap = n;
    return grown;
}

void esim_copy_text(char *out, size_t size, const char *s)
{
    size_t n = strnlen(s, size - 1);
    memcpy(out, s, n);
    out[n] = '\0';
}

void esim_format_u64(char out[21], uint64_t v)
{
    char tmp[21];
    size_t n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    for (size_t i = 0; i < n; i++)
        out[i] = tmp[n - 1 - i];
    out[n] = '\0';
}

/* utime + stime of the /proc stat file |path| into *|out| in seconds: 1;
 * 0 (*|out| left as it was) when its line cannot be read; -1 when the file
 * cannot be opened (no such process or thread). */
static int stat_cpu_s(const char *path, double *out)
{
    char line[512];
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    bool ok = false;
    if (fgets(line, sizeof line, f)) {
        /* After the ")" that ends the command name: utime is the 12th field
         * and stime the 13th (proc(5)). */
        const char *p = strrchr(line, ')');
        unsigned long ut = 0, st = 0;
        ok = p &&
             sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) == 2;
        if (ok)
            *out = (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
    }
    fclose(f);
    return ok ? 1 : 0;
}

esim_err esim_proc_usage_read(pid_t pid, esim_proc_usage *out)
{
    memset(out, 0, sizeof *out);
    char dir[32], path[48], line[512];
    if (pid > 0)
        snprintf(dir, sizeof dir, "/proc/%d", (int)pid);
    else
        snprintf(dir, sizeof dir, "/proc/self");
    snprintf(path, sizeof path, "%s/status", dir);
    FILE *f = fopen(path, "r");
    if (!f)
        return ESIM_ENOTFOUND;
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, "VmRSS:", 6) == 0)
            out->rss_kb = atol(line + 6);
        else if (strncmp(line, "VmHWM:", 6) == 0)
            out->peak_rss_kb = atol(line + 6);
    }
    fclose(f);
    snprintf(path, sizeof path, "%s/stat", dir);
    return stat_cpu_s(path, &out->cpu_s) < 0 ? ESIM_ENOTFOUND : ESIM_OK;
}

esim_err esim_thread_cpu_read(pid_t pid, pid_t tid, double *cpu_s)
{
    char path[64];
    *cpu_s = 0;
    snprintf(path, sizeof path, "/proc/%d/task/%d/stat", (int)pid, (int)tid);
    int got = stat_cpu_s(path, cpu_s);
    return got > 0 ? ESIM_OK : got < 0 ? ESIM_ENOTFOUND : ESIM_EINVAL;
}
