/*
 * test_service_pgsql.c — what only the PostgreSQL store has: several
 * service instances on one database, and the database going away under a
 * running service. Runs against ESIM_TEST_STORE (the ctest cluster) for the
 * instances, and against a cluster of its own (scripts/pg-fixture.sh) that
 * it stops and starts for the restart; skipped without ESIM_TEST_STORE.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "service/svc_harness.h"

static harness_env env;

static int group_setup(void **state)
{
    (void)state;
    harness_env_setup(&env);
    return 0;
}

/* The cluster of test_database_restart, removed even when it fails. */
static char restart_dir[64];
static void cluster(const char *verb, const char *dir);

static int group_teardown(void **state)
{
    (void)state;
    if (restart_dir[0])
        cluster("stop", restart_dir);
    harness_env_teardown(&env);
    return 0;
}

static bool have_pgsql(void)
{
    const char *spec = getenv("ESIM_TEST_STORE");
    return spec &&
           (strncmp(spec, "postgres://", 11) == 0 || strncmp(spec, "postgresql://", 13) == 0);
}

#define NDEV 6
#define NCMD 3

/* Two instances on one database, the devices going to either one at each
 * request: each command is handed to its device once and answered once,
 * whichever instance queued it and whichever the device reached; both
 * instances see the same queues. */
static void test_two_instances_one_queue(void **state)
{
    (void)state;
    if (!have_pgsql())
        skip();
    test_service a = {0}, b = {0};
    esim_service_config ca, cb;
    harness_config(&env, "inst-a", &ca, a.data_dir);
    harness_config(&env, "inst-b", &cb, b.data_dir);
    cb.store = ca.store; /* one database */
    harness_start(&a, &ca);
    harness_start(&b, &cb);
    const char *urls[2] = {a.url, b.url};
    test_device dev[NDEV];
    char uuids[NDEV][NCMD][128];
    for (int i = 0; i < NDEV; i++) {
        char udid[65];
        snprintf(udid, sizeof udid, "00008110-PG%014d", i + 1);
        /* Enrolled through one instance, queued through the other. */
        device_new(&dev[i], &env, udid, urls[i % 2]);
        device_enroll(&dev[i]);
        for (int k = 0; k < NCMD; k++)
            api_enqueue_refresh(urls[(i + 1) % 2], udid, "smdp.example.com", uuids[i][k]);
    }
    /* Every request to the other instance than the last one. */
    int turn = 0;
    for (int i = 0; i < NDEV; i++) {
        char answered[128] = "";
        for (int round = 0; round < NCMD + 1; round++) {
            dev[i].base_url = urls[turn++ % 2];
            device_reconnect(&dev[i]);
            esim_cmd_parsed next = {0};
            long code =
                device_result(&dev[i], answered[0] ? ESIM_STATUS_ACKNOWLEDGED : ESIM_STATUS_IDLE,
                              answered[0] ? answered : NULL, &next);
            assert_int_equal(code, 200);
            snprintf(answered, sizeof answered, "%s", next.command_uuid);
            esim_cmd_parsed_free(&next);
            if (round == NCMD)
                assert_string_equal(answered, ""); /* all done */
            else
                assert_string_not_equal(answered, "");
        }
    }
    for (int i = 0; i < NDEV; i++)
        for (int k = 0; k < NCMD; k++) {
            char st[32];
            int attempts = 0;
            api_entry_state(urls[(i + k) % 2], uuids[i][k], dev[i].udid, st, &attempts, NULL);
            assert_string_equal(st, "acknowledged");
            assert_int_equal(attempts, 1);
        }
    /* The ledger: one "sent" and one "result" per command, none twice. */
    assert_int_equal(harness_store_query(&ca,
                                         "SELECT count(*) FROM (SELECT udid, command_uuid FROM "
                                         "events WHERE kind = 'sent' GROUP BY udid, command_uuid"
                                         " HAVING count(*) > 1) x",
                                         NULL, 0),
                     0);
    assert_int_equal(
        harness_store_query(&ca, "SELECT count(*) FROM events WHERE kind = 'sent'", NULL, 0),
        NDEV * NCMD);
    assert_int_equal(
        harness_store_query(&ca, "SELECT count(*) FROM events WHERE kind = 'result'", NULL, 0),
        NDEV * NCMD);
    for (int i = 0; i < NDEV; i++)
        device_free(&dev[i]);
    harness_stop(&a);
    harness_stop(&b);
}

/* The fixture script on a cluster of this test's own. */
static void cluster(const char *verb, const char *dir)
{
    char cmd[700];
    snprintf(cmd, sizeof cmd, "%s/scripts/pg-fixture.sh %s %s >/dev/null 2>&1",
             getenv("ESIM_SOURCE_DIR"), verb, dir);
    assert_int_equal(system(cmd), 0);
}

/* The database stops under a running service: device requests get a clean
 * 503 with Retry-After and change nothing; once it is back the service
 * reconnects by itself and the command goes out once. */
static void test_database_restart(void **state)
{
    (void)state;
    if (!have_pgsql() || !getenv("ESIM_SOURCE_DIR"))
        skip();
    const char *dir = restart_dir;
    snprintf(restart_dir, sizeof restart_dir, "/tmp/esim-pg-restart-%d", (int)getpid());
    cluster("start", dir);
    char spec[256];
    snprintf(spec, sizeof spec, "postgresql:///postgres?host=%s&connect_timeout=5", dir);
    test_service ts = {0};
    esim_service_config cfg;
    harness_config(&env, "restart", &cfg, ts.data_dir);
    cfg.store = spec;
    harness_start(&ts, &cfg);
    test_device dev;
    device_new(&dev, &env, "00008110-PGRESTART00001", ts.url);
    device_enroll(&dev);
    char uuid[128];
    api_enqueue_refresh(ts.url, dev.udid, "smdp.example.com", uuid);

    cluster("stop-keep", dir);
    esim_cmd_parsed next = {0};
    assert_int_equal(device_result(&dev, ESIM_STATUS_IDLE, NULL, &next), 503);
    assert_string_equal(next.command_uuid, "");
    esim_cmd_parsed_free(&next);
    /* /metrics still answers, and says the database is away. */
    assert_true(api_metric(ts.url, "esim_mdm_store_errors_total") >= 1);
    assert_int_equal(api_metric(ts.url, "esim_mdm_store_connections{backend=\"pgsql\"}"), 0);

    cluster("restart", dir);
    device_reconnect(&dev);
    assert_int_equal(device_result(&dev, ESIM_STATUS_IDLE, NULL, &next), 200);
    assert_string_equal(next.command_uuid, uuid);
    esim_cmd_parsed_free(&next);
    assert_int_equal(device_result(&dev, ESIM_STATUS_ACKNOWLEDGED, uuid, &next), 200);
    esim_cmd_parsed_free(&next);
    char st[32];
    int attempts = 0;
    api_entry_state(ts.url, uuid, dev.udid, st, &attempts, NULL);
    assert_string_equal(st, "acknowledged");
    assert_int_equal(attempts, 1); /* the refused request handed nothing out */
    assert_true(api_metric(ts.url, "esim_mdm_store_reconnects_total") >= 1);
    assert_int_equal(api_metric(ts.url, "esim_mdm_store_connections{backend=\"pgsql\"}"), 1);
    device_free(&dev);
    harness_stop(&ts);
    cluster("stop", dir);
    restart_dir[0] = '\0';
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_two_instances_one_queue),
        cmocka_unit_test(test_database_restart),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
