/*
 * test_valgrind.c — one integration run with the service under valgrind:
 * 40 simulated devices enrol (signed check-ins), an inventory-free campaign
 * installs the restrictions profile, downloads each eSIM and verifies it,
 * webhooks go out through the outbox, the admin API is read; then the
 * service is stopped with SIGTERM and valgrind's verdict read. Fails on any
 * invalid read or write, use of uninitialised memory, bad free or
 * definitely lost block in the service. The service must be the release
 * (non-sanitized) binary, ESIM_CRASH_BIN; skipped without it or valgrind.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "crash/rig.h"

static void test_service_under_valgrind(void **state)
{
    (void)state;
    const char *bin = getenv("ESIM_CRASH_BIN");
    const char *vg = "/usr/bin/valgrind";
    if (!bin || access(bin, X_OK) != 0 || access(vg, X_OK) != 0) {
        print_message("skipped: needs the release build's esim-mdm (ESIM_CRASH_BIN) and %s\n", vg);
        skip();
    }
    rig r = {0};
    r.valgrind = vg;
    bool ok = rig_start(&r, 40) && rig_create_campaign(&r) && rig_wait_finished(&r, 900);
    rig_report rep;
    bool checked = ok && rig_check(&r, &rep);
    int status = rig_stop_service(&r, 600);
    esim_buf log = {0};
    esim_read_file(r.valgrind_log, 64u << 20, &log, NULL);
    const char *text = log.data ? (const char *)log.data : "";
    const char *summary = strstr(text, "ERROR SUMMARY:");
    print_message("service under valgrind: exit %d; %.*s\n", status,
                  summary ? (int)strcspn(summary, "\n") : 0, summary ? summary : "");
    if (status != 0)
        print_message("valgrind's report:\n%s\n", text);
    /* Read the verdict while the log is still ours: |summary| points into it. */
    bool clean = summary && strncmp(summary, "ERROR SUMMARY: 0 errors", 23) == 0;
    esim_buf_free(&log);
    rig_stop(&r);
    assert_true(ok);
    assert_true(checked);
    assert_int_equal(status, 0);
    assert_true(clean);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_service_under_valgrind),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
