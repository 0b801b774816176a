/*
 * test_outbox_kill.c — "each webhook event at least once" across the death
 * of an instance on PostgreSQL with a store pool: `esim-mdm serve` (a real
 * process, its store a schema of the ctest cluster) is SIGKILLed after a
 * device's change committed on a pool worker (its event written in the
 * same transaction) and before the event was delivered, and after another
 * event was delivered but before its row's delete committed. Another
 * instance on the same database must then deliver both events, with the
 * event ids the dead instance gave them, to a real HTTP receiver.
 *
 * The windows are made with the database's own locks and a receiver that
 * refuses, no hook in the service: the device's row is locked so its job
 * waits on its worker; a delivered event's row is locked so its delete
 * waits on another; the receiver refuses every delivery while the first
 * device's row is let go and its change commits; the instance is killed
 * then. Also: a change whose event the outbox refuses is undone with it,
 * with the pool and without (the events are written in the change's own
 * transaction, never after it); and the outbox's bookkeeping waits on
 * workers, not on the loop (test_slow_outbox_holds_no_loop). PostgreSQL
 * only (skipped without ESIM_TEST_STORE).
 */
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <libpq-fe.h>

#include "crash/hook_sink.h"
#include "service/svc_harness.h"

static const char *bin;

static void find_bin(void)
{
    bin = getenv("ESIM_MDM_BIN");
    if (!bin)
        bin = "esim-mdm";
}

HARNESS_ENV_GROUP_HOOKS(env, find_bin, NULL)

typedef struct {
    pid_t pid;
    char url[64];
    char config[400];
    char port_file[400];
    char log[400];
} server;

/* An instance |name| on store |spec|, its webhook to |hook_url|. */
static void server_prepare(server *s, const char *name, const char *spec, const char *hook_url)
{
    char data[400], token[400], text[4096];
    snprintf(data, sizeof data, "%s/%s", env.dir, name);
    snprintf(s->config, sizeof s->config, "%s/%s.conf", env.dir, name);
    snprintf(s->port_file, sizeof s->port_file, "%s/%s.port", env.dir, name);
    snprintf(token, sizeof token, "%s/%s.token", env.dir, name);
    snprintf(s->log, sizeof s->log, "%s/%s.stderr", env.dir, name);
    harness_write_text(token, TEST_TOKEN "\n");
    chmod(token, 0600);
    snprintf(text, sizeof text,
             "listen 127.0.0.1:0\n"
             "port-file %s\n"
             "data-dir %s\n"
             "api-token-file %s\n"
             "device-auth none\n"
             "device-rate 100000\n"
             "store %s\n"
             "store-pool 4\n"
             "webhook %s\n",
             s->port_file, data, token, spec, hook_url);
    harness_write_text(s->config, text);
}

static void server_start(server *s)
{
    s->pid = harness_serve(bin, s->config, s->port_file, s->log, s->url);
}

/* Its standard error so far, on the test's output (when a step fails). */
static void server_log(const server *s)
{
    FILE *f = fopen(s->log, "r");
    char line[1024];
    while (f && fgets(line, sizeof line, f))
        print_message("%s: %s", s->log, line);
    if (f)
        fclose(f);
}

/* Fails (showing its log) when the instance stopped. */
static void server_alive(const server *s)
{
    if (waitpid(s->pid, NULL, WNOHANG) != 0) {
        server_log(s);
        fail_msg("esim-mdm serve (%s) stopped", s->config);
    }
}

static void server_signal(server *s, int sig)
{
    kill(s->pid, sig);
    int status = 0;
    waitpid(s->pid, &status, 0);
}

/* The number of the server's statements waiting on a lock that the
 * test's session |holder| holds. */
static long blocked_by(PGconn *watch, PGconn *holder)
{
    char sql[200];
    snprintf(sql, sizeof sql,
             "SELECT count(*) FROM pg_stat_activity WHERE %d = ANY(pg_blocking_pids(pid))",
             PQbackendPID(holder));
    PGresult *r = PQexec(watch, sql);
    assert_int_equal(PQresultStatus(r), PGRES_TUPLES_OK);
    long n = strtol(PQgetvalue(r, 0, 0), NULL, 10);
    PQclear(r);
    return n;
}

