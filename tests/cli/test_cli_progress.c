/*
 * test_cli_progress.c — cli/progress.c: the campaign progress line fits the
 * terminal's width (one line, redrawn in place), has a bar only on a
 * terminal, and keeps whole fields when it must be cut.
 */
#define _XOPEN_SOURCE 700
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <cmocka.h>

#include "cli/progress.h"

static const progress_counts mid = {.finished = 1000,
                                    .total = 2000,
                                    .verified = 900,
                                    .refresh_acked = 950,
                                    .active = 50,
                                    .waiting = 2,
                                    .failed = 3,
                                    .elapsed_s = 12.3};

static void test_fits_every_width(void **state)
{
    (void)state;
    char line[400];
    for (int cols = 8; cols <= 300; cols++) {
        size_t n = progress_format(line, sizeof line, &mid, cols);
        assert_int_equal(n, strlen(line));
        if (n > (size_t)cols - 1)
            fail_msg("%d columns: %zu characters: %s", cols, n, line);
        assert_null(strchr(line, '\n'));
        assert_null(strchr(line, '\r'));
        /* Never a field cut in the middle: it ends with a whole one. */
        assert_int_not_equal(line[n - 1], ' ');
    }
    /* Wide: a 30-cell bar half full, then every count. */
    progress_format(line, sizeof line, &mid, 200);
    assert_memory_equal(line, "[###############...............] 1000/2000  verified 900", 56);
    assert_non_null(strstr(line, "12.3s"));
    /* 80 columns: no room for a bar beside the counts; the first ones stay. */
    progress_format(line, sizeof line, &mid, 80);
    assert_int_equal(line[0], '1');
    assert_non_null(strstr(line, "verified 900  failed 3"));
}

static void test_no_bar_off_a_terminal(void **state)
{
    (void)state;
    char line[400];
    progress_format(line, sizeof line, &mid, 0);
    assert_null(strchr(line, '['));
    assert_non_null(strstr(line, "timed out 0  12.3s"));
    int p[2];
    assert_int_equal(pipe(p), 0);
    assert_int_equal(progress_columns(p[1]), 0);
    close(p[0]);
    close(p[1]);
}

static void test_columns_of_a_terminal(void **state)
{
    (void)state;
    int m = posix_openpt(O_RDWR | O_NOCTTY);
    if (m < 0 || grantpt(m) != 0 || unlockpt(m) != 0) {
        if (m >= 0)
            close(m);
        skip(); /* no pseudo-terminals here */
    }
    int s = open(ptsname(m), O_RDWR | O_NOCTTY);
    assert_true(s >= 0);
    struct winsize ws = {.ws_row = 24, .ws_col = 57};
    assert_int_equal(ioctl(s, TIOCSWINSZ, &ws), 0);
    assert_int_equal(progress_columns(s), 57);
    char line[400];
    assert_true(progress_format(line, sizeof line, &mid, progress_columns(s)) <= 56);
    close(s);
    close(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fits_every_width),
        cmocka_unit_test(test_no_bar_off_a_terminal),
        cmocka_unit_test(test_columns_of_a_terminal),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
