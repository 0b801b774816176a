/*
 * progress.h — the campaign progress line the CLI draws on standard error:
 * on a terminal a bar sized to its width and redrawn in place on one line;
 * otherwise plain lines without a bar.
 */
#ifndef ESIM_CLI_PROGRESS_H
#define ESIM_CLI_PROGRESS_H

#include <stddef.h>

typedef struct {
    long finished, total; /* devices in a final state, all devices */
    long verified, refresh_acked, active, waiting, failed, unverified, timed_out;
    double elapsed_s;
} progress_counts;

/* The width of the terminal on |fd| in columns, or 0 when |fd| is not a
 * terminal (then no bar is drawn). $COLUMNS stands in when the terminal
 * does not say. */
int progress_columns(int fd);

/*
 * Writes the line for |c| into |out| (|cap| bytes, NUL-terminated, no line
 * end). With |columns| > 0 the line is at most columns - 1 characters: a
 * bar of 10 to 30 cells when there is room, the counts cut at a field
 * boundary when there is not. With 0, the counts alone. Returns the length.
 */
size_t progress_format(char *out, size_t cap, const progress_counts *c, int columns);

#endif
