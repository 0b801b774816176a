/*
 * test_instances.c — two `esim-mdm serve` instances on one PostgreSQL (the
 * ctest fixture's cluster, ESIM_TEST_STORE), the simulated devices sending
 * each request to the next instance, a campaign of 2,000 devices
 * (ESIM_CRASH_DEVICES) created on the first; the first is SIGKILLed for
 * good at a random moment mid-campaign, and the second takes the campaign
 * over (its lease lapses), replays the answers the first had recorded, and
 * finishes it: every device verified, every command answered exactly once
 * in the ledger, no profile downloaded twice, every webhook event
 * delivered (the dead instance's outbox rows taken over), and the
 * campaign's command and push totals covering both drivers. No duration is
 * asserted; the waits are generous bounds.
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

#include "core/internal.h"
#include "crash/rig.h"

static unsigned devices(void)
{
    const char *e = getenv("ESIM_CRASH_DEVICES");
    long n = e ? atol(e) : 2000;
    return n > 0 && n <= 100000 ? (unsigned)n : 2000;
}

/* The store spec of a fresh schema of the fixture's database. */
static bool store_spec(char *out, size_t len)
{
    const char *tmpl = getenv("ESIM_TEST_STORE");
    const char *at = tmpl ? strstr(tmpl, "{n}") : NULL;
    if (!at)
        return false;
    snprintf(out, len, "%.*sinst%ld%s", (int)(at - tmpl), tmpl, (long)getpid(), at + 3);
    return true;
}

static long counts_final(rig *r, char *state, size_t state_len)
{
    json_t *s = rig_campaign_summary(r);
    if (!s)
        return -1;
    long f = rig_finals(s);
    snprintf(state, state_len, "%s", json_string_value(json_object_get(s, "state")) ?: "");
    json_decref(s);
    return f;
}

static void test_first_instance_killed(void **state)
{
    (void)state;
    char spec[1024];
    if (!store_spec(spec, sizeof spec)) {
        print_message("ESIM_TEST_STORE names no PostgreSQL cluster: skipped\n");
        skip();
    }
    unsigned seed = (unsigned)time(NULL) ^ (unsigned)getpid();
    if (getenv("ESIM_CRASH_SEED"))
        seed = (unsigned)atol(getenv("ESIM_CRASH_SEED"));
    srand(seed);
    print_message("seed %u (ESIM_CRASH_SEED to repeat)\n", seed);
    rig r = {0};
    r.store = spec;
    r.instances = 2;
    bool ok = rig_start(&r, devices()) && rig_create_campaign(&r);
    /* Kill the first instance (the campaign's owner: it was created there)
     * once 20% to 50% of the devices are final. */
    long threshold = (long)(r.devices * (0.2 + 0.3 * (double)(rand() % 100) / 100.0));
    long at_kill = -1;
    char st[32] = "";
    for (int64_t until = esim_mono_ms() + 300000; ok && esim_mono_ms() < until;) {
        long f = counts_final(&r, st, sizeof st);
        if (f >= threshold) {
            sup_sleep_ms(rand() % 300);
            at_kill = f;
            print_message("SIGKILL the first instance at %ld of %u devices final\n", f, r.devices);
            ok = rig_kill_first_instance(&r);
            break;
        }
        if (strcmp(st, "finished") == 0)
            break;
        sup_sleep_ms(100);
    }
    ok = ok && at_kill >= 0 && at_kill < (long)r.devices;
    int64_t killed_at = esim_mono_ms();
    ok = ok && rig_wait_finished(&r, 600);
    int64_t finished_ms = esim_mono_ms() - killed_at;
    /* The dead instance's webhook deliveries are taken over once its claims
     * lapse (10 s): wait that out before the comparison. */
    while (ok && esim_mono_ms() - killed_at < 12000)
        sup_sleep_ms(200);
    rig_report rep;
    bool checked = ok && rig_check(&r, &rep);
    /* No command reached a device twice: the phones ran as many commands
     * as the ledger holds answers (each command answered exactly once,
     * rig_check), NotNow aside (none in this fleet). */
    long ran = -1, not_now = -1;
    json_t *stats = NULL;
    long status = 0;
    if (checked &&
        chttp_call(&r.sim, "GET", "/stats", NULL, NULL, 0, &status, &stats, NULL) == ESIM_OK &&
        status == 200) {
        ran = (long)json_integer_value(json_object_get(stats, "commands"));
        not_now = (long)json_integer_value(json_object_get(stats, "not_now"));
    }
    json_decref(stats);
    /* The campaign's totals span both drivers: the second went on from what
     * the first had written with its records (not from 0). */
    long camp_commands = -1, camp_pushes = -1;
    json_t *sum = checked ? rig_campaign_summary(&r) : NULL;
    if (sum) {
        camp_commands = (long)json_integer_value(json_object_get(sum, "commands"));
        camp_pushes = (long)json_integer_value(json_object_get(sum, "pushes"));
    }
    json_decref(sum);
    rig_stop(&r);
    assert_true(ok);
    assert_true(checked);
    print_message("the phones ran %ld commands (%ld NotNow); the ledger holds %ld answers\n", ran,
                  not_now, rep.results);
    assert_int_equal(not_now, 0);
    assert_int_equal(ran, rep.results);
    print_message("the campaign reports %ld commands and %ld pushes\n", camp_commands, camp_pushes);
    /* Each queued command was written in one unit with the totals, and
     * every device ran its commands: at least what the phones ran, less
     * nothing. Pushes go out after their unit, so the first driver's last
     * few may be missing from its totals: still at least one per device
     * but a handful. */
    assert_true(camp_commands >= ran);
    assert_true(camp_pushes >= (long)r.devices - (long)r.devices / 20);
    print_message("first instance killed at %ld of %u final; the second finished %.1f s later; "
                  "%ld verified, %ld results, at most %ld download(s) per order, %ld commands "
                  "sent more than once, %ld webhooks (%ld repeated with the same id)\n",
                  at_kill, r.devices, (double)finished_ms / 1000.0, rep.verified, rep.results,
                  rep.downloads_max, rep.resent, rep.webhooks, rep.webhook_dups_same_id);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_first_instance_killed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