static bool await_blocked(PGconn *watch, PGconn *holder, long want)
{
    for (int i = 0; i < 1500; i++) { /* a generous bound: 30 s */
        if (blocked_by(watch, holder) >= want)
            return true;
        usleep(20 * 1000);
    }
    return false;
}

/* The first column of the first row of |sql| (copied into |out|); false
 * when no row. */
static bool query_text(PGconn *c, const char *sql, char *out, size_t len)
{
    PGresult *r = PQexec(c, sql);
    assert_int_equal(PQresultStatus(r), PGRES_TUPLES_OK);
    bool any = PQntuples(r) > 0;
    if (any)
        snprintf(out, len, "%s", PQgetvalue(r, 0, 0));
    PQclear(r);
    return any;
}

/* How many deliveries of event |id| the receiver answered, and of |topic|
 * for |udid| in all. */
static size_t received(hook_sink *h, const char *id, const char *topic, const char *udid,
                       size_t *of_topic)
{
    size_t n = 0, same = 0, t = 0;
    hook_event *ev = hook_sink_events(h, &n);
    for (size_t i = 0; i < n; i++) {
        same += strcmp(ev[i].event_id, id) == 0;
        t += strcmp(ev[i].topic, topic) == 0 && strcmp(ev[i].udid, udid) == 0;
    }
    free(ev);
    if (of_topic)
        *of_topic = t;
    return same;
}

typedef struct {
    test_device *d;
    long code;
    CURLcode res;
} put_arg;

/* The device's second TokenUpdate, on its own thread and connection: its
 * instance dies before answering it. */
static void *token_update_main(void *arg)
{
    put_arg *p = arg;
    esim_buf b = {0};
    unsigned char token[32];
    memset(token, 0x5a, sizeof token);
    p->res = CURLE_FAILED_INIT;
    CURL *c = curl_easy_init();
    if (c && esim_msg_build_token_update(p->d->udid, p->d->topic, token, sizeof token, "magic-5678",
                                         &b, NULL) == ESIM_OK) {
        char url[256];
        snprintf(url, sizeof url, "%s/mdm", p->d->base_url);
        struct curl_slist *h = curl_slist_append(NULL, "Content-Type:");
        curl_easy_setopt(c, CURLOPT_URL, url);
        curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, "PUT");
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, b.data);
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)b.len);
        curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
        curl_easy_setopt(c, CURLOPT_TIMEOUT, 120L);
        p->res = curl_easy_perform(c);
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &p->code);
        curl_slist_free_all(h);
    }
    curl_easy_cleanup(c);
    esim_buf_free(&b);
    return NULL;
}

