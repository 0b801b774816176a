/*
 * test_crash.c — a campaign over 2,000 simulated devices (ESIM_CRASH_DEVICES)
 * while one part of the system is killed with SIGKILL at random moments
 * during it and started again on the same port and data: the service, the
 * device simulator, the SM-DP+ simulator, one test each. At the end every
 * device is verified, every command has exactly one answer in the ledger,
 * no profile was downloaded twice, and every check-in and answer the ledger
 * holds reached the webhook receiver (repeats only with the same event id).
 * No duration is asserted; the waits are generous bounds.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "crash/rig.h"

static unsigned devices(void)
{
    const char *e = getenv("ESIM_CRASH_DEVICES");
    long n = e ? atol(e) : 2000;
    return n > 0 && n <= 100000 ? (unsigned)n : 2000;
}

static int kills(void)
{
    const char *e = getenv("ESIM_CRASH_KILLS");
    long n = e ? atol(e) : 6;
    return n >= 0 && n <= 32 ? (int)n : 6;
}

static void campaign_with_kills(rig_part part)
{
    static const char *const names[] = {"service", "devsim", "smdp"};
    const char *only = getenv("ESIM_CRASH_ONLY"); /* one part, to iterate */
    if (only && strcmp(only, names[part]) != 0)
        skip();
    unsigned seed = (unsigned)time(NULL) ^ (unsigned)getpid();
    if (getenv("ESIM_CRASH_SEED"))
        seed = (unsigned)atol(getenv("ESIM_CRASH_SEED"));
    srand(seed);
    print_message("seed %u (ESIM_CRASH_SEED to repeat)\n", seed);
    rig r = {0};
    bool ok = rig_start(&r, devices()) && rig_create_campaign(&r);
    int during = 0;
    ok = ok && rig_follow(&r, 900, kills(), part, &during);
    rig_report rep;
    bool checked = ok && rig_check(&r, &rep);
    rig_stop(&r);
    assert_true(ok);
    assert_true(during >= 5 || kills() < 5);
    assert_true(checked);
    print_message("%d kills during the campaign, all survived; %ld devices verified\n", during,
                  rep.verified);
}

static void test_service_killed(void **state)
{
    (void)state;
    campaign_with_kills(RIG_SERVICE);
}

static void test_devsim_killed(void **state)
{
    (void)state;
    campaign_with_kills(RIG_DEVSIM);
}

static void test_smdp_killed(void **state)
{
    (void)state;
    campaign_with_kills(RIG_SMDP);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_service_killed),
        cmocka_unit_test(test_devsim_killed),
        cmocka_unit_test(test_smdp_killed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
