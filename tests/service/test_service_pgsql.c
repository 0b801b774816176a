/*
 * test_service_pgsql.c — what only the PostgreSQL store has: several
 * service instances on one database, and the database going away under a
 * running service. Runs against ESIM_TEST_STORE (the ctest cluster) for the
 * instances, and against a cluster of its own (scripts/pg-fixture.sh) that
 * it stops and starts for the restart; skipped without ESIM_TEST_STORE.
 * Also: pause, resume and cancel racing between two instances.
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <libpq-fe.h>

#include "service/svc_harness.h"

/* The cluster of test_database_restart, removed even when it fails. */
static char restart_dir[64];
static void cluster(const char *verb, const char *dir);

static void stop_restart_cluster(void)
{
    if (restart_dir[0])
        cluster("stop", restart_dir);
}

HARNESS_ENV_GROUP_HOOKS(env, NULL, stop_restart_cluster)

#define NDEV 6
#define NCMD 3

/* Two instances on one database, the devices going to either one at each
 * request: each command is handed to its device once and answered once,
 * whichever instance queued it and whichever the device reached; both
 * instances see the same queues. */
static void test_two_instances_one_queue(void **state)
{
    (void)state;
    if (!harness_store_is_pgsql())
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
    if (!harness_store_is_pgsql() || !getenv("ESIM_SOURCE_DIR"))
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

/* ---- the store worker pool ------------------------------------------------------ */

/* A device sending one Idle on a thread of its own. */
typedef struct {
    test_device *dev;
    long code;
    atomic_int finished; /* 1 once its answer came */
    pthread_t thread;
} idle_call;

static void *idle_main(void *arg)
{
    idle_call *c = arg;
    c->code = device_result(c->dev, ESIM_STATUS_IDLE, NULL, NULL);
    atomic_store(&c->finished, 1);
    return NULL;
}

#define NOTHERS 4

/* A device whose operation waits on a row lock (a slow query, as a lock
 * held by another instance or an admin's long transaction is) holds one
 * pool worker, not the loop: other devices' check-ins complete meanwhile.
 * Then its statement runs out of statement_timeout: a clean 503, counted in
 * /metrics, and the device gets through once the lock is gone. With the
 * device path on the loop (ESIM_TEST_STORE_POOL=0) the other devices wait for
 * the stuck one, which ends first: this test fails. */
static void test_slow_query_holds_one_worker(void **state)
{
    (void)state;
    if (!harness_store_is_pgsql())
        skip();
    test_service ts = {0};
    esim_service_config cfg;
    harness_config(&env, "slow-query", &cfg, ts.data_dir);
    char spec[600];
    snprintf(spec, sizeof spec, "%s%%20-cstatement_timeout%%3D4000", cfg.store);
    cfg.store = spec;
    harness_start(&ts, &cfg);
    test_device slow, others[NOTHERS];
    device_new(&slow, &env, "00008110-PGSLOW0000001", ts.url);
    device_enroll(&slow);
    for (int i = 0; i < NOTHERS; i++) {
        char udid[65];
        snprintf(udid, sizeof udid, "00008110-PGFAST%07d", i + 1);
        device_new(&others[i], &env, udid, ts.url);
        device_enroll(&others[i]);
    }
    /* Another session locks the slow device's row. */
    PGconn *locker = harness_pg_connect(spec), *watch = harness_pg_connect(spec);
    harness_pg_exec(locker, "BEGIN");
    harness_pg_exec(locker,
                    "SELECT 1 FROM devices WHERE udid = '00008110-PGSLOW0000001' FOR UPDATE");
    idle_call stuck = {.dev = &slow};
    assert_int_equal(pthread_create(&stuck.thread, NULL, idle_main, &stuck), 0);
    /* Until the service's statement waits on that lock. */
    assert_int_equal(harness_pg_await_lock_waits(watch, 1, 200), 1);
    /* The others get through while it waits. */
    for (int i = 0; i < NOTHERS; i++) {
        esim_cmd_parsed next = {0};
        assert_int_equal(device_result(&others[i], ESIM_STATUS_IDLE, NULL, &next), 200);
        esim_cmd_parsed_free(&next);
    }
    assert_int_equal(atomic_load(&stuck.finished), 0);
    assert_true(api_metric(ts.url, "esim_mdm_store_pool_busy") >= 1);
    /* The stuck statement times out: a clean 503. */
    pthread_join(stuck.thread, NULL);
    assert_int_equal(stuck.code, 503);
    assert_true(api_metric(ts.url, "esim_mdm_store_pool_statement_timeouts_total") >= 1);
    harness_pg_exec(locker, "ROLLBACK");
    device_reconnect(&slow);
    assert_int_equal(device_result(&slow, ESIM_STATUS_IDLE, NULL, NULL), 200);
    assert_int_equal(api_metric(ts.url, "esim_mdm_store_pool_connections{state=\"size\"}"), 4);
    PQfinish(locker);
    PQfinish(watch);
    device_free(&slow);
    for (int i = 0; i < NOTHERS; i++)
        device_free(&others[i]);
    harness_stop(&ts);
}

/* An admin API call on a thread of its own. */
typedef struct {
    const char *url, *method, *path, *body;
    long code;
    atomic_int finished;
    pthread_t thread;
} admin_call;

static void *admin_main(void *arg)
{
    admin_call *c = arg;
    c->code = api_call(c->url, TEST_TOKEN, c->method, c->path, c->body,
                       c->body ? "application/json" : NULL, NULL);
    atomic_store(&c->finished, 1);
    return NULL;
}

/* Admin requests that wait on a lock (an enqueue for a device whose row
 * another session holds, a retirement of it) hold pool workers, at most
 * half of them, and never the loop: other devices' check-ins go on
 * meanwhile (further admin requests wait for a worker); then each statement runs out of
 * statement_timeout and its caller gets a clean 503 with nothing written.
 * With the admin API on the loop's own connection (ESIM_TEST_STORE_POOL=0,
 * as before the admin API went to the pool) the check-ins wait behind the
 * stuck admin request: this test fails. */
static void test_slow_admin_holds_no_loop(void **state)
{
    (void)state;
    if (!harness_store_is_pgsql())
        skip();
    test_service ts = {0};
    esim_service_config cfg;
    harness_config(&env, "slow-admin", &cfg, ts.data_dir);
    char spec[600];
    snprintf(spec, sizeof spec, "%s%%20-cstatement_timeout%%3D8000", cfg.store);
    cfg.store = spec;
    harness_start(&ts, &cfg);
    test_device locked, others[NOTHERS];
    device_new(&locked, &env, "00008110-PGADMINLOCKED1", ts.url);
    device_enroll(&locked);
    for (int i = 0; i < NOTHERS; i++) {
        char udid[65];
        snprintf(udid, sizeof udid, "00008110-PGADMINFAST%03d", i + 1);
        device_new(&others[i], &env, udid, ts.url);
        device_enroll(&others[i]);
    }
    PGconn *locker = harness_pg_connect(spec), *watch = harness_pg_connect(spec);
    harness_pg_exec(locker, "BEGIN");
    harness_pg_exec(locker,
                    "SELECT 1 FROM devices WHERE udid = '00008110-PGADMINLOCKED1' FOR UPDATE");
    char body[600];
    snprintf(body, sizeof body,
             "{\"udids\":[\"%s\"],\"command\":{\"request_type\":\"DeviceInformation\","
             "\"queries\":[\"UDID\"]},\"push\":false}",
             locked.udid);
    admin_call calls[2] = {
        {.url = ts.url, .method = "POST", .path = "/v1/commands", .body = body},
        {.url = ts.url, .method = "DELETE", .path = "/v1/devices/00008110-PGADMINLOCKED1"},
    };
    for (int i = 0; i < 2; i++)
        assert_int_equal(pthread_create(&calls[i].thread, NULL, admin_main, &calls[i]), 0);
    /* Until both admin statements wait on the lock. */
    assert_int_equal(harness_pg_await_lock_waits(watch, 2, 200), 2);
    assert_int_equal(api_metric(ts.url, "esim_mdm_store_pool_busy"), 2);
    /* Devices check in, and the API still reads, while they wait. */
    for (int i = 0; i < NOTHERS; i++) {
        esim_cmd_parsed next = {0};
        assert_int_equal(device_result(&others[i], ESIM_STATUS_IDLE, NULL, &next), 200);
        esim_cmd_parsed_free(&next);
    }
    assert_int_equal(atomic_load(&calls[0].finished), 0);
    assert_int_equal(atomic_load(&calls[1].finished), 0);
    /* Their statements time out: clean 503s, nothing queued or retired. */
    for (int i = 0; i < 2; i++) {
        pthread_join(calls[i].thread, NULL);
        assert_int_equal(calls[i].code, 503);
    }
    harness_pg_exec(locker, "ROLLBACK");
    json_t *q = NULL;
    char path[128];
    snprintf(path, sizeof path, "/v1/devices/%s/queue", locked.udid);
    assert_int_equal(api_call(ts.url, TEST_TOKEN, "GET", path, NULL, NULL, &q), 200);
    assert_int_equal(json_array_size(json_object_get(q, "queue")), 0);
    json_decref(q);
    snprintf(path, sizeof path, "/v1/devices/%s", locked.udid);
    assert_int_equal(api_call(ts.url, TEST_TOKEN, "GET", path, NULL, NULL, &q), 200);
    assert_true(json_is_true(json_object_get(q, "enrolled")));
    json_decref(q);
    /* And once the lock is gone the same calls go through. */
    assert_int_equal(
        api_call(ts.url, TEST_TOKEN, "POST", "/v1/commands", body, "application/json", NULL), 200);
    assert_int_equal(api_call(ts.url, TEST_TOKEN, "DELETE", path, NULL, NULL, NULL), 200);
    PQfinish(locker);
    PQfinish(watch);
    device_free(&locked);
    for (int i = 0; i < NOTHERS; i++)
        device_free(&others[i]);
    harness_stop(&ts);
}

/* The audit entry of an admin change is written on a pool worker before
 * the answer: in the change's own job when the worker gives the answer
 * (here a retirement), in a job of its own when the loop finishes it (here
 * POST /v1/commands, whose pushes and answer come from the loop). With the
 * audit table locked by another session both wait on workers while other
 * devices check in, and /v1/audit read right after each answer shows its
 * entry. With the entries on the loop's connection (ESIM_TEST_STORE_POOL=0,
 * the control) the check-ins wait behind them and the calls end first:
 * this test fails. */
static void test_slow_audit_holds_no_loop(void **state)
{
    (void)state;
    if (!harness_store_is_pgsql())
        skip();
    test_service ts = {0};
    esim_service_config cfg;
    harness_config(&env, "slow-audit", &cfg, ts.data_dir);
    char spec[600];
    snprintf(spec, sizeof spec, "%s%%20-cstatement_timeout%%3D8000", cfg.store);
    cfg.store = spec;
    harness_start(&ts, &cfg);
    test_device retired, others[NOTHERS];
    device_new(&retired, &env, "00008110-PGAUDITRETIRE1", ts.url);
    device_enroll(&retired);
    for (int i = 0; i < NOTHERS; i++) {
        char udid[65];
        snprintf(udid, sizeof udid, "00008110-PGAUDITFAST%03d", i + 1);
        device_new(&others[i], &env, udid, ts.url);
        device_enroll(&others[i]);
    }
    PGconn *locker = harness_pg_connect(spec), *watch = harness_pg_connect(spec);
    harness_pg_exec(locker, "BEGIN");
    harness_pg_exec(locker, "LOCK TABLE audit IN ACCESS EXCLUSIVE MODE");
    /* Static: in the control the test fails while the call's thread still
     * runs, and it must not write to a stack frame that is gone. */
    static admin_call call, enqueue;
    static char url[128];
    snprintf(url, sizeof url, "%s", ts.url);
    memset(&call, 0, sizeof call);
    call.url = url;
    call.method = "DELETE";
    call.path = "/v1/devices/00008110-PGAUDITRETIRE1";
    assert_int_equal(pthread_create(&call.thread, NULL, admin_main, &call), 0);
    assert_int_equal(harness_pg_await_lock_waits(watch, 1, 200), 1);
    memset(&enqueue, 0, sizeof enqueue);
    enqueue.url = url;
    enqueue.method = "POST";
    enqueue.path = "/v1/commands";
    enqueue.body = "{\"udids\":[\"00008110-PGAUDITFAST001\"],\"command\":{\"request_type\":"
                   "\"DeviceInformation\",\"queries\":[\"UDID\"]},\"push\":false}";
    assert_int_equal(pthread_create(&enqueue.thread, NULL, admin_main, &enqueue), 0);
    assert_int_equal(harness_pg_await_lock_waits(watch, 2, 200), 2);
    for (int i = 0; i < NOTHERS; i++) {
        esim_cmd_parsed next = {0};
        assert_int_equal(device_result(&others[i], ESIM_STATUS_IDLE, NULL, &next), 200);
        esim_cmd_parsed_free(&next);
    }
    assert_int_equal(atomic_load(&call.finished), 0);
    assert_int_equal(atomic_load(&enqueue.finished), 0);
    harness_pg_exec(locker, "ROLLBACK");
    pthread_join(call.thread, NULL);
    pthread_join(enqueue.thread, NULL);
    assert_int_equal(call.code, 200);
    assert_int_equal(enqueue.code, 200);
    /* Read right after the answers: both entries are there. */
    json_t *a = NULL;
    assert_int_equal(api_call(ts.url, TEST_TOKEN, "GET", "/v1/audit?limit=1000", NULL, NULL, &a),
                     200);
    json_t *entries = json_object_get(a, "entries");
    bool retired_seen = false, enqueued_seen = false;
    for (size_t k = 0; k < json_array_size(entries); k++) {
        json_t *e = json_array_get(entries, k);
        const char *method = json_string_value(json_object_get(e, "method"));
        const char *target = json_string_value(json_object_get(e, "target"));
        json_int_t status = json_integer_value(json_object_get(e, "status"));
        if (method && target && strcmp(method, "DELETE") == 0 &&
            strcmp(target, "/v1/devices/00008110-PGAUDITRETIRE1") == 0 && status == 200)
            retired_seen = true;
        if (method && target && strcmp(method, "POST") == 0 &&
            strcmp(target, "/v1/commands") == 0 && status == 200)
            enqueued_seen = true;
    }
    assert_true(retired_seen);
    assert_true(enqueued_seen);
    json_decref(a);
    PQfinish(locker);
    PQfinish(watch);
    device_free(&retired);
    for (int i = 0; i < NOTHERS; i++)
        device_free(&others[i]);
    harness_stop(&ts);
}

/* The routes modules add whose only work is the store (here a device's
 * tags, the campaigns module's, and the IoT device list, the eIM's) run on
 * the pool too: with their tables locked by another session, both wait on a
 * worker while other devices' check-ins go on, and answer once the lock is
 * gone. With every call on the loop's own connection
 * (ESIM_TEST_STORE_POOL=0) the check-ins wait behind them and the calls end
 * first (statement timeouts): this test fails. */
static void test_slow_module_route_holds_no_loop(void **state)
{
    (void)state;
    if (!harness_store_is_pgsql())
        skip();
    test_service ts = {0};
    esim_service_config cfg;
    harness_config(&env, "slow-module", &cfg, ts.data_dir);
    char spec[600];
    snprintf(spec, sizeof spec, "%s%%20-cstatement_timeout%%3D8000", cfg.store);
    cfg.store = spec;
    harness_start(&ts, &cfg);
    test_device tagged, others[NOTHERS];
    device_new(&tagged, &env, "00008110-PGMODULETAGS1", ts.url);
    device_enroll(&tagged);
    for (int i = 0; i < NOTHERS; i++) {
        char udid[65];
        snprintf(udid, sizeof udid, "00008110-PGMODULEFAST%02d", i + 1);
        device_new(&others[i], &env, udid, ts.url);
        device_enroll(&others[i]);
    }
    PGconn *locker = harness_pg_connect(spec), *watch = harness_pg_connect(spec);
    harness_pg_exec(locker, "BEGIN");
    harness_pg_exec(locker, "LOCK TABLE device_tags, iot_devices IN ACCESS EXCLUSIVE MODE");
    admin_call calls[2] = {
        {.url = ts.url, .method = "GET", .path = "/v1/devices/00008110-PGMODULETAGS1/tags"},
        {.url = ts.url, .method = "GET", .path = "/v1/iot/devices"},
    };
    for (int i = 0; i < 2; i++)
        assert_int_equal(pthread_create(&calls[i].thread, NULL, admin_main, &calls[i]), 0);
    assert_int_equal(harness_pg_await_lock_waits(watch, 2, 200), 2);
    assert_int_equal(api_metric(ts.url, "esim_mdm_store_pool_busy"), 2);
    for (int i = 0; i < NOTHERS; i++) {
        esim_cmd_parsed next = {0};
        assert_int_equal(device_result(&others[i], ESIM_STATUS_IDLE, NULL, &next), 200);
        esim_cmd_parsed_free(&next);
    }
    assert_int_equal(atomic_load(&calls[0].finished), 0);
    assert_int_equal(atomic_load(&calls[1].finished), 0);
    harness_pg_exec(locker, "ROLLBACK");
    for (int i = 0; i < 2; i++) {
        pthread_join(calls[i].thread, NULL);
        assert_int_equal(calls[i].code, 200);
    }
    PQfinish(locker);
    PQfinish(watch);
    device_free(&tagged);
    for (int i = 0; i < NOTHERS; i++)
        device_free(&others[i]);
    harness_stop(&ts);
}

/* The admin API's writes that queue and push (the NanoMDM enqueue, the
 * Windows and IoT POSTs, an IoT registration, POST /v1/commands beyond
 * 1,000 devices, whose push targets are read a slice at a time) are
 * checked on the loop, then written on a pool worker: with the rows they
 * write locked by another session, they wait on workers (two at a time, the
 * admin share; the rest wait for one) while other devices check in, and
 * answer as before once the lock is gone. With every call on the loop's
 * own connection (ESIM_TEST_STORE_POOL=0) the check-ins wait behind them
 * and the calls end first (statement timeouts): this test fails. */
#define WIDE 1500
static void test_slow_api_writes_hold_no_loop(void **state)
{
    (void)state;
    if (!harness_store_is_pgsql())
        skip();
    test_service ts = {0};
    esim_service_config cfg;
    harness_config(&env, "slow-writes", &cfg, ts.data_dir);
    char spec[600];
    snprintf(spec, sizeof spec, "%s%%20-cstatement_timeout%%3D8000", cfg.store);
    cfg.store = spec;
    harness_start(&ts, &cfg);
    test_device apple, others[NOTHERS];
    device_new(&apple, &env, "00008110-PGWRITEAPPLE1", ts.url);
    device_enroll(&apple);
    for (int i = 0; i < NOTHERS; i++) {
        char udid[65];
        snprintf(udid, sizeof udid, "00008110-PGWRITEFAST%02d", i + 1);
        device_new(&others[i], &env, udid, ts.url);
        device_enroll(&others[i]);
    }
    static const char eid[] = "89049032000001000000000000001529";
    static const char eid2[] = "89049032000001000000000000001626";
    char body[8192];
    snprintf(body, sizeof body, "{\"eid\":\"%s\",\"association_token\":7}", eid);
    json_t *reply = NULL;
    assert_int_equal(
        api_call(ts.url, TEST_TOKEN, "POST", "/v1/iot/devices", body, "application/json", &reply),
        200);
    assert_int_equal(json_integer_value(json_object_get(reply, "registered")), 1);
    json_decref(reply);
    /* A Windows PC, and a wide fleet, written as enrolment would leave them. */
    PGconn *locker = harness_pg_connect(spec), *watch = harness_pg_connect(spec);
    harness_pg_exec(locker,
                    "INSERT INTO devices (udid, enrolled, platform, eid) VALUES "
                    "('PGWRITEWINDOWS1', 1, 'windows', '89049032000001000000000000001723')");
    harness_pg_exec(locker, "INSERT INTO devices (udid, enrolled, push_token, push_magic, "
                            "push_state) SELECT 'PGWIDE-' || lpad(i::text, 5, '0'), 1, 'aa', "
                            "'m', 'valid' FROM generate_series(1, 1500) i");
    harness_pg_exec(locker, "BEGIN");
    harness_pg_exec(locker, "SELECT 1 FROM devices WHERE udid IN ('00008110-PGWRITEAPPLE1', "
                            "'PGWRITEWINDOWS1', 'PGWIDE-00001', '89049032000001000000000000001529')"
                            " FOR UPDATE");
    harness_pg_exec(locker, "INSERT INTO devices (udid) VALUES "
                            "('89049032000001000000000000001626')");
    char wide[WIDE * 16 + 200];
    size_t at = (size_t)snprintf(wide, sizeof wide, "{\"udids\":[");
    for (int i = 1; i <= WIDE; i++)
        at +=
            (size_t)snprintf(wide + at, sizeof wide - at, "%s\"PGWIDE-%05d\"", i > 1 ? "," : "", i);
    snprintf(wide + at, sizeof wide - at,
             "],\"command\":{\"request_type\":\"DeviceInformation\",\"queries\":[\"UDID\"]}}");
    char enq_path[128], reg[256], pkg[256];
    snprintf(enq_path, sizeof enq_path, "/v1/enqueue/%s", apple.udid);
    snprintf(reg, sizeof reg, "{\"eid\":\"%s\",\"association_token\":9}", eid2);
    snprintf(pkg, sizeof pkg, "{\"eids\":[\"%s\"],\"operations\":[{\"op\":\"get_rat\"}]}", eid);
    static const char plist[] =
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><!DOCTYPE plist PUBLIC \"-//Apple//DTD PLIST "
        "1.0//EN\" \"http://www.apple.com/DTDs/PropertyList-1.0.dtd\"><plist version=\"1.0\">"
        "<dict><key>CommandUUID</key><string>pg-nano-1</string><key>Command</key><dict>"
        "<key>RequestType</key><string>DeviceInformation</string><key>Queries</key><array>"
        "<string>UDID</string></array></dict></dict></plist>";
    admin_call calls[] = {
        {.url = ts.url, .method = "POST", .path = enq_path, .body = plist},
        {.url = ts.url,
         .method = "POST",
         .path = "/v1/windows/commands",
         .body = "{\"udids\":[\"PGWRITEWINDOWS1\"],\"uuid\":\"pg-win-1\",\"request_type\":\"Get\","
                 "\"syncml\":\"<Get><CmdID>pg-win-1</CmdID><Item><Target><LocURI>./DevDetail/"
                 "SwV</LocURI></Target></Item></Get>\"}"},
        {.url = ts.url,
         .method = "POST",
         .path = "/v1/windows/esim",
         .body = "{\"udids\":[\"PGWRITEWINDOWS1\"],\"operation\":\"local_ui\","
                 "\"local_ui_enabled\":true}"},
        {.url = ts.url, .method = "POST", .path = "/v1/iot/packages", .body = pkg},
        {.url = ts.url, .method = "POST", .path = "/v1/iot/devices", .body = reg},
        {.url = ts.url, .method = "POST", .path = "/v1/commands", .body = wide},
    };
    enum { NCALLS = sizeof calls / sizeof calls[0] };
    for (int i = 0; i < NCALLS; i++)
        assert_int_equal(pthread_create(&calls[i].thread, NULL, admin_main, &calls[i]), 0);
    assert_int_equal(harness_pg_await_lock_waits(watch, 2, 200), 2);
    for (int i = 0; i < NOTHERS; i++) {
        esim_cmd_parsed next = {0};
        assert_int_equal(device_result(&others[i], ESIM_STATUS_IDLE, NULL, &next), 200);
        esim_cmd_parsed_free(&next);
    }
    for (int i = 0; i < NCALLS; i++) {
        if (atomic_load(&calls[i].finished))
            print_message("%s %s: %ld before the lock went\n", calls[i].method, calls[i].path,
                          calls[i].code);
        assert_int_equal(atomic_load(&calls[i].finished), 0);
    }
    harness_pg_exec(locker, "ROLLBACK");
    static const long want[NCALLS] = {200, 201, 201, 201, 200, 200};
    for (int i = 0; i < NCALLS; i++) {
        pthread_join(calls[i].thread, NULL);
        assert_int_equal(calls[i].code, want[i]);
    }
    /* What they wrote: each device's command queued; the wide call's pushes
     * all read (every device pending: no APNs here). */
    assert_int_equal(harness_store_query(&cfg,
                                         "SELECT count(*) FROM queue WHERE udid IN "
                                         "('00008110-PGWRITEAPPLE1', 'PGWRITEWINDOWS1', "
                                         "'89049032000001000000000000001626')",
                                         NULL, 0),
                     4);
    assert_int_equal(
        harness_store_query(&cfg, "SELECT count(*) FROM queue WHERE udid LIKE 'PGWIDE-%'", NULL, 0),
        WIDE);
    assert_int_equal(
        api_call(ts.url, TEST_TOKEN, "POST", "/v1/commands", wide, "application/json", &reply),
        200);
    json_t *devs = json_object_get(reply, "devices");
    assert_int_equal(json_object_size(devs), WIDE);
    const char *key;
    json_t *v;
    size_t pending = 0;
    json_object_foreach(devs, key, v)
    {
        const char *p = json_string_value(json_object_get(v, "push"));
        pending += p && strcmp(p, "pending") == 0;
    }
    assert_int_equal(pending, WIDE);
    json_decref(reply);
    PQfinish(locker);
    PQfinish(watch);
    device_free(&apple);
    for (int i = 0; i < NOTHERS; i++)
        device_free(&others[i]);
    harness_stop(&ts);
}

#define RDEV 4
#define RCMD 12

/* A device answering its queue in a loop until told to stop: every answer
 * 200 or 503 (the database away), nothing else. */
typedef struct {
    test_device *dev;
    char (*uuids)[128];
    atomic_int acked, unavailable, other, stop;
    pthread_t thread;
} traffic;

static void *traffic_main(void *arg)
{
    traffic *t = arg;
    char answered[128] = "";
    while (!atomic_load(&t->stop)) {
        esim_cmd_parsed next = {0};
        long code = device_result(t->dev, answered[0] ? ESIM_STATUS_ACKNOWLEDGED : ESIM_STATUS_IDLE,
                                  answered[0] ? answered : NULL, &next);
        if (code == 200) {
            if (answered[0])
                atomic_fetch_add(&t->acked, 1);
            snprintf(answered, sizeof answered, "%s", next.command_uuid);
        } else if (code == 503) {
            /* The answer was not taken: the same one again (as a device
             * retries), or an Idle when it was one. */
            atomic_fetch_add(&t->unavailable, 1);
            device_reconnect(t->dev);
            usleep(50000);
        } else {
            atomic_fetch_add(&t->other, 1);
        }
        esim_cmd_parsed_free(&next);
        if (!answered[0] && code == 200)
            usleep(20000); /* nothing to do: idle along */
    }
    return NULL;
}

/* The database restarts under traffic from several devices: requests in
 * flight get 503, never anything else; nothing is half-written (each
 * command answered once, in the ledger once); the pool reconnects by itself
 * and every command is acknowledged. */
static void test_database_restart_under_traffic(void **state)
{
    (void)state;
    if (!harness_store_is_pgsql() || !getenv("ESIM_SOURCE_DIR"))
        skip();
    snprintf(restart_dir, sizeof restart_dir, "/tmp/esim-pg-traffic-%d", (int)getpid());
    cluster("start", restart_dir);
    char spec[256];
    snprintf(spec, sizeof spec, "postgresql:///postgres?host=%s&connect_timeout=5", restart_dir);
    test_service ts = {0};
    esim_service_config cfg;
    harness_config(&env, "traffic", &cfg, ts.data_dir);
    cfg.store = spec;
    cfg.device_rate = 1000;
    cfg.device_burst = 1000;
    harness_start(&ts, &cfg);
    test_device dev[RDEV];
    static char uuids[RDEV][RCMD][128];
    traffic t[RDEV];
    memset(t, 0, sizeof t);
    for (int i = 0; i < RDEV; i++) {
        char udid[65];
        snprintf(udid, sizeof udid, "00008110-PGTRAF%07d", i + 1);
        device_new(&dev[i], &env, udid, ts.url);
        device_enroll(&dev[i]);
        for (int k = 0; k < RCMD; k++)
            api_enqueue_refresh(ts.url, udid, "smdp.example.com", uuids[i][k]);
        t[i].dev = &dev[i];
        t[i].uuids = uuids[i];
    }
    for (int i = 0; i < RDEV; i++)
        assert_int_equal(pthread_create(&t[i].thread, NULL, traffic_main, &t[i]), 0);
    /* Some progress, then the database goes away for a while, under load. */
    for (int i = 0; i < 500; i++) {
        int acked = 0;
        for (int d = 0; d < RDEV; d++)
            acked += atomic_load(&t[d].acked);
        if (acked >= RDEV)
            break;
        usleep(10000);
    }
    cluster("stop-keep", restart_dir);
    for (int i = 0; i < 300; i++) { /* until every device has seen it */
        int seen = 0;
        for (int d = 0; d < RDEV; d++)
            seen += atomic_load(&t[d].unavailable) > 0;
        if (seen == RDEV)
            break;
        usleep(10000);
    }
    cluster("restart", restart_dir);
    for (int i = 0; i < 3000; i++) { /* every command acknowledged */
        int acked = 0;
        for (int d = 0; d < RDEV; d++)
            acked += atomic_load(&t[d].acked);
        if (acked >= RDEV * RCMD)
            break;
        usleep(10000);
    }
    int unavailable = 0;
    for (int d = 0; d < RDEV; d++) {
        atomic_store(&t[d].stop, 1);
        pthread_join(t[d].thread, NULL);
        unavailable += atomic_load(&t[d].unavailable);
        assert_int_equal(atomic_load(&t[d].other), 0);
    }
    assert_true(unavailable >= RDEV);
    for (int d = 0; d < RDEV; d++)
        for (int k = 0; k < RCMD; k++) {
            char st[32];
            int attempts = 0;
            api_entry_state(ts.url, uuids[d][k], dev[d].udid, st, &attempts, NULL);
            assert_string_equal(st, "acknowledged");
        }
    /* Each answer applied once: one result per command in the ledger, and
     * no command handed out to its device twice while it was still owed. */
    assert_int_equal(
        harness_store_query(&cfg, "SELECT count(*) FROM events WHERE kind = 'result'", NULL, 0),
        RDEV * RCMD);
    assert_int_equal(
        harness_store_query(&cfg, "SELECT count(*) FROM events WHERE kind = 'anomaly'", NULL, 0),
        0);
    assert_true(api_metric(ts.url, "esim_mdm_store_pool_reconnects_total") >= 1);
    assert_true(
        api_metric(ts.url, "esim_mdm_store_pool_operations_total{outcome=\"store_error\"}") >= 1);
    for (int i = 0; i < RDEV; i++)
        device_free(&dev[i]);
    harness_stop(&ts);
    cluster("stop", restart_dir);
    restart_dir[0] = '\0';
}

/* One control request of the race: |verb| of campaign |id| on |url|, sent
 * when the other thread is ready too. */
typedef struct {
    const char *url, *id, *verb;
    pthread_barrier_t *go;
    long status;
} control_req;

static void *control_main(void *arg)
{
    control_req *q = arg;
    char path[200];
    snprintf(path, sizeof path, "/v1/campaigns/%s/%s", q->id, q->verb);
    pthread_barrier_wait(q->go);
    q->status = api_call(q->url, TEST_TOKEN, "POST", path, NULL, NULL, NULL);
    return NULL;
}

/* Sends |va| to instance |a| and |vb| to |b| at the same instant; the
 * two statuses in *sa and *sb. */
static void control_race(const char *a, const char *va, const char *b, const char *vb,
                         const char *id, long *sa, long *sb)
{
    pthread_barrier_t go;
    pthread_barrier_init(&go, NULL, 2);
    control_req qa = {a, id, va, &go, 0}, qb = {b, id, vb, &go, 0};
    pthread_t ta, tb;
    assert_int_equal(pthread_create(&ta, NULL, control_main, &qa), 0);
    assert_int_equal(pthread_create(&tb, NULL, control_main, &qb), 0);
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);
    pthread_barrier_destroy(&go);
    *sa = qa.status;
    *sb = qb.status;
}

