/*
 * progress.c — the campaign progress line (progress.h): the counts that
 * matter, and on a terminal a bar that fits its width, so a redraw with
 * "\r" stays on one line instead of wrapping into several.
 */
#include "cli/progress.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

int progress_columns(int fd)
{
    if (!isatty(fd))
        return 0;
    struct winsize ws;
    if (ioctl(fd, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0)
        return ws.ws_col;
    const char *env = getenv("COLUMNS");
    long n = env ? strtol(env, NULL, 10) : 0;
    return n > 0 && n < 10000 ? (int)n : 80;
}

size_t progress_format(char *out, size_t cap, const progress_counts *c, int columns)
{
    if (cap == 0)
        return 0;
    char counts[320];
    int n = snprintf(counts, sizeof counts,
                     "%ld/%ld  verified %ld  failed %ld  active %ld  waiting %ld  "
                     "refresh-acked %ld  unverified %ld  timed out %ld  %.1fs",
                     c->finished, c->total, c->verified, c->failed, c->active, c->waiting,
                     c->refresh_acked, c->unverified, c->timed_out, c->elapsed_s);
    size_t len = n > 0 ? (size_t)n : 0;
    if (len >= sizeof counts)
        len = sizeof counts - 1;
    if (columns <= 0) {
        snprintf(out, cap, "%s", counts);
        return strlen(out);
    }
    size_t room = columns > 1 ? (size_t)columns - 1 : 1; /* the last column wraps */
    /* A bar of 10 to 30 cells and a space, when the counts leave room. */
    size_t bar = 0;
    if (room >= len + 13)
        bar = room - len - 3 > 30 ? 30 : room - len - 3;
    if (!bar && len > room) {
        /* Cut after the last whole field that fits ("  " separates them). */
        size_t cut = 0;
        for (size_t i = 0; i + 1 < len && i <= room; i++)
            if (counts[i] == ' ' && counts[i + 1] == ' ')
                cut = i;
        len = cut ? cut : room;
        counts[len] = '\0';
    }
    size_t at = 0;
    if (bar) {
        size_t fill =
            c->total > 0 ? (size_t)((double)c->finished * (double)bar / (double)c->total) : 0;
        if (fill > bar)
            fill = bar;
        if (at < cap - 1)
            out[at++] = '[';
        for (size_t i = 0; i < bar && at < cap - 1; i++)
            out[at++] = i < fill ? '#' : '.';
        for (const char *s = "] "; *s && at < cap - 1; s++)
            out[at++] = *s;
    }
    for (size_t i = 0; i < len && at < cap - 1; i++)
        out[at++] = counts[i];
    out[at] = '\0';
    return at;
}