static void test_killed_between_commit_and_delivery(void **state)
{
    (void)state;
    if (!harness_store_is_pgsql())
        skip();
    /* The store: this test's schema of the cluster, statements allowed to
     * wait on the test's locks longer than the test takes. */
    esim_service_config cfg;
    char data_dir[320], spec[1024];
    harness_config(&env, "outbox-kill", &cfg, data_dir);
    snprintf(spec, sizeof spec, "%s%%20-cstatement_timeout%%3D120000", cfg.store);
    assert_non_null(strstr(cfg.store, "options="));
    assert_null(strchr(strstr(cfg.store, "options="), '&')); /* options is last */

    hook_sink *sink = hook_sink_start();
    assert_non_null(sink);
    char hook_url[96];
    snprintf(hook_url, sizeof hook_url, "http://127.0.0.1:%d/hook", hook_sink_port(sink));
    server a, b;
    server_prepare(&a, "inst-a", spec, hook_url);
    server_prepare(&b, "inst-b", spec, hook_url);
    server_start(&a);

    test_device d1, d2;
    device_new(&d1, &env, "00008140-00000000000000K1", a.url);
    device_new(&d2, &env, "00008140-00000000000000K2", a.url);
    d1.sign = d2.sign = SIGN_NONE;
    server_alive(&a);
    device_enroll(&d1);
    device_enroll(&d2);
    for (int i = 0; i < 1500 && hook_sink_count(sink) < 4; i++)
        usleep(20 * 1000);
    assert_int_equal(hook_sink_count(sink), 4);

    PGconn *p1 = harness_pg_connect(spec), *p2 = harness_pg_connect(spec),
           *watch = harness_pg_connect(spec);
    /* 1. The device's row locked: its next change waits on a worker. */
    harness_pg_exec(p1, "BEGIN");
    harness_pg_exec(p1, "SELECT 1 FROM devices WHERE udid = '00008140-00000000000000K1' "
                        "FOR UPDATE");
    put_arg put = {&d1, 0, CURLE_OK};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, token_update_main, &put), 0);
    if (!await_blocked(watch, p1, 1)) {
        server_alive(&a);
        fail_msg("the TokenUpdate never waited on the device's row");
    }

    /* 2. Another device's event is answered slowly, and its row locked,
     * so that the statement that deletes it once delivered (and the one
     * that renews the claims) waits, on a worker. */
    hook_sink_set_mode(sink, HOOK_SLOW, 1500);
    server_alive(&a);
    assert_int_equal(device_result(&d2, ESIM_STATUS_IDLE, NULL, NULL), 200);
    char d2_id[64] = "";
    for (int i = 0; i < 1500 && !d2_id[0]; i++) {
        if (!query_text(
                p2,
                "SELECT convert_from(body, 'UTF8')::json->>'event_id' FROM webhook_outbox WHERE "
                "convert_from(body, 'UTF8') LIKE '%00008140-00000000000000K2%'",
                d2_id, sizeof d2_id))
            usleep(20 * 1000);
    }
    assert_string_not_equal(d2_id, "");
    harness_pg_exec(p2, "BEGIN");
    harness_pg_exec(p2, "SELECT id FROM webhook_outbox FOR UPDATE");
    if (!await_blocked(watch, p2, 1)) {
        server_alive(&a);
        fail_msg("the delivered row's delete never waited on its lock");
    }
    for (int i = 0; i < 1500 && received(sink, d2_id, "mdm.Connect", d2.udid, NULL) < 1; i++)
        usleep(20 * 1000);
    assert_int_equal(received(sink, d2_id, "mdm.Connect", d2.udid, NULL), 1);

    /* 3. The receiver refuses from now on; the device's row let go: its
     * change commits on the worker, with its event's row, whose delivery
     * is refused. */
    hook_sink_set_mode(sink, HOOK_FAIL, 0);
    size_t refused = hook_sink_refused(sink);
    harness_pg_exec(p1, "COMMIT");
    char tally[32] = "";
    for (int i = 0; i < 1500; i++) {
        assert_true(query_text(p1,
                               "SELECT token_update_tally FROM devices WHERE "
                               "udid = '00008140-00000000000000K1'",
                               tally, sizeof tally));
        if (strcmp(tally, "2") == 0)
            break;
        usleep(20 * 1000);
    }
    server_alive(&a);
    assert_string_equal(tally, "2");
    for (int i = 0; i < 1500 && hook_sink_refused(sink) <= refused; i++)
        usleep(20 * 1000);
    assert_true(hook_sink_refused(sink) > refused); /* its delivery tried, refused */
    assert_true(blocked_by(watch, p2) >= 1);        /* the delivered row still there */

    /* 4. Killed there. */
    server_signal(&a, SIGKILL);
    pthread_join(t, NULL);
    harness_pg_exec(p2, "ROLLBACK");
    hook_sink_set_mode(sink, HOOK_OK, 0);

    /* The change's event is in the outbox, written with it (the id the
     * dead instance made). */
    char d1_id[64] = "";
    bool kept =
        query_text(watch,
                   "SELECT convert_from(body, 'UTF8')::json->>'event_id' FROM webhook_outbox WHERE "
                   "convert_from(body, 'UTF8') LIKE '%mdm.TokenUpdate%' AND "
                   "convert_from(body, 'UTF8') LIKE '%00008140-00000000000000K1%'",
                   d1_id, sizeof d1_id);
    if (!kept)
        fail_msg("the TokenUpdate committed on the killed instance's worker has no webhook "
                 "outbox row: its event is lost");

    /* 5. Another instance on the same database delivers it (once the dead
     * one's claim lapsed), with that id; and the other device's event,
     * whose row the dead instance never deleted, again with its id (at
     * least once: a receiver may see an event twice, never under two ids). */
    server_start(&b);
    size_t got = 0, d2_got = 0, updates = 0;
    for (int i = 0; i < 3000; i++) { /* a generous bound: 60 s */
        got = received(sink, d1_id, "mdm.TokenUpdate", d1.udid, &updates);
        d2_got = received(sink, d2_id, "mdm.Connect", d2.udid, NULL);
        if (got >= 1 && d2_got >= 1)
            break;
        usleep(20 * 1000);
    }
    assert_true(got >= 1);
    assert_true(d2_got >= 1);
    assert_int_equal(updates, 1 + got); /* the enrolment's, then this one (same id) */
    /* And the outbox empties. */
    char left[32] = "";
    for (int i = 0; i < 500; i++) {
        assert_true(query_text(watch, "SELECT count(*) FROM webhook_outbox", left, sizeof left));
        if (strcmp(left, "0") == 0)
            break;
        usleep(20 * 1000);
    }
    assert_string_equal(left, "0");

    server_signal(&b, SIGTERM);
    PQfinish(p1);
    PQfinish(p2);
    PQfinish(watch);
    device_free(&d1);
    device_free(&d2);
    hook_sink_stop(sink);
}