/* Waits (bounded) until |url| shows campaign |id| in |state| with |canceled|
 * devices canceled (-1: any); false if it never does. */
static bool shows(const char *url, const char *id, const char *state, long canceled)
{
    char path[200];
    snprintf(path, sizeof path, "/v1/campaigns/%s", id);
    for (int k = 0; k < 100; k++) {
        json_t *r = NULL;
        if (api_call(url, TEST_TOKEN, "GET", path, NULL, NULL, &r) == 200) {
            const char *st = json_string_value(json_object_get(r, "state"));
            long c =
                (long)json_integer_value(json_object_get(json_object_get(r, "counts"), "canceled"));
            bool ok = st && strcmp(st, state) == 0 && (canceled < 0 || c == canceled);
            if (ok) {
                json_decref(r);
                return true;
            }
        }
        json_decref(r);
        usleep(50 * 1000);
    }
    return false;
}

#define NRACE 3

/* Pause, resume and cancel sent to the instance that drives a campaign and
 * to the one that does not, at the same instant: the campaign's row is a
 * compare-and-set, so each pair is decided in some order, exactly one of
 * two identical actions succeeds (the other is refused, 409), both
 * instances then agree with the store, and a cancel leaves every device
 * canceled and its command off the queue, whoever took it. */
static void test_control_race_between_instances(void **state)
{
    (void)state;
    if (!harness_store_is_pgsql())
        skip();
    test_service a = {0}, b = {0};
    esim_service_config ca, cb;
    harness_config(&env, "race-a", &ca, a.data_dir);
    harness_config(&env, "race-b", &cb, b.data_dir);
    cb.store = ca.store;
    harness_start(&a, &ca);
    harness_start(&b, &cb);
    test_device dev[NRACE];
    for (int i = 0; i < NRACE; i++) {
        char udid[65];
        snprintf(udid, sizeof udid, "00008110-RC%014d", i + 1);
        device_new(&dev[i], &env, udid, a.url);
        device_enroll(&dev[i]);
    }
    /* Created on |a|, which drives it; the devices never answer, so it
     * stays running (their pushes go nowhere). */
    json_t *r = NULL;
    assert_int_equal(api_call(a.url, TEST_TOKEN, "POST", "/v1/campaigns",
                              "{\"target\":{\"all\":true},\"steps\":[\"verify\"]}", NULL, &r),
                     201);
    char id[64];
    snprintf(id, sizeof id, "%s", json_string_value(json_object_get(r, "id")));
    json_decref(r);
    assert_true(shows(b.url, id, "running", 0));
    for (int round = 0; round < 8; round++) {
        const char *verb = round % 2 ? "resume" : "pause";
        long sa = 0, sb = 0;
        control_race(a.url, verb, b.url, verb, id, &sa, &sb);
        if (!((sa == 200 && sb == 409) || (sa == 409 && sb == 200)))
            fail_msg("round %d: %s answered %ld on the driving instance and %ld on the other;"
                     " exactly one should succeed",
                     round, verb, sa, sb);
        const char *want = round % 2 ? "running" : "paused";
        assert_true(shows(a.url, id, want, 0));
        assert_true(shows(b.url, id, want, 0));
    }
    /* Cancel on the instance that does not drive it, pause on the one that
     * does: canceled in the end, whichever came first. */
    long sa = 0, sb = 0;
    control_race(a.url, "pause", b.url, "cancel", id, &sa, &sb);
    assert_int_equal(sb, 200);
    assert_true(sa == 200 || sa == 409);
    assert_true(shows(a.url, id, "canceled", NRACE));
    assert_true(shows(b.url, id, "canceled", NRACE));
    char sql[300];
    snprintf(sql, sizeof sql, "SELECT count(*) FROM campaigns WHERE id = '%s' AND state = 3", id);
    assert_int_equal(harness_store_query(&ca, sql, NULL, 0), 1);
    /* The driving instance took the commands off the queues. */
    for (int k = 0; k < 100 && harness_store_query(&ca,
                                                   "SELECT count(*) FROM queue WHERE state IN"
                                                   " ('queued', 'pushed', 'sent', 'not_now')",
                                                   NULL, 0) > 0;
         k++)
        usleep(50 * 1000);
    assert_int_equal(harness_store_query(&ca,
                                         "SELECT count(*) FROM queue WHERE state IN"
                                         " ('queued', 'pushed', 'sent', 'not_now')",
                                         NULL, 0),
                     0);
    for (int i = 0; i < NRACE; i++)
        device_free(&dev[i]);
    harness_stop(&a);
    harness_stop(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_two_instances_one_queue),
        cmocka_unit_test(test_control_race_between_instances),
        cmocka_unit_test(test_database_restart),
        cmocka_unit_test(test_slow_query_holds_one_worker),
        cmocka_unit_test(test_slow_admin_holds_no_loop),
        cmocka_unit_test(test_slow_module_route_holds_no_loop),
        cmocka_unit_test(test_slow_audit_holds_no_loop),
        cmocka_unit_test(test_slow_api_writes_hold_no_loop),
        cmocka_unit_test(test_database_restart_under_traffic),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