/* A change and its events are one transaction, with the store pool
 * (|pool| workers) and without it (0: on the loop's connection): when the
 * outbox refuses the event's row (a trigger the test puts there), the
 * device's change is undone with it and the device told to come back
 * (503); once the outbox takes rows again, change and event are kept and
 * the event delivered. */
static void outbox_refused_undoes_change(int pool)
{
    if (!harness_store_is_pgsql())
        skip();
    hook_sink *sink = hook_sink_start();
    assert_non_null(sink);
    char hook_url[96], name[32];
    snprintf(hook_url, sizeof hook_url, "http://127.0.0.1:%d/hook", hook_sink_port(sink));
    const char *urls[1] = {hook_url};
    snprintf(name, sizeof name, "outbox-unit-%d", pool);
    test_service ts = {0};
    esim_service_config cfg;
    harness_config(&env, name, &cfg, ts.data_dir);
    cfg.store_pool = pool;
    cfg.webhook_urls = urls;
    cfg.n_webhook_urls = 1;
    harness_start(&ts, &cfg);
    test_device d;
    device_new(&d, &env, pool ? "00008140-00000000000000U4" : "00008140-00000000000000U0", ts.url);
    device_enroll(&d);
    PGconn *c = harness_pg_connect(cfg.store);
    harness_pg_exec(c, "CREATE FUNCTION refuse_outbox() RETURNS trigger LANGUAGE plpgsql AS "
                       "$$ BEGIN RAISE EXCEPTION 'the outbox refuses rows'; END $$");
    harness_pg_exec(c, "CREATE TRIGGER refuse BEFORE INSERT ON webhook_outbox "
                       "FOR EACH ROW EXECUTE FUNCTION refuse_outbox()");
    char sql[200], tally[32] = "";
    snprintf(sql, sizeof sql, "SELECT token_update_tally FROM devices WHERE udid = '%s'", d.udid);
    esim_buf b = {0};
    unsigned char token[32];
    memset(token, 0x3c, sizeof token);
    assert_int_equal(
        esim_msg_build_token_update(d.udid, d.topic, token, sizeof token, "magic-9", &b, NULL),
        ESIM_OK);
    assert_int_equal(device_put(&d, b.data, b.len, NULL), 503);
    assert_true(query_text(c, sql, tally, sizeof tally));
    assert_string_equal(tally, "1"); /* the change went with its event */

    harness_pg_exec(c, "DROP TRIGGER refuse ON webhook_outbox");
    assert_int_equal(device_put(&d, b.data, b.len, NULL), 200);
    assert_true(query_text(c, sql, tally, sizeof tally));
    assert_string_equal(tally, "2");
    size_t updates = 0;
    for (int i = 0; i < 1500 && updates < 2; i++) {
        received(sink, "", "mdm.TokenUpdate", d.udid, &updates);
        if (updates < 2)
            usleep(20 * 1000);
    }
    assert_int_equal(updates, 2); /* the enrolment's and this one; none for the refused */
    esim_buf_free(&b);
    PQfinish(c);
    device_free(&d);
    harness_stop(&ts);
    hook_sink_stop(sink);
}

#define NOTHERS 4

/* How many of the service's statements that start with |prefix| wait on a
 * lock |holder| holds (directly, or queued behind a statement that does)
 * since before |since| (the database's clock, as text): only this test's
 * (the cluster is shared by the tests running beside it). */
static long waiting_since(PGconn *watch, PGconn *holder, const char *prefix, const char *since)
{
    char sql[700];
    snprintf(sql, sizeof sql,
             "SELECT count(*) FROM pg_stat_activity a WHERE wait_event_type = 'Lock' AND "
             "(%d = ANY(pg_blocking_pids(pid)) OR EXISTS (SELECT 1 FROM pg_stat_activity b "
             "WHERE b.pid = ANY(pg_blocking_pids(a.pid)) AND %d = ANY(pg_blocking_pids(b.pid)))) "
             "AND query LIKE '%s%%' AND query_start < '%s'::timestamptz",
             PQbackendPID(holder), PQbackendPID(holder), prefix, since);
    PGresult *r = PQexec(watch, sql);
    assert_int_equal(PQresultStatus(r), PGRES_TUPLES_OK);
    long n = strtol(PQgetvalue(r, 0, 0), NULL, 10);
    PQclear(r);
    return n;
}

/* The outbox's bookkeeping after a delivery (the delivered row's delete,
 * this instance's claims renewed) runs as store jobs on the pool: with a
 * delivered event's row locked by another session, both statements wait
 * on workers while other devices check in, their events written and
 * delivered; once the lock goes the rows go and the outbox empties. With
 * the bookkeeping on the loop's connection (ESIM_TEST_STORE_POOL=0, the
 * control) the loop waits in the delete until statement_timeout ends it,
 * before the other devices are served: this test fails. */
static void test_slow_outbox_holds_no_loop(void **state)
{
    (void)state;
    if (!harness_store_is_pgsql())
        skip();
    hook_sink *sink = hook_sink_start();
    assert_non_null(sink);
    char hook_url[96];
    snprintf(hook_url, sizeof hook_url, "http://127.0.0.1:%d/hook", hook_sink_port(sink));
    const char *urls[1] = {hook_url};
    test_service ts = {0};
    esim_service_config cfg;
    harness_config(&env, "outbox-slow", &cfg, ts.data_dir);
    char spec[1024];
    /* Long enough that the delete and the renewal are still the ones that
     * began waiting before the check-ins when they are looked at: with 8 s,
     * under ctest -j2 a renewal timed out and a new one began after them. */
    snprintf(spec, sizeof spec, "%s%%20-cstatement_timeout%%3D30000", cfg.store);
    cfg.store = spec;
    cfg.webhook_urls = urls;
    cfg.n_webhook_urls = 1;
    cfg.webhook_retry_base_ms = 100;
    harness_start(&ts, &cfg);
    test_device locked, others[NOTHERS];
    device_new(&locked, &env, "00008140-0000000000000SL0", ts.url);
    device_enroll(&locked);
    for (int i = 0; i < NOTHERS; i++) {
        char udid[65];
        snprintf(udid, sizeof udid, "00008140-0000000000000SF%d", i + 1);
        device_new(&others[i], &env, udid, ts.url);
        device_enroll(&others[i]);
    }
    PGconn *locker = harness_pg_connect(spec), *watch = harness_pg_connect(spec);
    char left[32] = "";
    for (int i = 0; i < 1500; i++) { /* the enrolments' events delivered, their rows gone */
        assert_true(query_text(watch, "SELECT count(*) FROM webhook_outbox", left, sizeof left));
        if (strcmp(left, "0") == 0)
            break;
        usleep(20 * 1000);
    }
    assert_string_equal(left, "0");

    /* One device's event refused by the receiver, its row locked, then
     * taken: the row's delete (and the claims' renewal) wait on the lock. */
    hook_sink_set_mode(sink, HOOK_FAIL, 0);
    assert_int_equal(device_result(&locked, ESIM_STATUS_IDLE, NULL, NULL), 200);
    char id[64] = "";
    for (int i = 0; i < 1500 && !id[0]; i++)
        if (!query_text(watch,
                        "SELECT convert_from(body, 'UTF8')::json->>'event_id' FROM webhook_outbox "
                        "WHERE convert_from(body, 'UTF8') LIKE '%00008140-0000000000000SL0%'",
                        id, sizeof id))
            usleep(20 * 1000);
    assert_string_not_equal(id, "");
    harness_pg_exec(locker, "BEGIN");
    harness_pg_exec(locker, "SELECT id FROM webhook_outbox FOR UPDATE");
    hook_sink_set_mode(sink, HOOK_OK, 0);
    long waits = 0;
    for (int i = 0; i < 1500 && waits < 2; i++) {
        waits = blocked_by(watch, locker);
        if (waits < 2)
            usleep(20 * 1000);
    }
    assert_true(received(sink, id, "mdm.Connect", locked.udid, NULL) >= 1);
    char since[64] = "";
    assert_true(query_text(watch, "SELECT clock_timestamp()::text", since, sizeof since));

    /* The other devices check in, their events written and delivered. */
    for (int i = 0; i < NOTHERS; i++) {
        esim_cmd_parsed next = {0};
        assert_int_equal(device_result(&others[i], ESIM_STATUS_IDLE, NULL, &next), 200);
        esim_cmd_parsed_free(&next);
    }
    for (int i = 0; i < NOTHERS; i++) {
        size_t got = 0;
        for (int k = 0; k < 1500 && got < 1; k++) {
            received(sink, "", "mdm.Connect", others[i].udid, &got);
            if (got < 1)
                usleep(20 * 1000);
        }
        assert_int_equal(got, 1);
    }
    /* Meanwhile the delete and the renewal still wait, as they did before
     * the check-ins: on workers, not on the loop. */
    assert_int_equal(waiting_since(watch, locker, "DELETE FROM webhook_outbox", since), 1);
    assert_int_equal(waiting_since(watch, locker, "UPDATE webhook_outbox SET claimed_until", since),
                     1);

    harness_pg_exec(locker, "ROLLBACK");
    for (int i = 0; i < 1500; i++) {
        assert_true(query_text(watch, "SELECT count(*) FROM webhook_outbox", left, sizeof left));
        if (strcmp(left, "0") == 0)
            break;
        usleep(20 * 1000);
    }
    assert_string_equal(left, "0");
    assert_int_equal(received(sink, id, "mdm.Connect", locked.udid, NULL), 1);
    PQfinish(locker);
    PQfinish(watch);
    device_free(&locked);
    for (int i = 0; i < NOTHERS; i++)
        device_free(&others[i]);
    harness_stop(&ts);
    hook_sink_stop(sink);
}

static void test_outbox_refused_undoes_change_pool(void **state)
{
    (void)state;
    outbox_refused_undoes_change(4);
}

static void test_outbox_refused_undoes_change_no_pool(void **state)
{
    (void)state;
    outbox_refused_undoes_change(0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_killed_between_commit_and_delivery),
        cmocka_unit_test(test_slow_outbox_holds_no_loop),
        cmocka_unit_test(test_outbox_refused_undoes_change_pool),
        cmocka_unit_test(test_outbox_refused_undoes_change_no_pool),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
